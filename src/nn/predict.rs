//! Inference: a model over an image set, under any of the eight dihedral
//! TTA variants merged by mean or max (boxes mapped back through each
//! variant's inverse, then averaged), with optional penultimate-layer
//! embeddings; and the prediction tables `train` and `predict` write.

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
    })
}

/// The prediction table: class probabilities (classify, multilabel), the
/// value (regress, in column `value_col`), or `label,score,bbox` with the
/// box in the source image's pixels (box; `sizes` are the sources' sizes).
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
    };
    let mut t = Table::new(&cols);
    for (i, id) in ids.iter().enumerate() {
        let row = match task {
            Task::Classify | Task::Multilabel | Task::Regress => {
                p.probs[i].iter().map(|v| fmt_f64(f64::from(*v))).collect()
            }
            Task::Box => {
                let pr = &p.probs[i];
                let best = (0..pr.len()).fold(0, |b, k| if pr[k] > pr[b] { k } else { b });
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
