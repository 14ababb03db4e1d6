//! The CubeCL kernels of the GPU backends against the CPU kernels, on wgpu (Mesa's CPU Vulkan
//! driver in CI): the same inputs through `QloraOps` on both devices. Relative tolerances are
//! 1e-5 of the largest magnitude: the orders of summation differ (and WGSL may round a fused
//! multiply-add twice).
#![cfg(feature = "wgpu")]

use burn::tensor::{Device, DeviceKind, Int, Tensor, TensorData};
use qlora_core::backend::{AttentionShape, ops};
use support::ops::{assert_close, attention_case, ids, t, vec};
use support::values;

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
/// sequence ids, queries over a longer history (a KV cache), sliding windows and soft-caps.
#[test]
fn attention_kernels_match_cpu() {
    let cases = [
        (150, 150, None, None),
        (3, 40, None, None),
        (1, 9, None, None),
        (150, 150, Some(7), Some(0.5)),
        (3, 40, Some(5), None),
    ];
    for (q_len, k_len, window, softcap) in cases {
        let (mut s, q_ids, k_ids) = attention_case(q_len, k_len);
        (s.window, s.softcap) = (window, softcap);
        attention_matches_cpu(
            s,
            &q_ids,
            &k_ids,
            11,
            &format!("{q_len} queries, {k_len} keys, window {window:?}, cap {softcap:?}"),
        );
    }
}

/// The untiled kernels (a thread a query or key reading global memory), which `wgpu_bench`
/// shows beside the tiled ones, on the same cases.
#[test]
fn untiled_attention_kernels_match_cpu() {
    qlora_core::backend::set_baselines(qlora_core::backend::Baselines {
        untiled_attention: true,
        ..Default::default()
    });
    for (q_len, k_len, window, softcap) in [(150, 150, Some(7), Some(0.5)), (3, 40, None, None)] {
        let (mut s, q_ids, k_ids) = attention_case(q_len, k_len);
        (s.window, s.softcap) = (window, softcap);
        attention_matches_cpu(s, &q_ids, &k_ids, 13, &format!("untiled, {q_len} queries"));
    }
}

/// Forward and backward of attention `s` on wgpu against the CPU within 1e-5: the output, the
/// log-sum-exp and the three gradients, of values drawn from `seed` on.
fn attention_matches_cpu(s: AttentionShape, q_ids: &[i64], k_ids: &[i64], seed: u64, case: &str) {
    let q_shape = [s.batch * s.q_len, s.heads * s.head_dim];
    let k_shape = [s.batch * s.k_len, s.kv_heads * s.head_dim];
    let (nq, nk) = (q_shape[0] * q_shape[1], k_shape[0] * k_shape[1]);
    let (q, k, v, d_out) = (
        values(nq, seed, 1.0),
        values(nk, seed + 1, 1.0),
        values(nk, seed + 2, 1.0),
        values(nq, seed + 3, 1.0),
    );
    let run = |device: &Device| {
        let (qt, kt, vt) = (
            t(&q, q_shape, device),
            t(&k, k_shape, device),
            t(&v, k_shape, device),
        );
        let (qi, ki) = (ids(q_ids, device), ids(k_ids, device));
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
        assert_close(&format!("{name} ({case})"), got, want, 1e-5);
    }
}

/// RMSNorm, RoPE and SwiGLU forward and backward (rows wider than a cube, so units stride).
#[test]
fn elementwise_kernels_match_cpu() {
    let (rows, hidden, heads, dim) = (37usize, 576usize, 9usize, 64usize);
    let x = values(rows * hidden, 21, 2.0);
    let w = values(hidden, 22, 1.5);
    let dy = values(rows * hidden, 23, 1.0);
    let (cos, sin): (Vec<f32>, Vec<f32>) = (0..rows * dim)
        .map(|i| ((i as f32) * 0.37).sin_cos())
        .map(|(s, c)| (c, s))
        .unzip();
    let up = values(rows * hidden, 24, 3.0);
    let run = |device: &Device| {
        let xt = t(&x, [rows, hidden], device);
        let wt = t(&w, [hidden], device);
        let dyt = t(&dy, [rows, hidden], device);
        let (ct, st) = (t(&cos, [rows, dim], device), t(&sin, [rows, dim], device));
        let qt = t(&x, [rows, heads * dim], device);
        let ut = t(&up, [rows, hidden], device);
        let (dg, du) = ops::swiglu_backward(xt.clone(), ut.clone(), dyt.clone());
        let (eg, eu) = ops::geglu_backward(xt.clone(), ut.clone(), dyt.clone());
        let geglu = vec(ops::geglu(xt.clone(), ut.clone()));
        [
            vec(ops::rms_norm(xt.clone(), &wt, 1e-5)),
            vec(ops::rms_norm_backward(xt.clone(), &wt, 1e-5, dyt)),
            vec(ops::rope(qt.clone(), &ct, &st)),
            vec(ops::rope(qt, &ct, &st.neg())),
            vec(ops::swiglu(xt, ut)),
            vec(dg),
            vec(du),
            geglu,
            vec(eg),
            vec(eu),
        ]
    };
    let (cpu, gpu) = (run(&Device::flex()), run(&gpu()));
    let names = [
        "rms_norm",
        "rms_norm backward",
        "rope",
        "rope backward",
        "swiglu",
        "swiglu dgate",
        "swiglu dup",
        "geglu",
        "geglu dgate",
        "geglu dup",
    ];
    for (name, (got, want)) in names.iter().zip(gpu.iter().zip(&cpu)) {
        assert_close(name, got, want, 1e-5);
    }
}

/// Dropout draws the CPU's mask bit for bit (the 64-bit counter hash in 32-bit halves), and
/// LoRA with dropout (forward and gradients) agrees with the CPU's.
#[test]
fn dropout_masks_and_lora_match_cpu() {
    let (rows, inp, out, r) = (33usize, 96usize, 80usize, 8usize);
    let x = values(rows * inp, 41, 1.0);
    for (seed, p) in [(7u64, 0.1f64), (0xdead_beef_1234_5678, 0.5), (3, 0.05)] {
        let run = |device: &Device| vec(ops::dropout(t(&x, [rows, inp], device), seed, p));
        let (cpu, gpu) = (run(&Device::flex()), run(&gpu()));
        let differing = support::bits(&gpu)
            .iter()
            .zip(support::bits(&cpu))
            .filter(|(a, b)| **a != *b)
            .count();
        assert_eq!(differing, 0, "seed {seed} p {p}: values differ");
    }
    let (a, b) = (values(r * inp, 42, 0.3), values(out * r, 43, 0.3));
    let (base, dy) = (values(rows * out, 44, 1.0), values(rows * out, 45, 1.0));
    let dx_base = values(rows * inp, 46, 1.0);
    let run = |device: &Device| {
        let xt = t(&x, [rows, inp], device);
        let (at, bt) = (t(&a, [r, inp], device), t(&b, [out, r], device));
        let y = ops::lora_forward(
            t(&base, [rows, out], device),
            xt.clone(),
            &at,
            &bt,
            2.0,
            9,
            0.1,
        );
        let (da, db, dx) = ops::lora_backward(
            xt,
            &at,
            &bt,
            t(&dy, [rows, out], device),
            t(&dx_base, [rows, inp], device),
            2.0,
            9,
            0.1,
        );
        [vec(y), vec(da), vec(db), vec(dx)]
    };
    let (cpu, gpu) = (run(&Device::flex()), run(&gpu()));
    for (name, (got, want)) in ["y", "dA", "dB", "dx"].iter().zip(gpu.iter().zip(&cpu)) {
        assert_close(name, got, want, 1e-5);
    }
}

/// Long sequences with 64-wide heads and four query heads a key/value head: a thread of the
/// kernels runs more loop iterations than lavapipe allows a shader invocation (65535, every
/// loop together), unless the loops over a head's values are unrolled; before they were, the
/// keys' gradients here came back wrong (relative error 1.0).
#[test]
fn attention_kernels_match_cpu_on_long_sequences() {
    let (mut s, q_ids, k_ids) = attention_case(1024, 1024);
    (s.heads, s.kv_heads, s.head_dim, s.scale) = (4, 1, 64, 0.125);
    attention_matches_cpu(s, &q_ids, &k_ids, 51, "1024 tokens, 4 heads on 1, d 64");
}
