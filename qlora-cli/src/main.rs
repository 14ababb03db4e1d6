//! `qlora`: fine-tune LLaMA-family models with QLoRA from the command line.

mod quantize;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "qlora",
    version,
    about = "QLoRA fine-tuning for LLaMA-family models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Quantize a Hugging Face model to a bitsandbytes NF4 (4-bit) checkpoint.
    Quantize(quantize::QuantizeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Quantize(args) => quantize::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the cause chain joined, naming the file and key.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
