//! Execution: an [`Executor`] decides where and when instances run (here,
//! on local threads); the [`Runner`] does the work of one instance (key,
//! cache lookup, op, commit to the store). A cluster executor implements
//! [`Executor`] and reuses the runner and the planner unchanged: the
//! [`SlurmExecutor`] submits each job to Slurm, where the same binary runs
//! it through the same runner ([`slurm::node_main`]), and hands the record
//! the job left back through [`Work::adopt`].

mod local;
mod runner;
pub mod slurm;

pub use local::LocalExecutor;
pub use runner::{Runner, outputs_dir, pipeline_out_dir};
pub use slurm::SlurmExecutor;

use std::time::Duration;

use crate::ir::Resources;

/// How one instance ended.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The op ran and its outputs were stored.
    Executed,
    /// Its key was in the store after all (an upstream reran with identical output).
    Cached,
    /// Its key turned out to be in the remote cache, and was fetched.
    Fetched,
    Failed {
        message: String,
        log: Option<std::path::PathBuf>,
        log_tail: String,
    },
    /// Not run because an instance it reads failed.
    Skipped {
        because: String,
    },
    Cancelled,
    /// Handed to a cluster and not waited for (`--detach`): `job` is the
    /// scheduler's id.
    Submitted {
        job: String,
    },
}

/// One unit of work handed to an executor.
#[derive(Clone, Debug)]
pub struct Job {
    pub id: usize,
    pub name: String,
    /// The instance's stage, and its place among the stage's instances (a
    /// cluster executor submits a matrix stage as one job array, indexed so).
    pub stage: String,
    pub index: usize,
    /// Jobs (ids) that must finish first; only those in this batch count.
    pub deps: Vec<usize>,
    pub resources: Resources,
}

/// What the executor tells the user interface.
pub trait Events: Sync {
    fn started(&self, job: &Job);
    fn finished(&self, job: &Job, outcome: &Outcome, took: Duration);
    /// A running job says how far it has got.
    fn progress(&self, _job: &Job, _step: &crate::ops::Step) {}
    /// Before any job: `instances` found in the remote cache, `bytes` in
    /// all, are being fetched from `remote`.
    fn fetching(&self, _instances: usize, _bytes: u64, _remote: &str) {}
}

/// What an executor does with a job: run it here, or take in what it left
/// after it ran elsewhere.
pub trait Work: Sync {
    /// Runs the job in this process with these GPUs.
    fn run(&self, job: &Job, gpus: &[usize]) -> Outcome;
    /// Takes in a job that ran elsewhere (a cluster node, against the same
    /// store) and left `record` (for a success): the record joins the
    /// store's log and the instance's state, as if it had run here. Returns
    /// the job's outcome, or a failure when the record cannot be taken in.
    fn adopt(&self, job: &Job, outcome: Outcome, record: Option<crate::store::Record>) -> Outcome {
        let _ = (job, record);
        outcome
    }
    /// The record of an instance outside the batch (fresh before the run).
    fn record(&self, id: usize) -> Option<crate::store::Record> {
        let _ = id;
        None
    }
}

impl<F: Fn(&Job, &[usize]) -> Outcome + Sync> Work for F {
    fn run(&self, job: &Job, gpus: &[usize]) -> Outcome {
        self(job, gpus)
    }
}

/// Runs jobs in dependency order.
pub trait Executor {
    /// Runs `jobs` (each after its deps) through `work`, returning each
    /// job's outcome by id.
    fn execute(&self, jobs: &[Job], work: &dyn Work, events: &dyn Events) -> Vec<(usize, Outcome)>;
}

/// Events that go nowhere.
pub struct NoEvents;

impl Events for NoEvents {
    fn started(&self, _: &Job) {}
    fn finished(&self, _: &Job, _: &Outcome, _: Duration) {}
}

use std::collections::HashSet;
use std::path::PathBuf;

use rayon::prelude::*;

use crate::error::{Error, IoContext, Result};
use crate::graph::Graph;
use crate::ir::Pipeline;
use crate::plan::{self, Plan};
use crate::store::StatCache;
use crate::store::Store;

/// Options of `podium run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Instance names or stage names (with optional `[key=value]`); empty for all.
    pub targets: Vec<String>,
    /// Stages or instances to rerun whatever their keys.
    pub force: HashSet<String>,
    /// Where outputs are made visible (`out/`).
    pub out_root: PathBuf,
    /// Only fetch from the remote cache and make visible (`podium pull`):
    /// execute nothing.
    pub fetch_only: bool,
}

/// What a run did.
#[derive(Debug)]
pub struct RunReport {
    /// Instances that were fresh before the run.
    pub fresh: Vec<String>,
    /// Instances fetched from the remote cache before any job started.
    pub fetched: Vec<String>,
    /// What moved to and from the remote cache.
    pub pulled: crate::store::Transfer,
    pub pushed: crate::store::Transfer,
    /// What went wrong without failing the run (a push that did not go through).
    pub warnings: Vec<String>,
    /// Every instance the run handled, in order, with its outcome.
    pub outcomes: Vec<(String, Outcome)>,
}

impl RunReport {
    pub fn succeeded(&self) -> bool {
        self.outcomes.iter().all(|(_, o)| {
            matches!(
                o,
                Outcome::Executed | Outcome::Cached | Outcome::Fetched | Outcome::Submitted { .. }
            )
        })
    }

    pub fn cancelled(&self) -> bool {
        self.outcomes
            .iter()
            .any(|(_, o)| matches!(o, Outcome::Cancelled))
    }

    /// Names of the instances whose outcome satisfies `f`, in order.
    pub fn names(&self, f: fn(&Outcome) -> bool) -> Vec<&str> {
        self.outcomes
            .iter()
            .filter(|(_, o)| f(o))
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

/// The file that marks an output directory (`out/`) as podium's.
pub const OUT_MARKER: &str = ".podium-out";

/// Makes sure `out_root` is podium's to write into: a new or empty
/// directory is created and marked with [`OUT_MARKER`]; one that holds
/// anything and has no marker (the project's root, a data directory) is
/// refused, so that podium never replaces or deletes files it did not make.
pub fn claim_out_dir(out_root: &std::path::Path) -> Result<()> {
    let marker = out_root.join(OUT_MARKER);
    if marker.exists() {
        return Ok(());
    }
    let empty = match std::fs::read_dir(out_root) {
        Ok(mut d) => d.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(e).at(out_root),
    };
    if !empty {
        return Err(Error::Usage(format!(
            "--out-dir {}: the directory holds files and podium did not make it (no {OUT_MARKER} in it); \
             podium writes outputs only into a directory of its own: name a new or empty one \
             (or, if an older podium made this one, create {} to hand it over)",
            out_root.display(),
            marker.display()
        )));
    }
    std::fs::create_dir_all(out_root).at(out_root)?;
    std::fs::write(
        &marker,
        "This directory is podium's output directory (out/): podium replaces the outputs it made here.\n",
    )
    .at(&marker)
}

/// Plans and runs a pipeline: fresh instances are only made visible under
/// `out/`, stale ones go to the executor in dependency order.
pub fn run(
    p: &Pipeline,
    store: &Store,
    stat: &StatCache,
    executor: &dyn Executor,
    opts: &RunOptions,
    events: &dyn Events,
    on_plan: &dyn Fn(&Plan),
) -> Result<RunReport> {
    let g = Graph::of(p);
    let targets = p.select_targets(&opts.targets).map_err(Error::Usage)?;
    claim_out_dir(&opts.out_root)?;
    let mut plan = plan::plan(p, &g, store, stat, Some(&targets), &opts.force)?;
    // What the remote cache holds comes first, all at once: those instances
    // are then fresh, and only the rest goes to the executor.
    let pre = prefetch(p, &g, store, &mut plan, events);
    on_plan(&plan);
    let fetched = pre.fetched;
    let mut warnings = Vec::new();
    if !opts.fetch_only && !crate::cancel::is_cancelled() {
        for (id, why) in &pre.failed {
            warnings.push(format!(
                "{} was not fetched, so it runs here: {why}",
                p.instances[*id].name
            ));
        }
    }
    let mut fresh = Vec::new();
    let mut jobs = Vec::new();
    for &id in g.order() {
        let inst = &p.instances[id];
        match &plan.status[id] {
            plan::Status::Fresh(_) => fresh.push(id),
            plan::Status::Stale(_) => jobs.push(Job {
                id,
                name: inst.name.clone(),
                stage: inst.stage_name.clone(),
                index: p.stages[inst.stage]
                    .instances
                    .iter()
                    .position(|&i| i == id)
                    .unwrap_or(0),
                deps: inst.deps.clone(),
                resources: inst.resources,
            }),
            plan::Status::Skipped => {}
        }
    }
    let runner = Runner::new(p, store, stat, opts.out_root.clone(), &opts.force, plan);
    fresh
        .par_iter()
        .try_for_each(|&id| runner.materialize(id))?;
    let was_fetched: HashSet<&str> = fetched.iter().map(String::as_str).collect();
    let fresh = fresh
        .into_iter()
        .map(|id| p.instances[id].name.clone())
        .filter(|n| !was_fetched.contains(n.as_str()))
        .collect();
    let results = if opts.fetch_only {
        jobs.iter()
            .map(|j| match pre.failed.get(&j.id) {
                Some(why) => (
                    j.id,
                    Outcome::Failed {
                        message: format!("not fetched: {why}"),
                        log: None,
                        log_tail: String::new(),
                    },
                ),
                None => {
                    let because = "not in the remote cache".to_string();
                    (j.id, Outcome::Skipped { because })
                }
            })
            .collect()
    } else {
        executor.execute(
            &jobs,
            &RunnerWork {
                runner: &runner,
                events,
            },
            events,
        )
    };
    // The run's last records, fsynced in groups as they were appended.
    store.sync_records()?;
    let _ = stat.save(&store.statcache_path());
    let (more_pulled, pushed, more_warnings) = runner.transfers();
    warnings.extend(more_warnings);
    let mut pulled = pre.transfer;
    pulled.add(more_pulled);
    let mut outcomes: Vec<(usize, Outcome)> = results;
    let mut rank = vec![0; g.len()];
    for (i, &id) in g.order().iter().enumerate() {
        rank[id] = i;
    }
    outcomes.sort_by_key(|(id, _)| rank[*id]);
    Ok(RunReport {
        fresh,
        fetched,
        pulled,
        pushed,
        warnings,
        outcomes: outcomes
            .into_iter()
            .map(|(id, o)| (p.instances[id].name.clone(), o))
            .collect(),
    })
}

/// The runner as an executor's [`Work`].
struct RunnerWork<'a> {
    runner: &'a Runner<'a>,
    events: &'a dyn Events,
}

impl Work for RunnerWork<'_> {
    fn run(&self, job: &Job, gpus: &[usize]) -> Outcome {
        self.runner
            .run(job.id, gpus, &|s| self.events.progress(job, s))
    }

    fn record(&self, id: usize) -> Option<crate::store::Record> {
        self.runner.record_of(id)
    }

    fn adopt(&self, job: &Job, outcome: Outcome, record: Option<crate::store::Record>) -> Outcome {
        let ok = matches!(
            outcome,
            Outcome::Executed | Outcome::Cached | Outcome::Fetched
        );
        match record {
            Some(rec) if ok => match self.runner.adopt(job.id, rec, outcome == Outcome::Executed) {
                Ok(()) => outcome,
                Err(e) => Outcome::Failed {
                    message: format!("its record could not be taken in: {e}"),
                    log: None,
                    log_tail: String::new(),
                },
            },
            None if ok => Outcome::Failed {
                message: "the job reported success but left no record".into(),
                log: None,
                log_tail: String::new(),
            },
            _ => outcome,
        }
    }
}

/// What [`prefetch`] did.
#[derive(Default)]
struct Prefetched {
    /// Instances fetched, now fresh in the plan.
    fetched: Vec<String>,
    transfer: crate::store::Transfer,
    /// Instances whose fetch failed, with why.
    failed: std::collections::HashMap<usize, String>,
}

/// Fetches every instance the plan found in the remote cache, many objects
/// at a time, and makes them fresh in the plan (their state recorded as a
/// cache hit's is). One that cannot be fetched stays stale and runs here;
/// so do the fetched instances downstream of it, whose keys assumed the
/// remote's bytes (they are found in the store at run time if the rerun
/// reproduces them).
fn prefetch(
    p: &Pipeline,
    g: &Graph,
    store: &Store,
    plan: &mut Plan,
    events: &dyn Events,
) -> Prefetched {
    let mut out = Prefetched::default();
    let Some(remote) = store.remote() else {
        return out;
    };
    let wanted: Vec<usize> = (0..p.instances.len())
        .filter(|&id| plan.remote[id].is_some() && plan.is_stale(id))
        .collect();
    let recs: Vec<&crate::store::Record> = wanted
        .iter()
        .map(|&id| plan.remote[id].as_deref().unwrap())
        .collect();
    if !recs.is_empty() {
        let bytes = recs
            .iter()
            .flat_map(|r| r.outputs.values())
            .map(|o| o.size)
            .sum();
        events.fetching(recs.len(), bytes, remote.url());
    }
    let results: Vec<(usize, Result<crate::store::Transfer>)> = wanted
        .iter()
        .copied()
        .zip(remote.fetch_all(&recs, store))
        .collect();
    let mut ok = vec![false; p.instances.len()];
    for (id, r) in results {
        match r {
            Ok(t) => {
                out.transfer.add(t);
                ok[id] = true;
            }
            Err(e) => {
                out.failed.insert(id, e.to_string());
            }
        }
    }
    // In dependency order: fetched, and no upstream left to run here.
    let mut runs_here = vec![false; p.instances.len()];
    for &id in g.order() {
        let inst = &p.instances[id];
        let blocked = inst.deps.iter().copied().find(|&d| runs_here[d]);
        if !ok[id] || blocked.is_some() {
            runs_here[id] = plan.is_stale(id);
            if let (true, Some(d)) = (ok[id], blocked) {
                plan.status[id] = plan::Status::Stale(vec![plan::Reason::UpstreamPending {
                    instance: p.instances[d].name.clone(),
                }]);
            }
            plan.remote[id] = None;
            continue;
        }
        let Some(rec) = plan.remote[id].take() else {
            continue;
        };
        // The record may be another pipeline's with the same key; the
        // state is this instance's.
        let mut rec = *rec;
        rec.pipeline.clone_from(&p.name);
        rec.stage.clone_from(&inst.stage_name);
        rec.instance.clone_from(&inst.name);
        if store.put_state(&rec).is_ok() {
            plan.status[id] = plan::Status::Fresh(Box::new(rec));
            out.fetched.push(inst.name.clone());
        } else {
            runs_here[id] = true;
        }
    }
    out
}
