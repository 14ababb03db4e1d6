//! LoRA on the frozen (NF4 or dense) base: configuration, fresh adapters, which projections
//! they target, and the PEFT file format. The adapter itself sits in the model
//! ([`crate::model::LoraAdapter`]), whose backward pass gives its gradients
//! ([`crate::model::CausalLm::loss_and_grads`]).

mod attach;
mod config;
mod peft;
mod targeting;

pub use config::{LoraConfig, LoraInit, lora_scale, targets_of};
pub use peft::{
    ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, AdapterDtype, AdapterFile, AdapterSettings,
    ModuleWeights, apply_adapter, load_adapter, read_adapter, save_adapter,
};
pub use targeting::Targeting;
