//! The matmul bitsandbytes uses for 4-bit *inference* on CPUs with AVX512-BF16, reproduced
//! bit for bit.
//!
//! On such CPUs, `Linear4bit` in eval mode without gradients does not dequantize: it rounds the
//! input and the absmax to bf16, and for every group of `blocksize` inputs sums
//! `x[k] * bf16(code[q])` in f32 (pairs of products, odd element first, as `vdpbf16ps` does),
//! multiplies the group sum by the absmax with a fused multiply-add into the running total, and
//! rounds the result to bf16. transformers + bitsandbytes inference on those machines (for
//! instance the reference logits of `fixtures/tiny-llama-bnb-nf4`) gives these numbers; training,
//! GPUs and other CPUs give the exact f32 product of the dequantized weight instead.

use half::bf16;
use rayon::prelude::*;

use super::state::Nf4Tensor;

/// f32 -> bf16 -> f32 with round-to-nearest-even, as torch's `.to(torch.bfloat16)`.
fn round_bf16(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

/// The kernel runs with denormals flushed to zero.
fn flush(x: f32) -> f32 {
    if x.is_subnormal() {
        0.0 * x.signum()
    } else {
        x
    }
}

/// `y = x W^T` for `x` of `rows` rows of `in` values, `W` the `[out, in]` NF4 weight, with the
/// arithmetic of bitsandbytes' CPU bf16 inference kernel. Returns `rows * out` values (each
/// exactly representable in bf16).
pub fn linear(x: &[f32], rows: usize, weight: &Nf4Tensor) -> Vec<f32> {
    let [out_features, in_features] = [weight.shape[0], weight.shape[1]];
    let group = weight.blocksize;
    let groups = in_features / group;
    let code: Vec<f32> = weight.code.iter().map(|&c| round_bf16(c)).collect();
    let absmax: Vec<f32> = weight
        .absmax_f32()
        .iter()
        .map(|&a| flush(round_bf16(a)))
        .collect();
    let xs: Vec<f32> = x.iter().map(|&v| flush(round_bf16(v))).collect();
    let nibble = |n: usize, k: usize| -> usize {
        let index = n * in_features + k;
        let byte = weight.packed[index / 2];
        usize::from(if index.is_multiple_of(2) {
            byte >> 4
        } else {
            byte & 0x0f
        })
    };
    let mut y = vec![0f32; rows * out_features];
    y.par_chunks_mut(out_features)
        .enumerate()
        .for_each(|(r, out)| {
            let xr = &xs[r * in_features..(r + 1) * in_features];
            for (n, o) in out.iter_mut().enumerate() {
                let mut total = 0f32;
                for g in 0..groups {
                    let mut sum = 0f32;
                    for k in (g * group..(g + 1) * group).step_by(2) {
                        sum = flush(sum + xr[k + 1] * code[nibble(n, k + 1)]);
                        sum = flush(sum + xr[k] * code[nibble(n, k)]);
                    }
                    total = flush(sum.mul_add(absmax[n * groups + g], total));
                }
                *o = round_bf16(total);
            }
        });
    y
}
