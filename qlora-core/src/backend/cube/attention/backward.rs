//! The backward pass of [`super`]'s attention: a thread a query for the queries' gradient
//! (and `delta = dO · O`), then a thread a key for the keys' and values' gradients.

use cubecl::prelude::*;

use super::{
    Dims, QueryThread, cap_slope, capped, dot, load, queries_seeing, query_thread, window_start,
    zeros,
};

/// One thread a query `(b, h, i)`: the queries' gradient, and `delta = dO · O` (which the keys'
/// kernel reads).
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
) {
    let t = ABSOLUTE_POS;
    let QueryThread {
        b,
        h,
        kv,
        row,
        pos,
        id,
        query,
    } = query_thread(&s, q, q_ids, t, d);
    let (heads, k_len, kv_heads) = (s.heads as usize, s.k_len as usize, s.kv_heads as usize);
    let mut dov = Array::<f32>::new(d);
    load(d_out, row, h, heads, &mut dov, d);
    let dd = dot(&dov, out, row, h, heads, d);
    delta[t] = dd;
    let l = lse[t];
    let mut acc = Array::<f32>::new(d);
    for j in window_start(&s, pos)..pos + 1 {
        if k_ids[b * k_len + j] == id {
            let key = b * k_len + j;
            let score = capped(&s, dot(&query, k, key, kv, kv_heads, d) * s.scale);
            let p = (score - l).exp();
            let ds = p * (dot(&dov, v, key, kv, kv_heads, d) - dd) * cap_slope(&s, score);
            let kbase = (key * kv_heads + kv) * d;
            #[unroll]
            for e in 0..d {
                acc[e] += ds * k[kbase + e];
            }
        }
    }
    let base = (row * heads + h) * d;
    #[unroll]
    for e in 0..d {
        dq[base + e] = acc[e] * s.scale;
    }
}

/// One thread a key `(b, kv, j)`: the keys' and values' gradients, summed over the query heads
/// the key/value head serves and the queries that see the key.
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
) {
    let (heads, q_len, k_len) = (s.heads as usize, s.q_len as usize, s.k_len as usize);
    let kv_heads = s.kv_heads as usize;
    let t = ABSOLUTE_POS;
    if t >= s.batch as usize * kv_heads * k_len {
        terminate!();
    }
    let j = t % k_len;
    let kv = (t / k_len) % kv_heads;
    let b = t / (k_len * kv_heads);
    let groups = heads / kv_heads;
    let key = b * k_len + j;
    let id = k_ids[key];

    let mut kvec = Array::<f32>::new(d);
    load(k, key, kv, kv_heads, &mut kvec, d);
    let mut vvec = Array::<f32>::new(d);
    load(v, key, kv, kv_heads, &mut vvec, d);
    let mut dk_acc = zeros(d);
    let mut dv_acc = zeros(d);
    let seeing = queries_seeing(&s, j);
    for g in 0..groups {
        let h = kv * groups + g;
        for i in seeing.lo..seeing.hi {
            let row = b * q_len + i;
            if q_ids[row] == id {
                let stat = (b * heads + h) * q_len + i;
                let score = capped(&s, dot(&kvec, q, row, h, heads, d) * s.scale);
                let p = (score - lse[stat]).exp();
                let ds =
                    p * (dot(&vvec, d_out, row, h, heads, d) - delta[stat]) * cap_slope(&s, score);
                let base = (row * heads + h) * d;
                #[unroll]
                for e in 0..d {
                    dv_acc[e] += p * d_out[base + e];
                    dk_acc[e] += ds * q[base + e];
                }
            }
        }
    }
    let base = (key * kv_heads + kv) * d;
    #[unroll]
    for e in 0..d {
        dk[base + e] = dk_acc[e] * s.scale;
        dv[base + e] = dv_acc[e];
    }
}
