//! Hugging Face safetensors checkpoints: reading (single file or sharded index, memory-mapped)
//! and writing (sharded, atomically, tensors produced lazily one at a time), and the files that
//! travel with the weights.

mod model_dir;
mod reader;
mod writer;

pub use model_dir::{
    COMPANION_FILES, bnb_quantization_config, copy_companion_files, write_json, write_model_dir,
};
pub use reader::Checkpoint;
pub use writer::{OutTensor, write_safetensors, write_safetensors_file};

/// Name of the single-file weights of a Hugging Face model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Name of the index of a sharded Hugging Face checkpoint.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
