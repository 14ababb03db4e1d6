//! Real models through the GGUF importer and exporter, against what transformers 5.25 makes of
//! the same file in float32 (`tests/reference/NAME_gguf_facts.json`, by
//! `tests/reference/make_gguf_facts.py`): config.json, tokenizer (and chat template, where the
//! file has one), weights, the loss of a text within 1e-4 relative, the top-5 logits of a
//! prompt within 1e-4, 32 greedy tokens identical; and an f32 export of the imported model
//! that imports back bit-identical.
//!
//! - Qwen2.5-Coder-0.5B-Instruct (llama.cpp's `qwen2`: q/k/v biases, rows not permuted,
//!   ChatML; Q5_0, Q8_0, Q4_K and Q6_K tensors).
//! - Gemma 3 270M (`gemma3`: norms stored as `1 + w`, four a layer and on q/k heads, GeGLU,
//!   scaled embeddings, five sliding layers of 512 keys to a global one, 262,144 tokens of
//!   SentencePiece BPE; Q8_0, Q5_0, Q4_K and Q6_K tensors; a base model without a template).
//!
//! The GGUFs (491 and 253 MB) are not in the repo; `examples/fetch_models.sh` fetches them and
//! `build.rs` looks for them as for SmolLM2's (`$QLORA_QWEN25_GGUF`, `$QLORA_GEMMA3_GGUF`).

use std::path::{Path, PathBuf};

use qlora_core::FloatDtype;
use qlora_core::export::{ExportOptions, GgufType, export_gguf};
use qlora_core::generate::{SamplingConfig, generate};
use qlora_core::gguf::{GgufFile, ImportOptions, import_gguf};
use qlora_core::model::{Bits, CausalLm, LoadOptions};
use qlora_core::text::{Message, Tokenizer};
use serde_json::Value;
use support::facts::{ids, top5_logits_diff};
use support::{f32s, load_tensors_at, reference};

fn gguf_path(path: &str) -> PathBuf {
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "not found at {path:?}; run examples/fetch_models.sh"
    );
    path
}

fn facts(name: &str) -> Value {
    let text = std::fs::read_to_string(reference(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn f32_import(gguf: &Path, out: &Path) {
    let options = ImportOptions {
        dtype: FloatDtype::F32,
        ..ImportOptions::default()
    };
    import_gguf(gguf, out, &options).unwrap();
}

/// The config.json keys every import must derive as transformers does.
const CONFIG_KEYS: [&str; 11] = [
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "vocab_size",
    "tie_word_embeddings",
    "bos_token_id",
    "pad_token_id",
];

#[test]
#[cfg_attr(
    not(real_qwen25),
    ignore = "needs Qwen2.5-Coder-0.5B-Instruct's GGUF: run examples/fetch_models.sh"
)]
fn qwen25_gguf_matches_transformers_and_exports_back_bit_identical() {
    matches_transformers_and_exports_back(
        &gguf_path(env!("QLORA_TEST_QWEN25_GGUF")),
        &facts("qwen2.5_gguf_facts.json"),
        ("qwen2", "Qwen2ForCausalLM"),
        &[
            "use_sliding_window",
            "sliding_window",
            "eos_token_id",
            "hidden_act",
        ],
    );
}

#[test]
#[cfg_attr(
    not(real_gemma3),
    ignore = "needs Gemma 3 270M's GGUF: run examples/fetch_models.sh"
)]
fn gemma3_gguf_matches_transformers_and_exports_back_bit_identical() {
    matches_transformers_and_exports_back(
        &gguf_path(env!("QLORA_TEST_GEMMA3_GGUF")),
        &facts("gemma3_gguf_facts.json"),
        ("gemma3", "Gemma3ForCausalLM"),
        &[
            "sliding_window",
            "layer_types",
            "query_pre_attn_scalar",
            "head_dim",
            "hidden_activation",
            "eos_token_id",
        ],
    );
}

/// The checks of the module's header on the GGUF `gguf` of llama.cpp's `arch` (`class` in
/// transformers), with `extra_keys` of config.json equal to transformers' too.
fn matches_transformers_and_exports_back(
    gguf: &Path,
    facts: &Value,
    (arch, class): (&str, &str),
    extra_keys: &[&str],
) {
    assert_eq!(
        GgufFile::open(gguf)
            .unwrap()
            .string("general.architecture")
            .unwrap(),
        Some(arch)
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    f32_import(gguf, &dir);

    // config.json: the keys transformers derives from the metadata.
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let theirs = &facts["config"];
    for key in CONFIG_KEYS.iter().chain(extra_keys) {
        assert_eq!(config[key], theirs[key], "config.json `{key}`");
    }
    assert_eq!(config["architectures"][0], class);

    let tokenizer = Tokenizer::load(&dir).unwrap();
    for (text, expected) in facts["tokenizer_cases"].as_object().unwrap() {
        let got = tokenizer.encode(text, false).unwrap();
        assert_eq!(got, ids(expected), "ids of {text:?}");
        assert_eq!(tokenizer.decode(&got, false).unwrap(), *text, "round trip");
    }
    // The chat template's prompt, or (a file without one) the facts' plain prompt, with BOS.
    let prompt = match facts["chat_messages"][0]["content"].as_str() {
        Some(content) => tokenizer
            .apply_chat_template(&[Message::new("user", content)], true)
            .unwrap(),
        None => facts["chat_prompt"].as_str().unwrap().to_string(),
    };
    assert_eq!(prompt, facts["chat_prompt"].as_str().unwrap());
    let prompt_ids = tokenizer.encode(&prompt, true).unwrap();
    assert_eq!(prompt_ids, ids(&facts["chat_prompt_ids"]));

    let tensors = load_tensors_at(&dir.join("model.safetensors"));
    for (name, expected) in facts["weights_first8"].as_object().unwrap() {
        let got = &f32s(&tensors[name].2)[..8];
        let want: Vec<f32> = expected
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got, want, "{name}");
    }
    drop(tensors);

    let model = CausalLm::load(
        &dir,
        &LoadOptions {
            bits: Bits::Sixteen,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    // The loss of a text.
    let text_ids = ids(&facts["loss_ids"]);
    assert_eq!(
        tokenizer
            .encode(facts["loss_text"].as_str().unwrap(), false)
            .unwrap(),
        text_ids
    );
    let labels: Vec<i64> = text_ids.iter().map(|&id| i64::from(id)).collect();
    let logits = model
        .forward(std::slice::from_ref(&text_ids), None, None)
        .unwrap();
    let loss = model.loss_sum(logits, &[labels]).unwrap();
    let mean = loss.sum.into_scalar::<f32>() as f64 / loss.tokens as f64;
    let want = facts["loss"].as_f64().unwrap();
    let relative = (mean - want).abs() / want;
    assert!(
        relative <= 1e-4,
        "loss {mean} vs {want}: relative {relative:.2e}"
    );

    // The top-5 logits of the chat prompt's last position.
    let max_diff = top5_logits_diff(&model, &prompt_ids, &facts["last_logits_top5"]);
    assert!(max_diff <= 1e-4, "top-5 logits differ by {max_diff}");

    // 32 greedy tokens.
    let config = SamplingConfig {
        max_new_tokens: 32,
        ..SamplingConfig::default()
    };
    let generation = generate(&model, &tokenizer, &prompt_ids, &config, |_| {}).unwrap();
    assert_eq!(generation.ids, ids(&facts["greedy_new_ids"]));
    let text = tokenizer.decode(&generation.ids, false).unwrap();
    assert_eq!(text, facts["greedy_text"].as_str().unwrap());
    eprintln!(
        "loss {mean} vs {want} (relative {relative:.2e}); top-5 logits within {max_diff:.2e}; \
         greedy: {text:?}"
    );
    drop(model);

    // An f32 export imports back bit-identical.
    let exported = tmp.path().join("model-f32.gguf");
    let options = ExportOptions {
        kind: GgufType::F32,
        base: None,
        name: None,
        overwrite: false,
    };
    export_gguf(&dir, None, &exported, &options).unwrap();
    let back = tmp.path().join("back");
    f32_import(&exported, &back);
    assert!(
        same_bytes(
            &dir.join("model.safetensors"),
            &back.join("model.safetensors")
        ),
        "the weights differ after export and import"
    );
    for file in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        assert_eq!(
            std::fs::read_to_string(dir.join(file)).unwrap(),
            std::fs::read_to_string(back.join(file)).unwrap(),
            "{file}"
        );
    }
}

/// Whether two files hold the same bytes (read a block at a time: these are gigabytes).
fn same_bytes(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (mut a, mut b) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    if a.metadata().unwrap().len() != b.metadata().unwrap().len() {
        return false;
    }
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = a.read(&mut x).unwrap();
        if n == 0 {
            return true;
        }
        b.read_exact(&mut y[..n]).unwrap();
        if x[..n] != y[..n] {
            return false;
        }
    }
}
