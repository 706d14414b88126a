//! From head outputs to detections, as torchvision's
//! `FCOS.postprocess_detections`: per level, scores √(σ(class) · σ(centre-ness))
//! above `score_thr`, the best `topk` of them, boxes decoded and clipped to
//! the image; then NMS per class and the best `max_det`.

use candle_core::Result;

use super::assign::Points;
use super::fcos::Raw;
use crate::data::boxes::{NBox, iou_xyxy};

/// How detections are picked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    /// Scores at or below this are dropped (torchvision's FCOS: 0.2; 0.05
    /// scores mAP better).
    pub score_thr: f32,
    /// Candidates kept per level before NMS.
    pub topk: usize,
    /// NMS suppresses a box overlapping a better one of its class by more
    /// than this IoU.
    pub nms_iou: f64,
    /// Detections kept per image.
    pub max_det: usize,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            score_thr: 0.05,
            topk: 1000,
            nms_iou: 0.6,
            max_det: 100,
        }
    }
}

/// Per image, its detections: `label` the class index, `xyxy` normalized
/// by the input side `size`, best first.
pub fn decode(raw: &Raw, p: &Points, size: f32, prm: &Params) -> Result<Vec<Vec<NBox>>> {
    let cls: Vec<Vec<Vec<f32>>> = candle_nn::ops::sigmoid(&raw.cls)?.to_vec3()?;
    let ctr: Vec<Vec<f32>> = candle_nn::ops::sigmoid(&raw.ctr)?.to_vec2()?;
    let reg: Vec<Vec<Vec<f32>>> = raw.reg.to_vec3()?;
    let mut out = Vec::with_capacity(cls.len());
    for n in 0..cls.len() {
        let mut cands: Vec<NBox> = Vec::new();
        let mut start = 0;
        for l in 0..p.levels {
            let end = start + p.level[start..].iter().take_while(|&&v| v == l).count();
            let mut lvl: Vec<(f32, usize, usize)> = Vec::new();
            for a in start..end {
                for (c, &pc) in cls[n][a].iter().enumerate() {
                    let s = (pc * ctr[n][a]).sqrt();
                    if s > prm.score_thr {
                        lvl.push((s, a, c));
                    }
                }
            }
            // Descending score; ties by position, as a stable top-k.
            lvl.sort_by(|x, y| y.0.total_cmp(&x.0));
            lvl.truncate(prm.topk);
            for (s, a, c) in lvl {
                let [x, y] = p.centers[a];
                let st = p.sizes[a];
                let d = &reg[n][a];
                let clip = |v: f32| v.clamp(0.0, size) / size;
                cands.push(NBox {
                    label: c as i64,
                    score: f64::from(s),
                    xyxy: [
                        clip(x - d[0] * st),
                        clip(y - d[1] * st),
                        clip(x + d[2] * st),
                        clip(y + d[3] * st),
                    ]
                    .map(f64::from),
                });
            }
            start = end;
        }
        out.push(nms(cands, prm.nms_iou, prm.max_det));
    }
    Ok(out)
}

/// Per-class NMS (torchvision's `batched_nms`): best first, each box kept
/// unless a kept box of its class overlaps it by more than `iou`; at most
/// `max_det` kept.
pub fn nms(mut boxes: Vec<NBox>, iou: f64, max_det: usize) -> Vec<NBox> {
    boxes.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<NBox> = Vec::new();
    for b in boxes {
        if kept.len() >= max_det {
            break;
        }
        if kept
            .iter()
            .all(|k| k.label != b.label || iou_xyxy(&k.xyxy, &b.xyxy) <= iou)
        {
            kept.push(b);
        }
    }
    kept
}
