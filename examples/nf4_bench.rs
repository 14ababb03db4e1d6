//! NF4 throughput on a 4096x4096 f32 matrix: quantize (with double quantization), dequantize
//! (the multi-threaded CPU path and the generic tensor-op path on flex), next to a plain memcpy
//! of the same bytes in the same run. GB/s counts f32 bytes in (64 MiB per pass).
//!
//! Run: `cargo run --release --example nf4_bench`

use std::hint::black_box;
use std::time::{Duration, Instant};

use burn::tensor::Device;
use qlora_core::FloatDtype;
use qlora_core::backend::Nf4Weight;
use qlora_core::quant::{Nf4Config, Nf4Tensor};

const ROWS: usize = 4096;
const COLS: usize = 4096;
const RUNS: usize = 7;

/// Best (fastest) of `RUNS` timings: the least disturbed by the rest of the machine.
fn best_of(mut run: impl FnMut()) -> Duration {
    run(); // warm-up
    (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed()
        })
        .min()
        .expect("runs")
}

fn main() {
    let n = ROWS * COLS;
    let bytes = (n * 4) as f64;
    let mut state = 0x9E3779B97F4A7C15u64;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04
        })
        .collect();
    let shape = [ROWS, COLS];
    let gbps = |d: Duration| bytes / d.as_secs_f64() / 1e9;

    let mut copy = vec![0f32; n];
    let memcpy = best_of(|| {
        copy.copy_from_slice(black_box(&values));
        black_box(&copy);
    });

    let mut quantized = None;
    let quantize = best_of(|| {
        quantized = Some(
            Nf4Tensor::quantize(
                black_box(&values),
                &shape,
                FloatDtype::F32,
                Nf4Config::default(),
            )
            .expect("finite input"),
        );
    });
    let q = quantized.expect("quantized");

    let mut out = vec![0f32; n];
    let dequantize = best_of(|| {
        q.dequantize_into(&mut out).expect("sizes match");
        black_box(&out);
    });

    let device = Device::flex();
    let on_device = Nf4Weight::new(&q, &device);
    let backend_op = best_of(|| {
        let t = on_device.dequantize_flat();
        black_box(t.into_data());
    });

    println!(
        "NF4 (block 64, double quant) on a {ROWS}x{COLS} f32 matrix, {} threads, best of {RUNS}:",
        rayon::current_num_threads()
    );
    for (name, d) in [
        ("memcpy (same bytes)", memcpy),
        ("quantize", quantize),
        ("dequantize (CPU)", dequantize),
        ("dequantize (backend op, flex)", backend_op),
    ] {
        println!(
            "  {name:<31} {:>8.2} ms  {:>6.2} GB/s  {:>5.2}x memcpy time",
            d.as_secs_f64() * 1e3,
            gbps(d),
            d.as_secs_f64() / memcpy.as_secs_f64()
        );
    }
    println!(
        "  4-bit state: {} bytes ({:.3} bits per value)",
        q.storage_bytes(),
        q.storage_bytes() as f64 * 8.0 / n as f64
    );
}
