//! The architectures `train` and `predict` build: a backbone that turns an
//! image batch into one feature vector per image, and a head for the task.
//! Variable names follow timm, so a timm/PyTorch `state_dict` saved as
//! safetensors loads as pretrained weights.

use candle_core::{Module, Result, Tensor};

use super::detect::fcos::{Config as DetectorConfig, Fcos, Raw};
use super::detect::mask::MaskHead;
use super::layers::linear;
use super::segment::unet::Unet;
use super::vars::{VarStore, Vb};

pub mod efficientnet;
pub mod resnet;
pub mod simple_cnn;

crate::choice! {
    /// A backbone.
    pub enum Arch {
        SimpleCnn = "simple_cnn",
        Resnet18 = "resnet18",
        Resnet34 = "resnet34",
        EfficientnetB0 = "efficientnet_b0",
    }
}

crate::choice! {
    /// What a model predicts per image.
    pub enum Task {
        /// One class.
        Classify = "classify",
        /// A set of classes.
        Multilabel = "multilabel",
        /// A number.
        Regress = "regress",
        /// One box and its class.
        Box = "box",
        /// Any number of boxes of several classes (FCOS).
        Detect = "detect",
        /// A mask per class (U-Net).
        Segment = "segment",
        /// Any number of objects of several classes, each with its box and
        /// mask (FCOS with a Mask R-CNN mask head).
        Instance = "instance",
    }
}

impl Task {
    /// Whether the model is a detector (tasks detect and instance).
    pub fn detects(self) -> bool {
        matches!(self, Task::Detect | Task::Instance)
    }

    /// Whether the model reads the backbone's feature maps (tasks detect,
    /// instance and segment) rather than its pooled features.
    pub fn is_dense(self) -> bool {
        matches!(self, Task::Detect | Task::Instance | Task::Segment)
    }
}

/// The sizes of the dense heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    /// Task detect: the FCOS neck and head.
    pub detector: DetectorConfig,
    /// Task segment: channels of the U-Net decoder's last block, doubling
    /// upward (smp's default decoder is 16).
    pub decoder_width: usize,
    /// Task instance: convolutions of the mask head (torchvision: 4), of
    /// the detector's channels.
    pub mask_convs: usize,
}

impl Default for Heads {
    fn default() -> Heads {
        Heads {
            detector: DetectorConfig::default(),
            decoder_width: 16,
            mask_convs: 4,
        }
    }
}

/// Image batch `[N, 3, H, W]` → features `[N, F]`.
pub trait Backbone: Send + Sync {
    fn features(&self, x: &Tensor, train: bool) -> Result<Tensor>;
    fn feature_dim(&self) -> usize;
    /// The blocks, from the input onwards, each as the name prefixes of its
    /// variables: what freezing counts.
    fn blocks(&self) -> Vec<Vec<String>>;
    /// The name of the classifier layer in timm (`fc`, `classifier`, `head`).
    fn head_name(&self) -> &'static str;
    /// Every stage's map, finest first, at strides 2, 4, 8, … (resnet: the
    /// stem before its max pool, then `layer1`–`layer4`; efficientnet_b0:
    /// timm's `features_only` stages; simple_cnn: its three blocks): what a
    /// U-Net decoder reads.
    fn encoder(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>>;
    /// Their channels.
    fn encoder_channels(&self) -> Vec<usize>;
    /// Their strides, in input pixels.
    fn encoder_strides(&self) -> Vec<usize>;
    /// The three feature maps a detection neck reads, finest first (C3, C4,
    /// C5: the encoder's last three, at strides 8, 16, 32; simple_cnn's at
    /// 2, 4, 8).
    fn pyramid(&self, x: &Tensor, train: bool) -> Result<[Tensor; 3]> {
        let mut s = self.encoder(x, train)?;
        let c5 = s.pop();
        let c4 = s.pop();
        match (s.pop(), c4, c5) {
            (Some(a), Some(b), Some(c)) => Ok([a, b, c]),
            _ => candle_core::bail!("an encoder of fewer than three stages"),
        }
    }
    /// Their channels.
    fn pyramid_channels(&self) -> [usize; 3] {
        let c = self.encoder_channels();
        [c[c.len() - 3], c[c.len() - 2], c[c.len() - 1]]
    }
    /// Their strides, in input pixels.
    fn pyramid_strides(&self) -> [usize; 3] {
        let s = self.encoder_strides();
        [s[s.len() - 3], s[s.len() - 2], s[s.len() - 1]]
    }
    /// Where in the input the feature at cell `(0, 0)` of each of those
    /// maps is centred, in pixels: cell `(x, y)` of a map of stride `s`
    /// looks at `(x·s + o, y·s + o)`. A detector places its locations
    /// there. Stride-2 convolutions with symmetric padding (ResNet,
    /// EfficientNet) centre cell `x` on input pixel `x·s`: 0, as
    /// torchvision's FCOS places its locations; 2×2 max pools (simple_cnn)
    /// on the middle of the cell.
    fn pyramid_offsets(&self) -> [f32; 3] {
        [0.0; 3]
    }
}

pub fn backbone(arch: Arch, vb: &Vb) -> Result<Box<dyn Backbone>> {
    backbone_for(arch, vb, false)
}

/// The backbone; `trunk`: only what [`Backbone::encoder`] reads (no
/// EfficientNet `conv_head`), for a detector or segmenter.
pub fn backbone_for(arch: Arch, vb: &Vb, trunk: bool) -> Result<Box<dyn Backbone>> {
    Ok(match arch {
        Arch::SimpleCnn => Box::new(simple_cnn::SimpleCnn::new(vb)?),
        Arch::Resnet18 => Box::new(resnet::ResNet::new(vb, [2, 2, 2, 2])?),
        Arch::Resnet34 => Box::new(resnet::ResNet::new(vb, [3, 4, 6, 3])?),
        Arch::EfficientnetB0 if trunk => Box::new(efficientnet::EfficientNet::b0_trunk(vb)?),
        Arch::EfficientnetB0 => Box::new(efficientnet::EfficientNet::b0(vb)?),
    })
}

/// A backbone with its task head.
pub struct Model {
    pub backbone: Box<dyn Backbone>,
    /// Class logits (classify, multilabel, box) or the value (regress);
    /// none for detect.
    pub head: Option<candle_nn::Linear>,
    /// For task = box: `[cx, cy, w, h]` logits, squashed to [0, 1].
    pub box_head: Option<candle_nn::Linear>,
    /// For task = detect: the FCOS neck and head.
    pub detector: Option<Fcos>,
    /// For task = segment: the U-Net decoder and head.
    pub segmenter: Option<Unet>,
    /// For task = instance (beside `detector`): the mask head.
    pub mask_head: Option<MaskHead>,
    pub task: Task,
    pub vars: VarStore,
}

/// What a forward pass gives.
pub struct Output {
    pub features: Tensor,
    /// `[N, classes]` logits, or `[N, 1]` values.
    pub logits: Tensor,
    /// `[N, 4]` boxes, normalized `cx, cy, w, h`.
    pub boxes: Option<Tensor>,
}

impl Model {
    /// `classes` is the number of head outputs (1 for regress).
    pub fn new(arch: Arch, task: Task, classes: usize, vars: VarStore) -> Result<Model> {
        Model::with_heads(arch, task, classes, Heads::default(), vars)
    }

    /// A model whose dense heads (tasks detect and segment) have the sizes
    /// `heads`.
    pub fn with_heads(
        arch: Arch,
        task: Task,
        classes: usize,
        heads: Heads,
        vars: VarStore,
    ) -> Result<Model> {
        let vb = vars.root();
        let dense = task.is_dense();
        let backbone = backbone_for(arch, &vb, dense)?;
        let f = backbone.feature_dim();
        let (mut head, mut box_head, mut detector, mut segmenter) = (None, None, None, None);
        let mut mask_head = None;
        match task {
            Task::Detect | Task::Instance => {
                detector = Some(Fcos::new(&vb, backbone.as_ref(), classes, heads.detector)?);
                if task == Task::Instance {
                    mask_head = Some(MaskHead::new(
                        &vb,
                        backbone.as_ref(),
                        classes,
                        heads.detector.channels,
                        heads.mask_convs,
                    )?);
                }
            }
            Task::Segment => {
                segmenter = Some(Unet::new(
                    &vb,
                    backbone.as_ref(),
                    classes,
                    heads.decoder_width,
                )?);
            }
            _ => {
                head = Some(linear(&vb.pp(backbone.head_name()), f, classes)?);
                if task == Task::Box {
                    box_head = Some(linear(&vb.pp("box_head"), f, 4)?);
                }
            }
        }
        Ok(Model {
            backbone,
            head,
            box_head,
            detector,
            segmenter,
            mask_head,
            task,
            vars,
        })
    }

    /// The segmenter's `[N, classes, H, W]` logits (task segment).
    pub fn segment_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let Some(u) = &self.segmenter else {
            candle_core::bail!("task {} has no segmenter", self.task);
        };
        let (_, _, h, w) = x.dims4()?;
        u.forward(&self.backbone.encoder(x, train)?, (h, w), train)
    }

    /// The detector's outputs (task detect).
    pub fn detect_t(&self, x: &Tensor, train: bool) -> Result<Raw> {
        let Some(d) = &self.detector else {
            candle_core::bail!("task {} has no detector", self.task);
        };
        d.forward(&self.backbone.pyramid(x, train)?)
    }

    /// The detector's outputs and the map the mask head reads (task
    /// instance).
    pub fn instance_t(&self, x: &Tensor, train: bool) -> Result<(Raw, Tensor)> {
        let (Some(d), Some(m)) = (&self.detector, &self.mask_head) else {
            candle_core::bail!("task {} has no mask head", self.task);
        };
        let enc = self.backbone.encoder(x, train)?;
        let n = enc.len();
        if n < 3 {
            candle_core::bail!("an encoder of fewer than three stages");
        }
        let c = [enc[n - 3].clone(), enc[n - 2].clone(), enc[n - 1].clone()];
        let (raw, ps) = d.forward_pyramid(&c)?;
        let map = m.feature_map(&enc, &ps[0])?;
        Ok((raw, map))
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Output> {
        let Some(head) = &self.head else {
            candle_core::bail!("task {} has no image-level head", self.task);
        };
        let features = self.backbone.features(x, train)?;
        let logits = head.forward(&features)?;
        let boxes = match &self.box_head {
            Some(h) => Some(candle_nn::ops::sigmoid(&h.forward(&features)?)?),
            None => None,
        };
        Ok(Output {
            features,
            logits,
            boxes,
        })
    }

    /// Name prefixes of the head's variables.
    pub fn head_prefixes(&self) -> Vec<String> {
        if self.detector.is_some() {
            let mut v: Vec<String> = Fcos::prefixes().map(String::from).to_vec();
            if self.mask_head.is_some() {
                v.extend(MaskHead::prefixes().map(String::from));
            }
            return v;
        }
        if self.segmenter.is_some() {
            return Unet::prefixes().map(String::from).to_vec();
        }
        let mut v = vec![self.backbone.head_name().to_string()];
        if self.box_head.is_some() {
            v.push("box_head".into());
        }
        v
    }
}

/// Whether `name` lies under `prefix` (`layer1` holds `layer1.0.conv1.weight`).
pub fn under(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// After one backward pass every trainable var of every arch has a
    /// non-zero gradient: no layer silently drops its gradient. In
    /// evaluation mode for every arch; in training mode too where no batch
    /// norm follows another through linear layers only (EfficientNet's
    /// `bn3` feeds the next block's 1×1 conv and batch norm, which removes
    /// any per-channel shift, so `bn3.bias`'s gradient is zero by
    /// construction, in PyTorch as here).
    #[test]
    fn every_trainable_var_of_every_arch_gets_a_gradient() {
        let dev = Device::Cpu;
        let v: Vec<f32> = (0..2 * 3 * 32 * 32)
            .map(|i| ((i as f32) * 0.37).sin())
            .collect();
        let x = Tensor::from_vec(v, (2, 3, 32, 32), &dev).unwrap();
        for &arch in Arch::ALL {
            for train in [false, true] {
                if train && arch == Arch::EfficientnetB0 {
                    continue;
                }
                for task in [Task::Classify, Task::Box] {
                    let vars = VarStore::new(&dev, 1);
                    let m = Model::new(arch, task, 3, vars.clone()).unwrap();
                    let out = m.forward_t(&x, train).unwrap();
                    let mut loss = out.logits.sqr().unwrap().mean_all().unwrap();
                    if let Some(b) = out.boxes {
                        loss = (loss + b.mean_all().unwrap()).unwrap();
                    }
                    let grads = loss.backward().unwrap();
                    for (name, e) in vars.entries() {
                        if e.role == super::super::vars::Role::Buffer {
                            continue;
                        }
                        let g = grads.get(e.var.as_tensor()).unwrap_or_else(|| {
                            panic!("{arch} (train {train}): no gradient for {name}")
                        });
                        let n: f32 = g.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
                        assert!(n > 0.0, "{arch} (train {train}): zero gradient for {name}");
                    }
                }
            }
        }
    }

    /// The detector too: after one backward pass of FCOS's loss every
    /// trainable var of the backbone's trunk, the pyramid and the head has
    /// a non-zero gradient (and EfficientNet's trunk has no `conv_head`).
    /// 64 channels in 32 groups: a group of one channel over a 1 × 1 map (P6
    /// and P7 of a 64-pixel image) normalizes to its shift alone, and passes
    /// no gradient back, in PyTorch as here.
    #[test]
    fn every_trainable_var_of_every_detector_gets_a_gradient() {
        use crate::nn::detect::{assign, loss::fcos_loss};
        let dev = Device::Cpu;
        let (x, objects) = detector_batch(&dev);
        let cfg = DetectorConfig {
            channels: 64,
            convs: 2,
        };
        for &arch in Arch::ALL {
            let vars = VarStore::new(&dev, 1);
            let heads = Heads {
                detector: cfg,
                ..Heads::default()
            };
            let m = Model::with_heads(arch, Task::Detect, 3, heads, vars.clone()).unwrap();
            let raw = m.detect_t(&x, false).unwrap();
            let p = assign::Points::new(&raw.levels);
            let t = assign::targets(&p, &objects, 3, &dev).unwrap();
            assert!(t.num_fg > 0, "{arch}: no foreground location");
            let loss = fcos_loss(&raw, &t).unwrap().total().unwrap();
            let grads = loss.backward().unwrap();
            let names: Vec<String> = vars.entries().into_iter().map(|(n, _)| n).collect();
            assert!(names.iter().any(|n| n.starts_with("fpn.")));
            assert!(!names.iter().any(|n| n.starts_with("conv_head")));
            assert_every_var_has_a_gradient(&vars, &grads, &format!("{arch} detector"));
        }
    }

    /// Two 64-pixel images and their objects (class, box `x1, y1, x2, y2`,
    /// weight): enough locations learn a box that each of the four
    /// distances' ReLU is open at some of them.
    #[allow(clippy::type_complexity)]
    fn detector_batch(dev: &Device) -> (Tensor, Vec<Vec<(usize, [f32; 4], f32)>>) {
        let v: Vec<f32> = (0..2 * 3 * 64 * 64)
            .map(|i| ((i as f32) * 0.37).sin())
            .collect();
        let x = Tensor::from_vec(v, (2, 3, 64, 64), dev).unwrap();
        let objects = vec![
            vec![
                (0, [8.0, 10.0, 30.0, 34.0], 1.0),
                (2, [30.0, 28.0, 60.0, 62.0], 1.0),
                (1, [2.0, 40.0, 20.0, 60.0], 1.0),
                (0, [36.0, 2.0, 62.0, 24.0], 1.0),
            ],
            vec![
                (1, [4.0, 4.0, 60.0, 50.0], 1.0),
                (2, [10.0, 44.0, 28.0, 62.0], 1.0),
                (0, [40.0, 40.0, 56.0, 58.0], 1.0),
            ],
        ];
        (x, objects)
    }

    /// Every variable but the buffers has a gradient, and not all zeros.
    fn assert_every_var_has_a_gradient(
        vars: &VarStore,
        grads: &candle_core::backprop::GradStore,
        what: &str,
    ) {
        for (name, e) in vars.entries() {
            if e.role == super::super::vars::Role::Buffer {
                continue;
            }
            let g = grads
                .get(e.var.as_tensor())
                .unwrap_or_else(|| panic!("{what}: no gradient for {name}"));
            let n: f32 = g.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(n > 0.0, "{what}: zero gradient for {name}");
        }
    }

    /// Task instance: after one backward pass of FCOS's loss plus the mask
    /// loss on the objects' boxes, every trainable var of the trunk, the
    /// pyramid, the detector's head and the mask head (P2's lateral where
    /// the backbone has a stride-4 stage) has a non-zero gradient.
    #[test]
    fn every_trainable_var_of_every_instance_model_gets_a_gradient() {
        use crate::nn::detect::{assign, loss::fcos_loss, mask};
        let dev = Device::Cpu;
        let (x, objects) = detector_batch(&dev);
        // Each object's target: the left two thirds of its box.
        let mut boxes = Vec::new();
        let mut labels = Vec::new();
        let mut targets = Vec::new();
        for (j, objs) in objects.iter().enumerate() {
            for &(c, b, _) in objs {
                boxes.push((j, b));
                labels.push(c);
                targets.extend(
                    (0..mask::MASK * mask::MASK)
                        .map(|k| f32::from(u8::from(k % mask::MASK < mask::MASK * 2 / 3))),
                );
            }
        }
        let heads = Heads {
            // 64 channels: group norm's 32 groups of two, so that a 1 × 1
            // P6 or P7 map does not normalize to zeros.
            detector: DetectorConfig {
                channels: 64,
                convs: 1,
            },
            mask_convs: 2,
            ..Heads::default()
        };
        for &arch in Arch::ALL {
            let vars = VarStore::new(&dev, 1);
            let m = Model::with_heads(arch, Task::Instance, 3, heads, vars.clone()).unwrap();
            let (raw, map) = m.instance_t(&x, false).unwrap();
            let p = assign::Points::new(&raw.levels);
            let t = assign::targets(&p, &objects, 3, &dev).unwrap();
            let head = m.mask_head.as_ref().unwrap();
            let logits = head.forward(&map, &boxes).unwrap();
            assert_eq!(logits.dims(), [7, 3, mask::MASK, mask::MASK]);
            let k = labels.len();
            let tt = Tensor::from_slice(&targets, (k, mask::MASK * mask::MASK), &dev).unwrap();
            let w = Tensor::ones(k, candle_core::DType::F32, &dev).unwrap();
            let ml = mask::mask_loss(&logits, &labels, &tt, &w).unwrap();
            let loss = (fcos_loss(&raw, &t).unwrap().total().unwrap() + ml).unwrap();
            let grads = loss.backward().unwrap();
            let names: Vec<String> = vars.entries().into_iter().map(|(n, _)| n).collect();
            assert!(
                names
                    .iter()
                    .any(|n| n.starts_with("mask_head.mask_fcn_logits"))
            );
            assert_eq!(
                names.iter().any(|n| n.starts_with("mask_head.p2_inner")),
                arch != Arch::SimpleCnn,
                "{arch}: P2 where there is a stride-4 stage below C3"
            );
            assert_every_var_has_a_gradient(&vars, &grads, &format!("{arch} instance"));
        }
    }

    /// The segmenter too: after one backward pass of bce + dice + lovasz
    /// every trainable var of the trunk, the U-Net decoder and the head has
    /// a non-zero gradient, in training mode (batch statistics) as in
    /// evaluation mode; the logits have the input's size, also for a side
    /// that is no multiple of 32.
    #[test]
    fn every_trainable_var_of_every_segmenter_gets_a_gradient() {
        use crate::nn::loss::{Kind, Loss};
        use crate::nn::segment::loss::segment_loss;
        let dev = Device::Cpu;
        let (h, w) = (40, 36);
        let v: Vec<f32> = (0..2 * 3 * h * w)
            .map(|i| ((i as f32) * 0.37).sin())
            .collect();
        let x = Tensor::from_vec(v, (2, 3, h, w), &dev).unwrap();
        let m: Vec<f32> = (0..2 * 2 * h * w)
            .map(|i| f32::from(u8::from((i / 7) % 3 == 0)))
            .collect();
        let masks = Tensor::from_vec(m, (2, 2, h, w), &dev).unwrap();
        let weights = Tensor::new(&[1f32, 0.5], &dev).unwrap();
        let loss = Loss {
            terms: vec![(Kind::Bce, 1.0), (Kind::Dice, 1.0), (Kind::Lovasz, 0.5)],
            label_smoothing: 0.0,
            focal_gamma: 2.0,
        };
        for &arch in Arch::ALL {
            for train in [false, true] {
                if train && arch == Arch::EfficientnetB0 {
                    continue;
                }
                let vars = VarStore::new(&dev, 1);
                let m = Model::with_heads(arch, Task::Segment, 2, Heads::default(), vars.clone())
                    .unwrap();
                let logits = m.segment_t(&x, train).unwrap();
                assert_eq!(logits.dims(), [2, 2, h, w], "{arch}");
                let l = segment_loss(&loss, &logits, &masks, &weights).unwrap();
                let grads = l.backward().unwrap();
                let names: Vec<String> = vars.entries().into_iter().map(|(n, _)| n).collect();
                assert!(names.iter().any(|n| n.starts_with("decoder.blocks.")));
                assert!(!names.iter().any(|n| n.starts_with("conv_head")));
                for (name, e) in vars.entries() {
                    if e.role == super::super::vars::Role::Buffer {
                        continue;
                    }
                    let g = grads.get(e.var.as_tensor()).unwrap_or_else(|| {
                        panic!("{arch} segmenter (train {train}): no gradient for {name}")
                    });
                    let n: f32 = g.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
                    assert!(
                        n > 0.0,
                        "{arch} segmenter (train {train}): zero gradient for {name}"
                    );
                }
            }
        }
    }

    /// Guards `predict`'s memory: a model built on frozen variables
    /// records no graph (each layer's input can go as soon as it is used),
    /// gives the trained model's outputs, and follows the variables when
    /// they are loaded or stepped after it was built.
    #[test]
    fn frozen_model_records_no_graph_and_follows_its_variables() {
        let dev = Device::Cpu;
        let x = Tensor::rand(0f32, 1f32, (2, 3, 32, 32), &dev).unwrap();
        let values = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        for &arch in Arch::ALL {
            let vars = VarStore::new(&dev, 1);
            let m = Model::new(arch, Task::Classify, 3, vars.clone()).unwrap();
            let frozen = Model::new(arch, Task::Classify, 3, vars.frozen()).unwrap();
            let tracked = m.forward_t(&x, false).unwrap().logits;
            let before = frozen.forward_t(&x, false).unwrap().logits;
            assert!(tracked.track_op(), "{arch}: the trainable model records");
            assert!(
                !before.track_op(),
                "{arch}: the frozen model records a graph"
            );
            assert_eq!(values(&before), values(&tracked), "{arch}");
            // New values for every variable, set through the store.
            let doubled = vars
                .snapshot()
                .unwrap()
                .into_iter()
                .map(|(k, t)| (k, (t * 1.5).unwrap()))
                .collect();
            vars.load(&doubled).unwrap();
            let after = frozen.forward_t(&x, false).unwrap().logits;
            assert_eq!(
                values(&after),
                values(&m.forward_t(&x, false).unwrap().logits),
                "{arch}"
            );
            assert_ne!(values(&after), values(&before), "{arch}: frozen values");
        }
        let vars = VarStore::new(&dev, 1);
        let seg = Model::with_heads(
            Arch::SimpleCnn,
            Task::Segment,
            2,
            Heads::default(),
            vars.frozen(),
        )
        .unwrap();
        assert!(!seg.segment_t(&x, false).unwrap().track_op());
    }

    #[test]
    fn under_matches_whole_name_segments() {
        assert!(under("layer1.0.conv1.weight", "layer1"));
        assert!(!under("layer10.weight", "layer1"));
        assert!(under("fc", "fc"));
    }
}
