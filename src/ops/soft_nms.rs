//! `soft_nms`: soft non-maximum suppression (Bodla et al.), the same as
//! ensemble-boxes 1.0.9 `soft_nms`: overlapping boxes are decayed, not
//! dropped, and kept while their decayed score is above `thresh`.
//!
//! ```toml
//! [stages.soft]
//! op = "soft_nms"
//! boxes = "${stages.predict[*].boxes}"
//! sigma = 0.1
//! thresh = 0.01
//! ```
//!
//! Like ensemble-boxes, the kept boxes carry their original scores;
//! `scores = "decayed"` writes the decayed ones instead.

use super::nms::{BOXES, IMAGES, Method, WEIGHTS, run_suppression};
use super::wbf::check_weights;
use super::{Op, OpContext, OpError, ParamError, ParamKind, ParamSpec, Params};

pub struct SoftNms;

const PARAMS: &[ParamSpec] = &[
    BOXES,
    IMAGES,
    ParamSpec {
        name: "method",
        kind: ParamKind::Enum(&["gaussian", "linear"]),
        default: Some("\"gaussian\""),
        help: "Decay of an overlapping box's score: gaussian, exp(-iou²/sigma); linear, 1 - iou where iou is above iou_thr.",
    },
    ParamSpec {
        name: "iou_thr",
        kind: ParamKind::Float,
        default: Some("0.5"),
        help: "Linear method: overlaps above this are decayed.",
    },
    ParamSpec {
        name: "sigma",
        kind: ParamKind::Float,
        default: Some("0.5"),
        help: "Gaussian method: the width of the decay.",
    },
    ParamSpec {
        name: "thresh",
        kind: ParamKind::Float,
        default: Some("0.001"),
        help: "Boxes whose decayed score is not above this are dropped.",
    },
    ParamSpec {
        name: "scores",
        kind: ParamKind::Enum(&["original", "decayed"]),
        default: Some("\"original\""),
        help: "Scores written for the kept boxes: original (as ensemble-boxes) or decayed.",
    },
    WEIGHTS,
];

impl Op for SoftNms {
    fn name(&self) -> &'static str {
        "soft_nms"
    }

    fn version(&self) -> u32 {
        1
    }

    fn summary(&self) -> &'static str {
        "Soft non-maximum suppression over several models' detections (as ensemble-boxes)."
    }

    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }

    fn inputs(&self) -> &'static [&'static str] {
        &["boxes"]
    }

    fn outputs(&self, _: &Params) -> Result<Vec<String>, ParamError> {
        Ok(vec!["boxes.json".into()])
    }

    fn validate(&self, params: &Params) -> Vec<ParamError> {
        check_weights(params)
    }

    fn run(&self, cx: &mut OpContext) -> Result<(), OpError> {
        let method = if cx.str("method") == "linear" {
            Method::Linear
        } else {
            Method::Gaussian
        };
        run_suppression(cx, method, "soft_nms")
    }
}
