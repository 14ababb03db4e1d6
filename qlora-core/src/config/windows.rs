//! Which layers of a model slide, and over how many keys: the window switches of
//! `config.json` (`sliding_window`, `use_sliding_window`, `max_window_layers`, `layer_types`,
//! `sliding_window_pattern`) as each family reads them.

use std::path::Path;

use serde_json::Value;

use super::hf::HfConfig;
use crate::error::{Error, Result};

/// Gemma 3's windows: `sliding_window` keys (default 4096) on the layers `layer_types` calls
/// `sliding_attention`, or (older files) on all but every `sliding_window_pattern`-th (6).
pub(super) fn gemma_windows(raw: &HfConfig, file: &Path) -> Result<Vec<Option<usize>>> {
    let layers = raw.num_hidden_layers;
    let window = window_or_default(raw, file)?;
    let sliding = match &raw.layer_types {
        Some(types) => layer_types(raw, types, file)?,
        None => {
            let pattern = raw.sliding_window_pattern.unwrap_or(6);
            if pattern == 0 {
                return Err(Error::key(
                    file,
                    "sliding_window_pattern",
                    "must be positive",
                ));
            }
            (0..layers).map(|i| slides_in_pattern(i, pattern)).collect()
        }
    };
    Ok(sliding
        .into_iter()
        .map(|s| if s { window } else { None })
        .collect())
}

/// Whether `layer` slides in Gemma's pattern: all but every `pattern`-th layer.
pub fn slides_in_pattern(layer: usize, pattern: usize) -> bool {
    !(layer + 1).is_multiple_of(pattern)
}

/// `layer_types` (`types`): for each layer, whether it slides.
fn layer_types(raw: &HfConfig, types: &[String], file: &Path) -> Result<Vec<bool>> {
    let layers = raw.num_hidden_layers;
    if types.len() != layers {
        return Err(Error::key(
            file,
            "layer_types",
            format!("{} entries for {layers} layers", types.len()),
        ));
    }
    types
        .iter()
        .map(|t| match t.as_str() {
            "sliding_attention" => Ok(true),
            "full_attention" => Ok(false),
            other => Err(Error::key(
                file,
                "layer_types",
                format!("`{other}`: expected full_attention or sliding_attention"),
            )),
        })
        .collect()
}

/// `sliding_window`: a positive number, null for none, and when absent 4096 (the default of
/// MistralConfig and Qwen3Config).
pub(super) fn window_or_default(raw: &HfConfig, file: &Path) -> Result<Option<usize>> {
    match &raw.sliding_window {
        None => Ok(Some(4096)),
        Some(_) => window_or_none(raw, file),
    }
}

/// `sliding_window`: a positive number, and when null or absent none (Phi3Config's default).
pub(super) fn window_or_none(raw: &HfConfig, file: &Path) -> Result<Option<usize>> {
    match &raw.sliding_window {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(w) if w > 0 => Ok(Some(w as usize)),
            _ => Err(Error::key(
                file,
                "sliding_window",
                format!("{v} must be a positive number of keys, or null"),
            )),
        },
    }
}

/// Qwen's windows: on the layers `layer_types` calls `sliding_attention` (by default those
/// from `max_window_layers` on), and only with `use_sliding_window`.
pub(super) fn qwen_windows(raw: &HfConfig, file: &Path) -> Result<Vec<Option<usize>>> {
    let layers = raw.num_hidden_layers;
    if !raw.use_sliding_window.unwrap_or(false) {
        return Ok(vec![None; layers]);
    }
    let window = window_or_default(raw, file)?;
    let sliding: Vec<bool> = match &raw.layer_types {
        Some(types) => layer_types(raw, types, file)?,
        None => {
            let first = raw.max_window_layers.unwrap_or(28);
            (0..layers)
                .map(|i| window.is_some() && i >= first)
                .collect()
        }
    };
    Ok(sliding
        .into_iter()
        .map(|s| if s { window } else { None })
        .collect())
}
