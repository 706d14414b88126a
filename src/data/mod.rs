//! The file formats the built-in ops read and write, with errors that name
//! the file (and the line, where there is one):
//!
//! - [`table`]: CSV with a header row, the first column the row id.
//! - [`boxes`]: COCO results JSON (detections) and COCO ground truth.
//! - [`metrics_json`]: a JSON object of named numbers.
//!
//! See `docs/formats.md`.

use std::path::{Path, PathBuf};

pub mod boxes;
pub mod coco_rle;
pub mod images;
pub mod masks;
pub mod metrics_json;
pub mod table;

/// Bad input: the file, the line where known, and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct DataError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl DataError {
    pub fn new(path: &Path, message: impl Into<String>) -> DataError {
        DataError {
            path: path.to_path_buf(),
            line: None,
            message: message.into(),
        }
    }

    pub fn at(path: &Path, line: usize, message: impl Into<String>) -> DataError {
        DataError {
            path: path.to_path_buf(),
            line: Some(line),
            message: message.into(),
        }
    }

    pub fn io(path: &Path, e: std::io::Error) -> DataError {
        DataError::new(path, e.to_string())
    }
}

/// A file's bytes, read (or, when large, memory-mapped: no copy of a big
/// input), naming the file in errors; an empty file is an error.
pub fn read_nonempty(path: &Path) -> Result<Bytes, DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
    let bytes = if len < 1 << 20 {
        Bytes::Owned(std::fs::read(path).map_err(|e| DataError::io(path, e))?)
    } else {
        // SAFETY: the map is read-only and dropped before the op ends; a file
        // changed under a running op is outside what podium guarantees, as for
        // any reader.
        Bytes::Mapped(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| DataError::io(path, e))?)
    };
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(DataError::new(path, "empty file"));
    }
    Ok(bytes)
}

/// File contents, read or mapped.
pub enum Bytes {
    Owned(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped(m) => m,
        }
    }
}

/// Writes a file through a temporary beside it and a rename, so that a
/// failure never leaves half a file ([`crate::store::atomic_write_nosync`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    crate::store::atomic_write_nosync(path, bytes).map_err(|e| DataError::io(path, e))
}
