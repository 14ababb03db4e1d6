//! One optimizer step at a time: the run's data, model and optimizer, micro-batches
//! accumulated into a step, gradient clipping, the learning-rate schedule, resuming.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Tensor;

use super::checkpoint::{CONFIG_FILE, RunPosition, list_checkpoints, load_checkpoint};
use super::config::TrainConfig;
use super::optimizer::{AdamWConfig, PagedAdamW};
use super::progress::{Progress, StepMetrics};
use super::schedule::warmup_from_ratio;
use crate::config::Projection;
use crate::data::{Example, LoadedData, collate_rows, epoch_plan, load_examples, split_eval};
use crate::device::DeviceChoice;
use crate::error::{Error, Result};
use crate::eval::evaluate;
use crate::lora::{
    AdapterFile, LoraConfig, apply_adapter, load_adapter, loss_and_grads, read_adapter,
};
use crate::model::{DropoutStream, Llama, LoadOptions, TrainBatch};
use crate::profile::{self, Phase};
use crate::quant::Nf4Config;
use crate::text::Tokenizer;

/// A run, ready to go.
pub struct Trainer {
    pub config: TrainConfig,
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub train: Vec<Example>,
    pub eval: Vec<Example>,
    pub(super) lora: LoraConfig,
    pub(super) optimizer: PagedAdamW,
    pub(super) position: RunPosition,
    pub(super) total_steps: u64,
    pub(super) warmup: u64,
    pub(super) lengths: Vec<usize>,
    /// The micro-batches of the current epoch (rows of example indices), and which epoch.
    pub(super) plan: (u64, Vec<Vec<Vec<usize>>>),
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
        config.validate()?;
        let mut config = config;
        let start_from = match config.adapter.clone() {
            Some(dir) => Some(adapter_to_continue(&dir, &mut config, progress)?),
            None => None,
        };
        let lora = config.lora()?;
        let options = config.data_options();
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
            bits: config.bits,
            nf4: Nf4Config::default(),
            nf4_matmul: Default::default(),
            device: device.device()?,
        };
        let mut model = Llama::load(&config.model, &load_options)?;
        match start_from {
            Some((dir, file)) => {
                apply_adapter(&mut model, file)?;
                let expected = model.layers.len() * lora.target_modules.len();
                if model.adapters().len() != expected {
                    return Err(Error::file(
                        &dir,
                        format!(
                            "adapts {} of the model's {expected} {} projections: training \
                             continues adapters on whole projections only",
                            model.adapters().len(),
                            lora.target_names().join("/")
                        ),
                    ));
                }
                for (_, linear) in model.linears_mut() {
                    if let Some(adapter) = &mut linear.lora {
                        adapter.dropout = lora.dropout;
                    }
                }
            }
            None => model.attach_lora(&lora, config.seed)?,
        }

        for p in &lora.target_modules {
            let [out, inp] = model.config.projection_shape(*p);
            if lora.r > out.min(inp) {
                progress.message(&format!(
                    "warning: r {} is above min(in, out) = {} of {}: its adapter has more \
                     parameters than a full update of the projection and gains nothing from \
                     the extra rank",
                    lora.r,
                    out.min(inp),
                    p.name()
                ));
            }
        }
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
        let plan = epoch_plan(&lengths, &config.batching(), config.seed, 0);
        let batches_per_epoch = plan.len();
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
            lengths,
            plan: (0, plan),
        };
        if let Some(dir) = resume {
            let saved_path = dir.join(CONFIG_FILE);
            let saved = TrainConfig::from_toml_file(&saved_path)?;
            for change in trainer.config.resume_changes(&saved, dir)? {
                progress.message(&format!("resuming with {change}"));
            }
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
                loaded.target_names(),
                self.lora.r,
                self.lora.target_names()
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

    /// Bytes of optimizer state moved (host -> device, device -> host) so far.
    pub fn optimizer_paging(&self) -> (usize, usize) {
        (self.optimizer.paged_in, self.optimizer.paged_out)
    }

    /// The next micro-batch in data order, advancing the position.
    fn next_batch(&mut self) -> TrainBatch {
        if self.plan.0 != self.position.epoch {
            let plan = epoch_plan(
                &self.lengths,
                &self.config.batching(),
                self.config.seed,
                self.position.epoch,
            );
            self.plan = (self.position.epoch, plan);
        }
        let rows: Vec<Vec<&Example>> = self.plan.1[self.position.batch_in_epoch]
            .iter()
            .map(|row| row.iter().map(|&i| &self.train[i]).collect())
            .collect();
        let pad = self.tokenizer.pad_id().unwrap_or(0);
        let batch = collate_rows(&rows, pad, self.config.batching().packing);
        self.position.batch_in_epoch += 1;
        if self.position.batch_in_epoch >= self.plan.1.len() {
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
        let packing = self.config.batching().packing;
        Ok(Some(
            evaluate(&self.model, &self.eval, packing, |_| {})?.loss,
        ))
    }
}

/// The micro-batches of one optimizer step, summed: the gradients of the summed token loss
/// (divide by `targets` for the step's mean), and what they held.
pub struct StepGradients {
    pub grads: Vec<(Tensor<2>, Tensor<2>)>,
    pub loss_sum: f64,
    /// Tokens with a target: the step's loss is `loss_sum / targets`, whatever the
    /// micro-batches (not a mean of per-micro-batch means).
    pub targets: usize,
    /// Real tokens, and all positions (padding included).
    pub tokens: u64,
    pub positions: u64,
}

impl Trainer {
    /// Run the next `grad_accum` micro-batches forward and backward and sum their gradients.
    pub fn accumulate(&mut self) -> Result<StepGradients> {
        let mut sum: Option<Vec<(Tensor<2>, Tensor<2>)>> = None;
        let (mut loss_sum, mut targets, mut tokens, mut positions) = (0f64, 0usize, 0u64, 0u64);
        for _ in 0..self.config.grad_accum {
            let batch = self.next_batch();
            tokens += batch.tokens() as u64;
            positions += batch.positions() as u64;
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
        Ok(StepGradients {
            grads: sum.expect("at least one micro-batch"),
            loss_sum,
            targets,
            tokens,
            positions,
        })
    }

    /// One optimizer step: `grad_accum` micro-batches, clipping, the update.
    pub fn step(&mut self) -> Result<StepMetrics> {
        let start = Instant::now();
        let StepGradients {
            grads,
            loss_sum,
            targets,
            tokens,
            positions,
        } = self.accumulate()?;
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
            let _span = profile::span(Phase::Optimizer);
            // The gradient of the mean token loss over the whole accumulated batch is the sum
            // times `1 / targets`: the scale (and clipping) ride in the update.
            let scale = 1.0 / targets as f64;
            let squares: Vec<Tensor<1>> = grads
                .iter()
                .flat_map(|(a, b)| [a, b])
                .map(|g| g.clone().powi_scalar(2).sum())
                .collect();
            // One read back for the whole norm.
            let squares = f64::from(Tensor::cat(squares, 0).sum().into_scalar::<f32>());
            grad_norm = squares.sqrt() * scale;
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
                let grad_scale = scale * clip;
                adapter.a = self
                    .optimizer
                    .update(2 * k, adapter.a.clone(), ga, grad_scale, lr);
                adapter.b = self
                    .optimizer
                    .update(2 * k + 1, adapter.b.clone(), gb, grad_scale, lr);
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
            padding: 1.0 - tokens as f64 / positions.max(1) as f64,
            eval_loss: None,
            device_memory_bytes: self
                .model
                .device
                .memory_pool_usage()
                .map(|u| u.bytes_in_use),
        })
    }
}

/// Read the adapter a run continues (`--adapter`) and make the run's LoRA settings its own.
/// Refuses adapters training could not save as they are: per-module ranks or alphas.
fn adapter_to_continue(
    dir: &Path,
    config: &mut TrainConfig,
    progress: &mut dyn Progress,
) -> Result<(PathBuf, AdapterFile)> {
    let file = read_adapter(dir)?;
    let settings = &file.settings;
    let mut targets: Vec<Projection> = Vec::new();
    for (module, weights) in &file.modules {
        let uniform =
            weights.rank() == settings.r && settings.targeting.alpha(module) == settings.alpha;
        if !uniform {
            return Err(Error::file(
                dir,
                format!(
                    "{module} has its own rank or alpha (rank_pattern/alpha_pattern): training \
                     continues adapters with one r and alpha"
                ),
            ));
        }
        let short = module.rsplit('.').next().unwrap_or_default();
        if let Some(p) = Projection::from_name(short)
            && !targets.contains(&p)
        {
            targets.push(p);
        }
    }
    targets.sort();
    config.rank = settings.r;
    config.alpha = settings.alpha;
    config.use_rslora = settings.use_rslora;
    config.target_modules = targets
        .iter()
        .map(|p| p.name())
        .collect::<Vec<_>>()
        .join(",");
    progress.message(&format!(
        "continuing the adapter in {}: r {}, alpha {}, {}{}",
        dir.display(),
        config.rank,
        config.alpha,
        config.target_modules,
        if config.use_rslora { ", rsLoRA" } else { "" }
    ));
    Ok((dir.to_path_buf(), file))
}
