//! The training loop: micro-batches accumulated into optimizer steps, gradient clipping, the
//! learning-rate schedule, evaluation, checkpoints, resuming, and the final adapter.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::tensor::Tensor;
use serde::Serialize;

use super::checkpoint::{RunPosition, list_checkpoints, load_checkpoint, save_checkpoint};
use super::config::TrainConfig;
use super::optimizer::{AdamWConfig, PagedAdamW};
use super::schedule::warmup_from_ratio;
use crate::data::{
    ConversationTemplate, DataOptions, DatasetFormat, Example, LoadedData, OasstOptions,
    TokenizeOptions, collate, epoch_batches, load_examples, split_eval,
};
use crate::device::DeviceChoice;
use crate::error::{Error, Result};
use crate::eval::evaluate;
use crate::lora::{
    AdapterDtype, DropoutStream, LoraConfig, TrainBatch, load_adapter, loss_and_grads, save_adapter,
};
use crate::model::{Bits, Llama, LoadOptions};
use crate::quant::Nf4Config;
use crate::text::Tokenizer;

pub const METRICS_FILE: &str = "metrics.jsonl";

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepMetrics {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: u64,
    pub tokens_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
}

/// Where progress is shown: a bar on a terminal, log lines elsewhere.
pub trait Progress {
    fn start(&mut self, total_steps: u64, done: u64);
    fn step(&mut self, metrics: &StepMetrics);
    fn message(&mut self, text: &str);
    fn finish(&mut self);
}

/// Plain lines on stderr every `every` steps.
pub struct LogProgress {
    pub every: u64,
    total: u64,
}

impl LogProgress {
    pub fn new(every: u64) -> Self {
        LogProgress { every, total: 0 }
    }
}

impl Progress for LogProgress {
    fn start(&mut self, total_steps: u64, done: u64) {
        self.total = total_steps;
        eprintln!("training: {total_steps} steps ({done} done)");
    }

    fn step(&mut self, m: &StepMetrics) {
        if m.step.is_multiple_of(self.every) || m.step == self.total || m.eval_loss.is_some() {
            let eval = m
                .eval_loss
                .map(|e| format!(" eval_loss {e:.4}"))
                .unwrap_or_default();
            eprintln!(
                "step {}/{} loss {:.4} lr {:.3e} grad_norm {:.3} tokens/s {:.1}{eval}",
                m.step, self.total, m.loss, m.lr, m.grad_norm, m.tokens_per_s
            );
        }
    }

    fn message(&mut self, text: &str) {
        eprintln!("{text}");
    }

    fn finish(&mut self) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Finished,
    /// Stopped on request after saving a checkpoint.
    Interrupted,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    pub outcome: Outcome,
    pub steps: u64,
    pub final_loss: Option<f64>,
    pub eval_loss_before: Option<f64>,
    pub eval_loss_after: Option<f64>,
    pub out: PathBuf,
}

/// A run, ready to go.
pub struct Trainer {
    pub config: TrainConfig,
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub train: Vec<Example>,
    pub eval: Vec<Example>,
    lora: LoraConfig,
    optimizer: PagedAdamW,
    position: RunPosition,
    total_steps: u64,
    warmup: u64,
    batches_per_epoch: usize,
    lengths: Vec<usize>,
}

fn data_options(config: &TrainConfig, format: Option<DatasetFormat>) -> Result<DataOptions> {
    Ok(DataOptions {
        format,
        tokenize: TokenizeOptions {
            source_max_len: config.source_max_len,
            target_max_len: config.target_max_len,
            train_on_source: config.train_on_source,
            template: config.template.parse::<ConversationTemplate>()?,
        },
        oasst: OasstOptions {
            top_ranked: config.oasst_top_ranked,
            languages: config.lang.clone(),
        },
    })
}

impl Trainer {
    /// Load the model and data, attach fresh adapters (or those of the checkpoint in
    /// `resume`), and set up the optimizer.
    pub fn new(
        config: TrainConfig,
        device: DeviceChoice,
        resume: Option<&Path>,
        progress: &mut dyn Progress,
    ) -> Result<Self> {
        let format = config
            .format
            .as_deref()
            .map(str::parse::<DatasetFormat>)
            .transpose()?;
        let lora = LoraConfig {
            r: config.rank,
            alpha: config.alpha,
            dropout: config.dropout,
            target_modules: LoraConfig::parse_target_modules(&config.target_modules)?,
            use_rslora: config.use_rslora,
            init: config.lora_init.parse()?,
        };
        lora.validate()?;
        let options = data_options(&config, format)?;
        let tokenizer = Tokenizer::load(&config.model)?;
        let loaded: LoadedData = load_examples(&config.data, &tokenizer, &options)?;
        progress.message(&format!("{}: {loaded}", config.data.display()));
        let (train, eval) = match &config.eval_data {
            Some(path) => {
                let eval = load_examples(path, &tokenizer, &options)?;
                progress.message(&format!("{}: {eval}", path.display()));
                (loaded.examples, eval.examples)
            }
            None => split_eval(loaded.examples, config.eval_fraction, config.seed),
        };
        if train.is_empty() {
            return Err(Error::invalid(
                "no training examples left after the evaluation split",
            ));
        }

        let load_options = LoadOptions {
            bits: if config.bits == 16 {
                Bits::Sixteen
            } else {
                Bits::Four
            },
            nf4: Nf4Config::default(),
            nf4_matmul: Default::default(),
            device: device.device()?,
        };
        let mut model = Llama::load(&config.model, &load_options)?;
        model.attach_lora(&lora, config.seed)?;

        let sizes: Vec<usize> = model
            .adapters()
            .iter()
            .flat_map(|(_, a)| [a.a.dims().iter().product(), a.b.dims().iter().product()])
            .collect();
        let budget = config
            .optim_device_budget_mb
            .map(|mb| (mb * 1024.0 * 1024.0) as usize);
        let optimizer = PagedAdamW::new(
            config.optim,
            AdamWConfig {
                weight_decay: config.weight_decay,
                ..AdamWConfig::default()
            },
            &sizes,
            budget,
            &model.device,
        );

        let lengths: Vec<usize> = train.iter().map(|e| e.ids.len()).collect();
        let batches_per_epoch = train.len().div_ceil(config.batch_size);
        let steps_per_epoch = batches_per_epoch.div_ceil(config.grad_accum) as u64;
        let total_steps = match (config.max_steps, config.epochs) {
            (Some(steps), _) => steps,
            (None, Some(epochs)) => epochs * steps_per_epoch,
            (None, None) => steps_per_epoch,
        };
        let warmup = config
            .warmup_steps
            .unwrap_or_else(|| warmup_from_ratio(config.warmup_ratio, total_steps));
        let mut trainer = Trainer {
            config,
            model,
            tokenizer,
            train,
            eval,
            lora,
            optimizer,
            position: RunPosition::default(),
            total_steps,
            warmup,
            batches_per_epoch,
            lengths,
        };
        if let Some(dir) = resume {
            trainer.restore(dir)?;
            progress.message(&format!(
                "resumed from {} at step {}",
                dir.display(),
                trainer.position.step
            ));
        }
        Ok(trainer)
    }

    /// The latest checkpoint in `out`, if any.
    pub fn latest_checkpoint(out: &Path) -> Option<PathBuf> {
        list_checkpoints(out).pop().map(|(_, p)| p)
    }

    fn restore(&mut self, dir: &Path) -> Result<()> {
        let loaded = load_adapter(&mut self.model, dir)?;
        if loaded.r != self.lora.r || loaded.target_modules != self.lora.target_modules {
            return Err(Error::invalid(format!(
                "{}: the checkpoint's adapter (r {}, {:?}) does not match this run (r {}, {:?})",
                dir.display(),
                loaded.r,
                loaded.target_modules,
                self.lora.r,
                self.lora.target_modules
            )));
        }
        // Loaded adapters carry the checkpoint's dropout; use this run's.
        for (_, linear) in self.model.linears_mut() {
            if let Some(lora) = &mut linear.lora {
                lora.dropout = self.lora.dropout;
            }
        }
        let (position, step, moments) = load_checkpoint(dir)?;
        self.optimizer.restore(step, moments)?;
        self.position = position;
        Ok(())
    }

    pub fn total_steps(&self) -> u64 {
        self.total_steps
    }

    pub fn position(&self) -> RunPosition {
        self.position
    }

    /// The next micro-batch in data order, advancing the position.
    fn next_batch(&mut self) -> TrainBatch {
        let batches = epoch_batches(
            &self.lengths,
            self.config.batch_size,
            self.config.group_by_length,
            self.config.seed,
            self.position.epoch,
        );
        let indices = &batches[self.position.batch_in_epoch];
        let examples: Vec<&Example> = indices.iter().map(|&i| &self.train[i]).collect();
        let pad = self.tokenizer.pad_id().unwrap_or(0);
        let batch = collate(&examples, pad);
        self.position.batch_in_epoch += 1;
        if self.position.batch_in_epoch >= self.batches_per_epoch {
            self.position.batch_in_epoch = 0;
            self.position.epoch += 1;
        }
        batch
    }

    /// Mean loss over the held-out examples.
    pub fn eval_loss(&self) -> Result<Option<f64>> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        Ok(Some(evaluate(&self.model, &self.eval, |_| {})?.loss))
    }

    /// One optimizer step: `grad_accum` micro-batches, clipping, the update.
    pub fn step(&mut self) -> Result<StepMetrics> {
        let start = Instant::now();
        let mut sum: Option<Vec<(Tensor<2>, Tensor<2>)>> = None;
        let (mut loss_sum, mut targets, mut tokens) = (0f64, 0usize, 0u64);
        for _ in 0..self.config.grad_accum {
            let batch = self.next_batch();
            tokens += batch.is_token.iter().flatten().filter(|t| **t).count() as u64;
            let stream = DropoutStream {
                seed: self.config.seed,
                step: self.position.micro_step,
            };
            self.position.micro_step += 1;
            let result = loss_and_grads(
                &self.model,
                &batch,
                self.config.gradient_checkpointing,
                Some(&stream),
            )?;
            loss_sum += result.loss_sum;
            targets += result.tokens;
            sum = Some(match sum {
                None => result.grads.grads,
                Some(acc) => acc
                    .into_iter()
                    .zip(result.grads.grads)
                    .map(|((a, b), (ga, gb))| (a + ga, b + gb))
                    .collect(),
            });
        }
        let step = self.position.step;
        let lr = self.config.lr
            * self
                .config
                .schedule
                .factor(step, self.total_steps, self.warmup);
        let loss = if targets > 0 {
            loss_sum / targets as f64
        } else {
            0.0
        };
        if !loss.is_finite() {
            return Err(Error::invalid(format!(
                "the loss became {loss} at step {}; stopping (the last checkpoint is kept)",
                step + 1
            )));
        }
        let mut grad_norm = 0.0;
        if targets > 0 {
            // Gradient of the mean token loss over the whole accumulated batch.
            let scale = 1.0 / targets as f64;
            let grads: Vec<(Tensor<2>, Tensor<2>)> = sum
                .expect("at least one micro-batch")
                .into_iter()
                .map(|(a, b)| (a * scale, b * scale))
                .collect();
            let squares: f64 = grads
                .iter()
                .map(|(a, b)| {
                    f64::from(a.clone().powi_scalar(2).sum().into_scalar::<f32>())
                        + f64::from(b.clone().powi_scalar(2).sum().into_scalar::<f32>())
                })
                .sum();
            grad_norm = squares.sqrt();
            if !grad_norm.is_finite() {
                return Err(Error::invalid(format!(
                    "the gradient norm became {grad_norm} at step {}; stopping (the last checkpoint is kept)",
                    step + 1
                )));
            }
            let max = self.config.max_grad_norm;
            let clip = if max > 0.0 && grad_norm > max {
                max / (grad_norm + 1e-6)
            } else {
                1.0
            };
            self.optimizer.begin_step();
            let mut adapters: Vec<_> = self
                .model
                .linears_mut()
                .into_iter()
                .filter_map(|(_, l)| l.lora.as_mut())
                .collect();
            for (k, ((ga, gb), adapter)) in grads.into_iter().zip(adapters.iter_mut()).enumerate() {
                let (ga, gb) = if clip < 1.0 {
                    (ga * clip, gb * clip)
                } else {
                    (ga, gb)
                };
                adapter.a = self.optimizer.update(2 * k, adapter.a.clone(), ga, lr);
                adapter.b = self.optimizer.update(2 * k + 1, adapter.b.clone(), gb, lr);
            }
        }
        self.position.step += 1;
        self.position.tokens += tokens;
        let seconds = start.elapsed().as_secs_f64();
        Ok(StepMetrics {
            step: self.position.step,
            loss,
            lr,
            grad_norm,
            tokens: self.position.tokens,
            tokens_per_s: tokens as f64 / seconds.max(1e-9),
            eval_loss: None,
        })
    }

    fn adapter_dtype(&self) -> Result<AdapterDtype> {
        self.config.adapter_dtype.parse()
    }

    fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let (step, moments) = self.optimizer.save();
        let model = &self.model;
        let lora = &self.lora;
        let base = self.config.model.display().to_string();
        save_checkpoint(
            &self.config.out,
            self.position,
            step,
            &moments,
            &self.config.to_toml(),
            // Checkpoints keep f32 adapters whatever the final dtype: resuming must be exact.
            |dir| save_adapter(model, dir, lora, &base, AdapterDtype::F32),
            self.config.save_total_limit,
        )
    }

    /// Write the final adapter and configuration into `OUT/` (each file atomically).
    fn save_final(&self) -> Result<()> {
        let out = &self.config.out;
        let staging = tempfile::Builder::new()
            .prefix(".final-adapter-")
            .tempdir_in(out)
            .map_err(|e| Error::io(out, e))?;
        save_adapter(
            &self.model,
            staging.path(),
            &self.lora,
            &self.config.model.display().to_string(),
            self.adapter_dtype()?,
        )?;
        std::fs::write(
            staging.path().join(super::checkpoint::CONFIG_FILE),
            self.config.to_toml(),
        )
        .map_err(|e| Error::io(staging.path(), e))?;
        for entry in std::fs::read_dir(staging.path()).map_err(|e| Error::io(staging.path(), e))? {
            let entry = entry.map_err(|e| Error::io(staging.path(), e))?;
            let target = out.join(entry.file_name());
            std::fs::rename(entry.path(), &target).map_err(|e| Error::io(&target, e))?;
        }
        Ok(())
    }

    /// Keep the metrics of steps up to the current one (a resumed run rewrites the rest).
    fn open_metrics(&self) -> Result<std::fs::File> {
        let path = self.config.out.join(METRICS_FILE);
        let kept: Vec<String> = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get("step")?.as_u64())
                    .is_some_and(|s| s <= self.position.step)
            })
            .map(str::to_string)
            .collect();
        let mut file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        for line in kept {
            writeln!(file, "{line}").map_err(|e| Error::io(&path, e))?;
        }
        Ok(file)
    }

    /// Train to the end (or until `interrupt` is set: then save a checkpoint and stop).
    pub fn run(
        &mut self,
        progress: &mut dyn Progress,
        interrupt: &AtomicBool,
    ) -> Result<TrainSummary> {
        std::fs::create_dir_all(&self.config.out).map_err(|e| Error::io(&self.config.out, e))?;
        let mut metrics = self.open_metrics()?;
        let metrics_path = self.config.out.join(METRICS_FILE);
        let eval_loss_before = if self.position.step == 0 {
            self.eval_loss()?
        } else {
            None
        };
        if let Some(loss) = eval_loss_before {
            progress.message(&format!("eval loss before training: {loss:.4}"));
        }
        progress.start(self.total_steps, self.position.step);
        let mut last = None;
        let mut eval_loss_after = None;
        while self.position.step < self.total_steps {
            let mut m = self.step()?;
            let at = self.position.step;
            let final_step = at == self.total_steps;
            if self.config.eval_steps.is_some_and(|e| at.is_multiple_of(e)) || final_step {
                m.eval_loss = self.eval_loss()?;
                if final_step {
                    eval_loss_after = m.eval_loss;
                }
            }
            writeln!(
                metrics,
                "{}",
                serde_json::to_string(&m).expect("metrics serialize")
            )
            .map_err(|e| Error::io(&metrics_path, e))?;
            progress.step(&m);
            last = Some(m.loss);
            let interrupted = interrupt.load(Ordering::SeqCst);
            if !final_step && (at.is_multiple_of(self.config.save_steps) || interrupted) {
                let dir = self.save_checkpoint()?;
                progress.message(&format!("saved {}", dir.display()));
            }
            if interrupted && !final_step {
                progress.finish();
                return Ok(TrainSummary {
                    outcome: Outcome::Interrupted,
                    steps: at,
                    final_loss: last,
                    eval_loss_before,
                    eval_loss_after: None,
                    out: self.config.out.clone(),
                });
            }
        }
        self.save_final()?;
        progress.finish();
        Ok(TrainSummary {
            outcome: Outcome::Finished,
            steps: self.position.step,
            final_loss: last,
            eval_loss_before,
            eval_loss_after,
            out: self.config.out.clone(),
        })
    }
}
