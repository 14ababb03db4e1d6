use burn::tensor::Tensor;

use super::adapter::DropoutStream;
use super::linear::Linear;
use super::projections::InputProjections;
use crate::backend::ops;
use crate::config::Activation;
use crate::profile::{self, Phase};

/// The gated MLP: `down(act(gate(x)) * up(x))` (SwiGLU, or GeGLU for Gemma).
#[derive(Clone, Debug)]
pub struct Mlp {
    /// The gated activation.
    pub activation: Activation,
    /// The gate and up projections (split or fused).
    pub gate_up: InputProjections,
    /// The down projection.
    pub down_proj: Linear,
}

impl Mlp {
    /// The gate and up projections of `normed` `[rows, hidden]`.
    pub fn gate_up(
        &self,
        normed: Tensor<2>,
        dropout: Option<&DropoutStream>,
    ) -> (Tensor<2>, Tensor<2>) {
        let [gate, up]: [Tensor<2>; 2] = self
            .gate_up
            .forward(normed, dropout)
            .try_into()
            .expect("gate and up");
        (gate, up)
    }

    /// The gated activation of `gate` and `up`: what the down projection multiplies.
    pub fn activate(&self, gate: Tensor<2>, up: Tensor<2>) -> Tensor<2> {
        let _span = profile::span(Phase::Elementwise);
        match self.activation {
            Activation::Silu => ops::swiglu(gate, up),
            Activation::GeluTanh => ops::geglu(gate, up),
        }
    }

    /// The gradients of [`Mlp::activate`] with respect to `gate` and `up`.
    pub fn activate_backward(
        &self,
        gate: Tensor<2>,
        up: Tensor<2>,
        dz: Tensor<2>,
    ) -> (Tensor<2>, Tensor<2>) {
        let _span = profile::span(Phase::Elementwise);
        match self.activation {
            Activation::Silu => ops::swiglu_backward(gate, up, dz),
            Activation::GeluTanh => ops::geglu_backward(gate, up, dz),
        }
    }

    /// The MLP on `normed` `[rows, hidden]`.
    pub fn forward(&self, normed: Tensor<2>, dropout: Option<&DropoutStream>) -> Tensor<2> {
        let (gate, up) = self.gate_up(normed, dropout);
        let z = self.activate(gate, up);
        self.down_proj.forward_rows(z, dropout)
    }
}
