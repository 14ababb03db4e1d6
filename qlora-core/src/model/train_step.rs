//! The loss of a batch and every adapter's gradients: each layer forward keeping what its
//! backward pass reads (`layer.rs`), the loss and its gradient through the head in one pass,
//! then each layer backward (`layer_train.rs`), last to first.

use burn::tensor::Tensor;

use super::adapter::{AdapterGrad, DropoutStream};
use super::batch::TrainBatch;
use super::causal_lm::CausalLm;
use crate::backend::ops;
use crate::error::{Error, Result};
use crate::profile::{self, Phase};

/// Gradients of `A` and `B` for every adapter, in the order of [`CausalLm::adapters`].
#[derive(Debug, Clone)]
pub struct AdapterGrads {
    /// The adapters' module paths.
    pub paths: Vec<String>,
    /// `(dA, dB)` of each.
    pub grads: Vec<AdapterGrad>,
}

/// What one batch's forward and backward passes give.
#[derive(Debug, Clone)]
pub struct LossAndGrads {
    /// Sum of the token losses of the batch (the gradients are of this sum).
    pub loss_sum: f64,
    /// Tokens with a target.
    pub tokens: usize,
    /// Every adapter's gradients.
    pub grads: AdapterGrads,
}

/// Weights of the token losses for a backward pass: given every position's token loss
/// (`-log p` of its next-token target, 0 where it has none), the derivative of the objective
/// with respect to each (the gradients are then of `Σ weight · loss`).
pub type LossWeights<'a> = dyn FnMut(&[f32]) -> Result<Vec<f32>> + 'a;

impl CausalLm {
    /// Loss and adapter gradients of `batch`, keeping only checkpoints of the layers with
    /// `checkpointing`. `dropout` enables adapter dropout (training).
    pub fn loss_and_grads(
        &self,
        batch: &TrainBatch,
        checkpointing: bool,
        dropout: Option<&DropoutStream>,
    ) -> Result<LossAndGrads> {
        self.weighted_loss_and_grads(batch, checkpointing, dropout, None)
    }

    /// [`CausalLm::loss_and_grads`] of an objective of the token losses: `weigh` gets every
    /// position's token loss and gives the objective's derivative with respect to each, which
    /// scales that position's gradient through the head (a token's gradient there depends on
    /// its own row only, so this is exact). Without `weigh` every weight is 1: the summed loss.
    pub fn weighted_loss_and_grads(
        &self,
        batch: &TrainBatch,
        checkpointing: bool,
        dropout: Option<&DropoutStream>,
        weigh: Option<&mut LossWeights>,
    ) -> Result<LossAndGrads> {
        if self.adapters().is_empty() {
            return Err(Error::invalid("the model has no LoRA adapters to train"));
        }
        let inputs = self.batch_inputs(batch)?;
        let (targets, tokens) = self.targets(batch)?;

        let mut x = self.embed(&batch.ids)?;
        let mut kept = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let context = inputs.context(layer.self_attn.rope, dropout);
            let (y, k) = layer.forward_keeping(x, &context, checkpointing);
            kept.push(k);
            x = y;
        }

        // The head: loss and the gradient of the last hidden state in one pass.
        let normed = self.norm.forward(x.clone());
        let (losses, d_normed) = {
            let _span = profile::span(Phase::HeadAndLoss);
            ops::cross_entropy_with_grad(normed, self.head_weight()?, &targets)
        };
        let (loss_sum, d_normed) = match weigh {
            // `sum_dim`, not `sum`: the latter may add with atomics (in any order) on GPU
            // backends.
            None => (f64::from(losses.sum_dim(0).into_scalar::<f32>()), d_normed),
            Some(weigh) => {
                let losses: Vec<f32> = losses
                    .into_data()
                    .try_into_vec_as::<f32>()
                    .map_err(|e| Error::invalid(format!("token losses: {e:?}")))?;
                let weights = weigh(&losses)?;
                if weights.len() != losses.len() {
                    return Err(Error::invalid("a weight for every position is needed"));
                }
                let sum = losses.iter().map(|&l| f64::from(l)).sum();
                let n = weights.len();
                let weights = Tensor::<2>::from_data(
                    burn::tensor::TensorData::new(weights, [n, 1]),
                    &self.device,
                );
                let dtype = d_normed.dtype();
                (sum, d_normed * weights.cast(dtype))
            }
        };
        let mut dy = self.norm.backward(x, d_normed);

        let mut per_layer = Vec::with_capacity(self.layers.len());
        for (index, (layer, kept)) in self.layers.iter().zip(kept).enumerate().rev() {
            let context = inputs.context(layer.self_attn.rope, dropout);
            let activations = kept.activations(layer, &context);
            let (grads, dx) = layer.backward(activations, dy, &context, index > 0)?;
            per_layer.push(grads);
            dy = match dx {
                Some(dx) => dx,
                None => break,
            };
        }
        per_layer.reverse();
        let (paths, _): (Vec<String>, Vec<_>) = self.adapters().into_iter().unzip();
        let grads: Vec<AdapterGrad> = per_layer
            .into_iter()
            .flatten()
            .map(|(_, grad)| grad)
            .collect();
        if grads.len() != paths.len() {
            return Err(Error::invalid("an adapter received no gradient"));
        }
        Ok(LossAndGrads {
            loss_sum,
            tokens,
            grads: AdapterGrads { paths, grads },
        })
    }
}
