//! Steady-state QLoRA training speed and peak memory for a SmolLM2-135M-shaped random model
//! (30 layers, hidden 576, 9 heads, 3 KV heads, vocab 49152): batch 1, LoRA r 64 on all seven
//! projections, gradient checkpointing, AdamW 32-bit, f32, every token learned (as the peer
//! benchmark `../shared/bench/hf_train_bench.py` trains).
//!
//! Prints tokens/s, peak heap, the time of one step broken down by phase, and the achieved
//! GFLOP/s next to a plain f32 matrix multiply measured in the same run.
//!
//! Run: `cargo run --release --example train_bench [-- --seq 512 --steps 3 --bits 4]`

use std::time::{Duration, Instant};

use burn::tensor::{Device, Distribution, Tensor};
use qlora_core::lora::LoraConfig;
use qlora_core::model::{Bits, CausalLm, DropoutStream, LoadOptions, TrainBatch};
use qlora_core::profile::{self, Phase};
use qlora_core::train::{AdamWConfig, OptimizerKind, PagedAdamW};

use support::alloc::{Counting, current, peak_during};
use support::synthetic::SyntheticModel;

#[global_allocator]
static ALLOC: Counting = Counting;

struct Args {
    seq: usize,
    steps: usize,
    bits: Bits,
}

fn args() -> Args {
    let mut a = Args {
        seq: 512,
        steps: 3,
        bits: Bits::Four,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let value = pair.get(1).map(String::as_str).unwrap_or_default();
        match pair[0].as_str() {
            "--seq" => a.seq = value.parse().expect("--seq N"),
            "--steps" => a.steps = value.parse().expect("--steps N"),
            "--bits" => a.bits = value.parse().expect("--bits 4|16"),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// Floating-point operations of one training step, per token: what the step must do given
/// how it recomputes (forward, recompute, backward), counted from the model's shapes.
fn step_flops(shape: &SyntheticModel, seq: usize, rank: usize) -> f64 {
    let (h, i, layers) = (
        shape.hidden_size as f64,
        shape.intermediate_size as f64,
        shape.num_layers as f64,
    );
    let kv = (shape.num_kv_heads * shape.head_dim()) as f64;
    let base = 2.0 * (2.0 * h * h + 2.0 * h * kv + 3.0 * h * i); // per token per layer
    // r (in + out) multiply-adds per adapter: q, k, v, o, gate, up, down.
    let in_out = (h + h) + 2.0 * (h + kv) + (h + h) + 3.0 * (h + i);
    let lora = 2.0 * rank as f64 * in_out;
    // Causal attention: QK^T and PV over on average seq/2 keys.
    let attention = 2.0 * 2.0 * h * (seq as f64 / 2.0);
    let head = 2.0 * h * shape.vocab_size as f64;
    // forward + input gradients (base 1x, attention 2.5x, LoRA 2x, head 1x) + recompute.
    let forward = layers * (base + lora + attention) + head;
    let backward = layers * (base + 2.0 * lora + 2.5 * attention) + head;
    let recompute = layers * (base + lora + attention);
    forward + backward + recompute
}

/// A plain f32 matrix multiply of the MLP's shape, in GFLOP/s.
fn gemm_gflops(seq: usize, shape: &SyntheticModel) -> f64 {
    let device = Device::flex();
    let (m, k, n) = (seq, shape.hidden_size, shape.intermediate_size);
    let a = Tensor::<2>::random([m, k], Distribution::Default, &device);
    let b = Tensor::<2>::random([k, n], Distribution::Default, &device);
    let mut best = f64::MAX;
    for _ in 0..20 {
        let t = Instant::now();
        let _ = a.clone().matmul(b.clone()).into_data();
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (m * k * n) as f64 / best / 1e9
}

struct Measured {
    tokens_per_s: f64,
    step: Duration,
    phases: Vec<(Phase, Duration)>,
    model_bytes: usize,
}

fn run(dir: &std::path::Path, a: &Args) -> Measured {
    let start = current();
    let mut model = CausalLm::load(
        dir,
        &LoadOptions {
            bits: a.bits,
            ..LoadOptions::default()
        },
    )
    .expect("model");
    let model_bytes = current() - start;
    model.attach_lora(&LoraConfig::default(), 42).expect("lora");
    let sizes = model.adapter_sizes();
    let mut optimizer = PagedAdamW::new(
        OptimizerKind::AdamW32,
        AdamWConfig::default(),
        &sizes,
        None,
        &model.device,
    );
    let ids: Vec<u32> = (0..a.seq as u32).map(|i| (i * 7919 + 13) % 49152).collect();
    let batch = {
        let labels = vec![ids.iter().map(|&i| i64::from(i)).collect()];
        TrainBatch::new(vec![ids], labels, vec![vec![true; a.seq]])
    };
    let mut times = profile::StepTimes::default();
    for step in 0..a.steps + 1 {
        // The first step warms up allocations and caches.
        profile::enable(step > 0);
        let t = Instant::now();
        let stream = DropoutStream {
            seed: 42,
            step: step as u64,
        };
        let result = model
            .loss_and_grads(&batch, true, Some(&stream))
            .expect("step");
        {
            let _span = profile::span(Phase::Optimizer);
            optimizer.step_adapters(&mut model, result.grads.grads, 1.0, 2e-4);
            // Wait for the update (on a GPU it would be queued).
            let _ = model.adapters()[0].1.b.clone().into_data();
        }
        let elapsed = t.elapsed().as_secs_f64();
        eprintln!(
            "  step {step}: {elapsed:.2}s, loss {:.4}",
            result.loss_sum / result.tokens as f64
        );
        if step > 0 {
            times.record(elapsed);
        }
    }
    profile::enable(false);
    let mean = times.mean();
    Measured {
        tokens_per_s: a.seq as f64 / mean,
        step: Duration::from_secs_f64(mean),
        phases: times.phase_means(),
        model_bytes,
    }
}

fn main() {
    let a = args();
    let dir = tempfile::tempdir().expect("temp dir");
    let shape = SyntheticModel::SMOLLM2_135M;
    shape.write(dir.path(), 7).expect("write model");
    println!(
        "SmolLM2-135M-shaped random model ({} parameters), {} base, seq {}, batch 1, LoRA r 64 \
         on all linears, gradient checkpointing, AdamW 32-bit, f32, {} threads, {} timed steps \
         after one warm-up",
        shape.parameters(),
        if a.bits == Bits::Four {
            "NF4"
        } else {
            "dense f32"
        },
        a.seq,
        rayon::current_num_threads(),
        a.steps
    );
    let (m, peak) = peak_during(|| run(dir.path(), &a));
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    println!(
        "  {:.1} tokens/s   step {:.3} s   model {:.1} MiB   peak heap {:.1} MiB",
        m.tokens_per_s,
        m.step.as_secs_f64(),
        mib(m.model_bytes),
        mib(peak)
    );
    for line in profile::table(&m.phases, m.step) {
        println!("{line}");
    }
    let step = m.step.as_secs_f64();
    let flops = step_flops(&shape, a.seq, 64) * a.seq as f64;
    let gemm = gemm_gflops(a.seq, &shape);
    println!(
        "  {:.2} GFLOP a step ({:.2} GFLOP a token): {:.1} GFLOP/s achieved, plain f32 GEMM {:.1} \
         GFLOP/s in this run: {:.0}% of it",
        flops / 1e9,
        flops / a.seq as f64 / 1e9,
        flops / step / 1e9,
        gemm,
        100.0 * flops / step / 1e9 / gemm
    );
}
