//! A preference run's steps and evaluations: a micro-batch's objective is the mean over its
//! pairs (TRL's); its derivative with respect to each sequence's log-probability weights that
//! sequence's token losses in one backward pass, and the step averages its micro-batches.

use std::path::Path;

use super::pairs::read_reference;
use super::progress::Progress;
use super::step::StepGradients;
use super::trainer::Trainer;
use crate::error::Result;
use crate::model::DropoutStream;
use crate::preference::{
    PairLogps, PreferenceSums, collate_pairs, evaluate_pairs, pair_objective, pair_rows,
    reference_logps, score_reference, sequence_logps,
};

impl Trainer {
    /// Score what the reference is compared on, once: the held-out pairs (DPO), and with
    /// `--precompute-ref` every training pair (read back from the checkpoint `resume` when it
    /// kept them), after which no reference pass runs a step.
    pub(super) fn score_references(
        &mut self,
        resume: Option<&Path>,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        let batching = self.config.batching();
        let pad = self.tokenizer.pad_id().unwrap_or(0);
        let precompute = self.config.preference.precompute_ref;
        let Some(run) = self.pairs.as_mut() else {
            return Ok(());
        };
        let Some(reference) = &run.reference else {
            return Ok(());
        };
        if !run.eval.is_empty() {
            run.eval_ref = Some(score_reference(reference, &run.eval, &batching, pad)?);
        }
        if precompute {
            let kept = match resume {
                Some(dir) => read_reference(dir, run.train.len())?,
                None => None,
            };
            let scores = match kept {
                Some(scores) => {
                    progress.message("the reference's log-probabilities: from the checkpoint");
                    scores
                }
                None => {
                    progress.message(&format!(
                        "scoring {} pairs with the reference (--precompute-ref)",
                        run.train.len()
                    ));
                    score_reference(reference, &run.train, &batching, pad)?
                }
            };
            run.train_ref = Some(scores);
            run.reference = None;
        }
        Ok(())
    }

    /// [`Trainer::accumulate`] for a preference run: each micro-batch's objective (the mean
    /// over its pairs) and its gradients; `targets` counts the micro-batches, so the step
    /// averages them.
    pub(super) fn accumulate_pairs(&mut self) -> Result<StepGradients> {
        let mut out = StepGradients::empty(self.zero_grads());
        let config = self.config.preference.clone();
        let pad = self.tokenizer.pad_id().unwrap_or(0);
        for _ in 0..self.config.grad_accum {
            let rows = self.next_rows();
            let (world, rank) = (self.world() as u64, self.collective.rank() as u64);
            let stream = DropoutStream {
                seed: self.config.seed,
                step: self.position.micro_step * world + rank,
            };
            self.position.micro_step += 1;
            let Some(rows) = rows else {
                continue;
            };
            let run = self.pairs.as_ref().expect("a preference run");
            let batch = collate_pairs(&rows, &run.train, pad);
            let reference: Option<Vec<[f64; 2]>> = match (&run.train_ref, &run.reference) {
                (Some(scores), _) => Some(batch.pairs.iter().map(|&i| scores[i]).collect()),
                (None, Some(model)) => Some(reference_logps(model, &batch)?),
                (None, None) => None,
            };
            let mut objective = None;
            let mut weigh = |losses: &[f32]| -> Result<Vec<f32>> {
                let pairs: Vec<PairLogps> = sequence_logps(&batch, losses)
                    .into_iter()
                    .enumerate()
                    .map(|(k, policy)| PairLogps {
                        policy,
                        reference: reference.as_ref().map(|r| r[k]),
                    })
                    .collect();
                let found = pair_objective(&config, &pairs)?;
                // ∂objective/∂loss_t = -∂objective/∂Σlog p of the token's sequence.
                let weights = batch
                    .sequence_of
                    .iter()
                    .map(|s| s.map_or(0.0, |s| -found.d_logps[s / 2][s % 2] as f32))
                    .collect();
                objective = Some(found);
                Ok(weights)
            };
            let result = self.model.weighted_loss_and_grads(
                &batch.batch,
                self.config.gradient_checkpointing,
                Some(&stream),
                Some(&mut weigh),
            )?;
            let found = objective.expect("weighed");
            out.add(result.grads.grads, found.loss, 1, &batch.batch);
            out.preference.add(&found.metrics);
        }
        Ok(out)
    }

    /// The preference loss and metrics of the held-out pairs (split across the ranks), summed
    /// over pairs.
    pub(super) fn eval_pairs(&self) -> Result<Option<PreferenceSums>> {
        let Some(run) = &self.pairs else {
            return Ok(None);
        };
        if run.eval.is_empty() {
            return Ok(None);
        }
        let indices: Vec<usize> = (0..run.eval.len()).collect();
        let mine = self.my_share(&indices);
        let mut sums = PreferenceSums::default();
        if !mine.is_empty() {
            let rows = pair_rows(&run.eval, &mine, &self.config.batching());
            let pad = self.tokenizer.pad_id().unwrap_or(0);
            sums = evaluate_pairs(
                &self.model,
                run.eval_ref.as_deref(),
                &run.eval,
                &rows,
                &self.config.preference,
                pad,
            )?;
        }
        let mut values = sums.to_array();
        self.sum_over_ranks(&mut values);
        Ok(Some(PreferenceSums::from_array(values)))
    }
}
