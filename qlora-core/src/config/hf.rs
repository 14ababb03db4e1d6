//! `config.json` as transformers reads and writes it: the keys we read from a model directory
//! and the keys we write for one (a GGUF import), in one type.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One id or several (`eos_token_id` may be either).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl OneOrMany {
    /// Every id.
    pub fn ids(&self) -> Vec<u32> {
        match self {
            OneOrMany::One(id) => vec![*id],
            OneOrMany::Many(ids) => ids.clone(),
        }
    }
}

/// The keys of a decoder's `config.json` this toolkit reads or writes (absent optional keys are
/// not written; unknown keys are ignored when reading).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct HfConfig {
    /// The model class, e.g. `["LlamaForCausalLM"]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    /// transformers' model type, e.g. `llama`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    /// The MLP's activation, e.g. `silu`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden_act: Option<String>,
    /// Tokens of the vocabulary.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (default: as many as query heads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    /// Values a head holds (default: `hidden_size / num_attention_heads`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// RMSNorm's epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE's base (older configs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// RoPE scaling (older configs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    /// RoPE base and scaling (newer configs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<Value>,
    /// Longest sequence the model was trained for.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// The output head is the embedding (absent: the family's default, tied for Gemma).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tie_word_embeddings: Option<bool>,
    /// Biases on the attention's projections (LLaMA's switch for all four).
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on the MLP's projections.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Keys a query sees at most, on the layers with sliding-window attention: `None` when the
    /// key is absent, `Some(null)` when it is null.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub sliding_window: Option<Value>,
    /// Whether sliding-window attention is on (Qwen's switch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    /// Qwen: layers from this index on use the sliding window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_window_layers: Option<usize>,
    /// Each layer's attention: `full_attention` or `sliding_attention`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// Tensor-parallel ranks of the original pretraining (only 1 is supported).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pretraining_tp: Option<usize>,
    /// The beginning-of-sequence token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    /// The end-of-sequence token(s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<OneOrMany>,
    /// The padding token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<u32>,
    /// The weights' dtype (older configs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torch_dtype: Option<String>,
    /// The weights' dtype (newer configs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// How the checkpoint is quantized (bitsandbytes' 4-bit form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization_config: Option<Value>,
    /// Gemma's activation key (`gelu_pytorch_tanh`), where LLaMA has `hidden_act`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden_activation: Option<String>,
    /// Gemma: attention scores are scaled by `query_pre_attn_scalar ** -0.5`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_pre_attn_scalar: Option<Value>,
    /// Gemma 3: the RoPE base of the sliding-window layers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_local_base_freq: Option<f64>,
    /// Gemma 3 (older files): every this-many-th layer is global, the others slide.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sliding_window_pattern: Option<usize>,
    /// Gemma: soft-cap of the attention scores (null: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_logit_softcapping: Option<Value>,
    /// Gemma: soft-cap of the final logits (null: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_logit_softcapping: Option<Value>,
    /// Mixture-of-experts keys (Qwen-MoE, Mixtral, DeepSeek, Phi-MoE): present with a
    /// positive count, they name a model this toolkit cannot compute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_experts: Option<Value>,
    /// See [`HfConfig::num_experts`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_local_experts: Option<Value>,
    /// See [`HfConfig::num_experts`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_routed_experts: Option<Value>,
    /// Gemma's embedding models attend both ways.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_bidirectional_attention: Option<bool>,
    /// A multimodal model's vision tower (Gemma3ForConditionalGeneration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vision_config: Option<Value>,
    /// Phi-3: the context length of pretraining, which LongRoPE's long factors extend
    /// (taking precedence over the one in `rope_scaling`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
    /// The fraction of every head the rotary embedding rotates (Phi-4-mini: 0.75); the older
    /// place of `rope_parameters.partial_rotary_factor`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
    /// Whether generation keeps a key/value cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_cache: Option<bool>,
}

/// A key that is there, even as `null` (absent keys take the field's default, `None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

fn default_eps() -> f64 {
    1e-6
}

fn default_max_positions() -> usize {
    2048
}
