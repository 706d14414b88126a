//! `nms`: non-maximum suppression over several models' boxes, the same as
//! ensemble-boxes 1.0.9 `nms`. The suppression code is shared with
//! `soft_nms`.
//!
//! ```toml
//! [stages.nms]
//! op = "nms"
//! boxes = ["${stages.yolo.boxes}", "${stages.effdet.boxes}"]
//! iou_thr = 0.5
//! weights = [2, 1]
//! ```

use std::path::{Path, PathBuf};

use super::wbf::{check_weights, iou, order_desc};
use super::{Op, OpContext, OpError, ParamError};
use crate::data::boxes::{NBox, map_images, write_dets};

pub struct Nms;

crate::params! {
    /// The parameters of `nms`.
    pub struct Args {
        #[doc = box_help!(boxes)]
        boxes: Vec<PathBuf>,
        #[doc = box_help!(images)]
        images: Option<PathBuf> = "",
        /// overlap above which the lower box is dropped
        iou_thr: f64 = 0.5,
        /// one weight per model: each model's scores are multiplied by weight / sum of
        /// weights; empty leaves scores as they are
        weights: Vec<f64> = [],
    }
}

impl Op for Nms {
    type Params = Args;
    const NAME: &'static str = "nms";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str =
        "Non-maximum suppression over several models' detections (as ensemble-boxes).";
    const INPUTS: &'static [&'static str] = &["boxes"];

    fn outputs(&self, _: &Args) -> Vec<String> {
        vec!["boxes.json".into()]
    }

    fn validate(&self, a: &Args) -> Vec<ParamError> {
        check_weights(&a.weights, a.boxes.len())
    }

    fn run(&self, a: Args, cx: &mut OpContext) -> Result<(), OpError> {
        let p = SuppressParams {
            method: Method::Hard,
            iou_thr: a.iou_thr,
            // Soft-NMS only: plain NMS does not read them.
            sigma: 0.0,
            thresh: 0.0,
            weights: a.weights,
            decayed_scores: false,
        };
        run_suppression(cx, &a.boxes, a.images.as_deref(), &p, "nms")
    }
}

/// Shared by `nms` and `soft_nms`.
pub(crate) fn run_suppression(
    cx: &mut OpContext,
    inputs: &[PathBuf],
    images: Option<&Path>,
    p: &SuppressParams,
    what: &str,
) -> Result<(), OpError> {
    let dets = cx
        .pool()?
        .install(|| map_images(inputs, images, |models| suppress(models, p)))?;
    cx.log(format_args!(
        "{what}: kept {} boxes from {} models",
        dets.len(),
        inputs.len()
    ));
    write_dets(&cx.out_dir.join("boxes.json"), &dets)?;
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Soft-NMS, linear decay.
    Linear,
    /// Soft-NMS, Gaussian decay.
    Gaussian,
    /// Plain NMS.
    Hard,
}

#[derive(Clone, Debug)]
pub struct SuppressParams {
    pub method: Method,
    pub iou_thr: f64,
    pub sigma: f64,
    /// Soft-NMS keeps boxes whose decayed score is above this.
    pub thresh: f64,
    /// Empty: no weighting.
    pub weights: Vec<f64>,
    /// Soft-NMS: write the decayed scores instead of the original ones
    /// (ensemble-boxes writes the original ones).
    pub decayed_scores: bool,
}

/// ensemble-boxes' `nms_method` for one image: labels in ascending order,
/// each label's kept boxes in the order the method keeps them.
pub fn suppress(models: &[Vec<NBox>], p: &SuppressParams) -> Vec<NBox> {
    let wsum: f64 = p.weights.iter().sum();
    let mut all: Vec<NBox> = Vec::new();
    for (t, boxes) in models.iter().enumerate() {
        for b in boxes {
            let c = b.xyxy.map(|v| v.clamp(0.0, 1.0));
            let xyxy = [
                c[0].min(c[2]),
                c[1].min(c[3]),
                c[0].max(c[2]),
                c[1].max(c[3]),
            ];
            if (xyxy[2] - xyxy[0]) * (xyxy[3] - xyxy[1]) == 0.0 {
                continue;
            }
            all.push(NBox {
                label: b.label,
                score: if p.weights.is_empty() {
                    b.score
                } else {
                    b.score * p.weights[t] / wsum
                },
                xyxy,
            });
        }
    }
    let mut labels: Vec<i64> = all.iter().map(|b| b.label).collect();
    labels.sort_unstable();
    labels.dedup();
    let mut out = Vec::new();
    for l in labels {
        let boxes: Vec<NBox> = all.iter().filter(|b| b.label == l).copied().collect();
        match p.method {
            Method::Hard => {
                let mut order = order_desc(boxes.iter().map(|b| b.score));
                while let Some(&i) = order.first() {
                    out.push(boxes[i]);
                    order = order[1..]
                        .iter()
                        .copied()
                        .filter(|&j| iou(&boxes[i].xyxy, &boxes[j].xyxy) <= p.iou_thr)
                        .collect();
                }
            }
            _ => {
                for (i, s) in soft(&boxes, p) {
                    let mut b = boxes[i];
                    if p.decayed_scores {
                        b.score = s;
                    }
                    out.push(b);
                }
            }
        }
    }
    out
}

/// `cpu_soft_nms_float`: the kept boxes' indices with their decayed scores.
fn soft(boxes: &[NBox], p: &SuppressParams) -> Vec<(usize, f64)> {
    let n = boxes.len();
    let mut dets: Vec<([f64; 4], usize)> =
        boxes.iter().enumerate().map(|(i, b)| (b.xyxy, i)).collect();
    let mut scores: Vec<f64> = boxes.iter().map(|b| b.score).collect();
    let mut areas: Vec<f64> = boxes
        .iter()
        .map(|b| (b.xyxy[2] - b.xyxy[0]) * (b.xyxy[3] - b.xyxy[1]))
        .collect();
    for i in 0..n {
        let pos = i + 1;
        if i != n - 1 {
            // First position of the maximum, as np.argmax.
            let mut maxpos = pos;
            for j in pos..n {
                if scores[j] > scores[maxpos] {
                    maxpos = j;
                }
            }
            if scores[i] < scores[maxpos] {
                dets.swap(i, maxpos);
                scores.swap(i, maxpos);
                areas.swap(i, maxpos);
            }
        }
        let a = dets[i].0;
        for j in pos..n {
            let b = dets[j].0;
            let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
            let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
            let inter = w * h;
            let ovr = inter / (areas[i] + areas[j] - inter);
            let weight = match p.method {
                Method::Linear => {
                    if ovr > p.iou_thr {
                        1.0 - ovr
                    } else {
                        1.0
                    }
                }
                Method::Gaussian => (-(ovr * ovr) / p.sigma).exp(),
                Method::Hard => {
                    if ovr > p.iou_thr {
                        0.0
                    } else {
                        1.0
                    }
                }
            };
            scores[j] *= weight;
        }
    }
    (0..n)
        .filter(|&i| scores[i] > p.thresh)
        .map(|i| (dets[i].1, scores[i]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(score: f64, xyxy: [f64; 4]) -> NBox {
        NBox {
            label: 0,
            score,
            xyxy,
        }
    }

    fn params(method: Method) -> SuppressParams {
        SuppressParams {
            method,
            iou_thr: 0.5,
            sigma: 0.5,
            thresh: 0.001,
            weights: vec![],
            decayed_scores: false,
        }
    }

    #[test]
    fn nms_drops_the_lower_of_two_overlapping_boxes() {
        let models = vec![
            vec![b(0.6, [0.1, 0.1, 0.5, 0.5])],
            vec![b(0.9, [0.11, 0.1, 0.5, 0.5]), b(0.5, [0.6, 0.6, 0.9, 0.9])],
        ];
        let out = suppress(&models, &params(Method::Hard));
        assert_eq!(out.iter().map(|b| b.score).collect::<Vec<_>>(), [0.9, 0.5]);
    }

    #[test]
    fn soft_nms_keeps_overlaps_and_decays_them() {
        let models = vec![vec![
            b(0.6, [0.1, 0.1, 0.5, 0.5]),
            b(0.9, [0.11, 0.1, 0.5, 0.5]),
        ]];
        let mut p = params(Method::Gaussian);
        assert_eq!(suppress(&models, &p).len(), 2);
        p.decayed_scores = true;
        let out = suppress(&models, &p);
        assert_eq!(out[0].score, 0.9);
        assert!(out[1].score < 0.6 * 0.2, "{}", out[1].score);
    }
}
