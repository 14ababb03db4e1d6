//! A frozen NF4 weight on a device, and what the model does with it.

use burn::backend::Dispatch;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::{Nf4Absmax, Nf4Layout, Nf4Operand, QloraOps};
use crate::quant::{Absmax, Nf4Tensor};

/// Bytes packed four to an i32 word, most significant first: a device copy costs 4 bits a
/// value like the host copy.
fn words_tensor(bytes: &[u8], device: &Device) -> Tensor<1, Int> {
    let words: Vec<i32> = bytes
        .chunks(4)
        .map(|c| {
            let mut word = [0u8; 4];
            word[..c.len()].copy_from_slice(c);
            i32::from_be_bytes(word)
        })
        .collect();
    let len = words.len();
    Tensor::from_data(TensorData::new(words, [len]), device)
}

fn floats_tensor(values: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

/// The absmax of every block on the device, as the host state has it.
// One per weight, so the size of tensor handles does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
enum DeviceAbsmax {
    Plain(Tensor<1>),
    Double {
        words: Tensor<1, Int>,
        nested_absmax: Tensor<1>,
        nested_code: Tensor<1>,
        nested_blocksize: usize,
        offset: f32,
    },
}

/// An [`Nf4Tensor`] on a device: `[out, in]` (a 1-D tensor is one row), as packed as on the host.
#[derive(Clone, Debug)]
pub struct Nf4Weight {
    pub layout: Nf4Layout,
    words: Tensor<1, Int>,
    code: Tensor<1>,
    absmax: DeviceAbsmax,
}

impl Nf4Weight {
    pub fn new(state: &Nf4Tensor, device: &Device) -> Self {
        let (rows, cols) = match state.shape.as_slice() {
            [cols] => (1, *cols),
            [rows, rest @ ..] => (*rows, rest.iter().product()),
            [] => (1, 1),
        };
        let absmax = match &state.absmax {
            Absmax::Plain(a) => DeviceAbsmax::Plain(floats_tensor(a, device)),
            Absmax::Double(d) => DeviceAbsmax::Double {
                words: words_tensor(&d.codes, device),
                nested_absmax: floats_tensor(&d.nested_absmax, device),
                nested_code: floats_tensor(&d.code, device),
                nested_blocksize: d.blocksize,
                offset: d.offset,
            },
        };
        Nf4Weight {
            layout: Nf4Layout {
                out_features: rows,
                in_features: cols,
                blocksize: state.blocksize,
            },
            words: words_tensor(&state.packed, device),
            code: floats_tensor(&state.code, device),
            absmax,
        }
    }

    /// The weight as the backend operations take it.
    pub fn operand(&self) -> Nf4Operand<Dispatch> {
        let absmax = match &self.absmax {
            DeviceAbsmax::Plain(a) => Nf4Absmax::Plain(a.clone().into_dispatch()),
            DeviceAbsmax::Double {
                words,
                nested_absmax,
                nested_code,
                nested_blocksize,
                offset,
            } => Nf4Absmax::Double {
                words: words.clone().into_dispatch(),
                nested_absmax: nested_absmax.clone().into_dispatch(),
                nested_code: nested_code.clone().into_dispatch(),
                nested_blocksize: *nested_blocksize,
                offset: *offset,
            },
        };
        Nf4Operand {
            words: self.words.clone().into_dispatch(),
            code: self.code.clone().into_dispatch(),
            absmax,
            layout: self.layout,
        }
    }

    /// The dense `[out, in]` f32 weight, bit-identical to bitsandbytes' dequantization.
    pub fn dequantize(&self) -> Tensor<2> {
        Tensor::from_dispatch(<Dispatch as QloraOps>::nf4_dequantize(self.operand()))
    }

    /// The dequantized values, flattened.
    pub fn dequantize_flat(&self) -> Tensor<1> {
        self.dequantize().reshape([self.layout.numel()])
    }

    /// `x · Wᵀ` for `x` `[rows, in]`, differentiable in `x` when autodiff tracks it (the weight
    /// is never stored dense in the graph).
    pub fn linear(&self, x: Tensor<2>) -> Tensor<2> {
        Tensor::from_dispatch(<Dispatch as QloraOps>::nf4_matmul(
            x.into_dispatch(),
            self.operand(),
        ))
    }
}
