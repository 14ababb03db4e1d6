//! `config.json` of a Hugging Face `LlamaForCausalLM` from a GGUF's `llama.*` metadata.

use serde_json::{Value, json};

use super::file::GgufFile;
use crate::FloatDtype;
use crate::error::{Error, Result};

/// llama.cpp's tensor of per-frequency RoPE divisors, written for Llama 3.1/3.2 scaling.
pub const ROPE_FREQS_TENSOR: &str = "rope_freqs.weight";

/// An f32 stored in the file, as the decimal it was written from (1e-5, not 9.99999974e-6).
fn short(value: f64) -> f64 {
    (value as f32).to_string().parse().unwrap_or(value)
}

pub fn llama_config(gguf: &GgufFile, dtype: FloatDtype) -> Result<Value> {
    let arch = gguf
        .string("general.architecture")?
        .ok_or_else(|| Error::key(gguf.path(), "general.architecture", "missing metadata"))?;
    if arch != "llama" {
        return Err(Error::key(
            gguf.path(),
            "general.architecture",
            format!("`{arch}` is not supported: only LLaMA-family (`llama`) models"),
        ));
    }
    let key = |name: &str| format!("llama.{name}");
    let hidden = gguf.require_usize(&key("embedding_length"))?;
    let heads = gguf.require_usize(&key("attention.head_count"))?;
    let kv_heads = gguf
        .usize(&key("attention.head_count_kv"))?
        .unwrap_or(heads);
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(Error::key(
            gguf.path(),
            key("attention.head_count_kv"),
            format!("{kv_heads} KV heads do not divide {heads} attention heads"),
        ));
    }
    let head_dim = match gguf.usize(&key("attention.key_length"))? {
        Some(d) => d,
        None => hidden / heads,
    };
    if let Some(rot) = gguf.usize(&key("rope.dimension_count"))?
        && rot != head_dim
    {
        return Err(Error::key(
            gguf.path(),
            key("rope.dimension_count"),
            format!("partial rotary embeddings ({rot} of {head_dim} dims) are not supported"),
        ));
    }
    if let Some(experts) = gguf.usize(&key("expert_count"))?
        && experts > 0
    {
        return Err(Error::key(
            gguf.path(),
            key("expert_count"),
            "mixture-of-experts models are not supported",
        ));
    }
    let vocab_size = match gguf.usize(&key("vocab_size"))? {
        Some(v) => v,
        None => gguf.shape("token_embd.weight")?[0],
    };
    let theta = gguf.float(&key("rope.freq_base"))?.unwrap_or(10000.0);
    let eps = gguf
        .float(&key("attention.layer_norm_rms_epsilon"))?
        .ok_or_else(|| {
            Error::key(
                gguf.path(),
                key("attention.layer_norm_rms_epsilon"),
                "missing metadata",
            )
        })?;
    let context = gguf.usize(&key("context_length"))?.unwrap_or(2048);

    let rope_scaling = rope_scaling(gguf, theta, head_dim)?;
    let token_id = |name: &str| -> Result<Option<usize>> {
        gguf.usize(&format!("tokenizer.ggml.{name}_token_id"))
    };
    let mut config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": gguf.require_usize(&key("feed_forward_length"))?,
        "num_hidden_layers": gguf.require_usize(&key("block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": short(eps),
        "rope_theta": short(theta),
        "rope_scaling": rope_scaling,
        "max_position_embeddings": context,
        "vocab_size": vocab_size,
        "tie_word_embeddings": !gguf.has_tensor("output.weight"),
        "attention_bias": gguf.has_tensor("blk.0.attn_q.bias"),
        "mlp_bias": false,
        "dtype": dtype.torch_name(),
        "use_cache": true,
    });
    // llama.cpp calls the padding token `padding`.
    for (name, key) in [("bos", "bos"), ("eos", "eos"), ("padding", "pad")] {
        if let Some(id) = token_id(name)? {
            config[format!("{key}_token_id")] = json!(id);
        }
    }
    Ok(config)
}

/// `rope_scaling` for config.json: linear scaling from metadata, or the Llama 3 frequency
/// scaling recovered from llama.cpp's `rope_freqs` tensor.
fn rope_scaling(gguf: &GgufFile, theta: f64, head_dim: usize) -> Result<Value> {
    let kind = gguf.string("llama.rope.scaling.type")?;
    match kind {
        None | Some("none") => {}
        Some("linear") => {
            let factor = gguf.float("llama.rope.scaling.factor")?.ok_or_else(|| {
                Error::key(gguf.path(), "llama.rope.scaling.factor", "missing metadata")
            })?;
            return Ok(json!({"rope_type": "linear", "factor": short(factor)}));
        }
        Some(other) => {
            return Err(Error::key(
                gguf.path(),
                "llama.rope.scaling.type",
                format!("RoPE scaling `{other}` is not supported (none, linear, or Llama 3)"),
            ));
        }
    }
    if !gguf.has_tensor(ROPE_FREQS_TENSOR) {
        return Ok(Value::Null);
    }
    let divisors = gguf.dequantize(ROPE_FREQS_TENSOR)?;
    let params = fit_llama3(&divisors, theta, head_dim).ok_or_else(|| {
        Error::key(
            gguf.path(),
            ROPE_FREQS_TENSOR,
            "RoPE frequency factors that are not Llama 3 scaling are not supported",
        )
    })?;
    Ok(json!({
        "rope_type": "llama3",
        "factor": params.factor,
        "low_freq_factor": params.low_freq_factor,
        "high_freq_factor": params.high_freq_factor,
        "original_max_position_embeddings": params.original_max_position_embeddings,
    }))
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Rope {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// The divisor llama.cpp's converter writes for each rotary frequency under Llama 3 scaling.
pub fn llama3_divisors(params: &Llama3Rope, theta: f64, head_dim: usize) -> Vec<f64> {
    let old = params.original_max_position_embeddings as f64;
    let low_wavelen = old / params.low_freq_factor;
    let high_wavelen = old / params.high_freq_factor;
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                params.factor
            } else {
                let smooth = (old / wavelen - params.low_freq_factor)
                    / (params.high_freq_factor - params.low_freq_factor);
                1.0 / ((1.0 - smooth) / params.factor + smooth)
            }
        })
        .collect()
}

/// The GGUF keeps only the divisors; find the Llama 3 parameters that produce them. The
/// factor is the largest divisor; the others come from the values Meta has published.
pub fn fit_llama3(divisors: &[f32], theta: f64, head_dim: usize) -> Option<Llama3Rope> {
    if divisors.len() != head_dim / 2 {
        return None;
    }
    let factor = divisors.iter().copied().fold(f32::MIN, f32::max) as f64;
    for original in [8192, 4096, 2048, 16384, 32768] {
        for (low, high) in [(1.0, 4.0), (1.0, 8.0), (2.0, 8.0), (1.0, 2.0)] {
            let params = Llama3Rope {
                factor: short(factor),
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: original,
            };
            let expected = llama3_divisors(&params, theta, head_dim);
            let matches = expected
                .iter()
                .zip(divisors)
                .all(|(e, d)| (e - *d as f64).abs() <= 1e-4 * e.abs().max(1.0));
            if matches {
                return Some(params);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_parameters_are_recovered_from_divisors() {
        let params = Llama3Rope {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let divisors: Vec<f32> = llama3_divisors(&params, 500000.0, 64)
            .into_iter()
            .map(|d| d as f32)
            .collect();
        assert_eq!(fit_llama3(&divisors, 500000.0, 64), Some(params));
        let mut other = divisors.clone();
        other[20] *= 1.5;
        assert_eq!(fit_llama3(&other, 500000.0, 64), None);
    }

    #[test]
    fn stored_f32_values_read_as_their_decimals() {
        assert_eq!(short(9.999999747378752e-6), 1e-5);
        assert_eq!(short(100000.0), 100000.0);
    }
}
