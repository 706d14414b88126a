//! `wbf`: weighted boxes fusion (Solovyev et al.), box for box and score for
//! score the same as ensemble-boxes 1.0.9 `weighted_boxes_fusion`.
//!
//! ```toml
//! [stages.fuse]
//! op = "wbf"
//! boxes = "${stages.predict[*].boxes}"   # one COCO results file per model
//! iou_thr = 0.6
//! conf_type = "box_and_model_avg"
//! ```
//!
//! Boxes are fused per image and per category. Like ensemble-boxes, corners
//! are clipped to [0, 1], swapped when reversed, zero-area boxes dropped, and
//! a fused box's coordinates are accumulated in 32-bit floats.

use std::path::PathBuf;

use super::{Op, OpContext, OpError, ParamError};
use crate::data::boxes::{NBox, map_images, write_dets};

pub struct Wbf;

crate::choice! {
    /// How a fused box's score is made.
    pub enum ConfType {
        Avg = "avg",
        Max = "max",
        BoxAndModelAvg = "box_and_model_avg",
        AbsentModelAwareAvg = "absent_model_aware_avg",
    }
}

crate::params! {
    /// The parameters of `wbf`.
    pub struct Args {
        #[doc = box_help!(boxes)]
        boxes: Vec<PathBuf>,
        #[doc = box_help!(images)]
        images: Option<PathBuf> = "",
        /// a box joins a cluster when its IoU with the cluster's box is above this
        iou_thr: f64 = 0.55,
        /// boxes scoring below this are dropped first
        skip_box_thr: f64 = 0.0,
        /// a fused box's score: `avg`, the members' mean weighted score times min(models,
        /// members) over the sum of weights; `max`, the best weighted score over the largest
        /// weight; `box_and_model_avg` and `absent_model_aware_avg` as ensemble-boxes defines
        /// them
        conf_type: ConfType = "avg",
        /// one non-negative weight per model, not all zero (scores are multiplied by it);
        /// empty means all 1
        weights: Vec<f64> = [],
    }
}

impl Op for Wbf {
    type Params = Args;
    const NAME: &'static str = "wbf";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str =
        "Weighted boxes fusion of several models' detections (as ensemble-boxes).";
    const INPUTS: &'static [&'static str] = &["boxes"];

    fn outputs(&self, _: &Args) -> Vec<String> {
        vec!["boxes.json".into()]
    }

    fn validate(&self, a: &Args) -> Vec<ParamError> {
        check_weights(&a.weights, a.boxes.len())
    }

    fn run(&self, a: Args, cx: &mut OpContext) -> Result<(), OpError> {
        let p = WbfParams {
            iou_thr: a.iou_thr,
            skip_box_thr: a.skip_box_thr,
            conf_type: a.conf_type,
            weights: weights_or_ones(&a.weights, a.boxes.len()),
        };
        let dets = cx
            .pool()?
            .install(|| map_images(&a.boxes, a.images.as_deref(), |models| fuse(models, &p)))?;
        cx.log(format_args!(
            "{} fused boxes from {} models",
            dets.len(),
            a.boxes.len()
        ));
        write_dets(&cx.out_dir.join("boxes.json"), &dets)?;
        Ok(())
    }
}

/// `weights`, when given: one per model of `boxes`.
pub fn check_weights(weights: &[f64], models: usize) -> Vec<ParamError> {
    super::check_weights(weights, models, "boxes", "models")
}

pub fn weights_or_ones(w: &[f64], n: usize) -> Vec<f64> {
    if w.is_empty() {
        vec![1.0; n]
    } else {
        w.to_vec()
    }
}

#[derive(Clone, Debug)]
pub struct WbfParams {
    pub iou_thr: f64,
    pub skip_box_thr: f64,
    pub conf_type: ConfType,
    /// One per model.
    pub weights: Vec<f64>,
}

/// A box inside the fusion: `[label, score, weight, model, x1, y1, x2, y2]`
/// as ensemble-boxes keeps it.
#[derive(Clone, Copy, Debug)]
struct Row {
    score: f64,
    weight: f64,
    model: usize,
    xyxy: [f64; 4],
}

/// Clips to [0, 1] and orders the corners; `None` for a zero-area box.
pub fn clean(xyxy: [f64; 4]) -> Option<[f64; 4]> {
    let [mut x1, mut y1, mut x2, mut y2] = xyxy;
    if x2 < x1 {
        std::mem::swap(&mut x1, &mut x2);
    }
    if y2 < y1 {
        std::mem::swap(&mut y1, &mut y2);
    }
    let c = |v: f64| v.clamp(0.0, 1.0);
    let b = [c(x1), c(y1), c(x2), c(y2)];
    ((b[2] - b[0]) * (b[3] - b[1]) != 0.0).then_some(b)
}

/// Indices sorted by descending score the way `argsort()[::-1]` orders
/// them: ties in reverse order of position.
pub fn order_desc(scores: impl ExactSizeIterator<Item = f64>) -> Vec<usize> {
    let s: Vec<f64> = scores.collect();
    let mut idx: Vec<usize> = (0..s.len()).collect();
    idx.sort_by(|&a, &b| s[a].total_cmp(&s[b]));
    idx.reverse();
    idx
}

pub use crate::data::boxes::iou_xyxy as iou;

/// Fuses one image's boxes, `models[m]` being model m's boxes. The result is
/// sorted by descending score.
pub fn fuse(models: &[Vec<NBox>], p: &WbfParams) -> Vec<NBox> {
    // Prefilter: by label, in order of first appearance.
    let mut labels: Vec<i64> = Vec::new();
    let mut by_label: Vec<Vec<Row>> = Vec::new();
    for (t, boxes) in models.iter().enumerate() {
        let w = p.weights[t];
        for b in boxes {
            if b.score < p.skip_box_thr {
                continue;
            }
            let Some(xyxy) = clean(b.xyxy) else { continue };
            let k = match labels.iter().position(|&l| l == b.label) {
                Some(k) => k,
                None => {
                    labels.push(b.label);
                    by_label.push(Vec::new());
                    labels.len() - 1
                }
            };
            by_label[k].push(Row {
                score: b.score * w,
                weight: w,
                model: t,
                xyxy,
            });
        }
    }
    let weight_sum: f64 = p.weights.iter().sum();
    let weight_max = p.weights.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut all: Vec<NBox> = Vec::new();
    for (label, rows) in labels.into_iter().zip(by_label) {
        let order = order_desc(rows.iter().map(|r| r.score));
        let mut fused: Vec<Row> = Vec::new();
        let mut members: Vec<Vec<Row>> = Vec::new();
        for &j in &order {
            let r = rows[j];
            let mut best = -1.0;
            let mut best_k = None;
            for (k, f) in fused.iter().enumerate() {
                let v = iou(&f.xyxy, &r.xyxy);
                if v > best {
                    best = v;
                    best_k = Some(k);
                }
            }
            match best_k {
                Some(k) if best > p.iou_thr => {
                    members[k].push(r);
                    fused[k] = weighted(&members[k], p.conf_type);
                }
                _ => {
                    fused.push(r);
                    members.push(vec![r]);
                }
            }
        }
        for (f, m) in fused.iter_mut().zip(&members) {
            let n = m.len() as f64;
            f.score = match p.conf_type {
                ConfType::BoxAndModelAvg => {
                    // Rescaled by the weights of the models present.
                    let mut models: Vec<usize> = m.iter().map(|r| r.model).collect();
                    models.sort_unstable();
                    models.dedup();
                    let present: f64 = models.iter().map(|&t| p.weights[t]).sum();
                    f.score * n / f.weight * present / weight_sum
                }
                ConfType::AbsentModelAwareAvg => {
                    let absent: f64 = (0..p.weights.len())
                        .filter(|t| !m.iter().any(|r| r.model == *t))
                        .map(|t| p.weights[t])
                        .sum();
                    f.score * n / (f.weight + absent)
                }
                ConfType::Max => f.score / weight_max,
                ConfType::Avg => f.score * (p.weights.len() as f64).min(n) / weight_sum,
            };
            all.push(NBox {
                label,
                score: f.score,
                xyxy: f.xyxy,
            });
        }
    }
    order_desc(all.iter().map(|b| b.score))
        .into_iter()
        .map(|i| all[i])
        .collect()
}

/// The fused box of a cluster, computed as ensemble-boxes computes it
/// (coordinates and score rounded through 32-bit floats).
fn weighted(m: &[Row], conf_type: ConfType) -> Row {
    let mut xyxy = [0f32; 4];
    let mut conf = 0.0f64;
    let mut max = f64::NEG_INFINITY;
    let mut w = 0.0f64;
    for r in m {
        for (acc, v) in xyxy.iter_mut().zip(r.xyxy) {
            *acc = (*acc as f64 + r.score * v) as f32;
        }
        conf += r.score;
        max = max.max(r.score);
        w += r.weight;
    }
    let score = match conf_type {
        ConfType::Max => max as f32,
        _ => (conf / m.len() as f64) as f32,
    };
    Row {
        score: score as f64,
        weight: w as f32 as f64,
        model: usize::MAX,
        xyxy: xyxy.map(|v| (v as f64 / conf) as f32 as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(label: i64, score: f64, xyxy: [f64; 4]) -> NBox {
        NBox { label, score, xyxy }
    }

    fn params(conf: ConfType, n: usize) -> WbfParams {
        WbfParams {
            iou_thr: 0.55,
            skip_box_thr: 0.0,
            conf_type: conf,
            weights: vec![1.0; n],
        }
    }

    #[test]
    fn two_overlapping_boxes_fuse_to_their_score_weighted_mean() {
        let models = vec![
            vec![b(0, 0.9, [0.1, 0.1, 0.5, 0.5])],
            vec![b(0, 0.3, [0.12, 0.1, 0.52, 0.5])],
        ];
        let out = fuse(&models, &params(ConfType::Avg, 2));
        assert_eq!(out.len(), 1);
        let x1 = (0.9 * 0.1 + 0.3 * 0.12) / 1.2;
        assert!((out[0].xyxy[0] - x1).abs() < 1e-6);
        assert!((out[0].score - 0.6).abs() < 1e-6);
    }

    #[test]
    fn a_box_seen_by_one_model_of_two_keeps_half_its_score_under_avg() {
        let models = vec![vec![b(3, 0.8, [0.1, 0.1, 0.2, 0.2])], vec![]];
        let out = fuse(&models, &params(ConfType::Avg, 2));
        assert_eq!(out, [b(3, 0.4, [0.1, 0.1, 0.2, 0.2])]);
    }

    #[test]
    fn categories_never_fuse_and_zero_area_boxes_drop() {
        let models = vec![vec![
            b(0, 0.9, [0.1, 0.1, 0.5, 0.5]),
            b(1, 0.8, [0.1, 0.1, 0.5, 0.5]),
            b(1, 0.7, [0.3, 0.3, 0.3, 0.9]),
        ]];
        let out = fuse(&models, &params(ConfType::Max, 1));
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].label, out[1].label), (0, 1));
    }

    #[test]
    fn out_of_range_corners_are_clipped_and_swapped() {
        assert_eq!(clean([0.5, -0.1, 0.2, 1.3]), Some([0.2, 0.0, 0.5, 1.0]));
        assert_eq!(clean([1.2, 0.1, 1.5, 0.4]), None);
    }
}
