//! A run set up: its data, model with adapters and optimizer, the order of its micro-batches,
//! resuming from a checkpoint. The step itself is in `step.rs`.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::adapters::{adapter_to_continue, attach_adapters};
use super::best::{Best, read_best};
use super::checkpoint::{CONFIG_FILE, RunPosition, load_checkpoint};
use super::config::TrainConfig;
use super::optimizer::{AdamWConfig, PagedAdamW};
use super::pairs::PairRun;
use super::progress::Progress;
use super::schedule::warmup_from_ratio;
use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::data::{
    Example, LoadedData, PairLimits, collate_rows, epoch_plan, load_examples, load_pairs,
    split_eval,
};
use crate::device::DeviceChoice;
use crate::distributed::{Collective, ReduceStats, Single, differing};
use crate::dtype::ComputeDtype;
use crate::error::{Error, Result};
use crate::eval::choice::{Question, evaluate_choices, read_task};
use crate::eval::loss_sum;
use crate::lora::{LoraConfig, load_adapter};
use crate::model::{CausalLm, LoadOptions, TrainBatch};
use crate::preference::{Method, PreferenceMetrics, without_adapters};
use crate::quant::Nf4Config;
use crate::text::Tokenizer;

/// Say when examples learn no stop token: the "model never stops" trap. Labels are masked by
/// position (padding only), never by id, so an eos that is also the padding token is learned;
/// what remains is a template or format that writes no stop token.
fn warn_without_stop(loaded: &LoadedData, tokenizer: &Tokenizer, progress: &mut dyn Progress) {
    let missing = loaded.without_stop(tokenizer.stop_ids());
    if missing > 0 {
        let names: Vec<String> = tokenizer
            .stop_ids()
            .iter()
            .filter_map(|&id| tokenizer.backend().id_to_token(id))
            .collect();
        progress.message(&format!(
            "warning: {missing} of {} examples learn no stop token ({}): the adapter will not \
             learn to end its replies; end assistant turns with one in the chat template, or \
             name the one it writes with --eos-token",
            loaded.examples.len(),
            names.join(", ")
        ));
    }
}

/// A run, ready to go.
pub struct Trainer {
    /// The run's settings.
    pub config: TrainConfig,
    /// The model, with its adapters.
    pub model: CausalLm,
    /// The model's tokenizer.
    pub tokenizer: Tokenizer,
    /// The training examples.
    pub train: Vec<Example>,
    /// The held-out examples.
    pub eval: Vec<Example>,
    pub(super) lora: LoraConfig,
    pub(super) optimizer: PagedAdamW,
    pub(super) position: RunPosition,
    pub(super) total_steps: u64,
    pub(super) warmup: u64,
    /// Steps between evaluations (`--eval-steps`, or `--evals-per-epoch` as steps).
    pub(super) eval_every: Option<u64>,
    /// Steps between checkpoints (`--save-steps`, or `--saves-per-epoch` as steps).
    pub(super) save_every: u64,
    pub(super) lengths: Vec<usize>,
    /// The micro-batches of the current epoch (rows of example indices), and which epoch.
    pub(super) plan: (u64, Vec<Vec<Vec<usize>>>),
    /// Multiple-choice questions scored at evaluations, and their few-shot examples.
    pub(super) mc: Option<(Vec<Question>, Vec<Question>)>,
    /// The best evaluation so far (`--save-best`).
    pub(super) best: Option<Best>,
    /// The ranks of the run ([`Single`] for one process).
    pub(super) collective: Rc<dyn Collective>,
    /// What the step's all-reduces cost so far.
    pub(super) reduce_stats: ReduceStats,
    /// A preference run's pairs and reference (`--method dpo|orpo|simpo`).
    pub(super) pairs: Option<PairRun>,
    /// The previous run into this output was killed without warning (its lock's record).
    pub(super) previous_run_died: bool,
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
        Self::on_ranks(config, device, resume, progress, Rc::new(Single))
    }

    /// [`Trainer::new`] for one rank of a run on several ([`crate::distributed::init`]):
    /// every rank loads the model and data, checks that the others loaded the same, takes the
    /// local rank's device (an unnumbered GPU) and rank 0's adapter values. `--batch-size`
    /// stays per rank: a micro-batch of the run holds `batch_size × world` rows.
    pub fn on_ranks(
        config: TrainConfig,
        device: DeviceChoice,
        resume: Option<&Path>,
        progress: &mut dyn Progress,
        collective: Rc<dyn Collective>,
    ) -> Result<Self> {
        let device = device.on_local_rank(collective.local_rank(), collective.local_world());
        config.validate()?;
        // The projections the targets name, among the model's (before anything else is read).
        let model_config = ModelConfig::load(&config.model)?;
        let architecture = model_config.architecture;
        config.lora()?.for_architecture(architecture)?;
        let mut config = config;
        config.settle_optimizer_budget(device, progress)?;
        let start_from = match config.adapter.clone() {
            Some(dir) => Some(adapter_to_continue(&dir, &mut config, progress)?),
            None => None,
        };
        let lora = config.lora()?.for_architecture(architecture)?;
        let options = config.data_options();
        // Held-out data has its own split, and its format is detected on its own.
        let eval_options = config.eval_data_options();
        let mut tokenizer = Tokenizer::load(&config.model)?;
        config.tokenize.text.apply(&mut tokenizer)?;
        let preference = config.preference.method != Method::Sft;
        let (train, eval, pair_data) = if preference {
            let limits = PairLimits::of(&config.preference, config.max_seq_len);
            let loaded = load_pairs(&config.data, &tokenizer, &options, limits)?;
            progress.message(&format!("{}: {loaded}", loaded.origin));
            let (train, eval) = match &config.eval_data {
                Some(path) => {
                    let eval = load_pairs(path, &tokenizer, &eval_options, limits)?;
                    progress.message(&format!("{}: {eval}", eval.origin));
                    (loaded.pairs, eval.pairs)
                }
                None => split_eval(loaded.pairs, config.eval_fraction, config.seed),
            };
            (Vec::new(), Vec::new(), Some((train, eval)))
        } else {
            let loaded: LoadedData = load_examples(&config.data, &tokenizer, &options)?;
            progress.message(&format!("{}: {loaded}", loaded.origin));
            warn_without_stop(&loaded, &tokenizer, progress);
            // Recorded in training_config.toml, so `generate --adapter` wraps prompts the same
            // way.
            config.format = Some(loaded.format);
            let (train, eval) = match &config.eval_data {
                Some(path) => {
                    let eval = load_examples(path, &tokenizer, &eval_options)?;
                    progress.message(&format!("{}: {eval}", eval.origin));
                    (loaded.examples, eval.examples)
                }
                None => split_eval(loaded.examples, config.eval_fraction, config.seed),
            };
            (train, eval, None)
        };
        if train.is_empty() && pair_data.as_ref().is_none_or(|(t, _)| t.is_empty()) {
            return Err(Error::invalid(
                "no training examples left after the evaluation split",
            ));
        }

        let device = device.device()?;
        let compute = ComputeDtype::resolve(config.compute_dtype, &device)?;
        if compute != ComputeDtype::F32 || config.compute_dtype.is_some() {
            progress.message(&format!("computing in {compute}"));
        }
        let load_options = LoadOptions {
            bits: config.bits,
            nf4: Nf4Config::default(),
            nf4_matmul: Default::default(),
            device,
            compute,
        };
        let checkpoint = Checkpoint::open(&config.model)?;
        let mut model = CausalLm::from_checkpoint(model_config, &checkpoint, &load_options)?;
        let continued = start_from.is_some();
        attach_adapters(&mut model, &lora, start_from, config.seed, progress)?;
        // The frozen reference: the base, or the adapter the run continues as it was loaded
        // (taken before a checkpoint is restored).
        let pairs = match pair_data {
            Some((train, eval)) => {
                let reference = config.preference.needs_reference().then(|| {
                    if continued {
                        model.clone()
                    } else {
                        without_adapters(&model)
                    }
                });
                Some(PairRun {
                    train,
                    eval,
                    reference,
                    train_ref: None,
                    eval_ref: None,
                })
            }
            None => None,
        };
        let sizes = model.adapter_sizes();
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

        let lengths: Vec<usize> = match &pairs {
            Some(run) => run.lengths(),
            None => train.iter().map(|e| e.ids.len()).collect(),
        };
        let mut batching = config.batching();
        batching.batch_size *= collective.world();
        let plan = epoch_plan(&lengths, &batching, config.seed, 0);
        let batches_per_epoch = plan.len();
        let steps_per_epoch = batches_per_epoch.div_ceil(config.grad_accum) as u64;
        let total_steps = match (config.max_steps, config.epochs) {
            (Some(steps), _) => steps,
            (None, Some(epochs)) => epochs * steps_per_epoch,
            (None, None) => steps_per_epoch,
        };
        if let Some(steps) = config.max_steps.filter(|&s| s > steps_per_epoch) {
            progress.message(&format!(
                "--max-steps {steps} is {:.1} passes over the data ({steps_per_epoch} step{} a pass)",
                steps as f64 / steps_per_epoch as f64,
                if steps_per_epoch == 1 { "" } else { "s" }
            ));
        }
        // Evaluations and checkpoints a pass, as steps.
        let per_epoch = |n: u64| (steps_per_epoch / n).max(1);
        let eval_every = config.evals_per_epoch.map(per_epoch).or(config.eval_steps);
        let save_every = config.saves_per_epoch.map_or(config.save_steps, per_epoch);
        let warmup = config
            .warmup_steps
            .unwrap_or_else(|| warmup_from_ratio(config.warmup_ratio, total_steps));
        let mc = match &config.eval_mc_data {
            Some(path) => {
                let style = config.eval_mc_style;
                let (questions, fewshot) = read_task(
                    path,
                    config.eval_mc_fewshot_data.as_deref(),
                    config.eval_mc_fewshot,
                    style,
                    ["--eval-mc-fewshot", "--eval-mc-fewshot-data"],
                )?;
                progress.message(&format!(
                    "{}: {} multiple-choice questions ({style}, {}-shot)",
                    path.display(),
                    questions.len(),
                    fewshot.len()
                ));
                Some((questions, fewshot))
            }
            None => None,
        };
        let best = match config.save_best {
            Some(metric) if resume.is_some() => read_best(&config.out, metric)?,
            _ => None,
        };
        let mut trainer = Trainer {
            config,
            model,
            tokenizer,
            train,
            eval,
            lora,
            optimizer,
            position: RunPosition {
                world_size: collective.world(),
                ..RunPosition::default()
            },
            total_steps,
            warmup,
            eval_every,
            save_every,
            lengths,
            plan: (0, plan),
            mc,
            best,
            collective,
            reduce_stats: ReduceStats::default(),
            pairs,
            previous_run_died: false,
        };
        trainer.reduce_stats.bytes_per_step = trainer.reduce_bytes_per_step();
        let fingerprint = trainer.fingerprint();
        let ranks = differing(trainer.collective.as_ref(), fingerprint);
        if !ranks.is_empty() {
            return Err(Error::invalid(format!(
                "rank {ranks:?} loaded another model, data or settings than rank 0: every rank \
                 must be given the same files and flags"
            )));
        }
        if let Some(dir) = resume {
            let saved_path = dir.join(CONFIG_FILE);
            let mut saved = TrainConfig::from_toml_file(&saved_path)?;
            // Checkpoints from before the detected format was recorded detected it too.
            saved.format = saved.format.or(trainer.config.format);
            trainer.same_global_batch(&mut saved, dir)?;
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
        trainer.score_references(resume, progress)?;
        trainer.sync_adapters();
        Ok(trainer)
    }

    /// Say that the previous run into this output was killed without warning: the run reports
    /// it as ending without a checkpoint after its last logged step.
    pub fn previous_run_died(&mut self) {
        self.previous_run_died = true;
    }

    /// The newest complete checkpoint in `out`, if any.
    pub fn latest_checkpoint(out: &Path) -> Option<PathBuf> {
        super::resume::newest_complete_checkpoint(out).0
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
        self.position = RunPosition {
            world_size: self.world(),
            ..position
        };
        Ok(())
    }

    /// Optimizer steps of the whole run.
    pub fn total_steps(&self) -> u64 {
        self.total_steps
    }

    /// Where the run stands.
    pub fn position(&self) -> RunPosition {
        self.position
    }

    /// Bytes of optimizer state moved (host -> device, device -> host) so far.
    pub fn optimizer_paging(&self) -> (usize, usize) {
        (self.optimizer.paged_in, self.optimizer.paged_out)
    }

    /// This rank's rows of the next micro-batch in data order, as indices of examples (pairs
    /// in a preference run); none when the epoch's last micro-batch left this rank nothing.
    /// Advances the position.
    pub(super) fn next_rows(&mut self) -> Option<Vec<Vec<usize>>> {
        if self.plan.0 != self.position.epoch {
            let plan = epoch_plan(
                &self.lengths,
                &self.global_batching(),
                self.config.seed,
                self.position.epoch,
            );
            self.plan = (self.position.epoch, plan);
        }
        let rows = self
            .my_rows(&self.plan.1[self.position.batch_in_epoch])
            .to_vec();
        self.position.batch_in_epoch += 1;
        if self.position.batch_in_epoch >= self.plan.1.len() {
            self.position.batch_in_epoch = 0;
            self.position.epoch += 1;
        }
        (!rows.is_empty()).then_some(rows)
    }

    /// This rank's rows of the next micro-batch of examples, collated (see
    /// [`Trainer::next_rows`]).
    pub(super) fn next_batch(&mut self) -> Option<TrainBatch> {
        let rows = self.next_rows()?;
        let rows: Vec<Vec<&Example>> = rows
            .iter()
            .map(|row| row.iter().map(|&i| &self.train[i]).collect())
            .collect();
        let pad = self.tokenizer.pad_id().unwrap_or(0);
        Some(collate_rows(&rows, pad, self.config.batching().packing))
    }

    /// Multiple-choice accuracy (and its per-character form) on `--eval-mc-data`; the
    /// questions are split across the ranks.
    pub fn mc_accuracy(&self) -> Result<Option<(f64, f64)>> {
        let Some((questions, fewshot)) = &self.mc else {
            return Ok(None);
        };
        let mine = self.my_share(questions);
        // Questions, right, right per character.
        let mut sums = [0f64; 3];
        if !mine.is_empty() {
            let report = evaluate_choices(
                &self.model,
                &self.tokenizer,
                &mine,
                fewshot,
                self.config.eval_mc_style,
                |_| {},
            )?;
            let n = report.overall.questions as f64;
            sums = [n, report.overall.acc * n, report.overall.acc_norm * n];
        }
        self.sum_over_ranks(&mut sums);
        Ok(Some((sums[1] / sums[0], sums[2] / sums[0])))
    }

    /// The held-out loss and, in a preference run, the held-out pairs' metrics.
    pub fn evaluate(&self) -> Result<(Option<f64>, Option<PreferenceMetrics>)> {
        match self.eval_pairs()? {
            Some(sums) => Ok((Some(sums.loss / sums.pairs.max(1.0)), Some(sums.means()))),
            None if self.pairs.is_some() => Ok((None, None)),
            None => Ok((self.eval_loss()?, None)),
        }
    }

    /// Mean loss over the held-out examples (split across the ranks); in a preference run, the
    /// mean objective over the held-out pairs.
    pub fn eval_loss(&self) -> Result<Option<f64>> {
        if self.pairs.is_some() {
            return Ok(self.evaluate()?.0);
        }
        if self.eval.is_empty() {
            return Ok(None);
        }
        let packing = self.config.batching().packing;
        let mine = self.my_share(&self.eval);
        let mut sums = [0f64; 2];
        if !mine.is_empty() {
            let (sum, tokens) = loss_sum(&self.model, &mine, packing, |_| {})?;
            sums = [sum, tokens as f64];
        }
        self.sum_over_ranks(&mut sums);
        if sums[1] == 0.0 {
            return Err(Error::invalid("no target tokens to evaluate"));
        }
        Ok(Some(sums[0] / sums[1]))
    }

    /// With a checkpoint of another number of ranks, the global batch (`batch_size × ranks`)
    /// must stay the same; then the per-rank `batch_size` may differ from `saved`'s.
    fn same_global_batch(&self, saved: &mut TrainConfig, dir: &Path) -> Result<()> {
        let (position, _, _) = load_checkpoint(dir)?;
        let (then, now) = (position.ranks(), self.world());
        if then == now {
            return Ok(());
        }
        let rows = |batch: usize, ranks: usize| {
            format!(
                "{ranks} rank{} x --batch-size {batch} = {} rows a micro-batch",
                if ranks == 1 { "" } else { "s" },
                batch * ranks
            )
        };
        if saved.batch_size * then != self.config.batch_size * now {
            return Err(Error::invalid(format!(
                "{}: cannot resume with {}: the checkpoint was trained with {}, and the global \
                 batch must stay the same (choose --batch-size so that it does)",
                dir.display(),
                rows(self.config.batch_size, now),
                rows(saved.batch_size, then)
            )));
        }
        saved.batch_size = self.config.batch_size;
        Ok(())
    }
}
