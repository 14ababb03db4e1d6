//! GGUF (llama.cpp) models: read the file, dequantize its ggml blocks, and import it as a
//! Hugging Face model directory the rest of the toolkit loads.

pub mod blocks;
pub mod cache;
pub mod config;
pub mod file;
mod gemma_tokenizer;
pub mod import;
pub mod keys;
pub mod kquants;
pub mod tokenizer;

pub use cache::{resolve_gguf_in, resolve_model};
pub use file::GgufFile;
pub use import::{ImportOptions, ImportSummary, import_gguf, import_gguf_file};
