//! What a run reports as it goes: one metrics line per step, and where progress is shown.

use serde::Serialize;

use crate::preference::PreferenceMetrics;

/// The run's metrics, a JSON line a logged step, in its output directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepMetrics {
    /// The optimizer step.
    pub step: u64,
    /// The step's loss (mean over its target tokens).
    pub loss: f64,
    /// The step's learning rate.
    pub lr: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens trained on so far.
    pub tokens: u64,
    /// Real (never padding) tokens a second.
    pub tokens_per_s: f64,
    /// The share of the step's positions that were padding.
    pub padding: f64,
    /// The held-out loss, at an evaluation step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// Multiple-choice accuracy on --eval-mc-data (and per character of the choice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mc_acc: Option<f64>,
    /// Multiple-choice accuracy per character of the choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mc_acc_norm: Option<f64>,
    /// A preference run's metrics of the step (TRL's `rewards/chosen`, ...).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub preference: Option<PreferenceMetrics>,
    /// The same of the held-out pairs, at an evaluation step (`eval_rewards/chosen`, ...).
    #[serde(
        flatten,
        skip_serializing_if = "Option::is_none",
        serialize_with = "eval_metrics"
    )]
    pub eval_preference: Option<PreferenceMetrics>,
    /// Device memory in use after the step (GPU backends; the CPU reports none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_memory_bytes: Option<u64>,
    /// The process's peak resident set so far (host memory, as the OS counts it; Linux).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
}

/// Held-out preference metrics under `eval_`-prefixed keys, as transformers logs eval metrics.
fn eval_metrics<S: serde::Serializer>(
    metrics: &Option<PreferenceMetrics>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(None)?;
    if let Some(m) = metrics {
        for (name, value) in m.entries() {
            map.serialize_entry(&format!("eval_{name}"), &value)?;
        }
    }
    map.end()
}

/// The directory of the run's TensorBoard event files, in its output directory.
pub const TENSORBOARD_DIR: &str = "runs";

impl StepMetrics {
    /// Every value of the line but the step, under the names transformers logs to TensorBoard
    /// (`train/loss`, `train/learning_rate`, `eval/loss`, ...).
    pub fn scalars(&self) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = [
            ("train/loss", self.loss),
            ("train/learning_rate", self.lr),
            ("train/grad_norm", self.grad_norm),
            ("train/tokens", self.tokens as f64),
            ("train/tokens_per_second", self.tokens_per_s),
            ("train/padding", self.padding),
        ]
        .map(|(tag, v)| (tag.to_string(), v))
        .into();
        let optional = [
            ("eval/loss", self.eval_loss),
            ("eval/mc_acc", self.mc_acc),
            ("eval/mc_acc_norm", self.mc_acc_norm),
            (
                "train/device_memory_bytes",
                self.device_memory_bytes.map(|b| b as f64),
            ),
            (
                "train/peak_rss_bytes",
                self.peak_rss_bytes.map(|b| b as f64),
            ),
        ];
        out.extend(
            optional
                .into_iter()
                .filter_map(|(tag, v)| Some((tag.to_string(), v?))),
        );
        for (prefix, metrics) in [("train", &self.preference), ("eval", &self.eval_preference)] {
            if let Some(m) = metrics {
                out.extend(m.entries().map(|(name, v)| (format!("{prefix}/{name}"), v)));
            }
        }
        out
    }

    /// ` eval_loss 1.2345 mc_acc 0.4500` for what was evaluated at this step (or nothing).
    pub fn evaluation(&self) -> String {
        let mut text = String::new();
        if let Some(e) = self.eval_loss {
            text.push_str(&format!(" eval_loss {e:.4}"));
        }
        if let Some(a) = self.mc_acc {
            text.push_str(&format!(" mc_acc {a:.4}"));
        }
        if let Some(p) = &self.eval_preference {
            text.push_str(&format!(" eval_acc {:.3}", p.rewards_accuracies));
        }
        text
    }
}

/// Where progress is shown: a bar on a terminal, log lines elsewhere.
pub trait Progress {
    /// The run starts: `total_steps` in all, `done` of them already (resumed).
    fn start(&mut self, total_steps: u64, done: u64);
    /// A step finished.
    fn step(&mut self, metrics: &StepMetrics);
    /// A line to show.
    fn message(&mut self, text: &str);
    /// The run ended.
    fn finish(&mut self);
}

/// Nothing shown: the ranks other than 0 of a multi-process run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl Progress for Quiet {
    fn start(&mut self, _: u64, _: u64) {}
    fn step(&mut self, _: &StepMetrics) {}
    fn message(&mut self, _: &str) {}
    fn finish(&mut self) {}
}

/// Plain lines on stderr every `every` steps.
pub struct LogProgress {
    /// Steps between lines.
    pub every: u64,
    total: u64,
}

impl LogProgress {
    /// Lines every `every` steps.
    pub fn new(every: u64) -> Self {
        LogProgress { every, total: 0 }
    }
}

impl Progress for LogProgress {
    fn start(&mut self, total_steps: u64, done: u64) {
        self.total = total_steps;
        crate::stderr::line(format_args!("training: {total_steps} steps ({done} done)"));
    }

    fn step(&mut self, m: &StepMetrics) {
        if m.step.is_multiple_of(self.every)
            || m.step == self.total
            || m.eval_loss.is_some()
            || m.mc_acc.is_some()
        {
            let eval = m.evaluation();
            let rewards = m
                .preference
                .map(|p| {
                    format!(
                        " rewards/accuracies {:.3} rewards/margins {:.4}",
                        p.rewards_accuracies, p.rewards_margins
                    )
                })
                .unwrap_or_default();
            crate::stderr::line(format_args!(
                "step {}/{} loss {:.4}{rewards} lr {:.3e} grad_norm {:.3} tokens/s {:.1} padding {:.1}%{eval}",
                m.step,
                self.total,
                m.loss,
                m.lr,
                m.grad_norm,
                m.tokens_per_s,
                100.0 * m.padding
            ));
        }
    }

    fn message(&mut self, text: &str) {
        crate::stderr::line(text);
    }

    fn finish(&mut self) {}
}
