//! The integration tests' one workspace helper: a scratch directory, its
//! files, and podium run in it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use assert_cmd::cargo::CommandCargoExt;

/// A scratch workspace (removed when dropped).
pub struct Ws {
    pub dir: tempfile::TempDir,
}

impl Ws {
    /// An empty workspace.
    pub fn new() -> Ws {
        Ws {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A workspace holding the manifest `p.toml`.
    pub fn with_manifest(manifest: &str) -> Ws {
        let ws = Ws::new();
        ws.write("p.toml", manifest);
        ws
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes `rel` (making its directory), returning its path.
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap()
    }

    /// `podium ARGS` in the workspace ([`podium_cmd`]).
    pub fn cmd(&self, args: &[&str]) -> Command {
        podium_cmd(self.dir.path(), args)
    }

    pub fn podium(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// `podium ARGS` run in the workspace's directory `rel`.
    pub fn podium_in(&self, rel: &str, args: &[&str]) -> Output {
        self.cmd(args).current_dir(self.path(rel)).output().unwrap()
    }
}

/// `podium ARGS` in `dir`, not yet started, with the store, `out/`, the
/// config and the remote at their defaults (the environment's `PODIUM_*`
/// settings removed).
pub fn podium_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::cargo_bin("podium").unwrap();
    c.current_dir(dir)
        .args(args)
        .env_remove("PODIUM_STORE")
        .env_remove("PODIUM_OUT_DIR")
        .env_remove("PODIUM_CONFIG")
        .env_remove("PODIUM_REMOTE")
        .env_remove("PODIUM_EXECUTOR");
    c
}

/// `podium ARGS` run in `dir`.
pub fn podium_at(dir: &Path, args: &[&str]) -> Output {
    podium_cmd(dir, args).output().unwrap()
}

/// The kill-and-resume drill of the training tests: runs `p.toml` (pipeline
/// `resume`) in `dir` whole (store `c1`, outputs `o1`), then again (store
/// `c2`, outputs `o2`)
/// killed with SIGKILL as soon as a training epoch's state is saved, then
/// once more to its end. Asserts that the whole run left no state behind,
/// that the killed run wrote no output, and that the last run resumed (the
/// stage's log says so); the caller compares `o1` and `o2`.
pub fn run_whole_then_killed_and_resumed(dir: &Path, stage: &str) {
    let run = |store: &str, out: &str| {
        let o = podium_at(
            dir,
            &["run", "-f", "p.toml", "--store", store, "--out-dir", out],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let states = |store: &str| -> usize {
        std::fs::read_dir(dir.join(store).join("resume"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("state.safetensors").exists())
            .count()
    };
    run("c1", "o1");
    assert_eq!(states("c1"), 0, "the state is removed after success");
    let child = podium_cmd(
        dir,
        &["run", "-f", "p.toml", "--store", "c2", "--out-dir", "o2"],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while states("c2") == 0 {
        assert!(std::time::Instant::now() < deadline, "no epoch finished");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait_with_output();
    assert!(
        !dir.join("o2/resume").join(stage).exists(),
        "killed before it finished"
    );
    run("c2", "o2");
    let log = std::fs::read_to_string(dir.join(format!("c2/logs/resume/{stage}.log"))).unwrap();
    assert!(log.contains("resuming after epoch"), "{log}");
}
