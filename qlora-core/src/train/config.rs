//! Everything a training run is configured by, with the QLoRA paper's defaults. The same keys
//! come from `--config FILE.toml` and from flags (flags win); the effective configuration is
//! written next to the adapter.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::optimizer::OptimizerKind;
use super::schedule::Schedule;
use crate::error::{Error, Result};

/// Every setting, as optional values: what a TOML file or the command line supplies.
/// Names are the flags' with dashes as underscores; the QLoRA script's names are aliases.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    pub model: Option<PathBuf>,
    pub data: Option<PathBuf>,
    pub format: Option<String>,
    pub out: Option<PathBuf>,
    pub eval_data: Option<PathBuf>,
    pub eval_fraction: Option<f64>,
    pub bits: Option<u32>,
    #[serde(alias = "lora_r")]
    pub rank: Option<usize>,
    #[serde(alias = "lora_alpha")]
    pub alpha: Option<f64>,
    #[serde(alias = "lora_dropout")]
    pub dropout: Option<f64>,
    pub target_modules: Option<String>,
    pub use_rslora: Option<bool>,
    pub lora_init: Option<String>,
    #[serde(alias = "learning_rate")]
    pub lr: Option<f64>,
    pub weight_decay: Option<f64>,
    #[serde(alias = "per_device_train_batch_size")]
    pub batch_size: Option<usize>,
    #[serde(alias = "gradient_accumulation_steps")]
    pub grad_accum: Option<usize>,
    pub max_steps: Option<u64>,
    #[serde(alias = "num_train_epochs")]
    pub epochs: Option<u64>,
    #[serde(alias = "lr_scheduler_type")]
    pub schedule: Option<String>,
    pub warmup_ratio: Option<f64>,
    pub warmup_steps: Option<u64>,
    pub optim: Option<String>,
    pub optim_device_budget_mb: Option<f64>,
    pub max_grad_norm: Option<f64>,
    pub save_steps: Option<u64>,
    pub save_total_limit: Option<usize>,
    pub eval_steps: Option<u64>,
    pub logging_steps: Option<u64>,
    pub seed: Option<u64>,
    pub gradient_checkpointing: Option<bool>,
    pub source_max_len: Option<usize>,
    pub target_max_len: Option<usize>,
    pub train_on_source: Option<bool>,
    pub template: Option<String>,
    pub oasst_top_ranked: Option<bool>,
    pub lang: Option<Vec<String>>,
    pub group_by_length: Option<bool>,
    pub adapter_dtype: Option<String>,
}

impl TrainSettings {
    /// Read a TOML file; unknown keys are an error naming the key.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::file(path, e.to_string().replace('\n', " ")))
    }

    /// Take every value set in `over`, keep ours elsewhere.
    pub fn overridden_by(self, over: TrainSettings) -> TrainSettings {
        macro_rules! merge {
            ($($field:ident),* $(,)?) => {
                TrainSettings { $($field: over.$field.or(self.$field)),* }
            };
        }
        merge!(
            model,
            data,
            format,
            out,
            eval_data,
            eval_fraction,
            bits,
            rank,
            alpha,
            dropout,
            target_modules,
            use_rslora,
            lora_init,
            lr,
            weight_decay,
            batch_size,
            grad_accum,
            max_steps,
            epochs,
            schedule,
            warmup_ratio,
            warmup_steps,
            optim,
            optim_device_budget_mb,
            max_grad_norm,
            save_steps,
            save_total_limit,
            eval_steps,
            logging_steps,
            seed,
            gradient_checkpointing,
            source_max_len,
            target_max_len,
            train_on_source,
            template,
            oasst_top_ranked,
            lang,
            group_by_length,
            adapter_dtype,
        )
    }

    /// Fill the defaults (the QLoRA paper's) and check every value.
    pub fn resolve(self) -> Result<TrainConfig> {
        let required = |v: Option<PathBuf>, flag: &str| {
            v.ok_or_else(|| Error::invalid(format!("--{flag} is required")))
        };
        let config = TrainConfig {
            model: required(self.model, "model")?,
            data: required(self.data, "data")?,
            out: required(self.out, "out")?,
            format: self.format,
            eval_data: self.eval_data,
            eval_fraction: self.eval_fraction.unwrap_or(0.0),
            bits: self.bits.unwrap_or(4),
            rank: self.rank.unwrap_or(64),
            alpha: self.alpha.unwrap_or(16.0),
            dropout: self.dropout.unwrap_or(0.05),
            target_modules: self.target_modules.unwrap_or_else(|| "all-linear".into()),
            use_rslora: self.use_rslora.unwrap_or(false),
            lora_init: self.lora_init.unwrap_or_else(|| "kaiming-uniform".into()),
            lr: self.lr.unwrap_or(2e-4),
            weight_decay: self.weight_decay.unwrap_or(0.0),
            batch_size: self.batch_size.unwrap_or(1),
            grad_accum: self.grad_accum.unwrap_or(16),
            max_steps: self.max_steps,
            epochs: self.epochs,
            schedule: self.schedule.unwrap_or_else(|| "constant".into()).parse()?,
            warmup_ratio: self.warmup_ratio.unwrap_or(0.03),
            warmup_steps: self.warmup_steps,
            optim: self
                .optim
                .unwrap_or_else(|| "paged_adamw_32bit".into())
                .parse()?,
            optim_device_budget_mb: self.optim_device_budget_mb,
            max_grad_norm: self.max_grad_norm.unwrap_or(0.3),
            save_steps: self.save_steps.unwrap_or(250),
            save_total_limit: self.save_total_limit,
            eval_steps: self.eval_steps,
            logging_steps: self.logging_steps.unwrap_or(10),
            seed: self.seed.unwrap_or(42),
            gradient_checkpointing: self.gradient_checkpointing.unwrap_or(true),
            source_max_len: self.source_max_len.unwrap_or(1024),
            target_max_len: self.target_max_len.unwrap_or(256),
            train_on_source: self.train_on_source.unwrap_or(false),
            template: self.template.unwrap_or_else(|| "guanaco".into()),
            oasst_top_ranked: self.oasst_top_ranked.unwrap_or(false),
            lang: self.lang.unwrap_or_default(),
            group_by_length: self.group_by_length.unwrap_or(false),
            adapter_dtype: self.adapter_dtype.unwrap_or_else(|| "f32".into()),
        };
        config.validate()?;
        Ok(config)
    }
}

/// A complete, checked training configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub model: PathBuf,
    pub data: PathBuf,
    pub out: PathBuf,
    pub format: Option<String>,
    pub eval_data: Option<PathBuf>,
    pub eval_fraction: f64,
    pub bits: u32,
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub target_modules: String,
    pub use_rslora: bool,
    pub lora_init: String,
    pub lr: f64,
    pub weight_decay: f64,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub max_steps: Option<u64>,
    pub epochs: Option<u64>,
    pub schedule: Schedule,
    pub warmup_ratio: f64,
    pub warmup_steps: Option<u64>,
    pub optim: OptimizerKind,
    pub optim_device_budget_mb: Option<f64>,
    pub max_grad_norm: f64,
    pub save_steps: u64,
    pub save_total_limit: Option<usize>,
    pub eval_steps: Option<u64>,
    pub logging_steps: u64,
    pub seed: u64,
    pub gradient_checkpointing: bool,
    pub source_max_len: usize,
    pub target_max_len: usize,
    pub train_on_source: bool,
    pub template: String,
    pub oasst_top_ranked: bool,
    pub lang: Vec<String>,
    pub group_by_length: bool,
    pub adapter_dtype: String,
}

impl TrainConfig {
    fn validate(&self) -> Result<()> {
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
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return fail("warmup-ratio", "must be in [0, 1)");
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return fail("max-grad-norm", "must be >= 0 (0 turns clipping off)");
        }
        if !(0.0..1.0).contains(&self.eval_fraction) {
            return fail("eval-fraction", "must be in [0, 1)");
        }
        if self.bits != 4 && self.bits != 16 {
            return fail("bits", "must be 4 or 16");
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
        if self.source_max_len == 0 || self.target_max_len == 0 {
            return fail("source-max-len/--target-max-len", "must be at least 1");
        }
        if !self.data.is_file() {
            return Err(Error::file(&self.data, "training data not found"));
        }
        if let Some(eval) = &self.eval_data
            && !eval.is_file()
        {
            return Err(Error::file(eval, "evaluation data not found"));
        }
        if !self.model.exists() {
            return Err(Error::file(&self.model, "model not found"));
        }
        Ok(())
    }

    /// The configuration as TOML (what `--config` reads back).
    pub fn to_toml(&self) -> String {
        let settings = TrainSettings {
            model: Some(self.model.clone()),
            data: Some(self.data.clone()),
            format: self.format.clone(),
            out: Some(self.out.clone()),
            eval_data: self.eval_data.clone(),
            eval_fraction: Some(self.eval_fraction),
            bits: Some(self.bits),
            rank: Some(self.rank),
            alpha: Some(self.alpha),
            dropout: Some(self.dropout),
            target_modules: Some(self.target_modules.clone()),
            use_rslora: Some(self.use_rslora),
            lora_init: Some(self.lora_init.clone()),
            lr: Some(self.lr),
            weight_decay: Some(self.weight_decay),
            batch_size: Some(self.batch_size),
            grad_accum: Some(self.grad_accum),
            max_steps: self.max_steps,
            epochs: self.epochs,
            schedule: Some(self.schedule.name().into()),
            warmup_ratio: Some(self.warmup_ratio),
            warmup_steps: self.warmup_steps,
            optim: Some(self.optim.name().into()),
            optim_device_budget_mb: self.optim_device_budget_mb,
            max_grad_norm: Some(self.max_grad_norm),
            save_steps: Some(self.save_steps),
            save_total_limit: self.save_total_limit,
            eval_steps: self.eval_steps,
            logging_steps: Some(self.logging_steps),
            seed: Some(self.seed),
            gradient_checkpointing: Some(self.gradient_checkpointing),
            source_max_len: Some(self.source_max_len),
            target_max_len: Some(self.target_max_len),
            train_on_source: Some(self.train_on_source),
            template: Some(self.template.clone()),
            oasst_top_ranked: Some(self.oasst_top_ranked),
            lang: Some(self.lang.clone()),
            group_by_length: Some(self.group_by_length),
            adapter_dtype: Some(self.adapter_dtype.clone()),
        };
        toml::to_string(&settings).expect("settings serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_values_fail() {
        let err = toml::from_str::<TrainSettings>("rnak = 8")
            .unwrap_err()
            .to_string();
        assert!(err.contains("rnak"), "{err}");
        let s: TrainSettings = toml::from_str("lora_r = 8\nlearning_rate = 0.001").unwrap();
        assert_eq!((s.rank, s.lr), (Some(8), Some(0.001)));
        let base = TrainSettings {
            model: Some(".".into()),
            data: Some("Cargo.toml".into()),
            out: Some("out".into()),
            ..TrainSettings::default()
        };
        for (over, needle) in [
            (
                TrainSettings {
                    lr: Some(-1.0),
                    ..TrainSettings::default()
                },
                "--lr",
            ),
            (
                TrainSettings {
                    rank: Some(0),
                    ..TrainSettings::default()
                },
                "--rank",
            ),
            (
                TrainSettings {
                    data: Some("missing.jsonl".into()),
                    ..TrainSettings::default()
                },
                "missing.jsonl",
            ),
        ] {
            let err = base
                .clone()
                .overridden_by(over)
                .resolve()
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
        let config = base.resolve().unwrap();
        assert_eq!(
            (config.rank, config.alpha, config.lr, config.grad_accum),
            (64, 16.0, 2e-4, 16)
        );
        let round: TrainSettings = toml::from_str(&config.to_toml()).unwrap();
        assert_eq!(round.resolve().unwrap(), config);
    }
}
