//! The files of a Hugging Face model directory besides the weights: `config.json` written the
//! way transformers writes it, and the tokenizer and generation files that travel with a model.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value, json};

use super::writer::{OutTensor, write_safetensors};
use crate::config::CONFIG_FILE;
use crate::dtype::FloatDtype;
use crate::error::{Error, Result};

/// Files of a model directory that travel with the weights.
pub const COMPANION_FILES: [&str; 10] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
];

/// `quantization_config` as transformers writes it for NF4 with double quantization.
pub fn bnb_quantization_config(compute_dtype: FloatDtype, double_quant: bool) -> Value {
    json!({
        "_load_in_4bit": true,
        "_load_in_8bit": false,
        "bnb_4bit_compute_dtype": compute_dtype.torch_name(),
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": double_quant,
        "llm_int8_enable_fp32_cpu_offload": false,
        "llm_int8_has_fp16_weight": false,
        "llm_int8_skip_modules": null,
        "llm_int8_threshold": 6.0,
        "load_in_4bit": true,
        "load_in_8bit": false,
        "quant_method": "bitsandbytes",
    })
}

/// Copy tokenizer, chat template and generation files from `from` to `to` (those present).
pub fn copy_companion_files(from: &Path, to: &Path) -> Result<()> {
    for name in COMPANION_FILES {
        let source = from.join(name);
        if source.is_file() {
            std::fs::copy(&source, to.join(name)).map_err(|e| Error::io(&source, e))?;
        }
    }
    Ok(())
}

/// Write `value` as `path` in the style of transformers (2-space indent, sorted keys).
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    // Through a `Value`, whose maps keep their keys sorted.
    let value = serde_json::to_value(value).expect("JSON value serializes");
    let text = serde_json::to_string_pretty(&value).expect("JSON value serializes");
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

/// Fill the (staged) model directory `out`: the weights, sharded past `max_shard_bytes`;
/// `config.json` of `source_dir` changed by `edit_config`; the companion files of `source_dir`.
/// Returns the bytes of weights written.
pub fn write_model_dir(
    out: &Path,
    tensors: BTreeMap<String, OutTensor<'_>>,
    max_shard_bytes: usize,
    source_dir: &Path,
    edit_config: impl FnOnce(&mut Map<String, Value>),
) -> Result<usize> {
    let bytes = tensors
        .values()
        .map(|t| safetensors::View::data_len(&t))
        .sum();
    write_safetensors(out, tensors, max_shard_bytes)?;
    let config_path = source_dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let mut json: Value = serde_json::from_str(&text)
        .map_err(|e| Error::file(&config_path, format!("invalid JSON: {e}")))?;
    let object = json
        .as_object_mut()
        .ok_or_else(|| Error::file(&config_path, "expected a JSON object"))?;
    edit_config(object);
    write_json(&out.join(CONFIG_FILE), &json)?;
    copy_companion_files(source_dir, out)?;
    Ok(bytes)
}
