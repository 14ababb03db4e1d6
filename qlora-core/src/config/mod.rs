//! `config.json` of LLaMA-family models (`LlamaForCausalLM` and close kin), in both the older
//! (`rope_theta` + `rope_scaling`) and the newer (`rope_parameters`) forms.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::dtype::FloatDtype;
use crate::error::{Error, Result};

mod projection;
mod rope;

pub use projection::Projection;
pub use rope::{RopeConfig, RopeScaling};

pub const CONFIG_FILE: &str = "config.json";

/// Architectures whose checkpoints share the LLaMA layout and math.
const SUPPORTED_ARCHITECTURES: [&str; 2] = ["LlamaForCausalLM", "MistralForCausalLM"];

/// The fields we need, typed and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub rope: RopeConfig,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    pub dtype: Option<FloatDtype>,
    /// The checkpoint is already a bitsandbytes 4-bit one.
    pub bnb_4bit: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    hidden_act: Option<String>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    sliding_window: Option<Value>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
    pad_token_id: Option<u32>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    quantization_config: Option<Value>,
    pretraining_tp: Option<usize>,
}

fn default_eps() -> f64 {
    1e-6
}

fn default_max_positions() -> usize {
    2048
}

impl LlamaConfig {
    /// Read `DIR/config.json` (or a path to the file itself).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = if path.is_dir() {
            path.join(CONFIG_FILE)
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        Self::parse(&text, &file)
    }

    /// Parse config JSON; `file` is used in error messages.
    pub fn parse(text: &str, file: &Path) -> Result<Self> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            if key == "." {
                Error::file(file, inner)
            } else {
                Error::key(file, key, inner)
            }
        })?;
        Self::from_raw(raw, file)
    }

    fn from_raw(raw: RawConfig, file: &Path) -> Result<Self> {
        let bad = |key: &str, message: String| Error::key(file, key, message);
        let architecture = match (&raw.architectures, &raw.model_type) {
            (Some(archs), _) if !archs.is_empty() => archs[0].clone(),
            (_, Some(model_type)) if model_type == "llama" => "LlamaForCausalLM".to_string(),
            (_, Some(model_type)) if model_type == "mistral" => "MistralForCausalLM".to_string(),
            _ => {
                return Err(bad(
                    "architectures",
                    "missing; expected [\"LlamaForCausalLM\"]".into(),
                ));
            }
        };
        if !SUPPORTED_ARCHITECTURES.contains(&architecture.as_str()) {
            return Err(bad(
                "architectures",
                format!(
                    "`{architecture}` is not supported; supported: {}",
                    SUPPORTED_ARCHITECTURES.join(", ")
                ),
            ));
        }
        if let Some(window) = &raw.sliding_window
            && !window.is_null()
        {
            return Err(bad(
                "sliding_window",
                format!("sliding-window attention ({window}) is not supported"),
            ));
        }
        if let Some(act) = &raw.hidden_act
            && act != "silu"
        {
            return Err(bad(
                "hidden_act",
                format!("`{act}` is not supported, only silu"),
            ));
        }
        if let Some(tp) = raw.pretraining_tp
            && tp > 1
        {
            return Err(bad(
                "pretraining_tp",
                format!("{tp} is not supported, only 1"),
            ));
        }
        for (key, value) in [
            ("vocab_size", raw.vocab_size),
            ("hidden_size", raw.hidden_size),
            ("intermediate_size", raw.intermediate_size),
            ("num_hidden_layers", raw.num_hidden_layers),
            ("num_attention_heads", raw.num_attention_heads),
        ] {
            if value == 0 {
                return Err(bad(key, "must be positive".into()));
            }
        }
        if !(raw.rms_norm_eps.is_finite() && raw.rms_norm_eps > 0.0) {
            return Err(bad(
                "rms_norm_eps",
                format!("{} must be a positive number", raw.rms_norm_eps),
            ));
        }
        let heads = raw.num_attention_heads;
        let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(bad(
                "num_key_value_heads",
                format!("{kv_heads} does not divide num_attention_heads {heads}"),
            ));
        }
        let head_dim = match raw.head_dim {
            Some(d) if d > 0 => d,
            Some(_) => return Err(bad("head_dim", "must be positive".into())),
            None if raw.hidden_size.is_multiple_of(heads) => raw.hidden_size / heads,
            None => {
                return Err(bad(
                    "hidden_size",
                    format!("{} is not divisible by {heads} heads", raw.hidden_size),
                ));
            }
        };
        if !head_dim.is_multiple_of(2) {
            return Err(bad(
                "head_dim",
                format!("{head_dim} must be even for rotary embeddings"),
            ));
        }
        let rope = rope::parse_rope(
            raw.rope_theta,
            raw.rope_scaling.as_ref(),
            raw.rope_parameters.as_ref(),
            file,
        )?;
        let dtype_name = raw.dtype.as_ref().or(raw.torch_dtype.as_ref());
        let dtype = match dtype_name {
            Some(name) => Some(FloatDtype::from_torch_name(name).ok_or_else(|| {
                bad(
                    if raw.dtype.is_some() {
                        "dtype"
                    } else {
                        "torch_dtype"
                    },
                    format!("unsupported dtype `{name}`"),
                )
            })?),
            None => None,
        };
        let bnb_4bit = match &raw.quantization_config {
            None => false,
            Some(q) => {
                let method = q.get("quant_method").and_then(Value::as_str).unwrap_or("");
                let four_bit = q
                    .get("load_in_4bit")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let quant_type = q
                    .get("bnb_4bit_quant_type")
                    .and_then(Value::as_str)
                    .unwrap_or("fp4");
                if method != "bitsandbytes" || !four_bit || quant_type != "nf4" {
                    return Err(bad(
                        "quantization_config",
                        "only bitsandbytes 4-bit NF4 checkpoints are supported".into(),
                    ));
                }
                true
            }
        };
        Ok(LlamaConfig {
            architecture,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps,
            max_position_embeddings: raw.max_position_embeddings,
            tie_word_embeddings: raw.tie_word_embeddings,
            attention_bias: raw.attention_bias,
            mlp_bias: raw.mlp_bias,
            rope,
            bos_token_id: raw.bos_token_id,
            eos_token_ids: match raw.eos_token_id {
                None => Vec::new(),
                Some(OneOrMany::One(id)) => vec![id],
                Some(OneOrMany::Many(ids)) => ids,
            },
            pad_token_id: raw.pad_token_id,
            dtype,
            bnb_4bit,
        })
    }

    /// `[out, in]` of projection `p` in every decoder layer.
    pub fn projection_shape(&self, p: Projection) -> [usize; 2] {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        match p {
            Projection::Q => [q, h],
            Projection::K | Projection::V => [kv, h],
            Projection::O => [h, q],
            Projection::Gate | Projection::Up => [i, h],
            Projection::Down => [h, i],
        }
    }

    /// The checkpoint names and shapes of the seven projection weights of decoder layer `layer`.
    pub fn linear_shapes(&self, layer: usize) -> Vec<(String, [usize; 2])> {
        Projection::ALL
            .into_iter()
            .map(|p| (p.weight_name(layer), self.projection_shape(p)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 10,
        "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1 EXTRA}"#;

    fn parse(extra: &str) -> Result<LlamaConfig> {
        LlamaConfig::parse(&BASE.replace("EXTRA", extra), Path::new("config.json"))
    }

    #[test]
    fn rope_forms() {
        let c = parse("").unwrap();
        assert_eq!(c.head_dim, 4);
        assert_eq!(
            c.rope,
            RopeConfig {
                theta: 10000.0,
                scaling: RopeScaling::Default
            }
        );
        let c = parse(r#", "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}"#)
            .unwrap();
        assert_eq!(c.rope.theta, 500000.0);
        let c = parse(r#", "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}"#).unwrap();
        assert!(matches!(c.rope.scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        let err = parse(r#", "rope_scaling": {"type": "yarn", "factor": 2.0}"#).unwrap_err();
        assert!(err.to_string().contains("rope_scaling.rope_type"), "{err}");
    }

    #[test]
    fn errors_name_the_key() {
        let err = LlamaConfig::parse(
            r#"{"architectures": ["LlamaForCausalLM"]}"#,
            Path::new("c.json"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("vocab_size"), "{err}");
        let err = parse(r#", "hidden_act": "gelu""#).unwrap_err();
        assert!(err.to_string().contains("`hidden_act`"), "{err}");
        let err = LlamaConfig::parse(
            &BASE
                .replace("\"hidden_size\": 8", "\"hidden_size\": \"8\"")
                .replace("EXTRA", ""),
            Path::new("c.json"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("`hidden_size`"), "{err}");
        let err = LlamaConfig::parse(
            &BASE
                .replace("LlamaForCausalLM", "GPT2LMHeadModel")
                .replace("EXTRA", ""),
            Path::new("c.json"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("GPT2LMHeadModel"), "{err}");
    }
}
