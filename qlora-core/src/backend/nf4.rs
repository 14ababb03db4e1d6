//! The NF4 weight as backend primitives, and the operations on it: dequantization and the two
//! products training needs (`x·Wᵀ` forward, `dy·W` for the input's gradient).

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, ExtensionType, backend_extension};

use super::generic;

/// The shape of an NF4 weight, which its flat tensors do not carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nf4Layout {
    /// Rows of the weight (`out_features` of its linear).
    pub out_features: usize,
    /// Columns of the weight (`in_features` of its linear).
    pub in_features: usize,
    /// Values a block of codes shares an absmax over.
    pub blocksize: usize,
}

impl Nf4Layout {
    /// Values of the weight.
    pub fn numel(&self) -> usize {
        self.out_features * self.in_features
    }

    /// Blocks of the weight (the last may be shorter).
    pub fn blocks(&self) -> usize {
        self.numel().div_ceil(self.blocksize)
    }
}

/// The absmax of every block as backend primitives: f32, or double-quantized.
#[derive(ExtensionType, Clone, Debug)]
pub enum Nf4Absmax<B: Backend> {
    /// One f32 a block.
    Plain(FloatTensor<B>),
    /// One 8-bit code a block ([`Nf4DoubleAbsmax`]).
    Double(#[extension_type] Nf4DoubleAbsmax<B>),
}

/// Double quantization: `absmax = nested_code[code] * nested_absmax[block / nested_blocksize]
/// + offset`, with the 8-bit codes four to an i32 word, most significant first.
#[derive(ExtensionType, Clone, Debug)]
pub struct Nf4DoubleAbsmax<B: Backend> {
    /// The blocks' 8-bit codes, four to a word.
    pub words: IntTensor<B>,
    /// The f32 absmax of every `nested_blocksize` blocks' codes.
    pub nested_absmax: FloatTensor<B>,
    /// The 256 values an 8-bit code stands for (bitsandbytes' signed dynamic map).
    pub nested_code: FloatTensor<B>,
    /// Blocks a nested absmax covers.
    pub nested_blocksize: usize,
    /// Added to every decoded absmax (their mean, taken out before quantizing).
    pub offset: f32,
}

/// An NF4 weight `[out, in]` as backend primitives: packed bytes four to an i32 word (most
/// significant first), the 16-value code table, and the absmax of every block.
#[derive(ExtensionType, Clone, Debug)]
pub struct Nf4Operand<B: Backend> {
    /// The packed 4-bit codes, two to a byte, four bytes to a word.
    pub words: IntTensor<B>,
    /// The 16 values a code stands for.
    pub code: FloatTensor<B>,
    /// The absmax of every block.
    #[extension_type]
    pub absmax: Nf4Absmax<B>,
    /// The weight's shape and block size.
    pub layout: Nf4Layout,
}

/// The frozen NF4 weight's operations.
#[backend_extension(Flex, Cube: cfg(any(feature = "wgpu", feature = "cuda")), Autodiff)]
pub trait Nf4Ops: Backend {
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
        generic::nf4::linear::<Self>(x, Self::nf4_dequantize(weight))
    }

    /// `dy · W` for `dy` `[rows, out]`: the gradient of the input of [`Nf4Ops::nf4_matmul`].
    fn nf4_matmul_transposed(
        dy: FloatTensor<Self>,
        #[extension_type] weight: Nf4Operand<Self>,
    ) -> FloatTensor<Self> {
        generic::nf4::input_grad::<Self>(dy, Self::nf4_dequantize(weight))
    }
}
