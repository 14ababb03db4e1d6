//! `qlora generate` and `qlora eval` as a user runs them, and their one-line errors.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn qlora(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_qlora"))
        .args(args)
        .output()
        .expect("run qlora");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn model_copy(root: &Path) -> PathBuf {
    let dir = root.join("model");
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(fixture("tiny-llama")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    dir
}

fn expect_one_line_error(run: &Run, needles: &[&str]) {
    assert_eq!(run.code, 1, "stderr: {}", run.stderr);
    assert_eq!(
        run.stderr.trim_end().lines().count(),
        1,
        "one line: {}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "`{needle}` not in: {}",
            run.stderr
        );
    }
}

#[test]
fn generate_writes_only_the_text_to_stdout() {
    let model = fixture("tiny-llama");
    let run = qlora(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "hello world",
        "--max-new-tokens",
        "8",
        "--temperature",
        "0",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stdout.trim().is_empty());
    assert!(run.stderr.contains("prompt tokens"), "{}", run.stderr);
    // Greedy is deterministic.
    let again = qlora(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "hello world",
        "--max-new-tokens",
        "8",
    ]);
    assert_eq!(again.stdout, run.stdout);
    let chat = qlora(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--chat",
        "what is a rank?",
        "--max-new-tokens",
        "4",
        "--bits",
        "16",
    ]);
    assert_eq!(chat.code, 0, "{}", chat.stderr);
}

#[test]
fn eval_reports_loss_and_perplexity_as_json() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("eval.jsonl");
    std::fs::write(
        &data,
        "{\"text\": \"hello world, the model is learning to quantize\"}\n\
         {\"text\": \"why is the rank of an adapter small?\"}\n",
    )
    .unwrap();
    let model = fixture("tiny-llama");
    let run = qlora(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
        "--bits",
        "16",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let loss = report["loss"].as_f64().unwrap();
    let perplexity = report["perplexity"].as_f64().unwrap();
    assert!(loss > 0.0 && loss.is_finite());
    assert!((perplexity - loss.exp()).abs() < 1e-9 * perplexity);
    // 10 and 11 tokens (this tokenizer adds no bos): 9 + 10 predicted positions.
    assert_eq!(report["tokens"], 19, "{report}");
    assert_eq!(report["examples"], 2);
}

#[test]
fn eval_names_file_line_and_field_of_bad_records() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("bad.jsonl");
    std::fs::write(&data, "{\"text\": \"fine\"}\n{\"txt\": \"typo\"}\n").unwrap();
    let model = fixture("tiny-llama");
    let run = qlora(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    expect_one_line_error(&run, &["bad.jsonl:2", "`text`", "missing"]);
}

#[test]
fn malformed_models_give_one_line_errors() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("d.jsonl");
    std::fs::write(&data, "{\"text\": \"hello\"}\n").unwrap();
    let eval = |model: &Path| {
        qlora(&[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ])
    };

    let model = model_copy(root.path());
    let config = std::fs::read_to_string(model.join("config.json")).unwrap();
    std::fs::write(
        model.join("config.json"),
        config.replace("\"num_attention_heads\": 4,", ""),
    )
    .unwrap();
    expect_one_line_error(&eval(&model), &["config.json", "num_attention_heads"]);
    std::fs::write(model.join("config.json"), &config).unwrap();

    std::fs::write(
        model.join("config.json"),
        config.replace("\"intermediate_size\": 384", "\"intermediate_size\": 512"),
    )
    .unwrap();
    expect_one_line_error(
        &eval(&model),
        &[
            "model.safetensors",
            "model.layers.0.mlp.gate_proj.weight",
            "[384, 128]",
            "[512, 128]",
        ],
    );
    std::fs::write(model.join("config.json"), &config).unwrap();

    let weights = std::fs::read(model.join("model.safetensors")).unwrap();
    std::fs::write(
        model.join("model.safetensors"),
        &weights[..weights.len() / 2],
    )
    .unwrap();
    expect_one_line_error(
        &eval(&model),
        &["model.safetensors", "not a valid safetensors"],
    );
    std::fs::write(model.join("model.safetensors"), &weights).unwrap();

    std::fs::remove_file(model.join("tokenizer.json")).unwrap();
    expect_one_line_error(&eval(&model), &["tokenizer.json", "missing"]);
}
