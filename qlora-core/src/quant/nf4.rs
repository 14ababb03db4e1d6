//! Blockwise 4-bit NormalFloat (NF4) quantization, exactly as bitsandbytes 0.50 does it on CPU.
//!
//! The rules that make our bytes equal theirs:
//! - blocks run over the flattened row-major tensor; the last block may be shorter;
//! - full blocks are scaled by `x * (1 / max(absmax, 1e-38))`, the ragged last block by
//!   `x / max(absmax, 1e-38)`, and its stored absmax is the clamped one;
//! - a scaled value gets the number of code midpoints strictly below it, so a value exactly on a
//!   midpoint takes the lower code (bitsandbytes' `torch.bucketize`, and the CUDA kernel's tree);
//! - two codes a byte, element `2j` in the high nibble; an odd count is padded with a scaled
//!   `0.0`, i.e. the code of zero.

use rayon::prelude::*;

use crate::error::{Error, Result};

/// The 16 NF4 values (bitsandbytes `get_4bit_type("nf4")`), as f32.
#[allow(clippy::excessive_precision)]
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// Midpoints between neighbouring codes, computed in f32 as bitsandbytes does.
pub const NF4_MIDPOINTS: [f32; 15] = {
    let mut mids = [0.0f32; 15];
    let mut i = 0;
    while i < 15 {
        mids[i] = (NF4_CODE[i] + NF4_CODE[i + 1]) / 2.0;
        i += 1;
    }
    mids
};

/// Code of zero: what padding and all-zero blocks quantize to.
const ZERO_CODE: u8 = 7;

/// bitsandbytes clamps absmax to this before dividing, so all-zero blocks scale to zeros.
const ABSMAX_FLOOR: f32 = 1e-38;

/// Block sizes bitsandbytes accepts for 4-bit quantization.
pub fn check_blocksize(blocksize: usize) -> Result<()> {
    if blocksize.is_power_of_two() && (32..=4096).contains(&blocksize) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "NF4 block size must be a power of two from 32 to 4096, got {blocksize}"
        )))
    }
}

/// The NF4 code of a value already scaled into [-1, 1].
#[inline]
pub fn code_of(scaled: f32) -> u8 {
    NF4_MIDPOINTS.iter().map(|&m| u8::from(scaled > m)).sum()
}

/// How a block's values are brought into [-1, 1]; the two differ in the last bit.
#[derive(Clone, Copy)]
enum Scaling {
    ByReciprocal(f32),
    ByDivision(f32),
}

impl Scaling {
    #[inline]
    fn apply(self, x: f32) -> f32 {
        let scaled = match self {
            Scaling::ByReciprocal(inv) => x * inv,
            Scaling::ByDivision(absmax) => x / absmax,
        };
        scaled.clamp(-1.0, 1.0)
    }
}

/// Result of blockwise NF4 quantization: packed codes and one f32 absmax per block.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedBlocks {
    /// Two codes a byte.
    pub packed: Vec<u8>,
    /// The absmax of every block.
    pub absmax: Vec<f32>,
}

/// Quantize `values` to NF4 in blocks of `blocksize`. Fails on NaN or infinite input, which
/// bitsandbytes would silently turn into garbage.
pub fn quantize(values: &[f32], blocksize: usize) -> Result<PackedBlocks> {
    check_blocksize(blocksize)?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(format!(
            "cannot quantize non-finite value {} at element {i}",
            values[i]
        )));
    }
    let n = values.len();
    let blocks = n.div_ceil(blocksize);
    let mut packed = vec![0u8; n.div_ceil(2)];
    let mut absmax = vec![0f32; blocks];
    let full_blocks = n / blocksize;

    values
        .par_chunks(blocksize)
        .zip(packed.par_chunks_mut(blocksize / 2))
        .zip(absmax.par_iter_mut())
        .enumerate()
        .for_each(|(b, ((block, out), absmax))| {
            let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let clamped = max.max(ABSMAX_FLOOR);
            // torch multiplies full blocks by `1 / absmax` but divides the ragged tail.
            let (stored, scaling) = if b < full_blocks {
                (max, Scaling::ByReciprocal(1.0 / clamped))
            } else {
                (clamped, Scaling::ByDivision(clamped))
            };
            *absmax = stored;
            let scale = |x: f32| scaling.apply(x);
            for (byte, pair) in out.iter_mut().zip(block.chunks(2)) {
                let hi = code_of(scale(pair[0]));
                let lo = pair.get(1).map_or(ZERO_CODE, |&x| code_of(scale(x)));
                *byte = (hi << 4) | lo;
            }
        });
    Ok(PackedBlocks { packed, absmax })
}

/// Dequantize packed NF4 codes with per-block f32 absmax into `out` (its length is the element
/// count). Multi-threaded; each value is `code * absmax` in f32, bit-identical to bitsandbytes.
pub fn dequantize_into(
    packed: &[u8],
    absmax: &[f32],
    code: &[f32; 16],
    blocksize: usize,
    out: &mut [f32],
) -> Result<()> {
    let n = out.len();
    if packed.len() != n.div_ceil(2)
        || absmax.len() != n.div_ceil(blocksize)
        || !blocksize.is_multiple_of(2)
    {
        return Err(Error::invalid(format!(
            "NF4 state does not fit {n} elements: {} packed bytes, {} absmax values, block size {blocksize}",
            packed.len(),
            absmax.len()
        )));
    }
    out.par_chunks_mut(blocksize)
        .zip(packed.par_chunks(blocksize / 2))
        .zip(absmax.par_iter())
        .for_each(|((out, bytes), &scale)| {
            let mut pairs = out.chunks_exact_mut(2);
            for (pair, &byte) in (&mut pairs).zip(bytes) {
                pair[0] = code[usize::from(byte >> 4)] * scale;
                pair[1] = code[usize::from(byte & 0x0f)] * scale;
            }
            if let ([last], Some(&byte)) = (pairs.into_remainder(), bytes.last()) {
                *last = code[usize::from(byte >> 4)] * scale;
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn midpoints_split_codes() {
        for (i, m) in NF4_MIDPOINTS.iter().enumerate() {
            assert!(NF4_CODE[i] < *m && *m < NF4_CODE[i + 1]);
            assert_eq!(code_of(*m), i as u8, "a midpoint takes the lower code");
            assert_eq!(code_of(NF4_CODE[i]), i as u8);
        }
        assert_eq!(code_of(1.0), 15);
        assert_eq!(code_of(0.0), ZERO_CODE);
    }

    #[test]
    fn odd_length_pads_with_zero_code() {
        let q = quantize(&[1.0, -1.0, 0.5], 64).unwrap();
        assert_eq!(q.packed.len(), 2);
        assert_eq!(q.packed[1] & 0x0f, ZERO_CODE);
        let mut out = vec![0.0; 3];
        dequantize_into(&q.packed, &q.absmax, &NF4_CODE, 64, &mut out).unwrap();
        assert_eq!(out[0], 1.0);
        assert_eq!(out[1], -1.0);
    }

    #[test]
    fn rejects_non_finite_and_bad_blocksize() {
        assert!(quantize(&[1.0, f32::NAN], 64).is_err());
        assert!(quantize(&[f32::INFINITY], 64).is_err());
        assert!(quantize(&[1.0], 48).is_err());
        assert!(quantize(&[1.0], 8192).is_err());
    }
}
