//! The one error type of the library. Every variant names where the problem is (a file, and the
//! key or tensor inside it) so the CLI can print a single line a user can act on.

use std::path::{Path, PathBuf};

/// A result of this library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The OS refused: missing file, permission, disk full.
    // Not a `#[source]`: the message already carries it, and the CLI prints the chain.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// A file that exists but is not what it should be (bad JSON, truncated safetensors, ...).
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// One key or tensor inside a file is missing or wrong.
    #[error("{}: `{key}`: {message}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// The key, or the tensor's name.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A value the caller passed (an option, a shape, data to quantize) is not acceptable.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// The OS refused `path`.
    pub fn io(path: impl AsRef<Path>, error: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            error,
        }
    }

    /// The file `path` is not what it should be.
    pub fn file(path: impl AsRef<Path>, message: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.as_ref().to_path_buf(),
            message: message.to_string(),
        }
    }

    /// `key` of the file `path` is missing or wrong.
    pub fn key(
        path: impl AsRef<Path>,
        key: impl Into<String>,
        message: impl std::fmt::Display,
    ) -> Self {
        Error::Key {
            path: path.as_ref().to_path_buf(),
            key: key.into(),
            message: message.to_string(),
        }
    }

    /// A value the caller passed is not acceptable.
    pub fn invalid(message: impl std::fmt::Display) -> Self {
        Error::Invalid(message.to_string())
    }

    /// Attach a file and key to an error raised without one (e.g. by the quantizer).
    pub fn at_key(self, path: impl AsRef<Path>, key: impl Into<String>) -> Self {
        match self {
            Error::Invalid(message) => Error::key(path, key, message),
            other => other,
        }
    }
}
