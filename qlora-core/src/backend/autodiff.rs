//! The backward of the NF4 matmul: `dx = dy · W`, with `W` dequantized again from the packed
//! state the op saved. Only the input is differentiable; the weight is frozen.

use burn::backend::AutodiffBackend;
use burn::backend::Backend;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::FloatTensor;

use super::{Nf4Operand, QloraOps};

/// The weight seen from inside autodiff: its float parts are constants of the graph.
fn inner_operand<B: Backend, C: CheckpointStrategy>(
    weight: Nf4Operand<Autodiff<B, C>>,
) -> Nf4Operand<B> {
    Nf4Operand {
        words: weight.words,
        code: weight.code.into_primitive(),
        absmax: weight.absmax.into_primitive(),
    }
}

#[derive(Debug)]
struct Nf4MatmulBackward;

impl<B: Backend + QloraOps> Backward<B, 1> for Nf4MatmulBackward {
    /// The packed weight and its layout: never a dense matrix.
    type State = (Nf4Operand<B>, [usize; 3]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (weight, [out_features, in_features, blocksize]) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |dy| {
            B::nf4_matmul_transposed(dy, weight, out_features, in_features, blocksize)
        });
    }
}

impl<B: Backend + QloraOps, C: CheckpointStrategy> QloraOps for Autodiff<B, C> {
    fn nf4_matmul(
        x: FloatTensor<Self>,
        weight: Nf4Operand<Self>,
        out_features: usize,
        in_features: usize,
        blocksize: usize,
    ) -> FloatTensor<Self> {
        let weight = inner_operand(weight);
        let layout = [out_features, in_features, blocksize];
        match Nf4MatmulBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::nf4_matmul(
                    x.into_primitive(),
                    weight.clone(),
                    out_features,
                    in_features,
                    blocksize,
                );
                prep.finish((weight, layout), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::nf4_matmul(
                x.into_primitive(),
                weight,
                out_features,
                in_features,
                blocksize,
            )),
        }
    }

    fn nf4_matmul_transposed(
        dy: FloatTensor<Self>,
        weight: Nf4Operand<Self>,
        out_features: usize,
        in_features: usize,
        blocksize: usize,
    ) -> FloatTensor<Self> {
        // Only used inside backward passes; the result is a constant.
        let weight = inner_operand(weight);
        <Self as AutodiffBackend>::from_inner(B::nf4_matmul_transposed(
            dy.into_primitive(),
            weight,
            out_features,
            in_features,
            blocksize,
        ))
    }
}
