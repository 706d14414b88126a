//! Metrics, computed as the reference libraries compute them: scikit-learn
//! for [`classify`], pycocotools' COCOeval for [`coco`]. The `evaluate` op
//! and (later) training's best-epoch choice share them.

pub mod classify;
pub mod coco;
pub mod segment;

/// Every metric `evaluate` knows, by name.
pub const NAMES: &[&str] = &[
    "accuracy",
    "qwk",
    "f1_macro",
    "log_loss",
    "auc",
    "coco_map",
    "coco_map50",
    "coco_segm_map",
    "coco_segm_map50",
    "box_iou",
    "dice",
    "iou",
];

/// Whether a larger value is better: for every metric but losses and
/// errors (`log_loss`, `val_loss`, `loss`, `rmse`, …).
pub fn higher_is_better(name: &str) -> bool {
    let m = name.to_ascii_lowercase();
    !["loss", "error", "mae", "mse"]
        .iter()
        .any(|w| m.contains(w))
}

/// The mean of `vs` and their sample standard deviation (ddof = 1, as
/// `numpy.std(..., ddof=1)` and pandas' `std`; 0 for fewer than two).
pub fn mean_and_sample_std(vs: &[f64]) -> (f64, f64) {
    let n = vs.len();
    let mean = vs.iter().sum::<f64>() / n as f64;
    let std = if n < 2 {
        0.0
    } else {
        (vs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    };
    (mean, std)
}
