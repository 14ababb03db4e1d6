//! `qlora merge`: fold LoRA adapters into the base weights, `W' = W + scale · B A` in f32,
//! and write a Hugging Face model directory (or a bitsandbytes 4-bit one).
//!
//! `W` is either the dequantized NF4 weight the adapter was trained against (so the merged
//! model computes what the trained model computed) or the full-precision checkpoint weight.
//! Every weight is computed when the writer reaches it, so memory stays near one layer.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use serde_json::Value;

use crate::checkpoint::{Checkpoint, OutTensor, bnb_quantization_config, write_model_dir};
use crate::config::{CONFIG_FILE, LlamaConfig};
use crate::dtype::{FloatDtype, encode_f32};
use crate::error::{Error, Result};
use crate::lora::read_adapter;
use crate::model::Bits;
use crate::quant::{Nf4Config, Nf4Tensor};
use crate::staged_dir::StagedDir;
use crate::train::TrainConfig;

crate::named_enum! {
    /// Which base weight the adapter is added to.
    pub enum MergeBase: "base" {
        /// The NF4 weight as the adapter saw it during QLoRA training.
        Dequantized = "dequantized",
        /// The full-precision checkpoint weight.
        Original = "original",
    }
}

#[derive(Debug, Clone)]
pub struct MergeOptions {
    /// `None`: dequantized when the adapter was trained on NF4 (always for a 4-bit
    /// checkpoint), else original.
    pub base: Option<MergeBase>,
    /// Output dtype; `None`: the base checkpoint's.
    pub dtype: Option<FloatDtype>,
    /// Write a bitsandbytes NF4 checkpoint instead of dense weights.
    pub quantize_nf4: bool,
    pub max_shard_bytes: usize,
    pub overwrite: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MergeReport {
    pub merged: usize,
    pub base: MergeBase,
    pub dtype: FloatDtype,
    pub bytes_out: usize,
    /// Modules with weights in the adapter file that its config does not target (not merged,
    /// as PEFT ignores them).
    pub ignored_modules: Vec<String>,
}

/// One adapter ready to fold in: `A` `[r, in]`, `B` `[out, r]`, its scale.
struct Adapter {
    a: Vec<f32>,
    b: Vec<f32>,
    rank: usize,
    scale: f64,
}

/// The adapters of `dir` keyed by weight name, checked against the base's shapes, whether the
/// adapter was trained on an NF4 base, and the modules its config does not target.
fn read_adapters(
    dir: &Path,
    config: &LlamaConfig,
) -> Result<(HashMap<String, Adapter>, bool, Vec<String>)> {
    let file = read_adapter(dir)?;
    // Our runs record their base precision next to the adapter; assume QLoRA (NF4) otherwise.
    let trained_on_nf4 = TrainConfig::from_toml_file(&dir.join("training_config.toml"))
        .ok()
        .is_none_or(|c| c.bits == Bits::Four);
    let mut shapes = HashMap::new();
    for layer in 0..config.num_hidden_layers {
        for (name, shape) in config.linear_shapes(layer) {
            shapes.insert(name.trim_end_matches(".weight").to_string(), shape);
        }
    }
    let mut adapters = HashMap::new();
    for (module, weights) in file.modules {
        let [out, inp] = *shapes.get(&module).ok_or_else(|| {
            Error::key(
                &file.weights_path,
                format!("base_model.model.{module}"),
                "no such linear layer in the base model",
            )
        })?;
        weights.check(&file.weights_path, &module, out, inp)?;
        let rank = weights.rank();
        let scale = file.settings.scale(&module, rank);
        adapters.insert(
            format!("{module}.weight"),
            Adapter {
                a: weights.a,
                b: weights.b,
                rank,
                scale,
            },
        );
    }
    Ok((adapters, trained_on_nf4, file.ignored))
}

/// `W + scale · B A` in f32.
fn merged(w: &[f32], adapter: &Adapter, [out, inp]: [usize; 2], device: &Device) -> Vec<f32> {
    let a = Tensor::<2>::from_data(
        TensorData::new(adapter.a.clone(), [adapter.rank, inp]),
        device,
    );
    let b = Tensor::<2>::from_data(
        TensorData::new(adapter.b.clone(), [out, adapter.rank]),
        device,
    );
    let delta: Vec<f32> = (b.matmul(a) * adapter.scale)
        .into_data()
        .try_into_vec()
        .expect("f32");
    w.iter().zip(&delta).map(|(w, d)| w + d).collect()
}

pub fn merge_model(
    model_dir: &Path,
    adapter_dir: &Path,
    out_dir: &Path,
    options: &MergeOptions,
) -> Result<MergeReport> {
    let config_path = model_dir.join(CONFIG_FILE);
    let config = LlamaConfig::load(&config_path)?;
    let checkpoint = Checkpoint::open(model_dir)?;
    let (adapters, trained_on_nf4, ignored_modules) = read_adapters(adapter_dir, &config)?;
    let base = options
        .base
        .unwrap_or(if trained_on_nf4 || config.bnb_4bit {
            MergeBase::Dequantized
        } else {
            MergeBase::Original
        });
    if base == MergeBase::Original && config.bnb_4bit {
        return Err(Error::key(
            &config_path,
            "quantization_config",
            "--base original needs a full-precision base; this checkpoint is 4-bit",
        ));
    }
    let dtype = options
        .dtype
        .or(config.dtype.filter(|_| !config.bnb_4bit))
        .or_else(|| checkpoint.dominant_float_dtype())
        .unwrap_or(FloatDtype::F32);
    let device = Device::flex();

    let mut linear_shapes = HashMap::new();
    for layer in 0..config.num_hidden_layers {
        for (name, shape) in config.linear_shapes(layer) {
            linear_shapes.insert(name, shape);
        }
    }
    // Every weight as f32, the way the adapter should see it.
    let read_weight = |name: &str, shape: [usize; 2]| -> Result<Vec<f32>> {
        if config.bnb_4bit {
            let state = Nf4Tensor::from_state_dict(name, |key| checkpoint.view(key))
                .map_err(|e| e.at_key(checkpoint.file_of(name), name))?;
            return Ok(state.dequantize());
        }
        let values = checkpoint.read_f32(name, Some(&shape))?;
        Ok(match base {
            MergeBase::Original => values,
            MergeBase::Dequantized => {
                let stored = checkpoint.float_dtype(name)?;
                Nf4Tensor::quantize(&values, &shape, stored, Nf4Config::default())
                    .map_err(|e| e.at_key(checkpoint.file_of(name), name))?
                    .dequantize()
            }
        })
    };

    // Check everything that can fail before writing.
    for name in adapters.keys() {
        if !checkpoint.contains(name) {
            return Err(Error::key(
                model_dir,
                name,
                "weight missing from the base checkpoint",
            ));
        }
    }
    let staged = StagedDir::new(out_dir, options.overwrite, &[model_dir, adapter_dir])?;
    let mut tensors: BTreeMap<String, OutTensor<'_>> = BTreeMap::new();
    let bnb_suffixes = [
        ".absmax",
        ".quant_map",
        ".nested_absmax",
        ".nested_quant_map",
        ".quant_state.bitsandbytes__nf4",
    ];
    let mut merged_count = 0;
    for name in checkpoint.names() {
        if bnb_suffixes.iter().any(|s| name.ends_with(s)) {
            continue; // parts of a 4-bit weight, written again below
        }
        if let Some(&shape) = linear_shapes.get(name) {
            let adapter = adapters.get(name);
            merged_count += usize::from(adapter.is_some());
            let read_weight = &read_weight;
            let device = &device;
            let compute = move |name: &str| -> Result<Vec<f32>> {
                let w = read_weight(name, shape)?;
                Ok(match adapter {
                    Some(a) => merged(&w, a, shape, device),
                    None => w,
                })
            };
            if options.quantize_nf4 {
                let values = compute(name)?;
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
                let read = move || -> Vec<u8> {
                    let values = compute(&name_owned).expect("validated before writing");
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
        },
    )?;
    staged.commit()?;
    Ok(MergeReport {
        merged: merged_count,
        base,
        dtype,
        bytes_out,
        ignored_modules,
    })
}
