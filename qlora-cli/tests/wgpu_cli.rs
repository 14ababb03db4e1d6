//! The whole CLI on `--device wgpu` (lavapipe in CI) against `--device cpu`: training losses
//! step by step, evaluation and generation.
#![cfg(feature = "wgpu")]

mod common;

use std::path::{Path, PathBuf};

use common::qlora;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn losses(out: &Path) -> Vec<(f64, Option<u64>)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["loss"].as_f64().unwrap(),
                v["device_memory_bytes"].as_u64(),
            )
        })
        .collect()
}

#[test]
fn train_eval_and_generate_on_wgpu_agree_with_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let model = path(&root().join("tests/fixtures/tiny-llama"));
    let data = path(&root().join("datasets/parity_train.jsonl"));
    let eval_data = path(&root().join("datasets/parity_eval.jsonl"));
    let mut runs = Vec::new();
    for device in ["cpu", "wgpu"] {
        let out = dir.path().join(device);
        let (code, _, stderr) = qlora(&[
            "train",
            "--model",
            &model,
            "--data",
            &data,
            "--out",
            &path(&out),
            "--device",
            device,
            "--max-steps",
            "6",
            "--rank",
            "8",
            "--dropout",
            "0",
            "--max-seq-len",
            "256",
            "--grad-accum",
            "1",
            "--lr",
            "1e-3",
            "--optim",
            "adamw_32bit",
            "--logging-steps",
            "1",
        ]);
        assert_eq!(code, 0, "{device}: {stderr}");
        runs.push(losses(&out));
    }
    let (cpu, wgpu) = (&runs[0], &runs[1]);
    assert_eq!(cpu.len(), 6);
    for (step, ((a, cpu_memory), (b, gpu_memory))) in cpu.iter().zip(wgpu).enumerate() {
        assert!(
            (a - b).abs() <= 1e-3 * a.abs(),
            "step {}: cpu {a}, wgpu {b}",
            step + 1
        );
        assert!(cpu_memory.is_none() && gpu_memory.is_some_and(|m| m > 0));
    }
    eprintln!("losses cpu {cpu:?}\nlosses wgpu {wgpu:?}");

    // The wgpu-trained adapter evaluated on both devices, and greedy generation.
    let adapter = path(&dir.path().join("wgpu"));
    let mut evals = Vec::new();
    let mut texts = Vec::new();
    for device in ["cpu", "wgpu"] {
        let (code, stdout, stderr) = qlora(&[
            "eval",
            "--model",
            &model,
            "--adapter",
            &adapter,
            "--data",
            &eval_data,
            "--format",
            "alpaca",
            "--device",
            device,
            "--json",
        ]);
        assert_eq!(code, 0, "{device}: {stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        evals.push(v["loss"].as_f64().unwrap());
        let (code, stdout, stderr) = qlora(&[
            "generate",
            "--model",
            &model,
            "--adapter",
            &adapter,
            "--prompt",
            "12 is",
            "--max-new-tokens",
            "8",
            "--temperature",
            "0",
            "--device",
            device,
        ]);
        assert_eq!(code, 0, "{device}: {stderr}");
        texts.push(stdout);
    }
    assert!(
        (evals[0] - evals[1]).abs() <= 1e-4 * evals[0].abs(),
        "eval loss cpu {}, wgpu {}",
        evals[0],
        evals[1]
    );
    assert_eq!(texts[0], texts[1]);
}
