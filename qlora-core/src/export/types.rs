//! What `--type` writes: which ggml type each tensor gets (llama.cpp's choices: its converter's
//! for f32/f16/bf16, `llama-quantize`'s for the quantized mixes) and the block bytes of each
//! type (ggml's reference quantizers: candle's for the 32-value formats, ours for K-quants).

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::gguf::blocks::candle_message;
use crate::gguf::kquants::{QK_K, quantize_q4k, quantize_q5k, quantize_q6k};

crate::named_enum! {
    /// A GGUF file type (llama.cpp's `--outtype` / `llama-quantize` names).
    pub enum GgufType: "GGUF type" {
        /// Every tensor f32.
        F32 = "f32",
        /// Matrices f16.
        F16 = "f16",
        /// Matrices bf16.
        Bf16 = "bf16",
        /// 8-bit blocks of 32 (Unsloth's default).
        Q8_0 = "q8_0",
        /// 4-bit blocks of 32 with a scale.
        Q4_0 = "q4_0",
        /// 4-bit blocks of 32 with a scale and a minimum.
        Q4_1 = "q4_1",
        /// 5-bit blocks of 32 with a scale.
        Q5_0 = "q5_0",
        /// 5-bit blocks of 32 with a scale and a minimum.
        Q5_1 = "q5_1",
        /// llama-quantize's Q4_K_M mix.
        Q4KM = "q4_k_m",
        /// llama-quantize's Q5_K_M mix.
        Q5KM = "q5_k_m",
        /// Q6_K throughout.
        Q6K = "q6_k",
    }
}

impl GgufType {
    /// `general.file_type` (llama.cpp's `llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            GgufType::F32 => 0,
            GgufType::F16 => 1,
            GgufType::Q4_0 => 2,
            GgufType::Q4_1 => 3,
            GgufType::Q8_0 => 7,
            GgufType::Q5_0 => 8,
            GgufType::Q5_1 => 9,
            GgufType::Q4KM => 15,
            GgufType::Q5KM => 17,
            GgufType::Q6K => 18,
            GgufType::Bf16 => 32,
        }
    }

    /// The type of most weights.
    fn default_type(self) -> GgmlDType {
        match self {
            GgufType::F32 => GgmlDType::F32,
            GgufType::F16 => GgmlDType::F16,
            GgufType::Bf16 => GgmlDType::BF16,
            GgufType::Q8_0 => GgmlDType::Q8_0,
            GgufType::Q4_0 => GgmlDType::Q4_0,
            GgufType::Q4_1 => GgmlDType::Q4_1,
            GgufType::Q5_0 => GgmlDType::Q5_0,
            GgufType::Q5_1 => GgmlDType::Q5_1,
            GgufType::Q4KM => GgmlDType::Q4K,
            GgufType::Q5KM => GgmlDType::Q5K,
            GgufType::Q6K => GgmlDType::Q6K,
        }
    }

    fn quantized(self) -> bool {
        !matches!(self, GgufType::F32 | GgufType::F16 | GgufType::Bf16)
    }
}

/// Values a block of `dtype` holds.
pub fn block_size(dtype: GgmlDType) -> usize {
    dtype.block_size()
}

/// Where a tensor sits in the model, as far as the type choice cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorRole<'a> {
    /// The GGUF name (`blk.3.attn_v.weight`).
    pub name: &'a str,
    /// Values a row holds (ggml's `ne[0]`); 1-D tensors are never quantized.
    pub cols: usize,
    /// Whether the tensor is a matrix.
    pub two_dimensional: bool,
    /// The decoder layer of a `blk.N.` tensor.
    pub layer: Option<usize>,
    /// Decoder layers of the model.
    pub layers: usize,
    /// Whether the model has its own `output.weight` (untied).
    pub has_output: bool,
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third one
/// between get more bits in the K-quant mixes.
fn use_more_bits(layer: usize, layers: usize) -> bool {
    layer < layers / 8 || layer >= 7 * layers / 8 || (layer as i64 - (layers / 8) as i64) % 3 == 2
}

/// The ggml type of a tensor in a file of `kind`.
pub fn tensor_type(kind: GgufType, role: TensorRole<'_>) -> GgmlDType {
    if !role.two_dimensional {
        return GgmlDType::F32;
    }
    let default = kind.default_type();
    if !kind.quantized() {
        return default;
    }
    let name = role.name;
    let is_output = name == "output.weight" || (!role.has_output && name == "token_embd.weight");
    let mut t = default;
    if is_output {
        if !role.cols.is_multiple_of(block_size(default)) {
            t = GgmlDType::Q8_0;
        } else if default != GgmlDType::Q8_0 {
            t = GgmlDType::Q6K;
        }
    } else if name.contains("attn_v.weight") {
        let layer = role.layer.unwrap_or(0);
        if matches!(kind, GgufType::Q4KM | GgufType::Q5KM) && use_more_bits(layer, role.layers) {
            t = GgmlDType::Q6K;
        }
        // 70B LLaMA (80 layers): V is 8x smaller than Q there; more bits cost little.
        if role.layers == 80 && t == GgmlDType::Q4K {
            t = GgmlDType::Q5K;
        }
    } else if name.contains("attn_qkv.weight") {
        // A fused projection (Phi-3): one step up.
        match kind {
            GgufType::Q4KM => t = GgmlDType::Q5K,
            GgufType::Q5KM => t = GgmlDType::Q6K,
            _ => {}
        }
    } else if name.contains("ffn_down") {
        let layer = role.layer.unwrap_or(0);
        if matches!(kind, GgufType::Q4KM | GgufType::Q5KM) && use_more_bits(layer, role.layers) {
            t = GgmlDType::Q6K;
        }
    }
    // Rows that do not split into whole blocks fall back as llama-quantize falls back.
    if !role.cols.is_multiple_of(block_size(t)) {
        t = match t {
            GgmlDType::Q4K => GgmlDType::Q5_0,
            GgmlDType::Q5K => GgmlDType::Q5_1,
            GgmlDType::Q6K => GgmlDType::Q8_0,
            other => other,
        };
        if !role.cols.is_multiple_of(block_size(t)) {
            t = GgmlDType::F16;
        }
    }
    t
}

/// The bytes of `values` (rows of `cols`) as `dtype` blocks, row after row.
pub fn encode(values: &[f32], cols: usize, dtype: GgmlDType) -> Result<Vec<u8>> {
    match dtype {
        GgmlDType::F32 => Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K => {
            if !cols.is_multiple_of(QK_K) {
                return Err(Error::invalid(format!(
                    "rows of {cols} values do not split into blocks of {QK_K}"
                )));
            }
            Ok(match dtype {
                GgmlDType::Q4K => quantize_q4k(values),
                GgmlDType::Q5K => quantize_q5k(values),
                _ => quantize_q6k(values),
            })
        }
        other => {
            let rows = values.len() / cols.max(1);
            let tensor = Tensor::from_slice(values, (rows, cols), &Device::Cpu)
                .map_err(|e| Error::invalid(candle_message(e)))?;
            let q =
                QTensor::quantize(&tensor, other).map_err(|e| Error::invalid(candle_message(e)))?;
            q.data()
                .map(|d| d.into_owned())
                .map_err(|e| Error::invalid(candle_message(e)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str, cols: usize, layer: Option<usize>, has_output: bool) -> TensorRole<'_> {
        TensorRole {
            name,
            cols,
            two_dimensional: true,
            layer,
            layers: 32,
            has_output,
        }
    }

    #[test]
    fn llama_quantize_choices() {
        let k = GgufType::Q4KM;
        assert_eq!(
            tensor_type(k, role("output.weight", 4096, None, true)),
            GgmlDType::Q6K
        );
        assert_eq!(
            tensor_type(k, role("token_embd.weight", 4096, None, true)),
            GgmlDType::Q4K
        );
        // Tied: the embedding is the output (rows of 576 do not split into blocks of 256).
        assert_eq!(
            tensor_type(k, role("token_embd.weight", 4096, None, false)),
            GgmlDType::Q6K
        );
        assert_eq!(
            tensor_type(k, role("token_embd.weight", 576, None, false)),
            GgmlDType::Q8_0
        );
        // 32 layers: 0-3 and 28-31 and every third between get Q6_K.
        let v = |l| tensor_type(k, role("blk.x.attn_v.weight", 4096, Some(l), true));
        assert_eq!(
            (0..32)
                .filter(|&l| v(l) == GgmlDType::Q6K)
                .collect::<Vec<_>>(),
            [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
        );
        assert_eq!(v(4), GgmlDType::Q4K);
        assert_eq!(
            tensor_type(k, role("blk.4.attn_q.weight", 4096, Some(4), true)),
            GgmlDType::Q4K
        );
        // Rows of 576 do not split into blocks of 256: Q4_K falls back to Q5_0, Q6_K to Q8_0.
        assert_eq!(
            tensor_type(k, role("blk.4.attn_q.weight", 576, Some(4), true)),
            GgmlDType::Q5_0
        );
        assert_eq!(
            tensor_type(k, role("output.weight", 576, None, true)),
            GgmlDType::Q8_0
        );
        assert_eq!(
            tensor_type(GgufType::Q4_0, role("output.weight", 4096, None, true)),
            GgmlDType::Q6K
        );
        assert_eq!(
            tensor_type(GgufType::Q8_0, role("output.weight", 4096, None, true)),
            GgmlDType::Q8_0
        );
        assert_eq!(
            tensor_type(GgufType::F16, role("output.weight", 4096, None, true)),
            GgmlDType::F16
        );
        let norm = TensorRole {
            two_dimensional: false,
            ..role("output_norm.weight", 4096, None, true)
        };
        assert_eq!(tensor_type(k, norm), GgmlDType::F32);
    }
}
