//! The library's error type. The binary wraps it in `anyhow`.

use std::io;
use std::path::{Path, PathBuf};

use crate::diag::Report;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The manifest did not check; the report holds every diagnostic.
    #[error("{} error(s) in the manifest", .0.error_count())]
    Manifest(Box<Report>),
    #[error("the store {} is locked by another podium run (pid {pid}); run again without --no-wait to wait for it", path.display())]
    Locked { path: PathBuf, pid: String },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Corrupt(String),
    /// The remote cache refused or failed a request (after retries).
    #[error("{0}")]
    Remote(String),
    /// An output a stage left that podium will not store as it is.
    #[error("output `{output}`: {message}")]
    Output { output: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds the path to an I/O error.
pub trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
