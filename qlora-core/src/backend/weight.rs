//! A frozen NF4 weight on a device, and what the model does with it.

use burn::backend::{Dispatch, DispatchTensor};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::{Nf4Absmax, Nf4DoubleAbsmax, Nf4Layout, Nf4Operand, Nf4Ops};
use crate::quant::{Absmax, Nf4Tensor};

/// Bytes packed four to an i32 word, most significant first: a device copy costs 4 bits a
/// value like the host copy.
fn words(bytes: &[u8], device: &Device) -> DispatchTensor {
    let words: Vec<i32> = bytes
        .chunks(4)
        .map(|c| {
            let mut word = [0u8; 4];
            word[..c.len()].copy_from_slice(c);
            i32::from_be_bytes(word)
        })
        .collect();
    let len = words.len();
    Tensor::<1, Int>::from_data(TensorData::new(words, [len]), device).into_dispatch()
}

fn floats(values: &[f32], device: &Device) -> DispatchTensor {
    Tensor::<1>::from_data(TensorData::new(values.to_vec(), [values.len()]), device).into_dispatch()
}

/// An [`Nf4Tensor`] on a device: `[out, in]` (a 1-D tensor is one row), as packed as on the host.
#[derive(Clone, Debug)]
pub struct Nf4Weight {
    operand: Nf4Operand<Dispatch>,
}

impl Nf4Weight {
    /// The quantized tensor `state` (`[out, in]`) uploaded to `device`.
    pub fn new(state: &Nf4Tensor, device: &Device) -> Self {
        let (rows, cols) = match state.shape.as_slice() {
            [cols] => (1, *cols),
            [rows, rest @ ..] => (*rows, rest.iter().product()),
            [] => (1, 1),
        };
        let absmax = match &state.absmax {
            Absmax::Plain(a) => Nf4Absmax::Plain(floats(a, device)),
            Absmax::Double(d) => Nf4Absmax::Double(Nf4DoubleAbsmax {
                words: words(&d.codes, device),
                nested_absmax: floats(&d.nested_absmax, device),
                nested_code: floats(&d.code, device),
                nested_blocksize: d.blocksize,
                offset: d.offset,
            }),
        };
        Nf4Weight {
            operand: Nf4Operand {
                words: words(&state.packed, device),
                code: floats(&state.code, device),
                absmax,
                layout: Nf4Layout {
                    out_features: rows,
                    in_features: cols,
                    blocksize: state.blocksize,
                },
            },
        }
    }

    /// The shape of the weight.
    pub fn layout(&self) -> Nf4Layout {
        self.operand.layout
    }

    /// The weight as the backend operations take it.
    pub fn operand(&self) -> Nf4Operand<Dispatch> {
        self.operand.clone()
    }

    /// The dense `[out, in]` f32 weight, bit-identical to bitsandbytes' dequantization.
    pub fn dequantize(&self) -> Tensor<2> {
        Tensor::from_dispatch(<Dispatch as Nf4Ops>::nf4_dequantize(self.operand()))
    }

    /// The dequantized values, flattened.
    pub fn dequantize_flat(&self) -> Tensor<1> {
        self.dequantize().reshape([self.operand.layout.numel()])
    }

    /// `dy · W` for `dy` `[rows, out]`: the gradient of the input of [`Nf4Weight::linear`].
    pub fn input_grad(&self, dy: Tensor<2>) -> Tensor<2> {
        Tensor::from_dispatch(<Dispatch as Nf4Ops>::nf4_matmul_transposed(
            dy.into_dispatch(),
            self.operand(),
        ))
    }

    /// `x · Wᵀ` for `x` `[rows, in]`, differentiable in `x` when autodiff tracks it (the weight
    /// is never stored dense in the graph).
    pub fn linear(&self, x: Tensor<2>) -> Tensor<2> {
        Tensor::from_dispatch(<Dispatch as Nf4Ops>::nf4_matmul(
            x.into_dispatch(),
            self.operand(),
        ))
    }
}
