//! The floating-point storage types of Hugging Face checkpoints and their conversions.

use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;
use safetensors::Dtype;

use crate::error::{Error, Result};

/// A float storage type: what a checkpoint holds and what we write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FloatDtype {
    /// 32-bit float.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
}

impl FloatDtype {
    /// The name torch and `config.json` use (`"bfloat16"`).
    pub fn torch_name(self) -> &'static str {
        match self {
            FloatDtype::F32 => "float32",
            FloatDtype::F16 => "float16",
            FloatDtype::BF16 => "bfloat16",
        }
    }

    /// Parse a torch dtype name as found in `config.json` (`torch_dtype` / `dtype`).
    pub fn from_torch_name(name: &str) -> Option<Self> {
        match name.trim_start_matches("torch.") {
            "float32" | "float" => Some(FloatDtype::F32),
            "float16" | "half" => Some(FloatDtype::F16),
            "bfloat16" => Some(FloatDtype::BF16),
            _ => None,
        }
    }

    /// The safetensors dtype.
    pub fn safetensors(self) -> Dtype {
        match self {
            FloatDtype::F32 => Dtype::F32,
            FloatDtype::F16 => Dtype::F16,
            FloatDtype::BF16 => Dtype::BF16,
        }
    }

    /// The float dtype of a safetensors dtype (`None` for the others).
    pub fn from_safetensors(dtype: Dtype) -> Option<Self> {
        match dtype {
            Dtype::F32 => Some(FloatDtype::F32),
            Dtype::F16 => Some(FloatDtype::F16),
            Dtype::BF16 => Some(FloatDtype::BF16),
            _ => None,
        }
    }

    /// Bytes a value.
    pub fn size(self) -> usize {
        match self {
            FloatDtype::F32 => 4,
            FloatDtype::F16 | FloatDtype::BF16 => 2,
        }
    }
}

impl fmt::Display for FloatDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FloatDtype::F32 => "f32",
            FloatDtype::F16 => "f16",
            FloatDtype::BF16 => "bf16",
        })
    }
}

impl FromStr for FloatDtype {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "fp32" => Ok(FloatDtype::F32),
            "f16" | "fp16" => Ok(FloatDtype::F16),
            "bf16" => Ok(FloatDtype::BF16),
            other => FloatDtype::from_torch_name(other).ok_or_else(|| {
                Error::invalid(format!(
                    "unknown dtype `{other}`, expected bf16, f16 or f32"
                ))
            }),
        }
    }
}

crate::named_enum! {
    /// What a run's activations, base matrix multiplies and attention inputs are stored and
    /// multiplied in. LoRA weights, their gradients, optimizer states, the norms' statistics,
    /// attention's softmax and the loss stay f32 whatever it is (as bitsandbytes'
    /// `bnb_4bit_compute_dtype` with peft: only the frozen base computes in it).
    pub enum ComputeDtype: "compute dtype" {
        /// 32-bit float: the CPU kernels' dtype.
        F32 = "f32" | "fp32" | "float32",
        /// bfloat16: the default on GPUs that have it.
        Bf16 = "bf16" | "bfloat16",
        /// IEEE half precision.
        F16 = "f16" | "fp16" | "float16",
    }
}

impl ComputeDtype {
    /// Burn's dtype.
    pub fn burn(self) -> burn::tensor::DType {
        match self {
            ComputeDtype::F32 => burn::tensor::DType::F32,
            ComputeDtype::Bf16 => burn::tensor::DType::BF16,
            ComputeDtype::F16 => burn::tensor::DType::F16,
        }
    }

    /// Bytes a value.
    pub fn size(self) -> usize {
        match self {
            ComputeDtype::F32 => 4,
            ComputeDtype::Bf16 | ComputeDtype::F16 => 2,
        }
    }

    /// The compute dtype of a run on `device`: the one asked for, if the device computes in it,
    /// else bf16 on GPUs that have it (the QLoRA paper's setting) and f32 elsewhere (the CPU
    /// kernels compute in f32; WGSL devices have no bf16, and f16 training is asked for, not
    /// assumed).
    pub fn resolve(asked: Option<ComputeDtype>, device: &burn::tensor::Device) -> Result<Self> {
        use crate::device::{is_gpu, supports_float};
        match asked {
            Some(dtype) if supports_float(device, dtype.burn()) => Ok(dtype),
            Some(dtype) => Err(Error::invalid(format!(
                "--compute-dtype {dtype}: this device cannot compute in {dtype} (wgpu's WGSL \
                 shaders have no bf16); use {}",
                if supports_float(device, burn::tensor::DType::F16) {
                    "f16 or f32"
                } else {
                    "f32"
                }
            ))),
            None if is_gpu(device) && supports_float(device, burn::tensor::DType::BF16) => {
                Ok(ComputeDtype::Bf16)
            }
            None => Ok(ComputeDtype::F32),
        }
    }
}

/// Decode little-endian `bytes` of `dtype` into f32 values (exact for all three types).
pub fn decode_f32(bytes: &[u8], dtype: FloatDtype) -> Vec<f32> {
    let mut out = vec![0f32; bytes.len() / dtype.size()];
    const CHUNK: usize = 1 << 16;
    out.par_chunks_mut(CHUNK)
        .zip(bytes.par_chunks(CHUNK * dtype.size()))
        .for_each(|(out, bytes)| match dtype {
            FloatDtype::F32 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            FloatDtype::F16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            FloatDtype::BF16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
        });
    out
}

/// Encode f32 values as little-endian `dtype` bytes, rounding to nearest even as torch does.
pub fn encode_f32(values: &[f32], dtype: FloatDtype) -> Vec<u8> {
    let mut out = vec![0u8; values.len() * dtype.size()];
    const CHUNK: usize = 1 << 16;
    out.par_chunks_mut(CHUNK * dtype.size())
        .zip(values.par_chunks(CHUNK))
        .for_each(|(out, values)| match dtype {
            FloatDtype::F32 => {
                for (o, v) in out.chunks_exact_mut(4).zip(values) {
                    o.copy_from_slice(&v.to_le_bytes());
                }
            }
            FloatDtype::F16 => {
                for (o, v) in out.chunks_exact_mut(2).zip(values) {
                    o.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes());
                }
            }
            FloatDtype::BF16 => {
                for (o, v) in out.chunks_exact_mut(2).zip(values) {
                    o.copy_from_slice(&half::bf16::from_f32(*v).to_le_bytes());
                }
            }
        });
    out
}

/// Little-endian bytes of f32 values (for writing f32 tensors).
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    encode_f32(values, FloatDtype::F32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names() {
        let values = [1.0f32, -2.5, 0.15625, 384.0];
        for dtype in [FloatDtype::F32, FloatDtype::F16, FloatDtype::BF16] {
            assert_eq!(decode_f32(&encode_f32(&values, dtype), dtype), values);
            assert_eq!(FloatDtype::from_torch_name(dtype.torch_name()), Some(dtype));
            assert_eq!(dtype.to_string().parse::<FloatDtype>().unwrap(), dtype);
        }
        assert!("int8".parse::<FloatDtype>().is_err());
    }
}
