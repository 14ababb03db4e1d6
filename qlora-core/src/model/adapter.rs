//! The adapter slot of a linear layer: `scale · B(A(dropout(x)))` with `A` `[r, in]` and `B`
//! `[out, r]`, and the counter-based dropout masks training uses. How adapters are configured,
//! initialized, trained and saved is [`crate::lora`]'s business.

use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;

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

#[cfg(test)]
mod tests {
    use super::*;

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
