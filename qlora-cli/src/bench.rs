use anyhow::{Result, bail};
use bytesize::ByteSize;
use clap::Args;
use qlora_core::ComputeDtype;
use qlora_core::device::{DeviceChoice, DeviceDescription, describe};
use qlora_core::diagnose::{BenchPlan, BenchSettings, plan_bench, run_bench};
use qlora_core::train::OptimizerKind;
use serde_json::json;

/// `qlora bench`'s flags.
#[derive(Args)]
pub struct BenchArgs {
    /// The model's shape: a preset (llama-3.2-1b, llama-3.1-8b, ... as `qlora plan` lists
    /// them), a config.json, or a model directory (only its config is read).
    #[arg(long)]
    shape: String,
    /// cpu, wgpu[:N] or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Tokens a row.
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Rows a step.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// LoRA's rank, on all seven projections.
    #[arg(long, visible_alias = "lora-r", default_value_t = 64)]
    rank: usize,
    /// Timed steps, after one that warms up.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// paged_adamw_32bit, paged_adamw_8bit, adamw_32bit or adamw_8bit.
    #[arg(long, default_value_t = OptimizerKind::PagedAdamW32)]
    optim: OptimizerKind,
    /// f32, bf16 or f16 [default: bf16 on GPUs that have it, else f32].
    #[arg(long)]
    compute_dtype: Option<ComputeDtype>,
    /// Keep every activation instead of recomputing layers in the backward pass.
    #[arg(long = "no-gradient-checkpointing", action = clap::ArgAction::SetFalse)]
    gradient_checkpointing: bool,
    /// Memory the run must fit in, e.g. 24GiB (GB is 10^9 bytes, GiB 2^30): says whether the
    /// plan and the measured peak fit.
    #[arg(long)]
    memory_limit: Option<ByteSize>,
    /// Only plan: say whether the shape fits, building nothing.
    #[arg(long)]
    dry_run: bool,
    /// Seed of the random weights, adapters and tokens.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print the figures as one JSON object.
    #[arg(long)]
    json: bool,
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// The header lines: the device, then what is trained.
fn header(args: &BenchArgs, planned: &BenchPlan, device: Option<&DeviceDescription>) {
    if let Some(d) = device {
        println!(
            "device {}: {} [{}], memory {}, dtypes {}",
            args.device,
            d.name,
            d.runtime,
            d.memory.map_or("not reported".to_string(), gib),
            d.dtypes.join(" ")
        );
    }
    let c = &planned.config;
    println!(
        "shape {}: {} layers, hidden {}, intermediate {}, {} heads ({} KV), vocabulary {}; {} \
         parameters, NF4 base; LoRA r {} on all 7 projections ({} trainable); {} row{} of {} \
         tokens, {}, {} compute, gradient checkpointing {}",
        args.shape,
        c.num_hidden_layers,
        c.hidden_size,
        c.intermediate_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.vocab_size,
        planned.plan.parameters,
        args.rank,
        planned.plan.trainable_parameters,
        args.batch_size,
        if args.batch_size == 1 { "" } else { "s" },
        args.seq_len,
        args.optim,
        planned.compute,
        if args.gradient_checkpointing {
            "on"
        } else {
            "off"
        },
    );
}

fn fits_line(what: &str, bytes: u64, limit: Option<u64>) -> String {
    match limit {
        Some(limit) => format!(
            "{what} {} {} the limit of {}",
            gib(bytes),
            if bytes <= limit {
                "fits in"
            } else {
                "does NOT fit in"
            },
            gib(limit)
        ),
        None => format!("{what} {}", gib(bytes)),
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    let settings = BenchSettings {
        shape: args.shape.clone(),
        device: args.device,
        seq_len: args.seq_len,
        batch_size: args.batch_size,
        rank: args.rank,
        steps: args.steps,
        optim: args.optim,
        compute_dtype: args.compute_dtype,
        gradient_checkpointing: args.gradient_checkpointing,
        seed: args.seed,
    };
    let limit = args.memory_limit.map(|m| m.as_u64());
    if args.dry_run {
        // No device is touched: the plan's compute dtype is the one asked for, or what train
        // would pick there: bf16 on CUDA (every card since Ampere has it), f32 elsewhere (the
        // CPU's kernels; WGSL has no bf16).
        let mut settings = settings;
        if settings.compute_dtype.is_none() && matches!(settings.device, DeviceChoice::Cuda(_)) {
            settings.compute_dtype = Some(ComputeDtype::Bf16);
        }
        let planned = plan_bench(&settings, None)?;
        let peak = planned.plan.peak_bytes;
        if args.json {
            println!(
                "{}",
                json!({
                    "shape": args.shape,
                    "device": args.device.to_string(),
                    "compute_dtype": planned.compute.to_string(),
                    "planned_peak_bytes": peak,
                    "memory_limit_bytes": limit,
                    "fits": limit.map(|l| peak <= l),
                })
            );
        } else {
            header(&args, &planned, None);
            println!(
                "{} (planned, nothing built: --dry-run)",
                fits_line("peak", peak, limit)
            );
        }
        return Ok(());
    }
    let device = args.device.device()?;
    let planned = plan_bench(&settings, Some(&device))?;
    if !args.json {
        header(&args, &planned, Some(&describe(&device)));
        println!(
            "{} (planned)",
            fits_line("peak", planned.plan.peak_bytes, limit)
        );
    }
    let report = run_bench(&settings, &mut |line| eprintln!("  {line}"))?;
    let planned_peak = report.plan.plan.peak_bytes;
    let ratio = report.measured_peak.map(|m| m as f64 / planned_peak as f64);
    if args.json {
        let d = describe(&device);
        println!(
            "{}",
            json!({
                "shape": args.shape,
                "device": args.device.to_string(),
                "device_name": d.name,
                "runtime": d.runtime,
                "device_memory_bytes": d.memory,
                "dtypes": d.dtypes,
                "compute_dtype": report.plan.compute.to_string(),
                "seq_len": args.seq_len,
                "batch_size": args.batch_size,
                "rank": args.rank,
                "optim": args.optim.to_string(),
                "steps": args.steps,
                "build_seconds": report.build_seconds,
                "tokens_per_s": report.tokens_per_s,
                "step_seconds": report.step_seconds,
                "loss_first": report.losses.0,
                "loss_last": report.losses.1,
                "phases_ms": report.phases.iter().map(|(p, d)| (p.name().to_string(), json!(d.as_secs_f64() * 1e3))).collect::<serde_json::Map<_, _>>(),
                "measured": report.measured_what,
                "measured_peak_bytes": report.measured_peak,
                "planned_peak_bytes": planned_peak,
                "measured_over_planned": ratio,
                "memory_limit_bytes": limit,
                "fits": limit.map(|l| report.measured_peak.unwrap_or(planned_peak).max(planned_peak) <= l),
            })
        );
        return Ok(());
    }
    println!(
        "{:.1} tokens/s, {:.3} s a step (mean of {} after one warm-up), model built in {:.1} s, \
         loss {:.4} -> {:.4}",
        report.tokens_per_s,
        report.step_seconds,
        args.steps,
        report.build_seconds,
        report.losses.0,
        report.losses.1
    );
    let step = std::time::Duration::from_secs_f64(report.step_seconds);
    for line in qlora_core::profile::table(&report.phases, step) {
        println!("{line}");
    }
    match (report.measured_peak, ratio) {
        (Some(measured), Some(ratio)) => println!(
            "{} against {} planned: {:+.1}% ({} the planner's 10%)",
            fits_line(report.measured_what, measured, limit),
            gib(planned_peak),
            100.0 * (ratio - 1.0),
            if (ratio - 1.0).abs() <= 0.10 {
                "within"
            } else {
                "outside"
            }
        ),
        _ => println!(
            "{} not reported by this device; planned {}",
            report.measured_what,
            gib(planned_peak)
        ),
    }
    if !report.losses.1.is_finite() {
        bail!("the loss is not finite");
    }
    Ok(())
}
