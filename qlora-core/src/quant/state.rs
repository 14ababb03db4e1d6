//! The complete 4-bit quant state of one weight, and its bitsandbytes state-dict form.
//!
//! A weight `W` of a bitsandbytes 4-bit checkpoint is stored as these tensors:
//! `W` (u8, `[ceil(n/2), 1]`, packed codes), `W.absmax` (u8 per block with double quantization,
//! else f32), `W.quant_map` (f32 x16), `W.nested_absmax` (f32 per 256 blocks) and
//! `W.nested_quant_map` (f32 x256) with double quantization, and
//! `W.quant_state.bitsandbytes__nf4`: the remaining fields as UTF-8 JSON bytes.

use std::sync::OnceLock;

use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde::Deserialize;

use super::blockwise8::{self, CodeLut};
use super::dynamic_map::dynamic_map;
use super::nf4::{self, NF4_CODE};
use super::python_repr::python_float_repr;
use super::torch_sum::torch_mean;
use crate::dtype::{FloatDtype, f32_bytes};
use crate::error::{Error, Result};

/// Block size of the second-level (absmax) quantization; fixed by bitsandbytes.
pub const NESTED_BLOCKSIZE: usize = 256;
const QUANT_STATE_SUFFIX: &str = "quant_state.bitsandbytes__nf4";

/// How to quantize: the QLoRA defaults are block size 64 with double quantization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nf4Config {
    /// Values a block shares an absmax over.
    pub blocksize: usize,
    /// Whether the absmax values are themselves quantized to 8 bits.
    pub double_quant: bool,
}

impl Default for Nf4Config {
    fn default() -> Self {
        Nf4Config {
            blocksize: 64,
            double_quant: true,
        }
    }
}

/// The absmax of every block, plain or itself quantized.
#[derive(Debug, Clone, PartialEq)]
pub enum Absmax {
    /// One f32 a block.
    Plain(Vec<f32>),
    /// One 8-bit code a block ([`DoubleQuant`]).
    Double(DoubleQuant),
}

/// Double quantization: `absmax = code[q] * nested_absmax[block / 256] + offset`.
#[derive(Debug, Clone, PartialEq)]
pub struct DoubleQuant {
    /// Every block's code.
    pub codes: Vec<u8>,
    /// The absmax of every 256 blocks' codes.
    pub nested_absmax: Vec<f32>,
    /// Added to every decoded absmax (their mean, taken out before quantizing).
    pub offset: f32,
    /// The 256 values a code stands for.
    pub code: Vec<f32>,
    /// Blocks a nested absmax covers.
    pub blocksize: usize,
}

impl DoubleQuant {
    /// The f32 absmax of every block, as bitsandbytes reconstructs it.
    pub fn decode(&self) -> Vec<f32> {
        self.codes
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                self.code[usize::from(q)] * self.nested_absmax[i / self.blocksize] + self.offset
            })
            .collect()
    }
}

/// One NF4-quantized tensor: exactly the state bitsandbytes keeps for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Tensor {
    /// The tensor's shape.
    pub shape: Vec<usize>,
    /// The dtype the tensor had before quantization (recorded, and restored on dequantization
    /// by consumers that care).
    pub dtype: FloatDtype,
    /// Values a block shares an absmax over.
    pub blocksize: usize,
    /// Two codes a byte, element `2j` in the high nibble.
    pub packed: Vec<u8>,
    /// The 16 values a code stands for.
    pub code: [f32; 16],
    /// The absmax of every block.
    pub absmax: Absmax,
}

fn signed_map() -> &'static ([f32; 256], CodeLut) {
    static MAP: OnceLock<([f32; 256], CodeLut)> = OnceLock::new();
    MAP.get_or_init(|| {
        let code = dynamic_map(true);
        let lut = CodeLut::new(&code);
        (code, lut)
    })
}

impl Nf4Tensor {
    /// Quantize `values` (row-major, `shape`) as bitsandbytes `quantize_4bit(..., quant_type="nf4",
    /// compress_statistics=double_quant)` does on CPU.
    pub fn quantize(
        values: &[f32],
        shape: &[usize],
        dtype: FloatDtype,
        config: Nf4Config,
    ) -> Result<Self> {
        let numel: usize = shape.iter().product();
        if numel != values.len() {
            return Err(Error::invalid(format!(
                "{} values do not fill shape {shape:?}",
                values.len()
            )));
        }
        let blocks = nf4::quantize(values, config.blocksize)?;
        let absmax = if config.double_quant {
            let offset = torch_mean(&blocks.absmax);
            let centered: Vec<f32> = blocks.absmax.iter().map(|a| a - offset).collect();
            let (code, lut) = signed_map();
            let (codes, nested_absmax) = blockwise8::quantize(&centered, lut, NESTED_BLOCKSIZE);
            Absmax::Double(DoubleQuant {
                codes,
                nested_absmax,
                offset,
                code: code.to_vec(),
                blocksize: NESTED_BLOCKSIZE,
            })
        } else {
            Absmax::Plain(blocks.absmax)
        };
        Ok(Nf4Tensor {
            shape: shape.to_vec(),
            dtype,
            blocksize: config.blocksize,
            packed: blocks.packed,
            code: NF4_CODE,
            absmax,
        })
    }

    /// Values of the tensor.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Blocks of the tensor.
    pub fn blocks(&self) -> usize {
        self.numel().div_ceil(self.blocksize)
    }

    /// Bytes this state occupies (what a 4-bit model costs in memory).
    pub fn storage_bytes(&self) -> usize {
        self.packed.len()
            + match &self.absmax {
                Absmax::Plain(a) => 4 * a.len(),
                Absmax::Double(d) => {
                    d.codes.len() + 4 * d.nested_absmax.len() + 4 + 4 * d.code.len()
                }
            }
            + 4 * self.code.len()
    }

    /// The f32 absmax of every block (reconstructed when double-quantized).
    pub fn absmax_f32(&self) -> Vec<f32> {
        match &self.absmax {
            Absmax::Plain(a) => a.clone(),
            Absmax::Double(d) => d.decode(),
        }
    }

    /// Dequantize into `out` (length = element count), bit-identical to bitsandbytes in f32.
    pub fn dequantize_into(&self, out: &mut [f32]) -> Result<()> {
        if out.len() != self.numel() {
            return Err(Error::invalid(format!(
                "output holds {} values, tensor has {}",
                out.len(),
                self.numel()
            )));
        }
        nf4::dequantize_into(
            &self.packed,
            &self.absmax_f32(),
            &self.code,
            self.blocksize,
            out,
        )
    }

    /// The f32 values, as bitsandbytes dequantizes them.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.numel()];
        self.dequantize_into(&mut out)
            .expect("a consistent state dequantizes");
        out
    }

    /// The tensors of this state under the bitsandbytes names for weight `name`.
    pub fn to_state_dict(&self, name: &str) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
        let mut out = vec![
            (
                name.to_string(),
                Dtype::U8,
                vec![self.packed.len(), 1],
                self.packed.clone(),
            ),
            (
                format!("{name}.quant_map"),
                Dtype::F32,
                vec![16],
                f32_bytes(&self.code),
            ),
        ];
        match &self.absmax {
            Absmax::Plain(a) => {
                out.push((
                    format!("{name}.absmax"),
                    Dtype::F32,
                    vec![a.len()],
                    f32_bytes(a),
                ));
            }
            Absmax::Double(d) => {
                out.push((
                    format!("{name}.absmax"),
                    Dtype::U8,
                    vec![d.codes.len()],
                    d.codes.clone(),
                ));
                out.push((
                    format!("{name}.nested_absmax"),
                    Dtype::F32,
                    vec![d.nested_absmax.len()],
                    f32_bytes(&d.nested_absmax),
                ));
                out.push((
                    format!("{name}.nested_quant_map"),
                    Dtype::F32,
                    vec![d.code.len()],
                    f32_bytes(&d.code),
                ));
            }
        }
        let json = self.quant_state_json().into_bytes();
        out.push((
            format!("{name}.{QUANT_STATE_SUFFIX}"),
            Dtype::U8,
            vec![json.len()],
            json,
        ));
        out
    }

    /// The JSON bitsandbytes packs into `quant_state.bitsandbytes__nf4`, byte for byte as
    /// Python's `json.dumps` writes it.
    pub fn quant_state_json(&self) -> String {
        let shape: Vec<String> = self.shape.iter().map(usize::to_string).collect();
        let mut json = format!(
            "{{\"quant_type\": \"nf4\", \"blocksize\": {}, \"dtype\": \"{}\", \"shape\": [{}]",
            self.blocksize,
            self.dtype.torch_name(),
            shape.join(", ")
        );
        if let Absmax::Double(d) = &self.absmax {
            json.push_str(&format!(
                ", \"nested_blocksize\": {}, \"nested_dtype\": \"float32\", \"nested_offset\": {}",
                d.blocksize,
                python_float_repr(f64::from(d.offset))
            ));
        }
        json.push('}');
        json
    }

    /// Rebuild the state of weight `name` from bitsandbytes state-dict tensors. `get` returns a
    /// tensor by full name (an error naming it when absent); errors name the key at fault.
    pub fn from_state_dict<'a>(
        name: &str,
        get: impl Fn(&str) -> Result<TensorView<'a>>,
    ) -> Result<Self> {
        let state_key = format!("{name}.{QUANT_STATE_SUFFIX}");
        let state_view = get(&state_key).map_err(|e| match e {
            Error::Key { path, .. } => Error::key(
                path,
                &state_key,
                "missing: only bitsandbytes NF4 4-bit checkpoints are supported",
            ),
            other => other,
        })?;
        let state: QuantStateJson = serde_json::from_slice(state_view.data())
            .map_err(|e| Error::invalid(format!("`{state_key}`: invalid quant state JSON: {e}")))?;
        if state.quant_type != "nf4" {
            return Err(Error::invalid(format!(
                "`{state_key}`: quant_type `{}` is not supported, only nf4",
                state.quant_type
            )));
        }
        nf4::check_blocksize(state.blocksize)
            .map_err(|e| Error::invalid(format!("`{state_key}`: {e}")))?;
        let dtype = FloatDtype::from_torch_name(&state.dtype).ok_or_else(|| {
            Error::invalid(format!(
                "`{state_key}`: unsupported dtype `{}`",
                state.dtype
            ))
        })?;
        let numel: usize = state.shape.iter().product();
        let blocks = numel.div_ceil(state.blocksize);

        let tensor = |key: String, dtype: Dtype, len: usize| -> Result<Vec<u8>> {
            let view = get(&key)?;
            let count: usize = view.shape().iter().product();
            if view.dtype() != dtype || count != len {
                return Err(Error::invalid(format!(
                    "`{key}`: expected {dtype:?} with {len} elements, found {:?} {:?}",
                    view.dtype(),
                    view.shape()
                )));
            }
            Ok(view.data().to_vec())
        };
        let floats = |bytes: Vec<u8>| -> Vec<f32> {
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        };

        let packed = tensor(name.to_string(), Dtype::U8, numel.div_ceil(2))?;
        let code: [f32; 16] = floats(tensor(format!("{name}.quant_map"), Dtype::F32, 16)?)
            .try_into()
            .expect("16 values");
        let absmax = match (state.nested_offset, state.nested_blocksize) {
            (Some(offset), Some(nested_blocksize)) => {
                if nested_blocksize == 0 {
                    return Err(Error::invalid(format!(
                        "`{state_key}`: nested_blocksize is 0"
                    )));
                }
                let nested_blocks = blocks.div_ceil(nested_blocksize);
                Absmax::Double(DoubleQuant {
                    codes: tensor(format!("{name}.absmax"), Dtype::U8, blocks)?,
                    nested_absmax: floats(tensor(
                        format!("{name}.nested_absmax"),
                        Dtype::F32,
                        nested_blocks,
                    )?),
                    offset: offset as f32,
                    code: floats(tensor(format!("{name}.nested_quant_map"), Dtype::F32, 256)?),
                    blocksize: nested_blocksize,
                })
            }
            (None, None) => Absmax::Plain(floats(tensor(
                format!("{name}.absmax"),
                Dtype::F32,
                blocks,
            )?)),
            _ => {
                return Err(Error::invalid(format!(
                    "`{state_key}`: nested_offset and nested_blocksize must appear together"
                )));
            }
        };
        Ok(Nf4Tensor {
            shape: state.shape,
            dtype,
            blocksize: state.blocksize,
            packed,
            code,
            absmax,
        })
    }
}

#[derive(Deserialize)]
struct QuantStateJson {
    quant_type: String,
    blocksize: usize,
    dtype: String,
    shape: Vec<usize>,
    nested_blocksize: Option<usize>,
    nested_offset: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dict_round_trip() {
        let values: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for double_quant in [true, false] {
            let config = Nf4Config {
                blocksize: 64,
                double_quant,
            };
            let q = Nf4Tensor::quantize(&values, &[10, 100], FloatDtype::BF16, config).unwrap();
            let dict = q.to_state_dict("w");
            let get = |key: &str| -> Result<TensorView<'_>> {
                let (_, dtype, shape, data) = dict
                    .iter()
                    .find(|(k, ..)| k == key)
                    .ok_or_else(|| Error::key("mem", key, "missing"))?;
                Ok(TensorView::new(*dtype, shape.clone(), data).unwrap())
            };
            let back = Nf4Tensor::from_state_dict("w", get).unwrap();
            assert_eq!(back, q);
        }
    }
}
