use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::adapter::{DropoutStream, LoraAdapter};
use super::attention::{LayerContext, RopeTables};
use super::batch::{IGNORE_INDEX, TrainBatch};
use super::kv_cache::KvCache;
use super::layer::DecoderLayer;
use super::linear::BaseWeight;
use super::linear::Linear;
use super::rms_norm::RmsNorm;
use super::rope::RotaryEmbedding;
use crate::backend::ops;
use crate::config::{ModelConfig, Projection, RopeKind};
use crate::error::{Error, Result};
use crate::profile::{self, Phase};

/// A decoder-only causal language model (`LlamaForCausalLM` and the families
/// [`crate::config::Architecture`] lists): embedding, decoder layers, final norm, output head.
#[derive(Clone, Debug)]
pub struct CausalLm {
    /// Its configuration.
    pub config: ModelConfig,
    /// The token embedding `[vocab, hidden]`.
    pub embed_tokens: Tensor<2>,
    /// The decoder layers.
    pub layers: Vec<DecoderLayer>,
    /// The norm after the last layer.
    pub norm: RmsNorm,
    /// The output head (the embedding when tied).
    pub lm_head: Linear,
    /// The rotary embedding of the global layers.
    pub rope: RotaryEmbedding,
    /// The rotary embedding of the local layers, if any.
    pub local_rope: Option<RotaryEmbedding>,
    /// Where the model lives.
    pub device: Device,
    /// What activations and the dense weights are in ([`crate::ComputeDtype`]).
    pub compute: crate::ComputeDtype,
}

/// Sum of token losses and how many tokens counted.
#[derive(Clone, Debug)]
pub struct LossSum {
    /// The summed loss `[1]`.
    pub sum: Tensor<1>,
    /// Tokens with a target.
    pub tokens: usize,
}

/// Per-forward inputs shared by every layer: rotary tables and sequence ids of the tokens.
pub struct AttentionInputs {
    /// The global layers' rotary tables.
    pub rope: RopeTables,
    /// The local layers' rotary tables (models with local layers only).
    pub local_rope: Option<RopeTables>,
    /// Sequence ids of the queries.
    pub q_ids: Tensor<1, Int>,
    /// Sequence ids of the keys.
    pub k_ids: Tensor<1, Int>,
    /// Rows of the batch.
    pub batch: usize,
    /// New tokens a row.
    pub q_len: usize,
    /// Keys a row.
    pub k_len: usize,
}

impl AttentionInputs {
    /// What a layer with the rotary table `rope` needs.
    pub fn context<'a>(
        &'a self,
        rope: RopeKind,
        dropout: Option<&'a DropoutStream>,
    ) -> LayerContext<'a> {
        LayerContext {
            rope: match rope {
                RopeKind::Global => &self.rope,
                RopeKind::Local => self
                    .local_rope
                    .as_ref()
                    .expect("a model with local layers has their rotary table"),
            },
            q_ids: &self.q_ids,
            k_ids: &self.k_ids,
            batch: self.batch,
            q_len: self.q_len,
            k_len: self.k_len,
            dropout,
        }
    }
}

/// The sequence id attention gives a position: real tokens of a row share one, padding has
/// its own (so no token attends to padding).
fn sequence_id(is_token: bool) -> i64 {
    if is_token { 0 } else { -1 }
}

impl CausalLm {
    /// Token embeddings `[batch * seq, hidden]` of `batch` rows of equal length.
    pub fn embed(&self, ids: &[Vec<u32>]) -> Result<Tensor<2>> {
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
        let x = self.embed_tokens.clone().select(0, ids_tensor);
        Ok(match self.config.spec.embedding_scale {
            // In the compute dtype, as transformers multiplies.
            Some(scale) => x.mul_scalar(scale),
            None => x,
        })
    }

    /// Rotary tables and sequence ids for `is_token` (`batch` rows of `seq`) following
    /// `cache`'s positions: queries see earlier keys of their own row that are tokens.
    pub fn attention_inputs(
        &self,
        is_token: &[Vec<bool>],
        cache: Option<&KvCache>,
    ) -> AttentionInputs {
        let batch = is_token.len();
        let seq = is_token.first().map_or(0, Vec::len);
        let offset = cache.map_or(0, KvCache::len);
        let history = cache.map(KvCache::key_is_token);
        let mut q_ids = Vec::with_capacity(batch * seq);
        let mut k_ids = Vec::with_capacity(batch * (offset + seq));
        for (b, row) in is_token.iter().enumerate() {
            for j in 0..offset {
                let cached = history.is_none_or(|h| h.get(b).is_none_or(|r| r[j]));
                k_ids.push(sequence_id(cached));
            }
            for &t in row {
                q_ids.push(sequence_id(t));
                k_ids.push(sequence_id(t));
            }
        }
        let positions: Vec<usize> = (0..batch).flat_map(|_| offset..offset + seq).collect();
        let ids = |v: Vec<i64>| {
            let n = v.len();
            Tensor::<1, Int>::from_data(TensorData::new(v, [n]), &self.device)
        };
        let (rope, local_rope) = self.rope_tables(&positions);
        AttentionInputs {
            rope,
            local_rope,
            q_ids: ids(q_ids),
            k_ids: ids(k_ids),
            batch,
            q_len: seq,
            k_len: offset + seq,
        }
    }

    /// The rotary tables of tokens at `positions`: the global layers' and the local layers'.
    fn rope_tables(&self, positions: &[usize]) -> (RopeTables, Option<RopeTables>) {
        let tables = |rope: &RotaryEmbedding| {
            let (cos, sin) = rope.tables(positions, &self.device);
            RopeTables::new(cos, sin)
        };
        (tables(&self.rope), self.local_rope.as_ref().map(tables))
    }

    /// Run every layer over `x`: the one loop of the model.
    pub(super) fn run_layers(
        &self,
        mut x: Tensor<2>,
        inputs: &AttentionInputs,
        mut cache: Option<&mut KvCache>,
        dropout: Option<&DropoutStream>,
    ) -> Tensor<2> {
        for (index, layer) in self.layers.iter().enumerate() {
            let context = inputs.context(layer.self_attn.rope, dropout);
            x = layer.forward(x, &context, cache.as_deref_mut().map(|c| c.layer(index)));
        }
        x
    }

    /// Final norm and `lm_head`: logits `[rows, vocab]` of hidden states `[rows, hidden]`.
    pub fn head(&self, hidden: Tensor<2>) -> Tensor<2> {
        let normed = self.norm.forward(hidden);
        let _span = profile::span(Phase::HeadAndLoss);
        self.lm_head.forward_rows(normed, None)
    }

    /// Hidden states `[batch * seq, hidden]` after the last layer.
    fn hidden(
        &self,
        ids: &[Vec<u32>],
        is_token: Option<&[Vec<bool>]>,
        mut cache: Option<&mut KvCache>,
        dropout: Option<&DropoutStream>,
    ) -> Result<Tensor<2>> {
        let x = self.embed(ids)?;
        let all_tokens;
        let is_token = match is_token {
            Some(mask) => mask,
            None => {
                all_tokens = vec![vec![true; ids[0].len()]; ids.len()];
                &all_tokens
            }
        };
        let inputs = self.attention_inputs(is_token, cache.as_deref());
        let x = self.run_layers(x, &inputs, cache.as_deref_mut(), dropout);
        if let Some(cache) = cache {
            cache.advance(is_token);
        }
        Ok(x)
    }

    /// Hidden states `[batch * seq, hidden]` after the last layer (before the final norm) of
    /// `batch` rows of equal length; `is_token` marks real tokens (false = padding).
    pub fn hidden_states(
        &self,
        ids: &[Vec<u32>],
        is_token: Option<&[Vec<bool>]>,
    ) -> Result<Tensor<2>> {
        self.hidden(ids, is_token, None, None)
    }

    /// Logits `[batch, seq, vocab]` for token `ids` (`batch` rows of equal length). `is_token`
    /// marks real tokens (false = padding); without it every position is a token. With a
    /// `cache`, `ids` continue the cached sequence. `dropout` enables adapter dropout (training).
    pub fn forward_with(
        &self,
        ids: &[Vec<u32>],
        is_token: Option<&[Vec<bool>]>,
        cache: Option<&mut KvCache>,
        dropout: Option<&DropoutStream>,
    ) -> Result<Tensor<3>> {
        let hidden = self.hidden(ids, is_token, cache, dropout)?;
        let (batch, seq) = (ids.len(), ids[0].len());
        Ok(self
            .head(hidden)
            .reshape([batch, seq, self.config.vocab_size]))
    }

    /// Next-token targets of `batch` ([`TrainBatch::next_labels`], -1 for none), checked
    /// against the vocabulary, and how many count.
    pub fn targets(&self, batch: &TrainBatch) -> Result<(Tensor<1, Int>, usize)> {
        let vocab = self.config.vocab_size as i64;
        let mut targets = batch.next_labels();
        for label in &mut targets {
            if *label == IGNORE_INDEX {
                *label = -1;
            } else if !(0..vocab).contains(label) {
                return Err(Error::invalid(format!(
                    "label {label} is outside the vocabulary"
                )));
            }
        }
        let count = targets.iter().filter(|t| **t >= 0).count();
        let n = targets.len();
        Ok((
            Tensor::from_data(TensorData::new(targets, [n]), &self.device),
            count,
        ))
    }

    /// Rotary tables and sequence ids of a (possibly packed) batch: positions restart at 0
    /// for every example, and an example attends only to itself.
    pub fn batch_inputs(&self, batch: &TrainBatch) -> Result<AttentionInputs> {
        let rows = batch.ids.len();
        let seq = batch.ids.first().map_or(0, Vec::len);
        let (rope, local_rope) = self.rope_tables(&batch.rope_positions());
        let ids = batch.sequence_ids();
        if ids.len() != rows * seq {
            return Err(Error::invalid("batch rows must have equal lengths"));
        }
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [rows * seq]), &self.device);
        Ok(AttentionInputs {
            rope,
            local_rope,
            q_ids: ids.clone(),
            k_ids: ids,
            batch: rows,
            q_len: seq,
            k_len: seq,
        })
    }

    /// The head's weight `[vocab, hidden]` (the embedding when tied).
    pub fn head_weight(&self) -> Result<&Tensor<2>> {
        match &self.lm_head.weight {
            BaseWeight::Dense(w) => Ok(w),
            _ => Err(Error::invalid("the output head must be dense")),
        }
    }

    /// Logits `[rows, seq, vocab]` of a (possibly packed) batch.
    pub fn logits(&self, batch: &TrainBatch) -> Result<Tensor<3>> {
        let inputs = self.batch_inputs(batch)?;
        let x = self.run_layers(self.embed(&batch.ids)?, &inputs, None, None);
        Ok(self
            .head(x)
            .reshape([inputs.batch, inputs.q_len, self.config.vocab_size]))
    }

    /// Summed next-token loss of a (possibly packed) batch and how many tokens counted,
    /// through the fused cross-entropy (the `[tokens, vocab]` logits never exist whole).
    pub fn loss(&self, batch: &TrainBatch) -> Result<LossSum> {
        let inputs = self.batch_inputs(batch)?;
        let x = self.run_layers(self.embed(&batch.ids)?, &inputs, None, None);
        let (targets, tokens) = self.targets(batch)?;
        let normed = self.norm.forward(x);
        let _span = profile::span(Phase::HeadAndLoss);
        let losses = ops::cross_entropy(normed, self.head_weight()?, &targets);
        Ok(LossSum {
            // Not `sum()`: GPU backends may add with atomics, in any order.
            sum: losses.sum_dim(0),
            tokens,
        })
    }

    /// Every position's token loss (`-log p` of its next-token target; 0 where it has none),
    /// forward only: what a frozen reference scores a batch with.
    pub fn position_losses(&self, batch: &TrainBatch) -> Result<Vec<f32>> {
        let inputs = self.batch_inputs(batch)?;
        let x = self.run_layers(self.embed(&batch.ids)?, &inputs, None, None);
        let (targets, _) = self.targets(batch)?;
        let normed = self.norm.forward(x);
        let _span = profile::span(Phase::HeadAndLoss);
        ops::cross_entropy(normed, self.head_weight()?, &targets)
            .into_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| Error::invalid(format!("token losses: {e:?}")))
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
        let mut out = Vec::with_capacity(self.layers.len() * Projection::SLOTS);
        for (i, layer) in self.layers.iter().enumerate() {
            for (p, linear) in layer.linears() {
                out.push((p.path(i), linear));
            }
        }
        out
    }

    /// [`CausalLm::linears`], mutably.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::with_capacity(self.layers.len() * Projection::SLOTS);
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (p, linear) in layer.linears_mut() {
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

    /// The number of values of each adapter's A and B, in the order of [`CausalLm::adapters`]:
    /// the trainable parameters as the optimizer counts them (A of adapter k is `2k`).
    pub fn adapter_sizes(&self) -> Vec<usize> {
        self.adapters()
            .iter()
            .flat_map(|(_, a)| [a.a.dims().iter().product(), a.b.dims().iter().product()])
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
