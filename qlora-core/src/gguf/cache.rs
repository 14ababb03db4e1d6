//! `--model FILE.gguf`: the file is imported once into the user's cache directory and the
//! imported model directory is used from then on.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::file::GgufFile;
use super::import::{ImportOptions, import_gguf_file};
use crate::config::CONFIG_FILE;
use crate::error::{Error, Result};

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

pub fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        && path.is_file()
}

/// A model directory for `path`: the path itself, or for a `.gguf` file its imported copy in
/// the cache (keyed by name, size and modification time), importing it on first use.
pub fn resolve_model(path: impl AsRef<Path>) -> Result<PathBuf> {
    let path = path.as_ref();
    if !is_gguf(path) {
        return Ok(path.to_path_buf());
    }
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
    let dir = cache_root()?
        .join("gguf")
        .join(format!("{stem}-{}-{modified}", meta.len()));
    if dir.join(CONFIG_FILE).is_file() {
        return Ok(dir);
    }
    // A file that is not a usable GGUF fails here, before anything is announced or written.
    let gguf = GgufFile::open(path)?;
    eprintln!(
        "importing {} into the cache at {} (first use only)",
        path.display(),
        dir.display(),
    );
    match import_gguf_file(&gguf, &dir, &ImportOptions::default()) {
        Ok(_) => Ok(dir),
        // Another process finished the same import first.
        Err(_) if dir.join(CONFIG_FILE).is_file() => Ok(dir),
        Err(e) => Err(e),
    }
}
