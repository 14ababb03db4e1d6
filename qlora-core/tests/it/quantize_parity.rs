//! `qlora quantize` on `fixtures/tiny-llama` reproduces the checkpoint transformers +
//! bitsandbytes saved for the same model (`fixtures/tiny-llama-bnb-nf4`).

use qlora_core::FloatDtype;
use qlora_core::quantize_model::{QuantizeOptions, quantize_model};
use safetensors::Dtype;
use support::{fixture, load_tensors};

fn quantize(dtype: Option<FloatDtype>) -> (tempfile::TempDir, std::path::PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("nf4");
    let options = QuantizeOptions {
        dtype,
        ..QuantizeOptions::default()
    };
    let report = quantize_model(&fixture("tiny-llama"), &out, &options).unwrap();
    assert_eq!(report.quantized_tensors, 14);
    (root, out)
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn four_bit_tensors_match_bitsandbytes_byte_for_byte() {
    let (_root, out) = quantize(None);
    let ours = load_tensors_at(&out.join("model.safetensors"));
    let theirs = load_tensors("tiny-llama-bnb-nf4/model.safetensors");
    let mut names: Vec<_> = theirs.keys().collect();
    names.sort();
    assert_eq!(
        {
            let mut o: Vec<_> = ours.keys().collect();
            o.sort();
            o
        },
        names
    );
    let mut checked = 0;
    for name in names {
        let (their_dtype, their_shape, their_bytes) = &theirs[name];
        let (our_dtype, our_shape, our_bytes) = &ours[name];
        if name.ends_with("quant_state.bitsandbytes__nf4") {
            // Same fields and values; `dtype` is the stored dtype (the fixture was upcast).
            let mut theirs = json(their_bytes);
            let ours = json(our_bytes);
            assert_eq!(ours["dtype"], "bfloat16");
            theirs["dtype"] = "bfloat16".into();
            assert_eq!(ours, theirs, "{name}");
        } else if *their_dtype == Dtype::U8
            || name.ends_with("quant_map")
            || name.ends_with("nested_absmax")
        {
            assert_eq!(our_dtype, their_dtype, "{name}: dtype");
            assert_eq!(our_shape, their_shape, "{name}: shape");
            assert_eq!(our_bytes, their_bytes, "{name}: bytes");
            checked += 1;
        } else {
            // Dense tensors: ours bf16 as stored, theirs the float32 upcast. Equal in value.
            assert_eq!(*our_dtype, Dtype::BF16, "{name}");
            assert_eq!(our_shape, their_shape, "{name}: shape");
            let ours: Vec<f32> = qlora_core::dtype::decode_f32(our_bytes, FloatDtype::BF16);
            assert_eq!(ours, support::f32s(their_bytes), "{name}: values");
        }
    }
    assert_eq!(
        checked,
        14 * 5,
        "packed, absmax, nested absmax and both code maps per weight"
    );
}

#[test]
fn with_dtype_f32_every_tensor_is_byte_identical() {
    let (_root, out) = quantize(Some(FloatDtype::F32));
    let ours = load_tensors_at(&out.join("model.safetensors"));
    let theirs = load_tensors("tiny-llama-bnb-nf4/model.safetensors");
    assert_eq!(ours.len(), theirs.len());
    for (name, tensor) in &theirs {
        assert_eq!(&ours[name], tensor, "{name}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let fixture_config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-llama-bnb-nf4/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        config["quantization_config"],
        fixture_config["quantization_config"]
    );
    for file in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
    ] {
        assert!(out.join(file).is_file(), "{file} copied");
    }
    assert!(!out.join("reference.safetensors").exists());
}

fn load_tensors_at(
    path: &std::path::Path,
) -> std::collections::HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect()
}
