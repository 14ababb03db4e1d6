//! Dataset formats, detected from the first record or chosen with `--format`, and how each
//! record becomes a training sample.

use serde_json::Value;

use super::oasst::{OasstOptions, OasstReport, conversations};
use super::records::Record;
use crate::error::{Error, Result};
use crate::text::Message;

crate::named_enum! {
    /// How a dataset's records are laid out.
    pub enum DatasetFormat: "format" {
        /// `instruction`, optional `input`, `output` (Stanford Alpaca / QLoRA prompt).
        Alpaca = "alpaca",
        /// `input`, `output` (the QLoRA repository's local-file format).
        InputOutput = "input-output",
        /// OpenAssistant oasst1 exports: one message per line, or one tree per line.
        Oasst = "oasst" | "oasst1",
        /// `text` in the `### Human: ... ### Assistant: ...` form (openassistant-guanaco).
        Guanaco = "guanaco",
        /// `messages` (OpenAI form) or `conversations` (ShareGPT form), rendered with the chat
        /// template.
        Messages = "messages" | "sharegpt" | "chat",
        /// TRL's `prompt` and `completion`: strings (standard: the completion and eos learned),
        /// or message lists (conversational: rendered with the chat template, the
        /// completion's assistant turns learned).
        PromptCompletion = "prompt-completion" | "prompt_completion",
        /// `text`: plain language modelling.
        Text = "text",
    }
}

impl DatasetFormat {
    /// Guess the format from the fields of the first record.
    pub fn detect(first: &Record) -> Result<Self> {
        let has = |field: &str| first.fields.contains_key(field);
        if has("instruction") && has("output") {
            Ok(DatasetFormat::Alpaca)
        } else if has("prompt") && has("completion") {
            Ok(DatasetFormat::PromptCompletion)
        } else if has("input") && has("output") {
            Ok(DatasetFormat::InputOutput)
        } else if has("messages") || has("conversations") {
            Ok(DatasetFormat::Messages)
        } else if (has("message_id") && has("role")) || (has("message_tree_id") && has("prompt")) {
            Ok(DatasetFormat::Oasst)
        } else if let Some(Value::String(text)) = first.fields.get("text") {
            if text.contains("### Human:") && text.contains("### Assistant:") {
                Ok(DatasetFormat::Guanaco)
            } else {
                Ok(DatasetFormat::Text)
            }
        } else {
            let fields: Vec<&str> = first.fields.keys().map(String::as_str).collect();
            Err(Error::invalid(format!(
                "{}: cannot tell the format from fields [{}]; pass --format",
                first.location(),
                fields.join(", ")
            )))
        }
    }
}

crate::named_enum! {
    /// How conversations (oasst, messages) are rendered.
    #[derive(Default)]
    pub enum ConversationTemplate: "template" {
        /// `### Human: ...### Assistant: ...` as in openassistant-guanaco.
        #[default]
        Guanaco = "guanaco",
        /// The model's own chat template.
        Chat = "chat",
    }
}

/// One training sample before tokenization.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    /// QLoRA's form: `bos + source` is context, `target + eos` is learned.
    SourceTarget {
        /// The context.
        source: String,
        /// What is learned.
        target: String,
    },
    /// A conversation; assistant turns are learned.
    Conversation(Vec<Message>),
    /// TRL's standard prompt-completion: `prompt + completion + eos` tokenized whole (special
    /// tokens added), the tokens past the prompt's own learned.
    Completion {
        /// The context.
        prompt: String,
        /// What is learned.
        completion: String,
    },
    /// TRL's conversational prompt-completion: the completion's assistant turns are learned.
    ChatCompletion {
        /// The context turns.
        prompt: Vec<Message>,
        /// The turns learned.
        completion: Vec<Message>,
    },
    /// Plain text, every token learned.
    Text(String),
}

/// Where a sample came from, for messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    /// The file and line (or record) it came from.
    pub location: String,
    /// The sample.
    pub value: T,
}

/// The Stanford Alpaca prompt with an input, as the QLoRA code writes it.
pub const ALPACA_PROMPT_WITH_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response: ";
/// The Stanford Alpaca prompt without an input, as the QLoRA code writes it.
pub const ALPACA_PROMPT_NO_INPUT: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response: ";

/// The Alpaca prompt of `instruction` (with its `input`, when not empty).
pub fn alpaca_prompt(instruction: &str, input: &str) -> String {
    if input.is_empty() {
        ALPACA_PROMPT_NO_INPUT.replace("{instruction}", instruction)
    } else {
        ALPACA_PROMPT_WITH_INPUT
            .replace("{instruction}", instruction)
            .replace("{input}", input)
    }
}

/// Split a Guanaco-form text into turns: `### Human:` and `### Assistant:` markers.
pub fn parse_guanaco(text: &str) -> Option<Vec<Message>> {
    const HUMAN: &str = "### Human:";
    const ASSISTANT: &str = "### Assistant:";
    let mut turns = Vec::new();
    let mut rest = text;
    if !rest.trim_start().starts_with(HUMAN) {
        return None;
    }
    rest = rest.trim_start();
    while !rest.is_empty() {
        let (role, marker) = if rest.starts_with(HUMAN) {
            ("user", HUMAN)
        } else if rest.starts_with(ASSISTANT) {
            ("assistant", ASSISTANT)
        } else {
            return None;
        };
        rest = &rest[marker.len()..];
        let next = [rest.find(HUMAN), rest.find(ASSISTANT)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(rest.len());
        turns.push(Message::new(role, &rest[..next]));
        rest = &rest[next..];
    }
    turns.iter().any(|m| m.role == "assistant").then_some(turns)
}

/// Render a conversation in the Guanaco form: `### Human: {text}### Assistant: {text}...`.
pub fn render_guanaco(messages: &[Message]) -> String {
    let mut out = String::new();
    for m in messages {
        let marker = if m.role == "assistant" {
            "### Assistant:"
        } else {
            "### Human:"
        };
        out.push_str(marker);
        // openassistant-guanaco puts one space after the marker.
        if !m.content.starts_with(' ') {
            out.push(' ');
        }
        out.push_str(&m.content);
    }
    out
}

fn chat_messages(record: &Record) -> Result<Vec<Message>> {
    let (field, role_key, content_key) = if record.fields.contains_key("messages") {
        ("messages", "role", "content")
    } else {
        ("conversations", "from", "value")
    };
    let list = match record.fields.get(field) {
        Some(Value::Array(list)) => list,
        Some(_) => return Err(record.error(field, "expected an array of messages")),
        None => return Err(record.error("messages", "missing (or `conversations`)")),
    };
    let messages = message_list(record, field, list, role_key, content_key)?;
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err(record.error(field, "no assistant turn to learn from"));
    }
    Ok(messages)
}

/// The messages of `list` (the value of `field`), roles normalized to system, user and
/// assistant.
fn message_list(
    record: &Record,
    field: &str,
    list: &[Value],
    role_key: &str,
    content_key: &str,
) -> Result<Vec<Message>> {
    let mut messages = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let role = item
            .get(role_key)
            .and_then(Value::as_str)
            .ok_or_else(|| record.error(&format!("{at}.{role_key}"), "missing or not a string"))?;
        let content = item
            .get(content_key)
            .and_then(Value::as_str)
            .ok_or_else(|| {
                record.error(&format!("{at}.{content_key}"), "missing or not a string")
            })?;
        let role = match role {
            "user" | "human" => "user",
            "assistant" | "gpt" | "chatgpt" | "bard" => "assistant",
            "system" => "system",
            other => {
                return Err(record.error(
                    &format!("{at}.{role_key}"),
                    format!("unknown role `{other}`"),
                ));
            }
        };
        messages.push(Message::new(role, content));
    }
    Ok(messages)
}

/// TRL's prompt-completion record: two strings, or two message lists.
fn prompt_completion(record: &Record) -> Result<Sample> {
    let get = |field: &str| {
        record
            .fields
            .get(field)
            .ok_or_else(|| record.error(field, "missing"))
    };
    match (get("prompt")?, get("completion")?) {
        (Value::String(prompt), Value::String(completion)) => Ok(Sample::Completion {
            prompt: prompt.clone(),
            completion: completion.clone(),
        }),
        (Value::Array(prompt), Value::Array(completion)) => {
            let prompt = message_list(record, "prompt", prompt, "role", "content")?;
            let completion = message_list(record, "completion", completion, "role", "content")?;
            if !completion.iter().any(|m| m.role == "assistant") {
                return Err(record.error("completion", "no assistant turn to learn from"));
            }
            Ok(Sample::ChatCompletion { prompt, completion })
        }
        (prompt, completion) => {
            let (field, value) = if matches!(prompt, Value::String(_) | Value::Array(_)) {
                ("completion", completion)
            } else {
                ("prompt", prompt)
            };
            Err(record.error(
                field,
                format!(
                    "expected a string (with a string prompt and completion) or a list of \
                     messages (with lists for both), found {}",
                    super::records::kind(value)
                ),
            ))
        }
    }
}

/// What reading a file produced besides the samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadReport {
    /// Records read.
    pub records: usize,
    /// Reasons and counts of records or messages left out.
    pub skipped: Vec<(String, usize)>,
    /// OpenAssistant's own counts, for its trees.
    pub oasst: Option<OasstReport>,
}

/// Turn records into samples.
pub fn samples(
    records: &[Record],
    format: DatasetFormat,
    oasst: &OasstOptions,
) -> Result<(Vec<Located<Sample>>, ReadReport)> {
    let mut report = ReadReport {
        records: records.len(),
        ..ReadReport::default()
    };
    let mut out = Vec::with_capacity(records.len());
    match format {
        DatasetFormat::Oasst => {
            let (threads, oasst_report) = conversations(records, oasst)?;
            report.skipped = oasst_report.dropped();
            report.oasst = Some(oasst_report);
            for (location, messages) in threads {
                out.push(Located {
                    location,
                    value: Sample::Conversation(messages),
                });
            }
        }
        _ => {
            for record in records {
                let value = match format {
                    DatasetFormat::Alpaca => Sample::SourceTarget {
                        source: alpaca_prompt(
                            record.string("instruction")?,
                            record.optional_string("input")?.unwrap_or(""),
                        ),
                        target: record.string("output")?.to_string(),
                    },
                    DatasetFormat::InputOutput => Sample::SourceTarget {
                        source: record.string("input")?.to_string(),
                        target: record.string("output")?.to_string(),
                    },
                    DatasetFormat::Guanaco => {
                        let text = record.string("text")?;
                        let messages = parse_guanaco(text).ok_or_else(|| {
                            record.error(
                                "text",
                                "not in the `### Human: ... ### Assistant: ...` form",
                            )
                        })?;
                        Sample::Conversation(messages)
                    }
                    DatasetFormat::Messages => Sample::Conversation(chat_messages(record)?),
                    DatasetFormat::PromptCompletion => prompt_completion(record)?,
                    DatasetFormat::Text => Sample::Text(record.string("text")?.to_string()),
                    DatasetFormat::Oasst => unreachable!("handled above"),
                };
                out.push(Located {
                    location: record.location(),
                    value,
                });
            }
        }
    }
    Ok((out, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guanaco_round_trip() {
        let text = "### Human: hi there### Assistant: hello!### Human: more?### Assistant: sure.";
        let turns = parse_guanaco(text).unwrap();
        assert_eq!(turns.len(), 4);
        assert_eq!(turns[1], Message::new("assistant", " hello!"));
        assert_eq!(render_guanaco(&turns), text);
        assert!(parse_guanaco("no markers").is_none());
    }

    #[test]
    fn alpaca_prompts() {
        assert!(alpaca_prompt("Do x", "").ends_with("### Instruction:\nDo x\n\n### Response: "));
        let p = alpaca_prompt("Do x", "data");
        assert!(p.contains("paired with an input"));
        assert!(p.ends_with("### Input:\ndata\n\n### Response: "));
    }
}
