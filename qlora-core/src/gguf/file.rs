//! A GGUF file (llama.cpp's format): typed metadata, a tensor table, and ggml-quantized data.
//!
//! The container is read by `candle-core`'s GGUF reader (versions 1 to 3, bounds-checked) over a
//! memory map, and tensors are dequantized to f32 with its ggml block formats, one at a time.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};

use super::blocks::{
    SUPPORTED_TYPES, byte_len, candle_message, dequantize_blocks, supported, type_name,
};
use crate::error::{Error, Result};

/// A GGUF file, memory-mapped: its metadata and tensors.
pub struct GgufFile {
    path: PathBuf,
    map: memmap2::Mmap,
    content: Content,
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
            gguf.extent(name)?;
        }
        Ok(gguf)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF format version.
    pub fn version(&self) -> u32 {
        match self.content.magic {
            VersionedMagic::GgufV1 => 1,
            VersionedMagic::GgufV2 => 2,
            VersionedMagic::GgufV3 => 3,
        }
    }

    /// The metadata value of `key`.
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

    /// The unsigned integer of `key`; an error naming it when missing.
    pub fn require_usize(&self, key: &str) -> Result<usize> {
        self.usize(key)?
            .ok_or_else(|| Error::key(&self.path, key, "missing metadata"))
    }

    /// The float of `key`, if present (an error if it is not a number).
    pub fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(*v as f64)),
            Some(Value::F64(v)) => Ok(Some(*v)),
            Some(other) => Err(self.wrong_type(key, "a float", other)),
        }
    }

    /// The boolean of `key`, if present.
    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::Bool(v)) => Ok(Some(*v)),
            Some(other) => Err(self.wrong_type(key, "a bool", other)),
        }
    }

    /// The string of `key`, if present.
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

    /// The array of strings of `key`, if present.
    pub fn strings(&self, key: &str) -> Result<Option<Vec<&str>>> {
        self.array(key, "an array of strings", |v| match v {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// The array of integers of `key`, if present.
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

    /// The array of floats of `key`, if present.
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

    /// Whether the file has a tensor `name`.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Shape in row-major (PyTorch) order: GGUF lists dimensions fastest first.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.info(name)?.shape.dims().to_vec())
    }

    /// The ggml type of tensor `name`.
    pub fn tensor_type(&self, name: &str) -> Result<GgmlDType> {
        Ok(self.info(name)?.ggml_dtype)
    }

    /// Values of a tensor, its dimensions multiplied without overflow.
    fn elements(&self, name: &str) -> Result<usize> {
        self.info(name)?
            .shape
            .dims()
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| Error::key(&self.path, name, "its dimensions are too large to address"))
    }

    /// Where a tensor's data lies in the file: start and length, checked to lie inside it.
    fn extent(&self, name: &str) -> Result<(usize, usize)> {
        let info = self.info(name)?;
        let bytes = byte_len(info.ggml_dtype, self.elements(name)?)
            .map_err(|e| Error::key(&self.path, name, e))?;
        let file_len = self.map.len();
        let start = (self.content.tensor_data_offset as u128) + u128::from(info.offset);
        if start + bytes as u128 > file_len as u128 {
            return Err(Error::key(
                &self.path,
                name,
                format!(
                    "tensor data ({bytes} bytes at offset {start}) runs past the end of the file ({file_len} bytes): truncated?"
                ),
            ));
        }
        Ok((start as usize, bytes))
    }

    /// The raw ggml blocks of a tensor.
    pub fn raw(&self, name: &str) -> Result<&[u8]> {
        let (start, len) = self.extent(name)?;
        Ok(&self.map[start..start + len])
    }

    /// A tensor dequantized to f32, row-major.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.info(name)?;
        dequantize_blocks(info.ggml_dtype, self.raw(name)?, self.elements(name)?)
            .map_err(|e| Error::key(&self.path, name, e))
    }
}
