use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use qlora_core::data::read_records;
use qlora_core::eval::{Example, evaluate};

use crate::model_args::ModelArgs;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Dataset file: JSON Lines or a JSON array.
    #[arg(long)]
    data: PathBuf,
    /// Record format; `text` is `{"text": ...}`, every token a target.
    #[arg(long, default_value = "text")]
    format: String,
    /// Print one JSON object {loss, perplexity, tokens, examples} instead of a sentence.
    #[arg(long)]
    json: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    if args.format != "text" {
        bail!("--format {} is not supported yet; use text", args.format);
    }
    let records = read_records(&args.data)?;
    if records.is_empty() {
        bail!("{}: no records", args.data.display());
    }
    let (model, tokenizer) = args.model.load()?;
    let mut examples = Vec::with_capacity(records.len());
    for record in &records {
        let text = record.string("text")?;
        examples.push(Example::language_modelling(tokenizer.encode(text, true)?));
    }
    let report = evaluate(&model, &examples, |_| {})?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "loss": report.loss,
                "perplexity": report.perplexity,
                "tokens": report.tokens,
                "examples": report.examples,
            })
        );
    } else {
        println!(
            "loss {:.6}  perplexity {:.4}  over {} tokens in {} examples",
            report.loss, report.perplexity, report.tokens, report.examples
        );
    }
    Ok(())
}
