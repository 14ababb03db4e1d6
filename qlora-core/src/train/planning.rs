//! A run seen by the memory planner: its plan settings, and the device memory a paged
//! optimizer keeps its states in when the user does not say.

use super::config::TrainConfig;
use super::progress::Progress;
use crate::device::{DeviceChoice, memory_capacity};
use crate::dtype::ComputeDtype;
use crate::error::{Error, Result};
use crate::lora::LoraConfig;
use crate::plan::{PlanSettings, load_config, plan};
use crate::preference::Method;

impl TrainConfig {
    /// The planner's settings for this run: rows of `seq_len` tokens, `compute_bytes` a value.
    pub fn plan_settings(&self, seq_len: usize, compute_bytes: u64) -> Result<PlanSettings> {
        if self.rank == 0 || self.batch_size == 0 || seq_len == 0 {
            return Err(Error::invalid(
                "--rank, --batch-size and --seq-len must be positive",
            ));
        }
        // A preference run's row holds a pair: its chosen and its rejected sequence. The
        // reference pass (DPO) is a forward pass without autodiff before the policy's, whose
        // transient activations stay below the step's peak; the weights are shared.
        let seq_len = match self.preference.method {
            Method::Sft => seq_len,
            _ => 2 * seq_len,
        };
        Ok(PlanSettings {
            bits: self.bits,
            rank: self.rank,
            target_modules: LoraConfig::parse_target_modules(&self.target_modules)?,
            batch_size: self.batch_size,
            seq_len,
            gradient_checkpointing: self.gradient_checkpointing,
            optimizer_8bit: self.optim.eight_bit(),
            optimizer_device_budget: match (self.optim.paged(), self.optim_device_budget_mb) {
                (true, Some(mb)) => Some((mb.max(0.0) * 1024.0 * 1024.0) as u64),
                _ => None,
            },
            compute_bytes,
        })
    }

    /// Device memory a paged optimizer may keep its states in when no budget is given: what
    /// the planner leaves of the device's `capacity` after the step's peak with no state
    /// resident (rows of `--max-seq-len` tokens, `compute_bytes` a value). Returns the budget
    /// and that planned peak.
    pub fn automatic_optimizer_budget(
        &self,
        capacity: u64,
        compute_bytes: u64,
    ) -> Result<(u64, u64)> {
        let config = load_config(&self.model.to_string_lossy())?;
        let settings = PlanSettings {
            optimizer_device_budget: Some(0),
            ..self.plan_settings(self.max_seq_len, compute_bytes)?
        };
        let peak = plan(&config, &settings)?.peak_bytes;
        Ok((capacity.saturating_sub(peak), peak))
    }

    /// What a paged optimizer does on `device`, said once; on a GPU without
    /// `--optim-device-budget-mb`, the budget the planner leaves, set.
    pub(super) fn settle_optimizer_budget(
        &mut self,
        device: DeviceChoice,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        let optim = self.optim;
        if !optim.paged() {
            return Ok(());
        }
        if device == DeviceChoice::Cpu {
            let unpaged = if optim.eight_bit() {
                "adamw_8bit"
            } else {
                "bitsandbytes' 32-bit AdamW"
            };
            progress.message(&format!(
                "{optim} on the CPU: device memory is host memory, so nothing is paged and it \
                 runs as {unpaged} (as in bitsandbytes)"
            ));
            return Ok(());
        }
        if self.optim_device_budget_mb.is_some() {
            return Ok(());
        }
        let device = device.device()?;
        match memory_capacity(&device) {
            Some(capacity) => {
                let compute = ComputeDtype::resolve(self.compute_dtype, &device)?;
                let (budget, peak) =
                    self.automatic_optimizer_budget(capacity, compute.size() as u64)?;
                let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
                self.optim_device_budget_mb = Some(mib(budget));
                progress.message(&format!(
                    "{optim}: up to {:.0} MiB of optimizer state on the device ({:.0} MiB \
                     device memory - {:.0} MiB planned step peak); --optim-device-budget-mb \
                     sets it",
                    mib(budget),
                    mib(capacity),
                    mib(peak)
                ));
            }
            None => progress.message(&format!(
                "{optim}: the device reports no memory capacity, so every state stays on it; \
                 --optim-device-budget-mb sets a budget"
            )),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::train::OptimizerKind;

    use super::*;

    #[test]
    fn the_automatic_budget_is_what_the_plan_leaves() {
        let run = TrainConfig {
            model: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-llama"),
            optim: OptimizerKind::PagedAdamW8,
            ..TrainConfig::default()
        };
        let gib = 1 << 30;
        let (budget, peak) = run.automatic_optimizer_budget(gib, 4).unwrap();
        assert!(peak > 0 && budget == gib - peak, "{budget} {peak}");
        // A device smaller than the step leaves nothing: every state is paged.
        assert_eq!(run.automatic_optimizer_budget(peak / 2, 4).unwrap().0, 0);
    }
}
