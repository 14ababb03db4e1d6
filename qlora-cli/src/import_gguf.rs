use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use bytesize::ByteSize;
use clap::Args;
use qlora_core::FloatDtype;
use qlora_core::gguf::{ImportOptions, import_gguf};

#[derive(Args)]
pub struct ImportGgufArgs {
    /// The GGUF file (llama.cpp, Ollama, LM Studio) of a LLaMA-family model.
    file: PathBuf,
    /// Output directory: a Hugging Face model directory.
    #[arg(long)]
    out: PathBuf,
    /// Dtype of the written weights: bf16 is what transformers loads from a GGUF (the
    /// dequantized values rounded to bf16); f32 keeps the dequantized values exactly.
    #[arg(long, default_value = "bf16")]
    dtype: FloatDtype,
    /// Largest safetensors shard to write, e.g. 5GB or 500MiB.
    #[arg(long, default_value = "5GB")]
    max_shard_size: ByteSize,
    /// Replace the output directory if it exists.
    #[arg(long)]
    force: bool,
}

pub fn run(args: ImportGgufArgs) -> Result<()> {
    if args.max_shard_size.as_u64() == 0 {
        bail!("--max-shard-size must be positive");
    }
    let options = ImportOptions {
        dtype: args.dtype,
        max_shard_bytes: args.max_shard_size.as_u64() as usize,
        overwrite: args.force,
    };
    let start = Instant::now();
    let summary = import_gguf(&args.file, &args.out, &options)?;
    let types: Vec<String> = summary
        .types
        .iter()
        .map(|(name, n)| format!("{n} {name}"))
        .collect();
    eprintln!(
        "imported {} tensors ({} parameters; {}) as {} in {:.1}s; wrote {}",
        summary.tensors,
        summary.parameters,
        types.join(", "),
        args.dtype.torch_name(),
        start.elapsed().as_secs_f64(),
        summary.out_dir.display()
    );
    Ok(())
}
