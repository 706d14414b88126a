//! `predict`: a `train` checkpoint over an image set, with test-time
//! augmentation.
//!
//! ```toml
//! [stages.predict]
//! op = "predict"
//! matrix = { fold = "${range(params.folds)}" }
//! checkpoint = "${stages.train[fold=fold].best}"
//! images = "${stages.data.test_images}"
//! tta = ["default", "flipud", "fliplr", "transpose"]
//! merge = "max"
//! ```
//!
//! Writes `pred.csv`: class probabilities (classify, multilabel; one column
//! per class), the value (regress, in the training label's column), or
//! `label,score,bbox` (box, `x y w h` in the image's pixels); with
//! `embed = true` also `embeddings.csv` (the penultimate layer, averaged
//! over the TTA variants); and `metrics.json` with `ms_per_image` (all
//! variants included) and `images`.
//!
//! `detections.json` holds COCO results in the images' pixels: a detector's
//! (task detect) detections, each TTA variant's mapped back through its
//! inverse and the variants fused by weighted boxes fusion (`tta_iou`,
//! scores averaged over the variants, so a box only some variants find
//! scores lower); task instance's the same, each with its mask as a
//! compressed run-length `segmentation` at the image's size (the mean of
//! the fused variants' mask probabilities at `threshold`); task box's one
//! box per image; nothing for the other tasks. A detector's `pred.csv`
//! counts each image's detections.
//!
//! Task segment writes `masks/<id>.png` (class indices) and `probs/`
//! (probabilities, 8-bit grey) at each image's size, from the whole image
//! or from overlapping tiles (`tile`), each TTA variant mapped back through
//! its inverse and averaged; its `pred.csv` holds each class's run-length
//! mask. The directories are empty for the other tasks.

use std::time::Instant;

use crate::nn::NnError;
use std::path::{Path, PathBuf};

use super::train::{attach_masks, coco_results, decode_params};
use super::wbf::{self, ConfType, WbfParams};
use super::{Op, OpContext, OpError, ParamError, Strs};
use crate::data::boxes::{ImageId, NBox, read_coco, write_dets};
use crate::data::{DataError, images, write_atomic};
use crate::nn::aug::{Dihedral, TTA_NAMES};
use crate::nn::checkpoint;
use crate::nn::detect::mask;
use crate::nn::loader::Images;
use crate::nn::models::{Heads, Model, Task};
use crate::nn::predict::{Predictions, argmax, embeddings_table, infer, infer_detect, table};
use crate::nn::segment::infer::{Cover, ProbMap, infer_segment};
use crate::nn::vars::VarStore;

pub struct Predict;

crate::choice! {
    /// How segmentation covers an image.
    pub enum Tile {
        Auto = "auto",
        Whole = "whole",
        Tiles = "tiles",
    }
}

crate::choice! {
    /// How TTA variants' probabilities merge.
    pub enum Merge {
        Mean = "mean",
        Max = "max",
    }
}

crate::params! {
    /// The parameters of `predict`.
    pub struct Args {
        /// A `train` checkpoint (best.safetensors or last.safetensors); a checkpoint with EMA
        /// weights predicts with them.
        checkpoint: PathBuf,
        /// Directory of images; ids are the file names without extension.
        images: PathBuf,
        /// TTA variants, any of default, flipud, fliplr, transpose, flipud_lr,
        /// flipud_transpose, fliplr_transpose, flipud_lr_transpose; or "all" for the eight.
        tta: Strs = "default",
        /// How the variants' probabilities merge (boxes are always averaged).
        merge: Merge = "mean",
        /// Also write embeddings.csv: the penultimate layer's features per image.
        embed: bool = false,
        /// Images per batch.
        batch_size: usize = 64,
        /// Tasks detect and instance: a COCO file whose `images` give the detections' image ids
        /// (matched by file name); empty: the file names without extension.
        coco: Option<PathBuf> = "",
        /// Tasks detect and instance: detections scoring at or below this are dropped.
        score_thr: f64 = 0.05,
        /// Tasks detect and instance: NMS drops a box overlapping a better one of its class by
        /// more than this IoU.
        nms_iou: f64 = 0.6,
        /// Tasks detect and instance: detections kept per image.
        max_det: usize = 100,
        /// Tasks detect and instance: boxes of different TTA variants overlapping by more than
        /// this IoU fuse (and so do their masks).
        tta_iou: f64 = 0.55,
        /// Task segment: auto (tiles when the checkpoint trained on windows at native
        /// resolution, else whole images), whole (each image resized to the model's side) or
        /// tiles (overlapping tiles of the model's side at native resolution, Gaussian-blended).
        tile: Tile = "auto",
        /// Task segment: neighbouring tiles overlap by this fraction of a side.
        tile_overlap: f64 = 0.25,
        /// Task segment: a pixel belongs to a class whose probability reaches this; task
        /// instance: to an object whose mask probability (averaged over the TTA variants)
        /// does.
        threshold: f64 = 0.5,
        /// auto, cpu, cuda or cuda:N.
        device: String = "auto",
    }
}

/// The TTA variants `tta` names.
fn variants(names: &[String]) -> Result<Vec<Dihedral>, String> {
    if names.len() == 1 && names[0] == "all" {
        return Ok(Dihedral::all().to_vec());
    }
    names
        .iter()
        .map(|n| {
            Dihedral::parse(n).ok_or_else(|| {
                format!(
                    "unknown TTA variant `{n}`; use {} or \"all\"",
                    TTA_NAMES.join(", ")
                )
            })
        })
        .collect()
}

impl Op for Predict {
    type Params = Args;
    const NAME: &'static str = "predict";
    // 2: detectors' locations as `train` version 2 places them.
    const VERSION: u32 = 2;
    const SUMMARY: &'static str =
        "Predict with a trained checkpoint over an image set, with test-time augmentation.";
    const INPUTS: &'static [&'static str] = &["checkpoint", "images"];

    fn outputs(&self, a: &Args) -> Vec<String> {
        let mut v = vec![
            "pred.csv".to_string(),
            "detections.json".to_string(),
            "masks".to_string(),
            "probs".to_string(),
            "metrics.json".to_string(),
        ];
        if a.embed {
            v.push("embeddings.csv".into());
        }
        v
    }

    fn validate(&self, a: &Args) -> Vec<ParamError> {
        let mut errs = Vec::new();
        if let Err(e) = variants(&a.tta.0) {
            errs.push(ParamError::new("tta", e));
        }
        if a.batch_size < 1 {
            errs.push(ParamError::new("batch_size", "must be at least 1"));
        }
        if a.max_det < 1 {
            errs.push(ParamError::new("max_det", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&a.score_thr) {
            errs.push(ParamError::new("score_thr", "a score in [0, 1)"));
        }
        for (name, v) in [("nms_iou", a.nms_iou), ("tta_iou", a.tta_iou)] {
            if !(0.0..=1.0).contains(&v) {
                errs.push(ParamError::new(name, "an IoU in [0, 1]"));
            }
        }
        if !(0.0..0.95).contains(&a.tile_overlap) {
            errs.push(ParamError::new(
                "tile_overlap",
                "a fraction of a side in [0, 0.95)",
            ));
        }
        if !(0.0..=1.0).contains(&a.threshold) {
            errs.push(ParamError::new("threshold", "a probability in [0, 1]"));
        }
        errs.extend(super::check_device(&a.device));
        errs
    }

    fn run(&self, a: Args, cx: &mut OpContext) -> Result<(), OpError> {
        let ckpt = a.checkpoint;
        let device =
            crate::nn::device(&a.device, cx.gpus).map_err(|e| OpError::param("device", e))?;
        let (model, meta) = load_model(&ckpt, &device)?;
        let (task, size, mean, std, act) = (
            meta.task,
            meta.image_size,
            meta.mean,
            meta.std,
            meta.activation,
        );
        let (classes, value_column) = (meta.classes, meta.value_column);
        let category_ids = meta.category_ids;
        for d in ["masks", "probs"] {
            let p = cx.out_dir.join(d);
            std::fs::create_dir_all(&p).map_err(|e| OpError::io(&p, e))?;
        }

        let dir = a.images;
        let files = images::list(&dir)?;
        if files.is_empty() {
            return Err(
                DataError::new(&dir, "no PNG, JPEG or TIFF images in this directory").into(),
            );
        }
        let ids: Vec<String> = files
            .iter()
            .map(|r| r.with_extension("").to_string_lossy().into_owned())
            .collect();
        let paths: Vec<_> = files.iter().map(|r| dir.join(r)).collect();
        let imgs = Images::new(paths.clone(), size, mean, std)?;
        let tta = variants(&a.tta.0).map_err(|e| OpError::param("tta", e))?;
        let pool = cx.pool()?;
        let idx: Vec<usize> = (0..ids.len()).collect();
        let total = (idx.len() * tta.len()) as u64;
        let started = Instant::now();
        let mut progress = |done: usize| {
            cx.step(done as u64, total, "images × TTA variants");
            cx.check_cancel().map_err(|_| crate::nn::NnError::Cancelled)
        };
        let mut sizes = Vec::new();
        if matches!(task, Task::Box | Task::Detect | Task::Instance) {
            for p in &paths {
                sizes.push(
                    image::image_dimensions(p).map_err(|e| DataError::new(p, e.to_string()))?,
                );
            }
        }
        let mut masks = Vec::new();
        let (p, dets) = if task.detects() {
            let prm = decode_params(a.score_thr, a.nms_iou, a.max_det);
            let found = infer_detect(
                &model,
                &imgs,
                &idx,
                &tta,
                &prm,
                a.batch_size,
                &device,
                &pool,
                &mut progress,
            )?;
            let fuse = WbfParams {
                iou_thr: a.tta_iou,
                skip_box_thr: a.score_thr,
                conf_type: ConfType::Avg,
                weights: vec![1.0; tta.len()],
            };
            let mut dets: Vec<Vec<NBox>> = Vec::with_capacity(ids.len());
            for (i, v) in found.dets.iter().enumerate() {
                let fused = if v.len() == 1 {
                    v[0].clone()
                } else {
                    let mut f = wbf::fuse(v, &fuse);
                    f.truncate(a.max_det);
                    f
                };
                // Task instance: each object's mask, the mean of its
                // variants' masks pasted into the image.
                if let Some(parts) = found.parts.get(i) {
                    let groups = if v.len() == 1 {
                        parts[0].iter().map(|p| vec![p.clone()]).collect()
                    } else {
                        mask::members(&fused, v, parts, a.tta_iou)
                    };
                    let (w, h) = sizes[i];
                    masks.push(
                        groups
                            .iter()
                            .map(|g| {
                                mask::paste(
                                    g,
                                    mask::MASK,
                                    (w as usize, h as usize),
                                    a.threshold as f32,
                                )
                            })
                            .collect::<Vec<_>>(),
                    );
                }
                dets.push(fused);
            }
            let p = crate::nn::predict::Predictions {
                dets: dets.clone(),
                ..Default::default()
            };
            (p, dets)
        } else if task == Task::Segment {
            let cover = match (a.tile, meta.tile_overlap) {
                (Tile::Whole, _) | (Tile::Auto, None) => Cover::Whole,
                (Tile::Tiles, _) | (Tile::Auto, Some(_)) => Cover::Tiles {
                    overlap: a.tile_overlap,
                },
            };
            let p = write_masks(
                &model,
                &imgs,
                &ids,
                &tta,
                cover,
                &classes,
                a.threshold as f32,
                a.batch_size,
                &device,
                &pool,
                cx.out_dir,
                &mut progress,
                &mut |_, _| Ok(()),
            )?;
            (p, Vec::new())
        } else {
            let p = infer(
                &model,
                &imgs,
                &idx,
                &tta,
                a.merge == Merge::Max,
                act,
                a.embed,
                a.batch_size,
                &device,
                &pool,
                &mut progress,
            )?;
            // Task box: the one box, with the best class's probability.
            let dets = if task == Task::Box {
                p.probs
                    .iter()
                    .zip(&p.boxes)
                    .map(|(pr, b)| {
                        let k = argmax(pr);
                        let [cx, cy, w, h] = b.map(f64::from);
                        vec![NBox {
                            label: k as i64,
                            score: f64::from(pr[k]),
                            xyxy: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0],
                        }]
                    })
                    .collect()
            } else {
                Vec::new()
            };
            (p, dets)
        };
        let ms = started.elapsed().as_secs_f64() * 1000.0 / ids.len() as f64;
        cx.log(format!(
            "{} images × {} TTA variants: {ms:.2} ms per image",
            ids.len(),
            tta.len()
        ));
        table(task, &classes, &value_column, &ids, &p, &sizes)
            .write(&cx.out_dir.join("pred.csv"))?;
        let image_ids = match &a.coco {
            Some(c) => coco_image_ids(c, &ids)?,
            None => ids.iter().map(|i| ImageId::Str(i.clone())).collect(),
        };
        let category_ids: Vec<i64> = if category_ids.is_empty() {
            (0..classes.len() as i64).collect()
        } else {
            category_ids
        };
        let mut results = coco_results(&dets, &image_ids, &sizes, &category_ids);
        attach_masks(&mut results, &masks);
        write_dets(&cx.out_dir.join("detections.json"), &results)?;
        if a.embed {
            embeddings_table(&ids, &p).write(&cx.out_dir.join("embeddings.csv"))?;
        }
        let metrics = serde_json::json!({
            "ms_per_image": ms,
            "images": ids.len(),
            "tta": tta.len(),
        });
        write_atomic(
            &cx.out_dir.join("metrics.json"),
            serde_json::to_vec_pretty(&metrics)
                .expect("JSON")
                .as_slice(),
        )?;
        Ok(())
    }
}

/// A `train` checkpoint's model, with its EMA weights when it has them;
/// an error naming the file when it is no podium checkpoint or does not fit
/// its own header.
pub(crate) fn load_model(
    ckpt: &Path,
    device: &candle_core::Device,
) -> Result<(Model, checkpoint::Meta), OpError> {
    let (tensors, meta) = checkpoint::load_trained(ckpt, device)?;
    let bad = |what: &str| DataError::new(ckpt, format!("not a podium checkpoint: {what}"));
    let heads = if meta.task == Task::Regress {
        1
    } else {
        meta.classes.len()
    };
    // Frozen: inference records no graph and frees each layer's input.
    // Not drawn at random: every variable is loaded (or this is an error).
    let vars = VarStore::to_load(device).frozen();
    let sizes = Heads {
        detector: meta.detector.unwrap_or_default(),
        decoder_width: meta.decoder_width.unwrap_or(Heads::default().decoder_width),
        mask_convs: meta.mask_convs.unwrap_or(Heads::default().mask_convs),
    };
    let model = Model::with_heads(meta.arch, meta.task, heads, sizes, vars.clone())
        .map_err(NnError::from)?;
    let ema = checkpoint::section(&tensors, "ema");
    let weights = if ema.is_empty() {
        checkpoint::model_tensors(&tensors)
    } else {
        ema
    };
    let (_, skipped) = vars.load(&weights).map_err(NnError::from)?;
    let missing: Vec<String> = vars
        .entries()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| !weights.contains_key(k))
        .collect();
    if !missing.is_empty() || !skipped.is_empty() {
        return Err(bad(&format!(
            "it does not fit a {}: missing {}; not fitting {}",
            meta.arch,
            missing.len(),
            skipped.len()
        ))
        .into());
    }
    Ok((model, meta))
}

/// Task segment: runs the segmenter over `ids`' images and writes, per
/// image, `masks/<id>.png` (class indices: the most probable class's index
/// plus 1 where it reaches `threshold`, else 0) and its probabilities in
/// 8-bit grey (`probs/<id>.png` for one class, `probs/<class>/<id>.png` for
/// several); `inspect` sees each image's probabilities first; returns each
/// image's run-length masks per class.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_masks(
    model: &Model,
    imgs: &Images,
    ids: &[String],
    tta: &[Dihedral],
    cover: Cover,
    classes: &[String],
    threshold: f32,
    batch_size: usize,
    device: &candle_core::Device,
    pool: &rayon::ThreadPool,
    out: &Path,
    progress: &mut dyn FnMut(usize) -> Result<(), NnError>,
    inspect: &mut dyn FnMut(usize, &ProbMap) -> Result<(), NnError>,
) -> Result<Predictions, OpError> {
    use crate::data::masks::save_gray;
    let idx: Vec<usize> = (0..ids.len()).collect();
    let mut rles = Vec::with_capacity(ids.len());
    let pairs = ids.len() * tta.len().max(1);
    infer_segment(
        model,
        imgs,
        &idx,
        tta,
        cover,
        batch_size,
        device,
        pool,
        // Forward passes done, as (image, variant) pairs.
        &mut |done, total| progress(done * pairs / total.max(1)),
        &mut |pos, p| {
            inspect(pos, &p)?;
            let id = &ids[pos];
            let save = |m: &image::GrayImage, rel: PathBuf| -> Result<(), NnError> {
                let path = out.join(rel);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| NnError::Data(DataError::io(dir, e)))?;
                }
                save_gray(m, &path).map_err(NnError::Data)
            };
            save(
                &p.index_mask(threshold),
                Path::new("masks").join(format!("{id}.png")),
            )?;
            for (c, name) in classes.iter().enumerate() {
                let rel = if classes.len() == 1 {
                    Path::new("probs").join(format!("{id}.png"))
                } else {
                    Path::new("probs").join(name).join(format!("{id}.png"))
                };
                save(&p.plane_u8(c), rel)?;
            }
            rles.push(p.rles(threshold));
            Ok(())
        },
    )?;
    Ok(Predictions {
        rles,
        ..Default::default()
    })
}

/// The COCO image id of each image (`ids`: file names without extension),
/// by the `file_name`s of the COCO file `path`; an image it lacks is an
/// error naming both.
fn coco_image_ids(path: &std::path::Path, ids: &[String]) -> Result<Vec<ImageId>, OpError> {
    let coco = read_coco(path)?;
    let by_name: std::collections::HashMap<String, &ImageId> = coco
        .images
        .iter()
        .map(|im| (crate::nn::dataset::coco_sample_id(im), &im.id))
        .collect();
    ids.iter()
        .map(|id| {
            let stem = std::path::Path::new(id)
                .file_name()
                .map_or(id.clone(), |s| s.to_string_lossy().into_owned());
            by_name
                .get(id)
                .or_else(|| by_name.get(&stem))
                .map(|i| (*i).clone())
                .ok_or_else(|| {
                    DataError::new(path, format!("has no image named `{id}` (in `images`)")).into()
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::models::Arch;
    use candle_core::{Device, Tensor};

    fn header() -> serde_json::Value {
        checkpoint::tests::meta().to_json()
    }

    /// `load_model` builds on variables created as zeros and frozen: the
    /// checkpoint's values must replace every one (the trained model's
    /// logits come back), and a checkpoint short of one is an error, never
    /// a model with zeros in it.
    #[test]
    fn a_loaded_model_computes_with_every_value_of_its_checkpoint() {
        let dev = Device::Cpu;
        let dir = tempfile::tempdir().unwrap();
        let vars = VarStore::new(&dev, 5);
        let trained = Model::new(Arch::SimpleCnn, Task::Classify, 2, vars.clone()).unwrap();
        let x = Tensor::rand(0f32, 1f32, (2, 3, 16, 16), &dev).unwrap();
        let want: Vec<Vec<f32>> = trained
            .forward_t(&x, false)
            .unwrap()
            .logits
            .to_vec2()
            .unwrap();
        let mut tensors = vars.snapshot().unwrap();
        let full = dir.path().join("full.safetensors");
        checkpoint::save(&full, &tensors, &header()).unwrap();
        let (model, _) = load_model(&full, &dev).unwrap();
        let out = model.forward_t(&x, false).unwrap().logits;
        assert!(!out.track_op(), "a loaded model is frozen");
        assert_eq!(out.to_vec2::<f32>().unwrap(), want);

        tensors.remove("head.weight").expect("simple_cnn's head");
        let short = dir.path().join("short.safetensors");
        checkpoint::save(&short, &tensors, &header()).unwrap();
        let e = load_model(&short, &dev)
            .err()
            .expect("an error")
            .to_string();
        assert!(
            e.contains("short.safetensors") && e.contains("missing 1"),
            "{e}"
        );
    }
}
