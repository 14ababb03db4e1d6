//! GGUF file → Hugging Face model directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::config::{PHI3_ROPE_FACTORS, ROPE_FREQS_TENSOR, architecture, hf_config};
use super::file::GgufFile;
use super::tokenizer::tokenizer_files;
use crate::FloatDtype;
use crate::checkpoint::write_json;
use crate::checkpoint::{OutTensor, write_safetensors};
use crate::config::CONFIG_FILE;
use crate::config::tensors::hf_name;
use crate::dtype::encode_f32;
use crate::error::{Error, Result};
use crate::staged_dir::StagedDir;
use crate::text::{GENERATION_CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE};

/// How `qlora import-gguf` writes the model directory.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Dtype of the written weights. bf16 (the default) is what transformers makes of a GGUF
    /// (its dequantized values rounded to bf16); f32 keeps the dequantized values exactly.
    pub dtype: FloatDtype,
    /// Largest safetensors shard.
    pub max_shard_bytes: usize,
    /// Replace the output if it exists.
    pub overwrite: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            dtype: FloatDtype::BF16,
            max_shard_bytes: 5_000_000_000,
            overwrite: false,
        }
    }
}

/// What an import wrote.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    /// The model directory.
    pub out_dir: PathBuf,
    /// Tensors written.
    pub tensors: usize,
    /// Values of all tensors.
    pub parameters: usize,
    /// Count of tensors per ggml type, e.g. ("Q4_1", 210).
    pub types: BTreeMap<&'static str, usize>,
}

/// Undo llama.cpp's permutation of q/k rows: within each head, the converter interleaved the
/// two rotary halves (row 2i+j holds Hugging Face row j*head_dim/2 + i).
pub fn unpermute_rows(values: &[f32], rows: usize, heads: usize) -> Vec<f32> {
    move_rotary_rows(values, rows, heads, |hf, gg| (gg, hf))
}

/// llama.cpp's permutation of q/k rows, the inverse of [`unpermute_rows`]: within each head,
/// Hugging Face row `j*head_dim/2 + i` goes to row `2i + j` (the rotary halves interleaved).
pub fn permute_rows(values: &[f32], rows: usize, heads: usize) -> Vec<f32> {
    move_rotary_rows(values, rows, heads, |hf, gg| (hf, gg))
}

/// Copy whole rows: for each pair of a Hugging Face row `hf` and its llama.cpp row `gg`,
/// `source_and_target(hf, gg)` names the row read and the row written.
fn move_rotary_rows(
    values: &[f32],
    rows: usize,
    heads: usize,
    source_and_target: impl Fn(usize, usize) -> (usize, usize),
) -> Vec<f32> {
    let cols = values.len() / rows;
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let (from, to) =
                    source_and_target(h * head_dim + j * half + i, h * head_dim + 2 * i + j);
                out[to * cols..(to + 1) * cols]
                    .copy_from_slice(&values[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

/// Write `gguf_path` as a Hugging Face model directory `out_dir`. Tensors are dequantized one
/// at a time while writing, so memory stays near the largest tensor.
pub fn import_gguf(
    gguf_path: impl AsRef<Path>,
    out_dir: impl AsRef<Path>,
    options: &ImportOptions,
) -> Result<ImportSummary> {
    import_gguf_file(&GgufFile::open(gguf_path.as_ref())?, out_dir, options)
}

/// [`import_gguf`] for a file already opened.
pub fn import_gguf_file(
    gguf: &GgufFile,
    out_dir: impl AsRef<Path>,
    options: &ImportOptions,
) -> Result<ImportSummary> {
    let config = hf_config(gguf, options.dtype)?;
    let (arch, arch_name) = architecture(gguf)?;
    let heads = config.num_attention_heads;
    let kv_heads = config.num_key_value_heads.unwrap_or(heads);
    let tokenizer = tokenizer_files(gguf)?;

    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let mut tensors = BTreeMap::new();
    let mut summary = ImportSummary {
        out_dir: out_dir.as_ref().to_path_buf(),
        tensors: 0,
        parameters: 0,
        types: BTreeMap::new(),
    };
    for name in gguf.tensor_names() {
        if name == ROPE_FREQS_TENSOR || [PHI3_ROPE_FACTORS.0, PHI3_ROPE_FACTORS.1].contains(&name) {
            continue; // folded into config.json's rope_scaling
        }
        let crossing = hf_name(name, arch).ok_or_else(|| {
            Error::key(
                gguf.path(),
                name,
                format!(
                    "not a tensor of a `{arch_name}` model (unsupported architecture variant?)"
                ),
            )
        })?;
        let shape = gguf.shape(name)?;
        let permuted = crossing.rotary.heads(heads, kv_heads);
        let shift = crossing.shift;
        if let Some(heads) = permuted
            && (shape[0] % heads != 0 || (shape[0] / heads) % 2 != 0)
        {
            return Err(Error::key(
                gguf.path(),
                name,
                format!(
                    "{} rows do not split into {heads} heads of even size",
                    shape[0]
                ),
            ));
        }
        *summary
            .types
            .entry(super::blocks::type_name(gguf.tensor_type(name)?))
            .or_default() += 1;
        summary.tensors += 1;
        summary.parameters += shape.iter().product::<usize>();

        let (failure, dtype) = (&failure, options.dtype);
        let rows = shape[0];
        let len = shape.iter().product::<usize>() * dtype.size();
        let produce = move || -> Vec<u8> {
            let values = match gguf.dequantize(name) {
                Ok(v) => v,
                Err(e) => {
                    // The writer cannot fail from here: fill, record, and fail after it.
                    failure.lock().expect("lock").get_or_insert(e);
                    return vec![0; len];
                }
            };
            let mut values = match permuted {
                Some(heads) => unpermute_rows(&values, rows, heads),
                None => values,
            };
            if let Some(shift) = shift {
                values.iter_mut().for_each(|v| *v -= shift);
            }
            encode_f32(&values, dtype)
        };
        tensors.insert(
            crossing.name,
            OutTensor::lazy(dtype.safetensors(), shape, produce),
        );
    }
    if !tensors.contains_key("model.embed_tokens.weight") {
        return Err(Error::key(
            gguf.path(),
            "token_embd.weight",
            "missing tensor",
        ));
    }

    let staged = StagedDir::new(out_dir.as_ref(), options.overwrite, &[gguf.path()])?;
    write_safetensors(staged.path(), tensors, options.max_shard_bytes)?;
    if let Some(error) = failure.lock().expect("lock").take() {
        return Err(error); // the staged directory is removed
    }

    write_json(&staged.path().join(CONFIG_FILE), &config)?;
    let tokenizer_path = staged.path().join(TOKENIZER_FILE);
    tokenizer
        .tokenizer
        .save(&tokenizer_path, false)
        .map_err(|e| Error::file(&tokenizer_path, format!("cannot write tokenizer: {e}")))?;
    write_json(
        &staged.path().join(TOKENIZER_CONFIG_FILE),
        &tokenizer.tokenizer_config,
    )?;
    write_json(
        &staged.path().join(GENERATION_CONFIG_FILE),
        &tokenizer.generation_config,
    )?;
    staged.commit()?;
    Ok(summary)
}
