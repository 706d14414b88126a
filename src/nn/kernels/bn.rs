//! Batch norm in training as one fused CPU pass (statistics,
//! normalization, affine and an optional ReLU), and its backward in two,
//! where composing candle's elementwise ops costs many passes over memory.
//! Other devices use the composed form.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::f32_slice;

/// Lanes of the partial sums below: independent accumulators the compiler
/// turns into SIMD adds (one running f64 sum would be a serial chain).
const LANES: usize = 16;

/// `Σ f(a[i], b[i])` over a plane, in f32 lanes, then f64.
fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += f(x[l], y[l]);
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(&x, &y)| f64::from(f(x, y))).sum();
    acc.iter().map(|&v| f64::from(v)).sum::<f64>() + tail
}

/// Per channel: mean and biased variance over N × H × W.
fn channel_stats(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<(f32, f32)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let plane = |i: usize| &x[(i * c + ch) * hw..(i * c + ch + 1) * hw];
            let m = (n * hw) as f64;
            let sum: f64 = (0..n).map(|i| lane_sum(plane(i), plane(i), |v, _| v)).sum();
            let mean = sum / m;
            let mf = mean as f32;
            let sq: f64 = (0..n)
                .map(|i| lane_sum(plane(i), plane(i), |v, _| (v - mf) * (v - mf)))
                .sum();
            (mf, (sq / m) as f32)
        })
        .collect()
}

/// Batch norm in training mode, `relu(γ·x̂ + β)` or `γ·x̂ + β`, on
/// `(x [N, C, H, W], γ [C], β [C])`. After the forward pass, [`BnTrain::stats`]
/// holds the batch's mean and biased variance.
pub struct BnTrain {
    pub eps: f32,
    pub relu: bool,
    stats: Arc<Mutex<Vec<(f32, f32)>>>,
}

impl BnTrain {
    pub fn new(eps: f64, relu: bool) -> BnTrain {
        BnTrain {
            eps: eps as f32,
            relu,
            stats: Arc::default(),
        }
    }

    /// The last forward pass's (mean, biased variance) per channel.
    pub fn stats(&self) -> Vec<(f32, f32)> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A handle on [`BnTrain::stats`] that outlives the op once it is applied.
    pub fn stats_handle(&self) -> Arc<Mutex<Vec<(f32, f32)>>> {
        self.stats.clone()
    }
}

fn nchw(l: &Layout) -> Result<(usize, usize, usize)> {
    match l.dims() {
        [n, c, h, w] => Ok((*n, *c, h * w)),
        d => bail!("batch norm: expected [N, C, H, W], got {d:?}"),
    }
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "podium-batch-norm-train"
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
        let x = f32_slice(s1, l1, "batch norm")?;
        let w = f32_slice(s2, l2, "batch norm")?;
        let b = f32_slice(s3, l3, "batch norm")?;
        let (n, c, hw) = nchw(l1)?;
        let stats = channel_stats(x, n, c, hw);
        let coef: Vec<(f32, f32)> = stats
            .iter()
            .zip(w.iter().zip(b))
            .map(|(&(m, v), (&g, &bb))| {
                let s = g / (v + self.eps).sqrt();
                (s, bb - m * s)
            })
            .collect();
        let mut y = vec![0f32; x.len()];
        let relu = self.relu;
        y.par_chunks_mut(hw.max(1))
            .zip(x.par_chunks(hw.max(1)))
            .enumerate()
            .for_each(|(k, (yo, xi))| {
                let (s, t) = coef[k % c];
                for (o, &v) in yo.iter_mut().zip(xi) {
                    let r = v * s + t;
                    *o = if relu && r < 0.0 { 0.0 } else { r };
                }
            });
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = stats;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = w.dim(0)?;
        let op = BnBackward {
            eps: self.eps,
            relu: self.relu,
            stats: self.stats(),
            gamma: w.to_vec1::<f32>()?,
        };
        let packed =
            x.contiguous()?
                .apply_op3_no_bwd(&res.contiguous()?, &grad.contiguous()?, &op)?;
        let total = x.elem_count();
        let dx = packed.narrow(0, 0, total)?.reshape(x.shape())?;
        let dw = packed.narrow(0, total, c)?;
        let db = packed.narrow(0, total + c, c)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// The backward of [`BnTrain`] on `(x, y, dy)`: `[dx…, dγ…, dβ…]` flat.
struct BnBackward {
    eps: f32,
    relu: bool,
    stats: Vec<(f32, f32)>,
    gamma: Vec<f32>,
}

impl CustomOp3 for BnBackward {
    fn name(&self) -> &'static str {
        "podium-batch-norm-train-backward"
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
        let x = f32_slice(s1, l1, "batch norm backward")?;
        let y = f32_slice(s2, l2, "batch norm backward")?;
        let dy = f32_slice(s3, l3, "batch norm backward")?;
        let (n, c, hw) = nchw(l1)?;
        let relu = self.relu;
        let inv: Vec<(f32, f32)> = self
            .stats
            .iter()
            .map(|&(m, v)| (m, 1.0 / (v + self.eps).sqrt()))
            .collect();
        // Per channel: Σ g and Σ g·x̂, g the gradient after the ReLU's mask.
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (m, is) = inv[ch];
                let (mut sg, mut sgx) = (0f64, 0f64);
                let mut g = vec![0f32; hw];
                for i in 0..n {
                    let r = (i * c + ch) * hw..(i * c + ch + 1) * hw;
                    for ((o, &yv), &d) in g.iter_mut().zip(&y[r.clone()]).zip(&dy[r.clone()]) {
                        *o = if relu && yv <= 0.0 { 0.0 } else { d };
                    }
                    sg += lane_sum(&g, &g, |v, _| v);
                    sgx += lane_sum(&g, &x[r], |gv, xv| gv * (xv - m)) * f64::from(is);
                }
                (sg, sgx)
            })
            .collect();
        let total = x.len();
        let mut out = vec![0f32; total + 2 * c];
        let m_count = (n * hw) as f32;
        let (dx, rest) = out.split_at_mut(total);
        dx.par_chunks_mut(hw.max(1)).enumerate().for_each(|(k, o)| {
            let ch = k % c;
            let (m, is) = inv[ch];
            let (sg, sgx) = (sums[ch].0 as f32, sums[ch].1 as f32);
            let a = self.gamma[ch] * is / m_count;
            let r = k * hw..(k + 1) * hw;
            for (((o, &xv), &yv), &d) in o
                .iter_mut()
                .zip(&x[r.clone()])
                .zip(&y[r.clone()])
                .zip(&dy[r])
            {
                let g = if relu && yv <= 0.0 { 0.0 } else { d };
                let xh = (xv - m) * is;
                *o = a * (m_count * g - sg - xh * sgx);
            }
        });
        for ch in 0..c {
            rest[ch] = sums[ch].1 as f32;
            rest[c + ch] = sums[ch].0 as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from(total + 2 * c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The fused op and its backward equal the composed tensor-op form.
    #[test]
    fn fused_batch_norm_equals_the_composed_form() {
        let dev = Device::Cpu;
        for relu in [false, true] {
            let x =
                Var::from_tensor(&Tensor::randn(0.5f32, 2., (3, 4, 5, 6), &dev).unwrap()).unwrap();
            let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, 4, &dev).unwrap()).unwrap();
            let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, 4, &dev).unwrap()).unwrap();
            let up = Tensor::randn(0f32, 1., (3, 4, 5, 6), &dev).unwrap();
            let op = BnTrain::new(1e-5, relu);
            let y = x
                .as_tensor()
                .apply_op3(w.as_tensor(), b.as_tensor(), op)
                .unwrap();
            // Composed.
            let mean = x.mean_keepdim((0, 2, 3)).unwrap();
            let c = x.broadcast_sub(&mean).unwrap();
            let var = c.sqr().unwrap().mean_keepdim((0, 2, 3)).unwrap();
            let mut y2 = c
                .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
                .unwrap()
                .broadcast_mul(&w.reshape((1, 4, 1, 1)).unwrap())
                .unwrap()
                .broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap())
                .unwrap();
            if relu {
                y2 = y2.relu().unwrap();
            }
            let close = |a: &Tensor, b: &Tensor, what: &str| {
                let d: f32 = (a - b)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar()
                    .unwrap();
                assert!(d < 1e-4, "relu {relu} {what}: {d}");
            };
            close(&y, &y2, "forward");
            let g1 = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&y2 * &up).unwrap().sum_all().unwrap().backward().unwrap();
            for (v, what) in [(&x, "dx"), (&w, "dw"), (&b, "db")] {
                close(g1.get(v).unwrap(), g2.get(v).unwrap(), what);
            }
        }
    }
}
