//! COCO mAP as pycocotools' COCOeval computes it, for boxes (iouType
//! "bbox") and masks ("segm"): `stats[0]` (AP at IoU .50:.05:.95) and
//! `stats[1]` (AP at IoU .50), area "all", at most 100 detections per
//! image and category; or the AP over other IoU thresholds (`params.iouThrs`).

use std::collections::{BTreeMap, HashMap};

use crate::data::boxes::{Coco, Det, ImageId};
use crate::data::coco_rle::Rle;

/// What a detection and a ground truth overlap by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IouType {
    /// Their boxes.
    Bbox,
    /// Their masks (`segmentation`: polygons or run lengths in the ground
    /// truth, run lengths in the results).
    Segm,
}

/// COCO's IoU thresholds, .50:.05:.95.
pub fn coco_thresholds() -> Vec<f64> {
    linspace(0.5, 0.95, 10)
}

/// `np.linspace(start, stop, num)`: `i * step + start`, the last exactly `stop`.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// A result and its mask (segm).
type Dt<'a> = (&'a Det, Option<Rle>);

struct Gt {
    bbox: [f64; 4],
    area: f64,
    crowd: bool,
    rle: Option<Rle>,
}

/// pycocotools' `bbIou` of `[x, y, w, h]` boxes: crowd ground truth is
/// divided by the detection's area.
pub fn bb_iou(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let w = (d[0] + d[2]).min(g[0] + g[2]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[1] + d[3]).min(g[1] + g[3]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let i = w * h;
    let da = d[2] * d[3];
    let u = if crowd { da } else { da + g[2] * g[3] - i };
    i / u
}

/// Per image and category: each detection's score and, per IoU threshold,
/// whether it matched (and whether that match was to ignored ground truth).
struct ImageEval {
    scores: Vec<f64>,
    /// `[threshold][detection]`
    matched: Vec<Vec<bool>>,
    ignored: Vec<Vec<bool>>,
    n_gt: usize,
}

/// Returns box `(AP@[.5:.95], AP@.5)`; -1 where no category has ground
/// truth, as pycocotools.
pub fn coco_map(gt: &Coco, dets: &[Det]) -> (f64, f64) {
    let ap = coco_ap(gt, dets, IouType::Bbox, &coco_thresholds()).expect("boxes need no masks");
    (ap.mean, ap.per_threshold[0])
}

/// The average precision over IoU thresholds, and at each.
#[derive(Clone, Debug, PartialEq)]
pub struct Ap {
    pub mean: f64,
    pub per_threshold: Vec<f64>,
    /// Interpolated precision per (threshold, category), for
    /// [`Ap::mean_over`].
    precision: BTreeMap<(usize, usize), Vec<f64>>,
}

impl Ap {
    /// The AP averaged over the thresholds of these indices, as
    /// pycocotools averages over its `iouThrs` (-1 when nothing counts).
    pub fn mean_over(&self, ts: &[usize]) -> f64 {
        let v: Vec<f64> = self
            .precision
            .iter()
            .filter(|((t, _), _)| ts.contains(t))
            .flat_map(|(_, q)| q.iter().copied())
            .filter(|&x| x > -1.0)
            .collect();
        if v.is_empty() {
            -1.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    }
}

/// COCOeval's AP with `thrs` as its IoU thresholds (COCO's are
/// [`coco_thresholds`]). For [`IouType::Segm`], ground truth masks come
/// from each annotation's `segmentation` on its image's size, and an
/// annotation without `area` has its mask's; an annotation or result
/// without a mask is an error naming it.
pub fn coco_ap(gt: &Coco, dets: &[Det], kind: IouType, thrs: &[f64]) -> Result<Ap, String> {
    let rec_thrs = linspace(0.0, 1.0, 101);
    let max_det = 100;
    let mut img_ids: Vec<&ImageId> = gt.images.iter().map(|i| &i.id).collect();
    img_ids.sort();
    img_ids.dedup();
    let mut cat_ids: Vec<i64> = gt.categories.iter().map(|c| c.id).collect();
    if cat_ids.is_empty() {
        cat_ids = gt.annotations.iter().map(|a| a.category_id).collect();
    }
    cat_ids.sort_unstable();
    cat_ids.dedup();
    let sizes: HashMap<&ImageId, (usize, usize)> = gt
        .images
        .iter()
        .map(|i| (&i.id, (i.height as usize, i.width as usize)))
        .collect();
    let mut gts: HashMap<(&ImageId, i64), Vec<Gt>> = HashMap::new();
    for a in &gt.annotations {
        let rle = match kind {
            IouType::Bbox => None,
            IouType::Segm => {
                let Some(seg) = &a.segmentation else {
                    return Err(format!("annotation {} has no segmentation", a.id));
                };
                let Some(&(h, w)) = sizes.get(&a.image_id) else {
                    return Err(format!(
                        "annotation {}: image {} is not in `images`",
                        a.id, a.image_id
                    ));
                };
                Some(
                    seg.to_rle(h, w)
                        .map_err(|e| format!("annotation {}: {e}", a.id))?,
                )
            }
        };
        let area = a.area.unwrap_or_else(|| match &rle {
            Some(r) => r.area() as f64,
            None => a.bbox[2] * a.bbox[3],
        });
        gts.entry((&a.image_id, a.category_id))
            .or_default()
            .push(Gt {
                bbox: a.bbox,
                area,
                crowd: a.iscrowd != 0,
                rle,
            });
    }
    let mut dts: HashMap<(&ImageId, i64), Vec<Dt>> = HashMap::new();
    for (i, d) in dets.iter().enumerate() {
        let rle = match kind {
            IouType::Bbox => None,
            IouType::Segm => {
                let Some(seg) = &d.segmentation else {
                    return Err(format!(
                        "result {} (image {}) has no segmentation",
                        i + 1,
                        d.image_id
                    ));
                };
                Some(
                    seg.to_rle()
                        .map_err(|e| format!("result {} (image {}): {e}", i + 1, d.image_id))?,
                )
            }
        };
        dts.entry((&d.image_id, d.category_id))
            .or_default()
            .push((d, rle));
    }
    let mut precision: BTreeMap<(usize, usize), Vec<f64>> = BTreeMap::new();
    for (k, &cat) in cat_ids.iter().enumerate() {
        let mut evals: Vec<ImageEval> = Vec::new();
        for img in &img_ids {
            let g = gts.get(&(*img, cat)).map(Vec::as_slice).unwrap_or(&[]);
            let d = dts.get(&(*img, cat)).map(Vec::as_slice).unwrap_or(&[]);
            if g.is_empty() && d.is_empty() {
                continue;
            }
            evals.push(evaluate_image(g, d, thrs, max_det, kind));
        }
        let n_gt: usize = evals.iter().map(|e| e.n_gt).sum();
        if n_gt == 0 {
            continue;
        }
        // All detections of the category, by descending score (stable).
        let mut all: Vec<(f64, usize, usize)> = Vec::new();
        for (e, ev) in evals.iter().enumerate() {
            for (i, &s) in ev.scores.iter().enumerate() {
                all.push((s, e, i));
            }
        }
        all.sort_by(|a, b| b.0.total_cmp(&a.0));
        for t in 0..thrs.len() {
            let (mut tp, mut fp) = (0f64, 0f64);
            let mut rc = Vec::with_capacity(all.len());
            let mut pr = Vec::with_capacity(all.len());
            for &(_, e, i) in &all {
                if evals[e].ignored[t][i] {
                    // Neither a true nor a false positive; the curve still gets a point.
                } else if evals[e].matched[t][i] {
                    tp += 1.0;
                } else {
                    fp += 1.0;
                }
                rc.push(tp / n_gt as f64);
                pr.push(tp / (fp + tp + f64::EPSILON));
            }
            for i in (1..pr.len()).rev() {
                if pr[i] > pr[i - 1] {
                    pr[i - 1] = pr[i];
                }
            }
            let q: Vec<f64> = rec_thrs
                .iter()
                .map(|&r| {
                    let pos = rc.partition_point(|&x| x < r);
                    pr.get(pos).copied().unwrap_or(0.0)
                })
                .collect();
            precision.insert((t, k), q);
        }
    }
    let mut ap = Ap {
        mean: 0.0,
        per_threshold: Vec::new(),
        precision,
    };
    ap.mean = ap.mean_over(&(0..thrs.len()).collect::<Vec<_>>());
    ap.per_threshold = (0..thrs.len()).map(|t| ap.mean_over(&[t])).collect();
    Ok(ap)
}

fn evaluate_image(gt: &[Gt], dt: &[Dt], thrs: &[f64], max_det: usize, kind: IouType) -> ImageEval {
    // Ground truth: not ignored first (stable), as evaluateImg sorts it.
    let g_ignore: Vec<bool> = gt
        .iter()
        .map(|g| g.crowd || g.area < 0.0 || g.area > 1e10)
        .collect();
    let mut g_order: Vec<usize> = (0..gt.len()).collect();
    g_order.sort_by_key(|&i| g_ignore[i]);
    let mut d_order: Vec<usize> = (0..dt.len()).collect();
    d_order.sort_by(|&a, &b| dt[b].0.score.total_cmp(&dt[a].0.score));
    d_order.truncate(max_det);
    let ious: Vec<Vec<f64>> = d_order
        .iter()
        .map(|&d| {
            g_order
                .iter()
                .map(|&g| match (kind, &dt[d].1, &gt[g].rle) {
                    (IouType::Segm, Some(a), Some(b)) => Rle::iou(a, b, gt[g].crowd),
                    _ => bb_iou(&dt[d].0.bbox, &gt[g].bbox, gt[g].crowd),
                })
                .collect()
        })
        .collect();
    let gig: Vec<bool> = g_order.iter().map(|&g| g_ignore[g]).collect();
    let crowd: Vec<bool> = g_order.iter().map(|&g| gt[g].crowd).collect();
    let nd = d_order.len();
    let mut matched = vec![vec![false; nd]; thrs.len()];
    let mut ignored = vec![vec![false; nd]; thrs.len()];
    for (t, &thr) in thrs.iter().enumerate() {
        let mut g_used = vec![false; gig.len()];
        for d in 0..nd {
            let mut best = thr.min(1.0 - 1e-10);
            let mut m: Option<usize> = None;
            for g in 0..gig.len() {
                if g_used[g] && !crowd[g] {
                    continue;
                }
                if let Some(mm) = m
                    && !gig[mm]
                    && gig[g]
                {
                    break;
                }
                if ious[d][g] < best {
                    continue;
                }
                best = ious[d][g];
                m = Some(g);
            }
            if let Some(g) = m {
                ignored[t][d] = gig[g];
                matched[t][d] = true;
                g_used[g] = true;
            }
        }
    }
    ImageEval {
        scores: d_order.iter().map(|&d| dt[d].0.score).collect(),
        matched,
        ignored,
        n_gt: gig.iter().filter(|&&i| !i).count(),
    }
}
