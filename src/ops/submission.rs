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
//! has no box; with `none`, every image also gets SIIM's image-level
//! `none P 0 0 1 1`, P the probability that it shows nothing: one minus its
//! best box's score, or a classifier's probability from a table.

use std::collections::HashMap;

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{Op, OpContext, OpError, ParamError};
use crate::data::DataError;
use crate::data::boxes::read_dets;
use crate::data::images;
use crate::data::table::Table;

pub struct Submission;

crate::choice! {
    /// How a results file becomes a cell per image.
    pub enum Format {
        /// SIIM's detection strings.
        Boxes = "boxes",
        /// HuBMAP 2023's (Open Images') instance masks.
        Masks = "masks",
    }
}

crate::choice! {
    /// Whether every image of a boxes submission also gets a `none` box.
    pub enum NoneBox {
        /// Only an image without boxes: `empty`.
        Off = "off",
        /// `none P 0 0 1 1` for every image, P = 1 − its best box's score.
        Boxes = "boxes",
        /// `none P 0 0 1 1` for every image, P from `none_table`.
        Table = "table",
    }
}

crate::params! {
    /// The parameters of `submission`.
    pub struct Args {
        /// a table, a boxes file, or a directory of mask images
        pred: PathBuf,
        /// the competition's sample submission
        sample: PathBuf,
        /// boxes: category id → class name (`{ 0 = "opacity" }`)
        class_names: BTreeMap<String, String> = {},
        /// boxes: `boxes` (SIIM: `class score x1 y1 x2 y2 …`) or `masks` (HuBMAP 2023, Open
        /// Images: `class score mask …`, each mask the base64 of its zlib-compressed COCO
        /// run-length string; a `height` and a `width` column of the sample are filled in)
        format: Format = "boxes",
        /// format boxes: the string for an image without boxes (format masks: an empty cell)
        empty: String = "none 1 0 0 1 1",
        /// format boxes: `off`, or every image also gets SIIM's `none P 0 0 1 1` after its
        /// boxes, P the probability that it shows nothing: `boxes` 1 − its best box's score
        /// (1 without boxes), `table` from `none_table`
        none: NoneBox = "off",
        /// none = table: a table of ids (the submission's, or without `id_suffix`) and the
        /// probability of `none` (a classifier's `pred.csv`, say)
        none_table: Option<PathBuf> = "",
        /// none = table: the probability's column; empty: the table's only value column
        none_column: String = "",
        /// boxes: appended to image ids to make submission ids (`_image`)
        id_suffix: String = "",
        /// boxes: a COCO file whose `images` name the results' image ids: an image's id in
        /// the submission is its `file_name` without the extension; empty: the ids as written
        images: Option<PathBuf> = "",
    }
}

impl Op for Submission {
    type Params = Args;
    const NAME: &'static str = "submission";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str =
        "Write the competition's CSV in the sample submission's columns and id order.";
    const INPUTS: &'static [&'static str] = &["pred", "sample", "images", "none_table"];

    fn outputs(&self, _: &Args) -> Vec<String> {
        vec!["submission.csv".into()]
    }

    fn validate(&self, a: &Args) -> Vec<ParamError> {
        let mut errors = Vec::new();
        if a.none == NoneBox::Table && a.none_table.is_none() {
            errors.push(ParamError::new(
                "none_table",
                "none = \"table\" needs `none_table`",
            ));
        }
        if a.none != NoneBox::Table && a.none_table.is_some() {
            errors.push(ParamError::new(
                "none_table",
                "is read only with none = \"table\"",
            ));
        }
        if a.none != NoneBox::Off && a.format == Format::Masks {
            errors.push(ParamError::new("none", "applies to format boxes only"));
        }
        errors
    }

    fn run(&self, a: Args, cx: &mut OpContext) -> Result<(), OpError> {
        let pred_path = a.pred;
        let sample = Table::read(&a.sample)?;
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
            let cols = sample.value_columns();
            // Masks fill the sample's `height` and `width`; the strings go
            // into its one other column.
            let sized = a.format == Format::Masks;
            let (hc, wc) = (
                cols.iter().position(|c| sized && c == "height"),
                cols.iter().position(|c| sized && c == "width"),
            );
            let text: Vec<usize> = (0..cols.len())
                .filter(|&c| Some(c) != hc && Some(c) != wc)
                .collect();
            if text.len() != 1 {
                return Err(DataError::at(
                    &sample.path,
                    1,
                    if sized {
                        "instance strings go into a sample with one value column besides height and width"
                    } else {
                        "detection strings go into a sample with one value column"
                    },
                )
                .into());
            }
            let text = text[0];
            let mut sizes: HashMap<String, [usize; 2]> = HashMap::new();
            let names = a.class_names;
            let suffix = a.id_suffix;
            // COCO image id → the file's stem.
            let stems: Option<HashMap<String, String>> = match &a.images {
                Some(p) => Some(
                    crate::data::boxes::read_coco(p)?
                        .images
                        .iter()
                        .map(|im| {
                            let stem = std::path::Path::new(&im.file_name)
                                .file_stem()
                                .map(|s| s.to_string_lossy().into_owned())
                                .unwrap_or_default();
                            (im.id.to_string(), stem)
                        })
                        .collect(),
                ),
                None => None,
            };
            let mut per_image: HashMap<String, Vec<String>> = HashMap::new();
            // Each image's best score (the first of its boxes, best first).
            let mut best: HashMap<String, f64> = HashMap::new();
            // Numbered as in the file, for errors; then best first.
            let mut dets: Vec<(usize, _)> =
                read_dets(&pred_path)?.into_iter().enumerate().collect();
            dets.sort_by(|a, b| b.1.score.total_cmp(&a.1.score));
            for (n, d) in &dets {
                let c = d.category_id.to_string();
                let name = names.get(&c).cloned().unwrap_or(c);
                let [x, y, w, h] = d.bbox;
                let s = match a.format {
                    Format::Boxes => format!(
                        "{name} {} {} {} {} {}",
                        fmt_num(d.score),
                        fmt_num(x),
                        fmt_num(y),
                        fmt_num(x + w),
                        fmt_num(y + h)
                    ),
                    Format::Masks => {
                        let Some(seg) = &d.segmentation else {
                            return Err(DataError::new(
                                &pred_path,
                                format!(
                                    "result {} (image {}) has no segmentation",
                                    n + 1,
                                    d.image_id
                                ),
                            )
                            .into());
                        };
                        let rle = seg.to_rle().map_err(|e| {
                            DataError::new(&pred_path, format!("result {}: {e}", n + 1))
                        })?;
                        let mask = crate::data::coco_rle::oid_encode(&rle);
                        format!("{name} {} {mask}", fmt_num(d.score))
                    }
                };
                let id = d.image_id.to_string();
                let id = match &stems {
                    Some(m) => match m.get(&id) {
                        Some(stem) => stem.clone(),
                        None => {
                            return Err(DataError::new(
                                &pred_path,
                                format!(
                                    "image `{id}` is not in {}",
                                    a.images
                                        .as_ref()
                                        .map(|p| p.display().to_string())
                                        .unwrap_or_default()
                                ),
                            )
                            .into());
                        }
                    },
                    None => id,
                };
                let key = format!("{id}{suffix}");
                if let Some(seg) = &d.segmentation {
                    sizes.insert(key.clone(), seg.size);
                }
                best.entry(key.clone()).or_insert(d.score);
                per_image.entry(key).or_default().push(s);
            }
            let empty = match a.format {
                Format::Boxes => a.empty,
                Format::Masks => String::new(),
            };
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
            let table = match &a.none_table {
                Some(p) if a.none == NoneBox::Table => Some(none_probabilities(p, &a.none_column)?),
                _ => None,
            };
            for (r, id) in sample.ids.iter().enumerate() {
                let boxes = per_image.get(id).map(|v| v.join(" "));
                let none = match (a.none, &table) {
                    (NoneBox::Off, _) => None,
                    (NoneBox::Table, Some(t)) => {
                        let bare = id
                            .strip_suffix(suffix.as_str())
                            .filter(|_| !suffix.is_empty());
                        let p = t.get(id).or_else(|| bare.and_then(|b| t.get(b)));
                        let Some(&p) = p else {
                            let path = a.none_table.as_deref().unwrap_or(&pred_path);
                            return Err(DataError::new(
                                path,
                                format!(
                                    "no `none` probability for id `{id}` of the sample submission"
                                ),
                            )
                            .into());
                        };
                        Some(p)
                    }
                    _ => Some((1.0 - best.get(id).copied().unwrap_or(0.0)).clamp(0.0, 1.0)),
                };
                out.rows[r][text] = match (boxes, none) {
                    (Some(b), Some(p)) => format!("{b} none {} 0 0 1 1", fmt_num(p)),
                    (None, Some(p)) => format!("none {} 0 0 1 1", fmt_num(p)),
                    (Some(b), None) => b,
                    (None, None) => empty.clone(),
                };
                if let Some([h, w]) = sizes.get(id) {
                    if let Some(c) = hc {
                        out.rows[r][c] = h.to_string();
                    }
                    if let Some(c) = wc {
                        out.rows[r][c] = w.to_string();
                    }
                }
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

/// The `none` probabilities of `path`'s ids, from `column` (or the only
/// value column): numbers from 0 to 1.
fn none_probabilities(
    path: &std::path::Path,
    column: &str,
) -> Result<HashMap<String, f64>, OpError> {
    let t = Table::read(path)?;
    t.index()?;
    let c = if column.is_empty() {
        if t.value_columns().len() != 1 {
            return Err(DataError::at(
                path,
                1,
                format!(
                    "{} value columns: name the probability's with `none_column`",
                    t.value_columns().len()
                ),
            )
            .into());
        }
        0
    } else {
        t.col(column)?
    };
    let mut out = HashMap::new();
    for ((id, row), &line) in t.ids.iter().zip(&t.rows).zip(&t.lines) {
        let p = row[c]
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|p| (0.0..=1.0).contains(p));
        let Some(p) = p else {
            return Err(DataError::at(
                path,
                line,
                format!("`{}` is no probability (a number from 0 to 1)", row[c]),
            )
            .into());
        };
        out.insert(id.clone(), p);
    }
    Ok(out)
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
