//! RoIAlign (He et al., *Mask R-CNN*, 2017) on the CPU, with its backward
//! with respect to the feature map: torchvision's `ops.roi_align`, sample
//! for sample. Each region of interest is cut into `output` bins; each bin
//! averages bilinear samples of the map on a regular grid (`sampling_ratio`
//! per side, or `⌈region side / bins⌉` when it is 0), as torchvision's CPU
//! kernel computes them in f32.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use podium_kernels::roi_align::roi_align;
//! // One 4×4 map holding x + 4y, one region over all of it, one bin.
//! let x = Tensor::arange(0f32, 16., &Device::Cpu).unwrap().reshape((1, 1, 4, 4)).unwrap();
//! let rois = Tensor::new(&[[0f32, 0., 0., 4., 4.]], &Device::Cpu).unwrap();
//! let y = roi_align(&x, &rois, (1, 1), 1.0, 0, true).unwrap();
//! // Half-pixel centres (aligned): the samples' mean is the map's mean.
//! assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [7.5]);
//! ```

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::{dims4, f32_slice};

/// `x [N, C, H, W]`, `rois [K, 5]` (batch index, `x1, y1, x2, y2` in the
/// input's pixels, which `spatial_scale` maps onto the map) → `[K, C,
/// output.0, output.1]`. `aligned`: pixel centres at half-integers
/// (torchvision's `aligned=True`, Detectron2's ROIAlignV2); otherwise
/// regions are at least one map pixel wide. A backward for `x`; `rois`
/// are constants. f32 on the CPU.
pub fn roi_align(
    x: &Tensor,
    rois: &Tensor,
    output: (usize, usize),
    spatial_scale: f32,
    sampling_ratio: usize,
    aligned: bool,
) -> Result<Tensor> {
    if output.0 == 0 || output.1 == 0 {
        bail!("roi_align: empty output size {output:?}")
    }
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        bail!("roi_align: f32 on the CPU only")
    }
    let rois = rois.to_dtype(DType::F32)?.contiguous()?.detach();
    x.contiguous()?.apply_op2(
        &rois,
        RoiAlign {
            output,
            spatial_scale,
            sampling_ratio,
            aligned,
        },
    )
}

struct RoiAlign {
    output: (usize, usize),
    spatial_scale: f32,
    sampling_ratio: usize,
    aligned: bool,
}

/// Every bin's samples as (plane offset, weight ÷ sample count): bin `b` of
/// region `k` is `idx[start[k·bins + b]..start[k·bins + b + 1]]`.
struct Taps {
    batch: Vec<usize>,
    start: Vec<usize>,
    idx: Vec<u32>,
    w: Vec<f32>,
}

impl RoiAlign {
    fn taps(&self, rois: &[f32], n: usize, h: usize, w: usize) -> Result<Taps> {
        if !rois.len().is_multiple_of(5) {
            bail!("roi_align: rois must be [K, 5]")
        }
        let (ph, pw) = self.output;
        let k = rois.len() / 5;
        let mut t = Taps {
            batch: Vec::with_capacity(k),
            start: Vec::with_capacity(k * ph * pw + 1),
            idx: Vec::new(),
            w: Vec::new(),
        };
        t.start.push(0);
        let offset = if self.aligned { 0.5f32 } else { 0.0 };
        let scale = self.spatial_scale;
        for r in rois.chunks(5) {
            let b = r[0];
            if !(b >= 0.0 && b.fract() == 0.0 && (b as usize) < n) {
                bail!("roi_align: batch index {b} is not one of the {n} images")
            }
            t.batch.push(b as usize);
            let (x0, y0) = (r[1] * scale - offset, r[2] * scale - offset);
            let (x1, y1) = (r[3] * scale - offset, r[4] * scale - offset);
            let (mut rw, mut rh) = (x1 - x0, y1 - y0);
            if !self.aligned {
                rw = rw.max(1.0);
                rh = rh.max(1.0);
            }
            let (bh, bw) = (rh / ph as f32, rw / pw as f32);
            let (gh, gw) = if self.sampling_ratio > 0 {
                (self.sampling_ratio, self.sampling_ratio)
            } else {
                (
                    (rh / ph as f32).ceil().max(0.0) as usize,
                    (rw / pw as f32).ceil().max(0.0) as usize,
                )
            };
            let count = (gh * gw).max(1) as f32;
            for py in 0..ph {
                for px in 0..pw {
                    for iy in 0..gh {
                        let y = y0 + py as f32 * bh + (iy as f32 + 0.5) * bh / gh as f32;
                        for ix in 0..gw {
                            let x = x0 + px as f32 * bw + (ix as f32 + 0.5) * bw / gw as f32;
                            bilinear(y, x, h, w, |i, wt| {
                                t.idx.push(i as u32);
                                t.w.push(wt / count);
                            });
                        }
                    }
                    t.start.push(t.idx.len());
                }
            }
        }
        Ok(t)
    }
}

/// Along one axis of `len` pixels: the neighbours of `v` (clamped at 0)
/// and the weight of the upper one; past the last pixel, the last twice.
fn neighbours(v: f32, len: usize) -> (usize, usize, f32) {
    let v = v.max(0.0);
    let lo = v as usize;
    if lo >= len - 1 {
        (len - 1, len - 1, 0.0)
    } else {
        (lo, lo + 1, v - lo as f32)
    }
}

/// torchvision's `bilinear_interpolate` (and its `_gradient`): the four
/// neighbours of `(y, x)` and their weights, nothing outside `[-1, size]`.
fn bilinear(y: f32, x: f32, h: usize, w: usize, mut tap: impl FnMut(usize, f32)) {
    if y < -1.0 || y > h as f32 || x < -1.0 || x > w as f32 {
        return;
    }
    let (yl, yh, ly) = neighbours(y, h);
    let (xl, xh, lx) = neighbours(x, w);
    let (hy, hx) = (1.0 - ly, 1.0 - lx);
    tap(yl * w + xl, hy * hx);
    tap(yl * w + xh, hy * lx);
    tap(yh * w + xl, ly * hx);
    tap(yh * w + xh, ly * lx);
}

impl CustomOp2 for RoiAlign {
    fn name(&self) -> &'static str {
        "podium-roi-align"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "roi_align")?;
        let rois = f32_slice(s2, l2, "roi_align")?;
        let [n, c, h, w] = dims4(l1, "roi_align")?;
        if h == 0 || w == 0 {
            bail!("roi_align: empty map {h}×{w}")
        }
        let t = self.taps(rois, n, h, w)?;
        let k = t.batch.len();
        let bins = self.output.0 * self.output.1;
        let mut y = vec![0f32; k * c * bins];
        y.par_chunks_mut(bins).enumerate().for_each(|(kc, out)| {
            let (r, ch) = (kc / c, kc % c);
            let plane = &x[(t.batch[r] * c + ch) * h * w..][..h * w];
            for (b, v) in out.iter_mut().enumerate() {
                let (s, e) = (t.start[r * bins + b], t.start[r * bins + b + 1]);
                *v = t.idx[s..e]
                    .iter()
                    .zip(&t.w[s..e])
                    .map(|(&i, &wt)| wt * plane[i as usize])
                    .sum();
            }
        });
        Ok((
            CpuStorage::F32(y),
            Shape::from((k, c, self.output.0, self.output.1)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        rois: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, w) = x.dims4()?;
        let r = rois.flatten_all()?.to_vec1::<f32>()?;
        let t = self.taps(&r, n, h, w)?;
        let bins = self.output.0 * self.output.1;
        let g = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        // Per map plane, the regions of its image in order: every plane is
        // one thread's, so the sums are in a fixed order.
        let mut dx = vec![0f32; n * c * h * w];
        dx.par_chunks_mut(h * w).enumerate().for_each(|(nc, d)| {
            let (img, ch) = (nc / c, nc % c);
            for (k, &b) in t.batch.iter().enumerate() {
                if b != img {
                    continue;
                }
                let gk = &g[(k * c + ch) * bins..][..bins];
                for (bin, &gv) in gk.iter().enumerate() {
                    let (s, e) = (t.start[k * bins + bin], t.start[k * bins + bin + 1]);
                    for (&i, &wt) in t.idx[s..e].iter().zip(&t.w[s..e]) {
                        d[i as usize] += gv * wt;
                    }
                }
            }
        });
        Ok((Some(Tensor::from_vec(dx, (n, c, h, w), x.device())?), None))
    }
}
