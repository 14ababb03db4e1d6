//! The CubeCL kernels of the GPU backends against the CPU kernels, on wgpu (Mesa's CPU Vulkan
//! driver in CI): the same inputs through `QloraOps` on both devices. Relative tolerances are
//! 1e-5 of the largest magnitude: the orders of summation differ (and WGSL may round a fused
//! multiply-add twice).
#![cfg(feature = "wgpu")]

mod common;

use burn::tensor::{Device, DeviceKind, Int, Tensor, TensorData};
use common::ops::{assert_close, attention_case, ids, t, vec};
use common::values;
use qlora::backend::ops;

fn gpu() -> Device {
    Device::wgpu(DeviceKind::DefaultDevice)
}

/// The chunked CubeCL cross-entropy (a vocabulary large enough for three chunks of rows)
/// against the CPU kernel: per-row losses and the hidden states' gradient within 1e-5.
#[test]
fn cross_entropy_kernel_matches_cpu() {
    let (rows, hidden, vocab) = (4000usize, 8usize, 10_000usize);
    let h = values(rows * hidden, 31, 0.5);
    let w = values(vocab * hidden, 32, 2.0);
    let targets: Vec<i64> = (0..rows)
        .map(|r| {
            if r % 7 == 3 {
                -1
            } else {
                ((r * 7919) % vocab) as i64
            }
        })
        .collect();
    let run = |device: &Device| {
        let h = Tensor::<2>::from_data(TensorData::new(h.clone(), [rows, hidden]), device);
        let w = Tensor::<2>::from_data(TensorData::new(w.clone(), [vocab, hidden]), device);
        let t = Tensor::<1, Int>::from_data(TensorData::new(targets.clone(), [rows]), device);
        let plain = ops::cross_entropy(h.clone(), &w, &t);
        let (losses, grad) = ops::cross_entropy_with_grad(h, &w, &t);
        (vec(plain), vec(losses), vec(grad))
    };
    let (cpu_plain, cpu_losses, cpu_grad) = run(&Device::flex());
    let (gpu_plain, gpu_losses, gpu_grad) = run(&gpu());
    let ignored = targets.iter().filter(|t| **t < 0).count();
    assert_eq!(gpu_losses.iter().filter(|l| **l == 0.0).count(), ignored);
    assert_close("losses", &gpu_losses, &cpu_losses, 1e-5);
    assert_close("losses without the gradient", &gpu_plain, &cpu_plain, 1e-5);
    assert_close("gradient", &gpu_grad, &cpu_grad, 1e-5);
}

/// Forward and backward of the attention kernels: GQA, padding, packed and interleaved
/// sequence ids, and queries over a longer history (a KV cache).
#[test]
fn attention_kernels_match_cpu() {
    for (q_len, k_len) in [(150, 150), (3, 40), (1, 9)] {
        let (s, q_ids, k_ids) = attention_case(q_len, k_len);
        let q_shape = [s.batch * q_len, s.heads * s.head_dim];
        let k_shape = [s.batch * k_len, s.kv_heads * s.head_dim];
        let (nq, nk) = (q_shape[0] * q_shape[1], k_shape[0] * k_shape[1]);
        let (q, k, v, d_out) = (
            values(nq, 11, 1.0),
            values(nk, 12, 1.0),
            values(nk, 13, 1.0),
            values(nq, 14, 1.0),
        );
        let run = |device: &Device| {
            let (qt, kt, vt) = (
                t(&q, q_shape, device),
                t(&k, k_shape, device),
                t(&v, k_shape, device),
            );
            let (qi, ki) = (ids(&q_ids, device), ids(&k_ids, device));
            let (out, lse) = ops::attention(qt.clone(), kt.clone(), vt.clone(), &qi, &ki, s);
            let (dq, dk, dv) = ops::attention_backward(
                qt,
                kt,
                vt,
                out.clone(),
                lse.clone(),
                t(&d_out, q_shape, device),
                &qi,
                &ki,
                s,
            );
            [vec(out), vec(lse), vec(dq), vec(dk), vec(dv)]
        };
        let (cpu, gpu) = (run(&Device::flex()), run(&gpu()));
        for (name, (got, want)) in ["output", "log-sum-exp", "dq", "dk", "dv"]
            .iter()
            .zip(gpu.iter().zip(&cpu))
        {
            assert_close(
                &format!("{name} ({q_len} queries, {k_len} keys)"),
                got,
                want,
                1e-5,
            );
        }
    }
}
