//! Attention tiled through shared memory, FlashAttention-2's structure: a cube takes a block of
//! `tile` neighbouring queries of one head (a thread a query) and walks the keys it may see a
//! tile at a time, the cube's threads loading each key and value tile into shared memory
//! together (coalesced) and every thread then reading it from there with an online softmax; the
//! log-sum-exp is all the forward pass keeps. The backward pass is the same walk twice: query
//! blocks over key tiles for the queries' gradient (and `delta = dO · O`), and blocks of keys of
//! one key/value head over tiles of queries, their output gradients, log-sum-exps and deltas for
//! the keys' and values' gradients, summed over the query heads the key/value head serves. Tiles
//! wholly after a block's last query (causal) or before its first one's window are never
//! loaded; keys of other sequences are passed over, as in [`super`]'s untiled kernels, whose
//! numbers these equal.

use cubecl::prelude::*;

use super::{Dims, Span, cap_slope, capped, dot, load, queries_seeing, window_start, zeros};

/// A block of `tile` rows: the cube's batch, head (a query head, or a key/value head for the
/// keys' kernel), its first row and the end of its rows, and the thread's row in it.
#[derive(CubeType)]
struct Block {
    b: usize,
    h: usize,
    first: usize,
    end: usize,
    /// The thread's row (the last row for threads past the end, which load but do not write).
    row: usize,
    active: bool,
}

/// The cube's block of `len` rows of `heads` heads: a cube past the last ends here (all its
/// threads at once, so none waits at a barrier for them).
#[cube]
// `div_ceil` has no kernel expansion.
#[allow(clippy::manual_div_ceil)]
fn block(s: &Dims, heads: usize, len: usize, #[comptime] tile: usize) -> Block {
    let blocks = (len + tile - 1) / tile;
    let c = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize;
    if c >= s.batch as usize * heads * blocks {
        terminate!();
    }
    let first = (c % blocks) * tile;
    let mut end = first + tile;
    if end > len {
        end = len;
    }
    let mut row = first + UNIT_POS as usize;
    let active = row < end;
    if !active {
        row = end - 1;
    }
    Block {
        b: c / (blocks * heads),
        h: (c / blocks) % heads,
        first,
        end,
        row,
        active,
    }
}

/// What a query's thread of a block works on: its block, key/value head, row in `[batch *
/// q_len]`, sequence id and query vector, and the keys it sees (its window up to its position).
#[derive(CubeType)]
struct QueryRow {
    block: Block,
    kv: usize,
    row: usize,
    id: i32,
    query: Array<f32>,
    keys: Span,
}

#[cube]
fn query_row(
    s: &Dims,
    q: &[f32],
    q_ids: &[i32],
    #[comptime] d: usize,
    #[comptime] tile: usize,
) -> QueryRow {
    let heads = s.heads as usize;
    let q_len = s.q_len as usize;
    let block = block(s, heads, q_len, tile);
    let row = block.b * q_len + block.row;
    let pos = s.k_len as usize - q_len + block.row;
    let mut query = Array::<f32>::new(d);
    load(q, row, block.h, heads, &mut query, d);
    QueryRow {
        kv: block.h / (heads / s.kv_heads as usize),
        row,
        id: q_ids[row],
        query,
        keys: Span {
            lo: window_start(s, pos),
            hi: pos + 1,
        },
        block,
    }
}

/// Rows `start..start + tile` (those before `end`) of head `head` of a `[rows, heads · d]`
/// tensor from row `base` into `tile_out` (row-major, `d` a row), the cube's threads together.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_tile(
    x: &[f32],
    base: usize,
    start: usize,
    end: usize,
    head: usize,
    heads: usize,
    tile_out: &mut Shared<[f32]>,
    #[comptime] d: usize,
    #[comptime] tile: usize,
) {
    let u = UNIT_POS as usize;
    #[unroll]
    for r in 0..d {
        let index = r * tile + u;
        let row = start + index / d;
        if row < end {
            tile_out[index] = x[((base + row) * heads + head) * d + index % d];
        }
    }
}

/// The keys and values `j0..j0 + tile` (those before `end`) of key/value head `kv` of batch
/// `b`, and their sequence ids, into shared memory; returns once every thread's loads are done.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_key_tile(
    k: &[f32],
    v: &[f32],
    k_ids: &[i32],
    s: &Dims,
    b: usize,
    kv: usize,
    j0: usize,
    end: usize,
    keys: &mut Shared<[f32]>,
    values: &mut Shared<[f32]>,
    ids: &mut Shared<[i32]>,
    #[comptime] d: usize,
    #[comptime] tile: usize,
) {
    let (k_len, kv_heads) = (s.k_len as usize, s.kv_heads as usize);
    load_tile(k, b * k_len, j0, end, kv, kv_heads, keys, d, tile);
    load_tile(v, b * k_len, j0, end, kv, kv_heads, values, d, tile);
    let u = UNIT_POS as usize;
    if j0 + u < end {
        ids[u] = k_ids[b * k_len + j0 + u];
    }
    sync_cube();
}

/// The rows of the tile `t0..t0 + tile` within `span`.
#[cube]
fn clip(t0: usize, span: &Span, #[comptime] tile: usize) -> Span {
    let mut lo = t0;
    if span.lo > lo {
        lo = span.lo;
    }
    let mut hi = t0 + tile;
    if span.hi < hi {
        hi = span.hi;
    }
    Span { lo, hi }
}

/// `a · tile[t]` for a row of a shared tile.
#[cube]
fn dot_row(a: &Array<f32>, tile: &Shared<[f32]>, t: usize, #[comptime] d: usize) -> f32 {
    let mut sum = 0.0f32;
    #[unroll]
    for e in 0..d {
        sum += a[e] * tile[t * d + e];
    }
    sum
}

/// A cube a block of `tile` queries of one head: the attention output and the log-sum-exp.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_kernel(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    q_ids: &[i32],
    k_ids: &[i32],
    out: &mut [f32],
    lse: &mut [f32],
    s: Dims,
    #[comptime] d: usize,
    #[comptime] tile: usize,
) {
    let me = query_row(&s, q, q_ids, d, tile);
    let (b, h, heads) = (me.block.b, me.block.h, s.heads as usize);
    let offset = (s.k_len - s.q_len) as usize;
    let mut acc = zeros(d);
    let mut running_max = f32::new(-3.0e38);
    let mut sum = 0.0f32;

    let mut keys = Shared::<[f32]>::new_slice(tile * d);
    let mut values = Shared::<[f32]>::new_slice(tile * d);
    let mut ids = Shared::<[i32]>::new_slice(tile);
    let last = offset + me.block.end;
    let mut j0 = window_start(&s, offset + me.block.first);
    while j0 < last {
        load_key_tile(
            k,
            v,
            k_ids,
            &s,
            b,
            me.kv,
            j0,
            last,
            &mut keys,
            &mut values,
            &mut ids,
            d,
            tile,
        );
        if me.block.active {
            let seen = clip(j0, &me.keys, tile);
            for j in seen.lo..seen.hi {
                let t = j - j0;
                if ids[t] == me.id {
                    let score = capped(&s, dot_row(&me.query, &keys, t, d) * s.scale);
                    let new_max = f32::max(running_max, score);
                    let correction = (running_max - new_max).exp();
                    let p = (score - new_max).exp();
                    sum = sum * correction + p;
                    #[unroll]
                    for e in 0..d {
                        acc[e] = acc[e] * correction + p * values[t * d + e];
                    }
                    running_max = new_max;
                }
            }
        }
        sync_cube();
        j0 += tile;
    }
    if me.block.active {
        let obase = (me.row * heads + h) * d;
        #[unroll]
        for e in 0..d {
            out[obase + e] = acc[e] / sum;
        }
        lse[(b * heads + h) * s.q_len as usize + me.block.row] = running_max + sum.ln();
    }
}

/// A cube a block of `tile` queries of one head: the queries' gradient, and `delta = dO · O`
/// (which the keys' kernel reads).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn query_grad_kernel(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    d_out: &[f32],
    q_ids: &[i32],
    k_ids: &[i32],
    dq: &mut [f32],
    delta: &mut [f32],
    s: Dims,
    #[comptime] d: usize,
    #[comptime] tile: usize,
) {
    let me = query_row(&s, q, q_ids, d, tile);
    let (b, h, heads) = (me.block.b, me.block.h, s.heads as usize);
    let offset = (s.k_len - s.q_len) as usize;
    let stat = (b * heads + h) * s.q_len as usize + me.block.row;
    let mut dov = Array::<f32>::new(d);
    load(d_out, me.row, h, heads, &mut dov, d);
    let dd = dot(&dov, out, me.row, h, heads, d);
    let l = lse[stat];
    let mut acc = zeros(d);

    let mut keys = Shared::<[f32]>::new_slice(tile * d);
    let mut values = Shared::<[f32]>::new_slice(tile * d);
    let mut ids = Shared::<[i32]>::new_slice(tile);
    let last = offset + me.block.end;
    let mut j0 = window_start(&s, offset + me.block.first);
    while j0 < last {
        load_key_tile(
            k,
            v,
            k_ids,
            &s,
            b,
            me.kv,
            j0,
            last,
            &mut keys,
            &mut values,
            &mut ids,
            d,
            tile,
        );
        if me.block.active {
            let seen = clip(j0, &me.keys, tile);
            for j in seen.lo..seen.hi {
                let t = j - j0;
                if ids[t] == me.id {
                    let score = capped(&s, dot_row(&me.query, &keys, t, d) * s.scale);
                    let p = (score - l).exp();
                    let ds = p * (dot_row(&dov, &values, t, d) - dd) * cap_slope(&s, score);
                    #[unroll]
                    for e in 0..d {
                        acc[e] += ds * keys[t * d + e];
                    }
                }
            }
        }
        sync_cube();
        j0 += tile;
    }
    if me.block.active {
        delta[stat] = dd;
        let base = (me.row * heads + h) * d;
        #[unroll]
        for e in 0..d {
            dq[base + e] = acc[e] * s.scale;
        }
    }
}

/// A cube a block of `tile` keys of one key/value head: the keys' and values' gradients, over
/// tiles of the queries (of every query head the key/value head serves) that see a key of the
/// block.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn key_grad_kernel(
    k: &[f32],
    v: &[f32],
    q: &[f32],
    lse: &[f32],
    delta: &[f32],
    d_out: &[f32],
    q_ids: &[i32],
    k_ids: &[i32],
    dk: &mut [f32],
    dv: &mut [f32],
    s: Dims,
    #[comptime] d: usize,
    #[comptime] tile: usize,
) {
    let (heads, kv_heads) = (s.heads as usize, s.kv_heads as usize);
    let (q_len, k_len) = (s.q_len as usize, s.k_len as usize);
    let block = block(&s, kv_heads, k_len, tile);
    let (b, kv) = (block.b, block.h);
    let groups = heads / kv_heads;
    let key = b * k_len + block.row;
    let id = k_ids[key];
    let mut kvec = Array::<f32>::new(d);
    load(k, key, kv, kv_heads, &mut kvec, d);
    let mut vvec = Array::<f32>::new(d);
    load(v, key, kv, kv_heads, &mut vvec, d);
    let mut dk_acc = zeros(d);
    let mut dv_acc = zeros(d);
    // The queries that see this key, and those that see any key of the block.
    let seeing = queries_seeing(&s, block.row);
    let block_first = queries_seeing(&s, block.first).lo;
    let block_end = queries_seeing(&s, block.end - 1).hi;

    let mut queries = Shared::<[f32]>::new_slice(tile * d);
    let mut grads = Shared::<[f32]>::new_slice(tile * d);
    let mut lses = Shared::<[f32]>::new_slice(tile);
    let mut deltas = Shared::<[f32]>::new_slice(tile);
    let mut ids = Shared::<[i32]>::new_slice(tile);
    let u = UNIT_POS as usize;
    for g in 0..groups {
        let h = kv * groups + g;
        let mut i0 = block_first;
        while i0 < block_end {
            load_tile(q, b * q_len, i0, block_end, h, heads, &mut queries, d, tile);
            load_tile(
                d_out,
                b * q_len,
                i0,
                block_end,
                h,
                heads,
                &mut grads,
                d,
                tile,
            );
            if i0 + u < block_end {
                let stat = (b * heads + h) * q_len + i0 + u;
                lses[u] = lse[stat];
                deltas[u] = delta[stat];
                ids[u] = q_ids[b * q_len + i0 + u];
            }
            sync_cube();
            if block.active {
                let seen = clip(i0, &seeing, tile);
                for i in seen.lo..seen.hi {
                    let t = i - i0;
                    if ids[t] == id {
                        let score = capped(&s, dot_row(&kvec, &queries, t, d) * s.scale);
                        let p = (score - lses[t]).exp();
                        let ds =
                            p * (dot_row(&vvec, &grads, t, d) - deltas[t]) * cap_slope(&s, score);
                        #[unroll]
                        for e in 0..d {
                            dv_acc[e] += p * grads[t * d + e];
                            dk_acc[e] += ds * queries[t * d + e];
                        }
                    }
                }
            }
            sync_cube();
            i0 += tile;
        }
    }
    if block.active {
        let base = (key * kv_heads + kv) * d;
        #[unroll]
        for e in 0..d {
            dk[base + e] = dk_acc[e] * s.scale;
            dv[base + e] = dv_acc[e];
        }
    }
}
