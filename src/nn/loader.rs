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
}

/// One prepared image: CHW floats and its boxes.
type Prepared = (Vec<f32>, Vec<[f32; 4]>);

/// One prepared batch.
pub struct Batch {
    /// Indices into the image list.
    pub idx: Vec<usize>,
    /// `[N, 3, size, size]`, normalized.
    pub x: Vec<f32>,
    /// Per image, its boxes after augmentation, normalized `cx, cy, w, h`,
    /// clipped to the crop (tasks box and detect).
    pub boxes: Vec<Vec<[f32; 4]>>,
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
            if a.crops() {
                region = a.crop_region(sw, sh, r);
            }
            rng = Some((a, r));
        }
        let (rx, ry, rw, rh) = region;
        let s = self.size;
        let resized = if region == (0, 0, s, s) {
            None
        } else if region == (0, 0, sw, sh) {
            Some(image::imageops::resize(&*src, s, s, FilterType::Triangle))
        } else {
            let view = image::imageops::crop_imm(&*src, rx, ry, rw, rh).to_image();
            Some(image::imageops::resize(&view, s, s, FilterType::Triangle))
        };
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
        let n = (s * s) as usize;
        for c in 0..3 {
            let (m, sd) = (self.mean[c], self.std[c]);
            chw[c * n..(c + 1) * n]
                .iter_mut()
                .for_each(|v| *v = (*v - m) / sd);
        }
        Ok((chw, b))
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
            for r in per {
                let (v, b) = r?;
                x.extend_from_slice(&v);
                bx.push(b);
            }
            Ok(Batch {
                idx: chunk.to_vec(),
                x,
                boxes: bx,
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
