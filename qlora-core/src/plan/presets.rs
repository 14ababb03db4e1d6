//! Configurations of well-known models, so `qlora plan --model llama-7b` needs no download.
//! Values are those of the models' published `config.json` files.

/// name, hidden size, intermediate size, layers, attention heads, key/value heads, vocabulary,
/// RMSNorm epsilon, RoPE theta, maximum positions.
type Preset = (
    &'static str,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    f64,
    f64,
    usize,
);

#[rustfmt::skip]
const PRESETS: [Preset; 6] = [
    ("llama-7b", 4096, 11008, 32, 32, 32, 32000, 1e-6, 1e4, 2048),
    ("llama-13b", 5120, 13824, 40, 40, 40, 32000, 1e-6, 1e4, 2048),
    ("llama-33b", 6656, 17920, 60, 52, 52, 32000, 1e-6, 1e4, 2048),
    ("llama-65b", 8192, 22016, 80, 64, 64, 32000, 1e-5, 1e4, 2048),
    ("llama-2-70b", 8192, 28672, 80, 64, 8, 32000, 1e-5, 1e4, 4096),
    ("llama-3-8b", 4096, 14336, 32, 32, 8, 128256, 1e-5, 5e5, 8192),
];

/// The `config.json` text of a preset.
pub fn preset_config(name: &str) -> Option<String> {
    let &(_, hidden, intermediate, layers, heads, kv_heads, vocab, eps, theta, positions) =
        PRESETS.iter().find(|p| p.0.eq_ignore_ascii_case(name))?;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "tie_word_embeddings": false,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "rms_norm_eps": eps,
        "rope_theta": theta,
        "max_position_embeddings": positions,
    });
    Some(config.to_string())
}

/// The names of the presets.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.0).collect()
}
