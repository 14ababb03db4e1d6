//! Properties of NF4 quantization over random shapes and scales: the round-trip error of every
//! value stays within the NF4 bound, and bad input is refused instead of producing garbage.

use proptest::prelude::*;
use qlora_core::FloatDtype;
use qlora_core::quant::dynamic_map::dynamic_map;
use qlora_core::quant::nf4::NF4_CODE;
use qlora_core::quant::{Absmax, Nf4Config, Nf4Tensor};

fn largest_gap(code: &[f32]) -> f32 {
    code.windows(2).map(|w| w[1] - w[0]).fold(0.0, f32::max)
}

/// Random tensors: 1 to 3 dimensions, values of mixed signs scaled over 12 orders of magnitude,
/// some blocks all zero.
fn tensors() -> impl Strategy<Value = (Vec<usize>, Vec<f32>)> {
    (
        prop::collection::vec(1usize..40, 1..=3),
        -6i32..6,
        any::<u64>(),
    )
        .prop_map(|(shape, exponent, seed)| {
            let n: usize = shape.iter().product();
            let scale = 10f32.powi(exponent);
            let mut state = seed | 1;
            let values = (0..n)
                .map(|i| {
                    // xorshift: cheap, seeded, no dependency on a RNG crate's stream.
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    if (i / 64) % 7 == 3 {
                        0.0
                    } else {
                        ((state % 20001) as f32 / 10000.0 - 1.0) * scale
                    }
                })
                .collect();
            (shape, values)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn plain_round_trip_within_half_the_largest_gap(
        (shape, values) in tensors(),
        blocksize in prop::sample::select(vec![32usize, 64, 128, 256, 4096]),
    ) {
        let config = Nf4Config { blocksize, double_quant: false };
        let q = Nf4Tensor::quantize(&values, &shape, FloatDtype::F32, config).unwrap();
        let back = q.dequantize();
        let Absmax::Plain(absmax) = &q.absmax else { unreachable!() };
        let half_gap = largest_gap(&NF4_CODE) / 2.0;
        for (i, (x, y)) in values.iter().zip(&back).enumerate() {
            let a = absmax[i / blocksize];
            // f32 rounding of the scaling adds at most a few ulps of absmax.
            let bound = half_gap * a * (1.0 + 1e-6);
            prop_assert!((x - y).abs() <= bound, "element {i}: {x} -> {y}, bound {bound}");
            if a == 0.0 || (i / 64) % 7 == 3 && blocksize == 64 {
                prop_assert_eq!(*y, 0.0);
            }
        }
    }

    #[test]
    fn double_quant_adds_only_the_absmax_error(
        (shape, values) in tensors(),
    ) {
        let q = Nf4Tensor::quantize(&values, &shape, FloatDtype::F32, Nf4Config::default()).unwrap();
        let plain = Nf4Tensor::quantize(&values, &shape, FloatDtype::F32,
            Nf4Config { double_quant: false, ..Nf4Config::default() }).unwrap();
        prop_assert_eq!(&q.packed, &plain.packed);
        let Absmax::Plain(exact) = &plain.absmax else { unreachable!() };
        let Absmax::Double(d) = &q.absmax else { unreachable!() };
        let approx = q.absmax_f32();
        // Each absmax code is the nearest of the dynamic map up to one step of the kernel's
        // 65536-point grid.
        let step = largest_gap(&dynamic_map(true)) / 2.0 + 2.0 / 65535.0;
        for (b, (e, a)) in exact.iter().zip(&approx).enumerate() {
            let nested = d.nested_absmax[b / d.blocksize];
            prop_assert!((e - a).abs() <= step * nested * 1.0001 + 1e-6 * e.abs(),
                "block {b}: absmax {e} -> {a}");
        }
        let half_gap = largest_gap(&NF4_CODE) / 2.0;
        for (i, (x, y)) in values.iter().zip(q.dequantize()).enumerate() {
            let b = i / 64;
            let bound = half_gap * exact[b] + (exact[b] - approx[b]).abs() + 1e-6 * exact[b];
            prop_assert!((x - y).abs() <= bound, "element {i}: {x} -> {y}");
        }
    }
}

#[test]
fn all_zero_tensor_round_trips_to_zeros() {
    let zeros = vec![0.0f32; 1000];
    for double_quant in [false, true] {
        let config = Nf4Config {
            blocksize: 64,
            double_quant,
        };
        let q = Nf4Tensor::quantize(&zeros, &[10, 100], FloatDtype::F32, config).unwrap();
        assert!(q.dequantize().iter().all(|v| *v == 0.0));
    }
}

#[test]
fn non_finite_input_is_an_error_naming_the_element() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut values = vec![0.5f32; 300];
        values[123] = bad;
        let err = Nf4Tensor::quantize(&values, &[300], FloatDtype::F32, Nf4Config::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("element 123") && err.contains("non-finite"),
            "{err}"
        );
    }
}

#[test]
fn shape_must_match_the_values() {
    let err = Nf4Tensor::quantize(&[1.0; 10], &[3, 3], FloatDtype::F32, Nf4Config::default())
        .unwrap_err();
    assert!(err.to_string().contains("[3, 3]"), "{err}");
}
