//! Next-token cross-entropy through the output head as tensor operations: the `[tokens,
//! vocab]` logits exist whole here (the fast kernels never build them).

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, TensorMetadata};
use burn::tensor::{FloatDType, Scalar, Shape};

use super::F;

/// Per-row loss `logsumexp(h wᵀ) - (h wᵀ)[target]` (0 where `target < 0`), and with `grad` the
/// gradient of their sum with respect to `hidden`: `(softmax(h wᵀ) - onehot(target)) w`.
pub fn cross_entropy<B: Backend>(
    hidden: FloatTensor<B>,
    weight: FloatTensor<B>,
    targets: IntTensor<B>,
    grad: bool,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let rows = hidden.shape()[0];
    let vocab = weight.shape()[0];
    // Logits in the head's dtype (rounded as the PyTorch stack rounds them), the rest in f32.
    let dtype = weight.dtype();
    let logits = F::<B>(hidden).matmul(F(weight.clone()).swap(0, 1));
    let logits = F::<B>(B::float_cast(logits.0, FloatDType::F32));
    let lse = logits.clone().logsumexp(1);
    let targets = B::int_reshape(targets, Shape::new([rows, 1]));
    let valid = F::<B>::from_int(targets.clone())
        .add_scalar(1.0)
        .clamp(0.0, 1.0);
    let index = B::int_clamp(targets, Scalar::from(0i64), Scalar::from(vocab as i64 - 1));
    let picked = F::<B>(B::float_gather(1, logits.0.clone(), index.clone()));
    let losses = ((lse.clone() - picked) * valid.clone()).reshape(&[rows]).0;
    if !grad {
        return (losses, None);
    }
    let probs = F::<B>(B::float_cast((logits - lse).exp().0, dtype.into()));
    let chosen = F::<B>(B::float_select(
        weight.clone(),
        0,
        B::int_reshape(index, Shape::new([rows])),
    ));
    let valid = F::<B>(B::float_cast(valid.0, dtype.into()));
    let d_hidden = ((probs.matmul(F(weight)) - chosen) * valid).0;
    (losses, Some(d_hidden))
}
