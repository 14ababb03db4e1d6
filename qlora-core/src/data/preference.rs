//! Preference pairs (DPO, ORPO, SimPO): a prompt with a chosen and a rejected completion, in
//! the shapes TRL reads (`prompt`/`chosen`/`rejected` as strings or message lists; `chosen` and
//! `rejected` alone as whole conversations or texts sharing their prompt) and LLaMA-Factory's
//! Alpaca form (`instruction`, optional `input`, `chosen`, `rejected`). Each pair becomes two
//! examples, prompt + chosen and prompt + rejected, with only the completion's tokens learned,
//! tokenized as TRL 1.16's `DPOTrainer` does.

use serde_json::Value;

use super::format::{Located, alpaca_prompt};
use super::records::{Record, kind};
use super::tokenize::Example;
use crate::error::{Error, Result};
use crate::model::IGNORE_INDEX;
use crate::text::{Message, TemplateKwargs, Tokenizer};

/// A pair before tokenization.
#[derive(Debug, Clone, PartialEq)]
pub enum PairSample {
    /// Standard: texts.
    Text {
        /// The context.
        prompt: String,
        /// The preferred completion.
        chosen: String,
        /// The other.
        rejected: String,
    },
    /// Conversational: turns, rendered with the chat template.
    Chat {
        /// The context's turns.
        prompt: Vec<Message>,
        /// The preferred completion's turns.
        chosen: Vec<Message>,
        /// The other's.
        rejected: Vec<Message>,
    },
}

/// A tokenized pair: prompt + chosen and prompt + rejected, completions learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairExample {
    /// Prompt and chosen completion.
    pub chosen: Example,
    /// Prompt and rejected completion.
    pub rejected: Example,
}

impl PairExample {
    /// Tokens of both sequences.
    pub fn len(&self) -> usize {
        self.chosen.ids.len() + self.rejected.ids.len()
    }

    /// Whether both sequences are empty (never, for a pair that was read).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a record is a preference pair (it has `chosen` and `rejected`).
pub fn is_pair(record: &Record) -> bool {
    record.fields.contains_key("chosen") && record.fields.contains_key("rejected")
}

fn messages(record: &Record, field: &str, list: &[Value]) -> Result<Vec<Message>> {
    list.iter()
        .enumerate()
        .map(|(i, item)| {
            let get = |key: &str| {
                item.get(key).and_then(Value::as_str).ok_or_else(|| {
                    record.error(&format!("{field}[{i}].{key}"), "missing or not a string")
                })
            };
            Ok(Message::new(get("role")?, get("content")?))
        })
        .collect()
}

/// TRL's `extract_prompt`: the longest common prefix of two sequences is the prompt (for texts,
/// a space the completions start with stays with them).
fn split_prompt<T: PartialEq + Clone>(chosen: &[T], rejected: &[T]) -> usize {
    chosen
        .iter()
        .zip(rejected)
        .position(|(a, b)| a != b)
        .unwrap_or(chosen.len().min(rejected.len()))
}

/// The pair `record` holds.
pub fn pair_sample(record: &Record) -> Result<PairSample> {
    let get = |field: &str| {
        record
            .fields
            .get(field)
            .filter(|v| !v.is_null())
            .ok_or_else(|| record.error(field, "missing"))
    };
    let (chosen, rejected) = (get("chosen")?, get("rejected")?);
    let prompt = match record.fields.get("prompt").filter(|v| !v.is_null()) {
        Some(p) => Some(p.clone()),
        None if record.fields.contains_key("instruction") => {
            let instruction = record.string("instruction")?;
            let input = record.optional_string("input")?.unwrap_or("");
            Some(Value::String(alpaca_prompt(instruction, input)))
        }
        None => None,
    };
    match (prompt, chosen, rejected) {
        (Some(Value::String(p)), Value::String(c), Value::String(r)) => Ok(PairSample::Text {
            prompt: p,
            chosen: c.clone(),
            rejected: r.clone(),
        }),
        (Some(Value::Array(p)), Value::Array(c), Value::Array(r)) => Ok(PairSample::Chat {
            prompt: messages(record, "prompt", &p)?,
            chosen: messages(record, "chosen", c)?,
            rejected: messages(record, "rejected", r)?,
        }),
        (None, Value::String(c), Value::String(r)) => {
            let (c, r): (Vec<char>, Vec<char>) = (c.chars().collect(), r.chars().collect());
            let mut at = split_prompt(&c, &r);
            if at > 0 && at < c.len().min(r.len()) && c[at - 1] == ' ' {
                at -= 1;
            }
            Ok(PairSample::Text {
                prompt: c[..at].iter().collect(),
                chosen: c[at..].iter().collect(),
                rejected: r[at..].iter().collect(),
            })
        }
        (None, Value::Array(c), Value::Array(r)) => {
            let (c, r) = (
                messages(record, "chosen", c)?,
                messages(record, "rejected", r)?,
            );
            let at = split_prompt(&c, &r);
            Ok(PairSample::Chat {
                prompt: c[..at].to_vec(),
                chosen: c[at..].to_vec(),
                rejected: r[at..].to_vec(),
            })
        }
        (prompt, c, r) => {
            let shape = |v: &Value| kind(v);
            Err(Error::invalid(format!(
                "{}: `prompt`, `chosen` and `rejected` must all be strings or all lists of \
                 messages, found {}, {} and {}",
                record.location(),
                prompt.as_ref().map_or("none", shape),
                shape(c),
                shape(r)
            )))
        }
    }
}

/// Why a pair is left out of training (counted in the summary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairSkip {
    /// The chosen completion is the rejected one.
    Same,
    /// A completion is empty.
    Empty,
    /// The prompt alone fills the sequence length, so no completion token is left.
    PromptFills,
}

impl PairSkip {
    /// How the summary names it.
    pub fn reason(self) -> &'static str {
        match self {
            PairSkip::Same => "pairs whose chosen equals rejected",
            PairSkip::Empty => "pairs with an empty completion",
            PairSkip::PromptFills => "pairs whose prompt fills --max-seq-len",
        }
    }
}

/// Token limits of a pair (TRL's `max_prompt_length`, `max_completion_length`, and
/// `max_length` with `keep_start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairLimits {
    /// Prompt tokens kept, from the end.
    pub prompt: Option<usize>,
    /// Completion tokens kept, from the start.
    pub completion: Option<usize>,
    /// Tokens of prompt + completion kept, from the start.
    pub sequence: Option<usize>,
}

/// The length of the common prefix of two token sequences.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Tokenize a pair as TRL 1.16's `DPOTrainer`: texts get the eos appended (unless they end
/// with it) and are tokenized with the tokenizer's special tokens, whole and the prompt alone;
/// conversations are rendered with the chat template (the prompt with the generation prompt)
/// and tokenized as rendered. The completion starts where the tokenized prompt and
/// prompt + completion part, for both. Returns `Err(PairSkip)` for a pair left out.
pub fn tokenize_pair(
    sample: &PairSample,
    tokenizer: &Tokenizer,
    kwargs: &TemplateKwargs,
    limits: PairLimits,
) -> Result<std::result::Result<PairExample, PairSkip>> {
    let (prompt, chosen, rejected) = match sample {
        PairSample::Text {
            prompt,
            chosen,
            rejected,
        } => {
            if chosen == rejected {
                return Ok(Err(PairSkip::Same));
            }
            if chosen.is_empty() || rejected.is_empty() {
                return Ok(Err(PairSkip::Empty));
            }
            let eos = tokenizer.eos_token().unwrap_or("");
            let with_eos = |text: &str| {
                if text.ends_with(eos) {
                    text.to_string()
                } else {
                    format!("{text}{eos}")
                }
            };
            let encode = |text: &str| tokenizer.encode(text, true);
            (
                encode(prompt)?,
                encode(&format!("{prompt}{}", with_eos(chosen)))?,
                encode(&format!("{prompt}{}", with_eos(rejected)))?,
            )
        }
        PairSample::Chat {
            prompt,
            chosen,
            rejected,
        } => {
            if chosen == rejected {
                return Ok(Err(PairSkip::Same));
            }
            if chosen.is_empty() || rejected.is_empty() {
                return Ok(Err(PairSkip::Empty));
            }
            let render = |messages: &[Message], generation: bool| -> Result<Vec<u32>> {
                let text = tokenizer.apply_chat_template_with(messages, generation, kwargs)?;
                tokenizer.encode(&text, false)
            };
            let whole = |completion: &[Message]| {
                let all: Vec<Message> = prompt.iter().chain(completion).cloned().collect();
                render(&all, false)
            };
            (render(prompt, true)?, whole(chosen)?, whole(rejected)?)
        }
    };
    let start = common_prefix(&prompt, &chosen).min(common_prefix(&prompt, &rejected));
    let mut prompt_ids = prompt[..start].to_vec();
    if let Some(max) = limits.prompt {
        prompt_ids.drain(..prompt_ids.len().saturating_sub(max));
    }
    if limits.sequence.is_some_and(|max| prompt_ids.len() >= max) {
        return Ok(Err(PairSkip::PromptFills));
    }
    let example = |whole: &[u32]| {
        let mut completion = whole[start..].to_vec();
        if let Some(max) = limits.completion {
            completion.truncate(max);
        }
        let mut ids = prompt_ids.clone();
        ids.extend_from_slice(&completion);
        let mut labels: Vec<i64> = std::iter::repeat_n(IGNORE_INDEX, prompt_ids.len())
            .chain(completion.iter().map(|&id| i64::from(id)))
            .collect();
        let mut truncated = completion.len() < whole.len() - start || prompt_ids.len() < start;
        if let Some(max) = limits.sequence.filter(|&m| ids.len() > m) {
            ids.truncate(max);
            labels.truncate(max);
            truncated = true;
        }
        Example {
            ids,
            labels,
            truncated,
        }
    };
    let pair = PairExample {
        chosen: example(&chosen),
        rejected: example(&rejected),
    };
    if pair.chosen.target_tokens() == 0 || pair.rejected.target_tokens() == 0 {
        return Ok(Err(PairSkip::Empty));
    }
    Ok(Ok(pair))
}

/// A preference set read and tokenized.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedPairs {
    /// Where it came from.
    pub origin: String,
    /// Records read.
    pub records: usize,
    /// The pairs kept.
    pub pairs: Vec<PairExample>,
    /// Pairs left out, by reason.
    pub skipped: Vec<(PairSkip, usize)>,
    /// Pairs cut to the limits.
    pub truncated: usize,
}

impl std::fmt::Display for LoadedPairs {
    /// The summary printed when a preference set loads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tokens: usize = self.pairs.iter().map(PairExample::len).sum();
        let learned: usize = self
            .pairs
            .iter()
            .map(|p| p.chosen.target_tokens() + p.rejected.target_tokens())
            .sum();
        write!(
            f,
            "{} records (preference pairs) -> {} pairs, {tokens} tokens ({learned} in completions), \
             {} truncated",
            self.records,
            self.pairs.len(),
            self.truncated
        )?;
        for (reason, n) in &self.skipped {
            write!(f, "; skipped {n} {}", reason.reason())?;
        }
        Ok(())
    }
}

/// Read and tokenize the preference pairs `path` names (a file, folder or dataset repo, as
/// `options` choose). Fails on the first malformed record, naming it, and when no pair is
/// left.
pub fn load_pairs(
    path: &std::path::Path,
    tokenizer: &Tokenizer,
    options: &super::DataOptions,
    limits: PairLimits,
) -> Result<LoadedPairs> {
    let read = options.read(path)?;
    let none = TemplateKwargs::default();
    let kwargs = options
        .tokenize
        .chat_template_kwargs
        .as_ref()
        .unwrap_or(&none);
    let mut loaded = LoadedPairs {
        origin: read.origin,
        records: read.records.len(),
        pairs: Vec::with_capacity(read.records.len()),
        skipped: Vec::new(),
        truncated: 0,
    };
    for sample in pair_samples(&read.records)? {
        let pair = tokenize_pair(&sample.value, tokenizer, kwargs, limits)
            .map_err(|e| Error::invalid(format!("{}: {e}", sample.location)))?;
        match pair {
            Ok(pair) => {
                if pair.chosen.truncated || pair.rejected.truncated {
                    loaded.truncated += 1;
                }
                loaded.pairs.push(pair);
            }
            Err(skip) => match loaded.skipped.iter_mut().find(|(s, _)| *s == skip) {
                Some((_, n)) => *n += 1,
                None => loaded.skipped.push((skip, 1)),
            },
        }
    }
    if loaded.pairs.is_empty() {
        return Err(Error::invalid(format!(
            "{}: no preference pair to learn from ({loaded})",
            loaded.origin
        )));
    }
    Ok(loaded)
}

/// Every pair of `records`, with where it came from.
pub fn pair_samples(records: &[Record]) -> Result<Vec<Located<PairSample>>> {
    records
        .iter()
        .map(|record| {
            Ok(Located {
                location: record.location(),
                value: pair_sample(record)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::records::Place;

    fn record(json: &str) -> Record {
        Record {
            file: "p.jsonl".into(),
            place: Place::Line(2),
            fields: serde_json::from_str(json).unwrap(),
        }
    }

    #[test]
    fn shapes_read_as_trl_reads_them() {
        let text = |p: &str, c: &str, r: &str| PairSample::Text {
            prompt: p.into(),
            chosen: c.into(),
            rejected: r.into(),
        };
        assert_eq!(
            pair_sample(&record(
                r#"{"prompt": "Q", "chosen": " a", "rejected": " b"}"#
            ))
            .unwrap(),
            text("Q", " a", " b")
        );
        // Implicit prompt: the space before the completions stays with them.
        assert_eq!(
            pair_sample(&record(
                r#"{"chosen": "The sky is blue.", "rejected": "The sky is green."}"#
            ))
            .unwrap(),
            text("The sky is", " blue.", " green.")
        );
        let chat = pair_sample(&record(
            r#"{"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "a"}],
                "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "b"}]}"#,
        ))
        .unwrap();
        assert_eq!(
            chat,
            PairSample::Chat {
                prompt: vec![Message::new("user", "Q")],
                chosen: vec![Message::new("assistant", "a")],
                rejected: vec![Message::new("assistant", "b")],
            }
        );
        let alpaca = pair_sample(&record(
            r#"{"instruction": "Do x", "input": "", "chosen": "ok", "rejected": "no"}"#,
        ))
        .unwrap();
        assert_eq!(alpaca, text(&alpaca_prompt("Do x", ""), "ok", "no"));

        let err = pair_sample(&record(r#"{"prompt": "Q", "chosen": "a"}"#))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "p.jsonl:2: field `rejected`: missing");
        let err = pair_sample(&record(r#"{"prompt": "Q", "chosen": "a", "rejected": 3}"#))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("p.jsonl:2: `prompt`, `chosen` and `rejected`"),
            "{err}"
        );
    }
}
