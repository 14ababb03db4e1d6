//! The NF4 matmul on the CPU with the dequantization fused in: the weight is decoded a tile of
//! rows (for `x · Wᵀ`) or of columns (for `dy · W`) at a time into a small buffer each thread
//! reuses, and multiplied from there, so a dense copy of the whole weight never exists. The
//! packed codes are read in place from the device tensor; the absmax of every block (1/64 of
//! the values) is decoded once a call. Values are `code[q] * absmax`, bit-identical to
//! bitsandbytes' dequantization.

use std::borrow::Cow;

use burn::backend::Flex;
use burn::backend::TensorMetadata;
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::tensor::DType;
use rayon::prelude::*;

use super::kernel::{View, floats, matmul_raw, multiversion, tensor, uninit};
use crate::backend::{Nf4Absmax, Nf4Layout, Nf4Operand, Nf4Ops};
use crate::quant::DoubleQuant;

/// The bytes of words holding four each, most significant first, in their memory order.
fn word_bytes(words: &FlexTensor) -> Cow<'_, [u8]> {
    match words.as_slice::<i32>() {
        Some(w) => Cow::Borrowed(bytemuck::cast_slice(w)),
        None => {
            let w: Vec<i32> = words
                .clone()
                .into_data()
                .convert::<i32>()
                .try_into_vec()
                .expect("i32 words");
            Cow::Owned(bytemuck::cast_slice(&w).to_vec())
        }
    }
}

/// Byte `j` of the packed stream from the memory order of i32 words.
#[inline(always)]
fn packed_byte(le: &[u8], j: usize) -> u8 {
    if cfg!(target_endian = "little") {
        le[j ^ 3]
    } else {
        le[j]
    }
}

/// An NF4 weight read on the host.
struct HostNf4<'a> {
    bytes: Cow<'a, [u8]>,
    code: [f32; 16],
    absmax: Vec<f32>,
    layout: Nf4Layout,
}

impl<'a> HostNf4<'a> {
    fn new(weight: &'a Nf4Operand<Flex>) -> Self {
        let layout = weight.layout;
        let code: [f32; 16] = floats(&weight.code).to_vec().try_into().expect("16 codes");
        let absmax = match &weight.absmax {
            Nf4Absmax::Plain(a) => floats(a).into_owned(),
            Nf4Absmax::Double(d) => {
                let bytes = word_bytes(&d.words);
                DoubleQuant {
                    codes: (0..layout.blocks())
                        .map(|j| packed_byte(&bytes, j))
                        .collect(),
                    nested_absmax: floats(&d.nested_absmax).into_owned(),
                    offset: d.offset,
                    code: floats(&d.nested_code).into_owned(),
                    blocksize: d.nested_blocksize,
                }
                .decode()
            }
        };
        HostNf4 {
            bytes: word_bytes(&weight.words),
            code,
            absmax,
            layout,
        }
    }

    /// Rows `rows` and columns `cols` of the dense weight into `out` (row-major).
    fn decode(&self, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>, out: &mut [f32]) {
        let width = cols.len();
        for (r, out) in rows.zip(out.chunks_exact_mut(width)) {
            let start = r * self.layout.in_features + cols.start;
            decode_run(
                &self.bytes,
                &self.code,
                &self.absmax,
                self.layout.blocksize,
                start,
                out,
            );
        }
    }
}

multiversion! {
    /// Elements `start..start + out.len()` of the flattened weight.
    fn decode_run(bytes: &[u8], code: &[f32; 16], absmax: &[f32], blocksize: usize, start: usize, out: &mut [f32]) {
        let mut i = 0;
        // An odd start takes the low nibble of its byte first.
        if start % 2 == 1 && !out.is_empty() {
            out[0] = code[usize::from(packed_byte(bytes, start / 2) & 0x0f)] * absmax[start / blocksize];
            i = 1;
        }
        while i < out.len() {
            let flat = start + i;
            let block_end = (flat / blocksize + 1) * blocksize;
            let run = (block_end - flat).min(out.len() - i);
            let scale = absmax[flat / blocksize];
            let pairs = run / 2;
            let first_byte = flat / 2;
            for p in 0..pairs {
                let byte = packed_byte(bytes, first_byte + p);
                out[i + 2 * p] = code[usize::from(byte >> 4)] * scale;
                out[i + 2 * p + 1] = code[usize::from(byte & 0x0f)] * scale;
            }
            if run % 2 == 1 {
                let byte = packed_byte(bytes, first_byte + pairs);
                out[i + run - 1] = code[usize::from(byte >> 4)] * scale;
            }
            i += run;
        }
    }
}

/// A raw output pointer shared by tasks that write disjoint columns of it.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: every task writes only its own columns.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// Column `col` of the first row (a method, so closures capture the whole `Shared`).
    fn at(self, col: usize) -> *mut f32 {
        // SAFETY: callers stay inside the output.
        unsafe { self.0.add(col) }
    }
}

/// A tile width giving every thread several tiles, a multiple of 16.
fn tile(total: usize) -> usize {
    let tasks = 4 * rayon::current_num_threads();
    total.div_ceil(tasks).next_multiple_of(16).clamp(16, 256)
}

/// `x · Wᵀ` for `x` `[rows, in]`.
fn matmul_x_wt(x: FlexTensor, weight: Nf4Operand<Flex>) -> FloatTensor<Flex> {
    if x.dtype() != DType::F32 {
        return generic(x, weight, false);
    }
    let w = HostNf4::new(&weight);
    let (n_out, k) = (w.layout.out_features, w.layout.in_features);
    let m = x.shape()[0];
    let xs = floats(&x);
    let mut out = uninit(m * n_out);
    let shared = Shared(out.as_mut_ptr());
    let nb = tile(n_out);
    (0..n_out.div_ceil(nb)).into_par_iter().for_each(|t| {
        let rows = t * nb..((t + 1) * nb).min(n_out);
        let mut dense = vec![0f32; rows.len() * k];
        w.decode(rows.clone(), 0..k, &mut dense);
        let x_view = View::rows(&xs, k, 0..m, 0, k);
        let w_view = View::rows(&dense, k, 0..rows.len(), 0, k);
        // SAFETY: this task alone writes columns `rows` of the `[m, n_out]` output.
        unsafe {
            matmul_raw(
                shared.at(rows.start),
                n_out,
                (x_view, w_view.t()),
                1.0,
                false,
                1,
            )
        };
    });
    tensor(out, [m, n_out])
}

/// `dy · W` for `dy` `[rows, out]`.
fn matmul_dy_w(dy: FlexTensor, weight: Nf4Operand<Flex>) -> FloatTensor<Flex> {
    if dy.dtype() != DType::F32 {
        return generic(dy, weight, true);
    }
    let w = HostNf4::new(&weight);
    let (n_out, k) = (w.layout.out_features, w.layout.in_features);
    let m = dy.shape()[0];
    let dys = floats(&dy);
    let mut out = uninit(m * k);
    let shared = Shared(out.as_mut_ptr());
    let kb = tile(k);
    (0..k.div_ceil(kb)).into_par_iter().for_each(|t| {
        let cols = t * kb..((t + 1) * kb).min(k);
        let mut dense = vec![0f32; n_out * cols.len()];
        w.decode(0..n_out, cols.clone(), &mut dense);
        let dy_view = View::rows(&dys, n_out, 0..m, 0, n_out);
        let w_view = View::rows(&dense, cols.len(), 0..n_out, 0, cols.len());
        // SAFETY: this task alone writes columns `cols` of the `[m, k]` output.
        unsafe { matmul_raw(shared.at(cols.start), k, (dy_view, w_view), 1.0, false, 1) };
    });
    tensor(out, [m, k])
}

/// Inputs in a 16-bit compute dtype: the weight dequantized exactly, rounded to it, and
/// Burn's matmul (the fused kernel is f32).
fn generic(x: FlexTensor, weight: Nf4Operand<Flex>, transposed: bool) -> FloatTensor<Flex> {
    let dense = crate::backend::generic::cast_like::<Flex>(dequantize(weight), &x);
    if transposed {
        Flex::float_matmul(x, dense)
    } else {
        Flex::float_matmul(x, Flex::float_transpose(dense))
    }
}

/// The dense `[out, in]` f32 weight.
fn dequantize(weight: Nf4Operand<Flex>) -> FloatTensor<Flex> {
    if weight.code.dtype() != DType::F32 {
        return crate::backend::generic::nf4::dequantize::<Flex>(&weight);
    }
    let w = HostNf4::new(&weight);
    let (rows, cols) = (w.layout.out_features, w.layout.in_features);
    let mut out = uninit(rows * cols);
    let per = tile(rows);
    out.par_chunks_mut(per * cols)
        .enumerate()
        .for_each(|(t, chunk)| {
            let start = t * per;
            w.decode(start..start + chunk.len() / cols, 0..cols, chunk);
        });
    tensor(out, [rows, cols])
}

impl Nf4Ops for Flex {
    fn nf4_dequantize(weight: Nf4Operand<Self>) -> FloatTensor<Self> {
        dequantize(weight)
    }

    fn nf4_matmul(x: FloatTensor<Self>, weight: Nf4Operand<Self>) -> FloatTensor<Self> {
        matmul_x_wt(x, weight)
    }

    fn nf4_matmul_transposed(dy: FloatTensor<Self>, weight: Nf4Operand<Self>) -> FloatTensor<Self> {
        matmul_dy_w(dy, weight)
    }
}
