use burn::tensor::Tensor;

use super::adapter::DropoutStream;
use super::linear::Linear;
use crate::backend::ops;
use crate::profile::{self, Phase};

/// SwiGLU: `down(silu(gate(x)) * up(x))`.
#[derive(Clone, Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    /// The gate and up projections of `normed` `[rows, hidden]`.
    pub fn gate_up(
        &self,
        normed: Tensor<2>,
        dropout: Option<&DropoutStream>,
    ) -> (Tensor<2>, Tensor<2>) {
        let gate = self.gate_proj.forward_rows(normed.clone(), dropout);
        let up = self.up_proj.forward_rows(normed, dropout);
        (gate, up)
    }

    pub fn forward(&self, normed: Tensor<2>, dropout: Option<&DropoutStream>) -> Tensor<2> {
        let (gate, up) = self.gate_up(normed, dropout);
        let z = {
            let _span = profile::span(Phase::Elementwise);
            ops::swiglu(gate, up)
        };
        self.down_proj.forward_rows(z, dropout)
    }
}
