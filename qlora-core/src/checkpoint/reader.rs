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

    /// The byte range of tensor `name` in the file.
    fn range(&self, name: &str) -> Option<std::ops::Range<usize>> {
        let info = self.metadata.info(name)?;
        // `read_metadata` validated the offsets against the file length.
        Some(8 + self.header_len + info.data_offsets.0..8 + self.header_len + info.data_offsets.1)
    }

    fn view(&self, name: &str) -> Option<TensorView<'_>> {
        let info = self.metadata.info(name)?;
        TensorView::new(
            info.dtype,
            info.shape.clone(),
            &self.mmap[self.range(name)?],
        )
        .ok()
    }

    /// Drop the pages of tensor `name` that reading it mapped in from the process's resident
    /// set (they stay in the page cache): a loader that has converted a tensor does not hold
    /// the file's copy as well, so loading peaks at the converted model, not that plus the file.
    fn release(&self, name: &str) {
        #[cfg(unix)]
        if let Some(range) = self.range(name) {
            let page = 4096;
            let (start, end) = (range.start.next_multiple_of(page), range.end / page * page);
            if start < end {
                // SAFETY: the map is a read-only shared file mapping: pages dropped here are read
                // again from the file on the next access, with the same bytes, so views into it
                // stay valid.
                let _ = unsafe {
                    self.mmap.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
            }
        }
        #[cfg(not(unix))]
        let _ = name;
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
    /// The seed of a checkpoint whose tensors are drawn at random when read ([`Self::random`]).
    random: Option<u64>,
}

/// The standard deviation of a random checkpoint's weights (transformers' `initializer_range`).
const RANDOM_STD: f32 = 0.02;

/// Values of a random tensor: norms' weights 1, biases 0, anything else uniform with a standard
/// deviation of [`RANDOM_STD`], drawn from the seed and the tensor's name.
fn random_values(seed: u64, name: &str, len: usize) -> Vec<f32> {
    use rand::{RngExt, SeedableRng};
    use rayon::prelude::*;
    if name.ends_with("norm.weight") {
        return vec![1.0; len];
    }
    if name.ends_with(".bias") {
        return vec![0.0; len];
    }
    // FNV-1a of the name, so every tensor has its own stream.
    let key = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let half_width = RANDOM_STD * 3f32.sqrt();
    let mut values = vec![0f32; len];
    const CHUNK: usize = 1 << 16;
    values
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut rng =
                rand::rngs::StdRng::seed_from_u64(seed ^ key ^ (i as u64).rotate_left(32));
            for v in chunk {
                *v = rng.random_range(-half_width..half_width);
            }
        });
    values
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
            random: None,
        }
    }

    /// A checkpoint with every tensor a model asks for, drawn at random from `seed` when it is
    /// read (norms 1, biases 0, weights of standard deviation 0.02) and stored nowhere: a model
    /// of any shape built without files (`qlora bench`). `name` stands for its directory in
    /// messages.
    pub fn random(name: &str, seed: u64) -> Self {
        Checkpoint {
            dir: PathBuf::from(name),
            shards: Vec::new(),
            locations: BTreeMap::new(),
            random: Some(seed),
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
            random: None,
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
        self.random.is_some() || self.locations.contains_key(name)
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
        if self.random.is_some() {
            return Ok(FloatDtype::F32);
        }
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
        if let Some(seed) = self.random {
            let shape = expected_shape.ok_or_else(|| {
                Error::key(
                    &self.dir,
                    name,
                    "a random tensor needs the shape it is read at",
                )
            })?;
            return Ok(random_values(seed, name, shape.iter().product()));
        }
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
        if let Some(&position) = self.locations.get(name) {
            self.shards[position].release(name);
        }
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
