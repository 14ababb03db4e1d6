//! `qlora plan` against the measured peak heap of real training steps (the trainer `qlora
//! train` runs) on small configurations: within 15%. `examples/plan_check.rs` runs the same
//! comparison on larger models and longer sequences in release mode.

mod common;

use std::path::Path;

use common::alloc::{Counting, mib, peak_during};
use common::fixture;
use qlora::config::LlamaConfig;
use qlora::device::DeviceChoice;
use qlora::plan::{PlanSettings, plan};
use qlora::synthetic::SyntheticModel;
use qlora::train::{LogProgress, TrainSettings, Trainer};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn measure(model: &Path, data: &Path, out: &Path, seq: usize, checkpointing: bool) -> usize {
    let config = TrainSettings {
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
    }
    .resolve()
    .unwrap();
    let ((), peak) = peak_during(|| {
        let mut progress = LogProgress::new(1000);
        let mut trainer = Trainer::new(config, DeviceChoice::Cpu, None, &mut progress).unwrap();
        for _ in 0..2 {
            trainer.step().unwrap();
        }
    });
    peak
}

#[test]
fn planned_peaks_are_within_15_percent_of_training() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("long.jsonl");
    let words: String = (0..3000)
        .map(|i| format!("w{} ", i * 7919 % 10007))
        .collect();
    let line = serde_json::json!({ "text": words }).to_string();
    std::fs::write(&data, format!("{line}\n{line}\n")).unwrap();

    let small = tmp.path().join("synthetic-30M");
    SyntheticModel {
        vocab_size: 32000,
        hidden_size: 512,
        intermediate_size: 1408,
        num_layers: 6,
        num_heads: 8,
        num_kv_heads: 4,
        tie_word_embeddings: false,
    }
    .write(&small, 7)
    .unwrap();
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture("tiny-llama").join(file), small.join(file)).unwrap();
    }

    let cases = [
        (fixture("tiny-llama"), 1024, true),
        (fixture("tiny-llama"), 1024, false),
        (small.clone(), 256, true),
        (small, 256, false),
    ];
    for (i, (model, seq, checkpointing)) in cases.into_iter().enumerate() {
        let measured = measure(
            &model,
            &data,
            &tmp.path().join(format!("out{i}")),
            seq,
            checkpointing,
        );
        let config = LlamaConfig::load(&model).unwrap();
        let settings = PlanSettings {
            seq_len: seq,
            gradient_checkpointing: checkpointing,
            ..PlanSettings::default()
        };
        let planned = plan(&config, &settings).peak_bytes as usize;
        let ratio = planned as f64 / measured as f64;
        eprintln!(
            "{} seq {seq} checkpointing {checkpointing}: planned {:.1} MiB, measured {:.1} MiB, ratio {ratio:.3}",
            model.file_name().unwrap().to_string_lossy(),
            mib(planned),
            mib(measured)
        );
        assert!((ratio - 1.0).abs() <= 0.15, "ratio {ratio}");
    }
}
