//! AdamW steps on flat parameters: 32-bit moments, and bitsandbytes' 8-bit blockwise ones.

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, ExtensionType, backend_extension};

use super::generic;

/// Both 8-bit blockwise AdamW moments of one parameter, as bitsandbytes keeps each: a u8 code
/// a value and an f32 absmax a block of 256 (the last block may be shorter). For an `n`-value
/// parameter `codes` holds the first moment's `ceil(n / 4)` words, then the second's (four
/// codes a u32 word, the first in the low byte; WGSL has no u8), and `absmax` the first
/// moment's `ceil(n / 256)` block maxima, then the second's: two buffers a parameter.
#[derive(ExtensionType, Clone, Debug)]
pub struct Blockwise8<B: Backend> {
    /// Both moments' codes, four to a word.
    pub codes: IntTensor<B>,
    /// Both moments' block maxima.
    pub absmax: FloatTensor<B>,
}

/// The dynamic code maps of the two AdamW moments (signed for the first, unsigned for the
/// second) and their 65536-point lookup tables, for the tensor-operation default.
#[derive(ExtensionType, Clone, Debug)]
pub struct StateMaps<B: Backend> {
    /// The 256 values of the signed map.
    pub signed: FloatTensor<B>,
    /// The signed map's encoding table.
    pub signed_lut: IntTensor<B>,
    /// The 256 values of the unsigned map.
    pub unsigned: FloatTensor<B>,
    /// The unsigned map's encoding table.
    pub unsigned_lut: IntTensor<B>,
}

/// Whose arithmetic an AdamW step follows, to the rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdamWArithmetic {
    /// `torch.optim.AdamW`: `m.lerp_(g, 1 - β1)`, `denom = sqrt(v) / sqrt(bc2) + eps`,
    /// `p += (-lr / bc1 · m) / denom`.
    Torch,
    /// bitsandbytes' 32-bit update (its paged and 8-bit optimizers' tensors under 4096
    /// values): `m = m β1 + (1 - β1) g`, `p += lr·sqrt(bc2)/bc1 · m / (sqrt(v) + eps·sqrt(bc2))`.
    Bitsandbytes,
}

/// One AdamW step's settings (`step` counts from 1; `grad_scale` multiplies the gradient
/// first, e.g. the mean over tokens and clipping).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    /// Whose rounding the update follows.
    pub arithmetic: AdamWArithmetic,
    /// The learning rate of this step.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the second moment's root.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// The step's number, from 1 (for the bias corrections).
    pub step: u64,
    /// Multiplies the gradient before anything else.
    pub grad_scale: f64,
}

/// The optimizer's updates.
#[backend_extension(Flex, Cube: cfg(any(feature = "wgpu", feature = "cuda")), Autodiff)]
pub trait OptimOps: Backend {
    /// One AdamW step of a flat parameter with 32-bit moments: the new parameter, first and
    /// second moments.
    fn adamw_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        settings: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        generic::optim::adamw_step::<Self>(param, grad, m, v, settings)
    }

    /// One step of bitsandbytes' 8-bit blockwise AdamW (`AdamW8bit`) on a flat parameter of
    /// `numel` values: decode the moments, update them and the parameter, encode them again.
    fn adamw8_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        #[extension_type] state: Blockwise8<Self>,
        #[extension_type] maps: StateMaps<Self>,
        settings: AdamWStep,
    ) -> (FloatTensor<Self>, Blockwise8<Self>) {
        generic::optim::adamw8_step::<Self>(param, grad, state, maps, settings)
    }
}
