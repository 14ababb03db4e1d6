use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{TensorView, View};
use safetensors::{Dtype, serialize_to_file};

use super::{WEIGHTS_FILE, WEIGHTS_INDEX_FILE};
use crate::dtype::{FloatDtype, decode_f32, encode_f32};
use crate::error::{Error, Result};

/// Write one safetensors file. The crate writes through a private (0600) temporary file; the
/// result gets the permissions any other file we create gets (0666 less the umask), read once
/// from a probe file.
pub fn write_safetensors_file<'a, V: View + 'a>(
    tensors: impl IntoIterator<Item = (&'a String, V)>,
    metadata: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<()> {
    serialize_to_file(tensors, metadata, path).map_err(|e| match e {
        // The OS's refusal (a full disk) stays one, so callers can tell it apart.
        safetensors::SafeTensorError::IoError(e) => Error::io(path, e),
        e => Error::file(path, format!("cannot write safetensors: {e}")),
    })?;
    // The mode a new file gets in this process (the umask is process-wide): probed once.
    static ORDINARY: std::sync::OnceLock<std::fs::Permissions> = std::sync::OnceLock::new();
    let mode = match ORDINARY.get() {
        Some(mode) => mode.clone(),
        None => {
            let probe = path.with_extension("permissions-probe");
            let mode = std::fs::File::create(&probe)
                .and_then(|f| f.metadata())
                .map(|m| m.permissions());
            let _ = std::fs::remove_file(&probe);
            let mode = mode.map_err(|e| Error::io(&probe, e))?;
            ORDINARY.get_or_init(|| mode).clone()
        }
    };
    std::fs::set_permissions(path, mode).map_err(|e| Error::io(path, e))
}

type Producer<'a> = Box<dyn Fn() -> Vec<u8> + Send + Sync + 'a>;

/// A tensor to write. Data is borrowed, owned, or produced only when the writer reaches it, so
/// a checkpoint can be converted without holding all of it in memory.
pub enum OutTensor<'a> {
    /// A view of a tensor read elsewhere, written as it is.
    Borrowed(TensorView<'a>),
    /// Bytes held in memory.
    Owned {
        /// The tensor's dtype.
        dtype: Dtype,
        /// The tensor's shape.
        shape: Vec<usize>,
        /// The tensor's bytes, little-endian.
        data: Vec<u8>,
    },
    /// Bytes made by `produce` when the writer reaches the tensor.
    Lazy {
        /// The tensor's dtype.
        dtype: Dtype,
        /// The tensor's shape.
        shape: Vec<usize>,
        /// Bytes `produce` makes.
        len: usize,
        /// Makes the tensor's bytes.
        produce: Producer<'a>,
    },
}

impl<'a> OutTensor<'a> {
    /// A tensor of `data`, held in memory.
    pub fn owned(dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) -> Self {
        OutTensor::Owned { dtype, shape, data }
    }

    /// A tensor whose bytes `produce` makes when it is written.
    pub fn lazy(
        dtype: Dtype,
        shape: Vec<usize>,
        produce: impl Fn() -> Vec<u8> + Send + Sync + 'a,
    ) -> Self {
        let len = shape.iter().product::<usize>() * dtype.bitsize() / 8;
        OutTensor::Lazy {
            dtype,
            shape,
            len,
            produce: Box::new(produce),
        }
    }

    /// `view` written as `dtype`: as it is when it is already `dtype` (or not a float),
    /// else converted when written.
    pub fn converted(view: TensorView<'a>, dtype: FloatDtype) -> Self {
        match FloatDtype::from_safetensors(view.dtype()) {
            Some(stored) if stored != dtype => {
                let shape = view.shape().to_vec();
                OutTensor::lazy(dtype.safetensors(), shape, move || {
                    encode_f32(&decode_f32(view.data(), stored), dtype)
                })
            }
            _ => OutTensor::Borrowed(view),
        }
    }
}

impl View for &OutTensor<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            OutTensor::Borrowed(view) => view.dtype(),
            OutTensor::Owned { dtype, .. } | OutTensor::Lazy { dtype, .. } => *dtype,
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            OutTensor::Borrowed(view) => view.shape(),
            OutTensor::Owned { shape, .. } | OutTensor::Lazy { shape, .. } => shape,
        }
    }

    fn data(&self) -> Cow<'_, [u8]> {
        match self {
            OutTensor::Borrowed(view) => Cow::Borrowed(view.data()),
            OutTensor::Owned { data, .. } => Cow::Borrowed(data),
            OutTensor::Lazy { produce, len, .. } => {
                let data = produce();
                assert_eq!(
                    data.len(),
                    *len,
                    "lazy tensor produced the wrong byte count"
                );
                Cow::Owned(data)
            }
        }
    }

    fn data_len(&self) -> usize {
        match self {
            OutTensor::Borrowed(view) => view.data().len(),
            OutTensor::Owned { data, .. } => data.len(),
            OutTensor::Lazy { len, .. } => *len,
        }
    }
}

/// Write `tensors` into `dir` the way transformers does: one `model.safetensors` when the total
/// fits in `max_shard_bytes`, else `model-0000i-of-0000n.safetensors` shards plus
/// `model.safetensors.index.json`. Tensors are written in name order; a tensor larger than the
/// limit gets a shard of its own.
pub fn write_safetensors(
    dir: &Path,
    tensors: BTreeMap<String, OutTensor<'_>>,
    max_shard_bytes: usize,
) -> Result<()> {
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let mut shards: Vec<Vec<(&String, &OutTensor<'_>)>> = vec![Vec::new()];
    let mut shard_bytes = 0usize;
    let mut total = 0usize;
    for (name, tensor) in &tensors {
        let size = (&tensor).data_len();
        let current = shards.last_mut().expect("one shard");
        if !current.is_empty() && shard_bytes + size > max_shard_bytes {
            shards.push(Vec::new());
            shard_bytes = 0;
        }
        shards.last_mut().expect("one shard").push((name, tensor));
        shard_bytes += size;
        total += size;
    }

    let write = |file: &str, shard: &[(&String, &OutTensor<'_>)]| -> Result<()> {
        write_safetensors_file(shard.iter().copied(), metadata.clone(), &dir.join(file))
    };

    if shards.len() == 1 {
        return write(WEIGHTS_FILE, &shards[0]);
    }
    let count = shards.len();
    let mut weight_map = BTreeMap::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
        write(&file, shard)?;
        for (name, _) in shard {
            weight_map.insert((*name).clone(), file.clone());
        }
    }
    let index = serde_json::json!({
        "metadata": { "total_size": total },
        "weight_map": weight_map,
    });
    let path = dir.join(WEIGHTS_INDEX_FILE);
    let text = serde_json::to_string_pretty(&index).expect("index serializes");
    std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))
}
