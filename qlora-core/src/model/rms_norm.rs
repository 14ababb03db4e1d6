use burn::tensor::Tensor;

use crate::profile::{self, Phase};

/// `weight * x / sqrt(mean(x^2) + eps)` over the last dimension.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub weight: Tensor<1>,
    pub eps: f64,
}

impl RmsNorm {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let _span = profile::span(Phase::Elementwise);
        let variance = x.clone().powi_scalar(2).mean_dim(2);
        let normed = x * (variance + self.eps).sqrt().recip();
        normed * self.weight.clone().unsqueeze_dims::<3>(&[0, 1])
    }
}
