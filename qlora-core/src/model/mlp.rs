use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use super::frozen_linear::FrozenLinear;

/// SwiGLU: `down(silu(gate(x)) * up(x))`.
#[derive(Clone, Debug)]
pub struct Mlp {
    pub gate_proj: FrozenLinear,
    pub up_proj: FrozenLinear,
    pub down_proj: FrozenLinear,
}

impl Mlp {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = silu(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}
