use burn::backend::Dispatch;
use burn::tensor::Tensor;

use super::{Nf4Operand, QloraOps};
use crate::quant::tensor_ops::DeviceNf4;

/// `x · Wᵀ` for `x` `[rows, in]` and a frozen NF4 weight, differentiable in `x` when `x` is
/// tracked by autodiff (the weight is never stored dense in the graph).
pub fn nf4_linear(x: Tensor<2>, weight: &DeviceNf4) -> Tensor<2> {
    let [out_features, in_features] = [weight.shape[0], weight.shape[1]];
    let operand = Nf4Operand {
        words: weight.words().clone().into_dispatch(),
        code: weight.code().clone().into_dispatch(),
        absmax: weight.absmax().into_dispatch(),
    };
    Tensor::from_dispatch(<Dispatch as QloraOps>::nf4_matmul(
        x.into_dispatch(),
        operand,
        out_features,
        in_features,
        weight.blocksize,
    ))
}
