//! `qlora eval --task multiple-choice` as a user runs it: the table, `--json` keys with the
//! per-item log-likelihoods, few-shot, and malformed questions as one-line errors naming
//! file:line.

use std::path::{Path, PathBuf};

use crate::common::qlora;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(p: &str) -> String {
    root()
        .join("tests/fixtures")
        .join(p)
        .to_str()
        .unwrap()
        .to_string()
}

fn mc(extra: &[&str]) -> (i32, String, String) {
    let model = fixture("tiny-llama");
    let mut args = vec![
        "eval",
        "--model",
        &model,
        "--bits",
        "16",
        "--task",
        "multiple-choice",
    ];
    args.extend_from_slice(extra);
    qlora(&args)
}

#[test]
fn multiple_choice_json_few_shot_and_table() {
    let data = fixture("lm_eval_mc/mc_test.jsonl");
    let dev = fixture("lm_eval_mc/mc_dev.jsonl");
    let (code, stdout, stderr) = mc(&[
        "--data",
        &data,
        "--style",
        "cloze",
        "--num-fewshot",
        "2",
        "--fewshot-data",
        &dev,
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for key in [
        "task",
        "style",
        "num_fewshot",
        "questions",
        "acc",
        "acc_stderr",
        "acc_norm",
        "acc_norm_stderr",
        "subjects",
        "first_context",
        "items",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert_eq!(
        (v["style"].as_str(), v["num_fewshot"].as_u64()),
        (Some("cloze"), Some(2))
    );
    assert_eq!(v["items"].as_array().unwrap().len(), 8);
    assert_eq!(v["items"][0]["loglikelihoods"].as_array().unwrap().len(), 4);
    assert_eq!(v["subjects"].as_object().unwrap().len(), 4);
    assert!(
        v["first_context"]
            .as_str()
            .unwrap()
            .starts_with("Question: What is the largest")
    );

    let (code, stdout, stderr) = mc(&["--data", &data]);
    assert_eq!(code, 0, "{stderr}");
    for needle in [
        "astronomy",
        "world_religions",
        "all",
        "letters style, 0-shot",
    ] {
        assert!(stdout.contains(needle), "{needle}: {stdout}");
    }
}

#[test]
fn malformed_questions_are_one_line_errors_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"question": "Q?", "choices": ["a", "b", "c"], "answer": 1}"#;
    let cases = [
        (
            r#"{"choices": ["a", "b"], "answer": 0}"#,
            "`question`: missing",
        ),
        (
            r#"{"question": "Q?", "choices": ["a", "b"], "answer": 2}"#,
            "out of range",
        ),
        (
            r#"{"question": "Q?", "choices": "a b", "answer": 0}"#,
            "list of strings",
        ),
        (
            r#"{"question": "Q?", "choices": ["a", "b", "c", "d"], "answer": 0}"#,
            "4 choices",
        ),
    ];
    for (i, (bad, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.jsonl"));
        std::fs::write(&path, format!("{good}\n{bad}\n")).unwrap();
        let (code, _, stderr) = mc(&["--data", path.to_str().unwrap()]);
        assert_eq!(code, 1, "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        let location = format!("bad{i}.jsonl:2");
        assert!(
            stderr.contains(&location) && stderr.contains(needle),
            "{needle}: {stderr}"
        );
    }
    // Different counts are fine for cloze.
    let path = dir.path().join("bad3.jsonl");
    let (code, _, stderr) = mc(&["--data", path.to_str().unwrap(), "--style", "cloze"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = mc(&[
        "--data",
        path.to_str().unwrap(),
        "--style",
        "cloze",
        "--num-fewshot",
        "1",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--fewshot-data"), "{stderr}");
}

fn train(out: &Path, extra: &[&str]) -> (i32, String, String) {
    let model = fixture("tiny-llama");
    let data = root().join("datasets/parity_train.jsonl");
    let mc = fixture("lm_eval_mc/mc_test.jsonl");
    let out = out.to_str().unwrap().to_string();
    let mut args = vec![
        "train",
        "--model",
        &model,
        "--data",
        data.to_str().unwrap(),
        "--out",
        &out,
        "--eval-mc-data",
        &mc,
        "--eval-steps",
        "2",
        "--save-best",
        "mc_acc",
        "--batch-size",
        "2",
        "--grad-accum",
        "1",
        "--lr",
        "1e-3",
        "--save-steps",
        "2",
    ];
    args.extend_from_slice(extra);
    qlora(&args)
}

/// Training with --eval-mc-data logs accuracy, keeps the best adapter in OUT/best, draws the
/// curves (and `qlora plot` draws them again); a resumed run keeps the best so far.
#[test]
fn training_logs_accuracy_keeps_the_best_and_draws_curves() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (code, _, stderr) = train(&out, &["--max-steps", "3"]);
    assert_eq!(code, 0, "{stderr}");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines[1]["mc_acc"].is_number() && lines[2]["mc_acc"].is_number());
    assert!(lines[0].get("mc_acc").is_none());
    let best: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("best/best.json")).unwrap())
            .unwrap();
    assert_eq!(best["metric"], "mc_acc");
    assert!(out.join("best/adapter_model.safetensors").is_file());
    assert!(out.join("best/adapter_config.json").is_file());
    let svg = std::fs::read_to_string(out.join("training_curves.svg")).unwrap();
    for series in [
        "loss",
        "learning rate",
        "acc_norm",
        "multiple-choice accuracy",
    ] {
        assert!(svg.contains(series), "{series} missing from the curves");
    }
    let (code, _, stderr) = qlora(&["plot", out.to_str().unwrap(), "--out", "/dev/null"]);
    assert_eq!(code, 0, "{stderr}");

    // Pretend step 2 was perfect: a resumed run must not replace it.
    let best_file = out.join("best/best.json");
    std::fs::write(
        &best_file,
        r#"{"metric": "mc_acc", "value": 1.0, "step": 2}"#,
    )
    .unwrap();
    let checkpoint = out.join("checkpoint-2");
    let (code, _, stderr) = train(
        &out,
        &["--max-steps", "4", "--resume", checkpoint.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{stderr}");
    let best: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&best_file).unwrap()).unwrap();
    assert_eq!(
        (best["step"].as_u64(), best["value"].as_f64()),
        (Some(2), Some(1.0))
    );
    // Bad combinations fail before any work.
    let (code, _, stderr) = qlora(&[
        "train",
        "--model",
        &fixture("tiny-llama"),
        "--data",
        root().join("datasets/parity_train.jsonl").to_str().unwrap(),
        "--out",
        dir.path().join("x").to_str().unwrap(),
        "--save-best",
        "mc_acc",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--eval-mc-data"), "{stderr}");
}
