//! `qlora import-gguf` and `--model FILE.gguf` as a user runs them. The real-model part needs
//! SmolLM2's GGUF: `build.rs` finds it, or the test is compiled as ignored (see
//! tests/gguf_smollm2.rs at the root).

use std::path::{Path, PathBuf};
use std::process::Command;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn qlora(args: &[&str], cache: &Path) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_qlora"))
        .args(args)
        .env("QLORA_CACHE", cache)
        .output()
        .expect("run qlora");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The GGUF `build.rs` found (the test runs only then, or under `CI=true`).
fn smollm2() -> PathBuf {
    let path = PathBuf::from(env!("QLORA_TEST_SMOLLM2_GGUF"));
    assert!(
        path.is_file(),
        "SmolLM2's GGUF not found at {path:?}: run examples/quickstart.sh --fetch-only or set QLORA_SMOLLM2_GGUF"
    );
    path
}

#[test]
fn bad_gguf_files_give_one_line_errors_and_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("broken.gguf");
    std::fs::write(&bad, b"GGUF but not really").unwrap();
    let out = tmp.path().join("out");
    for args in [
        vec![
            "import-gguf",
            bad.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        vec![
            "eval",
            "--model",
            bad.to_str().unwrap(),
            "--data",
            "x.jsonl",
        ],
    ] {
        let run = qlora(&args, tmp.path());
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
        assert!(run.stderr.contains("broken.gguf"), "{}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    }
    assert!(!out.exists());
    let missing = qlora(
        &[
            "import-gguf",
            "nowhere.gguf",
            "--out",
            out.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("nowhere.gguf"),
        "{}",
        missing.stderr
    );
}

#[test]
#[cfg_attr(
    not(real_model),
    ignore = "needs SmolLM2's GGUF: run examples/quickstart.sh --fetch-only or set QLORA_SMOLLM2_GGUF"
)]
fn a_gguf_is_imported_once_and_used_as_a_model() {
    let gguf = smollm2();
    let cache = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/identity_eval.jsonl");
    let args = [
        "eval",
        "--model",
        gguf.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--format",
        "messages",
        "--bits",
        "16",
        "--json",
    ];
    let first = qlora(&args, cache.path());
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(first.stderr.contains("importing"), "{}", first.stderr);
    let second = qlora(&args, cache.path());
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(
        !second.stderr.contains("importing"),
        "cached: {}",
        second.stderr
    );
    assert_eq!(first.stdout, second.stdout);
    let report: serde_json::Value = serde_json::from_str(&first.stdout).unwrap();
    let loss = report["loss"].as_f64().unwrap();
    // The instruct model has never heard of Quokka: a high loss on the identity answers.
    assert!(loss > 3.0, "{loss}");
    let imported: Vec<_> = std::fs::read_dir(cache.path().join("gguf"))
        .unwrap()
        .collect();
    assert_eq!(imported.len(), 1);
}

/// `export-gguf` as a user runs it: a q4_k_m file of the fixture model with the fixture adapter
/// that `--model FILE.gguf` loads again, and one-line errors with nothing left behind for an
/// unknown type, an adapter for another model, a model we do not write and an output that
/// cannot be written.
#[test]
fn export_gguf_writes_a_file_and_refuses_bad_input_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = root.join("tests/fixtures/tiny-llama");
    let adapter = root.join("tests/fixtures/tiny-llama-lora");
    let out = tmp.path().join("tiny.gguf");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let export = |extra: &[&str], model: &Path, out: &Path| {
        let mut args = vec![
            "export-gguf".to_string(),
            "--model".into(),
            s(model),
            "--adapter".into(),
            s(&adapter),
            "--out".into(),
            s(out),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        qlora(&args, tmp.path())
    };
    let run = export(&["--type", "q4_k_m"], &model, &out);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("merged 14 adapters"), "{}", run.stderr);
    // Rows of 128 values do not split into K-quant blocks of 256: llama-quantize's fallbacks.
    assert!(
        run.stderr.contains("Q5_0") && run.stderr.contains("Q8_0"),
        "{}",
        run.stderr
    );
    let data = root.join("datasets/identity_eval.jsonl");
    let eval = qlora(
        &[
            "eval",
            "--model",
            out.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--format",
            "messages",
            "--json",
        ],
        tmp.path(),
    );
    assert_eq!(eval.code, 0, "{}", eval.stderr);
    // The file exists: a second export refuses to replace it without --force.
    let again = export(&[], &model, &out);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);

    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(model.join(f), other.join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    config["hidden_size"] = 64.into();
    std::fs::write(other.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(
        model.join("model.safetensors"),
        other.join("model.safetensors"),
    )
    .unwrap();
    let mut mlp_bias = config.clone();
    mlp_bias["hidden_size"] = 128.into();
    mlp_bias["mlp_bias"] = true.into();
    let biased = tmp.path().join("biased");
    std::fs::create_dir(&biased).unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ] {
        std::fs::copy(model.join(f), biased.join(f)).unwrap();
    }
    std::fs::write(biased.join("config.json"), mlp_bias.to_string()).unwrap();
    let unwritable = Path::new("/proc/qlora-test/x.gguf");
    for (extra, model, out, needle) in [
        (
            vec!["--type", "q3_k_s"],
            &model,
            tmp.path().join("a.gguf"),
            "q3_k_s",
        ),
        (vec![], &other, tmp.path().join("b.gguf"), "tiny-llama-lora"),
        (vec![], &biased, tmp.path().join("c.gguf"), "mlp_bias"),
        (vec![], &model, unwritable.to_path_buf(), "/proc/qlora-test"),
    ] {
        let run = export(&extra, model, &out);
        assert_eq!(run.code, 1, "{needle}: {}", run.stderr);
        assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
        assert!(run.stderr.contains(needle), "{needle}: {}", run.stderr);
        assert!(!out.exists(), "{needle}: output left behind");
    }
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".partial-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
