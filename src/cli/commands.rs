//! `podium plan`, `run`, `status`, `dag`, `gc` and `verify`.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use podium::config::ExecutorKind;
use podium::executor::{self, LocalExecutor, Outcome, RunOptions, SlurmExecutor};
use podium::graph::Graph;
use podium::ir::Pipeline;
use podium::plan::{self, Plan, Status};
use podium::store::StatCache;
use podium::store::Store;
use podium::store::experiments::{ExpInstance, Experiment, metric_order, ranked};
use serde_json::json;

use super::progress::Progress;
use super::{Cli, DagFormat, Format, ManifestArgs, default_manifests, mib};

/// Opens the store, with the remote cache the flags or the config name.
fn open_store(cli: &Cli) -> anyhow::Result<Store> {
    let store = Store::open(&cli.store)?;
    Ok(match remote_config(cli)? {
        Some(rc) => store.with_remote(podium::store::Remote::open(&rc)?),
        None => store,
    })
}

/// The remote cache's settings: the config's `[remote]`, its url replaced
/// by `--remote`; none with `--no-remote`.
fn remote_config(cli: &Cli) -> anyhow::Result<Option<podium::store::RemoteConfig>> {
    if cli.no_remote {
        return Ok(None);
    }
    let config = podium::config::Config::load(cli.config.as_deref())?;
    Ok(match (&cli.remote, config.remote) {
        (Some(url), Some(mut rc)) => {
            rc.url.clone_from(url);
            Some(rc)
        }
        (Some(url), None) => Some(podium::store::RemoteConfig::url(url)),
        (None, rc) => rc,
    })
}

/// `podium push`: every fresh instance's record and objects the remote lacks.
pub fn push(cli: &Cli, m: &ManifestArgs, targets: &[String]) -> anyhow::Result<i32> {
    let started = Instant::now();
    let p = m.load()?;
    let o = Opened::new(cli)?;
    let Some(remote) = o.store.remote() else {
        anyhow::bail!(
            "no remote cache: give --remote URL or a [remote] section in {}",
            podium::config::DEFAULT_PATH
        );
    };
    remote.check()?;
    let (g, pl) = o.plan(&p, targets, &[])?;
    let fresh: Vec<(&str, &podium::store::Record)> = g
        .order()
        .iter()
        .filter_map(|&id| match &pl.status[id] {
            Status::Fresh(r) => Some((p.instances[id].name.as_str(), &**r)),
            _ => None,
        })
        .collect();
    let recs: Vec<&podium::store::Record> = fresh.iter().map(|(_, r)| *r).collect();
    let results: Vec<(&str, podium::Result<podium::store::Transfer>)> = fresh
        .iter()
        .map(|(name, _)| *name)
        .zip(remote.push_all(&recs, &o.store)?)
        .collect();
    let mut total = podium::store::Transfer::default();
    let mut failed = 0;
    for (name, r) in results {
        match r {
            Ok(t) => total.add(t),
            Err(e) => {
                failed += 1;
                eprintln!("error: {name} was not pushed: {e}");
            }
        }
    }
    let stale = pl.stale_count();
    eprintln!(
        "{}: pushed {} record(s) to {}: {} object(s) uploaded ({}), {} already there{}{} ({:.2}s)",
        p.name,
        total.records,
        remote.url(),
        total.objects,
        mib(total.bytes),
        total.present,
        if stale > 0 {
            format!("; {stale} stale instance(s) have nothing to push (run them first)")
        } else {
            String::new()
        },
        if failed > 0 {
            format!("; {failed} failed")
        } else {
            String::new()
        },
        started.elapsed().as_secs_f64()
    );
    Ok(if failed > 0 { 1 } else { 0 })
}

/// The store and its stat cache, opened once per command.
struct Opened {
    store: Store,
    stat: StatCache,
}

impl Opened {
    fn new(cli: &Cli) -> anyhow::Result<Opened> {
        Ok(Opened::of(open_store(cli)?))
    }

    /// As [`Opened::new`], for a store that must exist already.
    fn new_existing(cli: &Cli) -> anyhow::Result<Opened> {
        Ok(Opened::of(Store::open_existing(&cli.store)?))
    }

    fn of(store: Store) -> Opened {
        let stat = StatCache::load(&store.statcache_path());
        Opened { store, stat }
    }

    fn plan(
        &self,
        p: &Pipeline,
        targets: &[String],
        force: &[String],
    ) -> anyhow::Result<(Graph, Plan)> {
        let g = Graph::of(p);
        let t = p.select_targets(targets).map_err(podium::Error::Usage)?;
        let force: HashSet<String> = force.iter().cloned().collect();
        let pl = plan::plan(p, &g, &self.store, &self.stat, Some(&t), &force)?;
        Ok((g, pl))
    }
}

impl Drop for Opened {
    /// Hashes learnt while planning speed up the next command.
    fn drop(&mut self) {
        let _ = self.stat.save(&self.store.statcache_path());
    }
}

pub fn plan(
    cli: &Cli,
    m: &ManifestArgs,
    targets: &[String],
    force: &[String],
    format: Format,
) -> anyhow::Result<i32> {
    let p = m.load()?;
    let (g, pl) = Opened::new(cli)?.plan(&p, targets, force)?;
    match format {
        Format::Text => print!("{}", plan_text(&p, &g, &pl)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&plan_json(&p, &g, &pl))?),
    }
    Ok(0)
}

/// The plan as text: one line per instance, stale ones with their reasons.
pub fn plan_text(p: &Pipeline, g: &Graph, pl: &Plan) -> String {
    let mut s = format!(
        "pipeline {}: {} instance(s), {} fresh, {} stale\n",
        p.name,
        pl.fresh_count() + pl.stale_count(),
        pl.fresh_count(),
        pl.stale_count()
    );
    let width = p
        .instances
        .iter()
        .map(|i| i.name.chars().count())
        .max()
        .unwrap_or(0);
    for &id in g.order() {
        let name = &p.instances[id].name;
        match &pl.status[id] {
            Status::Fresh(_) => s.push_str(&format!("  fresh  {name}\n")),
            Status::Stale(rs) => {
                let why: Vec<String> = rs.iter().map(|r| r.to_string()).collect();
                s.push_str(&format!("  stale  {name:<width$}  {}\n", why.join("; ")));
            }
            Status::Skipped => {}
        }
    }
    s
}

fn plan_json(p: &Pipeline, g: &Graph, pl: &Plan) -> serde_json::Value {
    let items: Vec<_> = g
        .order()
        .iter()
        .filter_map(|&id| {
            let inst = &p.instances[id];
            let key = pl.keys[id].as_ref().map(|k| k.key.to_hex().to_string());
            match &pl.status[id] {
                Status::Fresh(_) => Some(json!({"instance": inst.name, "stage": inst.stage_name, "status": "fresh", "key": key})),
                Status::Stale(rs) => Some(json!({"instance": inst.name, "stage": inst.stage_name, "status": "stale", "key": key,
                    "reasons": rs, "why": rs.iter().map(|r| r.to_string()).collect::<Vec<_>>()})),
                Status::Skipped => None,
            }
        })
        .collect();
    json!({"pipeline": p.name, "fresh": pl.fresh_count(), "stale": pl.stale_count(), "instances": items})
}

/// The options of `podium run` (and `pull`, which runs fetching only).
pub struct RunArgs<'a> {
    pub jobs: usize,
    pub gpus: usize,
    pub keep_going: bool,
    pub force: &'a [String],
    pub no_wait: bool,
    pub format: Format,
    pub name: Option<&'a str>,
    pub fetch_only: bool,
    /// `--executor`; `None`: the config's, else local.
    pub executor: Option<podium::config::ExecutorKind>,
    pub detach: bool,
}

pub fn run(cli: &Cli, m: &ManifestArgs, targets: &[String], a: &RunArgs) -> anyhow::Result<i32> {
    let RunArgs {
        jobs,
        gpus,
        keep_going,
        force,
        no_wait,
        format,
        name,
        fetch_only,
        executor: kind,
        detach,
    } = *a;
    let started = Instant::now();
    let p = m.load()?;
    let config = podium::config::Config::load(cli.config.as_deref())?;
    let kind = kind.or(config.executor).unwrap_or_default();
    if detach && kind != ExecutorKind::Slurm {
        anyhow::bail!("--detach is for --executor slurm: a local run needs its process");
    }
    let store = open_store(cli)?;
    let _lock = store.lock(!no_wait, |pid| {
        eprintln!(
            "waiting for another podium run (pid {pid}) to release {}",
            cli.store.display()
        );
    })?;
    let stat = StatCache::load(&store.statcache_path());
    let opts = RunOptions {
        targets: targets.to_vec(),
        force: force.iter().cloned().collect(),
        // Absolute: ops run in the manifest's directory, not here.
        out_root: std::path::absolute(&cli.out_dir).unwrap_or_else(|_| cli.out_dir.clone()),
        fetch_only,
    };
    if fetch_only && store.remote().is_none() {
        anyhow::bail!(
            "no remote cache: give --remote URL or a [remote] section in {}",
            podium::config::DEFAULT_PATH
        );
    }
    let local = LocalExecutor {
        threads: jobs,
        gpus,
        keep_going,
    };
    let slurm = match kind {
        ExecutorKind::Local => None,
        ExecutorKind::Slurm => {
            let path = m.path()?;
            let manifest = std::path::absolute(&path).unwrap_or(path);
            let text = std::fs::read_to_string(&manifest)
                .with_context(|| format!("reading {}", manifest.display()))?;
            let spec = podium::executor::slurm::Spec {
                pipeline: p.name.clone(),
                manifest,
                text,
                overrides: m.set.set.clone(),
                targets: targets.to_vec(),
                force: force.to_vec(),
                store: store.root().to_path_buf(),
                out_root: opts.out_root.clone(),
                upstream: Default::default(),
            };
            // Results detached jobs left come in first; runs that ended go.
            podium::executor::slurm::collect(&store, &p.name);
            let ex = SlurmExecutor::new(
                config.slurm.clone().unwrap_or_default(),
                spec,
                keep_going,
                detach,
            )?;
            if let Some(dir) = ex.attached_to() {
                eprintln!(
                    "waiting for the Slurm jobs an earlier run of this configuration submitted ({})",
                    dir.display()
                );
            }
            Some(ex)
        }
    };
    let executor: &dyn podium::executor::Executor = match &slurm {
        Some(s) => s,
        None => &local,
    };
    let progress = std::sync::OnceLock::new();
    let events = LazyProgress(&progress);
    let report = executor::run(&p, &store, &stat, executor, &opts, &events, &|pl| {
        let _ = progress.set(Progress::new(pl.stale_count()));
    })?;
    if let Some(pr) = progress.get() {
        pr.finish();
    }
    let experiment = record_experiment(&p, &store, &stat, &m.set.set, name);
    let executed = report.names(|o| matches!(o, Outcome::Executed));
    let cached = report.names(|o| matches!(o, Outcome::Cached));
    let mut fetched: Vec<&str> = report.fetched.iter().map(String::as_str).collect();
    fetched.extend(report.names(|o| matches!(o, Outcome::Fetched)));
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    let failed = report.names(|o| matches!(o, Outcome::Failed { .. }));
    let skipped = report.names(|o| matches!(o, Outcome::Skipped { .. } | Outcome::Cancelled));
    let queued = report.names(|o| matches!(o, Outcome::Submitted { .. }));
    if !queued.is_empty() {
        eprintln!(
            "{} instance(s) submitted to Slurm and not waited for (--detach): `podium status` shows them; \
             `podium run` again waits for them and takes in their results",
            queued.len()
        );
    }
    for (name, o) in &report.outcomes {
        if let Outcome::Failed {
            message,
            log,
            log_tail,
        } = o
        {
            eprintln!("error: {name} failed: {message}");
            if let Some(log) = log {
                if !log_tail.is_empty() {
                    eprintln!("  ── last lines of its log ──");
                    for l in log_tail.lines() {
                        eprintln!("  │ {l}");
                    }
                }
                eprintln!("  full log: {}", log.display());
            }
        }
    }
    match format {
        Format::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "pipeline": p.name,
                    "fresh": report.fresh,
                    "executed": executed,
                    "cached": cached,
                    "fetched": fetched,
                    "pushed": report.pushed.records,
                    "failed": failed,
                    "skipped": skipped,
                    "queued": queued,
                    "experiment": experiment.as_ref().ok().map(|e| &e.id),
                }))?
            );
        }
        Format::Text if fetch_only => eprintln!(
            "{}: {} fetched from {} ({}), {} already fresh, {} not in the remote cache, {} failed ({:.2}s)",
            p.name,
            fetched.len(),
            store.remote().map_or("", |r| r.url()),
            mib(report.pulled.bytes),
            report.fresh.len(),
            skipped.len(),
            failed.len(),
            started.elapsed().as_secs_f64(),
        ),
        Format::Text => eprintln!(
            "{}: {} ran, {} cached after upstream cutoff, {}{} already fresh, {} failed, {} not run ({:.2}s){}",
            p.name,
            executed.len(),
            cached.len(),
            match store.remote() {
                Some(r) => format!(
                    "{} fetched from {} ({}), {} pushed, ",
                    fetched.len(),
                    r.url(),
                    mib(report.pulled.bytes),
                    report.pushed.records
                ),
                None => String::new(),
            },
            report.fresh.len(),
            failed.len(),
            skipped.len(),
            started.elapsed().as_secs_f64(),
            match &experiment {
                Ok(e) => format!("; experiment {}", e.label()),
                Err(why) => format!("; experiment not recorded: {why}"),
            }
        ),
    }
    Ok(if report.cancelled() {
        130
    } else if report.succeeded() || (fetch_only && failed.is_empty()) {
        0
    } else {
        1
    })
}

/// Notes the run as an experiment of its pipeline: the configuration (params
/// and stage overrides) and the record every instance is now up to date
/// with. A name or pin given earlier to the same configuration stays.
fn record_experiment(
    p: &Pipeline,
    store: &Store,
    stat: &StatCache,
    overrides: &[String],
    name: Option<&str>,
) -> Result<Experiment, String> {
    let g = Graph::of(p);
    let pl = plan::plan(p, &g, store, stat, None, &HashSet::new()).map_err(|e| e.to_string())?;
    let params: BTreeMap<String, String> = p
        .params
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    let stage_overrides: Vec<String> = overrides
        .iter()
        .filter(|o| !o.trim_start().starts_with("params."))
        .cloned()
        .collect();
    let id = Experiment::id_of(&p.name, &params, &stage_overrides);
    let journal = store.experiments();
    let before = journal.all(&p.name).into_iter().find(|e| e.id == id);
    let mut instances = BTreeMap::new();
    let mut incomplete = Vec::new();
    for inst in &p.instances {
        match &pl.status[inst.id] {
            Status::Fresh(r) => {
                instances.insert(
                    inst.name.clone(),
                    ExpInstance {
                        stage: inst.stage_name.clone(),
                        key: r.key.clone(),
                        matrix: !inst.matrix.is_empty(),
                        duration_s: r.duration_s,
                        metrics: r.metrics.clone(),
                    },
                );
            }
            _ => incomplete.push(inst.name.clone()),
        }
    }
    let e = Experiment {
        id,
        name: name
            .map(str::to_string)
            .or_else(|| before.as_ref().and_then(|b| b.name.clone())),
        pinned: before.as_ref().is_some_and(|b| b.pinned),
        pipeline: p.name.clone(),
        manifest: p.manifest.display().to_string(),
        overrides: overrides.to_vec(),
        params,
        stage_overrides,
        instances,
        incomplete,
        finished_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    journal.put(&e).map_err(|e| e.to_string())?;
    Ok(e)
}

/// Progress created once the plan says how many instances will run.
struct LazyProgress<'a>(&'a std::sync::OnceLock<Progress>);

impl executor::Events for LazyProgress<'_> {
    fn started(&self, job: &executor::Job) {
        if let Some(p) = self.0.get() {
            p.started(job)
        }
    }
    fn finished(&self, job: &executor::Job, outcome: &Outcome, took: std::time::Duration) {
        if let Some(p) = self.0.get() {
            p.finished(job, outcome, took)
        }
    }
    fn progress(&self, job: &executor::Job, step: &podium::ops::Step) {
        if let Some(p) = self.0.get() {
            p.progress(job, step)
        }
    }
    fn fetching(&self, instances: usize, bytes: u64, remote: &str) {
        eprintln!(
            "fetching {instances} instance(s) ({}) from {remote}",
            mib(bytes)
        );
    }
}

pub fn status(cli: &Cli, m: &ManifestArgs, format: Format) -> anyhow::Result<i32> {
    let p = m.load()?;
    let opened = Opened::new(cli)?;
    let store = &opened.store;
    let (g, pl) = opened.plan(&p, &[], &[])?;
    // A fresh instance shows the run of this very configuration (its key's
    // record), not the last run of whatever configuration ran last; a
    // stale one says why, and what its last run (of another
    // configuration) gave.
    // Instances a Slurm run (detached, or still waited for elsewhere) has
    // queued or running say so instead of why they are stale.
    let slurm = podium::executor::slurm::jobs_of(store.root(), &p.name);
    let mut rows = Vec::new();
    for &id in g.order() {
        let inst = &p.instances[id];
        let row = match &pl.status[id] {
            Status::Fresh(r) => ("fresh", Some((**r).clone()), Vec::new()),
            Status::Stale(_) if slurm.contains_key(&inst.name) => (
                "slurm",
                store.state(&p.name, &inst.name),
                vec![slurm[&inst.name].clone()],
            ),
            Status::Stale(why) => (
                "stale",
                store.state(&p.name, &inst.name),
                why.iter().map(|r| r.to_string()).collect(),
            ),
            Status::Skipped => continue,
        };
        rows.push((inst, row.0, row.1, row.2));
    }
    match format {
        Format::Json => {
            let items: Vec<_> = rows
                .iter()
                .map(|(i, s, run, why)| {
                    let run = run.as_ref().map(|r| json!({"finished_at": r.finished_at, "duration_s": r.duration_s, "metrics": r.metrics, "key": r.key}));
                    if *s == "fresh" {
                        json!({"instance": i.name, "status": s, "run": run})
                    } else {
                        json!({"instance": i.name, "status": s, "reasons": why, "last_run": run})
                    }
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({"pipeline": p.name, "instances": items}))?
            );
        }
        Format::Text => {
            let width = rows
                .iter()
                .map(|r| r.0.name.chars().count())
                .max()
                .unwrap_or(0);
            println!(
                "pipeline {} ({}): {} fresh, {} stale",
                p.name,
                p.manifest.display(),
                pl.fresh_count(),
                pl.stale_count()
            );
            for (i, s, run, why) in rows {
                let run_info = |r: &podium::store::Record| {
                    let metrics: Vec<String> = r
                        .metrics
                        .iter()
                        .map(|(k, v)| format!("{k}={}", short_number(*v)))
                        .collect();
                    format!(
                        "{:.2}s{}{}",
                        r.duration_s,
                        if metrics.is_empty() { "" } else { "  " },
                        metrics.join(" ")
                    )
                };
                let info = match (s, &run) {
                    ("fresh", Some(r)) => run_info(r),
                    (_, Some(r)) => format!("{}; last run {}", why.join("; "), run_info(r)),
                    (_, None) => why.join("; "),
                };
                println!("  {s:<5}  {:<width$}  {info}", i.name);
            }
        }
    }
    Ok(0)
}

/// A metric as people read it: four decimals at most, trailing zeros off
/// (`0.9375`, `12.5`, `0.0001`), tiny and huge values in exponent form.
pub fn short_number(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-4 || v.abs() >= 1e9) {
        return format!("{v:.3e}");
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

pub fn dag(cli: &Cli, m: &ManifestArgs, format: DagFormat) -> anyhow::Result<i32> {
    let p = m.load()?;
    let (g, pl) = Opened::new(cli)?.plan(&p, &[], &[])?;
    let stale = |id: usize| pl.is_stale(id);
    match format {
        DagFormat::Dot => print!("{}", g.to_dot(&p, &stale)),
        DagFormat::Mermaid => print!("{}", g.to_mermaid(&p, &stale)),
    }
    Ok(0)
}

/// What `gc` keeps of each pipeline's experiments besides the pinned ones.
pub struct Keep {
    /// The last N, by when they last ran.
    pub last: Option<usize>,
    /// The best N by a metric (`train.accuracy`, `evaluate.loss:min`).
    pub best: Option<(usize, String)>,
}

/// The experiments of a pipeline whose results `gc` keeps: pinned ones and
/// those `keep` picks.
fn kept_experiments(exps: &[Experiment], keep: &Keep) -> Vec<usize> {
    let mut out: Vec<usize> = (0..exps.len()).filter(|&i| exps[i].pinned).collect();
    if let Some(n) = keep.last {
        out.extend((0..exps.len()).rev().take(n));
    }
    if let Some((n, by)) = &keep.best {
        let summaries: Vec<_> = exps.iter().map(Experiment::summary).collect();
        out.extend(ranked(&summaries, by).into_iter().take(*n));
    }
    out.sort();
    out.dedup();
    out
}

pub fn gc(cli: &Cli, manifests: &[PathBuf], dry_run: bool, keep: &Keep) -> anyhow::Result<i32> {
    let files = if manifests.is_empty() {
        default_manifests()?
    } else {
        manifests.to_vec()
    };
    let opened = Opened::new_existing(cli)?;
    let store = &opened.store;
    let _lock = store.lock(true, |pid| {
        eprintln!("waiting for the podium run (pid {pid}) to finish")
    })?;
    let mut live = HashSet::new();
    for f in &files {
        let (p, _) = podium::load(f, &[]).with_context(|| {
            format!("gc keeps what {} references, so it must check", f.display())
        })?;
        let (_, pl) = opened.plan(&p, &[], &[])?;
        for s in &pl.status {
            if let Status::Fresh(r) = s {
                live.insert(r.key.clone());
            }
        }
        let names: HashSet<&str> = p.instances.iter().map(|i| i.name.as_str()).collect();
        for r in store.states(&p.name) {
            if names.contains(r.instance.as_str()) {
                live.insert(r.key);
            }
        }
        let exps = store.experiments().all(&p.name);
        if let Some((_, by)) = &keep.best {
            let metric = metric_order(by).0;
            if !exps.iter().any(|e| e.summary().contains_key(metric)) && !exps.is_empty() {
                anyhow::bail!(
                    "no experiment of pipeline {} has metric `{metric}` for --by",
                    p.name
                );
            }
        }
        let kept = kept_experiments(&exps, keep);
        for &i in &kept {
            live.extend(exps[i].instances.values().map(|x| x.key.clone()));
        }
        if !kept.is_empty() {
            eprintln!(
                "{}: keeping {} experiment(s): {}",
                p.name,
                kept.len(),
                kept.iter()
                    .map(|&i| exps[i].label())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let r = store.gc(&live, dry_run)?;
    println!(
        "{} {} bytes ({}): {} record(s), {} object(s); kept {} record(s) referenced by {} manifest(s)",
        if dry_run { "would free" } else { "freed" },
        r.bytes,
        mib(r.bytes),
        r.records,
        r.objects,
        live.len(),
        files.len()
    );
    Ok(0)
}

pub fn verify(cli: &Cli) -> anyhow::Result<i32> {
    let store = Store::open_existing(&cli.store)?;
    let _lock = store.lock(true, |pid| {
        eprintln!("waiting for the podium run (pid {pid}) to finish")
    })?;
    let r = store.verify(|_| {})?;
    for c in &r.bad_objects {
        eprintln!(
            "corrupted object: {} (dropped; the next run recomputes what needs it)",
            c.display()
        );
    }
    for (path, n) in &r.bad_lines {
        eprintln!(
            "unreadable record line(s): {n} in {} (dropped; those instances rerun)",
            path.display()
        );
    }
    for c in &r.bad_records {
        eprintln!("unreadable record: {} (dropped)", c.display());
    }
    let lines: usize = r.bad_lines.iter().map(|(_, n)| n).sum();
    println!(
        "verified {} object(s): {} corrupted; {} record(s): {} unreadable line(s), {} unreadable file(s)",
        r.objects,
        r.bad_objects.len(),
        r.records,
        lines,
        r.bad_records.len()
    );
    Ok(if r.is_clean() { 0 } else { 1 })
}
