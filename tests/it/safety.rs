//! Regression tests for issue 20 ("podium never moves, changes or deletes a
//! file it did not create, and never serves a result computed from corrupt
//! bytes"), one per point seen, named after what each guards.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::ws::{Ws, podium_at, podium_cmd};

/// A workspace with `p.toml` and the input directory `data/imgs/` of
/// three files, and the single input file `data/x.txt`.
fn ws(manifest: &str) -> Ws {
    let ws = Ws::with_manifest(manifest);
    for i in 0..3 {
        ws.write(&format!("data/imgs/{i}.png"), &format!("img{i}"));
    }
    ws.write("data/x.txt", "the input\n");
    ws
}

impl Ws {
    fn run_ok(&self, extra: &[&str]) -> String {
        let mut args = vec!["run", "-f", "p.toml"];
        args.extend_from_slice(extra);
        let out = self.podium(&args);
        assert!(
            out.status.success(),
            "podium {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every file and directory of the workspace outside `out/` and
    /// `cache/`, with what a change to it would show ([`snapshot_tree`]).
    fn snapshot(&self) -> Vec<(String, Vec<u8>, u32, u64, u64)> {
        snapshot_tree(self.dir.path(), self.dir.path())
    }
}

/// `podium op synth` of a tiny data set (five outputs) into `-o out`.
fn small_synth(out: &str) -> Vec<&str> {
    let set = ["--set", "n_train=4", "--set", "n_test=2", "--set", "size=8"];
    let mut args = vec!["op", "synth"];
    args.extend(set);
    args.extend(["-o", out]);
    args
}

fn stage(cmd: &str, outs: &str) -> String {
    format!(
        "[pipeline]\nname = \"s\"\n[inputs.imgs]\npath = \"data/imgs\"\n[inputs.x]\npath = \"data/x.txt\"\n\
         [stages.a]\nop = \"exec\"\ncmd = \"{cmd}\"\nouts = [{outs}]\n"
    )
}

#[test]
fn a_symlink_output_to_an_input_directory_leaves_the_input_where_it_was() {
    let ws = ws(&stage(
        "ln -s ${inputs.imgs} $PODIUM_OUT/images",
        "\"images\"",
    ));
    let before = ws.snapshot();
    ws.run_ok(&[]);
    assert_eq!(ws.snapshot(), before, "the input directory is untouched");
    assert_eq!(ws.read("out/s/a/images/1.png"), "img1");
    let m = std::fs::symlink_metadata(ws.path("out/s/a/images")).unwrap();
    assert!(m.is_dir() && !m.file_type().is_symlink());
    let plan = ws.podium(&["plan", "-f", "p.toml"]);
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().eq(["fresh", "a"])),
        "nothing changed: {text}"
    );
}

#[test]
fn a_symlink_output_to_an_outside_file_is_stored_by_content_and_keeps_its_mode() {
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim.txt");
    std::fs::write(&victim, "outside\n").unwrap();
    let ws = ws(&stage(
        &format!("ln -s {} $PODIUM_OUT/o.txt", victim.display()),
        "\"o.txt\"",
    ));
    let before = std::fs::metadata(&victim).unwrap();
    ws.run_ok(&[]);
    let after = std::fs::symlink_metadata(&victim).unwrap();
    assert_eq!(after.mode(), before.mode());
    assert_eq!((after.ino(), after.nlink()), (before.ino(), 1));
    assert!(after.file_type().is_file());
    let o = std::fs::symlink_metadata(ws.path("out/s/a/o.txt")).unwrap();
    assert!(
        o.is_file(),
        "the output is a file, not a link to the original"
    );
    assert_ne!(o.ino(), before.ino());
    assert_eq!(ws.read("out/s/a/o.txt"), "outside\n");
}

#[test]
fn a_hard_link_output_to_an_input_is_copied_and_the_input_stays_writable_and_unshared() {
    let ws = ws(&stage(
        "ln ${inputs.x} $PODIUM_OUT/copy.txt",
        "\"copy.txt\"",
    ));
    let before = ws.snapshot();
    ws.run_ok(&[]);
    assert_eq!(ws.snapshot(), before);
    let input = std::fs::metadata(ws.path("data/x.txt")).unwrap();
    assert_eq!(input.nlink(), 1, "no store object shares the input's inode");
    assert_eq!(ws.read("out/s/a/copy.txt"), "the input\n");
}

#[test]
fn a_symlink_loop_in_an_output_is_an_error_naming_the_output_and_the_link() {
    let ws = ws(&stage(
        "mkdir $PODIUM_OUT/d && ln -s .. $PODIUM_OUT/d/up",
        "\"d\"",
    ));
    let out = ws.podium(&["run", "-f", "p.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("output `d`") && err.contains("d/up") && err.contains("loop"),
        "{err}"
    );
}

#[test]
fn matrix_values_with_path_characters_stay_inside_their_stage_directory_and_can_be_targets() {
    let ws = ws("[pipeline]\nname = \"s\"\n[stages.ok]\nop = \"exec\"\n\
         matrix = { v = [\"../../../../../victim_area\", \"a\\nb\", \"a,b\", \".hidden\", \"x/y\", \"50%\"] }\n\
         cmd = \"printf '%s' '${v}' > $PODIUM_OUT/o\"\nouts = [\"o\"]\n");
    let before = ws.snapshot();
    ws.run_ok(&[]);
    assert_eq!(ws.snapshot(), before, "nothing outside out/ and the store");
    let dirs: Vec<String> = std::fs::read_dir(ws.path("out/s/ok"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs.len(), 6, "{dirs:?}");
    for d in &dirs {
        assert!(
            d.starts_with("v=") && !d.contains(['/', '\n', ',']),
            "{d:?} is one plain path component"
        );
        let o = std::fs::read_to_string(ws.path("out/s/ok").join(d).join("o")).unwrap();
        assert_eq!(podium::ir::encode_matrix_value(&o), d[2..], "{d}");
    }
    // Each instance can be named: by the encoded value, or as written.
    for target in ["ok[v=a%2Cb]", "ok[v=%2Ehidden]", "ok[v=x/y]", "ok[v=50%]"] {
        let out = ws.podium(&["run", "-f", "p.toml", "--force", "ok", target]);
        assert!(
            out.status.success(),
            "{target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn op_output_into_a_non_empty_directory_adds_files_and_deletes_nothing() {
    let ws = ws("");
    let d = ws.path("work");
    std::fs::create_dir_all(d.join("keepdir")).unwrap();
    std::fs::write(d.join("important.txt"), "keep me").unwrap();
    std::fs::write(d.join("keepdir/inner.txt"), "me too").unwrap();
    let synth = || ws.podium_in("work", &small_synth("."));
    let out = synth();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(d.join("important.txt")).unwrap(),
        "keep me"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("keepdir/inner.txt")).unwrap(),
        "me too"
    );
    assert!(d.join("train.csv").is_file() && d.join("train_images").is_dir());
    // Again: its own files are there now, and podium op replaces nothing.
    let before = std::fs::read(d.join("train.csv")).unwrap();
    let out = synth();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exists") && err.contains("never replaces"),
        "{err}"
    );
    assert_eq!(std::fs::read(d.join("train.csv")).unwrap(), before);
    assert_eq!(
        std::fs::read_to_string(d.join("important.txt")).unwrap(),
        "keep me"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".podium"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn op_with_several_outputs_refuses_an_output_file_name_instead_of_making_a_directory() {
    let ws = ws("");
    let out = ws.podium(&small_synth("train.csv"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("several outputs"), "{err}");
    assert!(!ws.path("train.csv").exists());
}

#[test]
fn an_out_dir_podium_did_not_make_is_refused_and_left_alone() {
    let ws = ws(
        "[pipeline]\nname = \"s\"\n[stages.data]\nop = \"exec\"\ncmd = \"echo 1 > $PODIUM_OUT/o\"\nouts = [\"o\"]\n",
    );
    std::fs::write(ws.path("data/keep.txt"), "keep").unwrap();
    let before = ws.snapshot();
    let out = ws.podium(&["run", "-f", "p.toml", "--out-dir", "."]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--out-dir") && err.contains(".podium-out"),
        "{err}"
    );
    assert_eq!(ws.snapshot(), before);
    // A new directory is podium's, and marked.
    ws.run_ok(&["--out-dir", "results"]);
    assert!(ws.path("results/.podium-out").is_file());
    assert!(ws.path("results/s/data/o").is_file());
}

#[test]
fn files_a_user_puts_beside_outputs_in_out_survive_a_rerun() {
    let ws = ws(&stage("cat ${inputs.x} > $PODIUM_OUT/o", "\"o\""));
    ws.run_ok(&[]);
    std::fs::write(ws.path("out/s/a/notes.txt"), "mine").unwrap();
    std::fs::write(ws.path("data/x.txt"), "changed\n").unwrap();
    ws.run_ok(&[]);
    assert_eq!(ws.read("out/s/a/o"), "changed\n");
    assert_eq!(ws.read("out/s/a/notes.txt"), "mine");
}

const FANIN: &str = "[pipeline]\nname = \"s\"\n\
[stages.up]\nop = \"exec\"\nmatrix = { i = [1, 2, 3] }\ncmd = \"echo value-${i} > $PODIUM_OUT/r.txt\"\nouts = [\"r.txt\"]\n\
[stages.fanin]\nop = \"exec\"\ncmd = \"cat ${stages.up[*].r} > $PODIUM_OUT/all.txt\"\nouts = [\"all.txt\"]\n";

/// Damages the object behind `out/up/i=2/r.txt` in one of the ways an
/// object can go bad.
fn damage(ws: &Ws, how: &str) {
    let out = ws.path("out/s/up/i=2/r.txt");
    let object = find_object(&ws.path("cache/objects"), &std::fs::read(&out).unwrap());
    let writable = |p: &Path| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    };
    match how {
        // What root does through the hard link in out/; mtime moves on.
        "edited through out/" => {
            std::thread::sleep(std::time::Duration::from_millis(1100));
            writable(&out);
            std::fs::write(&out, "value-X\n").unwrap();
        }
        "truncated" => {
            writable(&object);
            std::fs::write(&object, "val").unwrap();
        }
        "bit-flipped" => {
            std::thread::sleep(std::time::Duration::from_millis(1100));
            writable(&object);
            let mut b = std::fs::read(&object).unwrap();
            b[0] ^= 1;
            std::fs::write(&object, b).unwrap();
        }
        "deleted" => std::fs::remove_file(&object).unwrap(),
        "replaced by a symlink" => {
            let elsewhere = ws.path("elsewhere.txt");
            std::fs::write(&elsewhere, "value-2\n").unwrap();
            std::fs::remove_file(&object).unwrap();
            std::os::unix::fs::symlink(&elsewhere, &object).unwrap();
        }
        _ => unreachable!(),
    }
}

fn find_object(dir: &Path, bytes: &[u8]) -> PathBuf {
    let hex = blake3::hash(bytes).to_hex();
    dir.join(&hex[..2]).join(&hex[2..])
}

#[test]
fn a_damaged_object_is_recomputed_and_never_feeds_a_stage() {
    let clean = ws(FANIN);
    clean.run_ok(&[]);
    let want = clean.read("out/s/fanin/all.txt");
    assert_eq!(want, "value-1\nvalue-2\nvalue-3\n");
    for how in [
        "edited through out/",
        "truncated",
        "bit-flipped",
        "deleted",
        "replaced by a symlink",
    ] {
        let ws = ws(FANIN);
        ws.run_ok(&[]);
        damage(&ws, how);
        ws.run_ok(&["--force", "fanin"]);
        assert_eq!(
            ws.read("out/s/fanin/all.txt"),
            want,
            "{how}: fanin read damaged bytes"
        );
        ws.run_ok(&[]);
        assert_eq!(ws.read("out/s/fanin/all.txt"), want, "{how}");
        assert_eq!(ws.read("out/s/up/i=2/r.txt"), "value-2\n", "{how}");
        let object = find_object(&ws.path("cache/objects"), b"value-2\n");
        let m = std::fs::symlink_metadata(&object).unwrap();
        assert!(m.is_file(), "{how}: the object is a file again");
    }
}

/// Runs `podium ARGS` in `dir` to the end; its exit code, stderr and peak
/// resident memory in bytes (from wait4). Killed after `limit`: a hang
/// fails the test instead of stalling the suite.
fn measured(dir: &Path, args: &[&str], limit: std::time::Duration) -> (Option<i32>, String, u64) {
    // Reaped by wait4 below, which std's `Child::wait` cannot replace: it
    // does not give the child's resource usage.
    #[allow(clippy::zombie_processes)]
    let child = podium_cmd(dir, args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut stderr = child.stderr.unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).unwrap();
        s
    });
    let killer = std::thread::spawn(move || {
        std::thread::sleep(limit);
        // SAFETY: signals a child of this test that may have ended already.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let mut status = 0;
    // SAFETY: wait4 fills the status and usage it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut usage) }, pid);
    drop(killer);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    (code, reader.join().unwrap(), usage.ru_maxrss as u64 * 1024)
}

/// `podium check` of `manifest` (written to `name` in `dir`): its exit code
/// and stderr, once it is known to have ended within a minute and under
/// 1 GiB of memory.
fn check_bounded(dir: &Path, name: &str, manifest: &str) -> (Option<i32>, String) {
    std::fs::write(dir.join(name), manifest).unwrap();
    let minute = std::time::Duration::from_secs(60);
    let (code, err, rss) = measured(dir, &["check", name], minute);
    assert!(rss < 1 << 30, "{name}: {} MiB", rss >> 20);
    (code, err)
}

#[test]
fn check_of_a_huge_manifest_ends_and_stays_under_a_gigabyte() {
    let dir = tempfile::tempdir().unwrap();
    // 200,000 params, each built on the one above it.
    let mut m = String::from("[pipeline]\nname = \"big\"\n[params]\np0 = 0\n");
    for i in 1..200_000 {
        m.push_str(&format!("p{i} = \"${{params.p{} + 1}}\"\n", i - 1));
    }
    // 20,000 stages, each reading the one before.
    m.push_str("[stages.s0]\nop = \"exec\"\ncmd = \"echo ${params.p199999} > $PODIUM_OUT/o\"\nouts = [\"o\"]\n");
    for i in 1..20_000 {
        m.push_str(&format!(
            "[stages.s{i}]\nop = \"exec\"\ncmd = \"cat ${{stages.s{}.o}} > $PODIUM_OUT/o\"\nouts = [\"o\"]\n",
            i - 1
        ));
    }
    let (code, err) = check_bounded(dir.path(), "big.toml", &m);
    assert_eq!(code, Some(0), "{err}");
    // The documented largest matrix: 1,000 × 1,000 instances.
    let values = (0..1000)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let matrix = format!(
        "[pipeline]\nname = \"m\"\n[stages.m]\nop = \"exec\"\nmatrix = {{ a = [{values}], b = [{values}] }}\n\
         cmd = \"echo ${{a}} ${{b}} > $PODIUM_OUT/o\"\nouts = [\"o\"]\n"
    );
    let (code, err) = check_bounded(dir.path(), "matrix.toml", &matrix);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn params_that_grow_without_bound_are_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    // Each param doubles the one above: 2^40 items by the last line.
    let mut m = String::from("[pipeline]\nname = \"bomb\"\n[params]\np0 = [1, 2]\n");
    for i in 1..40 {
        m.push_str(&format!(
            "p{i} = \"${{concat(params.p{0}, params.p{0})}}\"\n",
            i - 1
        ));
    }
    let (code, err) = check_bounded(dir.path(), "bomb.toml", &m);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("larger than 16 MiB") || err.contains("more than 64 MiB"),
        "{err}"
    );
    // One error, not one per param built on the failed one.
    assert_eq!(err.matches("× ").count(), 1, "{err}");
    // An 8 MiB param (within limits) copied into 70 stages' commands: 560 MiB.
    let mut m = format!(
        "[pipeline]\nname = \"copies\"\n[params]\nb0 = \"{}\"\n",
        "x".repeat(1024)
    );
    for i in 1..=13 {
        m.push_str(&format!(
            "b{i} = \"${{params.b{0} + params.b{0}}}\"\n",
            i - 1
        ));
    }
    for i in 0..70 {
        m.push_str(&format!(
            "[stages.s{i}]\nop = \"exec\"\ncmd = \"echo ${{params.b13}} > $PODIUM_OUT/o\"\nouts = [\"o\"]\n"
        ));
    }
    let (code, err) = check_bounded(dir.path(), "copies.toml", &m);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("the stages' parameters evaluate to more than 256 MiB"),
        "{err}"
    );
}

/// A manifest path that never gives up its text: `check` and `plan` wait
/// on it until a signal comes.
fn fifo(dir: &Path, name: &str) {
    let c = std::ffi::CString::new(dir.join(name).as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo(3) on a path of this test's own directory.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

#[test]
fn sigterm_and_ctrl_c_stop_check_plan_verify_and_gc_at_once() {
    let ws = ws(&stage("echo 1 > $PODIUM_OUT/o", "\"o\""));
    ws.run_ok(&[]);
    fifo(&ws.path(""), "wait.toml");
    // An object that blocks whoever opens it to re-hash it.
    fifo(&ws.path("cache/objects"), "zz");
    let cases: [&[&str]; 4] = [
        &["check", "wait.toml"],
        &["plan", "-f", "wait.toml"],
        &["gc", "wait.toml"],
        &["verify"],
    ];
    for args in cases {
        for signal in [libc::SIGTERM, libc::SIGINT] {
            let mut child = ws
                .cmd(args)
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
            assert!(child.try_wait().unwrap().is_none(), "{args:?} is waiting");
            // SAFETY: signals this test's own child.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let status = loop {
                if let Some(s) = child.try_wait().unwrap() {
                    break s;
                }
                if std::time::Instant::now() > deadline {
                    child.kill().unwrap();
                    panic!("{args:?} ignored signal {signal}");
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            };
            assert_eq!(status.code(), Some(130), "{args:?}, signal {signal}");
        }
    }
    std::fs::remove_file(ws.path("cache/objects/zz")).unwrap();
    assert!(ws.podium(&["verify"]).status.success());
}

#[test]
fn verify_counts_records_and_objects_apart_and_never_makes_a_store() {
    let ws = ws(&stage("echo 1 > $PODIUM_OUT/o", "\"o\""));
    let out = ws.podium(&["--store", "nowhere/store", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no podium store at nowhere/store"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!ws.path("nowhere").exists());
    let out = ws.podium(&["--store", "nowhere/store", "gc", "p.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!ws.path("nowhere").exists());
    ws.run_ok(&[]);
    // A torn line in the run log is a record problem, not an object's.
    let log = ws.path("cache/records.jsonl");
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str("{\"key\": \"torn\n");
    std::fs::write(&log, text).unwrap();
    let out = ws.podium(&["verify"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(": 0 corrupted;"), "{said}");
    assert!(said.contains("1 unreadable line(s)"), "{said}");
    assert_eq!(out.status.code(), Some(1));
    let out = ws.podium(&["verify"]);
    assert!(out.status.success(), "repaired");
}

#[test]
fn an_input_that_is_a_symlink_loop_is_named_once_and_a_loop_inside_an_input_is_named_by_run() {
    let ws = ws(
        "[pipeline]\nname = \"s\"\n[inputs.l]\npath = \"data/loop\"\n[stages.a]\nop = \"exec\"\n\
         cmd = \"ls ${inputs.l} > $PODIUM_OUT/o\"\nouts = [\"o\"]\n",
    );
    std::os::unix::fs::symlink("loop", ws.path("data/loop")).unwrap();
    let out = ws.podium(&["check", "p.toml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("`data/loop` is a symbolic link loop"), "{err}");
    assert!(err.contains("error: 1 error(s)"), "{err}");
    // Inside an input directory: a link back up, and a link to itself.
    std::fs::remove_file(ws.path("data/loop")).unwrap();
    std::fs::write(
        ws.path("p.toml"),
        stage("ls ${inputs.imgs} > $PODIUM_OUT/o", "\"o\""),
    )
    .unwrap();
    std::os::unix::fs::symlink("..", ws.path("data/imgs/up")).unwrap();
    let out = ws.podium(&["run", "-f", "p.toml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("data/imgs/up` is a symbolic link loop"),
        "{err}"
    );
    std::fs::remove_file(ws.path("data/imgs/up")).unwrap();
    std::os::unix::fs::symlink("self", ws.path("data/imgs/self")).unwrap();
    let out = ws.podium(&["run", "-f", "p.toml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("data/imgs/self` is a symbolic link loop"),
        "{err}"
    );
}

#[test]
fn ops_never_write_a_non_finite_number_and_refuse_one_in_a_label_column() {
    let ws = ws("");
    let det = |s: &str| {
        format!(
            "{{\"image_id\": 1, \"category_id\": 0, \"bbox\": [0.1, 0.1, 0.2, 0.2], \"score\": {s}}}"
        )
    };
    std::fs::write(
        ws.path("huge.json"),
        format!("[{}, {}]", det("1e308"), det("1e308")),
    )
    .unwrap();
    let out = ws.podium(&["op", "wbf", "huge.json", "huge.json", "-o", "fused.json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("fused.json: detection 0 (image 1)"), "{err}");
    assert!(err.contains("not finite"), "{err}");
    assert!(!ws.path("fused.json").exists());
    for bad in ["NaN", "inf", "-Infinity", "nan"] {
        std::fs::write(
            ws.path("truth.csv"),
            format!("id,grade\na,1\nb,{bad}\nc,2\nd,0\n"),
        )
        .unwrap();
        std::fs::write(ws.path("pred.csv"), "id,grade\na,1\nb,2\nc,2\nd,0\n").unwrap();
        let out = ws.podium(&[
            "op",
            "evaluate",
            "--set",
            "metric=qwk",
            "truth.csv",
            "pred.csv",
            "-o",
            "m.json",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {err}");
        assert!(
            err.contains(&format!(
                "truth.csv:3: `{bad}` in column `grade` (id b) is not a finite number"
            )),
            "{bad}: {err}"
        );
        let out = ws.podium(&[
            "op",
            "folds",
            "--set",
            "k=2",
            "--set",
            "kind=stratified",
            "--set",
            "by=grade",
            "truth.csv",
            "-o",
            "f.csv",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {err}");
        assert!(err.contains("truth.csv:3"), "{bad}: {err}");
    }
    // A multi-label cell with a missing label in it.
    std::fs::write(ws.path("ml.csv"), "id,Target\na,0 5\nb,1 nan\nc,2\n").unwrap();
    let out = ws.podium(&[
        "op",
        "folds",
        "--set",
        "k=2",
        "--set",
        "kind=multilabel",
        "--set",
        "by=Target",
        "ml.csv",
        "-o",
        "f.csv",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ml.csv:3: `nan` in column `Target`"), "{err}");
}

#[test]
fn train_refuses_an_image_size_no_batch_could_fit_naming_the_parameter() {
    let ws = ws("");
    let out = ws.podium(&[
        "op",
        "synth",
        "--set",
        "n_train=8",
        "--set",
        "n_test=2",
        "--set",
        "size=16",
        "-o",
        "d",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let train = |sets: &[&str]| {
        let mut args = vec!["op", "train", "--set", "images=d/train_images"];
        args.extend([
            "--set",
            "labels=d/train.csv",
            "--set",
            "epochs=1",
            "-o",
            "m",
        ]);
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = ws.podium(&args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(!ws.path("m").exists());
        err
    };
    let err = train(&["image_size=60000", "batch_size=64"]);
    assert!(
        err.contains("image_size = 60000 with batch_size = 64 needs at least"),
        "{err}"
    );
    assert!(err.contains("lower image_size or batch_size"), "{err}");
    // Beyond any machine's images: refused by check, at the line.
    let err = train(&["image_size=100000"]);
    assert!(err.contains("must be at most 65536"), "{err}");
}

/// Every file, link and directory under `root` but the workspace's `out/`
/// and `cache/`: bytes (a link's target), mode, inode and a file's link
/// count.
fn snapshot_tree(root: &Path, ws: &Path) -> Vec<(String, Vec<u8>, u32, u64, u64)> {
    let mut all = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p == ws.join("out") || p == ws.join("cache") {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let bytes = if m.is_file() {
                std::fs::read(&p).unwrap()
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                Vec::new()
            };
            if m.is_dir() {
                stack.push(p.clone());
            }
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            // A directory's link count is its subdirectories' (out/, cache/).
            let nlink = if m.is_dir() { 0 } else { m.nlink() };
            all.push((rel, bytes, m.mode(), m.ino(), nlink));
        }
    }
    all.sort();
    all
}

/// What a generated stage leaves as its output `o`.
const OUTPUT_KINDS: &[&str] = &[
    "printf 'x' > $PODIUM_OUT/o",
    "mkdir $PODIUM_OUT/o && printf 'y' > $PODIUM_OUT/o/f",
    "ln -s ${inputs.imgs} $PODIUM_OUT/o",
    "ln -s ${inputs.x} $PODIUM_OUT/o",
    "ln ${inputs.x} $PODIUM_OUT/o",
    "ln -s OUTSIDE/secret.txt $PODIUM_OUT/o",
    "ln -s OUTSIDE $PODIUM_OUT/o",
    "mkdir $PODIUM_OUT/o && ln -s ${inputs.x} $PODIUM_OUT/o/l && ln ${inputs.x} $PODIUM_OUT/o/h",
    "ln -s o $PODIUM_OUT/o",
];

/// A TOML basic string holding `s`.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

use proptest::strategy::Strategy;

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 12,
        failure_persistence: None,
        ..Default::default()
    })]

    /// The sandbox: whatever stages a manifest has (names, matrix values
    /// with path characters, outputs that are files, directories, and
    /// links to inputs and to files outside the project), running,
    /// rerunning, forcing, collecting and verifying change nothing outside
    /// `out/` and the store.
    #[test]
    fn nothing_outside_out_and_the_store_changes_whatever_the_manifest(
        stages in proptest::collection::vec(
            (
                "[a-z][a-z0-9_-]{0,6}",
                proptest::collection::vec(
                    proptest::prop_oneof![
                        proptest::sample::select(vec![
                            "../../../victim", "a/b", ".hidden", "..", ".", "a\nb", "a,b",
                            "50%", "k=v", "[x]", " ", "-rf", "*", "~", "é",
                        ]).prop_map(String::from),
                        "[./a-z%,=\\n ]{1,6}",
                    ],
                    0..3,
                ),
                0..OUTPUT_KINDS.len(),
                proptest::bool::ANY,
            ),
            1..4,
        )
    ) {
        let root = tempfile::tempdir().unwrap();
        let ws_dir = root.path().join("ws");
        let outside = root.path().join("outside");
        std::fs::create_dir_all(ws_dir.join("data/imgs")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.txt"), "secret").unwrap();
        std::fs::write(root.path().join("victim"), "victim").unwrap();
        for i in 0..3 {
            std::fs::write(ws_dir.join(format!("data/imgs/{i}.png")), format!("img{i}")).unwrap();
        }
        std::fs::write(ws_dir.join("data/x.txt"), "the input\n").unwrap();
        let mut m = String::from(
            "[pipeline]\nname = \"sandbox\"\n[inputs.imgs]\npath = \"data/imgs\"\n\
             [inputs.x]\npath = \"data/x.txt\"\n",
        );
        let mut seen = std::collections::HashSet::new();
        let mut previous: Option<String> = None;
        for (name, values, kind, reads_previous) in &stages {
            if !seen.insert(name.clone()) {
                continue;
            }
            let mut cmd = OUTPUT_KINDS[*kind].replace("OUTSIDE", &outside.display().to_string());
            if let (true, Some(p)) = (reads_previous, &previous) {
                cmd = format!("ls ${{stages['{p}'][*].o}} > /dev/null && {cmd}");
            }
            m.push_str(&format!("[stages.{name}]\nop = \"exec\"\ncmd = {}\nouts = [\"o\"]\n", toml_str(&cmd)));
            let mut values = values.clone();
            values.sort();
            values.dedup();
            if !values.is_empty() {
                let list: Vec<String> = values.iter().map(|v| toml_str(v)).collect();
                m.push_str(&format!("matrix = {{ v = [{}] }}\n", list.join(", ")));
            }
            previous = Some(name.clone());
        }
        std::fs::write(ws_dir.join("p.toml"), &m).unwrap();
        let before = snapshot_tree(root.path(), &ws_dir);
        let podium = |args: &[&str]| {
            podium_at(&ws_dir, args)
        };
        let first = podium(&["run", "-f", "p.toml", "--keep-going"]);
        let stderr = String::from_utf8_lossy(&first.stderr).into_owned();
        proptest::prop_assert!(!stderr.contains("panicked"), "{m}\n{stderr}");
        podium(&["run", "-f", "p.toml", "--keep-going"]);
        let names: Vec<&str> = stages.iter().map(|s| s.0.as_str()).collect();
        let mut force = vec!["run", "-f", "p.toml", "--keep-going"];
        for n in &names {
            force.extend(["--force", n]);
        }
        podium(&force);
        podium(&["gc", "p.toml"]);
        podium(&["verify"]);
        let after = snapshot_tree(root.path(), &ws_dir);
        proptest::prop_assert_eq!(after, before, "{}\n{}", m, stderr);
    }
}
