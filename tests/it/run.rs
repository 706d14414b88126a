//! The CLI on fixture pipelines: what executes, what is a cache hit, and
//! what survives a kill, asserted by instance name.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::ws::{Ws, podium_cmd};

const PIPELINE: &str = r#"
[pipeline]
name = "t"

[params]
folds = 3
scale = 2
note = "a"

[inputs.numbers]
path = "data/numbers.txt"

[stages.prepare]
op = "exec"
# `note` only reaches a comment: the output bytes do not depend on it.
cmd = "sort -n ${inputs.numbers} > $PODIUM_OUT/sorted.txt # ${params.note}"
outs = ["sorted.txt"]

[stages.split]
op = "exec"
cmd = "awk -v k=${params.folds} '{print NR % k, $1}' ${stages.prepare.sorted} > $PODIUM_OUT/folds.txt"
outs = ["folds.txt"]

[stages.train]
op = "exec"
matrix = { fold = "${range(params.folds)}" }
cmd = "awk -v f=${fold} -v s=${params.scale} '$1 != f {t += $2} END {print t * s}' ${stages.split.folds} > $PODIUM_OUT/model.txt"
outs = ["model.txt"]

[stages.report]
op = "exec"
cmd = "cat ${stages.train[*].model} > $PODIUM_OUT/all.txt"
outs = ["all.txt"]
"#;

/// A workspace with the manifest `p.toml` and its data, `data/numbers.txt`.
fn ws(manifest: &str) -> Ws {
    let ws = Ws::with_manifest(manifest);
    let numbers: String = (1..=50).rev().map(|i| format!("{i}\n")).collect();
    ws.write("data/numbers.txt", &numbers);
    ws
}

impl Ws {
    /// Runs and returns the JSON report; panics unless it exits with `code`.
    fn run_code(&self, extra: &[&str], code: i32) -> Value {
        let mut args = vec!["run", "-f", "p.toml", "--format", "json"];
        args.extend_from_slice(extra);
        let out = self.podium(&args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn run(&self, extra: &[&str]) -> Value {
        self.run_code(extra, 0)
    }

    /// Whether the store's work directories are all gone.
    fn tmp_is_empty(&self) -> bool {
        std::fs::read_dir(self.path("cache/tmp"))
            .unwrap()
            .next()
            .is_none()
    }
}

impl Ws {
    /// Starts `podium ARGS` and returns once the file `marker` appears (a
    /// stage's command touches it when it has started).
    fn spawn_until(&self, args: &[&str], marker: &str) -> std::process::Child {
        let child = self
            .cmd(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !self.path(marker).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "{marker} never appeared"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child
    }
}

fn names(v: &Value, field: &str) -> Vec<String> {
    v[field]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

const ALL: [&str; 6] = [
    "prepare",
    "split",
    "train[fold=0]",
    "train[fold=1]",
    "train[fold=2]",
    "report",
];

#[test]
fn first_run_executes_everything_and_a_rerun_nothing() {
    let ws = ws(PIPELINE);
    let r = ws.run(&[]);
    assert_eq!(names(&r, "executed"), ALL);
    // The folds hold every number once; fold f's model is 2 × the sum of the others.
    let folds = ws.read("out/t/split/folds.txt");
    assert_eq!(folds.lines().count(), 50);
    let total: i64 = (1..=50).sum();
    let fold0: i64 = folds
        .lines()
        .filter(|l| l.starts_with("0 "))
        .map(|l| l[2..].parse::<i64>().unwrap())
        .sum();
    assert_eq!(
        ws.read("out/t/train/fold=0/model.txt").trim(),
        (2 * (total - fold0)).to_string()
    );
    let r = ws.run(&[]);
    assert!(names(&r, "executed").is_empty());
    assert_eq!(names(&r, "fresh"), ALL);
    // Outputs are visible read-only.
    let meta = std::fs::metadata(ws.path("out/t/report/all.txt")).unwrap();
    assert!(meta.permissions().readonly());
}

#[test]
fn changing_one_param_reruns_exactly_the_dependent_instances() {
    let ws = ws(PIPELINE);
    ws.run(&[]);
    let r = ws.run(&["--set", "params.scale=3"]);
    assert_eq!(
        names(&r, "executed"),
        ["train[fold=0]", "train[fold=1]", "train[fold=2]", "report"]
    );
    assert_eq!(names(&r, "fresh"), ["prepare", "split"]);
    // Back to the old value: everything is in the store already.
    let r = ws.run(&[]);
    assert!(names(&r, "executed").is_empty());
}

#[test]
fn plan_explains_why_each_instance_is_stale() {
    let ws = ws(PIPELINE);
    ws.run(&[]);
    std::fs::write(ws.path("data/numbers.txt"), "7\n3\n").unwrap();
    let out = ws.podium(&["plan", "-f", "p.toml", "--set", "params.folds=2"]);
    assert!(out.status.success());
    insta::assert_snapshot!(String::from_utf8(out.stdout).unwrap());
    let out = ws.podium(&[
        "plan", "-f", "p.toml", "--force", "report", "--format", "json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let report = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instance"] == "report")
        .unwrap();
    assert_eq!(report["status"], "stale");
}

#[test]
fn touching_an_input_without_changing_its_bytes_reruns_nothing() {
    let ws = ws(PIPELINE);
    ws.run(&[]);
    let f = std::fs::File::options()
        .write(true)
        .open(ws.path("data/numbers.txt"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(f);
    let r = ws.run(&[]);
    assert!(names(&r, "executed").is_empty(), "{r}");
}

#[test]
fn an_upstream_rerun_with_identical_output_stops_at_the_cutoff() {
    let ws = ws(PIPELINE);
    ws.run(&[]);
    let r = ws.run(&["--set", "params.note=\"b\""]);
    assert_eq!(names(&r, "executed"), ["prepare"]);
    // Downstream instances were waiting on `prepare`; their keys turn out unchanged.
    assert_eq!(names(&r, "cached"), ALL[1..]);
    assert_eq!(names(&r, "fresh"), Vec::<String>::new());
    // The input changing in a way that reaches the output does rerun downstream.
    std::fs::write(ws.path("data/numbers.txt"), "1\n2\n3\n").unwrap();
    let r = ws.run(&[]);
    assert_eq!(names(&r, "executed"), ALL);
}

#[test]
fn results_are_identical_with_one_thread_and_four_cold_and_warm() {
    let a = ws(PIPELINE);
    let b = ws(PIPELINE);
    a.run(&["-j", "1"]);
    b.run(&["-j", "4"]);
    let keys = |ws: &Ws| {
        let out = ws.podium(&["plan", "-f", "p.toml", "--format", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["instance"].to_string(), i["key"].to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&a), keys(&b));
    for rel in ["out/t/report/all.txt", "out/t/train/fold=2/model.txt"] {
        assert_eq!(a.read(rel), b.read(rel));
    }
    // Warm: a second -j 4 run over the -j 1 store runs nothing.
    assert!(names(&a.run(&["-j", "4"]), "executed").is_empty());
}

#[test]
fn a_failing_instance_shows_its_log_tail_and_spares_independent_work() {
    let ws = ws(PIPELINE);
    let r = ws.run_code(&["--set", "stages.train.cmd=\"echo bad-fold-${fold} >&2; test ${fold} != 1 && echo 1 > $PODIUM_OUT/model.txt\"", "--keep-going"], 1);
    assert_eq!(names(&r, "failed"), ["train[fold=1]"]);
    assert_eq!(names(&r, "skipped"), ["report"]);
    let out = ws.podium(&["run", "-f", "p.toml", "--set", "stages.train.cmd=\"echo bad-fold-${fold} >&2; test ${fold} != 1 && echo 1 > $PODIUM_OUT/model.txt\""]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error: train[fold=1] failed: exec: command exited with status 1"),
        "{err}"
    );
    assert!(err.contains("bad-fold-1"), "the log tail is shown: {err}");
    assert!(err.contains("full log: "), "{err}");
}

#[test]
fn gpus_default_to_what_the_driver_reports_and_the_flag_overrides() {
    let ws = ws(&PIPELINE.replace(
        "[stages.report]\n",
        "[stages.report]\nresources = { gpu = 1 }\n",
    ));
    if podium::nn::gpu_count() == 0 {
        let r = ws.run_code(&["--keep-going"], 1);
        assert_eq!(names(&r, "failed"), ["report"]);
        let out = ws.podium(&["run", "-f", "p.toml"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("needs 1 GPU(s); 0 available"), "{err}");
    }
    // `exec` stages only see the GPU's index ($CUDA_VISIBLE_DEVICES): any
    // machine can pretend to have one.
    let r = ws.run(&["--gpus", "1"]);
    assert_eq!(names(&r, "executed"), ["report"]);
}

#[test]
fn a_missing_declared_output_fails_the_instance() {
    let ws = ws(PIPELINE);
    let out = ws.podium(&[
        "run",
        "-f",
        "p.toml",
        "--set",
        "stages.prepare.cmd=\"true\"",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("did not write declared output(s) `sorted.txt`"),
        "{err}"
    );
}

#[test]
fn check_reports_every_error_and_exits_nonzero() {
    let ws = ws(PIPELINE);
    let out = ws.podium(&[
        "check",
        "p.toml",
        "--set",
        "stages.split.cmd=\"${stages.nope.x} ${params.missing}\"",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no stage named `nope`"), "{err}");
    let out = ws.podium(&[
        "check",
        "p.toml",
        "--format",
        "json",
        "--set",
        "stages.report.outs=[\"../x\"]",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["code"], "invalid-param");
    assert!(
        v[0]["message"]
            .as_str()
            .unwrap()
            .contains("outside $PODIUM_OUT")
    );
    let out = ws.podium(&["check", "missing.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
    // `-f` as every other command takes it; GitHub Actions annotations.
    let out = ws.podium(&["check", "-f", "p.toml"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = ws.podium(&[
        "check",
        "-f",
        "p.toml",
        "--format",
        "github",
        "--set",
        "stages.report.outs=[\"../x\"]",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("::error file=--set stages.report.outs=[\"../x\"]"),
        "{stdout}"
    );
    assert!(stdout.contains("title=podium invalid-param::"), "{stdout}");
}

#[test]
fn sigkill_mid_run_redoes_only_unfinished_instances_its_commands_do_not_outlive_the_rerun_and_the_store_verifies()
 {
    // fold=2 blocks until a marker file appears, so the kill lands while it runs.
    let manifest = PIPELINE.replace(
        "cmd = \"awk -v f=${fold}",
        "cmd = \"if [ ${fold} = 2 ] && [ ! -e release ]; then touch started-2; sleep 31.0071; true; fi; awk -v f=${fold}",
    );
    let ws = ws(&manifest);
    let mut child = ws.spawn_until(&["run", "-f", "p.toml", "-j", "1"], "started-2");
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    // The shell died with podium; what it started (the sleep) is in the
    // command's process group, which the next podium to take the store stops.
    let sleeping = || {
        Command::new("pgrep")
            .args(["-f", "sleep 31.0071"])
            .status()
            .unwrap()
            .success()
    };
    assert!(sleeping(), "the grandchild outlives a SIGKILLed podium");
    let out = ws.podium(&["verify"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stopped 1 command(s) left running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !sleeping(),
        "no command of the killed run runs beside the next"
    );
    assert!(
        out.status.success(),
        "the store is consistent right after the kill"
    );
    std::fs::write(ws.path("release"), "").unwrap();
    let r = ws.run(&[]);
    assert_eq!(
        names(&r, "fresh"),
        ["prepare", "split", "train[fold=0]", "train[fold=1]"]
    );
    assert_eq!(names(&r, "executed"), ["train[fold=2]", "report"]);
    assert!(ws.tmp_is_empty(), "the killed run's work directory is gone");
    let out = ws.podium(&["verify"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 corrupted"));
}

#[test]
fn two_concurrent_runs_on_one_store_both_end_correctly() {
    let manifest = PIPELINE.replace("sort -n", "sleep 0.3; sort -n");
    let ws = ws(&manifest);
    let spawn = || {
        ws.cmd(&["run", "-f", "p.toml", "--format", "json"])
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success());
    let (ra, rb): (Value, Value) = (
        serde_json::from_slice(&a.stdout).unwrap(),
        serde_json::from_slice(&b.stdout).unwrap(),
    );
    let mut executed = names(&ra, "executed");
    executed.extend(names(&rb, "executed"));
    executed.sort();
    let mut all: Vec<String> = ALL.iter().map(|s| s.to_string()).collect();
    all.sort();
    assert_eq!(
        executed, all,
        "each instance ran exactly once across both runs"
    );
    let waited = [&a, &b]
        .iter()
        .any(|o| String::from_utf8_lossy(&o.stderr).contains("waiting for another podium run"));
    assert!(waited);
    assert!(ws.podium(&["verify"]).status.success());
    // --no-wait fails clearly while the lock is held.
    let holder = ws
        .cmd(&["run", "-f", "p.toml", "--force", "prepare"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(150));
    let out = ws.podium(&["run", "-f", "p.toml", "--no-wait"]);
    let mut holder = holder;
    holder.wait().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("locked by another podium run"));
}

#[test]
fn verify_drops_a_corrupted_object_and_the_next_run_recomputes_it() {
    let ws = ws(PIPELINE);
    ws.run(&[]);
    let target = std::fs::canonicalize(ws.path("out/t/report/all.txt")).unwrap();
    // The out/ file is a hard link to the object: corrupt the object through a fresh path.
    let objects = ws.path("cache/objects");
    let want = blake3::hash(std::fs::read(&target).unwrap().as_slice())
        .to_hex()
        .to_string();
    let obj = objects.join(&want[..2]).join(&want[2..]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&obj, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&obj, "garbage").unwrap();
    let out = ws.podium(&["verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupted"));
    let r = ws.run(&[]);
    assert_eq!(names(&r, "executed"), ["report"]);
    assert!(ws.podium(&["verify"]).status.success());
}

#[test]
fn gc_frees_what_no_manifest_references() {
    let ws = ws(PIPELINE);
    ws.run(&["--set", "params.scale=5"]);
    ws.run(&[]);
    let out = ws.podium(&["gc", "p.toml", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.starts_with("would free"), "{text}");
    let out = ws.podium(&["gc", "p.toml"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("4 record(s)"),
        "the scale=5 train and report records go: {text}"
    );
    assert!(
        names(&ws.run(&[]), "executed").is_empty(),
        "what the manifest uses stays"
    );
    assert_eq!(
        names(&ws.run(&["--set", "params.scale=5"]), "executed").len(),
        4
    );
}

#[test]
fn dag_marks_stale_instances() {
    let ws = ws(PIPELINE);
    ws.run(&["report"]);
    let out = ws.podium(&[
        "dag",
        "-f",
        "p.toml",
        "--set",
        "params.scale=9",
        "--format",
        "dot",
    ]);
    let dot = String::from_utf8(out.stdout).unwrap();
    assert!(dot.starts_with("digraph \"t\""));
    assert!(dot.contains("train[fold=1]\\n(exec)\\nstale"), "{dot}");
    assert!(
        dot.contains("n0 [label=\"prepare\\n(exec)\", fillcolor=\"#d4ecd4\"]"),
        "{dot}"
    );
    assert!(dot.contains("n1 -> n2;"));
}

#[test]
fn targets_run_only_what_they_need() {
    let ws = ws(PIPELINE);
    let r = ws.run(&["train[fold=1]"]);
    assert_eq!(names(&r, "executed"), ["prepare", "split", "train[fold=1]"]);
    let out = ws.podium(&["run", "-f", "p.toml", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no stage `nope`"));
}

#[test]
fn op_runs_one_op_alone_and_reports_bad_parameters() {
    let ws = ws(PIPELINE);
    let out = ws.podium(&[
        "op",
        "exec",
        "--set",
        "cmd=sort -n $PODIUM_DEP_0 > $PODIUM_OUT/s.txt",
        "--set",
        "outs=[\"s.txt\"]",
        "data/numbers.txt",
        "-o",
        "sorted.txt",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ws.read("sorted.txt").starts_with("1\n2\n3\n"));
    let out = ws.podium(&[
        "op",
        "exec",
        "--set",
        "cmd=exit 1",
        "--set",
        "outs=[\"s.txt\"]",
        "-o",
        "sorted.txt",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .any(|l| l.starts_with("error: exec: command exited with status 1")),
        "{err}"
    );
    assert!(
        ws.read("sorted.txt").starts_with("1\n2\n3\n"),
        "output untouched on failure"
    );
    let out = ws.podium(&["op", "exec", "--set", "cmnd=true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("error: exec: op `exec` has no parameter `cmnd`")
    );
}

/// Runs a shipped manifest with `args` (its `--set`s), store and outputs
/// in a fresh directory; the directory and podium's stderr.
fn run_shipped(manifest: &str, args: &[&str]) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = podium_cmd(root, &[])
        .args(["run", "-f", manifest])
        .args(args)
        .arg("--store")
        .arg(dir.path().join("cache"))
        .arg("--out-dir")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{manifest}: {err}");
    (dir, err)
}

#[test]
fn the_demo_pipeline_runs_and_scores_well_above_chance() {
    // Two epochs and three folds keep the test short; the README runs the full demo.
    let (dir, _) = run_shipped(
        "pipelines/demo.toml",
        &[
            "--format",
            "json",
            "--set",
            "params.epochs=2",
            "--set",
            "params.folds=3",
        ],
    );
    let metrics: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/demo/evaluate/metrics.json")).unwrap(),
    )
    .unwrap();
    let acc = metrics["accuracy"].as_f64().unwrap();
    assert!(acc > 0.6, "4 classes, chance is 0.25: got {acc}");
    let cv: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/demo/cv/metrics.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cv["folds"], 3.0);
    assert!(cv["accuracy"].as_f64().unwrap() > 0.5, "{cv}");
    assert!(cv["accuracy_std"].as_f64().unwrap() >= 0.0, "{cv}");
    let sub =
        std::fs::read_to_string(dir.path().join("out/demo/submission/submission.csv")).unwrap();
    assert_eq!(sub.lines().count(), 201);
}

/// The HuBMAP manifest end to end, at its smallest: two folds, one epoch per
/// stage, a few images. What it must hand over is checked, not how good it
/// is (the instance model's learning is asserted in `detect`).
#[test]
fn the_hubmap_pipeline_runs_end_to_end_and_writes_encoded_masks() {
    let (dir, err) = run_shipped(
        "pipelines/hubmap.toml",
        &[
            "--set",
            "params.folds=2",
            "--set",
            "params.epochs=1",
            "--set",
            "params.ft_epochs=1",
            "--set",
            "params.n_train=40",
            "--set",
            "params.n_weak=40",
            "--set",
            "params.n_unlabelled=20",
        ],
    );
    assert!(err.contains("32 ran"), "{err}");
    let out = dir.path().join("out/hubmap");
    let read = |p: &str| std::fs::read_to_string(out.join(p)).unwrap();
    // The fine-tunes started from the pretraining's best checkpoint.
    let log = std::fs::read_to_string(dir.path().join("cache/logs/hubmap/m1_fold=0_.log")).unwrap();
    assert!(log.contains("pretrain/best.safetensors: loaded"), "{log}");
    // Every fused object carries its mask.
    for f in ["fuse_u/instances.json", "fuse/instances.json"] {
        let v: Value = serde_json::from_str(&read(f)).unwrap();
        for d in v.as_array().unwrap() {
            assert!(d["segmentation"]["counts"].is_string(), "{f}: {d}");
        }
    }
    let pseudo: Value = serde_json::from_str(&read("pseudo/pseudo_coco.json")).unwrap();
    assert_eq!(pseudo["images"].as_array().unwrap().len(), 20);
    for m in ["evaluate_m1", "evaluate"] {
        let v: Value = serde_json::from_str(&read(&format!("{m}/metrics.json"))).unwrap();
        let map = v["coco_segm_map"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&map), "{m}: {v}");
    }
    let sub = read("submission/submission.csv");
    let mut lines = sub.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("id,"), "{header}");
    assert_eq!(lines.count(), 60);
}

/// The SIIM manifest end to end, at its smallest: two folds, one epoch per
/// stage. What it must hand over is checked, not how good it is (the
/// detectors' learning is asserted in `detect`).
#[test]
fn the_siim_pipeline_runs_end_to_end_and_writes_siim_strings() {
    let (dir, err) = run_shipped(
        "pipelines/siim.toml",
        &[
            "--set",
            "params.folds=2",
            "--set",
            "params.epochs=1",
            "--set",
            "params.ft_epochs=1",
            "--set",
            "params.n_train=60",
        ],
    );
    assert!(err.contains("28 ran"), "{err}");
    let out = dir.path().join("out/siim");
    let read = |p: &str| std::fs::read_to_string(out.join(p)).unwrap();
    // Stage 2 started from stage 1's best checkpoint, fold by fold.
    for fold in 0..2 {
        let ft: Value =
            serde_json::from_str(&read(&format!("d5_ft/fold={fold}/metrics.json"))).unwrap();
        assert!(ft["coco_map50"].is_number(), "{ft}");
    }
    // The external family's COCO results are fused with podium's.
    let yolo: Value = serde_json::from_str(&read("yolo/detections.json")).unwrap();
    assert!(
        !yolo.as_array().unwrap().is_empty(),
        "the stand-in found shapes"
    );
    let pseudo: Value = serde_json::from_str(&read("pseudo/pseudo_coco.json")).unwrap();
    assert_eq!(pseudo["images"].as_array().unwrap().len(), 100);
    for a in pseudo["annotations"].as_array().unwrap() {
        let w = a["weight"].as_f64().unwrap();
        assert!(
            (0.5..=1.0).contains(&w),
            "pseudo labels weighted by score: {a}"
        );
    }
    for m in ["evaluate_stage1", "evaluate"] {
        let v: Value = serde_json::from_str(&read(&format!("{m}/metrics.json"))).unwrap();
        let map50 = v["coco_map50"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&map50), "{m}: {v}");
    }
    let sub = read("submission/submission.csv");
    let mut lines = sub.lines();
    assert_eq!(lines.next(), Some("id,PredictionString"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 100);
    for (i, row) in rows.iter().enumerate() {
        let (id, pred) = row.split_once(',').unwrap();
        assert_eq!(id, format!("test_{i:05}"));
        let words: Vec<&str> = pred.split(' ').collect();
        assert_eq!(words.len() % 6, 0, "{row}");
        let groups: Vec<&[&str]> = words.chunks(6).collect();
        let (none, boxes) = groups.split_last().unwrap();
        for d in boxes {
            assert_eq!(d[0], "opacity", "{row}");
            assert!(d[1..].iter().all(|v| v.parse::<f64>().is_ok()), "{row}");
        }
        // Every image ends with SIIM's `none` box (`none = "boxes"`): one
        // minus its best opacity's score.
        assert_eq!(
            (none[0], &none[2..]),
            ("none", &["0", "0", "1", "1"][..]),
            "{row}"
        );
        let best = boxes
            .iter()
            .map(|d| d[1].parse::<f64>().unwrap())
            .fold(0.0, f64::max);
        let p: f64 = none[1].parse().unwrap();
        assert!((p - (1.0 - best)).abs() < 2e-6, "{row}");
    }
}

#[test]
fn ctrl_c_stops_cleanly_keeping_finished_instances() {
    let manifest = PIPELINE.replace(
        "cmd = \"awk -v f=${fold}",
        "cmd = \"if [ ${fold} = 2 ] && [ ! -e release ]; then touch started-2; echo partial > $PODIUM_OUT/model.txt; sleep 30; fi; awk -v f=${fold}",
    );
    let ws = ws(&manifest);
    let child = ws.spawn_until(
        &["run", "-f", "p.toml", "-j", "1", "--format", "json"],
        "started-2",
    );
    // SAFETY: sending SIGINT to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "the running command was stopped, not waited for"
    );
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"));
    assert!(
        !ws.path("out/t/train/fold=2").exists(),
        "the partial output is discarded"
    );
    assert!(
        std::fs::read_dir(ws.path("cache/tmp"))
            .unwrap()
            .next()
            .is_none()
    );
    std::fs::write(ws.path("release"), "").unwrap();
    let r = ws.run(&[]);
    assert_eq!(
        names(&r, "fresh"),
        ["prepare", "split", "train[fold=0]", "train[fold=1]"]
    );
    assert_eq!(names(&r, "executed"), ["train[fold=2]", "report"]);
}

/// The data ops as manifest stages, chained the way a competition pipeline
/// chains them; a stand-in "model" (awk) scores each class from the labels.
const OPS_PIPELINE: &str = r#"
[pipeline]
name = "ops"

[params]
folds = 3

[stages.data]
op = "synth"
task = "multilabel"
n_train = 60
n_test = 30
size = 16

[stages.norm]
op = "stats"
images = "${stages.data.train_images}"

[stages.folds]
op = "folds"
labels = "${stages.data.train}"
kind = "multilabel"
by = "Target"
k = "${params.folds}"

[stages.model]
op = "exec"
matrix = { seed = [1, 2] }
cmd = "awk -F, -v s=${seed} -f score.awk ${stages.data.train} > $PODIUM_OUT/oof.csv && awk -F, -v s=${seed} -f score.awk ${stages.data.test} > $PODIUM_OUT/test.csv"
deps = ["score.awk", "${stages.folds.folds}"]
outs = ["oof.csv", "test.csv"]

[stages.blend_oof]
op = "ensemble"
preds = "${stages.model[*].oof}"

[stages.blend]
op = "ensemble"
preds = "${stages.model[*].test}"

[stages.post]
op = "postprocess"
pred = "${stages.blend.pred}"
method = "threshold"
fit_pred = "${stages.blend_oof.pred}"
fit_truth = "${stages.data.train}"
at_least_one = true
column = "Target"

[stages.score]
op = "evaluate"
truth = "${stages.data.test}"
pred = "${stages.post.labels}"
metric = ["f1_macro", "accuracy"]

[stages.submit]
op = "submission"
pred = "${stages.post.labels}"
sample = "${stages.data.sample_submission}"
"#;

/// Class c scores 0.6 to 0.8 when the row has it, 0.2 to 0.4 when not.
const SCORE_AWK: &str = r#"
NR == 1 { print "id,0,1,2"; next }
{
  line = $1
  for (c = 0; c < 3; c++) {
    has = (" " $2 " ") ~ (" " c " ")
    noise = ((NR * 7919 + c * 104729 + s * 31) % 100) / 500 - 0.1
    line = line "," (has ? 0.7 : 0.3) + noise
  }
  print line
}
"#;

#[test]
fn the_data_ops_run_as_manifest_stages_and_rerun_nothing_when_unchanged() {
    let ws = ws(OPS_PIPELINE);
    std::fs::write(ws.path("score.awk"), SCORE_AWK).unwrap();
    let r = ws.run(&[]);
    assert_eq!(names(&r, "executed").len(), 10, "{r}");
    let metrics: Value = serde_json::from_str(&ws.read("out/ops/score/metrics.json")).unwrap();
    assert_eq!(metrics["f1_macro"].as_f64(), Some(1.0), "{metrics}");
    assert_eq!(metrics["accuracy"].as_f64(), Some(1.0), "{metrics}");
    let sub = ws.read("out/ops/submit/submission.csv");
    assert!(sub.starts_with("id,Target\ntest_00000,"), "{sub}");
    assert_eq!(sub.lines().count(), 31);
    assert_eq!(ws.read("out/ops/folds/folds.csv").lines().count(), 61);
    let r = ws.run(&[]);
    assert!(names(&r, "executed").is_empty(), "{r}");
    // One op parameter changes: that stage and what reads it rerun.
    let r = ws.run(&["--set", "stages.score.metric=[\"f1_macro\"]"]);
    assert_eq!(names(&r, "executed"), ["score"], "{r}");
}

/// Two stages whose keys coincide (the same command over the same bytes):
/// the second is a cache hit at run time, on the first's record.
const SAME_KEY: &str = r#"
[pipeline]
name = "k"

[params]
n = 1

[stages.a]
op = "exec"
cmd = "echo ${params.n} > $PODIUM_OUT/o"
outs = ["o"]

[stages.b]
op = "exec"
cmd = "cat ${stages.a.o} > $PODIUM_OUT/o"
outs = ["o"]

[stages.c]
op = "exec"
cmd = "cat ${stages.b.o} > $PODIUM_OUT/o"
outs = ["o"]
"#;

#[test]
fn an_instance_cached_on_another_instances_record_keeps_its_own_state() {
    let ws = ws(SAME_KEY);
    let r = ws.run(&[]);
    assert_eq!(names(&r, "executed"), ["a", "b"]);
    assert_eq!(names(&r, "cached"), ["c"]);
    let out = ws.podium(&["status", "-f", "p.toml", "--format", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["instances"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for row in rows {
        assert_eq!(row["status"], "fresh", "{row}");
        assert!(row["run"].is_object(), "{row}: no run recorded");
    }
    // Its explanation compares with its own last run, not "never run".
    let out = ws.podium(&["plan", "-f", "p.toml", "--set", "params.n=2"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("never run"), "{text}");
}

#[test]
fn quiet_instances_share_one_work_directory_and_leave_no_log_files() {
    let manifest = r#"
[pipeline]
name = "q"

[stages.s]
op = "exec"
matrix = { i = "${range(4)}" }
cmd = "echo ${i} $PODIUM_OUT > $PODIUM_OUT/o"
outs = ["o"]

[stages.loud]
op = "exec"
cmd = "echo hello; cat ${stages.s[*].o} > $PODIUM_OUT/o"
outs = ["o"]

# Two keys, one output: the second copy is discarded.
[stages.same]
op = "exec"
matrix = { j = [0, 1] }
cmd = "echo same > $PODIUM_OUT/o # ${j}"
outs = ["o"]
"#;
    let ws = ws(manifest);
    ws.run(&["-j", "1"]);
    let dirs: std::collections::BTreeSet<String> = (0..4)
        .map(|i| ws.read(&format!("out/q/s/i={i}/o")))
        .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
        .collect();
    assert_eq!(
        dirs.len(),
        1,
        "one work directory, emptied and reused: {dirs:?}"
    );
    let logs: Vec<String> = std::fs::read_dir(ws.path("cache/logs/q"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        logs,
        ["loud.log"],
        "only the instance that printed keeps a log"
    );
    assert_eq!(ws.read("cache/logs/q/loud.log"), "hello\n");
    assert_eq!(ws.read("out/q/same/j=1/o"), "same\n");
    assert!(
        ws.tmp_is_empty(),
        "the work directory and the discarded copy go when the run ends"
    );
    // The kept log is also the log object (one file, two names), intact.
    use std::os::unix::fs::MetadataExt;
    let log = std::fs::metadata(ws.path("cache/logs/q/loud.log")).unwrap();
    assert_eq!(log.nlink(), 2);
    let out = ws.podium(&["verify"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 corrupted"));
}

/// Regression (issue 23): after running `hpa.toml` and then `aptos.toml`,
/// both with a stage `evaluate`, `out/evaluate/` held APTOS's results and
/// HPA's view was gone. Each pipeline has its own `out/<pipeline>/`.
#[test]
fn manifests_whose_stages_share_names_keep_their_views_side_by_side() {
    let ws = Ws::new();
    for name in ["hpa", "aptos"] {
        ws.write(
            &format!("pipelines/{name}.toml"),
            &format!(
                "[stages.evaluate]\nop = \"exec\"\ncmd = \"echo {name} > $PODIUM_OUT/metrics.json\"\n\
                 outs = [\"metrics.json\"]\n"
            ),
        );
    }
    for name in ["hpa", "aptos"] {
        let out = ws.podium(&["run", "-f", &format!("pipelines/{name}.toml")]);
        assert!(out.status.success(), "{out:?}");
    }
    assert_eq!(ws.read("out/hpa/evaluate/metrics.json"), "hpa\n");
    assert_eq!(ws.read("out/aptos/evaluate/metrics.json"), "aptos\n");
    assert!(!ws.path("out/evaluate").exists());
}

/// Regression (issue 23): after a run with `--set`, `status` for the
/// manifest as written showed the other configuration's metrics (to 16
/// digits), and `plan` listed an edit twice, as the param and again as
/// every op parameter it reaches.
#[test]
fn status_and_plan_speak_of_the_configuration_asked_about() {
    let manifest = r#"
[pipeline]
name = "e"

[params]
lr = 1

[stages.train]
op = "exec"
cmd = "echo '{\"score\": ${params.lr / 3.0}}' > $PODIUM_OUT/metrics.json"
outs = ["metrics.json"]
"#;
    let ws = ws(manifest);
    ws.run(&[]);
    ws.run(&["--set", "params.lr=2"]);
    let out = ws.podium(&["status", "-f", "p.toml"]);
    let text = String::from_utf8(out.stdout).unwrap();
    let row = text.lines().find(|l| l.contains("train")).unwrap();
    assert!(row.contains("fresh"), "{text}");
    assert!(row.ends_with("score=0.3333"), "{text}");
    let out = ws.podium(&["status", "-f", "p.toml", "--set", "params.lr=3"]);
    let text = String::from_utf8(out.stdout).unwrap();
    let row = text.lines().find(|l| l.contains("train")).unwrap();
    assert!(row.contains("stale"), "{text}");
    assert!(
        row.contains("params.lr changed (2 → 3); last run"),
        "{text}"
    );
    assert!(row.ends_with("score=0.6667"), "{text}");
    let out = ws.podium(&["plan", "-f", "p.toml", "--set", "params.lr=3"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("params.lr changed (2 → 3)"), "{text}");
    assert!(
        !text.contains("param cmd"),
        "said once, by its source: {text}"
    );
}

const EXPERIMENT: &str = r#"
[pipeline]
name = "e"

[params]
lr = 1

[stages.train]
op = "exec"
matrix = { fold = [0, 1] }
cmd = "echo '{\"score\": ${params.lr / 4.0 + fold * 0.1}, \"loss\": ${1.0 / params.lr}}' > $PODIUM_OUT/metrics.json"
outs = ["metrics.json"]
"#;

/// The daily loop (issue 23): variants run with `--set`, each an
/// experiment; `exp` ranks them by their fold mean, `diff` sets two side
/// by side, a pin and `--keep-best` decide what `gc` keeps.
#[test]
fn experiments_are_ranked_by_cv_diffed_pinned_and_kept_by_policy() {
    let ws = ws(EXPERIMENT);
    ws.run(&["--set", "params.lr=0.5"]);
    ws.run(&[]);
    ws.run(&["--set", "params.lr=2", "--name", "two"]);
    // The same configuration again is the same experiment, still named.
    ws.run(&["--set", "params.lr=2"]);
    ws.run(&["--set", "params.lr=3"]);
    let exp = |args: &[&str]| {
        let out = ws.podium(&[&["exp", "-f", "p.toml"], args].concat());
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let v: Value =
        serde_json::from_str(&exp(&["--sort", "train.score", "--format", "json"])).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    let lrs: Vec<&str> = rows
        .iter()
        .map(|r| r["params"]["lr"].as_str().unwrap())
        .collect();
    assert_eq!(lrs, ["3", "2", "1", "0.5"], "best score first");
    let cv = &rows[2]["metrics"]["train.score"];
    assert!((cv["mean"].as_f64().unwrap() - 0.3).abs() < 1e-9, "{cv}");
    // numpy.std([0.25, 0.35], ddof=1)
    assert!(
        (cv["std"].as_f64().unwrap() - 0.070710678).abs() < 1e-6,
        "{cv}"
    );
    assert_eq!(rows[1]["name"], "two");
    // Losses rank low first.
    let v: Value =
        serde_json::from_str(&exp(&["--sort", "train.loss", "--format", "json"])).unwrap();
    assert_eq!(v[0]["params"]["lr"], "3");
    let text = exp(&["--format", "csv"]);
    assert!(
        text.starts_with("experiment,name,lr,train.loss,train.score,compute,store"),
        "{text}"
    );
    let diff = exp(&["diff", "two", &rows[0]["id"].as_str().unwrap()[..6]]);
    let lr = diff.lines().find(|l| l.starts_with("lr")).unwrap();
    assert_eq!(
        lr.split_whitespace().collect::<Vec<_>>(),
        ["lr", "2", "3"],
        "{diff}"
    );
    let score = diff.lines().find(|l| l.starts_with("train.score")).unwrap();
    assert!(score.ends_with("+0.25 (better)"), "{diff}");
    // gc: the manifest's own configuration, the pinned one and the best by
    // loss (also the last run) stay; the fourth is freed.
    exp(&["pin", "two"]);
    let out = ws.podium(&["gc", "p.toml", "--keep-best", "1", "--by", "train.loss"]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_str(&exp(&["--format", "json"])).unwrap();
    let store: BTreeMap<String, bool> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["params"]["lr"].as_str().unwrap().to_string(),
                r["store_bytes"].is_u64(),
            )
        })
        .collect();
    assert_eq!(
        store,
        BTreeMap::from([
            ("0.5".into(), false),
            ("1".into(), true),
            ("2".into(), true),
            ("3".into(), true)
        ])
    );
}

/// `podium init` (issue 23) on each task's data in Kaggle's layout (as
/// `synth` writes it): a manifest that `check` accepts as written; for
/// classify it runs end to end to a submission and a CV score. It never
/// replaces a file.
#[test]
fn init_writes_a_manifest_that_checks_for_every_task_and_runs() {
    for task in ["classify", "multilabel", "regress", "detect", "segment"] {
        let ws = Ws::new();
        let out = ws.podium(&[
            "op",
            "synth",
            "--set",
            &format!("task={task}"),
            "--set",
            "n_train=20",
            "--set",
            "n_test=6",
            "--set",
            "size=16",
            "-o",
            "comp",
        ]);
        assert!(out.status.success(), "{task}: {out:?}");
        let out = ws.podium(&["init", "comp", "--task", task]);
        assert!(out.status.success(), "{task}: {out:?}");
        let text = ws.read("pipelines/comp.toml");
        assert!(text.contains(&format!("task = \"{task}\"")), "{text}");
        let out = ws.podium(&["check", "-f", "pipelines/comp.toml"]);
        assert!(
            out.status.success(),
            "{task}: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        if task == "classify" {
            let out = ws.podium(&[
                "run",
                "-f",
                "pipelines/comp.toml",
                "--set",
                "params.epochs=1",
                "--set",
                "params.folds=2",
            ]);
            assert!(out.status.success(), "{out:?}");
            assert_eq!(
                ws.read("out/comp/submission/submission.csv")
                    .lines()
                    .count(),
                7
            );
            let cv: Value = serde_json::from_str(&ws.read("out/comp/cv/metrics.json")).unwrap();
            assert_eq!(cv["folds"], 2.0);
            // A second init does not replace the manifest.
            ws.write("pipelines/comp.toml", "# mine\n");
            let out = ws.podium(&["init", "comp"]);
            assert_eq!(out.status.code(), Some(1));
            assert!(String::from_utf8_lossy(&out.stderr).contains("never replaces"));
            assert_eq!(ws.read("pipelines/comp.toml"), "# mine\n");
        }
    }
}
