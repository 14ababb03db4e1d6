use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Tensor};

use super::adapter::DropoutStream;
use super::kv_cache::LayerCache;
use super::linear::Linear;
use super::rope::RotaryEmbedding;
use crate::profile::{self, Phase};

/// Grouped-query causal self-attention.
#[derive(Clone, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// What every layer needs besides its input: where the tokens sit, what they may attend to,
/// and (when training) where adapter dropout masks come from.
pub struct LayerContext<'a> {
    pub cos: &'a Tensor<2>,
    pub sin: &'a Tensor<2>,
    /// `[batch, 1, seq, total]`, true where attention is not allowed (future or padding).
    pub mask: &'a Tensor<4, Bool>,
    pub dropout: Option<&'a DropoutStream>,
}

impl Attention {
    /// Attention over the normalized hidden states `normed` `[batch, seq, hidden]`.
    pub fn forward(
        &self,
        normed: Tensor<3>,
        context: &LayerContext<'_>,
        cache: Option<LayerCache<'_>>,
    ) -> Tensor<3> {
        let x = normed;
        let [batch, seq, _] = x.dims();
        let (heads, kv_heads, dim) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let split = |t: Tensor<3>, n: usize| t.reshape([batch, seq, n, dim]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(x.clone(), context.dropout), heads);
        let k = split(self.k_proj.forward(x.clone(), context.dropout), kv_heads);
        let v = split(self.v_proj.forward(x, context.dropout), kv_heads);
        let _span = profile::span(Phase::Attention);
        let q = RotaryEmbedding::apply(q, context.cos, context.sin);
        let k = RotaryEmbedding::apply(k, context.cos, context.sin);
        let (k, v) = match cache {
            Some(cache) => cache.append(k, v),
            None => (k, v),
        };
        let total = k.dims()[2];
        // Each key/value head serves `heads / kv_heads` query heads.
        let groups = heads / kv_heads;
        let expand = |t: Tensor<4>| {
            if groups == 1 {
                t
            } else {
                t.unsqueeze_dim::<5>(2)
                    .expand([batch, kv_heads, groups, total, dim])
                    .reshape([batch, heads, total, dim])
            }
        };
        let (k, v) = (expand(k), expand(v));
        let scale = (dim as f64).powf(-0.5);
        let scores = q.matmul(k.swap_dims(2, 3)) * scale;
        let mask = context.mask.clone().expand([batch, heads, seq, total]);
        let scores = scores.mask_fill(mask, f32::MIN);
        let attended = softmax(scores, 3).matmul(v);
        let merged = attended.swap_dims(1, 2).reshape([batch, seq, heads * dim]);
        drop(_span);
        self.o_proj.forward(merged, context.dropout)
    }
}
