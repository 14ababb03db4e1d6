//! The LLaMA-family decoder on Burn: embedding, RMSNorm, rotary embedding (Hugging Face's
//! rotate-half convention), grouped-query causal attention, SwiGLU MLP, `lm_head`, and the
//! adapter slot of every linear.

mod adapter;
mod attention;
mod batch;
mod kv_cache;
mod layer;
mod linear;
mod llama;
mod load;
mod mlp;
mod rms_norm;
mod rope;

pub use adapter::{AdapterGrad, DropoutStream, LoraAdapter};
pub use attention::{Attention, LayerContext};
pub use batch::{IGNORE_INDEX, TrainBatch};
pub use kv_cache::{KvCache, LayerCache};
pub use layer::DecoderLayer;
pub use linear::{BaseWeight, Linear};
pub use llama::{AttentionInputs, Llama, LossSum};
pub use load::{Bits, LoadOptions, Nf4Matmul};
pub use mlp::Mlp;
pub use rms_norm::RmsNorm;
pub use rope::RotaryEmbedding;
