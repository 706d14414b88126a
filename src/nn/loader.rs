//! The data loader: decodes, resizes and augments images in parallel (rayon)
//! on a thread ahead of the compute, at most two batches ahead, so memory
//! stays bounded whatever the data set's size. Decoded images are kept in
//! memory when the whole set fits in [`CACHE_BYTES`].

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use image::RgbImage;
use image::imageops::FilterType;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::aug::{Aug, Dihedral, to_chw};
use crate::data::masks::{MaskSource, Planes};
use crate::data::{DataError, images};

/// Decoded images are cached when they fit in this many bytes.
pub const CACHE_BYTES: u64 = 1 << 30;

/// Images by index, resized to `size × size`, normalized with `mean`/`std`.
pub struct Images {
    pub paths: Vec<PathBuf>,
    pub size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    cache: Option<Vec<OnceLock<Arc<RgbImage>>>>,
    masks: Option<Masks>,
}

/// The images' masks (task segment), decoded on first use and kept when
/// the images are.
struct Masks {
    sources: Vec<MaskSource>,
    classes: usize,
    cache: Option<Vec<OnceLock<Arc<Planes>>>>,
}

/// One prepared image: CHW floats, its boxes, and its mask planes (task
/// segment; else empty).
type Prepared = (Vec<f32>, Vec<[f32; 4]>, Vec<f32>);

/// One prepared batch.
pub struct Batch {
    /// Indices into the image list.
    pub idx: Vec<usize>,
    /// `[N, 3, size, size]`, normalized.
    pub x: Vec<f32>,
    /// Per image, its boxes after augmentation, normalized `cx, cy, w, h`,
    /// clipped to the crop (tasks box and detect).
    pub boxes: Vec<Vec<[f32; 4]>>,
    /// `[N, classes, size, size]` masks, 0 or 1, transformed as the
    /// images (task segment; else empty).
    pub masks: Vec<f32>,
}

impl Images {
    pub fn new(
        paths: Vec<PathBuf>,
        size: u32,
        mean: [f32; 3],
        std: [f32; 3],
    ) -> Result<Images, DataError> {
        let mut me = Images {
            paths,
            size,
            mean,
            std,
            cache: None,
            masks: None,
        };
        if !me.paths.is_empty() {
            let img = me.decode(0)?;
            let bytes = u64::from(img.width()) * u64::from(img.height()) * 3;
            if bytes * me.paths.len() as u64 <= CACHE_BYTES {
                let cache: Vec<OnceLock<Arc<RgbImage>>> =
                    (0..me.paths.len()).map(|_| OnceLock::new()).collect();
                let _ = cache[0].set(Arc::new(img));
                me.cache = Some(cache);
            }
        }
        Ok(me)
    }

    /// Gives image `i` the mask `sources[i]` of `classes` classes (task
    /// segment): batches then carry them, cropped, resized (nearest) and
    /// flipped with their images. The decoded masks are kept when the
    /// images are and images and masks together fit in [`CACHE_BYTES`].
    pub fn with_masks(mut self, sources: Vec<MaskSource>, classes: usize) -> Images {
        let fits = match (&self.cache, self.source(0)) {
            (Some(_), Ok(img)) => {
                let pixels = u64::from(img.width()) * u64::from(img.height());
                pixels * (3 + classes as u64) * self.paths.len() as u64 <= CACHE_BYTES
            }
            _ => false,
        };
        let cache = fits.then(|| (0..self.paths.len()).map(|_| OnceLock::new()).collect());
        self.masks = Some(Masks {
            sources,
            classes,
            cache,
        });
        self
    }

    /// The mask classes, when there are masks.
    pub fn mask_classes(&self) -> Option<usize> {
        self.masks.as_ref().map(|m| m.classes)
    }

    /// Image `i`'s mask planes at its source's size.
    pub fn mask(&self, i: usize) -> Result<Arc<Planes>, DataError> {
        let m = self.masks.as_ref().expect("masks given");
        let decode = || -> Result<Planes, DataError> {
            let src = self.source(i)?;
            m.sources[i].decode(m.classes, src.width(), src.height())
        };
        match &m.cache {
            Some(c) => {
                if let Some(p) = c[i].get() {
                    return Ok(p.clone());
                }
                let p = Arc::new(decode()?);
                Ok(c[i].get_or_init(|| p).clone())
            }
            None => Ok(Arc::new(decode()?)),
        }
    }

    fn decode(&self, i: usize) -> Result<RgbImage, DataError> {
        Ok(images::open(&self.paths[i])?.into_rgb8())
    }

    /// The decoded source image `i`.
    pub fn source(&self, i: usize) -> Result<Arc<RgbImage>, DataError> {
        match &self.cache {
            Some(c) => {
                if let Some(img) = c[i].get() {
                    return Ok(img.clone());
                }
                let img = Arc::new(self.decode(i)?);
                Ok(c[i].get_or_init(|| img).clone())
            }
            None => Ok(Arc::new(self.decode(i)?)),
        }
    }

    /// Image `i` as normalized CHW floats at `size`, augmented by `aug`
    /// (drawn from `rng`) and then transformed by `tta`; `boxes` (pixels
    /// `x, y, w, h` in the source) follow along, normalized `cx, cy, w, h`.
    pub fn prepare(
        &self,
        i: usize,
        aug: Option<(&Aug, &mut ChaCha8Rng)>,
        tta: Dihedral,
        boxes: &[[f64; 4]],
    ) -> Result<Prepared, DataError> {
        let src = self.source(i)?;
        let (sw, sh) = (src.width(), src.height());
        let mut region = (0, 0, sw, sh);
        let mut rng = None;
        if let Some((a, r)) = aug {
            if let Some(side) = a.window {
                region = Aug::window_region(side, sw, sh, r);
            }
            if a.crops() {
                let (x, y, w, h) = a.crop_region(region.2, region.3, r);
                region = (region.0 + x, region.1 + y, w, h);
            }
            rng = Some((a, r));
        }
        let (rx, ry, rw, rh) = region;
        let s = self.size;
        let resized = if region == (0, 0, s, s) && (sw, sh) == (s, s) {
            None
        } else if region == (0, 0, sw, sh) {
            Some(image::imageops::resize(&*src, s, s, FilterType::Triangle))
        } else {
            let view = image::imageops::crop_imm(&*src, rx, ry, rw, rh).to_image();
            if (rw, rh) == (s, s) {
                Some(view)
            } else {
                Some(image::imageops::resize(&view, s, s, FilterType::Triangle))
            }
        };
        // The mask planes, cut and resized as the image (nearest).
        let mut mask = Vec::new();
        if self.masks.is_some() {
            let planes = self.mask(i)?;
            mask.reserve(planes.len() * (s * s) as usize);
            for p in planes.iter() {
                let view = image::imageops::crop_imm(p, rx, ry, rw, rh).to_image();
                let m = if (rw, rh) == (s, s) {
                    view
                } else {
                    image::imageops::resize(&view, s, s, FilterType::Nearest)
                };
                mask.extend(m.as_raw().iter().map(|&v| f32::from(v)));
            }
        }
        let mut chw = to_chw(resized.as_ref().unwrap_or(&src));
        // Into the crop, clipped, normalized.
        let b = boxes.iter().map(|&[x, y, w, h]| {
            let x0 = (x - f64::from(rx)).clamp(0.0, f64::from(rw));
            let y0 = (y - f64::from(ry)).clamp(0.0, f64::from(rh));
            let x1 = (x + w - f64::from(rx)).clamp(0.0, f64::from(rw));
            let y1 = (y + h - f64::from(ry)).clamp(0.0, f64::from(rh));
            [
                ((x0 + x1) / 2.0 / f64::from(rw)) as f32,
                ((y0 + y1) / 2.0 / f64::from(rh)) as f32,
                ((x1 - x0) / f64::from(rw)) as f32,
                ((y1 - y0) / f64::from(rh)) as f32,
            ]
        });
        let mut d = tta;
        if let Some((a, r)) = rng {
            d = a.dihedral(r).then(tta);
            a.jitter(&mut chw, r);
        }
        let mut chw = d.apply(&chw, 3, s as usize);
        let b = b.map(|b| d.map_box(b)).collect();
        if !mask.is_empty() {
            mask = d.apply(&mask, mask.len() / (s * s) as usize, s as usize);
        }
        let n = (s * s) as usize;
        for c in 0..3 {
            let (m, sd) = (self.mean[c], self.std[c]);
            chw[c * n..(c + 1) * n]
                .iter_mut()
                .for_each(|v| *v = (*v - m) / sd);
        }
        Ok((chw, b, mask))
    }

    /// Batches of `order`, prepared in parallel on `pool` while `consume`
    /// works on the one before. `aug_seed` switches augmentation on: sample
    /// `i` of the epoch draws from a generator seeded by (`aug_seed`, `i`).
    #[allow(clippy::too_many_arguments)]
    pub fn for_each_batch<E: From<DataError> + Send>(
        &self,
        order: &[usize],
        batch_size: usize,
        aug: Option<(&Aug, u64)>,
        tta: Dihedral,
        boxes: Option<&[Vec<[f64; 4]>]>,
        pool: &rayon::ThreadPool,
        mut consume: impl FnMut(Batch) -> Result<(), E>,
    ) -> Result<(), E> {
        let make = |pos: usize, chunk: &[usize]| -> Result<Batch, DataError> {
            let per: Vec<Result<Prepared, DataError>> = pool.install(|| {
                chunk
                    .par_iter()
                    .enumerate()
                    .map(|(k, &i)| {
                        let bbox = boxes.map_or(&[][..], |b| &b[i][..]);
                        match aug {
                            Some((a, seed)) => {
                                let mut rng =
                                    ChaCha8Rng::seed_from_u64(mix(seed, (pos + k) as u64));
                                self.prepare(i, Some((a, &mut rng)), tta, bbox)
                            }
                            None => self.prepare(i, None, tta, bbox),
                        }
                    })
                    .collect()
            });
            let mut x = Vec::with_capacity(chunk.len() * 3 * (self.size * self.size) as usize);
            let mut bx = Vec::with_capacity(chunk.len());
            let mut masks = Vec::new();
            for r in per {
                let (v, b, m) = r?;
                x.extend_from_slice(&v);
                bx.push(b);
                masks.extend_from_slice(&m);
            }
            Ok(Batch {
                idx: chunk.to_vec(),
                x,
                boxes: bx,
                masks,
            })
        };
        let bs = batch_size.max(1);
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Batch, DataError>>(1);
            let make = &make;
            scope.spawn(move || {
                for (j, chunk) in order.chunks(bs).enumerate() {
                    if tx.send(make(j * bs, chunk)).is_err() {
                        break;
                    }
                }
            });
            for b in rx {
                consume(b?)?;
            }
            Ok(())
        })
    }
}

/// A seed for one sample of one epoch.
pub fn mix(a: u64, b: u64) -> u64 {
    let h = blake3::Hasher::new()
        .update(&a.to_le_bytes())
        .update(&b.to_le_bytes())
        .finalize();
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}
