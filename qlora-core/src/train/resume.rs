//! Resuming a run: where it resumes from, and which settings may change between the
//! checkpoint and the resumed run.

use std::path::{Path, PathBuf};

use super::checkpoint::{list_checkpoints, verify_checkpoint};
use super::config::TrainConfig;
use crate::error::{Error, Result};
use crate::lora::ADAPTER_CONFIG_FILE;

/// The newest checkpoint in `out` that verifies against its manifest, and the newer ones
/// skipped, each with why.
pub fn newest_complete_checkpoint(out: &Path) -> (Option<PathBuf>, Vec<(PathBuf, String)>) {
    let mut skipped = Vec::new();
    for (_, dir) in list_checkpoints(out).into_iter().rev() {
        match verify_checkpoint(&dir) {
            Ok(()) => return (Some(dir), skipped),
            Err(why) => skipped.push((dir, why)),
        }
    }
    (None, skipped)
}

/// The checkpoint a run writing to `out` starts from: `--resume` (`"latest"`, the newest
/// complete checkpoint in `out`, or the checkpoint directory given), or none. A newer
/// checkpoint that is torn or corrupted is skipped with a warning saying why; one named by
/// `--resume DIR` is refused. Without `--resume`, a directory holding a previous run is
/// refused, so nothing it holds is overwritten.
pub fn resume_point(out: &Path, resume: Option<&str>) -> Result<Option<PathBuf>> {
    let latest = list_checkpoints(out).pop().map(|(_, p)| p);
    match resume {
        Some("latest") => {
            let (found, skipped) = newest_complete_checkpoint(out);
            for (dir, why) in &skipped {
                crate::stderr::line(format!(
                    "warning: skipping {}: {why}; resuming from an earlier checkpoint",
                    dir.display()
                ));
            }
            match found {
                Some(dir) => Ok(Some(dir)),
                None if skipped.is_empty() => Err(Error::file(out, "no checkpoint to resume from")),
                None => Err(Error::file(
                    out,
                    format!(
                        "no complete checkpoint to resume from ({} skipped: {})",
                        skipped.len(),
                        skipped[0].1
                    ),
                )),
            }
        }
        Some(path) => {
            let dir = PathBuf::from(path);
            if let Err(why) = verify_checkpoint(&dir) {
                return Err(Error::file(
                    &dir,
                    format!("cannot resume from this checkpoint: {why}"),
                ));
            }
            Ok(Some(dir))
        }
        None if out.join(ADAPTER_CONFIG_FILE).exists() || latest.is_some() => Err(Error::file(
            out,
            "holds a previous run; pass --resume to continue it or choose another --out",
        )),
        None => Ok(None),
    }
}

/// Settings a resumed run may change: they extend or reschedule the run (length, and with it a
/// schedule's horizon), or change only what is written, reported or where states live (paging
/// copies bits; checkpointing recomputes the same values). Any other change alters what the run
/// computes, and resuming refuses it.
const RESUMABLE_CHANGES: &[&str] = &[
    "out",
    "max_steps",
    "epochs",
    "save_steps",
    "saves_per_epoch",
    "save_total_limit",
    "eval_steps",
    "evals_per_epoch",
    "logging_steps",
    "adapter_dtype",
    "optim_device_budget_mb",
    "gradient_checkpointing",
    "eval_mc_data",
    "eval_mc_style",
    "eval_mc_fewshot",
    "eval_mc_fewshot_data",
    "save_best",
];

impl TrainConfig {
    /// This run's settings against `saved`, those of the checkpoint it resumes: an error names
    /// the first setting whose change would alter what the run computes; otherwise the
    /// harmless changes, as `--flag old -> new` for the log.
    pub fn resume_changes(&self, saved: &TrainConfig, checkpoint: &Path) -> Result<Vec<String>> {
        let table = |c: &TrainConfig| match toml::Value::try_from(c) {
            Ok(toml::Value::Table(t)) => t,
            _ => unreachable!("settings serialize to a table"),
        };
        let (now, then) = (table(self), table(saved));
        let mut keys: Vec<&String> = now.keys().chain(then.keys()).collect();
        keys.sort();
        keys.dedup();
        let show = |v: Option<&toml::Value>| v.map_or("unset".to_string(), |v| v.to_string());
        let mut allowed = Vec::new();
        for key in keys {
            let (a, b) = (then.get(key), now.get(key));
            if a == b {
                continue;
            }
            let change = format!("--{} {} -> {}", key.replace('_', "-"), show(a), show(b));
            if RESUMABLE_CHANGES.contains(&key.as_str()) {
                allowed.push(change);
            } else {
                return Err(Error::invalid(format!(
                    "{}: cannot resume with {change}: the checkpoint was trained with {}, and a \
                     change would alter what the run computes; resume with the same value or \
                     start a new run",
                    checkpoint.display(),
                    show(a)
                )));
            }
        }
        Ok(allowed)
    }
}
