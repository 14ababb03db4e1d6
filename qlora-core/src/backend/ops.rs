//! The operations of [`QloraOps`] on tensors: what the model calls. Each runs the backend's
//! kernel (the generic default where it has none).
//!
//! Activations may be in a 16-bit compute dtype ([`crate::ComputeDtype`]); the operations
//! compute in f32 all the same (norms' statistics, rotary embedding, SwiGLU, attention's
//! softmax and accumulation, LoRA with its f32 weights, the loss): their float inputs are
//! widened to f32 here and their outputs narrowed back to the activations' dtype. Adapter
//! gradients and losses stay f32. Only the NF4 matmuls and the head's matmul in the loss run in
//! the compute dtype.

use burn::backend::Dispatch;
use burn::tensor::{DType, Int, Tensor};

/// `t` in f32 (itself when it is).
fn wide<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    to(t, DType::F32)
}

/// `t` in `dtype` (itself when it is).
pub fn to<const D: usize>(t: Tensor<D>, dtype: DType) -> Tensor<D> {
    if t.dtype() == dtype { t } else { t.cast(dtype) }
}

use super::{AdamWStep, AttentionShape, Blockwise8, QloraOps, StateMaps};

pub fn rms_norm(x: Tensor<2>, weight: &Tensor<1>, eps: f64) -> Tensor<2> {
    let dtype = x.dtype();
    let y = Tensor::from_dispatch(<Dispatch as QloraOps>::rms_norm(
        wide(x).into_dispatch(),
        wide(weight.clone()).into_dispatch(),
        eps,
    ));
    to(y, dtype)
}

pub fn rms_norm_backward(x: Tensor<2>, weight: &Tensor<1>, eps: f64, dy: Tensor<2>) -> Tensor<2> {
    let dtype = x.dtype();
    let dx = Tensor::from_dispatch(<Dispatch as QloraOps>::rms_norm_backward(
        wide(x).into_dispatch(),
        wide(weight.clone()).into_dispatch(),
        eps,
        wide(dy).into_dispatch(),
    ));
    to(dx, dtype)
}

/// Rotate the heads of `x` `[rows, heads * dim]` by per-row tables `[rows, dim]`; with `-sin`
/// this is the backward pass.
pub fn rope(x: Tensor<2>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<2> {
    let dtype = x.dtype();
    let y = Tensor::from_dispatch(<Dispatch as QloraOps>::rope(
        wide(x).into_dispatch(),
        wide(cos.clone()).into_dispatch(),
        wide(sin.clone()).into_dispatch(),
    ));
    to(y, dtype)
}

pub fn swiglu(gate: Tensor<2>, up: Tensor<2>) -> Tensor<2> {
    let dtype = gate.dtype();
    let z = Tensor::from_dispatch(<Dispatch as QloraOps>::swiglu(
        wide(gate).into_dispatch(),
        wide(up).into_dispatch(),
    ));
    to(z, dtype)
}

pub fn swiglu_backward(gate: Tensor<2>, up: Tensor<2>, dz: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    let dtype = gate.dtype();
    let (dg, du) = <Dispatch as QloraOps>::swiglu_backward(
        wide(gate).into_dispatch(),
        wide(up).into_dispatch(),
        wide(dz).into_dispatch(),
    );
    (
        to(Tensor::from_dispatch(dg), dtype),
        to(Tensor::from_dispatch(du), dtype),
    )
}

pub fn dropout(x: Tensor<2>, seed: u64, p: f64) -> Tensor<2> {
    let dtype = x.dtype();
    let y = Tensor::from_dispatch(<Dispatch as QloraOps>::dropout(
        wide(x).into_dispatch(),
        seed,
        p,
    ));
    to(y, dtype)
}

/// `base + scale · (dropout(x) Aᵀ) Bᵀ` (no dropout when `p` is 0).
#[allow(clippy::too_many_arguments)]
pub fn lora_forward(
    base: Tensor<2>,
    x: Tensor<2>,
    a: &Tensor<2>,
    b: &Tensor<2>,
    scale: f64,
    seed: u64,
    p: f64,
) -> Tensor<2> {
    let dtype = base.dtype();
    let y = Tensor::from_dispatch(<Dispatch as QloraOps>::lora_forward(
        wide(base).into_dispatch(),
        wide(x).into_dispatch(),
        wide(a.clone()).into_dispatch(),
        wide(b.clone()).into_dispatch(),
        scale,
        seed,
        p,
    ));
    to(y, dtype)
}

/// `(dA, dB, dx_base + dx)` of [`lora_forward`].
#[allow(clippy::too_many_arguments)]
pub fn lora_backward(
    x: Tensor<2>,
    a: &Tensor<2>,
    b: &Tensor<2>,
    dy: Tensor<2>,
    dx_base: Tensor<2>,
    scale: f64,
    seed: u64,
    p: f64,
) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
    let dtype = x.dtype();
    let (da, db, dx) = <Dispatch as QloraOps>::lora_backward(
        wide(x).into_dispatch(),
        wide(a.clone()).into_dispatch(),
        wide(b.clone()).into_dispatch(),
        wide(dy).into_dispatch(),
        wide(dx_base).into_dispatch(),
        scale,
        seed,
        p,
    );
    // The adapter's gradients stay f32 (they update f32 weights).
    (
        Tensor::from_dispatch(da),
        Tensor::from_dispatch(db),
        to(Tensor::from_dispatch(dx), dtype),
    )
}

/// The output `[batch * q_len, heads * dim]` and log-sum-exp `[batch * heads * q_len]`.
pub fn attention(
    q: Tensor<2>,
    k: Tensor<2>,
    v: Tensor<2>,
    q_ids: &Tensor<1, Int>,
    k_ids: &Tensor<1, Int>,
    shape: AttentionShape,
) -> (Tensor<2>, Tensor<1>) {
    let dtype = q.dtype();
    let (out, lse) = <Dispatch as QloraOps>::attention(
        wide(q).into_dispatch(),
        wide(k).into_dispatch(),
        wide(v).into_dispatch(),
        q_ids.clone().into_dispatch(),
        k_ids.clone().into_dispatch(),
        shape,
    );
    (
        to(Tensor::from_dispatch(out), dtype),
        Tensor::from_dispatch(lse),
    )
}

/// `(dq, dk, dv)`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: Tensor<2>,
    k: Tensor<2>,
    v: Tensor<2>,
    out: Tensor<2>,
    lse: Tensor<1>,
    d_out: Tensor<2>,
    q_ids: &Tensor<1, Int>,
    k_ids: &Tensor<1, Int>,
    shape: AttentionShape,
) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
    let dtype = q.dtype();
    let (dq, dk, dv) = <Dispatch as QloraOps>::attention_backward(
        wide(q).into_dispatch(),
        wide(k).into_dispatch(),
        wide(v).into_dispatch(),
        wide(out).into_dispatch(),
        wide(lse).into_dispatch(),
        wide(d_out).into_dispatch(),
        q_ids.clone().into_dispatch(),
        k_ids.clone().into_dispatch(),
        shape,
    );
    (
        to(Tensor::from_dispatch(dq), dtype),
        to(Tensor::from_dispatch(dk), dtype),
        to(Tensor::from_dispatch(dv), dtype),
    )
}

/// Per-row losses `[rows]` (f32) of `hidden` `[rows, h]` through the head `weight` `[vocab,
/// h]` (0 where the target is negative). The head's matmul runs in the weight's dtype, the rest
/// in f32.
pub fn cross_entropy(hidden: Tensor<2>, weight: &Tensor<2>, targets: &Tensor<1, Int>) -> Tensor<1> {
    Tensor::from_dispatch(<Dispatch as QloraOps>::cross_entropy(
        to(hidden, weight.dtype()).into_dispatch(),
        weight.clone().into_dispatch(),
        targets.clone().into_dispatch(),
    ))
}

/// Per-row losses and the gradient of their sum with respect to `hidden` (in its dtype).
pub fn cross_entropy_with_grad(
    hidden: Tensor<2>,
    weight: &Tensor<2>,
    targets: &Tensor<1, Int>,
) -> (Tensor<1>, Tensor<2>) {
    let dtype = hidden.dtype();
    let (losses, grad) = <Dispatch as QloraOps>::cross_entropy_with_grad(
        to(hidden, weight.dtype()).into_dispatch(),
        weight.clone().into_dispatch(),
        targets.clone().into_dispatch(),
    );
    (
        Tensor::from_dispatch(losses),
        to(Tensor::from_dispatch(grad), dtype),
    )
}

/// One AdamW step of a flat parameter: `(param, m, v)` updated.
pub fn adamw_step(
    param: Tensor<1>,
    grad: Tensor<1>,
    m: Tensor<1>,
    v: Tensor<1>,
    settings: AdamWStep,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let (p, m, v) = <Dispatch as QloraOps>::adamw_step(
        param.into_dispatch(),
        grad.into_dispatch(),
        m.into_dispatch(),
        v.into_dispatch(),
        settings,
    );
    (
        Tensor::from_dispatch(p),
        Tensor::from_dispatch(m),
        Tensor::from_dispatch(v),
    )
}

/// Both 8-bit moments of a parameter on a device ([`Blockwise8`]'s layout): the code words of
/// the first moment then the second's, and their block maxima likewise.
pub type Codes8 = (Tensor<1, Int>, Tensor<1>);

/// One step of bitsandbytes' 8-bit AdamW: the parameter and its moments, updated.
pub fn adamw8_step(
    param: Tensor<1>,
    grad: Tensor<1>,
    state: Codes8,
    maps: StateMaps<Dispatch>,
    settings: AdamWStep,
) -> (Tensor<1>, Codes8) {
    let (codes, absmax) = state;
    let state = Blockwise8 {
        codes: codes.into_dispatch(),
        absmax: absmax.into_dispatch(),
    };
    let (p, state) = <Dispatch as QloraOps>::adamw8_step(
        param.into_dispatch(),
        grad.into_dispatch(),
        state,
        maps,
        settings,
    );
    (
        Tensor::from_dispatch(p),
        (
            Tensor::from_dispatch(state.codes),
            Tensor::from_dispatch(state.absmax),
        ),
    )
}
