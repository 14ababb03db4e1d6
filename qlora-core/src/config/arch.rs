//! The model families this toolkit loads: their names in transformers and llama.cpp, the
//! tensors of their layers, and how each derives its [`DecoderSpec`] from `config.json`.

use std::path::Path;

use serde_json::Value;

use super::Projection;
use super::hf::HfConfig;
use super::spec::{Activation, DecoderSpec, LayerSpec, NormForm, RopeKind};
use super::tensors::{ModelTensor, Rotary};
use super::windows::{gemma_windows, qwen_windows, window_or_default, window_or_none};
use crate::error::{Error, Result};

/// A model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `LlamaForCausalLM` (Llama 1-3, SmolLM, TinyLlama, ...).
    Llama,
    /// `MistralForCausalLM`: LLaMA's layer with an optional sliding window on every layer.
    Mistral,
    /// `Qwen2ForCausalLM` (Qwen 2, Qwen 2.5): LLaMA's layer with biases on the query, key and
    /// value projections, sliding windows on the layers `layer_types` names.
    Qwen2,
    /// `Qwen3ForCausalLM`: per-head q/k RMSNorm, `head_dim` of its own, sliding windows on the
    /// layers `layer_types` names.
    Qwen3,
    /// `Gemma3ForCausalLM` (Gemma 3 text models): `(1 + w)` norms, four a layer and on q/k
    /// heads, GeGLU, scaled embeddings, `query_pre_attn_scalar`, local sliding-window layers
    /// with a RoPE base of their own between global ones.
    Gemma3,
    /// `Phi3ForCausalLM` (Phi-3, Phi-3.5, Phi-4-mini): LLaMA's layer with the query, key and
    /// value projections fused into `qkv_proj` and the gate and up projections into
    /// `gate_up_proj`, LongRoPE, a partial rotary factor, a sliding window on every layer
    /// where `sliding_window` sets one.
    Phi3,
}

/// The tensors of a LLaMA layer.
const LLAMA_LAYER: [ModelTensor; 9] = [
    ModelTensor::AttnNorm,
    ModelTensor::AttnQ,
    ModelTensor::AttnK,
    ModelTensor::AttnV,
    ModelTensor::AttnOutput,
    ModelTensor::FfnNorm,
    ModelTensor::FfnGate,
    ModelTensor::FfnUp,
    ModelTensor::FfnDown,
];

/// The tensors of a Qwen 3 layer: LLaMA's and the q/k norms.
const QWEN3_LAYER: [ModelTensor; 11] = [
    ModelTensor::AttnNorm,
    ModelTensor::AttnQ,
    ModelTensor::AttnK,
    ModelTensor::AttnV,
    ModelTensor::AttnOutput,
    ModelTensor::AttnQNorm,
    ModelTensor::AttnKNorm,
    ModelTensor::FfnNorm,
    ModelTensor::FfnGate,
    ModelTensor::FfnUp,
    ModelTensor::FfnDown,
];

/// The tensors of a Gemma 3 layer: a norm before and after the attention and the MLP, and
/// the q/k norms.
const GEMMA3_LAYER: [ModelTensor; 13] = [
    ModelTensor::AttnNorm,
    ModelTensor::AttnQ,
    ModelTensor::AttnK,
    ModelTensor::AttnV,
    ModelTensor::AttnOutput,
    ModelTensor::AttnQNorm,
    ModelTensor::AttnKNorm,
    ModelTensor::AttnPostNorm,
    ModelTensor::FfnPreNorm,
    ModelTensor::FfnGate,
    ModelTensor::FfnUp,
    ModelTensor::FfnDown,
    ModelTensor::FfnPostNorm,
];

/// The tensors of a Phi-3 layer: LLaMA's with the fused projections.
const PHI3_LAYER: [ModelTensor; 6] = [
    ModelTensor::AttnNorm,
    ModelTensor::AttnQkv,
    ModelTensor::AttnOutput,
    ModelTensor::FfnNorm,
    ModelTensor::FfnGateUp,
    ModelTensor::FfnDown,
];

/// LLaMA's seven projections.
const SPLIT: [Projection; 7] = [
    Projection::Q,
    Projection::K,
    Projection::V,
    Projection::O,
    Projection::Gate,
    Projection::Up,
    Projection::Down,
];

/// Phi-3's four.
const FUSED: [Projection; 4] = [
    Projection::Qkv,
    Projection::O,
    Projection::GateUp,
    Projection::Down,
];

impl Architecture {
    /// Every family, in the order messages list them.
    pub const ALL: [Architecture; 6] = [
        Architecture::Llama,
        Architecture::Mistral,
        Architecture::Qwen2,
        Architecture::Qwen3,
        Architecture::Gemma3,
        Architecture::Phi3,
    ];

    /// The transformers class: `LlamaForCausalLM`.
    pub fn class_name(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Qwen3 => "Qwen3ForCausalLM",
            Architecture::Gemma3 => "Gemma3ForCausalLM",
            Architecture::Phi3 => "Phi3ForCausalLM",
        }
    }

    /// transformers' `model_type`: `llama`.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Gemma3 => "gemma3_text",
            Architecture::Phi3 => "phi3",
        }
    }

    /// llama.cpp's name of the family (`general.architecture`): `llama` (Mistral's checkpoints
    /// convert to it too), `qwen2`, `qwen3`.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Architecture::Llama | Architecture::Mistral => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Gemma3 => "gemma3",
            Architecture::Phi3 => "phi3",
        }
    }

    /// What llama.cpp's converter adds to the family's norm weights (Gemma stores `1 + w`).
    pub fn gguf_norm_shift(self) -> Option<f32> {
        (self == Architecture::Gemma3).then_some(1.0)
    }

    /// The family llama.cpp means by `general.architecture` = `name`.
    pub fn from_gguf_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.gguf_name() == name)
    }

    /// Every llama.cpp name, comma-separated, for messages.
    pub fn gguf_names() -> String {
        let mut names: Vec<&str> = Self::ALL.map(Architecture::gguf_name).to_vec();
        names.dedup();
        names.join(", ")
    }

    /// The permutation llama.cpp's converter applies to a tensor whose table row says
    /// `rotary`: the row's for its `llama` architecture, whose rotary embedding rotates
    /// adjacent pairs; none for the others, which rotate halves (NeoX style) as transformers
    /// does, on rows as they are.
    pub fn gguf_rotary(self, rotary: Rotary) -> Rotary {
        if self.gguf_name() == "llama" {
            rotary
        } else {
            Rotary::None
        }
    }

    /// The family of a class name.
    pub fn from_class_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.class_name() == name)
    }

    /// The family of a `model_type`.
    pub fn from_model_type(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.model_type() == name)
    }

    /// Every class name, comma-separated, for messages.
    pub fn class_names() -> String {
        Self::ALL.map(Architecture::class_name).join(", ")
    }

    /// The tensors of each layer (the spec's q/k norms follow from it).
    pub fn layer_tensors(self) -> &'static [ModelTensor] {
        match self {
            Architecture::Llama | Architecture::Mistral | Architecture::Qwen2 => &LLAMA_LAYER,
            Architecture::Qwen3 => &QWEN3_LAYER,
            Architecture::Gemma3 => &GEMMA3_LAYER,
            Architecture::Phi3 => &PHI3_LAYER,
        }
    }

    /// The linear projections of each layer, in checkpoint order: LLaMA's seven, or Phi-3's
    /// four with fused ones.
    pub fn projections(self) -> &'static [Projection] {
        match self {
            Architecture::Phi3 => &FUSED,
            _ => &SPLIT,
        }
    }

    /// The projection names of the family, comma-separated, for messages.
    pub fn projection_names(self) -> String {
        let names: Vec<&str> = self.projections().iter().map(|p| p.name()).collect();
        names.join(", ")
    }

    /// `rope_theta` when `config.json` does not give it (Gemma3TextConfig's global base).
    pub(super) fn default_rope_theta(self) -> f64 {
        match self {
            Architecture::Gemma3 => 1_000_000.0,
            _ => 10_000.0,
        }
    }

    /// `head_dim` when `config.json` does not give it.
    pub(super) fn default_head_dim(self, raw: &HfConfig) -> Option<usize> {
        match self {
            // Qwen3Config's own default, not hidden / heads.
            Architecture::Qwen3 => Some(128),
            // Gemma3TextConfig's.
            Architecture::Gemma3 => Some(256),
            _ if raw.hidden_size.is_multiple_of(raw.num_attention_heads) => {
                Some(raw.hidden_size / raw.num_attention_heads)
            }
            _ => None,
        }
    }

    /// The decoder's structure from `config.json` (`raw`, read from `file`), with its sizes
    /// already checked.
    pub(super) fn spec(self, raw: &HfConfig, head_dim: usize, file: &Path) -> Result<DecoderSpec> {
        let layers = raw.num_hidden_layers;
        let mut spec = DecoderSpec::llama(layers, head_dim);
        // Gemma3TextConfig ties by default, the others do not.
        spec.tied_head = raw
            .tie_word_embeddings
            .unwrap_or(self == Architecture::Gemma3);
        spec.activation = self.activation(raw, file)?;
        let attention = raw.attention_bias;
        let mlp = raw.mlp_bias;
        // In Projection::ALL order: q, k, v, qkv, o, gate, up, gate_up, down.
        spec.bias = [
            attention, attention, attention, attention, attention, mlp, mlp, mlp, mlp,
        ];
        let windows: Vec<Option<usize>> = match self {
            // Not a key of LlamaConfig: transformers ignores it, and so do we.
            Architecture::Llama => vec![None; layers],
            Architecture::Mistral => {
                // MistralConfig's default when the key is absent.
                vec![window_or_default(raw, file)?; layers]
            }
            Architecture::Qwen2 => {
                // Qwen2's q/k/v projections always have a bias, its others never (not keys
                // of Qwen2Config).
                spec.bias = [true, true, true, false, false, false, false, false, false];
                qwen_windows(raw, file)?
            }
            Architecture::Qwen3 => {
                spec.bias[Projection::O as usize..].fill(false);
                qwen_windows(raw, file)?
            }
            Architecture::Gemma3 => {
                if raw.use_bidirectional_attention == Some(true) {
                    return Err(Error::key(
                        file,
                        "use_bidirectional_attention",
                        "bidirectional (embedding) Gemma models are not supported",
                    ));
                }
                spec.bias[Projection::O as usize..].fill(false);
                spec.norm = NormForm::OnePlusWeight;
                spec.embedding_scale = Some((raw.hidden_size as f64).sqrt());
                let key = "query_pre_attn_scalar";
                let scalar = raw
                    .query_pre_attn_scalar
                    .as_ref()
                    .map(|v| {
                        v.as_f64()
                            .ok_or_else(|| Error::key(file, key, format!("{v} must be a number")))
                    })
                    .transpose()?;
                let scalar = positive(scalar, 256.0, key, file)?;
                spec.attention_scale = scalar.powf(-0.5);
                spec.attention_softcap =
                    softcap(&raw.attn_logit_softcapping, "attn_logit_softcapping", file)?;
                spec.final_logit_softcap = softcap(
                    &raw.final_logit_softcapping,
                    "final_logit_softcapping",
                    file,
                )?;
                spec.local_rope_theta = Some(local_rope_theta(raw, file)?);
                gemma_windows(raw, file)?
            }
            Architecture::Phi3 => {
                // Not keys of Phi3Config: no biases.
                spec.bias = [false; 9];
                vec![window_or_none(raw, file)?; layers]
            }
        };
        let tensors = self.layer_tensors();
        // The per-head norms and the norms after the attention and the MLP are there when the
        // family's layers have their tensors.
        spec.qk_norm = tensors.contains(&ModelTensor::AttnQNorm);
        spec.sandwich_norms = tensors.contains(&ModelTensor::AttnPostNorm);
        spec.fused_qkv = tensors.contains(&ModelTensor::AttnQkv);
        spec.fused_gate_up = tensors.contains(&ModelTensor::FfnGateUp);
        let local = spec.local_rope_theta.is_some();
        for (layer, window) in spec.layers.iter_mut().zip(windows) {
            *layer = LayerSpec {
                window,
                // Where the family has a local base, its sliding layers use it.
                rope: if local && window.is_some() {
                    RopeKind::Local
                } else {
                    RopeKind::Global
                },
            };
        }
        Ok(spec)
    }

    /// The MLP's activation: `hidden_act` (or Gemma's `hidden_activation`), the family's one.
    fn activation(self, raw: &HfConfig, file: &Path) -> Result<Activation> {
        let (key, name, expected) = match self {
            Architecture::Gemma3 => match &raw.hidden_activation {
                Some(name) => ("hidden_activation", Some(name), "gelu_pytorch_tanh"),
                None => ("hidden_act", raw.hidden_act.as_ref(), "gelu_pytorch_tanh"),
            },
            _ => ("hidden_act", raw.hidden_act.as_ref(), "silu"),
        };
        match name.map_or(expected, String::as_str) {
            name if name != expected => Err(Error::key(
                file,
                key,
                format!(
                    "`{name}` is not supported for {}, only {expected}",
                    self.class_name()
                ),
            )),
            "silu" => Ok(Activation::Silu),
            _ => Ok(Activation::GeluTanh),
        }
    }
}

/// A positive number from `key`, or `default` when absent.
fn positive(value: Option<f64>, default: f64, key: &str, file: &Path) -> Result<f64> {
    match value {
        None => Ok(default),
        Some(v) if v.is_finite() && v > 0.0 => Ok(v),
        Some(v) => Err(Error::key(file, key, format!("{v} must be positive"))),
    }
}

/// A soft-cap: absent or null for none, else a positive number.
fn softcap(value: &Option<Value>, key: &str, file: &Path) -> Result<Option<f64>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(c) if c.is_finite() && c > 0.0 => Ok(Some(c)),
            _ => Err(Error::key(
                file,
                key,
                format!("{v} must be a positive number, or null"),
            )),
        },
    }
}

/// Gemma 3's RoPE base of its sliding layers: `rope_parameters.sliding_attention` (unscaled),
/// else `rope_local_base_freq`, else 10000.
fn local_rope_theta(raw: &HfConfig, file: &Path) -> Result<f64> {
    if let Some(local) = raw
        .rope_parameters
        .as_ref()
        .and_then(|p| p.get("sliding_attention"))
    {
        let kind = local
            .get("rope_type")
            .and_then(Value::as_str)
            .unwrap_or("default");
        if kind != "default" {
            return Err(Error::key(
                file,
                "rope_parameters.sliding_attention.rope_type",
                format!("`{kind}` is not supported for the sliding layers, only default"),
            ));
        }
        let theta = local.get("rope_theta").and_then(Value::as_f64);
        return positive(
            theta,
            10000.0,
            "rope_parameters.sliding_attention.rope_theta",
            file,
        );
    }
    positive(
        raw.rope_local_base_freq,
        10000.0,
        "rope_local_base_freq",
        file,
    )
}
