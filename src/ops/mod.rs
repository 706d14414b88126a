//! Ops: the kinds of work a stage can do, each in a file of its own behind
//! the [`Op`] trait, with its parameters, defaults, help text and run.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// Help that the box ops (`wbf`, `nms`, `soft_nms`) share for their
/// parameters of one name: written once, used as `#[doc = box_help!(boxes)]`.
macro_rules! box_help {
    (boxes) => {
        "one COCO results file per model"
    };
    (images) => {
        "COCO file with each image's width and height, for boxes in pixels"
    };
}

pub mod cv;
pub mod ensemble;
pub mod evaluate;
pub mod exec;
pub mod folds;
pub mod idx_import;
pub mod instance_fusion;
pub mod mask_ensemble;
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

pub use crate::params::{
    Declared, NamedPaths, Param, ParamError, ParamKind, ParamSpec, Params, Strs,
};
pub use crate::progress::{Report, Step, no_report};

/// A failed run of an op. The executor names the op and the instance it
/// failed in.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// A parameter that cannot be used as given, found only at run time
    /// (against the data, or on this machine).
    #[error("`{}`: {}", .0.param, .0.message)]
    Param(ParamError),
    /// An input file that cannot be read as what it should be.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// Building, training or running a model failed.
    #[error(transparent)]
    Nn(crate::nn::NnError),
    /// The `exec` op's command failed or did not write what it declared.
    #[error("{0}")]
    Command(String),
    #[error("interrupted")]
    Cancelled,
    /// What none of the above says: a panic, threads that cannot start.
    #[error("{0}")]
    Failed(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<crate::nn::NnError> for OpError {
    fn from(e: crate::nn::NnError) -> Self {
        use crate::nn::NnError;
        match e {
            NnError::Cancelled => OpError::Cancelled,
            NnError::Data(d) => OpError::Data(d),
            e => OpError::Nn(e),
        }
    }
}

impl OpError {
    /// A [`OpError::Param`].
    pub fn param(name: &str, message: impl Into<String>) -> OpError {
        OpError::Param(ParamError::new(name, message))
    }

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

impl OpContext<'_> {
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

/// A kind of stage: what each op's file implements.
///
/// Its parameters are one typed struct declared with [`params!`](crate::params!);
/// `validate`, `outputs` and `run` read that struct, never a parameter by name.
pub trait Op: Send + Sync + 'static {
    type Params: Declared;
    const NAME: &'static str;
    /// Bump when the op's results change for the same inputs: every cached
    /// result of the op is then stale.
    const VERSION: u32;
    /// One line for `podium op --list` and the docs.
    const SUMMARY: &'static str;
    /// The parameters that `podium op KIND INPUT...` fills with its inputs:
    /// one list-of-paths parameter takes them all; otherwise one input
    /// each, in order.
    const INPUTS: &'static [&'static str] = &[];

    /// Names (relative paths) of the outputs this instance will write.
    fn outputs(&self, p: &Self::Params) -> Vec<String>;
    /// Checks beyond each parameter's type. At check time a path parameter
    /// holds what the manifest names, not a real location.
    fn validate(&self, _p: &Self::Params) -> Vec<ParamError> {
        Vec::new()
    }
    fn run(&self, p: Self::Params, cx: &mut OpContext) -> Result<(), OpError>;
}

/// An [`Op`] with its parameter type erased, as the checker, the planner
/// and the executors hold it.
pub trait AnyOp: Send + Sync {
    fn name(&self) -> &'static str;
    fn version(&self) -> u32;
    fn summary(&self) -> &'static str;
    fn params(&self) -> &'static [ParamSpec];
    fn inputs(&self) -> &'static [&'static str];
    /// Reads checked parameters, checks them beyond their types, and names
    /// the outputs.
    fn check(&self, params: &Params) -> Result<Vec<String>, Vec<ParamError>>;
    /// The outputs of an instance whose parameters read but may not pass
    /// the op's other checks; `None` when they do not read.
    fn outputs_of(&self, params: &Params) -> Option<Vec<String>>;
    fn run(&self, cx: &mut OpContext) -> Result<(), OpError>;
}

impl<T: Op> AnyOp for T {
    fn name(&self) -> &'static str {
        T::NAME
    }
    fn version(&self) -> u32 {
        T::VERSION
    }
    fn summary(&self) -> &'static str {
        T::SUMMARY
    }
    fn params(&self) -> &'static [ParamSpec] {
        T::Params::SPECS
    }
    fn inputs(&self) -> &'static [&'static str] {
        T::INPUTS
    }
    fn check(&self, params: &Params) -> Result<Vec<String>, Vec<ParamError>> {
        let p = T::Params::from_params(params, Path::new(""))?;
        let errs = self.validate(&p);
        if errs.is_empty() {
            Ok(self.outputs(&p))
        } else {
            Err(errs)
        }
    }
    fn outputs_of(&self, params: &Params) -> Option<Vec<String>> {
        let p = T::Params::from_params(params, Path::new("")).ok()?;
        Some(self.outputs(&p))
    }
    fn run(&self, cx: &mut OpContext) -> Result<(), OpError> {
        let p = T::Params::from_params(cx.params, cx.work_dir).map_err(|errs| {
            let all: Vec<String> = errs
                .iter()
                .map(|e| format!("`{}` {}", e.param, e.message))
                .collect();
            OpError::Failed(format!("parameters: {}", all.join("; ")))
        })?;
        Op::run(self, p, cx)
    }
}

static OPS: &[&dyn AnyOp] = &[
    &exec::Exec,
    &wbf::Wbf,
    &nms::Nms,
    &soft_nms::SoftNms,
    &folds::Folds,
    &evaluate::Evaluate,
    &ensemble::Ensemble,
    &cv::Cv,
    &mask_ensemble::MaskEnsemble,
    &instance_fusion::InstanceFusion,
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

/// `weights`, when given: one non-negative number per item of the list
/// parameter `of` (`n` items, `what` names them in the message), not all zero.
pub fn check_weights(weights: &[f64], n: usize, of: &str, what: &str) -> Vec<ParamError> {
    let mut errs = Vec::new();
    if !weights.is_empty() && weights.len() != n {
        errs.push(ParamError::new(
            "weights",
            format!(
                "{} weights for {n} {what}; give one per item of `{of}`",
                weights.len()
            ),
        ));
    }
    if weights.iter().any(|x| x.is_nan() || *x < 0.0)
        || (!weights.is_empty() && weights.iter().all(|x| *x == 0.0))
    {
        errs.push(ParamError::new(
            "weights",
            "weights must be non-negative, and not all zero",
        ));
    }
    errs
}

/// `device`: one `crate::nn::device` accepts.
pub fn check_device(device: &str) -> Option<ParamError> {
    (!crate::nn::valid_device(device))
        .then(|| ParamError::new("device", format!("use {}", crate::nn::DEVICES)))
}

/// All ops, by name.
pub fn all() -> &'static [&'static dyn AnyOp] {
    OPS
}

pub fn get(name: &str) -> Option<&'static dyn AnyOp> {
    OPS.iter().copied().find(|o| o.name() == name)
}

/// The marker in docs/ops.md above the parameter table of op `name`.
pub fn docs_marker(name: &str) -> String {
    format!("<!-- parameters of {name}: generated by `podium op --list --format markdown` -->")
}

/// The ops' parameter tables in markdown, each under its heading, summary
/// and docs/ops.md marker: what `podium op --list --format markdown` prints.
pub fn markdown(ops: &[&dyn AnyOp]) -> String {
    let mut s = String::new();
    for op in ops {
        s.push_str(&format!(
            "### `{}`\n\n{}\n\n{}\n{}\n",
            op.name(),
            op.summary(),
            docs_marker(op.name()),
            crate::params::markdown_table(op.params())
        ));
    }
    s
}

/// `text` (docs/ops.md) with the table under each op's marker replaced by
/// the one its declaration makes; an error names an op without a marker.
pub fn splice_docs(text: &str) -> Result<String, String> {
    let mut out = text.to_string();
    for op in all() {
        let marker = docs_marker(op.name());
        let Some(at) = out.find(&marker) else {
            return Err(format!("no `{marker}` line for op `{}`", op.name()));
        };
        let start = at + marker.len() + 1;
        // The table runs to the first blank line (or the end).
        let end = out[start..]
            .find("\n\n")
            .map_or(out.len(), |i| start + i + 1);
        out.replace_range(start..end, &crate::params::markdown_table(op.params()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

    #[test]
    fn every_default_parses_and_fits_its_kind() {
        for op in all() {
            for p in op.params() {
                if let Some(v) = p.default_value() {
                    assert!(
                        p.kind.accepts(&v),
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
    fn every_op_reads_its_defaults_and_help_is_given() {
        for op in all() {
            for p in op.params() {
                assert!(!p.help.is_empty(), "{}.{} has no help", op.name(), p.name);
            }
            // Required parameters, given as paths or strings, and the rest defaults.
            let params: Params = op
                .params()
                .iter()
                .filter(|p| p.default.is_none())
                .map(|p| {
                    let v = match p.kind {
                        ParamKind::PathList | ParamKind::Paths => {
                            Value::List(vec![Value::Str("x".into())])
                        }
                        _ => Value::Str("x".into()),
                    };
                    (p.name, v)
                })
                .collect();
            if let Err(errs) = op.check(&params) {
                // Only checks beyond the types may fail (e.g. a required
                // metric name that "x" is not).
                assert!(
                    errs.iter().all(|e| !e.message.starts_with("must be")),
                    "{}: {errs:?}",
                    op.name()
                );
            }
        }
    }

    /// docs/ops.md's parameter tables are what the declarations make; run
    /// with `PODIUM_BLESS=1` to rewrite them.
    #[test]
    fn docs_ops_md_tables_are_generated_from_the_declarations() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ops.md");
        let text = std::fs::read_to_string(&path).unwrap();
        let want = splice_docs(&text).unwrap();
        if std::env::var_os("PODIUM_BLESS").is_some() {
            std::fs::write(&path, &want).unwrap();
        } else if text != want {
            let diff: Vec<String> = text
                .lines()
                .zip(want.lines())
                .filter(|(a, b)| a != b)
                .take(3)
                .map(|(a, b)| format!("docs: {a}\ncode: {b}"))
                .collect();
            panic!(
                "docs/ops.md's parameter tables differ from the ops' declarations; \
                 run `PODIUM_BLESS=1 cargo test --lib docs_ops_md` to rewrite them:\n{}",
                diff.join("\n")
            );
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
