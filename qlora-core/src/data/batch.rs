//! Splits, epoch order and padded batches, all deterministic for a given seed.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::tokenize::Example;
use crate::model::IGNORE_INDEX;
use crate::model::TrainBatch;

/// Split off a held-out set of `round(fraction * len)` examples (at least one when the
/// fraction is positive and there are two or more examples), chosen by `seed`.
pub fn split_eval(
    examples: Vec<Example>,
    fraction: f64,
    seed: u64,
) -> (Vec<Example>, Vec<Example>) {
    if fraction <= 0.0 || examples.len() < 2 {
        return (examples, Vec::new());
    }
    let n = examples.len();
    let held = ((fraction * n as f64).round() as usize).clamp(1, n - 1);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed ^ 0xe7a1_5eed));
    let mut is_eval = vec![false; n];
    for &i in &order[..held] {
        is_eval[i] = true;
    }
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (example, e) in examples.into_iter().zip(is_eval) {
        if e {
            eval.push(example)
        } else {
            train.push(example)
        }
    }
    (train, eval)
}

/// The batches of one epoch, as indices into `examples`. Shuffled by `(seed, epoch)`; with
/// `group_by_length`, like transformers' `LengthGroupedSampler`: mega-batches of 50 batches
/// sorted by length, so each batch holds examples of similar length (less padding).
pub fn epoch_batches(
    lengths: &[usize],
    batch_size: usize,
    group_by_length: bool,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<usize>> {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ epoch);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut rng);
    if group_by_length {
        let mega = 50 * batch_size.max(1);
        for chunk in order.chunks_mut(mega) {
            chunk.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        }
    }
    order
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

/// Right-pad `examples` into one batch: padding gets `pad_id`, is not a token for attention,
/// and is ignored by the loss.
pub fn collate(examples: &[&Example], pad_id: u32) -> TrainBatch {
    let len = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let mut batch = TrainBatch {
        ids: Vec::with_capacity(examples.len()),
        labels: Vec::with_capacity(examples.len()),
        is_token: Vec::with_capacity(examples.len()),
    };
    for e in examples {
        let pad = len - e.ids.len();
        batch.ids.push(
            e.ids
                .iter()
                .copied()
                .chain(std::iter::repeat_n(pad_id, pad))
                .collect(),
        );
        batch.labels.push(
            e.labels
                .iter()
                .copied()
                .chain(std::iter::repeat_n(IGNORE_INDEX, pad))
                .collect(),
        );
        batch.is_token.push(
            std::iter::repeat_n(true, e.ids.len())
                .chain(std::iter::repeat_n(false, pad))
                .collect(),
        );
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(len: usize) -> Example {
        Example {
            ids: vec![1; len],
            labels: vec![1; len],
            truncated: false,
        }
    }

    #[test]
    fn splits_and_orders_are_deterministic() {
        let examples: Vec<Example> = (1..=20).map(example).collect();
        let (train, eval) = split_eval(examples.clone(), 0.1, 7);
        assert_eq!((train.len(), eval.len()), (18, 2));
        assert_eq!(split_eval(examples, 0.1, 7).1, eval);
        let lengths: Vec<usize> = (0..100).map(|i| (i * 37) % 91).collect();
        let a = epoch_batches(&lengths, 4, true, 1, 0);
        assert_eq!(a, epoch_batches(&lengths, 4, true, 1, 0));
        assert_ne!(a, epoch_batches(&lengths, 4, true, 1, 1));
        let mut all: Vec<usize> = a.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        // Grouped batches hold similar lengths.
        let spread: usize = a
            .iter()
            .map(|b| {
                let l: Vec<usize> = b.iter().map(|&i| lengths[i]).collect();
                l.iter().max().unwrap() - l.iter().min().unwrap()
            })
            .sum();
        let random = epoch_batches(&lengths, 4, false, 1, 0);
        let random_spread: usize = random
            .iter()
            .map(|b| {
                let l: Vec<usize> = b.iter().map(|&i| lengths[i]).collect();
                l.iter().max().unwrap() - l.iter().min().unwrap()
            })
            .sum();
        assert!(spread < random_spread / 2, "{spread} vs {random_spread}");
    }

    #[test]
    fn collate_pads_right() {
        let (a, b) = (example(3), example(1));
        let batch = collate(&[&a, &b], 9);
        assert_eq!(batch.ids[1], vec![1, 9, 9]);
        assert_eq!(batch.labels[1], vec![1, IGNORE_INDEX, IGNORE_INDEX]);
        assert_eq!(batch.is_token[1], vec![true, false, false]);
    }
}
