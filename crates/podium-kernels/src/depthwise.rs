//! Depthwise convolution (one input and one output channel per group, as
//! in MobileNet and EfficientNet) on the CPU: the forward pass and both
//! gradients of [`super::conv`] when [`Geometry::depthwise`] holds.
//!
//! A gemm with one row wastes most of its work, so these are direct
//! kernels, in two layouts:
//!
//! - **Per plane** (maps over [`NHWC_MAX_PIXELS`] pixels, and wide rows:
//!   see [`planes`]). Each input plane is copied once into a zero-padded
//!   buffer whose columns are split into `stride` phases ([`Phased`]), so
//!   that every tap reads a contiguous run of the buffer along an output
//!   row, whatever the stride. An output row is then a sum of shifted rows
//!   ([`sum_taps`]), kept in registers over all taps and written once;
//!   where the taps make a whole 3×3 or 5×5 grid (stride and dilation 1),
//!   each input row is loaded once per kernel column and multiplied into
//!   the three or four output rows it feeds, the column's weights held in
//!   registers. The input gradient is the same sum taken the other way,
//!   one column phase of the input at a time; the weight gradient is one
//!   dot product per tap ([`dot_taps`]), in lane-wise accumulators that
//!   stay in registers over a whole plane, a task taking a few channels
//!   sample by sample.
//! - **Channels-last** (small maps, where a row is too short for the above
//!   to pay; EfficientNet's go down to 2×2): one pixel's channels are
//!   contiguous, so every tap is a vector multiply-add over the channels.
//!   The stride-1 forward pass of 3- and 5-wide kernels runs along rows
//!   ([`forward_rows`]): each input pixel loaded once per kernel row and
//!   multiplied by the weights held in registers, for up to eight outputs
//!   of a row summed in registers (EfficientNet's 5×5 over 240 channels at
//!   8², batch 32: 0.60 → 0.35 ms).
//!
//! Sums run in a fixed order: results are bit-identical from run to run.

use multiversion::multiversion;
use rayon::prelude::*;

use super::conv::{Geometry, transpose};
use super::padded::{LANES, Phased, interleave2};
use super::{avx2_fma, sum_in_parts};

/// Depthwise maps up to this many pixels run channels-last; larger ones
/// run per plane, as do the forward pass and input gradient of stride-1
/// kernels on rows of 16 or more (measured on efficientnet_b0's shapes at
/// 16²: a 5×5 kernel over 240 channels 3.3 → 2.1 ms per plane where the
/// weight gradient is faster channels-last; with stride 2 the rows written
/// are too short).
pub(super) const NHWC_MAX_PIXELS: usize = 256;

/// Channels one task of [`backward_weight_planes`] takes at most.
const WEIGHT_CHANNELS: usize = 8;

/// Whether the forward pass and input gradient run per plane.
pub(super) fn planes(g: &Geometry) -> bool {
    g.hw() > NHWC_MAX_PIXELS || (g.p.stride == 1 && g.ow >= 2 * LANES)
}

/// `y [N, C, oh, ow]` from `x [N, C, H, W]` and `w [C, 1, kh, kw]`.
pub(super) fn forward(x: &[f32], w: &[f32], g: &Geometry, y: &mut [f32]) {
    if planes(g) {
        forward_planes(x, w, g, y)
    } else {
        depthwise_nhwc(x, w, g, y, Dir::Forward)
    }
}

/// `dx [N, C, H, W]` from `dy [N, C, oh, ow]` and `w`.
pub(super) fn backward_data(dy: &[f32], w: &[f32], g: &Geometry, dx: &mut [f32]) {
    if planes(g) {
        backward_data_planes(dy, w, g, dx)
    } else {
        depthwise_nhwc(dy, w, g, dx, Dir::BackwardData)
    }
}

/// `dw [C, 1, kh, kw]` from `x` and `dy`.
pub(super) fn backward_weight(x: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    if g.hw() <= NHWC_MAX_PIXELS {
        depthwise_backward_weight_nhwc(x, dy, g)
    } else {
        backward_weight_planes(x, dy, g)
    }
}

/// Geometry of the padded input of the forward pass and the weight
/// gradient: `(rows, width per phase)`, wide enough for [`sum_taps`] to
/// read whole blocks past the end of a row.
fn input_layout(g: &Geometry) -> (usize, usize) {
    let (s, d, pad) = (g.p.stride, g.p.dilation, g.p.padding);
    let rows = (g.h + 2 * pad).max((g.oh - 1) * s + (g.kh - 1) * d + 1);
    let width = (g.w + 2 * pad)
        .div_ceil(s)
        .max((g.kw - 1) * d / s + g.ow.next_multiple_of(LANES));
    (rows, width)
}

/// Planes per rayon task, so that tiny planes do not cost a task each.
fn plane_batch(len: usize) -> usize {
    (4096 / len.max(1)).max(1)
}

fn forward_planes(x: &[f32], w: &[f32], g: &Geometry, y: &mut [f32]) {
    let (hw, p, kk) = (g.hw(), g.ohw(), g.kh * g.kw);
    let (rows, width) = input_layout(g);
    let pad = g.p.padding;
    y.par_chunks_mut(p)
        .with_min_len(plane_batch(p))
        .enumerate()
        .for_each_init(
            || {
                let buf = Phased::new(g.p.stride, width);
                (buf, Vec::with_capacity(kk))
            },
            |(buf, taps), (plane, yo)| {
                buf.fill(&x[plane * hw..][..hw], (g.h, g.w), (pad, pad), rows);
                let wc = &w[(plane % g.cout) * kk..][..kk];
                forward_plane(yo, buf, wc, taps, g);
            },
        );
}

/// One output plane of [`forward_planes`] from its padded input: output
/// row `oy` reads the taps of row 0 shifted down by `oy·s` padded rows.
fn forward_plane(
    yo: &mut [f32],
    x: &Phased,
    wc: &[f32],
    taps: &mut Vec<(f32, usize)>,
    g: &Geometry,
) {
    let (s, d) = (g.p.stride, g.p.dilation);
    taps.clear();
    for i in 0..g.kh {
        for j in 0..g.kw {
            taps.push((wc[i * g.kw + j], x.at(i * d, j * d)));
        }
    }
    sum_taps(yo, g.ow, &x.buf, x.at(s, 0), taps);
}

fn backward_data_planes(dy: &[f32], w: &[f32], g: &Geometry, dx: &mut [f32]) {
    let (hw, p, kk) = (g.hw(), g.ohw(), g.kh * g.kw);
    let (s, d, pad) = (g.p.stride, g.p.dilation, g.p.padding);
    // dx[iy, ix] sums w[i, j]·dy[oy, ox] over the taps with
    // oy·s = iy + pad − i·d and ox·s = ix + pad − j·d; oy and ox run from
    // −(top, left) to past the end, so dy is padded by as much.
    let top = ((g.kh - 1) * d).saturating_sub(pad).div_ceil(s);
    let left = ((g.kw - 1) * d).saturating_sub(pad).div_ceil(s);
    let rows = top + g.oh.max((g.h - 1 + pad) / s + 1);
    let width = (left + g.ow).max(left + pad.div_ceil(s) + g.w.div_ceil(s).next_multiple_of(LANES));
    dx.par_chunks_mut(hw)
        .with_min_len(plane_batch(hw))
        .enumerate()
        .for_each_init(
            || {
                let buf = Phased::new(1, width);
                (buf, vec![Vec::with_capacity(kk); s * s], Vec::new())
            },
            |(buf, taps, rows_buf), (plane, dxo)| {
                buf.fill(&dy[plane * p..][..p], (g.oh, g.ow), (top, left), rows);
                let wc = &w[(plane % g.cout) * kk..][..kk];
                backward_data_plane(dxo, buf, wc, (top, left), taps, rows_buf, g);
            },
        );
}

/// One input-gradient plane of [`backward_data_planes`] from its padded
/// output gradient. Along a row, input columns `ix ≡ q (mod s)` read
/// consecutive output columns as `ix` steps by `s`, through the taps whose
/// offsets `ix + pad − j·d` are multiples of `s`; which kernel rows count
/// depends likewise on `iy mod s`. So each of the `s × s` residues has its
/// own taps, computed once for the plane (`taps[ry·s + q]`), and input row
/// `iy = ry + m·s` reads them `m` padded rows further down.
#[multiversion(targets = "simd")]
fn backward_data_plane(
    dxo: &mut [f32],
    dy: &Phased,
    wc: &[f32],
    (top, left): (usize, usize),
    taps: &mut [Vec<(f32, usize)>],
    out: &mut Vec<f32>,
    g: &Geometry,
) {
    let (s, d, pad) = (g.p.stride, g.p.dilation, g.p.padding);
    // Padded index of a tap's output: (at + pad − k·d) / s + lo, where
    // `at + pad + lo·s ≥ k·d` by the choice of `lo`.
    let shifted = |at: usize, k: usize, lo: usize| {
        let t = at + pad + lo * s - k * d;
        t.is_multiple_of(s).then_some(t / s)
    };
    for ry in 0..s {
        for q in 0..s {
            let list = &mut taps[ry * s + q];
            list.clear();
            for i in 0..g.kh {
                let Some(r) = shifted(ry, i, top) else {
                    continue;
                };
                for j in 0..g.kw {
                    if let Some(c) = shifted(q, j, left) {
                        list.push((wc[i * g.kw + j], dy.at(r, c)));
                    }
                }
            }
        }
    }
    if s == 1 {
        sum_taps(dxo, g.w, &dy.buf, dy.width, &taps[0]);
        return;
    }
    // Residue (ry, q) covers input rows ry, ry + s, … and in each the
    // columns q, q + s, …: a block of rows × cols in `out`, rows reading
    // one padded row of dy further down each.
    let (rows_of, cols_of) = (
        |ry: usize| (g.h - ry.min(g.h)).div_ceil(s),
        |q: usize| (g.w - q.min(g.w)).div_ceil(s),
    );
    out.resize(g.h.div_ceil(s) * g.w.div_ceil(s) * s * s, 0.0);
    let block = g.h.div_ceil(s) * g.w.div_ceil(s);
    for ry in 0..s {
        for q in 0..s {
            let cells = &mut out[(ry * s + q) * block..][..rows_of(ry) * cols_of(q)];
            if !cells.is_empty() {
                sum_taps(cells, cols_of(q), &dy.buf, dy.width, &taps[ry * s + q]);
            }
        }
    }
    for (iy, row) in dxo.chunks_exact_mut(g.w).enumerate() {
        let (ry, m) = (iy % s, iy / s);
        let phase = |q: usize| &out[(ry * s + q) * block + m * cols_of(q)..][..cols_of(q)];
        if s == 2 {
            interleave2(phase(0), phase(1), row);
        } else {
            for q in 0..s.min(g.w) {
                for (o, &v) in row.iter_mut().skip(q).step_by(s).zip(phase(q)) {
                    *o = v;
                }
            }
        }
    }
}

fn backward_weight_planes(x: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    let (hw, p, kk) = (g.hw(), g.ohw(), g.kh * g.kw);
    let (rows, width) = input_layout(g);
    let pad = g.p.padding;
    let mut dw = vec![0f32; g.cout * kk];
    // A task takes a few channels, sample by sample, so that it reads runs
    // of consecutive planes (one plane at a time, 393 KiB apart, kept the
    // prefetcher from running ahead: ×96 at 32², batch 32, 1.29 → 0.98 ms).
    let cb = WEIGHT_CHANNELS.min(g.cout.div_ceil(rayon::current_num_threads()).max(1));
    dw.par_chunks_mut(kk * cb).enumerate().for_each(|(b, dwb)| {
        let mut buf = Phased::new(g.p.stride, width);
        let mut acc = vec![([0f32; LANES], 0f32); dwb.len()];
        for n in 0..g.n {
            for (ci, acc) in acc.chunks_exact_mut(kk).enumerate() {
                let plane = n * g.cin + b * cb + ci;
                buf.fill(&x[plane * hw..][..hw], (g.h, g.w), (pad, pad), rows);
                backward_weight_plane(acc, &buf, &dy[plane * p..][..p], g);
            }
        }
        for (o, (lanes, tail)) in dwb.iter_mut().zip(&acc) {
            *o = lanes.iter().sum::<f32>() + tail;
        }
    });
    dw
}

/// Adds one plane's weight gradient to `acc` (per tap, lane-wise sums and
/// a sum over the columns past the last whole block), taps of one kernel
/// row up to four at a time so that their accumulators stay in registers.
fn backward_weight_plane(acc: &mut [([f32; LANES], f32)], x: &Phased, dy: &[f32], g: &Geometry) {
    let (s, d) = (g.p.stride, g.p.dilation);
    let step = x.at(s, 0);
    for i in 0..g.kh {
        for j0 in (0..g.kw).step_by(4) {
            let first: Vec<usize> = (j0..g.kw.min(j0 + 4)).map(|j| x.at(i * d, j * d)).collect();
            let acc = &mut acc[i * g.kw + j0..][..first.len()];
            dot_taps(acc, &x.buf, dy, g.ow, &first, step);
        }
    }
}

/// Rows `ow` wide: `out[r·ow + o] = Σ w·src[at + r·step + o]` over
/// `taps = [(w, at)]`, in tiles of rows × blocks of up to eight registers
/// summed over every tap before they are stored. `src` must hold a whole block of
/// [`LANES`] past the end of each tap's row (the padded layouts do).
fn sum_taps(out: &mut [f32], ow: usize, src: &[f32], step: usize, taps: &[(f32, usize)]) {
    let rows = out.len() / ow.max(1);
    let reach = (rows.max(1) - 1) * step + ow.next_multiple_of(LANES);
    assert!(out.len() == rows * ow && taps.iter().all(|&(_, at)| at + reach <= src.len()));
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA, and every read is in `src`.
        return unsafe { avx::sum_taps(out, ow, src, step, taps) };
    }
    for (r, row) in out.chunks_exact_mut(ow).enumerate() {
        for (o, v) in row.iter_mut().enumerate() {
            *v = taps.iter().map(|&(w, at)| w * src[at + r * step + o]).sum();
        }
    }
}

/// For up to four taps, `acc[t] += Σ dy[oy, ox]·src[first[t] + oy·step + ox]`
/// over a plane of rows `ow` wide: each row's whole blocks of [`LANES`]
/// lane-wise, the rest in the tail.
fn dot_taps(
    acc: &mut [([f32; LANES], f32)],
    src: &[f32],
    dy: &[f32],
    ow: usize,
    first: &[usize],
    step: usize,
) {
    let rows = dy.len() / ow;
    assert!(acc.len() == first.len() && first.len() <= 4 && dy.len() == rows * ow);
    assert!(
        rows == 0
            || first
                .iter()
                .all(|&f| f + (rows - 1) * step + ow <= src.len())
    );
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA, and every read is in `src` or
        // `dy`.
        unsafe {
            match first.len() {
                4 => avx::dot_taps::<4>(acc, src, dy, ow, first, step),
                3 => avx::dot_taps::<3>(acc, src, dy, ow, first, step),
                2 => avx::dot_taps::<2>(acc, src, dy, ow, first, step),
                _ => avx::dot_taps::<1>(acc, src, dy, ow, first, step),
            }
        }
        return;
    }
    for ((lanes, tail), &f) in acc.iter_mut().zip(first) {
        for (oy, grad) in dy.chunks_exact(ow).enumerate() {
            let row = &src[f + oy * step..][..ow];
            let whole = ow / LANES * LANES;
            for (b, (gv, xv)) in grad[..whole].iter().zip(row).enumerate() {
                lanes[b % LANES] += gv * xv;
            }
            for (gv, xv) in grad[whole..].iter().zip(&row[whole..]) {
                *tail += gv * xv;
            }
        }
    }
}

/// [`sum_taps`] and [`dot_taps`] in AVX registers. The callers check the
/// bounds; these read without checks.
#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    use super::LANES;

    /// [`super::sum_taps`] in tiles of up to eight registers: a tile is
    /// `R` rows × `V` vectors of [`LANES`] outputs, summed over every tap
    /// and stored once. A tile's `R·V` sums are independent chains, so the
    /// FMAs of one tap overlap instead of each waiting on the latency of
    /// the last (with one row of one or two vectors, the 25 taps of a 5×5
    /// kernel ran as one or two chains). A row is split into column spans
    /// of up to four vectors, the last one partial; each span runs over
    /// the rows `8 / V` at a time, the rows left over one at a time.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn sum_taps(
        out: &mut [f32],
        ow: usize,
        src: &[f32],
        step: usize,
        taps: &[(f32, usize)],
    ) {
        if ow == 0 {
            return;
        }
        let rows = out.len() / ow;
        let t = Tile {
            out: out.as_mut_ptr(),
            ow,
            src: src.as_ptr(),
            step,
            taps,
        };
        // SAFETY: as the caller's; a grid's taps are the caller's taps.
        unsafe {
            if let Some(grid) = Grid::<3>::of(taps, step) {
                return t.grid(rows, &grid);
            }
            if let Some(grid) = Grid::<5>::of(taps, step) {
                return t.grid(rows, &grid);
            }
        }
        let mut o = 0;
        while o < ow {
            let v = (ow - o).div_ceil(LANES).min(4);
            // SAFETY: as the caller's; tiles stay inside `out`'s rows.
            unsafe {
                match v {
                    1 => t.span::<8, 1>(rows, o),
                    2 => t.span::<4, 2>(rows, o),
                    3 => t.span::<2, 3>(rows, o),
                    _ => t.span::<2, 4>(rows, o),
                }
            }
            o += v * LANES;
        }
    }

    /// Taps that make a whole `K × K` grid, each reading `at0 + a·step + b`
    /// with weight `w[a][b]` (a stride-1, dilation-1 kernel: the forward
    /// pass, and the input gradient's flipped kernel).
    struct Grid<const K: usize> {
        at0: usize,
        w: [[f32; K]; K],
    }

    impl<const K: usize> Grid<K> {
        fn of(taps: &[(f32, usize)], step: usize) -> Option<Grid<K>> {
            if taps.len() != K * K || step < K {
                return None;
            }
            let at0 = taps.iter().map(|&(_, at)| at).min()?;
            let (mut w, mut seen) = ([[0f32; K]; K], [[false; K]; K]);
            for &(v, at) in taps {
                let (a, b) = ((at - at0) / step, (at - at0) % step);
                if a >= K || b >= K || seen[a][b] {
                    return None;
                }
                (w[a][b], seen[a][b]) = (v, true);
            }
            Some(Grid { at0, w })
        }
    }

    /// One [`sum_taps`] call's operands, as raw pointers.
    struct Tile<'a> {
        out: *mut f32,
        ow: usize,
        src: *const f32,
        step: usize,
        taps: &'a [(f32, usize)],
    }

    impl Tile<'_> {
        /// Columns `o .. o + V·LANES` (clipped to the row) of every row.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn span<const R: usize, const V: usize>(&self, rows: usize, o: usize) {
            let mut r = 0;
            unsafe {
                while r + R <= rows {
                    self.tile::<R, V>(r, o);
                    r += R;
                }
                while r < rows {
                    self.tile::<1, V>(r, o);
                    r += 1;
                }
            }
        }

        /// Every row through [`Tile::grid_tile`]: spans of two vectors (one
        /// for the last where a single one is left), four rows at a time for
        /// a 3×3 kernel, three for a 5×5 (whose five weights, six sums and
        /// two inputs then fit the sixteen registers; with four rows the
        /// sums spilled to the stack and ran no faster than [`Tile::tile`]),
        /// the rows left over one at a time.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn grid<const K: usize>(&self, rows: usize, g: &Grid<K>) {
            let mut o = 0;
            while o < self.ow {
                // SAFETY: as the caller's; tiles stay inside `out`'s rows.
                unsafe {
                    if self.ow - o > LANES {
                        self.grid_span::<K, 2>(rows, g, o);
                        o += 2 * LANES;
                    } else {
                        self.grid_span::<K, 1>(rows, g, o);
                        o += LANES;
                    }
                }
            }
        }

        /// Columns `o .. o + V·LANES` (clipped to the row) of every row, in
        /// the tiles of rows [`Tile::grid`] says.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn grid_span<const K: usize, const V: usize>(
            &self,
            rows: usize,
            g: &Grid<K>,
            o: usize,
        ) {
            let mut r = 0;
            unsafe {
                while K == 3 && r + 4 <= rows {
                    self.grid_tile::<K, 4, V>(g, r, o);
                    r += 4;
                }
                while r + 3 <= rows {
                    self.grid_tile::<K, 3, V>(g, r, o);
                    r += 3;
                }
                while r < rows {
                    self.grid_tile::<K, 1, V>(g, r, o);
                    r += 1;
                }
            }
        }

        /// Rows `r .. r + R`, columns `o .. o + V·LANES` clipped to the row,
        /// of a `K × K` grid of taps. Kernel column by kernel column, its
        /// `K` weights held in registers, each input row under the tile is
        /// loaded once and multiplied into every output row it feeds (for
        /// three rows of a 5×5 kernel, 19 loads per 30 multiply-adds, where
        /// [`Tile::tile`] loads an input for every one). EfficientNet's
        /// depthwise 3×3 ×32 at 112², batch 8: 1.50 / 1.54 → 1.27 / 1.20 ms
        /// forward / input gradient; 5×5 ×240 at 28²: 1.34 / 1.38 → 1.20 /
        /// 1.24.
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn grid_tile<const K: usize, const R: usize, const V: usize>(
            &self,
            g: &Grid<K>,
            r: usize,
            o: usize,
        ) {
            let mut a = [[_mm256_setzero_ps(); V]; R];
            unsafe {
                let base = self.src.add(g.at0 + r * self.step + o);
                for b in 0..K {
                    let mut wv = [_mm256_setzero_ps(); K];
                    for (i, v) in wv.iter_mut().enumerate() {
                        *v = _mm256_set1_ps(g.w[i][b]);
                    }
                    for q in 0..R + K - 1 {
                        let mut x = [_mm256_setzero_ps(); V];
                        for (v, xv) in x.iter_mut().enumerate() {
                            *xv = _mm256_loadu_ps(base.add(q * self.step + b + v * LANES));
                        }
                        for (dr, row) in a.iter_mut().enumerate() {
                            if q >= dr && q - dr < K {
                                for (acc, xv) in row.iter_mut().zip(x) {
                                    *acc = _mm256_fmadd_ps(wv[q - dr], xv, *acc);
                                }
                            }
                        }
                    }
                }
                self.store(&a, r, o);
            }
        }

        /// Rows `r .. r + R`, columns `o .. o + V·LANES` clipped to the row.
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn tile<const R: usize, const V: usize>(&self, r: usize, o: usize) {
            let mut a = [[_mm256_setzero_ps(); V]; R];
            unsafe {
                let base = self.src.add(r * self.step + o);
                for &(w, at) in self.taps {
                    let wv = _mm256_set1_ps(w);
                    for (dr, row) in a.iter_mut().enumerate() {
                        let p = base.add(at + dr * self.step);
                        for (v, acc) in row.iter_mut().enumerate() {
                            *acc = _mm256_fmadd_ps(wv, _mm256_loadu_ps(p.add(v * LANES)), *acc);
                        }
                    }
                }
                self.store(&a, r, o);
            }
        }

        /// A tile's sums into rows `r ..` at columns `o ..`, clipped to the row.
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn store<const R: usize, const V: usize>(
            &self,
            a: &[[__m256; V]; R],
            r: usize,
            o: usize,
        ) {
            unsafe {
                for (dr, row) in a.iter().enumerate() {
                    let dst = self.out.add((r + dr) * self.ow + o);
                    for (v, acc) in row.iter().enumerate() {
                        let m = (self.ow - o - v * LANES).min(LANES);
                        if m == LANES {
                            _mm256_storeu_ps(dst.add(v * LANES), *acc);
                        } else {
                            let mut buf = [0f32; LANES];
                            _mm256_storeu_ps(buf.as_mut_ptr(), *acc);
                            std::ptr::copy_nonoverlapping(buf.as_ptr(), dst.add(v * LANES), m);
                        }
                    }
                }
            }
        }
    }

    /// [`super::forward_rows`] for a kernel `K` wide.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn forward_rows<const K: usize>(
        out: &mut [f32],
        x: &[f32],
        wt: &[f32],
        g: &super::Geometry,
    ) {
        let (c, pad) = (g.cin, g.p.padding);
        for oy in 0..g.oh {
            // The kernel rows that land inside the input, with their input row.
            let rows: Vec<(usize, usize)> = (0..g.kh)
                .filter_map(|i| super::tap_in(oy, i, g, g.h).map(|iy| (i, iy)))
                .collect();
            let mut ox = 0;
            while ox < g.ow {
                let rn = (g.ow - ox).min(8);
                // Columns `col` of the span read input column `ox + col − pad`.
                let lo = pad.saturating_sub(ox);
                let hi = (g.w + pad).saturating_sub(ox);
                let span = Span {
                    out: out[(oy * g.ow + ox) * c..].as_mut_ptr(),
                    x: x.as_ptr(),
                    wt: wt.as_ptr(),
                    rows: &rows,
                    c,
                    kw: g.kw,
                    w: g.w,
                    first: ox as isize - pad as isize,
                    cols: (lo, hi),
                };
                for ch in (0..c).step_by(LANES) {
                    unsafe {
                        match rn {
                            8 => span.run::<K, 8>(ch),
                            7 => span.run::<K, 7>(ch),
                            6 => span.run::<K, 6>(ch),
                            5 => span.run::<K, 5>(ch),
                            4 => span.run::<K, 4>(ch),
                            3 => span.run::<K, 3>(ch),
                            2 => span.run::<K, 2>(ch),
                            _ => span.run::<K, 1>(ch),
                        }
                    }
                }
                ox += rn;
            }
        }
    }

    /// Up to eight output pixels of one row, channels-last.
    struct Span<'a> {
        out: *mut f32,
        x: *const f32,
        wt: *const f32,
        /// (kernel row, input row) of the kernel rows inside the input.
        rows: &'a [(usize, usize)],
        c: usize,
        kw: usize,
        w: usize,
        /// The input column of the span's column 0 (negative in the padding).
        first: isize,
        /// The span's columns `lo .. hi` lie inside the input.
        cols: (usize, usize),
    }

    impl Span<'_> {
        /// Channels `ch .. ch + LANES` of `R` outputs.
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn run<const K: usize, const R: usize>(&self, ch: usize) {
            let mut acc = [_mm256_setzero_ps(); R];
            let (lo, hi) = self.cols;
            unsafe {
                for &(i, iy) in self.rows {
                    let wr = self.wt.add(i * self.kw * self.c + ch);
                    let wv: [__m256; K] =
                        std::array::from_fn(|j| _mm256_loadu_ps(wr.add(j * self.c)));
                    let row = iy * self.w;
                    // Constant bounds: the loop unrolls and `acc` stays in
                    // registers; columns in the padding are skipped.
                    for col in 0..R + K - 1 {
                        if col < lo || col >= hi {
                            continue;
                        }
                        let ix = (self.first + col as isize) as usize;
                        let xv = _mm256_loadu_ps(self.x.add((row + ix) * self.c + ch));
                        for (j, wj) in wv.iter().enumerate() {
                            if col >= j && col - j < R {
                                acc[col - j] = _mm256_fmadd_ps(xv, *wj, acc[col - j]);
                            }
                        }
                    }
                }
                for (r, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(self.out.add(r * self.c + ch), *a);
                }
            }
        }
    }

    /// [`super::pixel_taps`]: blocks of 32 and 8 channels summed over
    /// every tap in registers, the last channels one at a time.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn pixel_taps(
        px: &mut [f32],
        st: &[f32],
        taps: &[(usize, usize)],
        wt: &[f32],
    ) {
        let (c, sp, wp) = (px.len(), st.as_ptr(), wt.as_ptr());
        let mut ch = 0;
        unsafe {
            while ch + 4 * LANES <= c {
                let mut a = [_mm256_setzero_ps(); 4];
                for &(w, rel) in taps {
                    let (x, wv) = (sp.add(rel + ch), wp.add(w + ch));
                    for (r, acc) in a.iter_mut().enumerate() {
                        let o = r * LANES;
                        *acc = _mm256_fmadd_ps(
                            _mm256_loadu_ps(wv.add(o)),
                            _mm256_loadu_ps(x.add(o)),
                            *acc,
                        );
                    }
                }
                for (r, acc) in a.iter().enumerate() {
                    _mm256_storeu_ps(px.as_mut_ptr().add(ch + r * LANES), *acc);
                }
                ch += 4 * LANES;
            }
            while ch + LANES <= c {
                let mut acc = _mm256_setzero_ps();
                for &(w, rel) in taps {
                    let (x, wv) = (sp.add(rel + ch), wp.add(w + ch));
                    acc = _mm256_fmadd_ps(_mm256_loadu_ps(wv), _mm256_loadu_ps(x), acc);
                }
                _mm256_storeu_ps(px.as_mut_ptr().add(ch), acc);
                ch += LANES;
            }
            for (k, v) in px.iter_mut().enumerate().skip(ch) {
                *v = taps
                    .iter()
                    .map(|&(w, rel)| *wp.add(w + k) * *sp.add(rel + k))
                    .sum();
            }
        }
    }

    /// [`super::dot_taps`] for `G` taps. Alternate blocks go to two sets of
    /// accumulators, so that `2·G` chains of additions run side by side
    /// (one chain per tap would wait on the latency of each addition).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_taps<const G: usize>(
        acc: &mut [([f32; LANES], f32)],
        src: &[f32],
        dy: &[f32],
        ow: usize,
        first: &[usize],
        step: usize,
    ) {
        let (sp, whole) = (src.as_ptr(), ow / LANES);
        let mut even = [_mm256_setzero_ps(); G];
        let mut odd = [_mm256_setzero_ps(); G];
        let mut tails = [0f32; G];
        unsafe {
            for (oy, grad) in dy.chunks_exact(ow).enumerate() {
                let rows: [*const f32; G] = std::array::from_fn(|t| sp.add(first[t] + oy * step));
                let gp = grad.as_ptr();
                let mut b = 0;
                while b + 1 < whole {
                    let (g0, g1) = (
                        _mm256_loadu_ps(gp.add(b * LANES)),
                        _mm256_loadu_ps(gp.add((b + 1) * LANES)),
                    );
                    for t in 0..G {
                        even[t] =
                            _mm256_fmadd_ps(g0, _mm256_loadu_ps(rows[t].add(b * LANES)), even[t]);
                        odd[t] = _mm256_fmadd_ps(
                            g1,
                            _mm256_loadu_ps(rows[t].add((b + 1) * LANES)),
                            odd[t],
                        );
                    }
                    b += 2;
                }
                if b < whole {
                    let g0 = _mm256_loadu_ps(gp.add(b * LANES));
                    for t in 0..G {
                        even[t] =
                            _mm256_fmadd_ps(g0, _mm256_loadu_ps(rows[t].add(b * LANES)), even[t]);
                    }
                }
                for (x, &gv) in grad.iter().enumerate().skip(whole * LANES) {
                    for t in 0..G {
                        tails[t] += gv * *rows[t].add(x);
                    }
                }
            }
            for t in 0..G {
                let mut lanes = [0f32; LANES];
                _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(even[t], odd[t]));
                for (a, l) in acc[t].0.iter_mut().zip(lanes) {
                    *a += l;
                }
                acc[t].1 += tails[t];
            }
        }
    }
}

/// NCHW → NHWC (`rows` = C, `cols` = H·W per sample), or back with the two
/// swapped.
fn per_sample_transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut dst = vec![0f32; src.len()];
    let per = rows * cols;
    if per > 0 {
        dst.par_chunks_mut(per)
            .zip(src.par_chunks(per))
            .for_each(|(d, s)| transpose(s, rows, cols, d));
    }
    dst
}

/// `acc[c] += w[c] · v[c]` over one pixel's channels.
#[inline(always)]
fn axpy(acc: &mut [f32], w: &[f32], v: &[f32]) {
    for ((a, &w), &v) in acc.iter_mut().zip(w).zip(v) {
        *a += w * v;
    }
}

/// The input index `o·s + k·d − pad` along an axis, if inside `0..len`.
#[inline(always)]
fn tap_in(o: usize, k: usize, g: &Geometry, len: usize) -> Option<usize> {
    (o * g.p.stride + k * g.p.dilation)
        .checked_sub(g.p.padding)
        .filter(|&v| v < len)
}

/// The output index whose tap `k` reads input `i` along an axis, if any.
#[inline(always)]
fn tap_out(i: usize, k: usize, g: &Geometry, out: usize) -> Option<usize> {
    let t = (i + g.p.padding).checked_sub(k * g.p.dilation)?;
    (t % g.p.stride == 0 && t / g.p.stride < out).then_some(t / g.p.stride)
}

// The channels-last path (maps up to `NHWC_MAX_PIXELS`): one pixel's
// channels are contiguous, so every tap is a vector multiply-add over the
// channels. The weights go to `[taps, C]`; inputs and outputs are
// transposed on the way in and out.

/// Which way a channels-last depthwise pass maps its taps: the forward pass
/// sums the input under each output pixel; the input gradient, the same sum
/// taken the other way, sums the output gradient over the pixels each input
/// pixel fed.
#[derive(Clone, Copy)]
enum Dir {
    Forward,
    BackwardData,
}

impl Dir {
    /// The `(height, width)` of the map read and of the map written.
    fn sides(self, g: &Geometry) -> ((usize, usize), (usize, usize)) {
        let (input, output) = ((g.h, g.w), (g.oh, g.ow));
        match self {
            Dir::Forward => (input, output),
            Dir::BackwardData => (output, input),
        }
    }

    /// Along one axis, the index read by tap `k` of written index `d`, in a
    /// read axis of `len`.
    fn read(self, d: usize, k: usize, g: &Geometry, len: usize) -> Option<usize> {
        match self {
            Dir::Forward => tap_in(d, k, g, len),
            Dir::BackwardData => tap_out(d, k, g, len),
        }
    }
}

/// The taps of one written pixel in a channels-last pass: `(w, rel)`, the
/// tap's weights at `w` in `[taps, C]` and the pixel it reads at `rel` in
/// the map read; `reach` the largest `rel`. Taps that fall in the padding
/// are left out (on a 2×2 map, 21 of a 5×5 kernel's 25).
#[derive(Default)]
struct PixelTaps {
    taps: Vec<(usize, usize)>,
    reach: usize,
}

/// A channels-last depthwise pass: `y` from `x` (forward) or `dx` from `dy`
/// (backward-data), NCHW in and out, one sample at a time through buffers
/// that stay in cache: its map transposed channels-last, the pixels
/// written, transposed back into `dst`.
fn depthwise_nhwc(src: &[f32], w: &[f32], g: &Geometry, dst: &mut [f32], dir: Dir) {
    let (c, kk) = (g.cin, g.kh * g.kw);
    let ((sh, sw), (dh, dw)) = dir.sides(g);
    let (per_src, per_dst) = (c * sh * sw, c * dh * dw);
    if per_src == 0 || per_dst == 0 {
        return;
    }
    let wt = per_sample_transpose(w, c, kk);
    let lists: Vec<PixelTaps> = (0..dh * dw)
        .map(|yx| {
            let (y, x) = (yx / dw, yx % dw);
            let mut list = PixelTaps::default();
            for i in 0..g.kh {
                let Some(sy) = dir.read(y, i, g, sh) else {
                    continue;
                };
                for j in 0..g.kw {
                    if let Some(sx) = dir.read(x, j, g, sw) {
                        let rel = (sy * sw + sx) * c;
                        list.taps.push(((i * g.kw + j) * c, rel));
                        list.reach = list.reach.max(rel);
                    }
                }
            }
            list
        })
        .collect();
    let by_rows = matches!(dir, Dir::Forward) && rows_apply(g);
    dst.par_chunks_mut(per_dst)
        .zip(src.par_chunks(per_src))
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(read, written): &mut (Vec<f32>, Vec<f32>), (dst, src)| {
                read.resize(per_src, 0.0);
                written.resize(per_dst, 0.0);
                transpose(src, c, sh * sw, read);
                if !(by_rows && forward_rows(written, read, &wt, g)) {
                    for (px, list) in written.chunks_exact_mut(c).zip(&lists) {
                        pixel_taps(px, read, list, &wt);
                    }
                }
                transpose(written, dh * dw, c, dst);
            },
        );
}

/// Whether [`forward_rows`] runs the channels-last forward pass of `g`:
/// stride and dilation 1, a kernel 3 or 5 wide, rows of at least 4
/// pixels, whole blocks of [`LANES`] channels, AVX2 and FMA.
pub(super) fn rows_apply(g: &Geometry) -> bool {
    let p = g.p;
    p.stride == 1
        && p.dilation == 1
        && matches!(g.kw, 3 | 5)
        && g.ow >= 4
        && g.cin.is_multiple_of(LANES)
        && avx2_fma()
}

/// The channels-last forward pass of one sample along output rows: for
/// each block of [`LANES`] channels, up to eight pixels of a row summed in
/// registers, each input pixel loaded once per kernel row and multiplied
/// by the `kw` weights (held in registers) of the outputs it feeds, where
/// [`pixel_taps`] loads a weight and an input for every product. Taps
/// outside the input are skipped, rows and columns alike. `false` where
/// [`rows_apply`] does not hold (nothing written).
fn forward_rows(out: &mut [f32], x: &[f32], wt: &[f32], g: &Geometry) -> bool {
    let c = g.cin;
    if !rows_apply(g) {
        return false;
    }
    assert!(x.len() >= g.hw() * c && out.len() >= g.ohw() * c && wt.len() >= g.kh * g.kw * c);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `rows_apply` checked AVX2 and FMA; the lengths are asserted
    // above, and `avx::forward_rows` reads only input pixels inside the
    // `h × w` map and writes only the `oh × ow` output pixels.
    unsafe {
        match g.kw {
            3 => avx::forward_rows::<3>(out, x, wt, g),
            _ => avx::forward_rows::<5>(out, x, wt, g),
        }
    }
    true
}

/// One written pixel of [`depthwise_nhwc`]: `px[ch] = Σ wt[w + ch]·st[rel +
/// ch]` over its taps.
fn pixel_taps(px: &mut [f32], st: &[f32], list: &PixelTaps, wt: &[f32]) {
    let c = px.len();
    assert!(
        list.reach + c <= st.len() && list.taps.iter().all(|&(w, _)| w + c <= wt.len())
            || list.taps.is_empty()
    );
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA, and every read is in `st` or
        // `wt`.
        return unsafe { avx::pixel_taps(px, st, &list.taps, wt) };
    }
    for (ch, v) in px.iter_mut().enumerate() {
        *v = list
            .taps
            .iter()
            .map(|&(w, rel)| wt[w + ch] * st[rel + ch])
            .sum();
    }
}

fn depthwise_backward_weight_nhwc(x: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    let (c, kk) = (g.cin, g.kh * g.kw);
    let xt = per_sample_transpose(x, c, g.hw());
    let gt = per_sample_transpose(dy, c, g.ohw());
    let total = sum_in_parts(g.n, kk * c, |samples, acc| {
        for n in samples {
            dw_backward_weight_sample_nhwc(acc, n, &xt, &gt, g);
        }
    });
    per_sample_transpose(&total, kk, c)
}

/// Adds sample `n`'s channels-last weight gradient `[taps, C]` to `acc`.
#[multiversion(targets = "simd")]
fn dw_backward_weight_sample_nhwc(acc: &mut [f32], n: usize, xt: &[f32], gt: &[f32], g: &Geometry) {
    let c = g.cin;
    for oy in 0..g.oh {
        for i in 0..g.kh {
            let Some(iy) = tap_in(oy, i, g, g.h) else {
                continue;
            };
            let src_row = &xt[(n * g.h + iy) * g.w * c..][..g.w * c];
            for ox in 0..g.ow {
                let grad = &gt[((n * g.oh + oy) * g.ow + ox) * c..][..c];
                for j in 0..g.kw {
                    if let Some(ix) = tap_in(ox, j, g, g.w) {
                        let a = &mut acc[(i * g.kw + j) * c..][..c];
                        axpy(a, grad, &src_row[ix * c..][..c]);
                    }
                }
            }
        }
    }
}
