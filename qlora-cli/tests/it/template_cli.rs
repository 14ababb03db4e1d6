//! `--chat-template` and `--eos-token` as a user gives them: training renders with them, the
//! adapter records them, and `generate`, `merge` and `export-gguf` use what it recorded; a
//! template that writes no stop token is warned of.

use std::path::{Path, PathBuf};

use qlora_core::gguf::GgufFile;

use crate::common::qlora;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A template of our own: `[role] text` turns, each assistant turn closed by `<|im_end|>`.
const TEMPLATE: &str = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% if m['role'] == 'assistant' %}<|im_end|>{% endif %}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}";

fn train(out: &Path, extra: &[&str]) -> (i32, String) {
    train_on("identity_eval.jsonl", out, extra)
}

/// `qlora train` on `datasets/DATA` for one step.
fn train_on(data: &str, out: &Path, extra: &[&str]) -> (i32, String) {
    let model = root().join("tests/fixtures/tiny-llama");
    let data = root().join("datasets").join(data);
    let mut args = vec![
        "train",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--out",
        s(out),
        "--max-steps",
        "1",
        "--rank",
        "4",
    ];
    args.extend_from_slice(extra);
    let (code, _, stderr) = qlora(&args);
    (code, stderr)
}

#[test]
fn a_chat_template_given_is_trained_recorded_and_carried_to_every_output() {
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("turns.jinja");
    std::fs::write(&template, TEMPLATE).unwrap();
    let out = dir.path().join("run");
    let (code, stderr) = train(&out, &["--chat-template", s(&template)]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("learn no stop token"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(out.join("chat_template.jinja")).unwrap(),
        TEMPLATE
    );
    let config = std::fs::read_to_string(out.join("training_config.toml")).unwrap();
    assert!(config.contains("chat_template = "), "{config}");

    // generate --adapter renders with the adapter's template, and stops at its turn end.
    let model = root().join("tests/fixtures/tiny-llama");
    let (code, _, stderr) = qlora(&[
        "generate",
        "--model",
        s(&model),
        "--adapter",
        s(&out),
        "--chat",
        "Who are you?",
        "--show-prompt",
        "--max-new-tokens",
        "2",
    ]);
    assert_eq!(code, 0, "{stderr}");
    // (transformers' trim_blocks drops the newline after `{% endif %}`.)
    assert!(
        stderr.contains(r#"prompt: "[user] Who are you?[assistant] ""#),
        "{stderr}"
    );
    // The flag overrides the adapter's: the model's own ChatML.
    let (code, _, stderr) = qlora(&[
        "generate",
        "--model",
        s(&model),
        "--adapter",
        s(&out),
        "--chat",
        "Who are you?",
        "--show-prompt",
        "--max-new-tokens",
        "1",
        "--chat-template",
        "tokenizer_default",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("<|im_start|>user"), "{stderr}");

    // merge writes it beside the merged weights; export-gguf into the file.
    let merged = dir.path().join("merged");
    let (code, _, stderr) = qlora(&[
        "merge",
        "--model",
        s(&model),
        "--adapter",
        s(&out),
        "--out",
        s(&merged),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(merged.join("chat_template.jinja")).unwrap(),
        TEMPLATE
    );
    let generation: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(merged.join("generation_config.json")).unwrap(),
    )
    .unwrap();
    // </s> (2) and the template's turn end, <|im_end|> (4).
    assert_eq!(generation["eos_token_id"], serde_json::json!([2, 4]));
    let gguf = dir.path().join("m.gguf");
    let (code, _, stderr) = qlora(&[
        "export-gguf",
        "--model",
        s(&model),
        "--adapter",
        s(&out),
        "--out",
        s(&gguf),
        "--type",
        "f32",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let file = GgufFile::open(&gguf).unwrap();
    assert_eq!(
        file.string("tokenizer.chat_template").unwrap(),
        Some(TEMPLATE)
    );
    assert_eq!(
        file.integer("tokenizer.ggml.eot_token_id").unwrap(),
        Some(4)
    );
}

#[test]
fn built_in_templates_eos_tokens_and_stopless_templates() {
    let dir = tempfile::tempdir().unwrap();
    // The tiny model has ChatML's tokens but not Llama 3's.
    let (code, stderr) = train(&dir.path().join("a"), &["--chat-template", "chatml"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(dir.path().join("a/chat_template.jinja").is_file());
    let (code, stderr) = train(&dir.path().join("b"), &["--chat-template", "llama3"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("llama3 writes the special token <|start_header_id|>"),
        "{stderr}"
    );
    let (code, stderr) = train(&dir.path().join("c"), &["--chat-template", "vicuna"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("not a file, and not one of chatml, llama3, tokenizer_default"),
        "{stderr}"
    );
    let (code, stderr) = train(&dir.path().join("d"), &["--eos-token", "<|nope|>"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--eos-token `<|nope|>`"), "{stderr}");

    // A template that ends turns with no stop token: the adapter would never stop.
    let plain = dir.path().join("plain.jinja");
    std::fs::write(
        &plain,
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
    )
    .unwrap();
    let (code, stderr) = train(&dir.path().join("e"), &["--chat-template", s(&plain)]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("warning: 8 of 8 examples learn no stop token"),
        "{stderr}"
    );
    // The eos the model pads with is still learned at the end of each Alpaca response:
    // padding is masked by position, not by id.
    let (code, stderr) = train_on("alpaca_sample.jsonl", &dir.path().join("f"), &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("learn no stop token"), "{stderr}");
}
