//! `qlora selftest` and `qlora bench`: what a user runs on a new machine before training, from
//! the binary alone.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::qlora;

fn tiny_config() -> String {
    let path: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-llama/config.json");
    path.to_str().unwrap().to_string()
}

/// `qlora selftest` with a kernel broken by the test switch.
fn selftest_broken(device: &str, kernel: &str) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qlora"))
        .args(["selftest", "--device", device])
        .env("QLORA_SELFTEST_BREAK", kernel)
        .output()
        .expect("run qlora");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_selftest_passes(device: &str) {
    let (code, out, err) = qlora(&["selftest", "--device", device]);
    println!("{out}");
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("device {device}: ")), "{out}");
    // 16 kernels at 2 sizes, each a row that passed.
    assert_eq!(out.lines().filter(|l| l.ends_with("  pass")).count(), 32);
    assert!(out.contains("all 32 checks passed"), "{out}");
    for kernel in [
        "nf4 dequantize",
        "nf4 matmul x·Wᵀ",
        "attention bwd",
        "cross-entropy",
        "paged adamw 8-bit",
    ] {
        assert!(out.contains(kernel), "{kernel} missing from\n{out}");
    }
}

#[test]
fn selftest_passes_on_the_cpu() {
    assert_selftest_passes("cpu");
}

/// A kernel whose output is wrong fails the self-test with exit 1, naming it (and only it).
#[test]
fn a_broken_kernel_fails_the_selftest_by_name() {
    let (code, out, err) = selftest_broken("cpu", "rms_norm fwd/bwd");
    assert_eq!(code, 1, "{out}\n{err}");
    let failed: Vec<&str> = out.lines().filter(|l| l.ends_with("  FAIL")).collect();
    assert_eq!(failed.len(), 2, "{out}");
    assert!(
        failed.iter().all(|l| l.contains("rms_norm fwd/bwd")),
        "{out}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(
            "2 of 32 checks failed on cpu: rms_norm fwd/bwd (small, y), rms_norm fwd/bwd (large, y)"
        ),
        "{err}"
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn selftest_passes_on_wgpu() {
    assert_selftest_passes("wgpu");
}

/// A bench of the tiny model's shape: tokens/s, every phase, and the measured peak RSS next
/// to the plan's.
#[test]
fn bench_trains_a_random_model_of_a_shape() {
    let config = tiny_config();
    let (code, out, err) = qlora(&[
        "bench",
        "--shape",
        &config,
        "--seq-len",
        "64",
        "--steps",
        "2",
        "--rank",
        "8",
    ]);
    println!("{out}\n{err}");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(" tokens/s, "), "{out}");
    for phase in [
        "base projections forward",
        "attention",
        "head and loss",
        "optimizer",
    ] {
        assert!(out.contains(phase), "{phase} missing from\n{out}");
    }
    assert!(out.contains("peak RSS over the steps"), "{out}");
    assert!(out.contains("planned:"), "{out}");
    // The warm-up and two timed steps, each with a finite loss.
    assert_eq!(err.matches(", loss ").count(), 3, "{err}");

    let (code, json, err) = qlora(&[
        "bench",
        "--shape",
        &config,
        "--seq-len",
        "32",
        "--steps",
        "1",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert!(v["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["measured_peak_bytes"].as_u64().unwrap() > 0);
    assert!(v["planned_peak_bytes"].as_u64().unwrap() > 0);
    // A random model's first loss is near ln(vocabulary).
    let first = v["loss_first"].as_f64().unwrap();
    assert!((first - 1000f64.ln()).abs() < 0.5, "{first}");
}

/// `--dry-run` answers from the plan alone: an 8B shape in 24 GiB on a GPU (bf16), and not in
/// 4 GiB.
#[test]
fn bench_dry_run_says_whether_a_shape_fits() {
    let (code, out, err) = qlora(&[
        "bench",
        "--shape",
        "llama-3.1-8b",
        "--device",
        "cuda",
        "--seq-len",
        "2048",
        "--memory-limit",
        "24GiB",
        "--dry-run",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("llama-3.1-8b: 32 layers, hidden 4096"),
        "{out}"
    );
    assert!(out.contains("bf16 compute"), "{out}");
    assert!(
        out.contains("fits in the limit of 24.00 GiB (planned, nothing built"),
        "{out}"
    );
    let (code, out, _) = qlora(&[
        "bench",
        "--shape",
        "llama-3.1-8b",
        "--seq-len",
        "2048",
        "--memory-limit",
        "4GiB",
        "--dry-run",
        "--json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["fits"], false);
    let (code, _, err) = qlora(&["bench", "--shape", "no-such-model", "--dry-run"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no-such-model") && err.contains("llama-3.2-1b"),
        "{err}"
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn bench_reports_device_memory_on_wgpu() {
    let config = tiny_config();
    let (code, out, err) = qlora(&[
        "bench",
        "--shape",
        &config,
        "--device",
        "wgpu",
        "--seq-len",
        "64",
        "--steps",
        "1",
        "--rank",
        "8",
    ]);
    println!("{out}\n{err}");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("peak device memory"), "{out}");
}
