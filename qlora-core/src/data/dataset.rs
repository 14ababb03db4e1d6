//! Reading a dataset file all the way to tokenized examples, with a summary of what happened.

use std::fmt;
use std::path::Path;

use super::format::{ConversationTemplate, DatasetFormat, ReadReport, samples};
use super::oasst::OasstOptions;
use super::records::read_records;
use super::tokenize::{Example, TokenizeOptions, tokenize};
use crate::error::{Error, Result};
use crate::text::Tokenizer;

/// How a dataset file becomes examples: its format (detected when `None`), tokenization, and
/// OpenAssistant's options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataOptions {
    /// `None`: detect from the first record.
    pub format: Option<DatasetFormat>,
    /// Lengths, loss masks and templates.
    pub tokenize: TokenizeOptions,
    /// OpenAssistant trees: which threads, languages and ranks.
    pub oasst: OasstOptions,
}

/// A dataset file read and tokenized.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedData {
    /// The format it was read as.
    pub format: DatasetFormat,
    /// Its examples.
    pub examples: Vec<Example>,
    /// What reading left out.
    pub report: ReadReport,
}

impl LoadedData {
    /// Tokens of every example.
    pub fn tokens(&self) -> usize {
        self.examples.iter().map(|e| e.ids.len()).sum()
    }

    /// Tokens with a target (learned).
    pub fn target_tokens(&self) -> usize {
        self.examples.iter().map(Example::target_tokens).sum()
    }

    /// Examples cut to the length limits.
    pub fn truncated(&self) -> usize {
        self.examples.iter().filter(|e| e.truncated).count()
    }
}

impl fmt::Display for LoadedData {
    /// The summary printed when a dataset loads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} records ({}) -> {} examples, {} tokens ({} learned), {} truncated",
            self.report.records,
            self.format,
            self.examples.len(),
            self.tokens(),
            self.target_tokens(),
            self.truncated()
        )?;
        if let Some(o) = &self.report.oasst {
            write!(
                f,
                "; {} messages in {} trees -> {} threads",
                o.messages, o.trees, o.threads
            )?;
        }
        for (reason, n) in &self.report.skipped {
            write!(f, "; skipped {n} {reason}")?;
        }
        Ok(())
    }
}

/// How conversations of `format` are written: chat messages always with the model's template
/// and Guanaco text in its own form; only OpenAssistant trees follow `--template`.
pub fn effective_template(
    format: DatasetFormat,
    template: ConversationTemplate,
) -> ConversationTemplate {
    match format {
        DatasetFormat::Messages => ConversationTemplate::Chat,
        DatasetFormat::Guanaco => ConversationTemplate::Guanaco,
        _ => template,
    }
}

/// Read, convert and tokenize `path`. Fails on the first malformed record (naming file, line
/// and field) and when nothing is left to learn from.
pub fn load_examples(
    path: &Path,
    tokenizer: &Tokenizer,
    options: &DataOptions,
) -> Result<LoadedData> {
    let records = read_records(path)?;
    let first = records
        .first()
        .ok_or_else(|| Error::invalid(format!("{}: the dataset is empty", path.display())))?;
    let format = match options.format {
        Some(format) => format,
        None => DatasetFormat::detect(first)?,
    };
    let (samples, report) = samples(&records, format, &options.oasst)?;
    let mut tokenize_options = options.tokenize.clone();
    tokenize_options.template = effective_template(format, options.tokenize.template);
    let mut examples = Vec::with_capacity(samples.len());
    for sample in &samples {
        let example = tokenize(&sample.value, tokenizer, &tokenize_options)
            .map_err(|e| Error::invalid(format!("{}: {e}", sample.location)))?;
        examples.push(example);
    }
    let loaded = LoadedData {
        format,
        examples,
        report,
    };
    if loaded.examples.is_empty() || loaded.target_tokens() == 0 {
        return Err(Error::invalid(format!(
            "{}: nothing to learn after filtering ({loaded})",
            path.display()
        )));
    }
    Ok(loaded)
}
