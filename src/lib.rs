//! podium: declarative, content-hashed pipelines for computer-vision
//! competitions.
//!
//! The whole flow, one module per layer:
//!
//! ```no_run
//! # fn main() -> podium::Result<()> {
//! use podium::*;
//! let (pipeline, _warnings) = load("pipelines/demo.toml".as_ref(), &[])?; // manifest → checked IR
//! let graph = graph::Graph::of(&pipeline);                              // sealed instance DAG
//! let store = store::Store::open("cache".as_ref())?;                    // content-addressed store
//! let stat = store::StatCache::load(&store.statcache_path());
//! let plan = plan::plan(&pipeline, &graph, &store, &stat, None, &Default::default())?; // stale, and why
//! let executor = executor::LocalExecutor { threads: 2, gpus: 0, keep_going: false };
//! let opts = executor::RunOptions { targets: vec![], force: Default::default(), out_root: "out".into(), fetch_only: false };
//! let report = executor::run(&pipeline, &store, &stat, &executor, &opts, &executor::NoEvents, &|_| {})?; // ops run
//! # let _ = (plan, report); Ok(()) }
//! ```
//!
//! - [`manifest`]: TOML with spans, `${...}` split out ([`expr`], grammar in `grammar/expr.pest`).
//! - [`ir`]: params resolved, matrices expanded, references bound, parameters type-checked.
//! - [`graph`]: the instance DAG (petgraph), built then sealed.
//! - [`plan`]: keys (blake3 of op, version, params, input content) and why each instance is stale.
//! - [`executor`]: the executor interface and the local (rayon) executor.
//! - [`ops`]: one file per op behind the [`ops::Op`] trait; they read and write through
//!   [`data`] (tables, COCO boxes, images) and score through [`metrics`].
//!   Each declares its parameters once ([`params`](mod@params)) and reports how far it has got
//!   ([`progress`]).
//! - [`schema`]: the manifest's JSON Schema, from the op declarations, for editors.
//! - [`store`]: objects, records, atomic writes, the lock, the stat cache, the remote cache
//!   ([`store::Remote`], S3 or a shared directory, set in [`config`]); [`hash`]: content hashing.

pub mod cancel;
pub mod config;
pub mod data;
pub mod diag;
pub mod error;
pub mod executor;
pub mod expr;
pub mod graph;
pub mod hash;
pub mod ir;
pub mod manifest;
pub mod metrics;
pub mod nn;
pub mod ops;
pub mod params;
pub mod plan;
pub mod progress;
pub mod schema;
pub mod store;
pub mod topo;
pub mod value;

use std::path::Path;

pub use error::{Error, Result};

use diag::{Report, SourceMap};

/// Reads, parses and checks a manifest, with `--set` overrides applied.
/// On success returns the pipeline and any warnings; on failure every
/// diagnostic, in [`Error::Manifest`].
pub fn load(path: &Path, overrides: &[String]) -> Result<(ir::Pipeline, Report)> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    load_str(path, &text, overrides)
}

/// As [`load`], from text already read.
pub fn load_str(path: &Path, text: &str, overrides: &[String]) -> Result<(ir::Pipeline, Report)> {
    let (pipeline, report) = check_str(path, text, overrides);
    match pipeline {
        Some(p) if !report.has_errors() => Ok((p, report)),
        _ => Err(Error::Manifest(Box::new(report))),
    }
}

/// Parses and checks, returning whatever could be built and every diagnostic.
pub fn check_str(path: &Path, text: &str, overrides: &[String]) -> (Option<ir::Pipeline>, Report) {
    let mut sources = SourceMap::default();
    let (raw, mut diags) = manifest::parse(path, text, &mut sources);
    diag::cap(&mut diags);
    let pipeline = raw.and_then(|raw| check_raw(raw, overrides, &mut sources, &mut diags));
    (
        pipeline,
        Report {
            sources,
            diagnostics: diags,
        },
    )
}

/// Applies `overrides` to a parsed manifest and checks it.
fn check_raw(
    mut raw: manifest::RawManifest,
    overrides: &[String],
    sources: &mut SourceMap,
    diags: &mut Vec<diag::Diagnostic>,
) -> Option<ir::Pipeline> {
    for o in overrides {
        if let Err(d) = manifest::parse_override(o, sources).and_then(|o| raw.apply(&o)) {
            diags.push(d);
        }
    }
    // A bad override is left out and the rest is checked, so that one
    // `check` says every mistake.
    let (p, more) = ir::check(&raw);
    diags.extend(more);
    p.filter(|_| !diags.iter().any(|d| d.is_error()))
}

/// The one-stage pipeline `podium op KIND INPUT... --set KEY=VALUE` runs:
/// a stage `op` of op `kind` whose input parameters ([`ops::AnyOp::inputs`])
/// are `inputs` (absolute paths) and whose other parameters are set by
/// `overrides` (`KEY=VALUE`, as a stage's `--set`), checked as a
/// manifest's stage is. An unknown op or inputs it cannot take are
/// [`Error::Usage`].
pub fn check_one_op(
    kind: &str,
    inputs: &[std::path::PathBuf],
    overrides: &[String],
) -> Result<(Option<ir::Pipeline>, Report)> {
    use manifest::{Name, RawKind, RawManifest, RawStage, RawValue};
    let op = ops::get(kind).ok_or_else(|| Error::Usage(format!("unknown op `{kind}`")))?;
    let mut sources = SourceMap::default();
    let src = sources.add("<podium op>", "");
    let span = diag::Span::new(src, 0, 0);
    let name = |n: &str| Name {
        name: n.to_string(),
        span,
    };
    let path = |p: &std::path::PathBuf| RawValue {
        kind: RawKind::Str(expr::Template {
            segments: vec![expr::Segment::Lit(
                std::path::absolute(p)
                    .unwrap_or_else(|_| p.clone())
                    .display()
                    .to_string(),
            )],
        }),
        span,
    };
    let mut fields = Vec::new();
    let names = op.inputs();
    let takes_list = |n: &str| {
        op.params()
            .iter()
            .any(|p| p.name == n && p.kind.holds_paths() && p.kind != ops::ParamKind::Path)
    };
    match names {
        _ if inputs.is_empty() => {}
        [] => {
            return Err(Error::Usage(format!(
                "op `{kind}` takes no inputs; give its parameters with --set"
            )));
        }
        [one] if takes_list(one) => fields.push((
            name(one),
            RawValue {
                kind: RawKind::Array(inputs.iter().map(path).collect()),
                span,
            },
        )),
        _ if inputs.len() > names.len() => {
            return Err(Error::Usage(format!(
                "op `{kind}` takes at most {} input(s): {}",
                names.len(),
                names.join(", ")
            )));
        }
        _ => fields.extend(names.iter().zip(inputs).map(|(n, i)| (name(n), path(i)))),
    }
    let raw = RawManifest {
        path: std::path::PathBuf::from("podium-op.toml"),
        src,
        name: Some(("op".into(), span)),
        description: None,
        params: Vec::new(),
        inputs: Vec::new(),
        stages: vec![RawStage {
            name: name("op"),
            op: Some((kind.to_string(), span)),
            matrix: Vec::new(),
            resources: None,
            description: None,
            fields,
            broken: Vec::new(),
        }],
    };
    let overrides: Vec<String> = overrides.iter().map(|o| format!("stages.op.{o}")).collect();
    let mut diags = Vec::new();
    let pipeline = check_raw(raw, &overrides, &mut sources, &mut diags);
    Ok((
        pipeline,
        Report {
            sources,
            diagnostics: diags,
        },
    ))
}
