//! The remote cache: a second machine (a second, empty store) with the same
//! manifest and inputs executes nothing and gets byte-identical `out/`;
//! transfers cut midway leave nothing half-written; a damaged remote object
//! is never served; a missing bucket and refused credentials are clear
//! errors. Against a shared directory (`file://`) always, and against a real
//! S3 API server (moto) on 127.0.0.1 where `PODIUM_TEST_S3` names one
//! (`.ci/run` starts it; elsewhere the S3 tests print why they are skipped,
//! unless `PODIUM_REQUIRE_SERVICES=1`, which makes a missing server a
//! failure).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use crate::ws::Ws;

/// Fan-out, fan-in, a directory output with an executable, and one output
/// large enough to need many packets.
const PIPELINE: &str = r#"
[pipeline]
name = "r"

[params]
folds = 3
note = "a"

[inputs.numbers]
path = "data/numbers.txt"

[stages.prepare]
op = "exec"
# `note` only reaches a comment: the output bytes do not depend on it.
cmd = "sort -n ${inputs.numbers} > $PODIUM_OUT/sorted.txt # ${params.note}"
outs = ["sorted.txt"]

[stages.big]
op = "exec"
cmd = "seq 1 300000 > $PODIUM_OUT/big.txt"
outs = ["big.txt"]

[stages.shards]
op = "exec"
cmd = "mkdir $PODIUM_OUT/shards && seq 1 10 > $PODIUM_OUT/shards/a.txt && printf 'echo hi\\n' > $PODIUM_OUT/shards/run.sh && chmod +x $PODIUM_OUT/shards/run.sh"
outs = ["shards"]

[stages.train]
op = "exec"
matrix = { fold = "${range(params.folds)}" }
cmd = "awk -v f=${fold} 'NR % 3 != f {t += $1} END {print t}' ${stages.prepare.sorted} > $PODIUM_OUT/model.txt"
outs = ["model.txt"]

[stages.report]
op = "exec"
cmd = "cat ${stages.train[*].model} > $PODIUM_OUT/all.txt; wc -l < ${stages.big.big} >> $PODIUM_OUT/all.txt"
outs = ["all.txt"]
"#;

/// One machine: the manifest, its data, its own store and `out/`.
fn machine() -> Ws {
    let ws = Ws::with_manifest(PIPELINE);
    let numbers: String = (1..=50).rev().map(|i| format!("{i}\n")).collect();
    ws.write("data/numbers.txt", &numbers);
    ws
}

/// Where the S3 tests find their server, with credentials for it.
struct S3 {
    endpoint: String,
}

static BUCKETS: AtomicUsize = AtomicUsize::new(0);

impl S3 {
    /// The server `PODIUM_TEST_S3` names (`http://127.0.0.1:PORT`), or
    /// `None` with the reason printed.
    fn get(var: &str) -> Option<S3> {
        match std::env::var(var) {
            Ok(endpoint) => Some(S3 { endpoint }),
            Err(_) if std::env::var_os("PODIUM_REQUIRE_SERVICES").is_some() => {
                panic!("{var} is not set, and PODIUM_REQUIRE_SERVICES says the S3 tests must run")
            }
            Err(_) => {
                eprintln!(
                    "skipped: no S3 server ({var} unset; .ci/run starts moto_server and sets it)"
                );
                None
            }
        }
    }

    /// A new, empty bucket of this test's own.
    fn bucket(&self) -> String {
        let name = format!(
            "podium-{}-{}",
            std::process::id(),
            BUCKETS.fetch_add(1, Ordering::Relaxed)
        );
        let (host, _) = host_port(&self.endpoint);
        let mut s = TcpStream::connect(&host).unwrap();
        write!(
            s,
            "PUT /{name} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "create bucket: {answer}"
        );
        name
    }
}

fn host_port(endpoint: &str) -> (String, u16) {
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let port = host.rsplit(':').next().unwrap().parse().unwrap();
    (host.to_string(), port)
}

/// `podium ARGS` on a machine, against an S3 endpoint with test credentials.
fn podium_s3(ws: &Ws, endpoint: &str, args: &[&str]) -> Output {
    s3_cmd(ws, endpoint, args).output().unwrap()
}

fn s3_cmd(ws: &Ws, endpoint: &str, args: &[&str]) -> Command {
    let mut c = ws.cmd(args);
    c.env("AWS_ACCESS_KEY_ID", "podium-test")
        .env("AWS_SECRET_ACCESS_KEY", "podium-test-secret")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE");
    c
}

/// The JSON report of a run that exited with `code`.
fn report(out: &Output, code: i32) -> Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr:\n{stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"))
}

fn names(v: &Value, field: &str) -> Vec<String> {
    let mut n: Vec<String> = v[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} in {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

const ALL: [&str; 7] = [
    "big",
    "prepare",
    "report",
    "shards",
    "train[fold=0]",
    "train[fold=1]",
    "train[fold=2]",
];

/// The line of `text` that holds `what`.
fn line_of<'a>(text: &'a str, what: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no `{what}` in:\n{text}"))
}

/// Every file under `dir`, by relative path, with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Machine A runs and pushes; machine B, empty, runs and executes nothing.
fn second_machine_executes_nothing(run: &dyn Fn(&Ws, &[&str]) -> Output) {
    let a = machine();
    let first = report(&run(&a, &["run", "-f", "p.toml", "--format", "json"]), 0);
    assert_eq!(names(&first, "executed"), ALL);
    assert_eq!(first["pushed"], 7);

    let b = machine();
    let plan = run(&b, &["plan", "-f", "p.toml"]);
    let text = String::from_utf8_lossy(&plan.stdout);
    assert_eq!(text.matches("cached remotely").count(), 7, "{text}");
    let out = run(&b, &["run", "-f", "p.toml", "--format", "json"]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        said.contains("fetching 7 instance(s) (1.9 MiB) from "),
        "{said}"
    );
    let second = report(&out, 0);
    assert!(names(&second, "executed").is_empty(), "{second}");
    assert_eq!(names(&second, "fetched"), ALL);
    assert_eq!(tree(&a.path("out")), tree(&b.path("out")));
    use std::os::unix::fs::PermissionsExt;
    let mode = |ws: &Ws| {
        let m = std::fs::metadata(ws.path("out/r/shards/shards/run.sh")).unwrap();
        m.permissions().mode() & 0o111
    };
    assert_ne!(mode(&b), 0, "the executable arrived executable");
    assert_eq!(mode(&a), mode(&b));
    // Fetched results are the store's own now: a rerun needs no remote.
    let third = report(
        &run(
            &b,
            &["run", "-f", "p.toml", "--format", "json", "--no-remote"],
        ),
        0,
    );
    assert_eq!(names(&third, "fresh"), ALL);
    let verify = b.podium(&["verify"]);
    assert!(verify.status.success(), "{verify:?}");
}

#[test]
fn a_second_machine_with_an_empty_store_executes_nothing_through_a_shared_directory() {
    let shared = tempfile::tempdir().unwrap();
    let url = format!("file://{}", shared.path().display());
    second_machine_executes_nothing(&|ws, args| {
        let mut a = args.to_vec();
        a.extend(["--remote", &url]);
        ws.podium(&a)
    });
    assert!(shared.path().join("records").is_dir());
}

#[test]
fn a_second_machine_with_an_empty_store_executes_nothing_through_s3() {
    let Some(s3) = S3::get("PODIUM_TEST_S3") else {
        return;
    };
    let url = format!("s3://{}/team/cache", s3.bucket());
    second_machine_executes_nothing(&|ws, args| {
        let mut a = args.to_vec();
        a.extend(["--remote", &url]);
        podium_s3(ws, &s3.endpoint, &a)
    });
}

#[test]
fn push_and_pull_by_hand_and_the_remote_is_read_after_an_upstream_cutoff() {
    let shared = tempfile::tempdir().unwrap();
    // The remote in the config file, not on the command line; this machine
    // runs without pushing.
    let config = format!(
        "[remote]\nurl = \"file://{}\"\npush = false\n",
        shared.path().display()
    );
    let a = machine();
    a.write(".podium/config.toml", &config);
    let first = report(&a.podium(&["run", "-f", "p.toml", "--format", "json"]), 0);
    assert_eq!(first["pushed"], 0);
    assert!(!shared.path().join("records").exists());
    let push = a.podium(&["push", "-f", "p.toml", "train"]);
    let said = String::from_utf8_lossy(&push.stderr);
    assert!(push.status.success(), "{said}");
    // `train` and what it reads: prepare and the three folds.
    assert!(said.contains("pushed 4 record(s)"), "{said}");
    let push = a.podium(&["push", "-f", "p.toml"]);
    let said = String::from_utf8_lossy(&push.stderr);
    assert!(said.contains("pushed 7 record(s)"), "{said}");
    assert!(said.contains("already there"), "{said}");

    // Pull executes nothing, and says what the remote lacks.
    let b = machine();
    b.write(".podium/config.toml", &config);
    b.write("data/numbers.txt", "7\n1\n");
    let pull = b.podium(&["pull", "-f", "p.toml"]);
    let said = String::from_utf8_lossy(&pull.stderr);
    assert!(pull.status.success(), "{said}");
    assert!(
        said.contains("2 fetched") && said.contains("5 not in the remote cache"),
        "{said}"
    );
    assert_eq!(b.read("out/r/big/big.txt"), a.read("out/r/big/big.txt"));
    assert!(!b.path("out/r/prepare").exists());

    // Same data, another note: prepare reruns here with identical bytes,
    // and from there on the keys are the remote's: fetched at run time.
    let numbers: String = (1..=50).rev().map(|i| format!("{i}\n")).collect();
    b.write("data/numbers.txt", &numbers);
    let run = report(
        &b.podium(&[
            "run",
            "-f",
            "p.toml",
            "--format",
            "json",
            "--set",
            "params.note=b",
        ]),
        0,
    );
    assert_eq!(names(&run, "executed"), ["prepare"]);
    assert_eq!(
        names(&run, "fetched"),
        ["report", "train[fold=0]", "train[fold=1]", "train[fold=2]"]
    );
    assert_eq!(
        b.read("out/r/report/all.txt"),
        a.read("out/r/report/all.txt")
    );
}

#[test]
fn a_damaged_remote_object_is_never_served() {
    let shared = tempfile::tempdir().unwrap();
    let url = format!("file://{}", shared.path().display());
    let a = machine();
    report(
        &a.podium(&["run", "-f", "p.toml", "--format", "json", "--remote", &url]),
        0,
    );
    // Damage big.txt's object in the remote, keeping its size.
    let bytes = std::fs::read(a.path("out/r/big/big.txt")).unwrap();
    let hex = blake3::hash(&bytes).to_hex().to_string();
    let object = shared
        .path()
        .join("objects")
        .join(&hex[..2])
        .join(&hex[2..]);
    let mut damaged = bytes.clone();
    damaged[10] ^= 1;
    std::fs::write(&object, &damaged).unwrap();

    let b = machine();
    b.write(
        ".podium/config.toml",
        &format!("[remote]\nurl = \"{url}\"\nretries = 1\n"),
    );
    let out = b.podium(&["run", "-f", "p.toml", "--format", "json"]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    let run = report(&out, 0);
    // big ran here, with a warning; everything else came from the remote.
    assert_eq!(names(&run, "executed"), ["big"], "{said}");
    assert!(
        said.contains("big was not fetched, so it runs here"),
        "{said}"
    );
    assert!(said.contains("not its content"), "{said}");
    assert_eq!(std::fs::read(b.path("out/r/big/big.txt")).unwrap(), bytes);
    // No temporary file was left in the store.
    let tmp: Vec<_> = std::fs::read_dir(b.path("cache/tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "{tmp:?}");
}

/// A proxy to `upstream` that cuts every connection once `limit` bytes
/// have gone one way (`upload`: client to server; else server to client).
/// Returns its address.
fn cutting_proxy(upstream: String, limit: usize, upload: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let pipe = |mut from: TcpStream, mut to: TcpStream, cap: usize| {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    let mut sent = 0;
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let n = n.min(cap - sent);
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n;
                        if sent >= cap {
                            break;
                        }
                    }
                    let _ = from.shutdown(std::net::Shutdown::Both);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            };
            let (up, down) = if upload {
                (limit, usize::MAX)
            } else {
                (usize::MAX, limit)
            };
            pipe(client.try_clone().unwrap(), server.try_clone().unwrap(), up);
            pipe(server, client, down);
        }
    });
    format!("http://{addr}")
}

#[test]
fn transfers_cut_midway_leave_no_partial_object_and_no_record_pointing_at_one() {
    let Some(s3) = S3::get("PODIUM_TEST_S3") else {
        return;
    };
    let (host, _) = host_port(&s3.endpoint);
    let bucket = s3.bucket();
    let url = format!("s3://{bucket}/cut");
    let config = "[remote]\nretries = 1\n";

    // Pushes through a proxy that cuts uploads after 256 KiB: big.txt
    // (2 MB) never arrives whole, so its record is never written.
    let a = machine();
    a.write(".podium/config.toml", config);
    let up = cutting_proxy(host.clone(), 256 << 10, true);
    let out = podium_s3(
        &a,
        &up,
        &["run", "-f", "p.toml", "--format", "json", "--remote", &url],
    );
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    let run = report(&out, 0);
    assert_eq!(names(&run, "executed"), ALL);
    assert!(said.contains("big was not pushed"), "{said}");
    // Through the server directly: every record but big's (and report's,
    // which reads it... and was pushed, as its own objects arrived).
    let b = machine();
    let plan = podium_s3(
        &b,
        &s3.endpoint,
        &["plan", "-f", "p.toml", "--remote", &url],
    );
    let text = String::from_utf8_lossy(&plan.stdout).to_string();
    assert!(
        line_of(&text, "stale  big ").ends_with("never run"),
        "{text}"
    );
    assert!(
        line_of(&text, "stale  prepare ").ends_with("cached remotely"),
        "{text}"
    );

    // `podium push` sends what is missing, directly.
    let push = podium_s3(
        &a,
        &s3.endpoint,
        &["push", "-f", "p.toml", "--remote", &url],
    );
    assert!(push.status.success(), "{push:?}");

    // Fetches through a proxy that cuts downloads after 256 KiB: big.txt
    // cannot arrive; nothing half-written stays, no record without it.
    let down = cutting_proxy(host, 256 << 10, false);
    let out = podium_s3(
        &b,
        &down,
        &["pull", "-f", "p.toml", "--remote", &url, "big", "prepare"],
    );
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("big failed: not fetched"), "{said}");
    let tmp: Vec<_> = std::fs::read_dir(b.path("cache/tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "{tmp:?}");
    let status = b.podium(&["plan", "-f", "p.toml", "big"]);
    let text = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(text.contains("stale  big"), "{text}");
    assert!(!b.path("out/r/big/big.txt").exists());

    // Directly: all of it, byte for byte.
    let run = report(
        &podium_s3(
            &b,
            &s3.endpoint,
            &["run", "-f", "p.toml", "--format", "json", "--remote", &url],
        ),
        0,
    );
    assert!(names(&run, "executed").is_empty(), "{run}");
    assert_eq!(tree(&a.path("out")), tree(&b.path("out")));
}

#[test]
fn a_missing_bucket_and_refused_credentials_are_clear_errors() {
    let Some(s3) = S3::get("PODIUM_TEST_S3") else {
        return;
    };
    let a = machine();
    let out = podium_s3(
        &a,
        &s3.endpoint,
        &[
            "plan",
            "-f",
            "p.toml",
            "--remote",
            "s3://no-such-bucket-here/x",
        ],
    );
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("remote s3://no-such-bucket-here/x: the bucket does not exist"),
        "{said}"
    );

    // A server that checks credentials, which knows none of ours.
    let Some(auth) = S3::get("PODIUM_TEST_S3_AUTH") else {
        return;
    };
    let out = podium_s3(
        &a,
        &auth.endpoint,
        &["run", "-f", "p.toml", "--remote", "s3://b/x"],
    );
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("the credentials were refused (InvalidAccessKeyId"),
        "{said}"
    );
    // Nothing ran.
    assert!(!a.path("out/r").exists());

    // No server at all: an error after the retries, not a hang.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    a.write(".podium/config.toml", "[remote]\nretries = 1\n");
    let out = podium_s3(
        &a,
        &endpoint,
        &["plan", "-f", "p.toml", "--remote", "s3://b/x"],
    );
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("the server does not answer"), "{said}");
}

/// Two machines run the same pipeline at once, pushing the same keys to one
/// remote; a third fetches everything whole.
fn concurrent_pushes(cmd: &dyn Fn(&Ws, &[&str]) -> Command) {
    let (a, c) = (machine(), machine());
    let args = ["run", "-f", "p.toml", "--format", "json"];
    let ra = cmd(&a, &args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rc = cmd(&c, &args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for r in [ra, rc] {
        let out = r.wait_with_output().unwrap();
        let run = report(&out, 0);
        assert_eq!(names(&run, "failed").len(), 0, "{run}");
    }
    let b = machine();
    let run = report(&cmd(&b, &args).output().unwrap(), 0);
    assert_eq!(names(&run, "fetched"), ALL);
    assert_eq!(tree(&a.path("out")), tree(&b.path("out")));
}

#[test]
fn concurrent_pushes_of_the_same_keys_leave_whole_records() {
    let shared = tempfile::tempdir().unwrap();
    let url = format!("file://{}", shared.path().display());
    concurrent_pushes(&|ws, args| {
        let mut c = ws.cmd(args);
        c.args(["--remote", &url]);
        c
    });
    let Some(s3) = S3::get("PODIUM_TEST_S3") else {
        return;
    };
    let url = format!("s3://{}/both", s3.bucket());
    concurrent_pushes(&|ws, args| {
        let mut c = s3_cmd(ws, &s3.endpoint, args);
        c.args(["--remote", &url]);
        c
    });
}
