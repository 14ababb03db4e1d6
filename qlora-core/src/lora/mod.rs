//! LoRA on the frozen (NF4 or dense) base: adapters, their gradients with per-layer gradient
//! checkpointing, and the PEFT file format.

mod adapter;
mod backward;
mod peft;

pub use adapter::{
    DropoutStream, LLAMA_PROJECTIONS, LoraAdapter, LoraConfig, LoraInit, init_rng, lora_scale,
};
pub use backward::{AdapterGrads, LossAndGrads, TrainBatch, loss_and_grads};
pub use peft::{
    AdapterDtype, AdapterFile, AdapterSettings, ModuleWeights, load_adapter, read_adapter,
    save_adapter,
};
