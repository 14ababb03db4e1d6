//! Pairs through a model: batches whose rows hold whole pairs (prompt + chosen and prompt +
//! rejected, each its own segment, so each attends only to itself), which sequence each
//! position's token loss belongs to, every sequence's summed completion log-probability, and
//! a set of pairs scored (the loss and metrics of held-out pairs).

use super::objective::{PairLogps, PreferenceConfig, PreferenceSums, SeqLogp, pair_objective};
use crate::data::{Batching, PairExample, collate_rows, pack};
use crate::error::Result;
use crate::model::{CausalLm, IGNORE_INDEX, TrainBatch};

/// A batch of pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct PairBatch {
    /// The rows: each pair's chosen then rejected sequence, one segment each.
    pub batch: TrainBatch,
    /// For every position, the sequence its next-token loss counts toward: `2k` for the
    /// batch's `k`-th pair's chosen, `2k + 1` for its rejected; none for prompts and padding.
    pub sequence_of: Vec<Option<usize>>,
    /// The pairs of the batch, in order (indices into the caller's list).
    pub pairs: Vec<usize>,
}

/// Rows of pair indices (`rows`) of `pairs` as a batch, padded with `pad`.
pub fn collate_pairs(rows: &[Vec<usize>], pairs: &[PairExample], pad: u32) -> PairBatch {
    let examples: Vec<Vec<_>> = rows
        .iter()
        .map(|row| {
            row.iter()
                .flat_map(|&i| [&pairs[i].chosen, &pairs[i].rejected])
                .collect()
        })
        .collect();
    let batch = collate_rows(&examples, pad, None);
    let next = batch.next_labels();
    let len = batch.ids.first().map_or(0, Vec::len);
    let mut order = Vec::new();
    let mut sequence_of = Vec::with_capacity(next.len());
    for (r, row) in rows.iter().enumerate() {
        let first = order.len();
        order.extend_from_slice(row);
        for t in 0..len {
            let segment = batch.segments[r][t] as usize;
            let counts = next[r * len + t] != IGNORE_INDEX && segment < 2 * row.len();
            sequence_of.push(counts.then_some(2 * first + segment));
        }
    }
    PairBatch {
        batch,
        sequence_of,
        pairs: order,
    }
}

/// Every pair's sequences from per-position token losses (`-log p`): summed log-probability
/// and completion tokens, chosen then rejected.
pub fn sequence_logps(batch: &PairBatch, losses: &[f32]) -> Vec<[SeqLogp; 2]> {
    let mut out = vec![[SeqLogp::default(); 2]; batch.pairs.len()];
    for (&loss, sequence) in losses.iter().zip(&batch.sequence_of) {
        if let Some(s) = sequence {
            let seq = &mut out[s / 2][s % 2];
            seq.sum -= f64::from(loss);
            seq.tokens += 1;
        }
    }
    out
}

/// The summed log-probabilities `model` gives each pair of `batch` (forward only: a frozen
/// reference).
pub fn reference_logps(model: &CausalLm, batch: &PairBatch) -> Result<Vec<[f64; 2]>> {
    let losses = model.position_losses(&batch.batch)?;
    Ok(sequence_logps(batch, &losses)
        .into_iter()
        .map(|[c, r]| [c.sum, r.sum])
        .collect())
}

/// The loss and metrics of `config`'s method over `pairs` (held-out pairs), batched as
/// `rows` (rows of pair indices, a micro-batch each): the policy's log-probabilities from
/// `policy`, the reference's from `reference` (indexed like `pairs`) when the method has one.
/// Each pair is its own objective (ORPO's NLL over its own chosen tokens), so the sums add up
/// across ranks: the mean loss is `loss / pairs`.
pub fn evaluate_pairs(
    policy: &CausalLm,
    reference: Option<&[[f64; 2]]>,
    pairs: &[PairExample],
    rows: &[Vec<Vec<usize>>],
    config: &PreferenceConfig,
    pad: u32,
) -> Result<PreferenceSums> {
    let mut sums = PreferenceSums::default();
    for micro in rows {
        let batch = collate_pairs(micro, pairs, pad);
        let losses = policy.position_losses(&batch.batch)?;
        for (k, logps) in sequence_logps(&batch, &losses).into_iter().enumerate() {
            let pair = PairLogps {
                policy: logps,
                reference: reference.map(|r| r[batch.pairs[k]]),
            };
            sums.add(&pair_objective(config, &[pair])?.metrics);
        }
    }
    Ok(sums)
}

/// The micro-batches that score `indices` of `pairs` in `batching`'s rows (packed, or a pair a
/// row), in order.
pub fn pair_rows(
    pairs: &[PairExample],
    indices: &[usize],
    batching: &Batching,
) -> Vec<Vec<Vec<usize>>> {
    let rows: Vec<Vec<usize>> = match batching.packing {
        Some(max_len) => {
            let lengths: Vec<usize> = pairs.iter().map(PairExample::len).collect();
            pack(&lengths, indices, max_len)
        }
        None => indices.iter().map(|&i| vec![i]).collect(),
    };
    rows.chunks(batching.batch_size.max(1))
        .map(<[Vec<usize>]>::to_vec)
        .collect()
}

/// The reference's log-probabilities of every pair of `pairs`.
pub fn score_reference(
    reference: &CausalLm,
    pairs: &[PairExample],
    batching: &Batching,
    pad: u32,
) -> Result<Vec<[f64; 2]>> {
    let indices: Vec<usize> = (0..pairs.len()).collect();
    let mut out = vec![[0.0; 2]; pairs.len()];
    for micro in pair_rows(pairs, &indices, batching) {
        let batch = collate_pairs(&micro, pairs, pad);
        for (k, logps) in reference_logps(reference, &batch)?.into_iter().enumerate() {
            out[batch.pairs[k]] = logps;
        }
    }
    Ok(out)
}

/// A copy of `model` without its adapters: the base, as a reference (the weights are shared).
pub fn without_adapters(model: &CausalLm) -> CausalLm {
    let mut base = model.clone();
    for (_, linear) in base.linears_mut() {
        linear.lora = None;
    }
    base
}
