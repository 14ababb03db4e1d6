use burn::tensor::Tensor;

use crate::backend::ops;
use crate::profile::{self, Phase};

/// `weight * x / sqrt(mean(x^2) + eps)` over the last dimension.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub weight: Tensor<1>,
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
}
