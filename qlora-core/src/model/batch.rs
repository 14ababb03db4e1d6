//! What a training step (or a packed evaluation) feeds the model.

/// Label value of positions that do not count in the loss (as in PyTorch / transformers).
pub const IGNORE_INDEX: i64 = -100;

/// Rows of tokens, `[batch][seq]` each: ids, labels (`IGNORE_INDEX` where the loss does not
/// count), which positions are real tokens (false = padding), and which example of its row each
/// position belongs to. A row packs one or more examples; each attends only to itself, its
/// rotary positions start at 0, and no label crosses from one example into the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainBatch {
    /// The token ids of every row.
    pub ids: Vec<Vec<u32>>,
    /// Every position's label ([`IGNORE_INDEX`]: none).
    pub labels: Vec<Vec<i64>>,
    /// Whether each position is a token (false: padding).
    pub is_token: Vec<Vec<bool>>,
    /// Which example of its row each position belongs to.
    pub segments: Vec<Vec<u32>>,
}

impl TrainBatch {
    /// Rows holding one example each.
    pub fn new(ids: Vec<Vec<u32>>, labels: Vec<Vec<i64>>, is_token: Vec<Vec<bool>>) -> Self {
        let segments = ids.iter().map(|row| vec![0; row.len()]).collect();
        TrainBatch {
            ids,
            labels,
            is_token,
            segments,
        }
    }

    /// Positions in the batch, padding included.
    pub fn positions(&self) -> usize {
        self.ids.iter().map(Vec::len).sum()
    }

    /// Real tokens (never padding).
    pub fn tokens(&self) -> usize {
        self.is_token.iter().flatten().filter(|t| **t).count()
    }

    /// For every position, the position inside its example (rotary embedding restarts at 0 for
    /// each example of a packed row).
    pub fn rope_positions(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.positions());
        for row in &self.segments {
            let mut position = 0;
            for (t, segment) in row.iter().enumerate() {
                if t > 0 && row[t - 1] != *segment {
                    position = 0;
                }
                out.push(position);
                position += 1;
            }
        }
        out
    }

    /// The sequence id attention gives each position: its example, or -1 for padding (which
    /// no token attends to).
    pub fn sequence_ids(&self) -> Vec<i64> {
        self.segments
            .iter()
            .zip(&self.is_token)
            .flat_map(|(segments, is_token)| {
                segments
                    .iter()
                    .zip(is_token)
                    .map(|(&s, &t)| if t { i64::from(s) } else { -1 })
            })
            .collect()
    }

    /// The next-token target of every position: `labels[t + 1]` when position `t + 1` is a
    /// token of the same example, else [`IGNORE_INDEX`].
    pub fn next_labels(&self) -> Vec<i64> {
        let mut out = Vec::with_capacity(self.positions());
        for ((labels, segments), is_token) in
            self.labels.iter().zip(&self.segments).zip(&self.is_token)
        {
            for t in 0..labels.len() {
                let next = t + 1;
                let same = next < labels.len() && is_token[next] && segments[next] == segments[t];
                out.push(if same { labels[next] } else { IGNORE_INDEX });
            }
        }
        out
    }
}
