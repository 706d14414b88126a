//! Inference: a model over an image set, under any of the eight dihedral
//! TTA variants merged by mean or max (boxes mapped back through each
//! variant's inverse, then averaged), with optional penultimate-layer
//! embeddings; and the prediction tables `train` and `predict` write.

use super::detect::mask::{self, Part};
use candle_core::{D, Device, Tensor};

use super::NnError;
use super::aug::Dihedral;
use super::loader::Images;
use super::models::{Model, Task};
use crate::data::table::{Table, fmt_f64};

crate::choice! {
    /// How logits become predictions.
    pub enum Activation {
        Softmax = "softmax",
        Sigmoid = "sigmoid",
        Identity = "identity",
    }
}

impl Activation {
    pub fn apply(self, logits: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Softmax => candle_nn::ops::softmax(logits, D::Minus1),
            Activation::Sigmoid => candle_nn::ops::sigmoid(logits),
            Activation::Identity => Ok(logits.clone()),
        }
    }
}

/// Merged predictions, one row per image.
#[derive(Default)]
pub struct Predictions {
    pub probs: Vec<Vec<f32>>,
    /// Normalized `cx, cy, w, h` in the original orientation (task box).
    pub boxes: Vec<[f32; 4]>,
    pub features: Vec<Vec<f32>>,
    /// The head's raw outputs, kept when there is one variant (validation
    /// scores its loss on them).
    pub logits: Vec<Vec<f32>>,
    /// Per image, its detections (task detect): class index, score, box
    /// `x1, y1, x2, y2` normalized by the image's sides.
    pub dets: Vec<Vec<crate::data::boxes::NBox>>,
    /// Per image, each class's mask as Kaggle's run-length encoding (task
    /// segment).
    pub rles: Vec<Vec<String>>,
    /// Per image, each detection's mask at the image's size (task
    /// instance).
    pub masks: Vec<Vec<crate::data::coco_rle::Rle>>,
}

/// The index of the largest value, the first on ties (0 for none).
pub fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |b, k| if v[k] > v[b] { k } else { b })
}

/// A normalized `[cx, cy, w, h]` box as `[x, y, w, h]` in an image of `size`
/// (`(1, 1)`: still normalized).
pub fn to_xywh(b: [f32; 4], size: (f64, f64)) -> [f64; 4] {
    let [cx, cy, w, h] = b.map(f64::from);
    let (sw, sh) = size;
    [(cx - w / 2.0) * sw, (cy - h / 2.0) * sh, w * sw, h * sh]
}

/// Runs `model` (in evaluation mode) on images `idx`, once per TTA variant,
/// merging with `max` or the mean. `on_batch` is called before each batch
/// with the number of (image, variant) pairs done so far; an error from it
/// (cancellation) stops the work.
#[allow(clippy::too_many_arguments)]
pub fn infer(
    model: &Model,
    images: &Images,
    idx: &[usize],
    tta: &[Dihedral],
    max: bool,
    act: Activation,
    embed: bool,
    batch_size: usize,
    device: &Device,
    pool: &rayon::ThreadPool,
    on_batch: &mut dyn FnMut(usize) -> Result<(), NnError>,
) -> Result<Predictions, NnError> {
    let n = idx.len();
    // Sums in f64, so that the mean of identical variants is exactly each.
    let mut probs: Vec<Vec<f64>> = Vec::with_capacity(n);
    let mut boxes: Vec<[f64; 4]> = Vec::with_capacity(n);
    let mut feats: Vec<Vec<f64>> = Vec::new();
    let mut logits: Vec<Vec<f32>> = Vec::new();
    let s = images.size as usize;
    for (k, &d) in tta.iter().enumerate() {
        let mut row = 0;
        images.for_each_batch::<NnError>(idx, batch_size, None, d, None, pool, |b| {
            on_batch(k * n + row)?;
            let m = b.idx.len();
            let x = Tensor::from_vec(b.x, (m, 3, s, s), device)?;
            let o = pool.install(|| model.forward_t(&x, false))?;
            let p: Vec<Vec<f32>> = act.apply(&o.logits)?.to_vec2()?;
            if tta.len() == 1 {
                logits.extend(o.logits.to_vec2::<f32>()?);
            }
            let bx: Option<Vec<Vec<f32>>> = match &o.boxes {
                Some(t) => Some(t.to_vec2()?),
                None => None,
            };
            let f: Option<Vec<Vec<f32>>> = if embed {
                Some(o.features.to_vec2()?)
            } else {
                None
            };
            for j in 0..m {
                let r = row + j;
                let b = bx
                    .as_ref()
                    .map(|v| {
                        d.inverse()
                            .map_box([v[j][0], v[j][1], v[j][2], v[j][3]])
                            .map(f64::from)
                    })
                    .unwrap_or_default();
                let pj = p[j].iter().map(|&v| f64::from(v));
                if k == 0 {
                    probs.push(pj.collect());
                    boxes.push(b);
                    if let Some(f) = &f {
                        feats.push(f[j].iter().map(|&v| f64::from(v)).collect());
                    }
                    continue;
                }
                for (a, v) in probs[r].iter_mut().zip(pj) {
                    *a = if max { a.max(v) } else { *a + v };
                }
                for (a, v) in boxes[r].iter_mut().zip(b) {
                    *a += v;
                }
                if let Some(f) = &f {
                    for (a, v) in feats[r].iter_mut().zip(&f[j]) {
                        *a += f64::from(*v);
                    }
                }
            }
            row += m;
            Ok(())
        })?;
    }
    on_batch(tta.len() * n)?;
    let t = tta.len().max(1) as f64;
    let div = |v: f64| (v / t) as f32;
    Ok(Predictions {
        probs: probs
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .map(|v| if max { v as f32 } else { div(v) })
                    .collect()
            })
            .collect(),
        boxes: boxes.into_iter().map(|b| b.map(div)).collect(),
        features: feats
            .into_iter()
            .map(|r| r.into_iter().map(div).collect())
            .collect(),
        logits,
        dets: Vec::new(),
        rles: Vec::new(),
        masks: Vec::new(),
    })
}

/// The prediction table: class probabilities (classify, multilabel), the
/// value (regress, in column `value_col`), or `label,score,bbox` with the
/// box in the source image's pixels (box; `sizes` are the sources' sizes), or
/// each class's run-length mask (segment).
pub fn table(
    task: Task,
    classes: &[String],
    value_col: &str,
    ids: &[String],
    p: &Predictions,
    sizes: &[(u32, u32)],
) -> Table {
    let cols: Vec<&str> = match task {
        Task::Classify | Task::Multilabel => classes.iter().map(String::as_str).collect(),
        Task::Regress => vec![value_col],
        Task::Box => vec!["label", "score", "bbox"],
        Task::Detect | Task::Instance => vec!["detections"],
        Task::Segment => classes.iter().map(String::as_str).collect(),
    };
    let mut t = Table::new(&cols);
    for (i, id) in ids.iter().enumerate() {
        let row = match task {
            Task::Classify | Task::Multilabel | Task::Regress => {
                p.probs[i].iter().map(|v| fmt_f64(f64::from(*v))).collect()
            }
            Task::Box => {
                let pr = &p.probs[i];
                let best = argmax(pr);
                let size = (f64::from(sizes[i].0), f64::from(sizes[i].1));
                let bbox = to_xywh(p.boxes[i], size)
                    .map(|v| format!("{v:.2}"))
                    .join(" ");
                vec![
                    classes.get(best).cloned().unwrap_or_default(),
                    fmt_f64(f64::from(pr[best])),
                    bbox,
                ]
            }
            Task::Detect | Task::Instance => vec![p.dets.get(i).map_or(0, Vec::len).to_string()],
            Task::Segment => p.rles[i].clone(),
        };
        t.push(id.clone(), row);
    }
    t
}

/// Embeddings as a table `id,f0,f1,…`.
pub fn embeddings_table(ids: &[String], p: &Predictions) -> Table {
    let dim = p.features.first().map_or(0, Vec::len);
    let names: Vec<String> = (0..dim).map(|k| format!("f{k}")).collect();
    let cols: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut t = Table::new(&cols);
    for (id, f) in ids.iter().zip(&p.features) {
        t.push(id.clone(), f.iter().map(|v| format!("{v:.6}")).collect());
    }
    t
}

/// A normalized box `x1, y1, x2, y2` seen through dihedral transform `d`.
pub fn map_xyxy(d: Dihedral, b: [f64; 4]) -> [f64; 4] {
    let [x1, y1, x2, y2] = b.map(|v| v as f32);
    let [cx, cy, w, h] = d.map_box([(x1 + x2) / 2.0, (y1 + y2) / 2.0, x2 - x1, y2 - y1]);
    [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0].map(f64::from)
}

/// The mask head's masks of detections `dets` (per image of the batch
/// whose mask-head map is `map`; boxes normalized by the input's side `s`):
/// per image, per detection, the probabilities of its class on the head's
/// grid over its box (task instance).
pub fn mask_parts(
    model: &Model,
    map: &Tensor,
    dets: &[Vec<crate::data::boxes::NBox>],
    s: usize,
) -> candle_core::Result<Vec<Vec<Part>>> {
    let Some(head) = &model.mask_head else {
        candle_core::bail!("task {} has no mask head", model.task);
    };
    let mut regions = Vec::new();
    let mut labels = Vec::new();
    for (j, ds) in dets.iter().enumerate() {
        for d in ds {
            regions.push((j, d.xyxy.map(|v| (v * s as f64) as f32)));
            labels.push(d.label.max(0) as usize);
        }
    }
    // In chunks: a batch's detections can number thousands, and each
    // region's activations are `channels × 28²` floats.
    let mut probs: Vec<Vec<f32>> = Vec::with_capacity(regions.len());
    for (r, l) in regions.chunks(MASK_CHUNK).zip(labels.chunks(MASK_CHUNK)) {
        let logits = head.forward(map, r)?;
        probs.extend(candle_nn::ops::sigmoid(&mask::select(&logits, l)?)?.to_vec2::<f32>()?);
    }
    let mut probs = probs.into_iter();
    Ok(dets
        .iter()
        .map(|ds| {
            ds.iter()
                .zip(probs.by_ref())
                .map(|(d, p)| Part {
                    xyxy: d.xyxy,
                    probs: p,
                })
                .collect()
        })
        .collect())
}

/// Regions the mask head runs at once in inference.
const MASK_CHUNK: usize = 64;

/// What a detector found in each image under each TTA variant, in the
/// image's own orientation: `dets[image][variant]`, and for task instance
/// each detection's mask in `parts[image][variant]` (else empty).
#[derive(Default)]
pub struct Detected {
    pub dets: Vec<Vec<Vec<crate::data::boxes::NBox>>>,
    pub parts: Vec<Vec<Vec<Part>>>,
}

/// Runs a detector (tasks detect and instance) on images `idx` once per TTA
/// variant: per image, per variant, its detections (normalized `x1, y1,
/// x2, y2`) and their masks, mapped back through the variant's inverse
/// into the image's own orientation. `on_batch` as for [`infer`].
#[allow(clippy::too_many_arguments)]
pub fn infer_detect(
    model: &Model,
    images: &Images,
    idx: &[usize],
    tta: &[Dihedral],
    params: &super::detect::decode::Params,
    batch_size: usize,
    device: &Device,
    pool: &rayon::ThreadPool,
    on_batch: &mut dyn FnMut(usize) -> Result<(), NnError>,
) -> Result<Detected, NnError> {
    use super::detect::{assign::Points, decode::decode};
    let n = idx.len();
    let masks = model.mask_head.is_some();
    let mut out = Detected {
        dets: vec![Vec::new(); n],
        parts: vec![Vec::new(); if masks { n } else { 0 }],
    };
    let s = images.size as usize;
    for (k, &d) in tta.iter().enumerate() {
        let mut row = 0;
        let back = d.inverse();
        images.for_each_batch::<NnError>(idx, batch_size, None, d, None, pool, |b| {
            on_batch(k * n + row)?;
            let m = b.idx.len();
            let x = Tensor::from_vec(b.x, (m, 3, s, s), device)?;
            let (dets, parts) = pool.install(|| -> candle_core::Result<_> {
                if masks {
                    let (raw, map) = model.instance_t(&x, false)?;
                    let dets = decode(&raw, &Points::new(&raw.levels), s as f32, params)?;
                    let parts = mask_parts(model, &map, &dets, s)?;
                    Ok((dets, parts))
                } else {
                    let raw = model.detect_t(&x, false)?;
                    let dets = decode(&raw, &Points::new(&raw.levels), s as f32, params)?;
                    Ok((dets, Vec::new()))
                }
            })?;
            for (j, mut ds) in dets.into_iter().enumerate() {
                for b in &mut ds {
                    b.xyxy = map_xyxy(back, b.xyxy);
                }
                out.dets[row + j].push(ds);
            }
            for (j, mut ps) in parts.into_iter().enumerate() {
                for p in &mut ps {
                    p.xyxy = map_xyxy(back, p.xyxy);
                    p.probs = back.apply(&p.probs, 1, mask::MASK);
                }
                out.parts[row + j].push(ps);
            }
            row += m;
            Ok(())
        })?;
    }
    on_batch(tta.len() * n)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A box drawn on an image, seen through each TTA variant, lands where
    /// the variant moves the image's pixels; mapped back through the
    /// inverse it is the box again, exactly.
    #[test]
    fn a_box_on_a_transformed_image_maps_back_exactly() {
        let s = 8;
        // The box covers columns 1..3 and rows 2..7 of an 8 × 8 image.
        let b = [1.0 / 8.0, 2.0 / 8.0, 3.0 / 8.0, 7.0 / 8.0];
        let mut img = vec![0f32; s * s];
        for y in 2..7 {
            for x in 1..3 {
                img[y * s + x] = 1.0;
            }
        }
        for d in Dihedral::all() {
            let t = d.apply(&img, 1, s);
            let m = map_xyxy(d, b);
            for y in 0..s {
                for x in 0..s {
                    let (cx, cy) = ((x as f64 + 0.5) / 8.0, (y as f64 + 0.5) / 8.0);
                    let inside = cx > m[0] && cx < m[2] && cy > m[1] && cy < m[3];
                    assert_eq!(t[y * s + x] == 1.0, inside, "{d:?} at ({x}, {y}): {m:?}");
                }
            }
            assert_eq!(map_xyxy(d.inverse(), m), b, "{d:?}");
        }
    }

    /// A mask grid sampled over a box on a transformed image, mapped back
    /// through the variant's inverse as `infer_detect` maps an instance's
    /// mask, is the grid sampled over the box on the image itself.
    #[test]
    fn a_mask_on_a_transformed_image_maps_back_exactly() {
        let s = 16;
        // An asymmetric picture, each 2 × 2 block its own value (so that no
        // cell centre below falls on a boundary between values).
        let img: Vec<f32> = (0..s * s)
            .map(|i| ((i / s / 2) * 8 + (i % s) / 2) as f32)
            .collect();
        // Box over columns 2..10 and rows 4..8: 8 × 4 pixels, a 4 × 4 grid
        // of 2 × 1 pixel cells, each cell's centre sampled (nearest).
        let b = [2.0 / 16.0, 4.0 / 16.0, 10.0 / 16.0, 8.0 / 16.0];
        let m = 4;
        let grid = |pic: &[f32], bx: [f64; 4]| -> Vec<f32> {
            let (bw, bh) = (bx[2] - bx[0], bx[3] - bx[1]);
            let mut g = Vec::new();
            for i in 0..m {
                for j in 0..m {
                    let x = (bx[0] + (j as f64 + 0.5) / m as f64 * bw) * s as f64;
                    let y = (bx[1] + (i as f64 + 0.5) / m as f64 * bh) * s as f64;
                    g.push(pic[y.floor() as usize * s + x.floor() as usize]);
                }
            }
            g
        };
        let want = grid(&img, b);
        for d in Dihedral::all() {
            let view = d.apply(&img, 1, s);
            let seen = grid(&view, map_xyxy(d, b));
            assert_eq!(d.inverse().apply(&seen, 1, m), want, "{d:?}");
        }
    }
}
