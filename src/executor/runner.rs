//! The work of one instance: key, cache lookup, op run, commit.

use std::collections::HashSet;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::Outcome;
use crate::error::{IoContext, Result};
use crate::ir::{Instance, Pipeline};
use crate::ops::{OpContext, OpError, Report};
use crate::plan::{self, Plan, Status};
use crate::store::StatCache;
use crate::store::{self, Record, Store};
use crate::value::PathRef;

/// Where a pipeline's outputs are visible in the workspace: `out/<pipeline>/`,
/// so that manifests with stages of the same name never overwrite each
/// other's view.
pub fn pipeline_out_dir(out_root: &Path, pipeline: &Pipeline) -> PathBuf {
    out_root.join(store::pipeline_dir_name(&pipeline.name))
}

/// Where an instance's outputs are visible under its pipeline's directory
/// ([`pipeline_out_dir`]): `<stage>/` or, for a matrix stage,
/// `<stage>/<key=value,...>/`.
pub fn outputs_dir(pipeline_out: &Path, inst: &Instance) -> PathBuf {
    let d = pipeline_out.join(&inst.stage_name);
    if inst.matrix.is_empty() {
        d
    } else {
        d.join(inst.matrix_label())
    }
}

/// Runs instances of one pipeline against one store.
pub struct Runner<'a> {
    pub pipeline: &'a Pipeline,
    pub store: &'a Store,
    pub stat: &'a StatCache,
    /// The pipeline's directory under `out/` ([`pipeline_out_dir`]).
    pub out_root: PathBuf,
    pub force: &'a HashSet<String>,
    records: RwLock<Vec<Option<Record>>>,
    /// Whether records go to the store's record log and state journals (a
    /// run's own process), or only to the caller (a job on a cluster node,
    /// whose submitter adopts them: [`Runner::on_node`]).
    journal: bool,
    /// Fetched, pushed, and what went wrong fetching or pushing.
    remote: std::sync::Mutex<(store::Transfer, store::Transfer, Vec<String>)>,
}

impl<'a> Runner<'a> {
    /// A runner that knows the records of the instances `plan` found fresh.
    pub fn new(
        pipeline: &'a Pipeline,
        store: &'a Store,
        stat: &'a StatCache,
        out_root: PathBuf,
        force: &'a HashSet<String>,
        plan: Plan,
    ) -> Runner<'a> {
        let records = plan
            .status
            .into_iter()
            .map(|s| match s {
                Status::Fresh(r) => Some(*r),
                _ => None,
            })
            .collect();
        Runner::with_records(pipeline, store, stat, out_root, force, records)
    }

    /// A runner for one job on a cluster node: it knows the records of the
    /// instances the job reads (`records`, by instance id), and writes
    /// objects, logs and `out/` as a local run does, but appends nothing to
    /// the store's record log or state journals: the job hands its record to
    /// the submitting process ([`Runner::record_of`]), the one writer of
    /// those files, so that jobs on many nodes never append to one file.
    pub fn on_node(
        pipeline: &'a Pipeline,
        store: &'a Store,
        stat: &'a StatCache,
        out_root: PathBuf,
        force: &'a HashSet<String>,
        records: Vec<Option<Record>>,
    ) -> Runner<'a> {
        let mut r = Runner::with_records(pipeline, store, stat, out_root, force, records);
        r.journal = false;
        r
    }

    fn with_records(
        pipeline: &'a Pipeline,
        store: &'a Store,
        stat: &'a StatCache,
        out_root: PathBuf,
        force: &'a HashSet<String>,
        records: Vec<Option<Record>>,
    ) -> Runner<'a> {
        Runner {
            pipeline,
            store,
            stat,
            // Commands run in the manifest's directory, so paths must not be relative.
            out_root: pipeline_out_dir(
                &std::path::absolute(&out_root).unwrap_or(out_root),
                pipeline,
            ),
            force,
            records: RwLock::new(records),
            journal: true,
            remote: Default::default(),
        }
    }

    /// The record an instance has now (fresh, or made by this runner).
    pub fn record_of(&self, id: usize) -> Option<Record> {
        self.records.read().unwrap_or_else(|e| e.into_inner())[id].clone()
    }

    /// Takes in the record of an instance that ran elsewhere against this
    /// store (a cluster job): its objects are in the store and its outputs
    /// visible already; the record joins the record log (when `executed`
    /// there; a cache hit's is in the log already) and the instance's state.
    pub fn adopt(&self, id: usize, rec: Record, executed: bool) -> Result<()> {
        for o in rec.outputs.values() {
            if self.store.output_objects(o).iter().any(|p| !p.exists()) {
                return Err(crate::Error::Usage(format!(
                    "an object of its output is missing from the store at {}: is the store on a filesystem all nodes share?",
                    self.store.root().display()
                )));
            }
        }
        if executed {
            self.store.put_record(&rec)?;
            self.push(&rec);
        }
        self.put_state(id, &rec)?;
        self.set_record(id, rec);
        Ok(())
    }

    /// Records `rec` as the instance's latest state (named as this instance:
    /// the record may be another instance's with the same key).
    fn put_state(&self, id: usize, rec: &Record) -> Result<()> {
        let inst = &self.pipeline.instances[id];
        let mut state = rec.clone();
        state.pipeline.clone_from(&self.pipeline.name);
        state.stage.clone_from(&inst.stage_name);
        state.instance.clone_from(&inst.name);
        self.store.put_state(&state)
    }

    /// What moved from and to the remote cache during the jobs, and the
    /// pushes that failed.
    pub fn transfers(&self) -> (store::Transfer, store::Transfer, Vec<String>) {
        std::mem::take(&mut *self.remote.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn set_record(&self, id: usize, rec: Record) {
        self.records.write().unwrap_or_else(|e| e.into_inner())[id] = Some(rec);
    }

    /// Makes an instance's stored outputs visible under `out/`.
    pub fn materialize(&self, id: usize) -> Result<()> {
        let records = self.records.read().unwrap_or_else(|e| e.into_inner());
        let Some(rec) = &records[id] else {
            return Ok(());
        };
        let dir = outputs_dir(&self.out_root, &self.pipeline.instances[id]);
        for (name, o) in &rec.outputs {
            self.store.materialize(o, &dir.join(name))?;
        }
        Ok(())
    }

    /// The real location of a path at run time.
    pub fn path_of(&self, r: &PathRef) -> String {
        match r {
            PathRef::File { path, .. } => path.display().to_string(),
            PathRef::Artifact { inst, output, .. } => {
                outputs_dir(&self.out_root, &self.pipeline.instances[*inst])
                    .join(output)
                    .display()
                    .to_string()
            }
        }
    }

    /// Runs one instance (unless its key turns out to be stored already).
    pub fn run(&self, id: usize, gpus: &[usize], progress: &Report) -> Outcome {
        match self.try_run(id, gpus, progress) {
            Ok(o) => o,
            Err(e) => Outcome::Failed {
                message: e.to_string(),
                log: None,
                log_tail: String::new(),
            },
        }
    }

    fn try_run(&self, id: usize, gpus: &[usize], progress: &Report) -> Result<Outcome> {
        let p = self.pipeline;
        let inst = &p.instances[id];
        let op = inst.op();
        let k = plan::key_of(inst, self.stat, &|d, output| {
            self.records.read().unwrap_or_else(|e| e.into_inner())[d]
                .as_ref()?
                .output_hash(output)
        })?;
        let forced = self.force.contains(&inst.stage_name) || self.force.contains(&inst.name);
        // Early cutoff: the key is known only now, and the store (or the
        // remote cache) may hold it.
        let mut hit = (!forced).then(|| self.store.record(&k.key)).flatten();
        let mut outcome = Outcome::Cached;
        if hit.is_none() && !forced {
            hit = self.fetch(&k.key, &inst.name);
            outcome = Outcome::Fetched;
        }
        if let Some(rec) = hit {
            self.set_record(id, rec.clone());
            self.materialize(id)?;
            if self.journal {
                self.put_state(id, &rec)?;
            }
            return Ok(outcome);
        }
        for &d in &inst.deps {
            self.materialize(d)?;
        }
        let scratch = self.store.scratch()?;
        let resume = self.store.resume_dir(&k.key);
        let mut log = fs::File::create(&scratch.log).at(&scratch.log)?;
        let params = inst.params_placed(&|r| self.path_of(r));
        let started = Instant::now();
        let result = {
            let mut cx = OpContext {
                params: &params,
                out_dir: &scratch.out,
                work_dir: &p.dir,
                log: &mut log,
                cancel: crate::cancel::flag(),
                threads: inst.resources.threads,
                gpus,
                resume_dir: Some(&resume),
                progress,
            };
            catch_unwind(AssertUnwindSafe(|| op.run(&mut cx))).unwrap_or_else(|_| {
                Err(OpError::Failed(
                    "panicked (a bug in podium; its log may say where)".into(),
                ))
            })
        };
        let duration = started.elapsed();
        drop(log);
        let log_bytes = fs::read(&scratch.log).unwrap_or_default();
        let kept_log = self.store.log_path(&p.name, &inst.name);
        let moved = keep_log(&scratch.log, &kept_log, &log_bytes, result.is_ok());
        let outcome = match result {
            Err(OpError::Cancelled) => Ok(Outcome::Cancelled),
            Err(e) => Ok(Outcome::Failed {
                // The op, then what went wrong (the caller names the instance).
                message: match store::disk_full(&[&scratch.out, self.store.root(), &self.out_root])
                {
                    Some(full) => format!("{}: {e}; {full}", op.name()),
                    None => format!("{}: {e}", op.name()),
                },
                log: Some(kept_log),
                log_tail: tail(&log_bytes, 20),
            }),
            Ok(()) => {
                let mut rec = Record::new(
                    &k.key,
                    &p.name,
                    &inst.stage_name,
                    &inst.name,
                    op.name(),
                    op.version(),
                );
                rec.params = plan::display_params(inst);
                rec.inputs = k.inputs.clone();
                for o in inst.outputs.iter() {
                    let out = self.store.put_output(&scratch.out.join(o))?;
                    if o.ends_with("metrics.json") {
                        rec.metrics = read_metrics(self.store, &out);
                    }
                    rec.outputs.insert(o.clone(), out);
                }
                let log = if moved {
                    self.store.put_log(&kept_log, &log_bytes)?
                } else {
                    self.store.put_bytes(&log_bytes)?
                };
                rec.log = Some(log.to_hex().to_string());
                rec.duration_s = duration.as_secs_f64();
                rec.finished_at = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                if self.journal {
                    self.store.put_record(&rec)?;
                }
                let dir = outputs_dir(&self.out_root, inst);
                // The previous run's outputs must not linger beside the new
                // ones; nothing else in the directory is podium's to remove.
                let previous = self.store.state(&p.name, &inst.name);
                let names = rec
                    .outputs
                    .keys()
                    .chain(previous.iter().flat_map(|r| r.outputs.keys()));
                for name in names {
                    let _ = store::remove_all(&dir.join(name));
                }
                self.set_record(id, rec.clone());
                self.materialize(id)?;
                if self.journal {
                    self.store.put_state(&rec)?;
                }
                self.push(&rec);
                Ok(Outcome::Executed)
            }
        };
        if matches!(outcome, Ok(Outcome::Executed)) {
            let _ = store::remove_all(&resume);
        }
        self.store.release(scratch);
        outcome
    }
}

impl Runner<'_> {
    /// The remote cache's record of `key`, fetched into the store; `None`
    /// when there is no remote, it lacks the key, or the fetch failed (noted
    /// as a warning: the instance then runs here).
    fn fetch(&self, key: &crate::hash::Hash, instance: &str) -> Option<Record> {
        let remote = self.store.remote().filter(|r| r.config.fetch)?;
        let got = remote.record(key).and_then(|r| {
            r.map(|rec| remote.fetch(&rec, self.store).map(|t| (rec, t)))
                .transpose()
        });
        let mut m = self.remote.lock().unwrap_or_else(|e| e.into_inner());
        match got {
            Ok(Some((rec, t))) => {
                m.0.add(t);
                Some(rec)
            }
            Ok(None) => None,
            Err(e) => {
                m.2.push(format!("{instance} was not fetched, so it runs here: {e}"));
                None
            }
        }
    }

    /// Pushes a record just executed to the remote cache (when configured
    /// to push); a failure is a warning, as the result is safe here and
    /// `podium push` sends it later.
    fn push(&self, rec: &Record) {
        let Some(remote) = self.store.remote().filter(|r| r.config.push) else {
            return;
        };
        let r = remote.push(rec, self.store);
        let mut m = self.remote.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(t) => m.1.add(t),
            Err(e) => m.2.push(format!(
                "{} was not pushed (`podium push` retries): {e}",
                rec.instance
            )),
        }
    }
}

/// Keeps an execution's log at `kept` (where `podium` points after a
/// failure), replacing an earlier run's. The log file moves there, so that
/// it can also become its own object without a copy; returns whether it
/// did. An empty log of a success stays where it is, to be truncated by the
/// next execution in that work directory, and leaves no file at `kept`: a
/// run of many quiet stages creates no file per stage for their logs.
fn keep_log(log: &Path, kept: &Path, bytes: &[u8], succeeded: bool) -> bool {
    if succeeded && bytes.is_empty() {
        let _ = fs::remove_file(kept);
        return false;
    }
    let moved = kept.parent().is_some_and(|d| fs::create_dir_all(d).is_ok())
        && fs::rename(log, kept).is_ok();
    if !moved {
        let _ = store::atomic_write_nosync(kept, bytes);
    }
    moved
}

fn read_metrics(
    store: &Store,
    o: &crate::store::Output,
) -> std::collections::BTreeMap<String, f64> {
    store
        .output_objects(o)
        .first()
        .and_then(|p| fs::read(p).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&b).ok())
        .map(|m| {
            m.into_iter()
                .filter_map(|(k, v)| v.as_f64().map(|f| (k, f)))
                .collect()
        })
        .unwrap_or_default()
}

/// The last `n` lines of a log.
pub(super) fn tail(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
