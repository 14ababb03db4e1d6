//! A GGUF v3 file written in one pass: the header, the metadata, every tensor's name, shape,
//! type and offset (all known before any data, from the shapes and types alone), then each
//! tensor's bytes as a closure produces them, aligned to 32 bytes. Only one tensor's bytes are
//! in memory at a time. (candle's GGUF writer wants every tensor in memory first.)

use std::io::{BufWriter, Seek, Write};
use std::path::Path;

use candle_core::quantized::GgmlDType;

use crate::error::{Error, Result};
use crate::gguf::blocks::byte_len;

/// Data offsets and the end of the tensor-info section are multiples of this.
pub const ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// An unsigned 32-bit integer.
    U32(u32),
    /// A signed 32-bit integer.
    I32(i32),
    /// A 32-bit float.
    F32(f32),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// An array of strings.
    Strings(Vec<String>),
    /// An array of signed 32-bit integers.
    I32s(Vec<i32>),
    /// An array of 32-bit floats.
    F32s(Vec<f32>),
}

/// ggml's number of a tensor type (`ggml_type`).
pub fn ggml_type_id(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// A tensor to write: its GGUF name, its shape as Hugging Face writes it (rows first), its
/// type, and what produces its bytes.
pub struct TensorEntry<'a> {
    /// The GGUF name.
    pub name: String,
    /// The shape, outermost dimension first (written reversed, as ggml orders it).
    pub shape: Vec<usize>,
    /// The ggml type of the bytes.
    pub dtype: GgmlDType,
    /// Makes the tensor's bytes when the writer reaches it.
    pub bytes: Box<dyn FnOnce() -> Result<Vec<u8>> + 'a>,
}

struct Out<W: Write> {
    inner: W,
    written: u64,
}

impl<W: Write> Out<W> {
    fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn u32(&mut self, v: u32) -> std::io::Result<()> {
        self.raw(&v.to_le_bytes())
    }

    fn u64(&mut self, v: u64) -> std::io::Result<()> {
        self.raw(&v.to_le_bytes())
    }

    fn string(&mut self, s: &str) -> std::io::Result<()> {
        self.u64(s.len() as u64)?;
        self.raw(s.as_bytes())
    }

    fn pad(&mut self) -> std::io::Result<()> {
        let pad = (ALIGNMENT - self.written % ALIGNMENT) % ALIGNMENT;
        self.raw(&vec![0u8; pad as usize])
    }

    fn value(&mut self, value: &MetaValue) -> std::io::Result<()> {
        // GGUF value types: u32 4, i32 5, f32 6, bool 7, string 8, array 9.
        match value {
            MetaValue::U32(v) => {
                self.u32(4)?;
                self.u32(*v)
            }
            MetaValue::I32(v) => {
                self.u32(5)?;
                self.raw(&v.to_le_bytes())
            }
            MetaValue::F32(v) => {
                self.u32(6)?;
                self.raw(&v.to_le_bytes())
            }
            MetaValue::Bool(v) => {
                self.u32(7)?;
                self.raw(&[u8::from(*v)])
            }
            MetaValue::String(s) => {
                self.u32(8)?;
                self.string(s)
            }
            MetaValue::Strings(items) => {
                self.u32(9)?;
                self.u32(8)?;
                self.u64(items.len() as u64)?;
                items.iter().try_for_each(|s| self.string(s))
            }
            MetaValue::I32s(items) => {
                self.u32(9)?;
                self.u32(5)?;
                self.u64(items.len() as u64)?;
                items.iter().try_for_each(|v| self.raw(&v.to_le_bytes()))
            }
            MetaValue::F32s(items) => {
                self.u32(9)?;
                self.u32(6)?;
                self.u64(items.len() as u64)?;
                items.iter().try_for_each(|v| self.raw(&v.to_le_bytes()))
            }
        }
    }
}

/// Write `metadata` and `tensors` as a GGUF v3 file at `path`; returns the bytes written.
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, MetaValue)],
    tensors: Vec<TensorEntry<'_>>,
) -> Result<u64> {
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut out = Out {
        inner: BufWriter::with_capacity(1 << 20, file),
        written: 0,
    };
    let io = |e: std::io::Error| Error::io(path, e);
    out.raw(b"GGUF").map_err(io)?;
    out.u32(3).map_err(io)?;
    out.u64(tensors.len() as u64).map_err(io)?;
    out.u64(metadata.len() as u64).map_err(io)?;
    for (key, value) in metadata {
        out.string(key).map_err(io)?;
        out.value(value).map_err(io)?;
    }
    let mut offset = 0u64;
    let mut sizes = Vec::with_capacity(tensors.len());
    for tensor in &tensors {
        let numel: usize = tensor.shape.iter().product();
        let size = byte_len(tensor.dtype, numel)
            .map_err(|e| Error::invalid(format!("tensor {}: {e}", tensor.name)))?
            as u64;
        out.string(&tensor.name).map_err(io)?;
        out.u32(tensor.shape.len() as u32).map_err(io)?;
        // ggml lists dimensions innermost first.
        for &dim in tensor.shape.iter().rev() {
            out.u64(dim as u64).map_err(io)?;
        }
        out.u32(ggml_type_id(tensor.dtype)).map_err(io)?;
        out.u64(offset).map_err(io)?;
        sizes.push(size);
        offset += size.div_ceil(ALIGNMENT) * ALIGNMENT;
    }
    out.pad().map_err(io)?;
    for (tensor, size) in tensors.into_iter().zip(sizes) {
        let name = tensor.name;
        let bytes = (tensor.bytes)()?;
        if bytes.len() as u64 != size {
            return Err(Error::invalid(format!(
                "tensor {name}: {} bytes, expected {size}",
                bytes.len()
            )));
        }
        out.raw(&bytes).map_err(io)?;
        out.pad().map_err(io)?;
    }
    let mut file = out.inner.into_inner().map_err(|e| io(e.into_error()))?;
    file.flush().map_err(io)?;
    let written = file.stream_position().map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(written)
}
