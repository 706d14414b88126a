//! The weight gradient of convolutions with few weights and many pixels,
//! as dot products, two ways.
//!
//! [`in_place`], for the stems (dense convs from at most 4 input channels
//! with kernels of 9 taps or more, over output maps of 256 pixels or more:
//! 3×3 to 7×7 from RGB): each input plane is copied once into its
//! zero-padded, stride-phased layout, where every tap reads a contiguous
//! run of cells along an output row, and `dy` is read where it lies; no
//! im2col columns are written. A tile of output channels × taps keeps its
//! partial sums in registers over a sample's rows (4 × 5 vectors of 16
//! with AVX-512, 3 × 3 vectors of 8 with AVX2). Measured on an AMD EPYC
//! Zen 4 (`benches/conv.rs --size 64 --batch 32`, 2 threads, ms, against
//! the gemm or [`accumulate`] it replaced): resnet18's 7×7/2 stem 6.1 →
//! 3.4 (AVX-512) and 3.6 (AVX2); EfficientNet's 3×3/2 stem 0.47 → 0.35.
//!
//! [`accumulate`], for other gradients of at most 4 Ki floats over 1,024
//! pixels or more per call: `dW (M × K) += dy (M × P) · columnsᵀ (P × K)`
//! is a gemm whose output is a few hundred floats and whose reduction runs
//! over thousands of pixels. A packed gemm spends much of its time copying
//! both operands into panels for so little output; here both operands are
//! read where they lie, each row contiguous over pixels. A micro-kernel
//! keeps a tile of 2 rows of `dy` × 6 rows of the columns as twelve
//! vectors of eight partial sums, loading eight pixels of each of the eight
//! rows per step (eight loads for twelve multiply-adds). Pixels go in
//! blocks of 1,024: a block's six column rows stay in L1 while every row of
//! `dy` passes over them, the partial sums kept per cell between blocks and
//! added across at the end. (Before [`in_place`], it took simple_cnn's
//! first conv at 64², batch 32, from 3.2 to 2.0–2.2 ms on a Zen 3.)
//!
//! Sums run in a fixed order: results are bit-identical from run to run.

use super::conv::{Geometry, padded_buffer};
use super::isa::{Isa, isa};
use super::{avx2_fma, sum_in_parts};

/// Rows of `dy` in a tile.
const MR: usize = 2;
/// Rows of the columns in a tile.
const KR: usize = 6;
/// Pixels per block: a block of six column rows (12 KiB) stays in L1.
const BLOCK: usize = 1024;

/// Whether [`accumulate`] runs the backward-weights gemm of an `m × k`
/// gradient summed over `len` pixels per call: a CPU with AVX2 and FMA, a
/// gradient of at most 4 Ki floats, and at least 1,024 pixels per call.
pub(super) fn takes(m: usize, k: usize, len: usize) -> bool {
    avx2_fma() && m * k <= 1 << 12 && len >= 1024
}

/// `dst[i·dst_rs + j] += Σ_t a[i·a_rs + t] · b[j·b_rs + t]` for `i < m`,
/// `j < k`, `t < len`. Only on a CPU with AVX2 and FMA ([`takes`]).
pub(super) fn accumulate(
    (m, k, len): (usize, usize, usize),
    (a, a_rs): (&[f32], usize),
    (b, b_rs): (&[f32], usize),
    dst: &mut [f32],
    dst_rs: usize,
) {
    if m == 0 || k == 0 || len == 0 {
        return;
    }
    assert!((m - 1) * a_rs + len <= a.len(), "wgrad: a out of bounds");
    assert!((k - 1) * b_rs + len <= b.len(), "wgrad: b out of bounds");
    assert!(
        (m - 1) * dst_rs + k <= dst.len(),
        "wgrad: dst out of bounds"
    );
    assert!(avx2_fma(), "wgrad: needs AVX2 and FMA");
    // Eight partial sums per cell, over the rows and columns rounded up to
    // whole tiles (an edge tile's clamped rows and columns land in the
    // cells past `m` and `k`, which are never read).
    let (mp, kp) = (m + MR - 1, k + 2);
    let mut sums = vec![0f32; mp * kp * 8];
    let whole = len / 8 * 8;
    #[cfg(target_arch = "x86_64")]
    for t0 in (0..whole).step_by(BLOCK) {
        let n = BLOCK.min(whole - t0);
        for j0 in (0..k).step_by(KR) {
            let kr = KR.min(k - j0);
            for i0 in (0..m).step_by(MR) {
                let mr = MR.min(m - i0);
                let rows = |i: usize| a[(i0 + i).min(m - 1) * a_rs + t0..].as_ptr();
                // A block of fewer than six columns runs as tiles of three,
                // the last one's missing columns clamped to column k − 1.
                let mut j = j0;
                while j < j0 + kr {
                    let width = if j0 + kr - j == KR { KR } else { 3 };
                    let cols = |c: usize| b[(j + c).min(k - 1) * b_rs + t0..].as_ptr();
                    let cells = sums[(i0 * kp + j) * 8..].as_mut_ptr();
                    // SAFETY: AVX2 and FMA are present (asserted above);
                    // every pointer starts a run of `n` floats inside its
                    // slice (the bounds asserted above, rows and columns
                    // clamped to the last), and the tile's cells, rows
                    // `i0 .. i0 + MR` and columns `j .. j + width`, lie
                    // inside `sums` (`i0 + MR ≤ mp`, `j + width ≤ kp`).
                    unsafe {
                        match (mr == MR, width == KR) {
                            (true, true) => avx::tile::<MR, KR>(rows, cols, n, cells, kp),
                            (true, false) => avx::tile::<MR, 3>(rows, cols, n, cells, kp),
                            (false, true) => avx::tile::<1, KR>(rows, cols, n, cells, kp),
                            (false, false) => avx::tile::<1, 3>(rows, cols, n, cells, kp),
                        }
                    }
                    j += width;
                }
            }
        }
    }
    for i in 0..m {
        for j in 0..k {
            let lanes = &sums[(i * kp + j) * 8..][..8];
            // Pairwise, in a fixed order.
            let half: [f32; 4] = std::array::from_fn(|l| lanes[l] + lanes[l + 4]);
            let mut s = (half[0] + half[2]) + (half[1] + half[3]);
            for t in whole..len {
                s += a[i * a_rs + t] * b[j * b_rs + t];
            }
            dst[i * dst_rs + j] += s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    /// `cells(i, j) += Σ_{t < n} a(i)[t] · b(j)[t]` lane by lane for
    /// `i < M`, `j < K`, where `cells(i, j)` is the eight floats at
    /// `cells + (i·kp + j)·8` and `n` is a multiple of 8.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const M: usize, const K: usize>(
        a: impl Fn(usize) -> *const f32,
        b: impl Fn(usize) -> *const f32,
        n: usize,
        cells: *mut f32,
        kp: usize,
    ) {
        let mut ap = [std::ptr::null::<f32>(); M];
        for (i, p) in ap.iter_mut().enumerate() {
            *p = a(i);
        }
        let mut bp = [std::ptr::null::<f32>(); K];
        for (j, p) in bp.iter_mut().enumerate() {
            *p = b(j);
        }
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); K]; M];
            for (i, row) in acc.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(cells.add((i * kp + j) * 8));
                }
            }
            let mut t = 0;
            while t < n {
                let mut av = [_mm256_setzero_ps(); M];
                for (v, p) in av.iter_mut().zip(ap) {
                    *v = _mm256_loadu_ps(p.add(t));
                }
                for (j, p) in bp.iter().enumerate() {
                    let bv = _mm256_loadu_ps(p.add(t));
                    for (row, v) in acc.iter_mut().zip(av) {
                        row[j] = _mm256_fmadd_ps(v, bv, row[j]);
                    }
                }
                t += 8;
            }
            for (i, row) in acc.iter().enumerate() {
                for (j, v) in row.iter().enumerate() {
                    _mm256_storeu_ps(cells.add((i * kp + j) * 8), *v);
                }
            }
        }
    }
}

/// Output channels × taps in a tile of [`in_place`] on `isa`'s path, as
/// its module's `in_place_tiles!` line sets them: with AVX-512, 20 sums of
/// 16 lanes + 4 + 5 loaded vectors in 32 registers (4 × 6, 34, spilled and
/// ran slower); with AVX2, 9 sums of 8 lanes + 3 + 3 in 16 (LLVM loads all
/// of a step's vectors before the multiply-adds).
fn tile_shape(isa: Isa) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if isa >= Isa::Avx512 {
            avx512::TILE
        } else {
            avx2::TILE
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("x86 kernels on another arch: {isa:?}")
}

/// Whether [`in_place`] runs the weight gradient of `g`: an AVX2 or
/// AVX-512 path and a shape [`fits_in_place`] takes.
pub(super) fn takes_in_place(g: &Geometry) -> bool {
    isa() >= Isa::Avx2 && fits_in_place(g)
}

/// The shapes [`in_place`] takes: dense ungrouped convs with a kernel of 9
/// taps or more, from at most 4 input channels (the stems: RGB,
/// grayscale, RGBA) over output maps of 256 pixels or more, or from at most
/// 32 over maps of 1,024 or more (simple_cnn's second conv, U-Net's
/// shallow convs). Measured against the gemm (`benches/conv.rs`, 2
/// threads, best of four or five, ms): simple_cnn's 32 → 64 at 32², batch
/// 32, 10.1 → 7.1, at 112², batch 4, 14.4 → 9.4; not from 64 channels
/// (its 64 → 128 at 16² 6.6 → 9.3, at 56² 11.1 → 11.5; resnet18's 3×3/2
/// from 56² 3.0 → 3.8), whose sums per tile over a short map do not pay
/// for the tile's setup and lane sums, and whose `dy` rows, read once per
/// input channel, leave L2. Not the 1×1 convs of many channels whose
/// weights per output channel are as few: a channel's one tap makes tiles
/// of one column (EfficientNet's 96 → 24 at 16² ran 2–4× slower than
/// through the gemm).
pub(super) fn fits_in_place(g: &Geometry) -> bool {
    let (cin, ohw) = (g.cin, g.ohw());
    let shape = (cin <= 4 && ohw >= 256) || (cin <= 32 && ohw >= 1024);
    g.p.groups == 1 && g.kh * g.kw >= 9 && g.n > 0 && shape
}

/// The weight gradient `[Cout, Cin, kh, kw]` of a stem as dot products
/// read in place, on the kernels' path ([`isa`]); see [`in_place_as`].
pub(super) fn in_place(x: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    in_place_as(x, dy, g, isa())
}

/// The weight gradient of a stem with `isa`'s dot products read in place:
/// each input plane is copied once into its zero-padded, stride-phased
/// layout ([`super::padded::Phased`]), where every tap reads a contiguous
/// run of cells along an output row, and a tile of output channels × taps
/// ([`tile_shape`]) keeps its partial sums in registers while it passes over
/// the sample's output rows. No im2col columns are written (resnet18's
/// 7×7/2 stem wrote 147 rows of 1,024 pixels, 600 KB, per sample), and
/// `dy` is read where it lies.
///
/// Measured (`benches/conv.rs --size 64 --batch 32`, 2 threads): see
/// docs/benchmarks.md, "On an AMD EPYC with AVX-512 (Zen 4)".
///
/// Samples split over threads ([`sum_in_parts`]); each tile's lanes are
/// summed in a fixed order: results are bit-identical from run to run.
pub(super) fn in_place_as(x: &[f32], dy: &[f32], g: &Geometry, isa: Isa) -> Vec<f32> {
    assert!(
        isa >= Isa::Avx2 && isa.available() && fits_in_place(g),
        "wgrad::in_place on {g:?} with {isa:?}"
    );
    let (m, taps, ohw, hw) = (g.cout, g.kh * g.kw, g.ohw(), g.hw());
    let k = g.cin * taps;
    assert!(x.len() >= g.n * g.cin * hw && dy.len() >= g.n * m * ohw);
    let (s, d, pad) = (g.p.stride, g.p.dilation, g.p.padding);
    let (mr_max, kr_max) = tile_shape(isa);
    sum_in_parts(g.n, m * k, |samples, acc| {
        // One padded buffer per part, every plane in the same layout: the
        // taps' offsets and the row step are the same for all of them.
        let mut padded = None;
        let (buf, rows) = padded_buffer(&mut padded, g);
        let step = buf.at(s, 0);
        let offs: Vec<usize> = (0..taps)
            .map(|t| buf.at(t / g.kw * d, t % g.kw * d))
            .collect();
        for n in samples {
            let dyn_ = &dy[n * m * ohw..][..m * ohw];
            for c in 0..g.cin {
                let plane = &x[(n * g.cin + c) * hw..][..hw];
                buf.fill(plane, (g.h, g.w), (pad, pad), rows);
                let src = buf.buf.as_slice();
                for i0 in (0..m).step_by(mr_max) {
                    let mr = mr_max.min(m - i0);
                    for t0 in (0..taps).step_by(kr_max) {
                        let kr = kr_max.min(taps - t0);
                        let at = i0 * k + c * taps + t0;
                        let a = (dyn_[i0 * ohw..].as_ptr(), ohw, mr);
                        let b = (src.as_ptr(), &offs[t0..t0 + kr], step);
                        let out = acc[at..].as_mut_ptr();
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: the path's instructions are present
                        // (asserted above). Rows `i0 .. i0 + mr` of `dy`
                        // hold `ohw` floats each; every tap's cell
                        // `offs[t] + oy·step + ox` for `oy < oh`, `ox < ow`
                        // lies inside the padded buffer (its rows and
                        // width cover every tap of every output pixel);
                        // the tile's cells `at + i·k + j`, `i < mr`,
                        // `j < kr`, lie in `acc`.
                        unsafe {
                            if isa >= Isa::Avx512 {
                                avx512::tiles(a, b, (g.oh, g.ow), out, k)
                            } else {
                                avx2::tiles(a, b, (g.oh, g.ow), out, k)
                            }
                        };
                        #[cfg(not(target_arch = "x86_64"))]
                        unreachable!("x86 kernels on another arch: {a:?} {b:?} {out:?}");
                    }
                }
            }
        }
    })
}

/// The tiles of [`in_place`] for one instruction set, over the module's
/// own vector helpers (`zero`, `first`, `load`, `load_first`, `fma`,
/// `sum`): `$lanes` floats a vector, tiles of `$mr` output channels (or
/// one, for the last few) × up to as many taps as `$k` lists (`1 2 … n`),
/// the shape [`tile_shape`] reads from `TILE`.
#[cfg(target_arch = "x86_64")]
macro_rules! in_place_tiles {
    ($feature:literal, $lanes:literal, $mr:literal, [$($k:literal)*]) => {
        /// Output channels × taps in a full tile.
        pub(super) const TILE: (usize, usize) = ($mr, [$($k),*].len());
        const _: () = {
            let ks = [$($k),*];
            let mut i = 0;
            while i < ks.len() {
                assert!(ks[i] == i + 1, "the taps of a tile count 1, 2, …");
                i += 1;
            }
        };

        /// `out[i·out_rs + j] += Σ_{oy, ox} a[i·a_rs + oy·ow + ox] ·
        /// b[offs[j] + oy·step + ox]` for `i < mr`, `j < offs.len()`.
        ///
        /// # Safety
        /// The module's instructions; every cell named above readable;
        /// `out` writable at every `i·out_rs + j`.
        #[target_feature(enable = $feature)]
        pub(super) unsafe fn tiles(
            (a, a_rs, mr): (*const f32, usize, usize),
            (b, offs, step): (*const f32, &[usize], usize),
            shape: (usize, usize),
            out: *mut f32,
            out_rs: usize,
        ) {
            let b = (b, offs, step);
            // SAFETY: the caller's contract; the rows of a short tile go
            // one at a time.
            unsafe {
                match (mr == $mr, offs.len()) {
                    $((true, $k) => tile::<$mr, $k>((a, a_rs), b, shape, out, out_rs),)*
                    $((false, $k) => {
                        for i in 0..mr {
                            let row = (a.add(i * a_rs), a_rs);
                            tile::<1, $k>(row, b, shape, out.add(i * out_rs), out_rs)
                        }
                    })*
                    _ => unreachable!("{} taps in a tile", offs.len()),
                }
            }
        }

        /// One tile over every row: the whole vectors of each row, then
        /// (a second pass, its own loop so that neither spills registers)
        /// the rest of each row under a mask.
        #[target_feature(enable = $feature)]
        #[inline]
        unsafe fn tile<const M: usize, const K: usize>(
            a: (*const f32, usize),
            b: (*const f32, &[usize], usize),
            (oh, ow): (usize, usize),
            out: *mut f32,
            out_rs: usize,
        ) {
            let (whole, rest) = (ow / $lanes, ow % $lanes);
            // SAFETY: the caller's contract.
            unsafe {
                if whole > 0 {
                    pass::<M, K, false>(a, b, (oh, ow), (0, whole), out, out_rs);
                }
                if rest > 0 {
                    pass::<M, K, true>(a, b, (oh, ow), (whole * $lanes, rest), out, out_rs);
                }
            }
        }

        /// `out[i·out_rs + j] += Σ_oy Σ_ox a·b` over columns `x0 ..` of
        /// every row: `n` whole vectors, or (`MASKED`) one vector of `n`
        /// columns.
        #[target_feature(enable = $feature)]
        #[inline(never)]
        unsafe fn pass<const M: usize, const K: usize, const MASKED: bool>(
            (a, a_rs): (*const f32, usize),
            (b, offs, step): (*const f32, &[usize], usize),
            (oh, ow): (usize, usize),
            (x0, n): (usize, usize),
            out: *mut f32,
            out_rs: usize,
        ) {
            let mut acc = [[zero(); K]; M];
            let mask = first(if MASKED { n } else { $lanes });
            let vectors = if MASKED { 1 } else { n };
            let get = |p: *const f32| {
                // SAFETY: the caller's contract: a whole vector, or `n`
                // columns under the mask.
                unsafe { if MASKED { load_first(mask, p) } else { load(p) } }
            };
            // SAFETY: the caller's contract.
            unsafe {
                for oy in 0..oh {
                    let ar = a.add(oy * ow + x0);
                    let br = b.add(oy * step + x0);
                    for v in 0..vectors {
                        let ox = v * $lanes;
                        let mut av = [zero(); M];
                        for (i, r) in av.iter_mut().enumerate() {
                            *r = get(ar.add(i * a_rs + ox));
                        }
                        for (j, &o) in offs[..K].iter().enumerate() {
                            let bv = get(br.add(o + ox));
                            for (row, &r) in acc.iter_mut().zip(&av) {
                                row[j] = fma(r, bv, row[j]);
                            }
                        }
                    }
                }
                for (i, row) in acc.iter().enumerate() {
                    for (j, v) in row.iter().enumerate() {
                        *out.add(i * out_rs + j) += sum(*v);
                    }
                }
            }
        }
    };
}

/// [`in_place`]'s AVX-512 tiles: 4 output channels × 5 taps, 20 sums of 16
/// lanes.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    in_place_tiles!("avx512f", 16, 4, [1 2 3 4 5]);

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn zero() -> __m512 {
        _mm512_setzero_ps()
    }

    /// The mask of the first `n ≤ 16` lanes.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn first(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as u16
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: the caller's: 16 floats readable at `p`.
        unsafe { _mm512_loadu_ps(p) }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load_first(mask: __mmask16, p: *const f32) -> __m512 {
        // SAFETY: the caller's: the masked lanes readable at `p` (the
        // others are not read).
        unsafe { _mm512_maskz_loadu_ps(mask, p) }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }

    /// The sum of the 16 lanes, in a fixed order, by 512-bit shuffles
    /// only: `_mm512_reduce_add_ps` goes through 256- and 128-bit adds,
    /// whose VEX forms reach only registers 0–15 without AVX-512VL, and so
    /// kept the tile's sums out of registers 16–31 (spilled to the stack).
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn sum(v: __m512) -> f32 {
        let t = _mm512_add_ps(v, _mm512_shuffle_f32x4::<0b01_00_11_10>(v, v));
        let t = _mm512_add_ps(t, _mm512_shuffle_f32x4::<0b10_11_00_01>(t, t));
        let t = _mm512_add_ps(t, _mm512_permute_ps::<0b01_00_11_10>(t));
        let t = _mm512_add_ps(t, _mm512_permute_ps::<0b10_11_00_01>(t));
        _mm512_cvtss_f32(t)
    }
}

/// [`in_place`]'s AVX2 tiles: 3 output channels × 3 taps, 9 sums of 8
/// lanes (with the 3 + 3 vectors loaded, 15 of the 16 registers).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    in_place_tiles!("avx2,fma", 8, 3, [1 2 3]);

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn zero() -> __m256 {
        _mm256_setzero_ps()
    }

    /// The mask of the first `n ≤ 8` lanes.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn first(n: usize) -> __m256i {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: the caller's: 8 floats readable at `p`.
        unsafe { _mm256_loadu_ps(p) }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load_first(mask: __m256i, p: *const f32) -> __m256 {
        // SAFETY: the caller's: the masked lanes readable at `p` (the
        // others are not read).
        unsafe { _mm256_maskload_ps(p, mask) }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }

    /// The sum of the 8 lanes, in a fixed order.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn sum(v: __m256) -> f32 {
        let t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let t = _mm_add_ps(t, _mm_movehl_ps(t, t));
        let t = _mm_add_ss(t, _mm_shuffle_ps::<0b01>(t, t));
        _mm_cvtss_f32(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_sums_on_every_edge() {
        if !avx2_fma() {
            return;
        }
        // Rows and columns that fill whole tiles, leave 1–5 over, and pixel
        // counts over one block with a tail of single pixels.
        for (m, k, len) in [
            (4, 12, 1024),
            (3, 7, 1037),
            (1, 5, 8),
            (5, 4, 515),
            (2, 2, 3),
        ] {
            let (a_rs, b_rs, dst_rs) = (len + 3, len + 1, k + 2);
            let a: Vec<f32> = (0..m * a_rs)
                .map(|v| ((v * 7919) % 23) as f32 - 11.0)
                .collect();
            let b: Vec<f32> = (0..k * b_rs)
                .map(|v| ((v * 104729) % 19) as f32 - 9.0)
                .collect();
            let mut dst: Vec<f32> = (0..m * dst_rs).map(|v| v as f32).collect();
            let before = dst.clone();
            accumulate((m, k, len), (&a, a_rs), (&b, b_rs), &mut dst, dst_rs);
            for i in 0..m {
                for j in 0..dst_rs {
                    // Small integers: every sum is exact in f32.
                    let want = if j < k {
                        before[i * dst_rs + j]
                            + (0..len)
                                .map(|t| a[i * a_rs + t] * b[j * b_rs + t])
                                .sum::<f32>()
                    } else {
                        before[i * dst_rs + j]
                    };
                    assert_eq!(dst[i * dst_rs + j], want, "{m}×{k}×{len} at ({i}, {j})");
                }
            }
        }
    }
}
