//! A LoRA adapter's operations: its output added to its linear's, and its gradients.

use burn::backend::backend_extension;
use burn::backend::tensor::FloatTensor;

use super::LayerOps;
use super::generic;

/// LoRA's forward and backward passes (their dropout is [`LayerOps::dropout`]).
#[backend_extension(Flex, Cube: cfg(any(feature = "wgpu", feature = "cuda")), Autodiff)]
pub trait LoraOps: LayerOps {
    /// `base + scale · (dropout(x) Aᵀ) Bᵀ`: a LoRA adapter's output added to its linear's base
    /// output, for `x` `[rows, in]`, `a` `[r, in]`, `b` `[out, r]` (`p` = 0: no dropout).
    #[allow(clippy::too_many_arguments)]
    fn lora_forward(
        base: FloatTensor<Self>,
        x: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scale: f64,
        seed: u64,
        p: f64,
    ) -> FloatTensor<Self> {
        generic::layers::lora_forward::<Self>(base, x, a, b, scale, seed, p)
    }

    /// The gradients of [`LayerOps::lora_forward`]: `(dA, dB, dx_base + dx)` given the
    /// output's gradient `dy` and the input gradient of the base part `dx_base`.
    #[allow(clippy::too_many_arguments)]
    fn lora_backward(
        x: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        dx_base: FloatTensor<Self>,
        scale: f64,
        seed: u64,
        p: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        generic::layers::lora_backward::<Self>(x, a, b, dy, dx_base, scale, seed, p)
    }
}
