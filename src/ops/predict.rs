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

use std::time::Instant;

use super::train::nn_error;
use super::{Op, OpContext, OpError, ParamError, ParamKind, ParamSpec, Params};
use crate::data::{DataError, images, write_atomic};
use crate::nn::aug::{Dihedral, TTA_NAMES};
use crate::nn::checkpoint;
use crate::nn::loader::Images;
use crate::nn::models::{Model, Task};
use crate::nn::predict::{Activation, embeddings_table, infer, table};
use crate::nn::vars::VarStore;
use crate::value::Value;

pub struct Predict;

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "checkpoint",
        kind: ParamKind::Path,
        default: None,
        help: "A `train` checkpoint (best.safetensors or last.safetensors); a checkpoint with EMA weights predicts with them.",
    },
    ParamSpec {
        name: "images",
        kind: ParamKind::Path,
        default: None,
        help: "Directory of images; ids are the file names without extension.",
    },
    ParamSpec {
        name: "tta",
        kind: ParamKind::Strs,
        default: Some("\"default\""),
        help: "TTA variants, any of default, flipud, fliplr, transpose, flipud_lr, flipud_transpose, fliplr_transpose, flipud_lr_transpose; or \"all\" for the eight.",
    },
    ParamSpec {
        name: "merge",
        kind: ParamKind::Enum(&["mean", "max"]),
        default: Some("\"mean\""),
        help: "How the variants' probabilities merge (boxes are always averaged).",
    },
    ParamSpec {
        name: "embed",
        kind: ParamKind::Bool,
        default: Some("false"),
        help: "Also write embeddings.csv: the penultimate layer's features per image.",
    },
    ParamSpec {
        name: "batch_size",
        kind: ParamKind::Int,
        default: Some("64"),
        help: "Images per batch.",
    },
    ParamSpec {
        name: "device",
        kind: ParamKind::Str,
        default: Some("\"auto\""),
        help: "auto, cpu, cuda or cuda:N.",
    },
];

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
    fn name(&self) -> &'static str {
        "predict"
    }

    fn version(&self) -> u32 {
        1
    }

    fn summary(&self) -> &'static str {
        "Predict with a trained checkpoint over an image set, with test-time augmentation."
    }

    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }

    fn inputs(&self) -> &'static [&'static str] {
        &["checkpoint", "images"]
    }

    fn outputs(&self, params: &Params) -> Result<Vec<String>, ParamError> {
        let mut v = vec!["pred.csv".to_string(), "metrics.json".to_string()];
        if params.get("embed").and_then(Value::as_bool) == Some(true) {
            v.push("embeddings.csv".into());
        }
        Ok(v)
    }

    fn validate(&self, p: &Params) -> Vec<ParamError> {
        let mut errs = Vec::new();
        let names: Vec<String> = match p.get("tta") {
            Some(Value::Str(s)) => vec![s.clone()],
            Some(Value::List(l)) => l
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
            _ => Vec::new(),
        };
        if let Err(e) = variants(&names) {
            errs.push(ParamError::new("tta", e));
        }
        if p.get("batch_size")
            .and_then(Value::as_int)
            .is_some_and(|v| v < 1)
        {
            errs.push(ParamError::new("batch_size", "must be at least 1"));
        }
        errs.extend(super::check_device(p));
        errs
    }

    fn run(&self, cx: &mut OpContext) -> Result<(), OpError> {
        let ckpt = cx.path("checkpoint").unwrap_or_default();
        let device = crate::nn::device(cx.str("device"), cx.gpus).map_err(OpError::Failed)?;
        let (tensors, meta) = checkpoint::load(&ckpt, &device)?;
        let bad = |what: &str| DataError::new(&ckpt, format!("not a podium checkpoint: {what}"));
        let task = meta["task"]
            .as_str()
            .and_then(Task::parse)
            .ok_or_else(|| bad("no task"))?;
        let arch = meta["arch"].as_str().ok_or_else(|| bad("no arch"))?;
        let classes: Vec<String> = meta["classes"]
            .as_array()
            .ok_or_else(|| bad("no classes"))?
            .iter()
            .filter_map(|c| c.as_str().map(String::from))
            .collect();
        let value_column = meta["value_column"].as_str().unwrap_or("value").to_string();
        let size = meta["image_size"]
            .as_u64()
            .ok_or_else(|| bad("no image_size"))? as u32;
        let three = |k: &str| -> Result<[f32; 3], DataError> {
            let v: Vec<f32> = meta[k]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_f64().map(|f| f as f32))
                        .collect()
                })
                .unwrap_or_default();
            <[f32; 3]>::try_from(v).map_err(|_| bad(&format!("no {k}")))
        };
        let (mean, std) = (three("mean")?, three("std")?);
        let act = Activation::parse(meta["activation"].as_str().unwrap_or(""));
        let heads = if task == Task::Regress {
            1
        } else {
            classes.len()
        };
        let vars = VarStore::new(&device, 0);
        let model = Model::new(arch, task, heads, vars.clone())
            .map_err(|e| OpError::Failed(e.to_string()))?;
        let ema = checkpoint::section(&tensors, "ema");
        let weights = if ema.is_empty() {
            checkpoint::model_tensors(&tensors)
        } else {
            ema
        };
        let (_, skipped) = vars
            .load(&weights)
            .map_err(|e| OpError::Failed(e.to_string()))?;
        let missing: Vec<String> = vars
            .entries()
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| !weights.contains_key(k))
            .collect();
        if !missing.is_empty() || !skipped.is_empty() {
            return Err(bad(&format!(
                "it does not fit a {arch}: missing {}; not fitting {}",
                missing.len(),
                skipped.len()
            ))
            .into());
        }

        let dir = cx.path("images").unwrap_or_default();
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
        let tta = variants(&cx.strs("tta")).map_err(OpError::Failed)?;
        let pool = cx.pool()?;
        let idx: Vec<usize> = (0..ids.len()).collect();
        let total = (idx.len() * tta.len()) as u64;
        let started = Instant::now();
        let p = infer(
            &model,
            &imgs,
            &idx,
            &tta,
            cx.str("merge") == "max",
            act,
            cx.bool("embed"),
            cx.int("batch_size").max(1) as usize,
            &device,
            &pool,
            &mut |done| {
                cx.step(done as u64, total, "images × TTA variants");
                cx.check_cancel().map_err(|_| crate::nn::NnError::Cancelled)
            },
        )
        .map_err(nn_error)?;
        let ms = started.elapsed().as_secs_f64() * 1000.0 / ids.len() as f64;
        cx.log(format!(
            "{} images × {} TTA variants: {ms:.2} ms per image",
            ids.len(),
            tta.len()
        ));
        let mut sizes = Vec::new();
        if task == Task::Box {
            for p in &paths {
                sizes.push(
                    image::image_dimensions(p).map_err(|e| DataError::new(p, e.to_string()))?,
                );
            }
        }
        table(task, &classes, &value_column, &ids, &p, &sizes)
            .write(&cx.out_dir.join("pred.csv"))?;
        if cx.bool("embed") {
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
