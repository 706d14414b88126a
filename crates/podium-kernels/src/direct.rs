//! Direct dense convolution: the forward pass (and, through it, the input
//! gradient of stride-1 convolutions) without an im2col matrix.
//!
//! Each input plane is copied once into a zero-padded buffer split into
//! `s × s` phase planes by the stride `s` ([`Planes`]): padded cell
//! `(r, c)` lies in phase plane `(r % s, c % s)` at `(r / s, c / s)`. In
//! that layout the input cell that tap `(i, j)` of a kernel reads for
//! output pixel `(oy, ox)` lies at `offset(channel, i, j) + oy·wq + ox`,
//! where `wq` is a phase plane's width: for every tap, the output pixels
//! taken row after row (each row padded by `wq − ow` cells that are
//! computed and thrown away) read one contiguous run of the buffer. The
//! convolution is then a matrix product `W (Cout × K) · B (K × oh·wq)`
//! whose row `k = (channel, i, j)` of `B` is the buffer shifted by
//! `offset(k)`: a gemm micro-kernel reads `B` in place, where im2col would
//! write `K × oh·ow` cells first and the gemm would copy them once more
//! into its packed panels.
//!
//! The micro-kernel holds a tile of 6 output channels × 16 pixels in
//! twelve AVX registers and sums up to 256 rows of `K` per pass (AVX2 +
//! FMA, detected at run time; elsewhere [`plan`] says no and the im2col
//! path runs). A row that does not end on a whole tile ends in a masked
//! one, so the tiles can write straight into the output.
//!
//! The input gradient of a stride-1 convolution is itself a stride-1
//! convolution of the output gradient, with the kernel flipped and its
//! input and output channels swapped, and padding `d·(k − 1) − p`
//! ([`backward_data`]).

use rayon::prelude::*;

use super::conv::Geometry;
use super::isa::{Isa, isa};
use super::padded::split_row;

/// Output channels in one micro-kernel tile.
const MR: usize = 6;
/// Pixels in one micro-kernel tile: two AVX registers.
const NR: usize = 16;

/// The layout [`forward`] runs `g` with, if it takes `g`: on a CPU with
/// AVX2 and FMA, one group, a
/// kernel larger than 1×1 (a 1×1 conv's im2col is its input, or a strided
/// gather of it), at least nine tenths of the computed pixels kept (each
/// row widened to `wq`, or split into whole tiles: 16², 28², 32², 56² and
/// 112² maps, not 14² or the 2² – 8² maps at the end of a network, where
/// the im2col path puts several samples side by side), and for a strided
/// kernel, few enough input channels that one pass sums them all (the
/// stems). Measured against the im2col path (`benches/conv.rs`, resnet18
/// and efficientnet_b0 shapes at 64² and 224²): 10–40 % faster on the
/// convs it takes, 5–17 % slower on 14² maps and on resnet18's strided
/// 3×3 from 64 channels, which it leaves.
pub(super) fn plan(g: &Geometry) -> Option<Planes> {
    plan_for(g, isa())
}

/// [`plan`] for the kernels of `isa` (the AVX2 or the AVX-512 tiles), where
/// this CPU runs them.
pub(super) fn plan_for(g: &Geometry, isa: Isa) -> Option<Planes> {
    if isa < Isa::Avx2 || !isa.available() {
        return None;
    }
    if g.p.groups != 1 || g.n == 0 || g.ohw() == 0 || g.cin == 0 || g.kh * g.kw == 1 {
        return None;
    }
    if g.p.stride > 1 && g.cin * g.kh * g.kw > KC {
        return None;
    }
    let mut l = Planes::new(g);
    if 10 * g.ohw() < 9 * l.tiles.len() * NR || !l.fits() {
        return None;
    }
    l.isa = isa;
    Some(l)
}

/// The input gradient of `g` as a forward convolution [`backward_data`]
/// runs: a stride-1 `g` whose flipped form ([`flipped`]) has a [`plan`].
pub(super) fn plan_backward_data(g: &Geometry) -> Option<(Geometry, Planes)> {
    plan_backward_data_for(g, isa())
}

/// [`plan_backward_data`] for the kernels of `isa`.
pub(super) fn plan_backward_data_for(g: &Geometry, isa: Isa) -> Option<(Geometry, Planes)> {
    let f = flipped(g)?;
    Some((f, plan_for(&f, isa)?))
}

/// The geometry of the input gradient of a stride-1 `g` as a forward
/// convolution: `dy` in, `dx` out, the same kernel size and dilation,
/// padding `d·(k − 1) − p` (square kernels; others, and paddings past the
/// kernel's reach, have none).
pub(super) fn flipped(g: &Geometry) -> Option<Geometry> {
    let p = g.p;
    if p.stride != 1 || p.groups != 1 || g.kh != g.kw {
        return None;
    }
    let reach = p.dilation * (g.kh - 1);
    let padding = reach.checked_sub(p.padding)?;
    let f = Geometry::new(
        [g.n, g.cout, g.oh, g.ow],
        [g.cin, g.cout, g.kh, g.kw],
        super::conv::ConvParams { padding, ..p },
    )
    .ok()?;
    (f.oh == g.h && f.ow == g.w).then_some(f)
}

/// The phase-plane layout of one sample's input for `g`.
pub(super) struct Planes {
    s: usize,
    /// Rows and columns of one phase plane.
    hq: usize,
    wq: usize,
    /// Floats per input channel: `s²` phase planes.
    channel: usize,
    /// Pixels per output channel in the layout: `oh·wq`.
    q: usize,
    /// The tiles, `[q_in, q_out, valid]`: pixels `q_in .. q_in + valid` of
    /// the layout, to be written at `q_out ..` of the output plane, whose
    /// rows are `ow` apart (`rowwise`) or `wq` apart (else: a scratch plane
    /// copied out row by row after).
    tiles: Vec<[u32; 3]>,
    rowwise: bool,
    /// `offset(k)` for `k = (channel, i, j)`, the order of a weight row.
    offsets: Vec<u32>,
    /// The buffer's length: every tile's reads stay inside it.
    len: usize,
    /// Whose tiles run: AVX2's (6 channels × 16 pixels) or AVX-512's (12
    /// channels × 2 tiles of 16 pixels).
    isa: Isa,
}

impl Planes {
    fn new(g: &Geometry) -> Planes {
        let (s, d) = (g.p.stride, g.p.dilation);
        let hq = g.oh - 1 + (g.kh - 1) * d / s + 1;
        let wq = g.ow - 1 + (g.kw - 1) * d / s + 1;
        let channel = s * s * hq * wq;
        let q = g.oh * wq;
        let (tiles, rowwise) = Planes::tiles(g.oh, g.ow, wq);
        let mut offsets = Vec::with_capacity(g.cin * g.kh * g.kw);
        for c in 0..g.cin {
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let (r, col) = (i * d, j * d);
                    let phase = (r % s) * s + col % s;
                    let at = c * channel + phase * hq * wq + r / s * wq + col / s;
                    offsets.push(at as u32);
                }
            }
        }
        let last = offsets.iter().max().map_or(0, |&o| o as usize);
        let len = (g.cin * channel).max(last + q + NR);
        Planes {
            s,
            hq,
            wq,
            channel,
            q,
            tiles,
            rowwise,
            offsets,
            len,
            isa: Isa::Avx2,
        }
    }

    /// The tiles that cover the `ow` pixels of each of `oh` rows `wq`
    /// apart, whichever way computes fewer: tiles along each row (rows of
    /// 16, 32 or 64 pixels waste nothing; a row's last tile is partial), or
    /// tiles straight across the layout, the `wq − ow` cells between rows
    /// included (better where a row ends just past a whole tile: 7, 14, 56).
    fn tiles(oh: usize, ow: usize, wq: usize) -> (Vec<[u32; 3]>, bool) {
        let across = (oh * wq).div_ceil(NR);
        if oh * ow.div_ceil(NR) <= across {
            let tiles = (0..oh)
                .flat_map(|oy| {
                    (0..ow).step_by(NR).map(move |x| {
                        let valid = (ow - x).min(NR);
                        [oy * wq + x, oy * ow + x, valid].map(|v| v as u32)
                    })
                })
                .collect();
            (tiles, true)
        } else {
            let tiles = (0..oh * wq)
                .step_by(NR)
                .map(|q| [q, q, (oh * wq - q).min(NR)].map(|v| v as u32))
                .collect();
            (tiles, false)
        }
    }

    /// Whether the offsets and pixel positions fit the `u32`s they are
    /// kept in.
    fn fits(&self) -> bool {
        self.len <= u32::MAX as usize
    }

    /// Copies sample `x` (`cin × h × w`) into `buf`, whose padding cells
    /// are zero and stay so (every sample writes the same cells).
    fn fill(&self, x: &[f32], g: &Geometry, buf: &mut [f32]) {
        let (s, pad, plane) = (self.s, g.p.padding, self.hq * self.wq);
        for (c, src) in x.chunks_exact(g.h * g.w).enumerate() {
            let dst = &mut buf[c * self.channel..][..self.channel];
            for (y, row) in src.chunks_exact(g.w).enumerate() {
                let r = y + pad;
                let (pr, rq) = (r % s, r / s);
                if rq >= self.hq {
                    break;
                }
                let phases = &mut dst[pr * s * plane + rq * self.wq..];
                split_row(row, phases, (s, plane, self.wq), pad);
            }
        }
    }
}

/// Weights packed for the micro-kernel: for each block of [`MR`] output
/// channels, `K` groups of [`MR`] weights (zeros past the last channel).
fn pack(w: &[f32], cout: usize, k: usize) -> Vec<f32> {
    let blocks = cout.div_ceil(MR);
    let mut a = vec![0f32; blocks * k * MR];
    for (co, row) in w.chunks_exact(k).take(cout).enumerate() {
        let (b, r) = (co / MR, co % MR);
        let dst = &mut a[b * k * MR..][..k * MR];
        for (kk, &v) in row.iter().enumerate() {
            dst[kk * MR + r] = v;
        }
    }
    a
}

/// Buffers one worker reuses from one work item to the next.
#[derive(Default)]
struct Scratch {
    planes: Vec<f32>,
    /// The sample now in `planes`.
    sample: Option<usize>,
    tile: Vec<f32>,
}

/// `y [N, Cout, oh, ow] = x ⊛ w` for a `g` and its [`plan`] `l`. Work
/// items are (sample, block of output channels), enough of them to give
/// every thread work even for one sample.
pub(super) fn forward(x: &[f32], w: &[f32], g: &Geometry, l: &Planes, y: &mut [f32]) {
    let k = g.cin * g.kh * g.kw;
    let a = pack(w, g.cout, k);
    // The rows one tile of the kernel sums.
    let unit = if l.isa == Isa::Avx512 { 2 * MR } else { MR };
    let blocks = g.cout.div_ceil(unit);
    let threads = rayon::current_num_threads().max(1);
    // Output-channel blocks per work item.
    let parts = threads.div_ceil(g.n).min(blocks).max(1);
    let per_part = blocks.div_ceil(parts) * unit;
    let (ohw, per) = (g.ohw(), g.cout * g.ohw());
    let xs = g.cin * g.hw();
    let items: Vec<(usize, usize, &mut [f32])> = y
        .chunks_mut(per)
        .enumerate()
        .flat_map(|(n, ys)| {
            ys.chunks_mut(per_part * ohw)
                .enumerate()
                .map(move |(part, c)| (n, part * per_part, c))
        })
        .collect();
    items
        .into_par_iter()
        .for_each_init(Scratch::default, |sc, (n, co0, ys)| {
            if sc.planes.len() != l.len {
                sc.planes.resize(l.len, 0.0);
            }
            if sc.sample != Some(n) {
                l.fill(&x[n * xs..][..xs], g, &mut sc.planes);
                sc.sample = Some(n);
            }
            let taps = (k, g.kh * g.kw);
            if l.rowwise {
                compute(l, &sc.planes, &a, taps, co0, ys, ohw);
                return;
            }
            let rows = ys.len() / ohw;
            sc.tile.clear();
            sc.tile.resize(rows * l.q, 0.0);
            compute(l, &sc.planes, &a, taps, co0, &mut sc.tile, l.q);
            for (r, out) in ys.chunks_exact_mut(ohw).enumerate() {
                let src = &sc.tile[r * l.q..];
                for (oy, dst) in out.chunks_exact_mut(g.ow).enumerate() {
                    dst.copy_from_slice(&src[oy * l.wq..][..g.ow]);
                }
            }
        });
}

/// Input channels summed per pass over a tile: about [`KC`] rows of `K`.
fn channels_per_pass(taps: usize) -> usize {
    (KC / taps).max(1)
}

/// Rows of `K` (channel × tap) summed per pass over a tile: one pass's
/// weights (`MR × KC`) and inputs (those channels' rows under [`QC`]
/// pixels) stay in L1 while every block of channels runs over them.
const KC: usize = 256;
/// Pixels per chunk: [`NR`]-wide tiles run across a chunk for one block of
/// output channels before the next block starts.
const QC: usize = 8 * NR;

/// Output channels `co0 ..` (as many as `out` has rows of `ldc`) at every
/// pixel of the layout's tiles. The sum over `K` runs in passes of [`KC`]
/// rows (whole channels), each pass over chunks of [`QC`] pixels, each
/// chunk for every block of [`MR`] output channels: the weights and inputs
/// of one pass and chunk stay in L1 while they are used.
fn compute(
    l: &Planes,
    planes: &[f32],
    a: &[f32],
    (k, taps): (usize, usize),
    co0: usize,
    out: &mut [f32],
    ldc: usize,
) {
    let rows = out.len() / ldc;
    let blocks = rows.div_ceil(MR);
    assert!(co0.is_multiple_of(MR) && planes.len() >= l.len && l.offsets.len() == k);
    assert!(a.len() >= (co0 / MR + blocks) * k * MR);
    let kc = channels_per_pass(taps) * taps;
    #[cfg(target_arch = "x86_64")]
    if l.isa == Isa::Avx512 {
        compute512(l, planes, a, (k, kc), co0, out, ldc);
        return;
    }
    for k0 in (0..k).step_by(kc) {
        let kn = kc.min(k - k0);
        let offsets = &l.offsets[k0..][..kn];
        for chunk in l.tiles.chunks(QC / NR) {
            for rb in 0..blocks {
                let panel = &a[(co0 / MR + rb) * k * MR + k0 * MR..][..kn * MR];
                let rn = (rows - rb * MR).min(MR);
                let block = &mut out[rb * MR * ldc..][..rn * ldc];
                for &[q_in, q_out, valid] in chunk {
                    let [q_in, q_out, valid] = [q_in, q_out, valid].map(|v| v as usize);
                    assert!(q_out + valid <= ldc && valid <= NR);
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `plan` checked AVX2 and FMA; every read
                    // `planes[offset + q_in ..][..NR]` lies below `l.len` (the
                    // largest offset plus `q + NR`), the panel holds `kn × MR`
                    // weights, and the tile touches `valid` cells from
                    // `q_out` in each of `rn` rows of `ldc`, inside `block`.
                    unsafe {
                        let args = (
                            panel.as_ptr(),
                            planes.as_ptr().add(q_in),
                            offsets,
                            (block.as_mut_ptr().add(q_out), ldc, rn, valid),
                            k0 > 0,
                        );
                        // A last block of 4 or 2 channels sums only those
                        // (32 channels: 34 rows of products, not 36).
                        match rn {
                            5.. => avx::tile::<MR>(args),
                            3..=4 => avx::tile::<4>(args),
                            _ => avx::tile::<2>(args),
                        }
                    };
                    #[cfg(not(target_arch = "x86_64"))]
                    unreachable!(
                        "plan() is None without AVX2: {}",
                        (panel, &block, q_in, q_out).0.len()
                    );
                }
            }
        }
    }
}

/// [`compute`] with the AVX-512 tiles: blocks of two [`MR`]-row panels
/// (12 output channels) over pairs of tiles (32 pixels), 24 of the 32
/// 512-bit registers holding sums.
#[cfg(target_arch = "x86_64")]
fn compute512(
    l: &Planes,
    planes: &[f32],
    a: &[f32],
    (k, kc): (usize, usize),
    co0: usize,
    out: &mut [f32],
    ldc: usize,
) {
    let rows = out.len() / ldc;
    let blocks = rows.div_ceil(MR);
    for k0 in (0..k).step_by(kc) {
        let kn = kc.min(k - k0);
        let offsets = &l.offsets[k0..][..kn];
        for chunk in l.tiles.chunks(QC / NR) {
            for rb in (0..blocks).step_by(2) {
                let panel = |b: usize| a[(co0 / MR + b) * k * MR + k0 * MR..][..kn * MR].as_ptr();
                let rn = (rows - rb * MR).min(2 * MR);
                // A block of 6 rows or fewer reads only its first panel.
                let (p0, p1) = (panel(rb), panel((rb + 1).min(blocks - 1)));
                let block = &mut out[rb * MR * ldc..][..rn * ldc];
                for pair in chunk.chunks(2) {
                    let t = |i: usize| pair[i.min(pair.len() - 1)].map(|v| v as usize);
                    let ([q0, o0, v0], [q1, o1, v1]) = (t(0), t(1));
                    assert!(o0 + v0 <= ldc && o1 + v1 <= ldc && v0 <= NR && v1 <= NR);
                    // SAFETY: `plan_for` checked that this CPU runs AVX-512F;
                    // every read `planes[offset + q ..][..NR]` lies below
                    // `l.len`, each panel holds `kn × MR` weights, and each
                    // tile touches `v` cells from `o` in each of `rn` rows of
                    // `ldc`, inside `block`.
                    unsafe {
                        let b = planes.as_ptr();
                        let o = block.as_mut_ptr();
                        let args = avx512::Args {
                            panels: [p0, p1],
                            b: [b.add(q0), b.add(q1)],
                            offsets,
                            out: [o.add(o0), o.add(o1)],
                            valid: [v0, v1],
                            ldc,
                            rows: rn,
                            accumulate: k0 > 0,
                        };
                        match (rn, pair.len()) {
                            (7.., 2) => avx512::tile::<12, 2>(args),
                            (7.., _) => avx512::tile::<12, 1>(args),
                            (5..=6, 2) => avx512::tile::<6, 2>(args),
                            (5..=6, _) => avx512::tile::<6, 1>(args),
                            (3..=4, 2) => avx512::tile::<4, 2>(args),
                            (3..=4, _) => avx512::tile::<4, 1>(args),
                            (_, 2) => avx512::tile::<2, 2>(args),
                            _ => avx512::tile::<2, 1>(args),
                        }
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// [`tile`]'s arguments: the two weight panels (rows `0..MR` and
    /// `MR..2·MR`), for each of up to two tiles its input `b`, output and
    /// valid pixels, the output's row stride and rows, and whether to add
    /// to what the output holds.
    pub(super) struct Args<'a> {
        pub panels: [*const f32; 2],
        pub b: [*const f32; 2],
        pub offsets: &'a [u32],
        pub out: [*mut f32; 2],
        pub valid: [usize; 2],
        pub ldc: usize,
        pub rows: usize,
        pub accumulate: bool,
    }

    /// `T` tiles of `R` rows: `out_t[r·ldc + p] (+)= Σ_k w(k, r) ·
    /// b_t[offsets[k] + p]` for `r < rows ≤ R ≤ 2·MR`, `p < valid_t ≤ NR`,
    /// where `w(k, r)` is `panels[r / MR][k·MR + r % MR]`; no other cell of
    /// the outputs is read or written. Sums `R` rows of products.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile<const R: usize, const T: usize>(a: Args) {
        debug_assert!(a.rows <= R && R <= 2 * MR && T <= 2);
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        let masks: [__mmask16; T] =
            std::array::from_fn(|t| ((1u32 << a.valid[t].min(NR)) - 1) as __mmask16);
        unsafe {
            if a.accumulate {
                for (r, row) in acc.iter_mut().enumerate().take(a.rows) {
                    for t in 0..T {
                        row[t] = _mm512_maskz_loadu_ps(masks[t], a.out[t].add(r * a.ldc));
                    }
                }
            }
            for (kk, &o) in a.offsets.iter().enumerate() {
                let bv: [__m512; T] =
                    std::array::from_fn(|t| _mm512_loadu_ps(a.b[t].add(o as usize)));
                for (r, row) in acc.iter_mut().enumerate() {
                    let w = *a.panels[r / MR].add(kk * MR + r % MR);
                    let av = _mm512_set1_ps(w);
                    for t in 0..T {
                        row[t] = _mm512_fmadd_ps(av, bv[t], row[t]);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate().take(a.rows) {
                for t in 0..T {
                    _mm512_mask_storeu_ps(a.out[t].add(r * a.ldc), masks[t], row[t]);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// [`tile`]'s arguments: the panel, `b`, the offsets, the output
    /// `(out, ldc, rows, valid)` and whether to add to it.
    type Args<'a> = (
        *const f32,
        *const f32,
        &'a [u32],
        (*mut f32, usize, usize, usize),
        bool,
    );

    /// One tile: `out[r·ldc + t] (+)= Σ_k panel[k·MR + r] · b[offsets[k] + t]`
    /// for `r < rows ≤ R ≤ MR`, `t < valid ≤ NR`, added to what `out` holds
    /// if `accumulate`; no other cell of `out` is read or written. Sums `R`
    /// rows of products.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const R: usize>(
        (panel, b, offsets, (out, ldc, rows, valid), accumulate): Args,
    ) {
        debug_assert!(rows <= R && R <= MR);
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let lanes = |from: i32| {
            let v = valid as i32 - from;
            _mm256_setr_epi32(
                -((v > 0) as i32),
                -((v > 1) as i32),
                -((v > 2) as i32),
                -((v > 3) as i32),
                -((v > 4) as i32),
                -((v > 5) as i32),
                -((v > 6) as i32),
                -((v > 7) as i32),
            )
        };
        let (m0, m1) = (lanes(0), lanes(NR as i32 / 2));
        let whole = valid == NR;
        unsafe {
            if accumulate {
                for (r, row) in acc.iter_mut().enumerate().take(rows) {
                    let src = out.add(r * ldc);
                    if whole {
                        row[0] = _mm256_loadu_ps(src);
                        row[1] = _mm256_loadu_ps(src.add(NR / 2));
                    } else {
                        row[0] = _mm256_maskload_ps(src, m0);
                        row[1] = _mm256_maskload_ps(src.add(NR / 2), m1);
                    }
                }
            }
            for (kk, &o) in offsets.iter().enumerate() {
                let p = b.add(o as usize);
                let b0 = _mm256_loadu_ps(p);
                let b1 = _mm256_loadu_ps(p.add(8));
                let ak = panel.add(kk * MR);
                for (r, row) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*ak.add(r));
                    row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                    row[1] = _mm256_fmadd_ps(av, b1, row[1]);
                }
            }
            for (r, row) in acc.iter().enumerate().take(rows) {
                let dst = out.add(r * ldc);
                if whole {
                    _mm256_storeu_ps(dst, row[0]);
                    _mm256_storeu_ps(dst.add(NR / 2), row[1]);
                } else {
                    _mm256_maskstore_ps(dst, m0, row[0]);
                    _mm256_maskstore_ps(dst.add(NR / 2), m1, row[1]);
                }
            }
        }
    }
}

/// The input gradient `dx [N, Cin, H, W]` of a stride-1 `g`, as the
/// forward convolution `(f, l)` ([`plan_backward_data`]) of `dy` with the
/// kernel flipped and transposed.
pub(super) fn backward_data(
    dy: &[f32],
    w: &[f32],
    g: &Geometry,
    (f, l): &(Geometry, Planes),
    dx: &mut [f32],
) {
    forward(dy, &flip(w, g), f, l, dx);
}

/// The weights of the input gradient of `g` as a forward convolution:
/// `[Cin, Cout, kh, kw]`, each kernel turned by 180°.
pub(super) fn flip(w: &[f32], g: &Geometry) -> Vec<f32> {
    let (kh, kw) = (g.kh, g.kw);
    let taps = kh * kw;
    let mut wf = vec![0f32; w.len()];
    for co in 0..g.cout {
        for ci in 0..g.cin {
            let src = &w[(co * g.cin + ci) * taps..][..taps];
            let dst = &mut wf[(ci * g.cout + co) * taps..][..taps];
            for i in 0..kh {
                for j in 0..kw {
                    dst[(kh - 1 - i) * kw + (kw - 1 - j)] = src[i * kw + j];
                }
            }
        }
    }
    wf
}
