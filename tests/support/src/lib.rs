//! Helpers shared by qlora's tests and examples: the repository's fixtures and files, seeded
//! values, a counting allocator, synthetic checkpoints, training-peak measurements and the
//! reader fuzzer. Not published.

pub mod alloc;
pub mod facts;
pub mod fuzz;
pub mod ops;
pub mod synthetic;
pub mod training_peak;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

/// The repository's root (where `datasets/` and `tests/` are).
pub fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// A file or folder under `tests/fixtures` (the repo's copy of `../shared/fixtures`).
pub fn fixture(relative: &str) -> PathBuf {
    root().join("tests/fixtures").join(relative)
}

/// A file or folder under `tests/reference` (references this project made with the Python
/// stack, with the scripts that made them).
pub fn reference(relative: &str) -> PathBuf {
    root().join("tests/reference").join(relative)
}

/// Every tensor of a fixture's safetensors file: dtype, shape and raw bytes.
pub fn load_tensors(relative: &str) -> HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> {
    load_tensors_at(&fixture(relative))
}

/// Little-endian f32 values of `bytes`.
pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Bit patterns, so `assert_eq!` compares floats exactly (and shows where they differ).
pub fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// Every tensor of a safetensors file at any path.
pub fn load_tensors_at(path: &Path) -> HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).expect("safetensors file");
    let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                (view.dtype(), view.shape().to_vec(), view.data().to_vec()),
            )
        })
        .collect()
}

/// `n` seeded pseudo-random values uniform in `[-scale, scale)` (xorshift64): the self-test's.
pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    qlora_core::diagnose::selftest::values(n, seed, scale)
}
