//! bitsandbytes-compatible NF4 quantization with double quantization.

pub mod blockwise8;
pub mod bnb_cpu_bf16;
pub mod dynamic_map;
pub mod nf4;
mod python_repr;
pub mod state;
mod torch_sum;

pub use state::{Absmax, DoubleQuant, NESTED_BLOCKSIZE, Nf4Config, Nf4Tensor};
pub use torch_sum::{torch_mean, torch_sum};
