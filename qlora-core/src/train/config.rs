//! Everything a training run is configured by, declared once: clap parses it from flags, serde
//! reads it from `--config FILE.toml` and writes it as `training_config.toml`, and the trainer
//! takes it. Defaults are the QLoRA paper's; TOML keys are the flags' names with underscores
//! (the QLoRA script's names, such as `learning_rate`, are aliases).

use std::path::{Path, PathBuf};

use clap::{ArgAction, ArgMatches, Args};
use serde::{Deserialize, Serialize};

use super::axolotl::{AxolotlRun, is_yaml, read_axolotl};
use super::best::BestMetric;
use super::optimizer::OptimizerKind;
use super::schedule::Schedule;
use crate::data::{
    Batching, DataOptions, DatasetFormat, FieldMap, OasstOptions, SourceOptions, TokenizeOptions,
};
use crate::dtype::ComputeDtype;
use crate::error::Result;
use crate::eval::choice::ChoiceStyle;
use crate::lora::{AdapterDtype, LoraConfig, LoraInit};
use crate::model::Bits;
use crate::preference::PreferenceConfig;
use crate::settings;

/// Every setting of a training run: `qlora train`'s flags and the keys of its TOML file.
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Run")]
#[serde(default)]
pub struct TrainConfig {
    /// Required: Hugging Face model directory, a repo id in the Hugging Face cache
    /// (ORG/NAME[@REVISION]), or a GGUF file (imported into the cache on first use); `qlora
    /// plan` also takes a config.json or a preset (llama-7b, ...).
    #[arg(long, default_value = "", hide_default_value = true, value_parser = path)]
    pub model: PathBuf,
    /// Required: training data: a JSON Lines, JSON or parquet file, a folder of them (parquet
    /// shards), or a dataset repo id in the Hugging Face cache (ORG/NAME[@REVISION]).
    #[arg(long, default_value = "", hide_default_value = true, value_parser = path)]
    pub data: PathBuf,
    /// Which split and configuration of a folder or dataset repo --data reads.
    #[command(flatten)]
    #[serde(flatten)]
    pub source: SourceOptions,
    /// Columns renamed to the names the formats read.
    #[command(flatten)]
    #[serde(flatten)]
    pub fields: FieldMap,
    /// alpaca, input-output, oasst, guanaco, messages, prompt-completion or text [default:
    /// detected].
    #[arg(long)]
    pub format: Option<DatasetFormat>,
    /// Held-out data for evaluation (instead of --eval-fraction); the same forms as --data.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// The split --eval-data reads from a folder or a dataset repo [default: validation, else
    /// test].
    #[arg(long, help_heading = "Data")]
    pub eval_split: Option<String>,
    /// Fraction of the data held out for evaluation.
    #[arg(long, default_value_t = 0.0)]
    pub eval_fraction: f64,
    /// Required: output directory for checkpoints, metrics.jsonl and the final adapter.
    #[arg(long, default_value = "", hide_default_value = true, value_parser = path)]
    pub out: PathBuf,
    /// Save a checkpoint every N steps.
    #[arg(long, default_value_t = 250)]
    pub save_steps: u64,
    /// Keep only the newest N checkpoints [default: all].
    #[arg(long)]
    pub save_total_limit: Option<usize>,
    /// Evaluate on the held-out data every N steps (and always at the end).
    #[arg(long)]
    pub eval_steps: Option<u64>,
    /// Evaluate N times a pass over the data (instead of --eval-steps).
    #[arg(long)]
    pub evals_per_epoch: Option<u64>,
    /// Save a checkpoint N times a pass over the data (instead of --save-steps).
    #[arg(long)]
    pub saves_per_epoch: Option<u64>,
    /// Multiple-choice questions (question, choices, answer, optional subject) scored every
    /// --eval-steps and at the end as lm-evaluation-harness scores them (logged as mc_acc).
    #[arg(long, help_heading = "Evaluation")]
    pub eval_mc_data: Option<PathBuf>,
    /// Template of --eval-mc-data: letters (the harness's mmlu) or cloze (its arc_easy).
    #[arg(long, default_value_t = ChoiceStyle::Letters, help_heading = "Evaluation")]
    pub eval_mc_style: ChoiceStyle,
    /// Few-shot examples before each --eval-mc-data question: the first K of
    /// --eval-mc-fewshot-data.
    #[arg(long, default_value_t = 0, help_heading = "Evaluation")]
    pub eval_mc_fewshot: usize,
    /// Where --eval-mc-fewshot's examples come from.
    #[arg(long, help_heading = "Evaluation")]
    pub eval_mc_fewshot_data: Option<PathBuf>,
    /// Keep the adapter of the best evaluation as OUT/best/: mc_acc (highest) or eval_loss
    /// (lowest).
    #[arg(long, help_heading = "Evaluation")]
    pub save_best: Option<BestMetric>,
    /// Log a line every N steps when stderr is not a terminal.
    #[arg(long, default_value_t = 10)]
    pub logging_steps: u64,
    /// Seed for adapter init, data order, splits and dropout.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Start from this LoRA adapter (ours or one PEFT saved) instead of fresh ones; its r,
    /// alpha, target modules and rsLoRA setting replace --rank, --alpha, --target-modules and
    /// --use-rslora.
    #[arg(long, help_heading = "LoRA")]
    pub adapter: Option<PathBuf>,
    /// Dtype of the final adapter: f32 or bf16.
    #[arg(long, default_value_t = AdapterDtype::F32)]
    pub adapter_dtype: AdapterDtype,
    /// Precision of the frozen base: 4 (NF4 with double quantization, QLoRA) or 16 (dense, LoRA).
    #[arg(long, default_value_t = Bits::Four, help_heading = "Model")]
    pub bits: Bits,
    /// What activations and the base's matmuls compute in: f32, bf16 or f16 (LoRA weights,
    /// optimizer states, norms' statistics, softmax and loss stay f32) [default: bf16 on GPUs
    /// that have it, else f32].
    #[arg(long, help_heading = "Model")]
    pub compute_dtype: Option<ComputeDtype>,
    /// LoRA rank.
    #[arg(
        long,
        visible_alias = "lora-r",
        default_value_t = 64,
        help_heading = "LoRA"
    )]
    pub rank: usize,
    /// LoRA alpha (the adapter is scaled by alpha/rank).
    #[arg(
        long,
        visible_alias = "lora-alpha",
        default_value_t = 16.0,
        help_heading = "LoRA"
    )]
    pub alpha: f64,
    /// Dropout on the adapters' input.
    #[arg(
        long,
        visible_alias = "lora-dropout",
        default_value_t = 0.05,
        help_heading = "LoRA"
    )]
    pub dropout: f64,
    /// all-linear, or a comma-separated subset of q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj.
    #[arg(long, default_value = "all-linear", help_heading = "LoRA")]
    pub target_modules: String,
    /// Scale adapters by alpha/sqrt(rank) (rank-stabilized LoRA).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value_t = false, value_name = "BOOL", help_heading = "LoRA")]
    pub use_rslora: bool,
    /// How A starts: kaiming-uniform (PEFT's default) or gaussian.
    #[arg(long, default_value_t = LoraInit::KaimingUniform, help_heading = "LoRA")]
    pub lora_init: LoraInit,
    /// Peak learning rate.
    #[arg(
        long,
        visible_alias = "learning-rate",
        default_value_t = 2e-4,
        help_heading = "Optimization"
    )]
    pub lr: f64,
    /// Decoupled weight decay.
    #[arg(long, default_value_t = 0.0, help_heading = "Optimization")]
    pub weight_decay: f64,
    /// Sequences per micro-batch.
    #[arg(
        long,
        visible_alias = "per-device-train-batch-size",
        default_value_t = 1,
        help_heading = "Optimization"
    )]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(
        long,
        visible_alias = "gradient-accumulation-steps",
        default_value_t = 16,
        help_heading = "Optimization"
    )]
    pub grad_accum: usize,
    /// Optimizer steps (overrides --epochs).
    #[arg(long, help_heading = "Optimization")]
    pub max_steps: Option<u64>,
    /// Passes over the data [default: 1].
    #[arg(
        long,
        visible_alias = "num-train-epochs",
        help_heading = "Optimization"
    )]
    pub epochs: Option<u64>,
    /// Learning-rate schedule after warmup: constant, linear or cosine.
    #[arg(long, visible_alias = "lr-scheduler-type", default_value_t = Schedule::Constant, help_heading = "Optimization")]
    pub schedule: Schedule,
    /// Warmup as a fraction of the steps.
    #[arg(long, default_value_t = 0.03, help_heading = "Optimization")]
    pub warmup_ratio: f64,
    /// Warmup steps (overrides --warmup-ratio).
    #[arg(long, help_heading = "Optimization")]
    pub warmup_steps: Option<u64>,
    /// paged_adamw_32bit, paged_adamw_8bit, adamw_32bit or adamw_8bit.
    #[arg(long, default_value_t = OptimizerKind::PagedAdamW32, help_heading = "Optimization")]
    pub optim: OptimizerKind,
    /// Device memory (MiB) the paged optimizer may keep resident [default: unlimited].
    #[arg(long, help_heading = "Optimization")]
    pub optim_device_budget_mb: Option<f64>,
    /// Global gradient-norm clipping; 0 turns it off.
    #[arg(long, default_value_t = 0.3, help_heading = "Optimization")]
    pub max_grad_norm: f64,
    /// Keep every activation instead of recomputing layers in the backward pass (faster,
    /// much more memory).
    #[arg(long = "no-gradient-checkpointing", action = ArgAction::SetFalse, help_heading = "Optimization")]
    pub gradient_checkpointing: bool,
    /// Lengths, loss masks and templates.
    #[command(flatten)]
    #[serde(flatten)]
    pub tokenize: TokenizeOptions,
    /// OpenAssistant trees: which threads, languages and ranks.
    #[command(flatten)]
    #[serde(flatten)]
    pub oasst: OasstOptions,
    /// Preference tuning: the method (sft, dpo, orpo, simpo) and its settings.
    #[command(flatten)]
    #[serde(flatten)]
    pub preference: PreferenceConfig,
    /// Batch sequences of similar length together (less padding; without packing).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value_t = false, value_name = "BOOL")]
    pub group_by_length: bool,
    /// Pad every example to its batch's longest instead of packing whole examples into rows
    /// of up to --max-seq-len tokens (each example still sees only itself).
    #[arg(long = "no-packing", action = ArgAction::SetFalse, help_heading = "Data")]
    pub packing: bool,
    /// Tokens a packed row holds; a longer example is cut to this and gets a row of its own.
    #[arg(long, default_value_t = 2048, help_heading = "Data")]
    pub max_seq_len: usize,
}

/// A path flag that may be left empty (the file may give it; [`TrainConfig::validate`] checks).
fn path(text: &str) -> std::result::Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(text))
}

impl Default for TrainConfig {
    /// The QLoRA paper's settings, without model, data or output.
    fn default() -> Self {
        settings::defaults()
    }
}

impl TrainConfig {
    /// The settings of the TOML `file` (if any) with the flags given on the command line on
    /// top (`flags` as clap parsed them from `matches`).
    pub fn from_file_and_flags(
        file: Option<&Path>,
        flags: &TrainConfig,
        matches: &ArgMatches,
    ) -> Result<Self> {
        settings::from_file_and_flags(file, flags, matches)
    }

    /// [`from_file_and_flags`](Self::from_file_and_flags) for a TOML file or an axolotl YAML
    /// config (`.yml`, `.yaml`), with what an axolotl config says besides the settings.
    pub fn from_run_file_and_flags(
        file: Option<&Path>,
        flags: &TrainConfig,
        matches: &ArgMatches,
    ) -> Result<(Self, AxolotlRun)> {
        match file {
            Some(path) if is_yaml(path) => {
                let mut run = read_axolotl(path)?;
                let table = std::mem::take(&mut run.table);
                let config = settings::from_table_and_flags(table, Some(path), flags, matches)?;
                Ok((config, run))
            }
            _ => Ok((
                settings::from_file_and_flags(file, flags, matches)?,
                AxolotlRun::default(),
            )),
        }
    }

    /// Read a `training_config.toml` (or any `--config` file) on its own.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        settings::from_toml_file(path)
    }

    /// The configuration as TOML (what `--config` reads back).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("settings serialize")
    }

    /// The adapters this run trains.
    pub fn lora(&self) -> Result<LoraConfig> {
        let lora = LoraConfig {
            r: self.rank,
            alpha: self.alpha,
            dropout: self.dropout,
            target_modules: LoraConfig::parse_target_modules(&self.target_modules)?,
            use_rslora: self.use_rslora,
            init: self.lora_init,
        };
        lora.validate()?;
        Ok(lora)
    }

    /// How an epoch's examples become micro-batches.
    pub fn batching(&self) -> Batching {
        Batching {
            batch_size: self.batch_size,
            group_by_length: self.group_by_length,
            packing: self.packing.then_some(self.max_seq_len),
        }
    }

    /// How the training data is read.
    pub fn data_options(&self) -> DataOptions {
        DataOptions {
            splits: vec![self.source.data_split.clone()],
            config: self.source.data_config.clone(),
            fields: self.fields.clone(),
            format: self.format,
            tokenize: self.tokenize.clone(),
            oasst: self.oasst.clone(),
        }
    }

    /// How the held-out data (`--eval-data`) is read: as the training data, from its own split.
    pub fn eval_data_options(&self) -> DataOptions {
        let splits = match &self.eval_split {
            Some(split) => vec![split.clone()],
            None => vec!["validation".into(), "test".into()],
        };
        DataOptions {
            splits,
            ..self.data_options()
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{Command, FromArgMatches};

    use super::*;

    fn matches(flags: &[&str]) -> ArgMatches {
        TrainConfig::augment_args(Command::new("train"))
            .no_binary_name(true)
            .try_get_matches_from(flags)
            .unwrap()
    }

    fn merged(file: Option<&Path>, flags: &[&str]) -> Result<TrainConfig> {
        let matches = matches(flags);
        let parsed = TrainConfig::from_arg_matches(&matches).unwrap();
        TrainConfig::from_file_and_flags(file, &parsed, &matches)
    }

    #[test]
    fn files_flags_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("run.toml");
        std::fs::write(&file, "rnak = 8").unwrap();
        let err = merged(Some(&file), &[]).unwrap_err().to_string();
        assert!(err.contains("rnak"), "{err}");
        // Aliases in the file; flags win over the file.
        std::fs::write(&file, "lora_r = 8\nlearning_rate = 0.001\nseed = 1").unwrap();
        let c = merged(Some(&file), &["--seed", "5"]).unwrap();
        assert_eq!((c.rank, c.lr, c.seed, c.alpha), (8, 0.001, 5, 16.0));
        // A flag left at its default does not override the file.
        let c = merged(Some(&file), &["--alpha", "32"]).unwrap();
        assert_eq!((c.rank, c.alpha), (8, 32.0));

        let base = TrainConfig {
            model: ".".into(),
            data: "Cargo.toml".into(),
            out: "out".into(),
            ..TrainConfig::default()
        };
        for (config, needle) in [
            (
                TrainConfig {
                    lr: -1.0,
                    ..base.clone()
                },
                "--lr",
            ),
            (
                TrainConfig {
                    rank: 0,
                    ..base.clone()
                },
                "--rank",
            ),
            (
                TrainConfig {
                    data: "missing.jsonl".into(),
                    ..base.clone()
                },
                "missing.jsonl",
            ),
            (
                TrainConfig {
                    out: "".into(),
                    ..base.clone()
                },
                "--out is required",
            ),
        ] {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        base.validate().unwrap();
        assert_eq!(
            (
                base.rank,
                base.alpha,
                base.lr,
                base.grad_accum,
                base.gradient_checkpointing
            ),
            (64, 16.0, 2e-4, 16, true)
        );
        assert_eq!(merged(None, &[]).unwrap(), TrainConfig::default());
        std::fs::write(&file, base.to_toml()).unwrap();
        assert_eq!(TrainConfig::from_toml_file(&file).unwrap(), base);
        let flags = TrainConfig::from_arg_matches(&matches(&[
            "--no-gradient-checkpointing",
            "--lang",
            "en,de",
        ]))
        .unwrap();
        assert!(!flags.gradient_checkpointing);
        assert_eq!(flags.oasst.languages, ["en", "de"]);
    }
}
