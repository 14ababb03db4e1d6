//! qlora-core: fine-tune LLaMA-family models with QLoRA.
//!
//! - [`quant`]: NF4 with double quantization, byte-for-byte the format of bitsandbytes.
//! - [`checkpoint`]: Hugging Face safetensors checkpoints, single or sharded.
//! - [`quantize_model`]: turn a Hugging Face model directory into a bitsandbytes 4-bit one.
//! - [`model`]: the LLaMA-family decoder on Burn, loaded dense, NF4, or from bitsandbytes.
//! - [`gguf`]: import llama.cpp GGUF files as Hugging Face model directories.
//! - [`text`]: tokenizer and chat templates; [`generate`] and [`eval`] use them.

pub mod backend;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod dtype;
pub mod error;
pub mod eval;
pub mod generate;
pub mod gguf;
pub mod lora;
pub mod merge;
pub mod model;
pub mod plan;
pub mod quant;
pub mod quantize_model;
pub mod staged_dir;
pub mod synthetic;
pub mod text;
pub mod train;

pub use dtype::FloatDtype;
pub use error::{Error, Result};
