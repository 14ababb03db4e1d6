//! `qlora eval`: mean next-token cross-entropy and perplexity of a model over a dataset, and
//! multiple-choice benchmarks scored as lm-evaluation-harness scores them ([`choice`]).

pub mod choice;
mod questions;

crate::named_enum! {
    /// What `qlora eval` measures.
    pub enum Task: "task" {
        /// Mean next-token loss and perplexity.
        Loss = "loss",
        /// Multiple-choice accuracy, scored as lm-evaluation-harness scores it.
        MultipleChoice = "multiple-choice" | "mc",
    }
}

use std::path::Path;

use crate::data::{DataOptions, DatasetFormat, Example, collate_rows, load_examples, pack};
use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::text::Tokenizer;

/// The examples `qlora eval` scores in `path`: with the `text` format every token of each
/// `{"text": ...}` record as `tokenizer(text)` gives them (special tokens added); with another
/// format the response tokens of each example, as training learns them (`options` says how).
/// Returns them with the loader's summary line, if any.
pub fn eval_examples(
    path: &Path,
    tokenizer: &Tokenizer,
    options: &DataOptions,
) -> Result<(Vec<Example>, Option<String>)> {
    if options.format == Some(DatasetFormat::Text) {
        let read = options.read(path)?;
        let records = read.records;
        if records.is_empty() {
            return Err(Error::invalid(format!("{}: no records", read.origin)));
        }
        let mut examples = Vec::with_capacity(records.len());
        for record in &records {
            let text = record.string("text")?;
            examples.push(Example::language_modelling(tokenizer.encode(text, true)?));
        }
        return Ok((examples, None));
    }
    options.tokenize.validate()?;
    let loaded = load_examples(path, tokenizer, options)?;
    let summary = format!("{}: {loaded}", loaded.origin);
    Ok((loaded.examples, Some(summary)))
}

/// The loss over a dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalReport {
    /// Mean loss a target token (nats).
    pub loss: f64,
    /// `e^loss`.
    pub perplexity: f64,
    /// Target tokens scored.
    pub tokens: usize,
    /// Examples scored.
    pub examples: usize,
}

/// Mean loss over all target tokens of `examples` (a token-weighted mean across the file,
/// not a mean of per-example means). With `packing`, examples are packed into rows of up to
/// that many tokens, each still seeing only itself: the same loss, fewer forward passes.
/// `progress` gets the number of examples done.
pub fn evaluate(
    model: &CausalLm,
    examples: &[Example],
    packing: Option<usize>,
    progress: impl FnMut(usize),
) -> Result<EvalReport> {
    let (sum, tokens) = loss_sum(model, examples, packing, progress)?;
    if tokens == 0 {
        return Err(Error::invalid("no target tokens to evaluate"));
    }
    let loss = sum / tokens as f64;
    Ok(EvalReport {
        loss,
        perplexity: loss.exp(),
        tokens,
        examples: examples.len(),
    })
}

/// The summed loss over all target tokens of `examples`, and their number (what [`evaluate`]
/// divides; the ranks of a multi-process run add theirs up first).
pub fn loss_sum(
    model: &CausalLm,
    examples: &[Example],
    packing: Option<usize>,
    mut progress: impl FnMut(usize),
) -> Result<(f64, usize)> {
    let usable: Vec<usize> = (0..examples.len())
        .filter(|&i| examples[i].ids.len() >= 2)
        .collect();
    let rows: Vec<Vec<usize>> = match packing {
        Some(max_len) => {
            let lengths: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
            pack(&lengths, &usable, max_len)
        }
        None => usable.iter().map(|&i| vec![i]).collect(),
    };
    let pad = model.config.pad_token_id.unwrap_or(0);
    let mut sum = 0f64;
    let mut tokens = 0usize;
    let mut done = examples.len() - usable.len();
    for row in rows {
        let members: Vec<&Example> = row.iter().map(|&i| &examples[i]).collect();
        let batch = collate_rows(&[members], pad, packing);
        let loss = model.loss(&batch)?;
        let row_sum = f64::from(loss.sum.into_scalar::<f32>());
        if !row_sum.is_finite() {
            return Err(Error::invalid(format!(
                "the loss became {row_sum} on example {} (the model's weights or the adapter \
                 produce non-finite values on it)",
                row[0] + 1
            )));
        }
        sum += row_sum;
        tokens += loss.tokens;
        done += row.len();
        progress(done);
    }
    Ok((sum, tokens))
}
