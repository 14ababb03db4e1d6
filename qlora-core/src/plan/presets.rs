//! Configurations of well-known models, so `qlora plan --model llama-7b` needs no download.
//! Values are those of the models' published `config.json` files.

/// (name, config.json).
pub const PRESETS: [(&str, &str); 6] = [
    (
        "llama-7b",
        r#"{"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
            "rms_norm_eps": 1e-6, "max_position_embeddings": 2048}"#,
    ),
    (
        "llama-13b",
        r#"{"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
            "num_attention_heads": 40, "num_key_value_heads": 40, "vocab_size": 32000,
            "rms_norm_eps": 1e-6, "max_position_embeddings": 2048}"#,
    ),
    (
        "llama-33b",
        r#"{"hidden_size": 6656, "intermediate_size": 17920, "num_hidden_layers": 60,
            "num_attention_heads": 52, "num_key_value_heads": 52, "vocab_size": 32000,
            "rms_norm_eps": 1e-6, "max_position_embeddings": 2048}"#,
    ),
    (
        "llama-65b",
        r#"{"hidden_size": 8192, "intermediate_size": 22016, "num_hidden_layers": 80,
            "num_attention_heads": 64, "num_key_value_heads": 64, "vocab_size": 32000,
            "rms_norm_eps": 1e-5, "max_position_embeddings": 2048}"#,
    ),
    (
        "llama-2-70b",
        r#"{"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
            "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 32000,
            "rms_norm_eps": 1e-5, "max_position_embeddings": 4096}"#,
    ),
    (
        "llama-3-8b",
        r#"{"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
            "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 8192}"#,
    ),
];

/// The `config.json` text of a preset, with the fields every LLaMA config shares.
pub fn preset_config(name: &str) -> Option<String> {
    let (_, body) = PRESETS.iter().find(|(n, _)| n.eq_ignore_ascii_case(name))?;
    let body = body.trim().trim_start_matches('{');
    Some(format!(
        r#"{{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "tie_word_embeddings": false, {body}"#
    ))
}

pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}
