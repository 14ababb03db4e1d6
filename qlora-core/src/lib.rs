//! qlora-core: fine-tune LLaMA-family models with QLoRA.
//!
//! Modules are listed in dependency order: each uses only those above it.
//!
//! - Foundations: [`error`], [`settings`] (flags and TOML), [`dtype`], [`device`], [`staged_dir`].
//! - Formats and quantization: [`quant`] (NF4 with double quantization, byte for byte
//!   bitsandbytes), [`checkpoint`] (safetensors model directories), [`config`] (`config.json`),
//!   [`text`] (tokenizer, chat templates), [`gguf`] (llama.cpp files), [`quantize_model`].
//! - The model: [`backend`] (the NF4 matmul as a Burn backend extension) and [`model`] (the
//!   LLaMA decoder with an adapter slot in every linear).
//! - [`lora`]: adapter configuration, initialization, gradients, PEFT files.
//! - [`data`]: instruction datasets to token batches.
//! - [`train`]: configuration, optimizer, the training loop.
//! - Uses of a trained model: [`eval`], [`generate`], [`merge`], [`plan`].

pub mod error;
pub mod settings;

pub mod device;
pub mod dtype;
pub mod staged_dir;

pub mod checkpoint;
pub mod config;
pub mod gguf;
pub mod quant;
pub mod quantize_model;
pub mod text;

pub mod backend;
pub mod model;

pub mod lora;

pub mod data;

pub mod train;

pub mod eval;
pub mod generate;
pub mod merge;
pub mod plan;

pub use dtype::FloatDtype;
pub use error::{Error, Result};
