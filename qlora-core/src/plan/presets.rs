//! Configurations of well-known models, so `qlora plan --model llama-7b` needs no download, and
//! the config a plan is made for.
//! Values are those of the models' published `config.json` files.

use std::path::Path;

use crate::config::{Architecture, ModelConfig};
use crate::error::{Error, Result};

/// name, architecture, sizes (hidden, intermediate, layers, attention heads, key/value heads,
/// vocabulary, maximum positions), RMSNorm epsilon and RoPE theta, tied embeddings.
type Preset = (&'static str, Architecture, [usize; 7], (f64, f64), bool);

const LLAMA: Architecture = Architecture::Llama;
const QWEN2: Architecture = Architecture::Qwen2;
const QWEN3: Architecture = Architecture::Qwen3;
const GEMMA3: Architecture = Architecture::Gemma3;
const PHI3: Architecture = Architecture::Phi3;
/// Qwen's (and Gemma 3's) RMSNorm epsilon and RoPE theta.
const QWEN: (f64, f64) = (1e-6, 1e6);

#[rustfmt::skip]
const PRESETS: [Preset; 18] = [
    ("llama-7b", LLAMA, [4096, 11008, 32, 32, 32, 32000, 2048], (1e-6, 1e4), false),
    ("llama-2-7b", LLAMA, [4096, 11008, 32, 32, 32, 32000, 4096], (1e-5, 1e4), false),
    ("llama-13b", LLAMA, [5120, 13824, 40, 40, 40, 32000, 2048], (1e-6, 1e4), false),
    ("llama-33b", LLAMA, [6656, 17920, 60, 52, 52, 32000, 2048], (1e-6, 1e4), false),
    ("llama-65b", LLAMA, [8192, 22016, 80, 64, 64, 32000, 2048], (1e-5, 1e4), false),
    ("llama-2-70b", LLAMA, [8192, 28672, 80, 64, 8, 32000, 4096], (1e-5, 1e4), false),
    ("llama-3-8b", LLAMA, [4096, 14336, 32, 32, 8, 128256, 8192], (1e-5, 5e5), false),
    // Llama 3.1 and 3.2 (their `llama3` RoPE scaling is added by `preset_config`).
    ("llama-3.1-8b", LLAMA, [4096, 14336, 32, 32, 8, 128256, 131072], (1e-5, 5e5), false),
    ("llama-3.2-1b", LLAMA, [2048, 8192, 16, 32, 8, 128256, 131072], (1e-5, 5e5), true),
    ("llama-3.2-3b", LLAMA, [3072, 8192, 28, 24, 8, 128256, 131072], (1e-5, 5e5), true),
    // Qwen2.5-*-Instruct; Qwen3's head_dim is its default, 128.
    ("qwen2.5-0.5b", QWEN2, [896, 4864, 24, 14, 2, 151936, 32768], QWEN, true),
    ("qwen2.5-7b", QWEN2, [3584, 18944, 28, 28, 4, 152064, 32768], QWEN, false),
    ("qwen3-8b", QWEN3, [4096, 12288, 36, 32, 8, 151936, 40960], QWEN, false),
    // Gemma 3's text models (head_dim 256, their default); 4B and 12B are the text towers of
    // the multimodal checkpoints.
    ("gemma-3-270m", GEMMA3, [640, 2048, 18, 4, 1, 262144, 32768], QWEN, true),
    ("gemma-3-4b", GEMMA3, [2560, 10240, 34, 8, 4, 262208, 131072], QWEN, true),
    ("gemma-3-12b", GEMMA3, [3840, 15360, 48, 16, 8, 262208, 131072], QWEN, true),
    // Phi-3.5-mini-instruct and Phi-4-mini-instruct (fused qkv_proj and gate_up_proj; their
    // LongRoPE and Phi-4-mini's partial rotary factor change no memory figure).
    ("phi-3.5-mini", PHI3, [3072, 8192, 32, 32, 32, 32064, 131072], (1e-5, 1e4), false),
    ("phi-4-mini", PHI3, [3072, 8192, 32, 24, 8, 200064, 131072], (1e-5, 1e4), true),
];

/// The `config.json` text of a preset.
pub fn preset_config(name: &str) -> Option<String> {
    let &(_, arch, sizes, (eps, theta), tied) =
        PRESETS.iter().find(|p| p.0.eq_ignore_ascii_case(name))?;
    let [
        hidden,
        intermediate,
        layers,
        heads,
        kv_heads,
        vocab,
        positions,
    ] = sizes;
    let mut config = serde_json::json!({
        "architectures": [arch.class_name()],
        "model_type": arch.model_type(),
        "tie_word_embeddings": tied,
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
    // Llama 3.1's and 3.2's long-context RoPE (factor 8 and 32 over 8192 positions).
    let factor = match name.to_ascii_lowercase().as_str() {
        n if n.starts_with("llama-3.1-") => Some(8.0),
        n if n.starts_with("llama-3.2-") => Some(32.0),
        _ => None,
    };
    if let Some(factor) = factor {
        config["rope_scaling"] = serde_json::json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        });
    }
    Some(config.to_string())
}

/// The names of the presets.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.0).collect()
}

/// The config of `model`: a preset name, a model directory, or a `config.json`.
pub fn load_config(model: &str) -> Result<ModelConfig> {
    if let Some(text) = preset_config(model) {
        return ModelConfig::parse(&text, Path::new(model));
    }
    let path = Path::new(model);
    // A repo id needs only its config.json (downloaded alone if the cache lacks the repo).
    if let Some(snapshot) = crate::hub::resolve_model_files(model, crate::hub::ModelFiles::Config)?
    {
        return ModelConfig::load(&snapshot.dir);
    }
    if !path.exists() {
        return Err(Error::file(
            path,
            format!(
                "not found: give a model directory, a config.json, a Hugging Face repo id \
                 (ORG/NAME in its cache), or a preset ({})",
                preset_names().join(", ")
            ),
        ));
    }
    ModelConfig::load(path)
}
