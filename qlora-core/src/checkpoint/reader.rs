use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::SafeTensors;
use safetensors::tensor::{Metadata, TensorView};
use serde::Deserialize;

use super::{WEIGHTS_FILE, WEIGHTS_INDEX_FILE};
use crate::dtype::{FloatDtype, decode_f32};
use crate::error::{Error, Result};

/// One memory-mapped `.safetensors` file with its parsed header.
struct Shard {
    path: PathBuf,
    mmap: Mmap,
    header_len: usize,
    metadata: Metadata,
}

impl Shard {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is opened read-only; like every safetensors reader we rely on nobody
        // truncating it while we hold the map.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap)
            .map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
        Ok(Shard {
            path: path.to_path_buf(),
            mmap,
            header_len,
            metadata,
        })
    }

    fn view(&self, name: &str) -> Option<TensorView<'_>> {
        let info = self.metadata.info(name)?;
        let start = 8 + self.header_len + info.data_offsets.0;
        let end = 8 + self.header_len + info.data_offsets.1;
        // `read_metadata` validated the offsets against the file length.
        TensorView::new(info.dtype, info.shape.clone(), &self.mmap[start..end]).ok()
    }
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// The weights of a model directory: `model.safetensors`, or the shards listed by
/// `model.safetensors.index.json`. Other `.safetensors` files in the folder are ignored.
pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<Shard>,
    /// Tensor name to shard position, sorted by name.
    locations: BTreeMap<String, usize>,
}

impl Checkpoint {
    /// Open the safetensors files of the model directory `dir` (one file, or the shards its index
    /// names), memory-mapped.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let index_path = dir.join(WEIGHTS_INDEX_FILE);
        let single_path = dir.join(WEIGHTS_FILE);
        if index_path.is_file() {
            Self::open_sharded(dir, &index_path)
        } else if single_path.is_file() {
            Ok(Self::single(dir, Shard::open(&single_path)?))
        } else if dir.is_dir() {
            Err(Error::file(
                &dir,
                format!("no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE} in this directory"),
            ))
        } else {
            Err(Error::io(
                &dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such model directory"),
            ))
        }
    }

    /// One `.safetensors` file on its own (an adapter, a reference file).
    pub fn open_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Ok(Self::single(dir, Shard::open(path)?))
    }

    /// A checkpoint of one file.
    fn single(dir: PathBuf, shard: Shard) -> Self {
        let locations = shard
            .metadata
            .tensors()
            .into_keys()
            .map(|name| (name, 0))
            .collect();
        Checkpoint {
            dir,
            shards: vec![shard],
            locations,
        }
    }

    fn open_sharded(dir: PathBuf, index_path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index_path).map_err(|e| Error::io(index_path, e))?;
        let index: ShardIndex = serde_json::from_str(&text)
            .map_err(|e| Error::file(index_path, format!("invalid shard index: {e}")))?;
        let mut shard_of_file: HashMap<String, usize> = HashMap::new();
        let mut shards = Vec::new();
        let mut locations = BTreeMap::new();
        for (name, file) in &index.weight_map {
            let position = match shard_of_file.get(file) {
                Some(&position) => position,
                None => {
                    if file.contains('/') || file.contains('\\') {
                        return Err(Error::key(
                            index_path,
                            name,
                            "shard file must be in the model directory",
                        ));
                    }
                    let shard = Shard::open(&dir.join(file))?;
                    shards.push(shard);
                    shard_of_file.insert(file.clone(), shards.len() - 1);
                    shards.len() - 1
                }
            };
            if shards[position].metadata.info(name).is_none() {
                return Err(Error::key(
                    index_path,
                    name,
                    format!("listed in the index but not present in {file}"),
                ));
            }
            locations.insert(name.clone(), position);
        }
        Ok(Checkpoint {
            dir,
            shards,
            locations,
        })
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.locations.keys().map(String::as_str)
    }

    /// Whether the checkpoint has a tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.locations.contains_key(name)
    }

    /// The file holding `name` (for error messages), or the directory if it is not there.
    pub fn file_of(&self, name: &str) -> &Path {
        self.locations
            .get(name)
            .map_or(self.dir.as_path(), |&i| self.shards[i].path.as_path())
    }

    /// A zero-copy view of a tensor, or an error naming the file and the tensor.
    pub fn view(&self, name: &str) -> Result<TensorView<'_>> {
        let &position = self
            .locations
            .get(name)
            .ok_or_else(|| Error::key(&self.dir, name, "tensor not found in the checkpoint"))?;
        let shard = &self.shards[position];
        shard
            .view(name)
            .ok_or_else(|| Error::key(&shard.path, name, "tensor data is out of bounds"))
    }

    /// The float storage type of a tensor.
    pub fn float_dtype(&self, name: &str) -> Result<FloatDtype> {
        let view = self.view(name)?;
        FloatDtype::from_safetensors(view.dtype()).ok_or_else(|| {
            Error::key(
                self.file_of(name),
                name,
                format!(
                    "unsupported dtype {:?}, expected BF16, F16 or F32",
                    view.dtype()
                ),
            )
        })
    }

    /// A float tensor converted to f32, checked against the expected shape when one is given.
    pub fn read_f32(&self, name: &str, expected_shape: Option<&[usize]>) -> Result<Vec<f32>> {
        let dtype = self.float_dtype(name)?;
        let view = self.view(name)?;
        if let Some(shape) = expected_shape
            && view.shape() != shape
        {
            return Err(Error::key(
                self.file_of(name),
                name,
                format!("shape {:?}, expected {:?}", view.shape(), shape),
            ));
        }
        let values = decode_f32(view.data(), dtype);
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::key(
                self.file_of(name),
                name,
                format!(
                    "holds a non-finite value ({}) at element {i}: the weights are damaged",
                    values[i]
                ),
            ));
        }
        Ok(values)
    }

    /// The `__metadata__` of the (first) file.
    pub fn header_metadata(&self) -> Option<&HashMap<String, String>> {
        self.shards
            .first()
            .and_then(|s| s.metadata.metadata().as_ref())
    }

    /// The dtype most float tensors are stored in (what the model was saved as).
    pub fn dominant_float_dtype(&self) -> Option<FloatDtype> {
        let mut bytes: HashMap<FloatDtype, usize> = HashMap::new();
        for name in self.names() {
            if let Ok(view) = self.view(name)
                && let Some(dtype) = FloatDtype::from_safetensors(view.dtype())
            {
                *bytes.entry(dtype).or_default() += view.data().len();
            }
        }
        bytes.into_iter().max_by_key(|&(_, b)| b).map(|(d, _)| d)
    }
}
