//! What a training step feeds the model.

/// Token ids, labels (`IGNORE_INDEX` where the loss does not count) and which positions are
/// real tokens (false = padding), all `[batch][seq]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainBatch {
    pub ids: Vec<Vec<u32>>,
    pub labels: Vec<Vec<i64>>,
    pub is_token: Vec<Vec<bool>>,
}
