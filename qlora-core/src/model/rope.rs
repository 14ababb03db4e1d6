//! Rotary position embedding in Hugging Face's convention: `cos`/`sin` over the concatenated
//! frequencies `[f, f]`, and `rotate_half(x) = [-x2, x1]`.

use burn::tensor::{Device, Tensor, TensorData};

use crate::config::{RopeConfig, RopeScaling};

/// Rotary embedding tables for any positions.
#[derive(Clone, Debug)]
pub struct RotaryEmbedding {
    /// One inverse frequency per pair of dimensions, in f32 as transformers computes them.
    inv_freq: Vec<f32>,
    head_dim: usize,
}

impl RotaryEmbedding {
    /// The frequencies of `config` for heads of `head_dim`.
    pub fn new(config: &RopeConfig, head_dim: usize) -> Self {
        let base = config.theta as f32;
        let mut inv_freq: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        match config.scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => {
                for f in &mut inv_freq {
                    *f /= factor as f32;
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                // Llama 3.1: long wavelengths slowed by `factor`, short ones kept, the band
                // between blended smoothly.
                let old = original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                for f in &mut inv_freq {
                    let freq = f64::from(*f);
                    let wavelen = 2.0 * std::f64::consts::PI / freq;
                    let scaled = if wavelen > low_wavelen {
                        freq / factor
                    } else {
                        freq
                    };
                    let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                    let value = if medium {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    };
                    *f = value as f32;
                }
            }
        }
        RotaryEmbedding { inv_freq, head_dim }
    }

    /// `cos` and `sin` tables `[positions, head_dim]`, a row for each position.
    pub fn tables(&self, positions: &[usize], device: &Device) -> (Tensor<2>, Tensor<2>) {
        let half = self.head_dim / 2;
        let len = positions.len();
        let mut cos = vec![0f32; len * self.head_dim];
        let mut sin = vec![0f32; len * self.head_dim];
        for (p, &position) in positions.iter().enumerate() {
            for (i, f) in self.inv_freq.iter().enumerate() {
                // The angle is an f32 product, as in transformers; its cos/sin are rounded once.
                let angle = f64::from(position as f32 * f);
                let (s, c) = angle.sin_cos();
                let row = p * self.head_dim;
                cos[row + i] = c as f32;
                cos[row + half + i] = c as f32;
                sin[row + i] = s as f32;
                sin[row + half + i] = s as f32;
            }
        }
        let shape = [len, self.head_dim];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }
}
