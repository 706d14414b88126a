//! Regression tests for issue 20 ("podium never moves, changes or deletes a
//! file it did not create, and never serves a result computed from corrupt
//! bytes"), one per point seen, named after what each guards.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use assert_cmd::cargo::CommandCargoExt;

struct Ws {
    dir: tempfile::TempDir,
}

impl Ws {
    /// A workspace with `p.toml` and the input directory `data/imgs/` of
    /// three files, and the single input file `data/x.txt`.
    fn new(manifest: &str) -> Ws {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data/imgs")).unwrap();
        for i in 0..3 {
            std::fs::write(
                dir.path().join(format!("data/imgs/{i}.png")),
                format!("img{i}"),
            )
            .unwrap();
        }
        std::fs::write(dir.path().join("data/x.txt"), "the input\n").unwrap();
        std::fs::write(dir.path().join("p.toml"), manifest).unwrap();
        Ws { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap()
    }

    fn podium(&self, args: &[&str]) -> Output {
        Command::cargo_bin("podium")
            .unwrap()
            .current_dir(self.dir.path())
            .args(args)
            .env_remove("PODIUM_STORE")
            .env_remove("PODIUM_OUT_DIR")
            .output()
            .unwrap()
    }

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
    /// `cache/`, with what a change to it would show: bytes, mode, inode
    /// and link count.
    fn snapshot(&self) -> Vec<(String, Vec<u8>, u32, u64, u64)> {
        let mut all = Vec::new();
        let mut stack = vec![self.dir.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let rel = p
                    .strip_prefix(self.dir.path())
                    .unwrap()
                    .display()
                    .to_string();
                if rel == "out" || rel == "cache" {
                    continue;
                }
                let m = std::fs::symlink_metadata(&p).unwrap();
                let bytes = if m.is_file() {
                    std::fs::read(&p).unwrap()
                } else {
                    Vec::new()
                };
                if m.is_dir() {
                    stack.push(p.clone());
                }
                all.push((rel, bytes, m.mode(), m.ino(), m.nlink()));
            }
        }
        all.sort();
        all
    }
}

fn stage(cmd: &str, outs: &str) -> String {
    format!(
        "[pipeline]\nname = \"s\"\n[inputs.imgs]\npath = \"data/imgs\"\n[inputs.x]\npath = \"data/x.txt\"\n\
         [stages.a]\nop = \"exec\"\ncmd = \"{cmd}\"\nouts = [{outs}]\n"
    )
}

#[test]
fn a_symlink_output_to_an_input_directory_leaves_the_input_where_it_was() {
    let ws = Ws::new(&stage(
        "ln -s ${inputs.imgs} $PODIUM_OUT/images",
        "\"images\"",
    ));
    let before = ws.snapshot();
    ws.run_ok(&[]);
    assert_eq!(ws.snapshot(), before, "the input directory is untouched");
    assert_eq!(ws.read("out/a/images/1.png"), "img1");
    let m = std::fs::symlink_metadata(ws.path("out/a/images")).unwrap();
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
    let ws = Ws::new(&stage(
        &format!("ln -s {} $PODIUM_OUT/o.txt", victim.display()),
        "\"o.txt\"",
    ));
    let before = std::fs::metadata(&victim).unwrap();
    ws.run_ok(&[]);
    let after = std::fs::symlink_metadata(&victim).unwrap();
    assert_eq!(after.mode(), before.mode());
    assert_eq!((after.ino(), after.nlink()), (before.ino(), 1));
    assert!(after.file_type().is_file());
    let o = std::fs::symlink_metadata(ws.path("out/a/o.txt")).unwrap();
    assert!(
        o.is_file(),
        "the output is a file, not a link to the original"
    );
    assert_ne!(o.ino(), before.ino());
    assert_eq!(ws.read("out/a/o.txt"), "outside\n");
}

#[test]
fn a_hard_link_output_to_an_input_is_copied_and_the_input_stays_writable_and_unshared() {
    let ws = Ws::new(&stage(
        "ln ${inputs.x} $PODIUM_OUT/copy.txt",
        "\"copy.txt\"",
    ));
    let before = ws.snapshot();
    ws.run_ok(&[]);
    assert_eq!(ws.snapshot(), before);
    let input = std::fs::metadata(ws.path("data/x.txt")).unwrap();
    assert_eq!(input.nlink(), 1, "no store object shares the input's inode");
    assert_eq!(ws.read("out/a/copy.txt"), "the input\n");
}

#[test]
fn a_symlink_loop_in_an_output_is_an_error_naming_the_output_and_the_link() {
    let ws = Ws::new(&stage(
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
    let ws = Ws::new(
        "[pipeline]\nname = \"s\"\n[stages.ok]\nop = \"exec\"\n\
         matrix = { v = [\"../../../../../victim_area\", \"a\\nb\", \"a,b\", \".hidden\", \"x/y\", \"50%\"] }\n\
         cmd = \"printf '%s' '${v}' > $PODIUM_OUT/o\"\nouts = [\"o\"]\n",
    );
    let before = ws.snapshot();
    ws.run_ok(&[]);
    assert_eq!(ws.snapshot(), before, "nothing outside out/ and the store");
    let dirs: Vec<String> = std::fs::read_dir(ws.path("out/ok"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs.len(), 6, "{dirs:?}");
    for d in &dirs {
        assert!(
            d.starts_with("v=") && !d.contains(['/', '\n', ',']),
            "{d:?} is one plain path component"
        );
        let o = std::fs::read_to_string(ws.path("out/ok").join(d).join("o")).unwrap();
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
    let ws = Ws::new("");
    let d = ws.path("work");
    std::fs::create_dir_all(d.join("keepdir")).unwrap();
    std::fs::write(d.join("important.txt"), "keep me").unwrap();
    std::fs::write(d.join("keepdir/inner.txt"), "me too").unwrap();
    let synth = |o: &str| {
        Command::cargo_bin("podium")
            .unwrap()
            .current_dir(&d)
            .args([
                "op",
                "synth",
                "--set",
                "n_train=4",
                "--set",
                "n_test=2",
                "--set",
                "size=8",
                "-o",
                o,
            ])
            .output()
            .unwrap()
    };
    let out = synth(".");
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
    let out = synth(".");
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
    let ws = Ws::new("");
    let out = ws.podium(&[
        "op",
        "synth",
        "--set",
        "n_train=4",
        "--set",
        "n_test=2",
        "--set",
        "size=8",
        "-o",
        "train.csv",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("several outputs"), "{err}");
    assert!(!ws.path("train.csv").exists());
}

#[test]
fn an_out_dir_podium_did_not_make_is_refused_and_left_alone() {
    let ws = Ws::new(
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
    assert!(ws.path("results/data/o").is_file());
}

#[test]
fn files_a_user_puts_beside_outputs_in_out_survive_a_rerun() {
    let ws = Ws::new(&stage("cat ${inputs.x} > $PODIUM_OUT/o", "\"o\""));
    ws.run_ok(&[]);
    std::fs::write(ws.path("out/a/notes.txt"), "mine").unwrap();
    std::fs::write(ws.path("data/x.txt"), "changed\n").unwrap();
    ws.run_ok(&[]);
    assert_eq!(ws.read("out/a/o"), "changed\n");
    assert_eq!(ws.read("out/a/notes.txt"), "mine");
}

const FANIN: &str = "[pipeline]\nname = \"s\"\n\
[stages.up]\nop = \"exec\"\nmatrix = { i = [1, 2, 3] }\ncmd = \"echo value-${i} > $PODIUM_OUT/r.txt\"\nouts = [\"r.txt\"]\n\
[stages.fanin]\nop = \"exec\"\ncmd = \"cat ${stages.up[*].r} > $PODIUM_OUT/all.txt\"\nouts = [\"all.txt\"]\n";

/// Damages the object behind `out/up/i=2/r.txt` in one of the ways an
/// object can go bad.
fn damage(ws: &Ws, how: &str) {
    let out = ws.path("out/up/i=2/r.txt");
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
    let clean = Ws::new(FANIN);
    clean.run_ok(&[]);
    let want = clean.read("out/fanin/all.txt");
    assert_eq!(want, "value-1\nvalue-2\nvalue-3\n");
    for how in [
        "edited through out/",
        "truncated",
        "bit-flipped",
        "deleted",
        "replaced by a symlink",
    ] {
        let ws = Ws::new(FANIN);
        ws.run_ok(&[]);
        damage(&ws, how);
        ws.run_ok(&["--force", "fanin"]);
        assert_eq!(
            ws.read("out/fanin/all.txt"),
            want,
            "{how}: fanin read damaged bytes"
        );
        ws.run_ok(&[]);
        assert_eq!(ws.read("out/fanin/all.txt"), want, "{how}");
        assert_eq!(ws.read("out/up/i=2/r.txt"), "value-2\n", "{how}");
        let object = find_object(&ws.path("cache/objects"), b"value-2\n");
        let m = std::fs::symlink_metadata(&object).unwrap();
        assert!(m.is_file(), "{how}: the object is a file again");
    }
}
