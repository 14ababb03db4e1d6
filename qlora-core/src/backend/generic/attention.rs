//! Causal grouped-query attention with sequence ids, sliding windows and soft-capping as tensor
//! operations: the scores of every query against every key, capped, masked, softmax, and the
//! gradients of that.

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, TensorMetadata};

use super::F;
use crate::backend::AttentionShape;

/// `x` `[batch * len, n * d]` as `[batch, n, len, d]`.
fn heads<B: Backend>(x: FloatTensor<B>, batch: usize, len: usize, n: usize, d: usize) -> F<B> {
    F(x).reshape(&[batch, len, n, d]).swap(1, 2)
}

/// `[batch, n, len, d]` back to `[batch * len, n * d]`.
fn rows<B: Backend>(x: F<B>) -> FloatTensor<B> {
    let [batch, n, len, d] = x.dims()[..] else {
        unreachable!("four dimensions")
    };
    x.swap(1, 2).reshape(&[batch * len, n * d]).0
}

/// Key/value heads repeated for the query heads they serve: `[batch, heads, len, d]`.
fn expand_kv<B: Backend>(x: F<B>, s: &AttentionShape) -> F<B> {
    let groups = s.heads / s.kv_heads;
    let [batch, kv, len, d] = x.dims()[..] else {
        unreachable!("four dimensions")
    };
    x.reshape(&[batch, kv, 1, len, d])
        .expand(&[batch, kv, groups, len, d])
        .reshape(&[batch, kv * groups, len, d])
}

/// Sum the gradients of the query heads back onto their key/value head.
fn reduce_kv<B: Backend>(x: F<B>, s: &AttentionShape) -> F<B> {
    let groups = s.heads / s.kv_heads;
    let [batch, _, len, d] = x.dims()[..] else {
        unreachable!("four dimensions")
    };
    x.reshape(&[batch, s.kv_heads, groups, len, d])
        .sum_dim(2)
        .reshape(&[batch, s.kv_heads, len, d])
}

/// Attention scores `[batch, heads, q_len, k_len]`, soft-capped, with -1e30 where a query may
/// not look; with a soft-cap also `tanh(score / cap)` of every score (its backward reads it).
fn scores<B: Backend>(
    q: &F<B>,
    k: &F<B>,
    q_ids: IntTensor<B>,
    k_ids: IntTensor<B>,
    s: &AttentionShape,
) -> (F<B>, Option<F<B>>) {
    let device = q.0.device();
    let int_dtype = q_ids.dtype().into();
    let (b, sq, sk) = (s.batch, s.q_len, s.k_len);
    let qi = F::<B>::from_int(q_ids).reshape(&[b, 1, sq, 1]);
    let ki = F::<B>::from_int(k_ids).reshape(&[b, 1, 1, sk]);
    let same = -((qi - ki).abs().clamp(0.0, 1.0)).add_scalar(-1.0);
    let offset = (sk - sq) as i64;
    let qpos = F::<B>::from_int(B::int_arange(
        offset..offset + sq as i64,
        &device,
        int_dtype,
    ))
    .reshape(&[1, 1, sq, 1]);
    let kpos =
        F::<B>::from_int(B::int_arange(0..sk as i64, &device, int_dtype)).reshape(&[1, 1, 1, sk]);
    let behind = qpos - kpos;
    let causal = behind.clone().add_scalar(1.0).clamp(0.0, 1.0);
    let mut allowed = same * causal;
    if let Some(window) = s.window {
        // Keys less than `window` positions behind the query.
        allowed = allowed * (-behind).add_scalar(window as f64).clamp(0.0, 1.0);
    }
    let raw = q.clone().matmul(k.clone().swap(2, 3)).scale(s.scale);
    let (capped, tanh) = match s.softcap {
        Some(cap) => {
            let t = raw.scale(1.0 / cap).tanh();
            (t.clone().scale(cap), Some(t))
        }
        None => (raw, None),
    };
    (capped + allowed.add_scalar(-1.0).scale(1e30), tanh)
}

/// `softmax(q kᵀ · scale, masked) v` and the log-sum-exp of every query's scores.
pub fn attention<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    q_ids: IntTensor<B>,
    k_ids: IntTensor<B>,
    s: AttentionShape,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let q = heads::<B>(q, s.batch, s.q_len, s.heads, s.head_dim);
    let k = expand_kv(heads(k, s.batch, s.k_len, s.kv_heads, s.head_dim), &s);
    let v = expand_kv(heads(v, s.batch, s.k_len, s.kv_heads, s.head_dim), &s);
    let (scores, _) = scores(&q, &k, q_ids, k_ids, &s);
    let lse = scores.clone().logsumexp(3);
    let p = (scores - lse.clone()).exp();
    let out = rows(p.matmul(v));
    (out, lse.reshape(&[s.batch * s.heads * s.q_len]).0)
}

/// The gradients of [`attention`] with respect to `q`, `k` and `v`, from its output, its
/// log-sum-exp and the output's gradient.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    out: FloatTensor<B>,
    lse: FloatTensor<B>,
    d_out: FloatTensor<B>,
    q_ids: IntTensor<B>,
    k_ids: IntTensor<B>,
    s: AttentionShape,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let q = heads::<B>(q, s.batch, s.q_len, s.heads, s.head_dim);
    let k = expand_kv(heads(k, s.batch, s.k_len, s.kv_heads, s.head_dim), &s);
    let v = expand_kv(heads(v, s.batch, s.k_len, s.kv_heads, s.head_dim), &s);
    let out = heads(out, s.batch, s.q_len, s.heads, s.head_dim);
    let d_out = heads(d_out, s.batch, s.q_len, s.heads, s.head_dim);
    let lse = F(lse).reshape(&[s.batch, s.heads, s.q_len, 1]);
    let (scores, tanh) = scores(&q, &k, q_ids, k_ids, &s);
    let p = (scores - lse).exp();
    let dv = p.clone().swap(2, 3).matmul(d_out.clone());
    let dp = d_out.clone().matmul(v.swap(2, 3));
    let row = (d_out * out).sum_dim(3);
    let mut ds = p * (dp - row);
    if let Some(t) = tanh {
        // Through the soft-cap: d(cap·tanh(x/cap))/dx = 1 - tanh².
        ds = ds.clone() - ds * t.clone() * t;
    }
    let ds = ds.scale(s.scale);
    let dq = ds.clone().matmul(k);
    let dk = ds.swap(2, 3).matmul(q);
    (rows(dq), rows(reduce_kv(dk, &s)), rows(reduce_kv(dv, &s)))
}
