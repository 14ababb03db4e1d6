use std::io::IsTerminal;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::model_args::DeviceArgs;
use anyhow::Result;
use clap::{ArgMatches, Args};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use qlora_core::device::DeviceChoice;
use qlora_core::distributed::{self, Collective};
use qlora_core::durable::human_bytes;
use qlora_core::gguf::resolve_model;
use qlora_core::output_lock::OutputLock;
use qlora_core::train::{
    LogProgress, Outcome, Progress, Quiet, StepMetrics, TrainConfig, TrainSummary, Trainer,
    resume_point,
};

#[derive(Args)]
pub struct TrainArgs {
    /// A TOML file with the same keys as the flags (dashes as underscores), or an axolotl
    /// config (.yml, .yaml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the settings the run would use (file and flags resolved) as TOML, and exit.
    #[arg(long)]
    print_config: bool,
    #[command(flatten)]
    settings: TrainConfig,
    /// Continue from the latest checkpoint in --out, or from the checkpoint directory given.
    #[arg(long, num_args = 0..=1, default_missing_value = "latest")]
    resume: Option<String>,
    /// Start even when the planned peak memory exceeds what is available (the device's memory,
    /// or on the CPU MemAvailable and the control group's limit).
    #[arg(long)]
    ignore_memory_check: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

/// A bar with step, loss, lr, tokens/s and ETA. It is drawn from the first step on (before,
/// its length is unknown and messages are plain lines), ticks every second so the elapsed time
/// moves during long steps, and shows each step's loss with that step's number.
struct BarProgress {
    bar: ProgressBar,
    /// Where the bar draws once it has started.
    target: Option<ProgressDrawTarget>,
}

impl BarProgress {
    fn new(target: ProgressDrawTarget) -> Self {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
            )
            .expect("valid template"),
        );
        BarProgress {
            bar,
            target: Some(target),
        }
    }
}

impl Progress for BarProgress {
    fn start(&mut self, total_steps: u64, done: u64) {
        self.bar.set_length(total_steps);
        self.bar.set_position(done);
        self.bar.reset_eta();
        if let Some(target) = self.target.take() {
            self.bar.set_draw_target(target);
            self.bar.enable_steady_tick(Duration::from_secs(1));
        }
    }

    fn step(&mut self, m: &StepMetrics) {
        let eval = m.evaluation();
        // The message first: draws are rate-limited, so the one the position triggers must
        // already carry this step's numbers.
        let rewards = m
            .preference
            .map(|p| {
                format!(
                    " acc {:.2} margin {:.3}",
                    p.rewards_accuracies, p.rewards_margins
                )
            })
            .unwrap_or_default();
        self.bar.set_message(format!(
            "loss {:.4}{rewards} lr {:.2e} {:.0} tok/s pad {:.0}%{eval}",
            m.loss,
            m.lr,
            m.tokens_per_s,
            100.0 * m.padding
        ));
        self.bar.set_position(m.step);
        if !eval.is_empty() {
            self.bar
                .println(format!("step {}: loss {:.4}{eval}", m.step, m.loss));
        }
    }

    fn message(&mut self, text: &str) {
        if self.target.is_none() {
            self.bar.println(text);
        } else {
            qlora_core::stderr::line(text);
        }
    }

    fn finish(&mut self) {
        self.bar.finish();
    }
}

pub fn run(args: TrainArgs, matches: &ArgMatches) -> Result<()> {
    let collective = distributed::init()?;
    if collective.world() == 1 {
        return train(args, matches, collective);
    }
    // A failing rank ends them all (MPI_Abort), naming itself, so the others never wait on it.
    let rank = collective.rank();
    let world = collective.world();
    distributed::abort_ranks_on_panic(rank);
    match train(args, matches, collective.clone()) {
        Ok(()) => Ok(()),
        Err(err) => {
            qlora_core::stderr::line(format_args!("error: rank {rank} of {world}: {err:#}"));
            collective.abort(1)
        }
    }
}

fn train(args: TrainArgs, matches: &ArgMatches, collective: Rc<dyn Collective>) -> Result<()> {
    let root = collective.rank() == 0;
    let (mut config, file) =
        TrainConfig::from_run_file_and_flags(args.config.as_deref(), &args.settings, matches)?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    if let Some(path) = args
        .config
        .as_deref()
        .filter(|_| !file.ignored.is_empty() && root)
    {
        qlora_core::stderr::line(format_args!(
            "warning: {}: ignoring settings of other tools' speed, memory layout or logging: {}",
            path.display(),
            file.ignored.join(", ")
        ));
    }
    config.validate()?;
    // One writer per --out, taken before anything loads (the root rank writes it).
    let lock = if root {
        let command: Vec<String> = std::env::args().collect();
        Some(OutputLock::acquire(&config.out, &command.join(" "))?)
    } else {
        None
    };
    config.model = resolve_model(&config.model)?;
    // axolotl's resume_from_checkpoint, unless --resume says otherwise.
    let resume_flag = args.resume.as_deref().or(file.resume.as_deref());
    let resume = resume_point(&config.out, resume_flag)?;
    // Refused before anything loads when the plan's peak does not fit (the root rank says).
    let planned = match (root, args.ignore_memory_check) {
        (false, _) => None,
        (true, false) => config.check_memory(args.device.device)?,
        (true, true) => config.planned_peak(args.device.device),
    };

    let mut progress: Box<dyn Progress> = if !root {
        Box::new(Quiet)
    } else if std::io::stderr().is_terminal() {
        Box::new(BarProgress::new(ProgressDrawTarget::stderr()))
    } else {
        Box::new(LogProgress::new(config.logging_steps))
    };
    if args.device.device == DeviceChoice::Cpu
        && let Some(threads) = distributed::share_cpu_threads(collective.local_world())
    {
        progress.message(&format!(
            "{} ranks on this machine: {threads} CPU thread{} each (set RAYON_NUM_THREADS to \
             choose)",
            collective.local_world(),
            if threads == 1 { "" } else { "s" }
        ));
    }

    let interrupt = Arc::new(AtomicBool::new(false));
    crate::signals::set_training(interrupt.clone());

    let mut trainer = Trainer::on_ranks(
        config,
        args.device.device,
        resume.as_deref(),
        progress.as_mut(),
        collective,
    )?;
    if lock.as_ref().is_some_and(|l| l.previous_holder_died()) {
        trainer.previous_run_died();
    }
    let summary = trainer.run(progress.as_mut(), &interrupt)?;
    if !root {
        return Ok(());
    }
    let memory = memory_line(&summary, planned);
    match summary.outcome {
        Outcome::Finished => {
            let before = summary
                .eval_loss_before
                .map(|l| format!(", eval loss {l:.4} before"))
                .unwrap_or_default();
            let after = summary
                .eval_loss_after
                .map(|l| format!(", {l:.4} after"))
                .unwrap_or_default();
            qlora_core::stderr::line(format_args!(
                "trained {} steps{before}{after}; adapter in {}",
                summary.steps,
                summary.out.display()
            ));
            if let Some(line) = memory {
                qlora_core::stderr::line(line);
            }
            // The curves are a convenience: failing to draw them does not fail the run.
            match crate::plot::draw(&summary.out, None) {
                Ok(path) => qlora_core::stderr::line(format_args!("curves in {}", path.display())),
                Err(e) => {
                    qlora_core::stderr::line(format_args!("warning: no training curves: {e:#}"))
                }
            }
        }
        Outcome::Interrupted => qlora_core::stderr::line(format_args!(
            "stopped at step {}, no final adapter; continue with --resume (checkpoint in {})",
            summary.steps,
            summary.out.display()
        )),
    }
    Ok(())
}

/// `memory: peak RSS 963.0 MiB; planned peak 950.0 MiB (qlora plan)`, with the device's memory
/// on a GPU: what the run took where users look, beside what the planner said.
fn memory_line(summary: &TrainSummary, planned: Option<u64>) -> Option<String> {
    let rss = summary.peak_rss_bytes?;
    let device = summary
        .device_memory_bytes
        .map(|b| {
            format!(
                ", device memory in use after a step up to {}",
                human_bytes(b)
            )
        })
        .unwrap_or_default();
    let planned = planned
        .map(|p| format!("; planned peak {} (qlora plan)", human_bytes(p)))
        .unwrap_or_default();
    Some(format!(
        "memory: peak RSS {}{device}{planned}",
        human_bytes(rss)
    ))
}

#[cfg(test)]
mod tests {
    use indicatif::InMemoryTerm;

    use super::*;

    fn metrics(step: u64, loss: f64) -> StepMetrics {
        StepMetrics {
            step,
            loss,
            lr: 2e-4,
            grad_norm: 1.0,
            tokens: 100,
            tokens_per_s: 50.0,
            padding: 0.0,
            eval_loss: None,
            mc_acc: None,
            mc_acc_norm: None,
            preference: None,
            eval_preference: None,
            device_memory_bytes: None,
            peak_rss_bytes: None,
        }
    }

    /// Nothing (no `0/0`) before the first step's length is known; afterwards each step's
    /// number stands next to that step's loss.
    #[test]
    fn the_bar_shows_each_step_with_its_own_loss() {
        let term = InMemoryTerm::new(4, 120);
        let mut progress = BarProgress::new(ProgressDrawTarget::term_like(Box::new(term.clone())));
        progress.message("loading the model");
        assert_eq!(term.contents().trim(), "", "drawn before the run started");
        progress.start(5, 0);
        progress.step(&metrics(1, 2.5));
        progress.step(&metrics(2, 1.25));
        std::thread::sleep(Duration::from_millis(1500));
        let screen = term.contents();
        let line = screen
            .lines()
            .find(|l| l.contains("/5"))
            .unwrap_or_default();
        assert!(
            line.contains(" 2/5 ") && line.contains("loss 1.2500"),
            "{screen:?}"
        );
        progress.finish();
    }
}
