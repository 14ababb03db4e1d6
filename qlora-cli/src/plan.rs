use std::path::PathBuf;

use anyhow::{Result, bail};
use bytesize::ByteSize;
use clap::{ArgMatches, Args};
use qlora_core::lora::LoraConfig;
use qlora_core::model::Bits;
use qlora_core::plan::{MemoryPlan, PlanSettings, load_config, plan};
use qlora_core::train::TrainConfig;
use serde_json::json;

/// `train`'s flags (the same command line plans the run), plus what only a plan needs.
#[derive(Args)]
pub struct PlanArgs {
    /// TOML file with train's settings (as `--config` of `qlora train`); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: TrainConfig,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 512, help_heading = "Plan")]
    seq_len: usize,
    /// Memory to fit in, e.g. 24GB.
    #[arg(long, help_heading = "Plan")]
    gpu_memory: Option<ByteSize>,
    /// Print the plan as JSON.
    #[arg(long, help_heading = "Plan")]
    json: bool,
}

fn settings(args: &PlanArgs, run: &TrainConfig) -> Result<PlanSettings> {
    if run.rank == 0 || run.batch_size == 0 || args.seq_len == 0 {
        bail!("--rank, --batch-size and --seq-len must be positive");
    }
    // Without --compute-dtype a plan is of f32 compute (our CPU kernels).
    let compute_bytes = run.compute_dtype.map_or(4, |d| d.size() as u64);
    Ok(PlanSettings {
        bits: run.bits,
        rank: run.rank,
        target_modules: LoraConfig::parse_target_modules(&run.target_modules)?,
        batch_size: run.batch_size,
        seq_len: args.seq_len,
        gradient_checkpointing: run.gradient_checkpointing,
        optimizer_8bit: run.optim.eight_bit(),
        optimizer_device_budget: match (run.optim.paged(), run.optim_device_budget_mb) {
            (true, Some(mb)) => Some((mb.max(0.0) * 1024.0 * 1024.0) as u64),
            _ => None,
        },
        compute_bytes,
    })
}

/// Device memory a paged optimizer may keep its states in when no budget is given: what the
/// planner leaves of the device's `capacity` after the step's peak with no state resident
/// (rows of `--max-seq-len` tokens, `compute_bytes` a value). Returns the budget and that
/// planned peak.
pub fn automatic_optimizer_budget(
    run: &TrainConfig,
    capacity: u64,
    compute_bytes: u64,
) -> Result<(u64, u64)> {
    let config = load_config(&run.model.to_string_lossy())?;
    let settings = PlanSettings {
        bits: run.bits,
        rank: run.rank,
        target_modules: LoraConfig::parse_target_modules(&run.target_modules)?,
        batch_size: run.batch_size,
        seq_len: run.max_seq_len,
        gradient_checkpointing: run.gradient_checkpointing,
        optimizer_8bit: run.optim.eight_bit(),
        optimizer_device_budget: Some(0),
        compute_bytes,
    };
    let peak = plan(&config, &settings)?.peak_bytes;
    Ok((capacity.saturating_sub(peak), peak))
}

/// Changes that shrink the peak, each with its resulting figure.
fn alternatives(
    config: &qlora_core::config::ModelConfig,
    base: &PlanSettings,
) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut try_change = |label: String, change: &dyn Fn(&mut PlanSettings)| {
        let mut s = base.clone();
        change(&mut s);
        if s != *base
            && let Ok(p) = plan(config, &s)
        {
            out.push((label, p.peak_bytes));
        }
    };
    if base.batch_size > 1 {
        try_change(
            format!(
                "--batch-size {} (raise --grad-accum to keep the effective batch)",
                base.batch_size / 2
            ),
            &|s| s.batch_size /= 2,
        );
    }
    if base.seq_len > 128 {
        try_change(format!("--seq-len {}", base.seq_len / 2), &|s| {
            s.seq_len /= 2
        });
    }
    if !base.gradient_checkpointing {
        try_change("gradient checkpointing on".into(), &|s| {
            s.gradient_checkpointing = true
        });
    }
    if base.rank > 16 {
        try_change("--rank 16".into(), &|s| s.rank = 16);
    }
    if !base.optimizer_8bit {
        try_change("--optim paged_adamw_8bit".into(), &|s| {
            s.optimizer_8bit = true
        });
    }
    if base.optimizer_device_budget != Some(0) {
        try_change(
            "paged optimizer with --optim-device-budget-mb 0".into(),
            &|s| s.optimizer_device_budget = Some(0),
        );
    }
    if base.bits == Bits::Sixteen {
        try_change("--bits 4".into(), &|s| s.bits = Bits::Four);
    }
    out
}

fn gib(bytes: u64) -> String {
    ByteSize(bytes).display().iec().to_string()
}

/// What the plan assumed, for its header: the shape of a step, the dtypes and the units.
fn assumptions(run: &TrainConfig, settings: &PlanSettings, limit: Option<u64>) -> String {
    let compute = match run.compute_dtype {
        Some(dtype) => format!("{dtype} compute"),
        None => "f32 compute (train's default on the CPU; --compute-dtype bf16 for a GPU with \
                 bf16, train's default there)"
            .to_string(),
    };
    let memory = match limit {
        Some(bytes) => format!(
            "; --gpu-memory {} bytes = {} (GB is 10^9 bytes, GiB 2^30)",
            bytes,
            gib(bytes)
        ),
        None => String::new(),
    };
    format!(
        "assuming {} row{} of {} tokens a micro-batch (--batch-size, --seq-len), {compute}, \
         AdamW {}-bit states{}, gradient checkpointing {}; sizes in GiB (2^30 bytes){memory}",
        settings.batch_size,
        if settings.batch_size == 1 { "" } else { "s" },
        settings.seq_len,
        if settings.optimizer_8bit { 8 } else { 32 },
        if run.optim.paged() { ", paged" } else { "" },
        if settings.gradient_checkpointing {
            "on"
        } else {
            "off"
        },
    )
}

pub fn run(args: PlanArgs, matches: &ArgMatches) -> Result<()> {
    let run = TrainConfig::from_file_and_flags(args.config.as_deref(), &args.settings, matches)?;
    if run.model.as_os_str().is_empty() {
        bail!("--model is required: a model directory, a config.json, or a preset");
    }
    let model = run.model.display().to_string();
    let config = load_config(&model)?;
    let settings = settings(&args, &run)?;
    let MemoryPlan {
        items,
        peak_bytes,
        host_bytes,
        parameters,
        trainable_parameters,
    } = plan(&config, &settings)?;
    let limit = args.gpu_memory.map(|m| m.as_u64());
    let fits = limit.map(|l| peak_bytes <= l);
    let suggestions: Vec<(String, u64)> = match fits {
        Some(false) => alternatives(&config, &settings),
        _ => Vec::new(),
    };
    if args.json {
        let value = json!({
            "model": model,
            "assumptions": {
                "batch_size": settings.batch_size,
                "seq_len": settings.seq_len,
                "compute_dtype": run.compute_dtype.map_or("f32".to_string(), |d| d.to_string()),
                "optimizer_bits": if settings.optimizer_8bit { 8 } else { 32 },
                "gradient_checkpointing": settings.gradient_checkpointing,
            },
            "parameters": parameters,
            "trainable_parameters": trainable_parameters,
            "items": items.iter().map(|i| json!({"key": i.key, "bytes": i.bytes, "detail": i.detail})).collect::<Vec<_>>(),
            "peak_bytes": peak_bytes,
            "host_bytes": host_bytes,
            "memory_bytes": limit,
            "fits": fits,
            "suggestions": suggestions.iter().map(|(c, b)| json!({"change": c, "peak_bytes": b, "fits": limit.map(|l| *b <= l)})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!(
        "{}: {parameters} parameters, {trainable_parameters} trainable (LoRA r {})",
        model, settings.rank
    );
    println!("{}", assumptions(&run, &settings, limit));
    for item in &items {
        println!(
            "  {:<22} {:>12}  {}",
            item.key,
            gib(item.bytes),
            item.detail
        );
    }
    println!("  {:<22} {:>12}", "peak", gib(peak_bytes));
    if host_bytes > 0 {
        println!(
            "  (+ {} of optimizer state paged to host memory)",
            gib(host_bytes)
        );
    }
    if let (Some(limit), Some(fits)) = (limit, fits) {
        if fits {
            println!("fits in {} ({} free)", gib(limit), gib(limit - peak_bytes));
        } else {
            println!(
                "does not fit in {}; changes and the peak they give:",
                gib(limit)
            );
            for (change, bytes) in &suggestions {
                let mark = if *bytes <= limit { "fits" } else { "" };
                println!("  {change:<60} {:>12}  {mark}", gib(*bytes));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_automatic_budget_is_what_the_plan_leaves() {
        let run = TrainConfig {
            model: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-llama"),
            optim: qlora_core::train::OptimizerKind::PagedAdamW8,
            ..TrainConfig::default()
        };
        let gib = 1 << 30;
        let (budget, peak) = automatic_optimizer_budget(&run, gib, 4).unwrap();
        assert!(peak > 0 && budget == gib - peak, "{budget} {peak}");
        // A device smaller than the step leaves nothing: every state is paged.
        assert_eq!(automatic_optimizer_budget(&run, peak / 2, 4).unwrap().0, 0);
    }
}
