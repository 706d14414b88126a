//! FCOS's losses, with torchvision's definitions: `sigmoid_focal_loss`,
//! `generalized_box_iou_loss`, and binary cross-entropy with logits on
//! centre-ness; each summed and divided by the foreground count.

use candle_core::{Result, Tensor};

use super::assign::Targets;
use super::fcos::Raw;
use crate::nn::loss::bce;

/// torchvision's `sigmoid_focal_loss`, elementwise: BCE scaled by
/// `(1 − p_t)^γ` and by `α` on positives, `1 − α` on negatives.
pub fn sigmoid_focal(x: &Tensor, t: &Tensor, alpha: f64, gamma: f64) -> Result<Tensor> {
    let p = candle_nn::ops::sigmoid(x)?;
    let one_minus_t = (1.0 - t)?;
    let p_t = ((&p * t)? + ((1.0 - &p)? * &one_minus_t)?)?;
    let m = (1.0 - p_t)?.powf(gamma)?;
    let a = ((t * alpha)? + (one_minus_t * (1.0 - alpha))?)?;
    bce(x, t)? * m * a
}

/// torchvision's `generalized_box_iou_loss` per row of `[M, 4]` boxes
/// `x1, y1, x2, y2`: 1 − GIoU, ε = 1e-7.
pub fn giou_loss(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let col = |t: &Tensor, i: usize| t.narrow(1, i, 1);
    let (x1, y1, x2, y2) = (col(a, 0)?, col(a, 1)?, col(a, 2)?, col(a, 3)?);
    let (u1, v1, u2, v2) = (col(b, 0)?, col(b, 1)?, col(b, 2)?, col(b, 3)?);
    let eps = 1e-7;
    let iw = (x2.minimum(&u2)? - x1.maximum(&u1)?)?.relu()?;
    let ih = (y2.minimum(&v2)? - y1.maximum(&v1)?)?.relu()?;
    let inter = (iw * ih)?;
    let area_a = ((&x2 - &x1)? * (&y2 - &y1)?)?;
    let area_b = ((&u2 - &u1)? * (&v2 - &v1)?)?;
    let union = ((area_a + area_b)? - &inter)?;
    let iou = (&inter / (&union + eps)?)?;
    let cw = (x2.maximum(&u2)? - x1.minimum(&u1)?)?;
    let ch = (y2.maximum(&v2)? - y1.minimum(&v1)?)?;
    let area_c = (cw * ch)?;
    let giou = (iou - ((&area_c - &union)? / (area_c + eps)?)?)?;
    (1.0 - giou)?.squeeze(1)
}

/// The decoded boxes of the foreground locations: centre ∓ distance ×
/// stride.
pub fn fg_boxes(raw: &Raw, t: &Targets) -> Result<Tensor> {
    let (n, a, _) = raw.reg.dims3()?;
    let reg = raw.reg.reshape((n * a, 4))?.index_select(&t.fg, 0)?;
    let sign = Tensor::new(&[[-1f32, -1.0, 1.0, 1.0]], reg.device())?;
    t.centers
        .add(&reg.broadcast_mul(&t.sizes)?.broadcast_mul(&sign)?)
}

/// The three terms, each a sum over locations divided by max(1, foreground).
pub struct Parts {
    pub cls: Tensor,
    pub bbox: Tensor,
    pub ctr: Tensor,
}

impl Parts {
    pub fn total(&self) -> Result<Tensor> {
        (&self.cls + &self.bbox)? + &self.ctr
    }
}

/// FCOS's loss of a batch (focal α = 0.25, γ = 2).
pub fn fcos_loss(raw: &Raw, t: &Targets) -> Result<Parts> {
    let norm = t.num_fg.max(1) as f64;
    let cls = (sigmoid_focal(&raw.cls, &t.cls, 0.25, 2.0)?
        .broadcast_mul(&t.cls_weights)?
        .sum_all()?
        / norm)?;
    if t.num_fg == 0 {
        let zero = (raw.reg.sum_all()? * 0.0)?;
        let zero_c = (raw.ctr.sum_all()? * 0.0)?;
        return Ok(Parts {
            cls,
            bbox: zero,
            ctr: zero_c,
        });
    }
    let bbox = ((giou_loss(&fg_boxes(raw, t)?, &t.boxes)? * &t.weights)?.sum_all()? / norm)?;
    let (n, a) = raw.ctr.dims2()?;
    let ctr_logits = raw.ctr.reshape(n * a)?.index_select(&t.fg, 0)?;
    let ctr = ((bce(&ctr_logits, &t.ctr)? * &t.weights)?.sum_all()? / norm)?;
    Ok(Parts { cls, bbox, ctr })
}
