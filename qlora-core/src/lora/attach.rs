//! Fresh adapters on a model's targeted projections, initialized as PEFT does.

use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::config::{LoraConfig, LoraInit};
use crate::error::Result;
use crate::model::{CausalLm, LoraAdapter};

/// A fresh adapter for a linear `in -> out`, drawn from `rng`.
fn new_adapter(
    in_features: usize,
    out_features: usize,
    config: &LoraConfig,
    key: u64,
    rng: &mut StdRng,
    device: &Device,
) -> LoraAdapter {
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

impl CausalLm {
    /// Give every targeted linear a fresh adapter (replacing any), drawn from `seed`.
    pub fn attach_lora(&mut self, config: &LoraConfig, seed: u64) -> Result<()> {
        config.validate()?;
        let device = self.device.clone();
        let mut rng = StdRng::seed_from_u64(seed);
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (p, linear) in layer.linears_mut() {
                if config.target_modules.contains(&p) {
                    let key = p.adapter_key(i);
                    linear.lora = Some(new_adapter(
                        linear.in_features,
                        linear.out_features,
                        config,
                        key,
                        &mut rng,
                        &device,
                    ));
                }
            }
        }
        Ok(())
    }
}
