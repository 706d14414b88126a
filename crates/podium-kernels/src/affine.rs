//! A per-channel affine map of an NCHW map, `y = x·scale[c] + shift[c]`
//! (a convolution's bias, a group norm's weight and bias), with a backward
//! whose per-channel sums read each plane once, contiguously. candle 0.11's
//! `broadcast_add` / `broadcast_mul` of a `[1, C, 1, 1]` tensor sum their
//! gradient over dimensions 0, 2 and 3 with a strided index per element: a
//! fifth of a detector's training step went there.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use podium_kernels::affine::channel_affine;
//! let x = Tensor::new(&[[[[1f32, 2.]], [[3., 4.]]]], &Device::Cpu).unwrap();
//! let s = Tensor::new(&[10f32, 100.], &Device::Cpu).unwrap();
//! let b = Tensor::new(&[1f32, -1.], &Device::Cpu).unwrap();
//! let y = channel_affine(&x, Some(&s), &b).unwrap();
//! assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [11., 21., 299., 399.]);
//! ```

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::{dims4, f32_slice};

/// `x [N, C, H, W]` · `scale [C]` (none: 1) + `shift [C]`, with gradients
/// for all three. podium's kernel for contiguous f32 on the CPU; candle's
/// broadcast ops elsewhere.
pub fn channel_affine(x: &Tensor, scale: Option<&Tensor>, shift: &Tensor) -> Result<Tensor> {
    let c = x.dim(1)?;
    let cpu = x.device().is_cpu()
        && x.rank() == 4
        && x.dtype() == DType::F32
        && shift.dtype() == DType::F32
        && scale.is_none_or(|s| s.dtype() == DType::F32);
    if !cpu {
        let y = match scale {
            Some(s) => x.broadcast_mul(&s.reshape((1, c, 1, 1))?)?,
            None => x.clone(),
        };
        return y.broadcast_add(&shift.reshape((1, c, 1, 1))?);
    }
    let shift = shift.flatten_all()?.contiguous()?;
    if shift.dim(0)? != c {
        bail!("channel_affine: {} shifts for {c} channels", shift.dim(0)?)
    }
    let x = x.contiguous()?;
    match scale {
        Some(s) => {
            let s = s.flatten_all()?.contiguous()?;
            if s.dim(0)? != c {
                bail!("channel_affine: {} scales for {c} channels", s.dim(0)?)
            }
            x.apply_op3(&s, &shift, Affine)
        }
        None => x.apply_op2(&shift, Shift),
    }
}

/// `y` plane by plane: `x·s + b` for plane `(n, c)`.
fn forward(x: &[f32], [n, c, h, w]: [usize; 4], scale: Option<&[f32]>, shift: &[f32]) -> Vec<f32> {
    let hw = h * w;
    let total = n * c * hw;
    let mut y: Vec<f32> = Vec::with_capacity(total);
    y.spare_capacity_mut()[..total]
        .par_chunks_mut(hw.max(1))
        .zip(x.par_chunks(hw.max(1)))
        .enumerate()
        .for_each(|(p, (yo, xi))| {
            let ch = p % c;
            let (s, b) = (scale.map_or(1.0, |s| s[ch]), shift[ch]);
            for (v, &xv) in yo.iter_mut().zip(xi) {
                v.write(xv * s + b);
            }
        });
    // SAFETY: every plane's `hw` elements were written above.
    unsafe { y.set_len(total) };
    y
}

/// Per channel, `Σ g` and (with `x`) `Σ g·x` over the batch and the
/// plane: each plane summed alone (in f64), then the planes of a channel
/// in batch order, so that the sums have the same bits from run to run.
fn channel_sums(g: &[f32], x: Option<&[f32]>, [n, c, h, w]: [usize; 4]) -> (Vec<f32>, Vec<f32>) {
    let hw = (h * w).max(1);
    let per: Vec<(f64, f64)> = (0..n * c)
        .into_par_iter()
        .map(|p| {
            let gp = &g[p * hw..][..hw];
            let sg: f64 = gp.iter().map(|&v| f64::from(v)).sum();
            let sgx = x.map_or(0.0, |x| {
                let xp = &x[p * hw..][..hw];
                gp.iter()
                    .zip(xp)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum()
            });
            (sg, sgx)
        })
        .collect();
    let mut db = vec![0f64; c];
    let mut ds = vec![0f64; c];
    for (p, (sg, sgx)) in per.into_iter().enumerate() {
        db[p % c] += sg;
        ds[p % c] += sgx;
    }
    (
        db.into_iter().map(|v| v as f32).collect(),
        ds.into_iter().map(|v| v as f32).collect(),
    )
}

fn plain(t: &Tensor) -> Result<Vec<f32>> {
    t.contiguous()?.flatten_all()?.to_vec1::<f32>()
}

fn dims(t: &Tensor) -> Result<[usize; 4]> {
    let (n, c, h, w) = t.dims4()?;
    Ok([n, c, h, w])
}

/// `x + shift[c]`.
struct Shift;

impl CustomOp2 for Shift {
    fn name(&self) -> &'static str {
        "podium-channel-shift"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "channel_affine")?;
        let b = f32_slice(s2, l2, "channel_affine")?;
        let d = dims4(l1, "channel_affine")?;
        Ok((CpuStorage::F32(forward(x, d, None, b)), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        shift: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = dims(x)?;
        let g = plain(grad)?;
        let (db, _) = channel_sums(&g, None, d);
        Ok((
            Some(grad.clone()),
            Some(Tensor::from_vec(db, shift.shape(), shift.device())?),
        ))
    }
}

/// `x·scale[c] + shift[c]`.
struct Affine;

impl CustomOp3 for Affine {
    fn name(&self) -> &'static str {
        "podium-channel-affine"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "channel_affine")?;
        let s = f32_slice(s2, l2, "channel_affine")?;
        let b = f32_slice(s3, l3, "channel_affine")?;
        let d = dims4(l1, "channel_affine")?;
        Ok((
            CpuStorage::F32(forward(x, d, Some(s), b)),
            l1.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = dims(x)?;
        let g = plain(grad)?;
        let xv = plain(x)?;
        let (db, ds) = channel_sums(&g, Some(&xv), d);
        let s = plain(scale)?;
        let zero = vec![0f32; d[1]];
        let dx = forward(&g, d, Some(&s), &zero);
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(ds, scale.shape(), scale.device())?),
            Some(Tensor::from_vec(db, shift.shape(), shift.device())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Values and all three gradients equal candle's broadcast ops (the
    /// definition) on an odd-sized map, with and without a scale.
    #[test]
    fn channel_affine_equals_broadcast_ops_and_their_gradients() {
        let dev = Device::Cpu;
        let (n, c, h, w) = (3, 5, 7, 6);
        let v = |k: usize, f: f32| -> Vec<f32> { (0..k).map(|i| ((i as f32) * f).sin()).collect() };
        let x = Var::from_vec(v(n * c * h * w, 0.37), (n, c, h, w), &dev).unwrap();
        let s = Var::from_vec(v(c, 1.3), c, &dev).unwrap();
        let b = Var::from_vec(v(c, 0.7), c, &dev).unwrap();
        let up = Tensor::from_vec(v(n * c * h * w, 0.11), (n, c, h, w), &dev).unwrap();
        for with_scale in [true, false] {
            let sc = with_scale.then_some(s.as_tensor());
            let ours = channel_affine(&x, sc, &b).unwrap();
            let mut def = x.as_tensor().clone();
            if with_scale {
                def = def
                    .broadcast_mul(&s.as_tensor().reshape((1, c, 1, 1)).unwrap())
                    .unwrap();
            }
            let def = def
                .broadcast_add(&b.as_tensor().reshape((1, c, 1, 1)).unwrap())
                .unwrap();
            let close = |a: &Tensor, b: &Tensor, what: &str| {
                let d: f32 = (a - b)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar()
                    .unwrap();
                assert!(d < 1e-4, "{what} (scale {with_scale}): off by {d}");
            };
            close(&ours, &def, "values");
            let g1 = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (def * &up).unwrap().sum_all().unwrap().backward().unwrap();
            close(
                g1.get(x.as_tensor()).unwrap(),
                g2.get(x.as_tensor()).unwrap(),
                "x's gradient",
            );
            close(
                g1.get(b.as_tensor()).unwrap(),
                g2.get(b.as_tensor()).unwrap(),
                "shift's gradient",
            );
            if with_scale {
                close(
                    g1.get(s.as_tensor()).unwrap(),
                    g2.get(s.as_tensor()).unwrap(),
                    "scale's gradient",
                );
            } else {
                assert!(g1.get(s.as_tensor()).is_none());
            }
        }
    }
}
