//! Checkpoints of a run, `OUT/checkpoint-N/`: the adapter (PEFT form, f32), the optimizer
//! moments, where the run is (step, epoch, batch, dropout stream) and its configuration. Each is
//! written whole into a staging directory, flushed to the device and renamed into place; its
//! manifest ([`MANIFEST_FILE`]: every file's size and CRC-32C) is written last, and a checkpoint
//! resumes only when every file matches it ([`verify_checkpoint`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use serde::{Deserialize, Serialize};

use super::optimizer::SavedMoments;
use crate::checkpoint::{Checkpoint, OutTensor, write_safetensors_file};
use crate::dtype::{FloatDtype, decode_f32, f32_bytes};
use crate::error::{Error, Result};
use crate::staged_dir::{StagedDir, remove_whole};

pub const TRAINER_STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The run's settings, saved with every checkpoint and the final adapter.
pub const CONFIG_FILE: &str = "training_config.toml";
/// The sizes and checksums of a checkpoint's files, written after them.
pub const MANIFEST_FILE: &str = "checkpoint_manifest.json";
const PREFIX: &str = "checkpoint-";

/// A file of a checkpoint as its manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ManifestEntry {
    bytes: u64,
    /// CRC-32C of the contents, 8 hex digits.
    crc32c: String,
}

/// [`MANIFEST_FILE`]'s contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    step: u64,
    files: BTreeMap<String, ManifestEntry>,
}

/// Size and CRC-32C of the file at `path`, read in pieces.
fn file_entry(path: &Path) -> Result<ManifestEntry> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let (mut crc, mut bytes) = (0u32, 0u64);
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buffer[..n]);
        bytes += n as u64;
    }
    Ok(ManifestEntry {
        bytes,
        crc32c: format!("{crc:08x}"),
    })
}

/// Record every file of `dir` (a checkpoint being written) in its manifest.
fn write_manifest(dir: &Path, step: u64) -> Result<()> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if entry.file_type().map_err(|e| Error::io(dir, e))?.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            files.insert(name, file_entry(&entry.path())?);
        }
    }
    let path = dir.join(MANIFEST_FILE);
    let json = serde_json::to_string_pretty(&Manifest { step, files }).expect("serializes");
    std::fs::write(&path, json + "\n").map_err(|e| Error::io(&path, e))
}

/// Why the checkpoint `dir` cannot be resumed from (torn, truncated or corrupted), checked
/// against its manifest; `Ok` when every file it lists is there with its size and checksum.
pub fn verify_checkpoint(dir: &Path) -> std::result::Result<(), String> {
    let path = dir.join(MANIFEST_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "it has no {MANIFEST_FILE} (a checkpoint is complete only once its manifest is \
                 written last)"
            ));
        }
        Err(e) => return Err(format!("cannot read {MANIFEST_FILE}: {e}")),
    };
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| format!("{MANIFEST_FILE} is not a manifest: {e}"))?;
    for required in [TRAINER_STATE_FILE, OPTIMIZER_FILE] {
        if !manifest.files.contains_key(required) {
            return Err(format!("{MANIFEST_FILE} does not list {required}"));
        }
    }
    for (name, want) in &manifest.files {
        let file = dir.join(name);
        let got = match file_entry(&file) {
            Ok(got) => got,
            Err(_) if !file.exists() => return Err(format!("{name} is missing")),
            Err(e) => return Err(e.to_string()),
        };
        if got.bytes != want.bytes {
            return Err(format!(
                "{name} is {} bytes, the manifest says {} (truncated or rewritten)",
                got.bytes, want.bytes
            ));
        }
        if got.crc32c != want.crc32c {
            return Err(format!(
                "{name} does not match its checksum in the manifest (corrupted)"
            ));
        }
    }
    Ok(())
}

/// Where a run stands after an optimizer step. Everything random derives from the seed and
/// these counters, so restoring them restores the run exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunPosition {
    /// Optimizer steps taken.
    pub step: u64,
    /// Epoch of the next batch, and its index within that epoch.
    pub epoch: u64,
    /// The index of the next batch within its epoch.
    pub batch_in_epoch: usize,
    /// Micro-batches consumed (the dropout stream's counter).
    pub micro_step: u64,
    /// Tokens trained on so far.
    pub tokens: u64,
    /// Ranks the run trains on (0 reads as 1: checkpoints of one process leave it out). A
    /// checkpoint resumes on another number of ranks when the global batch stays the same.
    #[serde(default, skip_serializing_if = "is_one_rank")]
    pub world_size: usize,
}

fn is_one_rank(world_size: &usize) -> bool {
    *world_size <= 1
}

impl RunPosition {
    /// Ranks the run trains on.
    pub fn ranks(&self) -> usize {
        self.world_size.max(1)
    }
}

pub fn checkpoint_dir(out: &Path, step: u64) -> PathBuf {
    out.join(format!("{PREFIX}{step}"))
}

/// Checkpoints in `out`, oldest first.
pub fn list_checkpoints(out: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix(PREFIX)?.parse().ok()?;
            e.path()
                .join(TRAINER_STATE_FILE)
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// A checkpoint stalled after its adapter is written, for the tests of signals arriving
/// mid-save: `QLORA_TEST_CHECKPOINT_PAUSE_MS` milliseconds (unset: none).
fn pause_for_tests() {
    static PAUSE: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let pause = PAUSE.get_or_init(|| {
        std::env::var("QLORA_TEST_CHECKPOINT_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    if let Some(ms) = *pause {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Write `write_adapter`'s files, the optimizer and the position into `OUT/checkpoint-N/`
/// atomically, then drop the oldest checkpoints beyond `keep`.
pub fn save_checkpoint(
    out: &Path,
    position: RunPosition,
    optimizer_step: u64,
    moments: &[SavedMoments],
    config_toml: &str,
    write_adapter: impl FnOnce(&Path) -> Result<()>,
    keep: Option<usize>,
) -> Result<PathBuf> {
    let target = checkpoint_dir(out, position.step);
    let staged = StagedDir::new(&target, true, &[])?;
    write_adapter(staged.path())?;
    pause_for_tests();
    let mut tensors = BTreeMap::new();
    for (i, m) in moments.iter().enumerate() {
        match m {
            SavedMoments::F32 { m, v } => {
                tensors.insert(
                    format!("state.{i}.m"),
                    OutTensor::owned(Dtype::F32, vec![m.len()], f32_bytes(m)),
                );
                tensors.insert(
                    format!("state.{i}.v"),
                    OutTensor::owned(Dtype::F32, vec![v.len()], f32_bytes(v)),
                );
            }
            SavedMoments::U8 {
                m_codes,
                m_absmax,
                v_codes,
                v_absmax,
            } => {
                for (name, codes, absmax) in [("m", m_codes, m_absmax), ("v", v_codes, v_absmax)] {
                    tensors.insert(
                        format!("state.{i}.{name}.codes"),
                        OutTensor::owned(Dtype::U8, vec![codes.len()], codes.clone()),
                    );
                    tensors.insert(
                        format!("state.{i}.{name}.absmax"),
                        OutTensor::owned(Dtype::F32, vec![absmax.len()], f32_bytes(absmax)),
                    );
                }
            }
        }
    }
    let path = staged.path().join(OPTIMIZER_FILE);
    let metadata = Some(HashMap::from([
        ("step".to_string(), optimizer_step.to_string()),
        ("params".to_string(), moments.len().to_string()),
    ]));
    let views: Vec<(&String, &OutTensor<'_>)> = tensors.iter().collect();
    write_safetensors_file(views, metadata, &path)?;
    let state_path = staged.path().join(TRAINER_STATE_FILE);
    let json = serde_json::to_string_pretty(&position).expect("position serializes");
    std::fs::write(&state_path, json + "\n").map_err(|e| Error::io(&state_path, e))?;
    let config_path = staged.path().join(CONFIG_FILE);
    std::fs::write(&config_path, config_toml).map_err(|e| Error::io(&config_path, e))?;
    write_manifest(staged.path(), position.step)?;
    let saved = staged.commit()?;
    if let Some(keep) = keep {
        let all = list_checkpoints(out);
        if all.len() > keep.max(1) {
            for (_, old) in &all[..all.len() - keep.max(1)] {
                remove_whole(old)?;
            }
        }
    }
    Ok(saved)
}

/// Position, optimizer step and moments of a checkpoint directory.
pub fn load_checkpoint(dir: &Path) -> Result<(RunPosition, u64, Vec<SavedMoments>)> {
    let state_path = dir.join(TRAINER_STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let position: RunPosition = serde_json::from_str(&text)
        .map_err(|e| Error::file(&state_path, format!("invalid trainer state: {e}")))?;
    let path = dir.join(OPTIMIZER_FILE);
    let file = Checkpoint::open_file(&path)?;
    let info = file.header_metadata();
    let number = |key: &str| -> Result<u64> {
        info.and_then(|m| m.get(key))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::key(&path, key, "missing from the metadata"))
    };
    let (step, params) = (number("step")?, number("params")? as usize);
    let floats = |name: String| -> Result<Vec<f32>> {
        Ok(decode_f32(file.view(&name)?.data(), FloatDtype::F32))
    };
    let bytes_of = |name: String| -> Result<Vec<u8>> { Ok(file.view(&name)?.data().to_vec()) };
    let mut moments = Vec::with_capacity(params);
    for i in 0..params {
        if file.contains(&format!("state.{i}.m")) {
            moments.push(SavedMoments::F32 {
                m: floats(format!("state.{i}.m"))?,
                v: floats(format!("state.{i}.v"))?,
            });
        } else {
            moments.push(SavedMoments::U8 {
                m_codes: bytes_of(format!("state.{i}.m.codes"))?,
                m_absmax: floats(format!("state.{i}.m.absmax"))?,
                v_codes: bytes_of(format!("state.{i}.v.codes"))?,
                v_absmax: floats(format!("state.{i}.v.absmax"))?,
            });
        }
    }
    Ok((position, step, moments))
}
