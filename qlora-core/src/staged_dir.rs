//! Output directories that appear whole or not at all: everything is written into a hidden
//! sibling directory that is renamed into place on success and removed on any failure.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub struct StagedDir {
    target: PathBuf,
    staging: Option<tempfile::TempDir>,
}

impl StagedDir {
    /// Start writing `target`. Refuses an existing target unless `overwrite`; the old
    /// directory is then replaced only when the new one is complete.
    pub fn new(target: impl AsRef<Path>, overwrite: bool) -> Result<Self> {
        let target = target.as_ref().to_path_buf();
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
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".into());
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{name}.partial-"))
            .tempdir_in(&parent)
            .map_err(|e| Error::io(&parent, e))?;
        // tempfile creates private (0700) directories; the output should be an ordinary one.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755))
                .map_err(|e| Error::io(staging.path(), e))?;
        }
        Ok(StagedDir {
            target,
            staging: Some(staging),
        })
    }

    /// Where to write the files.
    pub fn path(&self) -> &Path {
        self.staging.as_ref().expect("not committed").path()
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Move the finished directory into place.
    pub fn commit(mut self) -> Result<PathBuf> {
        let staging = self.staging.take().expect("not committed").keep();
        if self.target.exists() {
            let old = staging.with_extension("old");
            std::fs::rename(&self.target, &old).map_err(|e| Error::io(&self.target, e))?;
            std::fs::rename(&staging, &self.target).map_err(|e| Error::io(&self.target, e))?;
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        } else {
            std::fs::rename(&staging, &self.target).map_err(|e| Error::io(&self.target, e))?;
        }
        Ok(self.target.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appears_only_on_commit() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("out");
        {
            let staged = StagedDir::new(&target, false).unwrap();
            std::fs::write(staged.path().join("a"), "x").unwrap();
            // dropped without commit
        }
        assert!(!target.exists());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
        let staged = StagedDir::new(&target, false).unwrap();
        std::fs::write(staged.path().join("a"), "x").unwrap();
        staged.commit().unwrap();
        assert!(target.join("a").is_file());
        assert!(StagedDir::new(&target, false).is_err());
        let staged = StagedDir::new(&target, true).unwrap();
        std::fs::write(staged.path().join("b"), "y").unwrap();
        staged.commit().unwrap();
        assert!(target.join("b").is_file() && !target.join("a").exists());
    }
}
