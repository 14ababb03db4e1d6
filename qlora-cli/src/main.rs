//! `qlora`: fine-tune LLaMA-family models with QLoRA from the command line.

mod data_args;
mod eval;
mod generate;
mod import_gguf;
mod merge;
mod model_args;
mod plan;
mod quantize;
mod train;

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
    /// Fine-tune a QLoRA adapter on an instruction dataset.
    Train(Box<train::TrainArgs>),
    /// Merge a LoRA adapter into the base weights as a model transformers loads.
    Merge(merge::MergeArgs),
    /// Convert a GGUF file (llama.cpp) into a Hugging Face model directory.
    ImportGguf(import_gguf::ImportGgufArgs),
    /// Plan the peak memory of a training run before loading anything.
    Plan(plan::PlanArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Quantize(args) => quantize::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Train(args) => train::run(*args),
        Command::Merge(args) => merge::run(args),
        Command::ImportGguf(args) => import_gguf::run(args),
        Command::Plan(args) => plan::run(args),
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
