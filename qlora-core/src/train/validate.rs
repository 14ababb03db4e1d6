//! Checking a training configuration before any work: every value in range and every file
//! there, with the flag of a bad one named.

use std::path::Path;

use super::best::BestMetric;
use super::config::TrainConfig;
use crate::error::{Error, Result};
use crate::lora::LoraConfig;

impl TrainConfig {
    /// Check every value (and that the files exist), naming the flag of a bad one.
    pub fn validate(&self) -> Result<()> {
        for (path, flag) in [
            (&self.model, "model"),
            (&self.data, "data"),
            (&self.out, "out"),
        ] {
            if path.as_os_str().is_empty() {
                return Err(Error::invalid(format!("--{flag} is required")));
            }
        }
        let fail = |flag: &str, why: &str| Err(Error::invalid(format!("--{flag} {why}")));
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return fail("lr", &format!("must be positive, got {}", self.lr));
        }
        if self.rank == 0 {
            return fail("rank", "must be at least 1");
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return fail("alpha", "must be positive");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return fail("dropout", "must be in [0, 1)");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return fail("weight-decay", "must be >= 0");
        }
        if self.batch_size == 0 {
            return fail("batch-size", "must be at least 1");
        }
        if self.grad_accum == 0 {
            return fail("grad-accum", "must be at least 1");
        }
        if self.max_steps == Some(0) {
            return fail("max-steps", "must be at least 1");
        }
        if self.epochs == Some(0) {
            return fail("epochs", "must be at least 1");
        }
        for (per_epoch, steps, flag) in [
            (
                self.evals_per_epoch,
                self.eval_steps.is_some(),
                "evals-per-epoch",
            ),
            (self.saves_per_epoch, false, "saves-per-epoch"),
        ] {
            if per_epoch == Some(0) {
                return fail(flag, "must be at least 1");
            }
            if per_epoch.is_some() && steps {
                return fail(flag, "and --eval-steps: give one of them");
            }
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return fail("warmup-ratio", "must be in [0, 1)");
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return fail("max-grad-norm", "must be >= 0 (0 turns clipping off)");
        }
        if !(0.0..1.0).contains(&self.eval_fraction) {
            return fail("eval-fraction", "must be in [0, 1)");
        }
        if self.save_steps == 0 || self.logging_steps == 0 || self.eval_steps == Some(0) {
            return fail(
                "save-steps/--eval-steps/--logging-steps",
                "must be at least 1",
            );
        }
        if let Some(budget) = self.optim_device_budget_mb
            && !(budget.is_finite() && budget >= 0.0)
        {
            return fail("optim-device-budget-mb", "must be >= 0");
        }
        self.tokenize.validate()?;
        self.preference.validate()?;
        if self.max_seq_len < 2 {
            return fail("max-seq-len", "must be at least 2");
        }
        LoraConfig::parse_target_modules(&self.target_modules)?;
        // Files, folders and repo ids are found (and a folder's or repo's split) before any
        // work.
        let found = |path: &Path, options: &crate::data::DataOptions, what: &str| {
            if !path.exists() && path.to_str().and_then(crate::hub::parse_repo_id).is_none() {
                return Err(Error::file(path, format!("{what} not found")));
            }
            crate::data::dataset_files(path, &options.split_names(), options.config.as_deref())
                .map(|_| ())
        };
        found(&self.data, &self.data_options(), "training data")?;
        if let Some(eval) = &self.eval_data {
            found(eval, &self.eval_data_options(), "evaluation data")?;
        }
        for path in [&self.eval_mc_data, &self.eval_mc_fewshot_data]
            .into_iter()
            .flatten()
        {
            if !path.is_file() {
                return Err(Error::file(path, "multiple-choice data not found"));
            }
        }
        if self.eval_mc_fewshot > 0 && self.eval_mc_fewshot_data.is_none() {
            return fail("eval-mc-fewshot", "needs --eval-mc-fewshot-data FILE");
        }
        match self.save_best {
            Some(BestMetric::McAcc) if self.eval_mc_data.is_none() => {
                return fail("save-best mc_acc", "needs --eval-mc-data FILE");
            }
            Some(BestMetric::EvalLoss) if self.eval_data.is_none() && self.eval_fraction <= 0.0 => {
                return fail(
                    "save-best eval_loss",
                    "needs held-out data (--eval-data or --eval-fraction)",
                );
            }
            _ => {}
        }
        // A repo id is looked up in the Hugging Face cache when the model is resolved.
        let repo_id = self.model.to_str().and_then(crate::hub::parse_repo_id);
        if !self.model.exists() && repo_id.is_none() {
            return Err(Error::file(&self.model, "model not found"));
        }
        Ok(())
    }
}
