//! One optimizer step: micro-batches accumulated, the loss over the whole step's targets, the
//! global gradient norm and clipping, the update.

use std::time::Instant;

use burn::tensor::Tensor;

use super::progress::StepMetrics;
use super::trainer::Trainer;
use crate::error::{Error, Result};
use crate::model::{DropoutStream, TrainBatch};
use crate::preference::PreferenceSums;
use crate::profile::{self, Phase};

/// The micro-batches of one optimizer step, summed: the gradients of the summed token loss
/// (divide by `targets` for the step's mean), and what they held.
pub struct StepGradients {
    /// `(dA, dB)` of every adapter, summed over the micro-batches.
    pub grads: Vec<(Tensor<2>, Tensor<2>)>,
    /// The summed token loss.
    pub loss_sum: f64,
    /// Tokens with a target: the step's loss is `loss_sum / targets`, whatever the
    /// micro-batches (not a mean of per-micro-batch means).
    pub targets: usize,
    /// Real tokens, and all positions (padding included).
    pub tokens: u64,
    /// Positions of the micro-batches, padding included.
    pub positions: u64,
    /// A preference run's metrics, summed over its pairs.
    pub preference: PreferenceSums,
}

impl StepGradients {
    /// Nothing accumulated yet: `zero` gradients.
    pub fn empty(zero: Vec<(Tensor<2>, Tensor<2>)>) -> Self {
        StepGradients {
            grads: zero,
            loss_sum: 0.0,
            targets: 0,
            tokens: 0,
            positions: 0,
            preference: PreferenceSums::default(),
        }
    }

    /// Add one micro-batch: its gradients, loss, targets and what `batch` held.
    pub fn add(
        &mut self,
        grads: Vec<(Tensor<2>, Tensor<2>)>,
        loss: f64,
        targets: usize,
        batch: &TrainBatch,
    ) {
        let sum = std::mem::take(&mut self.grads);
        self.grads = sum
            .into_iter()
            .zip(grads)
            .map(|((a, b), (ga, gb))| (a + ga, b + gb))
            .collect();
        self.loss_sum += loss;
        self.targets += targets;
        self.tokens += batch.tokens() as u64;
        self.positions += batch.positions() as u64;
    }
}

impl Trainer {
    /// Run this rank's rows of the next `grad_accum` micro-batches forward and backward and
    /// sum their gradients.
    pub fn accumulate(&mut self) -> Result<StepGradients> {
        if self.pairs.is_some() {
            return self.accumulate_pairs();
        }
        let mut out = StepGradients::empty(self.zero_grads());
        for _ in 0..self.config.grad_accum {
            let batch = self.next_batch();
            // Each rank's rows draw their own dropout masks (one process: the stream as ever).
            let (world, rank) = (self.world() as u64, self.collective.rank() as u64);
            let stream = DropoutStream {
                seed: self.config.seed,
                step: self.position.micro_step * world + rank,
            };
            self.position.micro_step += 1;
            let Some(batch) = batch else {
                continue;
            };
            let result = self.model.loss_and_grads(
                &batch,
                self.config.gradient_checkpointing,
                Some(&stream),
            )?;
            out.add(result.grads.grads, result.loss_sum, result.tokens, &batch);
        }
        Ok(out)
    }

    /// One optimizer step: `grad_accum` micro-batches, clipping, the update.
    pub fn step(&mut self) -> Result<StepMetrics> {
        Ok(self.step_or_stop(false)?.0)
    }

    /// [`Trainer::step`], with this rank's request to stop after it (`stop`); returns the
    /// step's metrics and whether any rank asked to stop, so that all stop after the same step.
    pub(super) fn step_or_stop(&mut self, stop: bool) -> Result<(StepMetrics, bool)> {
        let start = Instant::now();
        let local = self.accumulate()?;
        let (
            StepGradients {
                grads,
                loss_sum,
                targets,
                tokens,
                positions,
                preference,
            },
            stop,
        ) = self.reduce(local, stop);
        let step = self.position.step;
        let lr = self.config.lr
            * self
                .config
                .schedule
                .factor(step, self.total_steps, self.warmup);
        let loss = if targets > 0 {
            loss_sum / targets as f64
        } else {
            0.0
        };
        if !loss.is_finite() {
            return Err(Error::invalid(format!(
                "the loss became {loss} at step {}; stopping (the last checkpoint is kept)",
                step + 1
            )));
        }
        let mut grad_norm = 0.0;
        if targets > 0 {
            let _span = profile::span(Phase::Optimizer);
            // The gradient of the mean token loss over the whole accumulated batch is the sum
            // times `1 / targets`: the scale (and clipping) ride in the update.
            let scale = 1.0 / targets as f64;
            // Sums along dimensions, never `sum()`: on the GPU backends a whole-tensor sum may
            // add with atomics in any order, and the norm (through clipping) must not change
            // from one run to the next.
            let squares: Vec<Tensor<1>> = grads
                .iter()
                .flat_map(|(a, b)| [a, b])
                .map(|g| g.clone().powi_scalar(2).sum_dim(1).sum_dim(0).reshape([1]))
                .collect();
            // One read back for the whole norm.
            let squares = f64::from(Tensor::cat(squares, 0).sum_dim(0).into_scalar::<f32>());
            grad_norm = squares.sqrt() * scale;
            if !grad_norm.is_finite() {
                return Err(Error::invalid(format!(
                    "the gradient norm became {grad_norm} at step {}; stopping (the last checkpoint is kept)",
                    step + 1
                )));
            }
            let max = self.config.max_grad_norm;
            let clip = if max > 0.0 && grad_norm > max {
                max / (grad_norm + 1e-6)
            } else {
                1.0
            };
            self.optimizer
                .step_adapters(&mut self.model, grads, scale * clip, lr);
        }
        self.position.step += 1;
        self.position.tokens += tokens;
        let seconds = start.elapsed().as_secs_f64();
        let metrics = StepMetrics {
            step: self.position.step,
            loss,
            lr,
            grad_norm,
            tokens: self.position.tokens,
            tokens_per_s: tokens as f64 / seconds.max(1e-9),
            padding: 1.0 - tokens as f64 / positions.max(1) as f64,
            eval_loss: None,
            mc_acc: None,
            mc_acc_norm: None,
            preference: (preference.pairs > 0.0).then(|| preference.means()),
            eval_preference: None,
            device_memory_bytes: self
                .model
                .device
                .memory_pool_usage()
                .map(|u| u.bytes_in_use),
            peak_rss_bytes: crate::resident::peak_rss(),
        };
        Ok((metrics, stop))
    }
}
