//! Boxes: COCO results JSON, a list of
//! `{"image_id": int|str, "category_id": int, "bbox": [x, y, w, h], "score": float}`,
//! and COCO ground truth (`images`, `annotations`, `categories`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::coco_rle::{RleJson, Segmentation};
use super::{DataError, read_nonempty, write_atomic};

/// An image id as COCO files spell it: a number or a string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(untagged)]
pub enum ImageId {
    Int(i64),
    Str(String),
}

// By hand rather than `untagged`, which buffers every value: reading a
// million detections is twice as fast.
impl<'de> Deserialize<'de> for ImageId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ImageId;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an image id, an integer or a string")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ImageId, E> {
                Ok(ImageId::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ImageId, E> {
                i64::try_from(v)
                    .map(ImageId::Int)
                    .map_err(|_| E::custom("image id too large"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ImageId, E> {
                Ok(ImageId::Str(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl std::fmt::Display for ImageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageId::Int(i) => write!(f, "{i}"),
            ImageId::Str(s) => f.write_str(s),
        }
    }
}

/// One detection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Det {
    pub image_id: ImageId,
    pub category_id: i64,
    /// `[x, y, width, height]`.
    pub bbox: [f64; 4],
    pub score: f64,
    /// Instance masks: the object's run-length mask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segmentation: Option<RleJson>,
}

fn json_error(path: &Path, e: serde_json::Error) -> DataError {
    let msg = e.to_string();
    // serde_json appends " at line L column C"; keep the column, move the line.
    let text = msg.split(" at line ").next().unwrap_or(&msg);
    DataError::at(
        path,
        e.line().max(1),
        format!("{text} (column {})", e.column()),
    )
}

/// Reads a detections file; scores and coordinates must be finite and
/// widths and heights not negative.
pub fn read_dets(path: &Path) -> Result<Vec<Det>, DataError> {
    let bytes = read_nonempty(path)?;
    let dets: Vec<Det> = serde_json::from_slice(&bytes).map_err(|e| json_error(path, e))?;
    for (i, d) in dets.iter().enumerate() {
        let bad = |what: &str| {
            DataError::new(
                path,
                format!("detection {i} (image {}): {what}", d.image_id),
            )
        };
        if !d.score.is_finite() {
            return Err(bad("score is not a finite number"));
        }
        if d.bbox.iter().any(|v| !v.is_finite()) {
            return Err(bad("bbox has a value that is not a finite number"));
        }
        if d.bbox[2] < 0.0 || d.bbox[3] < 0.0 {
            return Err(bad("bbox has a negative width or height"));
        }
    }
    Ok(dets)
}

/// Writes detections; a score or coordinate that is not a finite number
/// (JSON has none: it would be written `null`) is an error naming the
/// detection, and nothing is written.
pub fn write_dets(path: &Path, dets: &[Det]) -> Result<(), DataError> {
    for (i, d) in dets.iter().enumerate() {
        if !d.score.is_finite() || d.bbox.iter().any(|v| !v.is_finite()) {
            return Err(DataError::new(
                path,
                format!(
                    "detection {i} (image {}) has score {} and bbox {:?}: not finite numbers; not written",
                    d.image_id, d.score, d.bbox
                ),
            ));
        }
    }
    let mut text = serde_json::to_vec(dets).expect("detections serialize");
    text.push(b'\n');
    write_atomic(path, &text)
}

/// A COCO ground-truth file, reduced to what the ops use.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Coco {
    pub images: Vec<CocoImage>,
    #[serde(default)]
    pub annotations: Vec<CocoAnn>,
    #[serde(default)]
    pub categories: Vec<CocoCategory>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CocoImage {
    pub id: ImageId,
    pub width: f64,
    pub height: f64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub file_name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CocoAnn {
    #[serde(default)]
    pub id: i64,
    pub image_id: ImageId,
    pub category_id: i64,
    pub bbox: [f64; 4],
    #[serde(default)]
    pub area: Option<f64>,
    #[serde(default)]
    pub iscrowd: u8,
    /// The object's mask: polygons or a run-length mask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segmentation: Option<Segmentation>,
    /// A pseudo label's weight (podium's own field; absent in COCO files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CocoCategory {
    pub id: i64,
    #[serde(default)]
    pub name: String,
}

/// A COCO file as a table of its images, for `folds`: one row per image,
/// its id the file name's stem (the image id where there is no file name);
/// as columns every other field the images carry (`study_id`, `source_wsi`,
/// … : strings as they are, numbers written out, missing ones empty), then
/// `count` (its annotations) and `category` (its most frequent category
/// id, the smallest on ties; `none` without annotations).
pub fn coco_table(path: &Path) -> Result<super::table::Table, DataError> {
    let bytes = read_nonempty(path)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| json_error(path, e))?;
    let Some(images) = v.get("images").and_then(|i| i.as_array()) else {
        return Err(DataError::new(path, "a COCO file needs an `images` list"));
    };
    let skip = ["id", "file_name", "width", "height"];
    let mut fields: Vec<String> = Vec::new();
    for im in images {
        let Some(o) = im.as_object() else {
            return Err(DataError::new(path, "each of `images` is an object"));
        };
        for k in o.keys() {
            if !skip.contains(&k.as_str()) && !fields.contains(k) {
                fields.push(k.clone());
            }
        }
    }
    fields.sort();
    let coco = coco_from_bytes(path, &bytes)?;
    let mut per_image: HashMap<&ImageId, BTreeMap<i64, usize>> = HashMap::new();
    for a in &coco.annotations {
        *per_image
            .entry(&a.image_id)
            .or_default()
            .entry(a.category_id)
            .or_default() += 1;
    }
    let mut cols: Vec<&str> = fields.iter().map(String::as_str).collect();
    cols.extend(["count", "category"]);
    let mut t = super::table::Table::new(&cols);
    t.path = path.to_path_buf();
    for (raw, im) in images.iter().zip(&coco.images) {
        let id = if im.file_name.is_empty() {
            im.id.to_string()
        } else {
            Path::new(&im.file_name)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let mut row: Vec<String> = fields
            .iter()
            .map(|k| match raw.get(k) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            })
            .collect();
        let cats = per_image.get(&im.id);
        row.push(cats.map_or(0, |c| c.values().sum::<usize>()).to_string());
        row.push(
            match cats.and_then(|c| c.iter().max_by_key(|(k, n)| (**n, std::cmp::Reverse(**k)))) {
                Some((k, _)) => k.to_string(),
                None => "none".to_string(),
            },
        );
        t.push(id, row);
    }
    Ok(t)
}

pub fn read_coco(path: &Path) -> Result<Coco, DataError> {
    coco_from_bytes(path, &read_nonempty(path)?)
}

/// A COCO file's bytes, read and checked; `path` names it in errors.
fn coco_from_bytes(path: &Path, bytes: &[u8]) -> Result<Coco, DataError> {
    let coco: Coco = serde_json::from_slice(bytes).map_err(|e| json_error(path, e))?;
    for im in &coco.images {
        if !(im.width > 0.0 && im.height > 0.0 && im.width.is_finite() && im.height.is_finite()) {
            return Err(DataError::new(
                path,
                format!("image {} has no positive width and height", im.id),
            ));
        }
    }
    let known: std::collections::HashSet<&ImageId> = coco.images.iter().map(|i| &i.id).collect();
    for a in &coco.annotations {
        if !known.contains(&a.image_id) {
            return Err(DataError::new(
                path,
                format!(
                    "annotation {} is on image {}, which is not in `images`",
                    a.id, a.image_id
                ),
            ));
        }
        if a.bbox.iter().any(|v| !v.is_finite()) || a.bbox[2] < 0.0 || a.bbox[3] < 0.0 {
            return Err(DataError::new(
                path,
                format!("annotation {} has a bad bbox {:?}", a.id, a.bbox),
            ));
        }
    }
    Ok(coco)
}

/// Writes a ground-truth file; non-finite sizes and boxes are errors, as in
/// [`write_dets`].
pub fn write_coco(path: &Path, coco: &Coco) -> Result<(), DataError> {
    for im in &coco.images {
        if !im.width.is_finite() || !im.height.is_finite() {
            return Err(DataError::new(
                path,
                format!("image {} has a size that is not finite; not written", im.id),
            ));
        }
    }
    for (i, a) in coco.annotations.iter().enumerate() {
        if a.bbox.iter().chain(a.area.iter()).any(|v| !v.is_finite()) {
            return Err(DataError::new(
                path,
                format!(
                    "annotation {i} (image {}) has a box that is not finite; not written",
                    a.image_id
                ),
            ));
        }
    }
    let mut text = serde_json::to_vec(coco).expect("coco serializes");
    text.push(b'\n');
    write_atomic(path, &text)
}

/// A box as the fusion code sees it: corners normalized to [0, 1].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NBox {
    pub label: i64,
    pub score: f64,
    /// x1, y1, x2, y2.
    pub xyxy: [f64; 4],
}

/// The IoU of two boxes `x1, y1, x2, y2`.
pub fn iou_xyxy(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area_a = (a[2] - a[0]) * (a[3] - a[1]);
    let area_b = (b[2] - b[0]) * (b[3] - b[1]);
    inter / (area_a + area_b - inter)
}

/// The detections of several models, grouped by image (in order of first
/// appearance) with one list per model, coordinates normalized.
pub struct Grouped {
    pub images: Vec<ImageId>,
    /// `boxes[image][model]`.
    pub boxes: Vec<Vec<Vec<NBox>>>,
    /// Width and height per image where boxes were in pixels.
    pub sizes: Option<Vec<(f64, f64)>>,
}

/// How far above 1 a coordinate may reach before the boxes are taken to be
/// in pixels rather than slightly out of range.
pub const PIXEL_LIMIT: f64 = 2.0;

/// Groups the detections of each model by image. With `sizes` (a COCO file
/// with each image's width and height), pixel boxes are normalized; without
/// it, coordinates far above 1 are an error.
pub fn group(
    models: &[(&Path, Vec<Det>)],
    sizes: Option<(&Path, &Coco)>,
) -> Result<Grouped, DataError> {
    let size_of: Option<HashMap<&ImageId, (f64, f64)>> = sizes.map(|(_, c)| {
        c.images
            .iter()
            .map(|i| (&i.id, (i.width, i.height)))
            .collect()
    });
    let mut index: HashMap<ImageId, usize> = HashMap::new();
    let mut g = Grouped {
        images: Vec::new(),
        boxes: Vec::new(),
        sizes: size_of.as_ref().map(|_| Vec::new()),
    };
    for (m, (path, dets)) in models.iter().enumerate() {
        for d in dets {
            let i = match index.get(&d.image_id) {
                Some(&i) => i,
                None => {
                    if let (Some(map), Some(sizes), Some((spath, _))) =
                        (&size_of, &mut g.sizes, sizes)
                    {
                        let Some(&wh) = map.get(&d.image_id) else {
                            return Err(DataError::new(
                                path,
                                format!(
                                    "image {} is not in the image sizes file {}",
                                    d.image_id,
                                    spath.display()
                                ),
                            ));
                        };
                        sizes.push(wh);
                    }
                    let i = g.images.len();
                    index.insert(d.image_id.clone(), i);
                    g.images.push(d.image_id.clone());
                    g.boxes.push(vec![Vec::new(); models.len()]);
                    i
                }
            };
            let [x, y, w, h] = d.bbox;
            let (sx, sy) = match &g.sizes {
                Some(s) => s[i],
                None => {
                    let far = (x + w).max(y + h);
                    if far > PIXEL_LIMIT {
                        return Err(DataError::new(
                            path,
                            format!(
                                "boxes look like pixels (image {}: bbox {:?}); podium fuses boxes normalized to [0, 1]: give `images`, a COCO file with each image's width and height",
                                d.image_id, d.bbox
                            ),
                        ));
                    }
                    (1.0, 1.0)
                }
            };
            g.boxes[i][m].push(NBox {
                label: d.category_id,
                score: d.score,
                xyxy: [x / sx, y / sy, (x + w) / sx, (y + h) / sy],
            });
        }
    }
    Ok(g)
}

/// Reads one detections file per model, applies `f` to each image's boxes
/// (in parallel, on the current rayon pool) and returns the results as
/// detections in the input's units, images in order of first appearance.
pub fn map_images<F>(
    inputs: &[std::path::PathBuf],
    images: Option<&Path>,
    f: F,
) -> Result<Vec<Det>, DataError>
where
    F: Fn(&[Vec<NBox>]) -> Vec<NBox> + Sync,
{
    use rayon::prelude::*;
    let models: Vec<(&Path, Vec<Det>)> = inputs
        .par_iter()
        .map(|p| read_dets(p).map(|d| (p.as_path(), d)))
        .collect::<Result<_, _>>()?;
    let sizes = match images {
        Some(p) => Some((p, read_coco(p)?)),
        None => None,
    };
    let g = group(&models, sizes.as_ref().map(|(p, c)| (*p, c)))?;
    let fused: Vec<Vec<NBox>> = g.boxes.par_iter().map(|per_model| f(per_model)).collect();
    let mut out = Vec::with_capacity(fused.iter().map(Vec::len).sum());
    for (i, boxes) in fused.into_iter().enumerate() {
        let (sx, sy) = g.sizes.as_ref().map(|s| s[i]).unwrap_or((1.0, 1.0));
        for b in boxes {
            let [x1, y1, x2, y2] = b.xyxy;
            out.push(Det {
                image_id: g.images[i].clone(),
                category_id: b.label,
                bbox: [x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy],
                score: b.score,
                segmentation: None,
            });
        }
    }
    Ok(out)
}
