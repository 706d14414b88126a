//! Settings of a machine or project that are not the pipeline's: where the
//! remote cache is (and, later, the cluster). They live apart from the
//! manifests, so that a manifest stays the same on a laptop, a cluster and
//! in CI.
//!
//! Read from `--config FILE` (or `PODIUM_CONFIG`), else `.podium/config.toml`
//! in the current directory if there is one; flags (`--remote`) override it.
//!
//! ```toml
//! executor = "slurm"                 # what `podium run` uses (--executor); default local
//!
//! [remote]
//! url = "s3://team-bucket/podium"   # or file:///shared/podium-cache
//! endpoint = "http://minio:9000"    # S3-compatible servers; default AWS_ENDPOINT_URL
//! region = "us-east-1"
//! allow_http = false
//! push = true                        # push what runs
//! fetch = true                       # fetch what the remote has
//! retries = 5
//! transfers = 16
//!
//! [slurm]                            # see executor::slurm::SlurmConfig
//! partition = "cpu"
//! [slurm.stages.train]
//! partition = "gpu"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::store::RemoteConfig;

/// The config file read when none is named.
pub const DEFAULT_PATH: &str = ".podium/config.toml";

/// The whole config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where `podium run` executes by default (`--executor` overrides).
    #[serde(default)]
    pub executor: Option<ExecutorKind>,
    #[serde(default)]
    pub remote: Option<RemoteConfig>,
    /// How jobs go to Slurm (`--executor slurm`).
    #[serde(default)]
    pub slurm: Option<crate::executor::slurm::SlurmConfig>,
}

/// Where instances run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// On this machine, in parallel threads.
    #[default]
    Local,
    /// As Slurm batch jobs (job arrays for matrix stages), on a store all nodes share.
    Slurm,
}

impl Config {
    /// Reads `path`, or [`DEFAULT_PATH`] when it exists; no file is an empty config.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let (path, must_exist) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                return Ok(Config::default());
            }
            Err(source) => return Err(Error::Io { path, source }),
        };
        Config::parse(&path, &text)
    }

    /// Parses a config file's text; an error names the file, line and column.
    pub fn parse(path: &Path, text: &str) -> Result<Config> {
        toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| {
                let before = &text[..s.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(":{line}:{col}")
            });
            Error::Usage(format!(
                "{}{}: {}",
                path.display(),
                at.unwrap_or_default(),
                e.message()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_section_is_read_with_defaults() {
        let c = Config::parse(Path::new("c.toml"), "[remote]\nurl = \"s3://b/p\"\n").unwrap();
        let r = c.remote.unwrap();
        assert_eq!(r.url, "s3://b/p");
        assert!(r.push && r.fetch && !r.allow_http);
        assert_eq!((r.retries, r.transfers), (5, 16));
    }

    #[test]
    fn a_misspelled_key_is_an_error_at_its_line() {
        let e = Config::parse(
            Path::new("c.toml"),
            "[remote]\nurl = \"s3://b\"\nendpiont = \"http://x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("c.toml:3:1: unknown field `endpiont`"), "{e}");
    }

    #[test]
    fn no_default_file_is_an_empty_config_but_a_named_one_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let e = Config::load(Some(&missing)).unwrap_err().to_string();
        assert!(e.contains("nope.toml"), "{e}");
    }
}
