//! What an adapter set is: rank, alpha, dropout, which projections, the scale, how `A` starts.

use crate::config::{Architecture, Projection};
use crate::error::{Error, Result};

crate::named_enum! {
    /// How `A` starts (`B` always starts at zero, so training starts from the base model).
    #[derive(Default)]
    pub enum LoraInit: "LoRA init" {
        /// PEFT's default: kaiming-uniform with `a = sqrt(5)`, i.e. `U(-1/sqrt(in), 1/sqrt(in))`.
        #[default]
        KaimingUniform = "kaiming-uniform" | "kaiming" | "default",
        /// PEFT's `init_lora_weights="gaussian"`: `N(0, 1/r)`.
        Gaussian = "gaussian",
    }
}

/// The shape of fresh adapters: rank, scale, dropout, targets and initialization.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// The rank.
    pub r: usize,
    /// `lora_alpha`: the output is scaled by `alpha / r` (`alpha / sqrt(r)` with rsLoRA).
    pub alpha: f64,
    /// Dropout of the adapter's input while training.
    pub dropout: f64,
    /// The projections that get adapters.
    pub target_modules: Vec<Projection>,
    /// Scale by `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
    /// How A is initialized (B starts at zero).
    pub init: LoraInit,
}

impl Default for LoraConfig {
    /// The QLoRA paper's settings: r 64, alpha 16, dropout 0.05, every linear layer.
    fn default() -> Self {
        LoraConfig {
            r: 64,
            alpha: 16.0,
            dropout: 0.05,
            target_modules: Projection::ALL.to_vec(),
            use_rslora: false,
            init: LoraInit::KaimingUniform,
        }
    }
}

impl LoraConfig {
    /// The scale of the adapter's output.
    pub fn scale(&self) -> f64 {
        lora_scale(self.alpha, self.r, self.use_rslora)
    }

    /// Check every value, naming the flag of a bad one.
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(Error::invalid("LoRA rank must be at least 1"));
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return Err(Error::invalid("LoRA alpha must be positive"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::invalid("LoRA dropout must be in [0, 1)"));
        }
        if self.target_modules.is_empty() {
            return Err(Error::invalid("LoRA needs at least one target module"));
        }
        Ok(())
    }

    /// Parse `all-linear` or a comma-separated list of projection names.
    pub fn parse_target_modules(spec: &str) -> Result<Vec<Projection>> {
        if spec == "all-linear" || spec == "all" {
            return Ok(Projection::ALL.to_vec());
        }
        spec.split(',')
            .map(|name| {
                let name = name.trim();
                Projection::from_name(name).ok_or_else(|| {
                    Error::invalid(format!(
                        "unknown target module `{name}`; the models have {}",
                        Projection::names()
                    ))
                })
            })
            .collect()
    }

    /// The targets among the projections of `arch`: all of them for `all-linear` (every
    /// projection any family has), else the ones named, each of which `arch` must have.
    pub fn for_architecture(mut self, arch: Architecture) -> Result<Self> {
        self.target_modules = targets_of(arch, &self.target_modules)?;
        Ok(self)
    }

    /// The target modules' names, as PEFT writes them.
    pub fn target_names(&self) -> Vec<&'static str> {
        self.target_modules.iter().map(|p| p.name()).collect()
    }
}

/// The projections of `arch` that `targets` name: all of them for [`Projection::ALL`]
/// (`all-linear`), else the ones named, each of which `arch` must have.
pub fn targets_of(arch: Architecture, targets: &[Projection]) -> Result<Vec<Projection>> {
    let own = arch.projections();
    if targets != Projection::ALL
        && let Some(p) = targets.iter().find(|p| !own.contains(p))
    {
        return Err(Error::invalid(format!(
            "target module `{}` is not a projection of {}; it has {}",
            p.name(),
            arch.class_name(),
            arch.projection_names()
        )));
    }
    Ok(targets
        .iter()
        .copied()
        .filter(|p| own.contains(p))
        .collect())
}

/// `alpha / r`, or `alpha / sqrt(r)` with rank-stabilized LoRA.
pub fn lora_scale(alpha: f64, r: usize, use_rslora: bool) -> f64 {
    if use_rslora {
        alpha / (r as f64).sqrt()
    } else {
        alpha / r as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_and_validation() {
        let mut c = LoraConfig::default();
        assert_eq!(c.scale(), 0.25);
        c.use_rslora = true;
        assert_eq!(c.scale(), 2.0);
        c.r = 0;
        assert!(c.validate().is_err());
        assert!(LoraConfig::parse_target_modules("q_proj,lm_head").is_err());
        assert_eq!(
            LoraConfig::parse_target_modules("all-linear")
                .unwrap()
                .len(),
            9
        );
    }

    #[test]
    fn targets_resolve_per_architecture() {
        let all = LoraConfig::default();
        let llama = all.clone().for_architecture(Architecture::Llama).unwrap();
        assert_eq!(llama.target_modules, Architecture::Llama.projections());
        let phi3 = all.for_architecture(Architecture::Phi3).unwrap();
        assert_eq!(
            phi3.target_names(),
            ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
        );
        let named = |spec: &str| LoraConfig {
            target_modules: LoraConfig::parse_target_modules(spec).unwrap(),
            ..LoraConfig::default()
        };
        let err = named("q_proj,o_proj")
            .for_architecture(Architecture::Phi3)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`q_proj`") && err.contains("qkv_proj"),
            "{err}"
        );
        assert!(
            named("qkv_proj")
                .for_architecture(Architecture::Qwen2)
                .is_err()
        );
        let o = named("o_proj")
            .for_architecture(Architecture::Phi3)
            .unwrap();
        assert_eq!(o.target_modules, [Projection::O]);
    }
}
