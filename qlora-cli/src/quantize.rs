use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use bytesize::ByteSize;
use clap::Args;
use qlora_core::FloatDtype;
use qlora_core::quant::Nf4Config;
use qlora_core::quantize_model::{QuantizeOptions, quantize_model};

use crate::output_args::ShardedOutputArgs;

#[derive(Args)]
pub struct QuantizeArgs {
    /// Hugging Face model directory (config.json + safetensors), or a repo id in the Hugging
    /// Face cache (ORG/NAME[@REVISION]).
    #[arg(long)]
    model: PathBuf,
    /// Dtype of the tensors kept dense and of the compute dtype (default: the model's).
    #[arg(long)]
    dtype: Option<FloatDtype>,
    /// Values per NF4 block (power of two, 32..4096).
    #[arg(long, default_value_t = 64)]
    blocksize: usize,
    /// Store the absmax of each block as f32 instead of double-quantizing it to 8 bits.
    #[arg(long)]
    no_double_quant: bool,
    #[command(flatten)]
    output: ShardedOutputArgs,
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    let options = QuantizeOptions {
        nf4: Nf4Config {
            blocksize: args.blocksize,
            double_quant: !args.no_double_quant,
        },
        dtype: args.dtype,
        max_shard_bytes: args.output.max_shard_bytes()?,
        overwrite: args.output.output.force,
    };
    let start = Instant::now();
    let model = qlora_core::gguf::resolve_model(&args.model)?;
    let report = quantize_model(&model, &args.output.output.out, &options)?;
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
