//! `synth`: small data sets made deterministically from a seed, shaped like
//! the competitions' (train and test images, labels, a sample submission),
//! for the demo pipelines and the tests. Outputs: `train_images`,
//! `test_images` (directories of PNGs named by id), `train.csv`, `test.csv`,
//! `sample_submission.csv` (and COCO files for `detect`, class-index mask
//! directories `train_masks`, `test_masks` for `segment`).
//!
//! ```toml
//! [stages.data]
//! op = "synth"
//! task = "multilabel"
//! n_train = 400
//! size = 32
//! ```
//!
//! Each image is noise with shapes drawn on it; a class is a shape (disc,
//! square, triangle, cross, ring, bar, diamond, hollow square, ...), with a
//! random colour, size and place.
//!
//! | task | label columns |
//! |---|---|
//! | classify | `label`: the one shape's class |
//! | multilabel | `Target`: the classes drawn, space-separated (at least one) |
//! | regress | `grade`: 0..classes-1, the brightness of a central disc, as a retinopathy grade |
//! | box | `label`, `bbox` (`x y w h` pixels): one shape |
//! | detect | `count`; boxes and each object's visible mask (`segmentation`, a run-length mask) in `train_coco.json` / `test_coco.json` |
//! | segment | `mask`: run-length encoding of the drawn shapes; `train_masks/<id>.png`, `test_masks/<id>.png`: each pixel's shape class + 1 (0: background; the last shape drawn wins) |

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::{Op, OpContext, OpError, ParamError};
use crate::data::boxes::{Coco, CocoAnn, CocoCategory, CocoImage, ImageId, write_coco};
use crate::data::coco_rle::{Rle, RleJson, Segmentation};
use crate::data::images;
use crate::data::table::Table;

pub struct Synth;

crate::choice! {
    /// The kind of data set made.
    pub enum Task {
        Classify = "classify",
        Multilabel = "multilabel",
        Regress = "regress",
        Box = "box",
        Detect = "detect",
        Segment = "segment",
    }
}

crate::params! {
    /// The parameters of `synth`.
    pub struct Args {
        /// the kind of data set
        task: Task = "classify",
        /// training images
        n_train: i64 = 200,
        /// test images
        n_test: i64 = 100,
        /// side of the square images
        size: i64 = 32,
        /// classes (grades for regress), 2 to 8; detect and segment: 1 to 8
        classes: i64 = 3,
        /// detect and segment: the fraction of images without any shape (SIIM's "none")
        empty: f64 = 0.0,
        /// standard deviation of the background noise
        noise: f64 = 0.1,
        /// the seed
        seed: i64 = 0,
    }
}

impl Op for Synth {
    type Params = Args;
    const NAME: &'static str = "synth";
    // 3: detect's sample submission is SIIM's `id,PredictionString`.
    // 4: detect's annotations carry each object's visible mask; shapes
    //    covered whole are left out.
    const VERSION: u32 = 4;
    const SUMMARY: &'static str = "Generate a small competition-shaped data set (images, labels, sample submission) from a seed.";

    fn outputs(&self, a: &Args) -> Vec<String> {
        let mut out: Vec<String> = [
            "train_images",
            "test_images",
            "train.csv",
            "test.csv",
            "sample_submission.csv",
        ]
        .map(String::from)
        .to_vec();
        if a.task == Task::Detect {
            out.extend(["train_coco.json".into(), "test_coco.json".into()]);
        }
        if a.task == Task::Segment {
            out.extend(["train_masks".into(), "test_masks".into()]);
        }
        out
    }

    fn validate(&self, a: &Args) -> Vec<ParamError> {
        let mut errs = Vec::new();
        let dense = matches!(a.task, Task::Detect | Task::Segment);
        let least = if dense { 1 } else { 2 };
        if !(least..=8).contains(&a.classes) {
            errs.push(ParamError::new(
                "classes",
                format!("classes must be from {least} to 8 for task {}", a.task),
            ));
        }
        if !(0.0..=1.0).contains(&a.empty) {
            errs.push(ParamError::new("empty", "empty must be from 0 to 1"));
        } else if a.empty > 0.0 && !dense {
            errs.push(ParamError::new(
                "empty",
                "empty applies to tasks detect and segment only",
            ));
        }
        if !(8..=4096).contains(&a.size) {
            errs.push(ParamError::new(
                "size",
                "size must be from 8 to 4096 pixels",
            ));
        }
        if a.n_train < 1 || a.n_test < 1 {
            errs.push(ParamError::new(
                "n_train",
                "n_train and n_test must be at least 1",
            ));
        }
        errs
    }

    fn run(&self, a: Args, cx: &mut OpContext) -> Result<(), OpError> {
        let spec = Spec {
            task: a.task,
            size: a.size as u32,
            classes: a.classes as u32,
            noise: a.noise,
            empty: a.empty,
            seed: a.seed as u64,
        };
        let (n_train, n_test) = (a.n_train as usize, a.n_test as usize);
        let pool = cx.pool()?;
        for (split, n, offset) in [("train", n_train, 0u64), ("test", n_test, 1 << 40)] {
            cx.check_cancel()?;
            let samples: Vec<Sample> = pool.install(|| {
                (0..n)
                    .into_par_iter()
                    .map(|i| spec.sample(offset + i as u64))
                    .collect()
            });
            let dir = cx.out_dir.join(format!("{split}_images"));
            pool.install(|| {
                samples.par_iter().enumerate().try_for_each(|(i, s)| {
                    images::save(
                        &image::DynamicImage::ImageRgb8(s.image.clone()),
                        &dir.join(format!("{split}_{i:05}.png")),
                        95,
                    )
                })
            })?;
            if spec.task == Task::Segment {
                let dir = cx.out_dir.join(format!("{split}_masks"));
                pool.install(|| {
                    samples.par_iter().enumerate().try_for_each(|(i, s)| {
                        let m = image::GrayImage::from_raw(spec.size, spec.size, s.classes.clone())
                            .expect("size² pixels");
                        crate::data::masks::save_gray(&m, &dir.join(format!("{split}_{i:05}.png")))
                    })
                })?;
            }
            let (table, coco) = spec.labels(split, &samples);
            table.write(&cx.out_dir.join(format!("{split}.csv")))?;
            if let Some(c) = coco {
                write_coco(&cx.out_dir.join(format!("{split}_coco.json")), &c)?;
            }
            if split == "test" && spec.task == Task::Detect {
                // SIIM's: one detection string per image.
                let mut sub = Table::new(&["PredictionString"]);
                for id in &table.ids {
                    sub.push(id.clone(), vec!["none 1 0 0 1 1".to_string()]);
                }
                sub.write(&cx.out_dir.join("sample_submission.csv"))?;
            } else if split == "test" {
                let mut sub = Table::new(
                    &table
                        .value_columns()
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>(),
                );
                for id in &table.ids {
                    sub.push(
                        id.clone(),
                        table
                            .value_columns()
                            .iter()
                            .map(|_| "0".to_string())
                            .collect(),
                    );
                }
                sub.write(&cx.out_dir.join("sample_submission.csv"))?;
            }
        }
        cx.log(format_args!(
            "{} data set: {n_train} train and {n_test} test images of {}²",
            spec.task, spec.size
        ));
        Ok(())
    }
}

struct Spec {
    task: Task,
    size: u32,
    classes: u32,
    noise: f64,
    /// Fraction of shapeless images (detect, segment).
    empty: f64,
    seed: u64,
}

/// One object drawn: class and `[x, y, w, h]`.
type Object = (u32, [f64; 4]);

struct Sample {
    image: image::RgbImage,
    objects: Vec<Object>,
    grade: u32,
    /// Pixel mask of the drawn shapes (segment).
    mask: Vec<bool>,
    /// Each pixel's shape class + 1, 0 for background (segment).
    classes: Vec<u8>,
    /// Each pixel's object index + 1, 0 for background: the instances'
    /// visible masks (detect).
    instances: Vec<u16>,
}

impl Spec {
    fn sample(&self, index: u64) -> Sample {
        let mut r =
            ChaCha8Rng::seed_from_u64(self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index);
        let s = self.size;
        let base: [f64; 3] = [
            r.random_range(0.1..0.4),
            r.random_range(0.1..0.4),
            r.random_range(0.1..0.4),
        ];
        let mut px: Vec<[f64; 3]> = (0..s * s)
            .map(|_| base.map(|b| b + self.noise * gauss(&mut r)))
            .collect();
        let mut mask = vec![false; (s * s) as usize];
        let mut class_map = vec![0u8; (s * s) as usize];
        let mut instances = vec![0u16; (s * s) as usize];
        let mut objects = Vec::new();
        let mut grade = 0;
        let classes: Vec<u32> = match self.task {
            Task::Multilabel => {
                let mut c: Vec<u32> = (0..self.classes).filter(|_| r.random_bool(0.4)).collect();
                if c.is_empty() {
                    c.push(r.random_range(0..self.classes));
                }
                c
            }
            // Drawn only when asked for, so that `empty = 0` leaves every
            // image as it was.
            Task::Detect | Task::Segment if self.empty > 0.0 && r.random_bool(self.empty) => {
                Vec::new()
            }
            Task::Detect | Task::Segment => (0..r.random_range(1..=4))
                .map(|_| r.random_range(0..self.classes))
                .collect(),
            Task::Regress => {
                grade = r.random_range(0..self.classes);
                Vec::new()
            }
            Task::Classify | Task::Box => vec![r.random_range(0..self.classes)],
        };
        if self.task == Task::Regress {
            let level = 0.35 + 0.6 * grade as f64 / (self.classes - 1) as f64;
            let rad = s as f64 * 0.3;
            let (cx, cy) = (
                s as f64 / 2.0 + r.random_range(-2.0..2.0),
                s as f64 / 2.0 + r.random_range(-2.0..2.0),
            );
            paint(
                &mut px,
                &mut mask,
                s,
                |x, y| (x - cx).powi(2) + (y - cy).powi(2) <= rad * rad,
                [level, level * 0.8, level * 0.5],
            );
        }
        for c in classes {
            let side = r.random_range(s as f64 * 0.25..s as f64 * 0.5);
            let x0 = r.random_range(0.0..s as f64 - side);
            let y0 = r.random_range(0.0..s as f64 - side);
            let colour = [
                r.random_range(0.6..1.0),
                r.random_range(0.5..1.0),
                r.random_range(0.4..1.0),
            ];
            let inside = shape(c, x0, y0, side);
            let before = mask.clone();
            mask.iter_mut().for_each(|m| *m = false);
            paint(&mut px, &mut mask, s, inside, colour);
            for (k, m) in mask.iter_mut().enumerate() {
                if *m {
                    class_map[k] = c as u8 + 1;
                    instances[k] = objects.len() as u16 + 1;
                }
                *m |= before[k];
            }
            objects.push((c, [x0, y0, side, side]));
        }
        let image = image::RgbImage::from_fn(s, s, |x, y| {
            let p = px[(y * s + x) as usize];
            image::Rgb(p.map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8))
        });
        Sample {
            image,
            objects,
            grade,
            mask,
            classes: class_map,
            instances,
        }
    }

    fn labels(&self, split: &str, samples: &[Sample]) -> (Table, Option<Coco>) {
        let id = |i: usize| format!("{split}_{i:05}");
        let cols: &[&str] = match self.task {
            Task::Multilabel => &["Target"],
            Task::Regress => &["grade"],
            Task::Box => &["label", "bbox"],
            Task::Detect => &["count"],
            Task::Segment => &["mask"],
            Task::Classify => &["label"],
        };
        let mut t = Table::new(cols);
        for (i, s) in samples.iter().enumerate() {
            let row = match self.task {
                Task::Multilabel => {
                    let mut c: Vec<u32> = s.objects.iter().map(|o| o.0).collect();
                    c.sort_unstable();
                    c.dedup();
                    vec![c.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")]
                }
                Task::Regress => vec![s.grade.to_string()],
                Task::Box => {
                    let (c, b) = s.objects[0];
                    vec![
                        c.to_string(),
                        format!("{:.2} {:.2} {:.2} {:.2}", b[0], b[1], b[2], b[3]),
                    ]
                }
                Task::Detect => vec![s.visible().count().to_string()],
                Task::Segment => vec![images::rle(&s.mask, self.size, self.size)],
                Task::Classify => vec![s.objects[0].0.to_string()],
            };
            t.push(id(i), row);
        }
        let coco = (self.task == Task::Detect).then(|| {
            let mut c = Coco {
                categories: (0..self.classes)
                    .map(|k| CocoCategory {
                        id: k as i64,
                        name: format!("shape{k}"),
                    })
                    .collect(),
                ..Default::default()
            };
            for (i, s) in samples.iter().enumerate() {
                c.images.push(CocoImage {
                    id: ImageId::Int(i as i64 + 1),
                    width: self.size as f64,
                    height: self.size as f64,
                    file_name: format!("{}.png", id(i)),
                });
                // A shape covered whole by later ones is no object to find.
                for (o, (k, b)) in s.visible() {
                    // Its visible pixels.
                    let pixels: Vec<bool> =
                        s.instances.iter().map(|&v| v as usize == o + 1).collect();
                    let rle = Rle::encode(&pixels, self.size as usize, self.size as usize);
                    c.annotations.push(CocoAnn {
                        id: c.annotations.len() as i64 + 1,
                        image_id: ImageId::Int(i as i64 + 1),
                        category_id: k as i64,
                        bbox: b,
                        area: Some(b[2] * b[3]),
                        iscrowd: 0,
                        weight: None,
                        segmentation: Some(Segmentation::Rle(RleJson::from_rle(&rle))),
                    });
                }
            }
            c
        });
        (t, coco)
    }
}

impl Sample {
    /// The objects some pixel of which shows (shapes drawn later may
    /// cover one whole), with their indices.
    fn visible(&self) -> impl Iterator<Item = (usize, Object)> + '_ {
        self.objects
            .iter()
            .copied()
            .enumerate()
            .filter(|(o, _)| self.instances.iter().any(|&v| v as usize == o + 1))
    }
}

fn gauss(r: &mut ChaCha8Rng) -> f64 {
    // Box-Muller.
    let u1: f64 = r.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = r.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Whether the pixel centre (x, y) is inside shape `class` in its box.
fn shape(class: u32, x0: f64, y0: f64, side: f64) -> impl Fn(f64, f64) -> bool {
    move |x, y| {
        let (u, v) = ((x - x0) / side, (y - y0) / side);
        if !(0.0..=1.0).contains(&u) || !(0.0..=1.0).contains(&v) {
            return false;
        }
        let (du, dv) = (u - 0.5, v - 0.5);
        let d2 = du * du + dv * dv;
        match class % 8 {
            0 => d2 <= 0.25,
            1 => true,
            2 => 2.0 * du.abs() <= v,
            3 => du.abs() < 0.15 || dv.abs() < 0.15,
            4 => (0.09..=0.25).contains(&d2),
            5 => dv.abs() < 0.2,
            6 => du.abs() + dv.abs() <= 0.5,
            _ => du.abs() > 0.3 || dv.abs() > 0.3,
        }
    }
}

fn paint(
    px: &mut [[f64; 3]],
    mask: &mut [bool],
    s: u32,
    inside: impl Fn(f64, f64) -> bool,
    colour: [f64; 3],
) {
    for y in 0..s {
        for x in 0..s {
            if inside(x as f64 + 0.5, y as f64 + 0.5) {
                let i = (y * s + x) as usize;
                px[i] = colour;
                mask[i] = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_sample() {
        let spec = Spec {
            task: Task::Detect,
            size: 16,
            classes: 3,
            noise: 0.1,
            empty: 0.0,
            seed: 7,
        };
        let (a, b) = (spec.sample(3), spec.sample(3));
        assert_eq!(a.image, b.image);
        assert_eq!(a.objects, b.objects);
        assert_ne!(spec.sample(4).image, a.image);
    }
}
