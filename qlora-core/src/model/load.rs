//! Building a [`Llama`] from a Hugging Face directory: dense checkpoints (quantized to NF4 on
//! load, or kept dense) and bitsandbytes 4-bit checkpoints as they are. Weights are converted
//! one at a time from the memory-mapped files.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};

use super::attention::Attention;
use super::layer::DecoderLayer;
use super::linear::{BaseWeight, Linear};
use super::llama::Llama;
use super::mlp::Mlp;
use super::rms_norm::RmsNorm;
use super::rope::RotaryEmbedding;
use crate::checkpoint::Checkpoint;
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::quant::tensor_ops::DeviceNf4;
use crate::quant::{Nf4Config, Nf4Tensor};

/// Precision of the frozen decoder linears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bits {
    /// NF4 with double quantization (the QLoRA default).
    #[default]
    Four,
    /// Dense, as stored (computed in f32).
    Sixteen,
}

impl FromStr for Nf4Matmul {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Nf4Matmul::DequantizeF32),
            "bnb-cpu-bf16" => Ok(Nf4Matmul::BnbCpuBf16),
            other => Err(Error::invalid(format!(
                "--nf4-matmul must be f32 or bnb-cpu-bf16, got `{other}`"
            ))),
        }
    }
}

impl FromStr for Bits {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "4" => Ok(Bits::Four),
            "16" => Ok(Bits::Sixteen),
            other => Err(Error::invalid(format!(
                "--bits must be 4 or 16, got `{other}`"
            ))),
        }
    }
}

/// How NF4 linears multiply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Nf4Matmul {
    /// Dequantize to f32 (bit-exact with bitsandbytes) and multiply in f32: what bitsandbytes
    /// does when training, on GPUs, and on CPUs without AVX512-BF16.
    #[default]
    DequantizeF32,
    /// bitsandbytes' CPU bf16 inference kernel, emulated bit for bit: what transformers +
    /// bitsandbytes inference gives on CPUs with AVX512-BF16. Inference only.
    BnbCpuBf16,
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub bits: Bits,
    pub nf4: Nf4Config,
    pub nf4_matmul: Nf4Matmul,
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            bits: Bits::Four,
            nf4: Nf4Config::default(),
            nf4_matmul: Nf4Matmul::default(),
            device: Device::flex(),
        }
    }
}

struct Loader<'a> {
    checkpoint: &'a Checkpoint,
    device: &'a Device,
}

impl Loader<'_> {
    fn nf4_weight(&self, state: Nf4Tensor, options: &LoadOptions) -> BaseWeight {
        let groups_fit = state.shape[1].is_multiple_of(state.blocksize);
        match options.nf4_matmul {
            Nf4Matmul::BnbCpuBf16 if groups_fit => BaseWeight::Nf4BnbCpuBf16(Arc::new(state)),
            _ => BaseWeight::Nf4(DeviceNf4::new(&state, self.device)),
        }
    }

    fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        let values = self.checkpoint.read_f32(name, Some(&shape))?;
        Ok(Tensor::from_data(
            TensorData::new(values, shape),
            self.device,
        ))
    }

    fn optional_bias(&self, name: &str, len: usize, present: bool) -> Result<Option<Tensor<1>>> {
        if present {
            self.tensor(name, [len]).map(Some)
        } else {
            Ok(None)
        }
    }

    fn linear(
        &self,
        name: &str,
        [out, inp]: [usize; 2],
        bias: bool,
        options: &LoadOptions,
        bnb: bool,
    ) -> Result<Linear> {
        let file = self.checkpoint.file_of(name);
        let weight = if bnb {
            let state = Nf4Tensor::from_state_dict(name, |key| self.checkpoint.view(key))
                .map_err(|e| e.at_key(file, name))?;
            if state.shape != [out, inp] {
                return Err(Error::key(
                    file,
                    name,
                    format!("shape {:?}, expected {:?}", state.shape, [out, inp]),
                ));
            }
            match options.bits {
                Bits::Four => self.nf4_weight(state, options),
                Bits::Sixteen => BaseWeight::Dense(Tensor::from_data(
                    TensorData::new(state.dequantize(), [out, inp]),
                    self.device,
                )),
            }
        } else {
            match options.bits {
                Bits::Sixteen => BaseWeight::Dense(self.tensor(name, [out, inp])?),
                Bits::Four => {
                    let dtype = self.checkpoint.float_dtype(name)?;
                    let values = self.checkpoint.read_f32(name, Some(&[out, inp]))?;
                    let state = Nf4Tensor::quantize(&values, &[out, inp], dtype, options.nf4)
                        .map_err(|e| e.at_key(file, name))?;
                    drop(values);
                    self.nf4_weight(state, options)
                }
            }
        };
        let bias_name = name.replace(".weight", ".bias");
        Ok(Linear::new(
            weight,
            self.optional_bias(&bias_name, out, bias)?,
            inp,
            out,
        ))
    }
}

impl Llama {
    /// Load the model in `dir` (config.json + safetensors weights).
    pub fn load(dir: impl AsRef<Path>, options: &LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let config = LlamaConfig::load(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        Self::from_checkpoint(config, &checkpoint, options)
    }

    pub fn from_checkpoint(
        config: LlamaConfig,
        checkpoint: &Checkpoint,
        options: &LoadOptions,
    ) -> Result<Self> {
        let device = &options.device;
        let loader = Loader { checkpoint, device };
        let (vocab, hidden) = (config.vocab_size, config.hidden_size);
        let norm = |name: &str| -> Result<RmsNorm> {
            Ok(RmsNorm {
                weight: loader.tensor(name, [hidden])?,
                eps: config.rms_norm_eps,
            })
        };
        let embed_tokens = loader.tensor("model.embed_tokens.weight", [vocab, hidden])?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for index in 0..config.num_hidden_layers {
            let shapes = config.linear_shapes(index);
            let linear = |i: usize, bias: bool| {
                let (name, shape) = &shapes[i];
                loader.linear(name, *shape, bias, options, config.bnb_4bit)
            };
            let attn_bias = config.attention_bias;
            let mlp_bias = config.mlp_bias;
            let prefix = format!("model.layers.{index}");
            layers.push(DecoderLayer {
                input_layernorm: norm(&format!("{prefix}.input_layernorm.weight"))?,
                self_attn: Attention {
                    q_proj: linear(0, attn_bias)?,
                    k_proj: linear(1, attn_bias)?,
                    v_proj: linear(2, attn_bias)?,
                    o_proj: linear(3, attn_bias)?,
                    num_heads: config.num_attention_heads,
                    num_kv_heads: config.num_key_value_heads,
                    head_dim: config.head_dim,
                },
                post_attention_layernorm: norm(&format!(
                    "{prefix}.post_attention_layernorm.weight"
                ))?,
                mlp: Mlp {
                    gate_proj: linear(4, mlp_bias)?,
                    up_proj: linear(5, mlp_bias)?,
                    down_proj: linear(6, mlp_bias)?,
                },
            });
        }
        let lm_head_weight = if config.tie_word_embeddings || !checkpoint.contains("lm_head.weight")
        {
            if !config.tie_word_embeddings {
                return Err(Error::key(
                    checkpoint.dir(),
                    "lm_head.weight",
                    "missing, and tie_word_embeddings is false",
                ));
            }
            embed_tokens.clone()
        } else {
            loader.tensor("lm_head.weight", [vocab, hidden])?
        };
        Ok(Llama {
            norm: norm("model.norm.weight")?,
            lm_head: Linear::new(BaseWeight::Dense(lm_head_weight), None, hidden, vocab),
            rope: RotaryEmbedding::new(&config.rope, config.head_dim),
            embed_tokens,
            layers,
            device: device.clone(),
            config,
        })
    }
}
