//! `pseudo_label`: turns predictions on unlabelled (test) images into labels
//! a training stage takes as extra data, with the images' ids as its list.
//!
//! ```toml
//! [stages.pseudo]
//! op = "pseudo_label"
//! pred = "${stages.blend.pred}"
//! mode = "soft"              # APTOS: soft_pseudo_label.csv
//! ```
//!
//! - `hard`: the best class per row, for rows whose best probability is at
//!   least `threshold`: `id,label` (and `weight` = that probability with
//!   `weight = true`).
//! - `soft`: the probabilities as they are (rows under `threshold` left out).
//! - `boxes`: from a boxes file (after fusion), the boxes scoring at least
//!   `threshold` as a COCO ground-truth file (`pseudo_coco.json`, images
//!   sized by `images`), and a table of each image's best box
//!   (`id,label,bbox`) for single-object training (the SIIM solution).
//!   Instance results keep their run-length masks as `segmentation`.

use std::collections::BTreeMap;

use crate::data::coco_rle::Segmentation;

use std::path::PathBuf;

use super::{Op, OpContext, OpError, ParamError};
use crate::data::DataError;
use crate::data::boxes::{Coco, CocoAnn, CocoCategory, ImageId, read_coco, read_dets, write_coco};
use crate::data::table::{Table, fmt_f64};

pub struct PseudoLabel;

crate::choice! {
    /// What the pseudo-labels are.
    pub enum Mode {
        Hard = "hard",
        Soft = "soft",
        Boxes = "boxes",
    }
}

crate::params! {
    /// The parameters of `pseudo_label`.
    pub struct Args {
        /// class probabilities (table) or boxes
        pred: PathBuf,
        /// above
        mode: Mode = "hard",
        /// confidence (score) below which rows (boxes) are left out
        threshold: f64 = 0.0,
        /// hard: add a `weight` column; boxes: give each annotation its score as `weight`
        /// (train weighs the object's loss terms by it)
        weight: bool = false,
        /// hard: name of the label column
        column: String = "label",
        /// boxes: COCO file listing the images
        images: Option<PathBuf> = "",
    }
}

impl Op for PseudoLabel {
    type Params = Args;
    const NAME: &'static str = "pseudo_label";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str =
        "Predictions on unlabelled images to extra training labels: hard, soft, or boxes.";
    const INPUTS: &'static [&'static str] = &["pred"];

    fn outputs(&self, a: &Args) -> Vec<String> {
        match a.mode {
            Mode::Boxes => vec!["labels.csv".into(), "pseudo_coco.json".into()],
            Mode::Hard | Mode::Soft => vec!["labels.csv".into()],
        }
    }

    fn validate(&self, a: &Args) -> Vec<ParamError> {
        if a.mode == Mode::Boxes && a.images.is_none() {
            return vec![ParamError::new(
                "images",
                "mode = \"boxes\" needs `images`, a COCO file listing the images",
            )];
        }
        Vec::new()
    }

    fn run(&self, a: Args, cx: &mut OpContext) -> Result<(), OpError> {
        let pred_path = a.pred;
        let thr = a.threshold;
        let out = cx.out_dir.join("labels.csv");
        match a.mode {
            Mode::Boxes => {
                let dets = read_dets(&pred_path)?;
                let images = read_coco(a.images.as_deref().unwrap_or("".as_ref()))?;
                let known: std::collections::HashSet<&ImageId> =
                    images.images.iter().map(|i| &i.id).collect();
                if let Some(d) = dets.iter().find(|d| !known.contains(&d.image_id)) {
                    return Err(DataError::new(
                        &pred_path,
                        format!("image {} is not in `images`", d.image_id),
                    )
                    .into());
                }
                let mut coco = Coco {
                    images: images.images.clone(),
                    annotations: Vec::new(),
                    categories: images.categories.clone(),
                };
                let mut best: BTreeMap<&ImageId, (f64, i64, [f64; 4])> = BTreeMap::new();
                for d in dets.iter().filter(|d| d.score >= thr) {
                    coco.annotations.push(CocoAnn {
                        id: coco.annotations.len() as i64 + 1,
                        image_id: d.image_id.clone(),
                        category_id: d.category_id,
                        bbox: d.bbox,
                        area: Some(d.bbox[2] * d.bbox[3]),
                        iscrowd: 0,
                        weight: a.weight.then_some(d.score),
                        // Instance results keep their masks.
                        segmentation: d.segmentation.clone().map(Segmentation::Rle),
                    });
                    let e = best
                        .entry(&d.image_id)
                        .or_insert((f64::NEG_INFINITY, 0, [0.0; 4]));
                    if d.score > e.0 {
                        *e = (d.score, d.category_id, d.bbox);
                    }
                }
                if coco.categories.is_empty() {
                    let mut cats: Vec<i64> =
                        coco.annotations.iter().map(|a| a.category_id).collect();
                    cats.sort_unstable();
                    cats.dedup();
                    coco.categories = cats
                        .into_iter()
                        .map(|id| CocoCategory {
                            id,
                            name: id.to_string(),
                        })
                        .collect();
                }
                let mut t = Table::new(&["label", "bbox"]);
                for (id, (_, c, b)) in &best {
                    t.push(
                        id.to_string(),
                        vec![c.to_string(), b.map(fmt_f64).join(" ")],
                    );
                }
                cx.log(format_args!(
                    "{} boxes on {} images kept",
                    coco.annotations.len(),
                    best.len()
                ));
                t.write(&out)?;
                write_coco(&cx.out_dir.join("pseudo_coco.json"), &coco)?;
            }
            mode @ (Mode::Hard | Mode::Soft) => {
                let pred = Table::read(&pred_path)?;
                pred.index()?;
                let scores = pred.all_floats()?;
                let nc = pred.value_columns().len();
                let soft = mode == Mode::Soft;
                let mut t = if soft {
                    Table::new(
                        &pred
                            .value_columns()
                            .iter()
                            .map(String::as_str)
                            .collect::<Vec<_>>(),
                    )
                } else if a.weight {
                    Table::new(&[a.column.as_str(), "weight"])
                } else {
                    Table::new(&[a.column.as_str()])
                };
                for (r, row) in scores.chunks(nc).enumerate() {
                    let best = super::postprocess::argmax(row);
                    if row[best] < thr {
                        continue;
                    }
                    let cells = if soft {
                        pred.rows[r].clone()
                    } else if a.weight {
                        vec![pred.value_columns()[best].clone(), fmt_f64(row[best])]
                    } else {
                        vec![pred.value_columns()[best].clone()]
                    };
                    t.push(pred.ids[r].clone(), cells);
                }
                cx.log(format_args!(
                    "{mode}: {} of {} rows kept",
                    t.len(),
                    pred.len()
                ));
                t.write(&out)?;
            }
        }
        Ok(())
    }
}
