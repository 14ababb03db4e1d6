//! Backend extension for the operation QLoRA lives on: multiplying by a frozen NF4 weight.
//!
//! [`QloraOps`] has a generic default built from Burn's tensor operations, so every backend
//! runs it; backends override it with faster kernels (the CPU one dequantizes with the
//! multi-threaded path of [`crate::quant::nf4`]). Its autodiff implementation has a hand-written
//! backward that keeps only the packed NF4 state: the dense weight exists during one matmul
//! and is dequantized again for the input gradient, never stored in the graph.

mod autodiff;
mod flex;
mod generic;
mod nf4_linear;

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, ExtensionType, backend_extension};

pub use nf4_linear::nf4_linear;

/// An NF4 weight `[out, in]` as backend primitives: packed bytes four to an i32 word
/// (most significant first), the 16-value code table, and the f32 absmax of every block.
#[derive(ExtensionType, Clone, Debug)]
pub struct Nf4Operand<B: Backend> {
    pub words: IntTensor<B>,
    pub code: FloatTensor<B>,
    pub absmax: FloatTensor<B>,
}

/// The layout of an NF4 weight that the tensors do not carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nf4Layout {
    pub out_features: usize,
    pub in_features: usize,
    pub blocksize: usize,
}

#[backend_extension(Flex, Cube: cfg(any(feature = "wgpu", feature = "cuda")), Autodiff)]
pub trait QloraOps: Backend {
    /// `x · Wᵀ` for `x` `[rows, in]` and the NF4 weight `W` `[out, in]`: `[rows, out]`.
    fn nf4_matmul(
        x: FloatTensor<Self>,
        #[extension_type] weight: Nf4Operand<Self>,
        out_features: usize,
        in_features: usize,
        blocksize: usize,
    ) -> FloatTensor<Self> {
        let layout = Nf4Layout {
            out_features,
            in_features,
            blocksize,
        };
        let dense = generic::dequantize::<Self>(&weight, layout);
        Self::float_matmul(x, Self::float_transpose(dense))
    }

    /// `dy · W` for `dy` `[rows, out]`: the gradient of the input of [`QloraOps::nf4_matmul`].
    fn nf4_matmul_transposed(
        dy: FloatTensor<Self>,
        #[extension_type] weight: Nf4Operand<Self>,
        out_features: usize,
        in_features: usize,
        blocksize: usize,
    ) -> FloatTensor<Self> {
        let layout = Nf4Layout {
            out_features,
            in_features,
            blocksize,
        };
        let dense = generic::dequantize::<Self>(&weight, layout);
        Self::float_matmul(dy, dense)
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl QloraOps for burn::backend::Cube {}
