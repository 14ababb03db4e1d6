//! Rotary embedding settings of `config.json`: `rope_theta` with `rope_scaling`, or the newer
//! `rope_parameters`; the part of every head rotated (`partial_rotary_factor`).

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// Rotary embedding frequencies: plain, linearly scaled, or Llama 3.1's band-wise scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain `theta^(-2i/d)` frequencies.
    Default,
    /// Every frequency divided by `factor` (position interpolation).
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// Llama 3.1's scaling: long wavelengths slowed by `factor`, short ones kept, the band between
    /// blended.
    Llama3 {
        /// The divisor of the long wavelengths.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are divided by `factor`.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length the model was pretrained with.
        original_max_position_embeddings: usize,
    },
    /// LongRoPE (Phi-3): every frequency divided by a factor of its own, the short factors up
    /// to the pretraining length and the long ones past it (for the whole forward pass, as
    /// transformers picks them by the pass's last position), and `cos`, `sin` multiplied by
    /// `attention_factor`.
    LongRope {
        /// Divisors of the frequencies up to `original_max_position_embeddings`.
        short_factor: Vec<f64>,
        /// Divisors of the frequencies past it.
        long_factor: Vec<f64>,
        /// The context length the model was pretrained with.
        original_max_position_embeddings: usize,
        /// Multiplies `cos` and `sin`.
        attention_factor: f64,
    },
}

/// The rotary embedding: its base and scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// The base (`rope_theta`).
    pub theta: f64,
    /// How the frequencies are scaled.
    pub scaling: RopeScaling,
    /// The fraction of every head rotated (its first dimensions); the rest passes through.
    pub partial_rotary_factor: f64,
}

impl RopeConfig {
    /// Plain frequencies of base `theta` over whole heads.
    pub fn plain(theta: f64) -> Self {
        RopeConfig {
            theta,
            scaling: RopeScaling::Default,
            partial_rotary_factor: 1.0,
        }
    }

    /// The dimensions of a `head_dim` head the rotary embedding rotates.
    pub fn rotary_dim(&self, head_dim: usize) -> usize {
        rotary_dim(head_dim, self.partial_rotary_factor)
    }
}

/// The dimensions of a `head_dim` head a partial rotary `factor` rotates (as transformers
/// rounds them: down).
fn rotary_dim(head_dim: usize, factor: f64) -> usize {
    (head_dim as f64 * factor) as usize
}

/// LongRoPE's attention factor when a config does not give one, as transformers (and
/// llama.cpp's converter) derive it from the context extension `factor` over a pretraining
/// length of `original`: `sqrt(1 + ln(factor) / ln(original))`, 1 without extension.
pub fn longrope_attention_factor(factor: f64, original: usize) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        (1.0 + factor.ln() / (original as f64).ln()).sqrt()
    }
}

/// The keys of `config.json` the rotary embedding reads.
pub(super) struct RopeKeys<'a> {
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<&'a Value>,
    pub rope_parameters: Option<&'a Value>,
    /// The top-level `partial_rotary_factor`.
    pub partial_rotary_factor: Option<f64>,
    /// The top-level `original_max_position_embeddings` (Phi-3's, which LongRoPE prefers).
    pub original_max_position_embeddings: Option<usize>,
    pub max_position_embeddings: usize,
    pub head_dim: usize,
}

pub(super) fn parse_rope(
    keys: &RopeKeys<'_>,
    default_theta: f64,
    file: &Path,
) -> Result<RopeConfig> {
    let RopeKeys {
        rope_theta,
        rope_scaling,
        rope_parameters,
        ..
    } = *keys;
    // Newer files put everything in `rope_parameters`; older ones use `rope_theta` and an
    // optional `rope_scaling` object.
    let (key, params, theta) = match (rope_parameters, rope_scaling) {
        (Some(p), _) if !p.is_null() => {
            let theta = p
                .get("rope_theta")
                .and_then(Value::as_f64)
                .or(rope_theta)
                .unwrap_or(default_theta);
            ("rope_parameters", Some(p), theta)
        }
        (_, Some(s)) if !s.is_null() => {
            ("rope_scaling", Some(s), rope_theta.unwrap_or(default_theta))
        }
        _ => ("rope_theta", None, rope_theta.unwrap_or(default_theta)),
    };
    if theta.is_nan() || theta <= 0.0 {
        return Err(Error::key(
            file,
            "rope_theta",
            format!("{theta} must be positive"),
        ));
    }
    let (factor_key, partial_rotary_factor) =
        match params.and_then(|p| p.get("partial_rotary_factor")) {
            Some(v) => {
                let factor_key = format!("{key}.partial_rotary_factor");
                let factor = v.as_f64().ok_or_else(|| {
                    Error::key(file, &factor_key, format!("{v} must be a number"))
                })?;
                (factor_key, factor)
            }
            None => (
                "partial_rotary_factor".to_string(),
                keys.partial_rotary_factor.unwrap_or(1.0),
            ),
        };
    let rotary_dim = rotary_dim(keys.head_dim, partial_rotary_factor);
    if !(partial_rotary_factor > 0.0 && partial_rotary_factor <= 1.0)
        || rotary_dim == 0
        || !rotary_dim.is_multiple_of(2)
    {
        return Err(Error::key(
            file,
            factor_key,
            format!(
                "{partial_rotary_factor} must be in (0, 1] and rotate an even number of a \
                 head's {} dimensions",
                keys.head_dim
            ),
        ));
    }
    let Some(params) = params else {
        return Ok(RopeConfig {
            partial_rotary_factor,
            ..RopeConfig::plain(theta)
        });
    };
    let kind = params
        .get("rope_type")
        .or_else(|| params.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let number = |field: &str| -> Result<f64> {
        params
            .get(field)
            .and_then(Value::as_f64)
            .ok_or_else(|| Error::key(file, format!("{key}.{field}"), "missing or not a number"))
    };
    let scaling = match kind {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear {
            factor: number("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: number("factor")?,
            low_freq_factor: number("low_freq_factor")?,
            high_freq_factor: number("high_freq_factor")?,
            original_max_position_embeddings: number("original_max_position_embeddings")? as usize,
        },
        // Phi-3's first checkpoints call it `su`.
        "longrope" | "su" => long_rope(keys, params, key, rotary_dim, file)?,
        other => {
            return Err(Error::key(
                file,
                format!("{key}.rope_type"),
                format!("`{other}` is not supported (default, linear, llama3, longrope)"),
            ));
        }
    };
    Ok(RopeConfig {
        theta,
        scaling,
        partial_rotary_factor,
    })
}

/// LongRoPE's factors, lengths and attention factor, as transformers derives them: the
/// pretraining length from the top-level key (Phi-3's) before the object's, `factor` from
/// the object or the ratio of the two lengths, the attention factor from the object or
/// `sqrt(1 + ln(factor) / ln(original))`.
fn long_rope(
    keys: &RopeKeys<'_>,
    params: &Value,
    key: &str,
    rotary_dim: usize,
    file: &Path,
) -> Result<RopeScaling> {
    let factors = |field: &str| -> Result<Vec<f64>> {
        let bad = || {
            Error::key(
                file,
                format!("{key}.{field}"),
                format!("expected {} numbers, one a rotated pair", rotary_dim / 2),
            )
        };
        let values: Vec<f64> = params
            .get(field)
            .and_then(Value::as_array)
            .ok_or_else(bad)?
            .iter()
            .map(|v| v.as_f64().filter(|f| f.is_finite() && *f > 0.0))
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        if values.len() != rotary_dim / 2 {
            return Err(bad());
        }
        Ok(values)
    };
    let original = keys
        .original_max_position_embeddings
        .or_else(|| {
            params
                .get("original_max_position_embeddings")
                .and_then(Value::as_u64)
                .map(|n| n as usize)
        })
        .unwrap_or(keys.max_position_embeddings);
    if original == 0 {
        return Err(Error::key(
            file,
            "original_max_position_embeddings",
            "must be positive",
        ));
    }
    let factor = params
        .get("factor")
        .and_then(Value::as_f64)
        .unwrap_or(keys.max_position_embeddings as f64 / original as f64);
    let attention_factor = params
        .get("attention_factor")
        .and_then(Value::as_f64)
        .unwrap_or_else(|| longrope_attention_factor(factor, original));
    Ok(RopeScaling::LongRope {
        short_factor: factors("short_factor")?,
        long_factor: factors("long_factor")?,
        original_max_position_embeddings: original,
        attention_factor,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Architecture, ModelConfig};

    /// A Phi-3 config (head_dim 8) with `extra` keys.
    fn phi3(extra: &str) -> Result<ModelConfig> {
        let text = format!(
            r#"{{"architectures": ["Phi3ForCausalLM"], "vocab_size": 10, "hidden_size": 16,
            "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "max_position_embeddings": 131072{extra}}}"#
        );
        ModelConfig::parse(&text, Path::new("config.json"))
    }

    #[test]
    fn phi3_long_rope_as_the_hub_writes_it() {
        // Phi-3.5-mini's form: `rope_scaling` with `type`, the pretraining length beside it.
        let c = phi3(
            r#", "original_max_position_embeddings": 4096, "rope_scaling": {"type": "longrope",
            "short_factor": [1.0, 1.5, 2.0, 3.0], "long_factor": [1.0, 4.0, 9.0, 16.0]}"#,
        )
        .unwrap();
        assert_eq!(c.architecture, Architecture::Phi3);
        assert!(c.spec.fused_qkv && c.spec.fused_gate_up);
        // Phi3Config's window is none when absent.
        assert!(c.spec.layers.iter().all(|l| l.window.is_none()));
        let RopeScaling::LongRope {
            short_factor,
            original_max_position_embeddings,
            attention_factor,
            ..
        } = &c.rope.scaling
        else {
            panic!("{:?}", c.rope.scaling)
        };
        assert_eq!(short_factor, &[1.0, 1.5, 2.0, 3.0]);
        assert_eq!(*original_max_position_embeddings, 4096);
        let expected = (1.0 + 32f64.ln() / 4096f64.ln()).sqrt();
        assert!((attention_factor - expected).abs() < 1e-12);
        // Phi-3's first name for it, and an explicit attention factor.
        let c = phi3(
            r#", "rope_scaling": {"type": "su", "attention_factor": 1.25,
            "short_factor": [1, 1, 1, 1], "long_factor": [2, 2, 2, 2]}"#,
        )
        .unwrap();
        assert!(matches!(
            c.rope.scaling,
            RopeScaling::LongRope { attention_factor, .. } if attention_factor == 1.25
        ));
    }

    #[test]
    fn partial_rotary_factor_from_either_place() {
        let c = phi3(r#", "partial_rotary_factor": 0.75"#).unwrap();
        assert_eq!(c.rope.rotary_dim(c.head_dim), 6);
        let c =
            phi3(r#", "rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}"#)
                .unwrap();
        assert_eq!(c.rope.rotary_dim(c.head_dim), 4);
        // With LongRoPE the factors cover the rotated pairs only.
        let c = phi3(
            r#", "partial_rotary_factor": 0.5, "rope_scaling": {"type": "longrope",
            "short_factor": [1, 1], "long_factor": [2, 2]}"#,
        );
        assert!(c.is_ok(), "{c:?}");
    }

    #[test]
    fn bad_rope_keys_are_named() {
        for (extra, key) in [
            (
                r#", "partial_rotary_factor": 1.5"#,
                "`partial_rotary_factor`",
            ),
            (
                r#", "partial_rotary_factor": 0.1"#,
                "`partial_rotary_factor`",
            ),
            (
                r#", "rope_parameters": {"partial_rotary_factor": "x"}"#,
                "`rope_parameters.partial_rotary_factor`",
            ),
            (
                r#", "rope_scaling": {"type": "longrope", "short_factor": [1, 1, 1], "long_factor": [1, 1, 1, 1]}"#,
                "`rope_scaling.short_factor`",
            ),
            (
                r#", "rope_scaling": {"type": "longrope", "short_factor": [1, 1, 1, 1]}"#,
                "`rope_scaling.long_factor`",
            ),
            (
                r#", "rope_scaling": {"type": "longrope", "short_factor": [1, 1, 1, -1], "long_factor": [1, 1, 1, 1]}"#,
                "`rope_scaling.short_factor`",
            ),
        ] {
            let err = phi3(extra).unwrap_err().to_string();
            assert!(err.contains(key) && !err.contains('\n'), "{extra}: {err}");
        }
    }
}
