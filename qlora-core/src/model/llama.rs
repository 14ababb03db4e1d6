use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::adapter::{DropoutStream, LoraAdapter};
use super::attention::LayerContext;
use super::kv_cache::KvCache;
use super::layer::DecoderLayer;
use super::linear::Linear;
use super::rms_norm::RmsNorm;
use super::rope::RotaryEmbedding;
use crate::config::{LlamaConfig, Projection};
use crate::error::{Error, Result};
use crate::profile::{self, Phase};

/// Label value of positions that do not count in the loss (as in PyTorch / transformers).
pub const IGNORE_INDEX: i64 = -100;

/// A `LlamaForCausalLM`.
#[derive(Clone, Debug)]
pub struct Llama {
    pub config: LlamaConfig,
    pub embed_tokens: Tensor<2>,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    pub lm_head: Linear,
    pub rope: RotaryEmbedding,
    pub device: Device,
}

/// Sum of token losses and how many tokens counted.
#[derive(Clone, Debug)]
pub struct LossSum {
    pub sum: Tensor<1>,
    pub tokens: usize,
}

/// Per-forward inputs shared by every layer: rotary tables and the attention mask.
pub struct AttentionInputs {
    pub cos: Tensor<2>,
    pub sin: Tensor<2>,
    pub mask: Tensor<4, Bool>,
}

impl AttentionInputs {
    pub fn context<'a>(&'a self, dropout: Option<&'a DropoutStream>) -> LayerContext<'a> {
        LayerContext {
            cos: &self.cos,
            sin: &self.sin,
            mask: &self.mask,
            dropout,
        }
    }
}

impl Llama {
    /// Token embeddings `[batch, seq, hidden]` of `batch` rows of equal length.
    pub fn embed(&self, ids: &[Vec<u32>]) -> Result<Tensor<3>> {
        let _span = profile::span(Phase::Embedding);
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
        let flat: Vec<i64> = ids.iter().flatten().map(|&id| i64::from(id)).collect();
        let ids_tensor =
            Tensor::<1, Int>::from_data(TensorData::new(flat, [batch * seq]), &self.device);
        Ok(self.embed_tokens.clone().select(0, ids_tensor).reshape([
            batch,
            seq,
            self.config.hidden_size,
        ]))
    }

    /// Rotary tables and mask for `is_token` (`batch` rows of `seq`) following `cache`'s
    /// positions: keys in the future and keys that are padding are blocked.
    pub fn attention_inputs(
        &self,
        is_token: &[Vec<bool>],
        cache: Option<&KvCache>,
    ) -> AttentionInputs {
        let batch = is_token.len();
        let seq = is_token.first().map_or(0, Vec::len);
        let offset = cache.map_or(0, KvCache::len);
        let total = offset + seq;
        let history = cache.map(KvCache::key_is_token);
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
        AttentionInputs { cos, sin, mask }
    }

    /// Final norm and `lm_head`: logits `[batch, seq, vocab]`.
    pub fn head(&self, hidden: Tensor<3>) -> Tensor<3> {
        let _span = profile::span(Phase::HeadAndLoss);
        self.lm_head.forward(self.norm.forward(hidden), None)
    }

    /// Logits `[batch, seq, vocab]` for token `ids` (`batch` rows of equal length). `is_token`
    /// marks real tokens (false = padding); without it every position is a token. With a
    /// `cache`, `ids` continue the cached sequence. `dropout` enables adapter dropout (training).
    pub fn forward_with(
        &self,
        ids: &[Vec<u32>],
        is_token: Option<&[Vec<bool>]>,
        mut cache: Option<&mut KvCache>,
        dropout: Option<&DropoutStream>,
    ) -> Result<Tensor<3>> {
        let mut x = self.embed(ids)?;
        let all_tokens;
        let is_token = match is_token {
            Some(mask) => mask,
            None => {
                all_tokens = vec![vec![true; ids[0].len()]; ids.len()];
                &all_tokens
            }
        };
        let inputs = self.attention_inputs(is_token, cache.as_deref());
        let context = inputs.context(dropout);
        for (index, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x, &context, cache.as_deref_mut().map(|c| c.layer(index)));
        }
        if let Some(cache) = cache {
            cache.advance(is_token);
        }
        Ok(self.head(x))
    }

    /// Logits for inference (no dropout).
    pub fn forward(
        &self,
        ids: &[Vec<u32>],
        is_token: Option<&[Vec<bool>]>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>> {
        self.forward_with(ids, is_token, cache, None)
    }

    /// Every decoder linear with its module path (`model.layers.3.self_attn.q_proj`), in
    /// layer order and [`Projection::ALL`] order within a layer.
    pub fn linears(&self) -> Vec<(String, &Linear)> {
        let mut out = Vec::with_capacity(self.layers.len() * Projection::ALL.len());
        for (i, layer) in self.layers.iter().enumerate() {
            for (p, linear) in Projection::ALL.into_iter().zip(layer.linears()) {
                out.push((p.path(i), linear));
            }
        }
        out
    }

    /// [`Llama::linears`], mutably.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::with_capacity(self.layers.len() * Projection::ALL.len());
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (p, linear) in Projection::ALL.into_iter().zip(layer.linears_mut()) {
                out.push((p.path(i), linear));
            }
        }
        out
    }

    /// The adapters with their module paths, in model order.
    pub fn adapters(&self) -> Vec<(String, &LoraAdapter)> {
        self.linears()
            .into_iter()
            .filter_map(|(path, linear)| linear.lora.as_ref().map(|a| (path, a)))
            .collect()
    }

    /// Remove every adapter (back to the base model).
    pub fn detach_lora(&mut self) {
        for (_, linear) in self.linears_mut() {
            linear.lora = None;
        }
    }

    /// Summed next-token cross-entropy: position `t` predicts `labels[t + 1]`; labels equal to
    /// [`IGNORE_INDEX`] do not count. This is `model(ids, labels=labels).loss` times the count.
    pub fn loss_sum(&self, logits: Tensor<3>, labels: &[Vec<i64>]) -> Result<LossSum> {
        let _span = profile::span(Phase::HeadAndLoss);
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
