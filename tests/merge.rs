//! Merging adapters into the base: the fixture adapter merged into the fixture model matches
//! PEFT's `merge_and_unload()`, and the merged directory loads back (dense and NF4).

mod common;

use common::{f32s, fixture, load_tensors};
use qlora::FloatDtype;
use qlora::merge::{MergeBase, MergeOptions, merge_model};
use qlora::model::{Bits, Llama, LoadOptions};

fn options(base: MergeBase, dtype: FloatDtype) -> MergeOptions {
    MergeOptions {
        base: Some(base),
        dtype: Some(dtype),
        quantize_nf4: false,
        max_shard_bytes: 5_000_000_000,
        overwrite: false,
    }
}

#[test]
fn merged_fixture_matches_peft() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged");
    let report = merge_model(
        &fixture("tiny-llama"),
        &fixture("tiny-llama-lora"),
        &out,
        &options(MergeBase::Original, FloatDtype::F32),
    )
    .unwrap();
    assert_eq!(report.merged, 14);
    let reference = load_tensors("tiny-llama-lora/reference.safetensors");
    let expected_q = f32s(&reference["merged.model.layers.0.self_attn.q_proj.weight"].2);
    let merged = common::load_tensors_at(&out.join("model.safetensors"));
    let ours_q = f32s(&merged["model.layers.0.self_attn.q_proj.weight"].2);
    let diff = ours_q
        .iter()
        .zip(&expected_q)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff <= 1e-6, "merged q_proj differs by {diff}");

    let (_, shape, bytes) = &reference["input_ids"];
    let ids: Vec<u32> = bytes
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    let ids: Vec<Vec<u32>> = ids.chunks(shape[1]).map(<[u32]>::to_vec).collect();
    let model = Llama::load(
        &out,
        &LoadOptions {
            bits: Bits::Sixteen,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let logits: Vec<f32> = model
        .forward(&ids, None, None)
        .unwrap()
        .into_data()
        .try_into_vec()
        .unwrap();
    let expected = f32s(&reference["merged_logits"].2);
    let max = logits
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max <= 1e-4, "merged logits differ by {max}");
    eprintln!("merged q_proj max diff {diff:.2e}, merged logits max diff {max:.2e}");

    // The merged directory is a plain model: no quantization_config, loads in NF4 too.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert!(config.get("quantization_config").is_none());
    assert!(out.join("tokenizer.json").is_file());
    Llama::load(&out, &LoadOptions::default()).unwrap();
}

#[test]
fn sharded_output_has_a_valid_index() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sharded");
    let mut opts = options(MergeBase::Dequantized, FloatDtype::BF16);
    opts.max_shard_bytes = 200_000;
    merge_model(
        &fixture("tiny-llama"),
        &fixture("tiny-llama-lora"),
        &out,
        &opts,
    )
    .unwrap();
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let map = index["weight_map"].as_object().unwrap();
    let mut total = 0;
    let mut seen = std::collections::HashSet::new();
    let files: std::collections::BTreeSet<&str> =
        map.values().map(|v| v.as_str().unwrap()).collect();
    assert!(files.len() > 1, "several shards");
    for file in files {
        for (name, (_, _, data)) in common::load_tensors_at(&out.join(file)) {
            assert_eq!(map[&name], file, "{name} listed in its shard");
            assert!(seen.insert(name), "each tensor once");
            total += data.len();
        }
    }
    assert_eq!(seen.len(), map.len());
    assert_eq!(
        index["metadata"]["total_size"].as_u64().unwrap() as usize,
        total
    );
    Llama::load(
        &out,
        &LoadOptions {
            bits: Bits::Sixteen,
            ..LoadOptions::default()
        },
    )
    .unwrap();
}
