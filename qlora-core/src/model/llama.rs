use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::attention::AttentionContext;
use super::frozen_linear::FrozenLinear;
use super::kv_cache::KvCache;
use super::layer::DecoderLayer;
use super::rms_norm::RmsNorm;
use super::rope::RotaryEmbedding;
use crate::config::LlamaConfig;
use crate::error::{Error, Result};

/// Label value of positions that do not count in the loss (as in PyTorch / transformers).
pub const IGNORE_INDEX: i64 = -100;

/// A `LlamaForCausalLM`.
#[derive(Clone, Debug)]
pub struct Llama {
    pub config: LlamaConfig,
    pub embed_tokens: Tensor<2>,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    pub lm_head: FrozenLinear,
    pub rope: RotaryEmbedding,
    pub device: Device,
}

/// Sum of token losses and how many tokens counted.
#[derive(Clone, Debug)]
pub struct LossSum {
    pub sum: Tensor<1>,
    pub tokens: usize,
}

impl Llama {
    /// Hidden states after the final norm, `[batch, seq, hidden]`, for token `ids`
    /// (`batch` rows of equal length). `is_token` marks real tokens (false = padding); without
    /// it every position is a token. With a `cache`, `ids` continue the cached sequence.
    pub fn hidden_states(
        &self,
        ids: &[Vec<u32>],
        is_token: Option<&[Vec<bool>]>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>> {
        let batch = ids.len();
        let seq = ids.first().map_or(0, Vec::len);
        if batch == 0 || seq == 0 || ids.iter().any(|row| row.len() != seq) {
            return Err(Error::invalid(
                "token batch must be non-empty rows of equal length",
            ));
        }
        let vocab = self.config.vocab_size;
        if let Some(bad) = ids.iter().flatten().find(|&&id| id as usize >= vocab) {
            return Err(Error::invalid(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let all_tokens;
        let is_token = match is_token {
            Some(mask) => mask,
            None => {
                all_tokens = vec![vec![true; seq]; batch];
                &all_tokens
            }
        };
        let offset = cache.as_ref().map_or(0, |c| c.len());
        let total = offset + seq;

        let flat: Vec<i64> = ids.iter().flatten().map(|&id| i64::from(id)).collect();
        let ids_tensor =
            Tensor::<1, Int>::from_data(TensorData::new(flat, [batch * seq]), &self.device);
        let hidden = self.config.hidden_size;
        let mut x = self
            .embed_tokens
            .clone()
            .select(0, ids_tensor)
            .reshape([batch, seq, hidden]);

        // Disallowed (query, key) pairs: keys in the future, and keys that are padding.
        let history = cache.as_ref().map(|c| c.key_is_token());
        let mut blocked = Vec::with_capacity(batch * seq * total);
        for (b, row_is_token) in is_token.iter().enumerate() {
            for i in 0..seq {
                for j in 0..total {
                    let key_is_token = if j < offset {
                        history.is_none_or(|h| h.get(b).is_none_or(|row| row[j]))
                    } else {
                        row_is_token[j - offset]
                    };
                    blocked.push(j > offset + i || !key_is_token);
                }
            }
        }
        let mask = Tensor::<4, Bool>::from_data(
            TensorData::new(blocked, [batch, 1, seq, total]),
            &self.device,
        );
        let (cos, sin) = self.rope.tables(offset, seq, &self.device);
        let context = AttentionContext {
            cos: &cos,
            sin: &sin,
            mask: &mask,
        };
        for (index, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x, &context, cache.as_deref_mut().map(|c| (c, index)));
        }
        if let Some(cache) = cache {
            cache.advance(is_token);
        }
        Ok(self.norm.forward(x))
    }

    /// Logits `[batch, seq, vocab]`.
    pub fn forward(
        &self,
        ids: &[Vec<u32>],
        is_token: Option<&[Vec<bool>]>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>> {
        Ok(self
            .lm_head
            .forward(self.hidden_states(ids, is_token, cache)?))
    }

    /// Summed next-token cross-entropy: position `t` predicts `labels[t + 1]`; labels equal to
    /// [`IGNORE_INDEX`] do not count. This is `model(ids, labels=labels).loss` times the count.
    pub fn loss_sum(&self, logits: Tensor<3>, labels: &[Vec<i64>]) -> Result<LossSum> {
        let [batch, seq, vocab] = logits.dims();
        if labels.len() != batch || labels.iter().any(|row| row.len() != seq) {
            return Err(Error::invalid(
                "labels must have the shape of the token batch",
            ));
        }
        if seq < 2 {
            return Ok(LossSum {
                sum: Tensor::zeros([1], &self.device),
                tokens: 0,
            });
        }
        let mut targets = Vec::with_capacity(batch * (seq - 1));
        let mut weights = Vec::with_capacity(batch * (seq - 1));
        for row in labels {
            for &label in &row[1..] {
                let counted = label != IGNORE_INDEX;
                if counted && (label < 0 || label as usize >= vocab) {
                    return Err(Error::invalid(format!(
                        "label {label} is outside the vocabulary"
                    )));
                }
                targets.push(if counted { label } else { 0 });
                weights.push(if counted { 1f32 } else { 0.0 });
            }
        }
        let tokens = weights.iter().filter(|w| **w > 0.0).count();
        let rows = batch * (seq - 1);
        let logits = logits.narrow(1, 0, seq - 1).reshape([rows, vocab]);
        let log_probs = log_softmax(logits, 1);
        let targets =
            Tensor::<2, Int>::from_data(TensorData::new(targets, [rows, 1]), &self.device);
        let picked = log_probs.gather(1, targets).reshape([rows]);
        let weights = Tensor::<1>::from_data(TensorData::new(weights, [rows]), &self.device);
        Ok(LossSum {
            sum: (picked * weights).sum().neg(),
            tokens,
        })
    }
}
