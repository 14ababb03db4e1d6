//! The operations on autodiff backends. The NF4 matmul has a hand-written backward, `dx = dy ·
//! W` with `W` dequantized again from the packed state the op saved (only the input is
//! differentiable; the weight is frozen); every other operation runs its tensor-op default,
//! which autodiff differentiates.

use burn::backend::AutodiffBackend;
use burn::backend::Backend;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::FloatTensor;

use super::{
    AttentionOps, LayerOps, LoraOps, LossOps, Nf4Absmax, Nf4DoubleAbsmax, Nf4Operand, Nf4Ops,
    OptimOps,
};

/// The weight seen from inside autodiff: its float parts are constants of the graph.
fn inner<B: Backend, C: CheckpointStrategy>(weight: Nf4Operand<Autodiff<B, C>>) -> Nf4Operand<B> {
    let absmax = match weight.absmax {
        Nf4Absmax::Plain(a) => Nf4Absmax::Plain(a.into_primitive()),
        Nf4Absmax::Double(d) => Nf4Absmax::Double(Nf4DoubleAbsmax {
            words: d.words,
            nested_absmax: d.nested_absmax.into_primitive(),
            nested_code: d.nested_code.into_primitive(),
            nested_blocksize: d.nested_blocksize,
            offset: d.offset,
        }),
    };
    Nf4Operand {
        words: weight.words,
        code: weight.code.into_primitive(),
        absmax,
        layout: weight.layout,
    }
}

#[derive(Debug)]
struct Nf4MatmulBackward;

impl<B: Backend + Nf4Ops> Backward<B, 1> for Nf4MatmulBackward {
    /// The packed weight: never a dense matrix.
    type State = Nf4Operand<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let weight = ops.state;
        let _span = crate::profile::span(crate::profile::Phase::BaseBackward);
        unary::<B, _>(ops.parents, ops.node, grads, |dy| {
            B::nf4_matmul_transposed(dy, weight)
        });
    }
}

impl<B: Backend + Nf4Ops, C: CheckpointStrategy> Nf4Ops for Autodiff<B, C> {
    fn nf4_dequantize(weight: Nf4Operand<Self>) -> FloatTensor<Self> {
        // The weight is frozen: its dense form is a constant.
        <Self as AutodiffBackend>::from_inner(B::nf4_dequantize(inner(weight)))
    }

    fn nf4_matmul(x: FloatTensor<Self>, weight: Nf4Operand<Self>) -> FloatTensor<Self> {
        let weight = inner(weight);
        match Nf4MatmulBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::nf4_matmul(x.into_primitive(), weight.clone());
                prep.finish(weight, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::nf4_matmul(x.into_primitive(), weight)),
        }
    }

    fn nf4_matmul_transposed(dy: FloatTensor<Self>, weight: Nf4Operand<Self>) -> FloatTensor<Self> {
        // Only used inside backward passes; the result is a constant.
        <Self as AutodiffBackend>::from_inner(B::nf4_matmul_transposed(
            dy.into_primitive(),
            inner(weight),
        ))
    }
}

impl<B: Backend, C: CheckpointStrategy> LayerOps for Autodiff<B, C> {}

impl<B: Backend, C: CheckpointStrategy> LoraOps for Autodiff<B, C> {}

impl<B: Backend, C: CheckpointStrategy> AttentionOps for Autodiff<B, C> {}

impl<B: Backend, C: CheckpointStrategy> OptimOps for Autodiff<B, C> {}

impl<B: Backend, C: CheckpointStrategy> LossOps for Autodiff<B, C> {}
