//! The adapter slot of a linear layer: `scale · B(A(dropout(x)))` with `A` `[r, in]` and `B`
//! `[out, r]`, its gradients, and where its dropout masks come from. How adapters are
//! configured, initialized, trained and saved is [`crate::lora`]'s business.

use burn::tensor::Tensor;

use crate::backend::dropout::mix;
use crate::backend::ops;

/// One adapter. `key` identifies it among the model's adapters (for dropout streams).
#[derive(Clone, Debug)]
pub struct LoraAdapter {
    /// `A` `[r, in]`.
    pub a: Tensor<2>,
    /// `B` `[out, r]`.
    pub b: Tensor<2>,
    /// Multiplies the adapter's output (`alpha / r`).
    pub scale: f64,
    /// Dropout of the adapter's input while training.
    pub dropout: f64,
    /// The adapter's place among the model's (its dropout stream).
    pub key: u64,
}

/// Where dropout masks come from during training: a seed and a per-step stream. The mask of an
/// adapter depends only on `(seed, step, adapter key)`, so recomputing a layer (gradient
/// checkpointing), the backward pass and a resumed run all see the very same masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropoutStream {
    /// The run's seed.
    pub seed: u64,
    /// The micro-batch's counter.
    pub step: u64,
}

impl DropoutStream {
    /// The mask seed of the adapter `key` ([`crate::backend::dropout::DropoutMask`]).
    pub fn seed_for(&self, key: u64) -> u64 {
        mix(mix(self.seed ^ 0x5157_4c4f_5241)
            ^ mix(self.step.wrapping_add(1))
            ^ mix(key.wrapping_mul(0x9e3779b97f4a7c15)))
    }
}

/// Gradients of one adapter: `(dA, dB)`.
pub type AdapterGrad = (Tensor<2>, Tensor<2>);

impl LoraAdapter {
    /// The adapter's rank.
    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// The dropout seed and probability of this adapter under `dropout` (`p` 0: none).
    fn dropout_of(&self, dropout: Option<&DropoutStream>) -> (u64, f64) {
        match dropout {
            Some(stream) if self.dropout > 0.0 => (stream.seed_for(self.key), self.dropout),
            _ => (0, 0.0),
        }
    }

    /// `scale · (dropout(x) Aᵀ) Bᵀ` for `x` `[rows, in]`. Dropout applies only with a stream.
    pub fn forward(&self, x: Tensor<2>, dropout: Option<&DropoutStream>) -> Tensor<2> {
        let [rows, _] = x.dims();
        let base = Tensor::<2>::zeros([rows, self.b.dims()[0]], &x.device()).cast(x.dtype());
        self.add_to(base, x, dropout)
    }

    /// `base + ` [`LoraAdapter::forward`]`(x)`, accumulated into `base`.
    pub fn add_to(
        &self,
        base: Tensor<2>,
        x: Tensor<2>,
        dropout: Option<&DropoutStream>,
    ) -> Tensor<2> {
        let (seed, p) = self.dropout_of(dropout);
        ops::lora_forward(base, x, &self.a, &self.b, self.scale, seed, p)
    }

    /// The gradients of `A` and `B`, and `dx_base` plus the gradient of `x`, given the
    /// gradient `dy` of [`LoraAdapter::forward`]'s output for input `x`.
    pub fn backward(
        &self,
        x: Tensor<2>,
        dy: Tensor<2>,
        dropout: Option<&DropoutStream>,
        dx_base: Tensor<2>,
    ) -> (AdapterGrad, Tensor<2>) {
        let (seed, p) = self.dropout_of(dropout);
        let (da, db, dx) =
            ops::lora_backward(x, &self.a, &self.b, dy, dx_base, self.scale, seed, p);
        ((da, db), dx)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution};

    use super::*;

    #[test]
    fn dropout_masks_are_reproducible_and_about_right() {
        let device = Device::flex();
        let s = DropoutStream { seed: 42, step: 3 };
        let ones = Tensor::<2>::ones([64, 100], &device);
        let mask = |key: u64| -> Vec<f32> {
            ops::dropout(ones.clone(), s.seed_for(key), 0.1)
                .into_data()
                .try_into_vec()
                .unwrap()
        };
        let (m1, m2, other) = (mask(7), mask(7), mask(8));
        assert_eq!(m1, m2);
        assert_ne!(m1, other);
        let dropped = m1.iter().filter(|v| **v == 0.0).count() as f64 / m1.len() as f64;
        assert!((dropped - 0.1).abs() < 0.02, "{dropped}");
        assert!(
            m1.iter()
                .all(|v| *v == 0.0 || (*v - 1.0 / 0.9).abs() < 1e-6)
        );
    }

    #[test]
    fn backward_matches_autodiff() {
        let device = Device::flex();
        let r = |shape: [usize; 2]| Tensor::<2>::random(shape, Distribution::Default, &device);
        let (x, dy) = (r([9, 12]), r([9, 5]));
        let adapter = LoraAdapter {
            a: r([4, 12]),
            b: r([5, 4]),
            scale: 0.5,
            dropout: 0.3,
            key: 3,
        };
        let stream = DropoutStream { seed: 1, step: 2 };
        let zeros = Tensor::zeros([9, 12], &device);
        let ((da, db), dx) = adapter.backward(x.clone(), dy.clone(), Some(&stream), zeros);
        let tracked = LoraAdapter {
            a: adapter.a.clone().autodiff().require_grad(),
            b: adapter.b.clone().autodiff().require_grad(),
            ..adapter.clone()
        };
        let xa = x.autodiff().require_grad();
        let y = tracked.forward(xa.clone(), Some(&stream));
        let grads = (y * dy.autodiff()).sum().backward();
        for (got, want) in [
            (da, tracked.a.grad(&grads).unwrap()),
            (db, tracked.b.grad(&grads).unwrap()),
            (dx, xa.grad(&grads).unwrap()),
        ] {
            let diff = (got - want.to_device(&device))
                .abs()
                .max()
                .into_scalar::<f32>();
            assert!(diff < 1e-5, "{diff}");
        }
    }
}
