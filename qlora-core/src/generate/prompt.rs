//! What generation starts from: text wrapped as an adapter's training wrapped its examples, or
//! a chat message in the model's template.

use std::path::Path;

use crate::data::{ConversationTemplate, DatasetFormat, response_prompt};
use crate::error::Result;
use crate::text::{Message, TemplateKwargs, Tokenizer};
use crate::train::{CONFIG_FILE, TrainConfig};

/// A prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt<'a> {
    /// Text to continue, or with a format an instruction to wrap as training wrapped them.
    Text {
        /// The text (or instruction).
        text: &'a str,
        /// Alpaca's `input` field.
        input: Option<&'a str>,
        /// How to wrap it [default: the format the adapter was trained on, else Alpaca with
        /// an input, else as it is].
        format: Option<DatasetFormat>,
        /// With the oasst format: the conversation template [default: the adapter's].
        template: Option<ConversationTemplate>,
    },
    /// A user message in the model's chat template, after an optional system message.
    Chat {
        /// The user's message.
        message: &'a str,
        /// The system message.
        system: Option<&'a str>,
        /// The template's extra variables (`enable_thinking`, ...).
        kwargs: &'a TemplateKwargs,
    },
}

impl Prompt<'_> {
    /// The prompt's token ids, and the format text was wrapped in (`None` for a chat).
    /// `adapter`'s `training_config.toml`, if it has one, gives the default format.
    pub fn encode(
        &self,
        tokenizer: &Tokenizer,
        adapter: Option<&Path>,
    ) -> Result<(Vec<u32>, Option<DatasetFormat>)> {
        match *self {
            Prompt::Text {
                text,
                input,
                format,
                template,
            } => {
                let trained = match adapter {
                    Some(dir) if dir.join(CONFIG_FILE).is_file() => {
                        Some(TrainConfig::from_toml_file(&dir.join(CONFIG_FILE))?)
                    }
                    _ => None,
                };
                let format = format
                    .or_else(|| trained.as_ref().and_then(|t| t.format))
                    .unwrap_or(if input.is_some() {
                        DatasetFormat::Alpaca
                    } else {
                        DatasetFormat::Text
                    });
                let template = template
                    .or_else(|| trained.as_ref().map(|t| t.tokenize.template))
                    .unwrap_or_default();
                let ids = response_prompt(format, template, text, input, tokenizer)?;
                Ok((ids, Some(format)))
            }
            Prompt::Chat {
                message,
                system,
                kwargs,
            } => {
                let mut messages = Vec::new();
                if let Some(system) = system {
                    messages.push(Message::new("system", system));
                }
                messages.push(Message::new("user", message));
                // The template writes the special tokens itself.
                let text = tokenizer.apply_chat_template_with(&messages, true, kwargs)?;
                Ok((tokenizer.encode(&text, false)?, None))
            }
        }
    }
}
