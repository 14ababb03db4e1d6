//! Multiple-choice benchmarks scored as EleutherAI's lm-evaluation-harness (0.4.13) scores them
//! with its Hugging Face model, so the numbers compare with the Open LLM Leaderboard's and the
//! QLoRA paper's:
//!
//! - `letters` is the harness's `mmlu` template: a description naming the subject, the question
//!   stripped, the choices as `A. ...`, `Answer:`, and the continuations ` A`, ` B`, ...;
//!   `cloze` is its `arc_easy` template: `Question: ...\nAnswer:` and ` {choice}`.
//! - Few-shot examples are the first K records of the few-shot file (its `first_n` sampler),
//!   each written as its text, a space and its answer, joined by blank lines.
//! - A continuation's tokens are those of `context + continuation` after the context's own
//!   tokens (the context's trailing whitespace moved to the continuation), encoded with the
//!   tokenizer's own special tokens unless the text already starts with them; its
//!   log-likelihood is the sum of its tokens' log-probabilities.
//! - `acc` takes the choice with the highest log-likelihood, `acc_norm` the highest per
//!   character of the choice; standard errors are the sample standard deviation over √n.
//!
//! All choices of a question run as one batch.

use std::collections::BTreeMap;

use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Int, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::text::Tokenizer;

use super::questions::LETTERS;
pub use super::questions::{ChoiceStyle, Question, read_questions, read_task};

/// The question as the template writes it (before `Answer:`'s continuation).
fn doc_text(q: &Question, style: ChoiceStyle) -> String {
    match style {
        ChoiceStyle::Letters => {
            let mut text = q.question.trim().to_string();
            for (letter, choice) in LETTERS.chars().zip(&q.choices) {
                text.push_str(&format!("\n{letter}. {choice}"));
            }
            text.push_str("\nAnswer:");
            text
        }
        ChoiceStyle::Cloze => format!("Question: {}\nAnswer:", q.question),
    }
}

/// The choices as the harness lists them (`doc_to_choice`): letters, or the choices' texts.
fn choice_texts(q: &Question, style: ChoiceStyle) -> Vec<String> {
    match style {
        ChoiceStyle::Letters => LETTERS
            .chars()
            .take(q.choices.len())
            .map(String::from)
            .collect(),
        ChoiceStyle::Cloze => q.choices.clone(),
    }
}

/// The full context of `q` after `fewshot` examples: description, examples, question.
pub fn context(q: &Question, fewshot: &[Question], style: ChoiceStyle) -> String {
    let mut text = match (style, &q.subject) {
        (ChoiceStyle::Letters, Some(subject)) => format!(
            "The following are multiple choice questions (with answers) about {}.\n\n",
            subject.replace('_', " ")
        ),
        _ => String::new(),
    };
    for example in fewshot {
        text.push_str(&doc_text(example, style));
        text.push(' ');
        text.push_str(&choice_texts(example, style)[example.answer]);
        text.push_str("\n\n");
    }
    text.push_str(&doc_text(q, style));
    text
}

/// One question's result.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceItem {
    /// The question's subject.
    pub subject: Option<String>,
    /// The right choice.
    pub answer: usize,
    /// Log-likelihood of each choice's continuation.
    pub loglikelihoods: Vec<f64>,
    /// Whether each continuation is what greedy decoding would produce.
    pub is_greedy: Vec<bool>,
    /// The choice with the highest log-likelihood.
    pub pred: usize,
    /// The choice with the highest log-likelihood per character.
    pub pred_norm: usize,
}

impl ChoiceItem {
    /// 1 if `pred` is the answer, else 0.
    pub fn acc(&self) -> f64 {
        f64::from(u8::from(self.pred == self.answer))
    }

    /// 1 if `pred_norm` is the answer, else 0.
    pub fn acc_norm(&self) -> f64 {
        f64::from(u8::from(self.pred_norm == self.answer))
    }
}

/// Mean and standard error (sample standard deviation over √n) of `values`, as the harness
/// reports them; the error is NaN for a single value.
pub fn mean_and_stderr(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// Accuracy over a set of questions.
#[derive(Debug, Clone, PartialEq)]
pub struct Accuracy {
    /// Questions scored.
    pub questions: usize,
    /// Accuracy of the highest log-likelihood.
    pub acc: f64,
    /// Its standard error (sample standard deviation over the square root of n; NaN for one
    /// question).
    pub acc_stderr: f64,
    /// Accuracy of the highest log-likelihood per character.
    pub acc_norm: f64,
    /// Its standard error.
    pub acc_norm_stderr: f64,
}

impl Accuracy {
    /// The accuracies of `items`.
    pub fn of(items: &[&ChoiceItem]) -> Self {
        let acc: Vec<f64> = items.iter().map(|i| i.acc()).collect();
        let norm: Vec<f64> = items.iter().map(|i| i.acc_norm()).collect();
        let (acc, acc_stderr) = mean_and_stderr(&acc);
        let (acc_norm, acc_norm_stderr) = mean_and_stderr(&norm);
        Accuracy {
            questions: items.len(),
            acc,
            acc_stderr,
            acc_norm,
            acc_norm_stderr,
        }
    }
}

/// The scores of a multiple-choice run.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceReport {
    /// The template the questions were put in.
    pub style: ChoiceStyle,
    /// Few-shot examples before each question.
    pub num_fewshot: usize,
    /// The accuracies over every question.
    pub overall: Accuracy,
    /// Per subject (questions without one under "").
    pub subjects: BTreeMap<String, Accuracy>,
    /// Every question's scores, in file order.
    pub items: Vec<ChoiceItem>,
    /// The first question's context, as the model saw it.
    pub first_context: String,
}

/// Encode `text` as the harness's `tok_encode` does: with the tokenizer's special tokens
/// (its own bos rule), unless the text already starts with the bos token.
fn tok_encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let starts_with_bos = tokenizer.bos_token().is_some_and(|b| text.starts_with(b));
    tokenizer.encode(text, !starts_with_bos)
}

/// `(context tokens, continuation tokens)` of each request of one context (`_encode_pair`):
/// the context's trailing whitespace moves to every continuation, and the context is encoded
/// once.
fn encode_pairs(
    tokenizer: &Tokenizer,
    context: &str,
    continuations: &[String],
) -> Result<Vec<(Vec<u32>, Vec<u32>)>> {
    let trimmed = context.trim_end();
    let moved = &context[trimmed.len()..];
    let context_enc = tok_encode(tokenizer, trimmed)?;
    continuations
        .iter()
        .map(|continuation| {
            let whole = tok_encode(tokenizer, &format!("{trimmed}{moved}{continuation}"))?;
            let split = context_enc.len().min(whole.len());
            Ok((context_enc.clone(), whole[split..].to_vec()))
        })
        .collect()
}

/// Score one question: the log-likelihood and greediness of each continuation, in one batch.
fn score(model: &CausalLm, requests: &[(Vec<u32>, Vec<u32>)]) -> Result<Vec<(f64, bool)>> {
    let max_len = model.config.max_position_embeddings;
    // The input is every token but the last, left-truncated to the model's context.
    let inputs: Vec<(Vec<u32>, usize)> = requests
        .iter()
        .map(|(ctx, cont)| {
            let mut all: Vec<u32> = ctx.iter().chain(cont).copied().collect();
            if all.len() > max_len + 1 {
                all.drain(..all.len() - (max_len + 1));
            }
            all.pop();
            (all, cont.len())
        })
        .collect();
    if let Some((_, n)) = inputs
        .iter()
        .find(|(input, cont)| *cont == 0 || input.is_empty())
    {
        return Err(Error::invalid(format!(
            "a continuation encodes to {n} tokens after its context: nothing to score"
        )));
    }
    let seq = inputs.iter().map(|(i, _)| i.len()).max().unwrap_or(0);
    let pad = model.config.pad_token_id.unwrap_or(0);
    let ids: Vec<Vec<u32>> = inputs
        .iter()
        .map(|(i, _)| {
            let mut row = i.clone();
            row.resize(seq, pad);
            row
        })
        .collect();
    let is_token: Vec<Vec<bool>> = inputs
        .iter()
        .map(|(i, _)| (0..seq).map(|p| p < i.len()).collect())
        .collect();
    let hidden = model.hidden_states(&ids, Some(&is_token))?;
    // Only the positions that predict a continuation token go through the head.
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    for (row, ((input, cont), (_, cont_tokens))) in inputs.iter().zip(requests).enumerate() {
        let start = input.len() - cont;
        for (k, &token) in cont_tokens.iter().enumerate() {
            positions.push((row * seq + start + k) as i64);
            targets.push(token);
        }
    }
    let n = positions.len();
    let index = Tensor::<1, Int>::from_data(TensorData::new(positions, [n]), &model.device);
    let logits = model.head(hidden.select(0, index));
    let log_probs = log_softmax(logits.cast(DType::F32), 1);
    let values: Vec<f32> = log_probs
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        .map_err(|e| Error::invalid(format!("cannot read log-probabilities: {e:?}")))?;
    let vocab = values.len() / n.max(1);
    let mut out = Vec::with_capacity(requests.len());
    let mut at = 0;
    for (_, cont) in &inputs {
        let (mut sum, mut greedy) = (0f64, true);
        for _ in 0..*cont {
            let row = &values[at * vocab..(at + 1) * vocab];
            let target = targets[at] as usize;
            sum += f64::from(row[target]);
            let best = row
                .iter()
                .enumerate()
                .fold(0, |b, (i, v)| if *v > row[b] { i } else { b });
            greedy &= best == target;
            at += 1;
        }
        if !sum.is_finite() {
            return Err(Error::invalid(format!(
                "a log-likelihood became {sum} (the model produces non-finite values)"
            )));
        }
        out.push((sum, greedy));
    }
    Ok(out)
}

/// The first index of the largest value (numpy's `argmax`).
fn argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// Score `questions` with `fewshot` examples before each. `progress` gets the number done.
pub fn evaluate_choices(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    questions: &[Question],
    fewshot: &[Question],
    style: ChoiceStyle,
    mut progress: impl FnMut(usize),
) -> Result<ChoiceReport> {
    if questions.is_empty() {
        return Err(Error::invalid("no questions to evaluate"));
    }
    let mut items = Vec::with_capacity(questions.len());
    let mut first_context = String::new();
    for (k, q) in questions.iter().enumerate() {
        let ctx = context(q, fewshot, style);
        let texts = choice_texts(q, style);
        let continuations: Vec<String> = texts.iter().map(|c| format!(" {c}")).collect();
        let requests = encode_pairs(tokenizer, &ctx, &continuations)?;
        let scored = score(model, &requests)?;
        let loglikelihoods: Vec<f64> = scored.iter().map(|(l, _)| *l).collect();
        let pred = argmax(loglikelihoods.iter().copied());
        let pred_norm = argmax(
            loglikelihoods
                .iter()
                .zip(&texts)
                .map(|(l, t)| l / t.chars().count() as f64),
        );
        if k == 0 {
            first_context = ctx;
        }
        items.push(ChoiceItem {
            subject: q.subject.clone(),
            answer: q.answer,
            is_greedy: scored.iter().map(|(_, g)| *g).collect(),
            loglikelihoods,
            pred,
            pred_norm,
        });
        progress(k + 1);
    }
    let mut by_subject: BTreeMap<String, Vec<&ChoiceItem>> = BTreeMap::new();
    for item in &items {
        by_subject
            .entry(item.subject.clone().unwrap_or_default())
            .or_default()
            .push(item);
    }
    let subjects = by_subject
        .into_iter()
        .map(|(s, items)| (s, Accuracy::of(&items)))
        .collect();
    Ok(ChoiceReport {
        style,
        num_fewshot: fewshot.len(),
        overall: Accuracy::of(&items.iter().collect::<Vec<_>>()),
        subjects,
        items,
        first_context,
    })
}
