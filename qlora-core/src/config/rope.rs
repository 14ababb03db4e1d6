//! Rotary embedding settings of `config.json`: `rope_theta` with `rope_scaling`, or the newer
//! `rope_parameters`.

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
}

/// The rotary embedding: its base and scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// The base (`rope_theta`).
    pub theta: f64,
    /// How the frequencies are scaled.
    pub scaling: RopeScaling,
}

pub(super) fn parse_rope(
    rope_theta: Option<f64>,
    rope_scaling: Option<&Value>,
    rope_parameters: Option<&Value>,
    default_theta: f64,
    file: &Path,
) -> Result<RopeConfig> {
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
    let Some(params) = params else {
        return Ok(RopeConfig {
            theta,
            scaling: RopeScaling::Default,
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
        other => {
            return Err(Error::key(
                file,
                format!("{key}.rope_type"),
                format!("`{other}` is not supported (default, linear, llama3)"),
            ));
        }
    };
    Ok(RopeConfig { theta, scaling })
}
