//! The fused operations of the training step (attention, RMSNorm, RoPE, SwiGLU, dropout,
//! cross-entropy through the head): the CPU kernels against the plain tensor-op version (the
//! same operation on an autodiff device runs the generic composition, and autodiff
//! differentiates it), and their hand-written backward passes against that autodiff and
//! against central differences.

use burn::tensor::{Device, Tensor};
use qlora_core::backend::ops;
use support::ops::{assert_close, attention_case, ids, t, vec};
use support::values;

/// Central differences of `f` (a scalar function of `x`) at a few coordinates, against `grad`.
fn check_central(name: &str, x: &[f32], grad: &[f32], f: impl Fn(&[f32]) -> f64) {
    let scale = grad.iter().fold(0f32, |m, v| m.max(v.abs()));
    for i in (0..x.len()).step_by((x.len() / 7).max(1)) {
        let h = 1e-2f32 * x[i].abs().max(0.1);
        let mut plus = x.to_vec();
        plus[i] += h;
        let mut minus = x.to_vec();
        minus[i] -= h;
        let numeric = (f(&plus) - f(&minus)) / (2.0 * f64::from(h));
        let err = (numeric - f64::from(grad[i])).abs() / f64::from(scale);
        assert!(
            err < 2e-2,
            "{name}[{i}]: analytic {} numeric {numeric}",
            grad[i]
        );
    }
}

fn weighted_sum(y: Tensor<2>, w: &[f32]) -> f64 {
    vec(y)
        .iter()
        .zip(w)
        .map(|(a, b)| f64::from(*a) * f64::from(*b))
        .sum()
}

#[test]
fn rms_norm_forward_and_backward() {
    let (cpu, ad) = (Device::flex(), Device::flex().autodiff());
    let (rows, h) = (7, 48);
    let (x, w, dy) = (
        values(rows * h, 1, 2.0),
        values(h, 2, 1.0),
        values(rows * h, 3, 1.0),
    );
    let eps = 1e-5;
    let fast = vec(ops::rms_norm(
        t(&x, [rows, h], &cpu),
        &t(&w, [h], &cpu),
        eps,
    ));
    let xa = t(&x, [rows, h], &ad).require_grad();
    let reference = ops::rms_norm(xa.clone(), &t(&w, [h], &ad), eps);
    assert_close("forward", &fast, &vec(reference.clone()), 1e-6);
    let grads = (reference * t(&dy, [rows, h], &ad)).sum().backward();
    let want = vec(xa.grad(&grads).unwrap());
    let got = vec(ops::rms_norm_backward(
        t(&x, [rows, h], &cpu),
        &t(&w, [h], &cpu),
        eps,
        t(&dy, [rows, h], &cpu),
    ));
    assert_close("backward", &got, &want, 1e-5);
    check_central("rms_norm", &x, &got, |x| {
        weighted_sum(
            ops::rms_norm(t(x, [rows, h], &cpu), &t(&w, [h], &cpu), eps),
            &dy,
        )
    });
}

#[test]
fn rope_forward_and_its_inverse_rotation_as_backward() {
    let (cpu, ad) = (Device::flex(), Device::flex().autodiff());
    let (rows, heads, dim) = (5, 3, 8);
    let x = values(rows * heads * dim, 4, 1.0);
    let angles = values(rows * dim / 2, 5, 3.0);
    let mut cos = Vec::new();
    let mut sin = Vec::new();
    for r in 0..rows {
        for half in 0..2 {
            let _ = half;
            for i in 0..dim / 2 {
                cos.push(angles[r * dim / 2 + i].cos());
                sin.push(angles[r * dim / 2 + i].sin());
            }
        }
    }
    let neg_sin: Vec<f32> = sin.iter().map(|s| -s).collect();
    let dy = values(rows * heads * dim, 6, 1.0);
    let shape = [rows, heads * dim];
    let fast = vec(ops::rope(
        t(&x, shape, &cpu),
        &t(&cos, [rows, dim], &cpu),
        &t(&sin, [rows, dim], &cpu),
    ));
    let xa = t(&x, shape, &ad).require_grad();
    let reference = ops::rope(
        xa.clone(),
        &t(&cos, [rows, dim], &ad),
        &t(&sin, [rows, dim], &ad),
    );
    assert_close("forward", &fast, &vec(reference.clone()), 1e-6);
    let grads = (reference * t(&dy, shape, &ad)).sum().backward();
    let want = vec(xa.grad(&grads).unwrap());
    let got = vec(ops::rope(
        t(&dy, shape, &cpu),
        &t(&cos, [rows, dim], &cpu),
        &t(&neg_sin, [rows, dim], &cpu),
    ));
    assert_close("backward", &got, &want, 1e-6);
}

#[test]
fn swiglu_forward_and_backward() {
    gated_forward_and_backward("swiglu", ops::swiglu, ops::swiglu_backward);
}

#[test]
fn geglu_forward_and_backward() {
    gated_forward_and_backward("geglu", ops::geglu, ops::geglu_backward);
}

type Gated = fn(Tensor<2>, Tensor<2>) -> Tensor<2>;
type GatedBackward = fn(Tensor<2>, Tensor<2>, Tensor<2>) -> (Tensor<2>, Tensor<2>);

/// A gated activation's CPU kernel against its tensor-op form through autodiff, and its
/// gradient with respect to the gate against central differences.
fn gated_forward_and_backward(name: &str, forward: Gated, backward: GatedBackward) {
    let (cpu, ad) = (Device::flex(), Device::flex().autodiff());
    let shape = [6, 40];
    let n = 240;
    let (g, u, dz) = (values(n, 7, 4.0), values(n, 8, 2.0), values(n, 9, 1.0));
    let fast = vec(forward(t(&g, shape, &cpu), t(&u, shape, &cpu)));
    let (ga, ua) = (
        t(&g, shape, &ad).require_grad(),
        t(&u, shape, &ad).require_grad(),
    );
    let reference = forward(ga.clone(), ua.clone());
    assert_close("forward", &fast, &vec(reference.clone()), 1e-6);
    let grads = (reference * t(&dz, shape, &ad)).sum().backward();
    let (dg, du) = backward(t(&g, shape, &cpu), t(&u, shape, &cpu), t(&dz, shape, &cpu));
    let (dg, du) = (vec(dg), vec(du));
    assert_close("d gate", &dg, &vec(ga.grad(&grads).unwrap()), 1e-5);
    assert_close("d up", &du, &vec(ua.grad(&grads).unwrap()), 1e-6);
    check_central(&format!("{name} gate"), &g, &dg, |g| {
        weighted_sum(forward(t(g, shape, &cpu), t(&u, shape, &cpu)), &dz)
    });
}

#[test]
fn dropout_masks_match_the_host_stream() {
    let (cpu, ad) = (Device::flex(), Device::flex().autodiff());
    let x = values(5000, 10, 1.0);
    let fast = vec(ops::dropout(t(&x, [50, 100], &cpu), 12345, 0.1));
    let reference = vec(ops::dropout(t(&x, [50, 100], &ad), 12345, 0.1));
    assert_eq!(fast, reference);
    let dropped = fast.iter().filter(|v| **v == 0.0).count() as f64 / 5000.0;
    assert!((dropped - 0.1).abs() < 0.02, "{dropped}");
}

fn check_attention(q_len: usize, k_len: usize, window: Option<usize>, softcap: Option<f64>) {
    let (cpu, ad) = (Device::flex(), Device::flex().autodiff());
    let (mut s, q_ids, k_ids) = attention_case(q_len, k_len);
    (s.window, s.softcap) = (window, softcap);
    let q_shape = [s.batch * q_len, s.heads * s.head_dim];
    let k_shape = [s.batch * k_len, s.kv_heads * s.head_dim];
    let nq = q_shape[0] * q_shape[1];
    let nk = k_shape[0] * k_shape[1];
    let (q, k, v) = (
        values(nq, 11, 1.0),
        values(nk, 12, 1.0),
        values(nk, 13, 1.0),
    );
    let d_out = values(nq, 14, 1.0);
    let run = |q: &[f32], k: &[f32], v: &[f32], device: &Device| {
        ops::attention(
            t(q, q_shape, device),
            t(k, k_shape, device),
            t(v, k_shape, device),
            &ids(&q_ids, device),
            &ids(&k_ids, device),
            s,
        )
    };
    let (out, lse) = run(&q, &k, &v, &cpu);
    if window.is_some() || softcap.is_some() {
        // Not a no-op: the same attention without them differs.
        let mut plain = s;
        (plain.window, plain.softcap) = (None, None);
        let (plain_out, _) = ops::attention(
            t(&q, q_shape, &cpu),
            t(&k, k_shape, &cpu),
            t(&v, k_shape, &cpu),
            &ids(&q_ids, &cpu),
            &ids(&k_ids, &cpu),
            plain,
        );
        assert!(support::ops::rel_diff(&vec(out.clone()), &vec(plain_out)) > 1e-2);
    }
    let (qa, ka, va) = (
        t(&q, q_shape, &ad).require_grad(),
        t(&k, k_shape, &ad).require_grad(),
        t(&v, k_shape, &ad).require_grad(),
    );
    let (ref_out, ref_lse) = ops::attention(
        qa.clone(),
        ka.clone(),
        va.clone(),
        &ids(&q_ids, &ad),
        &ids(&k_ids, &ad),
        s,
    );
    assert_close("output", &vec(out.clone()), &vec(ref_out.clone()), 1e-5);
    assert_close("log-sum-exp", &vec(lse.clone()), &vec(ref_lse), 1e-5);
    let grads = (ref_out * t(&d_out, q_shape, &ad)).sum().backward();
    let (dq, dk, dv) = ops::attention_backward(
        t(&q, q_shape, &cpu),
        t(&k, k_shape, &cpu),
        t(&v, k_shape, &cpu),
        out,
        lse,
        t(&d_out, q_shape, &cpu),
        &ids(&q_ids, &cpu),
        &ids(&k_ids, &cpu),
        s,
    );
    let (dq, dk, dv) = (vec(dq), vec(dk), vec(dv));
    assert_close("dq", &dq, &vec(qa.grad(&grads).unwrap()), 1e-5);
    assert_close("dk", &dk, &vec(ka.grad(&grads).unwrap()), 1e-5);
    assert_close("dv", &dv, &vec(va.grad(&grads).unwrap()), 1e-5);
    let loss = |q: &[f32], k: &[f32], v: &[f32]| weighted_sum(run(q, k, v, &cpu).0, &d_out);
    check_central("attention q", &q, &dq, |q| loss(q, &k, &v));
    check_central("attention k", &k, &dk, |k| loss(&q, k, &v));
    check_central("attention v", &v, &dv, |v| loss(&q, &k, v));
}

#[test]
fn attention_with_gqa_padding_and_packed_sequences() {
    // 150 queries: three blocks of the CPU kernel, the last one partial.
    check_attention(150, 150, None, None);
}

#[test]
fn attention_over_a_kv_cache() {
    check_attention(3, 40, None, None);
    check_attention(1, 9, None, None);
}

/// Sliding windows (narrower than a packed sequence, and than the interleaved runs) and
/// soft-capped scores (a cap the scores reach), alone and together, also over a cache.
#[test]
fn attention_with_a_sliding_window_and_soft_capping() {
    check_attention(150, 150, Some(7), None);
    check_attention(150, 150, None, Some(0.5));
    check_attention(150, 150, Some(70), Some(0.5));
    check_attention(3, 40, Some(5), Some(0.5));
}

#[test]
fn cross_entropy_with_its_gradient() {
    let (cpu, ad) = (Device::flex(), Device::flex().autodiff());
    let (rows, h, vocab) = (70, 16, 50);
    let hidden = values(rows * h, 15, 2.0);
    let weight = values(vocab * h, 16, 1.0);
    let targets: Vec<i64> = (0..rows as i64)
        .map(|r| {
            if r % 5 == 3 {
                -100
            } else {
                (r * 7) % vocab as i64
            }
        })
        .collect();
    let (losses, grad) = ops::cross_entropy_with_grad(
        t(&hidden, [rows, h], &cpu),
        &t(&weight, [vocab, h], &cpu),
        &ids(&targets, &cpu),
    );
    let (losses, grad) = (vec_1(losses), vec(grad));
    let plain = vec_1(ops::cross_entropy(
        t(&hidden, [rows, h], &cpu),
        &t(&weight, [vocab, h], &cpu),
        &ids(&targets, &cpu),
    ));
    assert_eq!(losses, plain);
    let ha = t(&hidden, [rows, h], &ad).require_grad();
    let reference = ops::cross_entropy(
        ha.clone(),
        &t(&weight, [vocab, h], &ad),
        &ids(&targets, &ad),
    );
    assert_close("losses", &losses, &vec_1(reference.clone()), 1e-6);
    for (r, l) in losses.iter().enumerate() {
        assert_eq!(*l == 0.0, targets[r] < 0, "row {r}");
    }
    let grads = reference.sum().backward();
    assert_close("gradient", &grad, &vec(ha.grad(&grads).unwrap()), 1e-5);
    check_central("cross entropy", &hidden, &grad, |x| {
        vec_1(ops::cross_entropy(
            t(x, [rows, h], &cpu),
            &t(&weight, [vocab, h], &cpu),
            &ids(&targets, &cpu),
        ))
        .iter()
        .map(|v| f64::from(*v))
        .sum()
    });
}

fn vec_1(x: Tensor<1>) -> Vec<f32> {
    x.into_data().convert::<f32>().try_into_vec().unwrap()
}

#[test]
fn nf4_matmuls_decode_tiles_exactly() {
    use qlora_core::FloatDtype;
    use qlora_core::backend::Nf4Weight;
    use qlora_core::quant::{Nf4Config, Nf4Tensor};
    let cpu = Device::flex();
    // Ragged shapes: rows that end inside a block, odd element counts.
    for (out_f, in_f, rows) in [(37, 70, 5), (33, 33, 3), (130, 64, 9), (300, 576, 17)] {
        let w = values(out_f * in_f, 17, 0.1);
        let state =
            Nf4Tensor::quantize(&w, &[out_f, in_f], FloatDtype::F32, Nf4Config::default()).unwrap();
        let dense_host = state.dequantize();
        let weight = Nf4Weight::new(&state, &cpu);
        assert_eq!(
            vec(weight.dequantize()),
            dense_host,
            "{out_f}x{in_f} dequantize"
        );
        let dense = t(&dense_host, [out_f, in_f], &cpu);
        let x = t(&values(rows * in_f, 18, 1.0), [rows, in_f], &cpu);
        let dy = t(&values(rows * out_f, 19, 1.0), [rows, out_f], &cpu);
        let y = vec(weight.linear(x.clone()));
        let want = vec(x.matmul(dense.clone().transpose()));
        assert_close("x Wᵀ", &y, &want, 1e-6);
        let dx = vec(weight.input_grad(dy.clone()));
        assert_close("dy W", &dx, &vec(dy.matmul(dense)), 1e-6);
    }
}
