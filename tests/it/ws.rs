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

/// `podium ARGS` in `dir`, not yet started, with the store and `out/` at
/// their defaults (the environment's `PODIUM_STORE` and `PODIUM_OUT_DIR`
/// removed).
pub fn podium_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::cargo_bin("podium").unwrap();
    c.current_dir(dir)
        .args(args)
        .env_remove("PODIUM_STORE")
        .env_remove("PODIUM_OUT_DIR");
    c
}

/// `podium ARGS` run in `dir`.
pub fn podium_at(dir: &Path, args: &[&str]) -> Output {
    podium_cmd(dir, args).output().unwrap()
}
