//! The operations of [`QloraOps`] on tensors: what the model calls. Each runs the backend's
//! kernel (the generic default where it has none).

use burn::backend::Dispatch;
use burn::tensor::{Int, Tensor};

use super::{AdamWStep, AttentionShape, Blockwise8, QloraOps, StateMaps};

pub fn rms_norm(x: Tensor<2>, weight: &Tensor<1>, eps: f64) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as QloraOps>::rms_norm(
        x.into_dispatch(),
        weight.clone().into_dispatch(),
        eps,
    ))
}

pub fn rms_norm_backward(x: Tensor<2>, weight: &Tensor<1>, eps: f64, dy: Tensor<2>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as QloraOps>::rms_norm_backward(
        x.into_dispatch(),
        weight.clone().into_dispatch(),
        eps,
        dy.into_dispatch(),
    ))
}

/// Rotate the heads of `x` `[rows, heads * dim]` by per-row tables `[rows, dim]`; with `-sin`
/// this is the backward pass.
pub fn rope(x: Tensor<2>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as QloraOps>::rope(
        x.into_dispatch(),
        cos.clone().into_dispatch(),
        sin.clone().into_dispatch(),
    ))
}

pub fn swiglu(gate: Tensor<2>, up: Tensor<2>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as QloraOps>::swiglu(
        gate.into_dispatch(),
        up.into_dispatch(),
    ))
}

pub fn swiglu_backward(gate: Tensor<2>, up: Tensor<2>, dz: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    let (dg, du) = <Dispatch as QloraOps>::swiglu_backward(
        gate.into_dispatch(),
        up.into_dispatch(),
        dz.into_dispatch(),
    );
    (Tensor::from_dispatch(dg), Tensor::from_dispatch(du))
}

pub fn dropout(x: Tensor<2>, seed: u64, p: f64) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as QloraOps>::dropout(x.into_dispatch(), seed, p))
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
    Tensor::from_dispatch(<Dispatch as QloraOps>::lora_forward(
        base.into_dispatch(),
        x.into_dispatch(),
        a.clone().into_dispatch(),
        b.clone().into_dispatch(),
        scale,
        seed,
        p,
    ))
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
    let (da, db, dx) = <Dispatch as QloraOps>::lora_backward(
        x.into_dispatch(),
        a.clone().into_dispatch(),
        b.clone().into_dispatch(),
        dy.into_dispatch(),
        dx_base.into_dispatch(),
        scale,
        seed,
        p,
    );
    (
        Tensor::from_dispatch(da),
        Tensor::from_dispatch(db),
        Tensor::from_dispatch(dx),
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
    let (out, lse) = <Dispatch as QloraOps>::attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        q_ids.clone().into_dispatch(),
        k_ids.clone().into_dispatch(),
        shape,
    );
    (Tensor::from_dispatch(out), Tensor::from_dispatch(lse))
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
    let (dq, dk, dv) = <Dispatch as QloraOps>::attention_backward(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        out.into_dispatch(),
        lse.into_dispatch(),
        d_out.into_dispatch(),
        q_ids.clone().into_dispatch(),
        k_ids.clone().into_dispatch(),
        shape,
    );
    (
        Tensor::from_dispatch(dq),
        Tensor::from_dispatch(dk),
        Tensor::from_dispatch(dv),
    )
}

/// Per-row losses `[rows]` of `hidden` `[rows, h]` through the head `weight` `[vocab, h]`
/// (0 where the target is negative).
pub fn cross_entropy(hidden: Tensor<2>, weight: &Tensor<2>, targets: &Tensor<1, Int>) -> Tensor<1> {
    Tensor::from_dispatch(<Dispatch as QloraOps>::cross_entropy(
        hidden.into_dispatch(),
        weight.clone().into_dispatch(),
        targets.clone().into_dispatch(),
    ))
}

/// Per-row losses and the gradient of their sum with respect to `hidden`.
pub fn cross_entropy_with_grad(
    hidden: Tensor<2>,
    weight: &Tensor<2>,
    targets: &Tensor<1, Int>,
) -> (Tensor<1>, Tensor<2>) {
    let (losses, grad) = <Dispatch as QloraOps>::cross_entropy_with_grad(
        hidden.into_dispatch(),
        weight.clone().into_dispatch(),
        targets.clone().into_dispatch(),
    );
    (Tensor::from_dispatch(losses), Tensor::from_dispatch(grad))
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
