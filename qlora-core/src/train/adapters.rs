//! The adapters a run starts from: fresh ones, or those of `--adapter`, continued with their
//! own settings.

use std::path::{Path, PathBuf};

use super::config::TrainConfig;
use super::progress::Progress;
use crate::config::Projection;
use crate::error::{Error, Result};
use crate::lora::{AdapterFile, LoraConfig, apply_adapter, read_adapter};
use crate::model::CausalLm;

/// Put the run's adapters on `model`: those read from `start_from` (the directory and its
/// file), or fresh ones drawn with `seed`. Warns of ranks above a projection's width.
pub(super) fn attach_adapters(
    model: &mut CausalLm,
    lora: &LoraConfig,
    start_from: Option<(PathBuf, AdapterFile)>,
    seed: u64,
    progress: &mut dyn Progress,
) -> Result<()> {
    match start_from {
        Some((dir, file)) => {
            apply_adapter(model, file)?;
            let expected = model.layers.len() * lora.target_modules.len();
            if model.adapters().len() != expected {
                return Err(Error::file(
                    &dir,
                    format!(
                        "adapts {} of the model's {expected} {} projections: training \
                         continues adapters on whole projections only",
                        model.adapters().len(),
                        lora.target_names().join("/")
                    ),
                ));
            }
            for (_, linear) in model.linears_mut() {
                if let Some(adapter) = &mut linear.lora {
                    adapter.dropout = lora.dropout;
                }
            }
        }
        None => model.attach_lora(lora, seed)?,
    }

    for p in &lora.target_modules {
        let [out, inp] = model.config.projection_shape(*p);
        if lora.r > out.min(inp) {
            progress.message(&format!(
                "warning: r {} is above min(in, out) = {} of {}: its adapter has more \
                 parameters than a full update of the projection and gains nothing from \
                 the extra rank",
                lora.r,
                out.min(inp),
                p.name()
            ));
        }
    }
    Ok(())
}

/// Read the adapter a run continues (`--adapter`) and make the run's LoRA settings its own.
/// Refuses adapters training could not save as they are: per-module ranks or alphas.
pub(super) fn adapter_to_continue(
    dir: &Path,
    config: &mut TrainConfig,
    progress: &mut dyn Progress,
) -> Result<(PathBuf, AdapterFile)> {
    let file = read_adapter(dir)?;
    let settings = &file.settings;
    let mut targets: Vec<Projection> = Vec::new();
    for (module, weights) in &file.modules {
        let uniform =
            weights.rank() == settings.r && settings.targeting.alpha(module) == settings.alpha;
        if !uniform {
            return Err(Error::file(
                dir,
                format!(
                    "{module} has its own rank or alpha (rank_pattern/alpha_pattern): training \
                     continues adapters with one r and alpha"
                ),
            ));
        }
        let short = module.rsplit('.').next().unwrap_or_default();
        if let Some(p) = Projection::from_name(short)
            && !targets.contains(&p)
        {
            targets.push(p);
        }
    }
    targets.sort();
    config.rank = settings.r;
    config.alpha = settings.alpha;
    config.use_rslora = settings.use_rslora;
    config.target_modules = targets
        .iter()
        .map(|p| p.name())
        .collect::<Vec<_>>()
        .join(",");
    progress.message(&format!(
        "continuing the adapter in {}: r {}, alpha {}, {}{}",
        dir.display(),
        config.rank,
        config.alpha,
        config.target_modules,
        if config.use_rslora { ", rsLoRA" } else { "" }
    ));
    Ok((dir.to_path_buf(), file))
}
