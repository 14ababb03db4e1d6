//! Writes that survive a power cut, and disks that fill: flushing files and directories to the
//! device (`fsync`), the space a filesystem has free, and telling a full disk or quota from
//! other failures so the message can say how much room is missing.

use std::path::Path;

use crate::error::{Error, Result};

/// Flush `path` (a file or a directory) to the device.
pub fn sync_path(path: &Path) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    file.sync_all().map_err(|e| Error::io(path, e))
}

/// Flush every file and directory under `dir`, and `dir` itself, to the device.
pub fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| Error::io(&path, e))?;
        if kind.is_dir() {
            sync_tree(&path)?;
        } else if kind.is_file() {
            sync_path(&path)?;
        }
    }
    sync_path(dir)
}

/// Flush the directory holding `path` (after a rename into it).
pub fn sync_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_path(p),
        _ => sync_path(Path::new(".")),
    }
}

/// Bytes a user may still write on the filesystem holding `path` (`statvfs`'s available
/// blocks), or `None` where it cannot be read.
pub fn free_space(path: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let mut at = path;
        // The nearest existing ancestor: an output directory may not exist yet.
        while !at.exists() {
            at = at.parent().filter(|p| !p.as_os_str().is_empty())?;
        }
        let c = std::ffi::CString::new(at.as_os_str().as_bytes()).ok()?;
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a valid NUL-terminated path and `stat` a writable statvfs.
        if unsafe { libc::statvfs(c.as_ptr(), &mut stat) } != 0 {
            return None;
        }
        Some(stat.f_bavail as u64 * stat.f_frsize as u64)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Whether `error` is the device or the user's quota being full (ENOSPC, EDQUOT).
pub fn is_out_of_space(error: &Error) -> bool {
    let Error::Io { error, .. } = error else {
        return false;
    };
    #[cfg(unix)]
    if matches!(
        error.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT)
    ) {
        return true;
    }
    matches!(
        error.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Whether `error` says the place cannot be written: a read-only mount, no permission, or a
/// directory that is gone.
pub fn is_unwritable(error: &Error) -> bool {
    let Error::Io { error, .. } = error else {
        return false;
    };
    matches!(
        error.kind(),
        std::io::ErrorKind::ReadOnlyFilesystem
            | std::io::ErrorKind::PermissionDenied
            | std::io::ErrorKind::NotFound
    )
}

/// Which directory a path names (device and inode on Unix), to notice it deleted or replaced
/// under a run that writes into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirIdentity(Option<(u64, u64)>);

impl DirIdentity {
    /// The identity `meta` gives (none off Unix: only the directory's existence is checked).
    fn from_metadata(meta: &std::fs::Metadata) -> DirIdentity {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            DirIdentity(Some((meta.dev(), meta.ino())))
        }
        #[cfg(not(unix))]
        {
            let _ = meta;
            DirIdentity(None)
        }
    }

    /// The directory at `dir` now.
    pub fn of(dir: &Path) -> Result<DirIdentity> {
        let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
        Ok(DirIdentity::from_metadata(&meta))
    }

    /// An error naming `dir` unless it is still the directory it was.
    pub fn check(&self, dir: &Path) -> Result<()> {
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() && DirIdentity::from_metadata(&meta) == *self => Ok(()),
            _ => Err(Error::file(
                dir,
                "the output directory was deleted or replaced while this run was writing to \
                 it (what it held went with it); stopping",
            )),
        }
    }
}

/// Bytes as a person reads them, in binary units: `1.4 GiB`, `292.0 KiB`.
pub fn human_bytes(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_of_a_path_yet_to_be_made() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_space(&dir.path().join("not/yet/there")).unwrap();
        assert!(free > 0);
        sync_tree(dir.path()).unwrap();
    }

    #[test]
    fn disk_full_is_told_apart() {
        let full = Error::io("x", std::io::Error::from_raw_os_error(libc::ENOSPC));
        let quota = Error::io("x", std::io::Error::from_raw_os_error(libc::EDQUOT));
        let missing = Error::io("x", std::io::Error::from_raw_os_error(libc::ENOENT));
        assert!(is_out_of_space(&full) && is_out_of_space(&quota));
        assert!(!is_out_of_space(&missing));
        assert_eq!(human_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(human_bytes(299_008), "292.0 KiB");
    }
}
