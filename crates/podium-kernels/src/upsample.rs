//! Nearest and bilinear upsampling (or downsampling) of NCHW maps on the
//! CPU, with their backward. Nearest is PyTorch's
//! `F.interpolate(mode="nearest")` (source index ⌊o·in/out⌋), for any sizes
//! (candle 0.11's `upsample_nearest2d` has no backward for factors that are
//! not whole numbers). Bilinear is `F.interpolate(mode="bilinear")`: with
//! `align_corners = false` (PyTorch's default) a pixel is a square and the
//! source position is `(o + ½)·in/out − ½`, clamped at 0; with `true` the
//! corner pixels map onto each other. candle 0.11's `upsample_bilinear2d`
//! has no backward.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use podium_kernels::upsample::bilinear;
//! let x = Tensor::new(&[[[[0f32, 4.]]]], &Device::Cpu).unwrap();
//! let y = bilinear(&x, (1, 4), false).unwrap();
//! assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [0., 1., 3., 4.]);
//! ```

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::{dims4, f32_slice};

/// Resizes `x [N, C, H, W]` to `[N, C, size.0, size.1]` bilinearly; a
/// backward for `x`. podium's kernel for f32 on the CPU, candle's forward
/// (no backward) elsewhere.
pub fn bilinear(x: &Tensor, size: (usize, usize), align_corners: bool) -> Result<Tensor> {
    if size.0 == 0 || size.1 == 0 {
        bail!("upsample: empty output size {size:?}")
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        let op = Bilinear {
            size,
            align_corners,
        };
        return x.contiguous()?.apply_op1(op);
    }
    x.upsample_bilinear2d(size.0, size.1, align_corners)
}

/// Resizes `x [N, C, H, W]` to `[N, C, size.0, size.1]`, nearest source
/// pixel; a backward for `x` (each output's gradient added to its source).
/// podium's kernel for f32 on the CPU; elsewhere `None`: the caller composes
/// it from index selects.
pub fn nearest(x: &Tensor, size: (usize, usize)) -> Result<Option<Tensor>> {
    if size.0 == 0 || size.1 == 0 {
        bail!("upsample: empty output size {size:?}")
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return Ok(Some(x.contiguous()?.apply_op1(Nearest { size })?));
    }
    Ok(None)
}

/// PyTorch's nearest source index of each output index: ⌊o·in/out⌋.
fn nearest_axis(len: usize, out: usize) -> Vec<usize> {
    let scale = len as f64 / out as f64;
    (0..out)
        .map(|o| ((o as f64 * scale).floor() as usize).min(len - 1))
        .collect()
}

struct Nearest {
    size: (usize, usize),
}

impl CustomOp1 for Nearest {
    fn name(&self) -> &'static str {
        "podium-upsample-nearest"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "upsample")?;
        let [n, c, h, w] = dims4(l, "upsample")?;
        if h == 0 || w == 0 {
            bail!("upsample: empty input {h}×{w}")
        }
        let (oh, ow) = self.size;
        let (ys, xs) = (nearest_axis(h, oh), nearest_axis(w, ow));
        // Written once, without zero-filling first.
        let total = n * c * oh * ow;
        let mut y: Vec<f32> = Vec::with_capacity(total);
        y.spare_capacity_mut()[..total]
            .par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each(|(yo, xi)| {
                for (row, &sy) in yo.chunks_mut(ow).zip(&ys) {
                    let src = &xi[sy * w..][..w];
                    for (v, &sx) in row.iter_mut().zip(&xs) {
                        v.write(src[sx]);
                    }
                }
            });
        // SAFETY: the loop above wrote every one of the `total` elements
        // (each plane's `oh` rows of `ow`).
        unsafe { y.set_len(total) };
        Ok((CpuStorage::F32(y), Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (n, c, h, w) = x.dims4()?;
        let (oh, ow) = self.size;
        let (ys, xs) = (nearest_axis(h, oh), nearest_axis(w, ow));
        let g = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let mut dx = vec![0f32; n * c * h * w];
        dx.par_chunks_mut(h * w)
            .zip(g.par_chunks(oh * ow))
            .for_each(|(dxo, gi)| {
                for (row, &sy) in gi.chunks(ow).zip(&ys) {
                    let dst = &mut dxo[sy * w..][..w];
                    for (v, &sx) in row.iter().zip(&xs) {
                        dst[sx] += v;
                    }
                }
            });
        Ok(Some(Tensor::from_vec(dx, (n, c, h, w), x.device())?))
    }
}

/// For each output index along an axis: the two source indices and the
/// weight of the second.
type Axis = Vec<(usize, usize, f32)>;

fn axis(len: usize, out: usize, align_corners: bool) -> Axis {
    (0..out)
        .map(|o| {
            let src = if align_corners {
                if out > 1 {
                    o as f64 * (len - 1) as f64 / (out - 1) as f64
                } else {
                    0.0
                }
            } else {
                ((o as f64 + 0.5) * len as f64 / out as f64 - 0.5).max(0.0)
            };
            let i0 = (src.floor() as usize).min(len - 1);
            let i1 = (i0 + 1).min(len - 1);
            (i0, i1, (src - i0 as f64) as f32)
        })
        .collect()
}

struct Bilinear {
    size: (usize, usize),
    align_corners: bool,
}

impl Bilinear {
    fn axes(&self, h: usize, w: usize) -> Result<(Axis, Axis)> {
        if h == 0 || w == 0 {
            bail!("upsample: empty input {h}×{w}")
        }
        Ok((
            axis(h, self.size.0, self.align_corners),
            axis(w, self.size.1, self.align_corners),
        ))
    }
}

impl CustomOp1 for Bilinear {
    fn name(&self) -> &'static str {
        "podium-upsample-bilinear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "upsample")?;
        let [n, c, h, w] = dims4(l, "upsample")?;
        let (ys, xs) = self.axes(h, w)?;
        let (oh, ow) = self.size;
        let mut y = vec![0f32; n * c * oh * ow];
        y.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each(|(yo, xi)| {
                for (oy, &(y0, y1, ly)) in ys.iter().enumerate() {
                    let (r0, r1) = (&xi[y0 * w..][..w], &xi[y1 * w..][..w]);
                    for (ox, &(x0, x1, lx)) in xs.iter().enumerate() {
                        let top = r0[x0] + (r0[x1] - r0[x0]) * lx;
                        let bottom = r1[x0] + (r1[x1] - r1[x0]) * lx;
                        yo[oy * ow + ox] = top + (bottom - top) * ly;
                    }
                }
            });
        Ok((CpuStorage::F32(y), Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (n, c, h, w) = x.dims4()?;
        let (ys, xs) = self.axes(h, w)?;
        let (oh, ow) = self.size;
        let g = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let mut dx = vec![0f32; n * c * h * w];
        dx.par_chunks_mut(h * w)
            .zip(g.par_chunks(oh * ow))
            .for_each(|(dxo, gi)| {
                for (oy, &(y0, y1, ly)) in ys.iter().enumerate() {
                    for (ox, &(x0, x1, lx)) in xs.iter().enumerate() {
                        let v = gi[oy * ow + ox];
                        let (top, bottom) = (v * (1.0 - ly), v * ly);
                        dxo[y0 * w + x0] += top * (1.0 - lx);
                        dxo[y0 * w + x1] += top * lx;
                        dxo[y1 * w + x0] += bottom * (1.0 - lx);
                        dxo[y1 * w + x1] += bottom * lx;
                    }
                }
            });
        Ok(Some(Tensor::from_vec(dx, (n, c, h, w), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn align_corners_maps_corners_onto_corners() {
        let x = Tensor::new(&[[[[0f32, 3.]]]], &Device::Cpu).unwrap();
        let y = bilinear(&x, (1, 4), true).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [0., 1., 2., 3.]
        );
    }

    /// The backward is the forward's adjoint: ⟨up(x), u⟩ = ⟨x, up*(u)⟩.
    #[test]
    fn backward_is_the_adjoint() {
        let dev = Device::Cpu;
        for (size, ac) in [((7, 5), false), ((2, 9), true), ((3, 2), false)] {
            let x =
                Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 4, 3), &dev).unwrap()).unwrap();
            let y = bilinear(&x, size, ac).unwrap();
            let u = Tensor::randn(0f32, 1., y.shape(), &dev).unwrap();
            let g = (&y * &u).unwrap().sum_all().unwrap().backward().unwrap();
            let lhs: f32 = (&y * &u).unwrap().sum_all().unwrap().to_scalar().unwrap();
            let rhs: f32 = (x.as_tensor() * g.get(&x).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(
                (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
                "{size:?} {ac}: {lhs} vs {rhs}"
            );
        }
    }

    /// Nearest: PyTorch's index rule (⌊o·in/out⌋), and its backward the
    /// forward's adjoint, for whole and fractional factors.
    #[test]
    fn nearest_picks_torch_indices_and_its_backward_is_the_adjoint() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[[[0f32, 1., 2.]]]], &dev).unwrap();
        let y = nearest(&x, (1, 7)).unwrap().unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [0., 0., 0., 1., 1., 2., 2.]
        );
        for size in [(8, 6), (5, 7), (2, 2)] {
            let x =
                Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 4, 3), &dev).unwrap()).unwrap();
            let y = nearest(&x, size).unwrap().unwrap();
            let u = Tensor::randn(0f32, 1., y.shape(), &dev).unwrap();
            let g = (&y * &u).unwrap().sum_all().unwrap().backward().unwrap();
            let lhs: f32 = (&y * &u).unwrap().sum_all().unwrap().to_scalar().unwrap();
            let rhs: f32 = (x.as_tensor() * g.get(&x).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(
                (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
                "{size:?}: {lhs} vs {rhs}"
            );
        }
    }

    #[test]
    fn matches_candle_forward() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (1, 2, 5, 6), &dev).unwrap();
        for ac in [false, true] {
            let a = bilinear(&x, (9, 11), ac).unwrap();
            let b = x.upsample_bilinear2d(9, 11, ac).unwrap();
            let d = crate::max_abs_diff(&a, &b);
            assert!(d < 1e-5, "align_corners {ac}: {d}");
        }
    }
}
