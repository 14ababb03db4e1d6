//! Rotary position embedding in Hugging Face's convention: `cos`/`sin` over the concatenated
//! frequencies `[f, f]`, and `rotate_half(x) = [-x2, x1]`, over the first `rotary_dim`
//! dimensions of every head (all of them but with a partial rotary factor).

use burn::tensor::{Device, Tensor, TensorData};

use crate::config::{RopeConfig, RopeScaling};

/// Rotary embedding tables for any positions.
#[derive(Clone, Debug)]
pub struct RotaryEmbedding {
    /// One inverse frequency per pair of rotated dimensions, in f32 as transformers computes
    /// them.
    inv_freq: Vec<f32>,
    /// LongRoPE's frequencies past the pretraining length, and that length.
    long: Option<(Vec<f32>, usize)>,
    /// Multiplies `cos` and `sin` (LongRoPE's attention factor; else 1).
    attention_factor: f32,
    /// The dimensions of a head rotated: the tables' width.
    rotary_dim: usize,
}

impl RotaryEmbedding {
    /// The frequencies of `config` for heads of `head_dim`.
    pub fn new(config: &RopeConfig, head_dim: usize) -> Self {
        let dim = config.rotary_dim(head_dim);
        let base = config.theta as f32;
        // `base ** (2i / dim)` in f32, as transformers raises it.
        let powers: Vec<f32> = (0..dim / 2)
            .map(|i| base.powf((2 * i) as f32 / dim as f32))
            .collect();
        let mut inv_freq: Vec<f32> = powers.iter().map(|p| 1.0 / p).collect();
        let (mut long, mut attention_factor) = (None, 1.0);
        match &config.scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => {
                for f in &mut inv_freq {
                    *f /= *factor as f32;
                }
            }
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                attention_factor: m,
            } => {
                // `1 / (factor * base ** (2i / dim))`, all in f32.
                let scaled = |factors: &[f64]| -> Vec<f32> {
                    factors
                        .iter()
                        .zip(&powers)
                        .map(|(f, p)| 1.0 / (*f as f32 * p))
                        .collect()
                };
                inv_freq = scaled(short_factor);
                long = Some((scaled(long_factor), *original_max_position_embeddings));
                attention_factor = *m as f32;
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let (factor, low_freq_factor, high_freq_factor) =
                    (*factor, *low_freq_factor, *high_freq_factor);
                // Llama 3.1: long wavelengths slowed by `factor`, short ones kept, the band
                // between blended smoothly.
                let old = *original_max_position_embeddings as f64;
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
        RotaryEmbedding {
            inv_freq,
            long,
            attention_factor,
            rotary_dim: dim,
        }
    }

    /// `cos` and `sin` tables `[positions, rotary_dim]`, a row for each position. LongRoPE
    /// uses its long factors for all of them when one lies past the pretraining length.
    pub fn tables(&self, positions: &[usize], device: &Device) -> (Tensor<2>, Tensor<2>) {
        let dim = self.rotary_dim;
        let half = dim / 2;
        let len = positions.len();
        let last = positions.iter().max().map_or(0, |p| p + 1);
        let inv_freq = match &self.long {
            Some((long, original)) if last > *original => long,
            _ => &self.inv_freq,
        };
        let m = self.attention_factor;
        let mut cos = vec![0f32; len * dim];
        let mut sin = vec![0f32; len * dim];
        for (p, &position) in positions.iter().enumerate() {
            for (i, f) in inv_freq.iter().enumerate() {
                // The angle is an f32 product, as in transformers; its cos/sin are rounded
                // once, then multiplied by the attention factor in f32.
                let angle = f64::from(position as f32 * f);
                let (s, c) = angle.sin_cos();
                let (c, s) = (c as f32 * m, s as f32 * m);
                let row = p * dim;
                cos[row + i] = c;
                cos[row + half + i] = c;
                sin[row + i] = s;
                sin[row + half + i] = s;
            }
        }
        let shape = [len, dim];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }
}
