//! The operations QLoRA training runs on, as Burn backend extensions: the frozen NF4 weight's
//! products ([`Nf4Ops`]), a decoder layer's elementwise and row-wise operations
//! ([`LayerOps`]), LoRA's ([`LoraOps`]), attention ([`AttentionOps`]), AdamW ([`OptimOps`]) and
//! the loss ([`LossOps`]); [`QloraOps`] is all of them.
//!
//! Adding a kernel takes two places: the trait method, whose default body is built from Burn's
//! tensor operations in [`generic`] (so every backend runs it, and autodiff differentiates it),
//! and the backend that overrides it: `flex/` (the CPU) or `cube/` (CubeCL kernels for wgpu
//! and CUDA), each in the file of the trait's purpose. [`ops`] calls them on tensors.
//!
//! The autodiff implementation of [`Nf4Ops`] has a hand-written backward that keeps only the
//! packed NF4 state: the dense weight exists during one matmul and is dequantized again for the
//! input gradient, never stored in the graph. [`Nf4Weight`] is a frozen weight on a device,
//! what the model multiplies by; [`Nf4Operand`] is the same weight as backend primitives, what
//! the operations take.

mod attention;
mod autodiff;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube;
pub mod dropout;
mod flex;
pub mod generic;
mod layers;
mod lora;
mod loss;
mod nf4;
pub mod ops;
mod optim;
mod weight;

pub use attention::AttentionOps;
pub use attention::AttentionShape;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub use cube::{Baselines, set_baselines};
pub use layers::LayerOps;
pub use lora::LoraOps;
pub use loss::LossOps;
pub use nf4::{Nf4Absmax, Nf4DoubleAbsmax, Nf4Layout, Nf4Operand, Nf4Ops};
pub use optim::{AdamWArithmetic, AdamWStep, Blockwise8, OptimOps, StateMaps};
pub use weight::Nf4Weight;

/// Every operation QLoRA runs: what a backend implements to train on it.
pub trait QloraOps: Nf4Ops + LayerOps + LoraOps + AttentionOps + OptimOps + LossOps {}

impl<B: Nf4Ops + LayerOps + LoraOps + AttentionOps + OptimOps + LossOps> QloraOps for B {}
