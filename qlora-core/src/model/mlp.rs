use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use super::adapter::DropoutStream;
use super::linear::Linear;

/// SwiGLU: `down(silu(gate(x)) * up(x))`.
#[derive(Clone, Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    pub fn forward(&self, x: Tensor<3>, dropout: Option<&DropoutStream>) -> Tensor<3> {
        let gate = silu(self.gate_proj.forward(x.clone(), dropout));
        self.down_proj
            .forward(gate * self.up_proj.forward(x, dropout), dropout)
    }
}
