//! Backend extension for the operation QLoRA lives on: multiplying by a frozen NF4 weight.
//!
//! [`QloraOps`] has a generic default built from Burn's tensor operations, so every backend
//! runs it; backends override it with faster kernels (the CPU one dequantizes with the
//! multi-threaded path of [`crate::quant::nf4`]). Its autodiff implementation has a hand-written
//! backward that keeps only the packed NF4 state: the dense weight exists during one matmul
//! and is dequantized again for the input gradient, never stored in the graph.
//!
//! [`Nf4Weight`] is a frozen weight on a device, what the model multiplies by; [`Nf4Operand`]
//! is the same weight as backend primitives, what the operations take.

mod autodiff;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod cube;
pub mod dropout;
mod flex;
pub mod generic;
pub mod ops;
mod weight;

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, ExtensionType, backend_extension};

pub use weight::Nf4Weight;

/// Both 8-bit blockwise AdamW moments of one parameter, as bitsandbytes keeps each: a u8 code
/// a value and an f32 absmax a block of 256 (the last block may be shorter). For an `n`-value
/// parameter `codes` holds the first moment's `ceil(n / 4)` words, then the second's (four
/// codes a u32 word, the first in the low byte; WGSL has no u8), and `absmax` the first
/// moment's `ceil(n / 256)` block maxima, then the second's: two buffers a parameter.
#[derive(ExtensionType, Clone, Debug)]
pub struct Blockwise8<B: Backend> {
    pub codes: IntTensor<B>,
    pub absmax: FloatTensor<B>,
}

/// The dynamic code maps of the two AdamW moments (signed for the first, unsigned for the
/// second) and their 65536-point lookup tables, for the tensor-operation default.
#[derive(ExtensionType, Clone, Debug)]
pub struct StateMaps<B: Backend> {
    pub signed: FloatTensor<B>,
    pub signed_lut: IntTensor<B>,
    pub unsigned: FloatTensor<B>,
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
    pub arithmetic: AdamWArithmetic,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub step: u64,
    pub grad_scale: f64,
}

/// The shape of an attention: `q` is `[batch * q_len, heads * head_dim]`, `k` and `v` are
/// `[batch * k_len, kv_heads * head_dim]`. Query `i` sits at position `k_len - q_len + i` and
/// sees key `j` when `j` is not after it and both carry the same sequence id.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub q_len: usize,
    pub k_len: usize,
    /// Multiplies the scores (`1 / sqrt(head_dim)`).
    pub scale: f64,
}

/// The shape of an NF4 weight, which its flat tensors do not carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nf4Layout {
    pub out_features: usize,
    pub in_features: usize,
    pub blocksize: usize,
}

impl Nf4Layout {
    pub fn numel(&self) -> usize {
        self.out_features * self.in_features
    }

    pub fn blocks(&self) -> usize {
        self.numel().div_ceil(self.blocksize)
    }
}

/// The absmax of every block as backend primitives: f32, or double-quantized.
#[derive(ExtensionType, Clone, Debug)]
pub enum Nf4Absmax<B: Backend> {
    Plain(FloatTensor<B>),
    Double(#[extension_type] Nf4DoubleAbsmax<B>),
}

/// Double quantization: `absmax = nested_code[code] * nested_absmax[block / nested_blocksize]
/// + offset`, with the 8-bit codes four to an i32 word, most significant first.
#[derive(ExtensionType, Clone, Debug)]
pub struct Nf4DoubleAbsmax<B: Backend> {
    pub words: IntTensor<B>,
    pub nested_absmax: FloatTensor<B>,
    pub nested_code: FloatTensor<B>,
    pub nested_blocksize: usize,
    pub offset: f32,
}

/// An NF4 weight `[out, in]` as backend primitives: packed bytes four to an i32 word (most
/// significant first), the 16-value code table, and the absmax of every block.
#[derive(ExtensionType, Clone, Debug)]
pub struct Nf4Operand<B: Backend> {
    pub words: IntTensor<B>,
    pub code: FloatTensor<B>,
    #[extension_type]
    pub absmax: Nf4Absmax<B>,
    pub layout: Nf4Layout,
}

#[backend_extension(Flex, Cube: cfg(any(feature = "wgpu", feature = "cuda")), Autodiff)]
pub trait QloraOps: Backend {
    /// The dense `[out, in]` f32 weight: `code[q] * absmax[block]`, as bitsandbytes computes it.
    fn nf4_dequantize(#[extension_type] weight: Nf4Operand<Self>) -> FloatTensor<Self> {
        generic::nf4::dequantize::<Self>(&weight)
    }

    /// `x · Wᵀ` for `x` `[rows, in]` and the NF4 weight `W` `[out, in]`: `[rows, out]`.
    /// The product runs in `x`'s dtype (the compute dtype), the weight dequantized exactly
    /// and then rounded to it, as bitsandbytes does for `bnb_4bit_compute_dtype`.
    fn nf4_matmul(
        x: FloatTensor<Self>,
        #[extension_type] weight: Nf4Operand<Self>,
    ) -> FloatTensor<Self> {
        let dense = generic::cast_like::<Self>(Self::nf4_dequantize(weight), &x);
        Self::float_matmul(x, Self::float_transpose(dense))
    }

    /// `dy · W` for `dy` `[rows, out]`: the gradient of the input of [`QloraOps::nf4_matmul`].
    fn nf4_matmul_transposed(
        dy: FloatTensor<Self>,
        #[extension_type] weight: Nf4Operand<Self>,
    ) -> FloatTensor<Self> {
        let dense = generic::cast_like::<Self>(Self::nf4_dequantize(weight), &dy);
        Self::float_matmul(dy, dense)
    }

    /// RMSNorm over the rows of `x` `[rows, hidden]` with `weight` `[hidden]`.
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        generic::layers::rms_norm::<Self>(x, weight, eps)
    }

    /// The gradient of [`QloraOps::rms_norm`] with respect to `x`.
    fn rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
        dy: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        generic::layers::rms_norm_backward::<Self>(x, weight, eps, dy)
    }

    /// Rotary embedding of every head of `x` `[rows, heads * dim]` with per-row `cos`, `sin`
    /// `[rows, dim]`; with `-sin` it is its own gradient.
    fn rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        generic::layers::rope::<Self>(x, cos, sin)
    }

    /// `silu(gate) · up`.
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        generic::layers::swiglu::<Self>(gate, up)
    }

    /// The gradients of [`QloraOps::swiglu`] with respect to `gate` and `up`.
    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dz: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        generic::layers::swiglu_backward::<Self>(gate, up, dz)
    }

    /// `x` times the inverted-dropout mask of `seed` ([`dropout::DropoutMask`]); the same call
    /// on the gradient is the backward pass.
    fn dropout(x: FloatTensor<Self>, seed: u64, p: f64) -> FloatTensor<Self> {
        generic::layers::dropout::<Self>(x, seed, p)
    }

    /// `base + scale · (dropout(x) Aᵀ) Bᵀ`: a LoRA adapter's output added to its linear's base
    /// output, for `x` `[rows, in]`, `a` `[r, in]`, `b` `[out, r]` (`p` = 0: no dropout).
    #[allow(clippy::too_many_arguments)]
    fn lora_forward(
        base: FloatTensor<Self>,
        x: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scale: f64,
        seed: u64,
        p: f64,
    ) -> FloatTensor<Self> {
        generic::layers::lora_forward::<Self>(base, x, a, b, scale, seed, p)
    }

    /// The gradients of [`QloraOps::lora_forward`]: `(dA, dB, dx_base + dx)` given the
    /// output's gradient `dy` and the input gradient of the base part `dx_base`.
    #[allow(clippy::too_many_arguments)]
    fn lora_backward(
        x: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        dx_base: FloatTensor<Self>,
        scale: f64,
        seed: u64,
        p: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        generic::layers::lora_backward::<Self>(x, a, b, dy, dx_base, scale, seed, p)
    }

    /// Causal grouped-query attention with sequence ids ([`AttentionShape`]): the output
    /// `[batch * q_len, heads * head_dim]` and the log-sum-exp of every query's scores
    /// `[batch * heads * q_len]`, which the backward pass uses.
    fn attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        q_ids: IntTensor<Self>,
        k_ids: IntTensor<Self>,
        shape: AttentionShape,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        generic::attention::attention::<Self>(q, k, v, q_ids, k_ids, shape)
    }

    /// The gradients of [`QloraOps::attention`] with respect to `q`, `k` and `v`.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        d_out: FloatTensor<Self>,
        q_ids: IntTensor<Self>,
        k_ids: IntTensor<Self>,
        shape: AttentionShape,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        generic::attention::attention_backward::<Self>(
            q, k, v, out, lse, d_out, q_ids, k_ids, shape,
        )
    }

    /// One AdamW step (`torch.optim.AdamW`'s arithmetic) of a flat parameter with 32-bit
    /// moments: the new parameter, first and second moments.
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

    /// Per-row next-token loss through the output head: `logsumexp(h wᵀ) - (h wᵀ)[target]` for
    /// `hidden` `[rows, h]`, `weight` `[vocab, h]`, `targets` `[rows]` (negative: no loss).
    /// `hidden` and `weight` share a dtype, in which the logits are multiplied; the softmax and
    /// the losses are f32, the gradient is in their dtype.
    fn cross_entropy(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        generic::loss::cross_entropy::<Self>(hidden, weight, targets, false).0
    }

    /// [`QloraOps::cross_entropy`] and the gradient of the summed loss with respect to
    /// `hidden`, in one pass.
    fn cross_entropy_with_grad(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (losses, grad) = generic::loss::cross_entropy::<Self>(hidden, weight, targets, true);
        (losses, grad.expect("asked for the gradient"))
    }
}
