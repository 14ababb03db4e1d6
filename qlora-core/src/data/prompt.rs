//! The prompt an adapter learned to answer: an instruction wrapped as training wrapped it, up to
//! where the learned response starts, so `generate` asks in the form the adapter knows.

use super::dataset::effective_template;
use super::format::{ConversationTemplate, DatasetFormat, Sample, alpaca_prompt};
use super::tokenize::{TokenizeOptions, tokenize};
use crate::error::{Error, Result};
use crate::model::IGNORE_INDEX;
use crate::text::{Message, Tokenizer};

/// Stands in for the response while locating where it starts; only the tokens before it are
/// kept, and they do not depend on its text beyond its first character being a letter.
const PLACEHOLDER: &str = "OK";

/// The token ids a training example in `format` has before its first learned token, for the
/// instruction `text` (Alpaca's optional `input` as `input`): what the model saw before the
/// response it learned. `Text` has no wrapping: `text` with the tokenizer's special tokens.
pub fn response_prompt(
    format: DatasetFormat,
    template: ConversationTemplate,
    text: &str,
    input: Option<&str>,
    tokenizer: &Tokenizer,
) -> Result<Vec<u32>> {
    if input.is_some() && format != DatasetFormat::Alpaca {
        return Err(Error::invalid(format!(
            "--input is Alpaca's field; the {format} format has none"
        )));
    }
    let sample = match format {
        // TRL's standard form: the prompt as written, with the tokenizer's special tokens.
        DatasetFormat::Text | DatasetFormat::PromptCompletion => {
            return tokenizer.encode(text, true);
        }
        DatasetFormat::Alpaca => Sample::SourceTarget {
            source: alpaca_prompt(text, input.unwrap_or("")),
            target: PLACEHOLDER.into(),
        },
        DatasetFormat::InputOutput => Sample::SourceTarget {
            source: text.into(),
            target: PLACEHOLDER.into(),
        },
        DatasetFormat::Guanaco | DatasetFormat::Oasst | DatasetFormat::Messages => {
            Sample::Conversation(vec![
                Message::new("user", text),
                Message::new("assistant", PLACEHOLDER),
            ])
        }
    };
    let options = TokenizeOptions {
        source_max_len: usize::MAX / 4,
        target_max_len: usize::MAX / 4,
        train_on_source: false,
        template: effective_template(format, template),
        chat_template_kwargs: None,
        text: Default::default(),
    };
    let example = tokenize(&sample, tokenizer, &options)?;
    let start = example
        .labels
        .iter()
        .position(|&l| l != IGNORE_INDEX)
        .unwrap_or(example.ids.len());
    Ok(example.ids[..start].to_vec())
}
