//! Column mapping (`--field-instruction question --field-output answer`, axolotl's
//! `field_instruction`, ...): a dataset whose columns have other names reads as the format it
//! is, with no conversion script. Columns are renamed to the names the formats read before the
//! format is detected.

use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::records::Record;
use crate::error::Result;

/// Which columns hold what the formats read (flags of `train` and `eval`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct FieldMap {
    /// The column holding Alpaca's `instruction`.
    #[arg(long, value_name = "COLUMN", help_heading = "Data")]
    pub field_instruction: Option<String>,
    /// The column holding Alpaca's `input` (optional in every record).
    #[arg(long, value_name = "COLUMN", help_heading = "Data")]
    pub field_input: Option<String>,
    /// The column holding the response (Alpaca's `output`).
    #[arg(long, value_name = "COLUMN", help_heading = "Data")]
    pub field_output: Option<String>,
    /// The column holding a conversation (a list of messages).
    #[arg(long, value_name = "COLUMN", help_heading = "Data")]
    pub field_messages: Option<String>,
    /// The column holding plain text (the text format's `text`).
    #[arg(long, value_name = "COLUMN", help_heading = "Data")]
    pub field_text: Option<String>,
    /// The key of a message's role in --field-messages's lists [default: role, or from].
    #[arg(long, value_name = "KEY", help_heading = "Data")]
    pub field_role: Option<String>,
    /// The key of a message's text in --field-messages's lists [default: content, or value].
    #[arg(long, value_name = "KEY", help_heading = "Data")]
    pub field_content: Option<String>,
}

impl FieldMap {
    /// Whether any column is mapped.
    pub fn is_empty(&self) -> bool {
        *self == FieldMap::default()
    }

    /// Rename the mapped columns of `record` to the names the formats read. A mapped column
    /// the record lacks is an error naming it and its flag (but `input`, which Alpaca records
    /// may leave out).
    pub fn apply(&self, record: &mut Record) -> Result<()> {
        let columns = [
            (
                "instruction",
                &self.field_instruction,
                "--field-instruction",
                true,
            ),
            ("input", &self.field_input, "--field-input", false),
            ("output", &self.field_output, "--field-output", true),
            ("messages", &self.field_messages, "--field-messages", true),
            ("text", &self.field_text, "--field-text", true),
        ];
        for (name, column, flag, required) in columns {
            let Some(column) = column.as_deref().filter(|c| *c != name) else {
                continue;
            };
            match record.fields.remove(column) {
                Some(value) => {
                    record.fields.insert(name.to_string(), value);
                }
                None if required => {
                    return Err(record.error(column, format!("missing (named by {flag})")));
                }
                None => {}
            }
        }
        if self.field_role.is_none() && self.field_content.is_none() {
            return Ok(());
        }
        let list = ["messages", "conversations"]
            .into_iter()
            .find(|k| record.fields.contains_key(*k));
        let Some(list) = list else {
            return Ok(());
        };
        // ShareGPT's lists name their keys `from` and `value`.
        let (role, content) = match list {
            "messages" => ("role", "content"),
            _ => ("from", "value"),
        };
        let renames = [
            ("role", self.field_role.as_deref().unwrap_or(role)),
            ("content", self.field_content.as_deref().unwrap_or(content)),
        ];
        let Some(Value::Array(messages)) = record.fields.get_mut(list) else {
            return Ok(());
        };
        for message in messages.iter_mut() {
            let Value::Object(message) = message else {
                continue;
            };
            for (name, key) in renames {
                if key != name
                    && let Some(value) = message.remove(key)
                {
                    message.insert(name.to_string(), value);
                }
            }
        }
        // The keys are now `messages`' own.
        if list == "conversations" {
            let value = record.fields.remove(list).expect("present");
            record.fields.insert("messages".into(), value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::records::Place;

    fn record(json: &str) -> Record {
        Record {
            file: "d.jsonl".into(),
            place: Place::Line(3),
            fields: serde_json::from_str(json).unwrap(),
        }
    }

    #[test]
    fn columns_and_message_keys_are_renamed() {
        let map = FieldMap {
            field_instruction: Some("question".into()),
            field_input: Some("context".into()),
            field_output: Some("answer".into()),
            ..FieldMap::default()
        };
        let mut r = record(r#"{"question": "q", "answer": "a"}"#);
        map.apply(&mut r).unwrap();
        assert_eq!(
            serde_json::Value::Object(r.fields),
            serde_json::json!({"instruction": "q", "output": "a"})
        );
        let mut r = record(r#"{"question": "q"}"#);
        let err = map.apply(&mut r).unwrap_err().to_string();
        assert_eq!(
            err,
            "d.jsonl:3: field `answer`: missing (named by --field-output)"
        );

        let map = FieldMap {
            field_messages: Some("dialog".into()),
            field_role: Some("speaker".into()),
            field_content: Some("text".into()),
            ..FieldMap::default()
        };
        let mut r = record(r#"{"dialog": [{"speaker": "user", "text": "hi"}]}"#);
        map.apply(&mut r).unwrap();
        assert_eq!(
            serde_json::Value::Object(r.fields),
            serde_json::json!({"messages": [{"role": "user", "content": "hi"}]})
        );
    }
}
