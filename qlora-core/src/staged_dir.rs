//! Output directories that appear whole or not at all: everything is written into a hidden
//! sibling directory (`.NAME.partial-PID-XXXXXX`) that is renamed into place on success and
//! removed on any failure. Staging directories in progress are registered, so a signal handler
//! can remove them on the way out ([`remove_all_in_progress`]); those a killed process left
//! behind are swept the next time an output is staged in the same directory.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::durable;
use crate::error::{Error, Result};
use crate::output_lock::{BESIDE_SUFFIX, OutputLock, command_line};

/// Staging directories being written by this process.
static IN_PROGRESS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn in_progress() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    IN_PROGRESS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Remove every staging directory this process is writing (for a signal handler about to
/// exit: destructors will not run).
pub fn remove_all_in_progress() {
    for dir in in_progress().drain(..) {
        let _ = std::fs::remove_dir_all(&dir);
        // And the lock beside the output (`.NAME.qlora.lock` for `.NAME.partial-...`).
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        if let (Some(parent), Some((stem, _))) = (
            dir.parent(),
            name.as_deref().and_then(|n| n.rsplit_once(".partial-")),
        ) {
            let _ = std::fs::remove_file(parent.join(format!("{stem}{BESIDE_SUFFIX}")));
        }
    }
}

/// The process id in a staging entry's name (`.NAME.partial-PID-...`), if it is one of ours.
fn staging_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (_, tail) = rest.rsplit_once(".partial-")?;
    let (pid, _) = tail.split_once('-')?;
    pid.parse().ok()
}

/// Remove the staging entries in `parent` whose process is gone (it was killed mid-write).
/// Where liveness cannot be read (no `/proc`), nothing is removed.
pub fn sweep_stale(parent: &Path) {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = staging_owner(&name.to_string_lossy()) else {
            continue;
        };
        if pid != std::process::id() && !proc.join(pid.to_string()).exists() {
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

/// Remove the directory `dir` so that it is never seen half removed: it is renamed to a
/// staging name first (swept by a later run if this process dies while removing it).
pub fn remove_whole(dir: &Path) -> Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let doomed = dir.with_file_name(format!(".{name}.partial-{}-removed", std::process::id()));
    std::fs::rename(dir, &doomed).map_err(|e| Error::io(dir, e))?;
    std::fs::remove_dir_all(&doomed).map_err(|e| Error::io(&doomed, e))
}

/// An output being written under a staging name next to its target, renamed into place when
/// complete and removed when dropped before.
pub struct StagedDir {
    target: PathBuf,
    staging: Option<tempfile::TempDir>,
    /// One writer per output: held until the output is in place or given up (dropped last).
    _lock: OutputLock,
}

impl StagedDir {
    /// Start writing `target`. Refuses an existing target unless `overwrite`; the old
    /// directory is then replaced only when the new one is complete.
    /// `inputs` are the files and directories the output is made from: a target that is or
    /// contains one of them is refused, since replacing it would delete the input.
    pub fn new(target: impl AsRef<Path>, overwrite: bool, inputs: &[&Path]) -> Result<Self> {
        let target = target.as_ref().to_path_buf();
        if let Ok(resolved) = std::fs::canonicalize(&target) {
            for input in inputs {
                if std::fs::canonicalize(input).is_ok_and(|i| i.starts_with(&resolved)) {
                    return Err(Error::file(
                        &target,
                        format!(
                            "is (or contains) the input {}: writing the output there would \
                             delete it; choose another output",
                            input.display()
                        ),
                    ));
                }
            }
        }
        let lock = OutputLock::beside(&target, &command_line())?;
        if target.exists() && !overwrite {
            return Err(Error::file(
                &target,
                "output already exists (pass --force to replace it)",
            ));
        }
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        sweep_stale(&parent);
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".into());
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{name}.partial-{}-", std::process::id()))
            .tempdir_in(&parent)
            .map_err(|e| Error::io(&parent, e))?;
        // tempfile creates private (0700) directories; the output should be an ordinary one.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755))
                .map_err(|e| Error::io(staging.path(), e))?;
        }
        in_progress().push(staging.path().to_path_buf());
        Ok(StagedDir {
            target,
            staging: Some(staging),
            _lock: lock,
        })
    }

    /// Where to write the files.
    pub fn path(&self) -> &Path {
        self.staging.as_ref().expect("not committed").path()
    }

    /// Where the output appears when committed.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Move the finished directory into place: its files and directories are flushed to the
    /// device first and the directory holding it after, so a power cut leaves the old output or
    /// the whole new one.
    pub fn commit(mut self) -> Result<PathBuf> {
        durable::sync_tree(self.path())?;
        let staging = self.staging.take().expect("not committed").keep();
        in_progress().retain(|p| *p != staging);
        replace(&self.target, &staging, &staging.with_extension("old"))?;
        durable::sync_parent(&self.target)?;
        Ok(self.target.clone())
    }
}

/// Rename `new` to `target`. Whatever is at `target` (a directory, a file, a link) is moved to
/// `old` first and removed only once `new` is in place.
fn replace(target: &Path, new: &Path, old: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(target) else {
        return std::fs::rename(new, target).map_err(|e| Error::io(target, e));
    };
    std::fs::rename(target, old).map_err(|e| Error::io(target, e))?;
    std::fs::rename(new, target).map_err(|e| Error::io(target, e))?;
    let removed = if meta.is_dir() {
        std::fs::remove_dir_all(old)
    } else {
        std::fs::remove_file(old)
    };
    removed.map_err(|e| Error::io(old, e))
}

impl StagedDir {
    /// For an output that is one file: move `file` (written inside the staging directory) into
    /// place as the target, replacing what is there, and remove the staging directory.
    pub fn commit_file(self, file: &Path) -> Result<PathBuf> {
        let target = self.target.clone();
        durable::sync_path(file)?;
        replace(&target, file, &self.path().join(".old"))?;
        durable::sync_parent(&target)?;
        // Dropping the staging directory removes it.
        Ok(target)
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if let Some(staging) = self.staging.take() {
            in_progress().retain(|p| p != staging.path());
            // `staging` removes the directory as it drops.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registry is process-wide: the tests take turns.
    static TURN: Mutex<()> = Mutex::new(());

    /// A directory being removed is first renamed to a staging name, which a later run sweeps
    /// when the remover died.
    #[test]
    fn a_removed_directory_is_never_seen_half_removed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("checkpoint-1");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/a"), "x").unwrap();
        remove_whole(&dir).unwrap();
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
        let name = ".checkpoint-1.partial-999999999-removed";
        assert_eq!(staging_owner(name), Some(999_999_999));
        std::fs::create_dir(root.path().join(name)).unwrap();
        sweep_stale(root.path());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[test]
    fn appears_only_on_commit() {
        let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("out");
        {
            let staged = StagedDir::new(&target, false, &[]).unwrap();
            std::fs::write(staged.path().join("a"), "x").unwrap();
            // dropped without commit
        }
        assert!(!target.exists());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
        let staged = StagedDir::new(&target, false, &[]).unwrap();
        std::fs::write(staged.path().join("a"), "x").unwrap();
        staged.commit().unwrap();
        assert!(target.join("a").is_file());
        assert!(StagedDir::new(&target, false, &[]).is_err());
        let staged = StagedDir::new(&target, true, &[]).unwrap();
        std::fs::write(staged.path().join("b"), "y").unwrap();
        staged.commit().unwrap();
        assert!(target.join("b").is_file() && !target.join("a").exists());

        // Replacing a file, and refusing to replace an input.
        let file = root.path().join("file");
        std::fs::write(&file, "old").unwrap();
        let staged = StagedDir::new(&file, true, &[]).unwrap();
        std::fs::write(staged.path().join("c"), "z").unwrap();
        staged.commit().unwrap();
        assert!(file.join("c").is_file());
        let input = target.join("b");
        let err = StagedDir::new(&target, true, &[&input]).err().unwrap();
        assert!(
            err.to_string().contains("is (or contains) the input"),
            "{err}"
        );
        assert!(StagedDir::new(&input, true, &[&input]).is_err());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 2);
    }

    #[test]
    fn stale_staging_of_dead_processes_is_swept() {
        let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        let root = tempfile::tempdir().unwrap();
        // A process id that cannot be alive (above the kernel's limit), and our own.
        let dead = root.path().join(".out.partial-4194305-abc123");
        let dead_old = root.path().join(".out.partial-4194305-abc123.old");
        let ours = root
            .path()
            .join(format!(".out.partial-{}-xyz", std::process::id()));
        let unrelated = root.path().join(".out.partial-notapid");
        for dir in [&dead, &dead_old, &ours, &unrelated] {
            std::fs::create_dir(dir).unwrap();
        }
        let staged = StagedDir::new(root.path().join("other"), false, &[]).unwrap();
        assert!(!dead.exists() && !dead_old.exists());
        assert!(ours.exists() && unrelated.exists());
        assert_eq!(*in_progress(), [staged.path().to_path_buf()]);
        remove_all_in_progress();
        assert!(!staged.path().exists());
        drop(staged);
    }
}
