//! `resize`: an image set to one or several square sizes, in parallel.
//!
//! ```toml
//! [stages.resize]
//! op = "resize"
//! images = "${inputs.train_images}"
//! sizes = [256, 512]
//! mode = "longest_side_pad"
//! boxes = "${inputs.train_coco}"    # transformed along, per size
//! ```
//!
//! Outputs `images_<size>` (a directory per size, same relative names) and,
//! with `boxes`, `coco_<size>.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::DynamicImage;
use rayon::prelude::*;

use super::{Op, OpContext, OpError, ParamError};
use crate::data::DataError;
use crate::data::boxes::{Coco, read_coco, write_coco};
use crate::data::images::{self, Format};
use crate::data::table::Table;

pub struct Resize;

crate::choice! {
    /// How an image becomes a square.
    pub enum Mode {
        /// Ignore the aspect.
        Stretch = "stretch",
        /// Keep the aspect, pad to a square, centred.
        LongestSidePad = "longest_side_pad",
        /// Keep the aspect, crop the centre square.
        ShortestSideCrop = "shortest_side_crop",
    }
}

crate::choice! {
    /// A resampling filter.
    pub enum Filter {
        Nearest = "nearest",
        Box = "box",
        Bilinear = "bilinear",
        Bicubic = "bicubic",
        Lanczos3 = "lanczos3",
    }
}

crate::choice! {
    /// What an image that cannot be read does.
    pub enum OnError {
        Fail = "fail",
        Skip = "skip",
    }
}

crate::params! {
    /// The parameters of `resize`.
    pub struct Args {
        /// the image set
        images: PathBuf,
        /// output side lengths in pixels
        sizes: Vec<f64> = [512],
        /// above
        mode: Mode = "stretch",
        /// resampling filter (convolution over the source footprint, as Pillow's)
        filter: Filter = "bicubic",
        /// output format (PNG with fast compression)
        format: Format = "png",
        /// JPEG quality, 1 to 100
        quality: i64 = 95,
        /// grey level of the padding
        pad_value: u16 = 0,
        /// COCO file transformed along
        boxes: Option<PathBuf> = "",
        /// what a corrupt image does
        on_error: OnError = "fail",
    }
}

impl Op for Resize {
    type Params = Args;
    const NAME: &'static str = "resize";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str = "Resize an image set to one or several sizes (stretch, pad, crop), boxes transformed along.";
    const INPUTS: &'static [&'static str] = &["images"];

    fn outputs(&self, a: &Args) -> Vec<String> {
        let mut out = Vec::new();
        for s in sizes(&a.sizes).unwrap_or_default() {
            out.push(format!("images_{s}"));
            if a.boxes.is_some() {
                out.push(format!("coco_{s}.json"));
            }
        }
        if a.on_error == OnError::Skip {
            out.push("skipped.csv".into());
        }
        out
    }

    fn validate(&self, a: &Args) -> Vec<ParamError> {
        let mut errs = Vec::new();
        if let Err(e) = sizes(&a.sizes) {
            errs.push(e);
        }
        if !(1..=100).contains(&a.quality) {
            errs.push(ParamError::new("quality", "quality must be from 1 to 100"));
        }
        errs
    }

    fn run(&self, a: Args, cx: &mut OpContext) -> Result<(), OpError> {
        let dir = a.images;
        let sizes = sizes(&a.sizes).map_err(OpError::Param)?;
        let files = images::list(&dir)?;
        if files.is_empty() {
            return Err(
                DataError::new(&dir, "no PNG, JPEG or TIFF images in this directory").into(),
            );
        }
        let job = Job {
            dir: &dir,
            out: cx.out_dir,
            sizes: &sizes,
            mode: a.mode,
            alg: algorithm(a.filter),
            format: a.format,
            quality: a.quality as u8,
            pad: a.pad_value,
        };
        let skip = a.on_error == OnError::Skip;
        let cancel = cx.cancel;
        let done = std::sync::atomic::AtomicU64::new(0);
        let total = files.len() as u64;
        // One result per image: its geometry per size, or its error.
        let results: Vec<Result<Vec<Geometry>, DataError>> = cx.pool()?.install(|| {
            files
                .par_iter()
                .map_init(Resizer::new, |resizer, rel| {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(DataError::new(rel, "interrupted"));
                    }
                    let r = job.one(resizer, rel);
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_multiple_of(64) || n == total {
                        cx.step(n, total, "images");
                    }
                    r
                })
                .collect()
        });
        cx.check_cancel()?;
        let mut skipped = Table::new(&["error"]);
        let mut geometry: HashMap<&Path, Vec<Geometry>> = HashMap::new();
        for (rel, r) in files.iter().zip(results) {
            match r {
                Ok(g) => {
                    geometry.insert(rel.as_path(), g);
                }
                Err(e) if skip => skipped.push(rel.display().to_string(), vec![e.message]),
                Err(e) => return Err(e.into()),
            }
        }
        cx.log(format_args!(
            "resized {} images to {:?} ({} skipped)",
            geometry.len(),
            sizes,
            skipped.len()
        ));
        if let Some(boxes) = a.boxes {
            let coco = read_coco(&boxes)?;
            for (k, &s) in sizes.iter().enumerate() {
                let t = transform_coco(&coco, &geometry, k, job.format);
                write_coco(&cx.out_dir.join(format!("coco_{s}.json")), &t)?;
            }
        }
        if skip {
            skipped.write(&cx.out_dir.join("skipped.csv"))?;
        }
        Ok(())
    }
}

fn sizes(list: &[f64]) -> Result<Vec<u32>, ParamError> {
    if list.is_empty() {
        return Err(ParamError::new("sizes", "give at least one size"));
    }
    list.iter()
        .map(|&x| match x {
            x if (1.0..=65535.0).contains(&x) && x.fract() == 0.0 => Ok(x as u32),
            v => Err(ParamError::new(
                "sizes",
                format!("{v} is not a whole number of pixels from 1 to 65535"),
            )),
        })
        .collect()
}

fn algorithm(filter: Filter) -> ResizeAlg {
    match filter {
        Filter::Nearest => ResizeAlg::Nearest,
        Filter::Box => ResizeAlg::Convolution(FilterType::Box),
        Filter::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
        Filter::Lanczos3 => ResizeAlg::Convolution(FilterType::Lanczos3),
        Filter::Bicubic => ResizeAlg::Convolution(FilterType::CatmullRom),
    }
}

/// How one image was mapped to one size: `x' = x * scale_x + dx`, the
/// output being `size` square.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Geometry {
    pub size: u32,
    pub scale: (f64, f64),
    pub shift: (f64, f64),
}

impl Geometry {
    /// Maps an `[x, y, w, h]` box, clipped to the output; `None` when
    /// nothing of it is left.
    pub fn map_box(&self, b: [f64; 4]) -> Option<[f64; 4]> {
        let s = self.size as f64;
        let x1 = (b[0] * self.scale.0 + self.shift.0).clamp(0.0, s);
        let y1 = (b[1] * self.scale.1 + self.shift.1).clamp(0.0, s);
        let x2 = ((b[0] + b[2]) * self.scale.0 + self.shift.0).clamp(0.0, s);
        let y2 = ((b[1] + b[3]) * self.scale.1 + self.shift.1).clamp(0.0, s);
        (x2 > x1 && y2 > y1).then_some([x1, y1, x2 - x1, y2 - y1])
    }
}

/// The geometry of each mode, for a `w` × `h` source; also the source crop
/// and the resized (unpadded) size.
pub fn plan(mode: Mode, w: u32, h: u32, size: u32) -> (Geometry, (f64, f64, f64, f64), (u32, u32)) {
    let (wf, hf, s) = (w as f64, h as f64, size as f64);
    match mode {
        Mode::LongestSidePad => {
            let k = s / wf.max(hf);
            let nw = ((wf * k).round() as u32).clamp(1, size);
            let nh = ((hf * k).round() as u32).clamp(1, size);
            let (dx, dy) = ((size - nw) / 2, (size - nh) / 2);
            let g = Geometry {
                size,
                scale: (nw as f64 / wf, nh as f64 / hf),
                shift: (dx as f64, dy as f64),
            };
            (g, (0.0, 0.0, wf, hf), (nw, nh))
        }
        Mode::ShortestSideCrop => {
            let m = wf.min(hf);
            let (left, top) = ((wf - m) / 2.0, (hf - m) / 2.0);
            let k = s / m;
            let g = Geometry {
                size,
                scale: (k, k),
                shift: (-left * k, -top * k),
            };
            (g, (left, top, m, m), (size, size))
        }
        Mode::Stretch => {
            let g = Geometry {
                size,
                scale: (s / wf, s / hf),
                shift: (0.0, 0.0),
            };
            (g, (0.0, 0.0, wf, hf), (size, size))
        }
    }
}

struct Job<'a> {
    dir: &'a Path,
    out: &'a Path,
    sizes: &'a [u32],
    mode: Mode,
    alg: ResizeAlg,
    format: Format,
    quality: u8,
    pad: u16,
}

impl Job<'_> {
    fn one(&self, resizer: &mut Resizer, rel: &Path) -> Result<Vec<Geometry>, DataError> {
        let src_path = self.dir.join(rel);
        let src = images::open(&src_path)?;
        let mut out = Vec::with_capacity(self.sizes.len());
        for &size in self.sizes {
            let (g, crop, (nw, nh)) = plan(self.mode, src.width(), src.height(), size);
            let mut dst = DynamicImage::new(nw, nh, src.color());
            let opts = ResizeOptions::new()
                .resize_alg(self.alg)
                .crop(crop.0, crop.1, crop.2, crop.3);
            resizer
                .resize(&src, &mut dst, &opts)
                .map_err(|e| DataError::new(&src_path, format!("cannot resize: {e}")))?;
            let dst = if (nw, nh) != (size, size) {
                pad(&dst, size, g.shift, self.pad)
            } else {
                dst
            };
            let target: PathBuf = self
                .out
                .join(format!("images_{size}"))
                .join(self.format.rename(rel));
            images::save(&dst, &target, self.quality)?;
            out.push(g);
        }
        Ok(out)
    }
}

/// `img` placed at `shift` on a `size` square of grey `value`.
fn pad(img: &DynamicImage, size: u32, shift: (f64, f64), value: u16) -> DynamicImage {
    let mut canvas = DynamicImage::new(size, size, img.color());
    let v8 = value.min(255) as u8;
    match &mut canvas {
        DynamicImage::ImageLuma8(c) => c.pixels_mut().for_each(|p| p.0 = [v8]),
        DynamicImage::ImageRgb8(c) => c.pixels_mut().for_each(|p| p.0 = [v8; 3]),
        DynamicImage::ImageRgba8(c) => c.pixels_mut().for_each(|p| p.0 = [v8, v8, v8, 255]),
        DynamicImage::ImageLuma16(c) => c.pixels_mut().for_each(|p| p.0 = [value]),
        DynamicImage::ImageRgb16(c) => c.pixels_mut().for_each(|p| p.0 = [value; 3]),
        _ => {}
    }
    image::imageops::replace(&mut canvas, img, shift.0 as i64, shift.1 as i64);
    canvas
}

/// The COCO file for size number `k`: images that were resized, with their
/// new size and file name, and their boxes mapped (boxes left with no area
/// dropped).
pub fn transform_coco(
    coco: &Coco,
    geometry: &HashMap<&Path, Vec<Geometry>>,
    k: usize,
    format: Format,
) -> Coco {
    let mut out = Coco {
        images: Vec::new(),
        annotations: Vec::new(),
        categories: coco.categories.clone(),
    };
    let mut by_id = HashMap::new();
    for im in &coco.images {
        let Some(g) = geometry.get(Path::new(&im.file_name)) else {
            continue;
        };
        let g = g[k];
        let mut im = im.clone();
        im.width = g.size as f64;
        im.height = g.size as f64;
        im.file_name = format
            .rename(Path::new(&im.file_name))
            .display()
            .to_string();
        by_id.insert(im.id.clone(), g);
        out.images.push(im);
    }
    for a in &coco.annotations {
        let Some(g) = by_id.get(&a.image_id) else {
            continue;
        };
        if let Some(b) = g.map_box(a.bbox) {
            let mut a = a.clone();
            a.area = Some(b[2] * b[3]);
            a.bbox = b;
            out.annotations.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_side_pad_keeps_the_aspect_and_centres() {
        let (g, _, (nw, nh)) = plan(Mode::LongestSidePad, 200, 100, 100);
        assert_eq!((nw, nh), (100, 50));
        assert_eq!(g.shift, (0.0, 25.0));
        assert_eq!(
            g.map_box([100.0, 50.0, 20.0, 10.0]),
            Some([50.0, 50.0, 10.0, 5.0])
        );
    }

    #[test]
    fn shortest_side_crop_drops_boxes_outside_the_crop() {
        let (g, crop, _) = plan(Mode::ShortestSideCrop, 200, 100, 50);
        assert_eq!(crop, (50.0, 0.0, 100.0, 100.0));
        assert_eq!(g.map_box([0.0, 0.0, 40.0, 40.0]), None);
        assert_eq!(
            g.map_box([40.0, 0.0, 20.0, 20.0]),
            Some([0.0, 0.0, 5.0, 10.0])
        );
    }
}
