//! Merging adapters into the base: the fixture adapter merged into the fixture model matches
//! PEFT's `merge_and_unload()`, and the merged directory loads back (dense and NF4).

use qlora_core::FloatDtype;
use qlora_core::merge::{MergeBase, MergeOptions, merge_model};
use qlora_core::model::{Bits, CausalLm, LoadOptions};
use support::{f32s, fixture, load_tensors};

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
    let merged = support::load_tensors_at(&out.join("model.safetensors"));
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
    let model = CausalLm::load(
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
    CausalLm::load(&out, &LoadOptions::default()).unwrap();
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
        for (name, (_, _, data)) in support::load_tensors_at(&out.join(file)) {
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
    CausalLm::load(
        &out,
        &LoadOptions {
            bits: Bits::Sixteen,
            ..LoadOptions::default()
        },
    )
    .unwrap();
}

#[test]
fn merged_model_can_be_written_as_nf4() {
    let dir = tempfile::tempdir().unwrap();
    let dense = dir.path().join("dense");
    let nf4 = dir.path().join("nf4");
    merge_model(
        &fixture("tiny-llama"),
        &fixture("tiny-llama-lora"),
        &dense,
        &options(MergeBase::Original, FloatDtype::F32),
    )
    .unwrap();
    let mut opts = options(MergeBase::Original, FloatDtype::F32);
    opts.quantize_nf4 = true;
    merge_model(
        &fixture("tiny-llama"),
        &fixture("tiny-llama-lora"),
        &nf4,
        &opts,
    )
    .unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(nf4.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["quantization_config"]["bnb_4bit_quant_type"], "nf4");
    // The NF4 checkpoint holds exactly the quantization of the dense merged weights.
    let from_nf4 = CausalLm::load(&nf4, &LoadOptions::default()).unwrap();
    let quantized_on_load = CausalLm::load(&dense, &LoadOptions::default()).unwrap();
    let ids = vec![vec![1u32, 5, 9, 200, 3]];
    let a: Vec<f32> = from_nf4
        .forward(&ids, None, None)
        .unwrap()
        .into_data()
        .try_into_vec()
        .unwrap();
    let b: Vec<f32> = quantized_on_load
        .forward(&ids, None, None)
        .unwrap()
        .into_data()
        .try_into_vec()
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn merge_refuses_mismatched_adapters_and_existing_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let err = merge_model(
        &fixture("tiny-llama"),
        &fixture("tiny-llama-lora"),
        &out,
        &options(MergeBase::Original, FloatDtype::F32),
    )
    .unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    // An adapter for a model with other shapes.
    let other = dir.path().join("other");
    support::synthetic::SyntheticModel {
        vocab_size: 1024,
        hidden_size: 64,
        intermediate_size: 128,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        tie_word_embeddings: false,
    }
    .write(&other, 1)
    .unwrap();
    let err = merge_model(
        &other,
        &fixture("tiny-llama-lora"),
        &dir.path().join("x"),
        &options(MergeBase::Original, FloatDtype::F32),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("lora_A") && err.to_string().contains("expected"),
        "{err}"
    );
    assert!(!dir.path().join("x").exists());
}
