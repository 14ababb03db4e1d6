//! Learning-rate schedules as transformers defines them: the rate of optimizer step `k`
//! (0-based) is `lr · λ(k)`, with a linear warmup over the first `warmup` steps.

use std::f64::consts::PI;

crate::named_enum! {
    /// The learning rate after warmup.
    pub enum Schedule: "schedule" {
        /// The QLoRA default.
        Constant = "constant" | "constant_with_warmup",
        /// Down to 0 in a straight line.
        Linear = "linear",
        /// Down to 0 along half a cosine.
        Cosine = "cosine",
    }
}

impl Schedule {
    /// λ(step) for `total` steps with `warmup` warmup steps.
    pub fn factor(self, step: u64, total: u64, warmup: u64) -> f64 {
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        let decay_steps = total.saturating_sub(warmup).max(1) as f64;
        let progress = (step - warmup) as f64 / decay_steps;
        match self {
            Schedule::Constant => 1.0,
            Schedule::Linear => (1.0 - progress).max(0.0),
            Schedule::Cosine => (0.5 * (1.0 + (PI * progress).cos())).max(0.0),
        }
    }
}

/// Warmup steps from a ratio of the total, rounded up as transformers does.
pub fn warmup_from_ratio(ratio: f64, total: u64) -> u64 {
    (ratio * total as f64).ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(Schedule::Constant.factor(0, 100, 3), 0.0);
        assert_eq!(Schedule::Constant.factor(1, 100, 3), 1.0 / 3.0);
        assert_eq!(Schedule::Constant.factor(50, 100, 3), 1.0);
        assert_eq!(Schedule::Linear.factor(10, 110, 10), 1.0);
        assert_eq!(Schedule::Linear.factor(60, 110, 10), 0.5);
        assert!((Schedule::Cosine.factor(60, 110, 10) - 0.5).abs() < 1e-12);
        assert_eq!(warmup_from_ratio(0.03, 100), 3);
        assert_eq!(warmup_from_ratio(0.03, 10), 1);
    }
}
