use burn::tensor::{Int, Tensor};

use super::adapter::DropoutStream;
use super::kv_cache::LayerCache;
use super::linear::Linear;
use crate::backend::{AttentionShape, ops};
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

/// What every layer needs besides its input: the rotary tables of its tokens, which keys each
/// query may see (sequence ids; padding has its own), the shape of the batch, and (when
/// training) where adapter dropout masks come from.
pub struct LayerContext<'a> {
    /// `[batch * q_len, head_dim]`, a row per token.
    pub cos: &'a Tensor<2>,
    pub sin: &'a Tensor<2>,
    /// Sequence ids of the queries `[batch * q_len]` and of the keys `[batch * k_len]` (the
    /// cached positions first).
    pub q_ids: &'a Tensor<1, Int>,
    pub k_ids: &'a Tensor<1, Int>,
    pub batch: usize,
    pub q_len: usize,
    pub k_len: usize,
    pub dropout: Option<&'a DropoutStream>,
}

impl Attention {
    pub fn shape(&self, context: &LayerContext<'_>) -> AttentionShape {
        AttentionShape {
            batch: context.batch,
            heads: self.num_heads,
            kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            q_len: context.q_len,
            k_len: context.k_len,
            scale: (self.head_dim as f64).powf(-0.5),
            window: None,
            softcap: None,
        }
    }

    /// Queries, keys and values of the normalized hidden states `normed` `[rows, hidden]`,
    /// the rotary embedding applied to queries and keys.
    pub fn qkv(
        &self,
        normed: Tensor<2>,
        context: &LayerContext<'_>,
    ) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
        let q = self.q_proj.forward_rows(normed.clone(), context.dropout);
        let k = self.k_proj.forward_rows(normed.clone(), context.dropout);
        let v = self.v_proj.forward_rows(normed, context.dropout);
        let _span = profile::span(Phase::Elementwise);
        let q = ops::rope(q, context.cos, context.sin);
        let k = ops::rope(k, context.cos, context.sin);
        (q, k, v)
    }

    /// The attention output `[rows, heads * head_dim]` and its log-sum-exp.
    pub fn attend(
        &self,
        q: Tensor<2>,
        k: Tensor<2>,
        v: Tensor<2>,
        context: &LayerContext<'_>,
    ) -> (Tensor<2>, Tensor<1>) {
        let _span = profile::span(Phase::Attention);
        ops::attention(q, k, v, context.q_ids, context.k_ids, self.shape(context))
    }

    /// Attention over the normalized hidden states `normed` `[rows, hidden]`.
    pub fn forward(
        &self,
        normed: Tensor<2>,
        context: &LayerContext<'_>,
        cache: Option<LayerCache<'_>>,
    ) -> Tensor<2> {
        let (q, k, v) = self.qkv(normed, context);
        let (k, v) = match cache {
            Some(cache) => cache.append(k, v, context.batch),
            None => (k, v),
        };
        let (attended, _) = self.attend(q, k, v, context);
        self.o_proj.forward_rows(attended, context.dropout)
    }
}
