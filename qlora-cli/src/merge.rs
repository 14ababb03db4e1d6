use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use bytesize::ByteSize;
use clap::Args;
use qlora_core::FloatDtype;
use qlora_core::gguf::resolve_model;
use qlora_core::merge::{MergeBase, MergeOptions, merge_model};

use crate::output_args::ShardedOutputArgs;

#[derive(Args)]
pub struct MergeArgs {
    /// The base model directory the adapter was trained on.
    #[arg(long)]
    model: PathBuf,
    /// The PEFT adapter directory.
    #[arg(long)]
    adapter: PathBuf,
    /// dequantized (the NF4 weight the adapter trained against) or original (the
    /// full-precision weight) [default: dequantized for QLoRA adapters].
    #[arg(long)]
    base: Option<MergeBase>,
    /// bf16, f16 or f32 [default: the base checkpoint's].
    #[arg(long)]
    dtype: Option<FloatDtype>,
    /// Write a bitsandbytes NF4 checkpoint instead of dense weights (`--quantize nf4`).
    #[arg(long)]
    quantize: Option<String>,
    #[command(flatten)]
    output: ShardedOutputArgs,
}

pub fn run(args: MergeArgs) -> Result<()> {
    let quantize_nf4 = match args.quantize.as_deref() {
        None => false,
        Some("nf4") => true,
        Some(other) => bail!("--quantize supports nf4, got `{other}`"),
    };
    let options = MergeOptions {
        base: args.base,
        dtype: args.dtype,
        quantize_nf4,
        max_shard_bytes: args.output.max_shard_bytes()?,
        overwrite: args.output.output.force,
    };
    let start = Instant::now();
    let report = merge_model(
        &resolve_model(&args.model)?,
        &args.adapter,
        &args.output.output.out,
        &options,
    )?;
    crate::model_args::warn_ignored_modules(&args.adapter, &report.ignored_modules);
    eprintln!(
        "merged {} adapters into the {} base, wrote {} ({}) in {:.1}s to {}",
        report.merged,
        match report.base {
            MergeBase::Dequantized => "dequantized NF4",
            MergeBase::Original => "original",
        },
        ByteSize(report.bytes_out as u64),
        if quantize_nf4 {
            "NF4".to_string()
        } else {
            report.dtype.to_string()
        },
        start.elapsed().as_secs_f64(),
        args.output.output.out.display()
    );
    Ok(())
}
