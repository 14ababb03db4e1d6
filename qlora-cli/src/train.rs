use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use qlora_core::device::DeviceChoice;
use qlora_core::gguf::resolve_model;
use qlora_core::train::{LogProgress, Outcome, Progress, StepMetrics, TrainSettings, Trainer};

/// Every flag is optional here so that `--config FILE.toml` can supply it; defaults (the QLoRA
/// paper's) are filled after merging, and the effective configuration is written to OUT.
#[derive(Args)]
pub struct TrainArgs {
    /// TOML file with the same keys as the flags (dashes as underscores); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Hugging Face model directory, or a GGUF file (imported into the cache on first use).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Training data (JSON Lines or JSON array).
    #[arg(long)]
    data: Option<PathBuf>,
    /// alpaca, input-output, oasst, guanaco, messages or text (default: detected).
    #[arg(long)]
    format: Option<String>,
    /// Output directory: checkpoints, metrics.jsonl and the final adapter.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Held-out data for evaluation (instead of --eval-fraction).
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// Fraction of the data held out for evaluation [default: 0].
    #[arg(long)]
    eval_fraction: Option<f64>,
    /// 4 (NF4 base, QLoRA) or 16 (dense base, LoRA) [default: 4].
    #[arg(long)]
    bits: Option<u32>,
    /// LoRA rank [default: 64].
    #[arg(long, visible_alias = "lora-r")]
    rank: Option<usize>,
    /// LoRA alpha [default: 16].
    #[arg(long, visible_alias = "lora-alpha")]
    alpha: Option<f64>,
    /// LoRA dropout [default: 0.05].
    #[arg(long, visible_alias = "lora-dropout")]
    dropout: Option<f64>,
    /// all-linear, or a comma-separated subset of q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj.
    #[arg(long)]
    target_modules: Option<String>,
    /// Scale adapters by alpha/sqrt(r).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    use_rslora: Option<bool>,
    /// kaiming-uniform or gaussian [default: kaiming-uniform].
    #[arg(long)]
    lora_init: Option<String>,
    /// Learning rate [default: 2e-4].
    #[arg(long, visible_alias = "learning-rate")]
    lr: Option<f64>,
    /// Decoupled weight decay [default: 0].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Sequences per micro-batch [default: 1].
    #[arg(long, visible_alias = "per-device-train-batch-size")]
    batch_size: Option<usize>,
    /// Micro-batches per optimizer step [default: 16].
    #[arg(long, visible_alias = "gradient-accumulation-steps")]
    grad_accum: Option<usize>,
    /// Optimizer steps (overrides --epochs).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Passes over the data [default: 1].
    #[arg(long, visible_alias = "num-train-epochs")]
    epochs: Option<u64>,
    /// constant, linear or cosine [default: constant].
    #[arg(long, visible_alias = "lr-scheduler-type")]
    schedule: Option<String>,
    /// Warmup as a fraction of the steps [default: 0.03].
    #[arg(long)]
    warmup_ratio: Option<f64>,
    /// Warmup steps (overrides --warmup-ratio).
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// paged_adamw_32bit, paged_adamw_8bit, adamw_32bit or adamw_8bit [default: paged_adamw_32bit].
    #[arg(long)]
    optim: Option<String>,
    /// Device memory the paged optimizer may keep resident (MiB) [default: unlimited].
    #[arg(long)]
    optim_device_budget_mb: Option<f64>,
    /// Global gradient-norm clipping; 0 disables [default: 0.3].
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// Save a checkpoint every N steps [default: 250].
    #[arg(long)]
    save_steps: Option<u64>,
    /// Keep only the newest N checkpoints.
    #[arg(long)]
    save_total_limit: Option<usize>,
    /// Evaluate on the held-out data every N steps (and always at the end).
    #[arg(long)]
    eval_steps: Option<u64>,
    /// Log a line every N steps when not on a terminal [default: 10].
    #[arg(long)]
    logging_steps: Option<u64>,
    /// Seed for adapter init, data order, splits and dropout [default: 42].
    #[arg(long)]
    seed: Option<u64>,
    /// Keep every activation instead of recomputing layers in the backward pass.
    #[arg(long)]
    no_gradient_checkpointing: bool,
    #[arg(long)]
    source_max_len: Option<usize>,
    #[arg(long)]
    target_max_len: Option<usize>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    train_on_source: Option<bool>,
    /// guanaco or chat: how OpenAssistant conversations are written.
    #[arg(long)]
    template: Option<String>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    oasst_top_ranked: Option<bool>,
    #[arg(long, value_delimiter = ',')]
    lang: Option<Vec<String>>,
    /// Batch sequences of similar length together.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    group_by_length: Option<bool>,
    /// f32 or bf16 for the final adapter [default: f32].
    #[arg(long)]
    adapter_dtype: Option<String>,
    /// Continue from the latest checkpoint in --out, or from the checkpoint directory given.
    #[arg(long, num_args = 0..=1, default_missing_value = "latest")]
    resume: Option<String>,
    /// cpu, wgpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
}

impl TrainArgs {
    fn settings(&self) -> TrainSettings {
        TrainSettings {
            model: self.model.clone(),
            data: self.data.clone(),
            format: self.format.clone(),
            out: self.out.clone(),
            eval_data: self.eval_data.clone(),
            eval_fraction: self.eval_fraction,
            bits: self.bits,
            rank: self.rank,
            alpha: self.alpha,
            dropout: self.dropout,
            target_modules: self.target_modules.clone(),
            use_rslora: self.use_rslora,
            lora_init: self.lora_init.clone(),
            lr: self.lr,
            weight_decay: self.weight_decay,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            max_steps: self.max_steps,
            epochs: self.epochs,
            schedule: self.schedule.clone(),
            warmup_ratio: self.warmup_ratio,
            warmup_steps: self.warmup_steps,
            optim: self.optim.clone(),
            optim_device_budget_mb: self.optim_device_budget_mb,
            max_grad_norm: self.max_grad_norm,
            save_steps: self.save_steps,
            save_total_limit: self.save_total_limit,
            eval_steps: self.eval_steps,
            logging_steps: self.logging_steps,
            seed: self.seed,
            gradient_checkpointing: self.no_gradient_checkpointing.then_some(false),
            source_max_len: self.source_max_len,
            target_max_len: self.target_max_len,
            train_on_source: self.train_on_source,
            template: self.template.clone(),
            oasst_top_ranked: self.oasst_top_ranked,
            lang: self.lang.clone(),
            group_by_length: self.group_by_length,
            adapter_dtype: self.adapter_dtype.clone(),
        }
    }
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
        let eval = m
            .eval_loss
            .map(|e| format!(" eval {e:.4}"))
            .unwrap_or_default();
        self.bar.set_message(format!(
            "loss {:.4} lr {:.2e} {:.0} tok/s{eval}",
            m.loss, m.lr, m.tokens_per_s
        ));
        if m.eval_loss.is_some() {
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

pub fn run(args: TrainArgs) -> Result<()> {
    let from_file = match &args.config {
        Some(path) => TrainSettings::from_toml_file(path)?,
        None => TrainSettings::default(),
    };
    let mut config = from_file.overridden_by(args.settings()).resolve()?;
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
    {
        let flag = interrupt.clone();
        ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                // A second Ctrl-C: stop now.
                std::process::exit(130);
            }
            eprintln!(
                "\ninterrupted: saving a checkpoint after this step (Ctrl-C again to quit now)"
            );
        })
        .context("cannot install the Ctrl-C handler")?;
    }

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
        }
        Outcome::Interrupted => eprintln!(
            "stopped at step {}; continue with --resume (checkpoint in {})",
            summary.steps,
            summary.out.display()
        ),
    }
    Ok(())
}
