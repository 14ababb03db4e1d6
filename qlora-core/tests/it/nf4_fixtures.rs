//! NF4 and double quantization against bitsandbytes 0.50.2's own outputs
//! (`fixtures/nf4_vectors.safetensors`): every byte and every bit must match.

use burn::tensor::Device;
use qlora_core::FloatDtype;
use qlora_core::quant::dynamic_map::dynamic_map;
use qlora_core::quant::nf4::NF4_CODE;
use qlora_core::quant::{Absmax, Nf4Config, Nf4Tensor};
use support::{bits, f32s, load_tensors};

const CASES: [&str; 6] = [
    "normal_4096",
    "normal_ragged_1000",
    "normal_big_70000",
    "with_zero_block",
    "mixed_scale",
    "ties_64",
];

fn vectors() -> std::collections::HashMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    load_tensors("nf4_vectors.safetensors")
}

#[test]
fn code_tables_match_bitsandbytes() {
    let v = vectors();
    assert_eq!(bits(&NF4_CODE), bits(&f32s(&v["nf4_code"].2)));
    assert_eq!(
        bits(&dynamic_map(true)),
        bits(&f32s(&v["dynamic_map_signed"].2))
    );
}

fn quantize_case(case: &str, double_quant: bool) -> (Nf4Tensor, Vec<f32>) {
    let v = vectors();
    let input = f32s(&v[&format!("{case}.input")].2);
    let config = Nf4Config {
        blocksize: 64,
        double_quant,
    };
    let q = Nf4Tensor::quantize(&input, &[input.len()], FloatDtype::F32, config).unwrap();
    (q, input)
}

#[test]
fn plain_nf4_is_byte_exact() {
    let v = vectors();
    for case in CASES {
        let (q, _) = quantize_case(case, false);
        assert_eq!(q.packed, v[&format!("{case}.packed")].2, "{case}: packed");
        let Absmax::Plain(absmax) = &q.absmax else {
            panic!("plain absmax")
        };
        assert_eq!(
            bits(absmax),
            bits(&f32s(&v[&format!("{case}.absmax")].2)),
            "{case}: absmax"
        );
        assert_eq!(
            bits(&q.dequantize()),
            bits(&f32s(&v[&format!("{case}.dequant")].2)),
            "{case}: dequant"
        );
    }
}

#[test]
fn double_quant_is_byte_exact() {
    let v = vectors();
    for case in CASES {
        let (q, _) = quantize_case(case, true);
        assert_eq!(q.packed, v[&format!("{case}.packed")].2, "{case}: packed");
        let Absmax::Double(d) = &q.absmax else {
            panic!("double absmax")
        };
        assert_eq!(
            d.codes,
            v[&format!("{case}.dq_absmax_u8")].2,
            "{case}: u8 absmax"
        );
        assert_eq!(
            bits(&d.nested_absmax),
            bits(&f32s(&v[&format!("{case}.dq_nested_absmax")].2)),
            "{case}: nested absmax"
        );
        assert_eq!(
            d.offset.to_bits(),
            f32s(&v[&format!("{case}.dq_offset")].2)[0].to_bits(),
            "{case}: offset"
        );
        assert_eq!(
            bits(&q.dequantize()),
            bits(&f32s(&v[&format!("{case}.dq_dequant")].2)),
            "{case}: dequant"
        );
    }
}

/// The tensor-op path (any backend) gives the same bits as the CPU path and the fixtures.
pub fn check_tensor_ops_on(device: &Device) {
    let v = vectors();
    for case in CASES {
        for double_quant in [false, true] {
            let (q, _) = quantize_case(case, double_quant);
            let on_device = qlora_core::backend::Nf4Weight::new(&q, device).dequantize_flat();
            let values: Vec<f32> = on_device.into_data().try_into_vec::<f32>().unwrap();
            let key = if double_quant {
                "dq_dequant"
            } else {
                "dequant"
            };
            assert_eq!(
                bits(&values),
                bits(&f32s(&v[&format!("{case}.{key}")].2)),
                "{case} ({key}) on {device:?}"
            );
        }
    }
}

#[test]
fn tensor_ops_dequantize_exactly_on_flex() {
    check_tensor_ops_on(&Device::flex());
}

#[cfg(feature = "wgpu")]
#[test]
fn tensor_ops_dequantize_exactly_on_wgpu() {
    check_tensor_ops_on(&Device::wgpu(burn::tensor::DeviceKind::DefaultDevice));
}
