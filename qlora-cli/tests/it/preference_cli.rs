//! `qlora train --method dpo|orpo|simpo` and `qlora eval --method ...` as a user runs them, on
//! the tiny model and `datasets/preference_*.jsonl` (answers that follow an instruction against
//! answers that ignore it).

use std::path::{Path, PathBuf};

use crate::common::qlora;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn train(out: &Path, extra: &[&str]) -> (i32, String) {
    train_on(&root().join("datasets/preference_train.jsonl"), out, extra)
}

/// `qlora train` of the tiny model on the pairs in `data`.
fn train_on(data: &Path, out: &Path, extra: &[&str]) -> (i32, String) {
    let mut args: Vec<String> = [
        "train",
        "--model",
        &s(&root().join("tests/fixtures/tiny-llama")),
        "--data",
        &s(data),
        "--out",
        &s(out),
        "--no-packing",
        "--batch-size",
        "8",
        "--lr",
        "5e-3",
        "--rank",
        "8",
        "--logging-steps",
        "1",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, stderr) = qlora(&args);
    (code, stderr)
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn eval_json(adapter: &Path, method: &str) -> serde_json::Value {
    let (code, stdout, stderr) = qlora(&[
        "eval",
        "--model",
        &s(&root().join("tests/fixtures/tiny-llama")),
        "--adapter",
        &s(adapter),
        "--data",
        &s(&root().join("datasets/preference_eval.jsonl")),
        "--method",
        method,
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(stdout.trim()).unwrap()
}

#[test]
fn dpo_learns_the_held_out_preference_and_eval_scores_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dpo");
    let eval = s(&root().join("datasets/preference_eval.jsonl"));
    let (code, stderr) = train(
        &out,
        &[
            "--method",
            "dpo",
            "--eval-data",
            &eval,
            "--max-steps",
            "12",
            "--eval-steps",
            "4",
            "--grad-accum",
            "1",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("72 records (preference pairs) -> 72 pairs"),
        "{stderr}"
    );
    // The policy starts as the reference: the loss is ln 2 and no pair is preferred yet.
    assert!(
        stderr.contains("eval loss before training: 0.6931"),
        "{stderr}"
    );
    let lines = metrics(&out);
    let last = lines.last().unwrap();
    for key in [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "eval_rewards/accuracies",
    ] {
        assert!(last.get(key).is_some(), "{key} in {last}");
    }
    let curves = std::fs::read_to_string(out.join("training_curves.svg")).unwrap();
    assert!(
        curves.contains("rewards") && curves.contains("reward accuracy"),
        "the curves show the rewards"
    );
    let accuracy = last["eval_rewards/accuracies"].as_f64().unwrap();
    assert!(accuracy >= 0.9, "held-out reward accuracy {accuracy}");
    assert!(last["eval_loss"].as_f64().unwrap() < 0.6);

    // `qlora eval --method dpo` scores the adapter as training's last evaluation did (other
    // rows of padding: the same sums up to f32 rounding).
    let scored = eval_json(&out, "dpo");
    let (got, want) = (
        scored["loss"].as_f64().unwrap(),
        last["eval_loss"].as_f64().unwrap(),
    );
    assert!((got - want).abs() <= 1e-6 * want, "{scored} vs {last}");
    assert_eq!(
        scored["rewards/accuracies"],
        last["eval_rewards/accuracies"]
    );
    assert_eq!(scored["pairs"], 18);
}

#[test]
fn orpo_and_simpo_train_without_a_reference() {
    let dir = tempfile::tempdir().unwrap();
    for method in ["orpo", "simpo"] {
        let out = dir.path().join(method);
        let (code, stderr) = train(
            &out,
            &["--method", method, "--max-steps", "8", "--grad-accum", "1"],
        );
        assert_eq!(code, 0, "{method}: {stderr}");
        let lines = metrics(&out);
        let (first, last) = (&lines[0], lines.last().unwrap());
        assert!(
            last["loss"].as_f64().unwrap() < first["loss"].as_f64().unwrap(),
            "{method}: {first} -> {last}"
        );
        let scored = eval_json(&out, method);
        assert!(scored["loss"].as_f64().unwrap().is_finite(), "{scored}");
    }
    // A reference for a method without one is a mistake.
    let (code, stderr) = train(
        &dir.path().join("x"),
        &["--method", "orpo", "--precompute-ref"],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("--precompute-ref"), "{stderr}");
}

/// With `--precompute-ref` the reference's scores are kept in each checkpoint: a run resumed
/// from one ends on the same adapter bytes and losses as an uninterrupted run; a changed
/// `--beta` or method is refused.
#[test]
fn a_dpo_run_with_precomputed_reference_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec!["--grad-accum", "2", "--save-steps", "3"];
        args.extend_from_slice(extra);
        train(out, &args)
    };
    let whole = dir.path().join("whole");
    let dpo = ["--method", "dpo", "--precompute-ref"];
    let (code, stderr) = run(&whole, &[&dpo[..], &["--max-steps", "6"]].concat());
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("scoring 72 pairs with the reference"),
        "{stderr}"
    );
    let parts = dir.path().join("parts");
    let (code, stderr) = run(&parts, &[&dpo[..], &["--max-steps", "4"]].concat());
    assert_eq!(code, 0, "{stderr}");
    let checkpoint = parts.join("checkpoint-3");
    assert!(checkpoint.join("reference_logps.safetensors").is_file());
    let resume = s(&checkpoint);
    let resumed = |changed: &[&str]| {
        let mut args = changed.to_vec();
        args.extend(["--max-steps", "6", "--resume", resume.as_str()]);
        run(&parts, &args)
    };
    for (changed, flag) in [
        (
            &["--method", "dpo", "--precompute-ref", "--beta", "0.2"][..],
            "--beta",
        ),
        (&["--method", "orpo"][..], "--method"),
    ] {
        let (code, stderr) = resumed(changed);
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains(&format!("cannot resume with {flag} ")),
            "{stderr}"
        );
    }
    let (code, stderr) = resumed(&dpo);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("from the checkpoint"), "{stderr}");
    let weights = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    assert_eq!(weights(&whole), weights(&parts), "the same adapter bytes");
    let losses = |d: &Path| -> Vec<f64> {
        metrics(d)
            .iter()
            .map(|m| m["loss"].as_f64().unwrap())
            .collect()
    };
    assert_eq!(losses(&whole), losses(&parts));
}

/// Bad preference data: a missing field names the file and line; pairs that cannot teach a
/// preference are counted and left out; long prompts are cut from the left; the loss stays
/// finite.
#[test]
fn bad_preference_data_is_an_error_or_a_counted_skip() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pairs.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"Q\", \"chosen\": \" a\", \"rejected\": \" b\"}\n\
         {\"prompt\": \"Q\", \"chosen\": \" a\"}\n",
    )
    .unwrap();
    let (code, stderr) = train_on(&data, &dir.path().join("a"), &["--method", "dpo"]);
    assert_eq!(code, 1);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert_eq!(
        stderr.trim_end().lines().last(),
        Some(errors[0]),
        "{stderr}"
    );
    assert!(
        stderr.contains("pairs.jsonl:2: field `rejected`: missing"),
        "{stderr}"
    );
    let long = "word ".repeat(200);
    std::fs::write(
        &data,
        format!(
            "{{\"prompt\": \"Q\", \"chosen\": \" same\", \"rejected\": \" same\"}}\n\
             {{\"prompt\": \"Q\", \"chosen\": \"\", \"rejected\": \" b\"}}\n\
             {{\"prompt\": \"{long}\", \"chosen\": \" YES\", \"rejected\": \" yes\"}}\n\
             {{\"prompt\": \"Say yes.\", \"chosen\": \" YES\", \"rejected\": \" yes\"}}\n"
        ),
    )
    .unwrap();
    let out = dir.path().join("b");
    let (code, stderr) = train_on(
        &data,
        &out,
        &[
            "--method",
            "dpo",
            "--max-prompt-len",
            "16",
            "--max-steps",
            "2",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("4 records (preference pairs) -> 2 pairs")
            && stderr.contains("1 truncated")
            && stderr.contains("skipped 1 pairs whose chosen equals rejected")
            && stderr.contains("skipped 1 pairs with an empty completion"),
        "{stderr}"
    );
    for m in metrics(&out) {
        assert!(m["loss"].as_f64().unwrap().is_finite(), "{m}");
    }
    // Nothing left to learn from is an error, not a run.
    std::fs::write(
        &data,
        "{\"prompt\": \"Q\", \"chosen\": \" same\", \"rejected\": \" same\"}\n",
    )
    .unwrap();
    let (code, stderr) = train_on(&data, &dir.path().join("c"), &["--method", "dpo"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no preference pair to learn from"),
        "{stderr}"
    );
}
