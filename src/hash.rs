//! Content hashing: files by blake3 of their bytes, directories by a Merkle
//! hash over their sorted relative paths and file hashes, and a stat cache
//! so that unchanged files are not read again.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rayon::prelude::*;

pub use blake3::Hash;

/// Files at least this large are hashed with several threads over a memory map.
const MMAP_MIN: u64 = 1 << 20;

/// A file modified less than this long before it was hashed may change again
/// within the same timestamp tick, so its cache entry is not trusted.
const RACY_NS: i128 = 2_000_000_000;

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
fn list_files_stat(dir: &Path, glob: Option<&str>) -> io::Result<Listed> {
    let matcher = match glob {
        Some(g) => Some(
            globset::Glob::new(g)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
                .compile_matcher(),
        ),
        None => None,
    };
    let mut out = walk_dir(dir, "", matcher.as_ref())?;
    out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

type Listed = Vec<(String, PathBuf, Stat)>;

fn walk_dir(
    dir: &Path,
    prefix: &str,
    matcher: Option<&globset::GlobMatcher>,
) -> io::Result<Listed> {
    let mut files = Vec::new();
    let mut subdirs = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        let meta = if entry.file_type()?.is_symlink() {
            fs::metadata(&path)?
        } else {
            entry.metadata()?
        };
        if meta.is_dir() {
            subdirs.push((path, rel));
        } else if matcher.is_none_or(|m| m.is_match(&rel)) {
            files.push((rel, path, Stat::of(&meta)));
        }
    }
    let nested: Vec<Listed> = subdirs
        .par_iter()
        .map(|(p, rel)| walk_dir(p, rel, matcher))
        .collect::<io::Result<_>>()?;
    files.extend(nested.into_iter().flatten());
    Ok(files)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stat {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
}

impl Stat {
    fn of(m: &fs::Metadata) -> Stat {
        Stat {
            size: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
            ino: m.ino(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    stat: Stat,
    hashed_at_ns: i128,
    hash: Hash,
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// Remembers the hash of each file by its (size, mtime, ctime, inode), so
/// that an unchanged file is not read again. Entries for files modified just
/// before they were hashed are not trusted (racy timestamps).
///
/// Entries loaded from the cache file are read without a lock (hashing
/// threads look up many files at once); entries made during this process go
/// to a locked map and are merged when the cache is saved.
#[derive(Default)]
pub struct StatCache {
    // Keyed by the path's bytes: hashing a `Path` walks its components, which
    // costs more than the lookup itself.
    loaded: HashMap<Box<[u8]>, Entry>,
    fresh: Mutex<HashMap<Box<[u8]>, Entry>>,
}

impl StatCache {
    /// Loads a cache file; a missing or unreadable one gives an empty cache.
    pub fn load(path: &Path) -> StatCache {
        let mut entries = HashMap::new();
        if let Ok(text) = fs::read_to_string(path) {
            for line in text.lines() {
                if let Some((p, e)) = parse_line(line) {
                    entries.insert(p.as_bytes().into(), e);
                }
            }
        }
        StatCache {
            loaded: entries,
            fresh: Mutex::new(HashMap::new()),
        }
    }

    /// Writes the cache atomically if it changed.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let fresh = self.fresh.lock().unwrap_or_else(|e| e.into_inner());
        if fresh.is_empty() {
            return Ok(());
        }
        let mut out = String::with_capacity((self.loaded.len() + fresh.len()) * 160);
        let old = self.loaded.iter().filter(|(p, _)| !fresh.contains_key(*p));
        for (p, e) in fresh.iter().chain(old) {
            let Ok(ps) = std::str::from_utf8(p) else {
                continue;
            };
            if ps.contains(['\t', '\n']) {
                continue;
            }
            use std::fmt::Write;
            let _ = writeln!(
                out,
                "{ps}\t{}\t{}\t{}\t{}\t{}\t{}",
                e.stat.size,
                e.stat.mtime_ns,
                e.stat.ctime_ns,
                e.stat.ino,
                e.hashed_at_ns,
                e.hash.to_hex()
            );
        }
        crate::store::atomic_write_nosync(path, out.as_bytes())
    }

    /// The hash of a file, from the cache when its stat is unchanged.
    pub fn file(&self, path: &Path) -> io::Result<Hash> {
        let meta = fs::metadata(path)?;
        self.file_with_meta(path, &meta)
    }

    fn file_with_meta(&self, path: &Path, meta: &fs::Metadata) -> io::Result<Hash> {
        self.file_with_stat(path, Stat::of(meta))
    }

    fn file_with_stat(&self, path: &Path, stat: Stat) -> io::Result<Hash> {
        let trusted = |e: &Entry| e.stat == stat && e.stat.mtime_ns + RACY_NS <= e.hashed_at_ns;
        let key = path.as_os_str().as_bytes();
        if let Some(e) = self.loaded.get(key).filter(|e| trusted(e)) {
            return Ok(e.hash);
        }
        if let Some(e) = self
            .fresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .filter(|e| trusted(e))
        {
            return Ok(e.hash);
        }
        let hashed_at_ns = now_ns();
        let hash = hash_file(path)?;
        let mut fresh = self.fresh.lock().unwrap_or_else(|e| e.into_inner());
        fresh.insert(
            key.into(),
            Entry {
                stat,
                hashed_at_ns,
                hash,
            },
        );
        Ok(hash)
    }

    /// The content hash of a file, or the Merkle hash of a directory's files
    /// (those matching `glob`, when given). Files are hashed in parallel.
    pub fn path(&self, path: &Path, glob: Option<&str>) -> io::Result<Hash> {
        let meta = fs::metadata(path)?;
        if !meta.is_dir() {
            return self.file_with_meta(path, &meta);
        }
        let files = list_files_stat(path, glob)?;
        let hashes: Vec<Hash> = files
            .par_iter()
            .map(|(_, p, st)| self.file_with_stat(p, *st))
            .collect::<io::Result<_>>()?;
        Ok(merkle(
            files.iter().map(|(r, _, _)| r.as_str()).zip(hashes.iter()),
        ))
    }
}

fn parse_line(line: &str) -> Option<(&str, Entry)> {
    let mut it = line.split('\t');
    let p = it.next()?;
    let size = it.next()?.parse().ok()?;
    let mtime_ns = it.next()?.parse().ok()?;
    let ctime_ns = it.next()?.parse().ok()?;
    let ino = it.next()?.parse().ok()?;
    let hashed_at_ns = it.next()?.parse().ok()?;
    let hash = Hash::from_hex(it.next()?).ok()?;
    Some((
        p,
        Entry {
            stat: Stat {
                size,
                mtime_ns,
                ctime_ns,
                ino,
            },
            hashed_at_ns,
            hash,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_hash_depends_on_names_and_contents_only() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            fs::create_dir(d.join("sub")).unwrap();
            fs::write(d.join("x.txt"), "x").unwrap();
            fs::write(d.join("sub/y.txt"), "y").unwrap();
        }
        let c = StatCache::default();
        let ha = c.path(a.path(), None).unwrap();
        assert_eq!(ha, c.path(b.path(), None).unwrap());
        fs::write(b.path().join("sub/y.txt"), "Y").unwrap();
        assert_ne!(ha, c.path(b.path(), None).unwrap());
        fs::write(b.path().join("sub/y.txt"), "y").unwrap();
        fs::rename(b.path().join("sub/y.txt"), b.path().join("sub/z.txt")).unwrap();
        assert_ne!(ha, c.path(b.path(), None).unwrap());
    }

    #[test]
    fn glob_restricts_directory_files() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a.png"), "a").unwrap();
        fs::write(d.path().join("notes.txt"), "n").unwrap();
        let c = StatCache::default();
        let h1 = c.path(d.path(), Some("*.png")).unwrap();
        fs::write(d.path().join("notes.txt"), "changed").unwrap();
        assert_eq!(h1, c.path(d.path(), Some("*.png")).unwrap());
        assert_ne!(h1, c.path(d.path(), None).unwrap());
    }

    #[test]
    fn a_racy_entry_is_rehashed_even_with_the_same_stat() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, "one").unwrap();
        let c = StatCache::default();
        let h1 = c.file(&f).unwrap();
        // Same size, and possibly the same mtime tick: the entry was made
        // right after the write, so it must not be trusted.
        fs::write(&f, "two").unwrap();
        let h2 = c.file(&f).unwrap();
        assert_ne!(h1, h2);
        assert_eq!(h2, blake3::hash(b"two"));
    }

    #[test]
    fn cache_round_trips_through_its_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, "content").unwrap();
        let c = StatCache::default();
        c.file(&f).unwrap();
        let cache_file = d.path().join("statcache");
        c.save(&cache_file).unwrap();
        let loaded = StatCache::load(&cache_file);
        let key = f.as_os_str().as_bytes();
        assert_eq!(
            loaded.loaded.get(key).unwrap().hash,
            blake3::hash(b"content")
        );
    }
}
