//! `--save-best`: the adapter of the best evaluation so far, kept as `OUT/best/` with
//! `best.json` saying which step and value (a resumed run reads it, so "best" spans the run).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

crate::named_enum! {
    /// Which evaluation picks the best adapter.
    pub enum BestMetric: "metric" {
        /// Multiple-choice accuracy on --eval-mc-data (highest wins).
        McAcc = "mc_acc",
        /// Loss on the held-out data (lowest wins).
        EvalLoss = "eval_loss",
    }
}

/// Where the best adapter is kept in the run's directory.
pub const BEST_DIR: &str = "best";
/// The best evaluation's record, next to its adapter.
pub const BEST_FILE: &str = "best.json";

/// What `best.json` records.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Best {
    /// What was compared.
    pub metric: BestMetric,
    /// Its best value.
    pub value: f64,
    /// The step it was reached at.
    pub step: u64,
}

impl BestMetric {
    /// Whether `value` beats `best` (ties keep the earlier one).
    pub fn improves(self, value: f64, best: Option<f64>) -> bool {
        match best {
            None => value.is_finite(),
            Some(best) => match self {
                BestMetric::McAcc => value > best,
                BestMetric::EvalLoss => value < best,
            },
        }
    }
}

/// The best directory of a run's output.
pub fn best_dir(out: &Path) -> PathBuf {
    out.join(BEST_DIR)
}

/// The best so far recorded in `out` for `metric`, if any.
pub fn read_best(out: &Path, metric: BestMetric) -> Result<Option<Best>> {
    let path = best_dir(out).join(BEST_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let best: Best =
        serde_json::from_str(&text).map_err(|e| Error::file(&path, format!("invalid: {e}")))?;
    Ok((best.metric == metric).then_some(best))
}
