//! `qlora`: fine-tune LLaMA-family models with QLoRA from the command line.

mod alloc;
mod bar;
mod bench;
mod eval;
mod export_gguf;
mod generate;
mod import_gguf;
mod merge;
mod model_args;
mod output_args;
mod plan;
mod plot;
mod quantize;
mod selftest;
mod signals;
mod train;

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: alloc::Allocator = alloc::Allocator;

use clap::error::{ContextKind, ErrorKind};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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
    Generate(Box<generate::GenerateArgs>),
    /// Mean next-token loss and perplexity of a model on a dataset.
    Eval(Box<eval::EvalArgs>),
    /// Fine-tune a QLoRA adapter on an instruction dataset.
    #[command(
        override_usage = "qlora train --model <MODEL> --data <DATA> --out <OUT> [OPTIONS]\n       \
                          qlora train --config <FILE.toml> [OPTIONS]"
    )]
    Train(Box<train::TrainArgs>),
    /// Merge a LoRA adapter into the base weights as a model transformers loads.
    Merge(merge::MergeArgs),
    /// Convert a GGUF file (llama.cpp) into a Hugging Face model directory.
    ImportGguf(import_gguf::ImportGgufArgs),
    /// Write a model (with an adapter merged in) as one GGUF file for llama.cpp and Ollama.
    ExportGguf(export_gguf::ExportGgufArgs),
    /// Plan the peak memory of a training run before loading anything.
    Plan(Box<plan::PlanArgs>),
    /// Train a randomly initialised model of a shape on a device: tokens/s, the time of each
    /// phase, and peak memory against the plan (no weights, data or network needed).
    Bench(Box<bench::BenchArgs>),
    /// Check every kernel of a device against a reference on random inputs (exit 1 naming
    /// the kernels that fail).
    Selftest(selftest::SelftestArgs),
    /// Draw a training run's curves (loss, eval loss, learning rate, accuracy) as an SVG.
    Plot(plot::PlotArgs),
}

/// A bad value for a flag, on one line like every other error (clap's own message has a usage
/// block and exits with 2).
fn value_error(err: &clap::Error) -> Option<String> {
    if !matches!(
        err.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return None;
    }
    let flag = err.get(ContextKind::InvalidArg)?.to_string();
    let flag = flag
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let value = err.get(ContextKind::InvalidValue)?.to_string();
    let reason = std::error::Error::source(err)
        .map(ToString::to_string)
        .unwrap_or_else(|| match err.get(ContextKind::ValidValue) {
            Some(valid) => format!("expected one of {valid}"),
            None => "invalid".to_string(),
        });
    Some(format!("{flag} `{value}`: {reason}"))
}

fn main() -> ExitCode {
    // Mesa's Vulkan drivers (what wgpu runs on without a GPU, and on many Linux GPUs) print
    // "XDG_RUNTIME_DIR is invalid or not set" when it is unset, as on headless servers.
    #[cfg(unix)]
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
    let matches = match Cli::command().try_get_matches() {
        Ok(matches) => matches,
        Err(err) => match value_error(&err) {
            Some(line) => {
                qlora_core::stderr::line(format_args!("error: {line}"));
                return ExitCode::FAILURE;
            }
            None => err.exit(),
        },
    };
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Err(err) = signals::install() {
        qlora_core::stderr::line(format_args!(
            "error: cannot install the signal handlers: {err}"
        ));
        return ExitCode::FAILURE;
    }
    let sub = |name: &str| {
        matches
            .subcommand_matches(name)
            .expect("the subcommand ran")
    };
    let result = match cli.command {
        Command::Quantize(args) => quantize::run(args),
        Command::Generate(args) => generate::run(*args),
        Command::Eval(args) => eval::run(*args),
        Command::Train(args) => train::run(*args, sub("train")),
        Command::Merge(args) => merge::run(args),
        Command::ImportGguf(args) => import_gguf::run(args),
        Command::ExportGguf(args) => export_gguf::run(args),
        Command::Plan(args) => plan::run(*args, sub("plan")),
        Command::Plot(args) => plot::run(args),
        Command::Bench(args) => bench::run(*args),
        Command::Selftest(args) => selftest::run(args),
    };
    match result {
        // A run stopped by a signal after saving its checkpoint.
        Ok(()) if signals::received().is_some() => {
            ExitCode::from(signals::exit_code(signals::received().unwrap_or(2)) as u8)
        }
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the cause chain joined, naming the file and key.
            qlora_core::stderr::line(format_args!("error: {err:#}"));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_has_a_help_line() {
        let cli = Cli::command();
        let mut missing = Vec::new();
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{} {}", sub.get_name(), arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "flags without help: {missing:?}");
    }
}
