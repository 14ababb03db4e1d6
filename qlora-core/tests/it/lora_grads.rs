//! Gradients through a QLoRA linear: the custom NF4 backward agrees with autodiff of a plain
//! dense layer built from the dequantized weight, and with central finite differences, for the
//! adapter matrices and the layer input, on NF4 and dense bases.

use burn::tensor::{Device, Tensor, TensorData};
use qlora_core::FloatDtype;
use qlora_core::backend::Nf4Weight;
use qlora_core::model::{BaseWeight, Linear, LoraAdapter};
use qlora_core::quant::{Nf4Config, Nf4Tensor};

const OUT: usize = 96;
const IN: usize = 128;
const ROWS: usize = 5;
const R: usize = 4;
const SCALE: f64 = 2.0;

fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
        })
        .collect()
}

fn tensor<const D: usize>(v: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v, shape), &Device::flex())
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec().unwrap()
}

struct Case {
    w: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    x: Vec<f32>,
    r: Vec<f32>,
}

fn case() -> Case {
    Case {
        w: values(OUT * IN, 1, 0.2),
        a: values(R * IN, 2, 0.5),
        b: values(OUT * R, 3, 0.5),
        x: values(ROWS * IN, 4, 2.0),
        r: values(ROWS * OUT, 5, 2.0),
    }
}

fn linear(base: BaseWeight, a: Tensor<2>, b: Tensor<2>) -> Linear {
    let mut l = Linear::new(base, None, IN, OUT);
    l.lora = Some(LoraAdapter {
        a,
        b,
        scale: SCALE,
        dropout: 0.0,
        key: 0,
    });
    l
}

/// `sum(linear(x) * r)`, and its gradients with respect to A, B and x by autodiff.
fn grads(base: &BaseWeight, c: &Case) -> (f32, Vec<f32>, Vec<f32>, Vec<f32>) {
    let a = tensor(c.a.clone(), [R, IN]).autodiff().require_grad();
    let b = tensor(c.b.clone(), [OUT, R]).autodiff().require_grad();
    let x = tensor(c.x.clone(), [1, ROWS, IN]).autodiff().require_grad();
    let l = linear(base.clone(), a.clone(), b.clone());
    let y = l.forward(x.clone(), None);
    let loss = (y * tensor(c.r.clone(), [1, ROWS, OUT]).autodiff()).sum();
    let value = loss.clone().into_scalar::<f32>();
    let g = loss.backward();
    (
        value,
        to_vec(a.grad(&g).unwrap()),
        to_vec(b.grad(&g).unwrap()),
        to_vec(x.grad(&g).unwrap()),
    )
}

/// The same loss with plain autodiff ops on a dense weight (no custom op).
fn reference_grads(w: &[f32], c: &Case) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let w = tensor(w.to_vec(), [OUT, IN]).autodiff();
    let a = tensor(c.a.clone(), [R, IN]).autodiff().require_grad();
    let b = tensor(c.b.clone(), [OUT, R]).autodiff().require_grad();
    let x = tensor(c.x.clone(), [ROWS, IN]).autodiff().require_grad();
    let y = x.clone().matmul(w.transpose())
        + x.clone()
            .matmul(a.clone().transpose())
            .matmul(b.clone().transpose())
            * SCALE;
    let g = (y * tensor(c.r.clone(), [ROWS, OUT]).autodiff())
        .sum()
        .backward();
    (
        to_vec(a.grad(&g).unwrap()),
        to_vec(b.grad(&g).unwrap()),
        to_vec(x.grad(&g).unwrap()),
    )
}

/// The loss in f64 on the host, for finite differences.
fn loss_f64(w: &[f32], a: &[f32], b: &[f32], x: &[f32], r: &[f32]) -> f64 {
    let mut total = 0.0;
    for i in 0..ROWS {
        let xi = &x[i * IN..(i + 1) * IN];
        let ax: Vec<f64> = (0..R)
            .map(|k| {
                (0..IN)
                    .map(|j| f64::from(a[k * IN + j]) * f64::from(xi[j]))
                    .sum()
            })
            .collect();
        for o in 0..OUT {
            let base: f64 = (0..IN)
                .map(|j| f64::from(w[o * IN + j]) * f64::from(xi[j]))
                .sum();
            let lora: f64 = (0..R).map(|k| f64::from(b[o * R + k]) * ax[k]).sum();
            total += (base + SCALE * lora) * f64::from(r[i * OUT + o]);
        }
    }
    total
}

fn assert_close(name: &str, got: &[f32], want: &[f32], tol: f32) {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * scale,
            "{name}[{i}]: {g} vs {w} (scale {scale})"
        );
    }
}

fn check(base: BaseWeight, dense_w: Vec<f32>, label: &str) {
    let c = case();
    let (_, ga, gb, gx) = grads(&base, &c);
    let (ra, rb, rx) = reference_grads(&dense_w, &c);
    assert_close(&format!("{label} dA"), &ga, &ra, 1e-5);
    assert_close(&format!("{label} dB"), &gb, &rb, 1e-5);
    assert_close(&format!("{label} dx"), &gx, &rx, 1e-5);

    // Central differences in f64: the loss is linear in each coordinate, so they are exact up
    // to rounding of the f64 sums.
    let eps = 1e-3f32;
    let fd = |which: usize, i: usize| -> f64 {
        let eval = |delta: f32| {
            let mut p = [c.a.clone(), c.b.clone(), c.x.clone()];
            p[which][i] += delta;
            loss_f64(&dense_w, &p[0], &p[1], &p[2], &c.r)
        };
        (eval(eps) - eval(-eps)) / (2.0 * f64::from(eps))
    };
    for (which, grad, name) in [(0, &ga, "A"), (1, &gb, "B"), (2, &gx, "x")] {
        let scale = grad.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        for i in [0, 7, grad.len() / 2, grad.len() - 1] {
            let numeric = fd(which, i);
            assert!(
                (numeric - f64::from(grad[i])).abs() <= 1e-3 * scale,
                "{label} d{name}[{i}]: autodiff {} vs finite difference {numeric}",
                grad[i]
            );
        }
    }
}

#[test]
fn nf4_base_gradients() {
    let c = case();
    let state =
        Nf4Tensor::quantize(&c.w, &[OUT, IN], FloatDtype::F32, Nf4Config::default()).unwrap();
    let dense = state.dequantize();
    check(
        BaseWeight::Nf4(Nf4Weight::new(&state, &Device::flex())),
        dense,
        "NF4",
    );
}

#[test]
fn dense_base_gradients() {
    let c = case();
    check(
        BaseWeight::Dense(tensor(c.w.clone(), [OUT, IN])),
        c.w,
        "dense",
    );
}
