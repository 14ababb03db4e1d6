//! `qlora export-gguf`: a model (a base with an adapter merged in, as `qlora merge` merges it,
//! or an already merged model) written as one GGUF v3 file llama.cpp, Ollama and LM Studio
//! run: the architecture's metadata (llama.cpp's `llama`, `qwen2`, `qwen3`, `gemma3`, `phi3`),
//! the tokenizer, the
//! chat template, every tensor in llama.cpp's names and layout (q/k rows permuted where its
//! converter permutes them) and types
//! (`--type`, with llama-quantize's choice of which tensor gets which). Tensors are merged,
//! converted and written one at a time, and the file appears only when complete.

pub mod types;
pub mod vocab;
pub mod writer;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::GgmlDType;

pub use types::GgufType;
use types::{TensorRole, encode, tensor_type};
use writer::{MetaValue, TensorEntry, write_gguf};

use crate::config::tensors::{Crossing, gguf_name};
use crate::config::{Architecture, ModelConfig, Projection, RopeScaling, slides_in_pattern};
use crate::error::{Error, Result};
use crate::gguf::blocks::type_name;
use crate::gguf::config::{
    GEMMA3_LOCAL_ROPE_THETA, GEMMA3_PATTERN, Llama3Rope, PHI3_ROPE_FACTORS, ROPE_FREQS_TENSOR,
    gemma3_query_scalar, llama3_divisors,
};
use crate::gguf::import::permute_rows;
use crate::gguf::keys;
use crate::merge::{MergeBase, MergedWeights};
use crate::staged_dir::StagedDir;
use crate::text::TextOverrides;
use crate::train::recorded_text;

/// How `qlora export-gguf` writes the file.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The file's type: the tensors' ggml types (`--type`).
    pub kind: GgufType,
    /// The base an adapter is added to (`None`: as `qlora merge` chooses).
    pub base: Option<MergeBase>,
    /// `general.name` (default: the model directory's name).
    pub name: Option<String>,
    /// Replace the output if it exists.
    pub overwrite: bool,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportReport {
    /// Tensors written.
    pub tensors: usize,
    /// Bytes of the file.
    pub bytes: u64,
    /// Weights an adapter changed.
    pub merged: usize,
    /// The base the adapter was merged into.
    pub base: MergeBase,
    /// Tensors per ggml type, e.g. ("Q4_K", 180).
    pub types: BTreeMap<&'static str, usize>,
    /// Modules of the adapter file its config does not target (ignored, as PEFT ignores them).
    pub ignored_modules: Vec<String>,
}

fn model_metadata(
    config: &ModelConfig,
    name: &str,
    kind: GgufType,
    window: Option<usize>,
) -> Vec<(String, MetaValue)> {
    let u = |v: usize| MetaValue::U32(v as u32);
    let arch = config.architecture.gguf_name();
    let key = |k: &str| keys::arch(k, arch);
    let mut meta = vec![
        (keys::ARCHITECTURE.into(), MetaValue::String(arch.into())),
        (keys::NAME.into(), MetaValue::String(name.into())),
        (keys::FILE_TYPE.into(), MetaValue::U32(kind.file_type())),
        (keys::QUANTIZATION_VERSION.into(), MetaValue::U32(2)),
        (key(keys::VOCAB_SIZE), u(config.vocab_size)),
        (key(keys::CONTEXT_LENGTH), u(config.max_position_embeddings)),
        (key(keys::EMBEDDING_LENGTH), u(config.hidden_size)),
        (key(keys::BLOCK_COUNT), u(config.num_hidden_layers)),
        (key(keys::FEED_FORWARD_LENGTH), u(config.intermediate_size)),
        (
            key(keys::ROPE_DIMENSION_COUNT),
            u(config.rope.rotary_dim(config.head_dim)),
        ),
        (key(keys::HEAD_COUNT), u(config.num_attention_heads)),
        (key(keys::HEAD_COUNT_KV), u(config.num_key_value_heads)),
        (
            key(keys::LAYERNORM_RMS_EPS),
            MetaValue::F32(config.rms_norm_eps as f32),
        ),
        (
            key(keys::ROPE_FREQ_BASE),
            MetaValue::F32(config.rope.theta as f32),
        ),
    ];
    // Gemma's readers (transformers among them) take a missing key_length as 256.
    let gemma = config.architecture == Architecture::Gemma3;
    if gemma || config.head_dim * config.num_attention_heads != config.hidden_size {
        meta.push((key(keys::KEY_LENGTH), u(config.head_dim)));
        meta.push((key(keys::VALUE_LENGTH), u(config.head_dim)));
    }
    if config.architecture == Architecture::Phi3 {
        // As llama.cpp's converter writes them (0: no window).
        meta.push((key(keys::SLIDING_WINDOW), u(window.unwrap_or(0))));
        let original = match &config.rope.scaling {
            RopeScaling::LongRope {
                original_max_position_embeddings,
                attention_factor,
                ..
            } => {
                meta.push((
                    key(keys::ROPE_SCALING_ATTN_FACTOR),
                    MetaValue::F32(*attention_factor as f32),
                ));
                *original_max_position_embeddings
            }
            _ => config.max_position_embeddings,
        };
        meta.push((key(keys::ROPE_SCALING_ORIG_CTX_LEN), u(original)));
    } else if let Some(window) = window {
        meta.push((key(keys::SLIDING_WINDOW), u(window)));
    }
    if let RopeScaling::Linear { factor } = config.rope.scaling {
        meta.push((
            key(keys::ROPE_SCALING_TYPE),
            MetaValue::String("linear".into()),
        ));
        meta.push((
            key(keys::ROPE_SCALING_FACTOR),
            MetaValue::F32(factor as f32),
        ));
    }
    meta
}

/// The sliding window of a Gemma 3 model, when llama.cpp's `gemma3` can spell its layers: it
/// fixes what `gguf::config` reads back (five sliding layers to a global one, a local RoPE
/// base of 10000, scores scaled by `1/sqrt(head_dim)`, or `1/sqrt(hidden/heads)` with 62
/// layers, no soft-capping); another value is an error naming its key in `file`.
fn gemma3_layout(config: &ModelConfig, file: &Path) -> Result<Option<usize>> {
    let spec = &config.spec;
    let window = spec.layers.iter().find_map(|l| l.window);
    for (i, layer) in spec.layers.iter().enumerate() {
        let expected = window.filter(|_| slides_in_pattern(i, GEMMA3_PATTERN));
        if layer.window != expected {
            return Err(Error::key(
                file,
                "layer_types",
                format!(
                    "layer {i} has no GGUF spelling: llama.cpp's gemma3 slides every layer but \
                     each {GEMMA3_PATTERN}th, with one window"
                ),
            ));
        }
    }
    if window.is_some() && spec.local_rope_theta != Some(GEMMA3_LOCAL_ROPE_THETA) {
        return Err(Error::key(
            file,
            "rope_local_base_freq",
            format!(
                "llama.cpp's gemma3 fixes the sliding layers' RoPE base at {GEMMA3_LOCAL_ROPE_THETA}"
            ),
        ));
    }
    let scalar = gemma3_query_scalar(
        config.num_hidden_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.head_dim,
    );
    if spec.attention_scale != (scalar as f64).powf(-0.5) {
        return Err(Error::key(
            file,
            "query_pre_attn_scalar",
            format!(
                "{} has no GGUF spelling: llama.cpp's gemma3 scales scores by 1/sqrt({scalar})",
                spec.attention_scale.powi(-2).round()
            ),
        ));
    }
    if spec.attention_softcap.is_some() {
        return Err(Error::key(
            file,
            "attn_logit_softcapping",
            "llama.cpp's gemma3 does not soft-cap attention scores",
        ));
    }
    Ok(window)
}

/// LongRoPE and a partial rotary factor have a GGUF spelling in llama.cpp's `phi3` only.
fn check_rope(config: &ModelConfig, file: &Path) -> Result<()> {
    if config.architecture == Architecture::Phi3 {
        return Ok(());
    }
    let arch = config.architecture.gguf_name();
    if matches!(config.rope.scaling, RopeScaling::LongRope { .. }) {
        return Err(Error::key(
            file,
            "rope_scaling",
            format!("LongRoPE has no spelling in llama.cpp's `{arch}` (only in phi3)"),
        ));
    }
    if config.rope.partial_rotary_factor != 1.0 {
        return Err(Error::key(
            file,
            "partial_rotary_factor",
            format!("llama.cpp's `{arch}` rotates whole heads"),
        ));
    }
    Ok(())
}

/// Write the model in `model_dir` (with the adapter in `adapter_dir` merged in, if given) as
/// the GGUF file `out`.
pub fn export_gguf(
    model_dir: &Path,
    adapter_dir: Option<&Path>,
    out: &Path,
    options: &ExportOptions,
) -> Result<ExportReport> {
    let weights = MergedWeights::open(model_dir, adapter_dir, options.base)?;
    let config = &weights.config;
    let arch = config.architecture.gguf_name();
    if config.spec.has_bias(Projection::Gate) {
        return Err(Error::key(
            &weights.config_path,
            "mlp_bias",
            format!("biases in the MLP are not part of llama.cpp's `{arch}` architecture"),
        ));
    }
    check_rope(config, &weights.config_path)?;
    let name = options.name.clone().unwrap_or_else(|| {
        std::fs::canonicalize(model_dir)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into())
    });
    let window = match config.architecture {
        Architecture::Gemma3 => gemma3_layout(config, &weights.config_path)?,
        // One on every layer; llama.cpp's `phi3` stores it and runs without it.
        Architecture::Phi3 => config.spec.layers.first().and_then(|l| l.window),
        _ => None,
    };
    let mut metadata = model_metadata(config, &name, options.kind, window);
    // With the chat template and eos token the adapter was trained with.
    let text = match adapter_dir {
        Some(dir) => recorded_text(dir)?,
        None => TextOverrides::default(),
    };
    metadata.extend(vocab::tokenizer_metadata(
        model_dir,
        config.vocab_size,
        &text,
    )?);

    let checkpoint = &weights.checkpoint;
    let has_output = !config.spec.tied_head && checkpoint.contains("lm_head.weight");
    let mut tensors: Vec<TensorEntry<'_>> = Vec::new();
    let mut types: BTreeMap<&'static str, usize> = BTreeMap::new();
    if let RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings,
    } = config.rope.scaling
    {
        let params = Llama3Rope {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        };
        let divisors: Vec<f32> = llama3_divisors(&params, config.rope.theta, config.head_dim)
            .into_iter()
            .map(|d| d as f32)
            .collect();
        *types.entry("F32").or_default() += 1;
        tensors.push(TensorEntry {
            name: ROPE_FREQS_TENSOR.into(),
            shape: vec![divisors.len()],
            dtype: GgmlDType::F32,
            bytes: Box::new(move || encode(&divisors, 1, GgmlDType::F32)),
        });
    }
    if let RopeScaling::LongRope {
        short_factor,
        long_factor,
        ..
    } = &config.rope.scaling
    {
        let (short_name, long_name) = PHI3_ROPE_FACTORS;
        for (name, factors) in [(long_name, long_factor), (short_name, short_factor)] {
            let values: Vec<f32> = factors.iter().map(|&f| f as f32).collect();
            *types.entry("F32").or_default() += 1;
            tensors.push(TensorEntry {
                name: name.into(),
                shape: vec![values.len()],
                dtype: GgmlDType::F32,
                bytes: Box::new(move || encode(&values, 1, GgmlDType::F32)),
            });
        }
    }
    // The checkpoint's tensors in llama.cpp's order: embedding, layers, norm, head.
    let mut names: Vec<(String, Crossing, Option<usize>)> = Vec::new();
    for hf in checkpoint.names() {
        if !hf.ends_with(".weight") && !hf.ends_with(".bias") {
            continue;
        }
        if config.spec.tied_head && hf == "lm_head.weight" {
            continue;
        }
        match gguf_name(hf, config.architecture) {
            Some(crossing) => {
                let heads = crossing
                    .rotary
                    .heads(config.num_attention_heads, config.num_key_value_heads);
                names.push((hf.to_string(), crossing, heads))
            }
            None if hf.starts_with("model.") || hf == "lm_head.weight" => {
                return Err(Error::key(
                    checkpoint.file_of(hf),
                    hf,
                    format!("a tensor llama.cpp's `{arch}` architecture has no place for"),
                ));
            }
            None => {}
        }
    }
    let order = |gg: &str| match gg {
        "token_embd.weight" => (0, 0),
        "output_norm.weight" => (2, 0),
        "output.weight" => (3, 0),
        _ => (1, 0),
    };
    names.sort_by_key(|(_, c, _)| (order(&c.name).0, c.layer.unwrap_or(0)));
    for (hf, crossing, heads) in names {
        let Crossing {
            name: gg,
            layer,
            shift,
            ..
        } = crossing;
        // A 4-bit checkpoint stores packed bytes: its projections' shapes are the config's.
        let shape = match weights.linear_shape(&hf) {
            Some(shape) => shape.to_vec(),
            None => checkpoint.view(&hf)?.shape().to_vec(),
        };
        let cols = *shape.last().unwrap_or(&1);
        let role = TensorRole {
            name: &gg,
            cols,
            two_dimensional: shape.len() == 2,
            layer,
            layers: config.num_hidden_layers,
            has_output,
        };
        let dtype = tensor_type(options.kind, role);
        *types.entry(type_name(dtype)).or_default() += 1;
        let weights = &weights;
        let shape_in = shape.clone();
        tensors.push(TensorEntry {
            name: gg,
            shape: shape.clone(),
            dtype,
            bytes: Box::new(move || {
                let values = weights.values(&hf, Some(&shape_in))?;
                let mut values = match heads {
                    Some(heads) => permute_rows(&values, shape_in[0], heads),
                    None => values,
                };
                if let Some(shift) = shift {
                    values.iter_mut().for_each(|v| *v += shift);
                }
                encode(&values, cols, dtype).map_err(|e| e.at_key(checkpoint.file_of(&hf), &hf))
            }),
        });
    }
    let count = tensors.len();
    let mut inputs: Vec<&Path> = vec![model_dir];
    inputs.extend(adapter_dir);
    let staged = StagedDir::new(out, options.overwrite, &inputs)?;
    let file = staged.path().join("model.gguf");
    let bytes = write_gguf(&file, &metadata, tensors)?;
    staged.commit_file(&file)?;
    Ok(ExportReport {
        tensors: count,
        bytes,
        merged: weights.merged_count(),
        base: weights.base,
        types,
        ignored_modules: weights.ignored_modules.clone(),
    })
}
