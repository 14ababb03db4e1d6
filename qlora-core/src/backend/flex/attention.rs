//! Causal grouped-query attention on the CPU. Queries go in blocks; a block's scores against
//! the keys it may see (never the masked future, another sequence's keys, or keys behind a
//! sliding window) are one small matrix multiply, its softmax one pass, its output another
//! multiply, written straight into the `[tokens, heads · dim]` layout the output projection
//! reads. Key/value heads are read in place for every query head they serve (no copies). The
//! backward pass recomputes each block's probabilities from the saved log-sum-exp. Soft-capped
//! scores are capped before the mask.

use std::collections::HashMap;

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use rayon::prelude::*;

use super::kernel::{View, dot, exp, floats, ints, matmul, max, multiversion, sum, tensor, uninit};
use crate::backend::{AttentionOps, AttentionShape};

/// Queries a task handles at once.
const BLOCK: usize = 64;

/// Which keys each query may see: `lo[i]..=pos[i]` filtered by sequence id (`lo` also
/// honours the sliding window).
struct Visibility {
    q_ids: Vec<i64>,
    k_ids: Vec<i64>,
    /// Per query row (batch-major): the first key it may see (the first with its id, or the
    /// window's start if later), and its position (inclusive bound); `lo > pos` when it sees
    /// nothing.
    lo: Vec<usize>,
    pos: Vec<usize>,
    /// Per query row: every key in `lo..=pos` carries its id (the usual case: sequences are
    /// contiguous), so the mask is that interval.
    interval: Vec<bool>,
}

impl Visibility {
    fn new(q_ids: &FlexTensor, k_ids: &FlexTensor, s: &AttentionShape) -> Self {
        let (q_ids, k_ids) = (ints(q_ids), ints(k_ids));
        let offset = s.k_len - s.q_len;
        let mut lo = vec![0; q_ids.len()];
        let mut pos = vec![0; q_ids.len()];
        let mut interval = vec![false; q_ids.len()];
        for b in 0..s.batch {
            let keys = &k_ids[b * s.k_len..(b + 1) * s.k_len];
            let mut first: HashMap<i64, usize> = HashMap::new();
            // End (exclusive) of the run of equal ids each key belongs to.
            let mut run_end = vec![keys.len(); keys.len()];
            for (j, id) in keys.iter().enumerate() {
                first.entry(*id).or_insert(j);
            }
            for j in (0..keys.len().saturating_sub(1)).rev() {
                run_end[j] = if keys[j + 1] == keys[j] {
                    run_end[j + 1]
                } else {
                    j + 1
                };
            }
            for i in 0..s.q_len {
                let row = b * s.q_len + i;
                pos[row] = offset + i;
                lo[row] = match first.get(&q_ids[row]) {
                    Some(&j) => j.max(s.first_visible(offset + i)),
                    None => usize::MAX,
                };
                interval[row] = lo[row] <= pos[row]
                    && keys[lo[row]] == q_ids[row]
                    && run_end[lo[row]] > pos[row];
            }
        }
        Visibility {
            q_ids,
            k_ids,
            lo,
            pos,
            interval,
        }
    }

    /// The key range `lo..hi` the queries `rows` of batch `b` need (empty when none sees any).
    fn range(&self, b: usize, rows: std::ops::Range<usize>, s: &AttentionShape) -> (usize, usize) {
        let base = b * s.q_len;
        let mut lo = usize::MAX;
        let mut hi = 0;
        for i in rows {
            let (l, p) = (self.lo[base + i], self.pos[base + i]);
            if l <= p {
                lo = lo.min(l);
                hi = hi.max(p + 1);
            }
        }
        if lo >= hi { (0, 0) } else { (lo, hi) }
    }
}

/// A raw output pointer shared by tasks that write disjoint parts of it.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: every task writes only the rows and columns it owns.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so closures capture the whole `Shared`, not its field).
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers stay inside the allocation.
        unsafe { self.0.add(offset) }
    }
}

multiversion! {
    /// Turn the scores of the block's rows (query `first + r` of batch `b`, each `len` wide,
    /// keys `lo..lo + len`) into probabilities in place, writing each row's log-sum-exp
    /// (`-inf` for a row that sees nothing).
    #[allow(clippy::too_many_arguments)]
    fn softmax_block(
        scores: &mut [f32],
        lse: &mut [f32],
        len: usize,
        b: usize,
        first: usize,
        lo: usize,
        vis: &Visibility,
        s: &AttentionShape,
    ) {
        for (r, row) in scores.chunks_exact_mut(len).enumerate() {
            let q_row = b * s.q_len + first + r;
            if let Some(cap) = s.softcap {
                let cap = cap as f32;
                for v in row.iter_mut() {
                    *v = cap * (*v / cap).tanh();
                }
            }
            mask_row(row, b, q_row, lo, vis, s);
            let m = max(row);
            if m == f32::NEG_INFINITY {
                row.fill(0.0);
                lse[r] = f32::NEG_INFINITY;
                continue;
            }
            for v in row.iter_mut() {
                *v = exp(*v - m);
            }
            let total = sum(row);
            let inv = 1.0 / total;
            for v in row.iter_mut() {
                *v *= inv;
            }
            lse[r] = m + total.ln();
        }
    }
}

multiversion! {
    /// The block's probabilities from the saved log-sum-exp (into `p`, holding the scores) and
    /// the gradient of its scores (into `dp`, holding `dO Vᵀ`) of query head `h`.
    #[allow(clippy::too_many_arguments)]
    fn score_grads(
        p: &mut [f32],
        dp: &mut [f32],
        len: usize,
        b: usize,
        h: usize,
        first: usize,
        lo: usize,
        vis: &Visibility,
        s: &AttentionShape,
        lses: &[f32],
        dos: &[f32],
        os: &[f32],
    ) {
        let d = s.head_dim;
        let q_stride = s.heads * d;
        let scale = s.scale as f32;
        // With a soft-cap: `1 - tanh²` of the row's raw scores, the cap's derivative.
        let mut slope = vec![1f32; if s.softcap.is_some() { len } else { 0 }];
        for (r, (p_row, dp_row)) in p.chunks_exact_mut(len).zip(dp.chunks_exact_mut(len)).enumerate() {
            let i = first + r;
            let q_row = b * s.q_len + i;
            let row_lse = lses[(b * s.heads + h) * s.q_len + i];
            if let Some(cap) = s.softcap {
                let cap = cap as f32;
                for (x, d) in p_row.iter_mut().zip(slope.iter_mut()) {
                    let t = (*x / cap).tanh();
                    *x = cap * t;
                    *d = 1.0 - t * t;
                }
            }
            mask_row(p_row, b, q_row, lo, vis, s);
            for x in p_row.iter_mut() {
                *x = exp(*x - row_lse);
            }
            let at = q_row * q_stride + h * d;
            let delta = dot(&dos[at..at + d], &os[at..at + d]);
            for (ds, p) in dp_row.iter_mut().zip(p_row.iter()) {
                *ds = p * (*ds - delta) * scale;
            }
            for (ds, d) in dp_row.iter_mut().zip(&slope) {
                *ds *= d;
            }
        }
    }
}

/// Set the scores a query may not see to `-inf`: the row holds keys `lo..lo + row.len()`.
#[inline(always)]
fn mask_row(
    row: &mut [f32],
    b: usize,
    q_row: usize,
    lo: usize,
    vis: &Visibility,
    s: &AttentionShape,
) {
    let (first, last) = (vis.lo[q_row], vis.pos[q_row]);
    if first > last {
        row.fill(f32::NEG_INFINITY);
        return;
    }
    let start = first.saturating_sub(lo).min(row.len());
    let end = (last + 1).saturating_sub(lo).min(row.len());
    row[..start].fill(f32::NEG_INFINITY);
    row[end..].fill(f32::NEG_INFINITY);
    if !vis.interval[q_row] {
        let keys = &vis.k_ids[b * s.k_len..(b + 1) * s.k_len];
        for (j, v) in row[start..end].iter_mut().enumerate() {
            if keys[lo + start + j] != vis.q_ids[q_row] {
                *v = f32::NEG_INFINITY;
            }
        }
    }
}

impl AttentionOps for Flex {
    fn attention(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        q_ids: FlexTensor,
        k_ids: FlexTensor,
        s: AttentionShape,
    ) -> (FlexTensor, FlexTensor) {
        let (qs, ks, vs) = (floats(&q), floats(&k), floats(&v));
        let vis = Visibility::new(&q_ids, &k_ids, &s);
        let d = s.head_dim;
        let (q_stride, kv_stride) = (s.heads * d, s.kv_heads * d);
        let groups = s.heads / s.kv_heads;
        let mut out = uninit(s.batch * s.q_len * q_stride);
        let mut lse = uninit(s.batch * s.heads * s.q_len);
        let (out_ptr, lse_ptr) = (Shared(out.as_mut_ptr()), Shared(lse.as_mut_ptr()));
        let blocks = s.q_len.div_ceil(BLOCK);
        (0..s.batch * s.heads * blocks)
            .into_par_iter()
            .for_each(|task| {
                let (b, rest) = (task / (s.heads * blocks), task % (s.heads * blocks));
                let (h, block) = (rest / blocks, rest % blocks);
                let rows = block * BLOCK..((block + 1) * BLOCK).min(s.q_len);
                let n = rows.len();
                let (lo, hi) = vis.range(b, rows.clone(), &s);
                let len = hi - lo;
                let kvh = h / groups;
                let mut block_out = vec![0f32; n * d];
                let mut block_lse = vec![f32::NEG_INFINITY; n];
                if len > 0 {
                    let q_view = View::rows(
                        &qs,
                        q_stride,
                        b * s.q_len + rows.start..b * s.q_len + rows.end,
                        h * d,
                        d,
                    );
                    let k_view = View::rows(
                        &ks,
                        kv_stride,
                        b * s.k_len + lo..b * s.k_len + hi,
                        kvh * d,
                        d,
                    );
                    let v_view = View::rows(
                        &vs,
                        kv_stride,
                        b * s.k_len + lo..b * s.k_len + hi,
                        kvh * d,
                        d,
                    );
                    let mut scores = vec![0f32; n * len];
                    matmul(
                        &mut scores,
                        len,
                        q_view,
                        k_view.t(),
                        s.scale as f32,
                        false,
                        1,
                    );
                    softmax_block(
                        &mut scores,
                        &mut block_lse,
                        len,
                        b,
                        rows.start,
                        lo,
                        &vis,
                        &s,
                    );
                    let p_view = View::rows(&scores, len, 0..n, 0, len);
                    matmul(&mut block_out, d, p_view, v_view, 1.0, false, 1);
                }
                // SAFETY: (b, h, rows) is this task's alone: its rows' columns h·d..(h+1)·d of `out`
                // and its rows of head h in `lse`.
                unsafe {
                    for (r, i) in rows.clone().enumerate() {
                        let dst = out_ptr.at((b * s.q_len + i) * q_stride + h * d);
                        std::ptr::copy_nonoverlapping(block_out[r * d..].as_ptr(), dst, d);
                        *lse_ptr.at((b * s.heads + h) * s.q_len + i) = block_lse[r];
                    }
                }
            });
        (
            tensor(out, [s.batch * s.q_len, q_stride]),
            tensor(lse, [s.batch * s.heads * s.q_len]),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        out: FlexTensor,
        lse: FlexTensor,
        d_out: FlexTensor,
        q_ids: FlexTensor,
        k_ids: FlexTensor,
        s: AttentionShape,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (qs, ks, vs) = (floats(&q), floats(&k), floats(&v));
        let (os, lses, dos) = (floats(&out), floats(&lse), floats(&d_out));
        let vis = Visibility::new(&q_ids, &k_ids, &s);
        let d = s.head_dim;
        let (q_stride, kv_stride) = (s.heads * d, s.kv_heads * d);
        let groups = s.heads / s.kv_heads;
        let blocks = s.q_len.div_ceil(BLOCK);
        // Each task takes every `chunks`-th query block of one key/value head (for all its query
        // heads) and sums its own dK, dV; the chunks' sums are added at the end.
        let threads = rayon::current_num_threads();
        let chunks = (4 * threads)
            .div_ceil(s.batch * s.kv_heads)
            .clamp(1, blocks);
        let mut dq = uninit(s.batch * s.q_len * q_stride);
        let dq_ptr = Shared(dq.as_mut_ptr());
        let partial: Vec<(Vec<f32>, Vec<f32>)> = (0..s.batch * s.kv_heads * chunks)
            .into_par_iter()
            .map(|task| {
                let (bk, chunk) = (task / chunks, task % chunks);
                let (b, kvh) = (bk / s.kv_heads, bk % s.kv_heads);
                let mut dk = vec![0f32; s.k_len * d];
                let mut dv = vec![0f32; s.k_len * d];
                let k_rows = b * s.k_len..(b + 1) * s.k_len;
                for h in kvh * groups..(kvh + 1) * groups {
                    for block in (chunk..blocks).step_by(chunks) {
                        let rows = block * BLOCK..((block + 1) * BLOCK).min(s.q_len);
                        let n = rows.len();
                        let q_rows = b * s.q_len + rows.start..b * s.q_len + rows.end;
                        let mut block_dq = vec![0f32; n * d];
                        let (lo, hi) = vis.range(b, rows.clone(), &s);
                        let len = hi - lo;
                        if len > 0 {
                            let q_view = View::rows(&qs, q_stride, q_rows.clone(), h * d, d);
                            let do_view = View::rows(&dos, q_stride, q_rows.clone(), h * d, d);
                            let keys = k_rows.start + lo..k_rows.start + hi;
                            let k_view = View::rows(&ks, kv_stride, keys.clone(), kvh * d, d);
                            let v_view = View::rows(&vs, kv_stride, keys, kvh * d, d);
                            // P from the saved log-sum-exp.
                            let mut p = vec![0f32; n * len];
                            matmul(&mut p, len, q_view, k_view.t(), s.scale as f32, false, 1);
                            let mut dp = vec![0f32; n * len];
                            matmul(&mut dp, len, do_view, v_view.t(), 1.0, false, 1);
                            score_grads(
                                &mut p, &mut dp, len, b, h, rows.start, lo, &vis, &s, &lses, &dos,
                                &os,
                            );
                            let p_view = View::rows(&p, len, 0..n, 0, len);
                            let ds_view = View::rows(&dp, len, 0..n, 0, len);
                            matmul(&mut dv[lo * d..], d, p_view.t(), do_view, 1.0, true, 1);
                            matmul(&mut dk[lo * d..], d, ds_view.t(), q_view, 1.0, true, 1);
                            matmul(&mut block_dq, d, ds_view, k_view, 1.0, false, 1);
                        }
                        // SAFETY: rows of head h in this chunk's blocks belong to this task.
                        unsafe {
                            for (r, i) in rows.enumerate() {
                                let dst = dq_ptr.at((b * s.q_len + i) * q_stride + h * d);
                                std::ptr::copy_nonoverlapping(block_dq[r * d..].as_ptr(), dst, d);
                            }
                        }
                    }
                }
                (dk, dv)
            })
            .collect();
        let mut dk = uninit(s.batch * s.k_len * kv_stride);
        let mut dv = uninit(s.batch * s.k_len * kv_stride);
        for (task, (pk, pv)) in partial.iter().enumerate() {
            let bk = task / chunks;
            let (b, kvh) = (bk / s.kv_heads, bk % s.kv_heads);
            for j in 0..s.k_len {
                let at = (b * s.k_len + j) * kv_stride + kvh * d;
                for c in 0..d {
                    dk[at + c] += pk[j * d + c];
                    dv[at + c] += pv[j * d + c];
                }
            }
        }
        (
            tensor(dq, [s.batch * s.q_len, q_stride]),
            tensor(dk, [s.batch * s.k_len, kv_stride]),
            tensor(dv, [s.batch * s.k_len, kv_stride]),
        )
    }
}
