//! A whole run: steps until the end or an interrupt, evaluation, metrics, checkpoints, and the
//! final adapter.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::best::{BEST_FILE, Best, BestMetric, best_dir};
use super::checkpoint::{CONFIG_FILE, checkpoint_dir, save_checkpoint};
use super::pairs::write_reference;
use super::progress::{METRICS_FILE, Progress, Quiet, StepMetrics, TENSORBOARD_DIR};
use super::trainer::Trainer;
use crate::durable;
use crate::error::{Error, Result};
use crate::lora::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, AdapterDtype, save_adapter};
use crate::plan::adam_state_bytes;
use crate::staged_dir::{StagedDir, sweep_stale};
use crate::text::CHAT_TEMPLATE_FILE;
use crate::tfevents::EventWriter;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every step ran and the adapter was saved.
    Finished,
    /// Stopped on request after saving a checkpoint.
    Interrupted,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    /// How it ended.
    pub outcome: Outcome,
    /// Optimizer steps taken.
    pub steps: u64,
    /// The last step's loss.
    pub final_loss: Option<f64>,
    /// The held-out loss before training.
    pub eval_loss_before: Option<f64>,
    /// The held-out loss after training.
    pub eval_loss_after: Option<f64>,
    /// The run's output directory.
    pub out: PathBuf,
    /// The process's peak resident set at the end (Linux).
    pub peak_rss_bytes: Option<u64>,
    /// The most device memory in use after a step (GPU backends).
    pub device_memory_bytes: Option<u64>,
}

impl Trainer {
    /// Write `OUT/checkpoint-N/` for the run as it stands (what `run` does every
    /// `--save-steps`); returns its directory.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let needed = self.checkpoint_bytes();
        self.warn_if_low_on_space(needed);
        self.write_checkpoint().map_err(|e| {
            let out = &self.config.out;
            let (why, kept, remedy) = if durable::is_out_of_space(&e) {
                let free = durable::free_space(out).map_or(String::new(), |f| {
                    format!(", {} free", durable::human_bytes(f))
                });
                let needed = durable::human_bytes(needed);
                (
                    format!(
                        "no space left on the device writing this checkpoint ({e}): it needs \
                         about {needed}{free}"
                    ),
                    "",
                    "Free space".to_string(),
                )
            } else if durable::is_unwritable(&e) {
                (
                    format!("cannot write this checkpoint ({e})"),
                    " and the earlier checkpoints are as they were",
                    format!("Make {} writable", out.display()),
                )
            } else {
                return e;
            };
            let last = super::resume::newest_complete_checkpoint(out)
                .0
                .map_or("none yet".to_string(), |d| d.display().to_string());
            Error::file(
                checkpoint_dir(out, self.position.step),
                format!(
                    "{why}; nothing of it was kept{kept}. {remedy} and continue with --resume \
                     (the last complete checkpoint: {last})"
                ),
            )
        })
    }

    /// Bytes a checkpoint takes, about: the f32 adapter and the optimizer's moments.
    fn checkpoint_bytes(&self) -> u64 {
        let eight_bit = self.config.optim.eight_bit();
        let tensors = self.model.adapter_sizes();
        let values: u64 = tensors.iter().map(|&n| n as u64).sum();
        let moments: u64 = tensors
            .iter()
            .map(|&n| adam_state_bytes(n as u64, eight_bit))
            .sum();
        4 * values + moments + (64 << 10)
    }

    /// A warning when the output's filesystem has less room than one checkpoint takes.
    fn warn_if_low_on_space(&self, needed: u64) {
        if let Some(free) = durable::free_space(&self.config.out)
            && free < needed
        {
            crate::stderr::line(format!(
                "warning: {} has {} free; a checkpoint takes about {}: the next save will fail \
                 unless space is freed",
                self.config.out.display(),
                durable::human_bytes(free),
                durable::human_bytes(needed)
            ));
        }
    }

    fn write_checkpoint(&mut self) -> Result<PathBuf> {
        let (step, moments) = self.optimizer.save();
        let model = &self.model;
        let lora = &self.lora;
        let base = self.config.model.display().to_string();
        let (text, tokenizer) = (&self.config.tokenize.text, &self.tokenizer);
        // The reference's scores (--precompute-ref), so a resumed run need not score again.
        let reference = self.pairs.as_ref().and_then(|p| p.train_ref.as_deref());
        save_checkpoint(
            &self.config.out,
            self.position,
            step,
            &moments,
            &self.config.to_toml(),
            // Checkpoints keep f32 adapters whatever the final dtype: resuming must be exact.
            |dir| {
                save_adapter(model, dir, lora, &base, AdapterDtype::F32)?;
                text.record(tokenizer, dir)?;
                match reference {
                    Some(scores) => write_reference(dir, scores),
                    None => Ok(()),
                }
            },
            self.config.save_total_limit,
        )
    }

    /// The adapter in `dir` as the run's final (or best) adapter, with the chat template it
    /// was trained with when that is not the model's.
    fn write_adapter(&self, dir: &Path) -> Result<()> {
        save_adapter(
            &self.model,
            dir,
            &self.lora,
            &self.config.model.display().to_string(),
            self.config.adapter_dtype,
        )?;
        self.config.tokenize.text.record(&self.tokenizer, dir)
    }

    /// Write the final adapter and configuration into `OUT/`: all files are written into a
    /// staging directory first, then renamed into place with `adapter_config.json` last, so an
    /// adapter PEFT (or we) can load is always complete. A staging directory a killed run left
    /// is swept on the next run.
    fn save_final(&self) -> Result<()> {
        let out = &self.config.out;
        sweep_stale(out);
        let staging = tempfile::Builder::new()
            .prefix(&format!(".final-adapter.partial-{}-", std::process::id()))
            .tempdir_in(out)
            .map_err(|e| Error::io(out, e))?;
        self.write_adapter(staging.path())?;
        std::fs::write(staging.path().join(CONFIG_FILE), self.config.to_toml())
            .map_err(|e| Error::io(staging.path(), e))?;
        // A half-replaced adapter must not look complete: the config goes first and comes last.
        let marker = out.join(ADAPTER_CONFIG_FILE);
        if marker.exists() {
            std::fs::remove_file(&marker).map_err(|e| Error::io(&marker, e))?;
        }
        // The template of an earlier run into this directory is not this adapter's.
        let template = out.join(CHAT_TEMPLATE_FILE);
        if template.exists() && !staging.path().join(CHAT_TEMPLATE_FILE).exists() {
            std::fs::remove_file(&template).map_err(|e| Error::io(&template, e))?;
        }
        for file in [
            ADAPTER_WEIGHTS_FILE,
            CHAT_TEMPLATE_FILE,
            CONFIG_FILE,
            ADAPTER_CONFIG_FILE,
        ] {
            let (from, target) = (staging.path().join(file), out.join(file));
            if file == CHAT_TEMPLATE_FILE && !from.exists() {
                continue;
            }
            std::fs::rename(from, &target).map_err(|e| Error::io(&target, e))?;
        }
        Ok(())
    }

    /// With `--save-best`, keep this evaluation's adapter as `OUT/best/` if it beats the best
    /// so far.
    fn keep_best(&mut self, m: &StepMetrics, progress: &mut dyn Progress) -> Result<()> {
        let Some(metric) = self.config.save_best.filter(|_| self.is_root()) else {
            return Ok(());
        };
        let value = match metric {
            BestMetric::McAcc => m.mc_acc,
            BestMetric::EvalLoss => m.eval_loss,
        };
        let Some(value) = value else {
            return Ok(());
        };
        if !metric.improves(value, self.best.map(|b| b.value)) {
            return Ok(());
        }
        let best = Best {
            metric,
            value,
            step: m.step,
        };
        let dir = best_dir(&self.config.out);
        let staged = StagedDir::new(&dir, true, &[])?;
        self.write_adapter(staged.path())?;
        let json = serde_json::to_string_pretty(&best).expect("best serializes");
        let path = staged.path().join(BEST_FILE);
        std::fs::write(&path, json).map_err(|e| Error::io(&path, e))?;
        staged.commit()?;
        self.best = Some(best);
        progress.message(&format!(
            "best {metric} so far: {value:.4} at step {}, kept in {}",
            m.step,
            dir.display()
        ));
        Ok(())
    }

    /// Keep the metrics of steps up to the current one (a resumed run rewrites the rest). A
    /// torn last line (the previous run stopped while writing it) is dropped with a warning, and
    /// steps logged after the checkpoint resumed from say the previous run ended without
    /// saving them.
    fn open_metrics(&self, progress: &mut dyn Progress) -> Result<std::fs::File> {
        let path = self.config.out.join(METRICS_FILE);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let (mut kept, mut torn, mut last_step) = (Vec::new(), 0usize, None);
        for line in text.lines() {
            let step = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("step")?.as_u64());
            match step {
                Some(step) => {
                    last_step = Some(step);
                    if step <= self.position.step {
                        kept.push(line);
                    }
                }
                None => torn += 1,
            }
        }
        if torn > 0 {
            crate::stderr::line(format!(
                "warning: {}: ignoring {torn} torn line{} (the previous run stopped while \
                 writing)",
                path.display(),
                if torn == 1 { "" } else { "s" }
            ));
        }
        // A finished run (its adapter in place) being extended saved no checkpoint at its end.
        let finished = self.config.out.join(ADAPTER_CONFIG_FILE).exists();
        let unlogged = self.previous_run_died.then_some(self.position.step);
        if let Some(last) = last_step
            .filter(|&l| l > self.position.step && !finished)
            .or(unlogged)
        {
            progress.message(&format!(
                "the previous run ended without a checkpoint after step {last} (killed: out of \
                 memory, a signal or a power cut?); resuming from step {}",
                self.position.step
            ));
        }
        let mut file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        let kept: String = kept.iter().map(|l| format!("{l}\n")).collect();
        file.write_all(kept.as_bytes())
            .map_err(|e| Error::io(&path, e))?;
        Ok(file)
    }

    /// Train to the end (or until `interrupt` is set, on any rank: then save a checkpoint and
    /// stop). On several ranks only rank 0 shows progress and writes files.
    pub fn run(
        &mut self,
        progress: &mut dyn Progress,
        interrupt: &AtomicBool,
    ) -> Result<TrainSummary> {
        let root = self.is_root();
        let mut quiet = Quiet;
        let progress: &mut dyn Progress = if root { progress } else { &mut quiet };
        let mut identity = None;
        let (mut metrics, mut events) = if root {
            std::fs::create_dir_all(&self.config.out)
                .map_err(|e| Error::io(&self.config.out, e))?;
            identity = Some(durable::DirIdentity::of(&self.config.out)?);
            let resumed = (self.position.step > 0).then_some(self.position.step);
            let events = EventWriter::create(&self.config.out.join(TENSORBOARD_DIR), resumed)?;
            (Some(self.open_metrics(progress)?), Some(events))
        } else {
            (None, None)
        };
        let metrics_path = self.config.out.join(METRICS_FILE);
        if root {
            self.warn_if_low_on_space(self.checkpoint_bytes());
        }
        if self.world() > 1 {
            progress.message(&self.parallel_header());
        }
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
        let mut device_memory_bytes = None;
        while self.position.step < self.total_steps {
            let (mut m, interrupted) = self.step_or_stop(interrupt.load(Ordering::SeqCst))?;
            let at = self.position.step;
            let final_step = at == self.total_steps;
            if self.eval_every.is_some_and(|e| at.is_multiple_of(e)) || final_step {
                (m.eval_loss, m.eval_preference) = self.evaluate()?;
                if let Some((acc, norm)) = self.mc_accuracy()? {
                    (m.mc_acc, m.mc_acc_norm) = (Some(acc), Some(norm));
                }
                if final_step {
                    eval_loss_after = m.eval_loss;
                }
                self.keep_best(&m, progress)?;
            }
            if let Some(identity) = &identity {
                identity.check(&self.config.out)?;
            }
            if let Some(metrics) = &mut metrics {
                // One write a line: a line is whole or (if the process dies mid-write) torn
                // at its end, never interleaved.
                let line = serde_json::to_string(&m).expect("metrics serialize") + "\n";
                metrics
                    .write_all(line.as_bytes())
                    .map_err(|e| Error::io(&metrics_path, e))?;
            }
            if let Some(events) = &mut events {
                events.scalars(m.step, &m.scalars())?;
            }
            progress.step(&m);
            last = Some(m.loss);
            device_memory_bytes = device_memory_bytes.max(m.device_memory_bytes);
            if !final_step && (at.is_multiple_of(self.save_every) || interrupted) && root {
                let dir = self.save_checkpoint()?;
                progress.message(&format!("saved {}", dir.display()));
            }
            if interrupted && !final_step {
                // Every rank leaves once rank 0's checkpoint is complete.
                self.collective().barrier();
                progress.finish();
                return Ok(TrainSummary {
                    outcome: Outcome::Interrupted,
                    steps: at,
                    final_loss: last,
                    eval_loss_before,
                    eval_loss_after: None,
                    out: self.config.out.clone(),
                    peak_rss_bytes: crate::resident::peak_rss(),
                    device_memory_bytes,
                });
            }
        }
        if self.world() > 1 {
            self.check_ranks_agree()?;
            progress.message(&self.parallel_footer());
        }
        if root {
            self.save_final()?;
        }
        self.collective().barrier();
        progress.finish();
        Ok(TrainSummary {
            outcome: Outcome::Finished,
            steps: self.position.step,
            final_loss: last,
            eval_loss_before,
            eval_loss_after,
            out: self.config.out.clone(),
            peak_rss_bytes: crate::resident::peak_rss(),
            device_memory_bytes,
        })
    }
}
