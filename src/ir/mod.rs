//! The checked layer: params resolved, inputs found, matrices expanded,
//! every op parameter type-checked, every reference bound to the instance
//! it names. A [`Pipeline`] is what the graph and the planner work on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use petgraph::graph::{DiGraph, NodeIndex};

use crate::diag::{Diagnostic, Span, did_you_mean};
use crate::expr::{EVal, Env, Expr, ExprKind, StageSel, Template, eval_template};
use crate::manifest::{RawKind, RawManifest, RawStage, RawValue, STAGE_KEYS};
use crate::ops::{self, AnyOp, ParamKind, Params};
use crate::value::{PathRef, Value};

/// A checked pipeline.
#[derive(Debug)]
pub struct Pipeline {
    pub name: String,
    pub description: Option<String>,
    /// The manifest file.
    pub manifest: PathBuf,
    /// The directory relative paths are resolved against.
    pub dir: PathBuf,
    pub params: BTreeMap<String, Value>,
    pub inputs: BTreeMap<String, Input>,
    /// Stages in dependency order.
    pub stages: Vec<Stage>,
    /// Instances in dependency order: every instance comes after those it reads.
    pub instances: Vec<Instance>,
}

#[derive(Debug, Clone)]
pub struct Input {
    pub path: PathBuf,
    pub glob: Option<String>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    pub op: String,
    pub description: Option<String>,
    pub span: Span,
    pub matrix_keys: Vec<String>,
    pub instances: Vec<usize>,
}

/// What an instance asks of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Resources {
    pub threads: usize,
    pub gpu: usize,
    /// Memory one instance needs, in MiB (`mem = "16G"`): a cluster
    /// executor asks for it (`--mem`); the local executor does not limit it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_mib: Option<u64>,
    /// Wall time one instance may take, in seconds (`time = "2h"`): a
    /// cluster executor asks for it (`--time`); the local executor does not
    /// limit it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_s: Option<u64>,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            threads: 1,
            gpu: 0,
            mem_mib: None,
            time_s: None,
        }
    }
}

/// Reads a memory size: an integer (MiB) or a number with a unit
/// `K`, `M`, `G`, `T` (binary; an optional `B` or `iB` after it), as in
/// `mem = "16G"` or `"512M"`. `None` when it is none of these.
pub fn parse_mem_mib(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_int() {
        return u64::try_from(n).ok().filter(|&n| n > 0);
    }
    let s = v.as_str()?.trim();
    let digits = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let num: f64 = num.parse().ok()?;
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(&unit);
    let mib = match unit {
        "K" => num / 1024.0,
        "" | "M" => num,
        "G" => num * 1024.0,
        "T" => num * 1024.0 * 1024.0,
        _ => return None,
    };
    (mib > 0.0 && mib.is_finite()).then(|| mib.ceil() as u64)
}

/// Reads a wall time: an integer (minutes, as Slurm's `--time`), Slurm's
/// `[D-]HH:MM[:SS]` / `MM:SS`, or units such as `"90m"`, `"2h"`,
/// `"1h30m"`, `"1d"`, `"45s"`. `None` when it is none of these.
pub fn parse_time_s(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_int() {
        return u64::try_from(n).ok().filter(|&n| n > 0).map(|m| m * 60);
    }
    let s = v.as_str()?.trim();
    let secs = if s.contains(':') || s.contains('-') {
        let (days, rest) = match s.split_once('-') {
            Some((d, r)) => (d.parse::<u64>().ok()?, r),
            None => (0, s),
        };
        let parts: Vec<u64> = rest
            .split(':')
            .map(|p| p.parse::<u64>().ok())
            .collect::<Option<_>>()?;
        let hms = match (s.contains('-'), parts.as_slice()) {
            (false, [m, sec]) => m * 60 + sec,
            (true, [h]) => h * 3600,
            (_, [h, m]) => h * 3600 + m * 60,
            (_, [h, m, sec]) => h * 3600 + m * 60 + sec,
            _ => return None,
        };
        days * 86400 + hms
    } else {
        let mut total = 0u64;
        let mut num = String::new();
        for c in s.chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let n: u64 = num.parse().ok()?;
            num.clear();
            total += n * match c {
                'd' => 86400,
                'h' => 3600,
                'm' => 60,
                's' => 1,
                _ => return None,
            };
        }
        if !num.is_empty() {
            return None;
        }
        total
    };
    (secs > 0).then_some(secs)
}

/// One instance of a stage: one combination of its matrix.
#[derive(Debug, Clone)]
pub struct Instance {
    pub id: usize,
    pub stage: usize,
    pub stage_name: String,
    /// `train[fold=0,arch=resnet18]`, or the stage name without a matrix.
    pub name: String,
    pub matrix: Vec<(String, Value)>,
    pub op: &'static str,
    /// Every parameter of the op, defaults filled in.
    pub params: Params,
    /// Shared by the instances of a stage that declare the same ones.
    pub outputs: std::sync::Arc<[String]>,
    /// Instances whose outputs this one reads, ascending.
    pub deps: Vec<usize>,
    pub resources: Resources,
    /// The `[params]` this instance's stage refers to, with their values:
    /// explanations name `params.lr` rather than only the op parameter it
    /// was interpolated into.
    pub uses: std::sync::Arc<BTreeMap<String, Value>>,
    /// Per op parameter written with `${params...}`, the `[params]` it
    /// reads: a change is explained once, by the param the user edited.
    pub derived: std::sync::Arc<BTreeMap<String, Vec<String>>>,
}

impl Instance {
    pub fn op(&self) -> &'static dyn AnyOp {
        ops::get(self.op).expect("checked op exists")
    }

    /// The parameters as the op runs with them: every path (and every path
    /// in an interpolated string) replaced by where `place` says it is.
    pub fn params_placed(&self, place: &dyn Fn(&PathRef) -> String) -> Params {
        self.params
            .iter()
            .map(|(name, v)| (name, v.map_paths(place)))
            .collect()
    }

    /// `fold=0,arch=resnet18`: the instance's directory name under its stage
    /// (each value encoded by [`encode_matrix_value`]).
    pub fn matrix_label(&self) -> String {
        matrix_label(&self.matrix)
    }
}

/// `k=v,k2=v2` with each value encoded by [`encode_matrix_value`]: one path
/// component whatever the values hold.
pub fn matrix_label(combo: &[(String, Value)]) -> String {
    combo
        .iter()
        .map(|(k, v)| format!("{k}={}", encode_matrix_value(&plain(v))))
        .collect::<Vec<_>>()
        .join(",")
}

/// A matrix value as it appears in instance names and directory names:
/// ASCII letters, digits and `-_.+@~` stay; every other byte (`/`, `,`,
/// `=`, `%`, `[`, `]`, spaces, control characters, non-ASCII) and a leading
/// `.` become `%XX`, so that no value forms a path component of its own
/// (`..`, `a/b`, a newline) and every instance can be named as a target.
pub fn encode_matrix_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, b) in v.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b"-_+@~".contains(&b) || (b == b'.' && i > 0);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The inverse of [`encode_matrix_value`]; `None` when `s` is not an
/// encoding (a `%` not followed by two hex digits, or bytes that are not
/// UTF-8).
pub fn decode_matrix_value(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn plain(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        other => other.to_string(),
    }
}

mod check;
mod env;
mod query;
#[cfg(test)]
mod tests;

pub use check::check;
pub use query::resolve_output;
