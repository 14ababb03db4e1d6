use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use qlora_core::data::{
    DataOptions, DatasetFormat, Example, OasstOptions, TokenizeOptions, load_examples, read_records,
};
use qlora_core::eval::evaluate;

use crate::model_args::ModelArgs;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Dataset file: JSON Lines or a JSON array.
    #[arg(long)]
    data: PathBuf,
    /// Record format: text, alpaca, input-output, oasst, guanaco or messages (default: text).
    /// `text` scores every token of `{"text": ...}` as `tokenizer(text)` gives them; the
    /// others score the response tokens of each example, as training learns them.
    #[arg(long, default_value = "text")]
    format: DatasetFormat,
    #[command(flatten)]
    tokenize: TokenizeOptions,
    #[command(flatten)]
    oasst: OasstOptions,
    /// Pack whole examples into rows of up to --max-seq-len tokens (each sees only itself):
    /// the same loss, fewer forward passes.
    #[arg(long)]
    packing: bool,
    /// Tokens a packed row holds.
    #[arg(long, default_value_t = 2048)]
    max_seq_len: usize,
    /// Print one JSON object {loss, perplexity, tokens, examples} instead of a sentence.
    #[arg(long)]
    json: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let (model, tokenizer) = args.model.load()?;
    let examples = if args.format == DatasetFormat::Text {
        let records = read_records(&args.data)?;
        if records.is_empty() {
            bail!("{}: no records", args.data.display());
        }
        let mut examples = Vec::with_capacity(records.len());
        for record in &records {
            let text = record.string("text")?;
            examples.push(Example::language_modelling(tokenizer.encode(text, true)?));
        }
        examples
    } else {
        args.tokenize.validate()?;
        let options = DataOptions {
            format: Some(args.format),
            tokenize: args.tokenize,
            oasst: args.oasst,
        };
        let loaded = load_examples(&args.data, &tokenizer, &options)?;
        eprintln!("{}: {loaded}", args.data.display());
        loaded.examples
    };
    if args.max_seq_len < 2 {
        bail!("--max-seq-len must be at least 2");
    }
    let report = evaluate(
        &model,
        &examples,
        args.packing.then_some(args.max_seq_len),
        |_| {},
    )?;
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
