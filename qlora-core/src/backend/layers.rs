//! The operations of a decoder layer between its matmuls: RMSNorm, rotary embedding, SwiGLU,
//! GeGLU, dropout, and their gradients.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, backend_extension};

use super::generic;

/// A decoder layer's elementwise and row-wise operations.
#[backend_extension(Flex, Cube: cfg(any(feature = "wgpu", feature = "cuda")), Autodiff)]
pub trait LayerOps: Backend {
    /// RMSNorm over the rows of `x` `[rows, hidden]` with `weight` `[hidden]`.
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        generic::layers::rms_norm::<Self>(x, weight, eps)
    }

    /// The gradient of [`LayerOps::rms_norm`] with respect to `x`.
    fn rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
        dy: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        generic::layers::rms_norm_backward::<Self>(x, weight, eps, dy)
    }

    /// Rotary embedding of every head of `x` `[rows, heads * dim]` with per-row `cos`, `sin`
    /// `[rows, dim]`; with `-sin` it is its own gradient.
    fn rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        generic::layers::rope::<Self>(x, cos, sin)
    }

    /// `silu(gate) · up`.
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        generic::layers::swiglu::<Self>(gate, up)
    }

    /// The gradients of [`LayerOps::swiglu`] with respect to `gate` and `up`.
    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dz: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        generic::layers::swiglu_backward::<Self>(gate, up, dz)
    }

    /// `gelu_tanh(gate) · up` (GeGLU, with GELU's tanh approximation).
    fn geglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        generic::layers::geglu::<Self>(gate, up)
    }

    /// The gradients of [`LayerOps::geglu`] with respect to `gate` and `up`.
    fn geglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dz: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        generic::layers::geglu_backward::<Self>(gate, up, dz)
    }

    /// `x` times the inverted-dropout mask of `seed` ([`super::dropout::DropoutMask`]); the
    /// same call on the gradient is the backward pass.
    fn dropout(x: FloatTensor<Self>, seed: u64, p: f64) -> FloatTensor<Self> {
        generic::layers::dropout::<Self>(x, seed, p)
    }
}
