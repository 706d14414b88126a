//! Layers with PyTorch's semantics and names, written so that every one has
//! a working backward on candle 0.11: batch norm that trains, an overlapping
//! max pool, and a depthwise convolution that does not split into one conv
//! per channel.

use candle_core::{D, Module, Result, Tensor};

use super::kernels::Act;
use super::kernels::conv::{ConvParams, conv2d};
use super::kernels::pool::{Pool, pool2d};
use super::vars::{Init, Role, Vb};

/// A 2-D convolution, NCHW; `weight` is `[out, in / groups, k, k]`.
pub struct Conv {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub params: ConvParams,
}

/// A convolution with PyTorch's default initialization, "same" padding.
pub fn conv(
    vb: &Vb,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    groups: usize,
    bias: bool,
) -> Result<Conv> {
    let fan_in = cin / groups * k * k;
    let init = Init::Uniform { fan_in };
    conv_init(
        vb,
        (cin, cout, k, stride, groups),
        init,
        bias.then_some(init),
    )
}

/// A convolution `(cin, cout, k, stride, groups)`, "same" padding, with
/// the given initializations of its weight and (when given) its bias.
pub fn conv_init(
    vb: &Vb,
    (cin, cout, k, stride, groups): (usize, usize, usize, usize, usize),
    weight: Init,
    bias: Option<Init>,
) -> Result<Conv> {
    let weight = vb.var("weight", (cout, cin / groups, k, k), weight, Role::Weight)?;
    let bias = match bias {
        Some(init) => Some(vb.var("bias", cout, init, Role::NoDecay)?),
        None => None,
    };
    let params = ConvParams {
        stride,
        padding: k / 2,
        dilation: 1,
        groups,
    };
    Ok(Conv {
        weight,
        bias,
        params,
    })
}

impl Module for Conv {
    /// podium's own kernels on the CPU, cuDNN on a GPU in a build with the
    /// `cudnn` feature; elsewhere candle's conv2d, except depthwise ones,
    /// which candle would split into one conv per channel: a sum of shifted
    /// views instead.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let p = self.params;
        let cin = x.dim(1)?;
        let depthwise_view = !super::kernels::conv::runs_here(x)
            && p.groups > 1
            && p.groups == cin
            && p.dilation == 1
            && self.weight.dim(0)? == cin;
        let y = if depthwise_view {
            depthwise(x, &self.weight, p.stride, p.padding)?
        } else {
            conv2d(x, &self.weight, p)?
        };
        match &self.bias {
            Some(b) => super::kernels::affine::channel_affine(&y, None, b),
            None => Ok(y),
        }
    }
}

/// Elements `start, start + stride, …` (`n` of them) along `dim`.
pub fn strided(x: &Tensor, dim: usize, start: usize, stride: usize, n: usize) -> Result<Tensor> {
    if stride == 1 {
        return x.narrow(dim, start, n);
    }
    let t = x.narrow(dim, start, n * stride)?;
    let mut dims = t.dims().to_vec();
    dims[dim] = n;
    dims.insert(dim + 1, stride);
    t.reshape(dims)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
}

/// Output size of a window of `k` with `stride` and `pad` on each side.
pub fn out_size(size: usize, k: usize, stride: usize, pad: usize) -> usize {
    (size + 2 * pad - k) / stride + 1
}

/// Zero padding, with room on the high side for [`strided`] views.
fn pad_for_windows(
    x: &Tensor,
    k: usize,
    stride: usize,
    pad: usize,
) -> Result<(Tensor, usize, usize)> {
    let (h, w) = (x.dim(2)?, x.dim(3)?);
    let (oh, ow) = (out_size(h, k, stride, pad), out_size(w, k, stride, pad));
    // The last view starts at k - 1 and takes oh * stride rows.
    let need_h = (k - 1 + oh * stride).max(h + 2 * pad);
    let need_w = (k - 1 + ow * stride).max(w + 2 * pad);
    let x = x
        .pad_with_zeros(2, pad, need_h - h - pad)?
        .pad_with_zeros(3, pad, need_w - w - pad)?;
    Ok((x, oh, ow))
}

/// The `k × k` windows of `x` as `k²` shifted views, each `[N, C, oh, ow]`.
fn windows(x: &Tensor, k: usize, stride: usize, pad: usize) -> Result<Vec<Tensor>> {
    let (xp, oh, ow) = pad_for_windows(x, k, stride, pad)?;
    let mut out = Vec::with_capacity(k * k);
    for i in 0..k {
        let rows = strided(&xp, 2, i, stride, oh)?;
        for j in 0..k {
            out.push(strided(&rows, 3, j, stride, ow)?);
        }
    }
    Ok(out)
}

/// Max pool over `k × k` windows, any stride and padding (ResNet's stem:
/// k = 3, stride 2, pad 1), for non-negative inputs (after a ReLU). On the
/// CPU podium's pool kernel; elsewhere the maximum of shifted views with
/// zero padding, which equals PyTorch's −∞ padding for such inputs.
pub fn max_pool_relu(x: &Tensor, k: usize, stride: usize, pad: usize) -> Result<Tensor> {
    if x.device().is_cpu() {
        return pool2d(x, Pool::max(k, stride, pad));
    }
    let mut it = windows(x, k, stride, pad)?.into_iter();
    let first = it.next().expect("k >= 1");
    it.try_fold(first, |acc, v| acc.maximum(&v))
}

/// Depthwise convolution: `weight` `[C, 1, k, k]`, each channel its own
/// kernel, as a sum of `k²` shifted, per-channel-scaled views.
pub fn depthwise(x: &Tensor, weight: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    let c = weight.dim(0)?;
    let k = weight.dim(3)?;
    let w = weight.reshape((c, k * k))?;
    let mut acc: Option<Tensor> = None;
    for (idx, v) in windows(x, k, stride, pad)?.into_iter().enumerate() {
        let wi = w.narrow(1, idx, 1)?.reshape((1, c, 1, 1))?;
        let term = v.broadcast_mul(&wi)?;
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    Ok(acc.expect("k >= 1"))
}

/// Batch norm over NCHW with PyTorch's semantics: batch statistics (biased
/// variance) in training, which also move the running statistics (momentum
/// 0.1, unbiased variance); running statistics in evaluation.
pub struct BatchNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    running_mean: candle_core::Var,
    running_var: candle_core::Var,
    pub eps: f64,
    pub momentum: f64,
}

pub fn batch_norm(vb: &Vb, c: usize) -> Result<BatchNorm> {
    let weight = vb.var("weight", c, Init::Const(1.0), Role::NoDecay)?;
    let bias = vb.var("bias", c, Init::Const(0.0), Role::NoDecay)?;
    vb.var("running_mean", c, Init::Const(0.0), Role::Buffer)?;
    vb.var("running_var", c, Init::Const(1.0), Role::Buffer)?;
    let entry = |n: &str| vb.var_entry(n).expect("just created").var;
    Ok(BatchNorm {
        weight,
        bias,
        running_mean: entry("running_mean"),
        running_var: entry("running_var"),
        eps: 1e-5,
        momentum: 0.1,
    })
}

impl BatchNorm {
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_act(x, train, Act::Identity)
    }

    /// `act(bn(x))`, fused into one pass on the CPU.
    pub fn forward_act(&self, x: &Tensor, train: bool, act: Act) -> Result<Tensor> {
        let fused = x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && x.rank() == 4;
        if fused && train {
            let op = super::kernels::BnTrain::new(self.eps, act);
            let stats = op.stats_handle();
            let y = x.contiguous()?.apply_op3(&self.weight, &self.bias, op)?;
            let st = stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let n = (x.elem_count() / x.dim(1)?) as f64;
            let dev = x.device();
            let mean = Tensor::from_vec(st.iter().map(|s| s.0).collect::<Vec<_>>(), st.len(), dev)?;
            let var = Tensor::from_vec(st.iter().map(|s| s.1).collect::<Vec<_>>(), st.len(), dev)?;
            self.update_running(&mean, &(var * (n / (n - 1.0).max(1.0)))?)?;
            return Ok(y);
        }
        if fused {
            let mean: Vec<f32> = self.running_mean.as_tensor().to_vec1()?;
            let var: Vec<f32> = self.running_var.as_tensor().to_vec1()?;
            let op = super::kernels::BnEval {
                eps: self.eps as f32,
                act,
                mean_var: mean.into_iter().zip(var).collect(),
            };
            return x.contiguous()?.apply_op3(&self.weight, &self.bias, op);
        }
        let y = self.forward_composed(x, train)?;
        match act {
            Act::Identity => Ok(y),
            Act::Relu => y.relu(),
            Act::Silu => y.silu(),
        }
    }

    fn update_running(&self, mean: &Tensor, unbiased_var: &Tensor) -> Result<()> {
        let m = self.momentum;
        self.running_mean
            .set(&((self.running_mean.as_tensor() * (1.0 - m))? + (mean * m)?)?)?;
        self.running_var
            .set(&((self.running_var.as_tensor() * (1.0 - m))? + (unbiased_var * m)?)?)
    }

    fn forward_composed(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let c = self.weight.dim(0)?;
        if !train {
            let shape = (1, c, 1, 1);
            // Running statistics are never differentiated: detached, so
            // that an inference pass over a frozen model records no graph.
            let scale = (self.running_var.as_tensor().detach() + self.eps)?
                .sqrt()?
                .recip()?
                .mul(&self.weight)?;
            let shift = (&self.bias - self.running_mean.as_tensor().detach().mul(&scale)?)?;
            return x
                .broadcast_mul(&scale.reshape(shape)?)?
                .broadcast_add(&shift.reshape(shape)?);
        }
        // Channels first, so that every reduction runs over a contiguous row.
        let dims = x.dims().to_vec();
        let xt = x.transpose(0, 1)?.contiguous()?.flatten_from(1)?;
        let n = xt.dim(1)?;
        let mean = xt.mean_keepdim(1)?;
        let centered = xt.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(1)?;
        let unbiased = (var.detach() * (n as f64 / (n.max(2) - 1) as f64))?.flatten_all()?;
        self.update_running(&mean.detach().flatten_all()?, &unbiased)?;
        let scale = (var + self.eps)?
            .sqrt()?
            .recip()?
            .broadcast_mul(&self.weight.reshape((c, 1))?)?;
        let y = centered
            .broadcast_mul(&scale)?
            .broadcast_add(&self.bias.reshape((c, 1))?)?;
        y.reshape((dims[1], dims[0], dims[2], dims[3]))?
            .transpose(0, 1)?
            .contiguous()
    }
}

/// Group normalization (PyTorch's `nn.GroupNorm`): each sample's channels in
/// `groups` groups, each normalized by its own mean and (biased) variance,
/// then scaled and shifted per channel. Composed of candle ops, so its
/// backward is candle's.
pub struct GroupNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub groups: usize,
    pub eps: f64,
}

/// A group norm over `c` channels in `groups` groups (PyTorch's names
/// `weight`, `bias`; ε = 1e-5).
pub fn group_norm(vb: &Vb, groups: usize, c: usize) -> Result<GroupNorm> {
    if groups == 0 || !c.is_multiple_of(groups) {
        candle_core::bail!("group norm: {c} channels do not split into {groups} groups");
    }
    Ok(GroupNorm {
        weight: vb.var("weight", c, Init::Const(1.0), Role::NoDecay)?,
        bias: vb.var("bias", c, Init::Const(0.0), Role::NoDecay)?,
        groups,
        eps: 1e-5,
    })
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let xg = x.reshape((n, self.groups, (c / self.groups) * h * w))?;
        let mean = xg.mean_keepdim(2)?;
        let centered = xg.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(2)?;
        let y = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        super::kernels::affine::channel_affine(
            &y.reshape((n, c, h, w))?,
            Some(&self.weight),
            &self.bias,
        )
    }
}

/// Nearest-neighbour resize of `[N, C, H, W]` to `h × w` as PyTorch's
/// `F.interpolate(mode="nearest")` picks (source row ⌊i·H/h⌋), for any
/// sizes, with a backward: podium's kernel on the CPU, elsewhere two index
/// selects (candle's own upsample has no backward for factors that are not
/// whole numbers).
pub fn resize_nearest(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, sh, sw) = x.dims4()?;
    if (sh, sw) == (h, w) {
        return Ok(x.clone());
    }
    if let Some(y) = super::kernels::upsample::nearest(x, (h, w))? {
        return Ok(y);
    }
    let pick = |from: usize, to: usize| -> Result<Tensor> {
        let scale = from as f64 / to as f64;
        let idx: Vec<u32> = (0..to)
            .map(|i| ((i as f64 * scale).floor() as usize).min(from - 1) as u32)
            .collect();
        Tensor::from_vec(idx, to, x.device())
    };
    x.index_select(&pick(sh, h)?, 2)?
        .index_select(&pick(sw, w)?, 3)
}

/// A fully connected layer, `weight` `[out, in]`, PyTorch's initialization.
pub fn linear(vb: &Vb, cin: usize, cout: usize) -> Result<candle_nn::Linear> {
    let init = Init::Uniform { fan_in: cin };
    let w = vb.var("weight", (cout, cin), init, Role::Weight)?;
    let b = vb.var("bias", cout, init, Role::NoDecay)?;
    Ok(candle_nn::Linear::new(w, Some(b)))
}

/// Mean over the spatial dimensions: `[N, C, H, W]` → `[N, C]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean((2, 3))
}

/// Log-softmax over the last dimension, from ops that all have a backward.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    /// Guards vendor/candle-core's patch (the first gradient of a node is
    /// stored, later ones added): a variable read by several ops gets the
    /// sum over all of them, through adds, subtractions and a transpose,
    /// and every gradient is contiguous.
    #[test]
    fn gradients_with_fan_in_sum_every_consumer() {
        let xv = [0.5f32, -1.0, 2.0, 1.5, -0.25, 3.0];
        let wv = [1.0f32, 2.0, -0.5, 0.25, -2.0, 1.0];
        let x = candle_core::Var::from_tensor(&t(&xv, &[2, 3])).unwrap();
        let w = candle_core::Var::from_tensor(&t(&wv, &[2, 3])).unwrap();
        let k = t(&[1., 2., 3., 4., 5., 6.], &[3, 2]);
        let (xt, wt) = (x.as_tensor(), w.as_tensor());
        // L = Σ (x w + x)² + Σ (x − w) + Σ xᵀ ∘ k
        let residual = (xt.mul(wt).unwrap() + xt).unwrap();
        let loss = (residual.sqr().unwrap().sum_all().unwrap()
            + (xt - wt).unwrap().sum_all().unwrap()
            + xt.t().unwrap().mul(&k).unwrap().sum_all().unwrap())
        .unwrap();
        let g = loss.backward().unwrap();
        let (gx, gw) = (g.get(xt).unwrap(), g.get(wt).unwrap());
        assert!(gx.is_contiguous() && gw.is_contiguous());
        let gx: Vec<f32> = gx.flatten_all().unwrap().to_vec1().unwrap();
        let gw: Vec<f32> = gw.flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..6 {
            let (xi, wi) = (xv[i], wv[i]);
            // kᵀ at (r, c) = k[c][r]: k's flat index c·2 + r.
            let kt = [1., 3., 5., 2., 4., 6.][i];
            let want_x = 2.0 * (xi * wi + xi) * (wi + 1.0) + 1.0 + kt;
            let want_w = 2.0 * (xi * wi + xi) * xi - 1.0;
            assert!(
                (gx[i] - want_x).abs() < 1e-5,
                "dx[{i}] {} vs {want_x}",
                gx[i]
            );
            assert!(
                (gw[i] - want_w).abs() < 1e-5,
                "dw[{i}] {} vs {want_w}",
                gw[i]
            );
        }
    }

    #[test]
    fn max_pool_3x3_stride_2_matches_the_definition() {
        // 1×1×5×5, values 0..24: each output is its window's largest value.
        let x = t(
            &(0..25).map(|v| v as f32).collect::<Vec<_>>(),
            &[1, 1, 5, 5],
        );
        let y = max_pool_relu(&x, 3, 2, 1).unwrap();
        assert_eq!(y.dims(), [1, 1, 3, 3]);
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, [6., 8., 9., 16., 18., 19., 21., 23., 24.]);
    }

    #[test]
    fn max_pool_of_even_size_and_its_gradient() {
        let x = candle_core::Var::from_tensor(&t(
            &(0..16).map(|v| ((v * 7) % 16) as f32).collect::<Vec<_>>(),
            &[1, 1, 4, 4],
        ))
        .unwrap();
        let y = max_pool_relu(x.as_tensor(), 3, 2, 1).unwrap();
        assert_eq!(y.dims(), [1, 1, 2, 2]);
        let g = y.sum_all().unwrap().backward().unwrap();
        let gx: Vec<f32> = g.get(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        // Each output sends its gradient to its (unique) maximum.
        assert_eq!(gx.iter().sum::<f32>(), 4.0);
    }

    #[test]
    fn depthwise_equals_grouped_conv() {
        let dev = Device::Cpu;
        for (k, stride, size) in [(3, 1, 6), (3, 2, 7), (5, 2, 8), (5, 1, 5)] {
            let x = Tensor::randn(0f32, 1., (2, 3, size, size), &dev).unwrap();
            let w = Tensor::randn(0f32, 1., (3, 1, k, k), &dev).unwrap();
            let a = depthwise(&x, &w, stride, k / 2).unwrap();
            let b = x.conv2d(&w, k / 2, stride, 1, 3).unwrap();
            assert_eq!(a.dims(), b.dims());
            let d: f32 = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(d < 1e-4, "k {k} stride {stride}: {d}");
        }
    }

    #[test]
    fn batch_norm_normalizes_and_moves_running_stats() {
        let s = super::super::vars::VarStore::new(&Device::Cpu, 0);
        let bn = batch_norm(&s.root().pp("bn"), 2).unwrap();
        let x = t(&[1., 2., 3., 4., 10., 20., 30., 40.], &[1, 2, 2, 2]);
        let y = bn.forward_t(&x, true).unwrap();
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        // Channel 0: mean 2.5, biased var 1.25.
        assert!((v[0] - (1.0 - 2.5) / (1.25f32 + 1e-5).sqrt()).abs() < 1e-5);
        let rm: Vec<f32> = s
            .get("bn.running_mean")
            .unwrap()
            .var
            .as_tensor()
            .to_vec1()
            .unwrap();
        assert!((rm[0] - 0.25).abs() < 1e-6 && (rm[1] - 2.5).abs() < 1e-5);
        let rv: Vec<f32> = s
            .get("bn.running_var")
            .unwrap()
            .var
            .as_tensor()
            .to_vec1()
            .unwrap();
        // 0.9 · 1 + 0.1 · unbiased var (5/3).
        assert!((rv[0] - (0.9 + 0.1 * 5.0 / 3.0)).abs() < 1e-5);
    }
}
