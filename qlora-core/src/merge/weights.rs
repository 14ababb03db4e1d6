//! The weights of a base model with LoRA adapters folded in, `W' = W + scale · B A` in f32,
//! computed one tensor at a time: what `qlora merge` writes and `qlora export-gguf` converts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};

use super::MergeBase;
use crate::checkpoint::Checkpoint;
use crate::config::{CONFIG_FILE, ModelConfig};
use crate::error::{Error, Result};
use crate::lora::read_adapter;
use crate::model::Bits;
use crate::quant::{Nf4Config, Nf4Tensor};
use crate::train::TrainConfig;

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
    config: &ModelConfig,
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

/// A base model and (optionally) an adapter, ready to give merged weights.
pub struct MergedWeights {
    /// The base's configuration.
    pub config: ModelConfig,
    /// Its `config.json`.
    pub config_path: PathBuf,
    /// The base's weights.
    pub checkpoint: Checkpoint,
    /// The base the adapter is added to.
    pub base: MergeBase,
    adapters: HashMap<String, Adapter>,
    linear_shapes: HashMap<String, [usize; 2]>,
    /// Modules with weights in the adapter file that its config does not target (not merged,
    /// as PEFT ignores them).
    pub ignored_modules: Vec<String>,
    device: Device,
}

impl MergedWeights {
    /// The model in `model_dir` with the adapter in `adapter_dir` (if any) folded into `base`:
    /// by default the NF4 weight the adapter was trained against when it was trained on NF4
    /// (always for a 4-bit checkpoint), else the checkpoint's weight.
    pub fn open(
        model_dir: &Path,
        adapter_dir: Option<&Path>,
        base: Option<MergeBase>,
    ) -> Result<Self> {
        let config_path = model_dir.join(CONFIG_FILE);
        let config = ModelConfig::load(&config_path)?;
        let checkpoint = Checkpoint::open(model_dir)?;
        let (adapters, trained_on_nf4, ignored_modules) = match adapter_dir {
            Some(dir) => read_adapters(dir, &config)?,
            None => (HashMap::new(), false, Vec::new()),
        };
        let base = base.unwrap_or(if trained_on_nf4 || config.bnb_4bit {
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
        for name in adapters.keys() {
            if !checkpoint.contains(name) {
                return Err(Error::key(
                    model_dir,
                    name,
                    "weight missing from the base checkpoint",
                ));
            }
        }
        let mut linear_shapes = HashMap::new();
        for layer in 0..config.num_hidden_layers {
            for (name, shape) in config.linear_shapes(layer) {
                linear_shapes.insert(name, shape);
            }
        }
        Ok(MergedWeights {
            config,
            config_path,
            checkpoint,
            base,
            adapters,
            linear_shapes,
            ignored_modules,
            device: Device::flex(),
        })
    }

    /// The shape of `name` if it is a decoder projection (which an adapter may change).
    pub fn linear_shape(&self, name: &str) -> Option<[usize; 2]> {
        self.linear_shapes.get(name).copied()
    }

    /// Whether an adapter is folded into `name`.
    pub fn is_merged(&self, name: &str) -> bool {
        self.adapters.contains_key(name)
    }

    /// How many weights an adapter changes.
    pub fn merged_count(&self) -> usize {
        self.adapters.len()
    }

    /// A decoder projection as f32, the way the adapter should see it (before merging).
    fn base_weight(&self, name: &str, shape: [usize; 2]) -> Result<Vec<f32>> {
        let checkpoint = &self.checkpoint;
        if self.config.bnb_4bit {
            let state = Nf4Tensor::from_state_dict(name, |key| checkpoint.view(key))
                .map_err(|e| e.at_key(checkpoint.file_of(name), name))?;
            return Ok(state.dequantize());
        }
        let values = checkpoint.read_f32(name, Some(&shape))?;
        Ok(match self.base {
            MergeBase::Original => values,
            MergeBase::Dequantized => {
                let stored = checkpoint.float_dtype(name)?;
                Nf4Tensor::quantize(&values, &shape, stored, Nf4Config::default())
                    .map_err(|e| e.at_key(checkpoint.file_of(name), name))?
                    .dequantize()
            }
        })
    }

    /// The merged values of the decoder projection `name` (`W + scale · B A`, or `W` when no
    /// adapter changes it).
    pub fn projection(&self, name: &str) -> Result<Vec<f32>> {
        let shape = self
            .linear_shape(name)
            .ok_or_else(|| Error::key(self.checkpoint.dir(), name, "not a decoder projection"))?;
        let w = self.base_weight(name, shape)?;
        Ok(match self.adapters.get(name) {
            Some(adapter) => merged(&w, adapter, shape, &self.device),
            None => w,
        })
    }

    /// Any tensor of the merged model as f32: a projection merged, anything else as stored
    /// (`shape` checked when given).
    pub fn values(&self, name: &str, shape: Option<&[usize]>) -> Result<Vec<f32>> {
        if self.linear_shapes.contains_key(name) {
            self.projection(name)
        } else {
            self.checkpoint.read_f32(name, shape)
        }
    }
}
