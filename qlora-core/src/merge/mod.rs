//! `qlora merge`: fold LoRA adapters into the base weights, `W' = W + scale · B A` in f32,
//! and write a Hugging Face model directory (or a bitsandbytes 4-bit one).
//!
//! `W` is either the dequantized NF4 weight the adapter was trained against (so the merged
//! model computes what the trained model computed) or the full-precision checkpoint weight.
//! Every weight is computed when the writer reaches it, so memory stays near one layer.

mod weights;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

pub use weights::MergedWeights;

use crate::checkpoint::{OutTensor, bnb_quantization_config, write_model_dir};
use crate::dtype::{FloatDtype, encode_f32};
use crate::error::{Error, Result};
use crate::quant::{Nf4Config, Nf4Tensor};
use crate::staged_dir::StagedDir;
use crate::text::Tokenizer;
use crate::train::recorded_text;

crate::named_enum! {
    /// Which base weight the adapter is added to.
    pub enum MergeBase: "base" {
        /// The NF4 weight as the adapter saw it during QLoRA training.
        Dequantized = "dequantized",
        /// The full-precision checkpoint weight.
        Original = "original",
    }
}

/// How `qlora merge` writes the merged model.
#[derive(Debug, Clone)]
pub struct MergeOptions {
    /// `None`: dequantized when the adapter was trained on NF4 (always for a 4-bit
    /// checkpoint), else original.
    pub base: Option<MergeBase>,
    /// Output dtype; `None`: the base checkpoint's.
    pub dtype: Option<FloatDtype>,
    /// Write a bitsandbytes NF4 checkpoint instead of dense weights.
    pub quantize_nf4: bool,
    /// Largest safetensors shard.
    pub max_shard_bytes: usize,
    /// Replace the output if it exists.
    pub overwrite: bool,
}

/// What a merge wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeReport {
    /// Projections an adapter changed.
    pub merged: usize,
    /// The base the adapter was added to.
    pub base: MergeBase,
    /// The dtype of the written weights.
    pub dtype: FloatDtype,
    /// Bytes written.
    pub bytes_out: usize,
    /// Modules with weights in the adapter file that its config does not target (not merged,
    /// as PEFT ignores them).
    pub ignored_modules: Vec<String>,
}

/// A model card (`README.md`) naming the base the merged model came from, as the Hub reads it
/// (`base_model` in its YAML header) and with the commit.
fn write_card(dir: &Path, repo: &str, commit: &str, adapter_dir: &Path) -> Result<()> {
    let adapter = adapter_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = format!(
        "---\nbase_model: {repo}\nbase_model_relation: finetune\nlibrary_name: transformers\n\
         tags:\n- qlora\n- lora\n---\n\n# {repo} with a LoRA adapter merged in\n\n\
         The weights of [{repo}](https://huggingface.co/{repo}) at commit `{commit}` with the \
         LoRA adapter `{adapter}` merged in by `qlora merge`.\n"
    );
    let path = dir.join("README.md");
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
}

/// Merge the adapter in `adapter_dir` into the model in `model_dir` and write the result as the
/// model directory `out`.
pub fn merge_model(
    model_dir: &Path,
    adapter_dir: &Path,
    out_dir: &Path,
    options: &MergeOptions,
) -> Result<MergeReport> {
    let weights = MergedWeights::open(model_dir, Some(adapter_dir), options.base)?;
    let (config, checkpoint) = (&weights.config, &weights.checkpoint);
    let dtype = options
        .dtype
        .or(config.dtype.filter(|_| !config.bnb_4bit))
        .or_else(|| checkpoint.dominant_float_dtype())
        .unwrap_or(FloatDtype::F32);

    let staged = StagedDir::new(out_dir, options.overwrite, &[model_dir, adapter_dir])?;
    let mut tensors: BTreeMap<String, OutTensor<'_>> = BTreeMap::new();
    let bnb_suffixes = [
        ".absmax",
        ".quant_map",
        ".nested_absmax",
        ".nested_quant_map",
        ".quant_state.bitsandbytes__nf4",
    ];
    for name in checkpoint.names() {
        if bnb_suffixes.iter().any(|s| name.ends_with(s)) {
            continue; // parts of a 4-bit weight, written again below
        }
        if let Some(shape) = weights.linear_shape(name) {
            if options.quantize_nf4 {
                let values = weights.projection(name)?;
                let state = Nf4Tensor::quantize(&values, &shape, dtype, Nf4Config::default())
                    .map_err(|e| e.at_key(checkpoint.file_of(name), name))?;
                for (key, dt, s, data) in state.to_state_dict(name) {
                    tensors.insert(key, OutTensor::owned(dt, s, data));
                }
            } else {
                // Validate now (cheaply), compute when written.
                if !config.bnb_4bit {
                    checkpoint.float_dtype(name)?;
                }
                let name_owned = name.to_string();
                let weights = &weights;
                let read = move || -> Vec<u8> {
                    let values = weights
                        .projection(&name_owned)
                        .expect("validated before writing");
                    encode_f32(&values, dtype)
                };
                tensors.insert(
                    name.to_string(),
                    OutTensor::lazy(dtype.safetensors(), shape.to_vec(), read),
                );
            }
        } else {
            let tensor = OutTensor::converted(checkpoint.view(name)?, dtype);
            tensors.insert(name.to_string(), tensor);
        }
    }
    let quantize_nf4 = options.quantize_nf4;
    // A base from the Hugging Face cache: its repo id and commit.
    let origin = crate::hub::snapshot_origin(model_dir);
    let bytes_out = write_model_dir(
        staged.path(),
        tensors,
        options.max_shard_bytes,
        model_dir,
        |config| {
            config.remove("quantization_config");
            if quantize_nf4 {
                config.insert(
                    "quantization_config".into(),
                    bnb_quantization_config(dtype, true),
                );
            }
            config.remove("torch_dtype");
            config.insert("dtype".into(), Value::from(dtype.torch_name()));
            // Where it came from, as transformers records it.
            if let Some((repo, _)) = &origin {
                config.insert("_name_or_path".into(), Value::from(repo.clone()));
            }
        },
    )?;
    if let Some((repo, commit)) = &origin {
        write_card(staged.path(), repo, commit, adapter_dir)?;
    }
    // The chat template and eos token the adapter was trained with, if not the model's.
    let text = recorded_text(adapter_dir)?;
    if text.replaces_template() || text.eos_token.is_some() {
        let mut tokenizer = Tokenizer::load(model_dir)?;
        text.apply(&mut tokenizer)?;
        text.write_into_model_dir(&tokenizer, staged.path())?;
    }
    staged.commit()?;
    Ok(MergeReport {
        merged: weights.merged_count(),
        base: weights.base,
        dtype,
        bytes_out,
        ignored_modules: weights.ignored_modules.clone(),
    })
}
