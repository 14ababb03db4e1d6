//! The decoder on Burn, one for every family [`crate::config::Architecture`] lists, driven by
//! its [`crate::config::DecoderSpec`]: embedding, RMSNorm, rotary embedding (Hugging Face's
//! rotate-half convention), grouped-query causal attention (with q/k norms and sliding windows
//! where the spec says), the gated MLP, the output head, the adapter slot of every linear, and
//! the training step's forward and backward passes.

mod adapter;
mod attention;
mod batch;
mod causal_lm;
mod kv_cache;
mod layer;
mod layer_train;
mod linear;
mod load;
mod mlp;
mod projections;
mod rms_norm;
mod rope;
mod train_step;

pub use adapter::{AdapterGrad, DropoutStream, LoraAdapter};
pub use attention::{Attention, LayerContext, Projected, RopeTables};
pub use batch::{IGNORE_INDEX, TrainBatch};
pub use causal_lm::{AttentionInputs, CausalLm, LossSum};
pub use kv_cache::{KvCache, LayerCache};
pub use layer::DecoderLayer;
pub use layer_train::{KeptValues, LayerActivations, LayerGrads};
pub use linear::{BaseWeight, Linear};
pub use load::{Bits, LoadOptions, Nf4Matmul};
pub use mlp::Mlp;
pub use projections::InputProjections;
pub use rms_norm::RmsNorm;
pub use rope::RotaryEmbedding;
pub use train_step::{AdapterGrads, LossAndGrads};
