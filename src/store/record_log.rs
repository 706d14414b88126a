//! The records of executed keys: one append-only log per store,
//! `records.jsonl`, one record per line, the last line of a key winning.
//!
//! A run appends a line per finished instance (one `write`; an
//! `fdatasync` at most every 100 ms and when the log is dropped, see
//! [`SYNC_EVERY`]) instead of creating a file per key: on a filesystem that
//! scans recently deleted inodes when it allocates one (ext4 without a
//! journal), each new file of a run of many short stages cost as much as
//! the stage's own output. A process reads the log once and then only what
//! was appended since (a concurrent run's lines, once the lock passes to
//! it). A torn last line (a crash mid-write) is skipped, and the next
//! writer starts on a fresh line. `podium gc` and `podium verify` rewrite
//! the log atomically. Stores written before the log kept one file per key
//! under `records/`; those are still read, and removed by `gc` when no
//! manifest needs them.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use super::{Record, atomic_write, sync_dir, walk};

pub(super) struct RecordLog {
    path: PathBuf,
    /// `records/ab/cdef….json` of older stores.
    legacy: PathBuf,
    index: RwLock<Index>,
    writer: Mutex<Writer>,
}

/// The open log and when its lines were last made durable.
#[derive(Default)]
struct Writer {
    file: Option<File>,
    /// When the last `fdatasync` ran, and whether lines were written since.
    synced: Option<Instant>,
    dirty: bool,
}

/// Lines are fsynced at most this often (group commit), and once more when
/// the log is dropped. A power cut can lose the records of the stages that
/// finished in the last interval: they rerun, their objects (fsynced
/// before their record is written) already in the store. One `fdatasync`
/// per line cost about 0.25 ms here, a fifth of a trivial stage.
const SYNC_EVERY: Duration = Duration::from_millis(100);

impl Drop for RecordLog {
    fn drop(&mut self) {
        let _ = self.sync();
    }
}

/// What this process has read of the log.
#[derive(Default)]
struct Index {
    by_key: HashMap<String, Record>,
    /// Bytes of the log read so far (whole lines only).
    read: u64,
    /// The log's inode when it was read: a rewrite (`gc`) replaces it.
    ino: u64,
}

/// A log's lines: the records that parse, and how many did not.
pub(super) struct Parsed {
    pub records: Vec<Record>,
    pub bad: usize,
}

impl RecordLog {
    pub fn new(root: &Path) -> RecordLog {
        RecordLog {
            path: root.join("records.jsonl"),
            legacy: root.join("records"),
            index: RwLock::new(Index::default()),
            writer: Mutex::new(Writer::default()),
        }
    }

    /// The last record of `key` (hex), from the log or an older store's file.
    pub fn get(&self, key: &str) -> Option<Record> {
        if let Some(r) = self.read_index().by_key.get(key) {
            return Some(r.clone());
        }
        {
            let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
            catch_up(&self.path, &mut index);
            if let Some(r) = index.by_key.get(key) {
                return Some(r.clone());
            }
        }
        let path = self
            .legacy
            .join(&key[..2.min(key.len())])
            .join(format!("{}.json", &key[2.min(key.len())..]));
        let bytes = fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `rec`: the line is written before this returns, and fsynced
    /// with the lines of the last [`SYNC_EVERY`] (at once if none was
    /// synced for that long), or when the log is dropped.
    pub fn put(&self, rec: &Record) -> io::Result<()> {
        let mut line = Vec::new();
        push_line(&mut line, rec);
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if writer.file.is_none() {
            let existed = self.path.exists();
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(&self.path)?;
            // A line torn by a crash: the next one starts on its own line.
            let len = f.metadata()?.len();
            if len > 0 {
                let mut last = [0u8];
                f.seek(SeekFrom::Start(len - 1))?;
                f.read_exact(&mut last)?;
                if last[0] != b'\n' {
                    f.write_all(b"\n")?;
                }
            }
            if !existed {
                f.sync_all()?;
                sync_dir(self.path.parent().unwrap_or(Path::new(".")));
            }
            writer.file = Some(f);
        }
        let w = &mut *writer;
        let f = w.file.as_mut().expect("opened above");
        // One `write` per line: O_APPEND keeps lines whole.
        f.write_all(&line)?;
        if w.synced.is_none_or(|t| t.elapsed() >= SYNC_EVERY) {
            f.sync_data()?;
            (w.synced, w.dirty) = (Some(Instant::now()), false);
        } else {
            w.dirty = true;
        }
        drop(writer);
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        index.by_key.insert(rec.key.clone(), rec.clone());
        Ok(())
    }

    /// Makes every line written so far durable.
    pub fn sync(&self) -> io::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(f), true) = (w.file.as_ref(), w.dirty) {
            f.sync_data()?;
            (w.synced, w.dirty) = (Some(Instant::now()), false);
        }
        Ok(())
    }

    /// Every line of the log.
    pub fn parse_all(&self) -> Parsed {
        parse(&fs::read(&self.path).unwrap_or_default())
    }

    /// The record files of an older store.
    pub fn legacy_files(&self) -> Vec<PathBuf> {
        walk(&self.legacy)
    }

    /// Every record, the log's last line of a key winning over an older
    /// store's file.
    pub fn all(&self) -> Vec<Record> {
        let mut by_key: HashMap<String, Record> = HashMap::new();
        for path in self.legacy_files() {
            if let Some(r) = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
            {
                by_key.insert(r.key.clone(), r);
            }
        }
        for r in self.parse_all().records {
            by_key.insert(r.key.clone(), r);
        }
        let mut out: Vec<Record> = by_key.into_values().collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Replaces the log with `records`, one line each, atomically; this
    /// process forgets what it had read and reopens the log to append.
    pub fn rewrite(&self, records: &[Record]) -> io::Result<()> {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for r in records {
            push_line(&mut out, r);
        }
        atomic_write(&self.path, &out)?;
        *writer = Writer::default();
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = Index::default();
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads what was appended to the log since `index` last read it (all of it
/// when the log was replaced), whole lines only.
fn catch_up(path: &Path, index: &mut Index) {
    let Ok(mut f) = File::open(path) else {
        return;
    };
    let Ok(meta) = f.metadata() else { return };
    if meta.ino() != index.ino || meta.len() < index.read {
        *index = Index {
            ino: meta.ino(),
            ..Index::default()
        };
    }
    if meta.len() == index.read || f.seek(SeekFrom::Start(index.read)).is_err() {
        return;
    }
    let mut bytes = Vec::new();
    if f.read_to_end(&mut bytes).is_err() {
        return;
    }
    let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
        return;
    };
    for r in parse(&bytes[..=end]).records {
        index.by_key.insert(r.key.clone(), r);
    }
    index.read += end as u64 + 1;
}

/// Appends `rec` to `out` as one line (compact JSON and a newline).
pub(super) fn push_line(out: &mut Vec<u8>, rec: &Record) {
    serde_json::to_writer(&mut *out, rec).expect("records serialize");
    out.push(b'\n');
}

/// The records of a log's lines (this log's or a state journal's).
pub(super) fn parse(bytes: &[u8]) -> Parsed {
    let mut records = Vec::new();
    let mut bad = 0;
    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<Record>(line) {
            Ok(r) => records.push(r),
            Err(_) => bad += 1,
        }
    }
    Parsed { records, bad }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Hash;

    fn rec(key: &str, stage: &str) -> Record {
        let any = Hash::from_hex("0".repeat(64)).unwrap();
        Record {
            key: key.into(),
            ..Record::new(&any, "p", stage, stage, "exec", 1)
        }
    }

    #[test]
    fn a_second_reader_sees_what_was_appended_after_it_read() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (RecordLog::new(dir.path()), RecordLog::new(dir.path()));
        a.put(&rec("aa11", "one")).unwrap();
        assert_eq!(b.get("aa11").unwrap().stage, "one");
        assert!(b.get("bb22").is_none());
        a.put(&rec("bb22", "two")).unwrap();
        assert_eq!(b.get("bb22").unwrap().stage, "two");
        // The last line of a key wins.
        a.put(&rec("aa11", "again")).unwrap();
        assert_eq!(
            RecordLog::new(dir.path()).get("aa11").unwrap().stage,
            "again"
        );
        assert_eq!(a.all().len(), 2);
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_the_next_record_starts_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = RecordLog::new(dir.path());
        log.put(&rec("aa11", "one")).unwrap();
        let mut f = OpenOptions::new().append(true).open(log.path()).unwrap();
        f.write_all(b"{\"key\":\"cc33\",\"podi").unwrap();
        let next = RecordLog::new(dir.path());
        assert!(next.get("cc33").is_none());
        next.put(&rec("bb22", "two")).unwrap();
        let parsed = RecordLog::new(dir.path()).parse_all();
        let keys: Vec<&str> = parsed.records.iter().map(|r| r.key.as_str()).collect();
        assert_eq!((keys, parsed.bad), (vec!["aa11", "bb22"], 1));
    }

    #[test]
    fn a_rewrite_replaces_the_log_for_readers_and_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (RecordLog::new(dir.path()), RecordLog::new(dir.path()));
        a.put(&rec("aa11", "one")).unwrap();
        a.put(&rec("bb22", "two")).unwrap();
        assert!(b.get("aa11").is_some());
        a.rewrite(&[rec("bb22", "two")]).unwrap();
        a.put(&rec("cc33", "three")).unwrap();
        let keys: Vec<String> = a.all().into_iter().map(|r| r.key).collect();
        assert_eq!(keys, ["bb22", "cc33"]);
        // `b` read the old log; it notices the new one on a miss.
        assert!(b.get("cc33").is_some());
        assert!(b.get("aa11").is_none());
    }

    #[test]
    fn records_of_an_older_store_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("records/dd/44.json");
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, serde_json::to_vec(&rec("dd44", "old")).unwrap()).unwrap();
        let log = RecordLog::new(dir.path());
        assert_eq!(log.get("dd44").unwrap().stage, "old");
        log.put(&rec("dd44", "new")).unwrap();
        assert_eq!(log.all()[0].stage, "new");
    }
}
