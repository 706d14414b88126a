//! Object detection on candle: FCOS (Tian et al., *FCOS: Fully
//! Convolutional One-Stage Object Detection*, ICCV 2019), built as
//! torchvision's `fcos_resnet50_fpn` builds it, over podium's backbones.
//!
//! - [`fcos`]: the feature pyramid (P3–P5 from the backbone's C3–C5, P6 and
//!   P7 by stride-2 convolutions) and the head shared by every level: a
//!   classification tower ending in one logit per class, a regression
//!   tower ending in the four distances `l, t, r, b` (in units of the
//!   level's stride) and a centre-ness logit.
//! - [`assign`]: which ground-truth box each location learns (centre
//!   sampling within 1.5 strides, the level's size range, the smallest box
//!   on ties), and the batch's targets.
//! - [`loss`]: sigmoid focal loss on the classes, generalized-IoU loss on
//!   the boxes, binary cross-entropy on centre-ness, each summed and
//!   divided by the number of foreground locations.
//! - [`decode`]: scores √(class × centre-ness), the best candidates per
//!   level, boxes clipped to the image, per-class NMS, the best `max_det`.
//!
//! Variable names follow torchvision's (`fpn.inner_blocks.0.0.weight`,
//! `head.classification_head.cls_logits.bias`, …) without the
//! `backbone.body.` / `backbone.` prefixes, beside the backbone's timm
//! names.
//!
//! ```
//! use podium::nn::detect::{fcos::{Config, Fcos}, assign::Points};
//! use podium::nn::{models::{Arch, backbone_for}, vars::VarStore};
//! let vars = VarStore::new(&candle_core::Device::Cpu, 0);
//! let cfg = Config { channels: 32, convs: 1 };
//! let bb = backbone_for(Arch::SimpleCnn, &vars.root(), true).unwrap();
//! let det = Fcos::new(&vars.root(), bb.as_ref(), 3, cfg).unwrap();
//! let x = candle_core::Tensor::zeros((2, 3, 32, 32), candle_core::DType::F32, vars.device()).unwrap();
//! let raw = det.forward(&bb.pyramid(&x, false).unwrap()).unwrap();
//! let points = Points::new(&raw.levels);
//! // strides 2, 4, 8, 16, 32: 16² + 8² + 4² + 2² + 1² locations
//! assert_eq!(points.len(), 341);
//! assert_eq!(raw.cls.dims(), [2, 341, 3]);
//! ```

pub mod assign;
pub mod decode;
pub mod fcos;
pub mod loss;
pub mod mask;
