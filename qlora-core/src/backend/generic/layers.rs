//! RMSNorm, rotary embedding, SwiGLU, GeGLU and dropout as tensor operations, with their gradients.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, TensorMetadata};
use burn::tensor::TensorData;

use super::F;
use crate::backend::LayerOps;
use crate::backend::dropout::DropoutMask;

/// `1 / sqrt(mean(x²) + eps)` of each row of `x`, as a column.
fn inv_rms<B: Backend>(x: &F<B>, eps: f64) -> F<B> {
    (x.clone() * x.clone())
        .mean_dim(1)
        .add_scalar(eps)
        .sqrt()
        .recip()
}

/// `x / sqrt(mean(x²) + eps) · weight` over the rows of `x` `[rows, hidden]`.
pub fn rms_norm<B: Backend>(x: FloatTensor<B>, weight: FloatTensor<B>, eps: f64) -> FloatTensor<B> {
    let x = F::<B>(x);
    let hidden = x.dims()[1];
    let inv = inv_rms(&x, eps);
    (x * inv * F(weight).reshape(&[1, hidden])).0
}

/// The gradient of [`rms_norm`] with respect to `x` (the weight is frozen).
pub fn rms_norm_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    eps: f64,
    dy: FloatTensor<B>,
) -> FloatTensor<B> {
    let x = F::<B>(x);
    let hidden = x.dims()[1];
    let inv = inv_rms(&x, eps);
    let g = F(dy) * F(weight).reshape(&[1, hidden]);
    // dx = r g - x r³ mean(g x)
    let dot = (g.clone() * x.clone()).mean_dim(1);
    let r3 = inv.clone() * inv.clone() * inv.clone();
    (g * inv - x * r3 * dot).0
}

/// Rotate every head of `x` `[rows, heads * dim]` by the angles of its row: `x cos +
/// rotate_half(x) sin` with `cos`, `sin` `[rows, dim]` (Hugging Face's convention). The
/// gradient is the same rotation with `-sin`.
pub fn rope<B: Backend>(
    x: FloatTensor<B>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
) -> FloatTensor<B> {
    let x = F::<B>(x);
    let [rows, width] = x.dims()[..] else {
        unreachable!("two dimensions")
    };
    let dim = cos.shape()[1];
    let heads = width / dim;
    let x = x.reshape(&[rows, heads, dim]);
    let half = dim / 2;
    let x1 = x.clone().narrow(2, 0, half);
    let x2 = x.clone().narrow(2, half, half);
    let rotated = F::cat(vec![-x2, x1], 2);
    let cos = F(cos).reshape(&[rows, 1, dim]);
    let sin = F(sin).reshape(&[rows, 1, dim]);
    (x * cos + rotated * sin).reshape(&[rows, width]).0
}

/// `silu(gate) · up`.
pub fn swiglu<B: Backend>(gate: FloatTensor<B>, up: FloatTensor<B>) -> FloatTensor<B> {
    let gate = F::<B>(gate);
    (gate.clone() * gate.sigmoid() * F(up)).0
}

/// The gradients of [`swiglu`] with respect to `gate` and `up`.
pub fn swiglu_backward<B: Backend>(
    gate: FloatTensor<B>,
    up: FloatTensor<B>,
    dz: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let (gate, up, dz) = (F::<B>(gate), F::<B>(up), F::<B>(dz));
    let sig = gate.clone().sigmoid();
    let silu = gate.clone() * sig.clone();
    // silu'(a) = σ(a) (1 + a (1 - σ(a)))
    let d_silu = sig.clone() * (gate * (-sig).add_scalar(1.0)).add_scalar(1.0);
    let d_gate = dz.clone() * up * d_silu;
    let d_up = dz * silu;
    (d_gate.0, d_up.0)
}

/// `sqrt(2 / π)`, GELU's tanh approximation's constant (PyTorch's `kBeta`).
pub const GELU_BETA: f64 = 0.797_884_560_802_865_4;
/// The cubic coefficient of GELU's tanh approximation.
pub const GELU_KAPPA: f64 = 0.044715;

/// `gelu_tanh(gate) · up`, with `gelu_tanh(a) = a/2 · (1 + tanh(β (a + κ a³)))`.
pub fn geglu<B: Backend>(gate: FloatTensor<B>, up: FloatTensor<B>) -> FloatTensor<B> {
    let a = F::<B>(gate);
    let t = gelu_tanh_inner(a.clone());
    (a * t.add_scalar(1.0).scale(0.5) * F(up)).0
}

/// `tanh(β (a + κ a³))`.
fn gelu_tanh_inner<B: Backend>(a: F<B>) -> F<B> {
    let cube = a.clone() * a.clone() * a.clone();
    (a + cube.scale(GELU_KAPPA)).scale(GELU_BETA).tanh()
}

/// The gradients of [`geglu`] with respect to `gate` and `up`.
pub fn geglu_backward<B: Backend>(
    gate: FloatTensor<B>,
    up: FloatTensor<B>,
    dz: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let (a, up, dz) = (F::<B>(gate), F::<B>(up), F::<B>(dz));
    let t = gelu_tanh_inner(a.clone());
    let gelu = a.clone() * t.clone().add_scalar(1.0).scale(0.5);
    // gelu'(a) = (1 + t)/2 + a/2 · (1 - t²) · β (1 + 3κ a²)
    let square = a.clone() * a.clone();
    let inner = square
        .scale(3.0 * GELU_KAPPA)
        .add_scalar(1.0)
        .scale(GELU_BETA);
    let sech2 = (-(t.clone() * t.clone())).add_scalar(1.0);
    let d_gelu = t.add_scalar(1.0).scale(0.5) + a.scale(0.5) * sech2 * inner;
    let d_gate = dz.clone() * up * d_gelu;
    let d_up = dz * gelu;
    (d_gate.0, d_up.0)
}

/// `x` times the dropout mask of `seed` with drop probability `p` (its own gradient too).
pub fn dropout<B: Backend>(x: FloatTensor<B>, seed: u64, p: f64) -> FloatTensor<B> {
    let shape = x.shape();
    let device = x.device();
    let mask = DropoutMask::new(seed, p).values(shape.num_elements());
    let mask = B::float_from_data(TensorData::new(mask, shape), &device);
    B::float_mul(x, mask)
}

/// `x` with the backend's dropout, or `x` itself when `p` is 0.
fn maybe_dropout<B: LayerOps>(x: FloatTensor<B>, seed: u64, p: f64) -> FloatTensor<B> {
    if p > 0.0 { B::dropout(x, seed, p) } else { x }
}

/// `base + scale · (dropout(x) Aᵀ) Bᵀ`.
pub fn lora_forward<B: LayerOps>(
    base: FloatTensor<B>,
    x: FloatTensor<B>,
    a: FloatTensor<B>,
    b: FloatTensor<B>,
    scale: f64,
    seed: u64,
    p: f64,
) -> FloatTensor<B> {
    let xd = F::<B>(maybe_dropout::<B>(x, seed, p));
    let t = xd.matmul(F(a).swap(0, 1));
    (F(base) + t.matmul(F(b).swap(0, 1)).scale(scale)).0
}

/// `(dA, dB, dx_base + dx)` of [`lora_forward`].
#[allow(clippy::too_many_arguments)]
pub fn lora_backward<B: LayerOps>(
    x: FloatTensor<B>,
    a: FloatTensor<B>,
    b: FloatTensor<B>,
    dy: FloatTensor<B>,
    dx_base: FloatTensor<B>,
    scale: f64,
    seed: u64,
    p: f64,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let xd = F::<B>(maybe_dropout::<B>(x, seed, p));
    let (a, b, dy) = (F::<B>(a), F::<B>(b), F::<B>(dy).scale(scale));
    let t = xd.clone().matmul(a.clone().swap(0, 1));
    let db = dy.clone().swap(0, 1).matmul(t);
    let dt = dy.matmul(b);
    let da = dt.clone().swap(0, 1).matmul(xd);
    let dxd = dt.matmul(a);
    let dx = F::<B>(dx_base) + F(maybe_dropout::<B>(dxd.0, seed, p));
    (da.0, db.0, dx.0)
}
