//! The stat cache: the hash of each file by its (size, mtime, ctime,
//! inode), kept in the store (`statcache`), so that an unchanged file is
//! not read again.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use rayon::prelude::*;

use crate::hash::{Hash, Stat, hash_file, list_files_stat, merkle};

/// A file modified less than this long before it was hashed may change again
/// within the same timestamp tick, so its cache entry is not trusted.
const RACY_NS: i128 = 2_000_000_000;

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
/// The cache file is binary (see `Encoding` in the source) and is used as loaded: one
/// read, then an index from a 64-bit hash of each path to its record, with
/// no parsing and no allocation per entry. Entries loaded from it are read
/// without a lock (hashing threads look up many files at once); entries made
/// during this process go to a locked map and are merged when the cache is
/// saved.
#[derive(Default)]
pub struct StatCache {
    loaded: OnceLock<Loaded>,
    /// The cache file being read and indexed on a thread of its own, while
    /// the manifest is checked and the inputs are listed.
    loading: Mutex<Option<std::thread::JoinHandle<Loaded>>>,
    fresh: Mutex<HashMap<Box<[u8]>, Entry>>,
}

/// The first bytes of a stat cache file (format 2: binary records).
const MAGIC: &[u8; 16] = b"podium-stat-v2\n\0";

/// How one entry is laid out in the cache file: the path's length (u32), the path's bytes,
/// then size, mtime (ns), ctime (ns), inode, the time it was hashed (ns),
/// all little-endian 8-byte integers, and the 32-byte blake3 hash.
struct Encoding;

impl Encoding {
    const FIXED: usize = 5 * 8 + 32;

    fn write(out: &mut Vec<u8>, path: &[u8], e: &Entry) {
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(path);
        out.extend_from_slice(&e.stat.size.to_le_bytes());
        out.extend_from_slice(&(e.stat.mtime_ns as i64).to_le_bytes());
        out.extend_from_slice(&(e.stat.ctime_ns as i64).to_le_bytes());
        out.extend_from_slice(&e.stat.ino.to_le_bytes());
        out.extend_from_slice(&(e.hashed_at_ns as i64).to_le_bytes());
        out.extend_from_slice(e.hash.as_bytes());
    }

    /// The record at `at`: its path, its entry, and where the next begins.
    fn read(buf: &[u8], at: usize) -> Option<(&[u8], Entry, usize)> {
        let n = u32::from_le_bytes(buf.get(at..at + 4)?.try_into().ok()?) as usize;
        let path = buf.get(at + 4..at + 4 + n)?;
        let f = buf.get(at + 4 + n..at + 4 + n + Self::FIXED)?;
        let u = |i: usize| u64::from_le_bytes(f[i * 8..i * 8 + 8].try_into().unwrap());
        let i = |k: usize| i128::from(u(k) as i64);
        let entry = Entry {
            stat: Stat {
                size: u(0),
                mtime_ns: i(1),
                ctime_ns: i(2),
                ino: u(3),
            },
            hashed_at_ns: i(4),
            hash: Hash::from_bytes(f[40..72].try_into().unwrap()),
        };
        Some((path, entry, at + 4 + n + Self::FIXED))
    }
}

/// A loaded cache file and an index of its records.
#[derive(Default)]
struct Loaded {
    buf: Vec<u8>,
    /// Hash of a path → offset of its record in `buf`.
    index: HashMap<u64, usize, rustc_hash::FxBuildHasher>,
}

impl Loaded {
    fn key(path: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        rustc_hash::FxBuildHasher.hash_one(path)
    }

    fn of(buf: Vec<u8>) -> Loaded {
        let mut index = HashMap::default();
        if buf.starts_with(MAGIC) {
            index.reserve(buf.len() / (Encoding::FIXED + 48));
            for (at, path, _) in records(&buf) {
                index.insert(Self::key(path), at);
            }
        }
        Loaded { buf, index }
    }

    fn get(&self, path: &[u8]) -> Option<Entry> {
        let &at = self.index.get(&Self::key(path))?;
        let (p, e, _) = Encoding::read(&self.buf, at)?;
        (p == path).then_some(e)
    }

    /// Every record, in file order.
    fn records(&self) -> impl Iterator<Item = (&[u8], Entry)> {
        records(&self.buf).map(|(_, p, e)| (p, e))
    }
}

/// The records of a cache file, each with its offset, in file order; none
/// when the file is of another format, and up to a truncated record.
fn records(buf: &[u8]) -> impl Iterator<Item = (usize, &[u8], Entry)> {
    let mut at = if buf.starts_with(MAGIC) {
        MAGIC.len()
    } else {
        buf.len()
    };
    std::iter::from_fn(move || {
        let (p, e, next) = Encoding::read(buf, at)?;
        let here = std::mem::replace(&mut at, next);
        Some((here, p, e))
    })
}

impl StatCache {
    /// Loads a cache file; a missing, unreadable or older-format one gives
    /// an empty cache.
    pub fn load(path: &Path) -> StatCache {
        let path = path.to_path_buf();
        let loading = std::thread::Builder::new()
            .name("statcache".into())
            .spawn(move || Loaded::of(fs::read(path).unwrap_or_default()))
            .ok();
        StatCache {
            loaded: OnceLock::new(),
            loading: Mutex::new(loading),
            fresh: Mutex::new(HashMap::new()),
        }
    }

    /// The loaded cache file, once its thread is done.
    fn loaded(&self) -> &Loaded {
        self.loaded.get_or_init(|| {
            let handle = self
                .loading
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            handle.and_then(|h| h.join().ok()).unwrap_or_default()
        })
    }

    /// Writes the cache atomically if it changed.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let fresh = self.fresh.lock().unwrap_or_else(|e| e.into_inner());
        if fresh.is_empty() {
            return Ok(());
        }
        let loaded = self.loaded();
        let mut out = Vec::with_capacity(loaded.buf.len() + fresh.len() * 128);
        out.extend_from_slice(MAGIC);
        for (p, e) in fresh.iter() {
            Encoding::write(&mut out, p, e);
        }
        for (p, e) in loaded.records() {
            if !fresh.contains_key(p) {
                Encoding::write(&mut out, p, &e);
            }
        }
        super::atomic_write_nosync(path, &out)
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
        if let Some(e) = self.loaded().get(key).filter(trusted) {
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
            loaded.loaded().get(key).unwrap().hash,
            blake3::hash(b"content")
        );
        // Saved again with a new entry, the old one is kept.
        let g = d.path().join("g");
        fs::write(&g, "more").unwrap();
        loaded.file(&g).unwrap();
        loaded.save(&cache_file).unwrap();
        let again = StatCache::load(&cache_file);
        assert_eq!(again.loaded().index.len(), 2);
        assert_eq!(
            again.loaded().get(key).unwrap().stat,
            loaded.loaded().get(key).unwrap().stat
        );
        assert_eq!(
            again.loaded().get(g.as_os_str().as_bytes()).unwrap().hash,
            blake3::hash(b"more")
        );
        // A truncated or foreign file is an empty cache, not an error.
        let bytes = fs::read(&cache_file).unwrap();
        fs::write(&cache_file, &bytes[..bytes.len() - 5]).unwrap();
        assert_eq!(StatCache::load(&cache_file).loaded().index.len(), 1);
        fs::write(&cache_file, "path\t1\t2\n").unwrap();
        assert!(StatCache::load(&cache_file).loaded().get(key).is_none());
    }
}
