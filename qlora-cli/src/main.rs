//! `qlora`: fine-tune LLaMA-family models with QLoRA from the command line.

mod eval;
mod generate;
mod model_args;
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
    /// Generate text from a prompt or a chat message (the text goes to stdout).
    Generate(generate::GenerateArgs),
    /// Mean next-token loss and perplexity of a model on a dataset.
    Eval(eval::EvalArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Quantize(args) => quantize::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Eval(args) => eval::run(args),
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
