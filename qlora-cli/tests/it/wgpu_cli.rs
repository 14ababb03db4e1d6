//! The whole CLI on `--device wgpu` (lavapipe in CI) against `--device cpu`: training losses
//! step by step, evaluation and generation.
#![cfg(feature = "wgpu")]

use std::path::{Path, PathBuf};

use crate::common::qlora;

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
    let train = |device: &str, dtype: Option<&str>| {
        let name = format!("{device}-{}", dtype.unwrap_or("default"));
        let out = dir.path().join(&name);
        let mut args = vec![
            "train",
            "--model",
            &model,
            "--data",
            &data,
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
        ];
        let out_arg = path(&out);
        args.extend(["--out", &out_arg]);
        if let Some(dtype) = dtype {
            args.extend(["--compute-dtype", dtype]);
        }
        let (code, _, stderr) = qlora(&args);
        assert_eq!(code, 0, "{name}: {stderr}");
        losses(&out)
    };
    // wgpu's default is f32 (WGSL has no bf16).
    let (cpu, wgpu) = (train("cpu", None), train("wgpu", None));
    assert_eq!(cpu.len(), 6);
    for (step, ((a, cpu_memory), (b, gpu_memory))) in cpu.iter().zip(&wgpu).enumerate() {
        assert!(
            (a - b).abs() <= 1e-3 * a.abs(),
            "step {}: cpu {a}, wgpu {b}",
            step + 1
        );
        assert!(cpu_memory.is_none() && gpu_memory.is_some_and(|m| m > 0));
    }
    eprintln!("losses cpu {cpu:?}\nlosses wgpu {wgpu:?}");
    // 16-bit compute: f16 on wgpu, bf16 (and f16) on the CPU, within 3e-2 of f32 and
    // decreasing.
    for (device, dtype) in [("wgpu", "f16"), ("cpu", "bf16"), ("cpu", "f16")] {
        let half = train(device, Some(dtype));
        eprintln!("losses {device} {dtype} {half:?}");
        for (step, ((a, _), (b, _))) in cpu.iter().zip(&half).enumerate() {
            assert!(
                (a - b).abs() <= 3e-2 * a.abs(),
                "{device} {dtype} step {}: f32 {a}, {b}",
                step + 1
            );
        }
        assert!(half[5].0 < half[0].0 - 0.5, "{device} {dtype}: {half:?}");
    }
    // A dtype the device lacks is refused in one line.
    let (code, _, stderr) = qlora(&[
        "eval",
        "--model",
        &model,
        "--data",
        &eval_data,
        "--device",
        "wgpu",
        "--compute-dtype",
        "bf16",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("bf16") && stderr.contains("f16 or f32"),
        "{stderr}"
    );

    // The wgpu-trained adapter evaluated on both devices, and greedy generation.
    let adapter = path(&dir.path().join("wgpu-default"));
    let run = |command: &str, device: &str, dtype: Option<&str>| {
        let mut args = vec![command, "--model", &model, "--adapter", &adapter];
        if command == "eval" {
            args.extend(["--data", &eval_data, "--format", "alpaca", "--json"]);
        } else {
            args.extend(["--prompt", "12 is", "--max-new-tokens", "8"]);
        }
        args.extend(["--device", device]);
        if let Some(dtype) = dtype {
            args.extend(["--compute-dtype", dtype]);
        }
        let (code, stdout, stderr) = qlora(&args);
        assert_eq!(code, 0, "{command} {device} {dtype:?}: {stderr}");
        stdout
    };
    let eval_loss = |device: &str, dtype: Option<&str>| {
        let v: serde_json::Value = serde_json::from_str(&run("eval", device, dtype)).unwrap();
        v["loss"].as_f64().unwrap()
    };
    let evals = [eval_loss("cpu", None), eval_loss("wgpu", None)];
    let texts = [run("generate", "cpu", None), run("generate", "wgpu", None)];
    assert!(
        (evals[0] - evals[1]).abs() <= 1e-4 * evals[0].abs(),
        "eval loss cpu {}, wgpu {}",
        evals[0],
        evals[1]
    );
    assert_eq!(texts[0], texts[1]);
    // Evaluation and generation computing in f16 on wgpu.
    let half = eval_loss("wgpu", Some("f16"));
    assert!(
        (half - evals[0]).abs() <= 1e-2 * evals[0],
        "f16 {half} vs {}",
        evals[0]
    );
    assert!(!run("generate", "wgpu", Some("f16")).is_empty());
}
