//! Batch norm fused with its activation (identity, ReLU or SiLU) on the
//! CPU: in training one pass for the statistics and one for normalization,
//! affine and activation; in evaluation one pass with the running
//! statistics; each backward in two passes. Composing candle's elementwise
//! ops costs many passes over memory and, for SiLU, a scalar `exp` per
//! element. Other devices use the composed form.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};
use multiversion::multiversion;
use rayon::prelude::*;

use super::f32_slice;

/// Lanes of the partial sums below: independent accumulators the compiler
/// turns into SIMD adds (one running f64 sum would be a serial chain).
const LANES: usize = 16;

/// `Σ f(a[i], b[i])` over a plane, in f32 lanes, then f64.
#[inline(always)]
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
        .map(|ch| channel_mean_var(x, (n, c, hw), ch))
        .collect()
}

/// Channel `ch`'s mean and biased variance, compiled for the CPU's widest SIMD.
#[multiversion(targets = "simd")]
fn channel_mean_var(x: &[f32], (n, c, hw): (usize, usize, usize), ch: usize) -> (f32, f32) {
    let plane = |i: usize| &x[(i * c + ch) * hw..(i * c + ch + 1) * hw];
    let m = (n * hw) as f64;
    let sum: f64 = (0..n).map(|i| lane_sum(plane(i), plane(i), |v, _| v)).sum();
    let mean = sum / m;
    let mf = mean as f32;
    let sq: f64 = (0..n)
        .map(|i| lane_sum(plane(i), plane(i), |v, _| (v - mf) * (v - mf)))
        .sum();
    (mf, (sq / m) as f32)
}

/// The activation fused after a batch norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    Identity,
    Relu,
    /// `z · sigmoid(z)` (EfficientNet's swish).
    Silu,
}

/// `eˣ` to about 2e-7 relative, without branches or calls, so that loops
/// over it become SIMD: `2ⁿ · p(r)` with `x = n·ln 2 + r`, `|r| ≤ ln 2 / 2`.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2²³: adding it rounds to an integer.
    let x = x.clamp(-87.0, 88.0);
    // t = 1.5 · 2²³ + n: n sits in t's low mantissa bits, read back with
    // integer arithmetic (a float → int cast would not vectorize).
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let two_n = (t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127)) << 23;
    p * f32::from_bits(two_n)
}

impl Act {
    #[inline(always)]
    fn apply(self, z: f32) -> f32 {
        match self {
            Act::Identity => z,
            Act::Relu => z.max(0.0),
            Act::Silu => z / (1.0 + fast_exp(-z)),
        }
    }

    /// The derivative at `z`.
    #[inline(always)]
    fn grad(self, z: f32) -> f32 {
        match self {
            Act::Identity => 1.0,
            Act::Relu => {
                if z > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Act::Silu => {
                let s = 1.0 / (1.0 + fast_exp(-z));
                s * (1.0 + z * (1.0 - s))
            }
        }
    }
}

/// `out[i] = f(inp[i])`, monomorphized per `f` so the loop vectorizes.
#[inline(always)]
fn map_into(out: &mut [f32], inp: &[f32], f: impl Fn(f32) -> f32) {
    for (o, &v) in out.iter_mut().zip(inp) {
        *o = f(v);
    }
}

/// `out[i] = dy[i] · f(x[i])`, monomorphized per `f` as [`map_into`].
#[inline(always)]
fn grad_into(out: &mut [f32], x: &[f32], dy: &[f32], f: impl Fn(f32) -> f32) {
    for ((o, &v), &d) in out.iter_mut().zip(x).zip(dy) {
        *o = d * f(v);
    }
}

/// `act(x · a + b)` per channel, `coef[c] = (a, b)`.
fn affine_act(x: &[f32], (c, hw): (usize, usize), coef: &[(f32, f32)], act: Act) -> Vec<f32> {
    if hw == 0 {
        return vec![0f32; x.len()];
    }
    let mut y = crate::output_buffer(x.len());
    if hw >= SMALL_PLANE {
        y.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(|(k, (yo, xi))| affine_act_plane(yo, xi, coef[k % c], act));
        return y;
    }
    // Small maps (EfficientNet's last stages: 1,152 planes of 2² per
    // sample): a plane is too short for SIMD and a task per plane costs
    // more than its work. The coefficients spread over one sample's
    // `[C, hw]` instead, and each sample runs as one contiguous loop.
    let (a, b): (Vec<f32>, Vec<f32>) = coef
        .iter()
        .flat_map(|&ab| std::iter::repeat_n(ab, hw))
        .unzip();
    let per = c * hw;
    let samples = (SAMPLE_CHUNK / per.max(1)).max(1);
    y.par_chunks_mut(per * samples)
        .zip(x.par_chunks(per * samples))
        .for_each(|(yo, xi)| {
            for (ys, xs) in yo.chunks_mut(per).zip(xi.chunks(per)) {
                affine_act_block(ys, xs, (&a, &b), act);
            }
        });
    y
}

/// Planes shorter than this run through [`affine_act_block`].
const SMALL_PLANE: usize = 64;
/// Elements per task on small planes.
const SAMPLE_CHUNK: usize = 1 << 14;

/// `act(x · a[i] + b[i])`: [`affine_act_plane`] with a coefficient per
/// element, compiled for the CPU's widest SIMD.
#[multiversion(targets = "simd")]
fn affine_act_block(yo: &mut [f32], xi: &[f32], (a, b): (&[f32], &[f32]), act: Act) {
    let n = yo.len();
    let (xi, a, b) = (&xi[..n], &a[..n], &b[..n]);
    match act {
        Act::Identity => (0..n).for_each(|i| yo[i] = xi[i] * a[i] + b[i]),
        Act::Relu => (0..n).for_each(|i| yo[i] = Act::Relu.apply(xi[i] * a[i] + b[i])),
        Act::Silu => (0..n).for_each(|i| yo[i] = Act::Silu.apply(xi[i] * a[i] + b[i])),
    }
}

/// One plane of [`affine_act`], compiled for the CPU's widest SIMD.
#[multiversion(targets = "simd")]
fn affine_act_plane(yo: &mut [f32], xi: &[f32], (a, b): (f32, f32), act: Act) {
    // One loop per activation, so that each becomes SIMD.
    match act {
        Act::Identity => map_into(yo, xi, |v| v * a + b),
        Act::Relu => map_into(yo, xi, |v| Act::Relu.apply(v * a + b)),
        Act::Silu => map_into(yo, xi, |v| Act::Silu.apply(v * a + b)),
    }
}

/// Batch norm in training mode, `act(γ·x̂ + β)` on `(x [N, C, H, W], γ [C],
/// β [C])`. After the forward pass, [`BnTrain::stats`] holds the batch's
/// mean and biased variance.
pub struct BnTrain {
    pub eps: f32,
    pub act: Act,
    stats: Arc<Mutex<Vec<(f32, f32)>>>,
}

impl BnTrain {
    pub fn new(eps: f64, act: Act) -> BnTrain {
        BnTrain {
            eps: eps as f32,
            act,
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

/// `(a, b)` per channel with `γ·(x − m)/√(v + ε) + β = x·a + b`.
fn coefficients(mean_var: &[(f32, f32)], w: &[f32], b: &[f32], eps: f32) -> Vec<(f32, f32)> {
    mean_var
        .iter()
        .zip(w.iter().zip(b))
        .map(|(&(m, v), (&g, &bb))| {
            let a = g / (v + eps).sqrt();
            (a, bb - m * a)
        })
        .collect()
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
        let y = affine_act(x, (c, hw), &coefficients(&stats, w, b, self.eps), self.act);
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = stats;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        BnBackward::run(self.act, true, &self.stats(), self.eps, [x, w, b, grad])
    }
}

/// Batch norm in evaluation mode, `act(γ·(x − μ)/√(σ² + ε) + β)` with the
/// running statistics `(μ, σ²)` per channel, on `(x, γ, β)`.
pub struct BnEval {
    pub eps: f32,
    pub act: Act,
    pub mean_var: Vec<(f32, f32)>,
}

impl CustomOp3 for BnEval {
    fn name(&self) -> &'static str {
        "podium-batch-norm-eval"
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
        let (_, c, hw) = nchw(l1)?;
        if self.mean_var.len() != c {
            bail!(
                "batch norm: {} running statistics for {c} channels",
                self.mean_var.len()
            )
        }
        let coef = coefficients(&self.mean_var, w, b, self.eps);
        Ok((
            CpuStorage::F32(affine_act(x, (c, hw), &coef, self.act)),
            l1.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        BnBackward::run(self.act, false, &self.mean_var, self.eps, [x, w, b, grad])
    }
}

/// The backward of [`BnTrain`] (`train`: the statistics depend on `x`) or
/// [`BnEval`] on `(x, dy)`: `[dx…, dγ…, dβ…]` flat. `center` and `inv_std`
/// are the mean and `1/√(var + ε)` the forward pass used.
struct BnBackward {
    act: Act,
    train: bool,
    center: Vec<f32>,
    inv_std: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

impl BnBackward {
    /// The gradients of `x`, `γ` and `β` from `[x, γ, β, dy]`, for a
    /// forward pass that normalized with `mean_var` (and `eps`).
    fn run(
        act: Act,
        train: bool,
        mean_var: &[(f32, f32)],
        eps: f32,
        [x, w, b, grad]: [&Tensor; 4],
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = BnBackward {
            act,
            train,
            center: mean_var.iter().map(|s| s.0).collect(),
            inv_std: mean_var.iter().map(|s| 1.0 / (s.1 + eps).sqrt()).collect(),
            gamma: w.to_vec1::<f32>()?,
            beta: b.to_vec1::<f32>()?,
        };
        // Packed `[dx…, dγ…, dβ…]`.
        let packed = x.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &op)?;
        let (total, c) = (x.elem_count(), w.dim(0)?);
        let dx = packed.narrow(0, 0, total)?.reshape(x.shape())?;
        let dw = packed.narrow(0, total, c)?;
        let db = packed.narrow(0, total + c, c)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

impl CustomOp2 for BnBackward {
    fn name(&self) -> &'static str {
        "podium-batch-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "batch norm backward")?;
        let dy = f32_slice(s2, l2, "batch norm backward")?;
        let (n, c, hw) = nchw(l1)?;
        if dy.len() != x.len() || self.gamma.len() != c {
            bail!("batch norm backward: shapes do not match")
        }
        let total = x.len();
        let mut out = vec![0f32; total + 2 * c];
        let (dx, rest) = out.split_at_mut(total);
        if hw == 0 {
            return Ok((CpuStorage::F32(out), Shape::from(total + 2 * c)));
        }
        let act = self.act;
        // Pass 1, per plane: g = dy · act′(z) into dx, and Σ g, Σ g·x̂.
        let sums: Vec<(f64, f64)> = dx
            .par_chunks_mut(hw)
            .zip(x.par_chunks(hw).zip(dy.par_chunks(hw)))
            .enumerate()
            .map(|(k, (g, (xi, di)))| {
                let ch = k % c;
                let (m, is) = (self.center[ch], self.inv_std[ch]);
                let (a, b) = (self.gamma[ch] * is, self.beta[ch] - m * self.gamma[ch] * is);
                bn_backward_sums(g, xi, di, [m, is, a, b], act)
            })
            .collect();
        // Per channel, summed over samples in order.
        let mut per = vec![(0f64, 0f64); c];
        for (k, &(sg, sgx)) in sums.iter().enumerate() {
            per[k % c].0 += sg;
            per[k % c].1 += sgx;
        }
        // Pass 2, per plane: dx from g.
        let m_count = (n * hw) as f32;
        let train = self.train;
        dx.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(|(k, (g, xi))| {
                let ch = k % c;
                let (m, is) = (self.center[ch], self.inv_std[ch]);
                let a = self.gamma[ch] * is;
                let sums = train.then(|| (per[ch].0 as f32, per[ch].1 as f32));
                bn_backward_dx(g, xi, [m, is, a, m_count], sums);
            });
        for ch in 0..c {
            rest[ch] = per[ch].1 as f32;
            rest[c + ch] = per[ch].0 as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from(total + 2 * c)))
    }
}

/// Pass 1 of [`BnBackward`] on one plane: `g = dy · act′(z)` (with
/// `z = x·a + b`) into `g`, and `(Σ g, Σ g·x̂)` with `x̂ = (x − m)·is`.
#[multiversion(targets = "simd")]
fn bn_backward_sums(
    g: &mut [f32],
    xi: &[f32],
    di: &[f32],
    [m, is, a, b]: [f32; 4],
    act: Act,
) -> (f64, f64) {
    // One loop per activation, so that each becomes SIMD.
    match act {
        Act::Identity => g.copy_from_slice(di),
        Act::Relu => grad_into(g, xi, di, |z| Act::Relu.grad(z * a + b)),
        Act::Silu => grad_into(g, xi, di, |z| Act::Silu.grad(z * a + b)),
    }
    let sg = lane_sum(g, g, |v, _| v);
    let sgx = lane_sum(g, xi, |gv, xv| gv * (xv - m)) * f64::from(is);
    (sg, sgx)
}

/// Pass 2 of [`BnBackward`] on one plane: `dx` from `g` in place, with the
/// channel's sums in training (the statistics depend on `x`).
#[multiversion(targets = "simd")]
fn bn_backward_dx(
    g: &mut [f32],
    xi: &[f32],
    [m, is, a, count]: [f32; 4],
    sums: Option<(f32, f32)>,
) {
    match sums {
        Some((sg, sgx)) => {
            let f = a / count;
            for (o, &xv) in g.iter_mut().zip(xi) {
                *o = f * (count * *o - sg - (xv - m) * is * sgx);
            }
        }
        None => {
            for o in g.iter_mut() {
                *o *= a;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn composed_act(z: Tensor, act: Act) -> Tensor {
        match act {
            Act::Identity => z,
            Act::Relu => z.relu().unwrap(),
            Act::Silu => z.silu().unwrap(),
        }
    }

    /// Within 1e-4 of the reference, relative to its largest magnitude where
    /// that exceeds 1: random inputs of a 1×1 map in training mode give a
    /// tiny batch variance and gradients in the hundreds, where f32 sums in
    /// another order differ by more than 1e-4 (one run in a few dozen).
    fn close(a: &Tensor, b: &Tensor, what: &str) {
        let d = crate::max_abs_diff(a, b);
        let scale: f32 = b
            .abs()
            .and_then(|t| t.flatten_all()?.max(0)?.to_scalar())
            .unwrap();
        assert!(
            d < 1e-4 * scale.max(1.0),
            "{what}: {d} (reference up to {scale})"
        );
    }

    #[test]
    fn fast_exp_is_close_to_exp() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.04;
            let (a, b) = (fast_exp(x), x.exp());
            assert!((a - b).abs() <= 1e-6 * b, "{x}: {a} vs {b}");
        }
        // Clamped far out: no overflow to infinity, no underflow to garbage.
        assert_eq!(fast_exp(-1000.0), fast_exp(-87.0));
        assert!(fast_exp(-1000.0) > 0.0);
        assert!(fast_exp(1000.0).is_finite());
    }

    /// The fused ops and their backward equal the composed tensor-op form,
    /// in training and evaluation, for every activation, on planes below
    /// and above [`SMALL_PLANE`] (evaluation runs them differently).
    #[test]
    fn fused_batch_norm_equals_the_composed_form() {
        let dev = Device::Cpu;
        for (act, (h, wd), train) in [Act::Identity, Act::Relu, Act::Silu]
            .into_iter()
            .flat_map(|a| [(5, 6), (1, 1), (9, 8)].map(|hw| (a, hw)))
            .flat_map(|(a, hw)| [true, false].map(|t| (a, hw, t)))
        {
            let shape = (3, 4, h, wd);
            let x = Var::from_tensor(&Tensor::randn(0.5f32, 2., shape, &dev).unwrap()).unwrap();
            let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, 4, &dev).unwrap()).unwrap();
            let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, 4, &dev).unwrap()).unwrap();
            let up = Tensor::randn(0f32, 1., shape, &dev).unwrap();
            let (mean, var) = if train {
                let mean = x.mean_keepdim((0, 2, 3)).unwrap();
                let var = x
                    .broadcast_sub(&mean)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .mean_keepdim((0, 2, 3))
                    .unwrap();
                (mean, var)
            } else {
                let mean = Tensor::new(&[0.1f32, -0.2, 0.3, 0.5], &dev).unwrap();
                let var = Tensor::new(&[1.5f32, 0.7, 2.0, 1.0], &dev).unwrap();
                (
                    mean.reshape((1, 4, 1, 1)).unwrap(),
                    var.reshape((1, 4, 1, 1)).unwrap(),
                )
            };
            let y = if train {
                let op = BnTrain::new(1e-5, act);
                x.as_tensor()
                    .apply_op3(w.as_tensor(), b.as_tensor(), op)
                    .unwrap()
            } else {
                let m: Vec<f32> = mean.flatten_all().unwrap().to_vec1().unwrap();
                let v: Vec<f32> = var.flatten_all().unwrap().to_vec1().unwrap();
                let op = BnEval {
                    eps: 1e-5,
                    act,
                    mean_var: m.into_iter().zip(v).collect(),
                };
                x.as_tensor()
                    .apply_op3(w.as_tensor(), b.as_tensor(), op)
                    .unwrap()
            };
            let z = x
                .broadcast_sub(&mean)
                .unwrap()
                .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
                .unwrap()
                .broadcast_mul(&w.reshape((1, 4, 1, 1)).unwrap())
                .unwrap()
                .broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap())
                .unwrap();
            let y2 = composed_act(z, act);
            let what = format!("{act:?} {h}×{wd} train {train}");
            close(&y, &y2, &format!("{what} forward"));
            let g1 = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&y2 * &up).unwrap().sum_all().unwrap().backward().unwrap();
            for (v, name) in [(&x, "dx"), (&w, "dw"), (&b, "db")] {
                close(
                    g1.get(v).unwrap(),
                    g2.get(v).unwrap(),
                    &format!("{what} {name}"),
                );
            }
        }
    }
}
