//! Causal grouped-query attention over packed, padded or cached sequences, and its gradients.

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, backend_extension};

use super::generic;

/// The shape of an attention: `q` is `[batch * q_len, heads * head_dim]`, `k` and `v` are
/// `[batch * k_len, kv_heads * head_dim]`. Query `i` sits at position `k_len - q_len + i` and
/// sees key `j` when `j` is not after it, both carry the same sequence id, and (with a
/// `window`) `j` is one of the `window` positions ending at the query's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    /// Rows of the batch.
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (each serves `heads / kv_heads` query heads).
    pub kv_heads: usize,
    /// Values a head of a query, key or value holds.
    pub head_dim: usize,
    /// Queries a row.
    pub q_len: usize,
    /// Keys a row (the cached positions first).
    pub k_len: usize,
    /// Multiplies the scores (`1 / sqrt(head_dim)` unless the model says otherwise).
    pub scale: f64,
    /// Sliding-window attention: a query at position `i` sees keys `j > i - window` only
    /// (transformers' `sliding_window`); `None` sees every earlier key.
    pub window: Option<usize>,
    /// Soft-capping of the scaled scores, `cap · tanh(score / cap)` before the mask
    /// (Gemma 2's `attn_logit_softcapping`); `None` leaves them as they are.
    pub softcap: Option<f64>,
}

impl AttentionShape {
    /// An attention of these sizes with the usual `1 / sqrt(head_dim)` scale, no window and
    /// no soft-cap.
    pub fn new(
        batch: usize,
        [heads, kv_heads, head_dim]: [usize; 3],
        q_len: usize,
        k_len: usize,
    ) -> Self {
        AttentionShape {
            batch,
            heads,
            kv_heads,
            head_dim,
            q_len,
            k_len,
            scale: (head_dim as f64).powf(-0.5),
            window: None,
            softcap: None,
        }
    }

    /// The first key position query `i` (a position, not a row) may see by the window.
    pub fn first_visible(&self, position: usize) -> usize {
        match self.window {
            Some(w) => (position + 1).saturating_sub(w),
            None => 0,
        }
    }
}

/// Attention and its gradients.
#[backend_extension(Flex, Cube: cfg(any(feature = "wgpu", feature = "cuda")), Autodiff)]
pub trait AttentionOps: Backend {
    /// Causal grouped-query attention with sequence ids ([`AttentionShape`]): the output
    /// `[batch * q_len, heads * head_dim]` and the log-sum-exp of every query's scores
    /// `[batch * heads * q_len]`, which the backward pass uses.
    fn attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        q_ids: IntTensor<Self>,
        k_ids: IntTensor<Self>,
        shape: AttentionShape,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        generic::attention::attention::<Self>(q, k, v, q_ids, k_ids, shape)
    }

    /// The gradients of [`AttentionOps::attention`] with respect to `q`, `k` and `v`.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        d_out: FloatTensor<Self>,
        q_ids: IntTensor<Self>,
        k_ids: IntTensor<Self>,
        shape: AttentionShape,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        generic::attention::attention_backward::<Self>(
            q, k, v, out, lse, d_out, q_ids, k_ids, shape,
        )
    }
}
