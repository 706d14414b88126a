//! `mask_ensemble`: merges the probability masks of several segmentation
//! predictions (folds, models, seeds: each `predict`'s `probs`) pixel by
//! pixel, by weighted mean or max, and writes the merged probabilities,
//! class-index masks and run-length table as `predict` does.
//!
//! ```toml
//! [stages.blend]
//! op = "mask_ensemble"
//! probs = "${stages.predict[*].probs}"
//! ```
//!
//! A `probs` directory holds `<id>.png` (one class) or `<class>/<id>.png`
//! (several); 8-bit grey, 255 = probability 1. Every input must hold the
//! same images of the same sizes.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{Op, OpContext, OpError, ParamError};
use crate::data::masks::save_gray;
use crate::data::table::Table;
use crate::data::{DataError, images};
use crate::nn::segment::infer::ProbMap;

pub struct MaskEnsemble;

crate::choice! {
    /// How the probabilities merge.
    pub enum Method {
        Mean = "mean",
        Max = "max",
    }
}

crate::params! {
    /// The parameters of `mask_ensemble`.
    pub struct Args {
        /// `predict` outputs `probs`: directories of probability PNGs
        probs: Vec<PathBuf>,
        /// mean (weighted) or max
        method: Method = "mean",
        /// one non-negative weight per directory; empty means all equal
        weights: Vec<f64> = [],
        /// a pixel belongs to a class whose merged probability reaches this
        threshold: f64 = 0.5,
        /// the class subdirectories in head order; empty: their names sorted (numerically when
        /// numbers)
        classes: Vec<String> = [],
    }
}

impl Op for MaskEnsemble {
    type Params = Args;
    const NAME: &'static str = "mask_ensemble";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str =
        "Merge segmentation probability masks pixel by pixel (weighted mean or max).";
    const INPUTS: &'static [&'static str] = &["probs"];

    fn outputs(&self, _: &Args) -> Vec<String> {
        ["probs", "masks", "pred.csv"].map(String::from).to_vec()
    }

    fn validate(&self, a: &Args) -> Vec<ParamError> {
        let mut errs = super::check_weights(&a.weights, a.probs.len(), "probs", "directories");
        if a.probs.is_empty() {
            errs.push(ParamError::new("probs", "give at least one directory"));
        }
        if !(0.0..=1.0).contains(&a.threshold) {
            errs.push(ParamError::new("threshold", "a probability in [0, 1]"));
        }
        errs
    }

    fn run(&self, a: Args, cx: &mut OpContext) -> Result<(), OpError> {
        let first = &a.probs[0];
        let classes = if a.classes.is_empty() {
            images::subdirectories(first)?
        } else {
            a.classes.clone()
        };
        // Relative paths of the images, from the first input.
        let plane_dir = |root: &Path, c: &str| {
            if classes.is_empty() {
                root.to_path_buf()
            } else {
                root.join(c)
            }
        };
        let names: Vec<String> = if classes.is_empty() {
            vec![String::new()]
        } else {
            classes.clone()
        };
        let ids: Vec<PathBuf> = images::list(&plane_dir(first, &names[0]))?;
        if ids.is_empty() {
            return Err(DataError::new(first, "no probability PNGs").into());
        }
        let w: Vec<f64> = if a.weights.is_empty() {
            vec![1.0; a.probs.len()]
        } else {
            a.weights.clone()
        };
        let wsum: f64 = w.iter().sum();
        for d in ["probs", "masks"] {
            let p = cx.out_dir.join(d);
            std::fs::create_dir_all(&p).map_err(|e| OpError::io(&p, e))?;
        }
        let pool = cx.pool()?;
        let out = cx.out_dir.to_path_buf();
        let merged: Vec<Result<(String, Vec<String>), DataError>> = pool.install(|| {
            ids.par_iter()
                .map(|rel| {
                    let mut map: Option<ProbMap> = None;
                    for (k, c) in names.iter().enumerate() {
                        let mut acc: Vec<f64> = Vec::new();
                        let mut size = (0, 0);
                        for (j, root) in a.probs.iter().enumerate() {
                            let p = plane_dir(root, c).join(rel);
                            let img = images::open(&p)?.into_luma8();
                            if acc.is_empty() {
                                size = img.dimensions();
                                acc = vec![0.0; img.len()];
                            } else if img.dimensions() != size {
                                return Err(DataError::new(
                                    &p,
                                    format!(
                                        "is {}×{}, the first input's {}×{}",
                                        img.width(),
                                        img.height(),
                                        size.0,
                                        size.1
                                    ),
                                ));
                            }
                            for (s, v) in acc.iter_mut().zip(img.as_raw()) {
                                let q = f64::from(*v) / 255.0;
                                *s = match a.method {
                                    Method::Mean => *s + w[j] * q,
                                    Method::Max => s.max(q),
                                };
                            }
                        }
                        let m = map.get_or_insert_with(|| ProbMap {
                            classes: names.len(),
                            w: size.0,
                            h: size.1,
                            data: Vec::with_capacity(names.len() * acc.len()),
                        });
                        let div = if a.method == Method::Mean { wsum } else { 1.0 };
                        m.data.extend(acc.iter().map(|v| (v / div) as f32));
                        let prob = m.plane_u8(k);
                        let dir = plane_dir(&out.join("probs"), c);
                        save_gray(&prob, &dir.join(rel).with_extension("png"))?;
                    }
                    let m = map.expect("one class at least");
                    let th = a.threshold as f32;
                    let id = rel.with_extension("").to_string_lossy().into_owned();
                    save_gray(
                        &m.index_mask(th),
                        &out.join("masks").join(format!("{id}.png")),
                    )?;
                    let rles = m.rles(th);
                    Ok((id, rles))
                })
                .collect()
        });
        let cols: Vec<&str> = if classes.is_empty() {
            vec!["mask"]
        } else {
            classes.iter().map(String::as_str).collect()
        };
        let mut t = Table::new(&cols);
        for r in merged {
            let (id, rles) = r?;
            t.push(id, rles);
        }
        t.write(&cx.out_dir.join("pred.csv"))?;
        cx.log(format_args!(
            "{} images × {} classes merged from {} predictions ({})",
            ids.len(),
            names.len(),
            a.probs.len(),
            a.method
        ));
        Ok(())
    }
}
