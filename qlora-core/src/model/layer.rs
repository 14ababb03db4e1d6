//! The decoder layer: `h = x + attn(norm(x)); out = h + mlp(norm(h))`, and its forward pass
//! for inference (the training step's forward and backward passes are in
//! `layer_train.rs`).

use burn::tensor::Tensor;

use super::attention::{Attention, LayerContext};
use super::kv_cache::LayerCache;
use super::linear::Linear;
use super::mlp::Mlp;
use super::rms_norm::RmsNorm;
use crate::config::Projection;

/// A pre-norm decoder layer.
#[derive(Clone, Debug)]
pub struct DecoderLayer {
    /// The norm before the attention.
    pub input_layernorm: RmsNorm,
    /// The attention.
    pub self_attn: Attention,
    /// The norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// The MLP.
    pub mlp: Mlp,
}

impl DecoderLayer {
    /// The seven projections, in [`Projection::ALL`] order.
    pub fn linears(&self) -> [&Linear; 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.o_proj,
            &m.gate_proj,
            &m.up_proj,
            &m.down_proj,
        ]
    }

    /// [`DecoderLayer::linears`], mutably.
    pub fn linears_mut(&mut self) -> [&mut Linear; 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            &mut a.q_proj,
            &mut a.k_proj,
            &mut a.v_proj,
            &mut a.o_proj,
            &mut m.gate_proj,
            &mut m.up_proj,
            &mut m.down_proj,
        ]
    }

    /// Projection `p`.
    pub fn linear(&self, p: Projection) -> &Linear {
        self.linears()[p as usize]
    }

    /// The layer on the hidden states `x` `[rows, hidden]`.
    pub fn forward(
        &self,
        x: Tensor<2>,
        context: &LayerContext<'_>,
        cache: Option<LayerCache<'_>>,
    ) -> Tensor<2> {
        let attended =
            self.self_attn
                .forward(self.input_layernorm.forward(x.clone()), context, cache);
        let h = x + attended;
        let out = self.mlp.forward(
            self.post_attention_layernorm.forward(h.clone()),
            context.dropout,
        );
        h + out
    }
}
