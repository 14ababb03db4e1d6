//! `qlora quantize`: a Hugging Face model directory in, a bitsandbytes 4-bit checkpoint out.
//!
//! Every decoder projection weight becomes an NF4 state (as transformers + bitsandbytes save
//! it); embeddings, norms, biases and `lm_head` stay dense. Weights are converted one at a time
//! from the memory-mapped input, so peak memory is one dense weight plus the 4-bit output.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::checkpoint::{Checkpoint, OutTensor, bnb_quantization_config, write_model_dir};
use crate::config::{CONFIG_FILE, ModelConfig};
use crate::dtype::FloatDtype;
use crate::error::{Error, Result};
use crate::quant::{Nf4Config, Nf4Tensor};
use crate::staged_dir::StagedDir;

/// transformers' default shard size (`max_shard_size="5GB"`).
pub const DEFAULT_MAX_SHARD_BYTES: usize = 5_000_000_000;

/// How `qlora quantize` writes the 4-bit checkpoint.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    /// Block size and double quantization.
    pub nf4: Nf4Config,
    /// Dtype of the tensors that stay dense (and of `bnb_4bit_compute_dtype`); default: the
    /// checkpoint's own.
    pub dtype: Option<FloatDtype>,
    /// Largest safetensors shard.
    pub max_shard_bytes: usize,
    /// Replace the output if it exists.
    pub overwrite: bool,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            nf4: Nf4Config::default(),
            dtype: None,
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
            overwrite: false,
        }
    }
}

/// What a quantization wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeReport {
    /// The model directory.
    pub out_dir: PathBuf,
    /// Weights quantized to NF4.
    pub quantized_tensors: usize,
    /// Tensors kept dense.
    pub dense_tensors: usize,
    /// Values quantized.
    pub parameters_quantized: usize,
    /// Bytes read.
    pub bytes_in: usize,
    /// Bytes written.
    pub bytes_out: usize,
}

/// Quantize the model in `model_dir` into `out_dir`. Nothing is left at `out_dir` on failure.
pub fn quantize_model(
    model_dir: &Path,
    out_dir: &Path,
    options: &QuantizeOptions,
) -> Result<QuantizeReport> {
    let config_path = model_dir.join(CONFIG_FILE);
    let config = ModelConfig::load(&config_path)?;
    if config.bnb_4bit {
        return Err(Error::key(
            &config_path,
            "quantization_config",
            "the model is already 4-bit quantized",
        ));
    }
    let checkpoint = Checkpoint::open(model_dir)?;
    let out_dtype = options
        .dtype
        .or(config.dtype)
        .or_else(|| checkpoint.dominant_float_dtype())
        .unwrap_or(FloatDtype::F32);

    let mut targets: BTreeMap<String, [usize; 2]> = BTreeMap::new();
    for layer in 0..config.num_hidden_layers {
        for (name, shape) in config.linear_shapes(layer) {
            if !checkpoint.contains(&name) {
                return Err(Error::key(
                    model_dir,
                    &name,
                    "weight missing from the checkpoint",
                ));
            }
            targets.insert(name, shape);
        }
    }

    let staged = StagedDir::new(out_dir, options.overwrite, &[model_dir])?;
    let mut tensors: BTreeMap<String, OutTensor<'_>> = BTreeMap::new();
    let mut report = QuantizeReport {
        out_dir: out_dir.to_path_buf(),
        quantized_tensors: 0,
        dense_tensors: 0,
        parameters_quantized: 0,
        bytes_in: 0,
        bytes_out: 0,
    };
    for name in checkpoint.names() {
        let view = checkpoint.view(name)?;
        report.bytes_in += view.data().len();
        if let Some(shape) = targets.get(name) {
            let file = checkpoint.file_of(name);
            let values = checkpoint.read_f32(name, Some(shape))?;
            let state = Nf4Tensor::quantize(&values, shape, out_dtype, options.nf4)
                .map_err(|e| e.at_key(file, name))?;
            drop(values);
            report.quantized_tensors += 1;
            report.parameters_quantized += state.numel();
            for (key, dtype, shape, data) in state.to_state_dict(name) {
                tensors.insert(key, OutTensor::owned(dtype, shape, data));
            }
        } else {
            report.dense_tensors += 1;
            let tensor = OutTensor::converted(view, out_dtype);
            tensors.insert(name.to_string(), tensor);
        }
    }
    let double_quant = options.nf4.double_quant;
    report.bytes_out = write_model_dir(
        staged.path(),
        tensors,
        options.max_shard_bytes,
        model_dir,
        |config| {
            config.insert(
                "quantization_config".into(),
                bnb_quantization_config(out_dtype, double_quant),
            );
            let dtype_key = if config.contains_key("torch_dtype") && !config.contains_key("dtype") {
                "torch_dtype"
            } else {
                "dtype"
            };
            config.insert(dtype_key.into(), Value::from(out_dtype.torch_name()));
        },
    )?;
    staged.commit()?;
    Ok(report)
}
