//! `qlora eval`: mean next-token cross-entropy and perplexity of a model over a dataset.

use crate::data::Example;
use crate::error::{Error, Result};
use crate::model::{Llama, TrainBatch};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalReport {
    pub loss: f64,
    pub perplexity: f64,
    pub tokens: usize,
    pub examples: usize,
}

/// Mean loss over all target tokens of `examples` (a token-weighted mean across the file,
/// not a mean of per-example means).
pub fn evaluate(
    model: &Llama,
    examples: &[Example],
    mut progress: impl FnMut(usize),
) -> Result<EvalReport> {
    let mut sum = 0f64;
    let mut tokens = 0usize;
    for (i, example) in examples.iter().enumerate() {
        if example.ids.len() >= 2 {
            let loss = model.loss(&TrainBatch {
                ids: vec![example.ids.clone()],
                labels: vec![example.labels.clone()],
                is_token: vec![vec![true; example.ids.len()]],
            })?;
            sum += f64::from(loss.sum.into_scalar::<f32>());
            tokens += loss.tokens;
        }
        progress(i + 1);
    }
    if tokens == 0 {
        return Err(Error::invalid("no target tokens to evaluate"));
    }
    let loss = sum / tokens as f64;
    Ok(EvalReport {
        loss,
        perplexity: loss.exp(),
        tokens,
        examples: examples.len(),
    })
}
