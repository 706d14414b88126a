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

/// Whether a larger value is better.
pub fn higher_is_better(name: &str) -> bool {
    name != "log_loss"
}
