//! `postprocess`: prediction scores to labels: argmax, per-class thresholds
//! (fixed, or fitted on out-of-fold predictions to maximise F1), regression
//! values to grades (cut points fixed, or fitted to maximise quadratic
//! weighted kappa), top-k; then optionally at least one label per row and a
//! nearest-neighbour override (HPA: a test image whose embedding is close to
//! a training image's takes that image's labels).
//!
//! ```toml
//! [stages.post]
//! op = "postprocess"
//! pred = "${stages.blend.pred}"
//! method = "threshold"
//! fit_pred = "${stages.oof.pred}"      # out-of-fold scores...
//! fit_truth = "${inputs.train_csv}"    # ...and their labels
//! at_least_one = true
//! ```

use std::collections::BTreeSet;

use std::path::PathBuf;

use super::{Op, OpContext, OpError, ParamError};
use crate::data::table::Table;
use crate::data::{DataError, write_atomic};

pub struct Postprocess;

crate::choice! {
    /// How scores become labels.
    pub enum Method {
        Argmax = "argmax",
        Threshold = "threshold",
        Grades = "grades",
        Topk = "topk",
    }
}

crate::params! {
    /// The parameters of `postprocess`.
    pub struct Args {
        /// scores: one column per class, or one value column for `grades`
        pred: PathBuf,
        /// above
        method: Method = "argmax",
        /// fixed thresholds (threshold) or cut points (grades)
        thresholds: Vec<f64> = [],
        /// out-of-fold scores to fit on
        fit_pred: Option<PathBuf> = "",
        /// their labels (one value column)
        fit_truth: Option<PathBuf> = "",
        /// number of grades
        grades: i64 = 5,
        /// labels per row for `topk`
        k: i64 = 1,
        /// a row with no label gets its best class
        at_least_one: bool = false,
        /// name of the output column
        column: String = "label",
        /// embeddings of the `pred` rows
        embeddings: Option<PathBuf> = "",
        /// embeddings of the training rows
        train_embeddings: Option<PathBuf> = "",
        /// the training rows' labels
        train_labels: Option<PathBuf> = "",
        /// largest cosine distance that overrides
        nn_distance: f64 = 0.1,
    }
}

impl Op for Postprocess {
    type Params = Args;
    const NAME: &'static str = "postprocess";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str = "Scores to labels: argmax, fitted F1 thresholds, kappa-fitted grades, top-k, at least one, nearest-neighbour override.";
    const INPUTS: &'static [&'static str] = &["pred"];

    fn outputs(&self, _: &Args) -> Vec<String> {
        vec!["labels.csv".into(), "fitted.json".into()]
    }

    fn validate(&self, a: &Args) -> Vec<ParamError> {
        let mut errs = Vec::new();
        if a.fit_pred.is_some() != a.fit_truth.is_some() {
            errs.push(ParamError::new(
                "fit_pred",
                "fitting needs both `fit_pred` and `fit_truth`",
            ));
        }
        let nn = [&a.embeddings, &a.train_embeddings, &a.train_labels];
        if nn.iter().any(|n| n.is_some()) && !nn.iter().all(|n| n.is_some()) {
            errs.push(ParamError::new(
                "embeddings",
                "the nearest-neighbour override needs `embeddings`, `train_embeddings` and `train_labels`",
            ));
        }
        if a.k < 1 {
            errs.push(ParamError::new("k", "k must be at least 1"));
        }
        if a.grades < 2 {
            errs.push(ParamError::new("grades", "grades must be at least 2"));
        }
        errs
    }

    fn run(&self, a: Args, cx: &mut OpContext) -> Result<(), OpError> {
        let pred = Table::read(&a.pred)?;
        pred.index()?;
        let scores = pred.all_floats()?;
        let classes = pred.value_columns().to_vec();
        let nc = classes.len();
        let method = a.method;
        let fixed = a.thresholds;
        let fit = match (&a.fit_pred, &a.fit_truth) {
            (Some(p), Some(t)) => Some((Table::read(p)?, Table::read(t)?)),
            _ => None,
        };
        let mut fitted = serde_json::Map::new();
        let labels: Vec<Vec<String>> = match method {
            Method::Grades => {
                if nc != 1 {
                    return Err(DataError::at(
                        &pred.path,
                        1,
                        format!("grades needs one value column, found {nc}"),
                    )
                    .into());
                }
                let k = a.grades as usize;
                let cuts = match &fit {
                    Some((fp, ft)) => {
                        let (v, truth) = fit_rows(fp, ft, &classes)?;
                        let truth: Vec<usize> = truth
                            .iter()
                            .enumerate()
                            .map(|(i, t)| grade_of(t, k).ok_or_else(|| ft_error(ft, i, k)))
                            .collect::<Result<_, _>>()?;
                        let cuts = fit_grades(&v, &truth, k);
                        fitted.insert("cut_points".into(), serde_json::json!(cuts));
                        cuts
                    }
                    None if fixed.is_empty() => (1..k).map(|i| i as f64 - 0.5).collect(),
                    None => {
                        if fixed.len() != k - 1 {
                            return Err(OpError::param(
                                "thresholds",
                                format!(
                                    "{} cut points for {k} grades; give {}",
                                    fixed.len(),
                                    k - 1
                                ),
                            ));
                        }
                        fixed.clone()
                    }
                };
                scores
                    .iter()
                    .map(|&v| vec![grade(v, &cuts).to_string()])
                    .collect()
            }
            Method::Threshold => {
                let thr: Vec<f64> = match &fit {
                    Some((fp, ft)) => {
                        let (s, truth) = fit_rows(fp, ft, &classes)?;
                        let t = fit_f1_thresholds(&s, &truth, &classes);
                        fitted.insert("thresholds".into(), serde_json::json!(t));
                        t
                    }
                    None if fixed.is_empty() => vec![0.5; nc],
                    None if fixed.len() == 1 => vec![fixed[0]; nc],
                    None if fixed.len() == nc => fixed.clone(),
                    None => {
                        return Err(OpError::param(
                            "thresholds",
                            format!("{} values for {nc} classes", fixed.len()),
                        ));
                    }
                };
                let at_least_one = a.at_least_one;
                scores
                    .chunks(nc)
                    .map(|row| {
                        let mut l: Vec<String> = (0..nc)
                            .filter(|&c| row[c] >= thr[c])
                            .map(|c| classes[c].clone())
                            .collect();
                        if l.is_empty() && at_least_one {
                            l.push(classes[argmax(row)].clone());
                        }
                        l
                    })
                    .collect()
            }
            Method::Topk => {
                let k = (a.k as usize).min(nc);
                scores
                    .chunks(nc)
                    .map(|row| {
                        let mut idx: Vec<usize> = (0..nc).collect();
                        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                        idx[..k].iter().map(|&c| classes[c].clone()).collect()
                    })
                    .collect()
            }
            Method::Argmax => scores
                .chunks(nc)
                .map(|row| vec![classes[argmax(row)].clone()])
                .collect(),
        };
        let mut labels = labels;
        if let (Some(e), Some(te), Some(tl)) = (&a.embeddings, &a.train_embeddings, &a.train_labels)
        {
            let n = nn_override(&pred, &mut labels, (e, te, tl), a.nn_distance)?;
            fitted.insert("nn_overrides".into(), serde_json::json!(n));
            cx.log(format_args!("nearest-neighbour override: {n} rows"));
        }
        let mut out = Table::new(&[a.column.as_str()]);
        for (id, l) in pred.ids.iter().zip(labels) {
            out.push(id.clone(), vec![l.join(" ")]);
        }
        out.write(&cx.out_dir.join("labels.csv"))?;
        let mut text =
            serde_json::to_vec_pretty(&serde_json::Value::Object(fitted)).expect("serializes");
        text.push(b'\n');
        write_atomic(&cx.out_dir.join("fitted.json"), &text)?;
        cx.log(format_args!("{method}: {} rows", out.len()));
        Ok(())
    }
}

fn ft_error(ft: &Table, i: usize, k: usize) -> DataError {
    DataError::new(
        &ft.path,
        format!("a label of row {} is not a grade 0..{}", i + 1, k - 1),
    )
}

/// The first position of the largest value.
pub(crate) fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

fn grade(v: f64, cuts: &[f64]) -> usize {
    cuts.iter().filter(|&&c| v >= c).count()
}

fn grade_of(label: &BTreeSet<String>, k: usize) -> Option<usize> {
    let l = label.iter().next()?;
    let g: f64 = l.parse().ok()?;
    (g >= 0.0 && g.fract() == 0.0 && (g as usize) < k).then_some(g as usize)
}

/// The fitting rows: scores in `fit_pred` (row-major, the `classes` columns)
/// joined by id with the label sets of `fit_truth`'s one value column.
fn fit_rows(
    fp: &Table,
    ft: &Table,
    classes: &[String],
) -> Result<(Vec<f64>, Vec<BTreeSet<String>>), DataError> {
    let cols = classes
        .iter()
        .map(|c| fp.col(c))
        .collect::<Result<Vec<_>, _>>()?;
    let scores = fp.matrix(&cols)?;
    if ft.value_columns().len() != 1 {
        return Err(DataError::at(
            &ft.path,
            1,
            "the fitting labels need exactly one value column",
        ));
    }
    let ti = ft.index()?;
    fp.index()?;
    let mut s = Vec::with_capacity(scores.len());
    let mut truth = Vec::with_capacity(fp.len());
    for (r, id) in fp.ids.iter().enumerate() {
        let Some(&i) = ti.get(id.as_str()) else {
            return Err(DataError::new(
                &ft.path,
                format!("no label for id `{id}` of {}", fp.path.display()),
            ));
        };
        s.extend_from_slice(&scores[r * cols.len()..(r + 1) * cols.len()]);
        truth.push(
            ft.rows[i][0]
                .split_whitespace()
                .map(str::to_string)
                .collect(),
        );
    }
    Ok((s, truth))
}

/// Per class, the threshold maximising that class's F1 on the fitting
/// rows: the midpoint below the best cut in the sorted scores (0.5 for a
/// class never present).
pub fn fit_f1_thresholds(
    scores: &[f64],
    truth: &[BTreeSet<String>],
    classes: &[String],
) -> Vec<f64> {
    let nc = classes.len();
    (0..nc)
        .map(|c| {
            let mut v: Vec<(f64, bool)> = truth
                .iter()
                .enumerate()
                .map(|(r, t)| (scores[r * nc + c], t.contains(&classes[c])))
                .collect();
            let pos = v.iter().filter(|x| x.1).count() as f64;
            if pos == 0.0 {
                return 0.5;
            }
            v.sort_by(|a, b| b.0.total_cmp(&a.0));
            let (mut tp, mut fp) = (0.0, 0.0);
            let (mut best_f1, mut best_thr) = (-1.0, 0.5);
            let mut i = 0;
            while i < v.len() {
                // Take every row tied at this score together.
                let s = v[i].0;
                while i < v.len() && v[i].0 == s {
                    if v[i].1 {
                        tp += 1.0
                    } else {
                        fp += 1.0
                    }
                    i += 1;
                }
                let f1 = 2.0 * tp / (2.0 * tp + fp + (pos - tp));
                if f1 > best_f1 {
                    best_f1 = f1;
                    best_thr = if i < v.len() { (s + v[i].0) / 2.0 } else { s };
                }
            }
            best_thr
        })
        .collect()
}

/// Cut points maximising quadratic weighted kappa of `grade(value)` against
/// `truth`, by coordinate ascent from 0.5, 1.5, ...: each cut in turn moved
/// to the best place between its neighbours (midpoints of the sorted
/// values), until no move helps.
pub fn fit_grades(values: &[f64], truth: &[usize], k: usize) -> Vec<f64> {
    let mut cuts: Vec<f64> = (1..k).map(|i| i as f64 - 0.5).collect();
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let sorted: Vec<f64> = order.iter().map(|&i| values[i]).collect();
    let kappa = |cuts: &[f64]| grades_kappa(truth, values, cuts, k);
    let mut best = kappa(&cuts);
    for _sweep in 0..20 {
        let mut moved = false;
        for i in 0..cuts.len() {
            let lo = if i == 0 {
                f64::NEG_INFINITY
            } else {
                cuts[i - 1]
            };
            let hi = if i + 1 == cuts.len() {
                f64::INFINITY
            } else {
                cuts[i + 1]
            };
            // Candidate cuts: midpoints between neighbouring distinct values within (lo, hi).
            let start = sorted.partition_point(|&v| v <= lo);
            let end = sorted.partition_point(|&v| v < hi);
            let mut cands: Vec<f64> = Vec::new();
            for j in start..end {
                let below = if j == 0 {
                    sorted[0] - 1.0
                } else {
                    sorted[j - 1]
                };
                let c = (below + sorted[j]) / 2.0;
                if c > lo && c < hi && cands.last() != Some(&c) {
                    cands.push(c);
                }
            }
            if end > start {
                cands.push(
                    ((sorted[end - 1]
                        + if end < sorted.len() {
                            sorted[end]
                        } else {
                            sorted[end - 1] + 1.0
                        })
                        / 2.0)
                        .min(hi),
                );
            }
            for c in cands {
                let mut trial = cuts.clone();
                trial[i] = c;
                let kp = kappa(&trial);
                if kp > best + 1e-12 {
                    best = kp;
                    cuts = trial;
                    moved = true;
                }
            }
        }
        if !moved {
            break;
        }
    }
    cuts
}

/// Quadratic weighted kappa of `grade(value)` against `truth` on the fixed
/// grades 0..k (the same value as scikit-learn's when every grade occurs).
fn grades_kappa(truth: &[usize], values: &[f64], cuts: &[f64], k: usize) -> f64 {
    let mut o = vec![0f64; k * k];
    for (&t, &v) in truth.iter().zip(values) {
        o[t * k + grade(v, cuts).min(k - 1)] += 1.0;
    }
    let rows: Vec<f64> = (0..k).map(|i| o[i * k..(i + 1) * k].iter().sum()).collect();
    let cols: Vec<f64> = (0..k).map(|j| (0..k).map(|i| o[i * k + j]).sum()).collect();
    let n: f64 = rows.iter().sum();
    let (mut num, mut den) = (0.0, 0.0);
    for i in 0..k {
        for j in 0..k {
            let w = (i as f64 - j as f64).powi(2);
            num += w * o[i * k + j];
            den += w * rows[i] * cols[j] / n;
        }
    }
    if den == 0.0 { 0.0 } else { 1.0 - num / den }
}

/// Replaces the labels of rows whose embedding's nearest training embedding
/// (cosine distance) is within `max_dist`; returns how many.
fn nn_override(
    pred: &Table,
    labels: &mut [Vec<String>],
    (emb, train_emb, train_labels): (&std::path::Path, &std::path::Path, &std::path::Path),
    max_dist: f64,
) -> Result<usize, DataError> {
    let e = Table::read(emb)?;
    let te = Table::read(train_emb)?;
    let tl = Table::read(train_labels)?;
    if e.value_columns().len() != te.value_columns().len() {
        return Err(DataError::at(
            train_emb,
            1,
            format!(
                "{} dimensions, {} has {}",
                te.value_columns().len(),
                emb.display(),
                e.value_columns().len()
            ),
        ));
    }
    let d = e.value_columns().len();
    let normed = |t: &Table| -> Result<Vec<f64>, DataError> {
        let mut m = t.all_floats()?;
        for row in m.chunks_mut(d) {
            let n = row.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
            row.iter_mut().for_each(|x| *x /= n);
        }
        Ok(m)
    };
    let (em, tm) = (normed(&e)?, normed(&te)?);
    let ei = e.index()?;
    let tli = tl.index()?;
    let mut n = 0;
    for (r, id) in pred.ids.iter().enumerate() {
        let Some(&row) = ei.get(id.as_str()) else {
            return Err(DataError::new(emb, format!("no embedding for id `{id}`")));
        };
        let q = &em[row * d..(row + 1) * d];
        let mut best = (f64::INFINITY, 0);
        for (j, t) in tm.chunks(d).enumerate() {
            let dist = 1.0 - q.iter().zip(t).map(|(a, b)| a * b).sum::<f64>();
            if dist < best.0 {
                best = (dist, j);
            }
        }
        if best.0 <= max_dist {
            let tid = &te.ids[best.1];
            let Some(&li) = tli.get(tid.as_str()) else {
                return Err(DataError::new(
                    train_labels,
                    format!("no label for id `{tid}`"),
                ));
            };
            labels[r] = tl.rows[li][0]
                .split_whitespace()
                .map(str::to_string)
                .collect();
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::classify::{Label, qwk};

    #[test]
    fn f1_thresholds_separate_a_separable_class() {
        let classes = vec!["a".to_string()];
        let scores = [0.9, 0.8, 0.3, 0.2];
        let truth: Vec<BTreeSet<String>> = [true, true, false, false]
            .iter()
            .map(|&t| {
                if t {
                    BTreeSet::from(["a".to_string()])
                } else {
                    BTreeSet::new()
                }
            })
            .collect();
        assert_eq!(fit_f1_thresholds(&scores, &truth, &classes), [0.55]);
    }

    #[test]
    fn fitted_grades_beat_the_default_cuts_on_a_shifted_regressor() {
        // A regressor that reads every grade 0.7 too high.
        let truth: Vec<usize> = (0..200).map(|i| i % 5).collect();
        let values: Vec<f64> = truth
            .iter()
            .enumerate()
            .map(|(i, &g)| g as f64 + 0.7 + ((i * 37 % 11) as f64 - 5.0) * 0.03)
            .collect();
        let t: Vec<Label> = truth.iter().map(|&g| Label::Num(g as f64)).collect();
        let score = |cuts: &[f64]| {
            qwk(
                &t,
                &values
                    .iter()
                    .map(|&v| Label::Num(grade(v, cuts) as f64))
                    .collect::<Vec<_>>(),
            )
        };
        let default: Vec<f64> = (1..5).map(|i| i as f64 - 0.5).collect();
        let fitted = fit_grades(&values, &truth, 5);
        assert!(score(&fitted) > score(&default), "{fitted:?}");
        assert_eq!(score(&fitted), 1.0);
    }
}
