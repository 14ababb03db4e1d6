//! Ways a run could silently go wrong, as a careless user meets them: resuming with changed
//! settings, and so on. Each either refuses with a one-line error naming the cause or does
//! what it says.

mod common;

use std::path::{Path, PathBuf};

use common::qlora;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// `qlora train` on the fixture model, two short rows a step; `extra` flags appended.
fn train(out: &Path, extra: &[&str]) -> (i32, String) {
    let model = path(&root().join("tests/fixtures/tiny-llama"));
    let data = path(&root().join("datasets/parity_train.jsonl"));
    let out = path(out);
    let mut args = vec![
        "train",
        "--model",
        &model,
        "--data",
        &data,
        "--out",
        &out,
        "--max-seq-len",
        "128",
        "--rank",
        "4",
        "--grad-accum",
        "1",
    ];
    args.extend_from_slice(extra);
    let (code, _, stderr) = qlora(&args);
    (code, stderr)
}

#[test]
fn resuming_refuses_changes_that_alter_the_run_and_reports_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (code, stderr) = train(
        &out,
        &["--alpha", "8", "--max-steps", "3", "--save-steps", "2"],
    );
    assert_eq!(code, 0, "{stderr}");

    for (flag, value) in [
        ("--alpha", "64"),
        ("--use-rslora", "true"),
        ("--seed", "7"),
        ("--batch-size", "2"),
        ("--lr", "1e-3"),
    ] {
        let mut args = vec!["--max-steps", "5", "--resume", "latest", flag, value];
        if flag != "--alpha" {
            args.extend(["--alpha", "8"]);
        }
        let (code, stderr) = train(&out, &args);
        assert_ne!(code, 0, "{flag} {value}: {stderr}");
        let line = stderr.lines().last().unwrap();
        assert!(
            line.contains(&format!("cannot resume with {flag} ")) && line.contains("checkpoint-2"),
            "{flag}: {stderr}"
        );
    }
    // Another data file is another run.
    let other = dir.path().join("other.jsonl");
    std::fs::copy(root().join("datasets/parity_train.jsonl"), &other).unwrap();
    let model = path(&root().join("tests/fixtures/tiny-llama"));
    let (code, _, stderr) = qlora(&[
        "train",
        "--model",
        &model,
        "--data",
        &path(&other),
        "--out",
        &path(&out),
        "--max-seq-len",
        "128",
        "--rank",
        "4",
        "--grad-accum",
        "1",
        "--alpha",
        "8",
        "--resume",
        "latest",
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("cannot resume with --data "), "{stderr}");

    // A longer run with other save and log intervals continues, and says what changed.
    let (code, stderr) = train(
        &out,
        &[
            "--alpha",
            "8",
            "--max-steps",
            "4",
            "--save-steps",
            "5",
            "--resume",
            "latest",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("resuming with --max-steps 3 -> 4"),
        "{stderr}"
    );
    assert!(
        stderr.contains("resuming with --save-steps 2 -> 5"),
        "{stderr}"
    );
}

#[test]
fn plans_too_large_to_compute_are_errors_not_fits() {
    let model = path(&root().join("tests/fixtures/tiny-llama"));
    for (flags, expected) in [
        (vec!["--seq-len", "18446744073709551615"], "--seq-len"),
        (vec!["--seq-len", "4000000000"], "--seq-len"),
        (vec!["--rank", "9223372036854775807"], "--rank"),
        (
            vec!["--rank", "18446744073709551615"],
            "--rank 18446744073709551615: too large",
        ),
        (
            vec!["--batch-size", "4294967296", "--seq-len", "4294967296"],
            "--batch-size",
        ),
    ] {
        let mut args = vec!["plan", "--model", &model, "--gpu-memory", "24GB"];
        args.extend(&flags);
        let (code, stdout, stderr) = qlora(&args);
        assert_eq!(code, 1, "{flags:?}: {stdout}{stderr}");
        assert!(!stdout.contains("fits"), "{flags:?}: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "{flags:?}: {stderr}");
        assert!(stderr.contains(expected), "{flags:?}: {stderr}");
    }
}

#[test]
fn non_finite_weights_and_bad_norm_eps_are_errors_naming_where() {
    let dir = tempfile::tempdir().unwrap();
    let source = root().join("tests/fixtures/tiny-llama");
    let data = path(&root().join("datasets/parity_eval.jsonl"));
    // rms_norm_eps -1 in config.json.
    let bad_eps = dir.path().join("eps");
    std::fs::create_dir(&bad_eps).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), bad_eps.join(entry.file_name())).unwrap();
    }
    let config = std::fs::read_to_string(bad_eps.join("config.json")).unwrap();
    std::fs::write(
        bad_eps.join("config.json"),
        config.replace("\"rms_norm_eps\": 1e-05", "\"rms_norm_eps\": -1"),
    )
    .unwrap();
    let (code, _, stderr) = qlora(&[
        "eval",
        "--model",
        &path(&bad_eps),
        "--data",
        &data,
        "--format",
        "alpaca",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("config.json") && stderr.contains("rms_norm_eps"),
        "{stderr}"
    );

    // A NaN in an adapter's weights.
    let adapter = dir.path().join("adapter");
    std::fs::create_dir(&adapter).unwrap();
    let lora = root().join("tests/fixtures/tiny-llama-lora");
    std::fs::copy(
        lora.join("adapter_config.json"),
        adapter.join("adapter_config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(lora.join("adapter_model.safetensors")).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut damaged = bytes.clone();
    // The first value of the first tensor: f32 NaN.
    damaged[8 + header..12 + header].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(adapter.join("adapter_model.safetensors"), damaged).unwrap();
    let (code, stdout, stderr) = qlora(&[
        "eval",
        "--model",
        &path(&source),
        "--adapter",
        &path(&adapter),
        "--data",
        &data,
        "--bits",
        "16",
        "--format",
        "alpaca",
    ]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("adapter_model.safetensors") && stderr.contains("NaN"),
        "{stderr}"
    );
}
