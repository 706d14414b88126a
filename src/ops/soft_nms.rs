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

use std::path::PathBuf;

use super::nms::{Method, run_suppression};
use super::wbf::check_weights;
use super::{Op, OpContext, OpError, ParamError};

pub struct SoftNms;

crate::choice! {
    /// How an overlapping box's score decays.
    pub enum Decay {
        Gaussian = "gaussian",
        Linear = "linear",
    }
}

crate::choice! {
    /// Which scores the kept boxes carry.
    pub enum Scores {
        Original = "original",
        Decayed = "decayed",
    }
}

crate::params! {
    /// The parameters of `soft_nms`.
    pub struct Args {
        #[doc = box_help!(boxes)]
        boxes: Vec<PathBuf>,
        #[doc = box_help!(images)]
        images: Option<PathBuf> = "",
        /// decay: gaussian, exp(−iou²/sigma); linear, 1 − iou for overlaps above `iou_thr`
        method: Decay = "gaussian",
        /// linear method: overlaps above this are decayed
        iou_thr: f64 = 0.5,
        /// gaussian method: the width of the decay
        sigma: f64 = 0.5,
        /// boxes whose decayed score is not above this are dropped
        thresh: f64 = 0.001,
        /// scores written for the kept boxes
        scores: Scores = "original",
        /// one weight per model, as for `nms`
        weights: Vec<f64> = [],
    }
}

impl Op for SoftNms {
    type Params = Args;
    const NAME: &'static str = "soft_nms";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str =
        "Soft non-maximum suppression over several models' detections (as ensemble-boxes).";
    const INPUTS: &'static [&'static str] = &["boxes"];

    fn outputs(&self, _: &Args) -> Vec<String> {
        vec!["boxes.json".into()]
    }

    fn validate(&self, a: &Args) -> Vec<ParamError> {
        check_weights(&a.weights, a.boxes.len())
    }

    fn run(&self, a: Args, cx: &mut OpContext) -> Result<(), OpError> {
        let p = super::nms::SuppressParams {
            method: match a.method {
                Decay::Gaussian => Method::Gaussian,
                Decay::Linear => Method::Linear,
            },
            iou_thr: a.iou_thr,
            sigma: a.sigma,
            thresh: a.thresh,
            weights: a.weights,
            decayed_scores: a.scores == Scores::Decayed,
        };
        run_suppression(cx, &a.boxes, a.images.as_deref(), &p, "soft_nms")
    }
}
