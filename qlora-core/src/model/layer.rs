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
    /// The projections, in checkpoint ([`Projection::ALL`]) order.
    pub fn linears(&self) -> Vec<(Projection, &Linear)> {
        let (a, m) = (&self.self_attn, &self.mlp);
        let mut out = a.qkv.linears();
        out.push((Projection::O, &a.o_proj));
        out.extend(m.gate_up.linears());
        out.push((Projection::Down, &m.down_proj));
        out
    }

    /// [`DecoderLayer::linears`], mutably.
    pub fn linears_mut(&mut self) -> Vec<(Projection, &mut Linear)> {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        let mut out = a.qkv.linears_mut();
        out.push((Projection::O, &mut a.o_proj));
        out.extend(m.gate_up.linears_mut());
        out.push((Projection::Down, &mut m.down_proj));
        out
    }

    /// Projection `p`, if the layer has it.
    pub fn linear(&self, p: Projection) -> Option<&Linear> {
        self.linears()
            .into_iter()
            .find_map(|(q, linear)| (q == p).then_some(linear))
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
