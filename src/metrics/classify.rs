//! Classification and regression metrics, equal to scikit-learn's:
//! `accuracy_score`, `cohen_kappa_score(weights="quadratic")`,
//! `f1_score(average="macro")`, `log_loss`, `roc_auc_score`; and Dice of
//! run-length-encoded masks.

use std::collections::{BTreeSet, HashMap};

/// A label as a table cell holds it: compared as a number when every cell
/// of the column is one (so `1` and `1.0` agree), else as text.
#[derive(Clone, Debug, PartialEq, PartialOrd)]
pub enum Label {
    Num(f64),
    Text(String),
}

/// Parses a column of labels: numbers when all are numbers.
pub fn labels(cells: &[&str]) -> Vec<Label> {
    let nums: Option<Vec<f64>> = cells
        .iter()
        .map(|c| c.trim().parse::<f64>().ok().filter(|x| x.is_finite()))
        .collect();
    match nums {
        Some(v) => v.into_iter().map(Label::Num).collect(),
        None => cells
            .iter()
            .map(|c| Label::Text(c.trim().to_string()))
            .collect(),
    }
}

/// Sorted distinct labels of both columns, as scikit-learn's `unique_labels`.
fn classes(a: &[Label], b: &[Label]) -> Vec<Label> {
    let mut all: Vec<Label> = a.iter().chain(b).cloned().collect();
    all.sort_by(|x, y| x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal));
    all.dedup();
    all
}

fn index_of(classes: &[Label], l: &Label) -> usize {
    classes.iter().position(|c| c == l).expect("a known class")
}

pub fn accuracy(truth: &[Label], pred: &[Label]) -> f64 {
    let hits = truth.iter().zip(pred).filter(|(a, b)| a == b).count();
    hits as f64 / truth.len() as f64
}

/// Subset accuracy of label sets (every label right).
pub fn accuracy_sets(truth: &[BTreeSet<String>], pred: &[BTreeSet<String>]) -> f64 {
    let hits = truth.iter().zip(pred).filter(|(a, b)| a == b).count();
    hits as f64 / truth.len() as f64
}

/// Cohen's kappa with quadratic weights over the classes' positions in the
/// sorted union of labels.
pub fn qwk(truth: &[Label], pred: &[Label]) -> f64 {
    let cls = classes(truth, pred);
    let n = cls.len();
    let mut o = vec![vec![0f64; n]; n];
    for (a, b) in truth.iter().zip(pred) {
        o[index_of(&cls, a)][index_of(&cls, b)] += 1.0;
    }
    let rows: Vec<f64> = o.iter().map(|r| r.iter().sum()).collect();
    let cols: Vec<f64> = (0..n).map(|j| o.iter().map(|r| r[j]).sum()).collect();
    let total: f64 = rows.iter().sum();
    let (mut num, mut den) = (0.0, 0.0);
    for i in 0..n {
        for j in 0..n {
            let w = ((i as f64) - (j as f64)).powi(2);
            num += w * o[i][j];
            den += w * rows[i] * cols[j] / total;
        }
    }
    if den == 0.0 {
        f64::NAN
    } else {
        1.0 - num / den
    }
}

fn f1(tp: f64, fp: f64, fn_: f64) -> f64 {
    let d = 2.0 * tp + fp + fn_;
    if d == 0.0 { 0.0 } else { 2.0 * tp / d }
}

/// Macro F1 over the sorted union of labels (a class never predicted nor
/// present scores 0, as scikit-learn's zero_division default).
pub fn f1_macro(truth: &[Label], pred: &[Label]) -> f64 {
    let cls = classes(truth, pred);
    let mut s = 0.0;
    for c in &cls {
        let (mut tp, mut fp, mut fn_) = (0.0, 0.0, 0.0);
        for (a, b) in truth.iter().zip(pred) {
            match (a == c, b == c) {
                (true, true) => tp += 1.0,
                (false, true) => fp += 1.0,
                (true, false) => fn_ += 1.0,
                _ => {}
            }
        }
        s += f1(tp, fp, fn_);
    }
    s / cls.len() as f64
}

/// Macro F1 of label sets over every label seen in either.
pub fn f1_macro_sets(truth: &[BTreeSet<String>], pred: &[BTreeSet<String>]) -> f64 {
    let all: BTreeSet<&String> = truth.iter().chain(pred).flatten().collect();
    let mut counts: HashMap<&String, (f64, f64, f64)> =
        all.iter().map(|l| (*l, (0.0, 0.0, 0.0))).collect();
    for (a, b) in truth.iter().zip(pred) {
        for l in a {
            let e = counts.get_mut(l).expect("seen");
            if b.contains(l) {
                e.0 += 1.0
            } else {
                e.2 += 1.0
            }
        }
        for l in b.iter().filter(|l| !a.contains(*l)) {
            counts.get_mut(l).expect("seen").1 += 1.0;
        }
    }
    if counts.is_empty() {
        return 0.0;
    }
    counts
        .values()
        .map(|&(tp, fp, fn_)| f1(tp, fp, fn_))
        .sum::<f64>()
        / counts.len() as f64
}

/// Binary log loss; the positive class is the larger of the two truth
/// labels, probabilities clipped to [eps, 1 - eps] as scikit-learn does.
pub fn log_loss(truth: &[bool], p: &[f64]) -> f64 {
    let eps = f64::EPSILON;
    let s: f64 = truth
        .iter()
        .zip(p)
        .map(|(&y, &p)| {
            let p = p.clamp(eps, 1.0 - eps);
            // scikit-learn normalizes [1 - p, p] to sum 1 after clipping.
            let (q0, q1) = (1.0 - p, p);
            let z = q0 + q1;
            if y { -(q1 / z).ln() } else { -(q0 / z).ln() }
        })
        .sum();
    s / truth.len() as f64
}

/// Ranks from 1 in ascending order, tied values sharing the mean of their
/// ranks (scipy's `rankdata`, method "average").
pub fn average_ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut rank = vec![0f64; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &x in &idx[i..=j] {
            rank[x] = r;
        }
        i = j + 1;
    }
    rank
}

/// Area under the ROC curve: the probability a positive outscores a
/// negative, ties counting half (the trapezoidal ROC area).
pub fn auc(truth: &[bool], score: &[f64]) -> f64 {
    let rank = average_ranks(score);
    let pos = truth.iter().filter(|&&t| t).count() as f64;
    let neg = truth.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return f64::NAN;
    }
    let sum: f64 = truth
        .iter()
        .zip(&rank)
        .filter(|(t, _)| **t)
        .map(|(_, r)| r)
        .sum();
    (sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// Pixel indices of a run-length-encoded mask: `start length start length
/// ...` (1-based starts, as Kaggle's masks).
pub fn rle_pixels(rle: &str) -> Result<Vec<(u64, u64)>, String> {
    let nums: Vec<u64> = rle
        .split_whitespace()
        .map(|t| {
            t.parse::<u64>()
                .map_err(|_| format!("`{t}` in a run-length mask is not a whole number"))
        })
        .collect::<Result<_, _>>()?;
    if !nums.len().is_multiple_of(2) {
        return Err("a run-length mask has an odd count of numbers".into());
    }
    let mut runs: Vec<(u64, u64)> = nums.chunks(2).map(|c| (c[0], c[0] + c[1])).collect();
    runs.sort_unstable();
    Ok(runs)
}

fn run_len(runs: &[(u64, u64)]) -> u64 {
    runs.iter().map(|(a, b)| b - a).sum()
}

fn overlap(a: &[(u64, u64)], b: &[(u64, u64)]) -> u64 {
    let (mut i, mut j, mut s) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        let lo = a[i].0.max(b[j].0);
        let hi = a[i].1.min(b[j].1);
        if hi > lo {
            s += hi - lo;
        }
        if a[i].1 < b[j].1 { i += 1 } else { j += 1 }
    }
    s
}

/// Dice of two run-length masks; both empty counts as 1.
pub fn dice(a: &[(u64, u64)], b: &[(u64, u64)]) -> f64 {
    let (la, lb) = (run_len(a), run_len(b));
    if la + lb == 0 {
        return 1.0;
    }
    2.0 * overlap(a, b) as f64 / (la + lb) as f64
}

/// IoU of two run-length masks; both empty counts as 1.
pub fn iou_runs(a: &[(u64, u64)], b: &[(u64, u64)]) -> f64 {
    let (la, lb) = (run_len(a), run_len(b));
    let both = overlap(a, b);
    if la + lb == 0 {
        return 1.0;
    }
    both as f64 / (la + lb - both) as f64
}

/// IoU of two `[x, y, w, h]` boxes.
pub fn box_iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let w = ((a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0])).max(0.0);
    let h = ((a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = a[2] * a[3] + b[2] * b[3] - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(v: &[f64]) -> Vec<Label> {
        v.iter().map(|&x| Label::Num(x)).collect()
    }

    #[test]
    fn kappa_is_one_for_agreement_and_below_zero_for_reversal() {
        assert_eq!(qwk(&n(&[0., 1., 2.]), &n(&[0., 1., 2.])), 1.0);
        assert!(qwk(&n(&[0., 1., 2.]), &n(&[2., 1., 0.])) < 0.0);
    }

    #[test]
    fn auc_counts_ties_half() {
        assert_eq!(auc(&[false, true], &[0.5, 0.5]), 0.5);
        assert_eq!(auc(&[false, true, true], &[0.1, 0.2, 0.9]), 1.0);
    }

    #[test]
    fn dice_of_runs() {
        let a = rle_pixels("1 4 10 2").unwrap();
        let b = rle_pixels("3 4").unwrap();
        assert_eq!(dice(&a, &b), 2.0 * 2.0 / 10.0);
        assert_eq!(dice(&[], &[]), 1.0);
        assert_eq!(iou_runs(&a, &b), 2.0 / 8.0);
        assert_eq!(iou_runs(&[], &[]), 1.0);
        assert!(rle_pixels("1 2 3").is_err());
    }
}
