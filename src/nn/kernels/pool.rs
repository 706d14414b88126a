//! Max and average pooling on the CPU over `k × k` windows with any stride
//! and padding, with their backward, as PyTorch's `max_pool2d` (padding is
//! −∞, the gradient goes to the first maximum of each window) and
//! `avg_pool2d` (`count_include_pad`: the divisor counts padding, or only
//! the window's cells inside the input). candle 0.11's own pools have a
//! backward only where kernel = stride, and its max pool's is scaled wrongly.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use podium::nn::kernels::pool::{Pool, pool2d};
//! let x = Tensor::arange(0f32, 25., &Device::Cpu).unwrap().reshape((1, 1, 5, 5)).unwrap();
//! let y = pool2d(&x, Pool::max(3, 2, 1)).unwrap();
//! assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [6., 8., 9., 16., 18., 19., 21., 23., 24.]);
//! ```

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};
use multiversion::multiversion;
use rayon::prelude::*;

use super::{dims4, f32_slice};

/// Which pool, its window, stride and padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    pub kind: PoolKind,
    pub k: usize,
    pub stride: usize,
    pub padding: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    /// The mean over the window; `count_include_pad` divides by `k²` even
    /// where the window overlaps the padding (PyTorch's default).
    Avg {
        count_include_pad: bool,
    },
}

impl Pool {
    pub fn max(k: usize, stride: usize, padding: usize) -> Pool {
        Pool {
            kind: PoolKind::Max,
            k,
            stride,
            padding,
        }
    }

    pub fn avg(k: usize, stride: usize, padding: usize) -> Pool {
        Pool {
            kind: PoolKind::Avg {
                count_include_pad: true,
            },
            k,
            stride,
            padding,
        }
    }

    /// The output size along an axis of `len`, checking the window.
    pub fn out(&self, len: usize) -> Result<usize> {
        if self.k == 0 || self.stride == 0 || self.padding * 2 > self.k {
            bail!(
                "pool: kernel {} and stride {} must be at least 1, and padding {} at most half the kernel",
                self.k,
                self.stride,
                self.padding
            )
        }
        if len + 2 * self.padding < self.k {
            bail!(
                "pool: a window of {} does not fit {len} padded by {}",
                self.k,
                self.padding
            )
        }
        Ok((len + 2 * self.padding - self.k) / self.stride + 1)
    }

    /// The input rows (or columns) `lo..hi` that window `o` covers.
    fn span(&self, o: usize, len: usize) -> (usize, usize) {
        let start = o * self.stride;
        let lo = start.saturating_sub(self.padding);
        let hi = (start + self.k).saturating_sub(self.padding).min(len);
        (lo, hi)
    }

    fn divisor(&self, (y0, y1): (usize, usize), (x0, x1): (usize, usize)) -> f32 {
        match self.kind {
            PoolKind::Avg {
                count_include_pad: false,
            } => ((y1 - y0) * (x1 - x0)) as f32,
            _ => (self.k * self.k) as f32,
        }
    }
}

/// Pools `x [N, C, H, W]`; a backward for `x`. podium's kernel for f32 on
/// the CPU, candle's pools elsewhere (where they are only right for
/// kernel = stride without padding).
pub fn pool2d(x: &Tensor, p: Pool) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return x.contiguous()?.apply_op1(PoolOp(p));
    }
    if p.padding != 0 || p.k != p.stride {
        bail!("pool: kernel ≠ stride or padding is only supported on the CPU")
    }
    match p.kind {
        PoolKind::Max => x.max_pool2d(p.k),
        PoolKind::Avg { .. } => x.avg_pool2d(p.k),
    }
}

/// For each output cell of one plane, its window's max (or mean), and for
/// max pools the input index it came from.
#[multiversion(targets = "simd")]
fn plane_forward(
    p: &Pool,
    x: &[f32],
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    y: &mut [f32],
) {
    for oy in 0..oh {
        let ys = p.span(oy, h);
        for ox in 0..ow {
            let xs = p.span(ox, w);
            y[oy * ow + ox] = match p.kind {
                PoolKind::Max => {
                    let mut best = f32::NEG_INFINITY;
                    for iy in ys.0..ys.1 {
                        for &v in &x[iy * w + xs.0..iy * w + xs.1] {
                            if v > best || v.is_nan() {
                                best = v;
                            }
                        }
                    }
                    best
                }
                PoolKind::Avg { .. } => {
                    let mut sum = 0f32;
                    for iy in ys.0..ys.1 {
                        sum += x[iy * w + xs.0..iy * w + xs.1].iter().sum::<f32>();
                    }
                    sum / p.divisor(ys, xs)
                }
            };
        }
    }
}

/// Adds each output cell's gradient back onto its window: all to the first
/// maximum (max), or spread evenly (avg).
#[multiversion(targets = "simd")]
fn plane_backward(
    p: &Pool,
    x: &[f32],
    dy: &[f32],
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    dx: &mut [f32],
) {
    for oy in 0..oh {
        let ys = p.span(oy, h);
        for ox in 0..ow {
            let xs = p.span(ox, w);
            let g = dy[oy * ow + ox];
            match p.kind {
                PoolKind::Max => {
                    let (mut best, mut at) = (f32::NEG_INFINITY, None);
                    for iy in ys.0..ys.1 {
                        for ix in xs.0..xs.1 {
                            let v = x[iy * w + ix];
                            if at.is_none() || v > best || (v.is_nan() && !best.is_nan()) {
                                best = v;
                                at = Some(iy * w + ix);
                            }
                        }
                    }
                    if let Some(i) = at {
                        dx[i] += g;
                    }
                }
                PoolKind::Avg { .. } => {
                    let share = g / p.divisor(ys, xs);
                    for iy in ys.0..ys.1 {
                        for v in &mut dx[iy * w + xs.0..iy * w + xs.1] {
                            *v += share;
                        }
                    }
                }
            }
        }
    }
}

struct PoolOp(Pool);

impl CustomOp1 for PoolOp {
    fn name(&self) -> &'static str {
        "podium-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "pool")?;
        let [n, c, h, w] = dims4(l, "pool")?;
        let (oh, ow) = (self.0.out(h)?, self.0.out(w)?);
        let mut y = vec![0f32; n * c * oh * ow];
        if oh * ow > 0 && h * w > 0 {
            y.par_chunks_mut(oh * ow)
                .zip(x.par_chunks(h * w))
                .for_each(|(yo, xi)| plane_forward(&self.0, xi, (h, w), (oh, ow), yo));
        }
        Ok((CpuStorage::F32(y), Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = x
            .contiguous()?
            .apply_op2_no_bwd(&grad.contiguous()?, &PoolBackward(self.0))?;
        Ok(Some(dx))
    }
}

/// The input gradient of a pool, on `(x, dy)`.
struct PoolBackward(Pool);

impl CustomOp2 for PoolBackward {
    fn name(&self) -> &'static str {
        "podium-pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "pool backward")?;
        let dy = f32_slice(s2, l2, "pool backward")?;
        let [n, c, h, w] = dims4(l1, "pool backward")?;
        let (oh, ow) = (self.0.out(h)?, self.0.out(w)?);
        if l2.dims() != [n, c, oh, ow] {
            bail!(
                "pool backward: gradient {:?} for output {:?}",
                l2.dims(),
                [n, c, oh, ow]
            )
        }
        let mut dx = vec![0f32; x.len()];
        if oh * ow > 0 && h * w > 0 {
            dx.par_chunks_mut(h * w)
                .zip(x.par_chunks(h * w).zip(dy.par_chunks(oh * ow)))
                .for_each(|(dxo, (xi, gi))| plane_backward(&self.0, xi, gi, (h, w), (oh, ow), dxo));
        }
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t(v: Vec<f32>, shape: &[usize]) -> Tensor {
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn max_pool_sends_the_gradient_to_the_first_maximum() {
        // Ties: the window's first maximum in row-major order wins.
        let x =
            Var::from_tensor(&t(vec![1., 3., 3., 0., 2., 3., 1., 1., 0.], &[1, 1, 3, 3])).unwrap();
        let y = pool2d(&x, Pool::max(2, 1, 0)).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [3., 3., 2., 3.]
        );
        let g = y.sum_all().unwrap().backward().unwrap();
        let gx = g
            .get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(gx, [0., 2., 0., 0., 1., 1., 0., 0., 0.]);
    }

    #[test]
    fn padding_is_minus_infinity_for_max_and_counted_or_not_for_avg() {
        let x = Var::from_tensor(&t(vec![-1., -2., -3., -4.], &[1, 1, 2, 2])).unwrap();
        let y = pool2d(&x, Pool::max(3, 1, 1)).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [-1.; 4]);
        let a = pool2d(&x, Pool::avg(3, 2, 1)).unwrap();
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [-10. / 9.]
        );
        let mut p = Pool::avg(3, 2, 1);
        p.kind = PoolKind::Avg {
            count_include_pad: false,
        };
        let b = pool2d(&x, p).unwrap();
        assert_eq!(b.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [-2.5]);
        let g = b.sum_all().unwrap().backward().unwrap();
        let gx = g
            .get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(gx, [0.25; 4]);
    }

    #[test]
    fn bad_windows_are_errors() {
        let x = t(vec![0.; 4], &[1, 1, 2, 2]);
        assert!(pool2d(&x, Pool::max(3, 1, 0)).is_err());
        assert!(pool2d(&x, Pool::max(2, 0, 0)).is_err());
        assert!(pool2d(&x, Pool::max(2, 1, 2)).is_err());
        assert!(pool2d(&x.flatten_all().unwrap(), Pool::max(2, 1, 0)).is_err());
    }
}
