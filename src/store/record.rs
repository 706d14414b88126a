//! What the store remembers about one execution.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hash::Hash;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    File,
    Dir,
}

/// One file of a directory output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub hash: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exec: bool,
}

/// A stored output: a file, or a directory of files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    pub kind: OutputKind,
    /// blake3 of the file, or the Merkle hash of the directory.
    pub hash: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exec: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileEntry>,
}

/// One executed key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub key: String,
    pub podium_version: String,
    pub pipeline: String,
    pub stage: String,
    pub instance: String,
    pub op: String,
    pub op_version: u32,
    /// Parameters as written in messages (paths as `<label>`).
    pub params: BTreeMap<String, String>,
    /// Content hash of every path the instance read, by label.
    pub inputs: BTreeMap<String, String>,
    pub outputs: BTreeMap<String, Output>,
    /// Object holding the log.
    pub log: Option<String>,
    pub duration_s: f64,
    /// Seconds since the Unix epoch.
    pub finished_at: u64,
    /// Numbers the op reported (`metrics.json` among its outputs).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
}

impl Record {
    /// The stored hash of one output.
    pub fn output_hash(&self, output: &str) -> Option<Hash> {
        self.outputs
            .get(output)
            .and_then(|o| Hash::from_hex(&o.hash).ok())
    }

    pub fn new(
        key: &Hash,
        pipeline: &str,
        stage: &str,
        instance: &str,
        op: &str,
        op_version: u32,
    ) -> Record {
        Record {
            key: key.to_hex().to_string(),
            podium_version: env!("CARGO_PKG_VERSION").to_string(),
            pipeline: pipeline.to_string(),
            stage: stage.to_string(),
            instance: instance.to_string(),
            op: op.to_string(),
            op_version,
            params: BTreeMap::new(),
            inputs: BTreeMap::new(),
            outputs: BTreeMap::new(),
            log: None,
            duration_s: 0.0,
            finished_at: 0,
            metrics: BTreeMap::new(),
        }
    }
}
