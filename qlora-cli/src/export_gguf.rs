use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use bytesize::ByteSize;
use clap::Args;
use qlora_core::export::{ExportOptions, GgufType, export_gguf};
use qlora_core::gguf::resolve_model;
use qlora_core::merge::MergeBase;

use crate::output_args::OutputArgs;

#[derive(Args)]
pub struct ExportGgufArgs {
    /// The base model (a directory or a GGUF file), or an already merged model.
    #[arg(long)]
    model: PathBuf,
    /// A LoRA adapter (ours or PEFT's) to merge into the base first.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k_m, q5_k_m or q6_k (llama.cpp's names;
    /// mixes give tensors llama-quantize's types).
    #[arg(long = "type", default_value_t = GgufType::Q8_0)]
    kind: GgufType,
    /// With --adapter: dequantized (the NF4 weight the adapter trained against) or original
    /// (the full-precision weight) [default: dequantized for QLoRA adapters].
    #[arg(long)]
    base: Option<MergeBase>,
    /// The model's name in the file (general.name) [default: the model directory's name].
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    output: OutputArgs,
}

pub fn run(args: ExportGgufArgs) -> Result<()> {
    let start = Instant::now();
    let options = ExportOptions {
        kind: args.kind,
        base: args.base,
        name: args.name,
        overwrite: args.output.force,
    };
    let model = resolve_model(&args.model)?;
    let report = export_gguf(&model, args.adapter.as_deref(), &args.output.out, &options)?;
    if let Some(adapter) = &args.adapter {
        crate::model_args::warn_ignored_modules(adapter, &report.ignored_modules);
        eprintln!(
            "merged {} adapters into the {} base",
            report.merged,
            match report.base {
                MergeBase::Dequantized => "dequantized NF4",
                MergeBase::Original => "original",
            }
        );
    }
    let types: Vec<String> = report
        .types
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect();
    eprintln!(
        "wrote {} tensors ({}) as {}, {} in {:.1}s, to {}",
        report.tensors,
        types.join(", "),
        args.kind,
        ByteSize(report.bytes),
        start.elapsed().as_secs_f64(),
        args.output.out.display()
    );
    Ok(())
}
