//! `stats`: per-channel mean and standard deviation over an image set, for
//! normalization, in [0, 1] units (8-bit values over 255, 16-bit over 65535).
//!
//! ```toml
//! [stages.norm]
//! op = "stats"
//! images = "${stages.resize.images_512}"
//! ```
//!
//! Writes `stats.json`: `{"mean": [r, g, b], "std": [r, g, b], "images": n, "pixels": n}`.

use rayon::prelude::*;

use std::path::PathBuf;

use super::{Op, OpContext, OpError};
use crate::data::images;
use crate::data::{DataError, write_atomic};

pub struct Stats;

crate::params! {
    /// The parameters of `stats`.
    pub struct Args {
        /// the image set; all images with the same channel count
        images: PathBuf,
    }
}

impl Op for Stats {
    type Params = Args;
    const NAME: &'static str = "stats";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str = "Per-channel mean and std of an image set, for normalization.";
    const INPUTS: &'static [&'static str] = &["images"];

    fn outputs(&self, _: &Args) -> Vec<String> {
        vec!["stats.json".into()]
    }

    fn run(&self, a: Args, cx: &mut OpContext) -> Result<(), OpError> {
        let dir = a.images;
        let files = images::list(&dir)?;
        if files.is_empty() {
            return Err(
                DataError::new(&dir, "no PNG, JPEG or TIFF images in this directory").into(),
            );
        }
        let sums: Vec<Result<Sums, DataError>> = cx
            .pool()?
            .install(|| files.par_iter().map(|rel| sums(&dir.join(rel))).collect());
        let mut total: Option<Sums> = None;
        for (rel, s) in files.iter().zip(sums) {
            let s = s?;
            match &mut total {
                None => total = Some(s),
                Some(t) if t.mean.len() != s.mean.len() => {
                    return Err(DataError::new(
                        &dir.join(rel),
                        format!(
                            "has {} channels, the images before it {}",
                            s.mean.len(),
                            t.mean.len()
                        ),
                    )
                    .into());
                }
                Some(t) => t.add(&s),
            }
        }
        let t = total.expect("at least one image");
        let n = t.pixels as f64;
        let mean = t.mean.clone();
        let std: Vec<f64> = t.m2.iter().map(|m2| (m2 / n).sqrt()).collect();
        let doc = serde_json::json!({"mean": mean, "std": std, "images": files.len(), "pixels": t.pixels});
        cx.log(format_args!(
            "{} images: mean {mean:.4?}, std {std:.4?}",
            files.len()
        ));
        let mut text = serde_json::to_vec_pretty(&doc).expect("serializes");
        text.push(b'\n');
        write_atomic(&cx.out_dir.join("stats.json"), &text)?;
        Ok(())
    }
}

/// Per-channel mean and sum of squared deviations (values in [0, 1]),
/// merged across images by Chan et al.'s formula, exact for constant data.
struct Sums {
    mean: Vec<f64>,
    m2: Vec<f64>,
    pixels: u64,
}

impl Sums {
    fn add(&mut self, o: &Sums) {
        let (na, nb) = (self.pixels as f64, o.pixels as f64);
        let n = na + nb;
        for c in 0..self.mean.len() {
            let d = o.mean[c] - self.mean[c];
            self.mean[c] += d * nb / n;
            self.m2[c] += o.m2[c] + d * d * na * nb / n;
        }
        self.pixels += o.pixels;
    }
}

fn sums(path: &std::path::Path) -> Result<Sums, DataError> {
    let img = images::open(path)?;
    let channels = img.color().channel_count() as usize;
    let (values, scale): (Vec<f64>, f64) = if img.color().bytes_per_pixel() as usize / channels >= 2
    {
        (
            img.to_rgba16()
                .pixels()
                .flat_map(|p| p.0)
                .map(f64::from)
                .collect(),
            65535.0,
        )
    } else {
        (
            img.to_rgba8()
                .pixels()
                .flat_map(|p| p.0)
                .map(f64::from)
                .collect(),
            255.0,
        )
    };
    // Colour channels only (grey counts once), no alpha.
    let used = if channels <= 2 { 1 } else { 3 };
    let pixels = values.len() / 4;
    let n = pixels as f64;
    let mut mean = vec![0.0; used];
    for px in values.chunks_exact(4) {
        for c in 0..used {
            mean[c] += px[c] / scale;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut m2 = vec![0.0; used];
    for px in values.chunks_exact(4) {
        for c in 0..used {
            let d = px[c] / scale - mean[c];
            m2[c] += d * d;
        }
    }
    Ok(Sums {
        mean,
        m2,
        pixels: pixels as u64,
    })
}
