//! The peak heap of real training steps (the trainer `qlora train` runs), for checking
//! `qlora plan` (tests/plan_memory.rs and examples/plan_check.rs).

use std::path::{Path, PathBuf};

use super::synthetic::SyntheticModel;
use qlora_core::data::{DatasetFormat, TokenizeOptions};
use qlora_core::device::DeviceChoice;
use qlora_core::train::{LogProgress, OptimizerKind, TrainConfig, Trainer};

use super::alloc::peak_during;
use super::fixture;

/// A ~30M-parameter LLaMA shape with an untied head.
pub const SYNTHETIC_30M: SyntheticModel = SyntheticModel {
    vocab_size: 32000,
    hidden_size: 512,
    intermediate_size: 1408,
    num_layers: 6,
    num_heads: 8,
    num_kv_heads: 4,
    tie_word_embeddings: false,
};

/// `records` copies of one long text, so every example fills the sequence (the fixture
/// tokenizer gives ~2 tokens a word).
pub fn write_long_texts(path: &Path, records: usize) {
    let words: String = (0..3000)
        .map(|i| format!("w{} ", i * 7919 % 10007))
        .collect();
    let line = serde_json::json!({ "text": words }).to_string();
    std::fs::write(path, format!("{line}\n").repeat(records)).expect("write data");
}

/// A synthetic checkpoint of `shape` in `dir` with the fixture's tokenizer (ids < 1024).
pub fn synthetic_model(dir: &Path, shape: SyntheticModel) -> PathBuf {
    shape.write(dir, 7).expect("write model");
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture("tiny-llama").join(file), dir.join(file)).expect("copy tokenizer");
    }
    dir.to_path_buf()
}

/// Peak heap of building the trainer and running two steps (batch 1, r 64, paged AdamW).
pub fn measure_training_peak(
    model: &Path,
    data: &Path,
    out: &Path,
    seq: usize,
    checkpointing: bool,
) -> usize {
    let optim = TrainConfig::default().optim;
    measure_training_peak_with(model, data, out, seq, checkpointing, optim)
}

/// [`measure_training_peak`] with optimizer `optim`.
pub fn measure_training_peak_with(
    model: &Path,
    data: &Path,
    out: &Path,
    seq: usize,
    checkpointing: bool,
    optim: OptimizerKind,
) -> usize {
    let config = TrainConfig {
        optim,
        model: model.to_path_buf(),
        data: data.to_path_buf(),
        format: Some(DatasetFormat::Text),
        out: out.to_path_buf(),
        batch_size: 1,
        grad_accum: 1,
        max_steps: Some(2),
        save_steps: 1000,
        logging_steps: 1000,
        tokenize: TokenizeOptions {
            target_max_len: seq - 1,
            ..TokenizeOptions::default()
        },
        gradient_checkpointing: checkpointing,
        // Rows of `seq` tokens: one example each.
        max_seq_len: seq,
        ..TrainConfig::default()
    };
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
