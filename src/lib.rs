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
//! let stat = hash::StatCache::load(&store.statcache_path());
//! let plan = plan::plan(&pipeline, &graph, &store, &stat, None, &Default::default())?; // stale, and why
//! let executor = exec::LocalExecutor { threads: 2, gpus: 0, keep_going: false };
//! let opts = exec::RunOptions { targets: vec![], jobs: 2, gpus: 0, keep_going: false,
//!     force: Default::default(), out_root: "out".into() };
//! let report = exec::run(&pipeline, &store, &stat, &executor, &opts, &exec::NoEvents, &|_| {})?; // ops run
//! # let _ = (plan, report); Ok(()) }
//! ```
//!
//! - [`manifest`]: TOML with spans, `${...}` split out ([`expr`], grammar in `grammar/expr.pest`).
//! - [`ir`]: params resolved, matrices expanded, references bound, parameters type-checked.
//! - [`graph`]: the instance DAG (petgraph), built then sealed.
//! - [`plan`]: keys (blake3 of op, version, params, input content) and why each instance is stale.
//! - [`exec`]: the executor interface and the local (rayon) executor.
//! - [`ops`]: one file per op behind the [`ops::Op`] trait; they read and write through
//!   [`data`] (tables, COCO boxes, images) and score through [`metrics`].
//! - [`store`]: objects, records, atomic writes, the lock; [`hash`]: content hashing and the stat cache.

pub mod cancel;
pub mod data;
pub mod diag;
pub mod error;
pub mod exec;
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
pub mod store;
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
    let mut pipeline = None;
    if let Some(mut raw) = raw {
        for o in overrides {
            match manifest::parse_override(o, &mut sources).and_then(|o| raw.apply(&o)) {
                Ok(()) => {}
                Err(d) => diags.push(d),
            }
        }
        if diags.iter().all(|d| !d.is_error()) {
            let (p, more) = ir::check(&raw);
            diags.extend(more);
            pipeline = p;
        }
    }
    (
        pipeline,
        Report {
            sources,
            diagnostics: diags,
        },
    )
}
