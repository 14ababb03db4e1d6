//! qlora-core: fine-tune decoder language models (LLaMA, Mistral, Qwen 2 and 3) with QLoRA.
//!
//! Modules are listed in dependency order: each uses only those above it.
//!
//! - Foundations: [`error`], [`profile`] (where a step's time goes), [`settings`] (flags and TOML), [`dtype`], [`device`], [`staged_dir`], [`tfevents`] (TensorBoard files),
//!   [`distributed`] (the collectives of a run on several processes: MPI).
//! - Formats and quantization: [`config`] (`config.json`), [`checkpoint`] (safetensors model
//!   directories), [`quant`] (NF4 with double quantization, byte for byte bitsandbytes),
//!   [`quantize_model`], [`text`] (tokenizer, chat templates), [`gguf`] (llama.cpp files).
//! - The model: [`backend`] (the operations training runs on, as Burn backend extensions) and
//!   [`model`] (the decoder its spec describes, with an adapter slot in every linear, and its
//!   training step's backward pass).
//! - [`lora`]: adapter configuration, initialization, targeting, PEFT files.
//! - [`data`]: instruction datasets and preference pairs to token batches; [`preference`]: the
//!   DPO, ORPO and SimPO objectives; [`eval`]: the loss over a dataset;
//!   [`plan`]: the peak memory of a training run, before anything is loaded.
//! - [`train`]: configuration, optimizer, the training loop.
//! - Uses of a trained model: [`generate`], [`merge`]; [`export`] (a merged model as one GGUF
//!   file for llama.cpp and Ollama).

#![warn(missing_docs)]

pub mod error;
pub mod profile;
pub mod resident;
pub mod settings;
pub mod stderr;

pub mod device;
pub mod distributed;
pub mod dtype;
pub mod durable;
pub mod output_lock;
pub mod staged_dir;
pub mod tfevents;

pub mod hub;

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
pub mod plan;
pub mod preference;

pub mod train;

pub mod diagnose;

pub mod generate;
pub mod merge;

pub mod export;

pub use dtype::{ComputeDtype, FloatDtype};
pub use error::{Error, Result};
