use burn::tensor::Tensor;

use crate::backend::ops;
use crate::profile::{self, Phase};

/// `weight * x / sqrt(mean(x^2) + eps)` over the last dimension. (A `(1 + w)` norm keeps
/// `1 + w`, computed in f32 when loaded, as its weight.)
#[derive(Clone, Debug)]
pub struct RmsNorm {
    /// The weight, f32 `[width]`.
    pub weight: Tensor<1>,
    /// Added to the mean square.
    pub eps: f64,
}

impl RmsNorm {
    /// Normalize the rows of `x` `[rows, hidden]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let _span = profile::span(Phase::Elementwise);
        ops::rms_norm(x, &self.weight, self.eps)
    }

    /// The gradient with respect to `x` of [`RmsNorm::forward`] given the output's `dy`.
    pub fn backward(&self, x: Tensor<2>, dy: Tensor<2>) -> Tensor<2> {
        let _span = profile::span(Phase::Elementwise);
        ops::rms_norm_backward(x, &self.weight, self.eps, dy)
    }

    /// Normalize every head of `x` `[rows, heads * width]` on its own (q/k norms).
    pub fn forward_heads(&self, x: Tensor<2>) -> Tensor<2> {
        let [rows, width] = x.dims();
        let heads = self.heads(width);
        self.forward(x.reshape([rows * heads, width / heads]))
            .reshape([rows, width])
    }

    /// The gradient of [`RmsNorm::forward_heads`].
    pub fn backward_heads(&self, x: Tensor<2>, dy: Tensor<2>) -> Tensor<2> {
        let [rows, width] = x.dims();
        let heads = self.heads(width);
        let split = [rows * heads, width / heads];
        self.backward(x.reshape(split), dy.reshape(split))
            .reshape([rows, width])
    }

    fn heads(&self, width: usize) -> usize {
        width / self.weight.dims()[0]
    }
}
