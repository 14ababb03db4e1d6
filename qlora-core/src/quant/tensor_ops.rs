//! NF4 dequantization built only from Burn tensor ops, so it runs on every backend (flex, wgpu,
//! cuda) and gives the same f32 bits as the CPU path: each value is one table lookup and one
//! multiply, the double-quantized absmax one multiply and one add, as in bitsandbytes.
//!
//! Packed bytes live on the device as i32 words holding four bytes each (big-endian), so the
//! device copy of a weight costs 4 bits a value like the host copy.

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::state::{Absmax, Nf4Tensor};

/// Bytes packed four to an i32 word, most significant first.
fn pack_words(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks(4)
        .map(|c| {
            let mut word = [0u8; 4];
            word[..c.len()].copy_from_slice(c);
            i32::from_be_bytes(word)
        })
        .collect()
}

fn words_tensor(bytes: &[u8], device: &Device) -> Tensor<1, Int> {
    let words = pack_words(bytes);
    let len = words.len();
    Tensor::from_data(TensorData::new(words, [len]), device)
}

fn floats_tensor(values: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

/// Recover `count` bytes (as ints 0..=255) from their packed words.
fn unpack_bytes(words: Tensor<1, Int>, count: usize) -> Tensor<1, Int> {
    let n = words.dims()[0];
    let parts: Vec<Tensor<1, Int>> = [24, 16, 8, 0]
        .into_iter()
        .map(|shift| {
            words
                .clone()
                .bitwise_right_shift_scalar(shift)
                .bitwise_and_scalar(0xff)
        })
        .collect();
    Tensor::stack::<2>(parts, 1)
        .reshape([n * 4])
        .narrow(0, 0, count)
}

/// Absmax per block as it lives on the device.
// One per weight, so the size of a tensor handle in the plain variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum DeviceAbsmax {
    Plain(Tensor<1>),
    Double(Box<DeviceDoubleQuant>),
}

/// The 8-bit absmax codes and what decodes them.
#[derive(Clone, Debug)]
pub struct DeviceDoubleQuant {
    codes: Tensor<1, Int>,
    blocks: usize,
    nested_absmax: Tensor<1>,
    nested_code: Tensor<1>,
    nested_blocksize: usize,
    offset: f32,
}

/// An [`Nf4Tensor`] uploaded to a device, dequantized there with tensor ops.
#[derive(Clone, Debug)]
pub struct DeviceNf4 {
    pub shape: Vec<usize>,
    pub blocksize: usize,
    words: Tensor<1, Int>,
    code: Tensor<1>,
    absmax: DeviceAbsmax,
}

impl DeviceNf4 {
    pub fn new(state: &Nf4Tensor, device: &Device) -> Self {
        let absmax = match &state.absmax {
            Absmax::Plain(a) => DeviceAbsmax::Plain(floats_tensor(a, device)),
            Absmax::Double(d) => DeviceAbsmax::Double(Box::new(DeviceDoubleQuant {
                codes: words_tensor(&d.codes, device),
                blocks: d.codes.len(),
                nested_absmax: floats_tensor(&d.nested_absmax, device),
                nested_code: floats_tensor(&d.code, device),
                nested_blocksize: d.blocksize,
                offset: d.offset,
            })),
        };
        DeviceNf4 {
            shape: state.shape.clone(),
            blocksize: state.blocksize,
            words: words_tensor(&state.packed, device),
            code: floats_tensor(&state.code, device),
            absmax,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The packed codes, four bytes to an i32 word, most significant first.
    pub fn words(&self) -> &Tensor<1, Int> {
        &self.words
    }

    /// The 16-value NF4 code table.
    pub fn code(&self) -> &Tensor<1> {
        &self.code
    }

    /// The f32 absmax of every block.
    pub fn absmax(&self) -> Tensor<1> {
        match &self.absmax {
            DeviceAbsmax::Plain(a) => a.clone(),
            DeviceAbsmax::Double(d) => {
                let device = d.nested_absmax.device();
                let codes = unpack_bytes(d.codes.clone(), d.blocks);
                let nested_of_block = Tensor::<1, Int>::arange(0..d.blocks as i64, &device)
                    .div_scalar(d.nested_blocksize as i64);
                d.nested_code.clone().select(0, codes)
                    * d.nested_absmax.clone().select(0, nested_of_block)
                    + d.offset
            }
        }
    }

    /// The dequantized values, flattened.
    pub fn dequantize_flat(&self) -> Tensor<1> {
        let n = self.numel();
        let bytes = unpack_bytes(self.words.clone(), n.div_ceil(2));
        let nbytes = bytes.dims()[0];
        let high = bytes.clone().bitwise_right_shift_scalar(4);
        let low = bytes.bitwise_and_scalar(0x0f);
        let codes = Tensor::stack::<2>(vec![high, low], 1).reshape([nbytes * 2]);
        let mut values = self.code.clone().select(0, codes);
        let blocks = n.div_ceil(self.blocksize);
        let padded = blocks * self.blocksize;
        if padded > nbytes * 2 {
            let device = values.device();
            values = Tensor::cat(
                vec![values, Tensor::zeros([padded - nbytes * 2], &device)],
                0,
            );
        }
        let scaled = values.reshape([blocks, self.blocksize]) * self.absmax().reshape([blocks, 1]);
        scaled.reshape([padded]).narrow(0, 0, n)
    }

    /// The dequantized weight as a 2-D `[rows, cols]` tensor (a 1-D shape becomes one row).
    pub fn dequantize(&self) -> Tensor<2> {
        let (rows, cols) = match self.shape.as_slice() {
            [cols] => (1, *cols),
            [rows, rest @ ..] => (*rows, rest.iter().product()),
            [] => (1, 1),
        };
        self.dequantize_flat().reshape([rows, cols])
    }
}
