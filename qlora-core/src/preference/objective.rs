//! The objectives, as TRL defines them: DPO (`sigmoid`, with conservative
//! label smoothing; `ipo`; `hinge`) against a frozen reference, ORPO's NLL plus odds ratio and
//! SimPO's length-normalized margin without one. Each is a function of every sequence's summed
//! completion log-probability; this module gives its value over a micro-batch of pairs (the
//! mean over pairs, as TRL's), its derivative with respect to each sequence's log-probability
//! (which the backward pass spreads over that sequence's tokens) and TRL's reward metrics.

use clap::{ArgAction, Args};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

crate::named_enum! {
    /// What a run trains: instruction tuning, or one of the preference objectives.
    #[derive(Default)]
    pub enum Method: "method" {
        /// Supervised fine-tuning on instruction data.
        #[default]
        Sft = "sft",
        /// Direct Preference Optimization against a frozen reference.
        Dpo = "dpo",
        /// Odds Ratio Preference Optimization (NLL plus odds ratio, no reference).
        Orpo = "orpo",
        /// Simple Preference Optimization (length-normalized margin, no reference).
        Simpo = "simpo",
    }
}

crate::named_enum! {
    /// DPO's loss of the log-ratio margin.
    #[derive(Default)]
    pub enum DpoLoss: "DPO loss" {
        /// `-log σ(β Δ)` (with label smoothing: conservative DPO).
        #[default]
        Sigmoid = "sigmoid",
        /// `(Δ/n - 1/(2β))²` on per-token log-ratios.
        Ipo = "ipo",
        /// `max(0, 1 - β Δ)`.
        Hinge = "hinge",
    }
}

/// The preference settings of a run (flags of `train` and `eval`).
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct PreferenceConfig {
    /// sft (instruction data), or dpo, orpo or simpo (preference pairs: prompt, chosen,
    /// rejected).
    #[arg(long, default_value_t = Method::Sft, help_heading = "Preference")]
    pub method: Method,
    /// β: DPO's strength of the reference (TRL's default 0.1), SimPO's reward scale
    /// (torchtune's 2.0) [default: the method's].
    #[arg(long, help_heading = "Preference")]
    pub beta: Option<f64>,
    /// DPO's loss: sigmoid, ipo or hinge.
    #[arg(long, default_value_t = DpoLoss::Sigmoid, help_heading = "Preference")]
    pub dpo_loss: DpoLoss,
    /// DPO sigmoid: the share of preferences taken as flipped (conservative DPO).
    #[arg(long, default_value_t = 0.0, help_heading = "Preference")]
    pub label_smoothing: f64,
    /// ORPO: λ, the weight of the odds-ratio term (TRL's `beta`).
    #[arg(long, default_value_t = 0.1, help_heading = "Preference")]
    pub orpo_lambda: f64,
    /// SimPO: γ, the target margin of the length-normalized rewards (torchtune's 0.5).
    #[arg(long, default_value_t = 0.5, help_heading = "Preference")]
    pub simpo_gamma: f64,
    /// DPO: score every pair with the reference once before training (no reference pass a
    /// step); the scores are kept with each checkpoint.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true",
          default_value_t = false, value_name = "BOOL", help_heading = "Preference")]
    pub precompute_ref: bool,
    /// Prompt tokens kept, from the end (TRL's max_prompt_length).
    #[arg(long, help_heading = "Preference")]
    pub max_prompt_len: Option<usize>,
    /// Completion tokens kept, from the start (TRL's max_completion_length).
    #[arg(long, help_heading = "Preference")]
    pub max_completion_len: Option<usize>,
}

impl Default for PreferenceConfig {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

impl PreferenceConfig {
    /// β as the method reads it.
    pub fn beta(&self) -> f64 {
        self.beta.unwrap_or(match self.method {
            Method::Simpo => 2.0,
            _ => 0.1,
        })
    }

    /// Whether the method compares with a reference model.
    pub fn needs_reference(&self) -> bool {
        self.method == Method::Dpo
    }

    /// Check the values, naming the flag of a bad one.
    pub fn validate(&self) -> Result<()> {
        let fail = |flag: &str, why: &str| Err(Error::invalid(format!("--{flag} {why}")));
        if !(self.beta().is_finite() && self.beta() > 0.0) {
            return fail("beta", "must be positive");
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return fail("label-smoothing", "must be in [0, 0.5)");
        }
        if !(self.orpo_lambda.is_finite() && self.orpo_lambda >= 0.0) {
            return fail("orpo-lambda", "must be >= 0");
        }
        if !self.simpo_gamma.is_finite() {
            return fail("simpo-gamma", "must be a number");
        }
        if self.max_prompt_len == Some(0) || self.max_completion_len == Some(0) {
            return fail("max-prompt-len/--max-completion-len", "must be at least 1");
        }
        if self.precompute_ref && !self.needs_reference() {
            return fail(
                "precompute-ref",
                "is for --method dpo (the others use no reference)",
            );
        }
        Ok(())
    }
}

/// A sequence's completion: its summed log-probability and its token count.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SeqLogp {
    /// `Σ log p` over the completion's tokens.
    pub sum: f64,
    /// Completion tokens.
    pub tokens: usize,
}

impl SeqLogp {
    fn mean(&self) -> f64 {
        self.sum / self.tokens.max(1) as f64
    }
}

/// A pair's log-probabilities: the policy's (chosen, rejected) and the reference's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairLogps {
    /// The policy's chosen and rejected sequences.
    pub policy: [SeqLogp; 2],
    /// The reference's summed log-probabilities (DPO).
    pub reference: Option<[f64; 2]>,
}

/// A micro-batch's objective: its value, the derivative with respect to each sequence's
/// summed log-probability (pair by pair, chosen then rejected), and the metrics' sums.
#[derive(Debug, Clone, PartialEq)]
pub struct PairObjective {
    /// The loss (mean over the pairs, plus ORPO's token-mean NLL).
    pub loss: f64,
    /// `∂loss/∂Σlog p` of each pair's chosen and rejected sequence.
    pub d_logps: Vec<[f64; 2]>,
    /// Sums over the pairs of TRL's metrics.
    pub metrics: PreferenceSums,
}

/// Sums of TRL's preference metrics over pairs (means once divided by `pairs`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PreferenceSums {
    /// Pairs summed.
    pub pairs: f64,
    /// `rewards/chosen`.
    pub rewards_chosen: f64,
    /// `rewards/rejected`.
    pub rewards_rejected: f64,
    /// `rewards/accuracies`: pairs whose chosen reward is the higher.
    pub accuracies: f64,
    /// `logps/chosen`.
    pub logps_chosen: f64,
    /// `logps/rejected`.
    pub logps_rejected: f64,
    /// The loss summed over what it came from: micro-batches (training), pairs (held-out).
    pub loss: f64,
}

impl PreferenceSums {
    /// The sums in a fixed order (for an all-reduce).
    pub fn to_array(&self) -> [f64; 7] {
        [
            self.pairs,
            self.rewards_chosen,
            self.rewards_rejected,
            self.accuracies,
            self.logps_chosen,
            self.logps_rejected,
            self.loss,
        ]
    }

    /// [`PreferenceSums::to_array`] read back.
    pub fn from_array(a: [f64; 7]) -> Self {
        PreferenceSums {
            pairs: a[0],
            rewards_chosen: a[1],
            rewards_rejected: a[2],
            accuracies: a[3],
            logps_chosen: a[4],
            logps_rejected: a[5],
            loss: a[6],
        }
    }

    /// Add another's sums.
    pub fn add(&mut self, other: &PreferenceSums) {
        self.pairs += other.pairs;
        self.rewards_chosen += other.rewards_chosen;
        self.rewards_rejected += other.rewards_rejected;
        self.accuracies += other.accuracies;
        self.logps_chosen += other.logps_chosen;
        self.logps_rejected += other.logps_rejected;
        self.loss += other.loss;
    }

    /// The means TRL logs, by its names.
    pub fn means(&self) -> PreferenceMetrics {
        let n = self.pairs.max(1.0);
        PreferenceMetrics {
            rewards_chosen: self.rewards_chosen / n,
            rewards_rejected: self.rewards_rejected / n,
            rewards_accuracies: self.accuracies / n,
            rewards_margins: (self.rewards_chosen - self.rewards_rejected) / n,
            logps_chosen: self.logps_chosen / n,
            logps_rejected: self.logps_rejected / n,
        }
    }
}

/// TRL's preference metrics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PreferenceMetrics {
    /// Mean β-scaled log-ratio (DPO) or log-probability (ORPO, SimPO) of the chosen.
    #[serde(rename = "rewards/chosen")]
    pub rewards_chosen: f64,
    /// The same of the rejected.
    #[serde(rename = "rewards/rejected")]
    pub rewards_rejected: f64,
    /// Share of pairs whose chosen reward is the higher.
    #[serde(rename = "rewards/accuracies")]
    pub rewards_accuracies: f64,
    /// Mean chosen minus rejected reward.
    #[serde(rename = "rewards/margins")]
    pub rewards_margins: f64,
    /// Mean summed log-probability of the chosen completions.
    #[serde(rename = "logps/chosen")]
    pub logps_chosen: f64,
    /// The same of the rejected.
    #[serde(rename = "logps/rejected")]
    pub logps_rejected: f64,
}

impl PreferenceMetrics {
    /// The metrics by TRL's names.
    pub fn entries(&self) -> [(&'static str, f64); 6] {
        [
            ("rewards/chosen", self.rewards_chosen),
            ("rewards/rejected", self.rewards_rejected),
            ("rewards/accuracies", self.rewards_accuracies),
            ("rewards/margins", self.rewards_margins),
            ("logps/chosen", self.logps_chosen),
            ("logps/rejected", self.logps_rejected),
        ]
    }
}

fn log_sigmoid(x: f64) -> f64 {
    // Stable for large |x|.
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `log(1 - exp(m))` for `m < 0`.
fn log1m_exp(m: f64) -> f64 {
    (-m.exp()).ln_1p()
}

/// The objective of `config`'s method over a micro-batch of `pairs`.
pub fn pair_objective(config: &PreferenceConfig, pairs: &[PairLogps]) -> Result<PairObjective> {
    let beta = config.beta();
    let n = pairs.len().max(1) as f64;
    let mut out = PairObjective {
        loss: 0.0,
        d_logps: Vec::with_capacity(pairs.len()),
        metrics: PreferenceSums::default(),
    };
    // ORPO's NLL: the mean token loss of the chosen completions of the micro-batch.
    let chosen_tokens: usize = pairs.iter().map(|p| p.policy[0].tokens).sum();
    for pair in pairs {
        let [c, r] = pair.policy;
        let (loss, dc, dr, rewards) = match config.method {
            Method::Sft => return Err(Error::invalid("sft has no preference objective")),
            Method::Dpo => {
                let [rc, rr] = pair
                    .reference
                    .ok_or_else(|| Error::invalid("DPO needs the reference's log-probabilities"))?;
                let (lc, lr) = (c.sum - rc, r.sum - rr);
                let rewards = [beta * lc, beta * lr];
                match config.dpo_loss {
                    DpoLoss::Sigmoid => {
                        let eps = config.label_smoothing;
                        let z = beta * (lc - lr);
                        let loss = -(1.0 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z);
                        let dz = -(1.0 - eps) * sigmoid(-z) + eps * sigmoid(z);
                        (loss, beta * dz, -beta * dz, rewards)
                    }
                    DpoLoss::Ipo => {
                        let (nc, nr) = (c.tokens.max(1) as f64, r.tokens.max(1) as f64);
                        let d = lc / nc - lr / nr - 1.0 / (2.0 * beta);
                        (d * d, 2.0 * d / nc, -2.0 * d / nr, rewards)
                    }
                    DpoLoss::Hinge => {
                        let h = 1.0 - beta * (lc - lr);
                        if h > 0.0 {
                            (h, -beta, beta, rewards)
                        } else {
                            (0.0, 0.0, 0.0, rewards)
                        }
                    }
                }
            }
            Method::Orpo => {
                let lambda = config.orpo_lambda;
                let (mc, mr) = (c.mean(), r.mean());
                let log_odds = (mc - mr) - (log1m_exp(mc) - log1m_exp(mr));
                let ratio = log_sigmoid(log_odds);
                let d_odds = -lambda * sigmoid(-log_odds);
                // ∂log_odds/∂mc = 1/(1 - e^mc); ∂log_odds/∂mr = -1/(1 - e^mr).
                let dmc = d_odds / (-mc.exp_m1());
                let dmr = -d_odds / (-mr.exp_m1());
                let (nc, nr) = (c.tokens.max(1) as f64, r.tokens.max(1) as f64);
                (
                    -lambda * ratio,
                    dmc / nc,
                    dmr / nr,
                    [lambda * mc, lambda * mr],
                )
            }
            Method::Simpo => {
                let eps = config.label_smoothing;
                let (mc, mr) = (c.mean(), r.mean());
                let z = beta * (mc - mr) - config.simpo_gamma;
                let loss = -(1.0 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z);
                let dz = -(1.0 - eps) * sigmoid(-z) + eps * sigmoid(z);
                let (nc, nr) = (c.tokens.max(1) as f64, r.tokens.max(1) as f64);
                (
                    loss,
                    beta * dz / nc,
                    -beta * dz / nr,
                    [beta * mc, beta * mr],
                )
            }
        };
        out.loss += loss / n;
        let mut d = [dc / n, dr / n];
        if config.method == Method::Orpo && chosen_tokens > 0 {
            // NLL = -Σ log p(chosen) / tokens.
            d[0] -= 1.0 / chosen_tokens as f64;
        }
        out.d_logps.push(d);
        let m = &mut out.metrics;
        m.pairs += 1.0;
        m.rewards_chosen += rewards[0];
        m.rewards_rejected += rewards[1];
        m.accuracies += f64::from(u8::from(rewards[0] > rewards[1]));
        m.logps_chosen += c.sum;
        m.logps_rejected += r.sum;
    }
    if config.method == Method::Orpo && chosen_tokens > 0 {
        let nll: f64 = -pairs.iter().map(|p| p.policy[0].sum).sum::<f64>() / chosen_tokens as f64;
        out.loss += nll;
    }
    if !out.loss.is_finite() || out.d_logps.iter().flatten().any(|d| !d.is_finite()) {
        return Err(Error::invalid(format!(
            "the {} objective became {} on a micro-batch of {} pairs",
            config.method,
            out.loss,
            pairs.len()
        )));
    }
    out.metrics.loss = out.loss;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs() -> Vec<PairLogps> {
        let seq = |sum: f64, tokens| SeqLogp { sum, tokens };
        vec![
            PairLogps {
                policy: [seq(-12.5, 5), seq(-9.0, 3)],
                reference: Some([-13.0, -8.2]),
            },
            PairLogps {
                policy: [seq(-4.0, 2), seq(-21.0, 7)],
                reference: Some([-4.5, -20.0]),
            },
        ]
    }

    /// Every objective's derivative against central differences of its value.
    #[test]
    fn derivatives_match_central_differences() {
        let configs = [
            (Method::Dpo, DpoLoss::Sigmoid, 0.0),
            (Method::Dpo, DpoLoss::Sigmoid, 0.1),
            (Method::Dpo, DpoLoss::Ipo, 0.0),
            (Method::Dpo, DpoLoss::Hinge, 0.0),
            (Method::Orpo, DpoLoss::Sigmoid, 0.0),
            (Method::Simpo, DpoLoss::Sigmoid, 0.0),
        ];
        for (method, dpo_loss, label_smoothing) in configs {
            let config = PreferenceConfig {
                method,
                dpo_loss,
                label_smoothing,
                beta: Some(if method == Method::Dpo { 0.7 } else { 2.0 }),
                orpo_lambda: 0.5,
                ..PreferenceConfig::default()
            };
            let base = pairs();
            let at = pair_objective(&config, &base).unwrap();
            for i in 0..base.len() {
                for side in 0..2 {
                    let h = 1e-5;
                    let shifted = |delta: f64| {
                        let mut p = base.clone();
                        p[i].policy[side].sum += delta;
                        pair_objective(&config, &p).unwrap().loss
                    };
                    let numeric = (shifted(h) - shifted(-h)) / (2.0 * h);
                    let analytic = at.d_logps[i][side];
                    assert!(
                        (numeric - analytic).abs() <= 1e-6 * (1.0 + analytic.abs()),
                        "{method} {dpo_loss}: pair {i} side {side}: {numeric} vs {analytic}"
                    );
                }
            }
        }
    }

    #[test]
    fn dpo_sigmoid_value_and_metrics() {
        let config = PreferenceConfig {
            method: Method::Dpo,
            ..PreferenceConfig::default()
        };
        let out = pair_objective(&config, &pairs()).unwrap();
        // Pair 1: Δ = (0.5) - (-0.8) = 1.3; pair 2: (0.5) - (-1.0) = 1.5; β = 0.1.
        let expected = (-log_sigmoid(0.13) - log_sigmoid(0.15)) / 2.0;
        assert!((out.loss - expected).abs() < 1e-12);
        let m = out.metrics.means();
        assert!((m.rewards_chosen - 0.05).abs() < 1e-12);
        assert!((m.rewards_margins - 0.14).abs() < 1e-12);
        assert_eq!(m.rewards_accuracies, 1.0);
    }
}
