//! The model families this toolkit loads: their names in transformers and llama.cpp, the
//! tensors of their layers, and how each derives its [`DecoderSpec`] from `config.json`.

use std::path::Path;

use serde_json::Value;

use super::hf::HfConfig;
use super::spec::{DecoderSpec, LayerSpec, RopeKind};
use super::tensors::{ModelTensor, Rotary};
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

impl Architecture {
    /// Every family, in the order messages list them.
    pub const ALL: [Architecture; 4] = [
        Architecture::Llama,
        Architecture::Mistral,
        Architecture::Qwen2,
        Architecture::Qwen3,
    ];

    /// The transformers class: `LlamaForCausalLM`.
    pub fn class_name(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Qwen3 => "Qwen3ForCausalLM",
        }
    }

    /// transformers' `model_type`: `llama`.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
        }
    }

    /// llama.cpp's name of the family (`general.architecture`): `llama` (Mistral's checkpoints
    /// convert to it too), `qwen2`, `qwen3`.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Architecture::Llama | Architecture::Mistral => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
        }
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
        }
    }

    /// `head_dim` when `config.json` does not give it.
    pub(super) fn default_head_dim(self, raw: &HfConfig) -> Option<usize> {
        match self {
            // Qwen3Config's own default, not hidden / heads.
            Architecture::Qwen3 => Some(128),
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
        spec.tied_head = raw.tie_word_embeddings;
        let attention = raw.attention_bias;
        spec.bias = [
            attention,
            attention,
            attention,
            attention,
            raw.mlp_bias,
            raw.mlp_bias,
            raw.mlp_bias,
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
                spec.bias = [true, true, true, false, false, false, false];
                qwen_windows(raw, file)?
            }
            Architecture::Qwen3 => {
                spec.bias[4..].fill(false);
                qwen_windows(raw, file)?
            }
        };
        // The per-head norms are there when the family's layers have their tensors.
        spec.qk_norm = self.layer_tensors().contains(&ModelTensor::AttnQNorm);
        for (layer, window) in spec.layers.iter_mut().zip(windows) {
            *layer = LayerSpec {
                window,
                rope: RopeKind::Global,
            };
        }
        Ok(spec)
    }
}

/// `sliding_window`: a positive number, null for none, and when absent 4096 (the default of
/// MistralConfig and Qwen3Config).
fn window_or_default(raw: &HfConfig, file: &Path) -> Result<Option<usize>> {
    match &raw.sliding_window {
        None => Ok(Some(4096)),
        Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(w) if w > 0 => Ok(Some(w as usize)),
            _ => Err(Error::key(
                file,
                "sliding_window",
                format!("{v} must be a positive number of keys, or null"),
            )),
        },
    }
}

/// Qwen's windows: on the layers `layer_types` calls `sliding_attention` (by default those
/// from `max_window_layers` on), and only with `use_sliding_window`.
fn qwen_windows(raw: &HfConfig, file: &Path) -> Result<Vec<Option<usize>>> {
    let layers = raw.num_hidden_layers;
    if !raw.use_sliding_window.unwrap_or(false) {
        return Ok(vec![None; layers]);
    }
    let window = window_or_default(raw, file)?;
    let sliding: Vec<bool> = match &raw.layer_types {
        Some(types) => {
            if types.len() != layers {
                return Err(Error::key(
                    file,
                    "layer_types",
                    format!("{} entries for {layers} layers", types.len()),
                ));
            }
            types
                .iter()
                .map(|t| match t.as_str() {
                    "sliding_attention" => Ok(true),
                    "full_attention" => Ok(false),
                    other => Err(Error::key(
                        file,
                        "layer_types",
                        format!("`{other}`: expected full_attention or sliding_attention"),
                    )),
                })
                .collect::<Result<_>>()?
        }
        None => {
            let first = raw.max_window_layers.unwrap_or(28);
            (0..layers)
                .map(|i| window.is_some() && i >= first)
                .collect()
        }
    };
    Ok(sliding
        .into_iter()
        .map(|s| if s { window } else { None })
        .collect())
}
