//! A real model through the GGUF importer: SmolLM2-135M-Instruct (Q4_1 weights, Q8_0
//! embeddings) against what transformers makes of the same file
//! (`tests/fixtures/smollm2_gguf_facts.json`).
//!
//! The GGUF is not in the repo (98 MB) and these tests download nothing. `build.rs` looks for
//! it (`$QLORA_SMOLLM2_GGUF`, `tests/models/` where `examples/quickstart.sh` links it, the
//! default cache); without it the tests are compiled as ignored, and the summary counts them,
//! except under `CI=true`, where they fail.

use std::path::PathBuf;

use qlora_core::generate::{SamplingConfig, StopReason, generate};
use qlora_core::gguf::{GgufFile, ImportOptions, import_gguf};
use qlora_core::model::{Bits, CausalLm, LoadOptions};
use qlora_core::text::{Message, Tokenizer};
use serde_json::Value;
use support::facts::{ids, top5_logits_diff};
use support::{fixture, load_tensors_at};

const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

const MISSING: &str =
    "needs SmolLM2's GGUF: run examples/quickstart.sh --fetch-only or set QLORA_SMOLLM2_GGUF";

/// The GGUF `build.rs` found (it runs these tests only then, or under `CI=true`).
fn gguf_path() -> PathBuf {
    let path = PathBuf::from(env!("QLORA_TEST_SMOLLM2_GGUF"));
    assert!(
        path.is_file(),
        "{GGUF_NAME} not found at {path:?}; {MISSING}"
    );
    path
}

fn bf16s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect()
}

fn facts() -> Value {
    let text = std::fs::read_to_string(fixture("smollm2_gguf_facts.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The imported model directory (dropped with the temporary directory).
fn imported() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("smollm2");
    import_gguf(gguf_path(), &out, &ImportOptions::default()).unwrap();
    (tmp, out)
}

#[test]
#[cfg_attr(
    not(real_model),
    ignore = "needs SmolLM2's GGUF: run examples/quickstart.sh --fetch-only or set QLORA_SMOLLM2_GGUF"
)]
fn tokenizer_and_chat_template_match_transformers() {
    let (_tmp, dir) = imported();
    let facts = facts();
    let tokenizer = Tokenizer::load(&dir).unwrap();
    for (text, expected) in facts["tokenizer_cases"].as_object().unwrap() {
        let got = tokenizer.encode(text, true).unwrap();
        assert_eq!(got, ids(expected), "ids of {text:?}");
        assert_eq!(tokenizer.decode(&got, false).unwrap(), *text, "round trip");
    }
    let prompt = tokenizer
        .apply_chat_template(
            &[Message::new("user", "What is the capital of France?")],
            true,
        )
        .unwrap();
    assert_eq!(prompt, facts["chat_prompt"].as_str().unwrap());
    assert_eq!(
        tokenizer.encode(&prompt, true).unwrap(),
        ids(&facts["chat_prompt_ids"])
    );
}

#[test]
#[cfg_attr(
    not(real_model),
    ignore = "needs SmolLM2's GGUF: run examples/quickstart.sh --fetch-only or set QLORA_SMOLLM2_GGUF"
)]
fn weights_logits_and_greedy_text_match_transformers() {
    let (_tmp, dir) = imported();
    let facts = facts();
    // transformers holds the dequantized GGUF in bf16, as our default import does.
    let tensors = load_tensors_at(&dir.join("model.safetensors"));
    for (name, expected) in facts["weights_first8"].as_object().unwrap() {
        let got = &bf16s(&tensors[name].2)[..8];
        for (g, e) in got.iter().zip(expected.as_array().unwrap()) {
            let e = e.as_f64().unwrap() as f32;
            assert!((g - e).abs() <= 1e-6, "{name}: {got:?} vs {expected}");
        }
    }

    let model = CausalLm::load(
        &dir,
        &LoadOptions {
            bits: Bits::Sixteen,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let prompt = ids(&facts["chat_prompt_ids"]);
    let max_diff = top5_logits_diff(&model, &prompt, &facts["last_logits_top5"]);
    assert!(max_diff <= 1e-4, "top-5 logits differ by {max_diff}");

    let tokenizer = Tokenizer::load(&dir).unwrap();
    let config = SamplingConfig {
        max_new_tokens: 16,
        ..SamplingConfig::default()
    };
    let generation = generate(&model, &tokenizer, &prompt, &config, |_| {}).unwrap();
    assert_eq!(generation.stop, StopReason::EndOfSequence);
    let mut new_ids = generation.ids.clone();
    new_ids.push(tokenizer.eos_id().unwrap());
    assert_eq!(new_ids, ids(&facts["greedy_new_ids"]));
    let text = tokenizer.decode(&new_ids, false).unwrap();
    assert_eq!(text, facts["greedy_text"].as_str().unwrap());
    eprintln!("top-5 logits within {max_diff:.2e}; greedy answer: {text:?}");
}

#[test]
#[cfg_attr(
    not(real_model),
    ignore = "needs SmolLM2's GGUF: run examples/quickstart.sh --fetch-only or set QLORA_SMOLLM2_GGUF"
)]
fn the_file_is_the_one_the_facts_describe() {
    let gguf = GgufFile::open(gguf_path()).unwrap();
    assert_eq!(gguf.version(), 3);
    assert_eq!(gguf.string("general.architecture").unwrap(), Some("llama"));
    assert_eq!(gguf.tensor_names().len(), 272);
}
