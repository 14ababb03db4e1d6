//! `qlora plan` against measurement: for several small models, sequence lengths and
//! checkpointing settings, the planned peak next to the peak heap of a real training run
//! (the `qlora train` trainer, two steps, counted by a global allocator); then, on the 135M
//! shape at train's defaults (packing, rows of 2048 tokens, and of 512), the plan `train` prints
//! next to the peak RSS of the `qlora` binary (what the OS, a cgroup and the OOM killer count).
//!
//! Run: `cargo build --release -p qlora-cli && cargo run --release --example plan_check`
//! (`QLORA_BIN` names another binary; `-- rss` runs only the peak RSS rows).

use std::path::{Path, PathBuf};

use qlora_core::config::ModelConfig;
use qlora_core::device::DeviceChoice;
use qlora_core::plan::{PlanSettings, plan};
use support::synthetic::SyntheticModel;

use qlora_core::train::{OptimizerKind, TrainConfig};
use support::alloc::{Counting, mib};
use support::fixture;
use support::training_peak::{
    SYNTHETIC_30M, measure_training_peak, measure_training_peak_with, synthetic_model,
    write_long_texts,
};

#[global_allocator]
static ALLOC: Counting = Counting;

fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    if std::env::args().nth(1).as_deref() == Some("rss") {
        rss_check(tmp.path());
        return;
    }
    let data = tmp.path().join("long.jsonl");
    write_long_texts(&data, 3);
    let models = [
        ("tiny-llama", None),
        ("synthetic-30M", Some(SYNTHETIC_30M)),
        ("smollm2-135M", Some(SyntheticModel::SMOLLM2_135M)),
    ];
    println!(
        "{:<14} {:>5} {:>6} {:>12} {:>12} {:>7}",
        "model", "seq", "ckpt", "planned MiB", "measured MiB", "ratio"
    );
    let mut worst: f64 = 0.0;
    for (name, shape) in models {
        let dir = match shape {
            Some(shape) => synthetic_model(&tmp.path().join(name), shape),
            None => fixture("tiny-llama"),
        };
        let config = ModelConfig::load(&dir).expect("config");
        for (seq, checkpointing) in [(256, true), (256, false), (1024, true), (1024, false)] {
            let out = tmp.path().join(format!("out-{name}-{seq}-{checkpointing}"));
            let measured = measure_training_peak(&dir, &data, &out, seq, checkpointing);
            let settings = PlanSettings {
                seq_len: seq,
                gradient_checkpointing: checkpointing,
                ..PlanSettings::default()
            };
            let planned = plan(&config, &settings).expect("plan").peak_bytes;
            let ratio = planned as f64 / measured as f64;
            worst = worst.max((ratio - 1.0).abs());
            println!(
                "{name:<14} {seq:>5} {:>6} {:>12.1} {:>12.1} {ratio:>7.3}",
                if checkpointing { "on" } else { "off" },
                mib(planned as usize),
                mib(measured),
            );
        }
    }
    println!("largest difference: {:.1}%", worst * 100.0);

    // Optimizer states: 32-bit against 8-bit on the quickstart model's shape.
    let dir = tmp.path().join("smollm2-135M");
    let config = ModelConfig::load(&dir).expect("config");
    println!(
        "\n{:<18} {:>12} {:>12} {:>7}",
        "optim (smollm2)", "planned MiB", "measured MiB", "ratio"
    );
    let mut peaks = Vec::new();
    for optim in [OptimizerKind::AdamW32, OptimizerKind::AdamW8] {
        let out = tmp.path().join(format!("out-{optim}"));
        let measured = measure_training_peak_with(&dir, &data, &out, 256, true, optim);
        let settings = PlanSettings {
            seq_len: 256,
            optimizer_8bit: optim.eight_bit(),
            ..PlanSettings::default()
        };
        let planned = plan(&config, &settings).expect("plan").peak_bytes as usize;
        println!(
            "{:<18} {:>12.1} {:>12.1} {:>7.3}",
            optim.to_string(),
            mib(planned),
            mib(measured),
            planned as f64 / measured as f64
        );
        peaks.push((planned, measured));
    }
    println!(
        "8-bit states lower the peak by {:.1} MiB planned, {:.1} MiB measured",
        mib(peaks[0].0 - peaks[1].0),
        mib(peaks[0].1.saturating_sub(peaks[1].1))
    );
    rss_check(tmp.path());
}

/// The `qlora` binary's peak RSS training SmolLM2-135M (the peer benchmark's copy:
/// `PEER_MODEL`, else `~/.cache/qlora-peer/smollm2`; its own tokenizer and context, so rows
/// fill) two steps of one packed row, train's defaults otherwise, at rows of 2048 and 512
/// tokens with 32- and 8-bit states, against the planned peak `train` prints beside it.
fn rss_check(tmp: &Path) {
    let bin = std::env::var_os("QLORA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/qlora"));
    let dir = std::env::var_os("PEER_MODEL")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/qlora-peer/smollm2"))
        })
        .unwrap_or_default();
    for (path, how) in [
        (&bin, "`cargo build --release -p qlora-cli`"),
        (&dir.join("config.json"), "see ../shared/bench/README.md"),
    ] {
        if !path.exists() {
            println!("\n(no {}: {how} for the peak RSS rows)", path.display());
            return;
        }
    }
    // Random words (~1.3 tokens each), enough for two full rows of 2048.
    let words = [
        "model", "train", "adapter", "token", "gradient", "layer", "the", "of",
    ];
    let mut state = 1u64;
    let data = tmp.join("words.jsonl");
    let lines: String = (0..40)
        .map(|_| {
            let text: Vec<&str> = (0..200)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1);
                    words[(state >> 60) as usize % words.len()]
                })
                .collect();
            serde_json::json!({ "text": text.join(" ") }).to_string() + "\n"
        })
        .collect();
    std::fs::write(&data, lines).expect("write data");
    let (dir, data) = (dir.as_path(), data.as_path());
    println!(
        "\n{:<24} {:>12} {:>13} {:>7}",
        "peak RSS (smollm2)", "planned MiB", "measured MiB", "ratio"
    );
    let mut worst: f64 = 0.0;
    for seq in [2048, 512] {
        for optim in [OptimizerKind::AdamW32, OptimizerKind::AdamW8] {
            let out = tmp.join(format!("rss-{seq}-{optim}"));
            let status = std::process::Command::new(&bin)
                .args([
                    "train",
                    "--format",
                    "text",
                    "--grad-accum",
                    "1",
                    "--max-steps",
                    "2",
                ])
                .args(["--save-steps", "1000", "--logging-steps", "1"])
                .args([
                    "--optim",
                    &optim.to_string(),
                    "--max-seq-len",
                    &seq.to_string(),
                ])
                .arg("--model")
                .arg(dir)
                .arg("--data")
                .arg(data)
                .arg("--out")
                .arg(&out)
                .stderr(std::process::Stdio::null())
                .status()
                .expect("run qlora");
            assert!(status.success(), "qlora train failed");
            let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
            let last: serde_json::Value =
                serde_json::from_str(metrics.lines().last().expect("a step")).expect("JSON");
            let measured = last["peak_rss_bytes"].as_u64().expect("peak_rss_bytes") as usize;
            let config = TrainConfig {
                model: dir.to_path_buf(),
                max_seq_len: seq,
                grad_accum: 1,
                optim,
                ..TrainConfig::default()
            };
            let planned = config.planned_peak(DeviceChoice::Cpu).expect("a plan") as usize;
            let ratio = planned as f64 / measured as f64;
            worst = worst.max((ratio - 1.0).abs());
            println!(
                "{:<24} {:>12.1} {:>13.1} {ratio:>7.3}",
                format!("rows of {seq}, {optim}"),
                mib(planned),
                mib(measured)
            );
        }
    }
    println!("largest difference: {:.1}%", worst * 100.0);
}
