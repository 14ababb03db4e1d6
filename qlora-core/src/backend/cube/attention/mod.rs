//! Causal grouped-query attention with sequence ids, flash-style: a thread a query keeps a
//! running maximum, sum and output over the keys it may see (online softmax) and saves only
//! the log-sum-exp; the backward pass recomputes each probability from it, a thread a query for
//! the queries' gradient and a thread a key for the keys' and values' (summing over the query
//! heads a key/value head serves), so no `[q_len, k_len]` score matrix exists and nothing is
//! added with atomics. Keys after a query's position are never visited (the causal half is
//! skipped), nor are keys behind a sliding window; keys of other sequences are passed over.
//! Soft-capped scores are capped as they are computed. Key/value heads are read in place for
//! every query head they serve (no copies).
//!
//! Layouts as [`AttentionShape`] says: `q` `[batch * q_len, heads * d]`, `k`, `v` `[batch *
//! k_len, kv_heads * d]`, the log-sum-exp `[batch, heads, q_len]`. Threads of a cube take
//! neighbouring queries of one head, so they read the same keys at the same time.

use burn::tensor::IntDType;
use burn_cubecl::CubeBackend;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use cubecl::{CubeDim, calculate_cube_count_elemwise};

mod backward;
mod tiled;

use super::{baselines, contiguous_f32, contiguous_int, cube_count_2d, f32_buffer};
use crate::backend::{AttentionOps, AttentionShape};

/// The runtime sizes of an attention.
#[derive(CubeType, CubeLaunch, Clone, Copy)]
pub struct Dims {
    batch: u32,
    heads: u32,
    kv_heads: u32,
    q_len: u32,
    k_len: u32,
    scale: f32,
    /// Keys a query sees at most (0: no window).
    window: u32,
    /// `cap` of the scores' soft-cap (0: none).
    softcap: f32,
}

fn dims(s: &AttentionShape) -> DimsLaunch {
    DimsLaunch::new(
        s.batch as u32,
        s.heads as u32,
        s.kv_heads as u32,
        s.q_len as u32,
        s.k_len as u32,
        s.scale as f32,
        s.window.map_or(0, |w| w as u32),
        s.softcap.map_or(0.0, |c| c as f32),
    )
}

/// `x[row, head · d + e]` for `e` in `0..d` of a `[rows, heads · d]` tensor, into `out`.
#[cube]
fn load(
    x: &[f32],
    row: usize,
    head: usize,
    heads: usize,
    out: &mut Array<f32>,
    #[comptime] d: usize,
) {
    let base = (row * heads + head) * d;
    #[unroll]
    for e in 0..d {
        out[e] = x[base + e];
    }
}

/// `a · x[row, head]` for a `[rows, heads · d]` tensor.
#[cube]
fn dot(
    a: &Array<f32>,
    x: &[f32],
    row: usize,
    head: usize,
    heads: usize,
    #[comptime] d: usize,
) -> f32 {
    let base = (row * heads + head) * d;
    let mut sum = 0.0f32;
    #[unroll]
    for e in 0..d {
        sum += a[e] * x[base + e];
    }
    sum
}

/// The first key a query at `pos` sees by the window (0 without one).
#[cube]
fn window_start(s: &Dims, pos: usize) -> usize {
    let window = s.window as usize;
    let mut start = 0usize;
    if window > 0 && pos + 1 > window {
        start = pos + 1 - window;
    }
    start
}

/// Rows `lo..hi`.
#[derive(CubeType)]
struct Span {
    lo: usize,
    hi: usize,
}

/// The queries that see key `j`: from the first whose position is not before it to (with a
/// window) the last whose window still holds it.
#[cube]
fn queries_seeing(s: &Dims, j: usize) -> Span {
    let (q_len, offset) = (s.q_len as usize, (s.k_len - s.q_len) as usize);
    let window = s.window as usize;
    let mut lo = 0usize;
    if j > offset {
        lo = j - offset;
    }
    let mut hi = q_len;
    if window > 0 {
        hi = 0;
        if j + window > offset {
            hi = j + window - offset;
        }
        if hi > q_len {
            hi = q_len;
        }
    }
    Span { lo, hi }
}

/// A zeroed `d`-vector.
#[cube]
fn zeros(#[comptime] d: usize) -> Array<f32> {
    let mut out = Array::<f32>::new(d);
    #[unroll]
    for e in 0..d {
        out[e] = 0.0;
    }
    out
}

/// A scaled score through the soft-cap (as it is without one).
#[cube]
fn capped(s: &Dims, score: f32) -> f32 {
    let mut out = score;
    if s.softcap > 0.0 {
        out = s.softcap * (score / s.softcap).tanh();
    }
    out
}

/// The soft-cap's derivative at a capped score: `1 - tanh²` (1 without one).
#[cube]
fn cap_slope(s: &Dims, capped: f32) -> f32 {
    let mut slope = 1.0f32;
    if s.softcap > 0.0 {
        let t = capped / s.softcap;
        slope = 1.0 - t * t;
    }
    slope
}

/// What a query's thread `t` works on: batch `b`, head `h`, its key/value head `kv`, its row in
/// `[batch * q_len]`, the last key position it sees, its sequence id and its query vector.
#[derive(CubeType)]
struct QueryThread {
    b: usize,
    h: usize,
    kv: usize,
    row: usize,
    pos: usize,
    id: i32,
    query: Array<f32>,
}

/// The query of thread `t`; a thread past the last query (the launch rounds their count up)
/// ends here.
#[cube]
fn query_thread(s: &Dims, q: &[f32], q_ids: &[i32], t: usize, #[comptime] d: usize) -> QueryThread {
    let (heads, q_len, k_len) = (s.heads as usize, s.q_len as usize, s.k_len as usize);
    if t >= s.batch as usize * heads * q_len {
        terminate!();
    }
    let i = t % q_len;
    let h = (t / q_len) % heads;
    let b = t / (q_len * heads);
    let row = b * q_len + i;
    let mut query = Array::<f32>::new(d);
    load(q, row, h, heads, &mut query, d);
    QueryThread {
        b,
        h,
        kv: h / (heads / s.kv_heads as usize),
        row,
        pos: k_len - q_len + i,
        id: q_ids[row],
        query,
    }
}

/// One thread a query `(b, h, i)`: the attention output and the log-sum-exp.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn forward_kernel(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    q_ids: &[i32],
    k_ids: &[i32],
    out: &mut [f32],
    lse: &mut [f32],
    s: Dims,
    #[comptime] d: usize,
) {
    let thread = query_thread(&s, q, q_ids, ABSOLUTE_POS, d);
    let (b, h, kv, row, id) = (thread.b, thread.h, thread.kv, thread.row, thread.id);
    let (heads, k_len, kv_heads) = (s.heads as usize, s.k_len as usize, s.kv_heads as usize);
    let mut acc = Array::<f32>::new(d);
    let mut running_max = f32::new(-3.0e38);
    let mut sum = 0.0f32;
    for j in window_start(&s, thread.pos)..thread.pos + 1 {
        if k_ids[b * k_len + j] == id {
            let score = capped(
                &s,
                dot(&thread.query, k, b * k_len + j, kv, kv_heads, d) * s.scale,
            );
            let new_max = f32::max(running_max, score);
            let correction = (running_max - new_max).exp();
            let p = (score - new_max).exp();
            sum = sum * correction + p;
            let vbase = ((b * k_len + j) * kv_heads + kv) * d;
            #[unroll]
            for e in 0..d {
                acc[e] = acc[e] * correction + p * v[vbase + e];
            }
            running_max = new_max;
        }
    }
    let obase = (row * heads + h) * d;
    #[unroll]
    for e in 0..d {
        out[obase + e] = acc[e] / sum;
    }
    lse[ABSOLUTE_POS] = running_max + sum.ln();
}

fn launch_dims(client: &cubecl::client::Client, n: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(client, n);
    (calculate_cube_count_elemwise(client, n, dim), dim)
}

/// Rows of a tile (and threads of a cube) of the tiled kernels at head size `d`: the most, up
/// to 64, whose shared memory (two `[tile, d]` tiles and three values a row) fits the device's.
fn tile_rows(client: &cubecl::client::Client, d: usize) -> usize {
    let hardware = &client.properties().hardware;
    [64usize, 32, 16, 8, 4, 2]
        .into_iter()
        .find(|&t| {
            (2 * t * d + 3 * t) * 4 <= hardware.max_shared_memory_size
                && t as u32 <= hardware.max_units_per_cube
        })
        .unwrap_or(1)
}

/// The launch of a tiled kernel over blocks of `tile` of `len` rows of `heads` heads.
fn tiled_launch(s: &AttentionShape, heads: usize, len: usize, tile: usize) -> (CubeCount, CubeDim) {
    (
        cube_count_2d(s.batch * heads * len.div_ceil(tile)),
        CubeDim::new_1d(tile as u32),
    )
}

impl AttentionOps for CubeBackend {
    /// `softmax(q kᵀ · scale, masked) v` and the log-sum-exp of every query's scores.
    fn attention(
        q: CubeTensor,
        k: CubeTensor,
        v: CubeTensor,
        q_ids: CubeTensor,
        k_ids: CubeTensor,
        s: AttentionShape,
    ) -> (CubeTensor, CubeTensor) {
        let (q, k, v) = (contiguous_f32(q), contiguous_f32(k), contiguous_f32(v));
        let out = f32_buffer(&q, vec![s.batch * s.q_len, s.heads * s.head_dim]);
        let queries = s.batch * s.heads * s.q_len;
        let lse = f32_buffer(&q, vec![queries]);
        let client = q.client.clone();
        let q_ids = contiguous_int(q_ids, IntDType::I32);
        let k_ids = contiguous_int(k_ids, IntDType::I32);
        if !baselines().untiled_attention {
            let tile = tile_rows(&client, s.head_dim);
            let (count, dim) = tiled_launch(&s, s.heads, s.q_len, tile);
            tiled::forward_kernel::launch(
                &client,
                count,
                dim,
                q.into_buffer_arg(),
                k.into_buffer_arg(),
                v.into_buffer_arg(),
                q_ids.into_buffer_arg(),
                k_ids.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                lse.clone().into_buffer_arg(),
                dims(&s),
                s.head_dim,
                tile,
            );
            return (out, lse);
        }
        let (count, dim) = launch_dims(&client, queries);
        forward_kernel::launch(
            &client,
            count,
            dim,
            q.into_buffer_arg(),
            k.into_buffer_arg(),
            v.into_buffer_arg(),
            q_ids.into_buffer_arg(),
            k_ids.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            lse.clone().into_buffer_arg(),
            dims(&s),
            s.head_dim,
        );
        (out, lse)
    }

    fn attention_backward(
        q: CubeTensor,
        k: CubeTensor,
        v: CubeTensor,
        out: CubeTensor,
        lse: CubeTensor,
        d_out: CubeTensor,
        q_ids: CubeTensor,
        k_ids: CubeTensor,
        s: AttentionShape,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        let (q, k, v) = (contiguous_f32(q), contiguous_f32(k), contiguous_f32(v));
        let (out, lse, d_out) = (
            contiguous_f32(out),
            contiguous_f32(lse),
            contiguous_f32(d_out),
        );
        let q_ids = contiguous_int(q_ids, IntDType::I32);
        let k_ids = contiguous_int(k_ids, IntDType::I32);
        let queries = s.batch * s.heads * s.q_len;
        let dq = f32_buffer(&q, vec![s.batch * s.q_len, s.heads * s.head_dim]);
        let delta = f32_buffer(&q, vec![queries]);
        let dk = f32_buffer(&q, vec![s.batch * s.k_len, s.kv_heads * s.head_dim]);
        let dv = f32_buffer(&q, vec![s.batch * s.k_len, s.kv_heads * s.head_dim]);
        let client = q.client.clone();
        if !baselines().untiled_attention {
            let tile = tile_rows(&client, s.head_dim);
            let (count, dim) = tiled_launch(&s, s.heads, s.q_len, tile);
            tiled::query_grad_kernel::launch(
                &client,
                count,
                dim,
                q.clone().into_buffer_arg(),
                k.clone().into_buffer_arg(),
                v.clone().into_buffer_arg(),
                out.into_buffer_arg(),
                lse.clone().into_buffer_arg(),
                d_out.clone().into_buffer_arg(),
                q_ids.clone().into_buffer_arg(),
                k_ids.clone().into_buffer_arg(),
                dq.clone().into_buffer_arg(),
                delta.clone().into_buffer_arg(),
                dims(&s),
                s.head_dim,
                tile,
            );
            let (count, dim) = tiled_launch(&s, s.kv_heads, s.k_len, tile);
            tiled::key_grad_kernel::launch(
                &client,
                count,
                dim,
                k.into_buffer_arg(),
                v.into_buffer_arg(),
                q.into_buffer_arg(),
                lse.into_buffer_arg(),
                delta.into_buffer_arg(),
                d_out.into_buffer_arg(),
                q_ids.into_buffer_arg(),
                k_ids.into_buffer_arg(),
                dk.clone().into_buffer_arg(),
                dv.clone().into_buffer_arg(),
                dims(&s),
                s.head_dim,
                tile,
            );
            return (dq, dk, dv);
        }
        let (count, dim) = launch_dims(&client, queries);
        backward::query_grad_kernel::launch(
            &client,
            count,
            dim,
            q.clone().into_buffer_arg(),
            k.clone().into_buffer_arg(),
            v.clone().into_buffer_arg(),
            out.into_buffer_arg(),
            lse.clone().into_buffer_arg(),
            d_out.clone().into_buffer_arg(),
            q_ids.clone().into_buffer_arg(),
            k_ids.clone().into_buffer_arg(),
            dq.clone().into_buffer_arg(),
            delta.clone().into_buffer_arg(),
            dims(&s),
            s.head_dim,
        );
        let (count, dim) = launch_dims(&client, s.batch * s.kv_heads * s.k_len);
        backward::key_grad_kernel::launch(
            &client,
            count,
            dim,
            k.into_buffer_arg(),
            v.into_buffer_arg(),
            q.into_buffer_arg(),
            lse.into_buffer_arg(),
            delta.into_buffer_arg(),
            d_out.into_buffer_arg(),
            q_ids.into_buffer_arg(),
            k_ids.into_buffer_arg(),
            dk.clone().into_buffer_arg(),
            dv.clone().into_buffer_arg(),
            dims(&s),
            s.head_dim,
        );
        (dq, dk, dv)
    }
}
