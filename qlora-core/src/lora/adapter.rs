//! LoRA adapters: `y = x Wᵀ + scale · B(A(dropout(x)))` with `A` `[r, in]` and `B` `[out, r]`
//! trainable and `W` frozen, initialized and scaled as PEFT does.

use std::str::FromStr;

use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// The seven projections of a LLaMA decoder layer, in PEFT's naming.
pub const LLAMA_PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// How `A` starts (`B` always starts at zero, so training starts from the base model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoraInit {
    /// PEFT's default: kaiming-uniform with `a = sqrt(5)`, i.e. `U(-1/sqrt(in), 1/sqrt(in))`.
    #[default]
    KaimingUniform,
    /// PEFT's `init_lora_weights="gaussian"`: `N(0, 1/r)`.
    Gaussian,
}

impl FromStr for LoraInit {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "kaiming" | "kaiming-uniform" | "default" => Ok(LoraInit::KaimingUniform),
            "gaussian" => Ok(LoraInit::Gaussian),
            other => Err(Error::invalid(format!(
                "unknown LoRA init `{other}`: expected kaiming-uniform or gaussian"
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Projection names (`q_proj`, ..., `down_proj`) that get adapters.
    pub target_modules: Vec<String>,
    /// Scale by `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
    pub init: LoraInit,
}

impl Default for LoraConfig {
    /// The QLoRA paper's settings: r 64, alpha 16, dropout 0.05, every linear layer.
    fn default() -> Self {
        LoraConfig {
            r: 64,
            alpha: 16.0,
            dropout: 0.05,
            target_modules: LLAMA_PROJECTIONS.iter().map(|s| s.to_string()).collect(),
            use_rslora: false,
            init: LoraInit::KaimingUniform,
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        lora_scale(self.alpha, self.r, self.use_rslora)
    }

    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(Error::invalid("LoRA rank must be at least 1"));
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return Err(Error::invalid("LoRA alpha must be positive"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::invalid("LoRA dropout must be in [0, 1)"));
        }
        if self.target_modules.is_empty() {
            return Err(Error::invalid("LoRA needs at least one target module"));
        }
        for module in &self.target_modules {
            if !LLAMA_PROJECTIONS.contains(&module.as_str()) {
                return Err(Error::invalid(format!(
                    "unknown target module `{module}`; LLaMA has {}",
                    LLAMA_PROJECTIONS.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Parse `all-linear` or a comma-separated list of projection names.
    pub fn parse_target_modules(spec: &str) -> Result<Vec<String>> {
        if spec == "all-linear" || spec == "all" {
            return Ok(LLAMA_PROJECTIONS.iter().map(|s| s.to_string()).collect());
        }
        let modules: Vec<String> = spec.split(',').map(|s| s.trim().to_string()).collect();
        for module in &modules {
            if !LLAMA_PROJECTIONS.contains(&module.as_str()) {
                return Err(Error::invalid(format!(
                    "unknown target module `{module}`; LLaMA has {}",
                    LLAMA_PROJECTIONS.join(", ")
                )));
            }
        }
        Ok(modules)
    }
}

pub fn lora_scale(alpha: f64, r: usize, use_rslora: bool) -> f64 {
    if use_rslora {
        alpha / (r as f64).sqrt()
    } else {
        alpha / r as f64
    }
}

/// One adapter. `key` identifies it among the model's adapters (for dropout streams).
#[derive(Clone, Debug)]
pub struct LoraAdapter {
    pub a: Tensor<2>,
    pub b: Tensor<2>,
    pub scale: f64,
    pub dropout: f64,
    pub key: u64,
}

/// Where dropout masks come from during training: a seed and a per-step stream. The mask of an
/// adapter depends only on `(seed, step, adapter key)`, so recomputing a layer (gradient
/// checkpointing) or resuming a run draws the very same masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropoutStream {
    pub seed: u64,
    pub step: u64,
}

/// SplitMix64's finalizer: a good 64-bit mix for counter-based random numbers.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

impl DropoutStream {
    /// Inverted-dropout mask `[rows, cols]`: `1/(1-p)` where kept, 0 where dropped.
    pub fn mask(&self, key: u64, p: f64, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
        let base = mix(mix(self.seed ^ 0x5157_4c4f_5241)
            ^ mix(self.step.wrapping_add(1))
            ^ mix(key.wrapping_mul(0x9e3779b97f4a7c15)));
        let threshold = (p * (u64::MAX as f64)) as u64;
        let keep = (1.0 / (1.0 - p)) as f32;
        let mut values = vec![0f32; rows * cols];
        values
            .par_chunks_mut(4096)
            .enumerate()
            .for_each(|(chunk, out)| {
                for (i, v) in out.iter_mut().enumerate() {
                    let counter = (chunk * 4096 + i) as u64;
                    *v = if mix(base ^ counter.wrapping_mul(0xd1b54a32d192ed03)) >= threshold {
                        keep
                    } else {
                        0.0
                    };
                }
            });
        Tensor::from_data(TensorData::new(values, [rows, cols]), device)
    }
}

impl LoraAdapter {
    /// A fresh adapter for a linear `in -> out`, drawn from `rng`.
    pub fn init(
        in_features: usize,
        out_features: usize,
        config: &LoraConfig,
        key: u64,
        rng: &mut StdRng,
        device: &Device,
    ) -> Self {
        let r = config.r;
        let a: Vec<f32> = match config.init {
            LoraInit::KaimingUniform => {
                let bound = 1.0 / (in_features as f64).sqrt();
                (0..r * in_features)
                    .map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * bound) as f32)
                    .collect()
            }
            LoraInit::Gaussian => {
                let std = 1.0 / r as f64;
                (0..r * in_features)
                    .map(|_| {
                        // Box-Muller: two uniforms to one normal.
                        let u1 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                        let u2 = rng.random::<f64>();
                        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * std) as f32
                    })
                    .collect()
            }
        };
        LoraAdapter {
            a: Tensor::from_data(TensorData::new(a, [r, in_features]), device),
            b: Tensor::zeros([out_features, r], device),
            scale: config.scale(),
            dropout: config.dropout,
            key,
        }
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// `scale · (dropout(x) Aᵀ) Bᵀ` for `x` `[rows, in]`. Dropout applies only with a stream.
    pub fn forward(&self, x: Tensor<2>, dropout: Option<&DropoutStream>) -> Tensor<2> {
        let x = match dropout {
            Some(stream) if self.dropout > 0.0 => {
                let [rows, cols] = x.dims();
                let mask = stream.mask(self.key, self.dropout, rows, cols, &x.device());
                x * mask
            }
            _ => x,
        };
        x.matmul(self.a.clone().transpose())
            .matmul(self.b.clone().transpose())
            * self.scale
    }
}

/// A deterministic RNG for adapter initialization.
pub fn init_rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_and_validation() {
        let mut c = LoraConfig::default();
        assert_eq!(c.scale(), 0.25);
        c.use_rslora = true;
        assert_eq!(c.scale(), 2.0);
        c.r = 0;
        assert!(c.validate().is_err());
        assert!(LoraConfig::parse_target_modules("q_proj,lm_head").is_err());
        assert_eq!(
            LoraConfig::parse_target_modules("all-linear")
                .unwrap()
                .len(),
            7
        );
    }

    #[test]
    fn dropout_masks_are_reproducible_and_about_right() {
        let device = Device::flex();
        let s = DropoutStream { seed: 42, step: 3 };
        let m1: Vec<f32> = s
            .mask(7, 0.1, 64, 100, &device)
            .into_data()
            .try_into_vec()
            .unwrap();
        let m2: Vec<f32> = s
            .mask(7, 0.1, 64, 100, &device)
            .into_data()
            .try_into_vec()
            .unwrap();
        let other: Vec<f32> = s
            .mask(8, 0.1, 64, 100, &device)
            .into_data()
            .try_into_vec()
            .unwrap();
        assert_eq!(m1, m2);
        assert_ne!(m1, other);
        let dropped = m1.iter().filter(|v| **v == 0.0).count() as f64 / m1.len() as f64;
        assert!((dropped - 0.1).abs() < 0.02, "{dropped}");
        assert!(
            m1.iter()
                .all(|v| *v == 0.0 || (*v - 1.0 / 0.9).abs() < 1e-6)
        );
    }
}
