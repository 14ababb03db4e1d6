//! The questions of a multiple-choice benchmark: read from JSON Lines (or a JSON array), with
//! their few-shot examples, checked for the template they are put in.

use std::path::Path;

use serde_json::Value;

use crate::data::{Record, read_records};
use crate::error::{Error, Result};

crate::named_enum! {
    /// How a question is put to the model.
    pub enum ChoiceStyle: "multiple-choice style" {
        /// lm-evaluation-harness's `mmlu` template: lettered choices, ` A`/` B`/... scored.
        Letters = "letters",
        /// Its `arc_easy` template: `Question: ...\nAnswer:`, each choice's text scored.
        Cloze = "cloze",
    }
}

/// One multiple-choice question.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    /// The question's text.
    pub question: String,
    /// The choices, in order.
    pub choices: Vec<String>,
    /// Index of the right choice.
    pub answer: usize,
    /// The subject (per-subject accuracies, and the letters template's description).
    pub subject: Option<String>,
}

pub(super) const LETTERS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";

fn question_of(record: &Record) -> Result<Question> {
    let question = record.string("question")?.to_string();
    let choices = match record.fields.get("choices") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|c| c.as_str().map(str::to_string))
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| record.error("choices", "expected a list of strings"))?,
        Some(_) => return Err(record.error("choices", "expected a list of strings")),
        None => return Err(record.error("choices", "missing")),
    };
    if choices.len() < 2 {
        return Err(record.error("choices", "needs at least two choices"));
    }
    let answer = match record.fields.get("answer") {
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| record.error("answer", format!("{n} is not a choice index")))?,
        Some(other) => {
            return Err(record.error("answer", format!("expected an index, found {other}")));
        }
        None => return Err(record.error("answer", "missing")),
    } as usize;
    if answer >= choices.len() {
        return Err(record.error(
            "answer",
            format!("{answer} is out of range for {} choices", choices.len()),
        ));
    }
    Ok(Question {
        question,
        choices,
        answer,
        subject: record.optional_string("subject")?.map(str::to_string),
    })
}

/// The questions of a JSON Lines (or JSON array) file: `question`, `choices` (strings), `answer`
/// (an index), optional `subject`. With `letters`, every question needs as many choices as the
/// first (one answer template), and at most 26.
pub fn read_questions(path: &Path, style: ChoiceStyle) -> Result<Vec<Question>> {
    let records = read_records(path)?;
    if records.is_empty() {
        return Err(Error::file(path, "no questions"));
    }
    let mut questions = Vec::with_capacity(records.len());
    for record in &records {
        let q = question_of(record)?;
        if style == ChoiceStyle::Letters {
            if q.choices.len() > LETTERS.len() {
                return Err(record.error("choices", "more than 26 choices cannot be lettered"));
            }
            if let Some(first) = questions.first().map(|f: &Question| f.choices.len())
                && q.choices.len() != first
            {
                return Err(record.error(
                    "choices",
                    format!(
                        "{} choices where the first question has {first}: the letters style \
                         needs one count (or use --style cloze)",
                        q.choices.len()
                    ),
                ));
            }
        }
        questions.push(q);
    }
    Ok(questions)
}

/// The questions of `data` and, as their few-shot examples, the first `k` questions of
/// `fewshot`, checked together: the file must hold `k` of them, and the letters style needs
/// one choice count throughout. `flags` name the count's and the file's flags in messages
/// (`--num-fewshot`, `--fewshot-data`).
pub fn read_task(
    data: &Path,
    fewshot: Option<&Path>,
    k: usize,
    style: ChoiceStyle,
    [count_flag, file_flag]: [&str; 2],
) -> Result<(Vec<Question>, Vec<Question>)> {
    let questions = read_questions(data, style)?;
    let examples = match (fewshot, k) {
        (_, 0) => Vec::new(),
        (None, k) => {
            return Err(Error::invalid(format!(
                "{count_flag} {k} needs {file_flag} FILE"
            )));
        }
        (Some(path), k) => {
            let all = read_questions(path, style)?;
            if all.len() < k {
                return Err(Error::file(
                    path,
                    format!("{count_flag} {k}, but the file has {} questions", all.len()),
                ));
            }
            all.into_iter().take(k).collect()
        }
    };
    if style == ChoiceStyle::Letters
        && let Some(example) = examples.first()
        && example.choices.len() != questions[0].choices.len()
    {
        return Err(Error::file(
            fewshot.unwrap_or(data),
            format!(
                "few-shot questions have {} choices and the questions {}: the letters style \
                 needs one count",
                example.choices.len(),
                questions[0].choices.len()
            ),
        ));
    }
    Ok((questions, examples))
}
