//! The code maps of bitsandbytes' 8-bit optimizer states on a device: the signed dynamic map
//! for the first moment, the unsigned one for the second, each with the 65536-point lookup
//! table of bitsandbytes' CPU quantizer ([`crate::quant::blockwise8`]).

use burn::backend::Dispatch;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::backend::StateMaps;
pub use crate::backend::generic::optim::STATE_BLOCK;
use crate::quant::blockwise8::CodeLut;
use crate::quant::dynamic_map::dynamic_map;

/// Both maps and lookup tables, uploaded once.
#[derive(Clone, Debug)]
pub struct DeviceMaps {
    maps: [(Tensor<1>, Tensor<1, Int>); 2],
}

impl DeviceMaps {
    pub fn new(device: &Device) -> Self {
        let maps = [true, false].map(|signed| {
            let map = dynamic_map(signed);
            let lut = CodeLut::new(&map);
            let table: Vec<i32> = (0..65536u32)
                .map(|i| {
                    let point = (i as f32 + i as f32) / 65535.0 - 1.0;
                    i32::from(lut.code_of(point))
                })
                .collect();
            (
                Tensor::from_data(TensorData::new(map.to_vec(), [256]), device),
                Tensor::from_data(TensorData::new(table, [65536]), device),
            )
        });
        DeviceMaps { maps }
    }

    pub fn operand(&self) -> StateMaps<Dispatch> {
        let [(signed, signed_lut), (unsigned, unsigned_lut)] = self.maps.clone();
        StateMaps {
            signed: signed.into_dispatch(),
            signed_lut: signed_lut.into_dispatch(),
            unsigned: unsigned.into_dispatch(),
            unsigned_lut: unsigned_lut.into_dispatch(),
        }
    }
}

/// Both moments' u8 codes as one device tensor of u32 words: the first moment's
/// `ceil(n / 4)` words, then the second's, four codes a word, the first in the low byte (a byte
/// a value on every backend; WGSL has no u8).
pub fn codes_tensor(m: &[u8], v: &[u8], device: &Device) -> Tensor<1, Int> {
    // Sized exactly: the tensor keeps the buffer as it is.
    let mut words = Vec::with_capacity(m.len().div_ceil(4) + v.len().div_ceil(4));
    for codes in [m, v] {
        words.extend(codes.chunks(4).map(|c| {
            let mut b = [0u8; 4];
            b[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(b)
        }));
    }
    let n = words.len();
    Tensor::from_data(TensorData::new(words, [n]), (device, DType::U32))
}

/// The `len` codes of each moment of a tensor made by [`codes_tensor`] (or updated by the
/// optimizer).
pub fn codes_from_words(words: Tensor<1, Int>, len: usize) -> (Vec<u8>, Vec<u8>) {
    let words = words
        .into_data()
        .convert::<u32>()
        .try_into_vec::<u32>()
        .expect("u32 code words");
    let (m, v) = words.split_at(len.div_ceil(4));
    let bytes = |w: &[u32]| -> Vec<u8> {
        let mut codes: Vec<u8> = w.iter().flat_map(|w| w.to_le_bytes()).collect();
        codes.truncate(len);
        codes
    };
    (bytes(m), bytes(v))
}
