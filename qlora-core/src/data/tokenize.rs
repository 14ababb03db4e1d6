//! Samples to token ids and labels: context positions get [`IGNORE_INDEX`] unless training on
//! the source too.
//!
//! Prompt/response samples follow the QLoRA code: `bos + prompt` and `response + eos` are
//! tokenized separately (each truncated to its own limit) and concatenated. Conversations are
//! rendered whole, and each token is a target when its bytes fall inside an assistant turn; the
//! turns are located by rendering growing prefixes of the conversation, so the masks are right
//! for any chat template that renders a conversation as the concatenation of its prefixes.

use std::ops::Range;

use clap::{ArgAction, Args};
use serde::{Deserialize, Serialize};

use super::format::{ConversationTemplate, Sample, render_guanaco};
use crate::error::{Error, Result};
use crate::model::IGNORE_INDEX;
use crate::text::{Message, TemplateKwargs, TextOverrides, Tokenizer};

/// How samples become tokens (flags of `train` and `eval`, keys of `training_config.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenizeOptions {
    /// Most prompt tokens kept per example (QLoRA's --source_max_len).
    #[arg(long, default_value_t = 1024, help_heading = "Data")]
    pub source_max_len: usize,
    /// Most response tokens kept per example (QLoRA's --target_max_len).
    #[arg(long, default_value_t = 256, help_heading = "Data")]
    pub target_max_len: usize,
    /// Learn (and score) the prompt tokens too.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true",
          default_value_t = false, value_name = "BOOL", help_heading = "Data")]
    pub train_on_source: bool,
    /// How conversations are written: guanaco (`### Human: ...### Assistant: ...`) or chat
    /// (the model's chat template).
    #[arg(long, default_value_t = ConversationTemplate::Guanaco, help_heading = "Data")]
    pub template: ConversationTemplate,
    /// Extra variables for the chat template, a JSON object, as transformers'
    /// `apply_chat_template` keyword arguments (Qwen3: '{"enable_thinking": false}').
    #[arg(long, value_name = "JSON", help_heading = "Data")]
    pub chat_template_kwargs: Option<TemplateKwargs>,
    /// The chat template and eos token instead of the model's.
    #[command(flatten)]
    #[serde(flatten)]
    pub text: TextOverrides,
}

impl Default for TokenizeOptions {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

impl TokenizeOptions {
    /// Check the lengths, naming the flag of a bad one.
    pub fn validate(&self) -> Result<()> {
        if self.source_max_len == 0 || self.target_max_len == 0 {
            return Err(Error::invalid(
                "--source-max-len and --target-max-len must be at least 1",
            ));
        }
        Ok(())
    }
}

/// A tokenized example: its tokens and their labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// The token ids.
    pub ids: Vec<u32>,
    /// The label of every token: its id where it is learned, [`crate::model::IGNORE_INDEX`]
    /// elsewhere.
    pub labels: Vec<i64>,
    /// Whether the example was cut to the length limits.
    pub truncated: bool,
}

impl Example {
    /// Plain language modelling: every token is a target.
    pub fn language_modelling(ids: Vec<u32>) -> Self {
        let labels = ids.iter().map(|&id| i64::from(id)).collect();
        Example {
            ids,
            labels,
            truncated: false,
        }
    }

    /// Tokens whose label counts (the first never does: nothing predicts it).
    pub fn target_tokens(&self) -> usize {
        self.labels
            .iter()
            .skip(1)
            .filter(|&&l| l != IGNORE_INDEX)
            .count()
    }
}

fn truncate(ids: &mut Vec<u32>, max: usize) -> bool {
    let cut = ids.len() > max;
    ids.truncate(max);
    cut
}

/// Text and the byte ranges of it that are learned.
struct Rendered {
    text: String,
    targets: Vec<Range<usize>>,
}

fn render_guanaco_with_targets(messages: &[Message], tokenizer: &Tokenizer) -> Rendered {
    let bos = tokenizer.bos_token().unwrap_or("");
    let eos = tokenizer.eos_token().unwrap_or("");
    let mut text = String::from(bos);
    let mut targets = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let rendered = render_guanaco(std::slice::from_ref(m));
        let marker_len = rendered.len() - m.content.len();
        text.push_str(&rendered[..marker_len]);
        let start = text.len();
        text.push_str(&m.content);
        if m.role == "assistant" {
            if i + 1 == messages.len() {
                text.push_str(eos);
            }
            targets.push(start..text.len());
        }
    }
    Rendered { text, targets }
}

/// The conversation rendered with the chat template, and the byte ranges of its assistant turns
/// from message `learn_from` on.
fn render_chat_with_targets(
    messages: &[Message],
    learn_from: usize,
    tokenizer: &Tokenizer,
    kwargs: &TemplateKwargs,
) -> Result<Rendered> {
    let render = |messages: &[Message], generation| {
        tokenizer.apply_chat_template_with(messages, generation, kwargs)
    };
    let text = render(messages, false)?;
    let mut targets = Vec::new();
    for (i, m) in messages.iter().enumerate().skip(learn_from) {
        if m.role != "assistant" {
            continue;
        }
        let before = render(&messages[..i], true)?;
        let through = render(&messages[..=i], false)?;
        if !text.starts_with(&before) || !text.starts_with(&through) || through.len() < before.len()
        {
            return Err(Error::invalid(
                "the chat template does not render this conversation as the concatenation of its \
                 prefixes, so its assistant turns cannot be located (Qwen3's drops the reasoning \
                 of all but the last turn); give each assistant turn its own sample",
            ));
        }
        targets.push(before.len()..through.len());
    }
    Ok(Rendered { text, targets })
}

/// Tokenize one sample.
pub fn tokenize(
    sample: &Sample,
    tokenizer: &Tokenizer,
    options: &TokenizeOptions,
) -> Result<Example> {
    let none = TemplateKwargs::default();
    let kwargs = options.chat_template_kwargs.as_ref().unwrap_or(&none);
    match sample {
        Sample::SourceTarget { source, target } => {
            source_target(source, target, tokenizer, options)
        }
        Sample::Text(text) => source_target("", text, tokenizer, options),
        Sample::Completion { prompt, completion } => {
            completion_text(prompt, completion, tokenizer, options)
        }
        Sample::Conversation(messages) => {
            let rendered = match options.template {
                ConversationTemplate::Guanaco => render_guanaco_with_targets(messages, tokenizer),
                ConversationTemplate::Chat => {
                    render_chat_with_targets(messages, 0, tokenizer, kwargs)?
                }
            };
            rendered_example(&rendered, tokenizer, options)
        }
        Sample::ChatCompletion { prompt, completion } => {
            let messages: Vec<Message> = prompt.iter().chain(completion).cloned().collect();
            let rendered = render_chat_with_targets(&messages, prompt.len(), tokenizer, kwargs)?;
            rendered_example(&rendered, tokenizer, options)
        }
    }
}

/// An example of `ids` and `labels` cut to `source_max_len + target_max_len` tokens (from
/// the right).
fn cut_to_limit(mut ids: Vec<u32>, mut labels: Vec<i64>, options: &TokenizeOptions) -> Example {
    let max = options.source_max_len + options.target_max_len;
    let truncated = truncate(&mut ids, max);
    labels.truncate(max);
    Example {
        ids,
        labels,
        truncated,
    }
}

/// A rendered conversation's tokens: a token is learned when its bytes fall in a target range.
fn rendered_example(
    rendered: &Rendered,
    tokenizer: &Tokenizer,
    options: &TokenizeOptions,
) -> Result<Example> {
    let encoded = tokenizer.encode_with_offsets(&rendered.text, false)?;
    let ids = encoded.ids;
    let labels: Vec<i64> = ids
        .iter()
        .zip(&encoded.offsets)
        .map(|(&id, &(start, end))| {
            let learned = options.train_on_source
                || (end > start
                    && rendered
                        .targets
                        .iter()
                        .any(|r| start < r.end && end > r.start));
            if learned { i64::from(id) } else { IGNORE_INDEX }
        })
        .collect();
    Ok(cut_to_limit(ids, labels, options))
}

/// TRL's standard prompt-completion: `prompt + completion` (eos appended unless it ends with
/// it) tokenized whole with the tokenizer's special tokens, the first `len(tokenizer(prompt))`
/// tokens context, and cut to `source_max_len + target_max_len` tokens.
fn completion_text(
    prompt: &str,
    completion: &str,
    tokenizer: &Tokenizer,
    options: &TokenizeOptions,
) -> Result<Example> {
    let eos = tokenizer.eos_token().unwrap_or("");
    let mut text = format!("{prompt}{completion}");
    if !text.ends_with(eos) {
        text.push_str(eos);
    }
    let prompt_len = tokenizer.encode(prompt, true)?.len();
    let ids = tokenizer.encode(&text, true)?;
    let labels: Vec<i64> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            if i >= prompt_len || options.train_on_source {
                i64::from(id)
            } else {
                IGNORE_INDEX
            }
        })
        .collect();
    Ok(cut_to_limit(ids, labels, options))
}

fn source_target(
    source: &str,
    target: &str,
    tokenizer: &Tokenizer,
    options: &TokenizeOptions,
) -> Result<Example> {
    let bos = tokenizer.bos_token().unwrap_or("");
    let eos = tokenizer.eos_token().unwrap_or("");
    let mut source_ids = tokenizer.encode(&format!("{bos}{source}"), false)?;
    let mut target_ids = tokenizer.encode(&format!("{target}{eos}"), false)?;
    let truncated = truncate(&mut source_ids, options.source_max_len)
        | truncate(&mut target_ids, options.target_max_len);
    let labels = source_ids
        .iter()
        .map(|&id| {
            if options.train_on_source {
                i64::from(id)
            } else {
                IGNORE_INDEX
            }
        })
        .chain(target_ids.iter().map(|&id| i64::from(id)))
        .collect();
    source_ids.extend(target_ids);
    Ok(Example {
        ids: source_ids,
        labels,
        truncated,
    })
}
