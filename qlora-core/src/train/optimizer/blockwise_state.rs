//! 8-bit blockwise optimizer states on the device, as bitsandbytes keeps them: blocks of 256,
//! one f32 absmax per block, codes of the signed dynamic map for the first moment and of the
//! unsigned one for the second. Quantization uses the 65536-point lookup table of
//! bitsandbytes' CPU kernel ([`crate::quant::blockwise8`]), here as tensor operations.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::quant::blockwise8::CodeLut;
use crate::quant::dynamic_map::dynamic_map;

pub const STATE_BLOCK: usize = 256;

/// A code map and its lookup table, uploaded once.
#[derive(Clone, Debug)]
pub struct StateCodeMap {
    pub values: Tensor<1>,
    lut: Tensor<1, Int>,
}

impl StateCodeMap {
    pub fn new(signed: bool, device: &Device) -> Self {
        let map = dynamic_map(signed);
        let lut = CodeLut::new(&map);
        let table: Vec<i32> = (0..65536u32)
            .map(|i| {
                let point = (i as f32 + i as f32) / 65535.0 - 1.0;
                i32::from(lut.code_of(point))
            })
            .collect();
        StateCodeMap {
            values: Tensor::from_data(TensorData::new(map.to_vec(), [256]), device),
            lut: Tensor::from_data(TensorData::new(table, [65536]), device),
        }
    }
}

/// A quantized state: codes (one int per value) and absmax per block of 256.
#[derive(Clone, Debug)]
pub struct BlockwiseState {
    pub codes: Tensor<1, Int>,
    pub absmax: Tensor<1>,
}

/// Quantize `x` (length a multiple of 256).
pub fn quantize(x: Tensor<1>, map: &StateCodeMap) -> BlockwiseState {
    let n = x.dims()[0];
    let blocks = x.reshape([n / STATE_BLOCK, STATE_BLOCK]);
    let absmax = blocks.clone().abs().max_dim(1);
    // An all-zero block scales to zeros (absmax is clamped only to divide).
    let scaled = (blocks / absmax.clone().clamp_min(1e-30)).clamp(-1.0, 1.0);
    let grid = ((scaled + 1.0) * 0.5 * 65535.0 + 0.5).floor().int();
    let codes = map.lut.clone().select(0, grid.reshape([n]));
    BlockwiseState {
        codes,
        absmax: absmax.reshape([n / STATE_BLOCK]),
    }
}

pub fn dequantize(q: &BlockwiseState, map: &StateCodeMap) -> Tensor<1> {
    let n = q.codes.dims()[0];
    let values = map.values.clone().select(0, q.codes.clone());
    (values.reshape([n / STATE_BLOCK, STATE_BLOCK])
        * q.absmax.clone().reshape([n / STATE_BLOCK, 1]))
    .reshape([n])
}
