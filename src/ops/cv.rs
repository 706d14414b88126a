//! `cv`: the cross-validation of a trained stage in one small stage: the
//! folds' out-of-fold tables as one table of the whole training set, and
//! every fold's validation metrics with their mean and standard deviation.
//!
//! ```toml
//! [stages.cv]
//! op = "cv"
//! oofs = "${stages.train[*].oof}"
//! metrics = "${stages.train[*].metrics}"
//! ```
//!
//! Writes `oof.csv` (the folds' rows one after another; an id in two folds
//! is an error), `folds.csv` (one row per fold, one column per metric) and
//! `metrics.json`: each metric that every fold reports, as the folds' mean
//! under its own name and their sample standard deviation (ddof = 1, as
//! `numpy.std(..., ddof=1)` and pandas' `std`) as `NAME_std`, plus `folds`,
//! their number. `podium exp` shows `cv.accuracy` beside the rest.

use std::path::PathBuf;

use super::{Op, OpContext, OpError, ParamError};
use crate::data::DataError;
use crate::data::metrics_json::{self, Metrics};
use crate::data::table::{Table, fmt_f64};

pub struct Cv;

crate::params! {
    /// The parameters of `cv`.
    pub struct Args {
        /// the folds' out-of-fold prediction tables (`train`'s `oof.csv`), fold order
        oofs: Vec<PathBuf>,
        /// the folds' `metrics.json` (`train`'s validation metrics), in the same order; empty:
        /// only the out-of-fold table
        metrics: Vec<PathBuf> = [],
    }
}

impl Op for Cv {
    type Params = Args;
    const NAME: &'static str = "cv";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str =
        "Cross-validation: the folds' out-of-fold tables as one, fold metrics with mean and std.";
    const INPUTS: &'static [&'static str] = &["oofs"];

    fn outputs(&self, _: &Args) -> Vec<String> {
        ["oof.csv", "folds.csv", "metrics.json"]
            .map(String::from)
            .to_vec()
    }

    fn validate(&self, a: &Args) -> Vec<ParamError> {
        let mut errs = Vec::new();
        if a.oofs.is_empty() {
            errs.push(ParamError::new(
                "oofs",
                "name at least one out-of-fold table",
            ));
        }
        if !a.metrics.is_empty() && a.metrics.len() != a.oofs.len() {
            errs.push(ParamError::new(
                "metrics",
                format!(
                    "one metrics file per fold: {} for {} out-of-fold tables",
                    a.metrics.len(),
                    a.oofs.len()
                ),
            ));
        }
        errs
    }

    fn run(&self, a: Args, cx: &mut OpContext) -> Result<(), OpError> {
        let tables = a
            .oofs
            .iter()
            .map(|p| Table::read(p))
            .collect::<Result<Vec<_>, _>>()?;
        let oof = super::ensemble::concat(&tables)?;
        cx.log(format_args!(
            "out-of-fold: {} rows from {} folds",
            oof.len(),
            tables.len()
        ));
        oof.write(&cx.out_dir.join("oof.csv"))?;
        let folds = a
            .metrics
            .iter()
            .map(|p| metrics_json::read(p))
            .collect::<Result<Vec<_>, _>>()?;
        let (table, summary) = summarise(&folds, &a.metrics)?;
        for (k, v) in &summary {
            cx.log(format_args!("{k} = {v:.6}"));
        }
        table.write(&cx.out_dir.join("folds.csv"))?;
        metrics_json::write(&cx.out_dir.join("metrics.json"), &summary)?;
        Ok(())
    }
}

/// The folds' metrics as a table and as mean / `_std` per metric; every
/// fold must report the same metrics (else an error naming the file).
fn summarise(folds: &[Metrics], paths: &[PathBuf]) -> Result<(Table, Metrics), DataError> {
    let names: Vec<&String> = match folds.first() {
        Some(f) => f
            .keys()
            .filter(|k| folds.iter().all(|g| g.contains_key(*k)))
            .collect(),
        None => Vec::new(),
    };
    for (f, p) in folds.iter().zip(paths) {
        if let Some(k) = f.keys().find(|k| !names.contains(k)) {
            return Err(DataError::new(
                p,
                format!(
                    "reports `{k}`, which {} does not: every fold must report the same metrics",
                    paths[0].display()
                ),
            ));
        }
    }
    let cols: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let mut table = Table::new(&cols);
    table.columns[0] = "fold".into();
    for (i, f) in folds.iter().enumerate() {
        table.ids.push(i.to_string());
        table
            .rows
            .push(names.iter().map(|k| fmt_f64(f[*k])).collect());
        table.lines.push(i + 2);
    }
    let mut summary = Metrics::new();
    let n = folds.len();
    for k in names {
        let vs: Vec<f64> = folds.iter().map(|f| f[k]).collect();
        let (mean, std) = crate::metrics::mean_and_sample_std(&vs);
        summary.insert(k.clone(), mean);
        summary.insert(format!("{k}_std"), std);
    }
    if n > 0 {
        summary.insert("folds".into(), n as f64);
    }
    Ok((table, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_metrics_give_mean_and_sample_std_as_numpy() {
        let folds: Vec<Metrics> = [0.81, 0.93, 0.87]
            .iter()
            .map(|&a| Metrics::from([("accuracy".into(), a), ("loss".into(), 1.0 - a)]))
            .collect();
        let paths: Vec<PathBuf> = (0..3)
            .map(|i| PathBuf::from(format!("f{i}.json")))
            .collect();
        let (table, s) = summarise(&folds, &paths).unwrap();
        // numpy: a = [0.81, 0.93, 0.87]; a.mean(), a.std(ddof=1)
        assert!((s["accuracy"] - 0.87).abs() < 1e-12);
        assert!((s["accuracy_std"] - 0.06).abs() < 1e-12);
        assert!((s["loss_std"] - 0.06).abs() < 1e-12);
        assert_eq!(s["folds"], 3.0);
        assert_eq!(table.columns, ["fold", "accuracy", "loss"]);
        assert_eq!(table.ids, ["0", "1", "2"]);
    }

    #[test]
    fn a_fold_with_other_metrics_is_an_error_naming_its_file() {
        let folds = vec![
            Metrics::from([("accuracy".into(), 0.5)]),
            Metrics::from([("accuracy".into(), 0.5), ("qwk".into(), 0.1)]),
        ];
        let paths = vec![PathBuf::from("a.json"), PathBuf::from("b.json")];
        let e = summarise(&folds, &paths).unwrap_err();
        assert_eq!(e.path, PathBuf::from("b.json"));
        assert!(e.message.contains("`qwk`"), "{}", e.message);
    }
}
