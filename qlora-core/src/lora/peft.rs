//! Adapters in Hugging Face PEFT's format: `adapter_config.json` and
//! `adapter_model.safetensors` with keys
//! `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` (`[r, in]`) and
//! `...lora_B.weight` (`[out, r]`). PEFT loads what we save unchanged, and we load what it saves
//! (also keys that carry an adapter name, `lora_A.default.weight`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::{Tensor, TensorData};
use serde_json::{Value, json};

use super::config::{LoraConfig, LoraInit, lora_scale};
use super::targeting::Targeting;
use crate::checkpoint::{Checkpoint, OutTensor, write_safetensors_file};
use crate::config::Projection;
use crate::dtype::{FloatDtype, encode_f32};
use crate::error::{Error, Result};
use crate::model::{CausalLm, LoraAdapter};

/// PEFT's adapter configuration file.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// PEFT's adapter weights file.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
const KEY_PREFIX: &str = "base_model.model.";

crate::named_enum! {
    /// The dtype adapter weights are written in.
    #[derive(Default)]
    pub enum AdapterDtype: "adapter dtype" {
        /// 32-bit float (what training keeps).
        #[default]
        F32 = "f32" | "float32",
        /// bfloat16 (half the size).
        BF16 = "bf16" | "bfloat16",
    }
}

impl AdapterDtype {
    fn float(self) -> FloatDtype {
        match self {
            AdapterDtype::F32 => FloatDtype::F32,
            AdapterDtype::BF16 => FloatDtype::BF16,
        }
    }
}

fn number(x: f64) -> Value {
    // PEFT writes integral alphas as integers.
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// `adapter_config.json` for `config`. A base model from the Hugging Face cache is recorded
/// as PEFT records it: its repo id, and its commit as `revision`.
pub fn adapter_config_json(config: &LoraConfig, base_model: &str) -> Value {
    let (base_model, revision) = match crate::hub::snapshot_origin(Path::new(base_model)) {
        Some((repo, commit)) => (repo, json!(commit)),
        None => (base_model.to_string(), Value::Null),
    };
    json!({
        "alpha_pattern": {},
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": match config.init {
            LoraInit::KaimingUniform => json!(true),
            LoraInit::Gaussian => json!("gaussian"),
        },
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": number(config.alpha),
        "lora_dropout": config.dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": config.r,
        "rank_pattern": {},
        "revision": revision,
        "target_modules": config.target_names(),
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": config.use_rslora,
    })
}

/// Write the model's adapters into `dir` (which must exist) in PEFT's format.
pub fn save_adapter(
    model: &CausalLm,
    dir: &Path,
    config: &LoraConfig,
    base_model: &str,
    dtype: AdapterDtype,
) -> Result<()> {
    let adapters = model.adapters();
    if adapters.is_empty() {
        return Err(Error::invalid("the model has no adapters to save"));
    }
    let mut tensors = BTreeMap::new();
    for (path, adapter) in adapters {
        for (part, tensor) in [("lora_A", &adapter.a), ("lora_B", &adapter.b)] {
            let shape = tensor.dims().to_vec();
            let values: Vec<f32> = tensor
                .clone()
                .into_data()
                .try_into_vec_as::<f32>()
                .map_err(|e| Error::invalid(format!("cannot read adapter {path}: {e:?}")))?;
            tensors.insert(
                format!("{KEY_PREFIX}{path}.{part}.weight"),
                OutTensor::owned(
                    dtype.float().safetensors(),
                    shape,
                    encode_f32(&values, dtype.float()),
                ),
            );
        }
    }
    let weights = dir.join(ADAPTER_WEIGHTS_FILE);
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let views: Vec<(&String, &OutTensor<'_>)> = tensors.iter().collect();
    write_safetensors_file(views, metadata, &weights)?;
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    let text = serde_json::to_string_pretty(&adapter_config_json(config, base_model))
        .expect("JSON value serializes");
    std::fs::write(&config_path, text + "\n").map_err(|e| Error::io(&config_path, e))
}

/// Parse a tensor key into (module path, "lora_A" | "lora_B").
fn parse_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let rest = rest.strip_suffix(".weight")?;
    // `...q_proj.lora_A` or `...q_proj.lora_A.<adapter name>`
    for part in ["lora_A", "lora_B"] {
        let marker = format!(".{part}");
        if let Some(at) = rest.find(&marker) {
            let tail = &rest[at + marker.len()..];
            if tail.is_empty() || (tail.starts_with('.') && !tail[1..].contains('.')) {
                return Some((&rest[..at], part));
            }
        }
    }
    None
}

/// The settings of an adapter file that matter for using it.
#[derive(Debug, Clone)]
pub struct AdapterSettings {
    /// The rank (`r`).
    pub r: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// `lora_dropout`.
    pub dropout: f64,
    /// Whether the scale is `alpha / sqrt(r)` (rsLoRA).
    pub use_rslora: bool,
    /// Which modules the config targets, with their ranks and alphas.
    pub targeting: Targeting,
}

impl AdapterSettings {
    /// `module`'s scale: its alpha (`alpha_pattern` or `lora_alpha`) over its rank (or the
    /// rank's square root with rsLoRA).
    pub fn scale(&self, module: &str, rank: usize) -> f64 {
        lora_scale(self.targeting.alpha(module), rank, self.use_rslora)
    }
}

/// One module's adapter weights, as the file stores them (f32).
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleWeights {
    /// The shape of A (`[r, in]`).
    pub a_shape: Vec<usize>,
    /// A's values.
    pub a: Vec<f32>,
    /// The shape of B (`[out, r]`).
    pub b_shape: Vec<usize>,
    /// B's values.
    pub b: Vec<f32>,
}

impl ModuleWeights {
    /// The module's rank (A's rows).
    pub fn rank(&self) -> usize {
        self.a_shape.first().copied().unwrap_or(0)
    }

    /// Check the shapes against a `[out, in]` linear; errors name the adapter key.
    pub fn check(&self, weights: &Path, module: &str, out: usize, inp: usize) -> Result<()> {
        let rank = self.rank();
        if rank == 0 || self.a_shape != [rank, inp] {
            return Err(Error::key(
                weights,
                format!("{KEY_PREFIX}{module}.lora_A.weight"),
                format!("shape {:?}, expected [r, {inp}]", self.a_shape),
            ));
        }
        if self.b_shape != [out, rank] {
            return Err(Error::key(
                weights,
                format!("{KEY_PREFIX}{module}.lora_B.weight"),
                format!("shape {:?}, expected [{out}, {rank}]", self.b_shape),
            ));
        }
        Ok(())
    }
}

/// An adapter directory read and checked for what we support, not yet tied to a model.
#[derive(Debug, Clone)]
pub struct AdapterFile {
    /// The adapter's settings from its configuration.
    pub settings: AdapterSettings,
    /// Module path (`model.layers.0.self_attn.q_proj`) to its matrices: the modules the config
    /// targets, checked against its ranks.
    pub modules: BTreeMap<String, ModuleWeights>,
    /// Modules with weights in the file that the config does not target: PEFT ignores them
    /// (with a warning), and so do we.
    pub ignored: Vec<String>,
    /// The weights file.
    pub weights_path: std::path::PathBuf,
}

/// Read `adapter_config.json` and `adapter_model.safetensors` of a PEFT LoRA adapter.
pub fn read_adapter(dir: &Path) -> Result<AdapterFile> {
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| Error::file(&config_path, format!("invalid JSON: {e}")))?;
    let bad = |key: &str, message: &str| Error::key(&config_path, key, message);
    let flag = |key: &str| json.get(key).and_then(Value::as_bool).unwrap_or(false);
    let peft_type = json.get("peft_type").and_then(Value::as_str).unwrap_or("");
    if peft_type != "LORA" {
        return Err(bad(
            "peft_type",
            &format!("`{peft_type}` is not supported, only LORA"),
        ));
    }
    if flag("use_dora") {
        return Err(bad("use_dora", "DoRA adapters are not supported"));
    }
    if flag("fan_in_fan_out") {
        return Err(bad("fan_in_fan_out", "must be false for LLaMA linears"));
    }
    let bias = json.get("bias").and_then(Value::as_str).unwrap_or("none");
    if bias != "none" {
        return Err(bad(
            "bias",
            &format!("`{bias}` is not supported, only none"),
        ));
    }
    if json.get("modules_to_save").is_some_and(|v| !v.is_null()) {
        return Err(bad(
            "modules_to_save",
            "fully trained extra modules are not supported",
        ));
    }
    let object = json
        .as_object()
        .ok_or_else(|| Error::file(&config_path, "expected a JSON object"))?;
    let targeting = Targeting::from_json(object).map_err(|(key, message)| bad(key, &message))?;
    let (r, alpha) = targeting.r_and_alpha();
    let settings = AdapterSettings {
        r,
        alpha,
        dropout: json
            .get("lora_dropout")
            .and_then(Value::as_f64)
            .unwrap_or(0.0),
        use_rslora: flag("use_rslora"),
        targeting,
    };

    let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
    if !weights_path.is_file() {
        return Err(Error::file(
            &weights_path,
            "missing (adapter_model.bin is not supported; save with safetensors)",
        ));
    }
    let file = Checkpoint::open_file(&weights_path)?;
    // Per module: A and B as (shape, values), either may be missing until all keys are read.
    type Half = Option<(Vec<usize>, Vec<f32>)>;
    let mut halves: BTreeMap<String, [Half; 2]> = BTreeMap::new();
    let mut ignored = std::collections::BTreeSet::new();
    let mut any = false;
    for key in file.names() {
        let (module, part) = parse_key(key).ok_or_else(|| {
            Error::key(
                &weights_path,
                key,
                "not a LoRA weight of a LLaMA model (expected base_model.model.<module>.lora_A.weight)",
            )
        })?;
        any = true;
        // Weights the config does not target are never decoded.
        if !settings.targeting.targets(module) {
            ignored.insert(module.to_string());
            continue;
        }
        let shape = file.view(key)?.shape().to_vec();
        // Decoded to f32, a non-finite value an error naming the key.
        let values = file.read_f32(key, None)?;
        halves.entry(module.to_string()).or_default()[usize::from(part == "lora_B")] =
            Some((shape, values));
    }
    if !any {
        return Err(Error::file(&weights_path, "contains no LoRA weights"));
    }
    let mut modules = BTreeMap::new();
    for (module, [a, b]) in halves {
        let missing = |part: &str| {
            Error::key(
                &weights_path,
                format!("{KEY_PREFIX}{module}.{part}.weight"),
                "missing",
            )
        };
        let (a_shape, a) = a.ok_or_else(|| missing("lora_A"))?;
        let (b_shape, b) = b.ok_or_else(|| missing("lora_B"))?;
        let rank = settings.targeting.rank(&module);
        if a_shape.first() != Some(&rank) {
            return Err(Error::key(
                &weights_path,
                format!("{KEY_PREFIX}{module}.lora_A.weight"),
                format!(
                    "shape {a_shape:?}, but the config gives this module r {rank} (PEFT refuses \
                     the size mismatch)"
                ),
            ));
        }
        modules.insert(
            module,
            ModuleWeights {
                a_shape,
                a,
                b_shape,
                b,
            },
        );
    }
    if modules.is_empty() {
        return Err(Error::file(
            &config_path,
            "target_modules matches none of the adapter's weights",
        ));
    }
    Ok(AdapterFile {
        settings,
        modules,
        ignored: ignored.into_iter().collect(),
        weights_path,
    })
}

/// Load a PEFT LoRA adapter from `dir` onto `model` (replacing any adapters). Returns the
/// adapter's configuration.
pub fn load_adapter(model: &mut CausalLm, dir: &Path) -> Result<LoraConfig> {
    apply_adapter(model, read_adapter(dir)?)
}

/// Put the adapters of `file` (from [`read_adapter`]) on `model` (replacing any adapters).
/// Returns the adapter's configuration.
pub fn apply_adapter(model: &mut CausalLm, file: AdapterFile) -> Result<LoraConfig> {
    let device = model.device.clone();
    model.detach_lora();
    let mut linears: HashMap<String, _> = model.linears_mut().into_iter().collect();
    let mut targets = Vec::new();
    for (module, weights) in file.modules {
        let linear = linears.get_mut(&module).ok_or_else(|| {
            Error::key(
                &file.weights_path,
                format!("{KEY_PREFIX}{module}"),
                "no such linear layer in this model",
            )
        })?;
        weights.check(
            &file.weights_path,
            &module,
            linear.out_features,
            linear.in_features,
        )?;
        let rank = weights.rank();
        linear.lora = Some(LoraAdapter {
            a: Tensor::from_data(TensorData::new(weights.a, weights.a_shape), &device),
            b: Tensor::from_data(TensorData::new(weights.b, weights.b_shape), &device),
            scale: file.settings.scale(&module, rank),
            dropout: file.settings.dropout,
            key: 0,
        });
        let short = module.rsplit('.').next().expect("module");
        let projection = Projection::from_name(short).expect("a linear of the model");
        if !targets.contains(&projection) {
            targets.push(projection);
        }
    }
    // Keys follow model order, so dropout streams match those of a fresh attach.
    for (i, layer) in model.layers.iter_mut().enumerate() {
        for (p, linear) in layer.linears_mut() {
            if let Some(lora) = &mut linear.lora {
                lora.key = p.adapter_key(i);
            }
        }
    }
    targets.sort();
    Ok(LoraConfig {
        r: file.settings.r,
        alpha: file.settings.alpha,
        dropout: file.settings.dropout,
        target_modules: targets,
        use_rslora: file.settings.use_rslora,
        init: LoraInit::KaimingUniform,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_with_and_without_adapter_names() {
        assert_eq!(
            parse_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
            Some(("model.layers.0.self_attn.q_proj", "lora_A"))
        );
        assert_eq!(
            parse_key("base_model.model.model.layers.1.mlp.down_proj.lora_B.default.weight"),
            Some(("model.layers.1.mlp.down_proj", "lora_B"))
        );
        assert_eq!(
            parse_key("model.layers.0.self_attn.q_proj.lora_A.weight"),
            None
        );
        assert_eq!(parse_key("base_model.model.lm_head.weight"), None);
    }
}
