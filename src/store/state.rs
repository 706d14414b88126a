//! The last record of each instance of a pipeline, kept to explain what
//! changed (`podium plan`, `podium status`).
//!
//! One journal per pipeline, `state/<pipeline>.jsonl`: one record per line,
//! appended when an instance finishes; the last line of an instance wins. A
//! run appends instead of writing a file per instance, so it creates and
//! deletes no file per instance (on a filesystem that scans recently
//! deleted inodes when it allocates one, that churn dominated runs of many
//! short stages). A torn last line (a crash mid-write) is skipped on
//! reading. The first write of a process compacts the journal when most of
//! its lines are superseded, and folds in the per-instance files of older
//! stores (`state/<pipeline>/*.json`). Writes are not fsynced: losing the
//! tail in a power cut costs explanations, never results.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::record_log::{Parsed, parse, push_line};
use super::{Record, atomic_write_nosync, remove_all, walk};

/// Superseded lines allowed, beyond one per instance, before compaction.
const SLACK: usize = 64;

/// The journals of one store, loaded on first use.
#[derive(Default)]
pub(super) struct Journals {
    open: Mutex<HashMap<String, Arc<Journal>>>,
}

/// One pipeline's journal.
struct Journal {
    path: PathBuf,
    legacy: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Last record of each instance, `None` until read.
    latest: Option<HashMap<String, Record>>,
    /// Lines in the file (superseded ones included).
    lines: usize,
    /// Open for appending once this process has written.
    writer: Option<File>,
}

impl Journals {
    fn get(&self, dir: &Path, name: &str) -> Arc<Journal> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Journal {
                    path: dir.join(format!("{name}.jsonl")),
                    legacy: dir.join(name),
                    inner: Mutex::new(Inner {
                        latest: None,
                        lines: 0,
                        writer: None,
                    }),
                })
            })
            .clone()
    }

    /// The last record of `instance` in the pipeline whose journal is `name`.
    pub fn latest(&self, dir: &Path, name: &str, instance: &str) -> Option<Record> {
        let j = self.get(dir, name);
        let mut inner = j.lock();
        j.load(&mut inner).get(instance).cloned()
    }

    /// Every instance's last record, in no particular order.
    pub fn all(&self, dir: &Path, name: &str) -> Vec<Record> {
        let j = self.get(dir, name);
        let mut inner = j.lock();
        j.load(&mut inner).values().cloned().collect()
    }

    /// Appends `rec` as its instance's last record.
    pub fn append(&self, dir: &Path, name: &str, rec: &Record) -> io::Result<()> {
        let j = self.get(dir, name);
        let mut inner = j.lock();
        if inner.writer.is_none() {
            j.load(&mut inner);
            j.compact(&mut inner)?;
            inner.writer = Some(OpenOptions::new().create(true).append(true).open(&j.path)?);
        }
        let mut line = Vec::new();
        push_line(&mut line, rec);
        // One `write` per line: O_APPEND keeps lines whole.
        inner
            .writer
            .as_mut()
            .expect("opened above")
            .write_all(&line)?;
        inner.lines += 1;
        if let Some(latest) = inner.latest.as_mut() {
            latest.insert(rec.instance.clone(), rec.clone());
        }
        Ok(())
    }

    /// Rewrites every journal with lines that do not parse without them;
    /// returns each such journal with the number of lines dropped.
    pub fn repair(dir: &Path) -> Vec<(PathBuf, usize)> {
        let mut repaired = Vec::new();
        for path in walk(dir) {
            if path.extension().is_none_or(|e| e != "jsonl") {
                continue;
            }
            let Ok(bytes) = fs::read(&path) else { continue };
            let Parsed { records: good, bad } = parse(&bytes);
            if bad > 0 {
                let mut out = Vec::with_capacity(bytes.len());
                for rec in &good {
                    push_line(&mut out, rec);
                }
                if atomic_write_nosync(&path, &out).is_ok() {
                    repaired.push((path, bad));
                }
            }
        }
        repaired
    }
}

impl Journal {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn load<'a>(&self, inner: &'a mut Inner) -> &'a HashMap<String, Record> {
        if inner.latest.is_none() {
            let mut latest = HashMap::new();
            // Older stores kept one file per instance; the journal overrides them.
            for path in walk(&self.legacy) {
                if let Some(rec) = fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
                {
                    latest.insert(rec.instance.clone(), rec);
                }
            }
            let records = parse(&fs::read(&self.path).unwrap_or_default()).records;
            inner.lines = records.len();
            for rec in records {
                latest.insert(rec.instance.clone(), rec);
            }
            inner.latest = Some(latest);
        }
        inner.latest.as_ref().expect("loaded above")
    }

    /// Rewrites the journal with one line per instance when superseded lines
    /// pile up or per-instance files of an older store are left.
    fn compact(&self, inner: &mut Inner) -> io::Result<()> {
        let latest = inner.latest.as_ref().expect("loaded before compaction");
        let legacy = self.legacy.is_dir();
        if !legacy && inner.lines <= 2 * latest.len() + SLACK {
            return Ok(());
        }
        let mut recs: Vec<&Record> = latest.values().collect();
        recs.sort_by(|a, b| (a.finished_at, &a.instance).cmp(&(b.finished_at, &b.instance)));
        let mut out = Vec::new();
        for rec in recs {
            push_line(&mut out, rec);
        }
        atomic_write_nosync(&self.path, &out)?;
        inner.lines = latest.len();
        if legacy {
            remove_all(&self.legacy)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(instance: &str, key: &str, at: u64) -> Record {
        let mut r = Record::new(&blake3::hash(key.as_bytes()), "p", "s", instance, "exec", 1);
        r.finished_at = at;
        r
    }

    #[test]
    fn last_line_of_an_instance_wins_and_survives_reopening() {
        let d = tempfile::tempdir().unwrap();
        let j = Journals::default();
        j.append(d.path(), "p", &rec("a", "1", 1)).unwrap();
        j.append(d.path(), "p", &rec("b", "2", 2)).unwrap();
        j.append(d.path(), "p", &rec("a", "3", 3)).unwrap();
        assert_eq!(j.latest(d.path(), "p", "a").unwrap().finished_at, 3);
        let fresh = Journals::default();
        assert_eq!(fresh.latest(d.path(), "p", "a").unwrap().finished_at, 3);
        assert_eq!(fresh.latest(d.path(), "p", "b").unwrap().finished_at, 2);
        assert!(fresh.latest(d.path(), "p", "c").is_none());
        assert_eq!(fresh.all(d.path(), "p").len(), 2);
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_repair_drops_it() {
        let d = tempfile::tempdir().unwrap();
        let j = Journals::default();
        j.append(d.path(), "p", &rec("a", "1", 1)).unwrap();
        let path = d.path().join("p.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"key\": \"ab").unwrap();
        assert_eq!(Journals::default().all(d.path(), "p").len(), 1);
        assert_eq!(Journals::repair(d.path()), vec![(path.clone(), 1)]);
        let Parsed { records: good, bad } = parse(&fs::read(&path).unwrap());
        assert_eq!((good.len(), bad), (1, 0));
        assert!(Journals::repair(d.path()).is_empty());
    }

    #[test]
    fn superseded_lines_are_compacted_on_the_first_write_of_a_process() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("p.jsonl");
        let j = Journals::default();
        for i in 0..(SLACK as u64 + 10) {
            j.append(d.path(), "p", &rec("a", &i.to_string(), i))
                .unwrap();
        }
        let lines = || {
            fs::read(&path)
                .unwrap()
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .count()
        };
        assert_eq!(
            lines(),
            SLACK + 10,
            "one process appends without compacting"
        );
        let next = Journals::default();
        next.append(d.path(), "p", &rec("b", "x", 1000)).unwrap();
        assert_eq!(
            lines(),
            2,
            "compacted to one line per instance, then appended"
        );
        assert_eq!(
            next.latest(d.path(), "p", "a").unwrap().finished_at,
            SLACK as u64 + 9
        );
    }

    #[test]
    fn per_instance_files_of_older_stores_are_folded_in() {
        let d = tempfile::tempdir().unwrap();
        let legacy = d.path().join("p");
        fs::create_dir_all(&legacy).unwrap();
        let old = rec("a", "1", 1);
        fs::write(legacy.join("x.json"), serde_json::to_vec(&old).unwrap()).unwrap();
        let j = Journals::default();
        assert_eq!(j.latest(d.path(), "p", "a"), Some(old));
        j.append(d.path(), "p", &rec("b", "2", 2)).unwrap();
        assert!(!legacy.exists(), "folded into the journal");
        let fresh = Journals::default();
        assert_eq!(fresh.all(d.path(), "p").len(), 2);
    }
}
