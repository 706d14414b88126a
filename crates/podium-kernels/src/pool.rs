//! Max and average pooling on the CPU over `k × k` windows with any stride
//! and padding, with their backward, as PyTorch's `max_pool2d` (padding is
//! −∞, the gradient goes to the first maximum of each window) and
//! `avg_pool2d` (`count_include_pad`: the divisor counts padding, or only
//! the window's cells inside the input). candle 0.11's own pools have a
//! backward only where kernel = stride, and its max pool's is scaled wrongly.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use podium_kernels::pool::{Pool, pool2d};
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

    /// A 2×2 max pool with stride 2 and no padding, the common case, which
    /// has a kernel of its own.
    fn is_max_2x2(&self) -> bool {
        self.kind == PoolKind::Max && self.k == 2 && self.stride == 2 && self.padding == 0
    }

    /// A 3×3 max pool with stride 2 and padding 1 (ResNet's stem), which
    /// has kernels of its own.
    fn is_max_3x3_s2(&self) -> bool {
        self.kind == PoolKind::Max && self.k == 3 && self.stride == 2 && self.padding == 1
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

/// The larger of two values, NaN if either is (as PyTorch's max pool).
/// Written without branches (`|`, not `||`) so that loops over it vectorize.
#[inline(always)]
fn max_nan(a: f32, b: f32) -> f32 {
    if (b > a) | b.is_nan() { b } else { a }
}

/// Whether `v` is the window's maximum `m` (NaN matching NaN).
#[inline(always)]
fn is_max(v: f32, m: f32) -> bool {
    (v == m) | (v.is_nan() & m.is_nan())
}

/// [`plane_forward`] for a 2×2 max pool with stride 2 and no padding: two
/// input rows at a time, no window bounds to work out.
#[multiversion(targets = "simd")]
fn max2x2_forward(x: &[f32], (_, w): (usize, usize), (oh, ow): (usize, usize), y: &mut [f32]) {
    for (oy, yr) in y.chunks_exact_mut(ow).take(oh).enumerate() {
        let r0 = &x[2 * oy * w..][..2 * ow];
        let r1 = &x[(2 * oy + 1) * w..][..2 * ow];
        for (ox, o) in yr.iter_mut().enumerate() {
            let (a, b) = (&r0[2 * ox..2 * ox + 2], &r1[2 * ox..2 * ox + 2]);
            *o = max_nan(max_nan(a[0], a[1]), max_nan(b[0], b[1]));
        }
    }
}

/// [`plane_backward`] for a 2×2 max pool with stride 2 and no padding. The
/// windows do not overlap, so each input cell is written once, with its
/// window's gradient where it is the window's first maximum (row-major)
/// and zero elsewhere; `dx` need not be zero beforehand.
fn max2x2_backward(
    x: &[f32],
    dy: &[f32],
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    dx: &mut [f32],
) {
    for oy in 0..oh {
        let (top, bottom) = dx[2 * oy * w..][..2 * w].split_at_mut(w);
        let r0 = &x[2 * oy * w..][..2 * ow];
        let r1 = &x[(2 * oy + 1) * w..][..2 * ow];
        let g = &dy[oy * ow..][..ow];
        let done = max2x2_backward_simd(r0, r1, g, top, bottom);
        for ox in done..ow {
            let (a0, a1, b0, b1) = (r0[2 * ox], r0[2 * ox + 1], r1[2 * ox], r1[2 * ox + 1]);
            let m = max_nan(max_nan(a0, a1), max_nan(b0, b1));
            let e0 = is_max(a0, m);
            let e1 = is_max(a1, m) & !e0;
            let e2 = is_max(b0, m) & !(e0 | e1);
            let e3 = !(e0 | e1 | e2);
            top[2 * ox] = if e0 { g[ox] } else { 0.0 };
            top[2 * ox + 1] = if e1 { g[ox] } else { 0.0 };
            bottom[2 * ox] = if e2 { g[ox] } else { 0.0 };
            bottom[2 * ox + 1] = if e3 { g[ox] } else { 0.0 };
        }
        // An odd width leaves a last column no window covers.
        top[2 * ow..].fill(0.0);
        bottom[2 * ow..].fill(0.0);
    }
    // An odd height leaves a last row no window covers.
    dx[2 * oh * w..h * w].fill(0.0);
}

/// The first windows of one row pair of [`max2x2_backward`] in SIMD lanes,
/// returning how many it did (the rest run scalar). LLVM leaves the
/// window-by-window loop scalar (it would have to deinterleave the pairs),
/// so this is written out for AVX.
fn max2x2_backward_simd(
    r0: &[f32],
    r1: &[f32],
    g: &[f32],
    d0: &mut [f32],
    d1: &mut [f32],
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        let blocks = g.len() / 4;
        // SAFETY: AVX is present; the slices are cut to the blocks' length.
        unsafe {
            max2x2_backward_avx(
                &r0[..8 * blocks],
                &r1[..8 * blocks],
                &g[..4 * blocks],
                &mut d0[..8 * blocks],
                &mut d1[..8 * blocks],
            )
        };
        return 4 * blocks;
    }
    let _ = (r0, r1, g, d0, d1);
    0
}

/// Four windows (eight columns of two rows) per step. Each lane compares
/// with its pair partner (lane `l ^ 1`, one in-lane shuffle), so no lane
/// needs deinterleaving; the gradient of window `l / 2` is duplicated into
/// lanes `l` and `l ^ 1`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn max2x2_backward_avx(r0: &[f32], r1: &[f32], g: &[f32], d0: &mut [f32], d1: &mut [f32]) {
    use std::arch::x86_64::*;
    // SAFETY (whole body): every load and store reads or writes 8 (or 4)
    // floats at `8 · blk` (or `4 · blk`) for `blk < g.len() / 4`, inside
    // slices the caller cut to 8 (or 4) floats per block.
    unsafe {
        let max_nan = |x: __m256, y: __m256| {
            let take_y = _mm256_or_ps(
                _mm256_cmp_ps(y, x, _CMP_GT_OQ),
                _mm256_cmp_ps(y, y, _CMP_UNORD_Q),
            );
            _mm256_blendv_ps(x, y, take_y)
        };
        let is_max = |v: __m256, m: __m256| {
            let nan_both = _mm256_and_ps(
                _mm256_cmp_ps(v, v, _CMP_UNORD_Q),
                _mm256_cmp_ps(m, m, _CMP_UNORD_Q),
            );
            _mm256_or_ps(_mm256_cmp_ps(v, m, _CMP_EQ_OQ), nan_both)
        };
        let odd = _mm256_castsi256_ps(_mm256_setr_epi32(0, -1, 0, -1, 0, -1, 0, -1));
        for blk in 0..g.len() / 4 {
            let a = _mm256_loadu_ps(r0.as_ptr().add(8 * blk));
            let b = _mm256_loadu_ps(r1.as_ptr().add(8 * blk));
            // Lanes [1, 0, 3, 2, …]: each lane's pair partner.
            let ap = _mm256_permute_ps::<0b10_11_00_01>(a);
            let bp = _mm256_permute_ps::<0b10_11_00_01>(b);
            let (t, u) = (max_nan(a, ap), max_nan(b, bp));
            let m = max_nan(t, u);
            // The top row holds the maximum, and the lane is its row's first.
            let in_top = is_max(t, m);
            let first_a = _mm256_andnot_ps(_mm256_and_ps(odd, is_max(ap, m)), is_max(a, m));
            let first_b = _mm256_andnot_ps(_mm256_and_ps(odd, is_max(bp, m)), is_max(b, m));
            let g4 = _mm_loadu_ps(g.as_ptr().add(4 * blk));
            let gg = _mm256_set_m128(_mm_unpackhi_ps(g4, g4), _mm_unpacklo_ps(g4, g4));
            let top = _mm256_and_ps(_mm256_and_ps(in_top, first_a), gg);
            let bottom = _mm256_and_ps(_mm256_andnot_ps(in_top, first_b), gg);
            _mm256_storeu_ps(d0.as_mut_ptr().add(8 * blk), top);
            _mm256_storeu_ps(d1.as_mut_ptr().add(8 * blk), bottom);
        }
    }
}

/// One plane's columns split by parity, and the row maxima, for the 3×3
/// stride-2 kernels; kept per thread between planes.
#[derive(Default)]
struct Split {
    /// `h × ⌈w/2⌉`: column `2j` of each row.
    even: Vec<f32>,
    /// `h × ⌊w/2⌋`: column `2j + 1`.
    odd: Vec<f32>,
    /// `h × ow`: each row's maximum over the three columns of window `ox`.
    rows: Vec<f32>,
    /// The gradients of `even` and `odd`.
    d_even: Vec<f32>,
    d_odd: Vec<f32>,
    /// Per output of one row: which of the 9 taps (row-major) is the first
    /// maximum; 9 while none is.
    sel: Vec<u8>,
    /// Per output of one row: its window's maximum (the backward's).
    max: Vec<f32>,
}

impl Split {
    /// Splits `x` (`h × w`) and fills `rows`. Window `ox` covers columns
    /// `2ox − 1, 2ox, 2ox + 1`: `odd[ox − 1]`, `even[ox]`, `odd[ox]`, where
    /// they exist; `ow = ⌈w/2⌉`.
    fn fill(&mut self, x: &[f32], (h, w): (usize, usize)) {
        let (ne, no) = (w.div_ceil(2), w / 2);
        self.even.clear();
        self.odd.clear();
        for row in x.chunks_exact(w).take(h) {
            self.even.extend(row.iter().step_by(2));
            self.odd.extend(row.iter().skip(1).step_by(2));
        }
        self.rows.clear();
        self.rows.extend_from_slice(&self.even);
        for r in 0..h {
            let m = &mut self.rows[r * ne..][..ne];
            let odd = &self.odd[r * no..][..no];
            // In window order (left, centre, right): max_nan keeps the
            // earlier of equal values, as the general kernel does.
            max_rows(&mut m[1..], &odd[..ne - 1], true);
            max_rows(&mut m[..no], odd, false);
        }
    }

    /// The maxima of output row `oy`'s windows (`out`: `ow` of them), from
    /// `rows`, the rows folded in order.
    #[inline(always)]
    fn window_max(&self, oy: usize, h: usize, out: &mut [f32]) {
        let ow = out.len();
        let mut rows = Split::window_rows(oy, h);
        let (_, r0) = rows.next().expect("every window has a row");
        out.copy_from_slice(&self.rows[r0 * ow..][..ow]);
        for (_, r) in rows {
            max_rows(out, &self.rows[r * ow..][..ow], false);
        }
    }

    /// The valid rows of output row `oy`'s windows, with their place (0–2).
    fn window_rows(oy: usize, h: usize) -> impl Iterator<Item = (usize, usize)> {
        (0..3).filter_map(move |i| {
            (2 * oy + i)
                .checked_sub(1)
                .filter(|&r| r < h)
                .map(|r| (i, r))
        })
    }
}

/// `m = max_nan(v, m)` if `v_first`, else `max_nan(m, v)`, lane by lane.
#[inline(always)]
fn max_rows(m: &mut [f32], v: &[f32], v_first: bool) {
    for (a, &b) in m.iter_mut().zip(v) {
        *a = if v_first {
            max_nan(b, *a)
        } else {
            max_nan(*a, b)
        };
    }
}

/// [`plane_forward`] for a 3×3 max pool with stride 2 and padding 1: the
/// maximum of three columns per row (on the columns split by parity, so
/// that every step is a contiguous SIMD loop), then of three rows.
#[multiversion(targets = "simd")]
fn max3x3s2_forward(
    x: &[f32],
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    y: &mut [f32],
    s: &mut Split,
) {
    s.fill(x, (h, w));
    for (oy, out) in y.chunks_exact_mut(ow).take(oh).enumerate() {
        s.window_max(oy, h, out);
    }
}

/// [`plane_backward`] for a 3×3 max pool with stride 2 and padding 1. For
/// each output row, each window's first maximum (row-major, as the general
/// kernel) is found tap by tap over the whole row, then the gradients are
/// added in the general kernel's order (so the sums are the same bits) into
/// the split columns, which are interleaved into `dx` at the end; `dx`
/// need not be zero beforehand.
#[multiversion(targets = "simd")]
fn max3x3s2_backward(
    x: &[f32],
    dy: &[f32],
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    dx: &mut [f32],
    s: &mut Split,
) {
    s.fill(x, (h, w));
    let (ne, no) = (ow, w / 2);
    s.d_even.clear();
    s.d_even.resize(h * ne, 0.0);
    s.d_odd.clear();
    s.d_odd.resize(h * no, 0.0);
    s.sel.clear();
    s.sel.resize(ow, 0);
    // Out of `s` while `s` fills it.
    let mut m = std::mem::take(&mut s.max);
    m.clear();
    m.resize(ow, 0.0);
    for oy in 0..oh {
        let g = &dy[oy * ow..][..ow];
        // The window maxima, as the forward.
        s.window_max(oy, h, &mut m);
        s.sel.fill(9);
        for (i, r) in Split::window_rows(oy, h) {
            let (even, odd) = (&s.even[r * ne..][..ne], &s.odd[r * no..][..no]);
            let t = 3 * i as u8;
            // Left (column 2ox − 1), centre, right (2ox + 1).
            pick(&mut s.sel[1..], &odd[..ne - 1], &m[1..], t);
            pick(&mut s.sel, even, &m, t + 1);
            pick(&mut s.sel[..no], odd, &m[..no], t + 2);
        }
        for (i, r) in Split::window_rows(oy, h) {
            let t = 3 * i as u8;
            let de = &mut s.d_even[r * ne..][..ne];
            let d_o = &mut s.d_odd[r * no..][..no];
            // An odd column gets window ox's gradient (as its right
            // column) before window ox + 1's (as its left).
            add_where(d_o, &s.sel[..no], &g[..no], t + 2);
            add_where(&mut d_o[..ne - 1], &s.sel[1..], &g[1..], t);
            add_where(de, &s.sel, g, t + 1);
        }
    }
    s.max = m;
    for ((row, de), d_o) in dx
        .chunks_exact_mut(w)
        .zip(s.d_even.chunks_exact(ne))
        .zip(
            s.d_odd
                .chunks_exact(no.max(1))
                .chain(std::iter::repeat(&[][..])),
        )
        .take(h)
    {
        for (d, &v) in row.iter_mut().step_by(2).zip(de) {
            *d = v;
        }
        for (d, &v) in row.iter_mut().skip(1).step_by(2).zip(d_o) {
            *d = v;
        }
    }
}

/// Where no tap is chosen yet and `v` is the window's maximum, tap `t`.
#[inline(always)]
fn pick(sel: &mut [u8], v: &[f32], m: &[f32], t: u8) {
    for ((s, &v), &m) in sel.iter_mut().zip(v).zip(m) {
        *s = if (*s == 9) & is_max(v, m) { t } else { *s };
    }
}

/// `d += g` where tap `t` was chosen (`+ 0` elsewhere, which changes no sum).
#[inline(always)]
fn add_where(d: &mut [f32], sel: &[u8], g: &[f32], t: u8) {
    for ((d, &s), &g) in d.iter_mut().zip(sel).zip(g) {
        *d += if s == t { g } else { 0.0 };
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
                .for_each_init(Split::default, |split, (yo, xi)| {
                    if self.0.is_max_2x2() {
                        max2x2_forward(xi, (h, w), (oh, ow), yo)
                    } else if self.0.is_max_3x3_s2() {
                        max3x3s2_forward(xi, (h, w), (oh, ow), yo, split)
                    } else {
                        plane_forward(&self.0, xi, (h, w), (oh, ow), yo)
                    }
                });
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
        // The 2×2 and 3×3 kernels write every cell; the general one adds.
        let writes_all = self.0.is_max_2x2() || self.0.is_max_3x3_s2();
        let mut dx = if writes_all && oh * ow > 0 {
            crate::output_buffer(x.len())
        } else {
            vec![0f32; x.len()]
        };
        if oh * ow > 0 && h * w > 0 {
            dx.par_chunks_mut(h * w)
                .zip(x.par_chunks(h * w).zip(dy.par_chunks(oh * ow)))
                .for_each_init(Split::default, |split, (dxo, (xi, gi))| {
                    if self.0.is_max_2x2() {
                        max2x2_backward(xi, gi, (h, w), (oh, ow), dxo)
                    } else if self.0.is_max_3x3_s2() {
                        max3x3s2_backward(xi, gi, (h, w), (oh, ow), dxo, split)
                    } else {
                        plane_backward(&self.0, xi, gi, (h, w), (oh, ow), dxo)
                    }
                });
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

    type Fwd<'a> = &'a dyn Fn(&[f32], (usize, usize), (usize, usize), &mut [f32]);
    type Bwd<'a> = &'a dyn Fn(&[f32], &[f32], (usize, usize), (usize, usize), &mut [f32]);

    /// A special kernel gives what the general ones give, bit for bit, with
    /// ties, NaNs and odd sizes, and writes every cell of a NaN-filled `dx`.
    fn equals_the_general_kernel(p: Pool, sizes: &[(usize, usize)], fwd: Fwd, bwd: Bwd) {
        let mut seed = 7u64;
        for &(h, w) in sizes {
            let (oh, ow) = (p.out(h).unwrap_or(0), p.out(w).unwrap_or(0));
            if oh * ow == 0 {
                // No output: the op calls no kernel.
                continue;
            }
            let mut next = || {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) as u32
            };
            // Few distinct values, so windows tie; now and then a NaN.
            let x: Vec<f32> = (0..h * w)
                .map(|_| match next() % 17 {
                    0 => f32::NAN,
                    r => (r % 3) as f32 - 1.0,
                })
                .collect();
            let dy: Vec<f32> = (0..oh * ow).map(|_| next() as f32 / 1e9 + 0.5).collect();
            let (mut y0, mut y1) = (vec![0f32; oh * ow], vec![1f32; oh * ow]);
            plane_forward(&p, &x, (h, w), (oh, ow), &mut y0);
            fwd(&x, (h, w), (oh, ow), &mut y1);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&y0), bits(&y1), "forward {h}×{w}");
            let (mut d0, mut d1) = (vec![0f32; h * w], vec![f32::NAN; h * w]);
            plane_backward(&p, &x, &dy, (h, w), (oh, ow), &mut d0);
            bwd(&x, &dy, (h, w), (oh, ow), &mut d1);
            assert_eq!(bits(&d0), bits(&d1), "backward {h}×{w}");
        }
    }

    const SIZES: [(usize, usize); 12] = [
        (2, 2),
        (4, 6),
        (5, 7),
        (7, 4),
        (1, 3),
        (9, 9),
        (6, 16),
        (5, 19),
        (3, 40),
        (1, 1),
        (3, 1),
        (32, 33),
    ];

    #[test]
    fn the_2x2_max_pool_equals_the_general_kernel() {
        equals_the_general_kernel(
            Pool::max(2, 2, 0),
            &SIZES,
            &max2x2_forward,
            &max2x2_backward,
        );
    }

    /// ResNet's stem pool (3×3, stride 2, padding 1).
    #[test]
    fn the_3x3_stride_2_max_pool_equals_the_general_kernel() {
        let mut split = Split::default();
        let split = std::cell::RefCell::new(&mut split);
        equals_the_general_kernel(
            Pool::max(3, 2, 1),
            &SIZES,
            &|x, hw, o, y| max3x3s2_forward(x, hw, o, y, &mut split.borrow_mut()),
            &|x, g, hw, o, d| max3x3s2_backward(x, g, hw, o, d, &mut split.borrow_mut()),
        );
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
