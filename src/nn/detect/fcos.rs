//! The FCOS network on top of a backbone: a feature pyramid network and
//! the head shared by its five levels, initialized as torchvision
//! initializes them.

use candle_core::{Module, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::nn::layers::{Conv, GroupNorm, conv_init, group_norm, resize_nearest};
use crate::nn::models::Backbone;
use crate::nn::vars::{Init, Vb};

/// The sizes of the neck and head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Channels of every pyramid level and of the head's towers
    /// (torchvision: 256).
    pub channels: usize,
    /// Convolutions in each tower (torchvision: 4).
    pub convs: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            channels: 128,
            convs: 4,
        }
    }
}

/// One pyramid level's map: its stride in input pixels, its size, and
/// where its cell `(0, 0)` looks in the input (cell `(x, y)` at
/// `(x·stride + offset, y·stride + offset)`, [`Backbone::pyramid_offsets`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Level {
    pub stride: usize,
    pub h: usize,
    pub w: usize,
    pub offset: f32,
}

/// The head's outputs over all levels' locations, finest level first, row
/// by row within a level.
pub struct Raw {
    /// `[N, A, K]` class logits.
    pub cls: Tensor,
    /// `[N, A, 4]` distances `l, t, r, b` from the location to the box's
    /// sides, in units of the level's stride, ≥ 0.
    pub reg: Tensor,
    /// `[N, A]` centre-ness logits.
    pub ctr: Tensor,
    pub levels: Vec<Level>,
}

/// torchvision's FPN init: kaiming uniform with a = 1, bias 0.
fn fpn_conv(vb: &Vb, cin: usize, cout: usize, k: usize, stride: usize) -> Result<Conv> {
    let bound = (3.0 / (cin * k * k) as f64).sqrt();
    conv_init(
        vb,
        (cin, cout, k, stride, 1),
        Init::Bound(bound),
        Some(Init::Const(0.0)),
    )
}

/// Feature pyramid (Lin et al., 2017) with torchvision's `LastLevelP6P7`.
pub struct Fpn {
    inner: Vec<Conv>,
    layer: Vec<Conv>,
    p6: Conv,
    p7: Conv,
}

impl Fpn {
    pub fn new(vb: &Vb, cin: [usize; 3], ch: usize) -> Result<Fpn> {
        let mut inner = Vec::new();
        let mut layer = Vec::new();
        for (i, &c) in cin.iter().enumerate() {
            inner.push(fpn_conv(&vb.pp("inner_blocks").pp(i).pp(0), c, ch, 1, 1)?);
            layer.push(fpn_conv(&vb.pp("layer_blocks").pp(i).pp(0), ch, ch, 3, 1)?);
        }
        let extra = vb.pp("extra_blocks");
        Ok(Fpn {
            inner,
            layer,
            p6: fpn_conv(&extra.pp("p6"), ch, ch, 3, 2)?,
            p7: fpn_conv(&extra.pp("p7"), ch, ch, 3, 2)?,
        })
    }

    /// C3, C4, C5 → P3 … P7.
    pub fn forward(&self, c: &[Tensor; 3]) -> Result<Vec<Tensor>> {
        let mut last = self.inner[2].forward(&c[2])?;
        let mut out = vec![self.layer[2].forward(&last)?];
        for i in (0..2).rev() {
            let lateral = self.inner[i].forward(&c[i])?;
            let (h, w) = (lateral.dim(2)?, lateral.dim(3)?);
            last = (lateral + resize_nearest(&last, h, w)?)?;
            out.insert(0, self.layer[i].forward(&last)?);
        }
        let p6 = self.p6.forward(&out[2])?;
        let p7 = self.p7.forward(&p6.relu()?)?;
        out.push(p6);
        out.push(p7);
        Ok(out)
    }
}

/// A tower: `convs` × (3×3 conv, group norm with 32 groups, ReLU), torchvision's
/// `conv.{3i}` and `conv.{3i+1}`.
struct Tower {
    layers: Vec<(Conv, GroupNorm)>,
}

/// The largest group count ≤ 32 that divides `c`.
pub(crate) fn groups(c: usize) -> usize {
    (1..=32.min(c))
        .rev()
        .find(|g| c.is_multiple_of(*g))
        .unwrap_or(1)
}

fn head_conv(vb: &Vb, cin: usize, cout: usize, bias: f64) -> Result<Conv> {
    conv_init(
        vb,
        (cin, cout, 3, 1, 1),
        Init::Normal { std: 0.01 },
        Some(Init::Const(bias)),
    )
}

impl Tower {
    fn new(vb: &Vb, ch: usize, n: usize) -> Result<Tower> {
        let layers = (0..n)
            .map(|i| {
                Ok((
                    head_conv(&vb.pp(3 * i), ch, ch, 0.0)?,
                    group_norm(&vb.pp(3 * i + 1), groups(ch), ch)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Tower { layers })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (c, gn) in &self.layers {
            x = gn.forward(&c.forward(&x)?)?.relu()?;
        }
        Ok(x)
    }
}

/// `[N, C, H, W]` → `[N, H·W, C]`.
fn flat(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    x.permute((0, 2, 3, 1))?.reshape((n, h * w, c))
}

/// The neck and head.
pub struct Fcos {
    fpn: Fpn,
    cls_tower: Tower,
    cls_logits: Conv,
    reg_tower: Tower,
    bbox_reg: Conv,
    bbox_ctrness: Conv,
    strides: [usize; 5],
    offsets: [f32; 5],
    pub classes: usize,
}

impl Fcos {
    /// The neck and head for `classes` classes over `backbone`'s pyramid.
    pub fn new(vb: &Vb, backbone: &dyn Backbone, classes: usize, cfg: Config) -> Result<Fcos> {
        let ch = cfg.channels;
        let head = vb.pp("head");
        let c = head.pp("classification_head");
        let r = head.pp("regression_head");
        // Focal loss's prior: every class starts at probability 0.01.
        let prior = -((1.0f64 - 0.01) / 0.01).ln();
        let s = backbone.pyramid_strides();
        // P6 and P7 are stride-2 convolutions of P5 with padding 1: their
        // cell x looks at P5's cell 2x, so they keep P5's offset.
        let o = backbone.pyramid_offsets();
        Ok(Fcos {
            fpn: Fpn::new(&vb.pp("fpn"), backbone.pyramid_channels(), ch)?,
            cls_tower: Tower::new(&c.pp("conv"), ch, cfg.convs)?,
            cls_logits: head_conv(&c.pp("cls_logits"), ch, classes, prior)?,
            reg_tower: Tower::new(&r.pp("conv"), ch, cfg.convs)?,
            bbox_reg: head_conv(&r.pp("bbox_reg"), ch, 4, 0.0)?,
            bbox_ctrness: head_conv(&r.pp("bbox_ctrness"), ch, 1, 0.0)?,
            strides: [s[0], s[1], s[2], s[2] * 2, s[2] * 4],
            offsets: [o[0], o[1], o[2], o[2], o[2]],
            classes,
        })
    }

    /// The head over the pyramid of the backbone's maps C3, C4, C5.
    pub fn forward(&self, c: &[Tensor; 3]) -> Result<Raw> {
        Ok(self.forward_pyramid(c)?.0)
    }

    /// The head's outputs and the pyramid's maps P3 … P7.
    pub fn forward_pyramid(&self, c: &[Tensor; 3]) -> Result<(Raw, Vec<Tensor>)> {
        let ps = self.fpn.forward(c)?;
        let (mut cls, mut reg, mut ctr, mut levels) = (vec![], vec![], vec![], vec![]);
        for ((p, &stride), &offset) in ps.iter().zip(&self.strides).zip(&self.offsets) {
            let (_, _, h, w) = p.dims4()?;
            levels.push(Level {
                stride,
                h,
                w,
                offset,
            });
            cls.push(flat(
                &self.cls_logits.forward(&self.cls_tower.forward(p)?)?,
            )?);
            let t = self.reg_tower.forward(p)?;
            reg.push(flat(&self.bbox_reg.forward(&t)?.relu()?)?);
            ctr.push(flat(&self.bbox_ctrness.forward(&t)?)?);
        }
        let raw = Raw {
            cls: Tensor::cat(&cls, 1)?,
            reg: Tensor::cat(&reg, 1)?,
            ctr: Tensor::cat(&ctr, 1)?.squeeze(2)?,
            levels,
        };
        Ok((raw, ps))
    }

    /// Name prefixes of the neck's and head's variables.
    pub fn prefixes() -> [&'static str; 2] {
        ["fpn", "head"]
    }
}
