//! `--model FILE.gguf`: the file is imported once into the user's cache directory and the
//! imported model directory is used from then on.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::file::GgufFile;
use super::import::{ImportOptions, import_gguf_file};
use crate::error::{Error, Result};
use crate::hub;

/// `$QLORA_CACHE`, else `$XDG_CACHE_HOME/qlora`, else `~/.cache/qlora`.
pub fn cache_root() -> Result<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("QLORA_CACHE") {
        return Ok(dir);
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Ok(dir.join("qlora"));
    }
    var("HOME")
        .map(|home| home.join(".cache").join("qlora"))
        .ok_or_else(|| Error::invalid("no cache directory: set QLORA_CACHE or HOME"))
}

/// Whether `path` is a `.gguf` file.
pub fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        && path.is_file()
}

/// A model directory for `path`: the path itself; for a `.gguf` file its imported copy in
/// the cache (keyed by name, size and modification time), importing it on first use; for a
/// Hugging Face repo id (`ORG/NAME[@REVISION]`, not an existing path) its snapshot in the
/// Hugging Face cache ([`crate::hub`]).
pub fn resolve_model(path: impl AsRef<Path>) -> Result<PathBuf> {
    let path = path.as_ref();
    if let Some(snapshot) = path
        .to_str()
        .map(hub::resolve_model_id)
        .transpose()?
        .flatten()
    {
        return Ok(snapshot.dir);
    }
    if !is_gguf(path) {
        return Ok(path.to_path_buf());
    }
    resolve_gguf_in(path, &cache_root()?)
}

/// What a cache entry held when it was complete: every file with its size.
const MANIFEST: &str = ".qlora-import.json";

/// Record the files of a finished import (written last, atomically).
fn write_manifest(dir: &Path) -> Result<()> {
    let mut files = serde_json::Map::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let len = entry
            .metadata()
            .map_err(|e| Error::io(entry.path(), e))?
            .len();
        files.insert(name, len.into());
    }
    let staged = dir.join(format!("{MANIFEST}.tmp"));
    let text = serde_json::json!({ "files": files }).to_string();
    std::fs::write(&staged, text).map_err(|e| Error::io(&staged, e))?;
    std::fs::rename(&staged, dir.join(MANIFEST)).map_err(|e| Error::io(dir, e))
}

/// Whether the entry in `dir` is as its import left it: the manifest is there and every file it
/// lists has its size.
fn is_complete(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join(MANIFEST)) else {
        return false;
    };
    let Ok(manifest) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    let Some(files) = manifest.get("files").and_then(|f| f.as_object()) else {
        return false;
    };
    !files.is_empty()
        && files.iter().all(|(name, len)| {
            std::fs::metadata(dir.join(name)).is_ok_and(|m| Some(m.len()) == len.as_u64())
        })
}

/// [`resolve_model`] for a GGUF `path` with the cache at `cache`. An entry that is incomplete
/// or damaged (a file missing or of another size than the import wrote) is imported again.
pub fn resolve_gguf_in(path: &Path, cache: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let dir = cache
        .join("gguf")
        .join(format!("{stem}-{}-{modified}", meta.len()));
    if is_complete(&dir) {
        return Ok(dir);
    }
    // A file that is not a usable GGUF fails here, before anything is announced or written.
    let gguf = GgufFile::open(path)?;
    let exists = dir.exists();
    crate::stderr::line(format_args!(
        "{} {} into the cache at {}{}",
        if exists { "re-importing" } else { "importing" },
        path.display(),
        dir.display(),
        if exists {
            " (the cached copy is incomplete or damaged)"
        } else {
            " (first use only)"
        }
    ));
    let options = ImportOptions {
        overwrite: exists,
        ..ImportOptions::default()
    };
    let clear = |e: Error| {
        Error::invalid(format!(
            "{e} (importing into the cache; to start over, remove {})",
            dir.display()
        ))
    };
    match import_gguf_file(&gguf, &dir, &options) {
        Ok(_) => {}
        // Another process finished the same import first.
        Err(_) if is_complete(&dir) => return Ok(dir),
        Err(e) => return Err(clear(e)),
    }
    write_manifest(&dir).map_err(clear)?;
    Ok(dir)
}
