//! `config.json` of the decoder models this toolkit trains, in both the older (`rope_theta` +
//! `rope_scaling`) and the newer (`rope_parameters`) forms: the file's keys ([`HfConfig`]),
//! the model families ([`Architecture`]), the structure of their layers ([`DecoderSpec`]), the
//! table of their tensors' names ([`ModelTensor`]) and the projections LoRA adapts
//! ([`Projection`]).

use std::path::Path;

use serde_json::Value;

use crate::dtype::FloatDtype;
use crate::error::{Error, Result};

mod arch;
mod hf;
mod projection;
mod rope;
mod spec;
pub mod tensors;
mod windows;

pub use arch::Architecture;
pub use hf::{HfConfig, OneOrMany};
pub use projection::Projection;
pub use rope::{RopeConfig, RopeScaling, longrope_attention_factor};
pub use spec::{Activation, DecoderSpec, LayerSpec, NormForm, RopeKind};
pub use tensors::{ModelTensor, Rotary};
pub use windows::slides_in_pattern;

/// The name of a model directory's configuration.
pub const CONFIG_FILE: &str = "config.json";

/// The fields we need, typed and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The model family.
    pub architecture: Architecture,
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
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// Values a head holds.
    pub head_dim: usize,
    /// RMSNorm's epsilon.
    pub rms_norm_eps: f64,
    /// Longest sequence the model was trained for.
    pub max_position_embeddings: usize,
    /// The rotary embedding (of the global layers).
    pub rope: RopeConfig,
    /// The beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// The end-of-sequence tokens.
    pub eos_token_ids: Vec<u32>,
    /// The padding token.
    pub pad_token_id: Option<u32>,
    /// The weights' dtype, if the file says.
    pub dtype: Option<FloatDtype>,
    /// The checkpoint is already a bitsandbytes 4-bit one.
    pub bnb_4bit: bool,
    /// The structure of the layers.
    pub spec: DecoderSpec,
}

impl ModelConfig {
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
        let raw: HfConfig = serde_path_to_error::deserialize(de).map_err(|e| {
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

    /// The configuration `raw` describes (read from `file`, for messages).
    pub fn from_raw(raw: HfConfig, file: &Path) -> Result<Self> {
        let bad = |key: &str, message: String| Error::key(file, key, message);
        if raw.vision_config.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(bad(
                "vision_config",
                "a multimodal checkpoint (a vision tower beside the text model) is not \
                 supported; use its text model (e.g. Gemma3ForCausalLM)"
                    .into(),
            ));
        }
        for (key, value) in [
            ("num_experts", &raw.num_experts),
            ("num_local_experts", &raw.num_local_experts),
            ("n_routed_experts", &raw.n_routed_experts),
        ] {
            if value
                .as_ref()
                .and_then(Value::as_u64)
                .is_some_and(|n| n > 0)
            {
                return Err(bad(
                    key,
                    "a mixture-of-experts model is not supported (dense models only)".into(),
                ));
            }
        }
        let architecture = match (&raw.architectures, &raw.model_type) {
            (Some(archs), _) if !archs.is_empty() => Architecture::from_class_name(&archs[0])
                .ok_or_else(|| {
                    bad(
                        "architectures",
                        format!(
                            "`{}` is not supported; supported: {}",
                            archs[0],
                            Architecture::class_names()
                        ),
                    )
                })?,
            (_, Some(model_type)) => {
                Architecture::from_model_type(model_type).ok_or_else(|| {
                    bad(
                        "model_type",
                        format!(
                            "`{model_type}` is not supported; supported: {}",
                            Architecture::class_names()
                        ),
                    )
                })?
            }
            _ => {
                return Err(bad(
                    "architectures",
                    "missing; expected [\"LlamaForCausalLM\"]".into(),
                ));
            }
        };
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
            None => architecture.default_head_dim(&raw).ok_or_else(|| {
                bad(
                    "hidden_size",
                    format!("{} is not divisible by {heads} heads", raw.hidden_size),
                )
            })?,
        };
        if !head_dim.is_multiple_of(2) {
            return Err(bad(
                "head_dim",
                format!("{head_dim} must be even for rotary embeddings"),
            ));
        }
        // Per layer type (Gemma 3 in transformers 5): the global layers' parameters; the
        // architecture reads the sliding layers'.
        let parameters = raw.rope_parameters.as_ref();
        let keys = rope::RopeKeys {
            rope_theta: raw.rope_theta,
            rope_scaling: raw.rope_scaling.as_ref(),
            rope_parameters: parameters
                .and_then(|p| p.get("full_attention"))
                .or(parameters),
            partial_rotary_factor: raw.partial_rotary_factor,
            original_max_position_embeddings: raw.original_max_position_embeddings,
            max_position_embeddings: raw.max_position_embeddings,
            head_dim,
        };
        let rope = rope::parse_rope(&keys, architecture.default_rope_theta(), file)?;
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
        let spec = architecture.spec(&raw, head_dim, file)?;
        Ok(ModelConfig {
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
            rope,
            bos_token_id: raw.bos_token_id,
            eos_token_ids: raw.eos_token_id.map(|ids| ids.ids()).unwrap_or_default(),
            pad_token_id: raw.pad_token_id,
            dtype,
            bnb_4bit,
            spec,
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
            Projection::Qkv => [q + 2 * kv, h],
            Projection::O => [h, q],
            Projection::Gate | Projection::Up => [i, h],
            Projection::GateUp => [2 * i, h],
            Projection::Down => [h, i],
        }
    }

    /// The outputs a fused projection stacks, in row order (`q, k, v`; `gate, up`), or
    /// the projection itself.
    pub fn projection_parts(&self, p: Projection) -> Vec<(Projection, usize)> {
        let parts: &[Projection] = match p {
            Projection::Qkv => &[Projection::Q, Projection::K, Projection::V],
            Projection::GateUp => &[Projection::Gate, Projection::Up],
            _ => return vec![(p, self.projection_shape(p)[0])],
        };
        parts
            .iter()
            .map(|&part| (part, self.projection_shape(part)[0]))
            .collect()
    }

    /// The checkpoint names and shapes of the projection weights of decoder layer `layer`.
    pub fn linear_shapes(&self, layer: usize) -> Vec<(String, [usize; 2])> {
        self.architecture
            .projections()
            .iter()
            .map(|&p| (p.weight_name(layer), self.projection_shape(p)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 10,
        "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1 EXTRA}"#;

    fn parse(extra: &str) -> Result<ModelConfig> {
        ModelConfig::parse(&BASE.replace("EXTRA", extra), Path::new("config.json"))
    }

    #[test]
    fn rope_forms() {
        let c = parse("").unwrap();
        assert_eq!(c.head_dim, 4);
        assert_eq!(c.rope, RopeConfig::plain(10000.0));
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
        let err = ModelConfig::parse(
            r#"{"architectures": ["LlamaForCausalLM"]}"#,
            Path::new("c.json"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("vocab_size"), "{err}");
        let err = parse(r#", "hidden_act": "gelu""#).unwrap_err();
        assert!(err.to_string().contains("`hidden_act`"), "{err}");
        let err = ModelConfig::parse(
            &BASE
                .replace("\"hidden_size\": 8", "\"hidden_size\": \"8\"")
                .replace("EXTRA", ""),
            Path::new("c.json"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("`hidden_size`"), "{err}");
        let err = ModelConfig::parse(
            &BASE
                .replace("LlamaForCausalLM", "GPT2LMHeadModel")
                .replace("EXTRA", ""),
            Path::new("c.json"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("GPT2LMHeadModel"), "{err}");
    }

    /// A Gemma 3 config: `extra` added to the Llama base with the class replaced.
    fn gemma(extra: &str) -> Result<ModelConfig> {
        let text = BASE
            .replace("LlamaForCausalLM", "Gemma3ForCausalLM")
            .replace("EXTRA", extra);
        ModelConfig::parse(&text, Path::new("config.json"))
    }

    #[test]
    fn gemma3_defaults_and_older_keys() {
        let c = gemma("").unwrap();
        let spec = &c.spec;
        // Gemma3TextConfig's defaults: head_dim 256, tied, global base 1e6, local 1e4,
        // query_pre_attn_scalar 256, five sliding layers of 4096 keys to a global one.
        assert_eq!((c.head_dim, spec.tied_head), (256, true));
        assert_eq!(c.rope.theta, 1e6);
        assert_eq!(spec.local_rope_theta, Some(1e4));
        assert_eq!(spec.attention_scale, 1.0 / 16.0);
        assert_eq!(spec.layers[0].window, Some(4096));
        assert_eq!(spec.layers[0].rope, RopeKind::Local);
        assert_eq!(spec.activation, Activation::GeluTanh);
        // The hub's older keys: rope_scaling for the global layers, rope_local_base_freq,
        // sliding_window_pattern.
        let text = BASE
            .replace("LlamaForCausalLM", "Gemma3ForCausalLM")
            .replace("\"num_hidden_layers\": 1", "\"num_hidden_layers\": 4")
            .replace(
                "EXTRA",
                r#", "sliding_window_pattern": 2, "rope_local_base_freq": 5.0, "rope_theta": 7.0,
                "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window": 3"#,
            );
        let c = ModelConfig::parse(&text, Path::new("config.json")).unwrap();
        let windows: Vec<_> = c.spec.layers.iter().map(|l| l.window).collect();
        assert_eq!(windows, [Some(3), None, Some(3), None]);
        assert_eq!(c.spec.local_rope_theta, Some(5.0));
        assert_eq!(c.rope.theta, 7.0);
        assert_eq!(c.rope.scaling, RopeScaling::Linear { factor: 8.0 });
    }

    #[test]
    fn unsupported_switches_name_their_key() {
        for (extra, key) in [
            (r#", "hidden_activation": "gelu""#, "`hidden_activation`"),
            (
                r#", "use_bidirectional_attention": true"#,
                "`use_bidirectional_attention`",
            ),
            (
                r#", "attn_logit_softcapping": "x""#,
                "`attn_logit_softcapping`",
            ),
            (
                r#", "query_pre_attn_scalar": -1"#,
                "`query_pre_attn_scalar`",
            ),
            (
                r#", "vision_config": {"hidden_size": 4}"#,
                "`vision_config`",
            ),
            (r#", "num_experts": 8"#, "`num_experts`"),
        ] {
            let err = gemma(extra).unwrap_err().to_string();
            assert!(err.contains(key) && !err.contains('\n'), "{extra}: {err}");
        }
        for (extra, key) in [
            (r#", "num_local_experts": 8"#, "`num_local_experts`"),
            (r#", "n_routed_experts": 64"#, "`n_routed_experts`"),
        ] {
            let err = parse(extra).unwrap_err().to_string();
            assert!(err.contains(key), "{extra}: {err}");
        }
        // Dense configs that spell the key with no experts load.
        assert!(parse(r#", "num_experts": 0"#).is_ok());
        // Soft-capped final logits are read, and refused when the model is built.
        let c = gemma(r#", "final_logit_softcapping": 30.0"#).unwrap();
        assert_eq!(c.spec.final_logit_softcap, Some(30.0));
        assert!(c.spec.unsupported().is_some());
    }
}
