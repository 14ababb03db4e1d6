//! 8-bit blockwise quantization with a 256-value code map, as bitsandbytes 0.50's CPU kernel
//! (`quantize_blockwise` on float32) computes it.
//!
//! The kernel does not search the code map per value. It scales each value into [-1, 1], maps it
//! to one of 65536 grid points with `trunc(((x + 1) * 0.5) * 65535 + 0.5)` (the last step a fused
//! multiply-add), and reads the code from a lookup table built once per map: grid point `i`,
//! `2i / 65535 - 1` in f32, gets the number of code midpoints strictly below it. So values within
//! half a grid step of a midpoint can round either way; copying the table copies that.

use rayon::prelude::*;

use crate::error::{Error, Result};

const GRID: usize = 1 << 16;

/// Grid-point to code lookup table for one code map.
pub struct CodeLut {
    table: Box<[u8]>,
}

impl CodeLut {
    /// The table of the 256-value map `code`.
    pub fn new(code: &[f32; 256]) -> Self {
        let midpoints: Vec<f32> = code.windows(2).map(|w| (w[0] + w[1]) * 0.5).collect();
        let table = (0..GRID)
            .map(|i| {
                let point = (i as f32 + i as f32) / (GRID - 1) as f32 - 1.0;
                midpoints.partition_point(|&m| m < point) as u8
            })
            .collect();
        CodeLut { table }
    }

    /// Code index of a value already scaled into [-1, 1] (NaN lands on grid point 0, as in the
    /// kernel, where the float-to-int conversion of NaN yields an index with zero low bits).
    #[inline]
    pub fn code_of(&self, scaled: f32) -> u8 {
        let half = (scaled + 1.0) * 0.5;
        let grid = half.mul_add((GRID - 1) as f32, 0.5);
        // `as u16` after truncation toward zero mirrors the kernel's cvttss2si + movzwl.
        self.table[usize::from(grid as i32 as u16)]
    }
}

/// Quantize `values` in blocks of `blocksize` with the map behind `lut`. Returns one code per
/// value and one absmax per block. NaN values are ignored by the absmax and map to code 0.
pub fn quantize(values: &[f32], lut: &CodeLut, blocksize: usize) -> (Vec<u8>, Vec<f32>) {
    let mut codes = vec![0u8; values.len()];
    let absmax: Vec<f32> = values
        .par_chunks(blocksize)
        .zip(codes.par_chunks_mut(blocksize))
        .map(|(block, out)| quantize_block(block, lut, out))
        .collect();
    (codes, absmax)
}

/// bitsandbytes' CPU quantization of one block into `out`; returns its absmax. A block of
/// zeros gets code 0 throughout.
#[inline(always)]
pub fn quantize_block(block: &[f32], lut: &CodeLut, out: &mut [u8]) -> f32 {
    // NaN comparisons are false, so NaNs never raise the max (the kernel's std::max).
    let max = block
        .iter()
        .fold(
            f32::NEG_INFINITY,
            |m, v| if v.abs() > m { v.abs() } else { m },
        )
        .max(0.0);
    if max == 0.0 {
        out.fill(0);
        return max;
    }
    let inv = 1.0 / max;
    for (q, &x) in out.iter_mut().zip(block) {
        *q = lut.code_of((x * inv).clamp(-1.0, 1.0));
    }
    max
}

/// Inverse of [`quantize`]: `code[q] * absmax` per value, in f32.
pub fn dequantize(
    codes: &[u8],
    absmax: &[f32],
    code: &[f32; 256],
    blocksize: usize,
) -> Result<Vec<f32>> {
    if absmax.len() != codes.len().div_ceil(blocksize) {
        return Err(Error::invalid(format!(
            "8-bit state has {} absmax values for {} codes in blocks of {blocksize}",
            absmax.len(),
            codes.len()
        )));
    }
    Ok(codes
        .chunks(blocksize)
        .zip(absmax)
        .flat_map(|(block, &scale)| block.iter().map(move |&q| code[usize::from(q)] * scale))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dynamic_map::dynamic_map;

    #[test]
    fn extremes_and_zero_blocks() {
        let code = dynamic_map(true);
        let lut = CodeLut::new(&code);
        let (q, absmax) = quantize(&[2.0, -2.0, 0.0, 1.0], &lut, 256);
        assert_eq!(absmax, vec![2.0]);
        assert_eq!(q[0], 255);
        assert_eq!(q[1], 0);
        let (q, absmax) = quantize(&[0.0; 4], &lut, 256);
        assert_eq!((q, absmax), (vec![0; 4], vec![0.0]));
    }
}
