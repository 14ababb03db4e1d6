//! Fine-tune the fixture model on the shipped parity task and show that it learned the rule:
//! eval loss before and after, and the accuracy of greedy answers on held-out prompts.
//!
//! Run: `cargo run --release --example parity [-- STEPS]`

use std::path::Path;
use std::sync::atomic::AtomicBool;

use qlora_core::data::{alpaca_prompt, read_records};
use qlora_core::device::DeviceChoice;
use qlora_core::generate::{SamplingConfig, generate};
use qlora_core::model::CausalLm;
use qlora_core::text::Tokenizer;
use qlora_core::train::{LogProgress, TrainConfig, Trainer};

/// Share of held-out prompts answered with the right word.
fn accuracy(model: &CausalLm, tokenizer: &Tokenizer, eval: &Path) -> f64 {
    let records = read_records(eval).expect("eval data");
    let config = SamplingConfig {
        max_new_tokens: 4,
        ..SamplingConfig::default()
    };
    let mut right = 0;
    for record in &records {
        let prompt = alpaca_prompt(record.string("instruction").unwrap(), "");
        let ids = tokenizer.encode(&format!("<s>{prompt}"), false).unwrap();
        let answer = generate(model, tokenizer, &ids, &config, |_| {})
            .unwrap()
            .text;
        if answer.trim() == record.string("output").unwrap() {
            right += 1;
        }
    }
    right as f64 / records.len() as f64
}

fn main() {
    let steps: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let root = support::root();
    let out = tempfile::tempdir().expect("temp dir");
    let eval = root.join("datasets/parity_eval.jsonl");
    let config = TrainConfig {
        model: root.join("tests/fixtures/tiny-llama"),
        data: root.join("datasets/parity_train.jsonl"),
        eval_data: Some(eval.clone()),
        out: out.path().to_path_buf(),
        max_steps: Some(steps),
        batch_size: 8,
        grad_accum: 1,
        lr: 1e-3,
        eval_steps: Some(steps / 4),
        logging_steps: 25,
        ..TrainConfig::default()
    };
    let mut progress = LogProgress::new(25);
    let mut trainer =
        Trainer::new(config, DeviceChoice::Cpu, None, &mut progress).expect("trainer");
    let base_model = {
        let mut m = trainer.model.clone();
        m.detach_lora();
        m
    };
    let before = accuracy(&base_model, &trainer.tokenizer, &eval);
    let summary = trainer
        .run(&mut progress, &AtomicBool::new(false))
        .expect("training");
    let after = accuracy(&trainer.model, &trainer.tokenizer, &eval);
    println!(
        "parity task, {} steps: eval loss {:.4} -> {:.4}, held-out accuracy {:.0}% -> {:.0}%",
        summary.steps,
        summary.eval_loss_before.unwrap_or(f64::NAN),
        summary.eval_loss_after.unwrap_or(f64::NAN),
        before * 100.0,
        after * 100.0
    );
}
