//! `qlora plan` against measurement: for several small models, sequence lengths and
//! checkpointing settings, the planned peak next to the peak heap of a real training run
//! (the `qlora train` trainer, two steps, counted by a global allocator).
//!
//! Run: `cargo run --release --example plan_check`

use std::path::Path;

use qlora::config::LlamaConfig;
use qlora::device::DeviceChoice;
use qlora::plan::{PlanSettings, plan};
use qlora::synthetic::SyntheticModel;
use qlora::train::{LogProgress, TrainSettings, Trainer};

#[path = "../tests/common/alloc.rs"]
mod alloc;

use alloc::{Counting, mib, peak_during};

#[global_allocator]
static ALLOC: Counting = Counting;

/// A model directory: a synthetic checkpoint with the fixture's tokenizer (ids < 1024).
fn model_dir(root: &Path, name: &str, shape: Option<SyntheticModel>) -> std::path::PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
    let Some(shape) = shape else {
        return fixture;
    };
    let dir = root.join(name);
    shape.write(&dir, 7).expect("write model");
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture.join(file), dir.join(file)).expect("copy tokenizer");
    }
    dir
}

fn measure(model: &Path, data: &Path, out: &Path, seq: usize, checkpointing: bool) -> usize {
    let settings = TrainSettings {
        model: Some(model.to_path_buf()),
        data: Some(data.to_path_buf()),
        format: Some("text".into()),
        out: Some(out.to_path_buf()),
        batch_size: Some(1),
        grad_accum: Some(1),
        max_steps: Some(2),
        save_steps: Some(1000),
        logging_steps: Some(1000),
        target_max_len: Some(seq - 1),
        gradient_checkpointing: Some(checkpointing),
        ..TrainSettings::default()
    };
    let config = settings.resolve().expect("settings");
    let ((), peak) = peak_during(|| {
        let mut progress = LogProgress::new(1000);
        let mut trainer =
            Trainer::new(config, DeviceChoice::Cpu, None, &mut progress).expect("trainer");
        for _ in 0..2 {
            trainer.step().expect("step");
        }
    });
    peak
}

fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("long.jsonl");
    // Long texts so every example fills the sequence; the fixture tokenizer gives ~2 tokens
    // a word.
    let text: Vec<String> = (0..3000)
        .map(|i| format!("w{} ", i * 7919 % 10007))
        .collect();
    let line = serde_json::json!({ "text": text.concat() }).to_string();
    std::fs::write(&data, format!("{line}\n{line}\n{line}\n")).expect("data");

    let small = SyntheticModel {
        vocab_size: 32000,
        hidden_size: 512,
        intermediate_size: 1408,
        num_layers: 6,
        num_heads: 8,
        num_kv_heads: 4,
        tie_word_embeddings: false,
    };
    let models = [
        ("tiny-llama", None),
        ("synthetic-30M", Some(small)),
        ("smollm2-135M", Some(SyntheticModel::SMOLLM2_135M)),
    ];
    println!(
        "{:<14} {:>5} {:>6} {:>12} {:>12} {:>7}",
        "model", "seq", "ckpt", "planned MiB", "measured MiB", "ratio"
    );
    let mut worst: f64 = 0.0;
    for (name, shape) in models {
        let dir = model_dir(tmp.path(), name, shape);
        let config = LlamaConfig::load(&dir).expect("config");
        for (seq, checkpointing) in [(256, true), (256, false), (1024, true), (1024, false)] {
            let out = tmp.path().join(format!("out-{name}-{seq}-{checkpointing}"));
            let measured = measure(&dir, &data, &out, seq, checkpointing);
            let settings = PlanSettings {
                seq_len: seq,
                gradient_checkpointing: checkpointing,
                ..PlanSettings::default()
            };
            let planned = plan(&config, &settings).peak_bytes;
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
}
