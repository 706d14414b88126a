//! The Slurm executor against a real Slurm: a one-node cluster on loopback
//! that `.ci/run` starts (`.ci/slurm.sh`) and announces with
//! `PODIUM_TEST_SLURM=1`. Elsewhere the cluster tests print why they are
//! skipped, unless `PODIUM_REQUIRE_SERVICES=1` makes that a failure. Each
//! test's pipeline has a name of its own, so that the jobs it finds in
//! `squeue` (by job name, `podium:<pipeline>:…`) are its own.

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::ws::Ws;

fn cluster() -> bool {
    if std::env::var("PODIUM_TEST_SLURM").as_deref() == Ok("1") {
        return true;
    }
    if std::env::var_os("PODIUM_REQUIRE_SERVICES").is_some() {
        panic!(
            "PODIUM_TEST_SLURM is not 1, and PODIUM_REQUIRE_SERVICES says the Slurm tests must run"
        );
    }
    eprintln!(
        "skipped: no Slurm cluster (PODIUM_TEST_SLURM unset; .ci/run starts one with .ci/slurm.sh)"
    );
    false
}

/// prepare → train[fold] → predict[fold] (reads the same fold) → report.
fn manifest(name: &str, train_cmd: &str, train_resources: &str) -> String {
    format!(
        r#"[pipeline]
name = "{name}"

[params]
folds = 3

[inputs.numbers]
path = "numbers.txt"

[stages.prepare]
op = "exec"
cmd = "sort -n ${{inputs.numbers}} > $PODIUM_OUT/sorted.txt"
outs = ["sorted.txt"]

[stages.train]
op = "exec"
matrix = {{ fold = "${{range(params.folds)}}" }}
cmd = "{train_cmd} awk -v f=${{fold}} 'NR % 3 != f {{t += $1}} END {{print t}}' ${{stages.prepare.sorted}} > $PODIUM_OUT/model.txt"
outs = ["model.txt"]
resources = {train_resources}

[stages.predict]
op = "exec"
matrix = {{ fold = "${{range(params.folds)}}" }}
cmd = "cat ${{stages.train[fold=fold].model}} > $PODIUM_OUT/pred.txt"
outs = ["pred.txt"]

[stages.report]
op = "exec"
cmd = "cat ${{stages.predict[*].pred}} > $PODIUM_OUT/all.txt"
outs = ["all.txt"]
"#
    )
}

fn workspace(name: &str, train_cmd: &str, resources: &str) -> Ws {
    let ws = Ws::with_manifest(&manifest(name, train_cmd, resources));
    let numbers: String = (1..=30).rev().map(|i| format!("{i}\n")).collect();
    ws.write("numbers.txt", &numbers);
    ws
}

/// A pipeline name no other test (or earlier run of the suite) uses.
fn unique(what: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{what}{}", t % 1_000_000_000)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The pipeline's jobs Slurm knows (finished ones included): `id|state|name`.
fn jobs_of(pipeline: &str) -> Vec<(String, String, String)> {
    let out = Command::new("squeue")
        .args(["-h", "-r", "-t", "all", "-o", "%i|%T|%j"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let p: Vec<&str> = l.trim().splitn(3, '|').collect();
            (p.len() == 3 && p[2].starts_with(&format!("podium:{pipeline}:")))
                .then(|| (p[0].into(), p[1].into(), p[2].into()))
        })
        .collect()
}

/// The distinct submissions (job ids, array tasks together).
fn submissions(jobs: &[(String, String, String)]) -> BTreeSet<String> {
    jobs.iter()
        .map(|(id, _, _)| id.split('_').next().unwrap().to_string())
        .collect()
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_matrix_pipeline_goes_to_slurm_as_job_arrays_and_gives_what_a_local_run_gives() {
    if !cluster() {
        return;
    }
    let name = unique("arrays");
    let ws = workspace(&name, "", "{ threads = 1, mem = \"64M\", time = \"5m\" }");
    let o = ws.podium(&["run", "-f", "p.toml", "--executor", "slurm"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("8 ran"), "{}", text(&o));
    // Four stages, four submissions: train and predict as arrays of three.
    let jobs = jobs_of(&name);
    assert_eq!(submissions(&jobs).len(), 4, "{jobs:?}");
    assert_eq!(
        jobs.iter().filter(|j| j.0.contains('_')).count(),
        6,
        "{jobs:?}"
    );
    assert!(jobs.iter().all(|j| j.1 == "COMPLETED"), "{jobs:?}");
    // The same pipeline run here gives the same bytes.
    let local = workspace(&name, "", "{ threads = 1 }");
    let l = local.podium(&["run", "-f", "p.toml"]);
    assert!(l.status.success(), "{}", text(&l));
    for f in [
        "report/all.txt",
        "predict/fold=1/pred.txt",
        "train/fold=2/model.txt",
    ] {
        let rel = format!("out/{name}/{f}");
        assert_eq!(ws.read(&rel), local.read(&rel), "{f}");
    }
    // Every record reached the store: a rerun submits nothing.
    let again = ws.podium(&["run", "-f", "p.toml", "--executor", "slurm"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("0 ran") && text(&again).contains("8 already fresh"),
        "{}",
        text(&again)
    );
    assert_eq!(submissions(&jobs_of(&name)).len(), 4);
    // The run's directory went with its success; no job left work behind.
    assert!(
        std::fs::read_dir(ws.path("cache/slurm"))
            .unwrap()
            .next()
            .is_none()
    );
    assert!(
        std::fs::read_dir(ws.path("cache/tmp"))
            .unwrap()
            .all(|e| { !e.unwrap().file_name().to_string_lossy().starts_with("job-") })
    );
}

#[test]
fn a_failed_fold_fails_the_run_with_its_log_and_skips_only_what_reads_it() {
    if !cluster() {
        return;
    }
    let name = unique("failing");
    let ws = workspace(
        &name,
        "if [ ${fold} = 1 ]; then echo 'fold one is broken' >&2; exit 3; fi;",
        "{ threads = 1 }",
    );
    let o = ws.podium(&["run", "-f", "p.toml", "--executor", "slurm", "--keep-going"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("train[fold=1] failed") && t.contains("fold one is broken"),
        "{t}"
    );
    assert!(
        t.contains("skipped  predict[fold=1]") && t.contains("skipped  report"),
        "{t}"
    );
    let s = ws.podium(&["status", "-f", "p.toml", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&s.stdout).unwrap();
    let fresh: BTreeSet<&str> = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["status"] == "fresh")
        .map(|i| i["instance"].as_str().unwrap())
        .collect();
    let want: BTreeSet<&str> = [
        "prepare",
        "train[fold=0]",
        "train[fold=2]",
        "predict[fold=0]",
        "predict[fold=2]",
    ]
    .into();
    assert_eq!(fresh, want);
}

#[test]
fn a_detached_run_shows_in_status_and_the_next_run_waits_for_its_jobs() {
    if !cluster() {
        return;
    }
    let name = unique("detached");
    let ws = workspace(&name, "sleep 4;", "{ threads = 1 }");
    let o = ws.podium(&["run", "-f", "p.toml", "--executor", "slurm", "--detach"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("not waited for (--detach)"),
        "{}",
        text(&o)
    );
    let s = ws.podium(&["status", "-f", "p.toml"]);
    assert!(
        String::from_utf8_lossy(&s.stdout).contains("(Slurm job "),
        "{}",
        text(&s)
    );
    let o = ws.podium(&["run", "-f", "p.toml", "--executor", "slurm"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("waiting for the Slurm jobs an earlier run"),
        "{t}"
    );
    // Nothing was submitted twice.
    assert_eq!(submissions(&jobs_of(&name)).len(), 4);
    assert!(
        ws.read(&format!("out/{name}/report/all.txt"))
            .lines()
            .count()
            == 3
    );
}

#[test]
fn ctrl_c_cancels_the_jobs_the_run_submitted_and_only_those() {
    if !cluster() {
        return;
    }
    let name = unique("interrupted");
    let ws = workspace(&name, "sleep 60;", "{ threads = 1 }");
    // Somebody else's job, which must outlive podium's Ctrl-C.
    let other = Command::new("sbatch")
        .args([
            "--parsable",
            "-J",
            "not-podium",
            "-o",
            "/dev/null",
            "--wrap",
            "sleep 120",
        ])
        .output()
        .unwrap();
    let other = String::from_utf8_lossy(&other.stdout).trim().to_string();
    let child = ws
        .cmd(&["run", "-f", "p.toml", "--executor", "slurm"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the pipeline's jobs to be queued", 120, || {
        submissions(&jobs_of(&name)).len() == 4
    });
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    wait_until("its jobs to be cancelled", 30, || {
        jobs_of(&name)
            .iter()
            .all(|j| j.1 == "CANCELLED" || j.1 == "COMPLETED")
    });
    assert!(
        jobs_of(&name).iter().any(|j| j.1 == "CANCELLED"),
        "{:?}",
        jobs_of(&name)
    );
    let st = Command::new("squeue")
        .args(["-h", "-o", "%T", "-j", &other])
        .output()
        .unwrap();
    let st = String::from_utf8_lossy(&st.stdout).trim().to_string();
    let _ = Command::new("scancel").arg(&other).status();
    assert!(
        st == "RUNNING" || st == "PENDING",
        "the other job is {st:?}"
    );
}

#[test]
fn a_job_killed_at_its_time_limit_says_which_resource_to_raise() {
    if !cluster() {
        return;
    }
    let name = unique("timeout");
    let ws = workspace(&name, "sleep 300;", "{ threads = 1, time = 1 }");
    let o = ws.podium(&[
        "run",
        "-f",
        "p.toml",
        "--executor",
        "slurm",
        "train[fold=0]",
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("time limit (0-00:01:00)")
            && t.contains("raise `resources.time` of stage `train`"),
        "{t}"
    );
}

#[test]
fn without_slurm_commands_the_error_says_so_at_once() {
    let ws = workspace("nosbatch", "", "{ threads = 1 }");
    let empty = tempfile::tempdir().unwrap();
    let o = ws
        .cmd(&["run", "-f", "p.toml", "--executor", "slurm"])
        .env("PATH", empty.path())
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("`sbatch` is not on PATH"), "{t}");
}

#[test]
fn a_job_slurm_requeues_mid_run_runs_again_and_the_run_succeeds() {
    if !cluster() {
        return;
    }
    let name = unique("requeued");
    let ws = workspace(&name, "sleep 6;", "{ threads = 1 }");
    let child = ws
        .cmd(&[
            "run",
            "-f",
            "p.toml",
            "--executor",
            "slurm",
            "train[fold=0]",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // What preemption or a lost node does with a requeueable job.
    let mut running = String::new();
    wait_until("train[fold=0] to run", 300, || {
        running = jobs_of(&name)
            .into_iter()
            .find(|j| j.1 == "RUNNING" && j.2.contains(":train"))
            .map(|j| j.0)
            .unwrap_or_default();
        !running.is_empty()
    });
    std::thread::sleep(Duration::from_secs(1));
    let rq = Command::new("scontrol")
        .args(["requeue", &running])
        .output()
        .unwrap();
    assert!(rq.status.success(), "{}", text(&rq));
    // Slurm holds a requeued job back for a while (BeginTime); let it go.
    std::thread::sleep(Duration::from_secs(1));
    let _ = Command::new("scontrol")
        .args(["update", &format!("jobid={running}"), "starttime=now"])
        .output();
    let out = child.wait_with_output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("ran      train[fold=0]"), "{t}");
    let model = ws.read(&format!("out/{name}/train/fold=0/model.txt"));
    assert_eq!(
        model.trim(),
        (1..=30).filter(|i| i % 3 != 0).sum::<i32>().to_string()
    );
}
