use anyhow::{Result, bail};
use clap::Args;
use qlora_core::ComputeDtype;
use qlora_core::device::{DeviceChoice, describe, is_gpu};
use qlora_core::diagnose::{KernelCheck, selftest};
use serde_json::json;

/// `qlora selftest`'s flags.
#[derive(Args)]
pub struct SelftestArgs {
    /// cpu, wgpu[:N] or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// The dtype the NF4 matmuls and the head run in: f32, bf16 or f16 [default: bf16 on GPUs
    /// that have it, else f32].
    #[arg(long)]
    compute_dtype: Option<ComputeDtype>,
    /// Print the rows as JSON Lines instead of a table.
    #[arg(long)]
    json: bool,
}

fn row(check: &KernelCheck) -> String {
    let error = if check.limit == 0.0 {
        format!("{} differ", check.error)
    } else {
        format!("{:.2e}", check.error)
    };
    format!(
        "  {:<20} {:<6} {:<12} {:>12} {:>9.1e} {:>10.2} ms  {}",
        check.kernel,
        check.size,
        check.output,
        error,
        check.limit,
        check.seconds * 1e3,
        if check.passed() { "pass" } else { "FAIL" }
    )
}

pub fn run(args: SelftestArgs) -> Result<()> {
    let device = args.device.device()?;
    let compute = ComputeDtype::resolve(args.compute_dtype, &device)?;
    let d = describe(&device);
    let reference = if is_gpu(&device) {
        "the CPU's kernels"
    } else {
        "the tensor-op defaults"
    };
    if args.json {
        println!(
            "{}",
            json!({
                "device": args.device.to_string(),
                "name": d.name,
                "runtime": d.runtime,
                "memory_bytes": d.memory,
                "dtypes": d.dtypes,
                "compute_dtype": compute.to_string(),
                "reference": reference,
            })
        );
    } else {
        println!(
            "device {}: {} [{}], memory {}, dtypes {}",
            args.device,
            d.name,
            d.runtime,
            d.memory.map_or("not reported".to_string(), |m| format!(
                "{:.2} GiB",
                m as f64 / (1u64 << 30) as f64
            )),
            d.dtypes.join(" ")
        );
        println!(
            "every kernel against {reference}, matmuls in {compute}; error: largest difference \
             over the reference's largest magnitude (8-bit codes: steps of the map; masks, \
             dequantized weights and paging: values that differ)"
        );
        println!(
            "  {:<20} {:<6} {:<12} {:>12} {:>9} {:>13}  result",
            "kernel", "size", "worst output", "error", "limit", "time"
        );
    }
    let rows = selftest(&device, compute, &mut |check| {
        if args.json {
            println!(
                "{}",
                json!({
                    "kernel": check.kernel,
                    "size": check.size,
                    "output": check.output,
                    "error": check.error,
                    "limit": check.limit,
                    "seconds": check.seconds,
                    "pass": check.passed(),
                })
            );
        } else {
            println!("{}", row(check));
        }
    })?;
    let failed: Vec<String> = rows
        .iter()
        .filter(|c| !c.passed())
        .map(|c| format!("{} ({}, {})", c.kernel, c.size, c.output))
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} of {} checks failed on {}: {}",
            failed.len(),
            rows.len(),
            args.device,
            failed.join(", ")
        );
    }
    if !args.json {
        println!("all {} checks passed on {}", rows.len(), args.device);
    }
    Ok(())
}
