//! What to change when a plan does not fit: each change that shrinks the peak, with the peak
//! it gives.

use super::{PlanSettings, plan};
use crate::config::ModelConfig;
use crate::model::Bits;

/// Changes to `base` that shrink the peak of a run of `config`, each with its resulting
/// figure (changes that leave the settings as they are, or cannot be planned, are left out).
pub fn alternatives(config: &ModelConfig, base: &PlanSettings) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut try_change = |label: String, change: &dyn Fn(&mut PlanSettings)| {
        let mut s = base.clone();
        change(&mut s);
        if s != *base
            && let Ok(p) = plan(config, &s)
        {
            out.push((label, p.peak_bytes));
        }
    };
    if base.batch_size > 1 {
        try_change(
            format!(
                "--batch-size {} (raise --grad-accum to keep the effective batch)",
                base.batch_size / 2
            ),
            &|s| s.batch_size /= 2,
        );
    }
    if base.seq_len > 128 {
        try_change(format!("--seq-len {}", base.seq_len / 2), &|s| {
            s.seq_len /= 2
        });
    }
    if !base.gradient_checkpointing {
        try_change("gradient checkpointing on".into(), &|s| {
            s.gradient_checkpointing = true
        });
    }
    if base.rank > 16 {
        try_change("--rank 16".into(), &|s| s.rank = 16);
    }
    if !base.optimizer_8bit {
        try_change("--optim paged_adamw_8bit".into(), &|s| {
            s.optimizer_8bit = true
        });
    }
    if base.optimizer_device_budget != Some(0) {
        try_change(
            "paged optimizer with --optim-device-budget-mb 0".into(),
            &|s| s.optimizer_device_budget = Some(0),
        );
    }
    if base.bits == Bits::Sixteen {
        try_change("--bits 4".into(), &|s| s.bits = Bits::Four);
    }
    out
}
