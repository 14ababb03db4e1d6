use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use bytesize::ByteSize;
use clap::Args;
use qlora_core::FloatDtype;
use qlora_core::quant::Nf4Config;
use qlora_core::quantize_model::{QuantizeOptions, quantize_model};

#[derive(Args)]
pub struct QuantizeArgs {
    /// Hugging Face model directory (config.json + safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Output directory for the 4-bit checkpoint.
    #[arg(long)]
    out: PathBuf,
    /// Dtype of the tensors kept dense and of the compute dtype (default: the model's).
    #[arg(long)]
    dtype: Option<FloatDtype>,
    /// Values per NF4 block (power of two, 32..4096).
    #[arg(long, default_value_t = 64)]
    blocksize: usize,
    /// Store the absmax of each block as f32 instead of double-quantizing it to 8 bits.
    #[arg(long)]
    no_double_quant: bool,
    /// Largest safetensors shard to write, e.g. 5GB or 500MiB.
    #[arg(long, default_value = "5GB")]
    max_shard_size: ByteSize,
    /// Replace the output directory if it exists.
    #[arg(long)]
    force: bool,
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    if args.max_shard_size.as_u64() == 0 {
        bail!("--max-shard-size must be positive");
    }
    let options = QuantizeOptions {
        nf4: Nf4Config {
            blocksize: args.blocksize,
            double_quant: !args.no_double_quant,
        },
        dtype: args.dtype,
        max_shard_bytes: args.max_shard_size.as_u64() as usize,
        overwrite: args.force,
    };
    let start = Instant::now();
    let report = quantize_model(&args.model, &args.out, &options)?;
    eprintln!(
        "quantized {} weights ({} parameters) to NF4, kept {} tensors dense: {} -> {} in {:.1}s; wrote {}",
        report.quantized_tensors,
        report.parameters_quantized,
        report.dense_tensors,
        ByteSize(report.bytes_in as u64),
        ByteSize(report.bytes_out as u64),
        start.elapsed().as_secs_f64(),
        report.out_dir.display()
    );
    Ok(())
}
