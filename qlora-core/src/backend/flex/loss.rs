//! Cross-entropy through the output head on the CPU, in chunks of rows: only rows with a
//! target go through the head, the `[rows, vocab]` logits exist a chunk at a time, and the
//! gradient with respect to the hidden states comes out of the same pass.

use burn::backend::flex::FlexTensor;
use burn::backend::{Flex, TensorMetadata};
use burn::tensor::DType;
use rayon::prelude::*;

use super::kernel::{View, all_threads, exp, floats, ints, matmul, max, multiversion, sum, tensor};
use crate::backend::{LossOps, generic};

/// Rows of logits held at once.
const CHUNK: usize = 64;

fn cross_entropy(
    hidden: FlexTensor,
    weight: FlexTensor,
    targets: FlexTensor,
    grad: bool,
) -> (FlexTensor, Option<FlexTensor>) {
    let shape = hidden.shape();
    let (rows, h) = (shape[0], shape[1]);
    let vocab = weight.shape()[0];
    let (hs, ws) = (floats(&hidden), floats(&weight));
    let targets = ints(&targets);
    let counted: Vec<usize> = (0..rows).filter(|&r| targets[r] >= 0).collect();
    let mut losses = vec![0f32; rows];
    let mut d_hidden = grad.then(|| vec![0f32; rows * h]);
    // The rows of one chunk gathered contiguously, their logits, their gradient.
    let mut gathered = vec![0f32; CHUNK * h];
    let mut logits = vec![0f32; CHUNK * vocab];
    let mut d_chunk = vec![0f32; CHUNK * h];
    let w_view = View::rows(&ws, h, 0..vocab, 0, h);
    for chunk in counted.chunks(CHUNK) {
        let n = chunk.len();
        for (dst, &r) in gathered.chunks_exact_mut(h).zip(chunk) {
            dst.copy_from_slice(&hs[r * h..(r + 1) * h]);
        }
        let h_view = View::rows(&gathered, h, 0..n, 0, h);
        matmul(
            &mut logits,
            vocab,
            h_view,
            w_view.t(),
            1.0,
            false,
            all_threads(),
        );
        let row_losses: Vec<f32> = logits[..n * vocab]
            .par_chunks_mut(vocab)
            .zip(chunk.par_iter())
            .map(|(row, &r)| softmax_loss(row, targets[r] as usize, grad))
            .collect();
        for (&r, loss) in chunk.iter().zip(row_losses) {
            losses[r] = loss;
        }
        if let Some(d_hidden) = &mut d_hidden {
            let p_view = View::rows(&logits, vocab, 0..n, 0, vocab);
            matmul(&mut d_chunk, h, p_view, w_view, 1.0, false, all_threads());
            for (src, &r) in d_chunk.chunks_exact(h).zip(chunk) {
                d_hidden[r * h..(r + 1) * h].copy_from_slice(src);
            }
        }
    }
    (
        tensor(losses, [rows]),
        d_hidden.map(|d| tensor(d, [rows, h])),
    )
}

multiversion! {
    /// The loss of one row of logits for `target`; with `grad` the row becomes
    /// `softmax - onehot(target)`.
    fn softmax_loss(row: &mut [f32], target: usize, grad: bool) -> f32 {
        let m = max(row);
        let picked = row[target];
        for v in row.iter_mut() {
            *v = exp(*v - m);
        }
        let total = sum(row);
        if grad {
            let inv = 1.0 / total;
            for v in row.iter_mut() {
                *v *= inv;
            }
            row[target] -= 1.0;
        }
        m + total.ln() - picked
    }
}

impl LossOps for Flex {
    fn cross_entropy(hidden: FlexTensor, weight: FlexTensor, targets: FlexTensor) -> FlexTensor {
        if weight.dtype() != DType::F32 {
            // A 16-bit head: the tensor-op path (the chunked kernel is f32).
            return generic::loss::cross_entropy::<Self>(hidden, weight, targets, false).0;
        }
        cross_entropy(hidden, weight, targets, false).0
    }

    fn cross_entropy_with_grad(
        hidden: FlexTensor,
        weight: FlexTensor,
        targets: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        let (losses, grad) = if weight.dtype() != DType::F32 {
            generic::loss::cross_entropy::<Self>(hidden, weight, targets, true)
        } else {
            cross_entropy(hidden, weight, targets, true)
        };
        (losses, grad.expect("asked for the gradient"))
    }
}
