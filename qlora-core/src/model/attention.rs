use burn::tensor::{Int, Tensor};

use super::adapter::DropoutStream;
use super::kv_cache::LayerCache;
use super::linear::Linear;
use super::projections::InputProjections;
use super::rms_norm::RmsNorm;
use crate::backend::{AttentionShape, ops};
use crate::config::RopeKind;
use crate::profile::{self, Phase};

/// Grouped-query causal self-attention, with what the layer's spec adds: per-head q/k norms, a
/// sliding window, a score scale and soft-cap of its own, its rotary table.
#[derive(Clone, Debug)]
pub struct Attention {
    /// The query, key and value projections (split or fused).
    pub qkv: InputProjections,
    /// The output projection.
    pub o_proj: Linear,
    /// RMSNorm of every query head before the rotary embedding.
    pub q_norm: Option<RmsNorm>,
    /// RMSNorm of every key head before the rotary embedding.
    pub k_norm: Option<RmsNorm>,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Values a head holds.
    pub head_dim: usize,
    /// Multiplies the scores.
    pub scale: f64,
    /// Keys a query sees at most (sliding-window attention).
    pub window: Option<usize>,
    /// Soft-cap of the scores.
    pub softcap: Option<f64>,
    /// The rotary table the layer uses.
    pub rope: RopeKind,
}

/// A rotary embedding's tables for the tokens of a forward pass: a row per token.
pub struct RopeTables {
    /// `[batch * q_len, head_dim]`.
    pub cos: Tensor<2>,
    /// `[batch * q_len, head_dim]`.
    pub sin: Tensor<2>,
    /// `-sin`: the inverse rotation, the backward pass's.
    pub neg_sin: Tensor<2>,
}

impl RopeTables {
    /// The tables of `cos` and `sin`.
    pub fn new(cos: Tensor<2>, sin: Tensor<2>) -> Self {
        let neg_sin = sin.clone().neg();
        RopeTables { cos, sin, neg_sin }
    }

    /// Every `head_dim` head of `x` `[rows, heads * head_dim]` rotated (with `inverse`, back:
    /// the backward pass): its first dimensions, as wide as the tables, the rest as they are
    /// (a partial rotary factor).
    pub fn rotate(&self, x: Tensor<2>, head_dim: usize, inverse: bool) -> Tensor<2> {
        let sin = if inverse { &self.neg_sin } else { &self.sin };
        let dim = self.cos.dims()[1];
        if dim == head_dim {
            return ops::rope(x, &self.cos, sin);
        }
        let [rows, width] = x.dims();
        let heads = width / head_dim;
        let x = x.reshape([rows, heads, head_dim]);
        let rotated = x.clone().narrow(2, 0, dim).reshape([rows, heads * dim]);
        let rotated = ops::rope(rotated, &self.cos, sin).reshape([rows, heads, dim]);
        let passed = x.narrow(2, dim, head_dim - dim);
        Tensor::cat(vec![rotated, passed], 2).reshape([rows, width])
    }
}

/// What every layer needs besides its input: the rotary tables of its tokens, which keys each
/// query may see (sequence ids; padding has its own), the shape of the batch, and (when
/// training) where adapter dropout masks come from.
pub struct LayerContext<'a> {
    /// The layer's rotary tables.
    pub rope: &'a RopeTables,
    /// Sequence ids of the queries `[batch * q_len]`.
    pub q_ids: &'a Tensor<1, Int>,
    /// Sequence ids of the keys `[batch * k_len]` (the cached positions first).
    pub k_ids: &'a Tensor<1, Int>,
    /// Rows of the batch.
    pub batch: usize,
    /// New tokens a row.
    pub q_len: usize,
    /// Keys a row (cached and new).
    pub k_len: usize,
    /// Where adapter dropout masks come from (training only).
    pub dropout: Option<&'a DropoutStream>,
}

/// The projections of a layer's normalized input, and (with q/k norms) the queries and keys
/// before their norms, which the backward pass reads.
pub struct Projected {
    /// Queries, normed and rotated `[rows, heads * head_dim]`.
    pub q: Tensor<2>,
    /// Keys, normed and rotated `[rows, kv_heads * head_dim]`.
    pub k: Tensor<2>,
    /// Values `[rows, kv_heads * head_dim]`.
    pub v: Tensor<2>,
    /// The query projection's output before the q norm (with one).
    pub q_linear: Option<Tensor<2>>,
    /// The key projection's output before the k norm (with one).
    pub k_linear: Option<Tensor<2>>,
}

impl Attention {
    /// The shape of the attention over `context`.
    pub fn shape(&self, context: &LayerContext<'_>) -> AttentionShape {
        AttentionShape {
            scale: self.scale,
            window: self.window,
            softcap: self.softcap,
            ..AttentionShape::new(
                context.batch,
                [self.num_heads, self.num_kv_heads, self.head_dim],
                context.q_len,
                context.k_len,
            )
        }
    }

    /// Queries, keys and values of the normalized hidden states `normed` `[rows, hidden]`:
    /// the q/k norms and the rotary embedding applied to queries and keys.
    pub fn project(&self, normed: Tensor<2>, context: &LayerContext<'_>) -> Projected {
        let [q, k, v]: [Tensor<2>; 3] = self
            .qkv
            .forward(normed, context.dropout)
            .try_into()
            .expect("queries, keys and values");
        let norm = |x: Tensor<2>, norm: &Option<RmsNorm>| match norm {
            Some(n) => (n.forward_heads(x.clone()), Some(x)),
            None => (x, None),
        };
        let (q, q_linear) = norm(q, &self.q_norm);
        let (k, k_linear) = norm(k, &self.k_norm);
        let _span = profile::span(Phase::Elementwise);
        let rope = context.rope;
        Projected {
            q: rope.rotate(q, self.head_dim, false),
            k: rope.rotate(k, self.head_dim, false),
            v,
            q_linear,
            k_linear,
        }
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
        let Projected { q, k, v, .. } = self.project(normed, context);
        let (k, v) = match cache {
            Some(cache) => cache.append(k, v, context.batch),
            None => (k, v),
        };
        let (attended, _) = self.attend(q, k, v, context);
        self.o_proj.forward_rows(attended, context.dropout)
    }
}
