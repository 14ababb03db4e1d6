//! `config.json` of a Hugging Face model from a GGUF's metadata (llama.cpp's `llama`, `qwen2`,
//! `qwen3` and `gemma3` architectures).

use serde_json::{Value, json};

use super::file::GgufFile;
use super::keys;
use crate::FloatDtype;
use crate::config::{
    Architecture, HfConfig, OneOrMany, longrope_attention_factor, slides_in_pattern,
};
use crate::error::{Error, Result};

/// llama.cpp's tensor of per-frequency RoPE divisors, written for Llama 3.1/3.2 scaling.
pub const ROPE_FREQS_TENSOR: &str = "rope_freqs.weight";

/// llama.cpp's name of the LLaMA architecture.
pub const LLAMA: &str = "llama";

/// An f32 stored in the file, as the decimal it was written from (1e-5, not 9.99999974e-6).
fn short(value: f64) -> f64 {
    (value as f32).to_string().parse().unwrap_or(value)
}

/// The family of the GGUF (`general.architecture`), and llama.cpp's name of it, the prefix of
/// its other keys.
pub fn architecture(gguf: &GgufFile) -> Result<(Architecture, &str)> {
    let name = gguf
        .string(keys::ARCHITECTURE)?
        .ok_or_else(|| Error::key(gguf.path(), keys::ARCHITECTURE, "missing metadata"))?;
    let arch = Architecture::from_gguf_name(name).ok_or_else(|| {
        Error::key(
            gguf.path(),
            keys::ARCHITECTURE,
            format!(
                "`{name}` is not supported (supported: {})",
                Architecture::gguf_names()
            ),
        )
    })?;
    Ok((arch, name))
}

/// The `config.json` transformers makes of the GGUF `gguf`, its weights in `dtype`.
pub fn hf_config(gguf: &GgufFile, dtype: FloatDtype) -> Result<HfConfig> {
    let (architecture, arch) = architecture(gguf)?;
    let key = |name: &str| keys::arch(name, arch);
    let hidden = gguf.require_usize(&key(keys::EMBEDDING_LENGTH))?;
    let heads = gguf.require_usize(&key(keys::HEAD_COUNT))?;
    let kv_heads = gguf.usize(&key(keys::HEAD_COUNT_KV))?.unwrap_or(heads);
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(Error::key(
            gguf.path(),
            key(keys::HEAD_COUNT_KV),
            format!("{kv_heads} KV heads do not divide {heads} attention heads"),
        ));
    }
    let head_dim = match gguf.usize(&key(keys::KEY_LENGTH))? {
        Some(d) => d,
        None => hidden / heads,
    };
    let rotary_dim = gguf.usize(&key(keys::ROPE_DIMENSION_COUNT))?;
    if let Some(rot) = rotary_dim
        && rot != head_dim
        && architecture != Architecture::Phi3
    {
        return Err(Error::key(
            gguf.path(),
            key(keys::ROPE_DIMENSION_COUNT),
            format!("partial rotary embeddings ({rot} of {head_dim} dims) are not supported"),
        ));
    }
    if let Some(experts) = gguf.usize(&key(keys::EXPERT_COUNT))?
        && experts > 0
    {
        return Err(Error::key(
            gguf.path(),
            key(keys::EXPERT_COUNT),
            "mixture-of-experts models are not supported",
        ));
    }
    let vocab_size = match gguf.usize(&key(keys::VOCAB_SIZE))? {
        Some(v) => v,
        None => gguf.shape("token_embd.weight")?[0],
    };
    let theta = gguf.float(&key(keys::ROPE_FREQ_BASE))?.unwrap_or(10000.0);
    let eps = gguf.float(&key(keys::LAYERNORM_RMS_EPS))?.ok_or_else(|| {
        Error::key(
            gguf.path(),
            key(keys::LAYERNORM_RMS_EPS),
            "missing metadata",
        )
    })?;
    let context = gguf.usize(&key(keys::CONTEXT_LENGTH))?.unwrap_or(2048);
    // llama.cpp calls the padding token `padding`.
    let token_id = |name: &str| -> Result<Option<u32>> {
        Ok(gguf.usize(&keys::token_id(name))?.map(|id| id as u32))
    };
    // llama.cpp runs Qwen's layers without sliding windows (and transformers' config of such
    // a GGUF turns them off).
    let qwen = matches!(architecture, Architecture::Qwen2 | Architecture::Qwen3);
    let layers = gguf.require_usize(&key(keys::BLOCK_COUNT))?;
    let mut config = HfConfig {
        use_sliding_window: qwen.then_some(false),
        sliding_window: qwen.then_some(Value::Null),
        architectures: Some(vec![architecture.class_name().into()]),
        model_type: Some(architecture.model_type().into()),
        hidden_act: Some("silu".into()),
        hidden_size: hidden,
        intermediate_size: gguf.require_usize(&key(keys::FEED_FORWARD_LENGTH))?,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: Some(kv_heads),
        head_dim: Some(head_dim),
        rms_norm_eps: short(eps),
        rope_theta: Some(short(theta)),
        rope_scaling: rope_scaling(gguf, arch, theta, head_dim)?,
        max_position_embeddings: context,
        vocab_size,
        tie_word_embeddings: Some(!gguf.has_tensor("output.weight")),
        attention_bias: gguf.has_tensor("blk.0.attn_q.bias"),
        mlp_bias: false,
        dtype: Some(dtype.torch_name().into()),
        use_cache: Some(true),
        bos_token_id: token_id("bos")?,
        eos_token_id: token_id("eos")?.map(OneOrMany::One),
        pad_token_id: token_id("padding")?,
        ..HfConfig::default()
    };
    if architecture == Architecture::Gemma3 {
        gemma3(gguf, &mut config, heads, head_dim)?;
    }
    if architecture == Architecture::Phi3 {
        phi3(gguf, &mut config, rotary_dim.unwrap_or(head_dim), head_dim)?;
    }
    Ok(config)
}

/// llama.cpp's `phi3`: the rotated part of each head, the pretraining length, LongRoPE's
/// factors from its `rope_factors_short`/`rope_factors_long` tensors and attention factor (left
/// out where it is the one transformers derives); no sliding window (llama.cpp runs Phi-3
/// without one, as transformers' reading of such a GGUF does).
fn phi3(gguf: &GgufFile, config: &mut HfConfig, rotary_dim: usize, head_dim: usize) -> Result<()> {
    config.sliding_window = Some(Value::Null);
    if rotary_dim != head_dim {
        config.partial_rotary_factor = Some(rotary_dim as f64 / head_dim as f64);
    }
    let context = config.max_position_embeddings;
    let original = gguf
        .usize(&keys::arch(keys::ROPE_SCALING_ORIG_CTX_LEN, "phi3"))?
        .unwrap_or(context);
    config.original_max_position_embeddings = Some(original);
    let (short_name, long_name) = PHI3_ROPE_FACTORS;
    if !gguf.has_tensor(short_name) && !gguf.has_tensor(long_name) {
        return Ok(());
    }
    let factors = |name: &str| -> Result<Vec<f64>> {
        let values = gguf.dequantize(name)?;
        if values.len() != rotary_dim / 2 {
            return Err(Error::key(
                gguf.path(),
                name,
                format!("{} factors, expected {}", values.len(), rotary_dim / 2),
            ));
        }
        Ok(values.into_iter().map(|v| short(f64::from(v))).collect())
    };
    let mut scaling = json!({
        "rope_type": "longrope",
        "short_factor": factors(short_name)?,
        "long_factor": factors(long_name)?,
    });
    let derived = longrope_attention_factor(context as f64 / original as f64, original);
    if let Some(stored) = gguf.float(&keys::arch(keys::ROPE_SCALING_ATTN_FACTOR, "phi3"))?
        && stored as f32 != derived as f32
    {
        scaling["attention_factor"] = json!(short(stored));
    }
    config.rope_scaling = Some(scaling);
    Ok(())
}

/// llama.cpp's LongRoPE tensors: the short and the long factors.
pub const PHI3_ROPE_FACTORS: (&str, &str) =
    ("rope_factors_short.weight", "rope_factors_long.weight");

/// What llama.cpp's `gemma3` fixes rather than stores: GeGLU; with a sliding window, Gemma's
/// pattern of five local layers (RoPE base 10000) to a global one; scores scaled by
/// `1/sqrt(head_dim)`, or by `1/sqrt(hidden/heads)` for the 62 layers of the 27B model.
fn gemma3(gguf: &GgufFile, config: &mut HfConfig, heads: usize, head_dim: usize) -> Result<()> {
    let layers = config.num_hidden_layers;
    config.hidden_act = None;
    config.hidden_activation = Some("gelu_pytorch_tanh".into());
    let window = gguf
        .usize(&keys::arch(keys::SLIDING_WINDOW, "gemma3"))?
        .filter(|&w| w > 0);
    config.sliding_window = Some(window.map_or(Value::Null, |w| json!(w)));
    config.layer_types = Some(
        (0..layers)
            .map(|i| {
                if window.is_some() && slides_in_pattern(i, GEMMA3_PATTERN) {
                    "sliding_attention".into()
                } else {
                    "full_attention".into()
                }
            })
            .collect(),
    );
    config.rope_local_base_freq = Some(GEMMA3_LOCAL_ROPE_THETA);
    config.query_pre_attn_scalar = Some(json!(gemma3_query_scalar(
        layers,
        config.hidden_size,
        heads,
        head_dim
    )));
    Ok(())
}

/// The `query_pre_attn_scalar` llama.cpp's `gemma3` scales scores by (`1/sqrt` of it):
/// `head_dim`, or `hidden / heads` for the 62 layers of the 27B model.
pub fn gemma3_query_scalar(layers: usize, hidden: usize, heads: usize, head_dim: usize) -> usize {
    if layers == GEMMA3_27B_LAYERS {
        hidden / heads
    } else {
        head_dim
    }
}

/// Every this-many-th layer of llama.cpp's `gemma3` is global, the others slide.
pub const GEMMA3_PATTERN: usize = 6;
/// The RoPE base llama.cpp's `gemma3` gives its sliding layers.
pub const GEMMA3_LOCAL_ROPE_THETA: f64 = 10000.0;
/// The layers of Gemma 3 27B, whose scores llama.cpp scales by `1/sqrt(hidden/heads)`.
const GEMMA3_27B_LAYERS: usize = 62;

/// `rope_scaling` for config.json: linear scaling from metadata, or the Llama 3 frequency
/// scaling recovered from llama.cpp's `rope_freqs` tensor (`None`: no scaling).
fn rope_scaling(gguf: &GgufFile, arch: &str, theta: f64, head_dim: usize) -> Result<Option<Value>> {
    let scaling_type = keys::arch(keys::ROPE_SCALING_TYPE, arch);
    let scaling_factor = keys::arch(keys::ROPE_SCALING_FACTOR, arch);
    let kind = gguf.string(&scaling_type)?;
    match kind {
        None | Some("none") => {}
        Some("linear") => {
            let factor = gguf
                .float(&scaling_factor)?
                .ok_or_else(|| Error::key(gguf.path(), &scaling_factor, "missing metadata"))?;
            return Ok(Some(
                json!({"rope_type": "linear", "factor": short(factor)}),
            ));
        }
        Some(other) => {
            return Err(Error::key(
                gguf.path(),
                &scaling_type,
                format!("RoPE scaling `{other}` is not supported (none, linear, or Llama 3)"),
            ));
        }
    }
    if !gguf.has_tensor(ROPE_FREQS_TENSOR) {
        return Ok(None);
    }
    let divisors = gguf.dequantize(ROPE_FREQS_TENSOR)?;
    let params = fit_llama3(&divisors, theta, head_dim).ok_or_else(|| {
        Error::key(
            gguf.path(),
            ROPE_FREQS_TENSOR,
            "RoPE frequency factors that are not Llama 3 scaling are not supported",
        )
    })?;
    Ok(Some(json!({
        "rope_type": "llama3",
        "factor": params.factor,
        "low_freq_factor": params.low_freq_factor,
        "high_freq_factor": params.high_freq_factor,
        "original_max_position_embeddings": params.original_max_position_embeddings,
    })))
}

/// The parameters of Llama 3's RoPE scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Rope {
    /// The divisor of the long wavelengths.
    pub factor: f64,
    /// The low-frequency factor.
    pub low_freq_factor: f64,
    /// The high-frequency factor.
    pub high_freq_factor: f64,
    /// The context length the model was pretrained with.
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
