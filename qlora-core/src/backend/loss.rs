//! Next-token cross-entropy through the output head, and its gradient.

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, backend_extension};

use super::generic;

/// The loss.
#[backend_extension(Flex, Cube: cfg(any(feature = "wgpu", feature = "cuda")), Autodiff)]
pub trait LossOps: Backend {
    /// Per-row next-token loss through the output head: `logsumexp(h wᵀ) - (h wᵀ)[target]` for
    /// `hidden` `[rows, h]`, `weight` `[vocab, h]`, `targets` `[rows]` (negative: no loss).
    /// `hidden` and `weight` share a dtype, in which the logits are multiplied; the softmax and
    /// the losses are f32, the gradient is in their dtype.
    fn cross_entropy(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        generic::loss::cross_entropy::<Self>(hidden, weight, targets, false).0
    }

    /// [`LossOps::cross_entropy`] and the gradient of the summed loss with respect to
    /// `hidden`, in one pass.
    fn cross_entropy_with_grad(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (losses, grad) = generic::loss::cross_entropy::<Self>(hidden, weight, targets, true);
        (losses, grad.expect("asked for the gradient"))
    }
}
