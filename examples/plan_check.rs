//! `qlora plan` against measurement: for several small models, sequence lengths and
//! checkpointing settings, the planned peak next to the peak heap of a real training run
//! (the `qlora train` trainer, two steps, counted by a global allocator).
//!
//! Run: `cargo run --release --example plan_check`

use qlora_core::config::ModelConfig;
use qlora_core::plan::{PlanSettings, plan};
use support::synthetic::SyntheticModel;

use qlora_core::train::OptimizerKind;
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
}
