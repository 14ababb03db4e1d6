//! Reading a dataset file all the way to tokenized examples, with a summary of what happened.

use std::fmt;
use std::path::Path;

use super::fields::FieldMap;
use super::format::{ConversationTemplate, DatasetFormat, ReadReport, samples};
use super::oasst::OasstOptions;
use super::source::{DatasetRecords, read_dataset};
use super::tokenize::{Example, TokenizeOptions, tokenize};
use crate::error::{Error, Result};
use crate::text::Tokenizer;

/// How a dataset becomes examples: the part of a folder or repo read, column names, its format
/// (detected when `None`), tokenization, and OpenAssistant's options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataOptions {
    /// The splits of a folder or repo to read, the first one it has (none: `train`).
    pub splits: Vec<String>,
    /// A repo's configuration (subset), when its card declares several.
    pub config: Option<String>,
    /// Columns renamed to the names the formats read.
    pub fields: FieldMap,
    /// `None`: detect from the first record.
    pub format: Option<DatasetFormat>,
    /// Lengths, loss masks and templates.
    pub tokenize: TokenizeOptions,
    /// OpenAssistant trees: which threads, languages and ranks.
    pub oasst: OasstOptions,
}

impl DataOptions {
    /// The records `path` names: the chosen split and configuration of a folder or repo, its
    /// columns renamed.
    pub fn read(&self, path: &Path) -> Result<DatasetRecords> {
        read_dataset(
            path,
            &self.split_names(),
            self.config.as_deref(),
            &self.fields,
        )
    }

    /// The splits to look for, in order.
    pub fn split_names(&self) -> Vec<&str> {
        if self.splits.is_empty() {
            vec!["train"]
        } else {
            self.splits.iter().map(String::as_str).collect()
        }
    }
}

/// A dataset read and tokenized.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedData {
    /// Where it came from: the file, or a folder's or repo's split and files.
    pub origin: String,
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

    /// Whole (not truncated) examples that learn none of `stop_ids`: an adapter trained on
    /// them never learns to end a reply (a template that writes no end-of-turn token, an eos
    /// masked away).
    pub fn without_stop(&self, stop_ids: &[u32]) -> usize {
        self.examples
            .iter()
            .filter(|e| {
                !e.truncated
                    && !e
                        .labels
                        .iter()
                        .any(|&l| u32::try_from(l).is_ok_and(|id| stop_ids.contains(&id)))
            })
            .count()
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

/// How conversations of `format` are written: chat messages (and conversational
/// prompt-completion records) always with the model's template and Guanaco text in its own
/// form; only OpenAssistant trees follow `--template`.
pub fn effective_template(
    format: DatasetFormat,
    template: ConversationTemplate,
) -> ConversationTemplate {
    match format {
        DatasetFormat::Messages | DatasetFormat::PromptCompletion => ConversationTemplate::Chat,
        DatasetFormat::Guanaco => ConversationTemplate::Guanaco,
        _ => template,
    }
}

/// Read, convert and tokenize `path` (a file, a folder, or a dataset repo id). Fails on the
/// first malformed record (naming file, line or row, and field) and when nothing is left to
/// learn from.
pub fn load_examples(
    path: &Path,
    tokenizer: &Tokenizer,
    options: &DataOptions,
) -> Result<LoadedData> {
    let read = options.read(path)?;
    let records = read.records;
    let first = records
        .first()
        .ok_or_else(|| Error::invalid(format!("{}: the dataset is empty", read.origin)))?;
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
        origin: read.origin,
        format,
        examples,
        report,
    };
    if loaded.examples.is_empty() || loaded.target_tokens() == 0 {
        return Err(Error::invalid(format!(
            "{}: nothing to learn after filtering ({loaded})",
            loaded.origin
        )));
    }
    Ok(loaded)
}
