//! Text generation with a KV cache: greedy or sampled (temperature, top-k, top-p), repetition
//! penalty, seeded, stopping on end-of-sequence ids or stop strings, streaming text as it comes.

mod prompt;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::error::{Error, Result};
use crate::model::{CausalLm, KvCache};
use crate::text::Tokenizer;

pub use prompt::Prompt;

/// How to pick tokens and when to stop: `qlora generate`'s flags, declared once.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample only from the k most likely tokens [default: all].
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample only from the smallest set of tokens whose probability reaches p (nucleus
    /// sampling) [default: 1].
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Discourage tokens already in the text (CTRL-style, as transformers' repetition_penalty);
    /// 1 is off.
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Seed for sampling.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Stop when this text appears (repeatable); it is not printed.
    #[arg(long = "stop")]
    pub stop_strings: Vec<String>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

impl SamplingConfig {
    /// Check every value, naming the flag of a bad one.
    pub fn validate(&self) -> Result<()> {
        if self.temperature.is_nan() || self.temperature < 0.0 {
            return Err(Error::invalid("--temperature must be >= 0"));
        }
        if let Some(p) = self.top_p
            && (p.is_nan() || p <= 0.0 || p > 1.0)
        {
            return Err(Error::invalid("--top-p must be in (0, 1]"));
        }
        if self.top_k == Some(0) {
            return Err(Error::invalid("--top-k must be at least 1"));
        }
        if self.repetition_penalty.is_nan() || self.repetition_penalty <= 0.0 {
            return Err(Error::invalid("--repetition-penalty must be positive"));
        }
        Ok(())
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-sequence token came.
    EndOfSequence,
    /// A stop string appeared.
    StopString,
    /// `max_new_tokens` were generated.
    MaxTokens,
}

/// What generation produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// New token ids (without the prompt; the eos that ended it is not included).
    pub ids: Vec<u32>,
    /// Their text (the stop string left out).
    pub text: String,
    /// Why it stopped.
    pub stop: StopReason,
}

/// Choose the next token from `logits` given the sequence so far.
pub fn sample_next(
    logits: &mut [f32],
    seen: &[u32],
    config: &SamplingConfig,
    rng: &mut StdRng,
) -> u32 {
    if config.repetition_penalty != 1.0 {
        let mut done = vec![false; logits.len()];
        for &id in seen {
            let i = id as usize;
            if i < logits.len() && !done[i] {
                done[i] = true;
                let l = &mut logits[i];
                *l = if *l < 0.0 {
                    *l * config.repetition_penalty
                } else {
                    *l / config.repetition_penalty
                };
            }
        }
    }
    if config.temperature == 0.0 {
        return argmax(logits);
    }
    let mut candidates: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l / config.temperature))
        .collect();
    candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
    if let Some(k) = config.top_k {
        candidates.truncate(k.max(1));
    }
    let max = candidates[0].1;
    let mut probs: Vec<f32> = candidates.iter().map(|(_, l)| (l - max).exp()).collect();
    let total: f32 = probs.iter().sum();
    for p in &mut probs {
        *p /= total;
    }
    if let Some(top_p) = config.top_p {
        // Keep the smallest prefix whose probability reaches top_p (at least one token).
        let mut cumulative = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            cumulative += p;
            if cumulative >= top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        candidates.truncate(keep);
    }
    let total: f32 = probs.iter().sum();
    let mut draw = rng.random::<f32>() * total;
    for (i, p) in probs.iter().enumerate() {
        if draw < *p {
            return candidates[i].0;
        }
        draw -= p;
    }
    candidates[probs.len() - 1].0
}

fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

fn last_logits(logits: burn::tensor::Tensor<3>) -> Result<Vec<f32>> {
    let [_, seq, vocab] = logits.dims();
    logits
        .narrow(1, seq - 1, 1)
        .reshape([vocab])
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::invalid(format!("cannot read logits: {e:?}")))
}

/// Generate a continuation of `prompt` (token ids). `on_text` receives the text as it grows
/// (only complete characters), for streaming.
pub fn generate(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    config: &SamplingConfig,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    config.validate()?;
    if prompt.is_empty() {
        return Err(Error::invalid("the prompt is empty"));
    }
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut cache = KvCache::new(model.layers.len());
    let mut seen = prompt.to_vec();
    let mut new_ids = Vec::new();
    let mut printed = 0;
    let mut text = String::new();
    let mut logits = last_logits(model.forward(&[prompt.to_vec()], None, Some(&mut cache))?)?;
    let stop = loop {
        if new_ids.len() >= config.max_new_tokens {
            break StopReason::MaxTokens;
        }
        let next = sample_next(&mut logits, &seen, config, &mut rng);
        if tokenizer.stop_ids().contains(&next) {
            break StopReason::EndOfSequence;
        }
        new_ids.push(next);
        seen.push(next);
        text = tokenizer.decode(&new_ids, true)?;
        if let Some(at) = config
            .stop_strings
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            text.truncate(at);
            if text.len() > printed {
                on_text(&text[printed..]);
            }
            break StopReason::StopString;
        }
        // A trailing U+FFFD may be half of a multi-byte character: wait for the rest.
        let stable = text.trim_end_matches('\u{FFFD}').len();
        if stable > printed && text.is_char_boundary(printed) {
            on_text(&text[printed..stable]);
            printed = stable;
        }
        logits = last_logits(model.forward(&[vec![next]], None, Some(&mut cache))?)?;
    };
    if stop != StopReason::StopString && text.len() > printed && text.is_char_boundary(printed) {
        on_text(&text[printed..]);
    }
    Ok(Generation {
        ids: new_ids,
        text,
        stop,
    })
}

/// Greedy decoding that recomputes the whole sequence at every step (no cache): the reference
/// the cached path is tested against.
pub fn greedy_without_cache(
    model: &CausalLm,
    prompt: &[u32],
    max_new_tokens: usize,
) -> Result<Vec<u32>> {
    let mut ids = prompt.to_vec();
    for _ in 0..max_new_tokens {
        let logits = last_logits(model.forward(&[ids.clone()], None, None)?)?;
        ids.push(argmax(&logits));
    }
    Ok(ids[prompt.len()..].to_vec())
}
