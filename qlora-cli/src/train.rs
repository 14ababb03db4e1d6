use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Result, bail};
use clap::{ArgMatches, Args};
use indicatif::{ProgressBar, ProgressStyle};
use qlora_core::device::DeviceChoice;
use qlora_core::gguf::resolve_model;
use qlora_core::train::{LogProgress, Outcome, Progress, StepMetrics, TrainConfig, Trainer};

#[derive(Args)]
pub struct TrainArgs {
    /// TOML file with the same keys as the flags (dashes as underscores); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: TrainConfig,
    /// Continue from the latest checkpoint in --out, or from the checkpoint directory given.
    #[arg(long, num_args = 0..=1, default_missing_value = "latest")]
    resume: Option<String>,
    /// Where to compute: cpu, wgpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
}

/// A bar with step, loss, lr, tokens/s and ETA.
struct BarProgress {
    bar: ProgressBar,
}

impl Progress for BarProgress {
    fn start(&mut self, total_steps: u64, done: u64) {
        self.bar.set_length(total_steps);
        self.bar.set_position(done);
        self.bar.reset_eta();
    }

    fn step(&mut self, m: &StepMetrics) {
        self.bar.set_position(m.step);
        let eval = m.evaluation();
        self.bar.set_message(format!(
            "loss {:.4} lr {:.2e} {:.0} tok/s pad {:.0}%{eval}",
            m.loss,
            m.lr,
            m.tokens_per_s,
            100.0 * m.padding
        ));
        if !eval.is_empty() {
            self.bar
                .println(format!("step {}: loss {:.4}{eval}", m.step, m.loss));
        }
    }

    fn message(&mut self, text: &str) {
        self.bar.println(text);
    }

    fn finish(&mut self) {
        self.bar.finish();
    }
}

/// What a paged optimizer does on this device, said once; on a GPU without
/// `--optim-device-budget-mb`, the budget the planner leaves.
fn optimizer_budget(
    config: &mut TrainConfig,
    device: DeviceChoice,
    progress: &mut dyn Progress,
) -> Result<()> {
    let optim = config.optim;
    if !optim.paged() {
        return Ok(());
    }
    if device == DeviceChoice::Cpu {
        let unpaged = if optim.eight_bit() {
            "adamw_8bit"
        } else {
            "bitsandbytes' 32-bit AdamW"
        };
        progress.message(&format!(
            "{optim} on the CPU: device memory is host memory, so nothing is paged and it runs \
             as {unpaged} (as in bitsandbytes)"
        ));
        return Ok(());
    }
    if config.optim_device_budget_mb.is_some() {
        return Ok(());
    }
    let device = device.device()?;
    match qlora_core::device::memory_capacity(&device) {
        Some(capacity) => {
            let compute = qlora_core::ComputeDtype::resolve(config.compute_dtype, &device)?;
            let (budget, peak) =
                crate::plan::automatic_optimizer_budget(config, capacity, compute.size() as u64)?;
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            config.optim_device_budget_mb = Some(mib(budget));
            progress.message(&format!(
                "{optim}: up to {:.0} MiB of optimizer state on the device ({:.0} MiB device \
                 memory - {:.0} MiB planned step peak); --optim-device-budget-mb sets it",
                mib(budget),
                mib(capacity),
                mib(peak)
            ));
        }
        None => progress.message(&format!(
            "{optim}: the device reports no memory capacity, so every state stays on it; \
             --optim-device-budget-mb sets a budget"
        )),
    }
    Ok(())
}

pub fn run(args: TrainArgs, matches: &ArgMatches) -> Result<()> {
    let mut config =
        TrainConfig::from_file_and_flags(args.config.as_deref(), &args.settings, matches)?;
    config.validate()?;
    config.model = resolve_model(&config.model)?;
    let out = config.out.clone();
    let resume = match args.resume.as_deref() {
        None => None,
        Some("latest") => match Trainer::latest_checkpoint(&out) {
            Some(dir) => Some(dir),
            None => bail!("{}: no checkpoint to resume from", out.display()),
        },
        Some(path) => Some(PathBuf::from(path)),
    };
    let previous_run =
        out.join("adapter_config.json").exists() || Trainer::latest_checkpoint(&out).is_some();
    if resume.is_none() && previous_run {
        bail!(
            "{}: holds a previous run; pass --resume to continue it or choose another --out",
            out.display()
        );
    }

    let mut progress: Box<dyn Progress> = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
            )
            .expect("valid template"),
        );
        Box::new(BarProgress { bar })
    } else {
        Box::new(LogProgress::new(config.logging_steps))
    };

    let interrupt = Arc::new(AtomicBool::new(false));
    crate::signals::set_training(interrupt.clone());

    optimizer_budget(&mut config, args.device, progress.as_mut())?;
    let mut trainer = Trainer::new(config, args.device, resume.as_deref(), progress.as_mut())?;
    let summary = trainer.run(progress.as_mut(), &interrupt)?;
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
            eprintln!(
                "trained {} steps{before}{after}; adapter in {}",
                summary.steps,
                summary.out.display()
            );
            // The curves are a convenience: failing to draw them does not fail the run.
            match crate::plot::draw(&summary.out, None) {
                Ok(path) => eprintln!("curves in {}", path.display()),
                Err(e) => eprintln!("warning: no training curves: {e:#}"),
            }
        }
        Outcome::Interrupted => eprintln!(
            "stopped at step {}, no final adapter; continue with --resume (checkpoint in {})",
            summary.steps,
            summary.out.display()
        ),
    }
    Ok(())
}
