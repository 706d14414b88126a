//! The content-addressed store (default `cache/`).
//!
//! ```text
//! cache/
//!   objects/ab/cdef…      file contents, named by their blake3, read-only
//!   records.jsonl         one record per executed key (outputs, log, timing), appended
//!   state/<pipeline>.jsonl the last record of each instance, to explain changes
//!   tmp/                  work directories of running instances (`<pid>-<n>/out`, `…/log`)
//!   statcache             stat → hash cache of input files
//!   lock                  held by a running `podium run`
//! ```
//!
//! Every object is written to a temporary name, fsynced, then renamed, so a
//! crash leaves either the old or the new content, never a torn file. The
//! record log is appended to and fsynced in groups (at most every 100 ms,
//! and at the end of a run), a record only after its objects, the state
//! journal appended to; in both a torn last line is skipped.

pub mod experiments;
mod record;
mod record_log;
pub mod remote;
mod statcache;
mod state;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub use record::{FileEntry, Output, OutputKind, Record};
pub use remote::{Remote, RemoteConfig, Transfer};
pub use statcache::StatCache;

use crate::error::{Error, IoContext, Result};
use crate::hash::{self, Hash};

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, fsync
/// of the directory.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_renamed(path, bytes, true)
}

/// Atomic like [`atomic_write`] (readers see the old or the new content) but
/// not durable: for files that can be lost in a power cut without harm
/// (explanations, convenience copies of logs, the stat cache).
pub fn atomic_write_nosync(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_renamed(path, bytes, false)
}

fn write_renamed(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = temp_name(path);
    let _whole = crate::cancel::critical();
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if durable {
            sync_dir(dir);
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// After a failure: "disk full: PATH has N bytes free" for the first of
/// `paths` on a filesystem with (almost) no space left, which explains a
/// command that failed with an empty log.
pub fn disk_full(paths: &[&Path]) -> Option<String> {
    for p in paths {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: statvfs(3) fills the struct it is given; the path is a C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            continue;
        }
        let free = st.f_bavail as u64 * st.f_frsize as u64;
        // Less than 1 MiB, or one block: nothing more fits.
        if free < (1 << 20).max(st.f_frsize as u64) {
            return Some(format!("disk full: {} has {free} bytes free", p.display()));
        }
    }
    None
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The prefix of the temporary names of a job on a cluster node
/// ([`process_tag`]); [`Store::lock`] leaves such work directories alone,
/// as their jobs may still be running (the submitter removes them).
pub const JOB_TAG_PREFIX: &str = "job-";

/// This process's part of temporary names: its pid, and in a Slurm job the
/// job's id before it (`job-123_4-5678`), as pids repeat across the nodes
/// that share a store.
pub fn process_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| match job_tag() {
        Some(job) => format!("{JOB_TAG_PREFIX}{job}-{}", std::process::id()),
        None => std::process::id().to_string(),
    })
}

/// `123` or `123_4` (an array task) inside a Slurm job podium started.
pub fn job_tag() -> Option<String> {
    let job = std::env::var("PODIUM_SLURM_JOB").ok()?;
    Some(job)
}

fn temp_name(path: &Path) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp.{}.{n}", process_tag()))
}

/// An open store.
pub struct Store {
    root: PathBuf,
    journals: state::Journals,
    records: record_log::RecordLog,
    /// Emptied work directories, reused so that a run of many short stages
    /// does not create and delete a directory per stage.
    idle: Mutex<Vec<Scratch>>,
    /// Where files not kept (outputs whose object exists already) wait to be
    /// deleted when the store is dropped; see [`Store::discard`].
    trash: PathBuf,
    /// The remote cache, when one is configured.
    remote: Option<Remote>,
}

/// Where one execution works: `out` (an empty directory, the op's output
/// directory) and `log`, both under `cache/tmp/`.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
    pub out: PathBuf,
    pub log: PathBuf,
}

/// Held while a run writes to the store; released on drop.
pub struct StoreLock {
    _file: File,
}

impl Store {
    /// Opens the store at `root`, which must exist: for commands that only
    /// inspect or trim a store (`verify`, `gc`), and must not make one.
    pub fn open_existing(root: &Path) -> Result<Store> {
        if !root.join("objects").is_dir() {
            return Err(Error::Usage(format!(
                "no podium store at {} (it has no objects/ directory)",
                root.display()
            )));
        }
        Store::open(root)
    }

    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<Store> {
        for sub in ["objects", "state", "tmp"] {
            fs::create_dir_all(root.join(sub)).at(&root.join(sub))?;
        }
        let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let trash = root
            .join("tmp")
            .join(format!("{}-trash-{n}", process_tag()));
        Ok(Store {
            records: record_log::RecordLog::new(&root),
            root,
            journals: state::Journals::default(),
            idle: Mutex::new(Vec::new()),
            trash,
            remote: None,
        })
    }

    /// Adds a remote cache: the planner asks it for keys this store lacks,
    /// runs fetch from it and push to it.
    pub fn with_remote(mut self, remote: Remote) -> Store {
        self.remote = Some(remote);
        self
    }

    pub fn remote(&self) -> Option<&Remote> {
        self.remote.as_ref()
    }

    /// The remote's records of keys this store does not hold complete, in
    /// order (all `None` unless a remote is configured to fetch).
    pub fn remote_records(&self, keys: &[Hash]) -> Result<Vec<Option<Record>>> {
        match &self.remote {
            Some(r) if r.config.fetch => r.records(keys),
            _ => Ok(vec![None; keys.len()]),
        }
    }

    /// A new name in the store's `tmp/` (on the objects' filesystem, so a
    /// file written there can be renamed into `objects/`).
    pub fn temp_path(&self, what: &str) -> PathBuf {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}-{what}-{n}", process_tag()))
    }

    /// Makes a verified file (fsynced, of content `h`) the object `h`:
    /// read-only (executable when `exec`), modified at `mtime` (the record's
    /// time, so that [`Store::object_intact`] need not hash it again), and
    /// renamed into place. An intact object already there is kept.
    pub fn adopt_object(&self, tmp: &Path, h: &Hash, exec: bool, mtime: u64) -> Result<()> {
        let dest = self.object_path(h);
        let mode = if exec { 0o555 } else { 0o444 };
        fs::set_permissions(tmp, fs::Permissions::from_mode(mode)).at(tmp)?;
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
        let _ = File::open(tmp).and_then(|f| f.set_modified(when));
        let parent = dest.parent().unwrap();
        fs::create_dir_all(parent).at(parent)?;
        let _whole = crate::cancel::critical();
        fs::rename(tmp, &dest).at(&dest)?;
        sync_dir(parent);
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn statcache_path(&self) -> PathBuf {
        self.root.join("statcache")
    }

    /// Takes the store's lock. When another run holds it: with `wait`, calls
    /// `on_wait` with the holder's pid and blocks; without, fails.
    pub fn lock(&self, wait: bool, on_wait: impl FnOnce(&str)) -> Result<StoreLock> {
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .at(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let pid =
                    fs::read_to_string(self.root.join("lock.pid")).unwrap_or_else(|_| "?".into());
                let pid = pid.trim().to_string();
                if !wait {
                    return Err(Error::Locked {
                        path: self.root.clone(),
                        pid,
                    });
                }
                on_wait(&pid);
                file.lock().at(&path)?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(e).at(&path),
        }
        let _ = fs::write(self.root.join("lock.pid"), std::process::id().to_string());
        // Commands a killed run left behind would run beside this run's
        // copies of them: stop them first.
        let running = self.root.join("running");
        let n = crate::cancel::reap(&running);
        if n > 0 {
            eprintln!("stopped {n} command(s) left running by a podium run that was killed");
        }
        crate::cancel::record_children_in(running);
        // Work directories left by a run that was killed are garbage now;
        // those of cluster jobs may be in use (their submitter removes them).
        if let Ok(entries) = fs::read_dir(self.root.join("tmp")) {
            for e in entries.flatten() {
                if !e.file_name().to_string_lossy().starts_with(JOB_TAG_PREFIX) {
                    let _ = remove_all(&e.path());
                }
            }
        }
        Ok(StoreLock { _file: file })
    }

    pub fn object_path(&self, h: &Hash) -> PathBuf {
        let hex = h.to_hex();
        self.root.join("objects").join(&hex[..2]).join(&hex[2..])
    }

    fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    /// The log an instance's latest run left, kept after failures too (none
    /// after a success that printed nothing).
    pub fn log_path(&self, pipeline: &str, instance: &str) -> PathBuf {
        self.root
            .join("logs")
            .join(sanitize(pipeline, "-_"))
            .join(format!("{}.log", sanitize(instance, "-_=,.")))
    }

    /// Where an instance keeps work that survives a killed run (training's
    /// per-epoch state), by key; created by the op when it needs it.
    pub fn resume_dir(&self, key: &Hash) -> PathBuf {
        self.root.join("resume").join(key.to_hex().as_str())
    }

    /// A work directory for one execution: an emptied one of this process
    /// if there is one, else a new one.
    pub fn scratch(&self) -> Result<Scratch> {
        if let Some(s) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(s);
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = self.root.join("tmp").join(format!("{}-{n}", process_tag()));
        let out = dir.join("out");
        fs::create_dir_all(&out).at(&out)?;
        let log = dir.join("log");
        Ok(Scratch { dir, out, log })
    }

    /// Removes a file, later: it is moved aside and deleted with the store.
    /// On a filesystem that skips recently deleted inodes when it allocates
    /// one (ext4 without a journal), deleting as a run goes makes each file
    /// the run creates afterwards slower to create.
    fn discard(&self, path: &Path) {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let moved = fs::create_dir_all(&self.trash).is_ok()
            && fs::rename(path, self.trash.join(n.to_string())).is_ok();
        if !moved {
            let _ = fs::remove_file(path);
        }
    }

    /// Hands a work directory back: kept for the next execution when the
    /// op's outputs were moved out, its log moved out or empty, and nothing
    /// else is left; removed otherwise.
    pub fn release(&self, s: Scratch) {
        let empty = fs::read_dir(&s.out).is_ok_and(|mut d| d.next().is_none())
            && fs::symlink_metadata(&s.log).map_or(true, |m| m.is_file() && m.len() == 0);
        if empty {
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(s);
        } else {
            let _ = remove_all(&s.dir);
        }
    }

    /// Moves a finished file into the objects, returning its hash. The file
    /// is fsynced before it becomes visible under its hash. `path` must be a
    /// regular file of podium's own (in a work directory, not a symbolic
    /// link, one link): it is renamed and made read-only. Anything else goes
    /// through [`Store::put_copy`].
    pub fn put_file(&self, path: &Path) -> Result<(Hash, u64, bool)> {
        let meta = fs::symlink_metadata(path).at(path)?;
        let exec = meta.permissions().mode() & 0o111 != 0;
        let h = hash::hash_file(path).at(path)?;
        let dest = self.object_path(&h);
        // An object of the wrong size (damaged since it was stored) is
        // replaced by the new file rather than kept.
        let stored =
            fs::symlink_metadata(&dest).is_ok_and(|d| d.is_file() && d.len() == meta.len());
        if stored {
            self.discard(path);
        } else {
            File::open(path).and_then(|f| f.sync_all()).at(path)?;
            let mode = if exec { 0o555 } else { 0o444 };
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).at(path)?;
            let parent = dest.parent().unwrap();
            fs::create_dir_all(parent).at(parent)?;
            match fs::rename(path, &dest) {
                Ok(()) => sync_dir(parent),
                // Not on the same filesystem: copy, then rename into place.
                Err(_) => {
                    let tmp = temp_name(&dest);
                    let copied = fs::copy(path, &tmp)
                        .and_then(|_| File::open(&tmp)?.sync_all())
                        .and_then(|_| fs::rename(&tmp, &dest));
                    if let Err(e) = copied {
                        let _ = fs::remove_file(&tmp);
                        return Err(e).at(&dest);
                    }
                    let _ = fs::remove_file(path);
                }
            }
        }
        Ok((h, meta.len(), exec))
    }

    /// Stores a copy of the file `path` refers to (through symbolic links),
    /// leaving the file itself as it was: its name, mode, inode and link
    /// count are not touched. For outputs that are links to files podium
    /// did not make.
    pub fn put_copy(&self, path: &Path) -> Result<(Hash, u64, bool)> {
        let tmp = self.temp_path("copy");
        let copied = fs::copy(path, &tmp).at(path);
        let stored = copied.and_then(|_| self.put_file(&tmp));
        let _ = fs::remove_file(&tmp);
        stored
    }

    /// Stores a declared output (file or directory) found at `path`, in a
    /// work directory. Files that are podium's own are moved into the
    /// store; a symbolic link, or a file with other hard links (to an input,
    /// say), is stored by content and the file it leads to is left alone. A
    /// link loop, a dangling link or a special file is an error naming the
    /// output and the link.
    pub fn put_output(&self, path: &Path) -> Result<Output> {
        let output = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (meta, linked) = resolve(path, &output, false)?;
        if meta.is_dir() {
            let mut files = Vec::new();
            let mut ancestors = vec![(meta.dev(), meta.ino())];
            collect_output(path, "", linked, &output, &mut ancestors, &mut files)?;
            files.sort_by(|a, b| a.0.cmp(&b.0));
            let mut entries = Vec::with_capacity(files.len());
            let mut size = 0;
            for (rel, p, borrowed) in files {
                let (h, n, exec) = if borrowed {
                    self.put_copy(&p)?
                } else {
                    self.put_file(&p)?
                };
                size += n;
                entries.push(FileEntry {
                    path: rel,
                    hash: h.to_hex().to_string(),
                    size: n,
                    exec,
                });
            }
            let hashes: Vec<Hash> = entries
                .iter()
                .map(|e| Hash::from_hex(&e.hash).unwrap())
                .collect();
            let h = hash::merkle(entries.iter().map(|e| e.path.as_str()).zip(hashes.iter()));
            Ok(Output {
                kind: OutputKind::Dir,
                hash: h.to_hex().to_string(),
                size,
                exec: false,
                files: entries,
            })
        } else {
            let (h, n, exec) = if linked || meta.nlink() > 1 {
                self.put_copy(path)?
            } else {
                self.put_file(path)?
            };
            Ok(Output {
                kind: OutputKind::File,
                hash: h.to_hex().to_string(),
                size: n,
                exec,
                files: Vec::new(),
            })
        }
    }

    /// Stores bytes as an object.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Hash> {
        let h = blake3::hash(bytes);
        let dest = self.object_path(&h);
        if !dest.exists() {
            atomic_write(&dest, bytes).at(&dest)?;
            let _ = fs::set_permissions(&dest, fs::Permissions::from_mode(0o444));
        }
        Ok(h)
    }

    /// Stores a finished log, whose bytes are `bytes`, as an object. The
    /// object is the log file itself, made read-only and hard-linked, so no
    /// copy is written; a copy where links fail.
    pub fn put_log(&self, log: &Path, bytes: &[u8]) -> Result<Hash> {
        let h = blake3::hash(bytes);
        let dest = self.object_path(&h);
        if dest.exists() {
            return Ok(h);
        }
        let linked = (|| {
            File::open(log)?.sync_all()?;
            fs::set_permissions(log, fs::Permissions::from_mode(0o444))?;
            let parent = dest.parent().unwrap();
            fs::create_dir_all(parent)?;
            match fs::hard_link(log, &dest) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                r => r?,
            }
            sync_dir(parent);
            io::Result::Ok(())
        })();
        match linked {
            Ok(()) => Ok(h),
            Err(_) => self.put_bytes(bytes),
        }
    }

    /// Every object file an output consists of.
    pub fn output_objects(&self, o: &Output) -> Vec<PathBuf> {
        match o.kind {
            OutputKind::File => Hash::from_hex(&o.hash)
                .map(|h| vec![self.object_path(&h)])
                .unwrap_or_default(),
            OutputKind::Dir => o
                .files
                .iter()
                .filter_map(|f| Hash::from_hex(&f.hash).ok())
                .map(|h| self.object_path(&h))
                .collect(),
        }
    }

    /// The record of a key, if it exists and all its objects are intact
    /// (see [`Store::object_intact`]); a damaged object is dropped, so that
    /// its producer runs again and writes it anew.
    pub fn record(&self, key: &Hash) -> Option<Record> {
        let rec = self.records.get(key.to_hex().as_str())?;
        let complete = rec.outputs.values().all(|o| match o.kind {
            OutputKind::File => self.object_intact(&o.hash, o.size, rec.finished_at),
            OutputKind::Dir => o
                .files
                .iter()
                .all(|f| self.object_intact(&f.hash, f.size, rec.finished_at)),
        });
        complete.then_some(rec)
    }

    /// Whether the object `hash` is there as its record says: a regular file
    /// (not a symbolic link) of `size` bytes, and, when it was modified after
    /// the record was written (`finished_at`, seconds; an edit through a
    /// hard link in `out/` as root, say), still of that hash. An object that
    /// fails is removed.
    pub fn object_intact(&self, hash: &str, size: u64, finished_at: u64) -> bool {
        let Ok(h) = Hash::from_hex(hash) else {
            return false;
        };
        let path = self.object_path(&h);
        let Ok(m) = fs::symlink_metadata(&path) else {
            return false;
        };
        let ok = m.is_file()
            && m.len() == size
            && (finished_at == 0
                || m.mtime() <= finished_at as i64
                || hash::hash_file(&path).is_ok_and(|got| got == h));
        if !ok {
            let _ = fs::remove_file(&path);
        }
        ok
    }

    /// Appends `rec` to the record log; it is fsynced with the others of
    /// the last 100 ms, by [`Store::sync_records`], or when the store is
    /// dropped (its objects were fsynced before).
    pub fn put_record(&self, rec: &Record) -> Result<()> {
        Hash::from_hex(&rec.key).map_err(|e| Error::Corrupt(e.to_string()))?;
        self.records.put(rec).at(self.records.path())
    }

    /// Makes every record appended so far durable.
    pub fn sync_records(&self) -> Result<()> {
        self.records.sync().at(self.records.path())
    }

    /// The record of an instance's last successful run in a pipeline.
    pub fn state(&self, pipeline: &str, instance: &str) -> Option<Record> {
        let name = pipeline_dir_name(pipeline);
        self.journals.latest(&self.state_dir(), &name, instance)
    }

    /// Notes `rec` as its instance's last successful run. Only explanations
    /// depend on it; the record itself is durable.
    pub fn put_state(&self, rec: &Record) -> Result<()> {
        let dir = self.state_dir();
        let name = pipeline_dir_name(&rec.pipeline);
        self.journals.append(&dir, &name, rec).at(&dir)
    }

    /// The journals of experiments, `experiments/<pipeline>.jsonl`.
    pub fn experiments(&self) -> experiments::Journal {
        experiments::Journal::new(self.root.join("experiments"))
    }

    /// Every record in the store.
    pub fn records(&self) -> Vec<Record> {
        self.records.all()
    }

    /// The last records of every instance of a pipeline.
    pub fn states(&self, pipeline: &str) -> Vec<Record> {
        let name = pipeline_dir_name(pipeline);
        self.journals.all(&self.state_dir(), &name)
    }

    /// Re-hashes every object. Corrupted objects are reported and removed,
    /// so the next run recomputes whatever needs them.
    pub fn verify(&self, mut on_object: impl FnMut(usize)) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let objects = walk(&self.root.join("objects"));
        for (i, path) in objects.iter().enumerate() {
            on_object(i);
            report.objects += 1;
            let name = object_name(path);
            let ok = match (
                name.and_then(|n| Hash::from_hex(&n).ok()),
                hash::hash_file(path),
            ) {
                (Some(want), Ok(got)) => want == got,
                _ => false,
            };
            if !ok {
                let _ = fs::remove_file(path);
                report.bad_objects.push(path.clone());
            }
        }
        report.bad_lines = state::Journals::repair(&self.state_dir());
        let log = self.records.parse_all();
        report.records = log.records.len();
        if log.bad > 0 {
            let path = self.records.path();
            self.records.rewrite(&log.records).at(path)?;
            report.bad_lines.push((path.to_path_buf(), log.bad));
        }
        let legacy_states = walk(&self.state_dir())
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json"));
        for path in self.records.legacy_files().into_iter().chain(legacy_states) {
            let ok = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
                .is_some();
            if !ok {
                let _ = fs::remove_file(&path);
                report.bad_records.push(path);
            }
        }
        Ok(report)
    }

    /// Removes every record not in `live` and every object no live record
    /// uses. Returns what was (or, with `dry_run`, would be) freed.
    pub fn gc(&self, live: &std::collections::HashSet<String>, dry_run: bool) -> Result<GcReport> {
        let mut keep_objects = std::collections::HashSet::new();
        let mut report = GcReport::default();
        let mut keep = |r: &Record| {
            for o in r.outputs.values() {
                for p in self.output_objects(o) {
                    keep_objects.insert(p);
                }
            }
            if let Some(l) = r.log.as_ref().and_then(|l| Hash::from_hex(l).ok()) {
                keep_objects.insert(self.object_path(&l));
            }
        };
        // The log: live keys' last lines stay, every other line goes.
        let log = self.records.parse_all();
        let mut last: std::collections::HashMap<&str, usize> = Default::default();
        for (i, r) in log.records.iter().enumerate() {
            last.insert(&r.key, i);
        }
        let mut kept = Vec::new();
        for (i, r) in log.records.iter().enumerate() {
            // A key's earlier lines are superseded, not records of their own.
            if last[r.key.as_str()] != i {
                continue;
            }
            if live.contains(&r.key) {
                keep(r);
                kept.push(r.clone());
            } else {
                report.records += 1;
            }
        }
        if kept.len() < log.records.len() || log.bad > 0 {
            let before = fs::metadata(self.records.path()).map_or(0, |m| m.len());
            if !dry_run {
                let path = self.records.path();
                self.records.rewrite(&kept).at(path)?;
            }
            let after: usize = kept
                .iter()
                .map(|r| serde_json::to_vec(r).map_or(0, |v| v.len() + 1))
                .sum();
            report.bytes += before.saturating_sub(after as u64);
        }
        for path in self.records.legacy_files() {
            let rec = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Record>(&b).ok());
            match rec {
                Some(r) if live.contains(&r.key) => keep(&r),
                _ => {
                    report.records += 1;
                    report.bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    if !dry_run {
                        let _ = fs::remove_file(&path);
                    }
                }
            }
        }
        for path in walk(&self.root.join("objects")) {
            if !keep_objects.contains(&path) {
                report.objects += 1;
                report.bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                if !dry_run {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        // Resumable state (training's epochs) of keys no manifest has any more.
        if let Ok(rd) = fs::read_dir(self.root.join("resume")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !live.contains(&name) {
                    for f in walk(&e.path()) {
                        report.bytes += fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
                    }
                    if !dry_run {
                        let _ = remove_all(&e.path());
                    }
                }
            }
        }
        Ok(report)
    }

    /// Makes an output visible at `dest` (hard links to the objects,
    /// copies where links fail). Does nothing when it is there already.
    pub fn materialize(&self, o: &Output, dest: &Path) -> Result<()> {
        match o.kind {
            OutputKind::File => {
                let h = Hash::from_hex(&o.hash).map_err(|e| Error::Corrupt(e.to_string()))?;
                self.link(&self.object_path(&h), dest)
            }
            OutputKind::Dir => {
                fs::create_dir_all(dest).at(dest)?;
                for f in &o.files {
                    let h = Hash::from_hex(&f.hash).map_err(|e| Error::Corrupt(e.to_string()))?;
                    self.link(&self.object_path(&h), &dest.join(&f.path))?;
                }
                Ok(())
            }
        }
    }

    fn link(&self, object: &Path, dest: &Path) -> Result<()> {
        let om = fs::metadata(object).at(object)?;
        if let Ok(dm) = fs::symlink_metadata(dest) {
            if dm.ino() == om.ino() && dm.dev() == om.dev() {
                return Ok(());
            }
            if dm.is_dir() {
                remove_all(dest).at(dest)?;
            } else {
                fs::remove_file(dest).at(dest)?;
            }
        }
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).at(parent)?;
        }
        if fs::hard_link(object, dest).is_err() {
            let tmp = temp_name(dest);
            let _whole = crate::cancel::critical();
            if let Err(e) = fs::copy(object, &tmp).and_then(|_| fs::rename(&tmp, dest)) {
                // A full disk must not leave half a copy beside the output.
                let _ = fs::remove_file(&tmp);
                return Err(e).at(dest);
            }
        }
        Ok(())
    }
}

impl Drop for Store {
    /// The work directories kept for reuse and the discarded files go with
    /// the store.
    fn drop(&mut self) {
        for s in self
            .idle
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = remove_all(&s.dir);
        }
        let _ = remove_all(&self.trash);
    }
}

/// The metadata of an output's entry, through a symbolic link, and whether
/// it was reached through one (`linked` says a link was crossed above it).
fn resolve(path: &Path, output: &str, linked: bool) -> Result<(fs::Metadata, bool)> {
    let meta = fs::symlink_metadata(path).at(path)?;
    let (meta, linked) = if meta.file_type().is_symlink() {
        let target = fs::read_link(path)
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        let followed = fs::metadata(path).map_err(|e| {
            let why = hash::link_trouble(&e)
                .map_or_else(|| format!("cannot be followed: {e}"), str::to_string);
            Error::Output {
                output: output.to_string(),
                message: format!("`{}` (→ `{target}`) {why}", path.display()),
            }
        })?;
        (followed, true)
    } else {
        (meta, linked)
    };
    if !meta.is_dir() && !meta.is_file() {
        return Err(Error::Output {
            output: output.to_string(),
            message: format!(
                "`{}` is neither a file nor a directory (a socket, pipe or device)",
                path.display()
            ),
        });
    }
    Ok((meta, linked))
}

/// An output directory's files: relative path, path, and whether the file
/// must be copied (reached through a symbolic link, or hard-linked
/// elsewhere) rather than moved. `ancestors` are the directories being
/// walked, to name a loop instead of walking it for ever.
fn collect_output(
    dir: &Path,
    prefix: &str,
    linked: bool,
    output: &str,
    ancestors: &mut Vec<(u64, u64)>,
    files: &mut Vec<(String, PathBuf, bool)>,
) -> Result<()> {
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let (meta, linked) = resolve(&path, output, linked)?;
        if meta.is_dir() {
            let id = (meta.dev(), meta.ino());
            if ancestors.contains(&id) {
                return Err(Error::Output {
                    output: output.to_string(),
                    message: format!(
                        "`{}` leads back to a directory that contains it (a link loop)",
                        path.display()
                    ),
                });
            }
            ancestors.push(id);
            collect_output(&path, &rel, linked, output, ancestors, files)?;
            ancestors.pop();
        } else {
            files.push((rel, path, linked || meta.nlink() > 1));
        }
    }
    Ok(())
}

/// Removes a file or a directory tree, read-only files included.
pub fn remove_all(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn object_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let dir = path.parent()?.file_name()?.to_str()?;
    Some(format!("{dir}{file}"))
}

/// A pipeline's name as one path component (its journal in the store, its
/// directory under `out/`): characters other than ASCII letters, digits,
/// `-` and `_` become `_`.
pub fn pipeline_dir_name(pipeline: &str) -> String {
    if pipeline.is_empty() {
        return "_".into();
    }
    sanitize(pipeline, "-_")
}

/// `s` as one path component (a file name): characters other than ASCII
/// letters, digits and those in `keep` become `_`.
pub(crate) fn sanitize(s: &str, keep: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || keep.contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Every file under `dir`, skipping temporary files.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(_) if !e.file_name().to_string_lossy().starts_with('.') => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Objects re-hashed.
    pub objects: usize,
    /// Objects whose bytes did not match their name: removed.
    pub bad_objects: Vec<PathBuf>,
    /// Run records read from the log.
    pub records: usize,
    /// Logs and journals with lines that did not parse, and how many: those
    /// lines were dropped (their instances rerun).
    pub bad_lines: Vec<(PathBuf, usize)>,
    /// Record files of an older store that did not parse: removed.
    pub bad_records: Vec<PathBuf>,
}

impl VerifyReport {
    /// Whether anything was found wrong.
    pub fn is_clean(&self) -> bool {
        self.bad_objects.is_empty() && self.bad_lines.is_empty() && self.bad_records.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct GcReport {
    pub records: usize,
    pub objects: usize,
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy into `out/` that fails part way (here a read error: the
    /// "object" is `/proc/self/mem`, which cannot be hard-linked across
    /// filesystems and fails at its first read) leaves nothing behind.
    #[test]
    fn a_copy_into_out_that_fails_leaves_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("cache")).unwrap();
        let out = d.path().join("out");
        fs::create_dir_all(&out).unwrap();
        assert!(
            s.link(Path::new("/proc/self/mem"), &out.join("big.txt"))
                .is_err()
        );
        let left: Vec<_> = fs::read_dir(&out)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// The note a failure gets on a full filesystem: `/proc` reports no
    /// free blocks at all; a fresh temporary directory has room.
    #[test]
    fn a_failure_on_a_full_filesystem_says_disk_full_with_the_path() {
        let roomy = tempfile::tempdir().unwrap();
        let proc = Path::new("/proc");
        assert_eq!(disk_full(&[roomy.path()]), None);
        assert_eq!(
            disk_full(&[roomy.path(), proc]).as_deref(),
            Some("disk full: /proc has 0 bytes free")
        );
        // A path that does not exist (yet) is skipped, not an error.
        assert_eq!(disk_full(&[&roomy.path().join("not-yet")]), None);
    }

    #[test]
    fn put_file_is_content_addressed_and_read_only() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("cache")).unwrap();
        let f = d.path().join("a");
        fs::write(&f, "hello").unwrap();
        let (h, n, _) = s.put_file(&f).unwrap();
        assert_eq!(h, blake3::hash(b"hello"));
        assert_eq!(n, 5);
        assert!(!f.exists(), "the file is moved into the store");
        let obj = s.object_path(&h);
        assert_eq!(fs::read(&obj).unwrap(), b"hello");
        assert!(fs::metadata(&obj).unwrap().permissions().readonly());
    }

    #[test]
    fn verify_drops_a_corrupted_object_and_the_record_becomes_incomplete() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("cache")).unwrap();
        let f = d.path().join("a");
        fs::write(&f, "hello").unwrap();
        let out = s.put_output(&f).unwrap();
        let key = blake3::hash(b"key");
        let mut rec = Record::new(&key, "p", "st", "st", "exec", 1);
        rec.outputs.insert("a".into(), out);
        s.put_record(&rec).unwrap();
        assert!(s.record(&key).is_some());
        let obj = s.object_path(&blake3::hash(b"hello"));
        fs::set_permissions(&obj, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&obj, "HELLO").unwrap();
        let r = s.verify(|_| {}).unwrap();
        assert_eq!(r.bad_objects, vec![obj.clone()]);
        assert!(!obj.exists());
        assert!(
            s.record(&key).is_none(),
            "a record with a missing object is not a cache hit"
        );
        assert!(s.verify(|_| {}).unwrap().is_clean());
    }

    #[test]
    fn the_lock_excludes_a_second_holder() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("cache")).unwrap();
        let _held = s.lock(false, |_| {}).unwrap();
        let s2 = Store::open(&d.path().join("cache")).unwrap();
        match s2.lock(false, |_| {}) {
            Err(Error::Locked { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("second lock succeeded"),
        }
    }

    #[test]
    fn gc_keeps_live_records_and_their_objects() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("cache")).unwrap();
        let mut keys = Vec::new();
        for (i, content) in ["live", "dead"].iter().enumerate() {
            let f = d.path().join(content);
            fs::write(&f, content).unwrap();
            let key = blake3::hash(&[i as u8]);
            let mut rec = Record::new(&key, "p", content, content, "exec", 1);
            rec.outputs.insert("o".into(), s.put_output(&f).unwrap());
            s.put_record(&rec).unwrap();
            // A forced rerun: a second line for the same key, one record.
            rec.duration_s = 1.0;
            s.put_record(&rec).unwrap();
            keys.push(key);
        }
        let live = std::collections::HashSet::from([keys[0].to_hex().to_string()]);
        let dry = s.gc(&live, true).unwrap();
        assert_eq!((dry.records, dry.objects), (1, 1));
        assert!(s.record(&keys[1]).is_some(), "dry run removes nothing");
        let r = s.gc(&live, false).unwrap();
        assert_eq!((r.records, r.objects), (1, 1));
        assert!(r.bytes > 0);
        assert_eq!(s.record(&keys[0]).unwrap().duration_s, 1.0);
        assert!(s.record(&keys[1]).is_none());
        assert_eq!(s.records().len(), 1, "one line per live key is left");
    }
}
