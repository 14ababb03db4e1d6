//! CubeCL kernels of [`QloraOps`](super::QloraOps) for the GPU backends (wgpu, CUDA): the same
//! source compiles for both.

pub mod nf4;
