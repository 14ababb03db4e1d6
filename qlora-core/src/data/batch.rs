//! Splits, epoch order and padded batches, all deterministic for a given seed.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::tokenize::Example;
use crate::model::IGNORE_INDEX;
use crate::model::TrainBatch;

/// Split off a held-out set of `round(fraction * len)` examples (at least one when the
/// fraction is positive and there are two or more examples), chosen by `seed`.
pub fn split_eval<T>(examples: Vec<T>, fraction: f64, seed: u64) -> (Vec<T>, Vec<T>) {
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

/// How an epoch's examples become micro-batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Rows a micro-batch holds.
    pub batch_size: usize,
    /// Batch examples of similar length together (without packing).
    pub group_by_length: bool,
    /// Pack whole examples into rows of up to this many tokens.
    pub packing: Option<usize>,
}

/// Examples a packing window holds: rows are filled best-fit over this many at a time, so
/// they come out nearly full while an epoch's order stays shuffled.
pub const PACKING_WINDOW: usize = 1024;

/// Pack the examples `order` (their `lengths`) into rows of at most `max_len` tokens, best-fit
/// decreasing: longest first, each into the fullest row it still fits, else a new row. An
/// example longer than `max_len` gets a row of its own (and is cut to fit when collated).
pub fn pack(lengths: &[usize], order: &[usize], max_len: usize) -> Vec<Vec<usize>> {
    let mut sorted = order.to_vec();
    sorted.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut rows: Vec<Vec<usize>> = Vec::new();
    // Free space -> rows with that much free space.
    let mut free: std::collections::BTreeMap<usize, Vec<usize>> = std::collections::BTreeMap::new();
    for i in sorted {
        let len = lengths[i].min(max_len);
        let fit = free.range(len..).next().map(|(&space, _)| space);
        let row = match fit {
            Some(space) => {
                let rows_with = free.get_mut(&space).expect("present");
                let row = rows_with.pop().expect("non-empty");
                if rows_with.is_empty() {
                    free.remove(&space);
                }
                free.entry(space - len).or_default().push(row);
                row
            }
            None => {
                rows.push(Vec::new());
                free.entry(max_len - len).or_default().push(rows.len() - 1);
                rows.len() - 1
            }
        };
        rows[row].push(i);
    }
    rows
}

/// The micro-batches of one epoch, each a list of rows of example indices (one example a row
/// unless packing). Shuffled by `(seed, epoch)`; every example appears once.
pub fn epoch_plan(
    lengths: &[usize],
    batching: &Batching,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<Vec<usize>>> {
    let Some(max_len) = batching.packing else {
        return epoch_batches(
            lengths,
            batching.batch_size,
            batching.group_by_length,
            seed,
            epoch,
        )
        .into_iter()
        .map(|batch| batch.into_iter().map(|i| vec![i]).collect())
        .collect();
    };
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ epoch);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut rng);
    let mut rows = Vec::new();
    for window in order.chunks(PACKING_WINDOW) {
        let mut packed = pack(lengths, window, max_len);
        packed.shuffle(&mut rng);
        rows.extend(packed);
    }
    rows.chunks(batching.batch_size.max(1))
        .map(<[Vec<usize>]>::to_vec)
        .collect()
}

/// Rows of examples into one batch: each row the concatenation of its examples (each cut to
/// `max_len` tokens when given), right-padded to the longest row. Padding gets `pad_id`, is
/// not a token for attention, and is ignored by the loss.
pub fn collate_rows(rows: &[Vec<&Example>], pad_id: u32, max_len: Option<usize>) -> TrainBatch {
    let cut = |e: &Example| max_len.map_or(e.ids.len(), |m| e.ids.len().min(m));
    let len = rows
        .iter()
        .map(|row| row.iter().map(|e| cut(e)).sum::<usize>())
        .max()
        .unwrap_or(0);
    let mut batch = TrainBatch::new(Vec::new(), Vec::new(), Vec::new());
    for row in rows {
        let (mut ids, mut labels, mut segments) = (Vec::new(), Vec::new(), Vec::new());
        for (s, e) in row.iter().enumerate() {
            let n = cut(e);
            ids.extend_from_slice(&e.ids[..n]);
            labels.extend_from_slice(&e.labels[..n]);
            segments.extend(std::iter::repeat_n(s as u32, n));
        }
        let tokens = ids.len();
        let pad = len - tokens;
        ids.extend(std::iter::repeat_n(pad_id, pad));
        labels.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
        segments.extend(std::iter::repeat_n(row.len() as u32, pad));
        batch.ids.push(ids);
        batch.labels.push(labels);
        batch.is_token.push(
            std::iter::repeat_n(true, tokens)
                .chain(std::iter::repeat_n(false, pad))
                .collect(),
        );
        batch.segments.push(segments);
    }
    batch
}

/// Right-pad `examples` into one batch, an example a row.
pub fn collate(examples: &[&Example], pad_id: u32) -> TrainBatch {
    let rows: Vec<Vec<&Example>> = examples.iter().map(|e| vec![*e]).collect();
    collate_rows(&rows, pad_id, None)
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
    fn packing_fills_rows_and_keeps_every_example() {
        let lengths: Vec<usize> = (0..500).map(|i| 5 + (i * 7919) % 300).collect();
        let batching = Batching {
            batch_size: 2,
            group_by_length: false,
            packing: Some(1024),
        };
        let plan = epoch_plan(&lengths, &batching, 3, 0);
        assert_eq!(plan, epoch_plan(&lengths, &batching, 3, 0));
        let rows: Vec<&Vec<usize>> = plan.iter().flatten().collect();
        let mut all: Vec<usize> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        all.sort();
        assert_eq!(all, (0..500).collect::<Vec<_>>());
        let used: usize = lengths.iter().sum();
        for row in &rows {
            assert!(row.iter().map(|&i| lengths[i]).sum::<usize>() <= 1024);
        }
        // Nearly full: within a few percent of the ideal row count.
        let ideal = used.div_ceil(1024);
        assert!(
            rows.len() <= ideal + ideal / 20 + 1,
            "{} rows, ideal {ideal}",
            rows.len()
        );
        // An over-long example gets a row of its own.
        assert_eq!(
            pack(&[3000, 10, 20], &[0, 1, 2], 1024),
            vec![vec![0], vec![2, 1]]
        );
    }

    #[test]
    fn packed_rows_mark_their_examples() {
        let (a, b) = (example(3), example(2));
        let batch = collate_rows(&[vec![&a, &b], vec![&b]], 9, None);
        assert_eq!(batch.segments[0], vec![0, 0, 0, 1, 1]);
        assert_eq!(batch.segments[1], vec![0, 0, 1, 1, 1]);
        assert_eq!(batch.is_token[1], vec![true, true, false, false, false]);
        assert_eq!(batch.rope_positions(), vec![0, 1, 2, 0, 1, 0, 1, 0, 1, 2]);
        // No label crosses from one example into the next.
        let next = batch.next_labels();
        assert_eq!(next[2], IGNORE_INDEX);
        assert_eq!(next[0], 1);
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
