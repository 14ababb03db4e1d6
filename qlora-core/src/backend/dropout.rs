//! Counter-based dropout: whether element `i` of a tensor is kept depends only on a 64-bit
//! seed and `i`, so a mask is never stored: the forward pass, a recomputation and the backward
//! pass each draw the very same one.

/// SplitMix64's finalizer: a good 64-bit mix for counter-based random numbers.
#[inline(always)]
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

/// The inverted-dropout mask value of element `i`: `1/(1-p)` when kept, 0 when dropped.
#[derive(Clone, Copy, Debug)]
pub struct DropoutMask {
    seed: u64,
    threshold: u64,
    keep: f32,
}

impl DropoutMask {
    /// The mask of `seed` that drops a share `p` of the values.
    pub fn new(seed: u64, p: f64) -> Self {
        DropoutMask {
            seed,
            threshold: (p * (u64::MAX as f64)) as u64,
            keep: (1.0 / (1.0 - p)) as f32,
        }
    }

    /// The 64-bit threshold an element's hash must reach to be kept, and the kept value.
    pub fn parts(&self) -> (u64, f32) {
        (self.threshold, self.keep)
    }

    /// The mask's value at element `i`: `1 / (1 - p)` kept, 0 dropped.
    #[inline(always)]
    pub fn value(&self, i: usize) -> f32 {
        if mix(self.seed ^ (i as u64).wrapping_mul(0xd1b54a32d192ed03)) >= self.threshold {
            self.keep
        } else {
            0.0
        }
    }

    /// The mask of `n` elements.
    pub fn values(&self, n: usize) -> Vec<f32> {
        use rayon::prelude::*;
        let mut out = vec![0f32; n];
        out.par_chunks_mut(4096)
            .enumerate()
            .for_each(|(chunk, out)| {
                for (j, v) in out.iter_mut().enumerate() {
                    *v = self.value(chunk * 4096 + j);
                }
            });
        out
    }
}
