//! `submission`: writes the competition's CSV, with the column names and id
//! order of its sample submission.
//!
//! ```toml
//! [stages.submit]
//! op = "submission"
//! pred = "${stages.post.labels}"
//! sample = "${inputs.sample_submission}"
//! ```
//!
//! A table's value columns are matched to the sample's by name, or, one to
//! one, by position; label lists (HPA) and run-length masks (HuBMAP) are
//! cells like any other; a directory of mask images named by id becomes
//! run-length encodings. A boxes file becomes detection strings,
//! `"class score x1 y1 x2 y2 ..."` per image (SIIM), `empty` where an image
//! has no box.

use std::collections::HashMap;

use super::{Op, OpContext, OpError, ParamError, ParamKind, ParamSpec, Params};
use crate::data::DataError;
use crate::data::boxes::read_dets;
use crate::data::images;
use crate::data::table::Table;
use crate::value::Value;

pub struct Submission;

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "pred",
        kind: ParamKind::Path,
        default: None,
        help: "The predictions: a table (labels, label lists, values, run-length masks), a boxes file (.json), or a directory of mask images named by id.",
    },
    ParamSpec {
        name: "sample",
        kind: ParamKind::Path,
        default: None,
        help: "The competition's sample submission: its header and id order are kept.",
    },
    ParamSpec {
        name: "class_names",
        kind: ParamKind::Any,
        default: Some("{}"),
        help: "Boxes: a table from category id to the class name written (`{ 0 = \"opacity\" }`); unnamed ids are written as numbers.",
    },
    ParamSpec {
        name: "empty",
        kind: ParamKind::Str,
        default: Some("\"none 1 0 0 1 1\""),
        help: "Boxes: the string for an image without boxes (SIIM's `none 1 0 0 1 1`).",
    },
    ParamSpec {
        name: "id_suffix",
        kind: ParamKind::Str,
        default: Some("\"\""),
        help: "Boxes: appended to each image id to make the submission id (SIIM: `_image`).",
    },
];

impl Op for Submission {
    fn name(&self) -> &'static str {
        "submission"
    }

    fn version(&self) -> u32 {
        1
    }

    fn summary(&self) -> &'static str {
        "Write the competition's CSV in the sample submission's columns and id order."
    }

    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }

    fn inputs(&self) -> &'static [&'static str] {
        &["pred", "sample"]
    }

    fn outputs(&self, _: &Params) -> Result<Vec<String>, ParamError> {
        Ok(vec!["submission.csv".into()])
    }

    fn validate(&self, params: &Params) -> Vec<ParamError> {
        match params.get("class_names") {
            Some(Value::Table(t)) if t.values().all(|v| matches!(v, Value::Str(_))) => Vec::new(),
            Some(Value::Table(_)) => vec![ParamError::new(
                "class_names",
                "class names must be strings",
            )],
            _ => vec![ParamError::new(
                "class_names",
                "class_names must be a table from category id to name",
            )],
        }
    }

    fn run(&self, cx: &mut OpContext) -> Result<(), OpError> {
        let pred_path = cx.path("pred").unwrap_or_default();
        let sample = Table::read(&cx.path("sample").unwrap_or_default())?;
        sample.index()?;
        let mut out = sample.clone();
        let is_json = pred_path.extension().is_some_and(|e| e == "json");
        if pred_path.is_dir() {
            // Mask images named by id: non-zero pixels are the mask (HuBMAP).
            if sample.value_columns().len() != 1 {
                return Err(DataError::at(
                    &sample.path,
                    1,
                    "masks go into a sample with one value column",
                )
                .into());
            }
            let files = images::list(&pred_path)?;
            let by_id: HashMap<String, &std::path::PathBuf> = files
                .iter()
                .map(|f| (f.with_extension("").display().to_string(), f))
                .collect();
            for (r, id) in sample.ids.iter().enumerate() {
                let Some(f) = by_id.get(id) else {
                    return Err(DataError::new(
                        &pred_path,
                        format!("no mask image for id `{id}` of the sample submission"),
                    )
                    .into());
                };
                let img = images::open(&pred_path.join(f))?.to_luma16();
                let mask: Vec<bool> = img.pixels().map(|p| p.0[0] != 0).collect();
                out.rows[r][0] = images::rle(&mask, img.width(), img.height());
            }
        } else if is_json {
            if sample.value_columns().len() != 1 {
                return Err(DataError::at(
                    &sample.path,
                    1,
                    "detection strings go into a sample with one value column",
                )
                .into());
            }
            let names: HashMap<String, String> = match cx.params.get("class_names") {
                Some(Value::Table(t)) => t
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect(),
                _ => HashMap::new(),
            };
            let suffix = cx.str("id_suffix").to_string();
            let mut per_image: HashMap<String, Vec<String>> = HashMap::new();
            let mut dets = read_dets(&pred_path)?;
            dets.sort_by(|a, b| b.score.total_cmp(&a.score));
            for d in &dets {
                let c = d.category_id.to_string();
                let name = names.get(&c).cloned().unwrap_or(c);
                let [x, y, w, h] = d.bbox;
                let s = format!(
                    "{name} {} {} {} {} {}",
                    fmt_num(d.score),
                    fmt_num(x),
                    fmt_num(y),
                    fmt_num(x + w),
                    fmt_num(y + h)
                );
                per_image
                    .entry(format!("{}{suffix}", d.image_id))
                    .or_default()
                    .push(s);
            }
            let empty = cx.str("empty").to_string();
            let known: std::collections::HashSet<&str> =
                sample.ids.iter().map(String::as_str).collect();
            if let Some(id) = per_image.keys().find(|k| !known.contains(k.as_str())) {
                return Err(DataError::new(
                    &pred_path,
                    format!(
                        "image `{id}` is not in the sample submission {}",
                        sample.path.display()
                    ),
                )
                .into());
            }
            for (r, id) in sample.ids.iter().enumerate() {
                out.rows[r][0] = per_image
                    .get(id)
                    .map(|v| v.join(" "))
                    .unwrap_or_else(|| empty.clone());
            }
        } else {
            let pred = Table::read(&pred_path)?;
            let pi = pred.index()?;
            let cols = sample.value_columns();
            let map: Vec<usize> = if cols.iter().all(|c| pred.value_columns().contains(c)) {
                cols.iter().map(|c| pred.col(c)).collect::<Result<_, _>>()?
            } else if pred.value_columns().len() == cols.len() {
                (0..cols.len()).collect()
            } else {
                return Err(DataError::at(
                    &pred.path,
                    1,
                    format!(
                        "columns {} do not match the sample's {} (by name, or one for one)",
                        pred.value_columns().join(", "),
                        cols.join(", ")
                    ),
                )
                .into());
            };
            for (r, id) in sample.ids.iter().enumerate() {
                let Some(&p) = pi.get(id.as_str()) else {
                    return Err(DataError::new(
                        &pred.path,
                        format!("no prediction for id `{id}` of the sample submission"),
                    )
                    .into());
                };
                out.rows[r] = map.iter().map(|&c| pred.rows[p][c].clone()).collect();
            }
            if pred.len() > sample.len() {
                cx.log(format_args!(
                    "{} predicted ids are not in the sample and are left out",
                    pred.len() - sample.len()
                ));
            }
        }
        out.write(&cx.out_dir.join("submission.csv"))?;
        Ok(())
    }
}

fn fmt_num(x: f64) -> String {
    let s = format!("{x:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}
