//! Semantic segmentation on candle: a U-Net decoder (Ronneberger et al.,
//! *U-Net*, MICCAI 2015) over podium's backbones, built as
//! segmentation_models_pytorch's `Unet` builds it, its losses, and
//! inference over whole images or overlapping tiles.
//!
//! - [`unet`]: from the encoder's deepest map up, each block doubles the
//!   resolution (nearest), concatenates the encoder's map of that stride
//!   and applies two 3×3 conv + batch norm + ReLU; the last blocks, past
//!   the finest encoder map, have no skip; a 3×3 conv gives one logit per
//!   class and pixel.
//! - [`loss`]: binary cross-entropy, Dice and Lovász hinge on the masks,
//!   as segmentation_models_pytorch defines them, and weighted sums.
//! - [`infer`]: probabilities per class and pixel at each image's own
//!   resolution: the whole image resized to `image_size`, or tiles of
//!   `image_size` at native resolution overlapping and blended with
//!   Gaussian weights; dihedral TTA variants averaged.
//!
//! Variable names follow segmentation_models_pytorch's
//! (`decoder.blocks.0.conv1.0.weight`, `segmentation_head.0.bias`) beside
//! the backbone's timm names (without smp's `encoder.` prefix).
//!
//! ```
//! use podium::nn::segment::unet::Unet;
//! use podium::nn::{models::{Arch, backbone}, vars::VarStore};
//! let vars = VarStore::new(&candle_core::Device::Cpu, 0);
//! let bb = backbone(Arch::SimpleCnn, &vars.root()).unwrap();
//! let unet = Unet::new(&vars.root(), bb.as_ref(), 2, 16).unwrap();
//! let x = candle_core::Tensor::zeros((2, 3, 32, 32), candle_core::DType::F32, vars.device()).unwrap();
//! let logits = unet.forward(&bb.encoder(&x, false).unwrap(), (32, 32), false).unwrap();
//! assert_eq!(logits.dims(), [2, 2, 32, 32]);
//! ```

pub mod infer;
pub mod loss;
pub mod unet;
