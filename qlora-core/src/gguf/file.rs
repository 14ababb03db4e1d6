//! A GGUF file (llama.cpp's format): typed metadata, a tensor table, and ggml-quantized data.
//!
//! The container is read by `candle-core`'s GGUF reader (versions 1 to 3, bounds-checked) over a
//! memory map, and tensors are dequantized to f32 with its ggml block formats, one at a time.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};

use crate::error::{Error, Result};

/// The ggml tensor types the importer dequantizes.
pub const SUPPORTED_TYPES: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K";

pub struct GgufFile {
    path: PathBuf,
    map: memmap2::Mmap,
    content: Content,
}

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

fn supported(dtype: GgmlDType) -> bool {
    !matches!(
        dtype,
        GgmlDType::Q8_1 | GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q8K
    )
}

/// candle's message without the backtrace it attaches when RUST_BACKTRACE is set.
fn candle_message(error: candle_core::Error) -> String {
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
    Ok(len / block * dtype.type_size())
}

impl GgufFile {
    /// Open and check a GGUF file: header, metadata, and that every tensor is of a supported
    /// type and lies inside the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the map is read-only; like every reader of model files we assume nobody
        // truncates the file while it is open.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let content = Content::read(&mut Cursor::new(&map[..])).map_err(|e| {
            Error::file(
                &path,
                format!(
                    "not a readable GGUF file: {} (supported tensor types: {SUPPORTED_TYPES})",
                    candle_message(e)
                ),
            )
        })?;
        let gguf = GgufFile { path, map, content };
        for name in gguf.tensor_names() {
            let info = &gguf.content.tensor_infos[name];
            if !supported(info.ggml_dtype) {
                return Err(Error::key(
                    &gguf.path,
                    name,
                    format!(
                        "tensor type {} is not supported (supported: {SUPPORTED_TYPES})",
                        type_name(info.ggml_dtype)
                    ),
                ));
            }
            let bytes = byte_len(info.ggml_dtype, info.shape.elem_count())
                .map_err(|e| Error::key(&gguf.path, name, e))?;
            let start = gguf.content.tensor_data_offset + info.offset;
            if start + bytes as u64 > gguf.map.len() as u64 {
                return Err(Error::key(
                    &gguf.path,
                    name,
                    format!(
                        "tensor data ({bytes} bytes at offset {start}) runs past the end of the file ({} bytes): truncated?",
                        gguf.map.len()
                    ),
                ));
            }
        }
        Ok(gguf)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        match self.content.magic {
            VersionedMagic::GgufV1 => 1,
            VersionedMagic::GgufV2 => 2,
            VersionedMagic::GgufV3 => 3,
        }
    }

    pub fn value(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn wrong_type(&self, key: &str, expected: &str, value: &Value) -> Error {
        Error::key(
            &self.path,
            key,
            format!("expected {expected}, found {:?}", value.value_type()),
        )
    }

    /// An integer of any width.
    pub fn integer(&self, key: &str) -> Result<Option<i64>> {
        let Some(value) = self.value(key) else {
            return Ok(None);
        };
        let n = match value {
            Value::U8(v) => *v as i64,
            Value::I8(v) => *v as i64,
            Value::U16(v) => *v as i64,
            Value::I16(v) => *v as i64,
            Value::U32(v) => *v as i64,
            Value::I32(v) => *v as i64,
            Value::U64(v) => {
                i64::try_from(*v).map_err(|_| self.wrong_type(key, "an i64", value))?
            }
            Value::I64(v) => *v,
            other => return Err(self.wrong_type(key, "an integer", other)),
        };
        Ok(Some(n))
    }

    /// A count or size: a non-negative integer.
    pub fn usize(&self, key: &str) -> Result<Option<usize>> {
        match self.integer(key)? {
            None => Ok(None),
            Some(n) => usize::try_from(n)
                .map(Some)
                .map_err(|_| Error::key(&self.path, key, format!("expected a count, found {n}"))),
        }
    }

    pub fn require_usize(&self, key: &str) -> Result<usize> {
        self.usize(key)?
            .ok_or_else(|| Error::key(&self.path, key, "missing metadata"))
    }

    pub fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(*v as f64)),
            Some(Value::F64(v)) => Ok(Some(*v)),
            Some(other) => Err(self.wrong_type(key, "a float", other)),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::Bool(v)) => Ok(Some(*v)),
            Some(other) => Err(self.wrong_type(key, "a bool", other)),
        }
    }

    pub fn string(&self, key: &str) -> Result<Option<&str>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::String(v)) => Ok(Some(v)),
            Some(other) => Err(self.wrong_type(key, "a string", other)),
        }
    }

    /// An array whose every element `item` accepts; `expected` names it in errors.
    fn array<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        item: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        let Some(value) = self.value(key) else {
            return Ok(None);
        };
        let Value::Array(items) = value else {
            return Err(self.wrong_type(key, expected, value));
        };
        items
            .iter()
            .map(|v| item(v).ok_or_else(|| self.wrong_type(key, expected, v)))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    pub fn strings(&self, key: &str) -> Result<Option<Vec<&str>>> {
        self.array(key, "an array of strings", |v| match v {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    pub fn integers(&self, key: &str) -> Result<Option<Vec<i64>>> {
        self.array(key, "an array of integers", |v| match v {
            Value::I8(n) => Some(*n as i64),
            Value::U8(n) => Some(*n as i64),
            Value::I16(n) => Some(*n as i64),
            Value::U16(n) => Some(*n as i64),
            Value::I32(n) => Some(*n as i64),
            Value::U32(n) => Some(*n as i64),
            Value::I64(n) => Some(*n),
            _ => None,
        })
    }

    pub fn floats(&self, key: &str) -> Result<Option<Vec<f32>>> {
        self.array(key, "an array of floats", |v| match v {
            Value::F32(x) => Some(*x),
            Value::F64(x) => Some(*x as f32),
            _ => None,
        })
    }

    /// Tensor names in sorted order.
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .content
            .tensor_infos
            .keys()
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        names
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.content
            .tensor_infos
            .get(name)
            .ok_or_else(|| Error::key(&self.path, name, "missing tensor"))
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Shape in row-major (PyTorch) order: GGUF lists dimensions fastest first.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.info(name)?.shape.dims().to_vec())
    }

    pub fn tensor_type(&self, name: &str) -> Result<GgmlDType> {
        Ok(self.info(name)?.ggml_dtype)
    }

    /// The raw ggml blocks of a tensor.
    pub fn raw(&self, name: &str) -> Result<&[u8]> {
        let info = self.info(name)?;
        let len = byte_len(info.ggml_dtype, info.shape.elem_count())
            .map_err(|e| Error::key(&self.path, name, e))?;
        let start = (self.content.tensor_data_offset + info.offset) as usize;
        Ok(&self.map[start..start + len])
    }

    /// A tensor dequantized to f32, row-major.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.info(name)?;
        dequantize_blocks(info.ggml_dtype, self.raw(name)?, info.shape.elem_count())
            .map_err(|e| Error::key(&self.path, name, e))
    }
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
