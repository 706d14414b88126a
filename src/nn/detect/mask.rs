//! The instance masks of task instance: Mask R-CNN's mask branch (He et
//! al., *Mask R-CNN*, ICCV 2017, as torchvision's `MaskRCNNHeads` and
//! `MaskRCNNPredictor` build it) over the FCOS detector's boxes.
//!
//! - The map masks are read from: P2, the feature pyramid carried one level
//!   finer (a 1×1 lateral of the backbone's stride-4 stage plus P3
//!   upsampled 2×, then a 3×3 convolution), where the backbone has a stage
//!   below C3 (resnet, efficientnet); else P3 itself (simple_cnn's P3 is at
//!   stride 2).
//! - Each box's features by RoIAlign (`aligned`, 2 × 2 samples per bin) at
//!   [`ROI`] × [`ROI`], `convs` × (3×3 convolution, group norm, ReLU), a 2×
//!   upsampling (nearest, then a 3×3 convolution and ReLU, in place of
//!   torchvision's 2×2 transposed convolution) and a 1×1 convolution to one
//!   mask logit per class at [`MASK`] × [`MASK`].
//! - Training reads the ground-truth boxes (after augmentation) as the
//!   regions, and the binary cross-entropy of the true class's logits
//!   against each object's mask sampled on the same grid ([`target`],
//!   thresholded at ½ as torchvision's `project_masks_on_boxes`).
//! - Inference reads the detector's boxes; a mask is pasted back into the
//!   image by sampling the grid bilinearly at every pixel's centre inside
//!   its box ([`paste`]).

use candle_core::{Module, Result, Tensor};

use super::fcos::groups;
use crate::data::coco_rle::Rle;
use crate::nn::layers::{Conv, GroupNorm, conv_init, group_norm, resize_nearest};
use crate::nn::models::Backbone;
use crate::nn::vars::{Init, Vb};

/// Side of the RoIAlign grid the mask head reads.
pub const ROI: usize = 14;
/// Side of the mask grid the head writes (and targets are sampled on).
pub const MASK: usize = 2 * ROI;

/// The mask branch.
pub struct MaskHead {
    /// P2: a 1×1 lateral of the stride-4 stage and a 3×3 smoothing
    /// convolution; `None`: masks read P3.
    p2: Option<(Conv, Conv)>,
    tower: Vec<(Conv, GroupNorm)>,
    up: Conv,
    logits: Conv,
    /// Stride of the map masks are read from, in input pixels.
    pub stride: usize,
    /// Where that map's cell `(0, 0)` looks in the input
    /// ([`Backbone::pyramid_offsets`]).
    pub offset: f32,
    pub classes: usize,
}

/// Kaiming normal (fan out, ReLU) with zero bias: torchvision's mask head.
fn kaiming(vb: &Vb, cin: usize, cout: usize, k: usize) -> Result<Conv> {
    conv_init(
        vb,
        (cin, cout, k, 1, 1),
        Init::KaimingOut {
            fan_out: cout * k * k,
        },
        Some(Init::Const(0.0)),
    )
}

impl MaskHead {
    /// A mask head of `convs` convolutions of `ch` channels for `classes`
    /// classes, reading the pyramid of `ch` channels the detector builds
    /// over `backbone`. Variables under `mask_head`.
    pub fn new(
        vb: &Vb,
        backbone: &dyn Backbone,
        classes: usize,
        ch: usize,
        convs: usize,
    ) -> Result<MaskHead> {
        let vb = vb.pp("mask_head");
        let enc_ch = backbone.encoder_channels();
        let enc_st = backbone.encoder_strides();
        let py_st = backbone.pyramid_strides();
        let py_off = backbone.pyramid_offsets();
        // The stage just below C3, when there is one.
        let below = (enc_ch.len() >= 4).then(|| enc_ch.len() - 4);
        let (p2, stride, offset) = match below {
            Some(i) => {
                let bound = |cin: usize, k: usize| Init::Bound((3.0 / (cin * k * k) as f64).sqrt());
                let lateral = conv_init(
                    &vb.pp("p2_inner"),
                    (enc_ch[i], ch, 1, 1, 1),
                    bound(enc_ch[i], 1),
                    Some(Init::Const(0.0)),
                )?;
                let smooth = conv_init(
                    &vb.pp("p2_layer"),
                    (ch, ch, 3, 1, 1),
                    bound(ch, 3),
                    Some(Init::Const(0.0)),
                )?;
                // Symmetrically padded stride-2 stages centre cell x on
                // pixel x·s, as C3's offset says of the finer stages too.
                (Some((lateral, smooth)), enc_st[i], 0.0)
            }
            None => (None, py_st[0], py_off[0]),
        };
        let tower = (0..convs)
            .map(|i| {
                Ok((
                    kaiming(&vb.pp("mask_fcn").pp(i), ch, ch, 3)?,
                    group_norm(&vb.pp("mask_gn").pp(i), groups(ch), ch)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(MaskHead {
            p2,
            tower,
            up: kaiming(&vb.pp("conv5_mask"), ch, ch, 3)?,
            logits: kaiming(&vb.pp("mask_fcn_logits"), ch, classes, 1)?,
            stride,
            offset,
            classes,
        })
    }

    /// The map masks are read from: P2 from the encoder's stages `enc`
    /// (finest first) and the pyramid's P3, or P3.
    pub fn feature_map(&self, enc: &[Tensor], p3: &Tensor) -> Result<Tensor> {
        let Some((lateral, smooth)) = &self.p2 else {
            return Ok(p3.clone());
        };
        let c2 = &enc[enc.len() - 4];
        let l = lateral.forward(c2)?;
        let (h, w) = (l.dim(2)?, l.dim(3)?);
        smooth.forward(&(l + resize_nearest(p3, h, w)?)?)
    }

    /// `[K, classes, MASK, MASK]` mask logits of the regions `boxes` (per
    /// region: its image in the batch and `x1, y1, x2, y2` in input
    /// pixels) over `map` (from [`MaskHead::feature_map`]).
    pub fn forward(&self, map: &Tensor, boxes: &[(usize, [f32; 4])]) -> Result<Tensor> {
        let k = boxes.len();
        let dev = map.device();
        if k == 0 {
            return Tensor::zeros((0, self.classes, MASK, MASK), candle_core::DType::F32, dev);
        }
        // RoIAlign (aligned) puts map cell x at input (x + ½)·stride; this
        // map's cell x looks at x·stride + offset.
        let shift = self.stride as f32 / 2.0 - self.offset;
        let rois: Vec<f32> = boxes
            .iter()
            .flat_map(|&(i, [x1, y1, x2, y2])| {
                [i as f32, x1 + shift, y1 + shift, x2 + shift, y2 + shift]
            })
            .collect();
        // RoIAlign runs on the CPU: a map on a GPU goes there and back
        // (both moves carry the gradient).
        let cpu = candle_core::Device::Cpu;
        let rois = Tensor::from_vec(rois, (k, 5), &cpu)?;
        let mut x = podium_kernels::roi_align::roi_align(
            &map.to_device(&cpu)?,
            &rois,
            (ROI, ROI),
            1.0 / self.stride as f32,
            2,
            true,
        )?
        .to_device(dev)?;
        for (c, gn) in &self.tower {
            x = gn.forward(&c.forward(&x)?)?.relu()?;
        }
        let x = self.up.forward(&resize_nearest(&x, MASK, MASK)?)?.relu()?;
        self.logits.forward(&x)
    }

    /// Name prefixes of the head's variables.
    pub fn prefixes() -> [&'static str; 1] {
        ["mask_head"]
    }
}

/// Each region's logits of its own class: `[K, classes, M, M]` →
/// `[K, M·M]`.
pub fn select(logits: &Tensor, labels: &[usize]) -> Result<Tensor> {
    let (k, c, h, w) = logits.dims4()?;
    let idx: Vec<u32> = labels
        .iter()
        .enumerate()
        .map(|(i, &l)| (i * c + l) as u32)
        .collect();
    let idx = Tensor::from_vec(idx, k, logits.device())?;
    logits.reshape((k * c, h * w))?.index_select(&idx, 0)
}

/// The mask loss: binary cross-entropy with logits of each region's own
/// class against its target, averaged over the grid's cells and weighted
/// by `weights` (summing to the regions' count for a plain mean).
pub fn mask_loss(
    logits: &Tensor,
    labels: &[usize],
    targets: &Tensor,
    weights: &Tensor,
) -> Result<Tensor> {
    let k = labels.len();
    if k == 0 {
        return Tensor::zeros((), candle_core::DType::F32, logits.device());
    }
    let x = select(logits, labels)?;
    let per = crate::nn::loss::bce(&x, targets)?.mean(1)?;
    (per * weights)?.sum_all()? / k as f64
}

/// Bilinear sample of a row-major `h × w` plane at continuous pixel
/// coordinates (pixel `i` spans `[i, i + 1)`), edges clamped.
fn bilinear(plane: &[f32], h: usize, w: usize, x: f32, y: f32) -> f32 {
    let (x, y) = (
        (x - 0.5).clamp(0.0, (w - 1) as f32),
        (y - 0.5).clamp(0.0, (h - 1) as f32),
    );
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let at = |xx: usize, yy: usize| plane[yy * w + xx];
    (at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx) * (1.0 - fy)
        + (at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx) * fy
}

/// An object's mask target: its `side × side` plane (1 inside, 0
/// outside) sampled at the centres of an `m × m` grid over `xyxy` (input
/// pixels), 1 where the sample reaches ½, row-major.
pub fn target(plane: &[f32], side: usize, xyxy: [f32; 4], m: usize) -> Vec<f32> {
    let [x1, y1, x2, y2] = xyxy;
    let (bw, bh) = ((x2 - x1) / m as f32, (y2 - y1) / m as f32);
    let mut out = Vec::with_capacity(m * m);
    for i in 0..m {
        let y = y1 + (i as f32 + 0.5) * bh;
        for j in 0..m {
            let x = x1 + (j as f32 + 0.5) * bw;
            let v = bilinear(plane, side, side, x, y);
            out.push(if v >= 0.5 { 1.0 } else { 0.0 });
        }
    }
    out
}

/// One mask prediction: an `m × m` grid of probabilities over the box
/// `xyxy` (normalized by the image's sides).
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    pub xyxy: [f64; 4],
    pub probs: Vec<f32>,
}

/// The value a part gives the point `(x, y)` (normalized): its grid
/// sampled bilinearly, 0 outside its box.
fn part_at(p: &Part, m: usize, x: f64, y: f64) -> f32 {
    let [x1, y1, x2, y2] = p.xyxy;
    if x < x1 || x > x2 || y < y1 || y > y2 || x2 <= x1 || y2 <= y1 {
        return 0.0;
    }
    let u = ((x - x1) / (x2 - x1) * m as f64) as f32;
    let v = ((y - y1) / (y2 - y1) * m as f64) as f32;
    bilinear(&p.probs, m, m, u, v)
}

/// The binary mask of an image of `w × h` pixels that the parts give
/// together: each pixel inside one of their boxes is set where the mean of
/// the parts' probabilities at its centre reaches `threshold`. One part is
/// one model's mask; several are TTA variants' masks of one object.
pub fn paste(parts: &[Part], m: usize, (w, h): (usize, usize), threshold: f32) -> Rle {
    let mut mask = vec![false; w * h];
    if parts.is_empty() || w == 0 || h == 0 {
        return Rle::encode(&mask, h, w);
    }
    let lo = |i: usize| parts.iter().map(|p| p.xyxy[i]).fold(f64::MAX, f64::min);
    let hi = |i: usize| parts.iter().map(|p| p.xyxy[i]).fold(f64::MIN, f64::max);
    let px = |v: f64, n: usize| ((v * n as f64).floor().max(0.0) as usize).min(n);
    let (x0, x1) = (px(lo(0), w), (px(hi(2), w) + 1).min(w));
    let (y0, y1) = (px(lo(1), h), (px(hi(3), h) + 1).min(h));
    let n = parts.len() as f32;
    for y in y0..y1 {
        let cy = (y as f64 + 0.5) / h as f64;
        for x in x0..x1 {
            let cx = (x as f64 + 0.5) / w as f64;
            let s: f32 = parts.iter().map(|p| part_at(p, m, cx, cy)).sum();
            mask[y * w + x] = s / n >= threshold;
        }
    }
    Rle::encode(&mask, h, w)
}

/// The masks behind each fused box (TTA variants' detections fused by
/// weighted boxes fusion): from each variant `v`, the part of its detection
/// `dets[v]` of the box's class that overlaps the box most, when by at
/// least `iou`.
pub fn members(
    fused: &[crate::data::boxes::NBox],
    dets: &[Vec<crate::data::boxes::NBox>],
    parts: &[Vec<Part>],
    iou: f64,
) -> Vec<Vec<Part>> {
    use crate::data::boxes::iou_xyxy;
    fused
        .iter()
        .map(|f| {
            dets.iter()
                .zip(parts)
                .filter_map(|(ds, ps)| {
                    ds.iter()
                        .zip(ps)
                        .filter(|(d, _)| d.label == f.label)
                        .map(|(d, p)| (iou_xyxy(&d.xyxy, &f.xyxy), p))
                        .filter(|(o, _)| *o >= iou)
                        .max_by(|a, b| a.0.total_cmp(&b.0))
                        .map(|(_, p)| p.clone())
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target sampled from a plane whose object fills the box exactly is
    /// all ones; half of it filled, half of the grid.
    #[test]
    fn targets_sample_the_object_on_the_box_grid() {
        let side = 32;
        let mut plane = vec![0f32; side * side];
        for y in 8..24 {
            for x in 4..20 {
                plane[y * side + x] = 1.0;
            }
        }
        let t = target(&plane, side, [4.0, 8.0, 20.0, 24.0], 8);
        assert!(t.iter().all(|&v| v == 1.0), "{t:?}");
        // A box twice as wide: the left half of each row.
        let t = target(&plane, side, [4.0, 8.0, 36.0, 24.0], 8);
        for row in t.chunks(8) {
            assert_eq!(row, [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        }
    }

    /// A grid of ones pasted back covers exactly the pixels whose centres
    /// lie in its box; two parts of which one says no halve the mean.
    #[test]
    fn paste_covers_the_box_and_averages_parts() {
        let ones = Part {
            xyxy: [2.0 / 16.0, 4.0 / 16.0, 10.0 / 16.0, 12.0 / 16.0],
            probs: vec![1.0; 16],
        };
        let r = paste(std::slice::from_ref(&ones), 4, (16, 16), 0.5);
        let m = r.decode();
        for y in 0..16 {
            for x in 0..16 {
                let inside = (2..10).contains(&x) && (4..12).contains(&y);
                assert_eq!(m[y * 16 + x], inside, "({x}, {y})");
            }
        }
        let zeros = Part {
            probs: vec![0.0; 16],
            ..ones.clone()
        };
        let r = paste(&[ones.clone(), zeros.clone()], 4, (16, 16), 0.5);
        assert_eq!(r.area(), 64, "a mean of ½ reaches ½");
        let r = paste(&[ones, zeros], 4, (16, 16), 0.6);
        assert_eq!(r.area(), 0);
    }

    /// Selecting each region's class picks exactly those logits.
    #[test]
    fn select_picks_each_regions_class() {
        let dev = candle_core::Device::Cpu;
        let v: Vec<f32> = (0..2 * 3 * 2 * 2).map(|i| i as f32).collect();
        let l = Tensor::from_vec(v, (2, 3, 2, 2), &dev).unwrap();
        let s = select(&l, &[2, 0]).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(
            s,
            vec![vec![8.0, 9.0, 10.0, 11.0], vec![12.0, 13.0, 14.0, 15.0]]
        );
    }
}
