//! `--model ORG/NAME[@REVISION]` from a Hugging Face cache laid out as `huggingface_hub` lays
//! it out (blobs, snapshot links, refs), as a user with models downloaded by transformers runs
//! it.

use crate::common::qlora_env;
use std::path::{Path, PathBuf};

const COMMIT: &str = "5f0b02c75b57c5855da9ae460ce51323ea669d8a";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The tiny fixture as `hub/models--Org--Tiny`: each file a blob, linked from the snapshot of
/// COMMIT, which `refs/main` names.
fn cache_with_tiny_model(hub: &Path) -> PathBuf {
    let repo = hub.join("models--Org--Tiny");
    let snapshot = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    let fixture = root().join("tests/fixtures/tiny-llama");
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
    ] {
        let blob = format!("blob-{file}");
        std::fs::copy(fixture.join(file), repo.join("blobs").join(&blob)).unwrap();
        std::os::unix::fs::symlink(Path::new("../../blobs").join(&blob), snapshot.join(file))
            .unwrap();
    }
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    // Files transformers probed for and the repo does not have, as huggingface_hub records them.
    let absent = repo.join(".no_exist").join(COMMIT);
    std::fs::create_dir_all(&absent).unwrap();
    for file in ["special_tokens_map.json", "added_tokens.json"] {
        std::fs::write(absent.join(file), "").unwrap();
    }
    repo
}

fn loss(stdout: &str) -> f64 {
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    report["loss"].as_f64().unwrap()
}

fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0]
}

#[test]
fn repo_ids_resolve_in_the_hugging_face_cache() {
    let dir = tempfile::tempdir().unwrap();
    let hub = dir.path().join("hf/hub");
    let repo = cache_with_tiny_model(&hub);
    let data = root().join("datasets/parity_eval.jsonl");
    let data = data.to_str().unwrap();
    let cache: &[(&str, &Path)] = &[("HF_HUB_CACHE", &hub)];
    let eval = |model: &str, env: &[(&str, &Path)]| {
        qlora_env(
            &[
                "eval", "--model", model, "--data", data, "--format", "alpaca", "--json", "--bits",
                "16",
            ],
            env,
        )
    };

    let fixture = root().join("tests/fixtures/tiny-llama");
    let (code, stdout, stderr) = eval(fixture.to_str().unwrap(), &[]);
    assert_eq!(code, 0, "{stderr}");
    let by_path = loss(&stdout);
    for (model, env) in [
        ("Org/Tiny", cache),
        ("Org/Tiny@main", cache),
        (&*format!("Org/Tiny@{COMMIT}"), cache),
        // $HF_HOME/hub when HF_HUB_CACHE is unset, $XDG_CACHE_HOME/huggingface/hub after it
        ("Org/Tiny", &[("HF_HOME", &dir.path().join("hf"))]),
    ] {
        let (code, stdout, stderr) = eval(model, env);
        assert_eq!(code, 0, "{model}: {stderr}");
        assert_eq!(loss(&stdout), by_path, "{model}");
    }
    let xdg = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(xdg.path().join("huggingface")).unwrap();
    std::os::unix::fs::symlink(&hub, xdg.path().join("huggingface/hub")).unwrap();
    let (code, stdout, stderr) = eval("Org/Tiny", &[("XDG_CACHE_HOME", xdg.path())]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(loss(&stdout), by_path);

    // plan reads the snapshot's config.json
    let (code, stdout, stderr) = qlora_env(&["plan", "--model", "Org/Tiny"], cache);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("adapter"), "{stdout}");

    // The adapter records the repo id and the commit, as PEFT does.
    let out = dir.path().join("run");
    let train = root().join("datasets/parity_train.jsonl");
    let (code, _, stderr) = qlora_env(
        &[
            "train",
            "--model",
            "Org/Tiny",
            "--data",
            train.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--grad-accum",
            "1",
        ],
        cache,
    );
    assert_eq!(code, 0, "{stderr}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["base_model_name_or_path"], "Org/Tiny");
    assert_eq!(config["revision"], COMMIT);
    // A merged model records them too: config.json as transformers writes it, and its card.
    let merged = dir.path().join("merged");
    let (code, _, stderr) = qlora_env(
        &[
            "merge",
            "--model",
            "Org/Tiny",
            "--adapter",
            out.to_str().unwrap(),
            "--out",
            merged.to_str().unwrap(),
        ],
        cache,
    );
    assert_eq!(code, 0, "{stderr}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(merged.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["_name_or_path"], "Org/Tiny");
    let card = std::fs::read_to_string(merged.join("README.md")).unwrap();
    assert!(
        card.starts_with("---\nbase_model: Org/Tiny\n") && card.contains(COMMIT),
        "{card}"
    );

    // A revision the cache does not have: the cached ones are listed.
    let (code, _, stderr) = eval("Org/Tiny@v2", cache);
    assert_ne!(code, 0);
    let line = one_line(&stderr);
    assert!(
        line.contains("`v2`") && line.contains(&format!("main -> {COMMIT}")),
        "{line}"
    );
    // A repo the cache does not have.
    let (code, _, stderr) = eval("Org/Other", cache);
    assert_ne!(code, 0);
    let line = one_line(&stderr);
    assert!(
        line.contains("Org/Other") && line.contains("models--Org--Other"),
        "{line}"
    );
    // A file whose blob is gone (an interrupted download): repo, commit, file, revisions.
    std::fs::remove_file(repo.join("blobs/blob-tokenizer.json")).unwrap();
    let (code, _, stderr) = eval("Org/Tiny", cache);
    assert_ne!(code, 0);
    let line = one_line(&stderr);
    for part in [&format!("Org/Tiny@{COMMIT}"), "tokenizer.json", "main ->"] {
        assert!(line.contains(part), "{part}: {line}");
    }
    // A sharded model missing a shard its index names.
    std::fs::copy(
        root().join("tests/fixtures/tiny-llama/tokenizer.json"),
        repo.join("blobs/blob-tokenizer.json"),
    )
    .unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "lm_head.weight": "model-00002-of-00002.safetensors"}});
    std::fs::write(
        repo.join("snapshots")
            .join(COMMIT)
            .join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let (code, _, stderr) = eval("Org/Tiny", cache);
    assert_ne!(code, 0);
    let line = one_line(&stderr);
    assert!(
        line.contains("model-00001-of-00002.safetensors (named by model.safetensors.index.json)"),
        "{line}"
    );
    // A file the cache records the repo does not have (`.no_exist`) is said to be so.
    std::fs::remove_file(
        repo.join("snapshots")
            .join(COMMIT)
            .join("model.safetensors.index.json"),
    )
    .unwrap();
    std::fs::remove_file(repo.join("snapshots").join(COMMIT).join("tokenizer.json")).unwrap();
    std::fs::write(
        repo.join(".no_exist").join(COMMIT).join("tokenizer.json"),
        "",
    )
    .unwrap();
    let (code, _, stderr) = eval("Org/Tiny", cache);
    assert_ne!(code, 0);
    let line = one_line(&stderr);
    assert!(
        line.contains("has no tokenizer.json") && line.contains(".no_exist"),
        "{line}"
    );
}
