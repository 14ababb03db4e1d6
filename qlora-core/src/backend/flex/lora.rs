//! LoRA on the CPU: `base + scale · (dropout(x) Aᵀ) Bᵀ` and its gradients as a few matrix
//! multiplies on the tensors in place (transposes are views; the scale rides in the
//! multiply), the adapter's output accumulated straight into the base output.

use std::borrow::Cow;

use burn::backend::flex::FlexTensor;
use burn::backend::{Flex, TensorMetadata};
use rayon::prelude::*;

use super::kernel::{View, all_threads, floats, matmul, multiversion, tensor, uninit};
use crate::backend::LoraOps;
use crate::backend::dropout::DropoutMask;

/// `x` with the dropout mask of `seed` (the same values when `p` is 0).
fn dropped<'a>(xs: Cow<'a, [f32]>, seed: u64, p: f64) -> Cow<'a, [f32]> {
    if p <= 0.0 {
        return xs;
    }
    Cow::Owned(dropout_values(&xs, seed, p))
}

/// The values of `t`, owned (without a copy when nothing else holds them).
fn owned(t: FlexTensor) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec()
        .expect("f32 values")
}

fn dims(t: &FlexTensor) -> [usize; 2] {
    let shape = t.shape();
    [shape[0], shape[1]]
}

/// `xs` times the dropout mask of `seed`, on the thread pool.
pub(super) fn dropout_values(xs: &[f32], seed: u64, p: f64) -> Vec<f32> {
    let mask = DropoutMask::new(seed, p);
    let mut out = uninit(xs.len());
    out.par_chunks_mut(4096)
        .zip(xs.par_chunks(4096))
        .enumerate()
        .for_each(|(chunk, (out, xs))| dropout_span(out, xs, &mask, chunk * 4096));
    out
}

multiversion! {
    /// Element `start + j` of the mask times `xs[j]`.
    fn dropout_span(out: &mut [f32], xs: &[f32], mask: &DropoutMask, start: usize) {
        for (j, (o, x)) in out.iter_mut().zip(xs).enumerate() {
            *o = x * mask.value(start + j);
        }
    }
}

impl LoraOps for Flex {
    fn lora_forward(
        base: FlexTensor,
        x: FlexTensor,
        a: FlexTensor,
        b: FlexTensor,
        scale: f64,
        seed: u64,
        p: f64,
    ) -> FlexTensor {
        let [rows, inp] = dims(&x);
        let (r, out) = (a.shape()[0], b.shape()[0]);
        let xd = dropped(floats(&x), seed, p);
        let (a, b) = (floats(&a), floats(&b));
        let mut t = uninit(rows * r);
        let threads = all_threads();
        let xd_view = View::rows(&xd, inp, 0..rows, 0, inp);
        matmul(
            &mut t,
            r,
            xd_view,
            View::rows(&a, inp, 0..r, 0, inp).t(),
            1.0,
            false,
            threads,
        );
        let mut y = owned(base);
        let t_view = View::rows(&t, r, 0..rows, 0, r);
        let b_view = View::rows(&b, r, 0..out, 0, r);
        matmul(&mut y, out, t_view, b_view.t(), scale as f32, true, threads);
        tensor(y, [rows, out])
    }

    #[allow(clippy::too_many_arguments)]
    fn lora_backward(
        x: FlexTensor,
        a: FlexTensor,
        b: FlexTensor,
        dy: FlexTensor,
        dx_base: FlexTensor,
        scale: f64,
        seed: u64,
        p: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let [rows, inp] = dims(&x);
        let (r, out) = (a.shape()[0], b.shape()[0]);
        let xd = dropped(floats(&x), seed, p);
        let (a, b, dy) = (floats(&a), floats(&b), floats(&dy));
        let threads = all_threads();
        let xd_view = View::rows(&xd, inp, 0..rows, 0, inp);
        let a_view = View::rows(&a, inp, 0..r, 0, inp);
        let dy_view = View::rows(&dy, out, 0..rows, 0, out);
        let mut t = uninit(rows * r);
        matmul(&mut t, r, xd_view, a_view.t(), 1.0, false, threads);
        let mut db = uninit(out * r);
        matmul(
            &mut db,
            r,
            dy_view.t(),
            View::rows(&t, r, 0..rows, 0, r),
            scale as f32,
            false,
            threads,
        );
        let mut dt = uninit(rows * r);
        matmul(
            &mut dt,
            r,
            dy_view,
            View::rows(&b, r, 0..out, 0, r),
            scale as f32,
            false,
            threads,
        );
        let dt_view = View::rows(&dt, r, 0..rows, 0, r);
        let mut da = uninit(r * inp);
        matmul(&mut da, inp, dt_view.t(), xd_view, 1.0, false, threads);
        let mut dx = owned(dx_base);
        if p <= 0.0 {
            matmul(&mut dx, inp, dt_view, a_view, 1.0, true, threads);
        } else {
            let mut dxd = uninit(rows * inp);
            matmul(&mut dxd, inp, dt_view, a_view, 1.0, false, threads);
            let masked = dropped(Cow::Owned(dxd), seed, p);
            dx.par_chunks_mut(4096)
                .zip(masked.par_chunks(4096))
                .for_each(|(dx, m)| {
                    for (dx, m) in dx.iter_mut().zip(m) {
                        *dx += m;
                    }
                });
        }
        (
            tensor(da, [r, inp]),
            tensor(db, [out, r]),
            tensor(dx, [rows, inp]),
        )
    }
}
