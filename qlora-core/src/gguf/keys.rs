//! GGUF metadata keys, as gguf-py's `Keys` names them: read by import, written by export.
//! Keys of the architecture start with `{arch}.`; [`arch`] fills it in.

/// The architecture's name (`llama`).
pub const ARCHITECTURE: &str = "general.architecture";
/// The model's name.
pub const NAME: &str = "general.name";
/// llama.cpp's file type (the main tensor type).
pub const FILE_TYPE: &str = "general.file_type";
/// The version of the quantization formats.
pub const QUANTIZATION_VERSION: &str = "general.quantization_version";

/// Tokens of the vocabulary.
pub const VOCAB_SIZE: &str = "{arch}.vocab_size";
/// Longest sequence the model was trained for.
pub const CONTEXT_LENGTH: &str = "{arch}.context_length";
/// Width of the residual stream.
pub const EMBEDDING_LENGTH: &str = "{arch}.embedding_length";
/// Decoder layers.
pub const BLOCK_COUNT: &str = "{arch}.block_count";
/// Width of the MLP.
pub const FEED_FORWARD_LENGTH: &str = "{arch}.feed_forward_length";
/// Experts of a mixture-of-experts layer.
pub const EXPERT_COUNT: &str = "{arch}.expert_count";
/// Query heads.
pub const HEAD_COUNT: &str = "{arch}.attention.head_count";
/// Key/value heads.
pub const HEAD_COUNT_KV: &str = "{arch}.attention.head_count_kv";
/// Values a key head holds.
pub const KEY_LENGTH: &str = "{arch}.attention.key_length";
/// Values a value head holds.
pub const VALUE_LENGTH: &str = "{arch}.attention.value_length";
/// RMSNorm's epsilon.
pub const LAYERNORM_RMS_EPS: &str = "{arch}.attention.layer_norm_rms_epsilon";
/// The keys a sliding-window layer sees (Gemma 3's local layers).
pub const SLIDING_WINDOW: &str = "{arch}.attention.sliding_window";
/// Dimensions the rotary embedding turns.
pub const ROPE_DIMENSION_COUNT: &str = "{arch}.rope.dimension_count";
/// RoPE's base.
pub const ROPE_FREQ_BASE: &str = "{arch}.rope.freq_base";
/// RoPE scaling: `none`, `linear`, ...
pub const ROPE_SCALING_TYPE: &str = "{arch}.rope.scaling.type";
/// The linear RoPE scaling factor.
pub const ROPE_SCALING_FACTOR: &str = "{arch}.rope.scaling.factor";
/// What multiplies the rotary `cos` and `sin` (LongRoPE's attention factor).
pub const ROPE_SCALING_ATTN_FACTOR: &str = "{arch}.rope.scaling.attn_factor";
/// The context length of pretraining, which RoPE scaling extends.
pub const ROPE_SCALING_ORIG_CTX_LEN: &str = "{arch}.rope.scaling.original_context_length";

/// The tokenizer model: `gpt2` (byte-level BPE) or `llama` (SentencePiece).
pub const TOKENIZER_MODEL: &str = "tokenizer.ggml.model";
/// The pre-tokenizer's llama.cpp name.
pub const TOKENIZER_PRE: &str = "tokenizer.ggml.pre";
/// Every token.
pub const TOKENS: &str = "tokenizer.ggml.tokens";
/// Every token's score (SentencePiece).
pub const SCORES: &str = "tokenizer.ggml.scores";
/// Every token's type (normal, control, byte, ...).
pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
/// The BPE merges.
pub const MERGES: &str = "tokenizer.ggml.merges";
/// Whether encoding adds the beginning-of-sequence token.
pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
/// Whether encoding adds the end-of-sequence token.
pub const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
/// Whether SentencePiece adds a space before the text.
pub const ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
/// The chat template.
pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// The key of the architecture `arch` for a `{arch}.` key.
pub fn arch(key: &str, arch: &str) -> String {
    key.replace("{arch}", arch)
}

/// The key of a special token's id: `tokenizer.ggml.bos_token_id` for `bos` (llama.cpp's names:
/// `bos`, `eos`, `eot`, `padding`, `unknown`, ...).
pub fn token_id(name: &str) -> String {
    format!("tokenizer.ggml.{name}_token_id")
}
