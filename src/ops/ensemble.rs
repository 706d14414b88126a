//! `ensemble`: combines prediction tables with the same ids and columns
//! (TTA variants, seeds, folds, models alike) into one.
//!
//! ```toml
//! [stages.blend]
//! op = "ensemble"
//! preds = "${stages.predict[*].pred}"
//! method = "rank"
//! weights = [2, 1, 1]
//! ```

use std::path::PathBuf;

use super::{Op, OpContext, OpError, ParamError};
use crate::data::DataError;
use crate::data::table::{Table, fmt_f64};
use crate::metrics::classify::average_ranks;

pub struct Ensemble;

crate::choice! {
    /// How the tables' values are combined.
    pub enum Method {
        Mean = "mean",
        Max = "max",
        Geometric = "geometric",
        Rank = "rank",
        Concat = "concat",
    }
}

crate::params! {
    /// The parameters of `ensemble`.
    pub struct Args {
        /// the prediction tables
        preds: Vec<PathBuf>,
        /// how values are combined, above
        method: Method = "mean",
        /// one non-negative weight per table; empty means all equal
        weights: Vec<f64> = [],
    }
}

impl Op for Ensemble {
    type Params = Args;
    const NAME: &'static str = "ensemble";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str =
        "Combine prediction tables: mean, weighted mean, max, geometric mean, rank average.";
    const INPUTS: &'static [&'static str] = &["preds"];

    fn outputs(&self, _: &Args) -> Vec<String> {
        vec!["pred.csv".into()]
    }

    fn validate(&self, a: &Args) -> Vec<ParamError> {
        super::check_weights(&a.weights, a.preds.len(), "preds", "tables")
    }

    fn run(&self, a: Args, cx: &mut OpContext) -> Result<(), OpError> {
        let paths = a.preds;
        let tables = paths
            .iter()
            .map(|p| Table::read(p))
            .collect::<Result<Vec<_>, _>>()?;
        let method = a.method;
        if method == Method::Concat {
            let t = concat(&tables)?;
            cx.log(format_args!(
                "concat of {} tables, {} rows",
                tables.len(),
                t.len()
            ));
            t.write(&cx.out_dir.join("pred.csv"))?;
            return Ok(());
        }
        let aligned = align(&tables)?;
        let w = if a.weights.is_empty() {
            vec![1.0; tables.len()]
        } else {
            a.weights
        };
        if method == Method::Geometric
            && let Some((t, i)) = aligned
                .iter()
                .enumerate()
                .find_map(|(t, m)| m.iter().position(|&x| x <= 0.0).map(|i| (t, i)))
        {
            let cols = tables[0].value_columns().len();
            let (row, col) = (i / cols, i % cols);
            let id = &tables[0].ids[row];
            let tab = &tables[t];
            let r = tab.ids.iter().position(|x| x == id).unwrap_or(0);
            let c = tab.col(&tables[0].value_columns()[col])?;
            return Err(tab
                .cell_error(
                    r,
                    c,
                    "is not positive: the geometric mean needs positive values",
                )
                .into());
        }
        let out = combine(&aligned, &w, method, tables[0].value_columns().len());
        let first = &tables[0];
        let mut t = Table {
            path: Default::default(),
            columns: first.columns.clone(),
            ids: Vec::new(),
            rows: Vec::new(),
            lines: Vec::new(),
        };
        let cols = first.value_columns().len();
        for (r, id) in first.ids.iter().enumerate() {
            t.push(
                id.clone(),
                out[r * cols..(r + 1) * cols]
                    .iter()
                    .map(|&x| fmt_f64(x))
                    .collect(),
            );
        }
        cx.log(format_args!(
            "{method} of {} tables, {} rows",
            tables.len(),
            t.len()
        ));
        t.write(&cx.out_dir.join("pred.csv"))?;
        Ok(())
    }
}

/// The tables' rows one after another, columns in the first table's order;
/// the same column set in each, and every id in one table only.
pub fn concat(tables: &[Table]) -> Result<Table, DataError> {
    let first = &tables[0];
    let mut out = Table {
        path: Default::default(),
        columns: first.columns.clone(),
        ids: Vec::new(),
        rows: Vec::new(),
        lines: Vec::new(),
    };
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    for (k, t) in tables.iter().enumerate() {
        let mut cols = Vec::with_capacity(first.value_columns().len());
        for c in first.value_columns() {
            cols.push(t.col(c)?);
        }
        if t.value_columns().len() != cols.len() {
            return Err(DataError::at(
                &t.path,
                1,
                format!(
                    "has columns {}; {} has {}",
                    t.value_columns().join(", "),
                    first.path.display(),
                    first.value_columns().join(", ")
                ),
            ));
        }
        for (r, id) in t.ids.iter().enumerate() {
            if let Some(j) = seen.insert(id.clone(), k) {
                return Err(DataError::at(
                    &t.path,
                    t.lines[r],
                    format!(
                        "id `{id}` is also in {}; concat needs each id in one table",
                        tables[j].path.display()
                    ),
                ));
            }
            out.push(
                id.clone(),
                cols.iter().map(|&c| t.rows[r][c].clone()).collect(),
            );
        }
    }
    Ok(out)
}

/// Each table's values as a row-major matrix in the first table's row and
/// column order; ids and columns must be the same sets.
pub fn align(tables: &[Table]) -> Result<Vec<Vec<f64>>, DataError> {
    let first = &tables[0];
    first.index()?;
    let cols = first.value_columns();
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        let index = t.index()?;
        let mut order = Vec::with_capacity(cols.len());
        for c in cols {
            order.push(t.col(c).map_err(|_| {
                DataError::at(
                    &t.path,
                    1,
                    format!("no column `{c}`, which {} has", first.path.display()),
                )
            })?);
        }
        if t.value_columns().len() != cols.len() {
            return Err(DataError::at(
                &t.path,
                1,
                format!(
                    "columns {} differ from {}'s {}",
                    t.value_columns().join(", "),
                    first.path.display(),
                    cols.join(", ")
                ),
            ));
        }
        if t.len() != first.len() {
            return Err(DataError::new(
                &t.path,
                format!(
                    "{} rows, {} has {}",
                    t.len(),
                    first.path.display(),
                    first.len()
                ),
            ));
        }
        let mut m = Vec::with_capacity(first.len() * cols.len());
        for id in &first.ids {
            let Some(&r) = index.get(id.as_str()) else {
                return Err(DataError::new(
                    &t.path,
                    format!("no row for id `{id}`, which {} has", first.path.display()),
                ));
            };
            for &c in &order {
                m.push(t.float(r, c)?);
            }
        }
        out.push(m);
    }
    Ok(out)
}

/// Combines aligned matrices (`cols` columns each).
pub fn combine(m: &[Vec<f64>], w: &[f64], method: Method, cols: usize) -> Vec<f64> {
    let len = m[0].len();
    let wsum: f64 = w.iter().sum();
    match method {
        Method::Max => (0..len)
            .map(|i| m.iter().map(|t| t[i]).fold(f64::NEG_INFINITY, f64::max))
            .collect(),
        Method::Geometric => (0..len)
            .map(|i| (m.iter().zip(w).map(|(t, w)| w * t[i].ln()).sum::<f64>() / wsum).exp())
            .collect(),
        Method::Rank => {
            let ranked: Vec<Vec<f64>> = m.iter().map(|t| ranks(t, cols)).collect();
            weighted_mean(&ranked, w, wsum, len)
        }
        Method::Mean | Method::Concat => weighted_mean(m, w, wsum, len),
    }
}

fn weighted_mean(m: &[Vec<f64>], w: &[f64], wsum: f64, len: usize) -> Vec<f64> {
    (0..len)
        .map(|i| m.iter().zip(w).map(|(t, w)| w * t[i]).sum::<f64>() / wsum)
        .collect()
}

/// Each column's average ranks (ties share), divided by the row count.
pub fn ranks(m: &[f64], cols: usize) -> Vec<f64> {
    let rows = m.len() / cols.max(1);
    let mut out = vec![0.0; m.len()];
    for c in 0..cols {
        let column: Vec<f64> = (0..rows).map(|r| m[r * cols + c]).collect();
        for (r, rank) in average_ranks(&column).into_iter().enumerate() {
            out[r * cols + c] = rank / rows as f64;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tab(path: &str, cols: &[&str], rows: &[(&str, &[&str])]) -> Table {
        let mut t = Table::new(cols);
        t.path = path.into();
        for (id, r) in rows {
            t.push(*id, r.iter().map(|s| s.to_string()).collect());
        }
        t.lines = (2..2 + rows.len()).collect();
        t
    }

    #[test]
    fn concat_stacks_out_of_fold_tables_and_refuses_a_repeated_id() {
        let a = tab("a.csv", &["x", "y"], &[("1", &["0.1", "0.9"])]);
        let b = tab(
            "b.csv",
            &["y", "x"],
            &[("2", &["0.3", "0.7"]), ("3", &["0.5", "0.5"])],
        );
        let t = concat(&[a.clone(), b]).unwrap();
        assert_eq!(t.ids, ["1", "2", "3"]);
        assert_eq!(
            t.rows[1],
            ["0.7", "0.3"],
            "columns in the first table's order"
        );
        let c = tab("c.csv", &["x", "y"], &[("1", &["0", "1"])]);
        let e = concat(&[a, c]).unwrap_err().to_string();
        assert!(e.starts_with("c.csv:2: id `1` is also in a.csv"), "{e}");
    }

    fn matrices() -> impl Strategy<Value = (Vec<Vec<f64>>, Vec<f64>, usize)> {
        (1usize..4, 1usize..20, 1usize..5).prop_flat_map(|(cols, rows, n)| {
            (
                prop::collection::vec(prop::collection::vec(0.001f64..1.0, rows * cols), n),
                prop::collection::vec(0.1f64..5.0, n),
                Just(cols),
            )
        })
    }

    proptest! {
        #[test]
        fn every_method_stays_within_the_inputs((m, w, cols) in matrices()) {
            for method in [Method::Mean, Method::Max, Method::Geometric] {
                let out = combine(&m, &w, method, cols);
                for (i, v) in out.iter().enumerate() {
                    let lo = m.iter().map(|t| t[i]).fold(f64::INFINITY, f64::min);
                    let hi = m.iter().map(|t| t[i]).fold(f64::NEG_INFINITY, f64::max);
                    prop_assert!(*v >= lo - 1e-12 && *v <= hi + 1e-12, "{method}: {v} not in [{lo}, {hi}]");
                }
            }
        }

        #[test]
        fn copies_of_one_table_give_it_back((m, w, cols) in matrices()) {
            let copies = vec![m[0].clone(); m.len()];
            for method in [Method::Mean, Method::Max, Method::Geometric] {
                for (a, b) in combine(&copies, &w, method, cols).iter().zip(&m[0]) {
                    prop_assert!((a - b).abs() < 1e-12);
                }
            }
            // Rank keeps each column's order.
            let r = combine(&copies, &w, Method::Rank, cols);
            let rows = m[0].len() / cols;
            for c in 0..cols {
                for i in 0..rows {
                    for j in 0..rows {
                        if m[0][i * cols + c] < m[0][j * cols + c] {
                            prop_assert!(r[i * cols + c] < r[j * cols + c]);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn weights_tilt_the_mean() {
        let m = vec![vec![0.0, 1.0], vec![1.0, 1.0]];
        assert_eq!(combine(&m, &[3.0, 1.0], Method::Mean, 1), [0.25, 1.0]);
        assert_eq!(combine(&m, &[1.0, 1.0], Method::Max, 2), [1.0, 1.0]);
        assert_eq!(ranks(&[0.3, 0.1, 0.3, 0.9], 1), [0.625, 0.25, 0.625, 1.0]);
    }
}
