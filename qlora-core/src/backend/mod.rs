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
mod flex;
mod generic;
mod weight;

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, ExtensionType, backend_extension};

pub use weight::Nf4Weight;

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
        generic::dequantize::<Self>(&weight)
    }

    /// `x · Wᵀ` for `x` `[rows, in]` and the NF4 weight `W` `[out, in]`: `[rows, out]`.
    fn nf4_matmul(
        x: FloatTensor<Self>,
        #[extension_type] weight: Nf4Operand<Self>,
    ) -> FloatTensor<Self> {
        let dense = Self::nf4_dequantize(weight);
        Self::float_matmul(x, Self::float_transpose(dense))
    }

    /// `dy · W` for `dy` `[rows, out]`: the gradient of the input of [`QloraOps::nf4_matmul`].
    fn nf4_matmul_transposed(
        dy: FloatTensor<Self>,
        #[extension_type] weight: Nf4Operand<Self>,
    ) -> FloatTensor<Self> {
        let dense = Self::nf4_dequantize(weight);
        Self::float_matmul(dy, dense)
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl QloraOps for burn::backend::Cube {}
