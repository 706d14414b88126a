//! The Slurm executor: each stale instance becomes a batch job, a matrix
//! stage one job array, chained by `--dependency` so that Slurm, not this
//! process, decides when each may start. The job runs the same `podium`
//! binary on its node ([`node_main`]), which executes that one instance
//! through the same [`Runner`](super::Runner) against the shared store, and
//! leaves its record in a file of its own; the submitting process polls
//! Slurm with back-off and adopts each record into the store's log, being
//! the only process that appends to it.
//!
//! A run's files live in `<store>/slurm/<run>/`:
//!
//! ```text
//! spec.json          what the jobs need: manifest text, overrides, paths, upstream records
//! jobs.json          what was submitted (job ids, tasks, instances), for Ctrl-C and reattaching
//! scripts/<n>.sh     one batch script per submission
//! logs/…             Slurm's output of each job (stdout and stderr)
//! done/<id>.json     written last by a job (temporary file, fsync, rename): outcome and record
//! progress/<id>.json how far a running job has got
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Events, Executor, Job, Outcome, Work};
use crate::error::{Error, IoContext, Result};
use crate::store::{self, Record};

/// `[slurm]` in the config file (`.podium/config.toml`): where and how jobs
/// are submitted. The manifest says what an instance needs (`threads`,
/// `gpu`, `mem`, `time`); this says the cluster's names for it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmConfig {
    /// The `podium` binary the jobs run [default: this one, which must then
    /// be on a path the nodes see].
    #[serde(default)]
    pub podium: Option<PathBuf>,
    /// `--partition`, `--account`, `--qos`, `--constraint` of every job.
    #[serde(default)]
    pub partition: Option<String>,
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub qos: Option<String>,
    #[serde(default)]
    pub constraint: Option<String>,
    /// More `sbatch` arguments for every job (`["--exclusive"]`).
    #[serde(default)]
    pub sbatch: Vec<String>,
    /// Per stage, in place of the settings above: `[slurm.stages.train]`.
    #[serde(default)]
    pub stages: BTreeMap<String, StageConfig>,
    /// Seconds between polls of `squeue` at first and after every change;
    /// each poll that sees no change waits 1.5 times longer, up to `poll_max`.
    #[serde(default = "default_poll")]
    pub poll: f64,
    #[serde(default = "default_poll_max")]
    pub poll_max: f64,
    /// How often a job that a node failure, a preemption or a failed boot
    /// ended is submitted again.
    #[serde(default = "default_resubmit")]
    pub resubmit: u32,
    /// Seconds a Slurm command (`sbatch`, `squeue`, …) may take before the
    /// controller counts as not answering.
    #[serde(default = "default_timeout")]
    pub timeout: f64,
}

fn default_poll() -> f64 {
    1.0
}
fn default_poll_max() -> f64 {
    30.0
}
fn default_resubmit() -> u32 {
    3
}
fn default_timeout() -> f64 {
    60.0
}

impl Default for SlurmConfig {
    fn default() -> Self {
        SlurmConfig {
            podium: None,
            partition: None,
            account: None,
            qos: None,
            constraint: None,
            sbatch: Vec::new(),
            stages: BTreeMap::new(),
            poll: default_poll(),
            poll_max: default_poll_max(),
            resubmit: default_resubmit(),
            timeout: default_timeout(),
        }
    }
}

/// `[slurm.stages.STAGE]`: what differs for one stage (a GPU partition for
/// `train`); unset keys fall back to `[slurm]`'s, `sbatch` adds to them.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    #[serde(default)]
    pub partition: Option<String>,
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub qos: Option<String>,
    #[serde(default)]
    pub constraint: Option<String>,
    #[serde(default)]
    pub sbatch: Vec<String>,
}

/// What a job needs to run its instance on a node: written once, before
/// the first submission, to `spec.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    pub pipeline: String,
    /// The manifest's path (absolute), and its text as submitted: a job
    /// runs what was submitted even if the file is edited meanwhile.
    pub manifest: PathBuf,
    pub text: String,
    pub overrides: Vec<String>,
    pub targets: Vec<String>,
    pub force: Vec<String>,
    /// The store and `out/` (absolute).
    pub store: PathBuf,
    pub out_root: PathBuf,
    /// Records of the instances the jobs read that were fresh before the run.
    #[serde(default)]
    pub upstream: BTreeMap<usize, Record>,
}

impl Spec {
    /// What makes two runs the same run: a later `podium run` with the same
    /// fingerprint waits for this one's jobs instead of submitting again.
    pub fn fingerprint(&self) -> String {
        let mut h = blake3::Hasher::new();
        for part in [
            self.manifest.display().to_string(),
            self.text.clone(),
            self.overrides.join("\n"),
            self.targets.join("\n"),
            self.force.join("\n"),
            self.out_root.display().to_string(),
        ] {
            h.update(part.as_bytes());
            h.update(&[0]);
        }
        h.finalize().to_hex().to_string()
    }
}

/// One submission: a job, or a job array of one stage.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Submission {
    /// Slurm's job id.
    id: String,
    stage: String,
    /// Instances by array task (`None`: not an array).
    tasks: Vec<(Option<usize>, usize)>,
    /// Their names, in the same order.
    #[serde(default)]
    names: Vec<String>,
    /// Its log, `%a` standing for the task.
    log: String,
}

/// `jobs.json`: the submissions of a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Ledger {
    pipeline: String,
    fingerprint: String,
    /// Seconds since the Unix epoch.
    submitted_at: u64,
    detached: bool,
    submissions: Vec<Submission>,
}

/// A job as Slurm names it: `123`, or `123_4` for task 4 of array 123.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct JobRef {
    id: String,
    task: Option<usize>,
}

impl std::fmt::Display for JobRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.task {
            Some(t) => write!(f, "{}_{t}", self.id),
            None => write!(f, "{}", self.id),
        }
    }
}

/// The Slurm executor; see the module's documentation.
pub struct SlurmExecutor {
    pub config: SlurmConfig,
    /// What the jobs need, but for `upstream` (filled in at submission).
    pub spec: Spec,
    /// `<store>/slurm/<run>/`.
    pub run_dir: PathBuf,
    /// Go on with independent jobs after a failure (else cancel the rest).
    pub keep_going: bool,
    /// Submit and return; `podium run` again waits for the jobs.
    pub detach: bool,
    /// The podium binary the jobs run.
    podium: PathBuf,
    /// An earlier run of the same configuration whose jobs are still queued
    /// or running: waited for instead of submitting again.
    attach: Option<(PathBuf, Ledger)>,
}

impl SlurmExecutor {
    /// Checks that Slurm's commands are here and its controller answers,
    /// and finds an earlier run of the same configuration to reattach to.
    pub fn new(
        config: SlurmConfig,
        spec: Spec,
        keep_going: bool,
        detach: bool,
    ) -> Result<SlurmExecutor> {
        let timeout = Duration::from_secs_f64(config.timeout.max(1.0));
        for bin in ["sbatch", "squeue", "scancel"] {
            if which(bin).is_none() {
                return Err(Error::Usage(format!(
                    "--executor slurm: `{bin}` is not on PATH: run podium on a machine with Slurm's client commands (a login node), or use --executor local"
                )));
            }
        }
        // A job id no cluster has: the controller answers "Invalid job id".
        if let Err(e) = slurm_cmd("squeue", &["-h", "-o", "%i", "-j", "99999999"], timeout)
            && !e.contains("Invalid job id")
        {
            return Err(Error::Usage(format!(
                "--executor slurm: the Slurm controller does not answer: {e}"
            )));
        }
        let podium = match &config.podium {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(|e| {
                Error::Usage(format!(
                    "which podium binary runs the jobs: {e}; set [slurm] podium"
                ))
            })?,
        };
        let root = spec.store.join("slurm");
        let fingerprint = spec.fingerprint();
        let attach = active_runs(&root, &spec.pipeline, timeout)
            .into_iter()
            .find(|(_, l)| l.fingerprint == fingerprint);
        let run_dir = match &attach {
            Some((dir, _)) => dir.clone(),
            None => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                root.join(format!(
                    "{}-{now}-{}",
                    store::pipeline_dir_name(&spec.pipeline),
                    std::process::id()
                ))
            }
        };
        Ok(SlurmExecutor {
            config,
            spec,
            run_dir,
            keep_going,
            detach,
            podium,
            attach,
        })
    }

    /// The earlier run this one waits for, if any (its directory).
    pub fn attached_to(&self) -> Option<&Path> {
        self.attach.as_ref().map(|(d, _)| d.as_path())
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.config.timeout.max(1.0))
    }
}

/// Where a command is on PATH.
fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// Runs a Slurm command with a time limit; its stdout, or an error with its
/// stderr.
fn slurm_cmd(bin: &str, args: &[&str], timeout: Duration) -> std::result::Result<String, String> {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{bin}: {e}"))?;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let ereader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`{bin}` gave no answer in {} s (is slurmctld up? [slurm] timeout sets how long to wait)",
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("{bin}: {e}")),
        }
    };
    let stdout = reader.join().unwrap_or_default();
    let stderr = ereader.join().unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        let msg = stderr.trim();
        Err(format!(
            "`{bin} {}` failed ({status}){}",
            args.join(" "),
            if msg.is_empty() {
                String::new()
            } else {
                format!(": {msg}")
            }
        ))
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).at(d)?;
    }
    let bytes = serde_json::to_vec_pretty(v).expect("serializable");
    store::atomic_write(path, &bytes).at(path)
}

/// The runs under `root` of `pipeline` that still have jobs queued or
/// running, with their ledgers.
fn active_runs(root: &Path, pipeline: &str, timeout: Duration) -> Vec<(PathBuf, Ledger)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let dir = e.path();
        let Some(l) = read_json::<Ledger>(&dir.join("jobs.json")) else {
            continue;
        };
        if l.pipeline != pipeline || l.submissions.is_empty() {
            continue;
        }
        let ids: Vec<&str> = l.submissions.iter().map(|s| s.id.as_str()).collect();
        let Ok(states) = squeue(&ids, timeout) else {
            continue;
        };
        let pending = l.submissions.iter().any(|s| {
            s.tasks.iter().any(|&(t, inst)| {
                let r = JobRef {
                    id: s.id.clone(),
                    task: t,
                };
                !dir.join("done").join(format!("{inst}.json")).exists()
                    && states
                        .get(&r.to_string())
                        .is_some_and(|(st, _)| !is_terminal(st))
            })
        });
        if pending {
            out.push((dir, l));
        }
    }
    out
}

/// `squeue` for these jobs (array tasks each on a line), finished ones
/// included while Slurm remembers them: `123_4` → (state, reason).
fn squeue(
    ids: &[&str],
    timeout: Duration,
) -> std::result::Result<HashMap<String, (String, String)>, String> {
    let mut out = HashMap::new();
    // Long lists in pieces, to keep command lines short.
    for chunk in ids.chunks(200) {
        let list = chunk.join(",");
        let text = match slurm_cmd(
            "squeue",
            &["-h", "-r", "-t", "all", "-o", "%i|%T|%r", "-j", &list],
            timeout,
        ) {
            Ok(t) => t,
            // Jobs Slurm has forgotten (after MinJobAge) make squeue fail
            // when none of the list is left.
            Err(e) if e.contains("Invalid job id") => String::new(),
            Err(e) => return Err(e),
        };
        out.extend(parse_squeue(&text));
    }
    Ok(out)
}

fn parse_squeue(text: &str) -> HashMap<String, (String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.trim().splitn(3, '|');
            let id = parts.next()?.trim().to_string();
            let state = parts.next()?.trim().to_string();
            let reason = parts.next().unwrap_or("").trim().to_string();
            (!id.is_empty()).then_some((id, (state, reason)))
        })
        .collect()
}

/// The final states of jobs Slurm no longer lists in `squeue`: `sacct`,
/// or, where accounting is off, `sacct -c` (the job completion log).
fn sacct(ids: &[&str], timeout: Duration) -> HashMap<String, (String, String)> {
    let list = ids.join(",");
    let fmt = ["-n", "-P", "-X", "-o", "JobID,State,ExitCode", "-j", &list];
    let text = slurm_cmd("sacct", &fmt, timeout).or_else(|_| {
        let mut args = vec!["-c"];
        args.extend(fmt);
        slurm_cmd("sacct", &args, timeout)
    });
    let mut out = HashMap::new();
    for l in text.unwrap_or_default().lines() {
        let p: Vec<&str> = l.split('|').collect();
        if p.len() >= 2 {
            // `CANCELLED by 0` → `CANCELLED`.
            let state = p[1].split_whitespace().next().unwrap_or("").to_string();
            out.insert(
                p[0].trim().to_string(),
                (state, p.get(2).unwrap_or(&"").to_string()),
            );
        }
    }
    out
}

fn is_terminal(state: &str) -> bool {
    !matches!(
        state,
        "PENDING"
            | "RUNNING"
            | "CONFIGURING"
            | "COMPLETING"
            | "REQUEUED"
            | "REQUEUE_FED"
            | "REQUEUE_HOLD"
            | "RESIZING"
            | "SUSPENDED"
            | "STAGE_OUT"
            | "SIGNALING"
            | "RESV_DEL_HOLD"
            | "STOPPED"
    )
}

/// Whether a job that ended in `state` without a result is worth
/// submitting again: its node failed or it was preempted, not its fault.
fn resubmittable(state: &str) -> bool {
    matches!(state, "NODE_FAIL" | "PREEMPTED" | "BOOT_FAIL")
}

/// `--time` as Slurm writes it: `D-HH:MM:SS`, whole minutes rounded up.
pub fn slurm_time(secs: u64) -> String {
    let mins = secs.div_ceil(60);
    let (d, h, m) = (mins / 1440, (mins / 60) % 24, mins % 60);
    format!("{d}-{h:02}:{m:02}:00")
}

/// Why a job that left no result ended, and what to do about it.
fn explain(state: &str, job: &Job, log: &Path) -> String {
    let r = &job.resources;
    match state {
        "TIMEOUT" => format!(
            "Slurm killed it at its time limit ({}): raise `resources.time` of stage `{}`",
            r.time_s
                .map(slurm_time)
                .unwrap_or_else(|| "the partition's default".into()),
            job.stage
        ),
        "OUT_OF_MEMORY" => format!(
            "Slurm killed it for using more than its memory ({}): raise `resources.mem` of stage `{}`",
            r.mem_mib
                .map(|m| format!("--mem={m}M"))
                .unwrap_or_else(|| "the partition's default".into()),
            job.stage
        ),
        "CANCELLED" => {
            "the job was cancelled outside this run (scancel, or an administrator)".into()
        }
        "DEADLINE" => "the job reached its deadline before it could run".into(),
        s if resubmittable(s) => format!("the job ended {s} (not its own doing)"),
        "" => format!(
            "the job left Slurm's queue without a result (see its log: {})",
            log.display()
        ),
        s => format!(
            "the job ended {s} without a result (see its log: {})",
            log.display()
        ),
    }
}

/// What happens to one instance during the run.
struct Track {
    at: Option<JobRef>,
    /// The refs of its upstream jobs it was submitted against.
    deps_at: Vec<JobRef>,
    log: PathBuf,
    started: bool,
    outcome: Option<Outcome>,
    resubmits: u32,
    /// When Slurm first said it ended with no result in sight (a result
    /// file may still be on its way through a shared filesystem).
    ended: Option<(Instant, String)>,
    progress: Option<SystemTime>,
    /// When a result file saying it failed was first seen (Slurm's state
    /// is awaited a few seconds, to say why).
    done_seen: Option<Instant>,
    /// The restart count of a failed result Slurm's requeue made stale.
    stale_done: Option<u32>,
    t0: Instant,
}

impl Executor for SlurmExecutor {
    fn execute(&self, jobs: &[Job], work: &dyn Work, events: &dyn Events) -> Vec<(usize, Outcome)> {
        match self.execute_inner(jobs, work, events) {
            Ok(v) => v,
            Err(e) => jobs
                .iter()
                .map(|j| {
                    (
                        j.id,
                        Outcome::Failed {
                            message: e.to_string(),
                            log: None,
                            log_tail: String::new(),
                        },
                    )
                })
                .collect(),
        }
    }
}

impl SlurmExecutor {
    fn execute_inner(
        &self,
        jobs: &[Job],
        work: &dyn Work,
        events: &dyn Events,
    ) -> Result<Vec<(usize, Outcome)>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let timeout = self.timeout();
        let index: HashMap<usize, usize> =
            jobs.iter().enumerate().map(|(i, j)| (j.id, i)).collect();
        let mut tracks: Vec<Track> = jobs
            .iter()
            .enumerate()
            .map(|_| Track {
                at: None,
                deps_at: Vec::new(),
                log: PathBuf::new(),
                started: false,
                outcome: None,
                resubmits: 0,
                ended: None,
                progress: None,
                done_seen: None,
                stale_done: None,
                t0: Instant::now(),
            })
            .collect();
        let mut ledger = match &self.attach {
            Some((_, l)) => l.clone(),
            None => Ledger {
                pipeline: self.spec.pipeline.clone(),
                fingerprint: self.spec.fingerprint(),
                submitted_at: now_s(),
                detached: self.detach,
                submissions: Vec::new(),
            },
        };
        std::fs::create_dir_all(self.run_dir.join("done")).at(&self.run_dir)?;
        // The jobs of the earlier run this one reattaches to.
        for s in &ledger.submissions {
            for &(task, inst) in &s.tasks {
                if let Some(&i) = index.get(&inst) {
                    tracks[i].at = Some(JobRef {
                        id: s.id.clone(),
                        task,
                    });
                    tracks[i].log = log_path(&s.log, &s.id, task);
                }
            }
        }
        let to_submit: Vec<usize> = (0..jobs.len())
            .filter(|&i| tracks[i].at.is_none())
            .collect();
        if !to_submit.is_empty() {
            let mut spec = self.spec.clone();
            // What the jobs read that is not made by this run.
            for j in jobs {
                for d in &j.deps {
                    if !index.contains_key(d)
                        && let Some(r) = work.record(*d)
                    {
                        spec.upstream.insert(*d, r);
                    }
                }
            }
            if self.attach.is_some() {
                // Keep the upstream records of the earlier submission too.
                if let Some(old) = read_json::<Spec>(&self.run_dir.join("spec.json")) {
                    for (k, v) in old.upstream {
                        spec.upstream.entry(k).or_insert(v);
                    }
                }
            }
            write_json(&self.run_dir.join("spec.json"), &spec)?;
            self.submit(
                &to_submit,
                jobs,
                &index,
                &mut tracks,
                &mut ledger,
                events,
                false,
            )?;
        }
        if ledger.submissions.is_empty() {
            let _ = store::remove_all(&self.run_dir);
        }
        // What a failed submission left unsubmitted does not run.
        for (j, t) in jobs.iter().zip(tracks.iter_mut()) {
            if t.at.is_none() && t.outcome.is_none() {
                let o = Outcome::Skipped {
                    because: "not submitted after a failed submission (use --keep-going to submit the rest)".into(),
                };
                events.finished(j, &o, Duration::ZERO);
                t.outcome = Some(o);
            }
        }
        if self.detach {
            return Ok(jobs
                .iter()
                .zip(&tracks)
                .map(|(j, t)| {
                    let o = t.outcome.clone().unwrap_or_else(|| Outcome::Submitted {
                        job: t.at.as_ref().map(|r| r.to_string()).unwrap_or_default(),
                    });
                    (j.id, o)
                })
                .collect());
        }
        self.wait(
            jobs,
            &index,
            &mut tracks,
            &mut ledger,
            work,
            events,
            timeout,
        )?;
        // Every result is in the store now; what failed keeps its run's
        // directory (its jobs' logs) until a later run finds it ended.
        if tracks.iter().all(|t| t.outcome.as_ref().is_some_and(ok)) {
            let _ = store::remove_all(&self.run_dir);
        }
        Ok(jobs
            .iter()
            .zip(tracks)
            .map(|(j, t)| (j.id, t.outcome.unwrap_or(Outcome::Cancelled)))
            .collect())
    }

    /// Submits `which` (indices into `jobs`): a matrix stage's instances as
    /// one job array, each job after the jobs it reads (`aftercorr` where
    /// task i reads task i of one other array, `afterok` otherwise).
    /// `single`: one job per instance (resubmissions).
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &self,
        which: &[usize],
        jobs: &[Job],
        index: &HashMap<usize, usize>,
        tracks: &mut [Track],
        ledger: &mut Ledger,
        events: &dyn Events,
        single: bool,
    ) -> Result<()> {
        let groups = group(which, jobs, index, single);
        let scripts = self.run_dir.join("scripts");
        std::fs::create_dir_all(&scripts).at(&scripts)?;
        std::fs::create_dir_all(self.run_dir.join("logs")).at(&self.run_dir)?;
        for g in groups {
            if crate::cancel::is_cancelled() {
                break;
            }
            // A job whose upstream failed to submit or run is not submitted.
            let blocked = g.iter().find_map(|&i| {
                jobs[i].deps.iter().find_map(|d| {
                    let di = *index.get(d)?;
                    match &tracks[di].outcome {
                        Some(o) if !ok(o) => Some(jobs[di].name.clone()),
                        _ => None,
                    }
                })
            });
            if let Some(up) = blocked {
                for &i in &g {
                    let o = Outcome::Skipped {
                        because: format!("{up} did not finish"),
                    };
                    events.finished(&jobs[i], &o, Duration::ZERO);
                    tracks[i].outcome = Some(o);
                }
                continue;
            }
            let first = &jobs[g[0]];
            let array = !single
                && (g.len() > 1 || jobs_in_stage(jobs, &first.stage) > 1 || first.index > 0);
            let n = ledger.submissions.len();
            let stage_file = store::sanitize(&first.stage, "-_=.,");
            let log = if array {
                self.run_dir
                    .join("logs")
                    .join(format!("{stage_file}-%A_%a.log"))
            } else {
                self.run_dir
                    .join("logs")
                    .join(format!("{}-%j.log", store::sanitize(&first.name, "-_=.,")))
            };
            let map: Vec<String> = g
                .iter()
                .map(|&i| format!("{}={}", if array { jobs[i].index } else { 0 }, jobs[i].id))
                .collect();
            let script = scripts.join(format!("{n}.sh"));
            let text = format!(
                "#!/bin/sh\n# podium: pipeline {}, stage {}: {}\n\
                 export PODIUM_SLURM_JOB=\"${{SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}}${{SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID}}\"\n\
                 exec {} slurm-job {} --map {}\n",
                self.spec.pipeline,
                first.stage,
                g.iter()
                    .map(|&i| jobs[i].name.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                shell_quote(&self.podium.display().to_string()),
                shell_quote(&self.run_dir.display().to_string()),
                map.join(","),
            );
            store::atomic_write(&script, text.as_bytes()).at(&script)?;
            let mut args: Vec<String> = vec![
                "--parsable".into(),
                format!(
                    "--job-name=podium:{}:{}",
                    self.spec.pipeline,
                    if array { &first.stage } else { &first.name }
                ),
                format!("--output={}", log.display()),
                "--kill-on-invalid-dep=yes".into(),
            ];
            if array {
                let tasks: Vec<String> = g.iter().map(|&i| jobs[i].index.to_string()).collect();
                args.push(format!("--array={}", tasks.join(",")));
            }
            args.extend(self.resource_args(first));
            let deps = dependency(&g, jobs, index, tracks, array);
            if !deps.is_empty() {
                args.push(format!("--dependency={deps}"));
            }
            args.push(script.display().to_string());
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            match slurm_cmd("sbatch", &argv, self.timeout()) {
                Ok(out) => {
                    // `--parsable`: `id` or `id;cluster`.
                    let id = out.trim().split(';').next().unwrap_or("").to_string();
                    let sub = Submission {
                        id: id.clone(),
                        stage: first.stage.clone(),
                        tasks: g
                            .iter()
                            .map(|&i| (array.then_some(jobs[i].index), jobs[i].id))
                            .collect(),
                        names: g.iter().map(|&i| jobs[i].name.clone()).collect(),
                        log: log.display().to_string(),
                    };
                    for &i in &g {
                        let r = JobRef {
                            id: id.clone(),
                            task: array.then_some(jobs[i].index),
                        };
                        tracks[i].log = log_path(&sub.log, &id, r.task);
                        tracks[i].deps_at = upstream_refs(i, jobs, index, tracks);
                        tracks[i].at = Some(r);
                        tracks[i].ended = None;
                        tracks[i].started = false;
                    }
                    ledger.submissions.push(sub);
                    write_json(&self.run_dir.join("jobs.json"), ledger)?;
                }
                Err(e) => {
                    for &i in &g {
                        let o = Outcome::Failed {
                            message: format!("not submitted: {e}"),
                            log: None,
                            log_tail: String::new(),
                        };
                        events.finished(&jobs[i], &o, Duration::ZERO);
                        tracks[i].outcome = Some(o);
                    }
                    if !self.keep_going {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// `sbatch` arguments for a stage's resources and cluster settings.
    fn resource_args(&self, job: &Job) -> Vec<String> {
        let r = &job.resources;
        let c = &self.config;
        let st = c.stages.get(&job.stage).cloned().unwrap_or_default();
        let mut a = vec![format!("--cpus-per-task={}", r.threads.max(1))];
        if r.gpu > 0 {
            a.push(format!("--gres=gpu:{}", r.gpu));
        }
        if let Some(m) = r.mem_mib {
            a.push(format!("--mem={m}M"));
        }
        if let Some(t) = r.time_s {
            a.push(format!("--time={}", slurm_time(t)));
        }
        for (flag, v, d) in [
            ("partition", &st.partition, &c.partition),
            ("account", &st.account, &c.account),
            ("qos", &st.qos, &c.qos),
            ("constraint", &st.constraint, &c.constraint),
        ] {
            if let Some(v) = v.as_ref().or(d.as_ref()) {
                a.push(format!("--{flag}={v}"));
            }
        }
        a.extend(c.sbatch.iter().cloned());
        a.extend(st.sbatch);
        a
    }

    /// Polls Slurm until every job has ended, adopting each result as it
    /// arrives; cancels the jobs on Ctrl-C (and after a failure unless
    /// `keep_going`).
    #[allow(clippy::too_many_arguments)]
    fn wait(
        &self,
        jobs: &[Job],
        index: &HashMap<usize, usize>,
        tracks: &mut [Track],
        ledger: &mut Ledger,
        work: &dyn Work,
        events: &dyn Events,
        timeout: Duration,
    ) -> Result<()> {
        let min = Duration::from_secs_f64(self.config.poll.max(0.05));
        let max = Duration::from_secs_f64(self.config.poll_max.max(self.config.poll.max(0.05)));
        let mut interval = min;
        let mut squeue_errors = 0;
        let mut stopping = false;
        loop {
            let open: Vec<usize> = (0..jobs.len())
                .filter(|&i| tracks[i].outcome.is_none())
                .collect();
            if open.is_empty() {
                break;
            }
            if crate::cancel::is_cancelled() || stopping {
                self.cancel(&open, tracks);
                for &i in &open {
                    let o = if stopping {
                        Outcome::Skipped {
                            because: "the run stopped after a failure (use --keep-going to go on)"
                                .into(),
                        }
                    } else {
                        Outcome::Cancelled
                    };
                    events.finished(&jobs[i], &o, tracks[i].t0.elapsed());
                    tracks[i].outcome = Some(o);
                }
                break;
            }
            let mut changed = false;
            // Results first: a job's result file is its word, whatever
            // Slurm says yet.
            for &i in &open {
                let done = self
                    .run_dir
                    .join("done")
                    .join(format!("{}.json", jobs[i].id));
                if let Some(d) = read_json::<Done>(&done) {
                    // The result of a run Slurm has since requeued is not
                    // the job's last word.
                    if tracks[i].stale_done.is_some_and(|r| d.restart <= r) {
                        continue;
                    }
                    let mut outcome = d.outcome;
                    if !ok(&outcome) {
                        // A job Slurm stopped (its time limit, its memory,
                        // a node going down) failed or stopped on its node
                        // because of that: Slurm's word says which.
                        let r = tracks[i].at.clone().unwrap_or(JobRef {
                            id: String::new(),
                            task: None,
                        });
                        let first = *tracks[i].done_seen.get_or_insert_with(Instant::now);
                        let st = squeue(&[r.id.as_str()], timeout)
                            .ok()
                            .and_then(|m| m.get(&r.to_string()).map(|(s, _)| s.clone()))
                            .unwrap_or_default();
                        let requeued = matches!(
                            st.as_str(),
                            "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED"
                        ) || (st == "RUNNING"
                            && first.elapsed() >= Duration::from_secs(10));
                        if requeued {
                            // Preempted or its node lost, and requeued by
                            // Slurm itself: it runs again, under the same id.
                            tracks[i].stale_done = Some(d.restart);
                            tracks[i].done_seen = None;
                            continue;
                        }
                        if !is_terminal(&st) && first.elapsed() < Duration::from_secs(10) {
                            continue;
                        }
                        if resubmittable(&st) {
                            tracks[i].ended = Some((Instant::now() - Duration::from_secs(3), st));
                            tracks[i].done_seen = None;
                            let _ = std::fs::remove_file(&done);
                            continue;
                        }
                        if matches!(st.as_str(), "TIMEOUT" | "OUT_OF_MEMORY" | "DEADLINE")
                            || (outcome == Outcome::Cancelled && is_terminal(&st))
                        {
                            outcome = Outcome::Failed {
                                message: explain(&st, &jobs[i], &tracks[i].log),
                                log: None,
                                log_tail: String::new(),
                            };
                        }
                    }
                    if !tracks[i].started {
                        events.started(&jobs[i]);
                    }
                    let mut o = work.adopt(&jobs[i], outcome, d.record);
                    if let Outcome::Failed { log, log_tail, .. } = &mut o
                        && log.is_none()
                    {
                        *log = Some(tracks[i].log.clone());
                        *log_tail = file_tail(&tracks[i].log, 20);
                    }
                    self.finish(i, o, jobs, tracks, events, &mut stopping);
                    changed = true;
                }
            }
            let live: Vec<usize> = (0..jobs.len())
                .filter(|&i| tracks[i].outcome.is_none() && tracks[i].at.is_some())
                .collect();
            let ids: BTreeSet<&str> = live
                .iter()
                .filter_map(|&i| tracks[i].at.as_ref().map(|r| r.id.as_str()))
                .collect();
            let ids: Vec<&str> = ids.into_iter().collect();
            let states = match squeue(&ids, timeout) {
                Ok(s) => {
                    squeue_errors = 0;
                    s
                }
                Err(e) => {
                    squeue_errors += 1;
                    if squeue_errors == 1 || squeue_errors % 10 == 0 {
                        eprintln!("warning: {e} (polling again; the jobs go on)");
                    }
                    HashMap::new()
                }
            };
            let mut missing = Vec::new();
            let mut resubmit = Vec::new();
            for &i in &live {
                let r = tracks[i].at.clone().unwrap();
                match states.get(&r.to_string()) {
                    Some((st, _)) if st == "RUNNING" || st == "COMPLETING" => {
                        if !tracks[i].started {
                            tracks[i].started = true;
                            tracks[i].t0 = Instant::now();
                            events.started(&jobs[i]);
                            changed = true;
                        }
                        self.progress(i, jobs, tracks, events);
                    }
                    Some((st, _)) if is_terminal(st) && tracks[i].ended.is_none() => {
                        tracks[i].ended = Some((Instant::now(), st.clone()));
                    }
                    Some(_) => {}
                    None if squeue_errors == 0 => missing.push(i),
                    None => {}
                }
            }
            if !missing.is_empty() {
                let refs: Vec<String> = missing
                    .iter()
                    .map(|&i| tracks[i].at.as_ref().unwrap().to_string())
                    .collect();
                let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
                let acct = sacct(&refs, timeout);
                for &i in &missing {
                    let r = tracks[i].at.as_ref().unwrap().to_string();
                    let st = acct.get(&r).map(|(s, _)| s.clone()).unwrap_or_default();
                    if tracks[i].ended.is_none() {
                        tracks[i].ended = Some((Instant::now(), st));
                    }
                }
            }
            // Ended with no result: give a shared filesystem a few seconds
            // to show the result file, then say why.
            for &i in &live {
                let Some((when, st)) = tracks[i].ended.clone() else {
                    continue;
                };
                if tracks[i].outcome.is_some()
                    || tracks[i].done_seen.is_some()
                    || when.elapsed() < Duration::from_secs(3)
                {
                    continue;
                }
                let broken_dep = st == "CANCELLED"
                    && tracks[i]
                        .deps_at
                        .iter()
                        .any(|r| !upstream_refs(i, jobs, index, tracks).contains(r));
                if (resubmittable(&st) || broken_dep) && tracks[i].resubmits < self.config.resubmit
                {
                    tracks[i].resubmits += 1;
                    if !broken_dep {
                        eprintln!(
                            "{}: job {} ended {st}; submitting it again ({} of {})",
                            jobs[i].name,
                            tracks[i].at.as_ref().unwrap(),
                            tracks[i].resubmits,
                            self.config.resubmit
                        );
                    }
                    resubmit.push(i);
                    continue;
                }
                let mut message = explain(&st, &jobs[i], &tracks[i].log);
                if resubmittable(&st) {
                    message.push_str(&format!("; submitted {} times", tracks[i].resubmits + 1));
                }
                let o = Outcome::Failed {
                    message,
                    log: Some(tracks[i].log.clone()),
                    log_tail: file_tail(&tracks[i].log, 20),
                };
                self.finish(i, o, jobs, tracks, events, &mut stopping);
                changed = true;
            }
            if !resubmit.is_empty() {
                // Dependents waiting on the old job would be cancelled by
                // Slurm with it; they are submitted again when that shows.
                self.submit(&resubmit, jobs, index, tracks, ledger, events, true)?;
                changed = true;
            }
            if changed {
                interval = min;
                continue;
            }
            sleep_unless_cancelled(interval);
            interval = (interval.mul_f64(1.5)).min(max);
        }
        self.clean_tmp(ledger);
        Ok(())
    }

    /// Records an instance's outcome; after a failure, its dependents are
    /// skipped (Slurm cancels their jobs through `--kill-on-invalid-dep`).
    fn finish(
        &self,
        i: usize,
        o: Outcome,
        jobs: &[Job],
        tracks: &mut [Track],
        events: &dyn Events,
        stopping: &mut bool,
    ) {
        let failed = !ok(&o);
        events.finished(&jobs[i], &o, tracks[i].t0.elapsed());
        tracks[i].outcome = Some(o);
        if !failed {
            return;
        }
        if !self.keep_going {
            *stopping = true;
        }
        let mut stack = vec![i];
        while let Some(k) = stack.pop() {
            for (d, j) in jobs.iter().enumerate() {
                if tracks[d].outcome.is_none() && j.deps.contains(&jobs[k].id) {
                    let o = Outcome::Skipped {
                        because: format!("{} did not finish", jobs[i].name),
                    };
                    events.finished(j, &o, Duration::ZERO);
                    tracks[d].outcome = Some(o);
                    stack.push(d);
                }
            }
        }
    }

    /// Passes on how far a running job has got, when its progress file changed.
    fn progress(&self, i: usize, jobs: &[Job], tracks: &mut [Track], events: &dyn Events) {
        let path = self
            .run_dir
            .join("progress")
            .join(format!("{}.json", jobs[i].id));
        let Ok(m) = std::fs::metadata(&path).and_then(|m| m.modified()) else {
            return;
        };
        if tracks[i].progress == Some(m) {
            return;
        }
        tracks[i].progress = Some(m);
        if let Some(p) = read_json::<ProgressFile>(&path) {
            events.progress(
                &jobs[i],
                &crate::progress::Step {
                    done: p.done,
                    total: p.total,
                    message: p.message,
                },
            );
        }
    }

    /// `scancel` of this run's jobs that have not ended, and only those.
    fn cancel(&self, open: &[usize], tracks: &[Track]) {
        let refs: BTreeSet<String> = open
            .iter()
            .filter_map(|&i| tracks[i].at.as_ref().map(|r| r.to_string()))
            .collect();
        if refs.is_empty() {
            return;
        }
        let args: Vec<&str> = refs.iter().map(String::as_str).collect();
        match slurm_cmd("scancel", &args, self.timeout()) {
            Ok(_) => eprintln!("cancelled {} Slurm job(s) of this run", refs.len()),
            Err(e) => eprintln!(
                "warning: {e}; the jobs may still be queued: scancel {}",
                args.join(" ")
            ),
        }
    }

    /// Removes the work directories the run's jobs left in the store's `tmp/`.
    fn clean_tmp(&self, ledger: &Ledger) {
        let tmp = self.spec.store.join("tmp");
        let Ok(entries) = std::fs::read_dir(&tmp) else {
            return;
        };
        let prefixes: Vec<String> = ledger
            .submissions
            .iter()
            .map(|s| format!("{}{}", store::JOB_TAG_PREFIX, s.id))
            .collect();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = prefixes.iter().any(|p| {
                name.strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.starts_with('-') || rest.starts_with('_'))
            });
            if ours {
                let _ = store::remove_all(&e.path());
            }
        }
    }
}

/// The instances of `pipeline` that runs submitted to Slurm and whose
/// results are not yet taken into the store, by name: `queued (Slurm job
/// 12_3)`, `running (…)`, or `finished on Slurm (…)`, for `podium status`.
pub fn jobs_of(store_root: &Path, pipeline: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(store_root.join("slurm")) else {
        return out;
    };
    let timeout = Duration::from_secs(30);
    for e in entries.flatten() {
        let dir = e.path();
        let Some(l) = read_json::<Ledger>(&dir.join("jobs.json")) else {
            continue;
        };
        if l.pipeline != pipeline {
            continue;
        }
        let ids: Vec<&str> = l.submissions.iter().map(|s| s.id.as_str()).collect();
        let states = squeue(&ids, timeout).ok();
        for s in &l.submissions {
            for (k, &(task, inst)) in s.tasks.iter().enumerate() {
                let r = JobRef {
                    id: s.id.clone(),
                    task,
                };
                let done = dir.join("done").join(format!("{inst}.json")).exists();
                let state = states
                    .as_ref()
                    .and_then(|st| st.get(&r.to_string()))
                    .map(|(st, _)| st.as_str());
                let what = match (done, state) {
                    (true, _) => {
                        format!("finished on Slurm (job {r}); `podium run` takes in its result")
                    }
                    (false, Some("PENDING")) => format!("queued (Slurm job {r})"),
                    (false, Some("RUNNING" | "COMPLETING" | "CONFIGURING")) => {
                        format!("running (Slurm job {r})")
                    }
                    (false, None) if states.is_none() => format!("submitted to Slurm (job {r})"),
                    _ => continue,
                };
                if let Some(name) = s.names.get(k) {
                    out.insert(name.clone(), what);
                }
            }
        }
    }
    out
}

/// Takes into the store's record log and state journal the results that
/// jobs of earlier runs of `pipeline` left after their submitter stopped
/// waiting (`--detach`, or a submitter that was killed), and removes the
/// directories of runs that have ended. Needs the store's lock.
pub fn collect(store: &store::Store, pipeline: &str) {
    let root = store.root().join("slurm");
    let Ok(entries) = std::fs::read_dir(&root) else {
        return;
    };
    let timeout = Duration::from_secs(30);
    for e in entries.flatten() {
        let dir = e.path();
        let Some(l) = read_json::<Ledger>(&dir.join("jobs.json")) else {
            continue;
        };
        if l.pipeline != pipeline {
            continue;
        }
        let mut all_done = true;
        for s in &l.submissions {
            for &(_, inst) in &s.tasks {
                let Some(d) = read_json::<Done>(&dir.join("done").join(format!("{inst}.json")))
                else {
                    all_done = false;
                    continue;
                };
                let Some(rec) = d.record else { continue };
                let known = crate::hash::Hash::from_hex(&rec.key)
                    .ok()
                    .and_then(|h| store.record(&h))
                    .is_some();
                if !known && d.outcome == Outcome::Executed {
                    let _ = store.put_record(&rec);
                }
                let newer = store
                    .state(&rec.pipeline, &rec.instance)
                    .is_none_or(|s| s.finished_at <= rec.finished_at);
                if newer {
                    let _ = store.put_state(&rec);
                }
            }
        }
        let ended = all_done || {
            let ids: Vec<&str> = l.submissions.iter().map(|s| s.id.as_str()).collect();
            squeue(&ids, timeout).is_ok_and(|st| st.values().all(|(s, _)| is_terminal(s)))
        };
        if ended {
            let _ = store.sync_records();
            let _ = store::remove_all(&dir);
        }
    }
}

fn ok(o: &Outcome) -> bool {
    matches!(o, Outcome::Executed | Outcome::Cached | Outcome::Fetched)
}

fn jobs_in_stage(jobs: &[Job], stage: &str) -> usize {
    jobs.iter().filter(|j| j.stage == stage).count()
}

/// The current job refs of the upstream instances of `jobs[i]` in this run.
fn upstream_refs(
    i: usize,
    jobs: &[Job],
    index: &HashMap<usize, usize>,
    tracks: &[Track],
) -> Vec<JobRef> {
    jobs[i]
        .deps
        .iter()
        .filter_map(|d| index.get(d))
        .filter_map(|&di| tracks[di].at.clone())
        .collect()
}

/// Splits `which` into submissions: one per stage, in dependency order,
/// unless a stage's instances read each other (or `single`): then one per
/// instance.
fn group(
    which: &[usize],
    jobs: &[Job],
    index: &HashMap<usize, usize>,
    single: bool,
) -> Vec<Vec<usize>> {
    if single {
        return which.iter().map(|&i| vec![i]).collect();
    }
    let mut order: Vec<String> = Vec::new();
    let mut by_stage: HashMap<String, Vec<usize>> = HashMap::new();
    for &i in which {
        let s = &jobs[i].stage;
        if !by_stage.contains_key(s) {
            order.push(s.clone());
        }
        by_stage.entry(s.clone()).or_default().push(i);
    }
    // Whole stages keep dependency order when every dependency of a stage's
    // instances is in a stage that comes earlier.
    let pos: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(k, s)| (s.as_str(), k))
        .collect();
    let staged = which.iter().all(|&i| {
        jobs[i].deps.iter().filter_map(|d| index.get(d)).all(|&di| {
            pos.get(jobs[di].stage.as_str())
                .is_none_or(|&p| p < pos[jobs[i].stage.as_str()])
        })
    });
    if !staged {
        return which.iter().map(|&i| vec![i]).collect();
    }
    order
        .into_iter()
        .map(|s| by_stage.remove(&s).unwrap())
        .collect()
}

/// `--dependency` of a submission: `aftercorr:ID` on an array whose task i
/// is what task i of this one reads (and nothing else of it), `afterok`
/// on the rest (a whole array, or one task).
fn dependency(
    g: &[usize],
    jobs: &[Job],
    index: &HashMap<usize, usize>,
    tracks: &[Track],
    array: bool,
) -> String {
    // Upstream submission id → (task of each dependent, task of the upstream).
    let mut by_id: BTreeMap<String, Vec<(usize, Option<usize>)>> = BTreeMap::new();
    for &i in g {
        for d in &jobs[i].deps {
            let Some(&di) = index.get(d) else { continue };
            if tracks[di].outcome.as_ref().is_some_and(ok) {
                continue;
            }
            if let Some(r) = &tracks[di].at {
                by_id.entry(r.id.clone()).or_default().push((i, r.task));
            }
        }
    }
    let mut afterok = Vec::new();
    let mut aftercorr = Vec::new();
    for (id, edges) in by_id {
        // Tasks of the upstream array submitted under this id.
        let upstream_tasks: BTreeSet<usize> = tracks
            .iter()
            .filter_map(|t| t.at.as_ref().filter(|r| r.id == id).and_then(|r| r.task))
            .collect();
        let corr = array
            && !upstream_tasks.is_empty()
            && g.iter().all(|&i| {
                let mine: Vec<Option<usize>> = edges
                    .iter()
                    .filter(|(k, _)| *k == i)
                    .map(|(_, t)| *t)
                    .collect();
                if mine.is_empty() {
                    !upstream_tasks.contains(&jobs[i].index)
                } else {
                    mine == [Some(jobs[i].index)]
                }
            });
        if corr {
            aftercorr.push(id);
        } else if edges.iter().all(|(_, t)| t.is_some()) && !array && edges.len() == 1 {
            afterok.push(format!("{id}_{}", edges[0].1.unwrap()));
        } else {
            afterok.push(id);
        }
    }
    let mut parts = Vec::new();
    if !afterok.is_empty() {
        parts.push(format!("afterok:{}", afterok.join(":")));
    }
    if !aftercorr.is_empty() {
        parts.push(format!("aftercorr:{}", aftercorr.join(":")));
    }
    parts.join(",")
}

/// A job's log path from its `--output` pattern.
fn log_path(pattern: &str, id: &str, task: Option<usize>) -> PathBuf {
    let p = pattern
        .replace("%A", id)
        .replace("%j", id)
        .replace("%a", &task.map(|t| t.to_string()).unwrap_or_default());
    PathBuf::from(p)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn file_tail(path: &Path, n: usize) -> String {
    super::runner::tail(&std::fs::read(path).unwrap_or_default(), n)
}

fn sleep_unless_cancelled(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !crate::cancel::is_cancelled() {
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
}

/// What a job leaves in `done/<instance>.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Done {
    pub outcome: Outcome,
    pub record: Option<Record>,
    /// How often Slurm had requeued the job (`SLURM_RESTART_COUNT`).
    #[serde(default)]
    pub restart: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct ProgressFile {
    done: u64,
    total: u64,
    message: String,
}

/// The job on a node (`podium slurm-job RUN_DIR --map TASK=INSTANCE,…`):
/// runs its instance through the runner against the shared store and
/// leaves its result in `done/`; the exit status says whether it
/// succeeded (0), failed (1) or was stopped (130).
pub fn node_main(run_dir: &Path, map: &str) -> Result<i32> {
    let spec: Spec = read_json(&run_dir.join("spec.json")).ok_or_else(|| {
        Error::Usage(format!(
            "{}: no readable spec.json: is the run directory on a filesystem this node shares?",
            run_dir.display()
        ))
    })?;
    let task: usize = std::env::var("SLURM_ARRAY_TASK_ID")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let id = map
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| k.parse::<usize>().ok() == Some(task))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .ok_or_else(|| Error::Usage(format!("no instance for array task {task} in --map {map}")))?;
    let (p, _) = crate::load_str(&spec.manifest, &spec.text, &spec.overrides)?;
    let inst = p
        .instances
        .get(id)
        .ok_or_else(|| Error::Usage(format!("the manifest has no instance {id}")))?;
    eprintln!("podium: {} on {}", inst.name, hostname());
    let store = store::Store::open(&spec.store)?;
    let stat = store::StatCache::load(&store.statcache_path());
    let mut records: Vec<Option<Record>> = vec![None; p.instances.len()];
    for (k, r) in &spec.upstream {
        if let Some(slot) = records.get_mut(*k) {
            *slot = Some(r.clone());
        }
    }
    for &d in &inst.deps {
        if let Some(done) = read_json::<Done>(&run_dir.join("done").join(format!("{d}.json")))
            && done.record.is_some()
        {
            records[d] = done.record;
        }
    }
    let force: std::collections::HashSet<String> = spec.force.iter().cloned().collect();
    let runner = super::Runner::on_node(&p, &store, &stat, spec.out_root.clone(), &force, records);
    let progress_path = run_dir.join("progress").join(format!("{id}.json"));
    let _ = std::fs::create_dir_all(run_dir.join("progress"));
    let last = std::sync::Mutex::new(None::<Instant>);
    let report = |s: &crate::progress::Step| {
        let mut l = last.lock().unwrap_or_else(|e| e.into_inner());
        if l.is_some_and(|t| t.elapsed() < Duration::from_secs(2)) {
            return;
        }
        *l = Some(Instant::now());
        let bytes = serde_json::to_vec(&ProgressFile {
            done: s.done,
            total: s.total,
            message: s.message.clone(),
        })
        .unwrap_or_default();
        let _ = store::atomic_write_nosync(&progress_path, &bytes);
        eprintln!("[{}/{}] {}", s.done, s.total, s.message);
    };
    let gpus: Vec<usize> = (0..inst.resources.gpu).collect();
    let outcome = runner.run(id, &gpus, &report);
    let code = match &outcome {
        Outcome::Executed | Outcome::Cached | Outcome::Fetched => 0,
        Outcome::Cancelled => 130,
        _ => 1,
    };
    if let Outcome::Failed {
        message,
        log_tail,
        log,
    } = &outcome
    {
        eprintln!("error: {} failed: {message}", inst.name);
        for l in log_tail.lines() {
            eprintln!("  │ {l}");
        }
        if let Some(log) = log {
            eprintln!("  full log: {}", log.display());
        }
    }
    let record = if code == 0 {
        runner.record_of(id)
    } else {
        None
    };
    store.sync_records()?;
    write_json(
        &run_dir.join("done").join(format!("{id}.json")),
        &Done {
            outcome,
            record,
            restart: std::env::var("SLURM_RESTART_COUNT")
                .ok()
                .and_then(|r| r.parse().ok())
                .unwrap_or(0),
        },
    )?;
    let _ = std::fs::remove_file(&progress_path);
    Ok(code)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Resources;

    fn job(id: usize, stage: &str, index: usize, deps: &[usize]) -> Job {
        Job {
            id,
            name: format!("{stage}[{index}]"),
            stage: stage.into(),
            index,
            deps: deps.to_vec(),
            resources: Resources::default(),
        }
    }

    fn track(i: usize, id: &str, task: Option<usize>) -> Track {
        let _ = i;
        Track {
            at: Some(JobRef {
                id: id.into(),
                task,
            }),
            deps_at: Vec::new(),
            log: PathBuf::new(),
            started: false,
            outcome: None,
            resubmits: 0,
            ended: None,
            progress: None,
            done_seen: None,
            stale_done: None,
            t0: Instant::now(),
        }
    }

    #[test]
    fn a_fold_that_reads_the_same_fold_waits_with_aftercorr_and_a_merge_with_afterok() {
        // train[0..3] → predict[0..3] (fold to fold) → merge (all folds).
        let jobs = vec![
            job(0, "train", 0, &[]),
            job(1, "train", 1, &[]),
            job(2, "train", 2, &[]),
            job(3, "predict", 0, &[0]),
            job(4, "predict", 1, &[1]),
            job(5, "predict", 2, &[2]),
            job(6, "merge", 0, &[3, 4, 5]),
        ];
        let index: HashMap<usize, usize> = (0..7).map(|i| (i, i)).collect();
        let groups = group(&(0..7).collect::<Vec<_>>(), &jobs, &index, false);
        assert_eq!(groups, vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
        let mut tracks: Vec<Track> = (0..3).map(|i| track(i, "10", Some(i))).collect();
        tracks.extend((3..7).map(|i| {
            let mut t = track(i, "", None);
            t.at = None;
            t
        }));
        assert_eq!(
            dependency(&[3, 4, 5], &jobs, &index, &tracks, true),
            "aftercorr:10"
        );
        for (k, t) in tracks[3..6].iter_mut().enumerate() {
            t.at = Some(JobRef {
                id: "11".into(),
                task: Some(k),
            });
        }
        assert_eq!(
            dependency(&[6], &jobs, &index, &tracks, false),
            "afterok:11"
        );
        // A resubmitted single job waits for the one task it reads.
        assert_eq!(
            dependency(&[4], &jobs, &index, &tracks, false),
            "afterok:10_1"
        );
        // A finished upstream is no dependency.
        tracks[1].outcome = Some(Outcome::Executed);
        assert_eq!(dependency(&[4], &jobs, &index, &tracks, false), "");
    }

    #[test]
    fn an_array_reading_other_tasks_than_its_own_waits_for_the_whole_upstream_array() {
        // predict[i] reads train[i] and train[0].
        let jobs = vec![
            job(0, "train", 0, &[]),
            job(1, "train", 1, &[]),
            job(2, "predict", 0, &[0]),
            job(3, "predict", 1, &[0, 1]),
        ];
        let index: HashMap<usize, usize> = (0..4).map(|i| (i, i)).collect();
        let mut tracks: Vec<Track> = (0..2).map(|i| track(i, "7", Some(i))).collect();
        tracks.extend((2..4).map(|i| {
            let mut t = track(i, "", None);
            t.at = None;
            t
        }));
        assert_eq!(
            dependency(&[2, 3], &jobs, &index, &tracks, true),
            "afterok:7"
        );
    }

    #[test]
    fn stages_whose_instances_read_each_other_are_submitted_one_job_each() {
        let jobs = vec![job(0, "a", 0, &[]), job(1, "a", 1, &[0])];
        let index: HashMap<usize, usize> = (0..2).map(|i| (i, i)).collect();
        assert_eq!(group(&[0, 1], &jobs, &index, false), vec![vec![0], vec![1]]);
    }

    #[test]
    fn time_and_states_read_as_slurm_writes_them() {
        assert_eq!(slurm_time(90 * 60), "0-01:30:00");
        assert_eq!(slurm_time(61), "0-00:02:00");
        assert_eq!(slurm_time(86400 + 3600), "1-01:00:00");
        let s = parse_squeue("12_3|RUNNING|None\n13|TIMEOUT|TimeLimit\n");
        assert_eq!(s["12_3"].0, "RUNNING");
        assert!(is_terminal(&s["13"].0) && !is_terminal(&s["12_3"].0));
        let mut j = job(0, "train", 0, &[]);
        j.resources.time_s = Some(3600);
        j.resources.mem_mib = Some(2048);
        let t = explain("TIMEOUT", &j, Path::new("x.log"));
        assert!(
            t.contains("0-01:00:00") && t.contains("resources.time") && t.contains("`train`"),
            "{t}"
        );
        let m = explain("OUT_OF_MEMORY", &j, Path::new("x.log"));
        assert!(
            m.contains("--mem=2048M") && m.contains("resources.mem"),
            "{m}"
        );
        assert!(resubmittable("NODE_FAIL") && !resubmittable("FAILED"));
    }

    #[test]
    fn sbatch_arguments_map_resources_and_per_stage_settings() {
        let cfg: SlurmConfig = toml::from_str(
            "partition = \"cpu\"\naccount = \"team\"\nsbatch = [\"--exclusive\"]\n[stages.train]\npartition = \"gpu\"\nsbatch = [\"--signal=USR1@60\"]\n",
        )
        .unwrap();
        let ex = SlurmExecutor {
            config: cfg,
            spec: Spec {
                pipeline: "p".into(),
                manifest: "m.toml".into(),
                text: String::new(),
                overrides: vec![],
                targets: vec![],
                force: vec![],
                store: "cache".into(),
                out_root: "out".into(),
                upstream: BTreeMap::new(),
            },
            run_dir: "r".into(),
            keep_going: false,
            detach: false,
            podium: "podium".into(),
            attach: None,
        };
        let mut j = job(0, "train", 0, &[]);
        j.resources = Resources {
            threads: 4,
            gpu: 1,
            mem_mib: Some(16384),
            time_s: Some(7200),
        };
        assert_eq!(
            ex.resource_args(&j),
            [
                "--cpus-per-task=4",
                "--gres=gpu:1",
                "--mem=16384M",
                "--time=0-02:00:00",
                "--partition=gpu",
                "--account=team",
                "--exclusive",
                "--signal=USR1@60"
            ]
        );
        let k = job(1, "resize", 0, &[]);
        assert_eq!(
            ex.resource_args(&k),
            [
                "--cpus-per-task=1",
                "--partition=cpu",
                "--account=team",
                "--exclusive"
            ]
        );
    }
}
