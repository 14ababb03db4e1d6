//! `qlora export-gguf` against llama.cpp's own numbers and against our importer: the block
//! bytes of every type equal llama.cpp's reference quantizers on the fixture's inputs, and a
//! model with the fixture adapter merged in, exported and imported back, is the merged model
//! (exactly in f32; within the format's error in q8_0) with the same tokenizer, chat template
//! and configuration.

use std::path::Path;

use candle_core::quantized::GgmlDType;
use qlora_core::FloatDtype;
use qlora_core::config::ModelConfig;
use qlora_core::dtype::decode_f32;
use qlora_core::export::{ExportOptions, GgufType, export_gguf, types};
use qlora_core::gguf::blocks::dequantize_blocks;
use qlora_core::gguf::{ImportOptions, import_gguf};
use qlora_core::merge::{MergeOptions, merge_model};
use qlora_core::text::{Message, Tokenizer};
use support::{f32s, fixture, load_tensors_at};

const TYPES: [(&str, GgmlDType); 9] = [
    ("Q8_0", GgmlDType::Q8_0),
    ("Q4_0", GgmlDType::Q4_0),
    ("Q4_1", GgmlDType::Q4_1),
    ("Q5_0", GgmlDType::Q5_0),
    ("Q5_1", GgmlDType::Q5_1),
    ("BF16", GgmlDType::BF16),
    ("Q4_K", GgmlDType::Q4K),
    ("Q5_K", GgmlDType::Q5K),
    ("Q6_K", GgmlDType::Q6K),
];

#[test]
fn block_bytes_equal_llama_cpp_reference_quantizers() {
    let fx = support::load_tensors("gguf_quant_vectors.safetensors");
    for case in ["normal", "zeros_and_outliers", "mixed_scale"] {
        let (_, shape, bytes) = &fx[&format!("{case}.input")];
        let input = f32s(bytes);
        for (name, dtype) in TYPES {
            let want = &fx[&format!("{case}.{name}")].2;
            let got = types::encode(&input, shape[1], dtype).unwrap();
            let differing = got.iter().zip(want).filter(|(a, b)| a != b).count();
            assert_eq!(
                (got.len(), differing),
                (want.len(), 0),
                "{case} {name}: byte length and differing bytes"
            );
            // And our reader decodes llama.cpp's blocks to llama.cpp's values.
            let values = dequantize_blocks(dtype, want, input.len()).unwrap();
            let expected = f32s(&fx[&format!("{case}.{name}.dequant")].2);
            assert_eq!(
                support::bits(&values),
                support::bits(&expected),
                "{case} {name} dequantized"
            );
        }
    }
}

/// The fixture model with the fixture adapter merged as `qlora merge --dtype f32` merges it.
fn merged(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("merged");
    merge_model(
        &fixture("tiny-llama"),
        &fixture("tiny-llama-lora"),
        &out,
        &MergeOptions {
            base: None,
            dtype: Some(FloatDtype::F32),
            quantize_nf4: false,
            max_shard_bytes: 5_000_000_000,
            overwrite: false,
        },
    )
    .unwrap();
    out
}

/// Export the fixture model with the fixture adapter as `kind`, then import it back in f32.
fn round_trip(dir: &Path, kind: GgufType) -> std::path::PathBuf {
    let file = dir.join(format!("{kind}.gguf"));
    let report = export_gguf(
        &fixture("tiny-llama"),
        Some(&fixture("tiny-llama-lora")),
        &file,
        &ExportOptions {
            kind,
            base: None,
            name: None,
            overwrite: false,
        },
    )
    .unwrap();
    assert_eq!(report.merged, 14, "7 projections in 2 layers");
    let back = dir.join(format!("{kind}-imported"));
    import_gguf(
        &file,
        &back,
        &ImportOptions {
            dtype: FloatDtype::F32,
            ..ImportOptions::default()
        },
    )
    .unwrap();
    back
}

fn tensors(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let mut all: Vec<(String, Vec<f32>)> = load_tensors_at(&dir.join("model.safetensors"))
        .into_iter()
        .map(|(name, (dt, _, bytes))| {
            (
                name,
                decode_f32(&bytes, FloatDtype::from_safetensors(dt).unwrap()),
            )
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

fn same_config(a: &Path, b: &Path) {
    let (a, b) = (ModelConfig::load(a).unwrap(), ModelConfig::load(b).unwrap());
    assert_eq!(
        (
            a.vocab_size,
            a.hidden_size,
            a.intermediate_size,
            a.num_hidden_layers,
            a.num_attention_heads,
            a.num_key_value_heads,
            a.head_dim,
            a.max_position_embeddings,
            a.spec.tied_head,
        ),
        (
            b.vocab_size,
            b.hidden_size,
            b.intermediate_size,
            b.num_hidden_layers,
            b.num_attention_heads,
            b.num_key_value_heads,
            b.head_dim,
            b.max_position_embeddings,
            b.spec.tied_head,
        )
    );
    assert_eq!((a.rms_norm_eps, &a.rope), (b.rms_norm_eps, &b.rope));
    assert_eq!(
        (a.bos_token_id, &a.eos_token_ids, a.pad_token_id),
        (b.bos_token_id, &b.eos_token_ids, b.pad_token_id)
    );
}

fn same_tokenizer(a: &Path, b: &Path) {
    let (a, b) = (Tokenizer::load(a).unwrap(), Tokenizer::load(b).unwrap());
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-llama/tokenizer_cases.json")).unwrap(),
    )
    .unwrap();
    let mut texts: Vec<String> = cases.as_object().unwrap().keys().cloned().collect();
    texts.push("<|im_start|>user\nHello 123<|im_end|>".into());
    for text in texts {
        assert_eq!(
            a.encode(&text, true).unwrap(),
            b.encode(&text, true).unwrap(),
            "{text:?}"
        );
    }
    assert_eq!(a.chat_template_text(), b.chat_template_text());
    let messages = [Message::new("user", "What is 2 + 2?")];
    let render = |t: &Tokenizer| t.apply_chat_template(&messages, true).unwrap();
    assert_eq!(render(&a), render(&b));
    assert_eq!((a.bos_id(), a.eos_id()), (b.bos_id(), b.eos_id()));
}

#[test]
fn an_f32_export_imports_back_to_the_merged_model() {
    let dir = tempfile::tempdir().unwrap();
    let merged = merged(dir.path());
    let back = round_trip(dir.path(), GgufType::F32);
    let (want, got) = (tensors(&merged), tensors(&back));
    assert_eq!(
        want.iter().map(|t| &t.0).collect::<Vec<_>>(),
        got.iter().map(|t| &t.0).collect::<Vec<_>>()
    );
    for ((name, a), (_, b)) in want.iter().zip(&got) {
        assert_eq!(support::bits(a), support::bits(b), "{name}");
    }
    same_config(&merged, &back);
    same_tokenizer(&merged, &back);
}

#[test]
fn a_q8_0_export_is_within_the_format_error() {
    let dir = tempfile::tempdir().unwrap();
    let merged = merged(dir.path());
    let back = round_trip(dir.path(), GgufType::Q8_0);
    for ((name, a), (_, b)) in tensors(&merged).iter().zip(&tensors(&back)) {
        // Q8_0: a block of 32 keeps |x| / max|block| in steps of 1/127, the scale in f16.
        for (block_a, block_b) in a.chunks(32).zip(b.chunks(32)) {
            let amax = block_a.iter().fold(0f32, |m, v| m.max(v.abs()));
            let bound = amax / 254.0 * 1.01 + amax * 2f32.powi(-11);
            for (x, y) in block_a.iter().zip(block_b) {
                assert!((x - y).abs() <= bound, "{name}: {x} vs {y} (bound {bound})");
            }
        }
    }
    same_config(&merged, &back);
    same_tokenizer(&merged, &back);
}

/// Llama 3.1's RoPE scaling leaves as llama.cpp's `rope_freqs` tensor and comes back as the
/// same `rope_scaling`.
#[test]
fn llama3_rope_scaling_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("llama3");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(fixture("tiny-llama")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    config["rope_parameters"] = serde_json::json!({
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192
    });
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    let file = dir.path().join("llama3.gguf");
    let options = ExportOptions {
        kind: GgufType::F16,
        base: None,
        name: Some("llama3-test".into()),
        overwrite: false,
    };
    export_gguf(&model, None, &file, &options).unwrap();
    let gguf = qlora_core::gguf::GgufFile::open(&file).unwrap();
    assert!(gguf.has_tensor("rope_freqs.weight"));
    assert_eq!(gguf.string("general.name").unwrap(), Some("llama3-test"));
    let back = dir.path().join("back");
    import_gguf(&file, &back, &ImportOptions::default()).unwrap();
    same_config(&model, &back);
}
