//! Building a [`CausalLm`] from a Hugging Face directory: dense checkpoints (quantized to NF4 on
//! load, or kept dense) and bitsandbytes 4-bit checkpoints as they are, each tensor found by
//! its name in the model's table ([`ModelTensor`]) and present as its spec says. Weights are
//! converted one at a time from the memory-mapped files.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::attention::Attention;
use super::causal_lm::CausalLm;
use super::layer::DecoderLayer;
use super::linear::{BaseWeight, Linear};
use super::mlp::Mlp;
use super::projections::InputProjections;
use super::rms_norm::RmsNorm;
use super::rope::RotaryEmbedding;
use crate::backend::Nf4Weight;
use crate::checkpoint::Checkpoint;
use crate::config::{CONFIG_FILE, ModelConfig, ModelTensor, NormForm, Projection, RopeConfig};
use crate::dtype::ComputeDtype;
use crate::error::{Error, Result};
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

impl Bits {
    /// 4 or 16, as `--bits` and `training_config.toml` write it.
    pub fn number(self) -> u32 {
        match self {
            Bits::Four => 4,
            Bits::Sixteen => 16,
        }
    }

    /// The precision of `bits` (4 or 16).
    pub fn from_number(bits: u64) -> Result<Self> {
        match bits {
            4 => Ok(Bits::Four),
            16 => Ok(Bits::Sixteen),
            other => Err(Error::invalid(format!(
                "the base precision must be 4 or 16 bits, got `{other}`"
            ))),
        }
    }
}

impl FromStr for Bits {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        s.parse::<u64>()
            .map_err(|_| {
                Error::invalid(format!(
                    "the base precision must be 4 or 16 bits, got `{s}`"
                ))
            })
            .and_then(Bits::from_number)
    }
}

impl fmt::Display for Bits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.number())
    }
}

impl Serialize for Bits {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_u32(self.number())
    }
}

impl<'de> Deserialize<'de> for Bits {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Bits::from_number(u64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

crate::named_enum! {
    /// How NF4 linears multiply.
    #[derive(Default)]
    pub enum Nf4Matmul: "NF4 matmul" {
        /// Dequantize to f32 (bit-exact with bitsandbytes) and multiply in f32: what
        /// bitsandbytes does when training, on GPUs, and on CPUs without AVX512-BF16.
        #[default]
        DequantizeF32 = "f32",
        /// bitsandbytes' CPU bf16 inference kernel, emulated bit for bit: what transformers +
        /// bitsandbytes inference gives on CPUs with AVX512-BF16. Inference only.
        BnbCpuBf16 = "bnb-cpu-bf16",
    }
}

/// How a model is loaded.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The frozen linears' precision.
    pub bits: Bits,
    /// NF4's block size and double quantization.
    pub nf4: Nf4Config,
    /// How NF4 linears multiply.
    pub nf4_matmul: Nf4Matmul,
    /// Where the model lives.
    pub device: Device,
    /// What the dense weights (embeddings, head, a 16-bit base, biases) are stored in and the
    /// activations computed in; norms' weights and adapters stay f32.
    pub compute: ComputeDtype,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            bits: Bits::Four,
            nf4: Nf4Config::default(),
            nf4_matmul: Nf4Matmul::default(),
            device: Device::flex(),
            compute: ComputeDtype::F32,
        }
    }
}

struct Loader<'a> {
    checkpoint: &'a Checkpoint,
    device: &'a Device,
    compute: ComputeDtype,
}

impl Loader<'_> {
    fn nf4_weight(&self, state: Nf4Tensor, options: &LoadOptions) -> BaseWeight {
        let groups_fit = state.shape[1].is_multiple_of(state.blocksize);
        match options.nf4_matmul {
            Nf4Matmul::BnbCpuBf16 if groups_fit => BaseWeight::Nf4BnbCpuBf16(Arc::new(state)),
            _ => BaseWeight::Nf4(Nf4Weight::new(&state, self.device)),
        }
    }

    fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        let values = self.checkpoint.read_f32(name, Some(&shape))?;
        Ok(Tensor::from_data(
            TensorData::new(values, shape),
            self.device,
        ))
    }

    /// A weight the compute dtype applies to, stored in it.
    fn dense<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        Ok(self.in_compute(self.tensor(name, shape)?))
    }

    fn in_compute<const D: usize>(&self, t: Tensor<D>) -> Tensor<D> {
        match self.compute {
            ComputeDtype::F32 => t,
            other => t.cast(other.burn()),
        }
    }

    fn optional_bias(&self, name: &str, len: usize, present: bool) -> Result<Option<Tensor<1>>> {
        if present {
            self.dense(name, [len]).map(Some)
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
                Bits::Sixteen => BaseWeight::Dense(self.in_compute(Tensor::from_data(
                    TensorData::new(state.dequantize(), [out, inp]),
                    self.device,
                ))),
            }
        } else {
            match options.bits {
                Bits::Sixteen => BaseWeight::Dense(self.dense(name, [out, inp])?),
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

impl CausalLm {
    /// Load the model in `dir` (config.json + safetensors weights).
    pub fn load(dir: impl AsRef<Path>, options: &LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let config = ModelConfig::load(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        Self::from_checkpoint(config, &checkpoint, options)
    }

    /// The model of `config` with the weights of `checkpoint`, its tensors found by the
    /// names of [`ModelTensor`].
    pub fn from_checkpoint(
        config: ModelConfig,
        checkpoint: &Checkpoint,
        options: &LoadOptions,
    ) -> Result<Self> {
        let spec = &config.spec;
        if let Some(what) = spec.unsupported() {
            return Err(Error::key(
                checkpoint.dir().join(CONFIG_FILE),
                "architectures",
                format!(
                    "{} needs {what}, which this version cannot compute",
                    config.architecture.class_name()
                ),
            ));
        }
        let device = &options.device;
        let loader = Loader {
            checkpoint,
            device,
            compute: options.compute,
        };
        let (vocab, hidden) = (config.vocab_size, config.hidden_size);
        let norm = |tensor: ModelTensor, layer: usize, width: usize| -> Result<RmsNorm> {
            let weight = loader.tensor(&tensor.hf_name(layer, "weight"), [width])?;
            Ok(RmsNorm {
                weight: match spec.norm {
                    NormForm::Weight => weight,
                    // `1 + w` in f32, as Gemma's norms compute it.
                    NormForm::OnePlusWeight => weight.add_scalar(1.0),
                },
                eps: config.rms_norm_eps,
            })
        };
        let embed_name = ModelTensor::TokenEmbd.hf_name(0, "weight");
        let embed_tokens = loader.dense(&embed_name, [vocab, hidden])?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for (index, layer) in spec.layers.iter().enumerate() {
            let linear = |p: Projection| {
                let shape = config.projection_shape(p);
                let name = p.weight_name(index);
                loader.linear(&name, shape, spec.has_bias(p), options, config.bnb_4bit)
            };
            // Split, or fused into one linear whose rows stack the parts.
            let group = |fused: bool, whole: Projection| -> Result<InputProjections> {
                let parts = config.projection_parts(whole);
                Ok(if fused {
                    InputProjections::Fused {
                        projection: whole,
                        linear: linear(whole)?,
                        widths: parts.iter().map(|(_, w)| *w).collect(),
                    }
                } else {
                    InputProjections::Split(
                        parts
                            .into_iter()
                            .map(|(p, _)| Ok((p, linear(p)?)))
                            .collect::<Result<_>>()?,
                    )
                })
            };
            let head_norm = |tensor: ModelTensor| {
                spec.qk_norm
                    .then(|| norm(tensor, index, config.head_dim))
                    .transpose()
            };
            let sandwich = |tensor: ModelTensor| {
                spec.sandwich_norms
                    .then(|| norm(tensor, index, hidden))
                    .transpose()
            };
            layers.push(DecoderLayer {
                input_layernorm: norm(ModelTensor::AttnNorm, index, hidden)?,
                self_attn: Attention {
                    qkv: group(spec.fused_qkv, Projection::Qkv)?,
                    o_proj: linear(Projection::O)?,
                    q_norm: head_norm(ModelTensor::AttnQNorm)?,
                    k_norm: head_norm(ModelTensor::AttnKNorm)?,
                    num_heads: config.num_attention_heads,
                    num_kv_heads: config.num_key_value_heads,
                    head_dim: config.head_dim,
                    scale: spec.attention_scale,
                    window: layer.window,
                    softcap: spec.attention_softcap,
                    rope: layer.rope,
                },
                attn_out_norm: sandwich(ModelTensor::AttnPostNorm)?,
                mlp_norm: norm(
                    if spec.sandwich_norms {
                        ModelTensor::FfnPreNorm
                    } else {
                        ModelTensor::FfnNorm
                    },
                    index,
                    hidden,
                )?,
                mlp: Mlp {
                    activation: spec.activation,
                    gate_up: group(spec.fused_gate_up, Projection::GateUp)?,
                    down_proj: linear(Projection::Down)?,
                },
                mlp_out_norm: sandwich(ModelTensor::FfnPostNorm)?,
            });
        }
        let head_name = ModelTensor::Output.hf_name(0, "weight");
        let lm_head_weight = if spec.tied_head || !checkpoint.contains(&head_name) {
            if !spec.tied_head {
                return Err(Error::key(
                    checkpoint.dir(),
                    head_name,
                    "missing, and tie_word_embeddings is false",
                ));
            }
            embed_tokens.clone()
        } else {
            loader.dense(&head_name, [vocab, hidden])?
        };
        let local_rope = spec.local_rope_theta.map(|theta| {
            let local = RopeConfig {
                partial_rotary_factor: config.rope.partial_rotary_factor,
                ..RopeConfig::plain(theta)
            };
            RotaryEmbedding::new(&local, config.head_dim)
        });
        Ok(CausalLm {
            norm: norm(ModelTensor::OutputNorm, 0, hidden)?,
            lm_head: Linear::new(BaseWeight::Dense(lm_head_weight), None, hidden, vocab),
            rope: RotaryEmbedding::new(&config.rope, config.head_dim),
            local_rope,
            embed_tokens,
            layers,
            device: device.clone(),
            compute: options.compute,
            config,
        })
    }
}
