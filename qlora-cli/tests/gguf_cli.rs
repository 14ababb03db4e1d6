//! `qlora import-gguf` and `--model FILE.gguf` as a user runs them. The real-model part needs
//! SmolLM2's GGUF (see tests/gguf_smollm2.rs at the root) and says SKIPPED without it.

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

fn smollm2() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("QLORA_SMOLLM2_GGUF") {
        return Some(PathBuf::from(path));
    }
    let cache = std::env::var_os("QLORA_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("qlora")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/qlora")))?;
    let path = cache.join("downloads/SmolLM2-135M-Instruct.Q4_1.gguf");
    path.is_file().then_some(path)
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
fn a_gguf_is_imported_once_and_used_as_a_model() {
    let Some(gguf) = smollm2() else {
        eprintln!("SKIPPED a_gguf_is_imported_once_and_used_as_a_model: no SmolLM2 GGUF");
        return;
    };
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
