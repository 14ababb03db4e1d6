//! One writer per output directory: a run takes an exclusive `flock` on `DIR/.qlora.lock` for
//! as long as it writes there, so a second run on the same directory is refused at once with
//! the first one's process id and command line. The kernel releases the lock when the process
//! ends, however it ends (`kill -9` included), so a lock file left behind never blocks.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The lock file's name inside the directory it guards.
pub const LOCK_FILE: &str = ".qlora.lock";

/// How the lock file beside an output ends (`.NAME` before it).
pub const BESIDE_SUFFIX: &str = ".qlora.lock";

/// An exclusive lock on an output directory, held until dropped.
/// A directory this lock created is removed with it when nothing else was written there (a
/// run that failed before writing leaves nothing behind).
#[derive(Debug)]
pub struct OutputLock {
    _file: File,
    path: PathBuf,
    created: Option<PathBuf>,
    /// The lock file is beside its output ([`OutputLock::beside`]) and goes when the lock does.
    beside: bool,
    /// A holder died without releasing the lock: its record was still there.
    previous_died: bool,
}

/// This process's command line, as the lock file records it.
pub fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

impl OutputLock {
    /// Lock `dir` (created if missing) for this process, recording its pid and `command` in the
    /// lock file; refused, naming the holder, while another process holds it.
    pub fn acquire(dir: &Path, command: &str) -> Result<Self> {
        let created = (!dir.exists()).then(|| dir.to_path_buf());
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut lock = Self::lock(&dir.join(LOCK_FILE), dir, command)?;
        lock.created = created;
        Ok(lock)
    }

    /// Lock the output `target` (a directory or a file, written whole by
    /// [`crate::staged_dir::StagedDir`]) through a lock file beside it, `.NAME.qlora.lock`,
    /// which is removed with the lock.
    pub fn beside(target: &Path, command: &str) -> Result<Self> {
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".into());
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let mut lock = Self::lock(
            &parent.join(format!(".{name}{BESIDE_SUFFIX}")),
            target,
            command,
        )?;
        lock.beside = true;
        Ok(lock)
    }

    /// Lock `path`, naming `output` when another process holds it.
    fn lock(path: &Path, output: &Path, command: &str) -> Result<Self> {
        let dir = output;
        let path = path.to_path_buf();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let mut lines = holder.lines();
                let pid = lines.next().unwrap_or("").trim();
                let what = lines.next().unwrap_or("").trim();
                return Err(Error::file(
                    dir,
                    format!(
                        "another qlora is writing here (pid {}{}): wait for it to end, stop \
                         it, or choose another --out",
                        if pid.is_empty() { "unknown" } else { pid },
                        if what.is_empty() {
                            String::new()
                        } else {
                            format!(": {what}")
                        }
                    ),
                ));
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        // A holder that ends normally empties the record; one still there was left by a
        // process killed without warning (SIGKILL, the OOM killer, a power cut).
        let mut previous = String::new();
        let _ = file.read_to_string(&mut previous);
        let previous_died = !previous.trim().is_empty();
        let record = format!("{}\n{command}\n", std::process::id());
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(record.as_bytes()))
            .and_then(|()| file.flush());
        written.map_err(|e| Error::io(&path, e))?;
        Ok(OutputLock {
            _file: file,
            path,
            created: None,
            beside: false,
            previous_died,
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a previous holder died without releasing the lock (killed without warning).
    pub fn previous_holder_died(&self) -> bool {
        self.previous_died
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // Ended normally: the record goes (the file stays: another process may have it open).
        let _ = self._file.set_len(0);
        if self.beside {
            let _ = std::fs::remove_file(&self.path);
            return;
        }
        let Some(dir) = &self.created else { return };
        let only_the_lock = std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .filter_map(|e| e.ok())
                .all(|e| e.file_name() == LOCK_FILE)
        });
        if only_the_lock {
            let _ = std::fs::remove_file(&self.path);
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let first = OutputLock::acquire(&out, "qlora train --out run").unwrap();
        let err = OutputLock::acquire(&out, "qlora train again")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "pid {}: qlora train --out run",
                std::process::id()
            )),
            "{err}"
        );
        drop(first);
        // Nothing else was written: the directory the lock made goes with it.
        assert!(!out.exists());
        let again = OutputLock::acquire(&out, "qlora train again").unwrap();
        assert!(again.path().ends_with(LOCK_FILE));
        std::fs::write(out.join("metrics.jsonl"), "{}\n").unwrap();
        drop(again);
        assert!(out.join(LOCK_FILE).exists() && out.join("metrics.jsonl").exists());
    }

    #[test]
    fn a_lock_beside_an_output_refuses_a_second_writer_and_goes_with_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("merged");
        let first = OutputLock::beside(&target, "qlora merge --out merged").unwrap();
        assert!(dir.path().join(".merged.qlora.lock").is_file());
        let err = OutputLock::beside(&target, "qlora merge")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("merged") && err.contains("qlora merge --out merged"),
            "{err}"
        );
        drop(first);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
