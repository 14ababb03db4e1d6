//! RMSNorm, rotary embedding, SwiGLU, GeGLU and dropout on the CPU: one pass over memory each,
//! forward and backward, rows split over the thread pool.

use burn::backend::flex::FlexTensor;
use burn::backend::{Flex, TensorMetadata};
use rayon::prelude::*;

use super::kernel::{dot, exp, floats, multiversion, tensor, uninit};
use crate::backend::LayerOps;
use crate::backend::generic::layers::{GELU_BETA, GELU_KAPPA};

/// Rows a task takes: enough to amortize the scheduling, few enough to balance.
fn rows_per_task(rows: usize, width: usize) -> usize {
    let tasks = 8 * rayon::current_num_threads();
    rows.div_ceil(tasks).max((16384 / width.max(1)).max(1))
}

fn dims2(t: &FlexTensor) -> [usize; 2] {
    let shape = t.shape();
    [shape[0], shape[1]]
}

/// `1 / sqrt(mean(x²) + eps)`.
#[inline(always)]
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    1.0 / (dot(x, x) / x.len() as f32 + eps).sqrt()
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

multiversion! {
    fn rms_norm_rows(out: &mut [f32], xs: &[f32], w: &[f32], eps: f32) {
        let h = w.len();
        for (o, x) in out.chunks_exact_mut(h).zip(xs.chunks_exact(h)) {
            let inv = inv_rms(x, eps);
            for ((o, x), w) in o.iter_mut().zip(x).zip(w) {
                *o = x * inv * w;
            }
        }
    }
}

multiversion! {
    fn rms_norm_backward_rows(out: &mut [f32], xs: &[f32], dys: &[f32], w: &[f32], eps: f32) {
        let h = w.len();
        let mut g = vec![0f32; h];
        for ((o, x), dy) in out.chunks_exact_mut(h).zip(xs.chunks_exact(h)).zip(dys.chunks_exact(h)) {
            let inv = inv_rms(x, eps);
            for ((g, dy), w) in g.iter_mut().zip(dy).zip(w) {
                *g = dy * w;
            }
            // dx = r g - x r³ mean(g x)
            let c = inv * inv * inv * dot(&g, x) / h as f32;
            for ((o, g), x) in o.iter_mut().zip(&g).zip(x) {
                *o = g * inv - x * c;
            }
        }
    }
}

multiversion! {
    /// `cos`, `sin` hold a `dim`-wide row for every row of `xs`.
    fn rope_rows(out: &mut [f32], xs: &[f32], cos: &[f32], sin: &[f32], dim: usize) {
        let half = dim / 2;
        let rows = cos.len() / dim;
        let width = xs.len() / rows;
        for ((o, x), (c, s)) in out
            .chunks_exact_mut(width)
            .zip(xs.chunks_exact(width))
            .zip(cos.chunks_exact(dim).zip(sin.chunks_exact(dim)))
        {
            for (o, x) in o.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
                let (x1, x2) = x.split_at(half);
                let (o1, o2) = o.split_at_mut(half);
                for i in 0..half {
                    o1[i] = x1[i] * c[i] - x2[i] * s[i];
                    o2[i] = x2[i] * c[half + i] + x1[i] * s[half + i];
                }
            }
        }
    }
}

multiversion! {
    fn swiglu_span(out: &mut [f32], g: &[f32], u: &[f32]) {
        for ((o, g), u) in out.iter_mut().zip(g).zip(u) {
            *o = g * sigmoid(*g) * u;
        }
    }
}

multiversion! {
    fn swiglu_backward_span(dg: &mut [f32], du: &mut [f32], g: &[f32], u: &[f32], dz: &[f32]) {
        for i in 0..dg.len() {
            let s = sigmoid(g[i]);
            dg[i] = dz[i] * u[i] * (s * (1.0 + g[i] * (1.0 - s)));
            du[i] = dz[i] * (g[i] * s);
        }
    }
}

/// `tanh(β (a + κ a³))` of GELU's tanh approximation, through [`exp`] (vectorizes).
#[inline(always)]
fn gelu_tanh_inner(a: f32) -> f32 {
    const BETA: f32 = GELU_BETA as f32;
    const KAPPA: f32 = GELU_KAPPA as f32;
    let y = BETA * (a + KAPPA * a * a * a);
    1.0 - 2.0 / (exp(2.0 * y) + 1.0)
}

multiversion! {
    fn geglu_span(out: &mut [f32], g: &[f32], u: &[f32]) {
        for ((o, g), u) in out.iter_mut().zip(g).zip(u) {
            *o = 0.5 * g * (1.0 + gelu_tanh_inner(*g)) * u;
        }
    }
}

multiversion! {
    fn geglu_backward_span(dg: &mut [f32], du: &mut [f32], g: &[f32], u: &[f32], dz: &[f32]) {
        const BETA: f32 = GELU_BETA as f32;
        const KAPPA: f32 = GELU_KAPPA as f32;
        for i in 0..dg.len() {
            let a = g[i];
            let t = gelu_tanh_inner(a);
            let d = 0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * BETA * (1.0 + 3.0 * KAPPA * a * a);
            dg[i] = dz[i] * u[i] * d;
            du[i] = dz[i] * (0.5 * a * (1.0 + t));
        }
    }
}

/// An elementwise gated activation over `gate` and `up` by `span`.
fn gated(gate: FlexTensor, up: FlexTensor, span: fn(&mut [f32], &[f32], &[f32])) -> FlexTensor {
    let shape = gate.shape();
    let (g, u) = (floats(&gate), floats(&up));
    let mut out = uninit(g.len());
    out.par_chunks_mut(16384)
        .zip(g.par_chunks(16384).zip(u.par_chunks(16384)))
        .for_each(|(out, (g, u))| span(out, g, u));
    FlexTensor::from_data(burn::tensor::TensorData::new(out, shape))
}

/// A gated activation's backward span: `(d_gate, d_up, gate, up, dz)`.
type BackwardSpan = fn(&mut [f32], &mut [f32], &[f32], &[f32], &[f32]);

/// The gradients of a gated activation by `span`.
fn gated_backward(
    gate: FlexTensor,
    up: FlexTensor,
    dz: FlexTensor,
    span: BackwardSpan,
) -> (FlexTensor, FlexTensor) {
    let shape = gate.shape();
    let (g, u, dz) = (floats(&gate), floats(&up), floats(&dz));
    let mut dg = uninit(g.len());
    let mut du = uninit(g.len());
    dg.par_chunks_mut(16384)
        .zip(du.par_chunks_mut(16384))
        .zip(
            g.par_chunks(16384)
                .zip(u.par_chunks(16384))
                .zip(dz.par_chunks(16384)),
        )
        .for_each(|((dg, du), ((g, u), dz))| span(dg, du, g, u, dz));
    (
        FlexTensor::from_data(burn::tensor::TensorData::new(dg, shape.clone())),
        FlexTensor::from_data(burn::tensor::TensorData::new(du, shape)),
    )
}

impl LayerOps for Flex {
    fn rms_norm(x: FlexTensor, weight: FlexTensor, eps: f64) -> FlexTensor {
        let [rows, h] = dims2(&x);
        let (xs, w) = (floats(&x), floats(&weight));
        let mut out = uninit(rows * h);
        let per = rows_per_task(rows, h);
        out.par_chunks_mut(per * h)
            .zip(xs.par_chunks(per * h))
            .for_each(|(out, xs)| rms_norm_rows(out, xs, &w, eps as f32));
        tensor(out, [rows, h])
    }

    fn rms_norm_backward(
        x: FlexTensor,
        weight: FlexTensor,
        eps: f64,
        dy: FlexTensor,
    ) -> FlexTensor {
        let [rows, h] = dims2(&x);
        let (xs, w, dys) = (floats(&x), floats(&weight), floats(&dy));
        let mut out = uninit(rows * h);
        let per = rows_per_task(rows, h);
        out.par_chunks_mut(per * h)
            .zip(xs.par_chunks(per * h))
            .zip(dys.par_chunks(per * h))
            .for_each(|((out, xs), dys)| rms_norm_backward_rows(out, xs, dys, &w, eps as f32));
        tensor(out, [rows, h])
    }

    fn rope(x: FlexTensor, cos: FlexTensor, sin: FlexTensor) -> FlexTensor {
        let [rows, width] = dims2(&x);
        let dim = cos.shape()[1];
        let (xs, c, s) = (floats(&x), floats(&cos), floats(&sin));
        let mut out = uninit(rows * width);
        let per = rows_per_task(rows, width);
        out.par_chunks_mut(per * width)
            .zip(xs.par_chunks(per * width))
            .enumerate()
            .for_each(|(task, (out, xs))| {
                let rows = out.len() / width;
                let tables = task * per * dim..(task * per + rows) * dim;
                rope_rows(out, xs, &c[tables.clone()], &s[tables], dim);
            });
        tensor(out, [rows, width])
    }

    fn swiglu(gate: FlexTensor, up: FlexTensor) -> FlexTensor {
        gated(gate, up, swiglu_span)
    }

    fn swiglu_backward(
        gate: FlexTensor,
        up: FlexTensor,
        dz: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        gated_backward(gate, up, dz, swiglu_backward_span)
    }

    fn geglu(gate: FlexTensor, up: FlexTensor) -> FlexTensor {
        gated(gate, up, geglu_span)
    }

    fn geglu_backward(
        gate: FlexTensor,
        up: FlexTensor,
        dz: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        gated_backward(gate, up, dz, geglu_backward_span)
    }

    fn dropout(x: FlexTensor, seed: u64, p: f64) -> FlexTensor {
        let shape = x.shape();
        let out = super::lora::dropout_values(&floats(&x), seed, p);
        FlexTensor::from_data(burn::tensor::TensorData::new(out, shape))
    }
}
