//! qlora-core: fine-tune LLaMA-family models with QLoRA.
//!
//! Modules are listed in dependency order: each uses only those above it.
//!
//! - Foundations: [`error`], [`profile`] (where a step's time goes), [`settings`] (flags and TOML), [`dtype`], [`device`], [`staged_dir`].
//! - Formats and quantization: [`config`] (`config.json`), [`checkpoint`] (safetensors model
//!   directories), [`quant`] (NF4 with double quantization, byte for byte bitsandbytes),
//!   [`quantize_model`], [`text`] (tokenizer, chat templates), [`gguf`] (llama.cpp files).
//! - The model: [`backend`] (the NF4 matmul as a Burn backend extension) and [`model`] (the
//!   LLaMA decoder with an adapter slot in every linear).
//! - [`lora`]: adapter configuration, initialization, gradients, PEFT files.
//! - [`data`]: instruction datasets to token batches; [`eval`]: the loss over a dataset.
//! - [`train`]: configuration, optimizer, the training loop.
//! - Uses of a trained model and of training settings: [`generate`], [`merge`], [`plan`];
//!   [`export`] (a merged model as one GGUF file for llama.cpp and Ollama).

pub mod error;
pub mod profile;
pub mod settings;

pub mod device;
pub mod dtype;
pub mod staged_dir;

pub mod config;

pub mod checkpoint;
pub mod quant;
pub mod quantize_model;
pub mod text;

pub mod gguf;

pub mod backend;
pub mod model;

pub mod lora;

pub mod data;
pub mod eval;

pub mod train;

pub mod generate;
pub mod merge;
pub mod plan;

pub mod export;

pub use dtype::{ComputeDtype, FloatDtype};
pub use error::{Error, Result};
