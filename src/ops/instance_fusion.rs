//! `instance_fusion`: merges the instance masks of several models (folds,
//! architectures, seeds: each `predict`'s `detections` of task instance,
//! or any COCO results with run-length `segmentation`) object by object.
//!
//! ```toml
//! [stages.fuse]
//! op = "instance_fusion"
//! results = "${stages.predict[*].detections}"
//! iou_thr = 0.5
//! method = "vote"
//! ```
//!
//! Per image and category, detections are taken by descending weighted
//! score; each joins the cluster whose first (best) mask it overlaps most,
//! when by a mask IoU above `iou_thr`, else starts one. `vote` (mask voting,
//! as weighted boxes fusion is for boxes): a cluster's mask holds the pixels
//! that members carrying at least `vote` of the cluster's model weight
//! cover, its score the members' mean weighted score × min(members, models)
//! / Σ weights (WBF's `avg`: an object only some models find scores lower).
//! `nms` (mask-level NMS): a cluster is its best member. The box is the
//! fused mask's bounding box.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rayon::prelude::*;

use super::{Op, OpContext, OpError, ParamError};
use crate::data::DataError;
use crate::data::boxes::{Det, ImageId, read_dets, write_dets};
use crate::data::coco_rle::{Rle, RleJson};

pub struct InstanceFusion;

crate::choice! {
    /// How a cluster of overlapping masks becomes one object.
    pub enum Method {
        /// Pixels covered by members holding `vote` of the weight.
        Vote = "vote",
        /// The best member.
        Nms = "nms",
    }
}

crate::params! {
    /// The parameters of `instance_fusion`.
    pub struct Args {
        /// One COCO results file per model, each detection with its run-length `segmentation`.
        results: Vec<PathBuf>,
        /// A detection joins a cluster when its mask IoU with the cluster's best mask is above
        /// this.
        iou_thr: f64 = 0.5,
        /// vote (mask voting) or nms (mask-level NMS).
        method: Method = "vote",
        /// vote: a pixel belongs to the fused mask when members holding at least this fraction
        /// of the cluster's model weight cover it.
        vote: f64 = 0.5,
        /// Detections scoring below this are dropped first.
        skip_score_thr: f64 = 0.0,
        /// One non-negative weight per model, not all zero (scores are multiplied by it);
        /// empty means all 1.
        weights: Vec<f64> = [],
        /// Fused objects kept per image, best first.
        max_det: usize = 100,
    }
}

impl Op for InstanceFusion {
    type Params = Args;
    const NAME: &'static str = "instance_fusion";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str =
        "Fuse several models' instance masks by mask IoU (mask voting or mask-level NMS).";
    const INPUTS: &'static [&'static str] = &["results"];

    fn outputs(&self, _: &Args) -> Vec<String> {
        vec!["instances.json".into()]
    }

    fn validate(&self, a: &Args) -> Vec<ParamError> {
        let mut errs = super::check_weights(&a.weights, a.results.len(), "results", "models");
        if a.results.is_empty() {
            errs.push(ParamError::new("results", "give at least one results file"));
        }
        if !(0.0..1.0).contains(&a.iou_thr) {
            errs.push(ParamError::new("iou_thr", "an IoU in [0, 1)"));
        }
        if !(a.vote > 0.0 && a.vote <= 1.0) {
            errs.push(ParamError::new("vote", "a fraction in (0, 1]"));
        }
        if a.max_det < 1 {
            errs.push(ParamError::new("max_det", "must be at least 1"));
        }
        errs
    }

    fn run(&self, a: Args, cx: &mut OpContext) -> Result<(), OpError> {
        let weights = super::wbf::weights_or_ones(&a.weights, a.results.len());
        let p = Params {
            iou_thr: a.iou_thr,
            method: a.method,
            vote: a.vote,
            skip_score_thr: a.skip_score_thr,
            weights,
            max_det: a.max_det,
        };
        let pool = cx.pool()?;
        let out = pool.install(|| -> Result<Vec<Det>, OpError> {
            let models: Vec<Vec<Det>> = a
                .results
                .par_iter()
                .map(|f| read_masks(f))
                .collect::<Result<_, _>>()?;
            Ok(fuse_all(&models, &p))
        })?;
        cx.log(format_args!(
            "{} fused objects from {} models",
            out.len(),
            a.results.len()
        ));
        write_dets(&cx.out_dir.join("instances.json"), &out)?;
        Ok(())
    }
}

/// How [`fuse`] merges.
#[derive(Clone, Debug)]
pub struct Params {
    pub iou_thr: f64,
    pub method: Method,
    pub vote: f64,
    pub skip_score_thr: f64,
    /// One per model.
    pub weights: Vec<f64>,
    pub max_det: usize,
}

/// A results file whose every detection has a mask that decodes.
fn read_masks(path: &std::path::Path) -> Result<Vec<Det>, DataError> {
    let dets = read_dets(path)?;
    for (i, d) in dets.iter().enumerate() {
        let Some(s) = &d.segmentation else {
            return Err(DataError::new(
                path,
                format!(
                    "detection {i} (image {}) has no `segmentation`: instance_fusion merges masks (use `wbf` for boxes)",
                    d.image_id
                ),
            ));
        };
        s.to_rle().map_err(|e| {
            DataError::new(path, format!("detection {i} (image {}): {e}", d.image_id))
        })?;
    }
    Ok(dets)
}

/// One detection inside the fusion.
struct Member {
    model: usize,
    /// Score × the model's weight.
    score: f64,
    mask: Rle,
}

/// Fuses every image's detections (in order of the images' first
/// appearance), categories in ascending order, best first within an image,
/// at most `max_det` per image.
pub fn fuse_all(models: &[Vec<Det>], p: &Params) -> Vec<Det> {
    let mut order: Vec<ImageId> = Vec::new();
    let mut by_image: BTreeMap<ImageId, BTreeMap<i64, Vec<Member>>> = BTreeMap::new();
    for (m, dets) in models.iter().enumerate() {
        for d in dets {
            if d.score < p.skip_score_thr {
                continue;
            }
            let Some(mask) = d.segmentation.as_ref().and_then(|s| s.to_rle().ok()) else {
                continue;
            };
            if !by_image.contains_key(&d.image_id) {
                order.push(d.image_id.clone());
            }
            by_image
                .entry(d.image_id.clone())
                .or_default()
                .entry(d.category_id)
                .or_default()
                .push(Member {
                    model: m,
                    score: d.score * p.weights.get(m).copied().unwrap_or(1.0),
                    mask,
                });
        }
    }
    let images: Vec<(ImageId, BTreeMap<i64, Vec<Member>>)> = order
        .into_iter()
        .map(|id| {
            let v = by_image.remove(&id).unwrap_or_default();
            (id, v)
        })
        .collect();
    images
        .into_par_iter()
        .flat_map_iter(|(id, cats)| {
            let mut found: Vec<Det> = cats
                .into_iter()
                .flat_map(|(cat, members)| {
                    fuse(members, p)
                        .into_iter()
                        .map(move |(score, mask)| (cat, score, mask))
                })
                .map(|(cat, score, mask)| Det {
                    image_id: id.clone(),
                    category_id: cat,
                    bbox: mask.bbox(),
                    score,
                    segmentation: Some(RleJson::from_rle(&mask)),
                })
                .collect();
            found.sort_by(|a, b| b.score.total_cmp(&a.score));
            found.truncate(p.max_det);
            found
        })
        .collect()
}

/// One image's and category's members fused: each object's score and mask.
fn fuse(mut members: Vec<Member>, p: &Params) -> Vec<(f64, Rle)> {
    // Best first; ties keep the input order (stable sort).
    members.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut clusters: Vec<Vec<Member>> = Vec::new();
    for m in members {
        let best = clusters
            .iter()
            .enumerate()
            .map(|(k, c)| (k, Rle::iou(&m.mask, &c[0].mask, false)))
            .filter(|(_, iou)| *iou > p.iou_thr)
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        match best {
            Some((k, _)) => clusters[k].push(m),
            None => clusters.push(vec![m]),
        }
    }
    let total_w: f64 = p.weights.iter().sum();
    let models = p.weights.len();
    clusters
        .into_iter()
        .filter_map(|c| match p.method {
            Method::Nms => {
                let best = c.into_iter().next()?;
                Some((best.score, best.mask))
            }
            Method::Vote => {
                let mean = c.iter().map(|m| m.score).sum::<f64>() / c.len() as f64;
                let score = mean * c.len().min(models) as f64 / total_w.max(f64::MIN_POSITIVE);
                let mask = vote(&c, &p.weights, p.vote);
                (mask.area() > 0).then_some((score, mask))
            }
        })
        .collect()
}

/// The pixels covered by members holding at least `frac` of the cluster's
/// weight (each model's weight counted once per member).
fn vote(c: &[Member], weights: &[f64], frac: f64) -> Rle {
    let (h, w) = (c[0].mask.h, c[0].mask.w);
    let mut acc = vec![0f64; h * w];
    let mut total = 0.0;
    for m in c {
        let wt = weights.get(m.model).copied().unwrap_or(1.0);
        total += wt;
        if (m.mask.h, m.mask.w) != (h, w) {
            continue;
        }
        for (a, on) in acc.iter_mut().zip(m.mask.decode()) {
            if on {
                *a += wt;
            }
        }
    }
    // A small tolerance: 2 of 4 equal weights make exactly one half.
    let need = frac * total - 1e-9;
    let bits: Vec<bool> = acc.iter().map(|&v| v > 0.0 && v >= need).collect();
    Rle::encode(&bits, h, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row-major mask of a 8 × 8 image with the rectangle `x0..x1 ×
    /// y0..y1` set.
    fn rect(x0: usize, y0: usize, x1: usize, y1: usize) -> Rle {
        let mut m = vec![false; 64];
        for y in y0..y1 {
            for x in x0..x1 {
                m[y * 8 + x] = true;
            }
        }
        Rle::encode(&m, 8, 8)
    }

    fn det(img: i64, cat: i64, score: f64, r: &Rle) -> Det {
        Det {
            image_id: ImageId::Int(img),
            category_id: cat,
            bbox: r.bbox(),
            score,
            segmentation: Some(RleJson::from_rle(r)),
        }
    }

    fn params(method: Method, models: usize) -> Params {
        Params {
            iou_thr: 0.5,
            method,
            vote: 0.5,
            skip_score_thr: 0.0,
            weights: vec![1.0; models],
            max_det: 100,
        }
    }

    /// Three models see one object with slightly different masks and one
    /// of them a second, disjoint object: voting keeps the pixels two of
    /// three cover, scores as WBF's `avg`; the lone object scores a third
    /// of its score; other categories and images stay apart.
    #[test]
    fn voting_merges_overlapping_masks_and_keeps_the_rest_apart() {
        let a = rect(1, 1, 5, 5);
        let b = rect(1, 1, 5, 6);
        let c = rect(2, 1, 5, 5);
        let lone = rect(6, 6, 8, 8);
        let models = vec![
            vec![
                det(1, 0, 0.9, &a),
                det(1, 0, 0.6, &lone),
                det(2, 0, 0.5, &a),
            ],
            vec![det(1, 0, 0.8, &b), det(1, 1, 0.7, &a)],
            vec![det(1, 0, 0.7, &c)],
        ];
        let out = fuse_all(&models, &params(Method::Vote, 3));
        assert_eq!(out.len(), 4, "{out:?}");
        // Image 1 first (first seen), best first.
        let o = &out[0];
        assert_eq!((o.image_id.clone(), o.category_id), (ImageId::Int(1), 0));
        assert!((o.score - (0.9 + 0.8 + 0.7) / 3.0).abs() < 1e-12);
        let fused = o.segmentation.as_ref().unwrap().to_rle().unwrap();
        assert_eq!(fused, a, "two of three cover exactly a's pixels");
        assert_eq!(o.bbox, [1.0, 1.0, 4.0, 4.0]);
        let scores: Vec<(i64, i64, f64)> = out
            .iter()
            .map(|d| {
                let ImageId::Int(i) = d.image_id else {
                    panic!()
                };
                (i, d.category_id, (d.score * 1000.0).round() / 1000.0)
            })
            .collect();
        assert_eq!(
            scores,
            vec![(1, 0, 0.8), (1, 1, 0.233), (1, 0, 0.2), (2, 0, 0.167)]
        );
    }

    /// Mask-level NMS keeps each cluster's best member as it is; a model's
    /// weight scales its scores and so who leads a cluster.
    #[test]
    fn nms_keeps_the_best_member_and_weights_rank_models() {
        let a = rect(1, 1, 5, 5);
        let b = rect(1, 1, 5, 6);
        let models = vec![vec![det(1, 0, 0.9, &a)], vec![det(1, 0, 0.8, &b)]];
        let mut p = params(Method::Nms, 2);
        let out = fuse_all(&models, &p);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].segmentation.as_ref().unwrap().to_rle().unwrap(), a);
        p.weights = vec![0.5, 1.0];
        let out = fuse_all(&models, &p);
        assert_eq!(out[0].segmentation.as_ref().unwrap().to_rle().unwrap(), b);
        assert!((out[0].score - 0.8).abs() < 1e-12);
        // Below the IoU threshold the two stay apart.
        p.iou_thr = 0.9;
        assert_eq!(fuse_all(&models, &p).len(), 2);
    }
}
