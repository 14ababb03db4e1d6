use std::path::PathBuf;

use anyhow::{Result, bail};
use bytesize::ByteSize;
use clap::{ArgMatches, Args};
use qlora_core::distributed::step_reduce_bytes;
use qlora_core::plan::{MemoryPlan, PlanSettings, alternatives, load_config, plan};
use qlora_core::preference::Method;
use qlora_core::train::TrainConfig;
use serde_json::json;

/// `train`'s flags (the same command line plans the run), plus what only a plan needs.
#[derive(Args)]
pub struct PlanArgs {
    /// train's settings file, TOML or an axolotl config (as `--config` of `qlora train`);
    /// flags override it.
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
    /// Ranks of a data-parallel run (`mpirun -np N`): each device's peak, the global batch and
    /// the all-reduce a step.
    #[arg(long, default_value_t = 1, help_heading = "Plan")]
    world_size: usize,
    /// Print the plan as JSON.
    #[arg(long, help_heading = "Plan")]
    json: bool,
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
    let rows = match run.preference.method {
        Method::Sft => "tokens".to_string(),
        method => format!(
            "tokens, a {method} pair a row (chosen and rejected, --seq-len each{})",
            if run.preference.needs_reference() && !run.preference.precompute_ref {
                "; the reference's forward pass shares the weights and peaks below the step"
            } else {
                ""
            }
        ),
    };
    format!(
        "assuming {} row{} of {} {rows} a micro-batch (--batch-size, --seq-len), {compute}, \
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
    let (run, _) =
        TrainConfig::from_run_file_and_flags(args.config.as_deref(), &args.settings, matches)?;
    if run.model.as_os_str().is_empty() {
        bail!("--model is required: a model directory, a config.json, or a preset");
    }
    let model = run.model.display().to_string();
    let config = load_config(&model)?;
    // Without --compute-dtype a plan is of f32 compute (our CPU kernels).
    let compute_bytes = run.compute_dtype.map_or(4, |d| d.size() as u64);
    let settings = run.plan_settings(args.seq_len, compute_bytes)?;
    let MemoryPlan {
        items,
        peak_bytes,
        host_bytes,
        parameters,
        trainable_parameters,
    } = plan(&config, &settings)?;
    if args.world_size == 0 {
        bail!("--world-size 0: expected at least 1 rank");
    }
    let world = args.world_size;
    let reduce_bytes = step_reduce_bytes(trainable_parameters);
    let global_batch = settings.batch_size * run.grad_accum * world;
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
        let mut value = value;
        if world > 1 {
            value["world_size"] = json!(world);
            value["global_batch_rows"] = json!(global_batch);
            value["allreduce_bytes_per_step"] = json!(reduce_bytes);
        }
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
    if world > 1 {
        println!(
            "on {world} ranks: the peak above on each device; --batch-size {} x --grad-accum {} \
             x {world} = {global_batch} rows a step; one all-reduce a step of {:.1} MB \
             ({trainable_parameters} adapter gradients, f32), each rank sending and receiving it",
            settings.batch_size,
            run.grad_accum,
            reduce_bytes as f64 / 1e6
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
