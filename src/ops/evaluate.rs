//! `evaluate`: scores a prediction against the truth and writes
//! `metrics.json`. Values equal scikit-learn's and pycocotools' (see
//! [`crate::metrics`]). `dice` and `iou` compare run-length masks in two
//! tables, or two directories of class-index mask PNGs (what `predict`
//! writes in `masks`, `synth` in `test_masks`): per image and class, 1
//! where both are empty, averaged.
//!
//! ```toml
//! [stages.score]
//! op = "evaluate"
//! truth = "${inputs.train_csv}"
//! pred = "${stages.oof.table}"
//! metric = ["qwk", "accuracy"]
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{Op, OpContext, OpError, ParamError, Strs};
use crate::data::DataError;
use crate::data::boxes::{read_coco, read_dets};
use crate::data::metrics_json::{Metrics, write};
use crate::data::table::Table;
use crate::metrics::{NAMES, classify as m, coco};

pub struct Evaluate;

crate::params! {
    /// The parameters of `evaluate`.
    pub struct Args {
        /// the truth: a table, a COCO ground-truth file for the coco metrics, or a directory of
        /// class-index masks for dice and iou
        truth: PathBuf,
        /// the prediction: a table with the same ids, a boxes file for the coco metrics, or a
        /// directory of class-index masks with the same names
        pred: PathBuf,
        /// one metric or a list (coco metrics and table metrics in separate stages)
        metric: Strs = "accuracy",
        /// the value column compared; empty: the one both tables have
        column: String = "",
        /// coco_map and coco_segm_map: the IoU thresholds averaged over (HuBMAP 2023: [0.6]);
        /// empty: COCO's .50:.05:.95. The *_map50 metrics stay at .50
        iou_thrs: Vec<f64> = [],
    }
}

impl Op for Evaluate {
    type Params = Args;
    const NAME: &'static str = "evaluate";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str =
        "Score a prediction against the truth (as scikit-learn / pycocotools) into metrics.json.";
    const INPUTS: &'static [&'static str] = &["truth", "pred"];

    fn outputs(&self, _: &Args) -> Vec<String> {
        vec!["metrics.json".into()]
    }

    fn validate(&self, a: &Args) -> Vec<ParamError> {
        let names = &a.metric.0;
        let mut errs = Vec::new();
        if names.is_empty() {
            errs.push(ParamError::new("metric", "name at least one metric"));
        }
        for n in names {
            if !NAMES.contains(&n.as_str()) {
                let hint = crate::params::suggest(n, NAMES.iter().copied())
                    .map(|c| format!(" (did you mean `{c}`?)"))
                    .unwrap_or_default();
                errs.push(ParamError::new(
                    "metric",
                    format!("unknown metric `{n}`{hint}; metrics: {}", NAMES.join(", ")),
                ));
            }
        }
        if let Some(t) = a.iou_thrs.iter().find(|t| !(**t > 0.0 && **t < 1.0)) {
            errs.push(ParamError::new(
                "iou_thrs",
                format!("an IoU threshold lies between 0 and 1, not {t}"),
            ));
        }
        let is_coco = |n: &String| n.starts_with("coco_");
        if names.iter().any(is_coco) && !names.iter().all(is_coco) {
            errs.push(ParamError::new(
                "metric",
                "coco metrics read COCO files, the others tables: evaluate them in separate stages",
            ));
        }
        errs
    }

    fn run(&self, a: Args, cx: &mut OpContext) -> Result<(), OpError> {
        let (truth, pred, names, column) = (a.truth, a.pred, a.metric.0, a.column);
        let mut out = Metrics::new();
        if truth.is_dir() || pred.is_dir() {
            let bad = names
                .iter()
                .find(|n| !["dice", "iou"].contains(&n.as_str()));
            if let Some(n) = bad {
                return Err(OpError::param(
                    "metric",
                    format!("mask directories are scored by dice and iou, not `{n}`"),
                ));
            }
            let (dice, iou, scored, total) = mask_dirs(&truth, &pred)?;
            cx.log(format_args!(
                "{scored} predicted masks scored, of the truth's {total}"
            ));
            for n in &names {
                out.insert(n.clone(), if n == "dice" { dice } else { iou });
            }
        } else if names.iter().all(|n| n.starts_with("coco_")) {
            let gt = read_coco(&truth)?;
            let dets = read_dets(&pred)?;
            let known: BTreeSet<_> = gt.images.iter().map(|i| &i.id).collect();
            if let Some(d) = dets.iter().find(|d| !known.contains(&d.image_id)) {
                return Err(DataError::new(
                    &pred,
                    format!(
                        "image {} is not in the ground truth {}",
                        d.image_id,
                        truth.display()
                    ),
                )
                .into());
            }
            let mut thrs = if a.iou_thrs.is_empty() {
                coco::coco_thresholds()
            } else {
                a.iou_thrs.clone()
            };
            // The *_map50 metrics read .50 from the same pass.
            let averaged: Vec<usize> = (0..thrs.len()).collect();
            let at50 = match thrs.iter().position(|&t| t == 0.5) {
                Some(i) => i,
                None => {
                    thrs.push(0.5);
                    thrs.len() - 1
                }
            };
            // One evaluation per IoU type the metrics ask for.
            let mut done: Vec<(coco::IouType, coco::Ap)> = Vec::new();
            for n in &names {
                let kind = if n.starts_with("coco_segm_") {
                    coco::IouType::Segm
                } else {
                    coco::IouType::Bbox
                };
                if !done.iter().any(|(k, _)| *k == kind) {
                    let ap = coco::coco_ap(&gt, &dets, kind, &thrs).map_err(|e| {
                        // Which file lacks the masks: results or ground truth.
                        let file = if e.starts_with("result") {
                            &pred
                        } else {
                            &truth
                        };
                        DataError::new(file, e)
                    })?;
                    done.push((kind, ap));
                }
                let ap = &done
                    .iter()
                    .find(|(k, _)| *k == kind)
                    .expect("evaluated above")
                    .1;
                let v = if n.ends_with("map50") {
                    ap.mean_over(&[at50])
                } else {
                    ap.mean_over(&averaged)
                };
                out.insert(n.clone(), v);
            }
        } else {
            let (t, p) = (Table::read(&truth)?, Table::read(&pred)?);
            let (tc, pc) = shared_column(&t, &p, &column)?;
            let rows = join(&t, &p)?;
            let tcells: Vec<&str> = rows.iter().map(|&(i, _)| t.rows[i][tc].as_str()).collect();
            let pcells: Vec<&str> = rows.iter().map(|&(_, j)| p.rows[j][pc].as_str()).collect();
            for n in &names {
                let v = score(n, &tcells, &pcells, (&t, tc), (&p, pc), &rows)?;
                out.insert(n.clone(), v);
            }
        }
        for (k, v) in &out {
            cx.log(format_args!("{k} = {v:.6}"));
        }
        write(&cx.out_dir.join("metrics.json"), &out)?;
        Ok(())
    }
}

/// The value column compared: `column`, or the one both tables share.
fn shared_column(t: &Table, p: &Table, column: &str) -> Result<(usize, usize), DataError> {
    if !column.is_empty() {
        return Ok((t.col(column)?, p.col(column)?));
    }
    let shared: Vec<&String> = t
        .value_columns()
        .iter()
        .filter(|c| p.value_columns().contains(c))
        .collect();
    match shared.as_slice() {
        [c] => Ok((t.col(c)?, p.col(c)?)),
        [] => Err(DataError::at(
            &p.path,
            1,
            format!(
                "no value column in common with {} (columns {}); name one with `column`",
                t.path.display(),
                t.value_columns().join(", ")
            ),
        )),
        _ => Err(DataError::at(
            &p.path,
            1,
            format!(
                "several value columns in common with {} ({}); name one with `column`",
                t.path.display(),
                shared
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Truth rows in order, each with its prediction row; every id on both sides.
fn join(t: &Table, p: &Table) -> Result<Vec<(usize, usize)>, DataError> {
    let ti = t.index()?;
    let pi = p.index()?;
    let mut rows = Vec::with_capacity(t.len());
    for (i, id) in t.ids.iter().enumerate() {
        match pi.get(id.as_str()) {
            Some(&j) => rows.push((i, j)),
            None => {
                return Err(DataError::new(
                    &p.path,
                    format!(
                        "no prediction for id `{id}` (line {} of {})",
                        t.lines[i],
                        t.path.display()
                    ),
                ));
            }
        }
    }
    if p.len() > t.len()
        && let Some(j) = (0..p.len()).find(|&j| !ti.contains_key(p.ids[j].as_str()))
    {
        return Err(DataError::at(
            &p.path,
            p.lines[j],
            format!("id `{}` is not in the truth {}", p.ids[j], t.path.display()),
        ));
    }
    Ok(rows)
}

fn sets(cells: &[&str]) -> Vec<BTreeSet<String>> {
    cells
        .iter()
        .map(|c| c.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn score(
    name: &str,
    tcells: &[&str],
    pcells: &[&str],
    (t, tc): (&Table, usize),
    (p, pc): (&Table, usize),
    rows: &[(usize, usize)],
) -> Result<f64, DataError> {
    let multi = tcells.iter().chain(pcells).any(|c| c.trim().contains(' '));
    let floats = |tab: &Table, col: usize, pick: &dyn Fn(&(usize, usize)) -> usize| {
        rows.iter()
            .map(|r| tab.float(pick(r), col))
            .collect::<Result<Vec<f64>, _>>()
    };
    Ok(match name {
        "accuracy" if multi => m::accuracy_sets(&sets(tcells), &sets(pcells)),
        "accuracy" => m::accuracy(&m::labels(tcells), &m::labels(pcells)),
        "f1_macro" if multi => m::f1_macro_sets(&sets(tcells), &sets(pcells)),
        "f1_macro" => m::f1_macro(&m::labels(tcells), &m::labels(pcells)),
        "qwk" => {
            if multi {
                return Err(DataError::new(
                    &t.path,
                    "qwk needs one label per row, not label lists",
                ));
            }
            m::qwk(&m::labels(tcells), &m::labels(pcells))
        }
        "log_loss" | "auc" => {
            let truth = binary(t, tc, tcells)?;
            let score = floats(p, pc, &|r| r.1)?;
            if name == "auc" {
                m::auc(&truth, &score)
            } else {
                if let Some(j) = score.iter().position(|s| !(0.0..=1.0).contains(s)) {
                    return Err(p.cell_error(rows[j].1, pc, "is not a probability in [0, 1]"));
                }
                m::log_loss(&truth, &score)
            }
        }
        "box_iou" => {
            let parse = |tab: &Table, col: usize, row: usize| -> Result<[f64; 4], DataError> {
                let v: Vec<f64> = tab.rows[row][col]
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                v.try_into()
                    .map_err(|_| tab.cell_error(row, col, "is not a box `x y w h`"))
            };
            let mut s = 0.0;
            for &(i, j) in rows {
                s += m::box_iou(parse(t, tc, i)?, parse(p, pc, j)?);
            }
            s / rows.len() as f64
        }
        "dice" | "iou" => {
            let mut s = 0.0;
            for &(i, j) in rows {
                let a = m::rle_pixels(&t.rows[i][tc])
                    .map_err(|e| DataError::at(&t.path, t.lines[i], e))?;
                let b = m::rle_pixels(&p.rows[j][pc])
                    .map_err(|e| DataError::at(&p.path, p.lines[j], e))?;
                s += if name == "dice" {
                    m::dice(&a, &b)
                } else {
                    m::iou_runs(&a, &b)
                };
            }
            s / rows.len() as f64
        }
        other => {
            return Err(DataError::new(
                Path::new(""),
                format!("unknown metric {other}"),
            ));
        }
    })
}

/// Dice and IoU of two directories of class-index masks, matched by name,
/// over the predicted images (a fold's out-of-fold masks score against the
/// whole training set's): per image and class (1 to the largest index
/// either holds), averaged. Also says how many of the truth's images were
/// scored.
fn mask_dirs(truth: &Path, pred: &Path) -> Result<(f64, f64, usize, usize), DataError> {
    use crate::data::images;
    use crate::metrics::segment::{Overlap, mean_dice_iou};
    let files = images::list(pred)?;
    if files.is_empty() {
        return Err(DataError::new(pred, "no mask images in this directory"));
    }
    let truth_index = crate::nn::dataset::image_index(truth)?;
    let mut pairs = Vec::with_capacity(files.len());
    let mut top = 0u8;
    for rel in &files {
        let pp = pred.join(rel);
        let p = images::open(&pp)?.into_luma8();
        let key = rel.with_extension("");
        let key = key.to_string_lossy();
        let tp = truth_index.get(key.as_ref()).ok_or_else(|| {
            DataError::new(
                &pp,
                format!("has no true mask `{key}` in {}", truth.display()),
            )
        })?;
        let t = images::open(tp)?.into_luma8();
        if p.dimensions() != t.dimensions() {
            return Err(DataError::new(
                &pp,
                format!(
                    "the mask is {}×{}, the truth's {}×{}",
                    p.width(),
                    p.height(),
                    t.width(),
                    t.height()
                ),
            ));
        }
        top = top.max(t.iter().chain(p.iter()).copied().max().unwrap_or(0));
        pairs.push((t, p));
    }
    let total = images::list(truth)?.len();
    let mut counts = Vec::new();
    for (t, p) in &pairs {
        for c in 1..=top.max(1) {
            counts.push(Overlap::of(
                t.iter().zip(p.iter()).map(|(&a, &b)| (b == c, a == c)),
            ));
        }
    }
    let (dice, iou) = mean_dice_iou(&counts);
    Ok((dice, iou, pairs.len(), total))
}

/// The truth as positive / negative: two classes, the larger positive.
fn binary(t: &Table, tc: usize, cells: &[&str]) -> Result<Vec<bool>, DataError> {
    let labels = m::labels(cells);
    let mut classes = labels.clone();
    classes.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    classes.dedup();
    if classes.len() != 2 {
        return Err(DataError::new(
            &t.path,
            format!(
                "log_loss and auc need two classes in column `{}`, found {}",
                t.value_columns()[tc],
                classes.len()
            ),
        ));
    }
    Ok(labels.iter().map(|l| *l == classes[1]).collect())
}
