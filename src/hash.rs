//! Content hashing: files by blake3 of their bytes, directories by a Merkle
//! hash over their sorted relative paths and file hashes. The stat cache
//! that spares reading unchanged files again is the store's
//! ([`crate::store::StatCache`]).

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

pub use blake3::Hash;

/// Files at least this large are hashed with several threads over a memory map.
const MMAP_MIN: u64 = 1 << 20;

/// blake3 of a file's bytes.
pub fn hash_file(path: &Path) -> io::Result<Hash> {
    let mut h = blake3::Hasher::new();
    let len = fs::metadata(path)?.len();
    if len >= MMAP_MIN {
        h.update_mmap_rayon(path)?;
    } else {
        h.update(&fs::read(path)?);
    }
    Ok(h.finalize())
}

/// The Merkle hash of a directory's files: blake3 over `path \0 hash` for
/// every file, in sorted relative-path order.
pub fn merkle<'a>(files: impl IntoIterator<Item = (&'a str, &'a Hash)>) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(b"podium-dir\0");
    for (rel, fh) in files {
        h.update(rel.as_bytes());
        h.update(b"\0");
        h.update(fh.as_bytes());
    }
    h.finalize()
}

/// Every regular file under `dir` (symlinks followed), as sorted
/// `/`-separated relative paths, optionally filtered by a glob.
pub fn list_files(dir: &Path, glob: Option<&str>) -> io::Result<Vec<(String, PathBuf)>> {
    Ok(list_files_stat(dir, glob)?
        .into_iter()
        .map(|(r, p, _)| (r, p))
        .collect())
}

/// As [`list_files`], with each file's stat, read relative to its directory
/// while listing (cheaper than a stat by full path). Directories are walked
/// in parallel.
pub(crate) fn list_files_stat(dir: &Path, glob: Option<&str>) -> io::Result<Listed> {
    let matcher = match glob {
        Some(g) => Some(
            globset::Glob::new(g)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
                .compile_matcher(),
        ),
        None => None,
    };
    let top = fs::metadata(dir)?;
    let mut out = walk_dir(dir, "", matcher.as_ref(), &[(top.dev(), top.ino())], None)?;
    out.par_sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

type Listed = Vec<(String, PathBuf, Stat)>;

/// What a failure to follow a symbolic link (`stat` of a path that is
/// one) says of the link: a loop, or a target that does not exist; `None`
/// for any other failure.
pub(crate) fn link_trouble(e: &io::Error) -> Option<&'static str> {
    if e.raw_os_error() == Some(libc::ELOOP) {
        Some("is a symbolic link loop")
    } else if e.kind() == io::ErrorKind::NotFound {
        Some("is a dangling symbolic link")
    } else {
        None
    }
}

/// An error about `path` that names it (the caller names only the input),
/// and says what is wrong with it where it is a symbolic link.
fn naming(path: &Path, e: io::Error) -> io::Error {
    let link = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    let what = link
        .then(|| link_trouble(&e))
        .flatten()
        .map_or_else(|| e.to_string(), str::to_string);
    io::Error::new(e.kind(), format!("`{}` {what}", path.display()))
}

/// `ancestors`: the (device, inode) of every directory from the walk's root
/// down to `dir`, so that a link back up is an error, not an endless walk;
/// `link`: the last symbolic link on the way, which such an error names.
fn walk_dir(
    dir: &Path,
    prefix: &str,
    matcher: Option<&globset::GlobMatcher>,
    ancestors: &[(u64, u64)],
    link: Option<&Path>,
) -> io::Result<Listed> {
    let mut files = Vec::new();
    let mut subdirs = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| naming(dir, e))? {
        let entry = entry.map_err(|e| naming(dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let mut rel = String::with_capacity(prefix.len() + 1 + name.len());
        if !prefix.is_empty() {
            rel.push_str(prefix);
            rel.push('/');
        }
        rel.push_str(&name);
        let path = entry.path();
        let is_link = entry
            .file_type()
            .map_err(|e| naming(&path, e))?
            .is_symlink();
        let meta = if is_link {
            fs::metadata(&path)
        } else {
            entry.metadata()
        }
        .map_err(|e| naming(&path, e))?;
        if meta.is_dir() {
            let via = if is_link {
                Some(path.clone())
            } else {
                link.map(Path::to_path_buf)
            };
            if ancestors.contains(&(meta.dev(), meta.ino())) {
                return Err(io::Error::other(format!(
                    "`{}` is a symbolic link loop: `{}` leads back to a directory above it",
                    via.as_deref().unwrap_or(&path).display(),
                    path.display()
                )));
            }
            subdirs.push((path, rel, (meta.dev(), meta.ino()), via));
        } else if matcher.is_none_or(|m| m.is_match(&rel)) {
            files.push((rel, path, Stat::of(&meta)));
        }
    }
    let nested: Vec<Listed> = subdirs
        .par_iter()
        .map(|(p, rel, id, via)| {
            let mut below = ancestors.to_vec();
            below.push(*id);
            walk_dir(p, rel, matcher, &below, via.as_deref())
        })
        .collect::<io::Result<_>>()?;
    files.extend(nested.into_iter().flatten());
    Ok(files)
}

/// What says a file may have changed: size, times and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stat {
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
}

impl Stat {
    pub fn of(m: &fs::Metadata) -> Stat {
        Stat {
            size: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
            ino: m.ino(),
        }
    }
}
