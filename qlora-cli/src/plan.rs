use anyhow::{Result, bail};
use bytesize::ByteSize;
use clap::Args;
use qlora_core::model::Bits;
use qlora_core::plan::{ALL_LINEAR, MemoryPlan, PlanSettings, load_config, plan};
use serde_json::json;

#[derive(Args)]
pub struct PlanArgs {
    /// A model directory, a config.json, or a preset: llama-7b, llama-13b, llama-33b,
    /// llama-65b, llama-2-70b, llama-3-8b.
    #[arg(long)]
    model: String,
    /// 4 (NF4 base, QLoRA) or 16 (dense base).
    #[arg(long, default_value = "4")]
    bits: Bits,
    #[arg(long, alias = "lora-r", default_value_t = 64)]
    rank: usize,
    /// `all-linear` or a comma-separated subset of q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj.
    #[arg(long, default_value = "all-linear")]
    target_modules: String,
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    #[arg(long)]
    no_gradient_checkpointing: bool,
    /// paged_adamw_32bit, paged_adamw_8bit, adamw_32bit or adamw_8bit.
    #[arg(long, default_value = "paged_adamw_32bit")]
    optim: String,
    /// Device memory the paged optimizer keeps resident.
    #[arg(long)]
    optim_device_budget_mb: Option<f64>,
    /// Compute dtype: f32 (CPU) or bf16/f16 (GPU).
    #[arg(long, default_value = "f32")]
    compute_dtype: String,
    /// Memory to fit in, e.g. 24GB.
    #[arg(long)]
    gpu_memory: Option<ByteSize>,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
}

fn settings(args: &PlanArgs) -> Result<PlanSettings> {
    let target_modules: Vec<String> = if args.target_modules == "all-linear" {
        ALL_LINEAR.iter().map(|s| s.to_string()).collect()
    } else {
        args.target_modules
            .split(',')
            .map(|s| s.trim().to_string())
            .collect()
    };
    if let Some(bad) = target_modules
        .iter()
        .find(|m| !ALL_LINEAR.contains(&m.as_str()))
    {
        bail!("--target-modules: unknown module `{bad}`");
    }
    let (paged, eight_bit) = match args.optim.as_str() {
        "paged_adamw_32bit" => (true, false),
        "paged_adamw_8bit" => (true, true),
        "adamw_32bit" => (false, false),
        "adamw_8bit" => (false, true),
        other => bail!("--optim: unknown optimizer `{other}`"),
    };
    if args.rank == 0 || args.batch_size == 0 || args.seq_len == 0 {
        bail!("--rank, --batch-size and --seq-len must be positive");
    }
    let compute_bytes = match args.compute_dtype.as_str() {
        "f32" => 4,
        "bf16" | "f16" => 2,
        other => bail!("--compute-dtype: expected f32, bf16 or f16, found `{other}`"),
    };
    Ok(PlanSettings {
        bits: args.bits,
        rank: args.rank,
        target_modules,
        batch_size: args.batch_size,
        seq_len: args.seq_len,
        gradient_checkpointing: !args.no_gradient_checkpointing,
        optimizer_8bit: eight_bit,
        optimizer_device_budget: match (paged, args.optim_device_budget_mb) {
            (true, Some(mb)) => Some((mb.max(0.0) * 1024.0 * 1024.0) as u64),
            _ => None,
        },
        compute_bytes,
    })
}

/// Changes that shrink the peak, each with its resulting figure.
fn alternatives(
    config: &qlora_core::config::LlamaConfig,
    base: &PlanSettings,
) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut try_change = |label: String, change: &dyn Fn(&mut PlanSettings)| {
        let mut s = base.clone();
        change(&mut s);
        if s != *base {
            out.push((label, plan(config, &s).peak_bytes));
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

pub fn run(args: PlanArgs) -> Result<()> {
    let config = load_config(&args.model)?;
    let settings = settings(&args)?;
    let MemoryPlan {
        items,
        peak_bytes,
        host_bytes,
        parameters,
        trainable_parameters,
    } = plan(&config, &settings);
    let limit = args.gpu_memory.map(|m| m.as_u64());
    let fits = limit.map(|l| peak_bytes <= l);
    let suggestions: Vec<(String, u64)> = match fits {
        Some(false) => alternatives(&config, &settings),
        _ => Vec::new(),
    };
    if args.json {
        let value = json!({
            "model": args.model,
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
        args.model, settings.rank
    );
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
