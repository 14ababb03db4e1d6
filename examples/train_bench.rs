//! Steady-state QLoRA training speed and peak memory for a SmolLM2-135M-shaped random model
//! (30 layers, hidden 576, 9 heads, 3 KV heads, vocab 49152): sequence 512, batch 1, LoRA r 64
//! on all seven projections, gradient checkpointing, paged AdamW, on the NF4 base and on a
//! dense base in the same run.
//!
//! Run: `cargo run --release --example train_bench [-- STEPS]`

use std::time::Instant;

use qlora::lora::{LoraConfig, loss_and_grads};
use qlora::model::{Bits, DropoutStream, Llama, LoadOptions, TrainBatch};
use qlora::train::{AdamWConfig, OptimizerKind, PagedAdamW};

#[path = "../tests/common/mod.rs"]
mod common;

use common::alloc::{Counting, current, peak_during};
use common::synthetic::SyntheticModel;

#[global_allocator]
static ALLOC: Counting = Counting;

const SEQ: usize = 512;

fn run(dir: &std::path::Path, bits: Bits, steps: usize) -> (f64, usize, usize) {
    let ((tokens_per_s, model_bytes), peak) = peak_during(|| run_steps(dir, bits, steps));
    (tokens_per_s, model_bytes, peak)
}

fn run_steps(dir: &std::path::Path, bits: Bits, steps: usize) -> (f64, usize) {
    let start = current();
    let mut model = Llama::load(
        dir,
        &LoadOptions {
            bits,
            ..LoadOptions::default()
        },
    )
    .expect("model");
    let model_bytes = current() - start;
    model.attach_lora(&LoraConfig::default(), 42).expect("lora");
    let sizes: Vec<usize> = model
        .adapters()
        .iter()
        .flat_map(|(_, a)| [a.a.dims().iter().product(), a.b.dims().iter().product()])
        .collect();
    let mut optimizer = PagedAdamW::new(
        OptimizerKind::PagedAdamW32,
        AdamWConfig::default(),
        &sizes,
        None,
        &model.device,
    );
    let ids: Vec<u32> = (0..SEQ as u32).map(|i| (i * 7919 + 13) % 49152).collect();
    let batch = TrainBatch {
        labels: vec![ids.iter().map(|&i| i64::from(i)).collect()],
        is_token: vec![vec![true; SEQ]],
        ids: vec![ids],
    };
    let mut seconds = Vec::new();
    for step in 0..steps + 1 {
        let start = Instant::now();
        let stream = DropoutStream {
            seed: 42,
            step: step as u64,
        };
        let result = loss_and_grads(&model, &batch, true, Some(&stream)).expect("step");
        optimizer.begin_step();
        let mut adapters: Vec<_> = model
            .linears_mut()
            .into_iter()
            .filter_map(|(_, l)| l.lora.as_mut())
            .collect();
        for (k, ((ga, gb), adapter)) in result
            .grads
            .grads
            .into_iter()
            .zip(adapters.iter_mut())
            .enumerate()
        {
            adapter.a = optimizer.update(2 * k, adapter.a.clone(), ga, 2e-4);
            adapter.b = optimizer.update(2 * k + 1, adapter.b.clone(), gb, 2e-4);
        }
        let elapsed = start.elapsed().as_secs_f64();
        eprintln!(
            "  {bits:?} step {step}: {elapsed:.2}s, loss {:.4}",
            result.loss_sum / result.tokens as f64
        );
        if step > 0 {
            seconds.push(elapsed); // the first step warms up allocations and caches
        }
    }
    let mean = seconds.iter().sum::<f64>() / seconds.len() as f64;
    (SEQ as f64 / mean, model_bytes)
}

fn main() {
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().expect("temp dir");
    let shape = SyntheticModel::SMOLLM2_135M;
    shape.write(dir.path(), 7).expect("write model");
    println!(
        "SmolLM2-135M-shaped random model ({} parameters), seq {SEQ}, batch 1, LoRA r 64 all linears, \
         gradient checkpointing, paged AdamW 32-bit, {} threads, {steps} timed steps after one warm-up:",
        shape.parameters(),
        rayon::current_num_threads()
    );
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    for bits in [Bits::Four, Bits::Sixteen] {
        let (tokens_per_s, model_bytes, peak) = run(dir.path(), bits, steps);
        println!(
            "  {:<14} {tokens_per_s:>8.1} tokens/s   model {:>7.1} MiB   peak heap {:>7.1} MiB",
            if bits == Bits::Four {
                "NF4 base"
            } else {
                "dense f32 base"
            },
            mib(model_bytes),
            mib(peak)
        );
    }
}
