//! 2-D convolution on the CPU, NCHW f32, any kernel size, stride, zero
//! padding, dilation and groups, as three candle custom ops: the forward,
//! the gradient of the input (backward-data) and the gradient of the
//! weights (backward-weights).
//!
//! Dense convolutions on maps where a row of output pixels fills whole
//! tiles (16² and up, not 14²) run a direct kernel (`direct.rs`) that
//! reads each tap's inputs in place from a padded copy of the input; so
//! does the input gradient of the stride-1 ones. Those on output maps of
//! 16² and less (the 2² – 14² maps at the end of a network, and 1×1
//! kernels of many weights there) run a channels-last implicit gemm
//! (`implicit.rs`) that skips the taps reading padding. The rest (1×1
//! kernels, strided convs from many channels into maps over 16², fewer
//! than 8 input channels or few output channels), and grouped
//! convolutions, run as im2col / col2im around the `gemm`
//! crate's f32 kernels (the ones candle's matmul uses). Samples are taken
//! in chunks wide enough for the gemm to run well on the deep, small
//! feature maps at the end of a network, and the chunks are spread over
//! rayon's threads (the gemm itself goes parallel only when there are
//! fewer chunks than threads: one large image). Depthwise convolutions (one
//! input and one output channel per group) run a direct kernel instead: a
//! gemm with one row wastes most of its work.
//!
//! The weight gradient runs as im2col and a gemm, except for the stems'
//! (few weights, many pixels: `wgrad.rs`, dot products read in place from
//! the padded input planes, no columns written) and, with AVX-512, the
//! stride-1 convs on small maps (`implicit.rs`, channels-last outer
//! products). It sums over samples in a fixed number of parts added in order,
//! so results are bit-identical from run to run.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use podium_kernels::conv::{ConvParams, conv2d};
//! let x = Tensor::ones((2, 4, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
//! let w = Tensor::ones((6, 4, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
//! let p = ConvParams { stride: 2, padding: 1, ..ConvParams::default() };
//! let y = conv2d(&x, &w, p).unwrap();
//! assert_eq!(y.dims(), [2, 6, 4, 4]);
//! // The centre of the map sees all 4 × 3 × 3 ones.
//! assert_eq!(y.get(0).unwrap().get(0).unwrap().get(1).unwrap().get(1).unwrap().to_scalar::<f32>().unwrap(), 36.0);
//! ```

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};
use gemm::Parallelism;
use multiversion::multiversion;
use rayon::prelude::*;

use super::padded::{Phased, add, copy};
use super::{depthwise, dims4, direct, f32_slice, implicit, sum_in_parts, wgrad};

/// Stride, zero padding and dilation (the same along both axes), and the
/// number of groups, as in PyTorch's `nn.Conv2d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvParams {
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
}

impl Default for ConvParams {
    fn default() -> ConvParams {
        ConvParams {
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
        }
    }
}

/// `x [N, Cin, H, W]` ⊛ `w [Cout, Cin / groups, kh, kw]` → `[N, Cout, oh, ow]`,
/// with gradients for both. podium's kernels run f32 tensors on the CPU,
/// and cuDNN f32 tensors on a GPU in a build with the `cudnn` feature
/// (the module `cudnn`); anything else goes to candle's `conv2d`.
pub fn conv2d(x: &Tensor, w: &Tensor, p: ConvParams) -> Result<Tensor> {
    if runs_here(x) && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
        x.contiguous()?.apply_op2(&w.contiguous()?, Conv2d(p))
    } else {
        x.conv2d(w, p.padding, p.stride, p.dilation, p.groups)
    }
}

/// Whether podium's conv ops take tensors on `x`'s device: the CPU's, and
/// a GPU's in a build with the `cudnn` feature.
pub fn runs_here(x: &Tensor) -> bool {
    x.device().is_cpu() || (cfg!(feature = "cudnn") && x.device().is_cuda())
}

/// The sizes of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub n: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    pub p: ConvParams,
}

impl Geometry {
    /// Checks the input dims `[N, Cin, H, W]`, weight dims
    /// `[Cout, Cin / groups, kh, kw]` and parameters against each other.
    pub fn new(x: [usize; 4], w: [usize; 4], p: ConvParams) -> Result<Geometry> {
        let [n, cin, h, wd] = x;
        let [cout, cg, kh, kw] = w;
        if p.stride == 0 || p.dilation == 0 || p.groups == 0 {
            bail!("conv2d: stride, dilation and groups must be at least 1, got {p:?}")
        }
        if cin % p.groups != 0 || cout % p.groups != 0 || cg * p.groups != cin {
            bail!(
                "conv2d: {cin} input and {cout} output channels in {} groups do not fit a weight of {cg} input channels per group",
                p.groups
            )
        }
        if kh == 0 || kw == 0 {
            bail!("conv2d: empty kernel {kh}×{kw}")
        }
        let (eh, ew) = (p.dilation * (kh - 1) + 1, p.dilation * (kw - 1) + 1);
        if h + 2 * p.padding < eh || wd + 2 * p.padding < ew {
            bail!(
                "conv2d: a {kh}×{kw} kernel (dilation {}) does not fit a {h}×{wd} input padded by {}",
                p.dilation,
                p.padding
            )
        }
        Ok(Geometry {
            n,
            cin,
            h,
            w: wd,
            cout,
            kh,
            kw,
            oh: (h + 2 * p.padding - eh) / p.stride + 1,
            ow: (wd + 2 * p.padding - ew) / p.stride + 1,
            p,
        })
    }

    fn cg_in(&self) -> usize {
        self.cin / self.p.groups
    }

    fn cg_out(&self) -> usize {
        self.cout / self.p.groups
    }

    /// The gemm's inner size: one group's input channels × kernel taps.
    fn k(&self) -> usize {
        self.cg_in() * self.kh * self.kw
    }

    pub(super) fn ohw(&self) -> usize {
        self.oh * self.ow
    }

    pub(super) fn hw(&self) -> usize {
        self.h * self.w
    }

    pub(super) fn weight_len(&self) -> usize {
        self.cout * self.k()
    }

    /// One input and one output channel per group.
    pub fn depthwise(&self) -> bool {
        self.cg_in() == 1 && self.cg_out() == 1
    }

    /// A 1×1 kernel, stride 1, no padding: the input is its own im2col.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.p.stride == 1 && self.p.padding == 0
    }

    /// Samples per work item: enough output columns for an efficient gemm,
    /// but no fewer work items than threads while there are samples. A
    /// pointwise conv over 16 pixels or more runs one sample at a time: its
    /// input and output are then the gemm's operands as they lie, where
    /// several samples side by side are copied in and out (measured on
    /// efficientnet_b0's 1×1 convs: 240→80 at 4², 0.28 → 0.13 ms forward;
    /// at 2² the single-sample gemm is too narrow and batching wins).
    fn chunk(&self) -> usize {
        if self.pointwise() && self.ohw() >= 16 {
            return 1;
        }
        let threads = rayon::current_num_threads().max(1);
        256usize
            .div_ceil(self.ohw().max(1))
            .min(self.n.div_ceil(threads))
            .max(1)
    }

    pub(super) fn dims(&self) -> ([usize; 4], [usize; 4], [usize; 4]) {
        (
            [self.n, self.cin, self.h, self.w],
            [self.cout, self.cg_in(), self.kh, self.kw],
            [self.n, self.cout, self.oh, self.ow],
        )
    }
}

/// The gemm runs threaded only when there are fewer work items than threads.
fn gemm_par(items: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if items < threads {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// A matrix inside a slice: element `(r, c)` is `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl Mat<'_> {
    /// The transpose, a view.
    fn t(self) -> Self {
        Mat {
            data: self.data,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// `dst (m × n, row stride dst_rs) = [dst +] lhs (m × k) · rhs (k × n)`.
#[allow(clippy::too_many_arguments)]
fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(last(m, n, dst_rs, 1) < dst.len(), "gemm: dst out of bounds");
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_rs..][..n].fill(0.0);
            }
        }
        return;
    }
    assert!(
        last(m, k, lhs.rs, lhs.cs) < lhs.data.len(),
        "gemm: lhs out of bounds"
    );
    assert!(
        last(k, n, rhs.rs, rhs.cs) < rhs.data.len(),
        "gemm: rhs out of bounds"
    );
    // SAFETY: the asserts above keep every element the gemm reads or writes
    // inside its slice, and `dst` is borrowed mutably, apart from the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Buffers one worker reuses from one work item to the next.
#[derive(Default)]
struct Scratch {
    col: Vec<f32>,
    mat: Vec<f32>,
    padded: Option<Phased>,
}

/// im2col of one group over samples `s0 .. s0 + nb`: `col` is
/// `K × nb·P` row-major, row `(c, i, j)`, column `(sample, oy, ox)`. Unless
/// the kernel has neither padding nor stride, each input plane is first
/// copied into a zero-padded, stride-phased buffer ([`Phased`]), from which
/// every row of every tap is one contiguous copy with no bounds to test
/// (on the small maps at the end of a network, per-row bounds and fills
/// cost more than the copies).
fn im2col(
    x: &[f32],
    g: &Geometry,
    group: usize,
    (s0, nb): (usize, usize),
    col: &mut Vec<f32>,
    padded: &mut Option<Phased>,
) {
    let (p, hw, k) = (g.ohw(), g.hw(), g.k());
    let (s, d, pad) = (g.p.stride, g.p.dilation, g.p.padding);
    let width = nb * p;
    col.resize(k * width, 0.0);
    let direct = s == 1 && pad == 0;
    if g.kh == 1 && g.kw == 1 && pad == 0 && !direct {
        // A strided 1×1 conv (resnet's shortcuts) reads every s-th cell of
        // every s-th row: gathered here, rather than through the phased
        // buffer, which would split every row of the plane into its s
        // phases first (those splits were a third of resnet18's 1×1/2
        // shortcut at 16², batch 32).
        for b in 0..nb {
            for c in 0..g.cg_in() {
                let plane = &x[((s0 + b) * g.cin + group * g.cg_in() + c) * hw..][..hw];
                let dst = &mut col[c * width + b * p..][..p];
                for (oy, out) in dst.chunks_exact_mut(g.ow).enumerate() {
                    let src = &plane[oy * s * g.w..];
                    for (ox, v) in out.iter_mut().enumerate() {
                        *v = src[ox * s];
                    }
                }
            }
        }
        return;
    }
    let (buf, rows) = padded_buffer(padded, g);
    for b in 0..nb {
        for c in 0..g.cg_in() {
            let plane = &x[((s0 + b) * g.cin + group * g.cg_in() + c) * hw..][..hw];
            let (src, step): (&[f32], usize) = if direct {
                (plane, g.w)
            } else {
                buf.fill(plane, (g.h, g.w), (pad, pad), rows);
                (&buf.buf, buf.at(s, 0))
            };
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let at = if direct {
                        i * d * g.w + j * d
                    } else {
                        buf.at(i * d, j * d)
                    };
                    let row = (c * g.kh + i) * g.kw + j;
                    let dst = &mut col[row * width + b * p..][..p];
                    for (oy, out) in dst.chunks_exact_mut(g.ow).enumerate() {
                        copy(&src[at + oy * step..][..g.ow], out);
                    }
                }
            }
        }
    }
}

/// One group's columns over samples `s0 .. s0 + nb`, `K × nb·P`: for one
/// sample of a pointwise conv the input itself, else [`im2col`] into `col`.
fn columns<'a>(
    x: &'a [f32],
    g: &Geometry,
    group: usize,
    span: (usize, usize),
    col: &'a mut Vec<f32>,
    padded: &mut Option<Phased>,
) -> Mat<'a> {
    let (p, k) = (g.ohw(), g.k());
    if g.pointwise() && span.1 == 1 {
        let data = &x[(span.0 * g.cin + group * k) * p..][..k * p];
        return Mat { data, rs: p, cs: 1 };
    }
    im2col(x, g, group, span, col, padded);
    Mat {
        data: col,
        rs: span.1 * p,
        cs: 1,
    }
}

/// col2im of one group: `col` (`K × nb·P`) summed back onto the chunk's
/// input gradient `dx` (`nb` samples; each plane is written once, by its
/// group), through the zero-padded, stride-phased layout of [`im2col`]:
/// every row of every tap is one contiguous sum with no bounds to test.
fn col2im(
    col: &[f32],
    g: &Geometry,
    group: usize,
    nb: usize,
    dx: &mut [f32],
    padded: &mut Option<Phased>,
) {
    let (p, hw) = (g.ohw(), g.hw());
    let (s, d, pad) = (g.p.stride, g.p.dilation, g.p.padding);
    let width = nb * p;
    let (buf, rows) = padded_buffer(padded, g);
    let step = buf.at(s, 0);
    for b in 0..nb {
        for c in 0..g.cg_in() {
            buf.zero(rows);
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let at = buf.at(i * d, j * d);
                    let row = (c * g.kh + i) * g.kw + j;
                    let src = &col[row * width + b * p..][..p];
                    for (oy, v) in src.chunks_exact(g.ow).enumerate() {
                        add(v, &mut buf.buf[at + oy * step..][..g.ow]);
                    }
                }
            }
            let plane = &mut dx[(b * g.cin + group * g.cg_in() + c) * hw..][..hw];
            buf.extract(plane, (g.h, g.w), (pad, pad));
        }
    }
}

/// The [`Phased`] buffer of [`im2col`] and [`col2im`] for `g` (the
/// worker's own, made anew when the layout changed), and its padded rows:
/// every tap's rows in full.
pub(super) fn padded_buffer<'a>(
    padded: &'a mut Option<Phased>,
    g: &Geometry,
) -> (&'a mut Phased, usize) {
    let (s, d, pad) = (g.p.stride, g.p.dilation, g.p.padding);
    let rows = (g.h + 2 * pad).max((g.oh - 1) * s + (g.kh - 1) * d + 1);
    let width = (g.w + 2 * pad).div_ceil(s).max((g.kw - 1) * d / s + g.ow);
    if !matches!(padded, Some(b) if b.s == s && b.width == width) {
        *padded = Some(Phased::new(s, width));
    }
    (padded.as_mut().expect("set above"), rows)
}

/// One group's rows of an output-shaped tensor (`dy`) over samples
/// `s0 .. s0 + nb`, as an `M × nb·P` matrix: a view for one sample, else
/// copied into `buf`.
fn out_rows<'a>(
    y: &'a [f32],
    g: &Geometry,
    group: usize,
    (s0, nb): (usize, usize),
    buf: &'a mut Vec<f32>,
) -> Mat<'a> {
    let (p, m) = (g.ohw(), g.cg_out());
    if nb == 1 {
        let data = &y[(s0 * g.cout + group * m) * p..][..m * p];
        return Mat { data, rs: p, cs: 1 };
    }
    let width = nb * p;
    buf.resize(m * width, 0.0);
    for b in 0..nb {
        for r in 0..m {
            buf[r * width + b * p..][..p]
                .copy_from_slice(&y[((s0 + b) * g.cout + group * m + r) * p..][..p]);
        }
    }
    Mat {
        data: buf,
        rs: width,
        cs: 1,
    }
}

/// The forward pass: `[N, Cout, oh, ow]` from `x` and `w`, both contiguous.
pub fn forward(x: &[f32], w: &[f32], g: &Geometry) -> Vec<f32> {
    let len = g.n * g.cout * g.ohw();
    if len == 0 {
        return Vec::new();
    }
    if g.depthwise() {
        let mut y = vec![0f32; len];
        depthwise::forward(x, w, g, &mut y);
        return y;
    }
    // The direct kernel, the implicit gemm and the gemm write every cell.
    let mut y = crate::output_buffer(len);
    if let Some(l) = direct::plan(g) {
        direct::forward(x, w, g, &l, &mut y);
    } else if let Some(pl) = implicit::plan(g) {
        implicit::forward(x, w, g, &pl, &mut y);
    } else {
        forward_im2col(x, w, g, &mut y);
    }
    y
}

/// [`forward`] as im2col and a gemm per chunk of samples and group.
fn forward_im2col(x: &[f32], w: &[f32], g: &Geometry, y: &mut [f32]) {
    let (p, m, k) = (g.ohw(), g.cg_out(), g.k());
    let per = g.cout * p;
    let nb = g.chunk();
    let par = gemm_par(g.n.div_ceil(nb));
    y.par_chunks_mut(nb * per).enumerate().for_each_init(
        Scratch::default,
        |Scratch { col, mat, padded }, (ci, ych)| {
            let span = (ci * nb, ych.len() / per);
            let width = span.1 * p;
            for group in 0..g.p.groups {
                let wg = Mat {
                    data: &w[group * m * k..][..m * k],
                    rs: k,
                    cs: 1,
                };
                let cols = columns(x, g, group, span, col, padded);
                if span.1 == 1 {
                    let dst = &mut ych[group * m * p..][..m * p];
                    matmul((m, p, k), dst, p, false, wg, cols, par);
                } else {
                    mat.resize(m * width, 0.0);
                    matmul((m, width, k), mat, width, false, wg, cols, par);
                    for b in 0..span.1 {
                        for r in 0..m {
                            ych[b * per + (group * m + r) * p..][..p]
                                .copy_from_slice(&mat[r * width + b * p..][..p]);
                        }
                    }
                }
            }
        },
    );
}

/// The gradient of the input, `[N, Cin, H, W]`, from `dy` and `w`.
pub fn backward_data(dy: &[f32], w: &[f32], g: &Geometry) -> Vec<f32> {
    let len = g.n * g.cin * g.hw();
    if len == 0 || g.ohw() == 0 {
        return vec![0f32; len];
    }
    // The direct kernel and the implicit gemm write every cell; col2im
    // and the depthwise kernels add into zeros.
    if !g.depthwise() {
        if let Some(f) = direct::plan_backward_data(g) {
            let mut dx = crate::output_buffer(len);
            direct::backward_data(dy, w, g, &f, &mut dx);
            return dx;
        }
        if let Some(f) = implicit::plan_backward_data(g) {
            let mut dx = crate::output_buffer(len);
            implicit::backward_data(dy, w, g, &f, &mut dx);
            return dx;
        }
    }
    let mut dx = vec![0f32; len];
    if g.depthwise() {
        depthwise::backward_data(dy, w, g, &mut dx);
    } else {
        backward_data_im2col(dy, w, g, &mut dx);
    }
    dx
}

/// [`backward_data`] as a gemm and col2im per chunk of samples and group.
fn backward_data_im2col(dy: &[f32], w: &[f32], g: &Geometry, dx: &mut [f32]) {
    let (p, m, k) = (g.ohw(), g.cg_out(), g.k());
    let per = g.cin * g.hw();
    let nb = g.chunk();
    let par = gemm_par(g.n.div_ceil(nb));
    dx.par_chunks_mut(nb * per).enumerate().for_each_init(
        Scratch::default,
        |Scratch { col, mat, padded }, (ci, dxch)| {
            let span = (ci * nb, dxch.len() / per);
            let width = span.1 * p;
            for group in 0..g.p.groups {
                // Wᵀ, K × M.
                let wt = Mat {
                    data: &w[group * m * k..][..m * k],
                    rs: 1,
                    cs: k,
                };
                let dym = out_rows(dy, g, group, span, mat);
                if g.pointwise() && span.1 == 1 {
                    let dst = &mut dxch[group * k * p..][..k * p];
                    matmul((k, p, m), dst, p, false, wt, dym, par);
                } else {
                    col.resize(k * width, 0.0);
                    matmul((k, width, m), col, width, false, wt, dym, par);
                    col2im(col, g, group, span.1, dxch, padded);
                }
            }
        },
    );
}

/// How [`backward_weight_as`] runs a group's `dW (M × K) += dy · columnsᵀ`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WeightGemm {
    /// dW = dy · columnsᵀ through the `gemm` crate.
    Plain,
    /// dWᵀ = columns · dyᵀ through the `gemm` crate, transposed at the end.
    Transposed,
    /// Dot products of rows read in place ([`wgrad`]).
    Dots,
}

/// The gradient of the weights, `[Cout, Cin / groups, kh, kw]`, from `x`
/// and `dy`.
pub fn backward_weight(x: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    // With AVX-512, stride-1 dense convs on maps of 8² and less as
    // channels-last outer products (`implicit::backward_weight`). Measured
    // against the gemm below (`benches/conv.rs --size 64 --batch 32`, ms):
    // resnet18's layer2 3×3 at 8² 3.20 → 2.78, layer3 at 4² 3.23 → 2.53,
    // layer4 at 2² 4.14 → 3.58; not on 16² maps (simple_cnn's block3 4.70
    // → 6.43) nor strided (layer2's 3×3/2 1.50 → 2.07).
    if !g.depthwise()
        && g.p.stride == 1
        && (1..=64).contains(&g.ohw())
        && g.n > 0
        && let Some(dw) = implicit::plan(g).and_then(|pl| implicit::backward_weight(x, dy, g, &pl))
    {
        return dw;
    }
    // The stems (few weights per output channel, many pixels) as dot
    // products read in place from the padded input planes (`wgrad.rs`).
    // Measured against the ways below on an AMD EPYC Zen 4
    // (`benches/conv.rs --size 64 --batch 32`, best of several
    // alternations, ms): resnet18's 7×7/2 stem 6.1 → 3.4 with AVX-512, 6.1
    // → 3.6 with AVX2; EfficientNet's 3×3/2 stem 0.47 → 0.35–0.38;
    // simple_cnn's first conv 2.2–2.6 → 1.6–2.0; and convs from up to 32
    // channels over large maps (simple_cnn's second, 10.1 → 7.1; see
    // `wgrad::fits_in_place`).
    if wgrad::takes_in_place(g) {
        return wgrad::in_place(x, dy, g);
    }
    let (m, k) = (g.cg_out(), g.k());
    // Measured (benches/conv.rs): the stems' small gradients (27 rows of K
    // for 32 output channels) over thousands of pixels run faster as dot
    // products ([`wgrad`]: simple_cnn's block1 at 64², batch 32, 3.2 →
    // 2.0–2.2 ms; EfficientNet's stem 0.88 → 0.55–0.61 ms), not resnet18's
    // 7×7 stem (147 rows for 64 channels: 4.5 → 4.9). Where a group's
    // gradient fits in L2 (up to 128 Ki floats) the gemm runs faster as
    // dWᵀ = columns · dyᵀ, the long reduction over pixels then being the
    // packed operands' inner dimension, by 10–35 % (simple_cnn's block2,
    // resnet18's stem and layer1); larger ones (resnet18's layer3 and
    // layer4) run faster as dW = dy · columnsᵀ, and so do those with more
    // output channels than rows of K (1×1 convs that widen; on an AMD EPYC
    // Zen 4, 2 threads, best of six: resnet18's 1×1/2 shortcut 64 → 128 at
    // 16², batch 32, 0.38 → 0.31 ms, at 56², batch 4, 0.47 → 0.41;
    // EfficientNet's 16 → 96 at 32² 1.51 → 1.46, 40 → 240 at 8² 0.31 →
    // 0.29; its 240 → 80 at 4², which narrows, 0.15 → 0.16 the other way).
    let how = if wgrad::takes(m, k, g.chunk() * g.ohw()) {
        WeightGemm::Dots
    } else if m * k <= 1 << 17 && m <= k {
        WeightGemm::Transposed
    } else {
        WeightGemm::Plain
    };
    backward_weight_as(x, dy, g, how)
}

/// [`backward_weight`], run as `how` says.
fn backward_weight_as(x: &[f32], dy: &[f32], g: &Geometry, how: WeightGemm) -> Vec<f32> {
    let (p, m, k) = (g.ohw(), g.cg_out(), g.k());
    if g.n == 0 || p == 0 {
        return vec![0f32; g.weight_len()];
    }
    if g.depthwise() {
        return depthwise::backward_weight(x, dy, g);
    }
    let nb = g.chunk();
    let chunks = g.n.div_ceil(nb);
    let par = gemm_par(chunks);
    let dw = sum_in_parts(chunks, g.weight_len(), |range, acc| {
        let (mut col, mut mat, mut padded) = (Vec::new(), Vec::new(), None);
        for ci in range {
            let span = (ci * nb, nb.min(g.n - ci * nb));
            for group in 0..g.p.groups {
                let dym = out_rows(dy, g, group, span, &mut mat);
                let cols = columns(x, g, group, span, &mut col, &mut padded);
                let dst = &mut acc[group * m * k..][..m * k];
                let len = span.1 * p;
                match how {
                    WeightGemm::Dots => {
                        let (a, b) = ((dym.data, dym.rs), (cols.data, cols.rs));
                        wgrad::accumulate((m, k, len), a, b, dst, k)
                    }
                    WeightGemm::Transposed => matmul((k, m, len), dst, m, true, cols, dym.t(), par),
                    WeightGemm::Plain => matmul((m, k, len), dst, k, true, dym, cols.t(), par),
                }
            }
        }
    });
    if how != WeightGemm::Transposed {
        return dw;
    }
    let mut out = vec![0f32; dw.len()];
    for group in 0..g.p.groups {
        let at = group * m * k;
        transpose(&dw[at..][..m * k], k, m, &mut out[at..][..m * k]);
    }
    out
}

/// `dst[c·rows + r] = src[r·cols + c]`: a `rows × cols` matrix transposed,
/// 8 × 8 blocks in AVX registers, the edges (and CPUs without AVX) by
/// [`transpose_scalar`].
pub(super) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    assert!(
        src.len() >= rows * cols && dst.len() >= rows * cols,
        "transpose: short slices"
    );
    let (br, bc) = (rows / 8 * 8, cols / 8 * 8);
    #[cfg(target_arch = "x86_64")]
    if br > 0 && bc > 0 && std::arch::is_x86_feature_detected!("avx") {
        for r0 in (0..br).step_by(8) {
            for c0 in (0..bc).step_by(8) {
                // SAFETY: AVX is present; rows r0..r0+8 and columns c0..c0+8 lie
                // inside the `rows × cols` matrices the assert above checked.
                unsafe {
                    transpose8x8_avx(
                        src.as_ptr().add(r0 * cols + c0),
                        cols,
                        dst.as_mut_ptr().add(c0 * rows + r0),
                        rows,
                    )
                };
            }
        }
        transpose_scalar(src, rows, cols, dst, (0..br, bc..cols));
        transpose_scalar(src, rows, cols, dst, (br..rows, 0..cols));
        return;
    }
    transpose_scalar(src, rows, cols, dst, (0..rows, 0..cols));
}

/// [`transpose`] of the cells in rows × columns `(rs, cs)`, in tiles that
/// stay in cache.
#[multiversion(targets = "simd")]
fn transpose_scalar(
    src: &[f32],
    rows: usize,
    cols: usize,
    dst: &mut [f32],
    (rs, cs): (std::ops::Range<usize>, std::ops::Range<usize>),
) {
    const TILE: usize = 32;
    for r0 in rs.clone().step_by(TILE) {
        for c0 in cs.clone().step_by(TILE) {
            for r in r0..(r0 + TILE).min(rs.end) {
                let row = &src[r * cols..][..cols];
                for c in c0..(c0 + TILE).min(cs.end) {
                    dst[c * rows + r] = row[c];
                }
            }
        }
    }
}

/// One 8 × 8 block: rows of `src` (stride `ss`) to columns of `dst`
/// (stride `ds`), by the usual unpack / shuffle / lane-permute network.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose8x8_avx(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees 8 rows of 8 floats at `src` (stride
    // `ss`) and at `dst` (stride `ds`).
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ss)));
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let out = [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ];
        for (i, o) in out.into_iter().enumerate() {
            _mm256_storeu_ps(dst.add(i * ds), o);
        }
    }
}

/// The forward op on `(x, w)`.
struct Conv2d(ConvParams);

impl Conv2d {
    fn geometry(&self, l1: &Layout, l2: &Layout) -> Result<Geometry> {
        Geometry::new(dims4(l1, "conv2d")?, dims4(l2, "conv2d weight")?, self.0)
    }
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "podium-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry(l1, l2)?;
        let y = forward(
            f32_slice(s1, l1, "conv2d")?,
            f32_slice(s2, l2, "conv2d")?,
            &g,
        );
        Ok((CpuStorage::F32(y), Shape::from(g.dims().2.to_vec())))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let g = self.geometry(l1, l2)?;
        let y = super::cudnn::forward((s1, l1), (s2, l2), &g)?;
        Ok((y, Shape::from(g.dims().2.to_vec())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, dy) = (x.contiguous()?, w.contiguous()?, grad.contiguous()?);
        // A gradient nothing reads is not computed: the first conv's input
        // is the images (or a frozen part's output), and its input gradient
        // would cost as much as the conv itself.
        let dx = if x.track_op() {
            Some(dy.apply_op2_no_bwd(
                &w,
                &BackwardData {
                    p: self.0,
                    hw: (x.dim(2)?, x.dim(3)?),
                },
            )?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(x.apply_op2_no_bwd(
                &dy,
                &BackwardWeight {
                    p: self.0,
                    khw: (w.dim(2)?, w.dim(3)?),
                },
            )?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// The input gradient on `(dy, w)`, for an input of `hw`.
pub struct BackwardData {
    pub p: ConvParams,
    pub hw: (usize, usize),
}

impl BackwardData {
    /// The forward geometry of `(dy, w)`, checked against `dy`'s dims.
    fn geometry(&self, l1: &Layout, l2: &Layout) -> Result<Geometry> {
        let [n, _, _, _] = dims4(l1, "conv2d backward")?;
        let wd = dims4(l2, "conv2d backward weight")?;
        let x = [n, wd[1] * self.p.groups, self.hw.0, self.hw.1];
        let g = Geometry::new(x, wd, self.p)?;
        if l1.dims() != g.dims().2 {
            bail!(
                "conv2d backward: gradient {:?} for output {:?}",
                l1.dims(),
                g.dims().2
            )
        }
        Ok(g)
    }
}

impl CustomOp2 for BackwardData {
    fn name(&self) -> &'static str {
        "podium-conv2d-backward-data"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry(l1, l2)?;
        let dx = backward_data(
            f32_slice(s1, l1, "conv2d backward")?,
            f32_slice(s2, l2, "conv2d backward")?,
            &g,
        );
        Ok((CpuStorage::F32(dx), Shape::from(g.dims().0.to_vec())))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let g = self.geometry(l1, l2)?;
        let dx = super::cudnn::backward_data((s1, l1), (s2, l2), &g)?;
        Ok((dx, Shape::from(g.dims().0.to_vec())))
    }
}

/// The weight gradient on `(x, dy)`, for a kernel of `khw`.
pub struct BackwardWeight {
    pub p: ConvParams,
    pub khw: (usize, usize),
}

impl BackwardWeight {
    /// The forward geometry of `(x, dy)`, checked against `dy`'s dims.
    fn geometry(&self, l1: &Layout, l2: &Layout) -> Result<Geometry> {
        let xd = dims4(l1, "conv2d backward")?;
        let [_, cout, _, _] = dims4(l2, "conv2d backward gradient")?;
        let groups = self.p.groups.max(1);
        let wd = [cout, xd[1] / groups, self.khw.0, self.khw.1];
        let g = Geometry::new(xd, wd, self.p)?;
        if l2.dims() != g.dims().2 {
            bail!(
                "conv2d backward: gradient {:?} for output {:?}",
                l2.dims(),
                g.dims().2
            )
        }
        Ok(g)
    }
}

impl CustomOp2 for BackwardWeight {
    fn name(&self) -> &'static str {
        "podium-conv2d-backward-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry(l1, l2)?;
        let dw = backward_weight(
            f32_slice(s1, l1, "conv2d backward")?,
            f32_slice(s2, l2, "conv2d backward")?,
            &g,
        );
        Ok((CpuStorage::F32(dw), Shape::from(g.dims().1.to_vec())))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let g = self.geometry(l1, l2)?;
        let dw = super::cudnn::backward_weight((s1, l1), (s2, l2), &g)?;
        Ok((dw, Shape::from(g.dims().1.to_vec())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use proptest::prelude::*;

    /// The definition, one multiply-add at a time, in f64.
    fn naive(x: &[f32], w: &[f32], g: &Geometry) -> Vec<f64> {
        let (cgi, cgo) = (g.cg_in(), g.cg_out());
        let ConvParams {
            stride: s,
            padding: pad,
            dilation: d,
            ..
        } = g.p;
        let mut y = vec![0f64; g.n * g.cout * g.ohw()];
        for n in 0..g.n {
            for co in 0..g.cout {
                let grp = co / cgo;
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let mut acc = 0f64;
                        for c in 0..cgi {
                            for i in 0..g.kh {
                                for j in 0..g.kw {
                                    let iy = (oy * s + i * d) as isize - pad as isize;
                                    let ix = (ox * s + j * d) as isize - pad as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xv = x[((n * g.cin + grp * cgi + c) * g.h + iy as usize)
                                        * g.w
                                        + ix as usize];
                                    let wv = w[((co * cgi + c) * g.kh + i) * g.kw + j];
                                    acc += f64::from(xv) * f64::from(wv);
                                }
                            }
                        }
                        y[((n * g.cout + co) * g.oh + oy) * g.ow + ox] = acc;
                    }
                }
            }
        }
        y
    }

    fn rand(len: usize, seed: u64) -> Vec<f32> {
        // A small LCG: reproducible values in [-1, 1).
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn close(a: &[f32], b: &[f64], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: length");
        let scale = b.iter().fold(1f64, |m, v| m.max(v.abs()));
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            assert!(
                (f64::from(x) - y).abs() <= 1e-4 * scale,
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    /// Forward against the definition; the two gradients against the
    /// definition's adjoint: ⟨conv(x, w), u⟩ is linear in x and in w, so
    /// its gradient along each is found by probing with the definition.
    fn check(g: &Geometry, seed: u64) {
        let (xd, wd, _) = g.dims();
        let x = rand(xd.iter().product(), seed);
        let w = rand(wd.iter().product(), seed + 1);
        let u = rand(g.n * g.cout * g.ohw(), seed + 2);
        close(&forward(&x, &w, g), &naive(&x, &w, g), "forward");
        let dot = |x: &[f32], w: &[f32]| -> f64 {
            naive(x, w, g)
                .iter()
                .zip(&u)
                .map(|(a, &b)| a * f64::from(b))
                .sum()
        };
        let unit = |len: usize, i: usize| {
            let mut v = vec![0f32; len];
            v[i] = 1.0;
            v
        };
        let dx = backward_data(&u, &w, g);
        let want: Vec<f64> = (0..x.len()).map(|i| dot(&unit(x.len(), i), &w)).collect();
        close(&dx, &want, "backward data");
        let dw = backward_weight(&x, &u, g);
        let want: Vec<f64> = (0..w.len()).map(|i| dot(&x, &unit(w.len(), i))).collect();
        close(&dw, &want, "backward weight");
    }

    #[test]
    fn matches_the_definition_over_a_grid() {
        let mut seed = 0;
        for (k, s, pad, d, groups, cin, cout, size) in [
            (3, 1, 1, 1, 1, 3, 4, 5),
            (3, 2, 1, 1, 1, 2, 3, 7),
            (1, 1, 0, 1, 1, 4, 2, 3),
            (1, 2, 0, 1, 1, 3, 2, 6),
            // A strided 1×1 gathered straight from the planes: odd sizes,
            // groups, stride 3.
            (1, 2, 0, 1, 2, 4, 4, 7),
            (1, 3, 0, 1, 1, 3, 2, 8),
            (3, 1, 2, 2, 1, 2, 2, 5),
            (5, 2, 2, 1, 1, 2, 3, 6),
            (3, 1, 1, 1, 2, 4, 6, 4),
            (3, 2, 1, 1, 3, 3, 3, 6),
            (5, 1, 2, 1, 4, 4, 4, 5),
            (3, 3, 0, 1, 1, 2, 2, 8),
            (2, 1, 0, 1, 1, 1, 1, 3),
            (7, 2, 3, 1, 1, 3, 2, 9),
            // Depthwise maps above NHWC_MAX_PIXELS run the per-plane kernels.
            (3, 1, 1, 1, 2, 2, 2, 17),
            (3, 2, 2, 2, 2, 2, 2, 17),
            (3, 3, 1, 1, 2, 2, 2, 17),
            (5, 2, 2, 1, 2, 2, 2, 18),
            (3, 1, 3, 1, 2, 2, 2, 17),
            (7, 1, 3, 2, 2, 2, 2, 16),
        ] {
            for n in [1, 3] {
                let p = ConvParams {
                    stride: s,
                    padding: pad,
                    dilation: d,
                    groups,
                };
                let g =
                    Geometry::new([n, cin, size, size + 1], [cout, cin / groups, k, k], p).unwrap();
                seed += 3;
                check(&g, seed);
            }
        }
    }

    /// The per-plane depthwise weight gradient, whose tasks take blocks of
    /// channels (here 8, 8 and 3), against its definition.
    #[test]
    fn depthwise_weight_gradient_over_blocks_of_channels() {
        let (n, c, h, w) = (2, 19, 17, 18);
        let p = ConvParams {
            stride: 2,
            padding: 1,
            groups: c,
            ..ConvParams::default()
        };
        let g = Geometry::new([n, c, h, w], [c, 1, 3, 3], p).unwrap();
        assert!(g.depthwise() && g.hw() > depthwise::NHWC_MAX_PIXELS);
        let x = rand(n * c * h * w, 41);
        let dy = rand(n * c * g.ohw(), 42);
        let dw = backward_weight(&x, &dy, &g);
        let mut want = vec![0f64; c * 9];
        for (plane, o) in (0..n * c).flat_map(|pl| (0..g.ohw()).map(move |o| (pl, o))) {
            let u = f64::from(dy[plane * g.ohw() + o]);
            let (oy, ox) = (o / g.ow, o % g.ow);
            for t in 0..9 {
                let (iy, ix) = (oy * 2 + t / 3, ox * 2 + t % 3);
                if (1..=h).contains(&iy) && (1..=w).contains(&ix) {
                    let v = x[(plane * h + iy - 1) * w + ix - 1];
                    want[(plane % c) * 9 + t] += u * f64::from(v);
                }
            }
        }
        close(&dw, &want, "depthwise weight gradient");
    }

    /// The per-plane depthwise kernels on rows that end inside a block,
    /// wide rows (several blocks of each width), and kernels that are not
    /// square.
    #[test]
    fn depthwise_planes_match_the_definition() {
        for (seed, (h, w, kh, kw, s, pad, d)) in [
            (5, 61, 3, 3, 1, 1, 1),
            (4, 70, 3, 3, 2, 1, 1),
            (9, 37, 1, 5, 1, 2, 1),
            (11, 29, 5, 3, 2, 2, 1),
            (8, 40, 3, 5, 3, 4, 2),
            // Rows of one partial block, tiles of eight rows and a tail.
            (20, 14, 3, 3, 2, 1, 1),
            // A small map whose rows are wide enough: the forward pass and
            // input gradient per plane, the weight gradient channels-last.
            (4, 20, 3, 3, 1, 1, 1),
            // Stride-1 grids of taps: tiles of four rows and single rows
            // left over, spans of two vectors and of one.
            (13, 30, 5, 5, 1, 2, 1),
            (7, 21, 3, 3, 1, 1, 1),
        ]
        .into_iter()
        .enumerate()
        {
            let p = ConvParams {
                stride: s,
                padding: pad,
                dilation: d,
                groups: 2,
            };
            let g = Geometry::new([2, 2, h, w], [2, 1, kh, kw], p).unwrap();
            assert!(g.depthwise() && depthwise::planes(&g));
            check(&g, 100 + 5 * seed as u64);
        }
    }

    /// The channels-last depthwise forward pass along rows
    /// (`depthwise::rows_apply`): 3- and 5-wide kernels, rows of one span
    /// and of a span and a short one, padding on every side and none, a
    /// kernel that is not square, two blocks of channels.
    #[test]
    fn depthwise_rows_match_the_definition() {
        for (seed, (c, h, w, kh, kw, pad)) in [
            (16, 8, 8, 5, 5, 2),
            (8, 7, 7, 3, 3, 1),
            (8, 12, 12, 3, 5, 1),
            (24, 4, 5, 5, 5, 2),
            (8, 6, 9, 3, 3, 0),
        ]
        .into_iter()
        .enumerate()
        {
            let p = ConvParams {
                padding: pad,
                groups: c,
                ..ConvParams::default()
            };
            let g = Geometry::new([2, c, h, w], [c, 1, kh, kw], p).unwrap();
            assert!(g.depthwise() && !depthwise::planes(&g));
            assert_eq!(depthwise::rows_apply(&g), super::super::avx2_fma());
            check(&g, 700 + 5 * seed as u64);
        }
    }

    /// A dense case for [`matches_im2col`]: `(n, cin, cout, (h, w), (kh,
    /// kw), stride, padding, dilation)`.
    type Case = (
        usize,
        usize,
        usize,
        (usize, usize),
        (usize, usize),
        usize,
        usize,
        usize,
    );

    /// A kernel's forward pass or input gradient into its output, or
    /// `false` where it has no plan for the geometry.
    type Run<'a> = &'a dyn Fn(&[f32], &[f32], &Geometry, &mut [f32]) -> bool;

    /// Each case through a kernel (`forward`, and `backward` for the
    /// stride-1 square kernels, which must have a plan; the others must
    /// not) against the im2col path (checked against the definition above)
    /// and the forward pass against the definition.
    /// The one-group geometry of a case.
    fn case_geometry(&(n, cin, cout, (h, w), (kh, kw), s, pad, d): &Case) -> Geometry {
        let p = ConvParams {
            stride: s,
            padding: pad,
            dilation: d,
            groups: 1,
        };
        Geometry::new([n, cin, h, w], [cout, cin, kh, kw], p).unwrap()
    }

    fn matches_im2col(name: &str, cases: &[Case], seed: u64, forward: Run, backward: Run) {
        for (i, case) in cases.iter().enumerate() {
            let g = case_geometry(case);
            let (xd, wd, yd) = g.dims();
            let seed = seed + 3 * i as u64;
            let x = rand(xd.iter().product(), seed);
            let wt = rand(wd.iter().product(), seed + 1);
            // NaN where the kernel must write: a cell it missed shows.
            let mut y = vec![f32::NAN; yd.iter().product()];
            assert!(
                forward(&x, &wt, &g, &mut y),
                "{name}: case {i} should run: {g:?}"
            );
            close(&y, &naive(&x, &wt, &g), &format!("{name} forward"));
            let mut want = vec![0f32; y.len()];
            forward_im2col(&x, &wt, &g, &mut want);
            let want: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
            close(&y, &want, &format!("{name} forward vs im2col"));
            let u = rand(y.len(), seed + 2);
            let mut dx = vec![f32::NAN; x.len()];
            let ran = backward(&u, &wt, &g, &mut dx);
            let square_stride_1 = g.kh == g.kw && g.p.stride == 1;
            assert_eq!(ran, square_stride_1, "{name}: case {i}, backward: {g:?}");
            if ran {
                let mut want = vec![0f32; x.len()];
                backward_data_im2col(&u, &wt, &g, &mut want);
                let want: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
                close(&dx, &want, &format!("{name} backward data vs im2col"));
            }
        }
    }

    /// The direct kernels on shapes they take: rows of whole tiles, rows
    /// ending in a partial tile, tiles straight across rows (40², and the
    /// stride-3 case), a partial block of output channels, two passes over
    /// the input channels, the strided stems, dilation, a kernel that is
    /// not square (forward only), one sample split over threads.
    #[test]
    fn direct_kernels_match_im2col() {
        if !super::super::avx2_fma() {
            eprintln!("no AVX2 + FMA: the direct kernels do not run here");
            return;
        }
        let cases = [
            (2, 3, 8, (16, 16), (3, 3), 1, 1, 1),
            (1, 30, 7, (30, 30), (3, 3), 1, 1, 1),
            (3, 4, 6, (40, 40), (3, 3), 1, 1, 1),
            (2, 3, 5, (32, 32), (7, 7), 2, 3, 1),
            (2, 5, 4, (20, 32), (3, 3), 1, 2, 2),
            (2, 4, 6, (16, 16), (5, 5), 1, 2, 1),
            (1, 2, 3, (50, 50), (3, 3), 3, 1, 1),
            (2, 4, 5, (16, 16), (1, 3), 1, 1, 1),
        ];
        let forward = |x: &[f32], w: &[f32], g: &Geometry, y: &mut [f32]| {
            direct::plan(g)
                .map(|l| direct::forward(x, w, g, &l, y))
                .is_some()
        };
        let backward = |dy: &[f32], w: &[f32], g: &Geometry, dx: &mut [f32]| {
            let f = direct::plan_backward_data(g);
            f.map(|f| direct::backward_data(dy, w, g, &f, dx)).is_some()
        };
        matches_im2col("direct", &cases, 300, &forward, &backward);
    }

    /// The AVX-512 tiles of the direct kernel (12 output channels × two
    /// tiles of 16 pixels) against the definition, im2col and the AVX2
    /// tiles on the same inputs: the direct cases, plus partial blocks of
    /// 12 channels (7, 13, 20, 25 outputs), a single tile left over in a
    /// chunk, and one sample split over threads.
    #[test]
    fn direct_avx512_tiles_match_the_definition_and_the_avx2_tiles() {
        use super::super::isa::Isa;
        if !Isa::Avx512.available() {
            eprintln!("skipped: this CPU has no AVX-512F, so the AVX-512 tiles cannot run here");
            return;
        }
        let cases = [
            (2, 3, 8, (16, 16), (3, 3), 1, 1, 1),
            (1, 30, 7, (30, 30), (3, 3), 1, 1, 1),
            (3, 4, 13, (40, 40), (3, 3), 1, 1, 1),
            (2, 3, 20, (32, 32), (7, 7), 2, 3, 1),
            (2, 5, 25, (20, 32), (3, 3), 1, 2, 2),
            (2, 4, 12, (16, 16), (5, 5), 1, 2, 1),
            (1, 2, 3, (50, 50), (3, 3), 3, 1, 1),
            (2, 4, 5, (16, 16), (1, 3), 1, 1, 1),
            (1, 40, 24, (32, 32), (3, 3), 1, 1, 1),
        ];
        let run = |isa: Isa| {
            move |x: &[f32], w: &[f32], g: &Geometry, y: &mut [f32]| {
                direct::plan_for(g, isa)
                    .map(|l| direct::forward(x, w, g, &l, y))
                    .is_some()
            }
        };
        let back = |isa: Isa| {
            move |dy: &[f32], w: &[f32], g: &Geometry, dx: &mut [f32]| {
                let f = direct::plan_backward_data_for(g, isa);
                f.map(|f| direct::backward_data(dy, w, g, &f, dx)).is_some()
            }
        };
        matches_im2col(
            "direct avx512",
            &cases,
            700,
            &run(Isa::Avx512),
            &back(Isa::Avx512),
        );
        // The same inputs through both tile kinds: equal up to the order of
        // the sums (both sum K in the same passes, so closely).
        for (i, case) in cases.iter().enumerate() {
            let g = case_geometry(case);
            let (xd, wd, yd) = g.dims();
            let x = rand(xd.iter().product(), 900 + i as u64);
            let wt = rand(wd.iter().product(), 901 + i as u64);
            let mut y512 = vec![f32::NAN; yd.iter().product()];
            let mut y2 = y512.clone();
            assert!(run(Isa::Avx512)(&x, &wt, &g, &mut y512));
            assert!(run(Isa::Avx2)(&x, &wt, &g, &mut y2));
            let worst = y512
                .iter()
                .zip(&y2)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= 1e-4,
                "case {i}: AVX-512 and AVX2 differ by {worst}"
            );
        }
    }

    /// Each path runs only where the CPU has it, and the portable one
    /// everywhere: the direct kernel and the implicit gemm plan for none
    /// below AVX2.
    #[test]
    fn a_path_the_cpu_lacks_is_never_planned() {
        use super::super::isa::Isa;
        let p = ConvParams {
            padding: 1,
            ..Default::default()
        };
        let g = Geometry::new([1, 8, 16, 16], [8, 8, 3, 3], p).unwrap();
        let small = Geometry::new([2, 32, 4, 4], [32, 32, 3, 3], p).unwrap();
        for isa in Isa::ALL {
            let can = isa >= Isa::Avx2 && isa.available();
            assert_eq!(direct::plan_for(&g, isa).is_some(), can, "{isa:?}");
            assert_eq!(implicit::plan_for(&small, isa).is_some(), can, "{isa:?}");
        }
    }

    /// Shapes the implicit gemm takes: 2²–9² maps, 13 to 128 input and 14
    /// to 1,040 output channels (last AVX-512 tiles of one to four blocks),
    /// strides, dilation, padding wider than the kernel's reach, kernels
    /// that are not square, a large 1×1, samples from 1 to 30.
    const IMPLICIT_CASES: [Case; 11] = [
        (5, 16, 16, (2, 2), (3, 3), 1, 1, 1),
        (30, 13, 40, (4, 4), (3, 3), 1, 1, 1),
        (3, 40, 15, (8, 8), (3, 3), 1, 1, 1),
        (4, 16, 40, (7, 7), (3, 3), 2, 1, 1),
        (2, 16, 16, (9, 9), (3, 3), 1, 2, 2),
        (3, 32, 16, (6, 5), (5, 5), 1, 0, 1),
        (2, 16, 16, (6, 6), (1, 3), 1, 1, 1),
        (7, 13, 14, (3, 3), (5, 5), 1, 2, 1),
        (1, 16, 80, (4, 4), (3, 3), 1, 1, 1),
        (2, 128, 1040, (5, 4), (1, 1), 1, 0, 1),
        (3, 32, 112, (3, 3), (3, 3), 1, 1, 1),
    ];

    /// The channels-last implicit gemm: 2² – 8² maps whose border pixels
    /// skip the taps that read padding, chunks of several samples in two
    /// sizes, two passes over the input channels, a partial block of output
    /// channels, several blocks split over work items (five blocks over
    /// what would be four parts for one sample on two threads), stride,
    /// dilation, no padding, a kernel that is not square (forward only), a
    /// 1×1 kernel of many weights.
    #[test]
    fn implicit_gemm_matches_im2col() {
        if !super::super::avx2_fma() {
            eprintln!("no AVX2 + FMA: the implicit gemm does not run here");
            return;
        }
        // Every tile kind this CPU runs: AVX2 (one block of 16 channels),
        // AVX-512 (up to four blocks at once: 16 to 112 output channels
        // leave last tiles of one, two and three blocks).
        use super::super::isa::Isa;
        for isa in [Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| i.available())
        {
            let forward = |x: &[f32], w: &[f32], g: &Geometry, y: &mut [f32]| {
                implicit::plan_for(g, isa)
                    .map(|l| implicit::forward(x, w, g, &l, y))
                    .is_some()
            };
            let backward = |dy: &[f32], w: &[f32], g: &Geometry, dx: &mut [f32]| {
                let f = implicit::plan_backward_data_for(g, isa);
                f.map(|f| implicit::backward_data(dy, w, g, &f, dx))
                    .is_some()
            };
            let name = format!("implicit {}", isa.name());
            matches_im2col(&name, &IMPLICIT_CASES, 500, &forward, &backward);
        }
    }

    #[test]
    fn bad_shapes_are_errors_not_panics() {
        let p = ConvParams::default();
        assert!(Geometry::new([1, 3, 4, 4], [2, 2, 3, 3], p).is_err());
        assert!(Geometry::new([1, 3, 2, 2], [2, 3, 3, 3], p).is_err());
        let p3 = ConvParams { groups: 2, ..p };
        assert!(Geometry::new([1, 3, 4, 4], [2, 1, 3, 3], p3).is_err());
        let p0 = ConvParams { stride: 0, ..p };
        assert!(Geometry::new([1, 3, 4, 4], [2, 3, 3, 3], p0).is_err());
    }

    /// The weight gradient does not depend on how samples are chunked.
    #[test]
    fn many_samples_and_small_maps_use_wide_chunks() {
        let p = ConvParams {
            padding: 1,
            ..ConvParams::default()
        };
        let g = Geometry::new([37, 3, 2, 3], [5, 3, 3, 3], p).unwrap();
        assert!(g.chunk() > 1);
        check(&g, 99);
    }

    /// The blocked transpose moves every cell where the definition says,
    /// whatever the sizes' remainders by 8.
    #[test]
    fn transpose_moves_every_cell() {
        for (rows, cols) in [
            (8, 8),
            (16, 24),
            (13, 9),
            (7, 40),
            (96, 4),
            (4, 96),
            (33, 17),
            (1, 1),
        ] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let mut dst = vec![-1f32; rows * cols];
            transpose(&src, rows, cols, &mut dst);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        dst[c * rows + r],
                        src[r * cols + c],
                        "{rows}×{cols} at ({r}, {c})"
                    );
                }
            }
        }
    }

    /// Every way of running the weight gradient's gemm gives one result
    /// (the dot products only where the CPU has AVX2 and FMA), on pixel
    /// counts that are no multiple of 8; the last is a stem's shape, 3 input
    /// channels over 1,122 pixels (which [`backward_weight`] hands to
    /// `wgrad::in_place` where the CPU has AVX2, tested below).
    #[test]
    fn the_weight_gradient_is_the_same_every_way() {
        for (xs, ws, groups) in [
            ([3, 4, 7, 6], [6, 4, 3, 3], 1),
            ([2, 6, 5, 5], [4, 3, 2, 2], 2),
            ([2, 3, 33, 34], [8, 3, 3, 3], 1),
        ] {
            let p = ConvParams {
                padding: 1,
                groups,
                ..ConvParams::default()
            };
            let g = Geometry::new(xs, ws, p).unwrap();
            let x = rand(xs.iter().product(), 5);
            let dy = rand(g.n * g.cout * g.ohw(), 6);
            let b = backward_weight_as(&x, &dy, &g, WeightGemm::Plain);
            let mut ways = vec![WeightGemm::Transposed];
            if crate::avx2_fma() {
                ways.push(WeightGemm::Dots);
            }
            for how in ways {
                let a = backward_weight_as(&x, &dy, &g, how);
                assert_eq!(a.len(), b.len());
                for (u, v) in a.iter().zip(&b) {
                    assert!(
                        (u - v).abs() <= 1e-4 * (1.0 + v.abs()),
                        "{how:?}: {u} vs {v}"
                    );
                }
            }
        }
    }

    /// The channels-last weight gradient (AVX-512) equals the gemm's on the
    /// implicit gemm's shapes: output channels short of a block of 32,
    /// input channels short of a tile of 12, strides, dilation, 2² maps
    /// whose taps mostly read padding, a large 1×1, the weights' layout.
    #[test]
    fn implicit_weight_gradient_matches_the_gemm() {
        use super::super::isa::Isa;
        if !Isa::Avx512.available() {
            eprintln!("no AVX-512: the channels-last weight gradient does not run here");
            return;
        }
        for (i, case) in IMPLICIT_CASES.iter().enumerate() {
            let g = case_geometry(case);
            let pl = implicit::plan_for(&g, Isa::Avx512).expect("planned");
            let x = rand(g.n * g.cin * g.hw(), 70 + i as u64);
            let dy = rand(g.n * g.cout * g.ohw(), 80 + i as u64);
            let got = implicit::backward_weight(&x, &dy, &g, &pl).expect("runs");
            let want = backward_weight_as(&x, &dy, &g, WeightGemm::Plain);
            let want: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
            close(&got, &want, &format!("case {i} {g:?}"));
        }
    }

    /// The stems' in-place weight gradient (AVX2 and AVX-512, each where
    /// the CPU runs it) equals the gemm's: resnet18's 7×7/2 and
    /// EfficientNet's 3×3/2 stems, rows of output pixels no multiple of 8
    /// or 16, output channels short of a tile (4 with AVX-512, 3 with
    /// AVX2), taps short of a tile (5 or 3), dilation, no padding, one
    /// input channel; and simple_cnn's second conv (32 input channels).
    #[test]
    fn in_place_stem_weight_gradient_matches_the_gemm() {
        use super::super::isa::Isa;
        let paths: Vec<Isa> = [Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| i.available())
            .collect();
        if paths.len() < 2 {
            eprintln!("this CPU runs only {paths:?} of the stems' in-place weight gradient");
        }
        let cases: [Case; 8] = [
            (2, 32, 20, (32, 32), (3, 3), 1, 1, 1),
            (1, 13, 9, (30, 40), (3, 3), 1, 1, 1),
            (2, 3, 64, (32, 32), (7, 7), 2, 3, 1),
            (3, 3, 32, (32, 32), (3, 3), 2, 1, 1),
            (2, 3, 7, (37, 23), (3, 3), 1, 1, 1),
            (1, 2, 5, (33, 70), (5, 4), 2, 2, 1),
            (2, 4, 3, (20, 40), (3, 3), 1, 0, 2),
            (1, 1, 6, (16, 16), (3, 3), 1, 1, 1),
        ];
        // Not a 1×1 conv of many channels (tiles of one tap each).
        let pw = case_geometry(&(2, 96, 24, (16, 16), (1, 1), 1, 0, 1));
        assert!(!wgrad::fits_in_place(&pw), "{pw:?}");
        // Nor convs from many channels, nor from a few over short maps.
        for case in [
            (2, 64, 128, (56, 56), (3, 3), 1, 1, 1),
            (2, 32, 64, (16, 16), (3, 3), 1, 1, 1),
        ] {
            let g = case_geometry(&case);
            assert!(!wgrad::fits_in_place(&g), "{g:?}");
        }
        for (i, case) in cases.iter().enumerate() {
            let g = case_geometry(case);
            assert!(wgrad::fits_in_place(&g), "case {i} {g:?}");
            let x = rand(g.n * g.cin * g.hw(), 90 + i as u64);
            let dy = rand(g.n * g.cout * g.ohw(), 95 + i as u64);
            let want = backward_weight_as(&x, &dy, &g, WeightGemm::Plain);
            let want: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
            for &isa in &paths {
                let got = wgrad::in_place_as(&x, &dy, &g, isa);
                close(&got, &want, &format!("{isa:?} case {i} {g:?}"));
            }
        }
    }

    /// Backward computes only the gradients something reads: none for
    /// images that are no variable, none for a weight held constant.
    #[test]
    fn untracked_inputs_get_no_gradient() {
        let dev = Device::Cpu;
        let p = ConvParams {
            padding: 1,
            ..ConvParams::default()
        };
        let images = Tensor::from_vec(rand(2 * 3 * 5 * 5, 1), (2, 3, 5, 5), &dev).unwrap();
        let w = Var::from_vec(rand(4 * 3 * 3 * 3, 2), (4, 3, 3, 3), &dev).unwrap();
        let grads = conv2d(&images, &w, p)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(&images).is_none());
        let dw = grads.get(&w).unwrap();
        assert!(
            dw.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );

        let x = Var::from_vec(rand(2 * 3 * 5 * 5, 3), (2, 3, 5, 5), &dev).unwrap();
        let fixed = w.as_tensor().detach();
        let grads = conv2d(&x, &fixed, p)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(&fixed).is_none());
        assert!(grads.get(&x).is_some());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// On random shapes, forward and both gradients equal candle's
        /// conv2d and its autograd.
        #[test]
        fn equals_candle_on_random_shapes(
            n in 1usize..4, cg_in in 1usize..4, cg_out in 1usize..4, groups in 1usize..3,
            k in 1usize..4, stride in 1usize..3, pad in 0usize..2, h in 3usize..9, w in 3usize..9,
            seed in 0u64..1000,
        ) {
            let dev = Device::Cpu;
            let (cin, cout) = (cg_in * groups, cg_out * groups);
            let xs = [n, cin, h, w];
            let ws = [cout, cg_in, k, k];
            let x = Var::from_vec(rand(xs.iter().product(), seed), &xs, &dev).unwrap();
            let wt = Var::from_vec(rand(ws.iter().product(), seed + 7), &ws, &dev).unwrap();
            let p = ConvParams { stride, padding: pad, dilation: 1, groups };
            let ours = conv2d(&x, &wt, p).unwrap();
            let theirs = x.conv2d(&wt, pad, stride, 1, groups).unwrap();
            prop_assert_eq!(ours.dims(), theirs.dims());
            let u = Tensor::from_vec(rand(ours.elem_count(), seed + 3), ours.shape(), &dev).unwrap();
            let diff = crate::max_abs_diff;
            prop_assert!(diff(&ours, &theirs) < 1e-4);
            let ga = (&ours * &u).unwrap().sum_all().unwrap().backward().unwrap();
            // candle's backward fails where the stride leaves input rows
            // unread (its conv_transpose2d has no output padding there):
            // those shapes are checked against the definition instead.
            match (&theirs * &u).unwrap().sum_all().unwrap().backward() {
                Ok(gb) => {
                    prop_assert!(diff(ga.get(&x).unwrap(), gb.get(&x).unwrap()) < 1e-4);
                    prop_assert!(diff(ga.get(&wt).unwrap(), gb.get(&wt).unwrap()) < 1e-4);
                }
                Err(_) => check(&Geometry::new(xs, ws, p).unwrap(), seed),
            }
        }
    }
}
