//! A preference run's data (DPO, ORPO, SimPO): its pairs, the frozen reference and its
//! scores (kept with checkpoints under `--precompute-ref`), and how pairs are batched.

use std::path::Path;

use safetensors::Dtype;

use crate::checkpoint::{Checkpoint, OutTensor, write_safetensors_file};
use crate::data::{PairExample, PairLimits};
use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::preference::PreferenceConfig;

/// The file of a checkpoint that keeps the reference's scores (`--precompute-ref`): one
/// `[pairs, 2]` f64 tensor, so a resumed run compares with the very same bits.
pub const REFERENCE_FILE: &str = "reference_logps.safetensors";

const REFERENCE_TENSOR: &str = "reference_logps";

/// A preference run's data and reference.
pub struct PairRun {
    /// The training pairs.
    pub train: Vec<PairExample>,
    /// The held-out pairs.
    pub eval: Vec<PairExample>,
    /// The frozen reference (DPO, scored each step): the base, or the adapter the run started
    /// from as it was loaded.
    pub reference: Option<CausalLm>,
    /// The reference's log-probabilities of every training pair (`--precompute-ref`).
    pub train_ref: Option<Vec<[f64; 2]>>,
    /// The reference's log-probabilities of every held-out pair (DPO: scored once).
    pub eval_ref: Option<Vec<[f64; 2]>>,
}

impl PairRun {
    /// Every pair's length in tokens (both sequences): what batches are planned by.
    pub fn lengths(&self) -> Vec<usize> {
        self.train.iter().map(PairExample::len).collect()
    }
}

/// Read the reference's scores a checkpoint kept, if it has them.
pub fn read_reference(dir: &Path, pairs: usize) -> Result<Option<Vec<[f64; 2]>>> {
    let path = dir.join(REFERENCE_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let file = Checkpoint::open_file(&path)?;
    let view = file.view(REFERENCE_TENSOR)?;
    if view.dtype() != Dtype::F64 || view.shape() != [pairs, 2] {
        return Err(Error::key(
            &path,
            REFERENCE_TENSOR,
            format!(
                "expected f64 [{pairs}, 2] (a score for each pair of the run), found {:?} {:?}",
                view.dtype(),
                view.shape()
            ),
        ));
    }
    let scores = view
        .data()
        .chunks_exact(16)
        .map(|pair| {
            let value = |b: &[u8]| f64::from_le_bytes(b.try_into().expect("8 bytes"));
            [value(&pair[..8]), value(&pair[8..])]
        })
        .collect();
    Ok(Some(scores))
}

/// Write the reference's scores into a checkpoint.
pub fn write_reference(dir: &Path, scores: &[[f64; 2]]) -> Result<()> {
    let bytes: Vec<u8> = scores
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let tensor = OutTensor::owned(Dtype::F64, vec![scores.len(), 2], bytes);
    let name = REFERENCE_TENSOR.to_string();
    write_safetensors_file([(&name, &tensor)], None, &dir.join(REFERENCE_FILE))
}

impl PairLimits {
    /// The limits of a run: `--max-prompt-len`, `--max-completion-len`, and `--max-seq-len`
    /// for each sequence.
    pub fn of(config: &PreferenceConfig, max_seq_len: usize) -> PairLimits {
        PairLimits {
            prompt: config.max_prompt_len,
            completion: config.max_completion_len,
            sequence: Some(max_seq_len),
        }
    }
}
