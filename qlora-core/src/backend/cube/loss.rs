//! Next-token cross-entropy through the output head in chunks of rows: for each chunk the
//! logits `[chunk, vocab]` come from one matmul, one kernel (a cube a row) turns them into the
//! row's loss and, in place, into the gradient of the summed loss with respect to the logits
//! (`softmax - onehot`), and one more matmul gives the hidden states' gradient. The whole
//! `[rows, vocab]` logits never exist at once. The matmuls run in the head's dtype (the
//! compute dtype), the softmax and the loss in f32.

use burn::backend::ops::{FloatTensorOps, IntTensorOps};
use burn::tensor::{DType, IntDType, Shape, Slice};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::cast;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::{contiguous_f32, contiguous_int, cube_count_2d, f32_buffer};
use crate::backend::LossOps;

type B = CubeBackend;

/// Bytes of logits a chunk may hold.
const CHUNK_BYTES: usize = 64 << 20;

/// Units a cube: each strides over the row's vocabulary.
const UNITS: u32 = 256;

/// Row `r` of `logits` `[rows, vocab]`: `losses[r] = logsumexp - logits[target]` (0 for a
/// negative target) and, with `grad`, `logits <- softmax - onehot(target)` (0 for a negative
/// target). Reductions are trees in shared memory, so the result does not depend on timing.
#[cube(launch)]
fn row_loss_kernel(
    logits: &mut [f32],
    targets: &[i32],
    losses: &mut [f32],
    vocab_size: u32,
    #[comptime] grad: bool,
) {
    let row = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize;
    if row >= losses.len() {
        terminate!();
    }
    let vocab = vocab_size as usize;
    let units = CUBE_DIM as usize;
    let unit = UNIT_POS as usize;
    let base = row * vocab;
    let mut shared = Shared::<[f32]>::new_slice(UNITS as usize);

    let mut local_max = f32::new(-3.0e38);
    let mut j = unit;
    while j < vocab {
        local_max = f32::max(local_max, logits[base + j]);
        j += units;
    }
    shared[unit] = local_max;
    sync_cube();
    let mut width = units / 2;
    while width > 0 {
        if unit < width {
            shared[unit] = f32::max(shared[unit], shared[unit + width]);
        }
        sync_cube();
        width /= 2;
    }
    let row_max = shared[0];
    sync_cube();

    let mut sum = 0.0f32;
    let mut j = unit;
    while j < vocab {
        sum += (logits[base + j] - row_max).exp();
        j += units;
    }
    shared[unit] = sum;
    sync_cube();
    let mut width = units / 2;
    while width > 0 {
        if unit < width {
            shared[unit] += shared[unit + width];
        }
        sync_cube();
        width /= 2;
    }
    let lse = row_max + shared[0].ln();

    let target = targets[row];
    if unit == 0 {
        let mut loss = 0.0f32;
        if target >= 0 {
            loss = lse - logits[base + target as usize];
        }
        losses[row] = loss;
    }
    if grad {
        // Every unit has read the target's logit above before any unit writes.
        sync_cube();
        let mut j = unit;
        while j < vocab {
            let mut d = 0.0f32;
            if target >= 0 {
                d = (logits[base + j] - lse).exp();
                if j == target as usize {
                    d -= 1.0f32;
                }
            }
            logits[base + j] = d;
            j += units;
        }
    }
}

/// Per-row loss of `hidden` `[rows, h]` through `weight` `[vocab, h]` for `targets` `[rows]`
/// (negative: no loss) and, with `grad`, the gradient of their sum with respect to `hidden`.
fn cross_entropy(
    hidden: CubeTensor,
    weight: CubeTensor,
    targets: CubeTensor,
    grad: bool,
) -> (CubeTensor, Option<CubeTensor>) {
    let [rows, _] = hidden.meta.shape().dims::<2>();
    let [vocab, _] = weight.meta.shape().dims::<2>();
    let chunk = (CHUNK_BYTES / (4 * vocab)).clamp(1, rows.max(1));
    let weight_t = B::float_transpose(weight.clone());
    let targets = contiguous_int(targets, IntDType::I32);
    let mut losses = Vec::new();
    let mut grads = Vec::new();
    for start in (0..rows).step_by(chunk) {
        let end = (start + chunk).min(rows);
        let h = B::float_slice(hidden.clone(), &[Slice::from(start..end)]);
        let t = B::int_slice(targets.clone(), &[Slice::from(start..end)]);
        let logits = contiguous_f32(B::float_matmul(h, weight_t.clone()));
        let loss = f32_buffer(&logits, vec![end - start]);
        let client = logits.client.clone();
        row_loss_kernel::launch(
            &client,
            cube_count_2d(end - start),
            CubeDim::new_1d(UNITS),
            logits.clone().into_buffer_arg(),
            contiguous_int(t, IntDType::I32).into_buffer_arg(),
            loss.clone().into_buffer_arg(),
            vocab as u32,
            grad,
        );
        losses.push(loss);
        if grad {
            // The gradient's matmul in the head's dtype, like the logits'.
            let d_logits = if weight.dtype == logits.dtype {
                logits
            } else {
                cast(logits, weight.dtype)
            };
            grads.push(B::float_matmul(d_logits, weight.clone()));
        }
    }
    let cat = |parts: Vec<CubeTensor>, shape: Shape, dtype: DType| {
        if parts.len() == 1 {
            parts.into_iter().next().expect("one part")
        } else if parts.is_empty() {
            B::float_zeros(shape, &hidden.device, dtype.into())
        } else {
            B::float_cat(parts, 0)
        }
    };
    let h = hidden.meta.shape()[1];
    let losses = cat(losses, Shape::new([rows]), DType::F32);
    let grad = grad.then(|| cat(grads, Shape::new([rows, h]), weight.dtype));
    (losses, grad)
}

impl LossOps for CubeBackend {
    fn cross_entropy(hidden: CubeTensor, weight: CubeTensor, targets: CubeTensor) -> CubeTensor {
        cross_entropy(hidden, weight, targets, false).0
    }

    fn cross_entropy_with_grad(
        hidden: CubeTensor,
        weight: CubeTensor,
        targets: CubeTensor,
    ) -> (CubeTensor, CubeTensor) {
        let (losses, grad) = cross_entropy(hidden, weight, targets, true);
        (losses, grad.expect("asked for the gradient"))
    }
}
