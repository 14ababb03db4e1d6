//! The decoder layer: `h = x + attn(norm(x)); out = h + mlp(norm(h))` (with Gemma's sandwich
//! norms `h = x + norm(attn(norm(x)))`, `out = h + norm(mlp(norm(h)))`), and its forward pass
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
    /// The norm of the attention's output (Gemma).
    pub attn_out_norm: Option<RmsNorm>,
    /// The norm before the MLP (LLaMA's `post_attention_layernorm`).
    pub mlp_norm: RmsNorm,
    /// The MLP.
    pub mlp: Mlp,
    /// The norm of the MLP's output (Gemma).
    pub mlp_out_norm: Option<RmsNorm>,
}

/// `x` through `norm`, or as it is.
pub(super) fn maybe_norm(norm: &Option<RmsNorm>, x: Tensor<2>) -> Tensor<2> {
    match norm {
        Some(n) => n.forward(x),
        None => x,
    }
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
        let h = x + maybe_norm(&self.attn_out_norm, attended);
        let out = self
            .mlp
            .forward(self.mlp_norm.forward(h.clone()), context.dropout);
        h + maybe_norm(&self.mlp_out_norm, out)
    }
}
