//! `--data` as a user of `datasets` gives it: parquet files, and dataset repos in the Hugging
//! Face cache (`datasets--ORG--NAME`, blobs linked from snapshots) split by their card's
//! `configs:`.

use std::path::{Path, PathBuf};

use crate::common::qlora_env;

const COMMIT: &str = "0d5b6c1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn reference(name: &str) -> String {
    root()
        .join("tests/reference/parquet")
        .join(name)
        .display()
        .to_string()
}

fn model() -> String {
    root()
        .join("tests/fixtures/tiny-llama")
        .display()
        .to_string()
}

/// A dataset repo `Org/Data` in `hub`: two train shards (the Alpaca sample twice), a test
/// shard (the prompt-completion set), and a card with two configs.
fn cache_with_dataset(hub: &Path) {
    let repo = hub.join("datasets--Org--Data");
    let snapshot = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(snapshot.join("data")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    let card = "---\nlicense: mit\nconfigs:\n- config_name: main\n  default: true\n  data_files:\n  \
                - split: train\n    path: data/train-*\n  - split: test\n    path: data/test-*\n\
                - config_name: other\n  data_files:\n  - split: train\n    path: data/test-*\n\
                ---\n# Data\n";
    let card_path = std::env::temp_dir().join(format!("card-{}.md", std::process::id()));
    std::fs::write(&card_path, card).unwrap();
    for (file, source) in [
        (
            "data/train-00000-of-00002.parquet",
            reference("alpaca.parquet"),
        ),
        (
            "data/train-00001-of-00002.parquet",
            reference("alpaca.parquet"),
        ),
        (
            "data/test-00000-of-00001.parquet",
            reference("prompt_completion.parquet"),
        ),
        ("README.md", card_path.display().to_string()),
    ] {
        let blob = format!("blob-{}", file.replace('/', "-"));
        std::fs::copy(&source, repo.join("blobs").join(&blob)).unwrap();
        let depth = file.matches('/').count();
        let up = "../".repeat(depth + 2);
        std::os::unix::fs::symlink(
            Path::new(&format!("{up}blobs")).join(&blob),
            snapshot.join(file),
        )
        .unwrap();
    }
    std::fs::remove_file(card_path).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
}

fn loss(stdout: &str) -> f64 {
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    report["loss"].as_f64().unwrap()
}

#[test]
fn dataset_repos_resolve_their_splits_in_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let hub = dir.path().join("hub");
    cache_with_dataset(&hub);
    let env = [("HF_HUB_CACHE", hub.as_path())];
    let model = model();
    let eval = |data: &str, extra: &[&str]| {
        let mut args = vec!["eval", "--model", model.as_str(), "--data", data, "--json"];
        args.extend_from_slice(extra);
        qlora_env(&args, &env)
    };
    let pc = ["--format", "prompt-completion"];
    let (code, stdout, stderr) = eval(&reference("prompt_completion.jsonl"), &pc);
    assert_eq!(code, 0, "{stderr}");
    let twin = loss(&stdout);
    // The test split of the default config, and the train split of the other config.
    let (code, stdout, stderr) = eval("Org/Data", &[&pc[..], &["--data-split", "test"]].concat());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(loss(&stdout), twin);
    assert!(
        stderr.contains(&format!(
            "Org/Data@{} (config main, split test, 1 file): 100 records (prompt-completion)",
            &COMMIT[..12]
        )),
        "{stderr}"
    );
    let (code, stdout, stderr) = eval("Org/Data", &[&pc[..], &["--data-config", "other"]].concat());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(loss(&stdout), twin);
    // The same by commit, and as a folder.
    let by_commit = format!("Org/Data@{COMMIT}");
    let (code, stdout, stderr) = eval(&by_commit, &[&pc[..], &["--data-split", "test"]].concat());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(loss(&stdout), twin);
    let folder = hub.join("datasets--Org--Data/snapshots").join(COMMIT);
    let (code, stdout, stderr) = eval(
        folder.to_str().unwrap(),
        &[&pc[..], &["--data-split", "test"]].concat(),
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(loss(&stdout), twin);

    // Mistakes are one line naming what there is.
    for (args, needle) in [
        (
            vec!["--data-split", "validation"],
            "no split `validation` in config `main`; its splits: train, test",
        ),
        (
            vec!["--data-config", "nope"],
            "no config `nope`; its configs: main, other",
        ),
    ] {
        let (code, _, stderr) = eval("Org/Data", &args);
        assert_eq!(code, 1, "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
    }
    let (code, _, stderr) = eval("Org/Missing", &[]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("datasets--Org--Missing")
            && stderr.contains("hf download --repo-type dataset Org/Missing"),
        "{stderr}"
    );

    // Training reads the train split (both shards) and evaluates on the test split.
    let out = dir.path().join("run");
    let (code, _, stderr) = qlora_env(
        &[
            "train",
            "--model",
            &model,
            "--data",
            "Org/Data",
            "--eval-data",
            "Org/Data",
            "--out",
            out.to_str().unwrap(),
            "--max-steps",
            "1",
            "--rank",
            "4",
        ],
        &env,
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("(config main, split train, 2 files): 64 records (alpaca)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("(config main, split test, 1 file): 100 records (prompt-completion)"),
        "{stderr}"
    );
}

/// A parquet file trains as its JSON Lines twin does: the same losses step by step.
#[test]
fn a_parquet_file_trains_as_its_json_lines_twin() {
    let dir = tempfile::tempdir().unwrap();
    let train = |data: &str, out: &str| {
        let out = dir.path().join(out);
        let (code, _, stderr) = qlora_env(
            &[
                "train",
                "--model",
                &model(),
                "--data",
                data,
                "--out",
                out.to_str().unwrap(),
                "--max-steps",
                "2",
                "--grad-accum",
                "2",
                "--rank",
                "4",
            ],
            &[],
        );
        assert_eq!(code, 0, "{stderr}");
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64())
            .collect::<Vec<_>>()
    };
    let parquet = train(&reference("alpaca.parquet"), "p");
    let jsonl = train(
        root()
            .join("datasets/alpaca_sample.jsonl")
            .to_str()
            .unwrap(),
        "j",
    );
    assert_eq!(parquet, jsonl);
}
