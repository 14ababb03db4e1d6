//! `qlora plan`: the peak memory of a QLoRA training run, before any weight is loaded.
//!
//! Sizes that follow from the format are exact (NF4 with double quantization is 4.127 bits a
//! parameter at block 64; LoRA parameters, gradients and AdamW states). Activations depend on
//! how the implementation keeps intermediate tensors; their coefficients below count the
//! tensors our decoder layer, attention and loss keep alive at their peak (what a layer keeps
//! for its backward pass is counted from the model's own list,
//! [`LayerActivations::kept_values`]), and `examples/plan_check.rs` checks the total against
//! measured training runs.

mod advice;
mod presets;

use serde::Serialize;

pub use advice::alternatives;
pub use presets::{load_config, preset_config, preset_names};

use crate::config::{ModelConfig, Projection};
use crate::error::{Error, Result};
use crate::model::{Bits, LayerActivations};

/// What a planned run trains and how.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanSettings {
    /// The frozen linears' precision.
    pub bits: Bits,
    /// LoRA's rank.
    pub rank: usize,
    /// The projections adapted.
    pub target_modules: Vec<Projection>,
    /// Rows a micro-batch.
    pub batch_size: usize,
    /// Tokens a row.
    pub seq_len: usize,
    /// Whether layers are recomputed in the backward pass.
    pub gradient_checkpointing: bool,
    /// 8-bit AdamW states (bitsandbytes' blockwise form) instead of 32-bit.
    pub optimizer_8bit: bool,
    /// With a paged optimizer only this much of the optimizer state stays on the device
    /// (None: all of it).
    pub optimizer_device_budget: Option<u64>,
    /// Bytes of the compute dtype: 4 (f32, our CPU path) or 2 (bf16/f16 on GPUs).
    pub compute_bytes: u64,
}

impl Default for PlanSettings {
    fn default() -> Self {
        PlanSettings {
            bits: Bits::Four,
            rank: 64,
            target_modules: Projection::ALL.to_vec(),
            batch_size: 1,
            seq_len: 512,
            gradient_checkpointing: true,
            optimizer_8bit: false,
            optimizer_device_budget: None,
            compute_bytes: 4,
        }
    }
}

/// One term of a plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanItem {
    /// Stable identifier (the `--json` key).
    pub key: &'static str,
    /// Its bytes.
    pub bytes: u64,
    /// What it counts.
    pub detail: String,
}

/// A plan: where the memory of a training step goes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryPlan {
    /// Every term.
    pub items: Vec<PlanItem>,
    /// Device memory at the peak of a training step: the sum of the items.
    pub peak_bytes: u64,
    /// Optimizer state the paged optimizer keeps in host memory instead.
    pub host_bytes: u64,
    /// Values of the model.
    pub parameters: u64,
    /// Values LoRA trains.
    pub trainable_parameters: u64,
}

/// How many tensors of each kind are alive at the peak, per token and decoder layer unless
/// said otherwise. The fused CPU path (f32) is fitted to the peak heap of our training step
/// (`examples/plan_check.rs`: three model shapes, sequence 256 and 1024, checkpointing on and
/// off); the tensor-op path of GPUs (bf16/f16) counts the tensors its operations keep whole.
mod alive_at_peak {
    /// Fused CPU path, one layer's backward pass: intermediate-sized tensors (the recomputed
    /// gate, up and SwiGLU output, and a LoRA input and its gradient)...
    pub const CPU_INTERMEDIATE: f64 = 4.0;
    /// ...and hidden-sized ones (the gradient being formed).
    pub const CPU_HIDDEN: f64 = 1.0;
    /// Fused CPU path: rows of logits the loss holds at once (`backend/flex/loss.rs`).
    pub const LOSS_CHUNK: u64 = 64;
    /// GPU path, one layer: intermediate-sized tensors (hidden- and query-sized ones folded
    /// in; LLaMA shapes keep intermediate/hidden near 2.7)...
    pub const INTERMEDIATE: f64 = 12.25;
    /// ...and attention-score tensors (scores, softmax, their gradients).
    pub const SCORES: f64 = 3.6;
    /// GPU path: f32 vocabulary-sized tensors in the loss (logits and their gradient).
    pub const LOGITS: f64 = 1.5;
    /// GPU path: dense copies of the largest frozen weight while it is multiplied.
    pub const DEQUANTIZED: f64 = 2.0;
    /// Copies of the LoRA gradients.
    pub const GRADIENTS: f64 = 1.0;
    /// Tokenizer, dataset, batches, rotary tables, attention blocks and bookkeeping, whatever
    /// the model.
    pub const WORKSPACE: u64 = 6 << 20;
}

/// Bytes of an NF4 tensor with double quantization at block 64: packed codes, 8-bit absmax,
/// f32 absmax of every 256 blocks, the offset.
pub fn nf4_bytes(n: u64) -> u64 {
    let blocks = n.div_ceil(64);
    n.div_ceil(2) + blocks + blocks.div_ceil(256) * 4 + 4
}

/// Bytes of AdamW's two states for a tensor of `n` values.
pub(crate) fn adam_state_bytes(n: u64, eight_bit: bool) -> u64 {
    // bitsandbytes keeps tensors under 4096 values in 32 bits.
    if eight_bit && n >= 4096 {
        2 * (n + n.div_ceil(256) * 4)
    } else {
        2 * n * 4
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Bytes beyond which nothing is planned (1 EiB): far above any device, and low enough that the
/// sums of the plan's terms cannot overflow.
const PLANNABLE: f64 = (1u64 << 60) as f64;

/// Refuse sizes whose plan would not fit in 64 bits, naming what to lower. Each term is
/// estimated in f64 (which cannot overflow) with the plan's largest factors.
fn check_plannable(config: &ModelConfig, settings: &PlanSettings) -> Result<()> {
    // The targets must be the model's projections (as training requires).
    crate::lora::targets_of(config.architecture, &settings.target_modules)?;
    let f = |x: usize| x as f64;
    let (h, inter, layers, vocab) = (
        f(config.hidden_size),
        f(config.intermediate_size),
        f(config.num_hidden_layers),
        f(config.vocab_size),
    );
    let heads = f(config.num_attention_heads);
    let kv = f(config.num_key_value_heads) * f(config.head_dim);
    let (b, s, r) = (
        f(settings.batch_size),
        f(settings.seq_len),
        f(settings.rank),
    );
    let width = h
        .max(inter)
        .max(heads * f(config.head_dim))
        .max(kv)
        .max(vocab);
    let terms = [
        ("the model's sizes", layers * 7.0 * width * width * 8.0),
        ("--rank", r * layers * 7.0 * 2.0 * width * 16.0),
        (
            "--seq-len and --batch-size",
            b * s * layers * 8.0 * width * 8.0,
        ),
        ("--seq-len and --batch-size", b * heads * s * s * 8.0),
    ];
    for (what, bytes) in terms {
        if bytes.is_nan() || bytes >= PLANNABLE {
            return Err(Error::invalid(format!(
                "{what}: the plan would exceed 1 EiB (--seq-len {}, --batch-size {}, --rank {}): \
                 nothing fits; lower them",
                settings.seq_len, settings.batch_size, settings.rank
            )));
        }
    }
    Ok(())
}

/// The peak memory of a training step of `config` with `settings`, item by item. Sizes too
/// large to plan (over 1 EiB) are an error.
pub fn plan(config: &ModelConfig, settings: &PlanSettings) -> Result<MemoryPlan> {
    check_plannable(config, settings)?;
    let h = config.hidden_size as u64;
    let inter = config.intermediate_size as u64;
    let layers = config.num_hidden_layers as u64;
    let heads = config.num_attention_heads as u64;
    let vocab = config.vocab_size as u64;
    let d = settings.compute_bytes;
    let (b, s) = (settings.batch_size as u64, settings.seq_len as u64);
    let r = settings.rank as u64;

    // (projection, in, out) of each projection of a layer.
    let projections: Vec<(Projection, u64, u64)> = config
        .architecture
        .projections()
        .iter()
        .map(|&p| {
            let [out, inp] = config.projection_shape(p);
            (p, inp as u64, out as u64)
        })
        .collect();
    let adapted = |p: &Projection| settings.target_modules.contains(p);

    let mut items = Vec::new();
    let linear_params: u64 = projections.iter().map(|(_, i, o)| i * o).sum::<u64>() * layers;
    let (base_bytes, base_detail) = match settings.bits {
        Bits::Four => {
            let bytes = projections
                .iter()
                .map(|(_, i, o)| nf4_bytes(i * o))
                .sum::<u64>()
                * layers;
            (
                bytes,
                format!(
                    "{linear_params} projection weights in NF4 with double quantization ({:.3} bits each)",
                    bytes as f64 * 8.0 / linear_params as f64
                ),
            )
        }
        Bits::Sixteen => (
            linear_params * d,
            format!("{linear_params} projection weights, dense"),
        ),
    };
    items.push(PlanItem {
        key: "base_weights",
        bytes: base_bytes,
        detail: base_detail,
    });

    let embed_params = vocab * h * if config.spec.tied_head { 1 } else { 2 };
    let head_norms = if config.spec.qk_norm {
        2 * config.head_dim as u64
    } else {
        0
    };
    let norm_params = (2 * layers + 1) * h + layers * head_norms;
    items.push(PlanItem {
        key: "embeddings_and_head",
        bytes: (embed_params + norm_params) * d,
        detail: format!(
            "embed_tokens{} and norms, dense",
            if config.spec.tied_head {
                " (tied lm_head)"
            } else {
                " and lm_head"
            }
        ),
    });

    let lora_params: u64 = projections
        .iter()
        .filter(|(p, _, _)| adapted(p))
        .map(|(_, i, o)| r * (i + o))
        .sum::<u64>()
        * layers;
    items.push(PlanItem {
        key: "lora_parameters",
        bytes: lora_params * 4,
        detail: format!("{lora_params} trainable parameters (f32)"),
    });
    items.push(PlanItem {
        key: "lora_gradients",
        bytes: (alive_at_peak::GRADIENTS * (lora_params * 4) as f64) as u64,
        detail: "gradients of the adapters (f32)".into(),
    });

    let optimizer: u64 = projections
        .iter()
        .filter(|(p, _, _)| adapted(p))
        .map(|(_, i, o)| {
            adam_state_bytes(r * i, settings.optimizer_8bit)
                + adam_state_bytes(r * o, settings.optimizer_8bit)
        })
        .sum::<u64>()
        * layers;
    let on_device = settings
        .optimizer_device_budget
        .map_or(optimizer, |budget| budget.min(optimizer));
    items.push(PlanItem {
        key: "optimizer_states",
        bytes: on_device,
        detail: format!(
            "AdamW, {} states, {} of {} on the device",
            if settings.optimizer_8bit {
                "8-bit"
            } else {
                "32-bit"
            },
            mib(on_device),
            mib(optimizer)
        ),
    });

    let tokens = b * s;
    let kept = LayerActivations::kept_values(config);
    let largest = projections.iter().map(|(_, i, o)| i * o).max().unwrap_or(0);
    // The fused CPU kernels (f32) or the tensor-op path of GPUs.
    let fused = d == 4;
    let (layer, kept_per_layer, logits, dequantized) = if fused {
        use alive_at_peak::*;
        let layer = tokens as f64 * (CPU_INTERMEDIATE * inter as f64 + CPU_HIDDEN * h as f64);
        // Without checkpointing, every activation the layer's backward pass reads.
        let kept = (tokens * kept.all as u64) as f64;
        // A chunk of logits, and the head's input and its gradient.
        let logits = LOSS_CHUNK.min(tokens) * vocab * 4 + 2 * tokens * h * 4;
        // Every thread decodes a tile of at most 256 rows (or columns) of a weight.
        let tile = 256 * (h.max(inter)) * 4 * 2;
        ((layer * 4.0) as u64, (kept * 4.0) as u64, logits, tile)
    } else {
        use alive_at_peak::*;
        let layer = (tokens as f64 * INTERMEDIATE * inter as f64
            + SCORES * (b * heads * s * s) as f64)
            * d as f64;
        let logits = (LOGITS * (tokens * vocab * 4) as f64) as u64;
        let dequantized = (DEQUANTIZED * (largest * d) as f64) as u64;
        (layer as u64, layer as u64, logits, dequantized)
    };
    if settings.gradient_checkpointing {
        // The layer's input, attention output and post-attention state, and the attention's
        // log-sum-exp (f32).
        let per_layer = if fused {
            tokens * (kept.checkpoint as u64 * d + kept.checkpoint_f32 as u64 * 4)
        } else {
            tokens * h * d
        };
        // The backward pass frees a layer's checkpoint as the adapters' gradients of that
        // layer appear: at its peak the two together are the larger of them.
        let checkpoints = layers * per_layer;
        let grads = (alive_at_peak::GRADIENTS * (lora_params * 4) as f64) as u64;
        items.push(PlanItem {
            key: "checkpoints",
            bytes: checkpoints.saturating_sub(grads),
            detail: format!(
                "{} of each of {layers} layers ({}), beyond the gradients that replace them",
                if fused {
                    "the input, attention output and post-attention state"
                } else {
                    "the input"
                },
                mib(checkpoints)
            ),
        });
        items.push(PlanItem {
            key: "layer_activations",
            bytes: layer,
            detail: "one layer recomputed in the backward pass".into(),
        });
    } else {
        let kept = layers * kept_per_layer;
        let grads = (alive_at_peak::GRADIENTS * (lora_params * 4) as f64) as u64;
        let bytes = if fused {
            kept.saturating_sub(grads)
        } else {
            kept
        };
        items.push(PlanItem {
            key: "layer_activations",
            bytes,
            detail: format!(
                "all {layers} layers kept for the backward pass ({}), beyond the gradients that replace them",
                mib(kept)
            ),
        });
    }
    items.push(PlanItem {
        key: "logits_and_loss",
        bytes: logits,
        detail: if fused {
            format!(
                "logits over {vocab} tokens, {} rows at a time (f32)",
                alive_at_peak::LOSS_CHUNK
            )
        } else {
            format!("logits over {vocab} tokens, log-softmax and gradient (f32)")
        },
    });
    items.push(PlanItem {
        key: "dequantized_weight",
        bytes: match settings.bits {
            Bits::Four => dequantized,
            Bits::Sixteen => 0,
        },
        detail: if fused {
            "tiles of the weights being multiplied, decoded per thread".into()
        } else {
            "the largest projection, dense for one matmul".into()
        },
    });

    items.push(PlanItem {
        key: "workspace",
        bytes: alive_at_peak::WORKSPACE,
        detail: "tokenizer, data, batches".into(),
    });

    let peak_bytes = items.iter().map(|i| i.bytes).sum();
    Ok(MemoryPlan {
        items,
        peak_bytes,
        host_bytes: optimizer - on_device,
        parameters: linear_params + embed_params + norm_params,
        trainable_parameters: lora_params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nf4_with_double_quant_is_4_127_bits() {
        let n = 4096 * 4096;
        let bits = nf4_bytes(n) as f64 * 8.0 / n as f64;
        assert!((bits - 4.127).abs() < 1e-3, "{bits}");
    }

    #[test]
    fn presets_parse_and_plan() {
        for name in preset_names() {
            let config = load_config(name).unwrap();
            let plan = plan(&config, &PlanSettings::default()).unwrap();
            assert!(plan.peak_bytes > 0);
        }
        let config = load_config("llama-7b").unwrap();
        let plan = plan(&config, &PlanSettings::default()).unwrap();
        // 6.5B parameters in the projections: about 3.4 GB at 4.127 bits.
        let base = plan.items.iter().find(|i| i.key == "base_weights").unwrap();
        assert!(
            (3.2e9..3.6e9).contains(&(base.bytes as f64)),
            "{}",
            base.bytes
        );
        assert_eq!(plan.trainable_parameters, 159_907_840);
        // What PEFT prints for Qwen2.5-7B with r 64 on every linear layer.
        let config = load_config("qwen2.5-7b").unwrap();
        let qwen = super::plan(&config, &PlanSettings::default()).unwrap();
        assert_eq!(qwen.trainable_parameters, 161_480_704);
    }
}
