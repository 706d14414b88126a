//! The U-Net decoder and segmentation head, initialized as
//! segmentation_models_pytorch initializes them (convs kaiming uniform,
//! fan-in, for ReLU; the head Xavier uniform; biases 0).

use candle_core::{Module, Result, Tensor};

use crate::nn::kernels::Act;
use crate::nn::layers::{BatchNorm, Conv, batch_norm, conv_init, resize_nearest};
use crate::nn::models::Backbone;
use crate::nn::vars::{Init, Vb};

/// One decoder block: upsample, concatenate the skip, two conv-BN-ReLU.
struct Block {
    conv1: (Conv, BatchNorm),
    conv2: (Conv, BatchNorm),
}

/// A 3×3 conv (no bias) and its batch norm, named `0` and `1` as smp's
/// `Conv2dReLU`.
fn conv_bn(vb: &Vb, cin: usize, cout: usize) -> Result<(Conv, BatchNorm)> {
    let bound = (6.0 / (cin * 9) as f64).sqrt();
    Ok((
        conv_init(&vb.pp(0), (cin, cout, 3, 1, 1), Init::Bound(bound), None)?,
        batch_norm(&vb.pp(1), cout)?,
    ))
}

/// The decoder and head over a backbone's encoder.
pub struct Unet {
    blocks: Vec<Block>,
    /// Skip channels per block (0: none).
    skips: Vec<usize>,
    head: Conv,
    pub classes: usize,
}

impl Unet {
    /// Blocks from the deepest encoder map up to the input's resolution;
    /// the last block has `width` channels, each one above twice the next
    /// (smp's default `decoder_channels` (256, 128, 64, 32, 16) for a
    /// five-stage encoder is `width` 16).
    pub fn new(vb: &Vb, backbone: &dyn Backbone, classes: usize, width: usize) -> Result<Unet> {
        let ch = backbone.encoder_channels();
        let strides = backbone.encoder_strides();
        // Skips deepest first (not the deepest map itself), then blocks
        // without one down to stride 1.
        let mut skips: Vec<usize> = ch[..ch.len() - 1].iter().rev().copied().collect();
        let mut s = strides[0];
        while s > 1 {
            skips.push(0);
            s /= 2;
        }
        let n = skips.len();
        let d = vb.pp("decoder").pp("blocks");
        let mut cin = ch[ch.len() - 1];
        let mut blocks = Vec::with_capacity(n);
        for (i, &skip) in skips.iter().enumerate() {
            let cout = width << (n - 1 - i);
            let b = d.pp(i);
            blocks.push(Block {
                conv1: conv_bn(&b.pp("conv1"), cin + skip, cout)?,
                conv2: conv_bn(&b.pp("conv2"), cout, cout)?,
            });
            cin = cout;
        }
        let h = vb.pp("segmentation_head").pp(0);
        let bound = (6.0 / ((cin + classes) * 9) as f64).sqrt();
        let head = conv_init(
            &h,
            (cin, classes, 3, 1, 1),
            Init::Bound(bound),
            Some(Init::Const(0.0)),
        )?;
        Ok(Unet {
            blocks,
            skips,
            head,
            classes,
        })
    }

    /// `[N, classes, H, W]` logits from the encoder's maps (finest first)
    /// for an input of `(H, W)`.
    pub fn forward(&self, enc: &[Tensor], (h, w): (usize, usize), train: bool) -> Result<Tensor> {
        let mut x = enc[enc.len() - 1].clone();
        let mut skip_maps = enc[..enc.len() - 1].iter().rev();
        let no_skip = self.skips.iter().filter(|&&c| c == 0).count();
        for (i, b) in self.blocks.iter().enumerate() {
            x = if self.skips[i] > 0 {
                let s = skip_maps.next().expect("a skip per block");
                let (_, _, sh, sw) = s.dims4()?;
                Tensor::cat(&[&resize_nearest(&x, sh, sw)?, s], 1)?
            } else {
                // Past the finest skip: double, and meet the input's size
                // at the last block.
                let left = no_skip - (i - (self.blocks.len() - no_skip));
                let (_, _, xh, xw) = x.dims4()?;
                if left == 1 {
                    resize_nearest(&x, h, w)?
                } else {
                    resize_nearest(&x, xh * 2, xw * 2)?
                }
            };
            x = b
                .conv1
                .1
                .forward_act(&b.conv1.0.forward(&x)?, train, Act::Relu)?;
            x = b
                .conv2
                .1
                .forward_act(&b.conv2.0.forward(&x)?, train, Act::Relu)?;
        }
        self.head.forward(&x)
    }

    /// Name prefixes of the decoder's and head's variables.
    pub fn prefixes() -> [&'static str; 2] {
        ["decoder", "segmentation_head"]
    }
}
