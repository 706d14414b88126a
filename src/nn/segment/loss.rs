//! The losses of task segment, as segmentation_models_pytorch defines them
//! for sigmoid masks (`mode="multilabel"`, or `"binary"` for one class),
//! summed with the manifest's weights:
//!
//! - `bce`: binary cross-entropy with logits, averaged over each image's
//!   pixels and classes, images weighted by their sample weights.
//! - `focal`: sigmoid focal loss (α off, γ = `focal_gamma`) per pixel,
//!   averaged likewise.
//! - `dice`: `DiceLoss(smooth=0, eps=1e-7)`: per class, 1 − 2·Σ p·t / Σ (p + t)
//!   over the batch's pixels; a class absent from the batch's masks counts
//!   0; averaged over the classes.
//! - `lovasz`: `LovaszLoss(per_image=False)`: the Lovász hinge over all the
//!   batch's pixels and classes, a convex surrogate of 1 − IoU.
//!
//! `dice` and `lovasz` are scored on the whole batch, so they ignore sample
//! weights (a pseudo-label's weight applies through `bce` and `focal`).

use candle_core::{D, Result, Tensor};

use crate::nn::loss::{Kind, Loss, bce, weighted_mean};

/// The loss of a batch: `logits` and `masks` `[N, K, H, W]` (masks 0 or
/// 1), `weights` `[N]`.
pub fn segment_loss(
    loss: &Loss,
    logits: &Tensor,
    masks: &Tensor,
    weights: &Tensor,
) -> Result<Tensor> {
    let n = logits.dim(0)?;
    let mut total: Option<Tensor> = None;
    for &(kind, w) in &loss.terms {
        if w == 0.0 {
            continue;
        }
        let term = match kind {
            Kind::Bce | Kind::Focal => {
                let x = logits.reshape((n, ()))?;
                let t = masks.reshape((n, ()))?;
                let per = if kind == Kind::Bce {
                    bce(&x, &t)?.mean(D::Minus1)?
                } else {
                    loss.focal_sigmoid(&x, &t)?
                };
                weighted_mean(&per, weights)?
            }
            Kind::Dice => dice(logits, masks)?,
            Kind::Lovasz => lovasz_hinge(logits, masks)?,
            k => candle_core::bail!("loss `{}` does not apply to masks", k.name()),
        };
        let term = (term * w)?;
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

/// smp's `DiceLoss(mode="multilabel", from_logits=True)`.
pub fn dice(logits: &Tensor, masks: &Tensor) -> Result<Tensor> {
    let (n, k) = (logits.dim(0)?, logits.dim(1)?);
    let p = candle_nn::ops::sigmoid(&logits.reshape((n, k, ()))?)?;
    let t = masks.reshape((n, k, ()))?;
    let sum = |x: &Tensor| -> Result<Tensor> { x.sum(2)?.sum(0) };
    let inter = sum(&(&p * &t)?)?;
    let card = sum(&(&p + &t)?)?;
    let score = ((inter * 2.0)? / card.maximum(1e-7)?)?;
    let present = sum(&t)?.gt(0.0)?.to_dtype(logits.dtype())?;
    ((1.0 - score)? * present)?.mean_all()
}

/// smp's `LovaszLoss(mode="multilabel", per_image=False)`: the errors
/// `1 − x·(2t − 1)` sorted descending, their ReLU dotted with the Lovász
/// extension's gradient of the Jaccard loss at the sorted labels.
pub fn lovasz_hinge(logits: &Tensor, masks: &Tensor) -> Result<Tensor> {
    let x = logits.flatten_all()?;
    let t = masks.flatten_all()?;
    let signs = ((&t * 2.0)? - 1.0)?;
    let errors = (1.0 - (&x * &signs)?)?;
    let e: Vec<f32> = errors.to_vec1()?;
    let mut perm: Vec<u32> = (0..e.len() as u32).collect();
    perm.sort_by(|&a, &b| e[b as usize].total_cmp(&e[a as usize]));
    let tv: Vec<f32> = t.to_vec1()?;
    let gt: Vec<f32> = perm.iter().map(|&i| tv[i as usize]).collect();
    let grad = Tensor::from_vec(lovasz_grad(&gt), gt.len(), logits.device())?;
    let idx = Tensor::from_vec(perm, e.len(), logits.device())?;
    let sorted = errors.index_select(&idx, 0)?;
    (sorted.relu()? * grad)?.sum_all()
}

/// The gradient of the Lovász extension of the Jaccard loss at labels
/// sorted by descending error (smp's `_lovasz_grad`).
fn lovasz_grad(gt_sorted: &[f32]) -> Vec<f32> {
    let gts: f64 = gt_sorted.iter().map(|&v| f64::from(v)).sum();
    let (mut cum_t, mut cum_f) = (0f64, 0f64);
    let mut jac: Vec<f64> = gt_sorted
        .iter()
        .map(|&g| {
            cum_t += f64::from(g);
            cum_f += 1.0 - f64::from(g);
            1.0 - (gts - cum_t) / (gts + cum_f)
        })
        .collect();
    for i in (1..jac.len()).rev() {
        jac[i] -= jac[i - 1];
    }
    jac.into_iter().map(|v| v as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t4(v: Vec<f32>, n: usize, k: usize, h: usize, w: usize) -> Tensor {
        Tensor::from_vec(v, (n, k, h, w), &Device::Cpu).unwrap()
    }

    /// A perfect prediction has zero Dice and Lovász loss; a class absent
    /// from the masks adds nothing to Dice.
    #[test]
    fn perfect_masks_cost_nothing() {
        let m = vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0];
        let masks = t4(m.clone(), 1, 2, 2, 2);
        let logits = t4(
            m.iter()
                .map(|&v| if v > 0.5 { 30.0 } else { -30.0 })
                .collect(),
            1,
            2,
            2,
            2,
        );
        let d: f32 = dice(&logits, &masks).unwrap().to_scalar().unwrap();
        assert!(d.abs() < 1e-6, "{d}");
        let l: f32 = lovasz_hinge(&logits, &masks).unwrap().to_scalar().unwrap();
        assert!(l.abs() < 1e-6, "{l}");
    }

    /// Lovász's gradient telescopes: its prefix sums are the Jaccard loss
    /// of getting the first k sorted pixels wrong, so it sums to 1 (every
    /// pixel wrong), and the first is 1 − |gt ∖ {p₀}| / |gt ∪ {p₀}|.
    #[test]
    fn lovasz_grad_telescopes_to_the_jaccard_loss() {
        let g = lovasz_grad(&[1.0, 0.0, 1.0, 0.0, 0.0]);
        let s: f32 = g.iter().sum();
        assert!((s - 1.0).abs() < 1e-6, "{s}");
        assert!((g[0] - 0.5).abs() < 1e-6, "{g:?}");
        // A negative pixel wrong first: 1 − 2/3.
        let g = lovasz_grad(&[0.0, 1.0, 1.0]);
        assert!((g[0] - 1.0 / 3.0).abs() < 1e-6, "{g:?}");
    }
}
