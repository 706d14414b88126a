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

use std::collections::BTreeMap;

use super::{Op, OpContext, OpError, ParamError, ParamKind, ParamSpec, Params};
use crate::data::DataError;
use crate::data::boxes::{Coco, CocoAnn, CocoCategory, ImageId, read_coco, read_dets, write_coco};
use crate::data::table::{Table, fmt_f64};
use crate::value::Value;

pub struct PseudoLabel;

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "pred",
        kind: ParamKind::Path,
        default: None,
        help: "Predictions on the unlabelled images: a table of class probabilities (hard, soft) or a boxes file (boxes).",
    },
    ParamSpec {
        name: "mode",
        kind: ParamKind::Enum(&["hard", "soft", "boxes"]),
        default: Some("\"hard\""),
        help: "hard (argmax over a confidence threshold), soft (probabilities kept), boxes (boxes over a score threshold).",
    },
    ParamSpec {
        name: "threshold",
        kind: ParamKind::Float,
        default: Some("0.0"),
        help: "Rows (boxes) whose best probability (score) is below this are left out.",
    },
    ParamSpec {
        name: "weight",
        kind: ParamKind::Bool,
        default: Some("false"),
        help: "hard: add a `weight` column, the row's best probability, for per-sample loss weights.",
    },
    ParamSpec {
        name: "column",
        kind: ParamKind::Str,
        default: Some("\"label\""),
        help: "hard: name of the label column.",
    },
    ParamSpec {
        name: "images",
        kind: ParamKind::Path,
        default: Some("\"\""),
        help: "boxes: a COCO file listing the images (ids, sizes, file names) the boxes are on; required for boxes.",
    },
];

impl Op for PseudoLabel {
    fn name(&self) -> &'static str {
        "pseudo_label"
    }

    fn version(&self) -> u32 {
        1
    }

    fn summary(&self) -> &'static str {
        "Predictions on unlabelled images to extra training labels: hard, soft, or boxes."
    }

    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }

    fn inputs(&self) -> &'static [&'static str] {
        &["pred"]
    }

    fn outputs(&self, params: &Params) -> Result<Vec<String>, ParamError> {
        Ok(match params.get("mode").and_then(Value::as_str) {
            Some("boxes") => vec!["labels.csv".into(), "pseudo_coco.json".into()],
            _ => vec!["labels.csv".into()],
        })
    }

    fn validate(&self, params: &Params) -> Vec<ParamError> {
        let boxes = params.get("mode").and_then(Value::as_str) == Some("boxes");
        let images = super::is_given(params, "images");
        if boxes && !images {
            return vec![ParamError::new(
                "images",
                "mode = \"boxes\" needs `images`, a COCO file listing the images",
            )];
        }
        Vec::new()
    }

    fn run(&self, cx: &mut OpContext) -> Result<(), OpError> {
        let pred_path = cx.path("pred").unwrap_or_default();
        let thr = cx.f64("threshold");
        let out = cx.out_dir.join("labels.csv");
        let mode = cx.str("mode").to_string();
        match mode.as_str() {
            "boxes" => {
                let dets = read_dets(&pred_path)?;
                let images = read_coco(&cx.path("images").unwrap_or_default())?;
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
            mode => {
                let pred = Table::read(&pred_path)?;
                pred.index()?;
                let scores = pred.all_floats()?;
                let nc = pred.value_columns().len();
                let soft = mode == "soft";
                let mut t = if soft {
                    Table::new(
                        &pred
                            .value_columns()
                            .iter()
                            .map(String::as_str)
                            .collect::<Vec<_>>(),
                    )
                } else if cx.bool("weight") {
                    Table::new(&[cx.str("column"), "weight"])
                } else {
                    Table::new(&[cx.str("column")])
                };
                for (r, row) in scores.chunks(nc).enumerate() {
                    let best = super::postprocess::argmax(row);
                    if row[best] < thr {
                        continue;
                    }
                    let cells = if soft {
                        pred.rows[r].clone()
                    } else if cx.bool("weight") {
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
