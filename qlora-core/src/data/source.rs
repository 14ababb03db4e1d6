//! Where `--data` finds its records: a JSON Lines, JSON or parquet file; a folder of data files
//! (parquet shards, ...); or a dataset repo id (`ORG/NAME[@REVISION]`) in the Hugging Face
//! cache. Folders and repos are split as `datasets.load_dataset` splits them
//! ([`crate::hub::splits`]), and `--data-split` / `--data-config` choose the part read.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::{Deserialize, Serialize};

use super::fields::FieldMap;
use super::parquet::{is_parquet, read_parquet};
use super::records::{Record, read_json_records};
use crate::error::{Error, Result};
use crate::hub;

/// Which part of a dataset folder or repo is read (flags of `train` and `eval`).
#[derive(Debug, Clone, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct SourceOptions {
    /// The split --data reads from a folder or a dataset repo (a file is read whole).
    #[arg(long, default_value = "train", help_heading = "Data")]
    pub data_split: String,
    /// The configuration (subset) of a dataset repo whose README declares several.
    #[arg(long, help_heading = "Data")]
    pub data_config: Option<String>,
}

impl Default for SourceOptions {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

/// The records of one file: parquet by its extension, else JSON Lines or a JSON array.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    if is_parquet(path) {
        read_parquet(path)
    } else {
        read_json_records(path)
    }
}

/// The records a `--data` value names, with a description of where they came from (the
/// repo's commit, the config, the split and how many files, for a folder or a repo).
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetRecords {
    /// Every record, file after file.
    pub records: Vec<Record>,
    /// `data.jsonl`, or `ORG/NAME@COMMIT (split train, 2 files)`.
    pub origin: String,
}

/// The files `spec` names for one of `splits` (the first the dataset has): the file itself, or
/// the split's files of a folder or a cached dataset repo.
pub fn dataset_files(
    spec: &Path,
    splits: &[&str],
    config: Option<&str>,
) -> Result<(Vec<PathBuf>, String)> {
    let (root, name, found) = if spec.is_file() {
        return Ok((vec![spec.to_path_buf()], spec.display().to_string()));
    } else if spec.is_dir() {
        let found = hub::splits::splits(spec, config)?;
        (spec.to_path_buf(), spec.display().to_string(), found)
    } else {
        match spec
            .to_str()
            .map(|id| hub::resolve_dataset_id(id, config))
            .transpose()?
            .flatten()
        {
            Some((snapshot, found)) => {
                let name = format!("{}@{}", snapshot.repo, &snapshot.commit[..12]);
                (snapshot.dir, name, found)
            }
            None => return Err(Error::file(spec, "not found")),
        }
    };
    let split = splits
        .iter()
        .find(|s| found.splits.iter().any(|(name, _)| name == *s))
        .copied()
        .unwrap_or(splits[0]);
    let files = found.files(split, &root)?.to_vec();
    let config = found
        .config
        .map(|c| format!("config {c}, "))
        .unwrap_or_default();
    let origin = format!(
        "{name} ({config}split {split}, {} file{})",
        files.len(),
        if files.len() == 1 { "" } else { "s" }
    );
    Ok((files, origin))
}

/// Every record `spec` names (see [`dataset_files`]), columns renamed by `fields`.
pub fn read_dataset(
    spec: &Path,
    splits: &[&str],
    config: Option<&str>,
    fields: &FieldMap,
) -> Result<DatasetRecords> {
    let (files, origin) = dataset_files(spec, splits, config)?;
    let mut records = Vec::new();
    for file in &files {
        records.extend(read_records(file)?);
    }
    for record in &mut records {
        fields.apply(record)?;
    }
    Ok(DatasetRecords { records, origin })
}
