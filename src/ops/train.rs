//! `train`: trains one model on candle (CPU, or a GPU with the `cuda`
//! feature) for one fold: classification, multi-label, regression, or one
//! box plus a class per image.
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
//! with optimizer state and EMA, to go on from with `init`), `oof.csv` (the
//! best epoch's predictions on the validation fold, in `predict`'s
//! format), `history.csv`, `curves.png`, `metrics.json` (the best epoch's
//! validation metrics), and for task box `examples.png`.
//!
//! A killed run resumes from its last finished epoch when run again with
//! the same parameters and inputs.

use std::collections::BTreeMap;
use std::path::Path;

use super::{Op, OpContext, OpError, ParamError, ParamKind, ParamSpec, Params, is_given};
use crate::data::DataError;
use crate::data::table::{Table, fmt_f64};
use crate::nn::aug::Aug;
use crate::nn::dataset::{self, Samples};
use crate::nn::loss::{Loss, parse_terms};
use crate::nn::models::{ARCHS, TASKS, Task};
use crate::nn::predict::{table, to_xywh};
use crate::nn::schedule::{self, Schedule};
use crate::nn::train::{Config, Data, Epoch, Paths, Start, default_monitor, fit, metric_names};
use crate::nn::{NnError, checkpoint, optim, plot};
use crate::value::Value;

pub struct Train;

const IMAGENET_MEAN: &str = "[0.485, 0.456, 0.406]";
const IMAGENET_STD: &str = "[0.229, 0.224, 0.225]";

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "images",
        kind: ParamKind::Path,
        default: None,
        help: "Directory of training images, named by id (a `resize` or `synth` output).",
    },
    ParamSpec {
        name: "labels",
        kind: ParamKind::Path,
        default: None,
        help: "Labels table: the id, then the label column (and `bbox` `x y w h` in pixels for task box).",
    },
    ParamSpec {
        name: "folds",
        kind: ParamKind::Path,
        default: Some("\"\""),
        help: "Folds table `id,fold`; needed unless `fold = \"all\"`.",
    },
    ParamSpec {
        name: "fold",
        kind: ParamKind::Any,
        default: Some("\"all\""),
        help: "The validation fold (train on the others), or \"all\" (train on everything, no validation).",
    },
    ParamSpec {
        name: "task",
        kind: ParamKind::Enum(TASKS),
        default: Some("\"classify\""),
        help: "classify (one class per image), multilabel (label lists), regress (a number), box (one box and a class per image).",
    },
    ParamSpec {
        name: "arch",
        kind: ParamKind::Enum(ARCHS),
        default: Some("\"simple_cnn\""),
        help: "simple_cnn, resnet18, resnet34, efficientnet_b0.",
    },
    ParamSpec {
        name: "label_column",
        kind: ParamKind::Str,
        default: Some("\"\""),
        help: "The label column; empty: `label` (`Target` for multilabel), else the first value column.",
    },
    ParamSpec {
        name: "classes",
        kind: ParamKind::StrList,
        default: Some("[]"),
        help: "Class names in head order; empty: the labels found, sorted (numerically when numbers).",
    },
    ParamSpec {
        name: "extra",
        kind: ParamKind::Paths,
        default: Some("[]"),
        help: "Extra training tables (pseudo labels): hard labels, or one probability column per class (soft); a `weight` column weights rows.",
    },
    ParamSpec {
        name: "extra_images",
        kind: ParamKind::Path,
        default: Some("\"\""),
        help: "Directory of the extra tables' images; empty: `images`.",
    },
    ParamSpec {
        name: "extra_weight",
        kind: ParamKind::Float,
        default: Some("1.0"),
        help: "Weight of extra rows that have no `weight` column.",
    },
    ParamSpec {
        name: "init",
        kind: ParamKind::Path,
        default: Some("\"\""),
        help: "A checkpoint to start from (another stage's best or last); variables that do not fit are reported and left initialized.",
    },
    ParamSpec {
        name: "init_optimizer",
        kind: ParamKind::Bool,
        default: Some("false"),
        help: "Also take `init`'s optimizer state (a `last` checkpoint's), to go on training.",
    },
    ParamSpec {
        name: "pretrained",
        kind: ParamKind::Path,
        default: Some("\"\""),
        help: "A safetensors file with timm/PyTorch names: loads what matches, logs what did not.",
    },
    ParamSpec {
        name: "epochs",
        kind: ParamKind::Int,
        default: Some("10"),
        help: "Epochs to train.",
    },
    ParamSpec {
        name: "batch_size",
        kind: ParamKind::Int,
        default: Some("32"),
        help: "Images per batch.",
    },
    ParamSpec {
        name: "image_size",
        kind: ParamKind::Int,
        default: Some("0"),
        help: "Side the images are resized to; 0: the first image's width. At most 65536; a size whose batch cannot fit in memory is refused before training starts.",
    },
    ParamSpec {
        name: "optimizer",
        kind: ParamKind::Enum(optim::NAMES),
        default: Some("\"adamw\""),
        help: "sgd, adam or adamw (PyTorch's update rules).",
    },
    ParamSpec {
        name: "lr",
        kind: ParamKind::Float,
        default: Some("0.001"),
        help: "Peak learning rate.",
    },
    ParamSpec {
        name: "momentum",
        kind: ParamKind::Float,
        default: Some("0.9"),
        help: "SGD momentum.",
    },
    ParamSpec {
        name: "weight_decay",
        kind: ParamKind::Float,
        default: Some("0.0001"),
        help: "Weight decay on weights (not biases or norms): L2 for sgd and adam, decoupled for adamw.",
    },
    ParamSpec {
        name: "schedule",
        kind: ParamKind::Enum(schedule::NAMES),
        default: Some("\"cosine\""),
        help: "constant, step (× gamma every step_epochs), cosine (to min_lr), plateau (× gamma after patience epochs without a better monitored metric).",
    },
    ParamSpec {
        name: "warmup_epochs",
        kind: ParamKind::Float,
        default: Some("0.0"),
        help: "Linear warm-up from 0, in epochs (fractions allowed), per batch.",
    },
    ParamSpec {
        name: "min_lr",
        kind: ParamKind::Float,
        default: Some("0.0"),
        help: "Floor of cosine and plateau.",
    },
    ParamSpec {
        name: "step_epochs",
        kind: ParamKind::Int,
        default: Some("10"),
        help: "Epochs between step decays.",
    },
    ParamSpec {
        name: "gamma",
        kind: ParamKind::Float,
        default: Some("0.1"),
        help: "Decay factor of step and plateau.",
    },
    ParamSpec {
        name: "patience",
        kind: ParamKind::Int,
        default: Some("2"),
        help: "plateau: epochs without improvement before a decay.",
    },
    ParamSpec {
        name: "loss",
        kind: ParamKind::Any,
        default: Some("\"auto\""),
        help: "ce, bce, focal, mse, smooth_l1, or a table of weights (`{ bce = 1.0, smooth_l1 = 5.0 }`); auto: ce (classify), bce (multilabel), mse (regress), ce + smooth_l1 (box).",
    },
    ParamSpec {
        name: "label_smoothing",
        kind: ParamKind::Float,
        default: Some("0.0"),
        help: "ε of ce's label smoothing.",
    },
    ParamSpec {
        name: "focal_gamma",
        kind: ParamKind::Float,
        default: Some("2.0"),
        help: "γ of the focal loss.",
    },
    ParamSpec {
        name: "accumulate",
        kind: ParamKind::Int,
        default: Some("1"),
        help: "Batches whose gradients are summed per optimizer step.",
    },
    ParamSpec {
        name: "clip_grad",
        kind: ParamKind::Float,
        default: Some("0.0"),
        help: "Clip the gradients' global L2 norm to this; 0: off.",
    },
    ParamSpec {
        name: "ema",
        kind: ParamKind::Float,
        default: Some("0.0"),
        help: "Decay of an exponential moving average of the weights (0.999 is usual), used for validation and `best`; 0: off.",
    },
    ParamSpec {
        name: "freeze_epochs",
        kind: ParamKind::Int,
        default: Some("0"),
        help: "Train only the head for this many epochs first.",
    },
    ParamSpec {
        name: "trainable_blocks",
        kind: ParamKind::Int,
        default: Some("-1"),
        help: "After the frozen epochs, train the head and only the last this-many blocks; -1: all.",
    },
    ParamSpec {
        name: "hflip",
        kind: ParamKind::Float,
        default: Some("0.0"),
        help: "Probability of a left-right flip.",
    },
    ParamSpec {
        name: "vflip",
        kind: ParamKind::Float,
        default: Some("0.0"),
        help: "Probability of an up-down flip.",
    },
    ParamSpec {
        name: "rot90",
        kind: ParamKind::Float,
        default: Some("0.0"),
        help: "Probability of a rotation by 90°, 180° or 270°.",
    },
    ParamSpec {
        name: "transpose",
        kind: ParamKind::Float,
        default: Some("0.0"),
        help: "Probability of a transpose.",
    },
    ParamSpec {
        name: "crop_scale",
        kind: ParamKind::FloatList,
        default: Some("[1.0, 1.0]"),
        help: "Random resized crop: the range of the crop's area fraction (aspect 3/4 to 4/3); [1.0, 1.0]: off.",
    },
    ParamSpec {
        name: "brightness",
        kind: ParamKind::Float,
        default: Some("0.0"),
        help: "Brightness jitter β: scale by a factor in [1 − β, 1 + β].",
    },
    ParamSpec {
        name: "contrast",
        kind: ParamKind::Float,
        default: Some("0.0"),
        help: "Contrast jitter γ: blend with the grey mean by a factor in [1 − γ, 1 + γ].",
    },
    ParamSpec {
        name: "early_stopping",
        kind: ParamKind::Int,
        default: Some("0"),
        help: "Stop after this many epochs without a better monitored metric; 0: off.",
    },
    ParamSpec {
        name: "monitor",
        kind: ParamKind::Str,
        default: Some("\"auto\""),
        help: "The validation metric that picks the best epoch, named as in `evaluate`, or `loss`; auto: accuracy, f1_macro, qwk, box_iou by task.",
    },
    ParamSpec {
        name: "threshold",
        kind: ParamKind::Float,
        default: Some("0.5"),
        help: "multilabel: the probability from which a label counts, for validation metrics.",
    },
    ParamSpec {
        name: "mean",
        kind: ParamKind::FloatList,
        default: Some(IMAGENET_MEAN),
        help: "Per-channel mean subtracted (in [0, 1] units); ImageNet's by default.",
    },
    ParamSpec {
        name: "std",
        kind: ParamKind::FloatList,
        default: Some(IMAGENET_STD),
        help: "Per-channel standard deviation divided by.",
    },
    ParamSpec {
        name: "stats",
        kind: ParamKind::Path,
        default: Some("\"\""),
        help: "A `stats` output (stats.json); when given, its mean and std replace `mean` and `std`.",
    },
    ParamSpec {
        name: "seed",
        kind: ParamKind::Int,
        default: Some("0"),
        help: "Seeds initialization, shuffling and augmentation: on the CPU, the same seed gives the same weights.",
    },
    ParamSpec {
        name: "device",
        kind: ParamKind::Str,
        default: Some("\"auto\""),
        help: "auto, cpu, cuda or cuda:N (a GPU needs a build with `--features cuda`).",
    },
];

impl Op for Train {
    fn name(&self) -> &'static str {
        "train"
    }

    fn version(&self) -> u32 {
        1
    }

    fn summary(&self) -> &'static str {
        "Train a classifier, multi-label classifier, regressor or box model on one fold (candle)."
    }

    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }

    fn inputs(&self) -> &'static [&'static str] {
        &["images", "labels", "folds"]
    }

    fn outputs(&self, params: &Params) -> Result<Vec<String>, ParamError> {
        let mut v: Vec<String> = [
            "best.safetensors",
            "last.safetensors",
            "oof.csv",
            "history.csv",
            "curves.png",
            "metrics.json",
        ]
        .map(String::from)
        .to_vec();
        if params.get("task").and_then(Value::as_str) == Some("box") {
            v.push("examples.png".into());
        }
        Ok(v)
    }

    fn validate(&self, p: &Params) -> Vec<ParamError> {
        let mut errs = Vec::new();
        let task = p
            .get("task")
            .and_then(Value::as_str)
            .and_then(Task::parse)
            .unwrap_or(Task::Classify);
        match p.get("fold") {
            Some(Value::Int(i)) if *i >= 0 => {
                if !is_given(p, "folds") {
                    errs.push(ParamError::new(
                        "folds",
                        "a validation fold needs a folds table",
                    ));
                }
            }
            Some(Value::Str(s)) if s == "all" => {}
            Some(Value::Interp(_)) | None => {}
            Some(_) => errs.push(ParamError::new(
                "fold",
                "a fold number (0, 1, …) or \"all\"",
            )),
        }
        if let Some(v) = p.get("loss")
            && !matches!(v, Value::Interp(_))
            && let Err(e) = parse_terms(v, task)
        {
            errs.push(ParamError::new("loss", e));
        }
        for (name, min) in [
            ("epochs", 1),
            ("batch_size", 1),
            ("accumulate", 1),
            ("step_epochs", 1),
        ] {
            if p.get(name).and_then(Value::as_int).is_some_and(|v| v < min) {
                errs.push(ParamError::new(name, format!("must be at least {min}")));
            }
        }
        for name in ["image_size", "freeze_epochs", "early_stopping", "patience"] {
            if p.get(name).and_then(Value::as_int).is_some_and(|v| v < 0) {
                errs.push(ParamError::new(name, "must not be negative"));
            }
        }
        if p.get("image_size")
            .and_then(Value::as_int)
            .is_some_and(|v| v > MAX_IMAGE_SIZE)
        {
            errs.push(ParamError::new(
                "image_size",
                format!("must be at most {MAX_IMAGE_SIZE}"),
            ));
        }
        if p.get("lr")
            .and_then(Value::as_f64)
            .is_some_and(|v| v.is_nan() || v <= 0.0)
        {
            errs.push(ParamError::new("lr", "must be above 0"));
        }
        for name in ["hflip", "vflip", "rot90", "transpose"] {
            if p.get(name)
                .and_then(Value::as_f64)
                .is_some_and(|v| !(0.0..=1.0).contains(&v))
            {
                errs.push(ParamError::new(name, "a probability, in [0, 1]"));
            }
        }
        if p.get("ema")
            .and_then(Value::as_f64)
            .is_some_and(|v| !(0.0..1.0).contains(&v))
        {
            errs.push(ParamError::new("ema", "a decay in [0, 1); 0 turns EMA off"));
        }
        if let Some(l) = p.get("crop_scale").and_then(Value::as_list) {
            let v: Vec<f64> = l.iter().filter_map(Value::as_f64).collect();
            if v.len() != 2 || !(v[0] > 0.0 && v[0] <= v[1] && v[1] <= 1.0) {
                errs.push(ParamError::new(
                    "crop_scale",
                    "two area fractions [lo, hi], 0 < lo ≤ hi ≤ 1",
                ));
            }
        }
        for name in ["mean", "std"] {
            if let Some(l) = p.get(name).and_then(Value::as_list)
                && (l.len() != 3
                    || (name == "std" && l.iter().any(|x| x.as_f64().is_none_or(|v| v <= 0.0))))
            {
                errs.push(ParamError::new(
                    name,
                    "three numbers, one per RGB channel (std above 0)",
                ));
            }
        }
        if let Some(m) = p.get("monitor").and_then(Value::as_str)
            && m != "auto"
            && m != "loss"
            && !metric_names(task, 2).contains(&m)
        {
            errs.push(ParamError::new(
                "monitor",
                format!(
                    "task {} validates with {}; use one of them, `loss` or `auto`",
                    task.name(),
                    metric_names(task, 2).join(", ")
                ),
            ));
        }
        errs.extend(super::check_device(p));
        errs
    }

    fn run(&self, cx: &mut OpContext) -> Result<(), OpError> {
        let task = Task::parse(cx.str("task")).unwrap_or(Task::Classify);
        let images_dir = cx.path("images").unwrap_or_default();
        let labels = Table::read(&cx.path("labels").unwrap_or_default())?;
        let label_col = dataset::label_column(&labels, cx.str("label_column"), task)?;
        let label_name = labels.value_columns()[label_col].clone();
        let classes: Vec<String> = match (task, cx.strs("classes")) {
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
        let fold: Option<i64> = cx.params.get("fold").and_then(Value::as_int);
        let val_ids: std::collections::HashSet<String> = match (fold, cx.path("folds")) {
            (Some(f), Some(p)) => {
                let ft = Table::read(&p)?;
                let c = ft.col("fold")?;
                let mut ids = std::collections::HashSet::new();
                for (r, id) in ft.ids.iter().enumerate() {
                    if ft.float(r, c)? as i64 == f {
                        ids.insert(id.clone());
                    }
                }
                if ids.is_empty() {
                    return Err(DataError::new(&p, format!("no row has fold {f}")).into());
                }
                ids
            }
            _ => Default::default(),
        };
        let index = dataset::image_index(&images_dir)?;
        let col_name = cx.str("label_column").to_string();
        let read = |t: &Table, keep: &dyn Fn(&str) -> bool, index, dir: &Path, w| {
            dataset::read(t, task, &col_name, &classes, index, dir, w, keep)
        };
        let mut train = read(
            &labels,
            &|id| !val_ids.contains(id),
            &index,
            &images_dir,
            1.0,
        )?;
        let val = read(
            &labels,
            &|id| val_ids.contains(id),
            &index,
            &images_dir,
            1.0,
        )?;
        let extra = cx.paths("extra");
        if !extra.is_empty() {
            let dir = cx
                .path("extra_images")
                .unwrap_or_else(|| images_dir.clone());
            let eindex = dataset::image_index(&dir)?;
            for p in extra {
                let t = Table::read(&p)?;
                let s: Samples = read(&t, &|_| true, &eindex, &dir, cx.f64("extra_weight") as f32)?;
                cx.log(format!("{}: {} extra samples", p.display(), s.len()));
                train.extend(s);
            }
        }
        if train.is_empty() {
            return Err(DataError::new(
                &labels.path,
                "no training rows (every row is in the validation fold)",
            )
            .into());
        }
        let (mean, std) = normalization(cx)?;
        let mut image_size = cx.int("image_size") as u32;
        if image_size == 0 {
            let img = crate::data::images::open(&train.paths[0])?;
            image_size = img.width();
        }
        let batch_size = cx.int("batch_size").max(1) as usize;
        let need = crate::nn::memory::batch_lower_bound(cx.str("arch"), batch_size, image_size);
        if let Some(have) = crate::nn::memory::available()
            && need > have as u128
        {
            use crate::nn::memory::human;
            return Err(OpError::Failed(format!(
                "image_size = {image_size} with batch_size = {batch_size} needs at least {} \
                 for one batch of {}, and {} of memory is available: lower image_size or batch_size",
                human(need),
                cx.str("arch"),
                human(have as u128)
            )));
        }
        let terms = parse_terms(
            cx.params.get("loss").unwrap_or(&Value::Str("auto".into())),
            task,
        )
        .map_err(OpError::Failed)?;
        let monitor = match cx.str("monitor") {
            "auto" => default_monitor(task).to_string(),
            m => m.to_string(),
        };
        let epochs = cx.int("epochs").max(1) as usize;
        let cfg = Config {
            arch: cx.str("arch").to_string(),
            task,
            epochs,
            batch_size,
            image_size,
            optimizer: optim::Kind::parse(cx.str("optimizer")).unwrap_or(optim::Kind::AdamW),
            momentum: cx.f64("momentum"),
            weight_decay: cx.f64("weight_decay"),
            schedule: Schedule {
                kind: cx.str("schedule").to_string(),
                base_lr: cx.f64("lr"),
                min_lr: cx.f64("min_lr"),
                epochs,
                warmup_epochs: cx.f64("warmup_epochs"),
                gamma: cx.f64("gamma"),
                step_epochs: cx.int("step_epochs").max(1) as usize,
                patience: cx.int("patience").max(0) as usize,
                scale: 1.0,
                best: None,
                bad_epochs: 0,
            },
            loss: Loss {
                terms,
                label_smoothing: cx.f64("label_smoothing"),
                focal_gamma: cx.f64("focal_gamma"),
            },
            accumulate: cx.int("accumulate").max(1) as usize,
            clip_grad: cx.f64("clip_grad"),
            ema: cx.f64("ema"),
            freeze_epochs: cx.int("freeze_epochs").max(0) as usize,
            trainable_blocks: cx.int("trainable_blocks"),
            aug: Aug {
                hflip: cx.f64("hflip"),
                vflip: cx.f64("vflip"),
                rot90: cx.f64("rot90"),
                transpose: cx.f64("transpose"),
                crop_scale: match cx.floats("crop_scale")[..] {
                    [a, b] => [a, b],
                    _ => [1.0, 1.0],
                },
                brightness: cx.f64("brightness"),
                contrast: cx.f64("contrast"),
            },
            early_stopping: cx.int("early_stopping").max(0) as usize,
            monitor,
            threshold: cx.f64("threshold"),
            seed: cx.int("seed") as u64,
            mean,
            std,
        };
        let device = crate::nn::device(cx.str("device"), cx.gpus).map_err(OpError::Failed)?;
        let start = start_from(cx, &device)?;
        let data = Data {
            train,
            val,
            classes,
            value_column: label_name,
        };
        cx.log(format!(
            "train {} on {} images, validate on {} ({} fold {}), {} {}, {}² , device {:?}",
            cfg.arch,
            data.train.len(),
            data.val.len(),
            task.name(),
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
            last: cx.out_dir.join("last.safetensors"),
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
        let summary = result.map_err(nn_error)?;

        // oof.csv: the best epoch's validation predictions.
        let sizes = &summary.val_sizes;
        let oof = if summary.oof.probs.len() == data.val.len() {
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
        oof.write(&cx.out_dir.join("oof.csv"))?;
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
        crate::data::metrics::write(&cx.out_dir.join("metrics.json"), &metrics)?;
        if task == Task::Box {
            let img = examples(&data, &summary.oof, sizes)?;
            save_png(&img, &cx.out_dir.join("examples.png"))?;
        }
        if cx.resume_dir.is_none() {
            let _ = std::fs::remove_dir_all(&work);
        }
        Ok(())
    }
}

pub(crate) fn nn_error(e: NnError) -> OpError {
    match e {
        NnError::Cancelled => OpError::Cancelled,
        NnError::Data(d) => d.into(),
        e => OpError::Failed(e.to_string()),
    }
}

fn normalization(cx: &OpContext) -> Result<([f32; 3], [f32; 3]), OpError> {
    let three = |v: Vec<f64>| -> [f32; 3] {
        let mut a = [0f32; 3];
        for (i, x) in v.into_iter().take(3).enumerate() {
            a[i] = x as f32;
        }
        a
    };
    if let Some(p) = cx.path("stats") {
        let bytes = std::fs::read(&p).map_err(|e| OpError::io(&p, e))?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| DataError::new(&p, format!("not JSON: {e}")))?;
        let get = |k: &str| -> Result<Vec<f64>, DataError> {
            let l: Vec<f64> = v[k]
                .as_array()
                .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
                .unwrap_or_default();
            match l.len() {
                1 => Ok(vec![l[0]; 3]),
                3 => Ok(l),
                _ => Err(DataError::new(
                    &p,
                    format!("`{k}` is not a list of 1 or 3 numbers"),
                )),
            }
        };
        return Ok((three(get("mean")?), three(get("std")?)));
    }
    Ok((three(cx.floats("mean")), three(cx.floats("std"))))
}

fn start_from(cx: &OpContext, device: &candle_core::Device) -> Result<Option<Start>, OpError> {
    let mut start: Option<Start> = None;
    if let Some(p) = cx.path("pretrained") {
        let (t, _) = checkpoint::load(&p, device)?;
        start = Some(Start {
            tensors: checkpoint::model_tensors(&t),
            optim: None,
            what: p.display().to_string(),
        });
    }
    if let Some(p) = cx.path("init") {
        let (t, meta) = checkpoint::load(&p, device)?;
        let optim = if cx.bool("init_optimizer") {
            Some((
                checkpoint::section(&t, "optim"),
                meta["steps"].as_u64().unwrap_or(0),
            ))
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

/// The three best and three worst validation images by IoU, truth in
/// green, prediction in red.
fn examples(
    data: &Data,
    p: &crate::nn::predict::Predictions,
    sizes: &[(u32, u32)],
) -> Result<image::RgbImage, OpError> {
    use plot::{GREEN, RED, rect, text};
    const SIDE: u32 = 192;
    let n = data.val.len().min(p.boxes.len());
    let mut scored: Vec<(f64, usize)> = (0..n)
        .map(|i| {
            let size = (f64::from(sizes[i].0), f64::from(sizes[i].1));
            let pred = to_xywh(p.boxes[i], size);
            (
                crate::metrics::classify::box_iou(pred, data.val.boxes[i]),
                i,
            )
        })
        .collect();
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
    for (iou, i, kind) in picks {
        let src = crate::data::images::open(&data.val.paths[i])?.into_rgb8();
        let mut tile =
            image::imageops::resize(&src, SIDE, SIDE, image::imageops::FilterType::Nearest);
        let (sx, sy) = (
            f64::from(SIDE) / f64::from(sizes[i].0),
            f64::from(SIDE) / f64::from(sizes[i].1),
        );
        let [x, y, w, h] = data.val.boxes[i];
        rect(
            &mut tile,
            x * sx,
            y * sy,
            (x + w) * sx,
            (y + h) * sy,
            2,
            GREEN,
        );
        let s = f64::from(SIDE);
        let [x, y, w, h] = to_xywh(p.boxes[i], (s, s));
        rect(&mut tile, x, y, x + w, y + h, 2, RED);
        text(
            &mut tile,
            4,
            4,
            &format!("{kind} IoU {iou:.2}"),
            1,
            image::Rgb([255, 255, 0]),
        );
        text(
            &mut tile,
            4,
            SIDE as i64 - 12,
            &data.val.ids[i],
            1,
            image::Rgb([255, 255, 0]),
        );
        tiles.push(tile);
    }
    if tiles.is_empty() {
        let mut t = image::RgbImage::from_pixel(SIDE * 2, 40, image::Rgb([255, 255, 255]));
        text(
            &mut t,
            4,
            16,
            "no validation images",
            1,
            image::Rgb([0, 0, 0]),
        );
        tiles.push(t);
    }
    Ok(plot::hstack(&tiles))
}

/// The largest side `image_size` may ask for (an image's sides are 32-bit
/// everywhere, and a batch at this size fills any machine already).
const MAX_IMAGE_SIZE: i64 = 65_536;

pub(crate) fn save_png(img: &image::RgbImage, path: &Path) -> Result<(), DataError> {
    crate::data::images::save(&image::DynamicImage::ImageRgb8(img.clone()), path, 90)
}
