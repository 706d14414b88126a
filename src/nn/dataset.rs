//! Labelled images for training: a labels table joined with an image
//! directory by id, turned into per-sample targets for the task. Class
//! names come from the table (sorted, numerically when they are numbers)
//! or from the manifest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::models::Task;
use crate::data::DataError;
use crate::data::images;
use crate::data::table::Table;
use crate::metrics::classify::{Label, labels};

/// Samples with their targets.
#[derive(Default)]
pub struct Samples {
    pub ids: Vec<String>,
    pub paths: Vec<PathBuf>,
    /// Per sample: the class distribution (`classes` long), or the value (1 long).
    pub targets: Vec<Vec<f32>>,
    /// Per sample: the box in source pixels `x, y, w, h` (task box).
    pub boxes: Vec<[f64; 4]>,
    pub weights: Vec<f32>,
    /// Per sample: its objects (task detect), none for an image without.
    pub objects: Vec<Vec<Object>>,
    /// Per sample: where its mask comes from (task segment).
    pub masks: Vec<crate::data::masks::MaskSource>,
}

/// One object of a detection sample: class index, box `x, y, w, h` in
/// source pixels, weight (1, or a pseudo label's).
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub class: usize,
    pub bbox: [f64; 4],
    pub weight: f32,
    /// Its mask (COCO polygons or run lengths), where the file gives one:
    /// what task instance learns; an object without one is its box.
    pub segm: Option<crate::data::coco_rle::Segmentation>,
}

impl Samples {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn extend(&mut self, o: Samples) {
        self.ids.extend(o.ids);
        self.paths.extend(o.paths);
        self.targets.extend(o.targets);
        self.boxes.extend(o.boxes);
        self.weights.extend(o.weights);
        self.objects.extend(o.objects);
        self.masks.extend(o.masks);
    }
}

/// Image files of a directory by id (file name without its extension, and
/// relative path without its extension).
pub fn image_index(dir: &Path) -> Result<HashMap<String, PathBuf>, DataError> {
    let mut m = HashMap::new();
    for rel in images::list(dir)? {
        let stem = rel.with_extension("");
        if let Some(name) = stem.file_name().and_then(|s| s.to_str()) {
            m.entry(name.to_string()).or_insert_with(|| dir.join(&rel));
        }
        if let Some(s) = stem.to_str() {
            m.entry(s.to_string()).or_insert_with(|| dir.join(&rel));
        }
    }
    Ok(m)
}

/// The label column: `name` when given, else `label` (`Target` for
/// multilabel) when present, else the table's first value column that is
/// not `bbox`, `fold` or `weight`.
pub fn label_column(t: &Table, name: &str, task: Task) -> Result<usize, DataError> {
    if !name.is_empty() {
        return t.col(name);
    }
    let prefer = if task == Task::Multilabel {
        "Target"
    } else {
        "label"
    };
    if let Ok(c) = t.col(prefer) {
        return Ok(c);
    }
    let cols = t.value_columns();
    cols.iter()
        .position(|c| !["bbox", "fold", "weight"].contains(&c.as_str()))
        .ok_or_else(|| DataError::new(&t.path, "no label column"))
}

/// The class names of a task's label cells, in order: numbers ascending
/// when every label is a number, else text ascending.
pub fn class_names(t: &Table, col: usize, task: Task) -> Vec<String> {
    let cells: Vec<&str> = match task {
        Task::Multilabel => t.strs(col).flat_map(str::split_whitespace).collect(),
        _ => t.strs(col).map(str::trim).collect(),
    };
    let mut ls: Vec<(Label, &str)> = labels(&cells).into_iter().zip(cells).collect();
    ls.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    ls.dedup_by(|a, b| a.0 == b.0);
    ls.into_iter().map(|(_, s)| s.to_string()).collect()
}

/// Reads the samples of `table` whose ids `keep` accepts, images from `index`.
/// A table whose columns include every class name gives soft targets
/// (probabilities, as `pseudo_label` writes them); else the label column
/// gives hard ones. A `weight` column weights the samples (else `weight`).
#[allow(clippy::too_many_arguments)]
pub fn read(
    t: &Table,
    task: Task,
    label_col: &str,
    classes: &[String],
    index: &HashMap<String, PathBuf>,
    images_dir: &Path,
    weight: f32,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Samples, DataError> {
    let soft: Option<Vec<usize>> = match task {
        Task::Classify | Task::Multilabel => classes.iter().map(|c| t.col(c).ok()).collect(),
        _ => None,
    };
    let col = if soft.is_some() {
        0
    } else {
        label_column(t, label_col, task)?
    };
    let bbox_col = if task == Task::Box {
        Some(t.col("bbox")?)
    } else {
        None
    };
    let wcol = t.col("weight").ok();
    let mut s = Samples::default();
    for (row, id) in t.ids.iter().enumerate() {
        if !keep(id) {
            continue;
        }
        let path = index.get(id.as_str()).ok_or_else(|| {
            DataError::at(
                &t.path,
                t.lines[row],
                format!("id `{id}` has no image in {}", images_dir.display()),
            )
        })?;
        let target = match (&soft, task) {
            (Some(cols), _) => cols
                .iter()
                .map(|&c| t.float(row, c).map(|v| v as f32))
                .collect::<Result<Vec<f32>, _>>()?,
            (None, Task::Regress) => vec![t.float(row, col)? as f32],
            (None, Task::Multilabel) => {
                let cell = t.rows[row][col].as_str();
                let mut v = vec![0f32; classes.len()];
                for l in cell.split_whitespace() {
                    v[class_of(t, row, col, l, classes)?] = 1.0;
                }
                v
            }
            (None, _) => {
                let mut v = vec![0f32; classes.len()];
                v[class_of(t, row, col, t.rows[row][col].as_str().trim(), classes)?] = 1.0;
                v
            }
        };
        let bx = match bbox_col {
            Some(c) => parse_box(t.rows[row][c].as_str()).ok_or_else(|| {
                t.cell_error(row, c, "is not a box `x y w h` of four finite numbers")
            })?,
            None => [0.0; 4],
        };
        let w = match wcol {
            Some(c) => t.float(row, c)? as f32,
            None => weight,
        };
        s.ids.push(id.to_string());
        s.paths.push(path.clone());
        s.targets.push(target);
        s.boxes.push(bx);
        s.weights.push(w);
    }
    Ok(s)
}

fn class_of(
    t: &Table,
    row: usize,
    col: usize,
    l: &str,
    classes: &[String],
) -> Result<usize, DataError> {
    let want = labels(&[l]).pop();
    classes
        .iter()
        .position(|c| labels(&[c.as_str()]).pop() == want)
        .ok_or_else(|| {
            t.cell_error(
                row,
                col,
                &format!(
                    "holds `{l}`, which is not one of the classes {}",
                    classes.join(", ")
                ),
            )
        })
}

/// A box cell `x y w h`.
pub fn parse_box(cell: &str) -> Option<[f64; 4]> {
    let v: Vec<f64> = cell
        .split_whitespace()
        .map(|x| x.parse::<f64>().ok().filter(|x| x.is_finite()))
        .collect::<Option<_>>()?;
    <[f64; 4]>::try_from(v).ok()
}

/// The samples of a COCO ground-truth file whose ids `keep` accepts: one per
/// image (an image without annotations is a sample without objects), its
/// id the file name's stem (the image id where `file_name` is empty).
/// Categories become classes in `categories`' order of id; crowd
/// annotations are left out of training, as torchvision's references do.
/// A `weight` per annotation (what `pseudo_label` writes) weights it.
pub fn read_coco(
    path: &Path,
    coco: &crate::data::boxes::Coco,
    weight: f32,
    index: &HashMap<String, PathBuf>,
    images_dir: &Path,
    keep: &dyn Fn(&str) -> bool,
) -> Result<(Samples, Vec<crate::data::boxes::ImageId>), DataError> {
    let cats = category_ids(coco);
    let mut by_image: HashMap<&crate::data::boxes::ImageId, Vec<Object>> = HashMap::new();
    for a in &coco.annotations {
        if a.iscrowd != 0 || a.bbox[2] <= 0.0 || a.bbox[3] <= 0.0 {
            continue;
        }
        let class = cats
            .iter()
            .position(|&c| c == a.category_id)
            .ok_or_else(|| {
                DataError::new(
                    path,
                    format!(
                        "annotation {} has category {}, which is not in `categories`",
                        a.id, a.category_id
                    ),
                )
            })?;
        by_image.entry(&a.image_id).or_default().push(Object {
            class,
            bbox: a.bbox,
            weight: a.weight.map_or(weight, |w| w as f32),
            segm: a.segmentation.clone(),
        });
    }
    let mut s = Samples::default();
    let mut ids = Vec::new();
    for im in &coco.images {
        let id = coco_sample_id(im);
        if !keep(&id) {
            continue;
        }
        let p = index.get(id.as_str()).ok_or_else(|| {
            DataError::new(
                path,
                format!(
                    "image {} (`{id}`) has no file in {}",
                    im.id,
                    images_dir.display()
                ),
            )
        })?;
        s.ids.push(id);
        s.paths.push(p.clone());
        s.targets.push(Vec::new());
        s.boxes.push([0.0; 4]);
        s.weights.push(weight);
        s.objects.push(by_image.remove(&im.id).unwrap_or_default());
        ids.push(im.id.clone());
    }
    Ok((s, ids))
}

/// A COCO image's sample id: its file name without directories or
/// extension, else its id.
pub fn coco_sample_id(im: &crate::data::boxes::CocoImage) -> String {
    Path::new(&im.file_name)
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .map_or_else(|| im.id.to_string(), str::to_string)
}

/// The category ids of a COCO file in class order: `categories` sorted by
/// id, else the ids the annotations use.
pub fn category_ids(coco: &crate::data::boxes::Coco) -> Vec<i64> {
    let mut ids: Vec<i64> = if coco.categories.is_empty() {
        coco.annotations.iter().map(|a| a.category_id).collect()
    } else {
        coco.categories.iter().map(|c| c.id).collect()
    };
    ids.sort_unstable();
    ids.dedup();
    ids
}
