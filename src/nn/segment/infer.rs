//! Segmentation inference: per-class probabilities at each image's own
//! resolution, from the whole image resized to the model's side, or from
//! overlapping tiles of that side at native resolution blended with
//! Gaussian weights (nnU-Net's, σ = side / 8), so tile borders leave no
//! seams; each dihedral TTA variant is mapped back through its inverse and
//! the variants averaged.

use candle_core::{Device, Tensor};
use image::GrayImage;
use image::imageops::FilterType;
use rayon::prelude::*;

use crate::nn::NnError;
use crate::nn::aug::{Dihedral, to_chw};
use crate::nn::loader::Images;
use crate::nn::models::Model;

/// How inference covers an image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cover {
    /// The whole image resized to the model's side; the probabilities
    /// resized back (bilinear).
    Whole,
    /// Tiles of the model's side at native resolution, neighbours
    /// overlapping by this fraction of a side.
    Tiles { overlap: f64 },
}

/// Probabilities `[classes, h, w]` of one image.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbMap {
    pub classes: usize,
    pub w: u32,
    pub h: u32,
    pub data: Vec<f32>,
}

impl ProbMap {
    /// Class `c`'s plane.
    pub fn plane(&self, c: usize) -> &[f32] {
        let n = (self.w * self.h) as usize;
        &self.data[c * n..(c + 1) * n]
    }

    /// Class `c`'s probabilities as 8-bit grey (0 to 255).
    pub fn plane_u8(&self, c: usize) -> GrayImage {
        let v = self
            .plane(c)
            .iter()
            .map(|p| (p.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect();
        GrayImage::from_raw(self.w, self.h, v).expect("w × h values")
    }

    /// Per class, the overlap of its pixels at `threshold` with the true
    /// plane (`truth[c]`, above 0 where the class is).
    pub fn overlaps(
        &self,
        truth: &[GrayImage],
        threshold: f32,
    ) -> Vec<crate::metrics::segment::Overlap> {
        truth
            .iter()
            .enumerate()
            .map(|(c, t)| {
                crate::metrics::segment::Overlap::of(
                    self.plane(c)
                        .iter()
                        .zip(t.as_raw())
                        .map(|(&q, &m)| (q >= threshold, m > 0)),
                )
            })
            .collect()
    }

    /// Each class's pixels at `threshold` as Kaggle's run-length encoding.
    pub fn rles(&self, threshold: f32) -> Vec<String> {
        (0..self.classes)
            .map(|c| {
                let bits: Vec<bool> = self.plane(c).iter().map(|&q| q >= threshold).collect();
                crate::data::images::rle(&bits, self.w, self.h)
            })
            .collect()
    }

    /// A class-index mask: at each pixel the most probable class's index
    /// plus 1 where its probability reaches `threshold`, else 0.
    pub fn index_mask(&self, threshold: f32) -> GrayImage {
        let n = (self.w * self.h) as usize;
        let v = (0..n)
            .map(|i| {
                let (mut best, mut p) = (0usize, f32::MIN);
                for c in 0..self.classes {
                    let q = self.data[c * n + i];
                    if q > p {
                        (best, p) = (c, q);
                    }
                }
                if p >= threshold { best as u8 + 1 } else { 0 }
            })
            .collect();
        GrayImage::from_raw(self.w, self.h, v).expect("w × h values")
    }
}

/// Where tiles of `side` start along a length `len`, neighbours
/// overlapping by `overlap` of a side, the last flush with the end.
pub fn tile_starts(len: u32, side: u32, overlap: f64) -> Vec<u32> {
    if len <= side {
        return vec![0];
    }
    let stride = ((f64::from(side) * (1.0 - overlap)).round() as u32).max(1);
    let mut v: Vec<u32> = (0..)
        .map(|k| k * stride)
        .take_while(|&x| x + side < len)
        .collect();
    v.push(len - side);
    v
}

/// nnU-Net's Gaussian importance map over a `side × side` tile: σ = side /
/// 8, peak 1, floored at 1e-3 so that every pixel counts.
pub fn gaussian(side: usize) -> Vec<f32> {
    let sigma = side as f64 / 8.0;
    let g: Vec<f64> = (0..side)
        .map(|i| {
            let d = i as f64 + 0.5 - side as f64 / 2.0;
            (-d * d / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let peak = g.iter().copied().fold(0.0, f64::max);
    let mut out = Vec::with_capacity(side * side);
    for &a in &g {
        for &b in &g {
            out.push(((a * b) / (peak * peak)).max(1e-3) as f32);
        }
    }
    out
}

/// Bilinear resize of `[c, h, w]` planes to `h2 × w2` as PyTorch's
/// `F.interpolate(mode="bilinear", align_corners=False)`.
pub fn resize_bilinear(
    src: &[f32],
    c: usize,
    (h, w): (usize, usize),
    (h2, w2): (usize, usize),
) -> Vec<f32> {
    if (h, w) == (h2, w2) {
        return src.to_vec();
    }
    let axis = |from: usize, to: usize| -> Vec<(usize, usize, f32)> {
        let scale = from as f64 / to as f64;
        (0..to)
            .map(|i| {
                let x = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (x.floor() as usize).min(from - 1);
                let i1 = (i0 + 1).min(from - 1);
                (i0, i1, (x - i0 as f64) as f32)
            })
            .collect()
    };
    let (ys, xs) = (axis(h, h2), axis(w, w2));
    let mut out = Vec::with_capacity(c * h2 * w2);
    for ch in 0..c {
        let p = &src[ch * h * w..(ch + 1) * h * w];
        for &(y0, y1, fy) in &ys {
            for &(x0, x1, fx) in &xs {
                let top = p[y0 * w + x0] * (1.0 - fx) + p[y0 * w + x1] * fx;
                let bot = p[y1 * w + x0] * (1.0 - fx) + p[y1 * w + x1] * fx;
                out.push(top * (1.0 - fy) + bot * fy);
            }
        }
    }
    out
}

/// One forward pass's input: image (position in `idx`), tile origin
/// (none: the whole image), TTA variant.
#[derive(Clone, Copy)]
struct Item {
    pos: usize,
    origin: Option<(u32, u32)>,
    tta: Dihedral,
}

/// What an image's items add up to.
struct Acc {
    sum: Vec<f32>,
    weight: Vec<f32>,
    left: usize,
}

/// Image `i`'s input for `item`: the whole image resized (as training's
/// loader resizes it), or the tile at `origin` (zero past the image's
/// right and bottom edges, after normalization), normalized, transformed.
fn input(images: &Images, i: usize, item: &Item) -> Result<Vec<f32>, crate::data::DataError> {
    let src = images.source(i)?;
    let s = images.size;
    let n = (s * s) as usize;
    let mut chw = match item.origin {
        None => {
            let img = if (src.width(), src.height()) == (s, s) {
                to_chw(&src)
            } else {
                to_chw(&image::imageops::resize(&*src, s, s, FilterType::Triangle))
            };
            normalize(images, img, n)
        }
        Some((x, y)) => {
            let (cw, ch) = (s.min(src.width() - x), s.min(src.height() - y));
            let part = image::imageops::crop_imm(&*src, x, y, cw, ch).to_image();
            let p = normalize(images, to_chw(&part), (cw * ch) as usize);
            let mut full = vec![0f32; 3 * n];
            for c in 0..3 {
                for r in 0..ch as usize {
                    let from = c * (cw * ch) as usize + r * cw as usize;
                    let to = c * n + r * s as usize;
                    full[to..to + cw as usize].copy_from_slice(&p[from..from + cw as usize]);
                }
            }
            full
        }
    };
    if item.tta != Dihedral::default() {
        chw = item.tta.apply(&chw, 3, s as usize);
    }
    Ok(chw)
}

fn normalize(images: &Images, mut chw: Vec<f32>, n: usize) -> Vec<f32> {
    for c in 0..3 {
        let (m, sd) = (images.mean[c], images.std[c]);
        chw[c * n..(c + 1) * n]
            .iter_mut()
            .for_each(|v| *v = (*v - m) / sd);
    }
    chw
}

/// Runs `model` (evaluation mode) over images `idx`, calling `emit` with
/// each image's position in `idx` and its probabilities, in order, as soon
/// as its last tile is done (memory holds the images in flight only).
/// `on_batch` is called before each batch with the forward passes done.
#[allow(clippy::too_many_arguments)]
pub fn infer_segment(
    model: &Model,
    images: &Images,
    idx: &[usize],
    tta: &[Dihedral],
    cover: Cover,
    batch_size: usize,
    device: &Device,
    pool: &rayon::ThreadPool,
    on_batch: &mut dyn FnMut(usize, usize) -> Result<(), NnError>,
    emit: &mut dyn FnMut(usize, ProbMap) -> Result<(), NnError>,
) -> Result<(), NnError> {
    let s = images.size;
    let su = s as usize;
    let classes = model.segmenter.as_ref().map_or(1, |u| u.classes);
    // Every image's size and items.
    let mut sizes = Vec::with_capacity(idx.len());
    let mut items = Vec::new();
    for (pos, &i) in idx.iter().enumerate() {
        let (w, h) = image::image_dimensions(&images.paths[i])
            .map_err(|e| crate::data::DataError::new(&images.paths[i], e.to_string()))?;
        sizes.push((w, h));
        let origins: Vec<Option<(u32, u32)>> = match cover {
            Cover::Whole => vec![None],
            Cover::Tiles { overlap } => {
                let xs = tile_starts(w, s, overlap);
                let ys = tile_starts(h, s, overlap);
                ys.iter()
                    .flat_map(|&y| xs.iter().map(move |&x| Some((x, y))))
                    .collect()
            }
        };
        for origin in origins {
            for &d in tta {
                items.push(Item {
                    pos,
                    origin,
                    tta: d,
                });
            }
        }
    }
    let g = gaussian(su);
    let mut accs: std::collections::BTreeMap<usize, Acc> = Default::default();
    let mut next_emit = 0usize;
    let total = items.len();
    let bs = batch_size.max(1);
    for (b, chunk) in items.chunks(bs).enumerate() {
        on_batch(b * bs, total)?;
        let inputs: Vec<Result<Vec<f32>, crate::data::DataError>> = pool.install(|| {
            chunk
                .par_iter()
                .map(|it| input(images, idx[it.pos], it))
                .collect()
        });
        let mut x = Vec::with_capacity(chunk.len() * 3 * su * su);
        for r in inputs {
            x.extend(r?);
        }
        let xt = Tensor::from_vec(x, (chunk.len(), 3, su, su), device)?;
        let probs: Vec<f32> = pool.install(|| -> candle_core::Result<Vec<f32>> {
            let l = model.segment_t(&xt, false)?;
            candle_nn::ops::sigmoid(&l)?.flatten_all()?.to_vec1()
        })?;
        let per = classes * su * su;
        for (k, it) in chunk.iter().enumerate() {
            let mut p = probs[k * per..(k + 1) * per].to_vec();
            if it.tta != Dihedral::default() {
                p = it.tta.inverse().apply(&p, classes, su);
            }
            let (w, h) = sizes[it.pos];
            let acc = accs.entry(it.pos).or_insert_with(|| {
                let left = items_of(&items, it.pos);
                match it.origin {
                    None => Acc {
                        sum: vec![0.0; per],
                        weight: Vec::new(),
                        left,
                    },
                    Some(_) => Acc {
                        sum: vec![0.0; classes * (w * h) as usize],
                        weight: vec![0.0; (w * h) as usize],
                        left,
                    },
                }
            });
            match it.origin {
                None => acc.sum.iter_mut().zip(&p).for_each(|(a, v)| *a += v),
                Some((x0, y0)) => {
                    let (cw, ch) = (s.min(w - x0) as usize, s.min(h - y0) as usize);
                    let (wu, n) = (w as usize, (w * h) as usize);
                    for r in 0..ch {
                        let row = (y0 as usize + r) * wu + x0 as usize;
                        for q in 0..cw {
                            let gw = g[r * su + q];
                            acc.weight[row + q] += gw;
                            for c in 0..classes {
                                acc.sum[c * n + row + q] += gw * p[c * su * su + r * su + q];
                            }
                        }
                    }
                }
            }
            acc.left -= 1;
        }
        // Emit, in order, every image whose items are all done.
        while let Some(acc) = accs.get(&next_emit) {
            if acc.left > 0 {
                break;
            }
            let acc = accs.remove(&next_emit).expect("present");
            let (w, h) = sizes[next_emit];
            let data = match cover {
                Cover::Whole => {
                    let t = tta.len().max(1) as f32;
                    let mean: Vec<f32> = acc.sum.iter().map(|v| v / t).collect();
                    resize_bilinear(&mean, classes, (su, su), (h as usize, w as usize))
                }
                Cover::Tiles { .. } => {
                    let n = (w * h) as usize;
                    let mut d = acc.sum;
                    for c in 0..classes {
                        for (v, wt) in d[c * n..(c + 1) * n].iter_mut().zip(&acc.weight) {
                            *v /= wt;
                        }
                    }
                    d
                }
            };
            emit(
                next_emit,
                ProbMap {
                    classes,
                    w,
                    h,
                    data,
                },
            )?;
            next_emit += 1;
        }
    }
    on_batch(total, total)?;
    Ok(())
}

/// How many items image `pos` has (they are contiguous).
fn items_of(items: &[Item], pos: usize) -> usize {
    let start = items.partition_point(|it| it.pos < pos);
    items[start..].iter().take_while(|it| it.pos == pos).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mask predicted on a transformed image maps back exactly: for each
    /// of the eight dihedral transforms d, predicting d(I) under the TTA
    /// variant d⁻¹ gives d applied to the prediction on I; and an image of
    /// the tile's side gives the same probabilities whole or as one tile
    /// (to the rounding of the blend).
    #[test]
    fn tta_variants_map_masks_back_exactly() {
        use crate::nn::models::{Arch, Heads, Model, Task};
        use crate::nn::vars::VarStore;
        let dir = tempfile::tempdir().unwrap();
        let s = 16usize;
        let base: Vec<f32> = (0..3 * s * s)
            .map(|i| ((i * 37 % 101) as f32) / 100.0)
            .collect();
        let mut paths = Vec::new();
        for (k, d) in Dihedral::all().into_iter().enumerate() {
            let v = d.apply(&base, 3, s);
            let img = image::RgbImage::from_fn(s as u32, s as u32, |x, y| {
                let at = |c: usize| (v[c * s * s + y as usize * s + x as usize] * 255.0) as u8;
                image::Rgb([at(0), at(1), at(2)])
            });
            let p = dir.path().join(format!("{k}.png"));
            img.save(&p).unwrap();
            paths.push(p);
        }
        let images = Images::new(paths, s as u32, [0.5; 3], [0.25; 3]).unwrap();
        let vars = VarStore::new(&Device::Cpu, 3);
        let heads = Heads {
            decoder_width: 4,
            ..Heads::default()
        };
        let model = Model::with_heads(Arch::SimpleCnn, Task::Segment, 2, heads, vars).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let run = |idx: &[usize], tta: Dihedral, cover: Cover| -> Vec<ProbMap> {
            let mut out = Vec::new();
            infer_segment(
                &model,
                &images,
                idx,
                &[tta],
                cover,
                1,
                &Device::Cpu,
                &pool,
                &mut |_, _| Ok(()),
                &mut |_, p| {
                    out.push(p);
                    Ok(())
                },
            )
            .unwrap();
            out
        };
        let plain = run(&[0], Dihedral::default(), Cover::Whole).remove(0);
        assert!(plain.data.iter().all(|p| (0.0..=1.0).contains(p)));
        for (k, d) in Dihedral::all().into_iter().enumerate() {
            let back = run(&[k], d.inverse(), Cover::Whole).remove(0);
            assert_eq!(back.data, d.apply(&plain.data, 2, s), "variant {k}");
        }
        let tiled = run(&[0], Dihedral::default(), Cover::Tiles { overlap: 0.25 }).remove(0);
        // (p·g)/g: equal to rounding.
        for (a, b) in tiled.data.iter().zip(&plain.data) {
            assert!((a - b).abs() < 1e-6, "tiled {a}, whole {b}");
        }
    }

    #[test]
    fn tiles_cover_the_image_and_end_flush() {
        assert_eq!(tile_starts(64, 64, 0.25), vec![0]);
        assert_eq!(tile_starts(40, 64, 0.25), vec![0]);
        assert_eq!(tile_starts(128, 64, 0.25), vec![0, 48, 64]);
        assert_eq!(tile_starts(100, 64, 0.5), vec![0, 32, 36]);
    }

    #[test]
    fn gaussian_peaks_in_the_middle_and_is_symmetric() {
        let g = gaussian(8);
        assert!((g[3 * 8 + 3] - 1.0).abs() < 1e-6 && g[0] < 0.01);
        for y in 0..8 {
            for x in 0..8 {
                assert_eq!(g[y * 8 + x], g[x * 8 + y]);
                assert_eq!(g[y * 8 + x], g[(7 - y) * 8 + x]);
            }
        }
    }

    /// Bilinear resize as PyTorch's `align_corners=False`: 2 → 4 gives
    /// [a, a + ¼(b − a), b − ¼(b − a), b].
    #[test]
    fn bilinear_matches_torch_half_pixel_centres() {
        let v = resize_bilinear(&[0.0, 1.0], 1, (1, 2), (1, 4));
        assert_eq!(v, vec![0.0, 0.25, 0.75, 1.0]);
        let same = resize_bilinear(&[1.0, 2.0, 3.0, 4.0], 1, (2, 2), (2, 2));
        assert_eq!(same, vec![1.0, 2.0, 3.0, 4.0]);
    }
}
