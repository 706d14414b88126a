//! Losses, each with PyTorch's definition, and weighted sums of them (the
//! localisation seed's `bce + w × smooth_l1`). Class losses apply to the
//! class logits, value losses to the regressed value or the box.
//!
//! | name | PyTorch | applies to |
//! |---|---|---|
//! | `ce` | `cross_entropy(label_smoothing=ε)`, soft targets allowed | classes (softmax) |
//! | `bce` | `binary_cross_entropy_with_logits` | classes (sigmoid) |
//! | `focal` | `sigmoid_focal_loss(alpha=-1, gamma=γ)` for sigmoid heads; `−Σ t (1−p)^γ log p` on softmax | classes |
//! | `mse` | `mse_loss` | value or box |
//! | `smooth_l1` | `smooth_l1_loss(beta=1)` | value or box |
//! | `dice` | segmentation_models_pytorch `DiceLoss(mode="multilabel")` | masks (sigmoid) |
//! | `lovasz` | segmentation_models_pytorch `LovaszLoss(mode="multilabel")` | masks (sigmoid) |
//!
//! Task segment applies `bce` and `focal` to every pixel of every class
//! channel, and `dice` and `lovasz` to the batch's masks
//! ([`crate::nn::segment::loss`]).
//! Each is averaged over the batch, weighting sample i by wᵢ: Σ wᵢ·ℓᵢ / Σ wᵢ.

use candle_core::{D, Result, Tensor};

use super::layers::log_softmax;
use super::models::Task;
use crate::value::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ce,
    Bce,
    Focal,
    Mse,
    SmoothL1,
    Dice,
    Lovasz,
}

pub const NAMES: &[&str] = &["ce", "bce", "focal", "mse", "smooth_l1", "dice", "lovasz"];

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "ce" => Kind::Ce,
            "bce" => Kind::Bce,
            "focal" => Kind::Focal,
            "mse" => Kind::Mse,
            "smooth_l1" => Kind::SmoothL1,
            "dice" => Kind::Dice,
            "lovasz" => Kind::Lovasz,
            _ => return None,
        })
    }

    fn on_classes(self) -> bool {
        matches!(self, Kind::Ce | Kind::Bce | Kind::Focal)
    }

    /// Whether it applies to masks (task segment).
    fn on_masks(self) -> bool {
        matches!(self, Kind::Bce | Kind::Focal | Kind::Dice | Kind::Lovasz)
    }

    pub fn name(self) -> &'static str {
        NAMES[self as usize]
    }
}

/// A weighted sum of losses.
#[derive(Clone, Debug, PartialEq)]
pub struct Loss {
    pub terms: Vec<(Kind, f64)>,
    pub label_smoothing: f64,
    pub focal_gamma: f64,
}

/// The default loss of a task.
pub fn default_terms(task: Task) -> Vec<(Kind, f64)> {
    match task {
        Task::Classify => vec![(Kind::Ce, 1.0)],
        Task::Multilabel => vec![(Kind::Bce, 1.0)],
        Task::Regress => vec![(Kind::Mse, 1.0)],
        Task::Box => vec![(Kind::Ce, 1.0), (Kind::SmoothL1, 1.0)],
        // FCOS's own: focal + GIoU + centre-ness (nn::detect::loss).
        Task::Detect | Task::Instance => Vec::new(),
        Task::Segment => vec![(Kind::Bce, 1.0), (Kind::Dice, 1.0)],
    }
}

/// Reads `loss`: `"auto"` (the task's default), a name, or a table of
/// weights (`{ bce = 1.0, smooth_l1 = 5.0 }`), and checks that every term
/// fits the task.
pub fn parse_terms(v: &Value, task: Task) -> std::result::Result<Vec<(Kind, f64)>, String> {
    let unknown = |n: &str| format!("unknown loss `{n}`; use one of {}", NAMES.join(", "));
    if task.detects() && !matches!(v, Value::Str(s) if s == "auto") {
        return Err(format!(
            "task {task} trains with FCOS's loss (focal on classes, GIoU on boxes, BCE on \
             centre-ness{}); leave `loss` at \"auto\"",
            if task == Task::Instance {
                ", BCE on the masks"
            } else {
                ""
            }
        ));
    }
    let terms = match v {
        Value::Str(s) if s == "auto" => default_terms(task),
        Value::Str(s) => vec![(Kind::parse(s).ok_or_else(|| unknown(s))?, 1.0)],
        Value::Table(t) if !t.is_empty() => t
            .iter()
            .map(|(k, w)| {
                let kind = Kind::parse(k).ok_or_else(|| unknown(k))?;
                match w.as_f64() {
                    Some(w) if w.is_finite() && w >= 0.0 => Ok((kind, w)),
                    _ => Err(format!("the weight of `{k}` must be a non-negative number")),
                }
            })
            .collect::<std::result::Result<_, String>>()?,
        _ => return Err("give a loss name or a table of loss weights".into()),
    };
    for &(k, _) in &terms {
        let fits = match task {
            Task::Classify | Task::Multilabel => k.on_classes(),
            Task::Regress => matches!(k, Kind::Mse | Kind::SmoothL1),
            Task::Box => !matches!(k, Kind::Dice | Kind::Lovasz),
            Task::Detect | Task::Instance => false,
            Task::Segment => k.on_masks(),
        };
        if !fits {
            return Err(format!(
                "loss `{}` does not apply to task {}",
                NAMES[k as usize], task
            ));
        }
    }
    if task == Task::Box
        && !terms
            .iter()
            .any(|(k, _)| matches!(k, Kind::Mse | Kind::SmoothL1))
    {
        return Err("task box needs a box loss too (mse or smooth_l1)".into());
    }
    Ok(terms)
}

/// What a batch is scored against.
pub struct Targets {
    /// `[N, C]` class targets: one-hot, smoothed, multi-hot or soft.
    pub classes: Option<Tensor>,
    /// `[N, k]` values: the regressed value, or the box `cx, cy, w, h`.
    pub values: Option<Tensor>,
    /// `[N]` sample weights.
    pub weights: Tensor,
}

impl Loss {
    /// The loss of a batch; `logits` `[N, C]`, `boxes` `[N, 4]` for task box.
    pub fn compute(
        &self,
        task: Task,
        logits: &Tensor,
        boxes: Option<&Tensor>,
        t: &Targets,
    ) -> Result<Tensor> {
        let mut total: Option<Tensor> = None;
        for &(kind, w) in &self.terms {
            if w == 0.0 {
                continue;
            }
            let per_sample = if kind.on_classes() {
                let target = t.classes.as_ref().expect("class targets for a class loss");
                let sigmoid_head = task == Task::Multilabel;
                match kind {
                    Kind::Ce => self.ce(logits, target)?,
                    Kind::Bce => bce(logits, target)?.mean(D::Minus1)?,
                    _ if sigmoid_head => self.focal_sigmoid(logits, target)?,
                    _ => self.focal_softmax(logits, target)?,
                }
            } else {
                let target = t.values.as_ref().expect("value targets for a value loss");
                let pred = boxes.unwrap_or(logits);
                let d = (pred - target)?;
                match kind {
                    Kind::Mse => d.sqr()?.mean(D::Minus1)?,
                    Kind::SmoothL1 => smooth_l1(&d)?.mean(D::Minus1)?,
                    _ => candle_core::bail!("loss `{}` applies to masks only", kind.name()),
                }
            };
            let term = (weighted_mean(&per_sample, &t.weights)? * w)?;
            total = Some(match total {
                None => term,
                Some(a) => (a + term)?,
            });
        }
        match total {
            Some(t) => Ok(t),
            None => Tensor::zeros((), logits.dtype(), logits.device()),
        }
    }

    /// Cross-entropy against a target distribution, smoothed as PyTorch's
    /// `label_smoothing`: (1 − ε)·t + ε / C.
    fn ce(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        let c = logits.dim(D::Minus1)? as f64;
        let eps = self.label_smoothing;
        let t = ((target * (1.0 - eps))? + eps / c)?;
        (log_softmax(logits)? * t)?.sum(D::Minus1)?.neg()
    }

    pub(crate) fn focal_sigmoid(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        let p = candle_nn::ops::sigmoid(logits)?;
        let one_minus_t = (1.0 - target)?;
        let p_t = ((&p * target)? + ((1.0 - &p)? * &one_minus_t)?)?;
        let mod_ = (1.0 - p_t)?.powf(self.focal_gamma)?;
        (bce(logits, target)? * mod_)?.mean(D::Minus1)
    }

    fn focal_softmax(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        let logp = log_softmax(logits)?;
        let mod_ = (1.0 - logp.exp()?)?.powf(self.focal_gamma)?;
        (logp * mod_ * target)?.sum(D::Minus1)?.neg()
    }
}

/// Elementwise binary cross-entropy with logits, in the stable form
/// max(x, 0) − x·t + log(1 + e^−|x|).
pub fn bce(x: &Tensor, t: &Tensor) -> Result<Tensor> {
    let softplus = ((x.abs()?.neg()?.exp()? + 1.0)?).log()?;
    (x.relu()? - (x * t)?)? + softplus
}

/// Smooth L1 with β = 1: ½d² where |d| < 1, else |d| − ½.
pub fn smooth_l1(d: &Tensor) -> Result<Tensor> {
    let a = d.abs()?;
    let q = a.minimum(1.0)?;
    (q.sqr()? * 0.5)? + (a - q)?
}

pub(crate) fn weighted_mean(per_sample: &Tensor, w: &Tensor) -> Result<Tensor> {
    let sw: f32 = w.sum_all()?.to_scalar()?;
    (per_sample * w)?.sum_all()? / f64::from(sw.max(1e-12))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t2(v: &[f32], n: usize) -> Tensor {
        Tensor::from_vec(v.to_vec(), (n, v.len() / n), &Device::Cpu).unwrap()
    }

    fn scalar(t: Tensor) -> f32 {
        t.to_scalar().unwrap()
    }

    fn loss(terms: Vec<(Kind, f64)>) -> Loss {
        Loss {
            terms,
            label_smoothing: 0.0,
            focal_gamma: 2.0,
        }
    }

    #[test]
    fn cross_entropy_with_and_without_smoothing() {
        let logits = t2(&[2.0, 0.5, -1.0], 1);
        let target = t2(&[1.0, 0.0, 0.0], 1);
        let w = Tensor::new(&[1f32], &Device::Cpu).unwrap();
        let tg = Targets {
            classes: Some(target),
            values: None,
            weights: w,
        };
        let lse = (2f64.exp() + 0.5f64.exp() + (-1f64).exp()).ln();
        let l = scalar(
            loss(vec![(Kind::Ce, 1.0)])
                .compute(Task::Classify, &logits, None, &tg)
                .unwrap(),
        );
        assert!((f64::from(l) - (lse - 2.0)).abs() < 1e-5);
        let mut s = loss(vec![(Kind::Ce, 1.0)]);
        s.label_smoothing = 0.3;
        let l = scalar(s.compute(Task::Classify, &logits, None, &tg).unwrap());
        // (1 − ε)·nll(y) + ε·mean over classes of nll(c)
        let want = 0.7 * (lse - 2.0) + 0.3 * ((lse - 2.0) + (lse - 0.5) + (lse + 1.0)) / 3.0;
        assert!((f64::from(l) - want).abs() < 1e-5);
    }

    #[test]
    fn bce_focal_and_smooth_l1_match_their_formulas() {
        let x = t2(&[3.0, -2.0], 1);
        let t = t2(&[1.0, 1.0], 1);
        let b: Vec<f32> = bce(&x, &t)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want = |x: f64| (1.0 + (-x).exp()).ln();
        assert!((f64::from(b[0]) - want(3.0)).abs() < 1e-6);
        assert!((f64::from(b[1]) - want(-2.0)).abs() < 1e-6);
        let s: Vec<f32> = smooth_l1(&t2(&[0.5, -3.0], 1))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(s, [0.125, 2.5]);
        let f = loss(vec![(Kind::Focal, 1.0)]);
        let w = Tensor::new(&[1f32], &Device::Cpu).unwrap();
        let tg = Targets {
            classes: Some(t),
            values: None,
            weights: w,
        };
        let l = scalar(f.compute(Task::Multilabel, &x, None, &tg).unwrap());
        let p = |x: f64| 1.0 / (1.0 + (-x).exp());
        let want =
            (want(3.0) * (1.0 - p(3.0)).powi(2) + want(-2.0) * (1.0 - p(-2.0)).powi(2)) / 2.0;
        assert!((f64::from(l) - want).abs() < 1e-5);
    }

    #[test]
    fn sample_weights_weight_the_mean() {
        let pred = t2(&[1.0, 3.0], 2);
        let target = t2(&[0.0, 0.0], 2);
        let w = Tensor::new(&[1f32, 3.0], &Device::Cpu).unwrap();
        let tg = Targets {
            classes: None,
            values: Some(target),
            weights: w,
        };
        let l = scalar(
            loss(vec![(Kind::Mse, 2.0)])
                .compute(Task::Regress, &pred, None, &tg)
                .unwrap(),
        );
        assert!((l - 2.0 * (1.0 + 27.0) / 4.0).abs() < 1e-5);
    }

    #[test]
    fn loss_tables_parse_and_are_checked_against_the_task() {
        let mut t = std::collections::BTreeMap::new();
        t.insert("bce".to_string(), Value::Float(1.0));
        t.insert("smooth_l1".to_string(), Value::Float(5.0));
        let v = Value::Table(t);
        assert_eq!(
            parse_terms(&v, Task::Box).unwrap(),
            [(Kind::Bce, 1.0), (Kind::SmoothL1, 5.0)]
        );
        assert!(
            parse_terms(&v, Task::Classify)
                .unwrap_err()
                .contains("does not apply")
        );
        assert!(
            parse_terms(&Value::Str("ce".into()), Task::Box)
                .unwrap_err()
                .contains("box loss")
        );
        assert!(
            parse_terms(&Value::Str("l2".into()), Task::Regress)
                .unwrap_err()
                .contains("unknown loss")
        );
    }
}
