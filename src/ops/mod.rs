//! Ops: the kinds of work a stage can do, each in a file of its own behind
//! the [`Op`] trait, with its parameters, defaults, help text and run.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::value::Value;

pub mod ensemble;
pub mod evaluate;
pub mod exec;
pub mod folds;
pub mod idx_import;
pub mod nms;
pub mod postprocess;
pub mod predict;
pub mod pseudo_label;
pub mod resize;
pub mod soft_nms;
pub mod stats;
pub mod submission;
pub mod synth;
pub mod train;
pub mod wbf;

/// Resolved parameters of one instance, by name, in name order.
///
/// A sorted vector rather than a map: an op has a few dozen parameters at
/// most, and a matrix stage may have a million instances, each with its own
/// `Params` (a `BTreeMap` node alone would be most of an instance's memory).
#[derive(Clone, Debug, Default, PartialEq)]
/// Names are the op's [`ParamSpec::name`]s.
pub struct Params(Vec<(&'static str, Value)>);

impl Params {
    pub fn new() -> Self {
        Params(Vec::new())
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| (*k).cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    /// Sets `name`, returning the value it replaces.
    pub fn insert(&mut self, name: &'static str, value: Value) -> Option<Value> {
        match self.find(name) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (name, value));
                None
            }
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Value)> {
        self.0.iter().map(|(k, v)| (*k, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &Value> {
        self.0.iter().map(|(_, v)| v)
    }

    /// Gives back spare capacity (a stage's instances keep theirs for good).
    pub fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit()
    }
}

impl FromIterator<(&'static str, Value)> for Params {
    fn from_iter<I: IntoIterator<Item = (&'static str, Value)>>(it: I) -> Self {
        let mut p = Params::new();
        for (k, v) in it {
            p.insert(k, v);
        }
        p
    }
}

impl<'a> IntoIterator for &'a Params {
    type Item = (&'static str, &'a Value);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (&'static str, Value)>,
        fn(&'a (&'static str, Value)) -> (&'static str, &'a Value),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (*k, v))
    }
}

/// The type a parameter accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    Str,
    Int,
    Float,
    Bool,
    /// One of the listed strings.
    Enum(&'static [&'static str]),
    /// A file or directory: a reference, or a string path relative to the manifest.
    Path,
    /// Paths, as a list or as a table of named paths.
    Paths,
    /// A list of strings.
    StrList,
    /// A list of numbers.
    FloatList,
    /// A string, or a list of them.
    Strs,
    /// Anything.
    Any,
}

impl ParamKind {
    pub fn describe(self) -> String {
        match self {
            ParamKind::Str => "string".into(),
            ParamKind::Int => "integer".into(),
            ParamKind::Float => "number".into(),
            ParamKind::Bool => "boolean".into(),
            ParamKind::Enum(vs) => vs.join(" | "),
            ParamKind::Path => "path".into(),
            ParamKind::Paths => "list or table of paths".into(),
            ParamKind::StrList => "list of strings".into(),
            ParamKind::FloatList => "list of numbers".into(),
            ParamKind::Strs => "string or list of strings".into(),
            ParamKind::Any => "any".into(),
        }
    }
}

/// One parameter of an op.
#[derive(Clone, Copy, Debug)]
pub struct ParamSpec {
    pub name: &'static str,
    pub kind: ParamKind,
    /// The default as TOML text, or `None` when the parameter is required.
    pub default: Option<&'static str>,
    pub help: &'static str,
}

/// A problem with one parameter, found before or while running.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamError {
    pub param: String,
    pub message: String,
}

impl ParamError {
    pub fn new(param: &str, message: impl Into<String>) -> ParamError {
        ParamError {
            param: param.to_string(),
            message: message.into(),
        }
    }
}

/// A failed run of an op.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    Failed(String),
    #[error("interrupted")]
    Cancelled,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl OpError {
    pub fn io(path: &Path, source: std::io::Error) -> OpError {
        OpError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What an op gets when it runs.
pub struct OpContext<'a> {
    /// Parameters with every path resolved to a real location.
    pub params: &'a Params,
    /// A fresh, empty directory for the outputs.
    pub out_dir: &'a Path,
    /// The manifest's directory.
    pub work_dir: &'a Path,
    /// The instance's log.
    pub log: &'a mut std::fs::File,
    /// Set when the run is interrupted; long ops poll it.
    pub cancel: &'a AtomicBool,
    /// Threads the op may use.
    pub threads: usize,
    /// GPUs handed to this instance (device ordinals).
    pub gpus: &'a [usize],
    /// A directory that outlives a killed or interrupted run of this same
    /// instance (same key), for resumable work such as training's epochs;
    /// removed once the instance succeeds. `None` for `podium op`.
    pub resume_dir: Option<&'a Path>,
    /// Where long ops report how far they have got (a progress bar).
    pub progress: &'a Report<'a>,
}

/// How far an op has got: `done` of `total` units (batches, images), and a
/// short line such as `epoch 3/10  loss 0.412`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Step {
    pub done: u64,
    pub total: u64,
    pub message: String,
}

/// Receives an op's [`Step`]s.
pub type Report<'a> = dyn Fn(&Step) + Sync + 'a;

/// A [`Report`] that goes nowhere.
pub fn no_report(_: &Step) {}

impl OpContext<'_> {
    pub fn str(&self, name: &str) -> &str {
        self.params.get(name).and_then(Value::as_str).unwrap_or("")
    }

    pub fn f64(&self, name: &str) -> f64 {
        self.params.get(name).and_then(Value::as_f64).unwrap_or(0.0)
    }

    pub fn int(&self, name: &str) -> i64 {
        self.params.get(name).and_then(Value::as_int).unwrap_or(0)
    }

    pub fn bool(&self, name: &str) -> bool {
        self.params
            .get(name)
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// A path parameter, relative paths taken from the manifest's directory;
    /// `None` when it is the empty string (not given).
    pub fn path(&self, name: &str) -> Option<PathBuf> {
        let s = self.str(name);
        (!s.is_empty()).then(|| self.work_dir.join(s))
    }

    /// A list-of-paths parameter (a single path counts as a list of one).
    pub fn paths(&self, name: &str) -> Vec<PathBuf> {
        match self.params.get(name) {
            Some(Value::List(l)) => l
                .iter()
                .filter_map(Value::as_str)
                .map(|s| self.work_dir.join(s))
                .collect(),
            Some(Value::Str(s)) if !s.is_empty() => vec![self.work_dir.join(s)],
            _ => Vec::new(),
        }
    }

    /// A list of strings (a single string counts as a list of one).
    pub fn strs(&self, name: &str) -> Vec<String> {
        match self.params.get(name) {
            Some(Value::List(l)) => l
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            Some(Value::Str(s)) if !s.is_empty() => vec![s.clone()],
            _ => Vec::new(),
        }
    }

    /// A list of numbers.
    pub fn floats(&self, name: &str) -> Vec<f64> {
        self.params
            .get(name)
            .and_then(Value::as_list)
            .map(|l| l.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    }

    /// A thread pool of the instance's size, for data-parallel ops.
    pub fn pool(&self) -> Result<rayon::ThreadPool, OpError> {
        rayon::ThreadPoolBuilder::new()
            .num_threads(self.threads.max(1))
            .build()
            .map_err(|e| OpError::Failed(format!("cannot start threads: {e}")))
    }

    /// Fails with [`OpError::Cancelled`] once the run is interrupted.
    pub fn check_cancel(&self) -> Result<(), OpError> {
        if self.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            Err(OpError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Reports progress: `done` of `total`, with a short message.
    pub fn step(&self, done: u64, total: u64, message: impl Into<String>) {
        (self.progress)(&Step {
            done,
            total,
            message: message.into(),
        });
    }

    /// A line in the instance's log.
    pub fn log(&mut self, line: impl std::fmt::Display) {
        use std::io::Write;
        let _ = writeln!(self.log, "{line}");
    }
}

/// A kind of stage.
pub trait Op: Send + Sync {
    fn name(&self) -> &'static str;
    /// Bump when the op's results change for the same inputs: every cached
    /// result of the op is then stale.
    fn version(&self) -> u32;
    /// One line for `podium op --list` and the docs.
    fn summary(&self) -> &'static str;
    fn params(&self) -> &'static [ParamSpec];
    /// The parameters that `podium op KIND INPUT...` fills with its inputs:
    /// one `Paths` parameter takes them all; otherwise one input each, in order.
    fn inputs(&self) -> &'static [&'static str] {
        &[]
    }
    /// Names (relative paths) of the outputs this instance will write.
    fn outputs(&self, params: &Params) -> Result<Vec<String>, ParamError>;
    /// Checks beyond the parameter types.
    fn validate(&self, _params: &Params) -> Vec<ParamError> {
        Vec::new()
    }
    fn run(&self, cx: &mut OpContext) -> Result<(), OpError>;
}

static OPS: &[&dyn Op] = &[
    &exec::Exec,
    &wbf::Wbf,
    &nms::Nms,
    &soft_nms::SoftNms,
    &folds::Folds,
    &evaluate::Evaluate,
    &ensemble::Ensemble,
    &resize::Resize,
    &stats::Stats,
    &synth::Synth,
    &postprocess::Postprocess,
    &pseudo_label::PseudoLabel,
    &submission::Submission,
    &train::Train,
    &predict::Predict,
    &idx_import::IdxImport,
];

/// Whether an optional path (or string) parameter was given: a path, or a
/// non-empty string.
pub fn is_given(params: &Params, name: &str) -> bool {
    match params.get(name) {
        Some(Value::Str(s)) => !s.is_empty(),
        Some(Value::Path(_) | Value::Interp(_)) => true,
        Some(Value::List(l)) => !l.is_empty(),
        _ => false,
    }
}

/// `weights`, when given: one non-negative number per item of the list
/// parameter `of` (`what` names the items in the message), not all zero.
pub fn check_weights(params: &Params, of: &str, what: &str) -> Vec<ParamError> {
    let w = params
        .get("weights")
        .and_then(Value::as_list)
        .unwrap_or(&[]);
    let n = match params.get(of) {
        Some(Value::List(l)) => l.len(),
        _ => return Vec::new(),
    };
    let mut errs = Vec::new();
    if !w.is_empty() && w.len() != n {
        errs.push(ParamError::new(
            "weights",
            format!(
                "{} weights for {n} {what}; give one per item of `{of}`",
                w.len()
            ),
        ));
    }
    let bad = |x: &Value| x.as_f64().is_none_or(|x| x.is_nan() || x < 0.0);
    if w.iter().any(bad) || (!w.is_empty() && w.iter().all(|x| x.as_f64() == Some(0.0))) {
        errs.push(ParamError::new(
            "weights",
            "weights must be non-negative, and not all zero",
        ));
    }
    errs
}

/// `device`, when given as text: one `crate::nn::device` accepts.
pub fn check_device(params: &Params) -> Option<ParamError> {
    let d = params.get("device").and_then(Value::as_str)?;
    (!crate::nn::valid_device(d))
        .then(|| ParamError::new("device", format!("use {}", crate::nn::DEVICES)))
}

/// All ops, by name.
pub fn all() -> &'static [&'static dyn Op] {
    OPS
}

pub fn get(name: &str) -> Option<&'static dyn Op> {
    OPS.iter().copied().find(|o| o.name() == name)
}

/// The default of a parameter as a value.
pub fn default_value(spec: &ParamSpec) -> Option<Value> {
    let text = spec.default?;
    let v = toml::de::DeValue::parse(text).expect("op defaults are valid TOML");
    Some(from_toml(v.get_ref()))
}

fn from_toml(v: &toml::de::DeValue) -> Value {
    use toml::de::DeValue as D;
    match v {
        D::Boolean(b) => Value::Bool(*b),
        D::Integer(i) => Value::Int(i64::from_str_radix(i.as_str(), i.radix()).unwrap_or(0)),
        D::Float(f) => Value::Float(f.as_str().parse().unwrap_or(f64::NAN)),
        D::String(s) => Value::Str(s.to_string()),
        D::Array(a) => Value::List(a.iter().map(|x| from_toml(x.get_ref())).collect()),
        D::Table(t) => Value::Table(
            t.iter()
                .map(|(k, v)| (k.get_ref().to_string(), from_toml(v.get_ref())))
                .collect(),
        ),
        D::Datetime(d) => Value::Str(d.to_string()),
    }
}

/// Whether `v` fits `kind`; `Path` and `Paths` also take strings, which the
/// checker turns into workspace paths.
pub fn kind_accepts(kind: ParamKind, v: &Value) -> bool {
    match (kind, v) {
        (ParamKind::Any, _) => true,
        (ParamKind::Str, Value::Str(_) | Value::Interp(_)) => true,
        (ParamKind::Int, Value::Int(_)) => true,
        (ParamKind::Float, Value::Int(_) | Value::Float(_)) => true,
        (ParamKind::Bool, Value::Bool(_)) => true,
        (ParamKind::Enum(vs), Value::Str(s)) => vs.contains(&s.as_str()),
        (ParamKind::Path, Value::Path(_) | Value::Str(_)) => true,
        (ParamKind::Paths, Value::List(l)) => l.iter().all(|x| kind_accepts(ParamKind::Path, x)),
        (ParamKind::Paths, Value::Table(t)) => t.values().all(|x| kind_accepts(ParamKind::Path, x)),
        (ParamKind::Paths, Value::Path(_) | Value::Str(_)) => true,
        (ParamKind::StrList, Value::List(l)) => l.iter().all(|x| matches!(x, Value::Str(_))),
        (ParamKind::Strs, Value::Str(_)) => true,
        (ParamKind::Strs, Value::List(l)) => l.iter().all(|x| matches!(x, Value::Str(_))),
        (ParamKind::FloatList, Value::List(l)) => l
            .iter()
            .all(|x| matches!(x, Value::Int(_) | Value::Float(_))),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_parses_and_fits_its_kind() {
        for op in all() {
            for p in op.params() {
                if let Some(v) = default_value(p) {
                    assert!(
                        kind_accepts(p.kind, &v),
                        "{}.{}: default {v} is not a {:?}",
                        op.name(),
                        p.name,
                        p.kind
                    );
                }
            }
        }
    }

    #[test]
    fn op_names_are_unique() {
        let mut names: Vec<_> = all().iter().map(|o| o.name()).collect();
        names.sort();
        let n = names.len();
        names.dedup();
        assert_eq!(n, names.len());
    }
}
