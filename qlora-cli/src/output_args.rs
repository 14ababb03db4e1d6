//! Where a command writes what it makes: declared once for every command that writes.

use std::path::PathBuf;

use anyhow::{Result, bail};
use bytesize::ByteSize;
use clap::Args;

/// `--out` and `--force`.
#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Where to write: the output directory (export-gguf: the .gguf file). Written under a
    /// staging name and renamed when complete.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace the output if it exists.
    #[arg(long)]
    pub force: bool,
}

/// `--out`, `--force` and `--max-shard-size`, for the commands that write safetensors.
#[derive(Args, Debug, Clone)]
pub struct ShardedOutputArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// Largest safetensors shard to write, e.g. 5GB or 500MiB.
    #[arg(long, default_value = "5GB")]
    pub max_shard_size: ByteSize,
}

impl ShardedOutputArgs {
    /// `--max-shard-size` in bytes, refused when 0.
    pub fn max_shard_bytes(&self) -> Result<usize> {
        if self.max_shard_size.as_u64() == 0 {
            bail!("--max-shard-size must be positive");
        }
        Ok(self.max_shard_size.as_u64() as usize)
    }
}
