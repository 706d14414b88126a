//! The training loop: epochs of shuffled, augmented batches through the
//! model, gradient accumulation and clipping, the optimizer and schedule,
//! EMA of weights, freezing, validation with the task's metrics, keeping
//! the best epoch, early stopping, and a resumable state written after
//! every epoch.
//!
//! Every random choice (initialization, shuffling, augmentation) comes from
//! generators seeded by the seed, the epoch and the sample's position, so
//! on the CPU a fixed seed gives bit-identical weights, and a run resumed
//! from its last finished epoch ends where an uninterrupted run ends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::NnError;
use super::aug::{Aug, Dihedral};
use super::checkpoint;
use super::dataset::Samples;
use super::detect::assign::{self, Points};
use super::detect::decode::{self, decode};
use super::detect::loss::fcos_loss;
use super::loader::{Images, mix};
use super::loss::{Loss, Targets};
use super::models::{Arch, Heads, Model, Task, under};
use super::optim::{Kind as OptKind, Optimizer, clip_grad_norm};
use super::predict::{Activation, Predictions, argmax, infer, to_xywh};
use super::schedule::{Progress, Schedule};
use super::segment::infer::{Cover, infer_segment};
use super::segment::loss::segment_loss;
use super::vars::{Role, VarStore};
use crate::metrics::classify::{self as m, Label};
use crate::progress::Step;

/// Everything that decides how a model trains.
#[derive(Clone, Debug)]
pub struct Config {
    pub arch: Arch,
    pub task: Task,
    pub epochs: usize,
    pub batch_size: usize,
    pub image_size: u32,
    pub optimizer: OptKind,
    pub momentum: f64,
    pub weight_decay: f64,
    pub schedule: Schedule,
    pub loss: Loss,
    pub accumulate: usize,
    pub clip_grad: f64,
    pub ema: f64,
    pub freeze_epochs: usize,
    /// After the frozen epochs, train only the last this-many blocks (and
    /// the head); negative: all.
    pub trainable_blocks: i64,
    pub aug: Aug,
    pub early_stopping: usize,
    /// A metric name, or `loss` (the validation loss, lower is better).
    pub monitor: String,
    pub threshold: f64,
    pub seed: u64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Tasks detect and segment: the sizes of the dense heads.
    pub heads: Heads,
    /// Task detect: how validation picks detections.
    pub decode: decode::Params,
    /// Task segment: how validation covers an image (the whole image
    /// resized, or tiles at native resolution when training on windows).
    pub cover: Cover,
}

/// The data: training and validation samples, class names (the value
/// column's name for regress).
pub struct Data {
    pub train: Samples,
    pub val: Samples,
    pub classes: Vec<String>,
    pub value_column: String,
    /// Task detect: the COCO category id of each class.
    pub category_ids: Vec<i64>,
}

/// Weights to start from.
pub struct Start {
    /// The model's variables (a checkpoint's, or a pretrained file's).
    pub tensors: BTreeMap<String, Tensor>,
    /// Optimizer state and its step count, to go on with.
    pub optim: Option<(BTreeMap<String, Tensor>, u64)>,
    pub what: String,
}

/// One row of `history.csv`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Epoch {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    pub metrics: BTreeMap<String, f64>,
    pub seconds: f64,
}

/// Where training stands after an epoch; saved with the weights.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    epochs_done: usize,
    steps: u64,
    /// The schedule's running state (its configuration is in [`Config`]).
    schedule: Progress,
    history: Vec<Epoch>,
    best_epoch: Option<usize>,
    best_value: Option<f64>,
    /// Epochs since the monitored value last improved (early stopping).
    epochs_since_best: usize,
    stopped_early: bool,
}

/// What training produced, besides the files.
pub struct Summary {
    pub history: Vec<Epoch>,
    pub best_epoch: Option<usize>,
    /// The best epoch's validation predictions.
    pub oof: Predictions,
    /// The validation images' sizes (width, height), in order.
    pub val_sizes: Vec<(u32, u32)>,
}

/// Files of a training run.
pub struct Paths {
    /// Where the per-epoch state lives (kept across a killed run).
    pub work: PathBuf,
    pub best: PathBuf,
    /// Where the last checkpoint goes (weights, optimizer, EMA), if kept.
    pub last: Option<PathBuf>,
}

impl Paths {
    fn state(&self) -> PathBuf {
        self.work.join("state.safetensors")
    }

    fn best_work(&self) -> PathBuf {
        self.work.join("best.safetensors")
    }
}

/// Whether a smaller value of `monitor` is better: the loss, and the metrics
/// `evaluate` says so of.
pub fn lower_is_better(metric: &str) -> bool {
    !crate::metrics::higher_is_better(metric)
}

/// The class activation a task and loss imply.
pub fn activation(task: Task, loss: &Loss) -> Activation {
    use super::loss::Kind;
    match task {
        Task::Classify => Activation::Softmax,
        Task::Multilabel => Activation::Sigmoid,
        Task::Regress => Activation::Identity,
        Task::Box if loss.terms.iter().any(|(k, _)| *k == Kind::Bce) => Activation::Sigmoid,
        Task::Box => Activation::Softmax,
        Task::Detect | Task::Instance | Task::Segment => Activation::Sigmoid,
    }
}

/// The metrics validation reports for a task.
pub fn metric_names(task: Task, classes: usize) -> Vec<&'static str> {
    match task {
        Task::Classify if classes == 2 => vec!["accuracy", "f1_macro", "qwk", "auc", "log_loss"],
        Task::Classify => vec!["accuracy", "f1_macro", "qwk"],
        Task::Multilabel => vec!["f1_macro", "accuracy"],
        Task::Regress => vec!["qwk"],
        Task::Box => vec!["box_iou", "accuracy"],
        Task::Detect => vec!["coco_map50", "coco_map"],
        Task::Instance => vec!["coco_segm_map50", "coco_segm_map", "coco_map50", "coco_map"],
        Task::Segment => vec!["dice", "iou"],
    }
}

/// The metric `monitor = "auto"` picks.
pub fn default_monitor(task: Task) -> &'static str {
    match task {
        Task::Classify => "accuracy",
        Task::Multilabel => "f1_macro",
        Task::Regress => "qwk",
        Task::Box => "box_iou",
        Task::Detect => "coco_map50",
        Task::Instance => "coco_segm_map50",
        Task::Segment => "dice",
    }
}

/// Scores validation predictions against the samples' targets.
pub fn val_metrics(
    task: Task,
    threshold: f64,
    p: &Predictions,
    val: &Samples,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    match task {
        Task::Classify | Task::Box => {
            let truth: Vec<Label> = val
                .targets
                .iter()
                .map(|t| Label::Num(argmax(t) as f64))
                .collect();
            let pred: Vec<Label> = p
                .probs
                .iter()
                .map(|t| Label::Num(argmax(t) as f64))
                .collect();
            out.insert("accuracy".into(), m::accuracy(&truth, &pred));
            if task == Task::Classify {
                out.insert("f1_macro".into(), m::f1_macro(&truth, &pred));
                out.insert("qwk".into(), m::qwk(&truth, &pred));
                if p.probs.first().is_some_and(|r| r.len() == 2) {
                    let pos: Vec<bool> = val.targets.iter().map(|t| argmax(t) == 1).collect();
                    let score: Vec<f64> = p.probs.iter().map(|r| f64::from(r[1])).collect();
                    if pos.iter().any(|&b| b) && pos.iter().any(|&b| !b) {
                        out.insert("auc".into(), m::auc(&pos, &score));
                    }
                    out.insert("log_loss".into(), m::log_loss(&pos, &score));
                }
            } else {
                let iou: f64 = p
                    .boxes
                    .iter()
                    .zip(&val.boxes)
                    .map(|(b, t)| {
                        m::box_iou(
                            to_xywh(*b, (1.0, 1.0)),
                            to_xywh(t.map(|v| v as f32), (1.0, 1.0)),
                        )
                    })
                    .sum();
                out.insert("box_iou".into(), iou / val.len().max(1) as f64);
            }
        }
        Task::Multilabel => {
            let sets = |rows: &[Vec<f32>], th: f32| -> Vec<std::collections::BTreeSet<String>> {
                rows.iter()
                    .map(|r| {
                        r.iter()
                            .enumerate()
                            .filter(|(_, v)| **v >= th)
                            .map(|(k, _)| k.to_string())
                            .collect()
                    })
                    .collect()
            };
            let truth = sets(&val.targets, 0.5);
            let pred = sets(&p.probs, threshold as f32);
            out.insert("f1_macro".into(), m::f1_macro_sets(&truth, &pred));
            out.insert("accuracy".into(), m::accuracy_sets(&truth, &pred));
        }
        Task::Regress => {
            let truth: Vec<f64> = val
                .targets
                .iter()
                .map(|t| f64::from(t[0]).round())
                .collect();
            let (lo, hi) = truth
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            let pred: Vec<Label> = p
                .probs
                .iter()
                .map(|r| Label::Num(f64::from(r[0]).round().clamp(lo, hi)))
                .collect();
            let truth: Vec<Label> = truth.into_iter().map(Label::Num).collect();
            out.insert("qwk".into(), m::qwk(&truth, &pred));
        }
        // Scored on the detections by `detect_metrics`, on the masks by
        // `validate_segment`.
        Task::Detect | Task::Instance | Task::Segment => {}
    }
    out
}

/// COCO box mAP of validation detections (`dets[i]` normalized by image
/// i's sides `sizes[i]`) against the samples' objects, and with `masks`
/// (task instance: `masks[i][k]`, detection k's of image i) the mask mAP
/// too. An error for a ground-truth mask that does not fit its image.
pub fn detect_metrics(
    val: &Samples,
    dets: &[Vec<crate::data::boxes::NBox>],
    masks: &[Vec<crate::data::coco_rle::Rle>],
    sizes: &[(u32, u32)],
    classes: usize,
) -> Result<BTreeMap<String, f64>, NnError> {
    use crate::data::boxes::{Coco, CocoAnn, CocoCategory, CocoImage, Det, ImageId};
    use crate::data::coco_rle::{RleJson, Segmentation};
    use crate::metrics::coco::{IouType, coco_ap, coco_thresholds};
    let mut gt = Coco {
        categories: (0..classes as i64)
            .map(|id| CocoCategory {
                id,
                name: String::new(),
            })
            .collect(),
        ..Default::default()
    };
    let mut found = Vec::new();
    for (i, objs) in val.objects.iter().enumerate() {
        let (w, h) = (f64::from(sizes[i].0), f64::from(sizes[i].1));
        gt.images.push(CocoImage {
            id: ImageId::Int(i as i64),
            width: w,
            height: h,
            file_name: String::new(),
        });
        for o in objs {
            gt.annotations.push(CocoAnn {
                id: gt.annotations.len() as i64 + 1,
                image_id: ImageId::Int(i as i64),
                category_id: o.class as i64,
                bbox: o.bbox,
                area: Some(o.bbox[2] * o.bbox[3]),
                iscrowd: 0,
                weight: None,
                segmentation: if masks.is_empty() {
                    None
                } else {
                    Some(
                        o.segm
                            .clone()
                            .unwrap_or_else(|| Segmentation::Polygons(vec![box_polygon(o.bbox)])),
                    )
                },
            });
        }
        let m = masks.get(i);
        for (k, d) in dets.get(i).into_iter().flatten().enumerate() {
            let [x1, y1, x2, y2] = d.xyxy;
            found.push(Det {
                image_id: ImageId::Int(i as i64),
                category_id: d.label,
                bbox: [x1 * w, y1 * h, (x2 - x1) * w, (y2 - y1) * h],
                score: d.score,
                segmentation: m.and_then(|m| m.get(k)).map(RleJson::from_rle),
            });
        }
    }
    let thrs = coco_thresholds();
    let mut out = BTreeMap::new();
    let b = coco_ap(&gt, &found, IouType::Bbox, &thrs).map_err(NnError::Other)?;
    out.insert("coco_map".into(), b.mean);
    out.insert("coco_map50".into(), b.per_threshold[0]);
    if !masks.is_empty() {
        let m = coco_ap(&gt, &found, IouType::Segm, &thrs).map_err(NnError::Other)?;
        out.insert("coco_segm_map".into(), m.mean);
        out.insert("coco_segm_map50".into(), m.per_threshold[0]);
    }
    Ok(out)
}

/// A box `x, y, w, h` as a COCO polygon.
fn box_polygon([x, y, w, h]: [f64; 4]) -> Vec<f64> {
    vec![x, y, x + w, y, x + w, y + h, x, y + h]
}

/// A detection batch's objects in input pixels: each image's classes and
/// weights with its boxes after augmentation (normalized `cx, cy, w, h`);
/// boxes cropped to under a pixel are left out.
fn batch_objects(
    objects: &[Vec<super::dataset::Object>],
    idx: &[usize],
    boxes: &[Vec<[f32; 4]>],
    side: usize,
) -> Vec<Vec<assign::Object>> {
    let s = side as f32;
    idx.iter()
        .zip(boxes)
        .map(|(&i, bx)| {
            objects[i]
                .iter()
                .zip(bx)
                .filter(|(_, b)| b[2] * s >= 1.0 && b[3] * s >= 1.0)
                .map(|(o, &[cx, cy, w, h])| {
                    let xyxy = [
                        (cx - w / 2.0) * s,
                        (cy - h / 2.0) * s,
                        (cx + w / 2.0) * s,
                        (cy + h / 2.0) * s,
                    ];
                    (o.class, xyxy, o.weight)
                })
                .collect()
        })
        .collect()
}

/// Sample weights and targets of a batch as tensors.
fn targets(
    task: Task,
    s: &Samples,
    idx: &[usize],
    boxes: &[[f32; 4]],
    dev: &Device,
) -> candle_core::Result<Targets> {
    let n = idx.len();
    let k = s.targets[idx[0]].len();
    let flat: Vec<f32> = idx
        .iter()
        .flat_map(|&i| s.targets[i].iter().copied())
        .collect();
    let t = Tensor::from_vec(flat, (n, k), dev)?;
    let weights = Tensor::from_vec(
        idx.iter().map(|&i| s.weights[i]).collect::<Vec<f32>>(),
        n,
        dev,
    )?;
    Ok(match task {
        Task::Regress => Targets {
            classes: None,
            values: Some(t),
            weights,
        },
        Task::Box => Targets {
            classes: Some(t),
            values: Some(Tensor::from_vec(
                boxes.iter().flatten().copied().collect::<Vec<f32>>(),
                (n, 4),
                dev,
            )?),
            weights,
        },
        _ => Targets {
            classes: Some(t),
            values: None,
            weights,
        },
    })
}

/// Names of the variables trained in `epoch`.
fn trainable(model: &Model, cfg: &Config, epoch: usize) -> Vec<(String, super::vars::Entry)> {
    let heads = model.head_prefixes();
    let blocks = model.backbone.blocks();
    let open: Vec<String> = if epoch < cfg.freeze_epochs {
        Vec::new()
    } else if cfg.trainable_blocks < 0 {
        blocks.into_iter().flatten().collect()
    } else {
        let k = (cfg.trainable_blocks as usize).min(blocks.len());
        blocks[blocks.len() - k..]
            .iter()
            .flatten()
            .cloned()
            .collect()
    };
    model
        .vars
        .entries()
        .into_iter()
        .filter(|(n, e)| {
            e.role != Role::Buffer
                && (heads.iter().any(|h| under(n, h)) || open.iter().any(|b| under(n, b)))
        })
        .collect()
}

/// The checkpoint header.
pub fn meta(
    cfg: &Config,
    data: &Data,
    act: Activation,
    epoch: usize,
    steps: u64,
    metrics: &BTreeMap<String, f64>,
) -> checkpoint::Meta {
    checkpoint::Meta {
        format: checkpoint::FORMAT,
        podium: env!("CARGO_PKG_VERSION").to_string(),
        arch: cfg.arch,
        task: cfg.task,
        classes: data.classes.clone(),
        value_column: data.value_column.clone(),
        image_size: cfg.image_size,
        mean: cfg.mean,
        std: cfg.std,
        activation: act,
        epoch,
        steps,
        metrics: metrics
            .iter()
            .map(|(k, v)| (k.clone(), v.is_finite().then_some(*v)))
            .collect(),
        detector: cfg.task.detects().then_some(cfg.heads.detector),
        category_ids: data.category_ids.clone(),
        decoder_width: (cfg.task == Task::Segment).then_some(cfg.heads.decoder_width),
        tile_overlap: match cfg.cover {
            Cover::Tiles { overlap } if cfg.task == Task::Segment => Some(overlap),
            _ => None,
        },
        mask_convs: (cfg.task == Task::Instance).then_some(cfg.heads.mask_convs),
    }
}

/// Trains, writing `best` and `last` checkpoints; resumes from the state
/// in `paths.work` when an earlier run of the same configuration left one.
#[allow(clippy::too_many_arguments)]
pub fn fit(
    cfg: &Config,
    data: &Data,
    start: Option<Start>,
    paths: &Paths,
    device: &Device,
    pool: &rayon::ThreadPool,
    cancelled: &(dyn Fn() -> bool + Sync),
    progress: &crate::progress::Report,
    log: &mut dyn FnMut(String),
) -> Result<Summary, NnError> {
    let task = cfg.task;
    let heads = if task == Task::Regress {
        1
    } else {
        data.classes.len()
    };
    let vars = VarStore::new(device, cfg.seed);
    let model = Model::with_heads(cfg.arch, task, heads, cfg.heads, vars.clone())?;
    // Validation's model: the same variables, frozen, so that its passes
    // record no graph (and free each layer's input as they go).
    let frozen = Model::with_heads(cfg.arch, task, heads, cfg.heads, vars.frozen())?;
    let act = activation(task, &cfg.loss);
    let mut opt = Optimizer::new(cfg.optimizer, cfg.momentum, cfg.weight_decay);
    let mut ema: Option<BTreeMap<String, Tensor>> = None;
    let mut st = State {
        epochs_done: 0,
        steps: 0,
        schedule: Progress::default(),
        history: Vec::new(),
        best_epoch: None,
        best_value: None,
        epochs_since_best: 0,
        stopped_early: false,
    };
    let mut oof = Predictions::default();
    if let Some((tensors, meta)) = load_state(&paths.state(), device, log) {
        vars.load(&checkpoint::model_tensors(&tensors))?;
        opt.load_state(&checkpoint::section(&tensors, "optim"), meta.steps);
        let e = checkpoint::section(&tensors, "ema");
        ema = (!e.is_empty()).then_some(e);
        oof = oof_from(&tensors, data.val.len())?;
        log(format!(
            "resuming after epoch {} of {}",
            meta.epochs_done, cfg.epochs
        ));
        st = meta;
    } else if let Some(s) = start {
        let (loaded, skipped) = vars.load(&s.tensors)?;
        log(format!("{}: loaded {} variables", s.what, loaded.len()));
        for k in &skipped {
            log(format!("  not loaded: {k}"));
        }
        if loaded.is_empty() {
            return Err(NnError::Other(format!(
                "{}: no variable matches this model (`{}`); is it the right file?",
                s.what, cfg.arch
            )));
        }
        if let Some((o, steps)) = s.optim {
            opt.load_state(&o, steps);
        }
    }
    if cfg.ema > 0.0 && ema.is_none() {
        ema = Some(vars.snapshot()?);
    }

    let images = Images::new(
        data.train
            .paths
            .iter()
            .chain(&data.val.paths)
            .cloned()
            .collect(),
        cfg.image_size,
        cfg.mean,
        cfg.std,
    )?;
    let images = if matches!(task, Task::Segment | Task::Instance) {
        let sources = data
            .train
            .masks
            .iter()
            .chain(&data.val.masks)
            .cloned()
            .collect();
        // Task instance: a plane per object; the most objects an image has
        // bounds what caching the planes costs.
        let planes = if task == Task::Instance {
            data.train
                .objects
                .iter()
                .chain(&data.val.objects)
                .map(Vec::len)
                .max()
                .unwrap_or(0)
        } else {
            heads
        };
        images.with_masks(sources, planes)
    } else {
        images
    };
    let n_train = data.train.len();
    // Boxes of validation samples, normalized by their sources' sizes.
    let val_idx: Vec<usize> = (n_train..n_train + data.val.len()).collect();
    let mut val_sizes = Vec::with_capacity(val_idx.len());
    for &i in &val_idx {
        let s = images.source(i)?;
        val_sizes.push((s.width(), s.height()));
    }
    let mut val_norm = data.val.boxes.clone();
    for (b, &(w, h)) in val_norm.iter_mut().zip(&val_sizes) {
        let (w, h) = (f64::from(w), f64::from(h));
        *b = [
            (b[0] + b[2] / 2.0) / w,
            (b[1] + b[3] / 2.0) / h,
            b[2] / w,
            b[3] / h,
        ];
    }
    let val_for_metrics = Samples {
        ids: data.val.ids.clone(),
        paths: data.val.paths.clone(),
        targets: data.val.targets.clone(),
        boxes: val_norm,
        weights: data.val.weights.clone(),
        // Task detect scores on `data.val` (`detect_metrics`), task
        // segment on the masks.
        objects: Vec::new(),
        masks: Vec::new(),
    };
    let has_val = !data.val.is_empty();
    // What the loader carries through augmentation: the box (task box) or
    // the objects' boxes (tasks detect and instance) of each image.
    let boxes: Vec<Vec<[f64; 4]>> = if task.detects() {
        data.train
            .objects
            .iter()
            .chain(&data.val.objects)
            .map(|o| o.iter().map(|o| o.bbox).collect())
            .collect()
    } else {
        data.train
            .boxes
            .iter()
            .chain(&data.val.boxes)
            .map(|b| vec![*b])
            .collect()
    };
    let all = Samples {
        ids: Vec::new(),
        paths: Vec::new(),
        targets: data
            .train
            .targets
            .iter()
            .chain(&data.val.targets)
            .cloned()
            .collect(),
        boxes: Vec::new(),
        weights: data
            .train
            .weights
            .iter()
            .chain(&data.val.weights)
            .copied()
            .collect(),
        objects: data
            .train
            .objects
            .iter()
            .chain(&data.val.objects)
            .cloned()
            .collect(),
        masks: Vec::new(),
    };
    let s = cfg.image_size as usize;
    let bs = cfg.batch_size.max(1);
    let batches_per_epoch = n_train.div_ceil(bs).max(1);
    // The last epoch's validation, shown beside the progress bar.
    let val_summary = |e: &Epoch| {
        let m = e
            .metrics
            .get(&cfg.monitor)
            .map(|v| format!("  {} {v:.4}", cfg.monitor))
            .unwrap_or_default();
        e.val_loss
            .map(|v| format!("  · val_loss {v:.4}{m}"))
            .unwrap_or_default()
    };
    let mut last_val = st.history.last().map(val_summary).unwrap_or_default();

    for epoch in st.epochs_done..cfg.epochs {
        if st.stopped_early {
            break;
        }
        let started = Instant::now();
        let train_vars = trainable(&model, cfg, epoch);
        let mut order: Vec<usize> = (0..n_train).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(cfg.seed, epoch as u64)));
        // A last batch of one cannot be batch-normalized in training.
        if order.len() % bs == 1 && order.len() > 1 {
            order.pop();
        }
        let mut loss_sum = 0f64;
        let mut seen = 0usize;
        let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut micro = 0usize;
        let mut lr = cfg.schedule.lr(&st.schedule, epoch, 0.0);
        let aug_seed = mix(cfg.seed ^ 0xA5A5, epoch as u64);
        let mut batch_no = 0usize;
        let accumulate = cfg.accumulate.max(1);
        let mut step = |grads: &mut BTreeMap<String, Tensor>,
                        lr: f64,
                        st: &mut State,
                        ema: &mut Option<BTreeMap<String, Tensor>>|
         -> Result<(), NnError> {
            if grads.is_empty() {
                return Ok(());
            }
            if cfg.clip_grad > 0.0 {
                clip_grad_norm(grads, cfg.clip_grad)?;
            }
            opt.step(&train_vars, grads, lr)?;
            grads.clear();
            st.steps += 1;
            if let Some(e) = ema {
                let d = ema_decay(cfg.ema, st.steps - 1);
                for (name, entry) in vars.entries() {
                    if let Some(v) = e.get_mut(&name) {
                        let cur = entry.var.as_tensor().detach();
                        *v = ((&*v * d)? + (cur * (1.0 - d))?)?;
                    }
                }
            }
            Ok(())
        };
        images.for_each_batch::<NnError>(
            &order,
            bs,
            Some((&cfg.aug, aug_seed)),
            Dihedral::default(),
            Some(&boxes),
            pool,
            |b| {
                if cancelled() {
                    return Err(NnError::Cancelled);
                }
                let n = b.idx.len();
                progress(&Step {
                    done: (epoch * batches_per_epoch + batch_no) as u64,
                    total: (cfg.epochs * batches_per_epoch) as u64,
                    message: format!(
                        "epoch {}/{}  loss {}{last_val}",
                        epoch + 1,
                        cfg.epochs,
                        if seen == 0 {
                            "…".to_string()
                        } else {
                            format!("{:.4}", loss_sum / seen as f64)
                        }
                    ),
                });
                lr = cfg.schedule.lr(
                    &st.schedule,
                    epoch,
                    batch_no as f64 / batches_per_epoch as f64,
                );
                batch_no += 1;
                let x = Tensor::from_vec(b.x, (n, 3, s, s), device)?;
                let loss = if task == Task::Detect {
                    let objs = batch_objects(&all.objects, &b.idx, &b.boxes, s);
                    pool.install(|| -> candle_core::Result<Tensor> {
                        let raw = model.detect_t(&x, true)?;
                        let t = assign::targets(&Points::new(&raw.levels), &objs, heads, device)?;
                        fcos_loss(&raw, &t)?.total()
                    })?
                } else if task == Task::Instance {
                    let objs = batch_objects(&all.objects, &b.idx, &b.boxes, s);
                    let r = mask_regions(&all.objects, &b.idx, &b.boxes, &b.masks, s, MAX_REGIONS);
                    pool.install(|| -> candle_core::Result<Tensor> {
                        let (raw, map) = model.instance_t(&x, true)?;
                        let t = assign::targets(&Points::new(&raw.levels), &objs, heads, device)?;
                        let det = fcos_loss(&raw, &t)?.total()?;
                        det + r.loss(&model, &map, device)?
                    })?
                } else if task == Task::Segment {
                    let masks = Tensor::from_vec(b.masks, (n, heads, s, s), device)?;
                    let w: Vec<f32> = b.idx.iter().map(|&i| all.weights[i]).collect();
                    let w = Tensor::from_vec(w, n, device)?;
                    pool.install(|| -> candle_core::Result<Tensor> {
                        let logits = model.segment_t(&x, true)?;
                        segment_loss(&cfg.loss, &logits, &masks, &w)
                    })?
                } else {
                    let first: Vec<[f32; 4]> = b.boxes.iter().map(|v| v[0]).collect();
                    let t = targets(task, &all, &b.idx, &first, device)?;
                    pool.install(|| -> candle_core::Result<Tensor> {
                        let o = model.forward_t(&x, true)?;
                        cfg.loss.compute(task, &o.logits, o.boxes.as_ref(), &t)
                    })?
                };
                let lv = f64::from(loss.to_scalar::<f32>()?);
                if !lv.is_finite() {
                    return Err(NnError::Other(format!(
                        "the loss became {lv} in epoch {}; lower the learning rate (lr = {lr:.3e})",
                        epoch + 1
                    )));
                }
                loss_sum += lv * n as f64;
                seen += n;
                let g = pool.install(|| (loss / accumulate as f64)?.backward())?;
                for (name, e) in &train_vars {
                    if let Some(gv) = g.get(e.var.as_tensor()) {
                        let sum = match grads.remove(name) {
                            Some(a) => (a + gv)?,
                            None => gv.clone(),
                        };
                        grads.insert(name.clone(), sum);
                    }
                }
                micro += 1;
                if micro.is_multiple_of(accumulate) {
                    pool.install(|| step(&mut grads, lr, &mut st, &mut ema))?;
                }
                Ok(())
            },
        )?;
        pool.install(|| step(&mut grads, lr, &mut st, &mut ema))?;
        let train_loss = loss_sum / seen.max(1) as f64;

        // Validation, with the EMA weights when there are.
        let (val_loss, metrics, preds) = if has_val {
            let raw = match &ema {
                Some(e) => {
                    let raw = vars.snapshot()?;
                    vars.load(e)?;
                    Some(raw)
                }
                None => None,
            };
            let r = if task.detects() {
                let v = validate_detect(
                    &frozen, cfg, &images, &val_idx, &boxes, &all, heads, &val_sizes, device, pool,
                    cancelled,
                )?;
                let metrics = detect_metrics(&data.val, &v.dets, &v.masks, &val_sizes, heads)?;
                let p = Predictions {
                    dets: v.dets,
                    masks: v.masks,
                    ..Default::default()
                };
                (Some(v.loss), metrics, Some(p))
            } else if task == Task::Segment {
                let (vl, metrics) =
                    validate_segment(&frozen, cfg, &images, &val_idx, device, pool, cancelled)?;
                (Some(vl), metrics, None)
            } else {
                let p = infer(
                    &frozen,
                    &images,
                    &val_idx,
                    &[Dihedral::default()],
                    false,
                    act,
                    false,
                    bs,
                    device,
                    pool,
                    &mut |_| {
                        if cancelled() {
                            Err(NnError::Cancelled)
                        } else {
                            Ok(())
                        }
                    },
                )?;
                let vl = val_loss(cfg, task, &p, &val_for_metrics, device)?;
                let metrics = val_metrics(task, cfg.threshold, &p, &val_for_metrics);
                (Some(vl), metrics, Some(p))
            };
            if let Some(raw) = raw {
                vars.load(&raw)?;
            }
            r
        } else {
            (None, BTreeMap::new(), None)
        };
        let monitored = if cfg.monitor == "loss" {
            val_loss
        } else {
            metrics.get(&cfg.monitor).copied()
        };
        let improved = match (monitored, st.best_value) {
            (Some(v), Some(b)) => {
                if lower_is_better(&cfg.monitor) {
                    v < b
                } else {
                    v > b
                }
            }
            (Some(_), None) => true,
            (None, _) => !has_val,
        };
        cfg.schedule.end_epoch(
            &mut st.schedule,
            monitored.map(|v| if lower_is_better(&cfg.monitor) { -v } else { v }),
        );
        let row = Epoch {
            epoch: epoch + 1,
            lr,
            train_loss,
            val_loss,
            metrics: metrics.clone(),
            seconds: started.elapsed().as_secs_f64(),
        };
        log(format!(
            "epoch {}/{}  lr {:.3e}  train_loss {:.4}{}{}  ({:.1} s)",
            epoch + 1,
            cfg.epochs,
            lr,
            train_loss,
            val_loss
                .map(|v| format!("  val_loss {v:.4}"))
                .unwrap_or_default(),
            metrics
                .iter()
                .map(|(k, v)| format!("  {k} {v:.4}"))
                .collect::<String>(),
            row.seconds
        ));
        last_val = val_summary(&row);
        st.history.push(row);
        st.epochs_done = epoch + 1;
        if improved {
            st.best_epoch = Some(epoch + 1);
            st.best_value = monitored;
            st.epochs_since_best = 0;
            let weights = match &ema {
                Some(e) => e.clone(),
                None => vars.snapshot()?,
            };
            checkpoint::save(
                &paths.best_work(),
                &weights,
                &meta(cfg, data, act, epoch + 1, st.steps, &metrics).to_json(),
            )?;
            if let Some(p) = preds {
                oof = p;
            }
        } else {
            st.epochs_since_best += 1;
            if cfg.early_stopping > 0 && st.epochs_since_best >= cfg.early_stopping {
                log(format!(
                    "early stop: {} epochs without a better {}",
                    st.epochs_since_best, cfg.monitor
                ));
                st.stopped_early = true;
            }
        }
        save_state(&paths.state(), &vars, &opt, ema.as_ref(), &oof, &st)?;
    }

    // The last checkpoint goes on from here: weights, optimizer, EMA.
    if let Some(last_path) = &paths.last {
        let mut last = vars.snapshot()?;
        for (k, v) in opt.state_tensors() {
            last.insert(format!("optim.{k}"), v);
        }
        if let Some(e) = &ema {
            for (k, v) in e {
                last.insert(format!("ema.{k}"), v.clone());
            }
        }
        let last_metrics = st
            .history
            .last()
            .map(|e| e.metrics.clone())
            .unwrap_or_default();
        checkpoint::save(
            last_path,
            &last,
            &meta(cfg, data, act, st.epochs_done, st.steps, &last_metrics).to_json(),
        )?;
    }
    if paths.best_work() != paths.best {
        std::fs::copy(paths.best_work(), &paths.best)
            .map_err(|e| NnError::Data(crate::data::DataError::io(&paths.best, e)))?;
    }
    Ok(Summary {
        history: st.history,
        best_epoch: st.best_epoch,
        oof,
        val_sizes,
    })
}

/// The EMA decay at an optimizer step that follows `updates` earlier
/// updates: `decay`, warmed up as TensorFlow's `ExponentialMovingAverage`
/// does with `num_updates` (`min(decay, (1 + n) / (10 + n))`), so that the
/// average follows the weights from the first steps instead of keeping the
/// random init for thousands of them (0.999 alone keeps 70 % of it after
/// 360 steps).
pub fn ema_decay(decay: f64, updates: u64) -> f64 {
    let n = updates as f64;
    decay.min((1.0 + n) / (10.0 + n))
}

/// Task detect's validation: the loss (each batch's, weighted by its
/// images) and each image's detections.
#[allow(clippy::too_many_arguments)]
fn validate_detect(
    model: &Model,
    cfg: &Config,
    images: &Images,
    val_idx: &[usize],
    boxes: &[Vec<[f64; 4]>],
    all: &Samples,
    classes: usize,
    sizes: &[(u32, u32)],
    device: &Device,
    pool: &rayon::ThreadPool,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<Validated, NnError> {
    use super::detect::mask::{MASK, paste};
    let s = images.size as usize;
    let (mut loss_sum, mut seen) = (0f64, 0usize);
    let mut dets = Vec::with_capacity(val_idx.len());
    let mut masks = Vec::new();
    let instance = model.mask_head.is_some();
    images.for_each_batch::<NnError>(
        val_idx,
        cfg.batch_size.max(1),
        None,
        Dihedral::default(),
        Some(boxes),
        pool,
        |b| {
            if cancelled() {
                return Err(NnError::Cancelled);
            }
            let n = b.idx.len();
            let x = Tensor::from_vec(b.x, (n, 3, s, s), device)?;
            let objs = batch_objects(&all.objects, &b.idx, &b.boxes, s);
            let (l, d, parts) = pool.install(|| -> candle_core::Result<_> {
                let (raw, map) = if instance {
                    let (raw, map) = model.instance_t(&x, false)?;
                    (raw, Some(map))
                } else {
                    (model.detect_t(&x, false)?, None)
                };
                let p = Points::new(&raw.levels);
                let t = assign::targets(&p, &objs, classes, device)?;
                let mut l = fcos_loss(&raw, &t)?.total()?;
                let d = decode(&raw, &p, s as f32, &cfg.decode)?;
                let mut parts = Vec::new();
                if let Some(map) = map {
                    let r = mask_regions(&all.objects, &b.idx, &b.boxes, &b.masks, s, usize::MAX);
                    l = (l + r.loss(model, &map, device)?)?;
                    parts = super::predict::mask_parts(model, &map, &d, s)?;
                }
                Ok((l.to_scalar::<f32>()?, d, parts))
            })?;
            for (j, ps) in parts.into_iter().enumerate() {
                let (w, h) = sizes[seen + j];
                masks.push(
                    ps.iter()
                        .map(|p| {
                            paste(std::slice::from_ref(p), MASK, (w as usize, h as usize), 0.5)
                        })
                        .collect(),
                );
            }
            loss_sum += f64::from(l) * n as f64;
            seen += n;
            dets.extend(d);
            Ok(())
        },
    )?;
    Ok(Validated {
        loss: loss_sum / seen.max(1) as f64,
        dets,
        masks,
    })
}

/// What validating a detector gives: the loss, each image's detections and
/// (task instance) their masks at the image's size.
struct Validated {
    loss: f64,
    dets: Vec<Vec<crate::data::boxes::NBox>>,
    masks: Vec<Vec<crate::data::coco_rle::Rle>>,
}

/// Task segment's validation: each image's probabilities at its own
/// resolution (whole, or over tiles, as `predict` makes them) against its
/// mask: the loss (per image, averaged; on the logits the probabilities
/// imply) and the mean Dice and IoU over images and classes at
/// `threshold`.
fn validate_segment(
    model: &Model,
    cfg: &Config,
    images: &Images,
    val_idx: &[usize],
    device: &Device,
    pool: &rayon::ThreadPool,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<(f64, BTreeMap<String, f64>), NnError> {
    use crate::metrics::segment::mean_dice_iou;
    let mut counts = Vec::new();
    let mut loss_sum = 0f64;
    let th = cfg.threshold as f32;
    infer_segment(
        model,
        images,
        val_idx,
        &[Dihedral::default()],
        cfg.cover,
        cfg.batch_size,
        device,
        pool,
        &mut |_, _| {
            if cancelled() {
                Err(NnError::Cancelled)
            } else {
                Ok(())
            }
        },
        &mut |pos, p| {
            let truth = images.mask(val_idx[pos])?;
            counts.extend(p.overlaps(&truth, th));
            let t: Vec<f32> = truth
                .iter()
                .flat_map(|plane| plane.as_raw().iter().map(|&m| f32::from(m)))
                .collect();
            let (h, w) = (p.h as usize, p.w as usize);
            let logits: Vec<f32> = p
                .data
                .iter()
                .map(|&q| {
                    let q = q.clamp(1e-6, 1.0 - 1e-6);
                    (q / (1.0 - q)).ln()
                })
                .collect();
            let l = pool.install(|| -> candle_core::Result<f32> {
                let x = Tensor::from_vec(logits, (1, p.classes, h, w), device)?;
                let m = Tensor::from_vec(t, (1, p.classes, h, w), device)?;
                let one = Tensor::ones(1, candle_core::DType::F32, device)?;
                segment_loss(&cfg.loss, &x, &m, &one)?.to_scalar::<f32>()
            })?;
            loss_sum += f64::from(l);
            Ok(())
        },
    )?;
    let (dice, iou) = mean_dice_iou(&counts);
    let metrics = BTreeMap::from([("dice".to_string(), dice), ("iou".to_string(), iou)]);
    Ok((loss_sum / val_idx.len().max(1) as f64, metrics))
}

/// The validation loss, on the logits `infer` kept: the loss over the whole
/// validation set, each sample weighted by its weight.
fn val_loss(
    cfg: &Config,
    task: Task,
    p: &Predictions,
    val: &Samples,
    device: &Device,
) -> Result<f64, NnError> {
    let n = p.logits.len();
    let k = p.logits.first().map_or(0, Vec::len);
    let logits = Tensor::from_vec(p.logits.concat(), (n, k), device)?;
    let boxes = Tensor::from_vec(p.boxes.concat(), (n, 4), device)?;
    let truth: Vec<[f32; 4]> = val.boxes.iter().map(|b| b.map(|v| v as f32)).collect();
    let idx: Vec<usize> = (0..n).collect();
    let t = targets(task, val, &idx, &truth, device)?;
    let pred_boxes = (task == Task::Box).then_some(&boxes);
    let l = cfg.loss.compute(task, &logits, pred_boxes, &t)?;
    Ok(f64::from(l.to_scalar::<f32>()?))
}

fn save_state(
    path: &Path,
    vars: &VarStore,
    opt: &Optimizer,
    ema: Option<&BTreeMap<String, Tensor>>,
    oof: &Predictions,
    st: &State,
) -> Result<(), NnError> {
    let mut t = vars.snapshot()?;
    for (k, v) in opt.state_tensors() {
        t.insert(format!("optim.{k}"), v);
    }
    if let Some(e) = ema {
        for (k, v) in e {
            t.insert(format!("ema.{k}"), v.clone());
        }
    }
    let dev = Device::Cpu;
    if !oof.probs.is_empty() {
        let n = oof.probs.len();
        let k = oof.probs[0].len();
        let flat: Vec<f32> = oof.probs.iter().flatten().copied().collect();
        t.insert("oof.probs".into(), Tensor::from_vec(flat, (n, k), &dev)?);
        let flat: Vec<f32> = oof.boxes.iter().flatten().copied().collect();
        t.insert("oof.boxes".into(), Tensor::from_vec(flat, (n, 4), &dev)?);
    }
    if !oof.dets.is_empty() {
        // One row per detection: image, class, score, x1, y1, x2, y2.
        let flat: Vec<f32> = oof
            .dets
            .iter()
            .enumerate()
            .flat_map(|(i, d)| {
                d.iter().flat_map(move |b| {
                    [i as f64, b.label as f64, b.score]
                        .into_iter()
                        .chain(b.xyxy)
                        .map(|v| v as f32)
                })
            })
            .collect();
        let m = flat.len() / 7;
        t.insert("oof.dets".into(), Tensor::from_vec(flat, (m, 7), &dev)?);
    }
    if oof.masks.iter().any(|m| !m.is_empty()) {
        // Task instance: the detections' masks, in the same order, one
        // line each: height, width, COCO's compressed counts.
        let text: String = oof
            .masks
            .iter()
            .flatten()
            .map(|r| format!("{} {} {r}\n", r.h, r.w))
            .collect();
        let bytes = text.into_bytes();
        let n = bytes.len();
        t.insert("oof.masks".into(), Tensor::from_vec(bytes, n, &dev)?);
    }
    let meta = serde_json::to_value(st).map_err(|e| NnError::Other(e.to_string()))?;
    checkpoint::save(path, &t, &meta)?;
    Ok(())
}

fn load_state(
    path: &Path,
    device: &Device,
    log: &mut dyn FnMut(String),
) -> Option<(BTreeMap<String, Tensor>, State)> {
    if !path.exists() {
        return None;
    }
    match checkpoint::load(path, device) {
        Ok((t, meta)) => match serde_json::from_value::<State>(meta) {
            Ok(st) => Some((t, st)),
            Err(e) => {
                log(format!(
                    "{}: unreadable state ({e}); starting over",
                    path.display()
                ));
                None
            }
        },
        Err(e) => {
            log(format!("{e}; starting over"));
            None
        }
    }
}

/// The best epoch's validation predictions saved in the state; `n_val`
/// images' detections for task detect.
fn oof_from(t: &BTreeMap<String, Tensor>, n_val: usize) -> Result<Predictions, NnError> {
    let mut p = Predictions::default();
    if let Some(d) = t.get("oof.dets") {
        p.dets = vec![Vec::new(); n_val];
        for r in d.to_vec2::<f32>()? {
            if let Some(v) = p.dets.get_mut(r[0] as usize) {
                v.push(crate::data::boxes::NBox {
                    label: r[1] as i64,
                    score: f64::from(r[2]),
                    xyxy: [r[3], r[4], r[5], r[6]].map(f64::from),
                });
            }
        }
    }
    if let Some(m) = t.get("oof.masks") {
        let text = String::from_utf8(m.to_vec1::<u8>()?)
            .map_err(|_| NnError::Other("a training state's masks are not text".into()))?;
        let mut lines = text.lines();
        for d in &p.dets {
            let mut v = Vec::with_capacity(d.len());
            for _ in d {
                let bad = || NnError::Other("a training state's masks do not parse".into());
                let line = lines.next().ok_or_else(bad)?;
                let mut f = line.splitn(3, ' ');
                let (Some(h), Some(w), Some(c)) = (f.next(), f.next(), f.next()) else {
                    return Err(bad());
                };
                let (h, w) = (h.parse().map_err(|_| bad())?, w.parse().map_err(|_| bad())?);
                v.push(crate::data::coco_rle::Rle::from_string(c, h, w).map_err(|_| bad())?);
            }
            p.masks.push(v);
        }
    }
    if let (Some(pr), Some(bx)) = (t.get("oof.probs"), t.get("oof.boxes")) {
        p.probs = pr.to_vec2()?;
        p.boxes = bx
            .to_vec2::<f32>()?
            .into_iter()
            .map(|r| [r[0], r[1], r[2], r[3]])
            .collect();
    }
    Ok(p)
}

/// The most objects of a batch whose masks task instance trains on: more
/// are thinned evenly.
const MAX_REGIONS: usize = 256;

/// A batch's objects as the mask head learns them (task instance): each
/// object's image in the batch and box (input pixels, after
/// augmentation), class, weight, and mask target on the head's grid.
struct Regions {
    boxes: Vec<(usize, [f32; 4])>,
    labels: Vec<usize>,
    weights: Vec<f32>,
    targets: Vec<f32>,
}

impl Regions {
    /// The mask loss of these regions over the mask head's `map`.
    fn loss(&self, model: &Model, map: &Tensor, device: &Device) -> candle_core::Result<Tensor> {
        use super::detect::mask::{MASK, mask_loss};
        let Some(head) = &model.mask_head else {
            candle_core::bail!("a model without a mask head");
        };
        let k = self.labels.len();
        if k == 0 {
            return Tensor::zeros((), candle_core::DType::F32, device);
        }
        let logits = head.forward(map, &self.boxes)?;
        let t = Tensor::from_slice(&self.targets, (k, MASK * MASK), device)?;
        let w = Tensor::from_slice(&self.weights, k, device)?;
        mask_loss(&logits, &self.labels, &t, &w)
    }
}

/// The regions of a batch of images `idx` (see [`Regions`]), their
/// objects' boxes after augmentation `boxes` (normalized `cx, cy, w, h`)
/// and `masks`, one `side × side` plane per object of `objects`, in
/// order; objects cropped to under a pixel are left out, and at most `max`
/// are kept, evenly spaced.
fn mask_regions(
    objects: &[Vec<super::dataset::Object>],
    idx: &[usize],
    boxes: &[Vec<[f32; 4]>],
    masks: &[f32],
    side: usize,
    max: usize,
) -> Regions {
    use super::detect::mask::{MASK, target};
    let s = side as f32;
    let plane = side * side;
    let mut found = Vec::new();
    let mut at = 0usize;
    for (j, (&i, bx)) in idx.iter().zip(boxes).enumerate() {
        for (o, &[cx, cy, w, h]) in objects[i].iter().zip(bx) {
            let p = at;
            at += plane;
            if w * s < 1.0 || h * s < 1.0 {
                continue;
            }
            let xyxy = [
                (cx - w / 2.0) * s,
                (cy - h / 2.0) * s,
                (cx + w / 2.0) * s,
                (cy + h / 2.0) * s,
            ];
            found.push((j, xyxy, o.class, o.weight, p));
        }
    }
    if found.len() > max {
        let n = found.len();
        found = (0..max).map(|k| found[k * n / max]).collect();
    }
    let mut r = Regions {
        boxes: Vec::with_capacity(found.len()),
        labels: Vec::with_capacity(found.len()),
        weights: Vec::with_capacity(found.len()),
        targets: Vec::with_capacity(found.len() * MASK * MASK),
    };
    for (j, xyxy, class, weight, p) in found {
        r.boxes.push((j, xyxy));
        r.labels.push(class);
        r.weights.push(weight);
        r.targets
            .extend(target(&masks[p..p + plane], side, xyxy, MASK));
    }
    r
}
