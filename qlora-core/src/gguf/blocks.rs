//! ggml's block formats: their names, sizes, and dequantization to f32 (by candle's ggml
//! implementation).

use candle_core::Device;
use candle_core::quantized::GgmlDType;

use crate::error::{Error, Result};

/// The ggml tensor types the importer dequantizes.
pub const SUPPORTED_TYPES: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K";

/// The name ggml gives a tensor type.
pub fn type_name(dtype: GgmlDType) -> &'static str {
    match dtype {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}

pub(super) fn supported(dtype: GgmlDType) -> bool {
    !matches!(
        dtype,
        GgmlDType::Q8_1 | GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q8K
    )
}

/// candle's message without the backtrace it attaches when RUST_BACKTRACE is set.
pub(crate) fn candle_message(error: candle_core::Error) -> String {
    match error {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(*inner),
        other => other.to_string(),
    }
}

/// Dequantize `data` holding ggml blocks of `dtype` into `len` f32 values.
pub fn dequantize_blocks(dtype: GgmlDType, data: &[u8], len: usize) -> Result<Vec<f32>> {
    if !supported(dtype) {
        return Err(Error::invalid(format!(
            "ggml type {} is not supported (supported: {SUPPORTED_TYPES})",
            type_name(dtype)
        )));
    }
    let expected = byte_len(dtype, len)?;
    if data.len() != expected {
        return Err(Error::invalid(format!(
            "{} data of {} bytes, expected {expected} for {len} values",
            type_name(dtype),
            data.len()
        )));
    }
    // candle reads the bytes as blocks in place, which needs them aligned for the block type
    // (up to 8 bytes); a file with an odd tensor offset or alignment gets an aligned copy.
    let aligned: Vec<u64>;
    let data = if (data.as_ptr() as usize).is_multiple_of(8) {
        data
    } else {
        let mut words = vec![0u64; data.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..data.len()].copy_from_slice(data);
        aligned = words;
        &bytemuck::cast_slice::<u64, u8>(&aligned)[..data.len()]
    };
    let tensor =
        candle_core::quantized::ggml_file::qtensor_from_ggml(dtype, data, vec![len], &Device::Cpu)
            .and_then(|q| q.dequantize(&Device::Cpu))
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| {
                Error::invalid(format!(
                    "cannot dequantize {}: {}",
                    type_name(dtype),
                    candle_message(e)
                ))
            })?;
    Ok(tensor)
}

/// Bytes that `len` values of `dtype` take; an error when `len` is not whole blocks.
pub fn byte_len(dtype: GgmlDType, len: usize) -> Result<usize> {
    let block = dtype.block_size();
    if !len.is_multiple_of(block) {
        return Err(Error::invalid(format!(
            "{len} values are not whole {} blocks of {block}",
            type_name(dtype)
        )));
    }
    (len / block)
        .checked_mul(dtype.type_size())
        .ok_or_else(|| Error::invalid(format!("{len} values are too many to address")))
}

#[cfg(test)]
mod tests {
    //! Each block format against hand-built blocks and ggml's reference formulas.
    use half::f16;

    use super::*;

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn float_types() {
        let values = [1.5f32, -2.25, 0.0, 3.0e-3];
        let f32_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            dequantize_blocks(GgmlDType::F32, &f32_bytes, 4).unwrap(),
            values
        );
        let f16: Vec<u8> = values.iter().flat_map(|v| f16_bytes(*v)).collect();
        let back = dequantize_blocks(GgmlDType::F16, &f16, 4).unwrap();
        assert_eq!(back[..2], [1.5, -2.25]);
        let bf16: Vec<u8> = values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        let back = dequantize_blocks(GgmlDType::BF16, &bf16, 4).unwrap();
        assert_eq!(back[..3], [1.5, -2.25, 0.0]);
    }

    #[test]
    fn q4_0_and_q4_1() {
        // Element j is the low nibble of byte j, element j+16 its high nibble.
        let mut block = f16_bytes(0.5).to_vec();
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let out = dequantize_blocks(GgmlDType::Q4_0, &block, 32).unwrap();
        for j in 0..16 {
            assert_eq!(out[j], (j as f32 - 8.0) * 0.5); // (q - 8) * d
            assert_eq!(out[j + 16], ((15 - j) as f32 - 8.0) * 0.5);
        }

        let mut block = f16_bytes(0.25).to_vec();
        block.extend(f16_bytes(-1.0));
        block.extend((0..16u8).map(|j| j | (j << 4)));
        let out = dequantize_blocks(GgmlDType::Q4_1, &block, 32).unwrap();
        for j in 0..16 {
            assert_eq!(out[j], j as f32 * 0.25 - 1.0); // q * d + m
            assert_eq!(out[j + 16], j as f32 * 0.25 - 1.0);
        }
    }

    #[test]
    fn q5_0_and_q5_1_take_the_fifth_bit_from_qh() {
        let mut block = f16_bytes(1.0).to_vec();
        // Bit j of qh is the fifth bit of element j; bit j+16 that of element j+16.
        block.extend(((1u32 << 1) | (1u32 << 17)).to_le_bytes());
        block.extend([0x21u8; 16]); // low nibble 1, high nibble 2
        let out = dequantize_blocks(GgmlDType::Q5_0, &block, 32).unwrap();
        assert_eq!(out[0], 1.0 - 16.0);
        assert_eq!(out[1], 1.0 + 16.0 - 16.0);
        assert_eq!(out[16], 2.0 - 16.0);
        assert_eq!(out[17], 2.0 + 16.0 - 16.0);

        let mut block = f16_bytes(0.5).to_vec();
        block.extend(f16_bytes(2.0));
        block.extend(1u32.to_le_bytes());
        block.extend([0x00u8; 16]);
        let out = dequantize_blocks(GgmlDType::Q5_1, &block, 32).unwrap();
        assert_eq!(out[0], 16.0 * 0.5 + 2.0);
        assert_eq!(out[1], 2.0);
    }

    #[test]
    fn q8_0_is_signed() {
        let mut block = f16_bytes(0.125).to_vec();
        block.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let out = dequantize_blocks(GgmlDType::Q8_0, &block, 32).unwrap();
        for (i, v) in out.iter().enumerate() {
            assert_eq!(*v, (i as f32 - 16.0) * 0.125);
        }
    }

    #[test]
    fn q4_k_uses_six_bit_sub_block_scales_and_mins() {
        let mut block = f16_bytes(1.0).to_vec(); // d
        block.extend(f16_bytes(0.5)); // dmin
        // Sub-blocks 0..3: scale 2, min 4 in the low 6 bits of bytes 0..3 and 4..7.
        // Sub-block 4: low 4 bits of byte 8 (scale 1), high 4 bits (min 3).
        let mut scales = [0u8; 12];
        for j in 0..4 {
            scales[j] = 2;
            scales[j + 4] = 4;
        }
        scales[8] = 0x31;
        block.extend(scales);
        block.extend([0x52u8; 128]); // low nibble 2, high nibble 5
        let out = dequantize_blocks(GgmlDType::Q4K, &block, 256).unwrap();
        // Each 64 values: 32 low nibbles (sub-block 2k), then 32 high nibbles (2k+1).
        assert_eq!(out[0], 2.0 * 2.0 - 0.5 * 4.0);
        assert_eq!(out[32], 2.0 * 5.0 - 0.5 * 4.0);
        assert_eq!(out[128], 1.0 * 2.0 - 0.5 * 3.0);
    }

    #[test]
    fn q5_k_and_q6_k() {
        let mut block = f16_bytes(1.0).to_vec();
        block.extend(f16_bytes(0.0));
        let mut scales = [0u8; 12];
        scales[0] = 1;
        scales[1] = 1;
        block.extend(scales);
        let mut qh = [0u8; 32];
        qh[0] = 0b01; // element 0 gets +16 (bit 0: sub-block 0)
        qh[1] = 0b10; // element 33 gets +16 (bit 1: sub-block 1, position 1)
        block.extend(qh);
        block.extend([0x33u8; 128]);
        let out = dequantize_blocks(GgmlDType::Q5K, &block, 256).unwrap();
        assert_eq!(out[0], 19.0);
        assert_eq!(out[1], 3.0);
        assert_eq!(out[32], 3.0);
        assert_eq!(out[33], 19.0);

        // Q6_K: ql (128), qh (64), 16 signed scales, d; values are d * scale * (q - 32).
        let mut block = vec![0x21u8; 128];
        block.extend([0u8; 64]);
        block.extend([2u8; 16]);
        block.extend(f16_bytes(0.5));
        let out = dequantize_blocks(GgmlDType::Q6K, &block, 256).unwrap();
        assert_eq!(out[0], 0.5 * 2.0 * (1.0 - 32.0));
        assert_eq!(out[64], 0.5 * 2.0 * (2.0 - 32.0));
    }

    #[test]
    fn unsupported_types_and_bad_sizes_are_errors() {
        let err = dequantize_blocks(GgmlDType::Q2K, &[0u8; 84], 256)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Q2_K") && err.contains("not supported"),
            "{err}"
        );
        assert!(dequantize_blocks(GgmlDType::Q8_0, &[0u8; 33], 32).is_err());
        assert!(byte_len(GgmlDType::Q4_0, 33).is_err());
    }
}
