use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use qlora_core::FloatDtype;
use qlora_core::gguf::{ImportOptions, import_gguf};

use crate::output_args::ShardedOutputArgs;

#[derive(Args)]
pub struct ImportGgufArgs {
    /// The GGUF file (llama.cpp, Ollama, LM Studio) of a LLaMA-family model.
    file: PathBuf,
    /// Dtype of the written weights: bf16 is what transformers loads from a GGUF (the
    /// dequantized values rounded to bf16); f32 keeps the dequantized values exactly.
    #[arg(long, default_value = "bf16")]
    dtype: FloatDtype,
    #[command(flatten)]
    output: ShardedOutputArgs,
}

pub fn run(args: ImportGgufArgs) -> Result<()> {
    let options = ImportOptions {
        dtype: args.dtype,
        max_shard_bytes: args.output.max_shard_bytes()?,
        overwrite: args.output.output.force,
    };
    let start = Instant::now();
    let summary = import_gguf(&args.file, &args.output.output.out, &options)?;
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
