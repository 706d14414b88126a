//! Segmentation masks: where a sample's mask comes from, decoded into one
//! binary plane per class; Kaggle's run-length encoding; mask PNGs.
//!
//! Three sources (see `docs/formats.md`):
//! - a class-index PNG per image (`masks/<id>.png`): pixel value 0 is
//!   background, value c + 1 is class c; with one class, any value above
//!   0 (so 0/1 and 0/255 masks both work);
//! - a binary PNG per image and class (`masks/<class>/<id>.png`), where
//!   classes may overlap;
//! - a run-length encoding in a labels table (HuBMAP's and SIIM-ACR's
//!   `start length` pairs, pixels numbered from 1 down each column), one
//!   class;
//! - a COCO ground-truth file: each class's plane the union of its
//!   objects' `segmentation`s (polygons or run lengths; an object without
//!   one, its box).

use std::path::{Path, PathBuf};

use image::GrayImage;

use super::DataError;
use super::images;

/// Where a sample's mask comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum MaskSource {
    /// No mask: every pixel background.
    Empty,
    /// A class-index PNG.
    Index(PathBuf),
    /// One binary PNG per class; `None`: none of that class.
    PerClass(Vec<Option<PathBuf>>),
    /// Kaggle run-length encoding (one class); `file` names it in errors.
    Rle { rle: String, file: PathBuf },
    /// Task instance: one plane per object, from its COCO `segmentation`
    /// (its box `x, y, w, h` where it has none); `file`, the COCO file,
    /// names it in errors.
    Objects {
        segms: Vec<(Option<crate::data::coco_rle::Segmentation>, [f64; 4])>,
        file: PathBuf,
    },
    /// Task segment from a COCO file: per class, the union of its objects'
    /// masks (`(class, segmentation, box)`); `file` names it in errors.
    Classes {
        objects: Vec<(usize, Option<crate::data::coco_rle::Segmentation>, [f64; 4])>,
        file: PathBuf,
    },
}

/// An object's mask at `w × h`: its segmentation, or its box without one.
fn object_bits(
    segm: &Option<crate::data::coco_rle::Segmentation>,
    bbox: [f64; 4],
    (w, h): (u32, u32),
    file: &Path,
) -> Result<Vec<bool>, DataError> {
    use crate::data::coco_rle::Rle;
    let (hu, wu) = (h as usize, w as usize);
    let r = match segm {
        Some(s) => s.to_rle(hu, wu).map_err(|e| DataError::new(file, e))?,
        None => Rle::from_bbox(bbox, hu, wu),
    };
    if (r.h, r.w) != (hu, wu) {
        return Err(DataError::new(
            file,
            format!(
                "a run-length mask of {}×{} on an image of {w}×{h}",
                r.w, r.h
            ),
        ));
    }
    Ok(r.decode())
}

/// One plane per class, 1 where the class is, else 0, `w × h`.
pub type Planes = Vec<GrayImage>;

impl MaskSource {
    /// Decodes the mask of an image of `w × h` into `classes` planes; a
    /// mask of another size, or a class index beyond `classes`, is an
    /// error naming the file.
    pub fn decode(&self, classes: usize, w: u32, h: u32) -> Result<Planes, DataError> {
        let empty = || GrayImage::new(w, h);
        match self {
            MaskSource::Empty => Ok((0..classes).map(|_| empty()).collect()),
            MaskSource::Index(p) => {
                let m = open_gray(p, w, h)?;
                let mut planes: Planes = (0..classes).map(|_| empty()).collect();
                for (x, y, v) in m.enumerate_pixels() {
                    let v = v.0[0] as usize;
                    if v == 0 {
                        continue;
                    }
                    let c = if classes == 1 { 0 } else { v - 1 };
                    let Some(plane) = planes.get_mut(c) else {
                        return Err(DataError::new(
                            p,
                            format!(
                                "pixel ({x}, {y}) has class index {v}, beyond the {classes} classes \
                                 (0 is background, 1 to {classes} the classes)"
                            ),
                        ));
                    };
                    plane.put_pixel(x, y, image::Luma([1]));
                }
                Ok(planes)
            }
            MaskSource::PerClass(files) => files
                .iter()
                .map(|f| match f {
                    None => Ok(empty()),
                    Some(p) => {
                        let mut m = open_gray(p, w, h)?;
                        m.pixels_mut().for_each(|v| v.0[0] = u8::from(v.0[0] > 0));
                        Ok(m)
                    }
                })
                .collect(),
            MaskSource::Rle { rle, file } => {
                let bits = rle_decode(rle, w, h).map_err(|e| DataError::new(file, e))?;
                let mut planes: Planes = (0..classes).map(|_| empty()).collect();
                for (i, b) in bits.into_iter().enumerate() {
                    if b {
                        planes[0].put_pixel(i as u32 % w, i as u32 / w, image::Luma([1]));
                    }
                }
                Ok(planes)
            }
            MaskSource::Objects { segms, file } => segms
                .iter()
                .map(|(s, bbox)| {
                    let bits = object_bits(s, *bbox, (w, h), file)?;
                    Ok(GrayImage::from_fn(w, h, |x, y| {
                        image::Luma([u8::from(bits[(y * w + x) as usize])])
                    }))
                })
                .collect(),
            MaskSource::Classes { objects, file } => {
                let mut planes: Planes = (0..classes).map(|_| empty()).collect();
                for (class, s, bbox) in objects {
                    let Some(plane) = planes.get_mut(*class) else {
                        return Err(DataError::new(
                            file,
                            format!("an object of class {class}, beyond the {classes} classes"),
                        ));
                    };
                    let bits = object_bits(s, *bbox, (w, h), file)?;
                    for (p, b) in plane.iter_mut().zip(bits) {
                        *p |= u8::from(b);
                    }
                }
                Ok(planes)
            }
        }
    }
}

/// A mask image as one 8-bit channel, of the image's size.
fn open_gray(p: &Path, w: u32, h: u32) -> Result<GrayImage, DataError> {
    let img = images::open(p)?;
    if (img.width(), img.height()) != (w, h) {
        return Err(DataError::new(
            p,
            format!(
                "the mask is {}×{}, its image {w}×{h}",
                img.width(),
                img.height()
            ),
        ));
    }
    Ok(match img {
        image::DynamicImage::ImageLuma8(m) => m,
        // 16-bit masks: values above 255 saturate; colour masks: the first
        // channel.
        image::DynamicImage::ImageLuma16(m) => GrayImage::from_fn(w, h, |x, y| {
            image::Luma([m.get_pixel(x, y).0[0].min(255) as u8])
        }),
        other => {
            let rgb = other.to_rgb8();
            GrayImage::from_fn(w, h, |x, y| image::Luma([rgb.get_pixel(x, y).0[0]]))
        }
    })
}

/// Decodes Kaggle's run-length encoding (`start length` pairs, pixels
/// numbered from 1 down each column, then across) into a row-major mask.
pub fn rle_decode(rle: &str, w: u32, h: u32) -> Result<Vec<bool>, String> {
    let n = u64::from(w) * u64::from(h);
    let mut out = vec![false; n as usize];
    let nums: Vec<u64> = rle
        .split_whitespace()
        .map(|s| {
            s.parse::<u64>()
                .map_err(|_| format!("`{s}` in a run-length encoding is not a whole number"))
        })
        .collect::<Result<_, _>>()?;
    if !nums.len().is_multiple_of(2) {
        return Err("a run-length encoding needs `start length` pairs".into());
    }
    for pair in nums.chunks(2) {
        let (start, len) = (pair[0], pair[1]);
        if start == 0 || start - 1 + len > n {
            return Err(format!(
                "the run {start} {len} lies outside the {w}×{h} image's {n} pixels"
            ));
        }
        for k in start - 1..start - 1 + len {
            let (x, y) = (k / u64::from(h), k % u64::from(h));
            out[(y * u64::from(w) + x) as usize] = true;
        }
    }
    Ok(out)
}

/// The class-index masks under `dir`'s largest value: what the classes of
/// a class-index mask set are when the manifest does not name them (1 for
/// 0/1 and 0/255 masks).
pub fn max_index(paths: &[PathBuf]) -> Result<usize, DataError> {
    let mut top = 0usize;
    for p in paths {
        let m = images::open(p)?.to_luma8();
        top = top.max(m.pixels().map(|v| v.0[0] as usize).max().unwrap_or(0));
    }
    Ok(if top == 255 { 1 } else { top })
}

/// Writes a single-channel 8-bit PNG (atomically).
pub fn save_gray(m: &GrayImage, path: &Path) -> Result<(), DataError> {
    images::save(&image::DynamicImage::ImageLuma8(m.clone()), path, 95)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rle_round_trips_through_kaggle_encoding() {
        let (w, h) = (5, 3);
        let mask: Vec<bool> = (0..w * h).map(|i| (i * 7) % 3 == 0 || i == 14).collect();
        let rle = images::rle(&mask, w, h);
        assert_eq!(rle_decode(&rle, w, h).unwrap(), mask);
        assert!(rle_decode("1 2 3", w, h).unwrap_err().contains("pairs"));
        assert!(rle_decode("14 3", w, h).unwrap_err().contains("outside"));
        assert!(rle_decode("", w, h).unwrap().iter().all(|b| !b));
    }

    #[test]
    fn class_index_masks_split_into_planes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.png");
        let m = GrayImage::from_fn(4, 2, |x, _| image::Luma([x as u8 % 3]));
        save_gray(&m, &p).unwrap();
        let planes = MaskSource::Index(p.clone()).decode(2, 4, 2).unwrap();
        assert_eq!(planes[0].as_raw(), &[0, 1, 0, 0, 0, 1, 0, 0]);
        assert_eq!(planes[1].as_raw(), &[0, 0, 1, 0, 0, 0, 1, 0]);
        // One class: any value above 0.
        let one = MaskSource::Index(p.clone()).decode(1, 4, 2).unwrap();
        assert_eq!(one[0].as_raw(), &[0, 1, 1, 0, 0, 1, 1, 0]);
        let e = MaskSource::Index(p.clone()).decode(1, 5, 2).unwrap_err();
        assert!(e.message.contains("4×2") && e.path == p, "{e}");
        let three = GrayImage::from_fn(2, 1, |x, _| image::Luma([x as u8 * 3]));
        save_gray(&three, &p).unwrap();
        let e = MaskSource::Index(p.clone()).decode(2, 2, 1).unwrap_err();
        assert!(e.message.contains("class index 3"), "{e}");
    }

    /// A COCO file's objects for task segment: each class's plane is the
    /// union of its objects' masks (boxes where an object has no
    /// segmentation, run lengths column-major as COCO writes them); a class
    /// beyond the classes and a mask of another size are errors naming
    /// the file.
    #[test]
    fn coco_objects_merge_into_one_plane_per_class() {
        use crate::data::coco_rle::{Counts, Rle, RleJson, Segmentation};
        let (w, h) = (6u32, 4u32);
        let file = PathBuf::from("gt.json");
        // Column x = 5, every row: COCO counts run down the columns.
        let column = Segmentation::Rle(RleJson {
            size: [4, 6],
            counts: Counts::Raw(vec![20, 4]),
        });
        let (a, b) = ([0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0]);
        let src = MaskSource::Classes {
            objects: vec![
                (0, None, a),
                (1, Some(column.clone()), [5.0, 0.0, 1.0, 4.0]),
                (0, None, b),
            ],
            file: file.clone(),
        };
        let planes = src.decode(2, w, h).unwrap();
        let boxes: Vec<u8> = Rle::from_bbox(a, 4, 6)
            .decode()
            .iter()
            .zip(Rle::from_bbox(b, 4, 6).decode())
            .map(|(x, y)| u8::from(*x || y))
            .collect();
        assert!(
            boxes.iter().filter(|&&v| v == 1).count() > 4,
            "two overlapping boxes"
        );
        assert_eq!(planes[0].as_raw(), &boxes);
        let col: Vec<u8> = (0..w * h).map(|i| u8::from(i % w == 5)).collect();
        assert_eq!(planes[1].as_raw(), &col);
        let e = src.decode(1, w, h).unwrap_err();
        assert!(
            e.message.contains("class 1, beyond the 1 classes") && e.path == file,
            "{e}"
        );
        let wrong = MaskSource::Classes {
            objects: vec![(0, Some(column), [0.0; 4])],
            file: file.clone(),
        };
        let e = wrong.decode(1, 5, 4).unwrap_err();
        assert!(
            e.message.contains("on an image of") && e.path == file,
            "{e}"
        );
    }
}
