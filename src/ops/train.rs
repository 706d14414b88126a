//! `train`: trains one model on candle (CPU, or a GPU with the `cuda`
//! feature) for one fold: classification, multi-label, regression, one box
//! plus a class per image, detection (FCOS), instance segmentation (FCOS
//! with a Mask R-CNN mask head) or semantic segmentation (U-Net).
//!
//! ```toml
//! [stages.train]
//! op = "train"
//! matrix = { fold = "${range(params.folds)}" }
//! images = "${stages.data.train_images}"
//! labels = "${stages.data.train}"
//! folds = "${stages.split.folds}"
//! fold = "${fold}"
//! arch = "resnet18"
//! epochs = 10
//! hflip = 0.5
//! ```
//!
//! Writes `best.safetensors` (the best validation epoch's weights, EMA
//! weights when `ema` is on), `last.safetensors` (the last epoch's weights
//! with optimizer state and EMA, to go on from with `init`; not with
//! `keep_last = false`), `oof.csv` (the
//! best epoch's predictions on the validation fold, in `predict`'s
//! format; tasks detect and instance: `oof.json`, COCO results),
//! `history.csv`, `curves.png`, `metrics.json` (the best epoch's
//! validation metrics), for tasks box, detect, instance and segment
//! `examples.png`,
//! and for task segment `oof/` (the validation masks and probabilities).
//!
//! A killed run resumes from its last finished epoch when run again with
//! the same parameters and inputs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::{Op, OpContext, OpError, Param, ParamError, ParamKind};
use crate::data::DataError;
use crate::data::boxes::{Coco, Det, ImageId, NBox, iou_xyxy, read_coco, write_dets};
use crate::data::masks::MaskSource;
use crate::data::table::{Table, fmt_f64};
use crate::nn::aug::Aug;
use crate::nn::dataset::{self, Samples};
use crate::nn::detect::decode::Params as DecodeParams;
use crate::nn::detect::fcos::Config as DetectorConfig;
use crate::nn::loss::{Loss, parse_terms};
use crate::nn::models::{Arch, Heads, Task};
use crate::nn::predict::{table, to_xywh};
use crate::nn::schedule::{self, Schedule};
use crate::nn::segment::infer::Cover;
use crate::nn::train::{Config, Data, Epoch, Paths, Start, default_monitor, fit, metric_names};
use crate::nn::{checkpoint, optim, plot};
use crate::value::Value;

pub struct Train;

/// Which rows validate: one fold of the folds table, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fold {
    /// Train on every row; no validation.
    All,
    /// Validate on the rows of this fold, train on the others.
    Index(u64),
}

impl Param for Fold {
    const KIND: ParamKind = ParamKind::Any;
    fn from_value(v: &Value, _: &Path) -> Result<Self, String> {
        match v {
            Value::Int(i) if *i >= 0 => Ok(Fold::Index(*i as u64)),
            Value::Str(s) if s == "all" => Ok(Fold::All),
            _ => Err("a fold number (0, 1, …) or \"all\"".into()),
        }
    }
}

crate::params! {
    /// The parameters of `train`.
    pub struct Args {
        /// Directory of training images, named by id (a `resize` or `synth` output).
        images: PathBuf,
        /// Labels table: the id, then the label column (and `bbox` `x y w h` in pixels for
        /// task box; for task segment a run-length mask unless `masks` is given); for tasks
        /// detect and instance a COCO ground-truth file, images named by `file_name`; task
        /// segment takes one too, each class's mask the union of its objects'
        /// `segmentation`s.
        labels: PathBuf,
        /// Task segment: a directory of mask PNGs named by id: class-index images (0
        /// background, c + 1 class c; with one class any value above 0), or one subdirectory
        /// of binary masks per class. An image without a mask file has no object.
        masks: Option<PathBuf> = "",
        /// Folds table `id,fold`; needed unless `fold = "all"`.
        folds: Option<PathBuf> = "",
        /// The validation fold (train on the others), or "all" (train on everything, no
        /// validation).
        fold: Fold = "all",
        /// classify (one class per image), multilabel (label lists), regress (a number), box
        /// (one box and a class per image), detect (any number of boxes of several classes),
        /// segment (a mask per class), instance (any number of objects, each with its box and
        /// mask).
        task: Task = "classify",
        /// simple_cnn, resnet18, resnet34, efficientnet_b0.
        arch: Arch = "simple_cnn",
        /// The label column; empty: `label` (`Target` for multilabel), else the first value
        /// column.
        label_column: String = "",
        /// Class names in head order; empty: the labels found, sorted (numerically when
        /// numbers).
        classes: Vec<String> = [],
        /// Extra training tables (pseudo labels): hard labels, or one probability column per
        /// class (soft); a `weight` column weights rows. Tasks detect and instance: COCO files (an
        /// annotation's `weight` weights it).
        extra: Vec<PathBuf> = [],
        /// Directory of the extra tables' images; empty: `images`.
        extra_images: Option<PathBuf> = "",
        /// Weight of extra rows that have no `weight` column.
        extra_weight: f64 = 1.0,
        /// A checkpoint to start from (another stage's best or last); variables that do not
        /// fit are reported and left initialized.
        init: Option<PathBuf> = "",
        /// Also take `init`'s optimizer state (a `last` checkpoint's), to go on training.
        init_optimizer: bool = false,
        /// A safetensors file with timm/PyTorch names: loads what matches, logs what did not.
        pretrained: Option<PathBuf> = "",
        /// Epochs to train.
        epochs: usize = 10,
        /// Images per batch.
        batch_size: usize = 32,
        /// Side the images are resized to; 0: the first image's width. At most 65536; a size
        /// whose batch cannot fit in memory is refused before training starts.
        image_size: u32 = 0,
        /// sgd, adam or adamw (PyTorch's update rules).
        optimizer: optim::Kind = "adamw",
        /// Peak learning rate.
        lr: f64 = 0.001,
        /// SGD momentum.
        momentum: f64 = 0.9,
        /// Weight decay on weights (not biases or norms): L2 for sgd and adam, decoupled for
        /// adamw.
        weight_decay: f64 = 0.0001,
        /// constant, step (× gamma every step_epochs), cosine (to min_lr), plateau (× gamma
        /// after patience epochs without a better monitored metric).
        schedule: schedule::Kind = "cosine",
        /// Linear warm-up from 0, in epochs (fractions allowed), per batch.
        warmup_epochs: f64 = 0.0,
        /// Floor of cosine and plateau.
        min_lr: f64 = 0.0,
        /// Epochs between step decays.
        step_epochs: usize = 10,
        /// Decay factor of step and plateau.
        gamma: f64 = 0.1,
        /// plateau: epochs without improvement before a decay.
        patience: usize = 2,
        /// ce, bce, focal, mse, smooth_l1, dice, lovasz, or a table of weights (`{ bce = 1.0,
        /// smooth_l1 = 5.0 }`); auto: ce (classify), bce (multilabel), mse (regress), ce +
        /// smooth_l1 (box), bce + dice (segment).
        loss: Value = "auto",
        /// ε of ce's label smoothing.
        label_smoothing: f64 = 0.0,
        /// γ of the focal loss.
        focal_gamma: f64 = 2.0,
        /// Batches whose gradients are summed per optimizer step.
        accumulate: usize = 1,
        /// Clip the gradients' global L2 norm to this; 0: off.
        clip_grad: f64 = 0.0,
        /// Decay of an exponential moving average of the weights, used for validation and
        /// `best`; 0: off. Warmed up as `min(ema, (1 + n) / (10 + n))` after n steps. It
        /// averages over about 1 / (1 - ema) steps: 0.99 suits a few hundred steps per run,
        /// 0.999 a few thousand, 0.9999 tens of thousands.
        ema: f64 = 0.0,
        /// Write `last.safetensors` (the last epoch's weights with optimizer state and EMA,
        /// as large as three models), to go on from with `init`; `false` keeps only `best`.
        keep_last: bool = true,
        /// Train only the head for this many epochs first.
        freeze_epochs: usize = 0,
        /// After the frozen epochs, train the head and only the last this-many blocks; -1: all.
        trainable_blocks: i64 = -1,
        /// Probability of a left-right flip.
        hflip: f64 = 0.0,
        /// Probability of an up-down flip.
        vflip: f64 = 0.0,
        /// Probability of a rotation by 90°, 180° or 270°.
        rot90: f64 = 0.0,
        /// Probability of a transpose.
        transpose: f64 = 0.0,
        /// Random resized crop: the range of the crop's area fraction (aspect 3/4 to 4/3);
        /// [1.0, 1.0]: off.
        crop_scale: Vec<f64> = [1.0, 1.0],
        /// Brightness jitter β: scale by a factor in [1 − β, 1 + β].
        brightness: f64 = 0.0,
        /// Contrast jitter γ: blend with the grey mean by a factor in [1 − γ, 1 + γ].
        contrast: f64 = 0.0,
        /// Saturation jitter σ: blend each pixel with its grey by a factor in [1 − σ, 1 + σ].
        saturation: f64 = 0.0,
        /// Probability of cutout (coarse dropout): `cutout_holes` black squares of side
        /// `cutout_size` × the image side at random places; boxes and masks are kept.
        cutout: f64 = 0.0,
        /// Cutout: the number of squares.
        cutout_holes: usize = 1,
        /// Cutout: each square's side as a fraction of the image's side.
        cutout_size: f64 = 0.25,
        /// Stop after this many epochs without a better monitored metric; 0: off.
        early_stopping: usize = 0,
        /// The validation metric that picks the best epoch, named as in `evaluate`, or `loss`;
        /// auto: accuracy, f1_macro, qwk, box_iou, coco_map50, dice, coco_segm_map50 by task.
        monitor: String = "auto",
        /// multilabel: the probability from which a label counts, for validation metrics;
        /// segment: from which a pixel belongs to a class.
        threshold: f64 = 0.5,
        /// Per-channel mean subtracted (in [0, 1] units); ImageNet's by default.
        mean: Vec<f64> = [0.485, 0.456, 0.406],
        /// Per-channel standard deviation divided by.
        std: Vec<f64> = [0.229, 0.224, 0.225],
        /// A `stats` output (stats.json); when given, its mean and std replace `mean` and
        /// `std`.
        stats: Option<PathBuf> = "",
        /// Seeds initialization, shuffling and augmentation: on the CPU, the same seed gives
        /// the same weights.
        seed: i64 = 0,
        /// auto, cpu, cuda or cuda:N (a GPU needs a build with `--features cuda`).
        device: String = "auto",
        /// Tasks detect and instance: channels of the feature pyramid and of the head's towers
        /// (torchvision: 256).
        fpn_channels: usize = 128,
        /// Tasks detect and instance: convolutions in each of the head's two towers
        /// (torchvision: 4).
        head_convs: usize = 4,
        /// Task instance: convolutions of the mask head, of `fpn_channels` channels
        /// (torchvision: 4).
        mask_convs: usize = 4,
        /// Tasks detect and instance: validation keeps detections scoring above this.
        score_thr: f64 = 0.05,
        /// Tasks detect and instance: NMS drops a box overlapping a better one of its class by
        /// more than this IoU.
        nms_iou: f64 = 0.6,
        /// Tasks detect and instance: detections kept per image.
        max_det: usize = 100,
        /// Task segment: channels of the U-Net decoder's last block, doubling upward
        /// (segmentation_models_pytorch's decoder (256, 128, 64, 32, 16) is 16).
        decoder_width: usize = 16,
        /// Task segment: train on random `image_size` windows at native resolution and
        /// validate over overlapping tiles (images larger than the model's input, as HuBMAP's);
        /// false: whole images resized to `image_size`.
        tile: bool = false,
        /// Task segment with `tile`: neighbouring tiles overlap by this fraction of a side.
        tile_overlap: f64 = 0.25,
    }
}

impl Op for Train {
    type Params = Args;
    const NAME: &'static str = "train";
    // 2: detectors place their locations where the backbone's cells are
    // centred (ResNet, EfficientNet: at whole strides, as torchvision).
    // 3: EMA's decay is warmed up.
    const VERSION: u32 = 3;
    const SUMMARY: &'static str = "Train a classifier, multi-label classifier, regressor, box model, detector, instance or semantic segmenter on one fold (candle).";
    const INPUTS: &'static [&'static str] = &["images", "labels", "folds", "masks"];

    fn outputs(&self, a: &Args) -> Vec<String> {
        let mut v: Vec<String> = [
            "best.safetensors",
            if a.task.detects() {
                "oof.json"
            } else {
                "oof.csv"
            },
            "history.csv",
            "curves.png",
            "metrics.json",
        ]
        .map(String::from)
        .to_vec();
        if a.keep_last {
            v.insert(1, "last.safetensors".into());
        }
        if matches!(
            a.task,
            Task::Box | Task::Detect | Task::Instance | Task::Segment
        ) {
            v.push("examples.png".into());
        }
        if matches!(a.task, Task::Classify | Task::Multilabel) {
            v.extend(["confusion.png".into(), "examples.png".into()]);
        }
        if a.task == Task::Segment {
            v.push("oof".into());
        }
        v
    }

    fn validate(&self, a: &Args) -> Vec<ParamError> {
        let mut errs = Vec::new();
        let task = a.task;
        if matches!(a.fold, Fold::Index(_)) && a.folds.is_none() {
            errs.push(ParamError::new(
                "folds",
                "a validation fold needs a folds table",
            ));
        }
        if !matches!(a.loss, Value::Interp(_))
            && let Err(e) = parse_terms(&a.loss, task)
        {
            errs.push(ParamError::new("loss", e));
        }
        for (name, v) in [
            ("epochs", a.epochs),
            ("batch_size", a.batch_size),
            ("accumulate", a.accumulate),
            ("step_epochs", a.step_epochs),
        ] {
            if v < 1 {
                errs.push(ParamError::new(name, "must be at least 1"));
            }
        }
        if a.image_size > MAX_IMAGE_SIZE {
            errs.push(ParamError::new(
                "image_size",
                format!("must be at most {MAX_IMAGE_SIZE}"),
            ));
        }
        if a.lr.is_nan() || a.lr <= 0.0 {
            errs.push(ParamError::new("lr", "must be above 0"));
        }
        for (name, v) in [
            ("hflip", a.hflip),
            ("vflip", a.vflip),
            ("rot90", a.rot90),
            ("transpose", a.transpose),
            ("cutout", a.cutout),
        ] {
            if !(0.0..=1.0).contains(&v) {
                errs.push(ParamError::new(name, "a probability, in [0, 1]"));
            }
        }
        if !(a.cutout_size > 0.0 && a.cutout_size <= 1.0) {
            errs.push(ParamError::new(
                "cutout_size",
                "a fraction of the image's side, in (0, 1]",
            ));
        }
        for (name, v) in [
            ("brightness", a.brightness),
            ("contrast", a.contrast),
            ("saturation", a.saturation),
        ] {
            if !(0.0..=1.0).contains(&v) {
                errs.push(ParamError::new(name, "a jitter strength in [0, 1]"));
            }
        }
        if !(0.0..1.0).contains(&a.ema) {
            errs.push(ParamError::new("ema", "a decay in [0, 1); 0 turns EMA off"));
        }
        let v = &a.crop_scale;
        if v.len() != 2 || !(v[0] > 0.0 && v[0] <= v[1] && v[1] <= 1.0) {
            errs.push(ParamError::new(
                "crop_scale",
                "two area fractions [lo, hi], 0 < lo ≤ hi ≤ 1",
            ));
        }
        for (name, l) in [("mean", &a.mean), ("std", &a.std)] {
            if l.len() != 3 || (name == "std" && l.iter().any(|v| v.is_nan() || *v <= 0.0)) {
                errs.push(ParamError::new(
                    name,
                    "three numbers, one per RGB channel (std above 0)",
                ));
            }
        }
        let m = a.monitor.as_str();
        if m != "auto" && m != "loss" && !metric_names(task, 2).contains(&m) {
            errs.push(ParamError::new(
                "monitor",
                format!(
                    "task {} validates with {}; use one of them, `loss` or `auto`",
                    task,
                    metric_names(task, 2).join(", ")
                ),
            ));
        }
        for (name, v) in [
            ("fpn_channels", a.fpn_channels),
            ("head_convs", a.head_convs),
            ("max_det", a.max_det),
        ] {
            if v < 1 {
                errs.push(ParamError::new(name, "must be at least 1"));
            }
        }
        if !(0.0..1.0).contains(&a.score_thr) {
            errs.push(ParamError::new("score_thr", "a score in [0, 1)"));
        }
        if !(0.0..=1.0).contains(&a.nms_iou) {
            errs.push(ParamError::new("nms_iou", "an IoU in [0, 1]"));
        }
        if a.decoder_width < 1 {
            errs.push(ParamError::new("decoder_width", "must be at least 1"));
        }
        if !(0.0..0.95).contains(&a.tile_overlap) {
            errs.push(ParamError::new(
                "tile_overlap",
                "a fraction of a side in [0, 0.95)",
            ));
        }
        if a.masks.is_some() && task != Task::Segment {
            errs.push(ParamError::new("masks", "masks are for task segment"));
        }
        if a.tile && task != Task::Segment {
            errs.push(ParamError::new("tile", "tiles are for task segment"));
        }
        if a.tile && a.image_size == 0 {
            errs.push(ParamError::new(
                "image_size",
                "training on tiles needs the tile's side in image_size",
            ));
        }
        errs.extend(super::check_device(&a.device));
        errs
    }

    fn run(&self, a: Args, cx: &mut OpContext) -> Result<(), OpError> {
        let task = a.task;
        let images_dir = a.images.clone();
        let fold = match a.fold {
            Fold::Index(f) => Some(f as i64),
            Fold::All => None,
        };
        let val_ids = validation_ids(&a, fold)?;
        let index = dataset::image_index(&images_dir)?;
        let d = match task {
            Task::Detect | Task::Instance => detect_data(&a, &index, &val_ids, cx)?,
            // Masks from a COCO file's objects: read as the detectors read it.
            Task::Segment if a.labels.extension().is_some_and(|e| e == "json") => {
                if a.masks.is_some() {
                    return Err(OpError::param(
                        "masks",
                        "with a COCO file as `labels` the masks are its objects' `segmentation`s",
                    ));
                }
                detect_data(&a, &index, &val_ids, cx)?
            }
            Task::Segment => segment_data(&a, &index, &val_ids, cx)?,
            _ => table_data(&a, &index, &val_ids, cx)?,
        };
        let DataRead {
            train,
            val,
            classes,
            label_name,
            category_ids,
            val_coco_ids,
        } = d;
        if train.is_empty() {
            return Err(DataError::new(
                &a.labels,
                "no training rows (every row is in the validation fold)",
            )
            .into());
        }
        let (mean, std) = normalization(&a)?;
        let mut image_size = a.image_size;
        if image_size == 0 {
            let img = crate::data::images::open(&train.paths[0])?;
            image_size = img.width();
        }
        let batch_size = a.batch_size;
        let need = crate::nn::memory::batch_lower_bound(a.arch, batch_size, image_size);
        if let Some(have) = crate::nn::memory::available()
            && need > have as u128
        {
            use crate::nn::memory::human;
            return Err(OpError::param(
                "image_size",
                format!(
                    "image_size = {image_size} with batch_size = {batch_size} needs at least {} \
                 for one batch of {}, and {} of memory is available: lower image_size or batch_size",
                    human(need),
                    a.arch,
                    human(have as u128)
                ),
            ));
        }
        let terms = parse_terms(&a.loss, task).map_err(|e| OpError::param("loss", e))?;
        let monitor = match a.monitor.as_str() {
            "auto" => default_monitor(task).to_string(),
            m => m.to_string(),
        };
        let cfg = Config {
            arch: a.arch,
            task,
            epochs: a.epochs,
            batch_size,
            image_size,
            optimizer: a.optimizer,
            momentum: a.momentum,
            weight_decay: a.weight_decay,
            schedule: Schedule {
                kind: a.schedule,
                base_lr: a.lr,
                min_lr: a.min_lr,
                epochs: a.epochs,
                warmup_epochs: a.warmup_epochs,
                gamma: a.gamma,
                step_epochs: a.step_epochs,
                patience: a.patience,
            },
            loss: Loss {
                terms,
                label_smoothing: a.label_smoothing,
                focal_gamma: a.focal_gamma,
            },
            accumulate: a.accumulate,
            clip_grad: a.clip_grad,
            ema: a.ema,
            freeze_epochs: a.freeze_epochs,
            trainable_blocks: a.trainable_blocks,
            aug: Aug {
                hflip: a.hflip,
                vflip: a.vflip,
                rot90: a.rot90,
                transpose: a.transpose,
                crop_scale: [a.crop_scale[0], a.crop_scale[1]],
                brightness: a.brightness,
                contrast: a.contrast,
                saturation: a.saturation,
                cutout: a.cutout,
                cutout_holes: a.cutout_holes,
                cutout_size: a.cutout_size,
                window: (task == Task::Segment && a.tile).then_some(image_size),
            },
            early_stopping: a.early_stopping,
            monitor,
            threshold: a.threshold,
            seed: a.seed as u64,
            mean,
            std,
            heads: Heads {
                detector: DetectorConfig {
                    channels: a.fpn_channels,
                    convs: a.head_convs,
                },
                decoder_width: a.decoder_width,
                mask_convs: a.mask_convs,
            },
            decode: decode_params(a.score_thr, a.nms_iou, a.max_det),
            cover: if a.tile {
                Cover::Tiles {
                    overlap: a.tile_overlap,
                }
            } else {
                Cover::Whole
            },
        };
        let device =
            crate::nn::device(&a.device, cx.gpus).map_err(|e| OpError::param("device", e))?;
        let start = start_from(&a, &device)?;
        let data = Data {
            train,
            val,
            classes,
            value_column: label_name,
            category_ids,
        };
        cx.log(format!(
            "train {} on {} images, validate on {} ({} fold {}), {} {}, {}² , device {:?}",
            cfg.arch,
            data.train.len(),
            data.val.len(),
            task,
            fold.map_or("all".to_string(), |f| f.to_string()),
            data.classes.len(),
            if task == Task::Regress {
                "value"
            } else {
                "classes"
            },
            cfg.image_size,
            device
        ));
        let work = cx
            .resume_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| cx.out_dir.join(".work"));
        std::fs::create_dir_all(&work).map_err(|e| OpError::io(&work, e))?;
        let paths = Paths {
            work: work.clone(),
            best: cx.out_dir.join("best.safetensors"),
            last: a.keep_last.then(|| cx.out_dir.join("last.safetensors")),
        };
        let pool = cx.pool()?;
        let cancel = cx.cancel;
        let cancelled = || cancel.load(std::sync::atomic::Ordering::Relaxed);
        // Epoch lines go to the log as they happen (`tail -f` it).
        let progress = cx.progress;
        let log = &mut *cx.log;
        let result = fit(
            &cfg,
            &data,
            start,
            &paths,
            &device,
            &pool,
            &cancelled,
            progress,
            &mut |l| {
                use std::io::Write;
                let _ = writeln!(log, "{l}");
                let _ = log.flush();
            },
        );
        let mut summary = result?;

        // oof: the best epoch's validation predictions.
        let mut seg_scores = Vec::new();
        if task == Task::Segment {
            // The best checkpoint over the validation images, as `predict`
            // runs it.
            let dir = cx.out_dir.join("oof");
            for d in ["masks", "probs"] {
                let p = dir.join(d);
                std::fs::create_dir_all(&p).map_err(|e| OpError::io(&p, e))?;
            }
            if !data.val.is_empty() {
                let (model, _) = super::predict::load_model(&paths.best, &device)?;
                let imgs = crate::nn::loader::Images::new(
                    data.val.paths.clone(),
                    cfg.image_size,
                    cfg.mean,
                    cfg.std,
                )?
                .with_masks(data.val.masks.clone(), data.classes.len());
                let th = cfg.threshold as f32;
                summary.oof = super::predict::write_masks(
                    &model,
                    &imgs,
                    &data.val.ids,
                    &[crate::nn::aug::Dihedral::default()],
                    cfg.cover,
                    &data.classes,
                    th,
                    cfg.batch_size,
                    &device,
                    &pool,
                    &dir,
                    &mut |_| {
                        if cancelled() {
                            Err(crate::nn::NnError::Cancelled)
                        } else {
                            Ok(())
                        }
                    },
                    &mut |pos, p: &crate::nn::segment::infer::ProbMap| {
                        // Each image's mean Dice over classes, for examples.png.
                        let truth = imgs.mask(pos)?;
                        let counts = p.overlaps(&truth, th);
                        seg_scores.push((crate::metrics::segment::mean_dice_iou(&counts).0, pos));
                        Ok(())
                    },
                )?;
            }
        }
        let sizes = &summary.val_sizes;
        if task.detects() {
            let mut dets =
                coco_results(&summary.oof.dets, &val_coco_ids, sizes, &data.category_ids);
            attach_masks(&mut dets, &summary.oof.masks);
            write_dets(&cx.out_dir.join("oof.json"), &dets)?;
        }
        let oof = if summary.oof.probs.len() == data.val.len()
            || summary.oof.rles.len() == data.val.len()
        {
            table(
                task,
                &data.classes,
                &data.value_column,
                &data.val.ids,
                &summary.oof,
                sizes,
            )
        } else {
            table(
                task,
                &data.classes,
                &data.value_column,
                &[],
                &summary.oof,
                sizes,
            )
        };
        if !task.detects() {
            oof.write(&cx.out_dir.join("oof.csv"))?;
        }
        write_history(&cx.out_dir.join("history.csv"), &summary.history)?;
        let png = curves(&summary.history, &cfg.monitor);
        save_png(&png, &cx.out_dir.join("curves.png"))?;
        let mut metrics: BTreeMap<String, f64> = BTreeMap::new();
        if let Some(b) = summary.best_epoch
            && let Some(e) = summary.history.iter().find(|e| e.epoch == b)
        {
            metrics.extend(e.metrics.clone());
            if let Some(v) = e.val_loss {
                metrics.insert("val_loss".into(), v);
            }
            metrics.insert("best_epoch".into(), b as f64);
        }
        metrics.insert("epochs".into(), summary.history.len() as f64);
        let secs: f64 = summary.history.iter().map(|e| e.seconds).sum();
        metrics.insert(
            "train_images_per_s".into(),
            (data.train.len() * summary.history.len()) as f64 / secs.max(1e-9),
        );
        crate::data::metrics_json::write(&cx.out_dir.join("metrics.json"), &metrics)?;
        if task == Task::Box {
            let img = examples(&data, &summary.oof, sizes)?;
            save_png(&img, &cx.out_dir.join("examples.png"))?;
        }
        if task.detects() {
            let img = detect_examples(&data, &summary.oof.dets, &summary.oof.masks, sizes)?;
            save_png(&img, &cx.out_dir.join("examples.png"))?;
        }
        if task == Task::Segment {
            let img = segment_examples(&data, seg_scores, &cx.out_dir.join("oof").join("masks"))?;
            save_png(&img, &cx.out_dir.join("examples.png"))?;
        }
        if matches!(task, Task::Classify | Task::Multilabel) {
            let (confusion, worst) = class_pictures(&data, &summary.oof.probs, task)?;
            save_png(&confusion, &cx.out_dir.join("confusion.png"))?;
            save_png(&worst, &cx.out_dir.join("examples.png"))?;
        }
        if cx.resume_dir.is_none() {
            let _ = std::fs::remove_dir_all(&work);
        }
        Ok(())
    }
}

/// What `train` reads: the samples, class names, the value column's name,
/// and for task detect the category ids and the validation images' COCO ids.
struct DataRead {
    train: Samples,
    val: Samples,
    classes: Vec<String>,
    label_name: String,
    category_ids: Vec<i64>,
    val_coco_ids: Vec<ImageId>,
}

/// The ids of the validation fold's rows (none for `fold = "all"`).
fn validation_ids(a: &Args, fold: Option<i64>) -> Result<HashSet<String>, OpError> {
    let (Some(f), Some(p)) = (fold, &a.folds) else {
        return Ok(HashSet::new());
    };
    let ft = Table::read(p)?;
    let c = ft.col("fold")?;
    let mut ids = HashSet::new();
    for (r, id) in ft.ids.iter().enumerate() {
        if ft.float(r, c)? as i64 == f {
            ids.insert(id.clone());
        }
    }
    if ids.is_empty() {
        return Err(DataError::new(p, format!("no row has fold {f}")).into());
    }
    Ok(ids)
}

/// Image-level tasks: a labels table (and extra tables).
fn table_data(
    a: &Args,
    index: &HashMap<String, PathBuf>,
    val_ids: &HashSet<String>,
    cx: &mut OpContext,
) -> Result<DataRead, OpError> {
    let task = a.task;
    let labels = Table::read(&a.labels)?;
    let label_col = dataset::label_column(&labels, &a.label_column, task)?;
    let label_name = labels.value_columns()[label_col].clone();
    let classes: Vec<String> = match (task, a.classes.clone()) {
        (Task::Regress, _) => vec![label_name.clone()],
        (_, c) if !c.is_empty() => c,
        _ => dataset::class_names(&labels, label_col, task),
    };
    if task != Task::Regress && classes.len() < 2 && task != Task::Multilabel {
        return Err(DataError::new(
            &labels.path,
            format!("only one class ({}) to learn", classes.join(", ")),
        )
        .into());
    }
    let read = |t: &Table, keep: &dyn Fn(&str) -> bool, index, dir: &Path, w| {
        dataset::read(t, task, &a.label_column, &classes, index, dir, w, keep)
    };
    let mut train = read(&labels, &|id| !val_ids.contains(id), index, &a.images, 1.0)?;
    let val = read(&labels, &|id| val_ids.contains(id), index, &a.images, 1.0)?;
    if !a.extra.is_empty() {
        let dir = a.extra_images.clone().unwrap_or_else(|| a.images.clone());
        let eindex = dataset::image_index(&dir)?;
        for p in &a.extra {
            let t = Table::read(p)?;
            let s: Samples = read(&t, &|_| true, &eindex, &dir, a.extra_weight as f32)?;
            cx.log(format!("{}: {} extra samples", p.display(), s.len()));
            train.extend(s);
        }
    }
    Ok(DataRead {
        train,
        val,
        classes,
        label_name,
        category_ids: Vec::new(),
        val_coco_ids: Vec::new(),
    })
}

/// Task segment: the labels table's ids, their masks from `masks` (a
/// directory of class-index PNGs, or of one subdirectory per class) or from
/// the table's run-length column; extra tables (pseudo labels) by their
/// run-length column.
fn segment_data(
    a: &Args,
    index: &HashMap<String, PathBuf>,
    val_ids: &HashSet<String>,
    cx: &mut OpContext,
) -> Result<DataRead, OpError> {
    use crate::data::masks::{MaskSource, max_index};
    let labels = Table::read(&a.labels)?;
    // How each id finds its mask.
    type Find = Box<dyn Fn(&Table, usize) -> MaskSource>;
    let (classes, find): (Vec<String>, Find) = match &a.masks {
        Some(dir) => {
            let top = crate::data::images::list(dir)?;
            let subdirs = crate::data::images::subdirectories(dir)?;
            let per_class = top.iter().all(|p| p.components().count() > 1) && !subdirs.is_empty();
            if per_class {
                let classes = if a.classes.is_empty() {
                    subdirs
                } else {
                    a.classes.clone()
                };
                let mut indexes = Vec::new();
                for c in &classes {
                    let d = dir.join(c);
                    if !d.is_dir() {
                        return Err(DataError::new(
                            &d,
                            format!("class `{c}` has no mask directory"),
                        )
                        .into());
                    }
                    indexes.push(dataset::image_index(&d)?);
                }
                let find = move |t: &Table, row: usize| {
                    let id = t.ids[row].as_str();
                    MaskSource::PerClass(indexes.iter().map(|ix| ix.get(id).cloned()).collect())
                };
                (classes, Box::new(find))
            } else {
                let mindex = dataset::image_index(dir)?;
                let classes = if a.classes.is_empty() {
                    let files: Vec<PathBuf> = top.iter().map(|r| dir.join(r)).collect();
                    match max_index(&files)? {
                        0 | 1 => vec!["mask".to_string()],
                        k => (1..=k).map(|c| c.to_string()).collect(),
                    }
                } else {
                    a.classes.clone()
                };
                let find = move |t: &Table, row: usize| {
                    mindex
                        .get(t.ids[row].as_str())
                        .map_or(MaskSource::Empty, |p| MaskSource::Index(p.clone()))
                };
                (classes, Box::new(find))
            }
        }
        None => {
            let col = dataset::label_column(&labels, &a.label_column, Task::Segment)?;
            let name = labels.value_columns()[col].clone();
            let classes = if a.classes.is_empty() {
                vec![name.clone()]
            } else {
                a.classes.clone()
            };
            if classes.len() != 1 {
                return Err(OpError::param(
                    "classes",
                    "run-length masks hold one class; give several classes' masks in `masks`",
                ));
            }
            (classes, Box::new(rle_column(col)))
        }
    };
    let samples = |t: &Table,
                   find: &dyn Fn(&Table, usize) -> MaskSource,
                   index: &HashMap<String, PathBuf>,
                   dir: &Path,
                   weight: f32,
                   keep: &dyn Fn(&str) -> bool|
     -> Result<Samples, DataError> {
        let wcol = t.col("weight").ok();
        let mut s = Samples::default();
        for (row, id) in t.ids.iter().enumerate() {
            if !keep(id) {
                continue;
            }
            let path = index.get(id.as_str()).ok_or_else(|| {
                DataError::at(
                    &t.path,
                    t.lines[row],
                    format!("id `{id}` has no image in {}", dir.display()),
                )
            })?;
            s.ids.push(id.clone());
            s.paths.push(path.clone());
            s.targets.push(Vec::new());
            s.boxes.push([0.0; 4]);
            s.weights.push(match wcol {
                Some(c) => t.float(row, c)? as f32,
                None => weight,
            });
            s.masks.push(find(t, row));
        }
        Ok(s)
    };
    let mut train = samples(&labels, &*find, index, &a.images, 1.0, &|id| {
        !val_ids.contains(id)
    })?;
    let val = samples(&labels, &*find, index, &a.images, 1.0, &|id| {
        val_ids.contains(id)
    })?;
    let empty = train
        .masks
        .iter()
        .chain(&val.masks)
        .filter(|m| **m == MaskSource::Empty)
        .count();
    if empty > 0 {
        cx.log(format!(
            "{empty} images have no mask file: no object in them"
        ));
    }
    if !a.extra.is_empty() {
        let dir = a.extra_images.clone().unwrap_or_else(|| a.images.clone());
        let eindex = dataset::image_index(&dir)?;
        for p in &a.extra {
            let t = Table::read(p)?;
            let col = dataset::label_column(&t, &a.label_column, Task::Segment)?;
            let s = samples(
                &t,
                &rle_column(col),
                &eindex,
                &dir,
                a.extra_weight as f32,
                &|_| true,
            )?;
            cx.log(format!("{}: {} extra images", p.display(), s.len()));
            train.extend(s);
        }
    }
    Ok(DataRead {
        train,
        val,
        classes,
        label_name: String::new(),
        category_ids: Vec::new(),
        val_coco_ids: Vec::new(),
    })
}

/// A table's masks as the run-length cells of its value column `col`.
fn rle_column(col: usize) -> impl Fn(&Table, usize) -> crate::data::masks::MaskSource {
    move |t: &Table, row: usize| crate::data::masks::MaskSource::Rle {
        rle: t.rows[row][col].clone(),
        file: t.path.clone(),
    }
}

/// Tasks detect and instance, and segment from COCO: a COCO ground-truth
/// file (and extra ones, pseudo labels).
fn detect_data(
    a: &Args,
    index: &HashMap<String, PathBuf>,
    val_ids: &HashSet<String>,
    cx: &mut OpContext,
) -> Result<DataRead, OpError> {
    let coco = read_coco(&a.labels)?;
    let category_ids = dataset::category_ids(&coco);
    if category_ids.is_empty() {
        return Err(DataError::new(
            &a.labels,
            "no categories and no annotations: nothing to detect",
        )
        .into());
    }
    let classes: Vec<String> = if a.classes.is_empty() {
        category_ids
            .iter()
            .map(|id| {
                coco.categories
                    .iter()
                    .find(|c| c.id == *id && !c.name.is_empty())
                    .map_or_else(|| id.to_string(), |c| c.name.clone())
            })
            .collect()
    } else if a.classes.len() == category_ids.len() {
        a.classes.clone()
    } else {
        return Err(OpError::param(
            "classes",
            format!(
                "{} names for the {} categories of {}",
                a.classes.len(),
                category_ids.len(),
                a.labels.display()
            ),
        ));
    };
    let task = a.task;
    let read = |path: &Path, c: &Coco, w: f32, index, dir: &Path, keep: &dyn Fn(&str) -> bool| {
        let (mut s, ids) = dataset::read_coco(path, c, w, index, dir, keep)?;
        // Task instance: each image's objects' masks travel with it; task
        // segment: each class's plane is the union of its objects' masks.
        if task == Task::Instance {
            s.masks = s
                .objects
                .iter()
                .map(|objs| MaskSource::Objects {
                    segms: objs.iter().map(|o| (o.segm.clone(), o.bbox)).collect(),
                    file: path.to_path_buf(),
                })
                .collect();
        } else if task == Task::Segment {
            s.masks = s
                .objects
                .iter()
                .map(|objs| MaskSource::Classes {
                    objects: objs
                        .iter()
                        .map(|o| (o.class, o.segm.clone(), o.bbox))
                        .collect(),
                    file: path.to_path_buf(),
                })
                .collect();
            s.objects = vec![Vec::new(); s.masks.len()];
        }
        Ok::<_, DataError>((s, ids))
    };
    let (mut train, _) = read(&a.labels, &coco, 1.0, index, &a.images, &|id| {
        !val_ids.contains(id)
    })?;
    let (val, val_coco_ids) = read(&a.labels, &coco, 1.0, index, &a.images, &|id| {
        val_ids.contains(id)
    })?;
    if !a.extra.is_empty() {
        let dir = a.extra_images.clone().unwrap_or_else(|| a.images.clone());
        let eindex = dataset::image_index(&dir)?;
        for p in &a.extra {
            let c = read_coco(p)?;
            if dataset::category_ids(&c)
                .iter()
                .any(|id| !category_ids.contains(id))
            {
                return Err(DataError::new(
                    p,
                    format!("has categories that {} has not", a.labels.display()),
                )
                .into());
            }
            // Classes by the main file's categories.
            let c = Coco {
                categories: coco.categories.clone(),
                ..c
            };
            let (s, _) = read(p, &c, a.extra_weight as f32, &eindex, &dir, &|_| true)?;
            cx.log(format!("{}: {} extra images", p.display(), s.len()));
            train.extend(s);
        }
    }
    Ok(DataRead {
        train,
        val,
        classes,
        label_name: String::new(),
        category_ids,
        val_coco_ids,
    })
}

/// How detections are picked from the head's outputs.
pub(crate) fn decode_params(score_thr: f64, nms_iou: f64, max_det: usize) -> DecodeParams {
    DecodeParams {
        score_thr: score_thr as f32,
        nms_iou,
        max_det,
        ..DecodeParams::default()
    }
}

/// Detections (normalized by each image's `sizes`) as COCO results in the
/// images' pixels, with their COCO image and category ids.
pub(crate) fn coco_results(
    dets: &[Vec<NBox>],
    ids: &[ImageId],
    sizes: &[(u32, u32)],
    category_ids: &[i64],
) -> Vec<Det> {
    let mut out = Vec::new();
    for ((d, id), &(w, h)) in dets.iter().zip(ids).zip(sizes) {
        let (w, h) = (f64::from(w), f64::from(h));
        for b in d {
            let [x1, y1, x2, y2] = b.xyxy;
            out.push(Det {
                image_id: id.clone(),
                category_id: category_ids
                    .get(b.label as usize)
                    .copied()
                    .unwrap_or(b.label),
                bbox: [x1 * w, y1 * h, (x2 - x1) * w, (y2 - y1) * h],
                score: b.score,
                segmentation: None,
            });
        }
    }
    out
}

/// Gives COCO results (in [`coco_results`]' order: image by image) their
/// masks, `masks[image][detection]` (task instance; none: left without).
pub(crate) fn attach_masks(results: &mut [Det], masks: &[Vec<crate::data::coco_rle::Rle>]) {
    use crate::data::coco_rle::RleJson;
    for (d, m) in results.iter_mut().zip(masks.iter().flatten()) {
        d.segmentation = Some(RleJson::from_rle(m));
    }
}

/// Tasks detect and instance: the three best and three worst validation
/// images by how well their objects were found (the mean over objects of
/// the best box IoU of a same-class detection scoring at least 0.3; an
/// empty image scores 1 without such detections, else 0; correctly empty
/// images are left out while six others remain), truth in green,
/// detections in red: boxes for detect, masks' outlines for instance.
fn detect_examples(
    data: &Data,
    dets: &[Vec<NBox>],
    masks: &[Vec<crate::data::coco_rle::Rle>],
    sizes: &[(u32, u32)],
) -> Result<image::RgbImage, OpError> {
    use plot::{GREEN, RED, rect, text};
    const SHOWN: f64 = 0.3;
    let size = |i: usize| (f64::from(sizes[i].0), f64::from(sizes[i].1));
    let n = data.val.len().min(dets.len());
    let scored: Vec<(f64, usize)> = (0..n)
        .map(|i| {
            let (w, h) = size(i);
            let shown: Vec<&NBox> = dets[i].iter().filter(|d| d.score >= SHOWN).collect();
            let objs = &data.val.objects[i];
            let score = if objs.is_empty() {
                if shown.is_empty() { 1.0 } else { 0.0 }
            } else {
                objs.iter()
                    .map(|o| {
                        let [x, y, bw, bh] = o.bbox;
                        let t = [x / w, y / h, (x + bw) / w, (y + bh) / h];
                        shown
                            .iter()
                            .filter(|d| d.label as usize == o.class)
                            .map(|d| iou_xyxy(&d.xyxy, &t))
                            .fold(0.0, f64::max)
                    })
                    .sum::<f64>()
                    / objs.len() as f64
            };
            (score, i)
        })
        .collect();
    // Empty images found empty score 1 and would fill "best" on data with
    // many of them (SIIM's "none"): they are left out while six others
    // remain; empty images with false detections stay among the worst.
    let with_objects = (0..n).filter(|&i| !data.val.objects[i].is_empty()).count();
    let scored: Vec<(f64, usize)> = if with_objects >= 6 {
        scored
            .into_iter()
            .filter(|&(s, i)| !data.val.objects[i].is_empty() || s < 1.0)
            .collect()
    } else {
        scored
    };
    let instance = !masks.is_empty();
    best_and_worst(data, scored, "", |tile, i| {
        let s = f64::from(tile.width());
        let (w, h) = size(i);
        // Task instance: the objects' outlines, true and predicted.
        if let Some(pred) = masks.get(i) {
            let (wu, hu) = sizes[i];
            if let Some(Ok(planes)) = data.val.masks.get(i).map(|m| m.decode(0, wu, hu)) {
                outline(tile, &index_map(&planes, wu, hu), plot::GREEN);
            }
            let shown: Vec<image::GrayImage> = dets[i]
                .iter()
                .zip(pred)
                .filter(|(d, _)| d.score >= SHOWN)
                .map(|(_, r)| {
                    let bits = r.decode();
                    image::GrayImage::from_fn(wu, hu, |x, y| {
                        image::Luma([u8::from(bits[(y * wu + x) as usize])])
                    })
                })
                .collect();
            outline(tile, &index_map(&shown, wu, hu), RED);
        }
        // Task instance shows the outlines, detect the boxes.
        for o in data.val.objects[i].iter().filter(|_| !instance) {
            let [x, y, bw, bh] = o.bbox;
            rect(
                tile,
                x / w * s,
                y / h * s,
                (x + bw) / w * s,
                (y + bh) / h * s,
                2,
                GREEN,
            );
        }
        for d in dets[i].iter().filter(|d| d.score >= SHOWN) {
            let [x1, y1, x2, y2] = d.xyxy.map(|v| v * s);
            if !instance {
                rect(tile, x1, y1, x2, y2, 1, RED);
            }
            let label = data
                .classes
                .get(d.label as usize)
                .map_or("?", String::as_str);
            text(
                tile,
                x1 as i64 + 2,
                y1 as i64 + 2,
                &format!("{label} {:.2}", d.score),
                1,
                RED,
            );
        }
    })
}

/// Task segment: the three best and three worst validation images by Dice,
/// the true masks' outlines in green, the predicted ones' (read back from
/// `masks`, the oof masks just written) in red.
fn segment_examples(
    data: &Data,
    scored: Vec<(f64, usize)>,
    masks: &Path,
) -> Result<image::RgbImage, OpError> {
    let classes = data.classes.len();
    best_and_worst(data, scored, "dice ", |tile, i| {
        let Ok(src) = image::image_dimensions(&data.val.paths[i]) else {
            return;
        };
        let (w, h) = src;
        let truth = data.val.masks[i].decode(classes, w, h).ok();
        let pred = crate::data::images::open(&masks.join(format!("{}.png", data.val.ids[i])))
            .ok()
            .map(|m| m.into_luma8());
        // A class-index map from the truth's planes (the last class wins).
        let truth_index = truth.map(|planes| index_map(&planes, w, h));
        for (m, colour) in [(truth_index, plot::GREEN), (pred, plot::RED)] {
            if let Some(m) = m {
                outline(tile, &m, colour);
            }
        }
    })
}

/// An index map of binary planes of `w × h` (classes or objects): 0
/// background, k + 1 plane k, the last plane on top; indices past 255 wrap.
fn index_map(planes: &[image::GrayImage], w: u32, h: u32) -> image::GrayImage {
    image::GrayImage::from_fn(w, h, |x, y| {
        let k = (0..planes.len())
            .rev()
            .find(|&k| planes[k].get_pixel(x, y).0[0] > 0)
            .map_or(0, |k| (k % 255) as u8 + 1);
        image::Luma([k])
    })
}

/// Draws on `tile` the borders between classes of the class-index mask
/// `m` (of any size, scaled to the tile).
fn outline(tile: &mut image::RgbImage, m: &image::GrayImage, colour: image::Rgb<u8>) {
    let (tw, th) = tile.dimensions();
    let at = |x: u32, y: u32| {
        let sx = (u64::from(x) * u64::from(m.width()) / u64::from(tw)) as u32;
        let sy = (u64::from(y) * u64::from(m.height()) / u64::from(th)) as u32;
        m.get_pixel(sx, sy).0[0]
    };
    for y in 0..th {
        for x in 0..tw {
            let v = at(x, y);
            let edge = (x + 1 < tw && at(x + 1, y) != v) || (y + 1 < th && at(x, y + 1) != v);
            if edge {
                tile.put_pixel(x, y, colour);
            }
        }
    }
}

/// The strip `examples.png` shows: the three best and three worst of the
/// validation images `scored` (score, index), each a tile drawn on by
/// `draw`, captioned "best" or "worst", `what` and the score, and its id.
fn best_and_worst(
    data: &Data,
    mut scored: Vec<(f64, usize)>,
    what: &str,
    draw: impl Fn(&mut image::RgbImage, usize),
) -> Result<image::RgbImage, OpError> {
    const SIDE: u32 = 192;
    let n = scored.len();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut picks: Vec<(f64, usize, &str)> = scored
        .iter()
        .take(3)
        .map(|&(s, i)| (s, i, "best"))
        .collect();
    picks.extend(
        scored
            .iter()
            .rev()
            .take(3.min(n.saturating_sub(3)))
            .map(|&(s, i)| (s, i, "worst")),
    );
    let mut tiles = Vec::new();
    for (score, i, kind) in picks {
        let mut tile = val_tile(data, i, SIDE, &format!("{kind} {what}{score:.2}"))?;
        draw(&mut tile, i);
        tiles.push(tile);
    }
    if tiles.is_empty() {
        tiles.push(no_validation_images(SIDE));
    }
    Ok(plot::hstack(&tiles))
}

fn normalization(a: &Args) -> Result<([f32; 3], [f32; 3]), OpError> {
    let three = |v: Vec<f64>| -> [f32; 3] {
        let mut a = [0f32; 3];
        for (i, x) in v.into_iter().take(3).enumerate() {
            a[i] = x as f32;
        }
        a
    };
    if let Some(p) = &a.stats {
        let bytes = std::fs::read(p).map_err(|e| OpError::io(p, e))?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| DataError::new(p, format!("not JSON: {e}")))?;
        let get = |k: &str| -> Result<Vec<f64>, DataError> {
            let l: Vec<f64> = v[k]
                .as_array()
                .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
                .unwrap_or_default();
            match l.len() {
                1 => Ok(vec![l[0]; 3]),
                3 => Ok(l),
                _ => Err(DataError::new(
                    p,
                    format!("`{k}` is not a list of 1 or 3 numbers"),
                )),
            }
        };
        return Ok((three(get("mean")?), three(get("std")?)));
    }
    Ok((three(a.mean.clone()), three(a.std.clone())))
}

fn start_from(a: &Args, device: &candle_core::Device) -> Result<Option<Start>, OpError> {
    let mut start: Option<Start> = None;
    if let Some(p) = &a.pretrained {
        let (t, _) = checkpoint::load(p, device)?;
        start = Some(Start {
            tensors: checkpoint::model_tensors(&t),
            optim: None,
            what: p.display().to_string(),
        });
    }
    if let Some(p) = &a.init {
        let (t, header) = checkpoint::load(p, device)?;
        let optim = if a.init_optimizer {
            // A file podium did not write has no steps: start counting at 0.
            let steps = if header.is_null() {
                0
            } else {
                checkpoint::Meta::read(p, header)?.steps
            };
            Some((checkpoint::section(&t, "optim"), steps))
        } else {
            None
        };
        let mut tensors = start.map(|s| s.tensors).unwrap_or_default();
        tensors.extend(checkpoint::model_tensors(&t));
        start = Some(Start {
            tensors,
            optim,
            what: p.display().to_string(),
        });
    }
    Ok(start)
}

fn write_history(path: &Path, h: &[Epoch]) -> Result<(), DataError> {
    let names: Vec<String> = h
        .first()
        .map(|e| e.metrics.keys().cloned().collect())
        .unwrap_or_default();
    let mut cols = vec!["lr", "train_loss", "val_loss"];
    cols.extend(names.iter().map(String::as_str));
    cols.push("seconds");
    let mut t = Table::new(&cols);
    t.columns[0] = "epoch".into();
    for e in h {
        let mut row = vec![
            format!("{:.6e}", e.lr),
            fmt_f64(e.train_loss),
            e.val_loss.map(fmt_f64).unwrap_or_default(),
        ];
        row.extend(
            names
                .iter()
                .map(|n| e.metrics.get(n).map(|v| fmt_f64(*v)).unwrap_or_default()),
        );
        row.push(format!("{:.2}", e.seconds));
        t.push(e.epoch.to_string(), row);
    }
    t.write(path)
}

/// Loss per epoch (train and validation) beside the validation metrics.
/// The middle chart's title names the metric that picks the best epoch.
fn curves(h: &[Epoch], monitor: &str) -> image::RgbImage {
    use plot::{BLUE, GREEN, ORANGE, RED, Series, chart, hstack};
    let pts = |f: &dyn Fn(&Epoch) -> Option<f64>| -> Vec<(f64, f64)> {
        h.iter()
            .filter_map(|e| f(e).map(|v| (e.epoch as f64, v)))
            .collect()
    };
    let mut loss = vec![Series {
        name: "train",
        color: BLUE,
        points: pts(&|e| Some(e.train_loss)),
    }];
    if h.iter().any(|e| e.val_loss.is_some()) {
        loss.push(Series {
            name: "validation",
            color: ORANGE,
            points: pts(&|e| e.val_loss),
        });
    }
    let names: Vec<String> = h
        .first()
        .map(|e| e.metrics.keys().cloned().collect())
        .unwrap_or_default();
    let colors = [GREEN, RED, BLUE, ORANGE];
    let metrics: Vec<Series> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Series {
            name: n,
            color: colors[i % colors.len()],
            points: pts(&|e| e.metrics.get(n).copied()),
        })
        .collect();
    let title = format!("validation: {monitor}");
    let lr = [Series {
        name: "lr",
        color: BLUE,
        points: pts(&|e| Some(e.lr)),
    }];
    hstack(&[
        chart("loss", "epoch", &loss, 440, 320),
        chart(&title, "epoch", &metrics, 440, 320),
        chart("learning rate", "epoch", &lr, 440, 320),
    ])
}

/// A class's short name for a picture: its name, else its index.
fn class_name(classes: &[String], k: usize) -> String {
    classes.get(k).cloned().unwrap_or_else(|| k.to_string())
}

/// A heat map, the images' scores and a caption per image.
type Pictured<'a> = (
    image::RgbImage,
    Vec<(f64, usize)>,
    Box<dyn Fn(usize) -> String + 'a>,
);

/// What a classifier gets wrong, as pictures: the confusion matrix of the
/// validation fold at the best epoch (classify: true class × predicted
/// class; multilabel: per class TP, FN, FP, TN at 0.5), and the twelve
/// validation images it was most wrong about (classify: the lowest
/// probability of the true class; multilabel: the largest mean absolute
/// error over the classes), each with its true and predicted labels.
fn class_pictures(
    data: &Data,
    probs: &[Vec<f32>],
    task: Task,
) -> Result<(image::RgbImage, image::RgbImage), OpError> {
    use crate::nn::predict::argmax;
    let n = data.val.len().min(probs.len());
    let k = probs.first().map_or(0, Vec::len);
    let names: Vec<String> = (0..k).map(|c| class_name(&data.classes, c)).collect();
    let truth = |i: usize| -> Vec<f32> { data.val.targets[i].clone() };
    let labels = |v: &[f32], at: f32| -> String {
        let on: Vec<String> = (0..v.len())
            .filter(|&c| v[c] >= at)
            .map(|c| names[c].clone())
            .collect();
        if on.is_empty() {
            "-".into()
        } else {
            on.join(" ")
        }
    };
    let (confusion, scored, caption): Pictured = if task == Task::Classify {
        let mut counts = vec![vec![0usize; k]; k];
        for (i, p) in probs.iter().enumerate().take(n) {
            let (t, p) = (argmax(&truth(i)), argmax(p));
            if t < k && p < k {
                counts[t][p] += 1;
            }
        }
        let img = plot::heatmap(
            &format!("confusion on the validation fold ({n} images)"),
            "true",
            "predicted",
            &names,
            &names,
            &counts,
        );
        let scored = (0..n)
            .map(|i| {
                (
                    f64::from(probs[i].get(argmax(&truth(i))).copied().unwrap_or(0.0)),
                    i,
                )
            })
            .collect();
        let cap = Box::new(|i: usize| {
            format!(
                "true {} pred {}",
                names[argmax(&truth(i)).min(k.saturating_sub(1))],
                names[argmax(&probs[i]).min(k.saturating_sub(1))]
            )
        });
        (img, scored, cap)
    } else {
        let mut counts = vec![vec![0usize; 4]; k];
        for (i, p) in probs.iter().enumerate().take(n) {
            let t = truth(i);
            for c in 0..k {
                let (y, p) = (t[c] >= 0.5, p[c] >= 0.5);
                let col = match (y, p) {
                    (true, true) => 0,
                    (true, false) => 1,
                    (false, true) => 2,
                    (false, false) => 3,
                };
                counts[c][col] += 1;
            }
        }
        let cols: Vec<String> = ["TP", "FN", "FP", "TN"].map(String::from).to_vec();
        let img = plot::heatmap(
            &format!("per class at 0.5, validation fold ({n} images)"),
            "class",
            "outcome",
            &names,
            &cols,
            &counts,
        );
        let scored = (0..n)
            .map(|i| {
                let t = truth(i);
                let err: f64 = (0..k)
                    .map(|c| f64::from((t[c] - probs[i][c]).abs()))
                    .sum::<f64>()
                    / k.max(1) as f64;
                (1.0 - err, i)
            })
            .collect();
        let cap = Box::new(|i: usize| {
            format!(
                "true {} pred {}",
                labels(&truth(i), 0.5),
                labels(&probs[i], 0.5)
            )
        });
        (img, scored, cap)
    };
    let worst = worst_grid(data, scored, &caption)?;
    Ok((confusion, worst))
}

/// The twelve lowest-scored validation images in a grid of four columns,
/// each with its score, its caption and its id.
fn worst_grid(
    data: &Data,
    mut scored: Vec<(f64, usize)>,
    caption: &dyn Fn(usize) -> String,
) -> Result<image::RgbImage, OpError> {
    const SIDE: u32 = 160;
    scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut tiles = Vec::new();
    for &(score, i) in scored.iter().take(12) {
        let mut tile = val_tile(data, i, SIDE, &format!("score {score:.2}"))?;
        plot::text(&mut tile, 4, 16, &caption(i), 1, YELLOW);
        tiles.push(tile);
    }
    if tiles.is_empty() {
        tiles.push(no_validation_images(SIDE));
    }
    Ok(plot::grid(&tiles, 4))
}

const YELLOW: image::Rgb<u8> = image::Rgb([255, 255, 0]);

/// Validation image `i` at `side × side`, with `label` at the top and its
/// id at the bottom.
fn val_tile(data: &Data, i: usize, side: u32, label: &str) -> Result<image::RgbImage, OpError> {
    let src = crate::data::images::open(&data.val.paths[i])?.into_rgb8();
    let mut tile = image::imageops::resize(&src, side, side, image::imageops::FilterType::Nearest);
    plot::text(&mut tile, 4, 4, label, 1, YELLOW);
    plot::text(&mut tile, 4, side as i64 - 12, &data.val.ids[i], 1, YELLOW);
    Ok(tile)
}

/// The tile that stands for an empty validation fold.
fn no_validation_images(side: u32) -> image::RgbImage {
    let mut t = image::RgbImage::from_pixel(side * 2, 40, image::Rgb([255, 255, 255]));
    plot::text(
        &mut t,
        4,
        16,
        "no validation images",
        1,
        image::Rgb([0, 0, 0]),
    );
    t
}

/// The three best and three worst validation images by IoU, truth in
/// green, prediction in red.
fn examples(
    data: &Data,
    p: &crate::nn::predict::Predictions,
    sizes: &[(u32, u32)],
) -> Result<image::RgbImage, OpError> {
    use plot::{GREEN, RED, rect};
    let n = data.val.len().min(p.boxes.len());
    let scored: Vec<(f64, usize)> = (0..n)
        .map(|i| {
            let size = (f64::from(sizes[i].0), f64::from(sizes[i].1));
            let pred = to_xywh(p.boxes[i], size);
            (
                crate::metrics::classify::box_iou(pred, data.val.boxes[i]),
                i,
            )
        })
        .collect();
    best_and_worst(data, scored, "IoU ", |tile, i| {
        let s = f64::from(tile.width());
        let (sx, sy) = (s / f64::from(sizes[i].0), s / f64::from(sizes[i].1));
        let [x, y, w, h] = data.val.boxes[i];
        rect(tile, x * sx, y * sy, (x + w) * sx, (y + h) * sy, 2, GREEN);
        let [x, y, w, h] = to_xywh(p.boxes[i], (s, s));
        rect(tile, x, y, x + w, y + h, 2, RED);
    })
}

/// The largest side `image_size` may ask for (an image's sides are 32-bit
/// everywhere, and a batch at this size fills any machine already).
const MAX_IMAGE_SIZE: u32 = 65_536;

pub(crate) fn save_png(img: &image::RgbImage, path: &Path) -> Result<(), DataError> {
    crate::data::images::save(&image::DynamicImage::ImageRgb8(img.clone()), path, 90)
}
