//! Channels-last implicit gemm: dense convolutions on small maps (the
//! 2² – 14² maps at the end of a network), where neither im2col nor the
//! [`super::direct`] kernel's row tiles use the machine well.
//!
//! The input is copied once into zero-padded channels-last planes
//! (`[N, hp, wp, Cin]`). There, the `Cin` inputs that tap `(i, j)` reads
//! for output pixel `(oy, ox)` lie side by side, at
//! `base(oy, ox) + offset(i, j)`. A micro-kernel computes a tile of six
//! output pixels × 16 output channels: for each tap and input channel it
//! loads 16 weights (two AVX registers), broadcasts the six pixels' inputs
//! and adds twelve products, the sums staying in registers for a pass over
//! every tap and some input channels (as many rows of K as keep the
//! tile's weights within half of L1: 256 on a Zen 3). With AVX-512 a tile
//! covers up to four blocks of 16 channels, one zmm register each (24
//! sums). The six pixels of a tile are any six: each has its own base,
//! so tiles run across rows and samples and waste nothing on an 8-wide or
//! 2-wide map, and stride and dilation are only a matter of bases and
//! offsets.
//!
//! Pixels near the border read padding on some taps (on a 2² map with a
//! 3×3 kernel, 20 of every 36 products are of padding). The pixels of a
//! chunk are grouped by the taps they read inside the input, each tile
//! takes pixels of one group (the group's last tile is short: 1 to 6
//! pixels, a kernel for each count) and runs only their taps: 44 % of a
//! 3×3 conv's products on 2² maps, 69 % on 4², 84 % on 8².
//!
//! Tiles write `[pixel][16 channels]` into a scratch buffer (each pass
//! adding to the last), copied out transposed into the `[N, Cout, oh, ow]`
//! output. The input gradient of a
//! stride-1 convolution runs through the same kernel as the forward
//! convolution of `dy` with the kernel flipped ([`backward_data`]).

use rayon::prelude::*;

use super::conv::{Geometry, transpose};
use super::isa::{Isa, isa};

/// Output pixels in one micro-kernel tile.
const MR: usize = 6;
/// Output channels in one micro-kernel tile: two AVX registers.
const NR: usize = 16;

/// How [`forward`] runs a geometry: the padded planes, the chunks of
/// samples and their tiles, the input channels per pass.
pub(super) struct Plan {
    /// Rows and columns of a padded plane: the cells some tap reads.
    hp: usize,
    wp: usize,
    /// Chunks of samples (chunk `c` holds samples `c·N / chunks ..
    /// (c + 1)·N / chunks`), and the tiles of a chunk of each size they
    /// come in (at most two).
    chunks: usize,
    tiles: Vec<Tiles>,
    /// Input channels summed per pass over a chunk's tiles.
    cc: usize,
    /// The tiles' instruction set: with AVX-512 a tile covers up to
    /// [`WIDE`] blocks of output channels (6 pixels × 64 channels in 24 of
    /// its 32 registers).
    isa: Isa,
}

/// The tiles of a chunk of samples.
struct Tiles {
    samples: usize,
    /// Per tile, the scratch rows of its pixels: `s·ohw + pixel` for
    /// sample `s` of the chunk; a short tile's last ones `samples·ohw`
    /// (unused: the tile runs only its count of pixels).
    rows: Vec<[u32; MR]>,
    /// Per tile, its range in `taps` and its number of pixels (1 to 6).
    spans: Vec<[u32; 3]>,
    /// `[input offset, weight offset]` per tap of a tile: the offset from
    /// a pixel's base to the tap's inputs, and of the tap's weights in a
    /// packed block.
    taps: Vec<[u32; 2]>,
    /// Per scratch row, the pixel's base in the chunk's planes.
    base: Vec<u32>,
}

/// Largest kernel whose taps one tile tracks in a `u64`.
const MAX_TAPS: usize = 64;
/// Largest output map taken: 16².
const MAX_PIXELS: usize = 256;

/// 1×1 kernels with more weights than this run here (on maps of 4² and
/// up), the rest as a gemm on the tensors as they lie: a sample's gemm
/// streams all of its weights from beyond L2 (EfficientNet's 320→1280 at
/// 7², batch 8: 2.21 / 2.67 → 2.11 / 2.38 ms forward / input gradient; its
/// 240→80 at 4² and 14², and 320→1280 at 2², run slower here).
const POINTWISE_WEIGHTS: usize = 1 << 17;

/// The plan for `g`, if this kernel takes it: a CPU with AVX2 and FMA, one
/// group, a kernel of 2 to 64 taps (or a 1×1 kernel of many weights, see
/// [`POINTWISE_WEIGHTS`]), an output map of at most 16² (beyond that the
/// direct kernel does as well, and im2col better for resnet18's 3×3/2 from
/// 56² to 28²: 6.6–7.7 ms here against 6.3), at least 8 input channels, at
/// most a quarter of the last block of 16 output channels unused, and
/// offsets that fit `u32`s.
pub(super) fn plan(g: &Geometry) -> Option<Plan> {
    plan_for(g, isa())
}

/// [`plan`] for the tiles of `isa` (AVX2, or AVX-512), where this CPU
/// runs them.
pub(super) fn plan_for(g: &Geometry, isa: Isa) -> Option<Plan> {
    plan_with(g, isa, false)
}

/// [`plan_for`], its tiles reading each tap's weights from the tap turned
/// by 180° if `flipped` (the input gradient's kernel, [`pack_flipped`]).
fn plan_with(g: &Geometry, isa: Isa, flipped: bool) -> Option<Plan> {
    let taps = g.kh * g.kw;
    if g.p.groups != 1 || g.n == 0 || g.ohw() == 0 || g.ohw() > MAX_PIXELS {
        return None;
    }
    if taps == 1 && (g.ohw() < 16 || g.cin * g.cout <= POINTWISE_WEIGHTS) {
        return None;
    }
    if taps > MAX_TAPS || g.cin < 8 || g.cout.next_multiple_of(NR) * 4 > g.cout * 5 {
        return None;
    }
    let (s, d) = (g.p.stride, g.p.dilation);
    let hp = (g.oh - 1) * s + (g.kh - 1) * d + 1;
    let wp = (g.ow - 1) * s + (g.kw - 1) * d + 1;
    let plane = hp * wp * g.cin;
    if g.n.checked_mul(plane)? > u32::MAX as usize || taps * g.cin * NR > u32::MAX as usize {
        return None;
    }
    if isa < Isa::Avx2 || !isa.available() {
        return None;
    }
    // A pass sums `kc` rows of K: every tap, `cc` input channels. Its
    // weights for the blocks of channels one tile covers (`taps × cc × NR`
    // each) take at most half of L1 while the chunk's tiles run over them:
    // 256 rows for AVX2's one block in a Zen 3's 32 KiB. The AVX-512
    // tiles' four blocks would get only 64 rows in a Zen 4's 32 KiB (a
    // pass of 8 channels of a 3×3 kernel, whose sums then go out to the
    // scratch and back every 72 rows): they take an eighth of L2 instead,
    // the weights streaming from there (512 rows on a Zen 4's 1 MiB: 56
    // channels of a 3×3 kernel; measured as 64 channels against 8 on
    // resnet18's layer3 and layer4 at 4² and 2², one thread, best of
    // eight: forward 5.04 → 4.52 and 4.74 → 4.29 ms, input gradient 5.23
    // → 4.78 and 5.32 → 4.97). The channels are split evenly over passes.
    let caches = super::isa::caches();
    let per_row = blocks_per_tile(isa) * NR * 4;
    let mut kc = caches.l1d / (2 * per_row);
    if isa == Isa::Avx512 {
        kc = kc.max(caches.l2 / (8 * per_row));
    }
    let passes = g.cin.div_ceil((kc / taps).next_multiple_of(8));
    let cc = g.cin.div_ceil(passes).next_multiple_of(8).clamp(1, g.cin);
    // Samples per chunk: enough pixels that the chunk's one short tile
    // wastes little and each weight is used often, few enough that one
    // pass's inputs (`cc` channels of every cell) stay in three eighths
    // of L2.
    let by_pixels = PIXELS.div_ceil(g.ohw());
    let by_cache = (caches.l2 * 3 / 8 / (4 * hp * wp * cc)).max(1);
    let nb = by_pixels.min(by_cache).max(1);
    // As many chunks as that makes, rounded up to a multiple of the
    // threads (work stealing evens out chunks one sample apart).
    let threads = rayon::current_num_threads().max(1);
    let chunks = g.n.div_ceil(nb).next_multiple_of(threads).min(g.n);
    let mut sizes: Vec<usize> = (0..chunks).map(|c| chunk(g.n, chunks, c).len()).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let tiles = sizes
        .into_iter()
        .map(|n| Tiles::new(g, (hp, wp), n, flipped))
        .collect();
    Some(Plan {
        hp,
        wp,
        chunks,
        tiles,
        cc,
        isa,
    })
}

/// The samples of chunk `c` of `chunks` over `n`.
fn chunk(n: usize, chunks: usize, c: usize) -> std::ops::Range<usize> {
    c * n / chunks..(c + 1) * n / chunks
}

/// Output pixels a chunk aims at.
const PIXELS: usize = 192;
/// Tiles that run for every block of output channels before the next
/// tiles start: their inputs stay in L1 meanwhile.
const GROUP: usize = 8;
/// Blocks of [`NR`] output channels one AVX-512 tile covers: 6 × 4
/// accumulators, each broadcast input feeding four multiply-adds and each
/// weight load six (0.42 loads per product, against 0.67 with two blocks;
/// measured 1–2 % faster than two blocks on resnet18's layer2–4, within
/// the noise of the machine it was measured on).
const WIDE: usize = 4;

/// Blocks of output channels per tile for `isa`'s tiles.
fn blocks_per_tile(isa: Isa) -> usize {
    if isa == Isa::Avx512 { WIDE } else { 1 }
}

/// The input gradient of a stride-1 `g` as the forward convolution this
/// kernel runs, and its plan.
pub(super) fn plan_backward_data(g: &Geometry) -> Option<(Geometry, Plan)> {
    plan_backward_data_for(g, isa())
}

/// [`plan_backward_data`] for the tiles of `isa`.
pub(super) fn plan_backward_data_for(g: &Geometry, isa: Isa) -> Option<(Geometry, Plan)> {
    let f = super::direct::flipped(g)?;
    Some((f, plan_with(&f, isa, true)?))
}

impl Tiles {
    /// The tiles of a chunk of `samples`; a tap `t`'s weights lie at
    /// `t · NR` in a packed block, or at `(taps − 1 − t) · NR` if `flipped`.
    fn new(g: &Geometry, (hp, wp): (usize, usize), samples: usize, flipped: bool) -> Tiles {
        let (s, d, pad) = (g.p.stride, g.p.dilation, g.p.padding);
        let ohw = g.ohw();
        // The taps of (oy, ox) that read inside the input.
        let inside = |o: usize, k: usize, len: usize| {
            let at = (o * s + k * d) as isize - pad as isize;
            at >= 0 && (at as usize) < len
        };
        let mask = |oy: usize, ox: usize| -> u64 {
            let mut m = 0u64;
            for i in 0..g.kh {
                for j in 0..g.kw {
                    if inside(oy, i, g.h) && inside(ox, j, g.w) {
                        m |= 1 << (i * g.kw + j);
                    }
                }
            }
            m
        };
        let masks: Vec<u64> = (0..ohw).map(|p| mask(p / g.ow, p % g.ow)).collect();
        let mut base: Vec<u32> = (0..samples * ohw)
            .map(|r| {
                let (sl, p) = (r / ohw, r % ohw);
                let (oy, ox) = (p / g.ow, p % g.ow);
                (((sl * hp + oy * s) * wp + ox * s) * g.cin) as u32
            })
            .collect();
        base.push(0);
        // Pixels with the most taps first, equal tap sets together.
        let mut order: Vec<u32> = (0..(samples * ohw) as u32).collect();
        order.sort_by_key(|&r| {
            let m = masks[r as usize % ohw];
            (std::cmp::Reverse(m.count_ones()), m)
        });
        let dummy = (samples * ohw) as u32;
        let mut tiles = Tiles {
            samples,
            rows: Vec::new(),
            spans: Vec::new(),
            taps: Vec::new(),
            base,
        };
        // Each tile's pixels read the same taps: the last tile of a tap set
        // is short (fewer rows, no products wasted) rather than filled up
        // with pixels of the next set, which would run the union of both
        // sets' taps (on a 4² map and 8 samples a chunk, 10 % of the
        // products were of padding that way, on 2² and 16 samples 13 %).
        let mut seen: Vec<(u64, [u32; 2])> = Vec::new();
        let sets = order.chunk_by(|&a, &b| masks[a as usize % ohw] == masks[b as usize % ohw]);
        for chunk in sets.flat_map(|set| set.chunks(MR)) {
            let mut rows = [dummy; MR];
            rows[..chunk.len()].copy_from_slice(chunk);
            let union = masks[chunk[0] as usize % ohw];
            let span = match seen.iter().find(|(m, _)| *m == union) {
                Some(&(_, span)) => span,
                None => {
                    let start = tiles.taps.len() as u32;
                    for t in (0..g.kh * g.kw).filter(|t| union >> t & 1 == 1) {
                        let (i, j) = (t / g.kw, t % g.kw);
                        let input = (i * d * wp + j * d) * g.cin;
                        let wt = if flipped { g.kh * g.kw - 1 - t } else { t };
                        tiles.taps.push([input as u32, (wt * NR) as u32]);
                    }
                    let span = [start, tiles.taps.len() as u32];
                    seen.push((union, span));
                    span
                }
            };
            tiles.rows.push(rows);
            tiles.spans.push([span[0], span[1], chunk.len() as u32]);
        }
        tiles
    }
}

/// Weights packed for the micro-kernel: for each block of [`NR`] output
/// channels, per input channel and tap (the order of a weight row),
/// [`NR`] weights (zeros past the last channel). A block of 16 channels is
/// its 16 weight rows transposed.
fn pack(w: &[f32], g: &Geometry) -> Vec<f32> {
    let k = g.cin * g.kh * g.kw;
    // Every cell written below (a weight-sized memset was 9 % of resnet18's
    // layer4 at 2²).
    let mut a = crate::output_buffer(g.cout.div_ceil(NR) * k * NR);
    a.par_chunks_mut(k * NR).enumerate().for_each(|(b, dst)| {
        let rows = NR.min(g.cout - b * NR);
        let src = &w[b * NR * k..][..rows * k];
        if rows == NR {
            transpose(src, NR, k, dst);
        } else {
            dst.fill(0.0);
            for (r, row) in src.chunks_exact(k).enumerate() {
                for (kk, &v) in row.iter().enumerate() {
                    dst[kk * NR + r] = v;
                }
            }
        }
    });
    a
}

/// [`pack`] for the input gradient of `g` as the forward convolution `f`:
/// output channel `co` of `f` is input channel `co` of `g`, input channel
/// `ci` of `f` output channel `ci` of `g`. Tap `t` of `f` is tap
/// `taps − 1 − t` of `g` (the kernel turned by 180°): the taps stay in
/// `g`'s order here, and the tiles of [`plan_backward_data`] read them
/// turned, so that each output channel's `16 × taps` block of weights is
/// one [`transpose`] (a scalar loop placing each weight at its turned tap
/// was 8 % of resnet18's layer4 at 2²).
fn pack_flipped(w: &[f32], g: &Geometry) -> Vec<f32> {
    let taps = g.kh * g.kw;
    let k = g.cout * taps;
    let mut a = crate::output_buffer(g.cin.div_ceil(NR) * k * NR);
    a.par_chunks_mut(k * NR).enumerate().for_each(|(b, dst)| {
        let rows = NR.min(g.cin - b * NR);
        for (co, d) in dst.chunks_exact_mut(taps * NR).enumerate() {
            let src = &w[(co * g.cin + b * NR) * taps..][..rows * taps];
            if rows == NR {
                transpose(src, NR, taps, d);
                continue;
            }
            d.fill(0.0);
            for (c, kernel) in src.chunks_exact(taps).enumerate() {
                for (t, &v) in kernel.iter().enumerate() {
                    d[t * NR + c] = v;
                }
            }
        }
    });
    a
}

/// Copies `x [N, Cin, H, W]` into zero-padded channels-last planes
/// `[N, hp, wp, Cin]`.
fn pad_channels_last(x: &[f32], g: &Geometry, pl: &Plan) -> Vec<f32> {
    let (hp, wp, cin, pad) = (pl.hp, pl.wp, g.cin, g.p.padding);
    // Every cell written below: the input's, and zeros around them.
    let mut xp = crate::output_buffer(g.n * hp * wp * cin);
    let rows = g.h.min(hp.saturating_sub(pad));
    let cols = g.w.min(wp.saturating_sub(pad));
    xp.par_chunks_mut(hp * wp * cin)
        .zip(x.par_chunks(cin * g.hw()))
        .for_each_init(Vec::new, |t, (dst, src)| {
            t.resize(g.hw() * cin, 0.0);
            transpose(src, cin, g.hw(), t);
            for (yp, row) in dst.chunks_exact_mut(wp * cin).enumerate() {
                if yp < pad || yp >= pad + rows {
                    row.fill(0.0);
                    continue;
                }
                let (left, rest) = row.split_at_mut(pad.min(wp) * cin);
                let (mid, right) = rest.split_at_mut(cols * cin);
                left.fill(0.0);
                mid.copy_from_slice(&t[(yp - pad) * g.w * cin..][..cols * cin]);
                right.fill(0.0);
            }
        });
    xp
}

/// `y [N, Cout, oh, ow] = x ⊛ w` for a `g` and its [`plan`]. Work items are
/// (chunk of samples, range of output-channel blocks), at least two per
/// thread.
pub(super) fn forward(x: &[f32], w: &[f32], g: &Geometry, pl: &Plan, y: &mut [f32]) {
    run(x, &pack(w, g), g, pl, y);
}

/// [`forward`] with weights packed ([`pack`]).
fn run(x: &[f32], a: &[f32], g: &Geometry, pl: &Plan, y: &mut [f32]) {
    let xp = pad_channels_last(x, g, pl);
    let taps = g.kh * g.kw;
    let k = g.cin * taps;
    let (ohw, plane) = (g.ohw(), pl.hp * pl.wp * g.cin);
    let blocks = g.cout.div_ceil(NR);
    let chunks = pl.chunks;
    let threads = rayon::current_num_threads().max(1);
    let parts = (2 * threads).div_ceil(chunks).min(blocks).max(1);
    let per_part = blocks.div_ceil(parts) * NR;
    // Whole blocks per part can leave fewer parts than asked (5 blocks in
    // 4 parts: 2, 2, 1).
    let parts = g.cout.div_ceil(per_part);
    // items[chunk · parts + part]: each sample's rows of that part's channels.
    let mut items: Vec<(usize, usize, Vec<&mut [f32]>)> = (0..chunks * parts)
        .map(|i| (i / parts, i % parts * per_part, Vec::new()))
        .collect();
    let mut c = 0;
    for (n, ys) in y.chunks_mut(g.cout * ohw).enumerate() {
        while !chunk(g.n, chunks, c).contains(&n) {
            c += 1;
        }
        for (part, out) in ys.chunks_mut(per_part * ohw).enumerate() {
            items[c * parts + part].2.push(out);
        }
    }
    items
        .into_par_iter()
        .for_each_init(Vec::new, |scratch, (chunk, co0, mut ys)| {
            let samples = self::chunk(g.n, chunks, chunk);
            let tiles = pl.tiles.iter().find(|t| t.samples == samples.len());
            let tiles = tiles.expect("a chunk size the plan has tiles for");
            let xs = &xp[samples.start * plane..][..tiles.samples * plane];
            let rows = tiles.samples * ohw + 1;
            let cos = ys[0].len() / ohw;
            let nblk = cos.div_ceil(NR);
            scratch.resize(nblk * rows * NR, 0.0);
            for c0 in (0..g.cin).step_by(pl.cc) {
                let cs = (c0, pl.cc.min(g.cin - c0));
                for t0 in (0..tiles.rows.len()).step_by(GROUP) {
                    let group = t0..tiles.rows.len().min(t0 + GROUP);
                    let block = |b: usize| &a[(co0 / NR + b) * k * NR..][..k * NR];
                    let (mut b, mut rest) = (0, &mut scratch[..]);
                    while b < nblk {
                        let tiles = (tiles, group.clone());
                        let nb = blocks_per_tile(pl.isa).min(nblk - b);
                        let (these, tail) = rest.split_at_mut(nb * rows * NR);
                        let mut outs = these.chunks_exact_mut(rows * NR);
                        let shape = (g.cin, taps, cs);
                        macro_rules! blocks {
                            ($n:literal) => {
                                run_tiles::<$n>(
                                    tiles,
                                    xs,
                                    std::array::from_fn(|i| block(b + i)),
                                    shape,
                                    std::array::from_fn(|_| outs.next().expect("nb blocks")),
                                    pl.isa,
                                )
                            };
                        }
                        match nb {
                            4 => blocks!(4),
                            3 => blocks!(3),
                            2 => blocks!(2),
                            _ => blocks!(1),
                        }
                        (b, rest) = (b + nb, tail);
                    }
                }
            }
            for (b, src) in scratch.chunks_exact(rows * NR).enumerate() {
                let cv = NR.min(cos - b * NR);
                for (sl, out) in ys.iter_mut().enumerate() {
                    let src = &src[sl * ohw * NR..][..ohw * NR];
                    let dst = &mut out[b * NR * ohw..][..cv * ohw];
                    if cv == NR {
                        transpose(src, ohw, NR, dst);
                    } else {
                        for (c, d) in dst.chunks_exact_mut(ohw).enumerate() {
                            for (p, v) in d.iter_mut().enumerate() {
                                *v = src[p * NR + c];
                            }
                        }
                    }
                }
            }
        });
}

/// The tiles `group` of a chunk for `B` blocks of output channels (one
/// with AVX2, up to [`WIDE`] with AVX-512) and input channels
/// `c0 .. c0 + cn` of `cin`, each block into its `scratch` (`[row][16]`;
/// added to what it holds past the first pass).
fn run_tiles<const B: usize>(
    (t, group): (&Tiles, std::ops::Range<usize>),
    xs: &[f32],
    blocks: [&[f32]; B],
    (cin, ntaps, (c0, cn)): (usize, usize, (usize, usize)),
    mut scratch: [&mut [f32]; B],
    isa: Isa,
) {
    assert!(B >= 1 && B <= blocks_per_tile(isa));
    assert!(scratch.iter().all(|s| s.len() >= t.base.len() * NR) && c0 + cn <= cin);
    assert!(blocks.iter().all(|b| b.len() == blocks[0].len()));
    for (rows, &[t0, t1, m]) in t.rows[group.clone()].iter().zip(&t.spans[group]) {
        let taps = &t.taps[t0 as usize..t1 as usize];
        let base = rows.map(|r| t.base[r as usize] as usize + c0);
        // Bounds of every read: a tile's bases and offsets stay inside the
        // chunk's planes, its weights inside the block.
        debug_assert!((1..=MR as u32).contains(&m));
        debug_assert!(taps.iter().all(|&[i, wo]| {
            base.iter().all(|&b| b + i as usize + cn <= xs.len())
                && wo as usize + ((c0 + cn - 1) * ntaps + 1) * NR <= blocks[0].len()
        }));
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `plan_for` checked the CPU runs the tiles' instruction
        // set (AVX2 and FMA; AVX-512F for the wide tiles). Each base is a
        // pixel's cell in the chunk's `[samples, hp, wp, cin]` planes
        // (`Tiles::new`) and each tap offset reaches at most the last cell
        // a pixel reads, so every read `xs[base + c0 + offset ..][..cn]`
        // lies in `xs`; a tap's weights for channels `c0 .. c0 + cn`, `NR`
        // floats every `ntaps · NR`, lie inside each packed block (all of
        // one length, asserted); every row written is below `base.len()`,
        // inside each `scratch` (asserted above).
        unsafe {
            let w = blocks.map(|b| b.as_ptr().add(c0 * ntaps * NR));
            let out = scratch.each_mut().map(|s| s.as_mut_ptr());
            let k = (cn, ntaps * NR);
            /// The first `M` of the six pixels.
            fn first<T: Copy, const M: usize>(a: &[T; MR]) -> [T; M] {
                std::array::from_fn(|i| a[i])
            }
            macro_rules! pixels {
                ($($m:literal)*) => {
                    match m {
                        $($m => if isa == Isa::Avx512 {
                            let at = (xs.as_ptr(), first::<_, $m>(&base));
                            avx512::tile::<B, $m>(at, taps, k, w, (out, first(rows)), c0 > 0)
                        } else {
                            let at = (xs.as_ptr(), first::<_, $m>(&base));
                            avx::tile::<$m>(at, taps, k, w[0], (out[0], first(rows)), c0 > 0)
                        },)*
                        _ => unreachable!("1 to 6 pixels a tile"),
                    }
                };
            }
            pixels!(1 2 3 4 5 6)
        };
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("plan() is None without AVX2: {}", (xs, base, taps).2.len());
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::NR;

    /// `B` blocks of 16 output channels for the `M ≤ 6` pixels of a tile: the
    /// AVX2 [`super::avx::tile`] once per block, in one pass over the
    /// inputs, each block's 16 channels in one 512-bit register (each
    /// broadcast input feeds `B` multiply-adds; `6·B` accumulators).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile<const B: usize, const M: usize>(
        (x, base): (*const f32, [usize; M]),
        taps: &[[u32; 2]],
        (cn, stride): (usize, usize),
        w: [*const f32; B],
        (out, rows): ([*mut f32; B], [u32; M]),
        accumulate: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); B]; M];
        unsafe {
            let dst = rows.map(|r| out.map(|o| o.add(r as usize * NR)));
            if accumulate {
                for (row, d) in acc.iter_mut().zip(dst) {
                    for j in 0..B {
                        row[j] = _mm512_loadu_ps(d[j]);
                    }
                }
            }
            for &[input, wo] in taps {
                let p = base.map(|b| x.add(b + input as usize));
                let mut wp = w.map(|w| w.add(wo as usize));
                for ci in 0..cn {
                    let mut v = [_mm512_setzero_ps(); B];
                    for j in 0..B {
                        v[j] = _mm512_loadu_ps(wp[j]);
                        wp[j] = wp[j].add(stride);
                    }
                    for (r, row) in acc.iter_mut().enumerate() {
                        let a = _mm512_set1_ps(*p[r].add(ci));
                        for j in 0..B {
                            row[j] = _mm512_fmadd_ps(a, v[j], row[j]);
                        }
                    }
                }
            }
            for (row, d) in acc.iter().zip(dst) {
                for j in 0..B {
                    _mm512_storeu_ps(d[j], row[j]);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    use super::NR;

    /// One tile: `out[rows[r]·NR + c] (+)= Σ_taps Σ_{ci < cn}
    /// x[base[r] + in + ci] · w[wo + ci·stride + c]` for the `M ≤ 6` pixels `r`
    /// and 16 channels `c`, added to what `out` holds if `accumulate`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const M: usize>(
        (x, base): (*const f32, [usize; M]),
        taps: &[[u32; 2]],
        (cn, stride): (usize, usize),
        w: *const f32,
        (out, rows): (*mut f32, [u32; M]),
        accumulate: bool,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; M];
        unsafe {
            let dst = rows.map(|r| out.add(r as usize * NR));
            if accumulate {
                for (row, d) in acc.iter_mut().zip(dst) {
                    row[0] = _mm256_loadu_ps(d);
                    row[1] = _mm256_loadu_ps(d.add(8));
                }
            }
            for &[input, wo] in taps {
                let p = base.map(|b| x.add(b + input as usize));
                let mut wp = w.add(wo as usize);
                for ci in 0..cn {
                    let w0 = _mm256_loadu_ps(wp);
                    let w1 = _mm256_loadu_ps(wp.add(8));
                    for (r, row) in acc.iter_mut().enumerate() {
                        let a = _mm256_broadcast_ss(&*p[r].add(ci));
                        row[0] = _mm256_fmadd_ps(a, w0, row[0]);
                        row[1] = _mm256_fmadd_ps(a, w1, row[1]);
                    }
                    wp = wp.add(stride);
                }
            }
            for (row, d) in acc.iter().zip(dst) {
                _mm256_storeu_ps(d, row[0]);
                _mm256_storeu_ps(d.add(8), row[1]);
            }
        }
    }
}

/// The input gradient `dx [N, Cin, H, W]` of a stride-1 `g`, as the
/// forward convolution `(f, plan)` ([`plan_backward_data`]) of `dy` with
/// the kernel turned by 180° and its input and output channels swapped.
pub(super) fn backward_data(
    dy: &[f32],
    w: &[f32],
    g: &Geometry,
    (f, pl): &(Geometry, Plan),
    dx: &mut [f32],
) {
    run(dy, &pack_flipped(w, g), f, pl, dx);
}

/// Input channels one weight-gradient tile covers (one broadcast each).
const WCI: usize = 12;
/// Output channels one weight-gradient tile covers: two zmm registers.
const WCO: usize = 32;

/// The weight gradient `dW [Cout, Cin, kh, kw]` of `g` with its [`plan`]
/// on a CPU with AVX-512, or `None` (the caller then runs im2col and the
/// `gemm` crate).
///
/// The input goes into the forward pass's zero-padded channels-last planes
/// and `dy` into `[pixel][Cout]` rows (padded to a multiple of 32 output
/// channels). For each tap, `dW[·, ·, tap]` is then the sum over pixels of
/// the outer product of a pixel's `dy` row with the `Cin` inputs the tap
/// reads for it. A tile holds 32 output × 12 input channels of one tap in
/// 24 zmm sums for the whole sum over pixels: per pixel, two loads of `dy`,
/// twelve broadcast inputs, 24 multiply-adds. Pixels whose tap reads
/// padding are left out of that tap's list. Each tile sums its pixels in
/// one fixed order, so the result does not depend on the threads.
pub(super) fn backward_weight(x: &[f32], dy: &[f32], g: &Geometry, pl: &Plan) -> Option<Vec<f32>> {
    if pl.isa != Isa::Avx512 || !Isa::Avx512.available() {
        return None;
    }
    let (taps, ohw) = (g.kh * g.kw, g.ohw());
    let cop = g.cout.next_multiple_of(WCO);
    let plane = pl.hp * pl.wp * g.cin;
    if g.n.checked_mul(ohw)?.checked_mul(cop)? > u32::MAX as usize {
        return None;
    }
    let xp = pad_channels_last(x, g, pl);
    // dy as [n · ohw][cop], zeros past Cout.
    let mut dyt = vec![0f32; g.n * ohw * cop];
    dyt.par_chunks_mut(ohw * cop)
        .zip(dy.par_chunks(g.cout * ohw))
        .for_each_init(Vec::new, |t, (dst, src)| {
            t.resize(ohw * g.cout, 0.0);
            transpose(src, g.cout, ohw, t);
            for (d, s) in dst.chunks_exact_mut(cop).zip(t.chunks_exact(g.cout)) {
                d[..g.cout].copy_from_slice(s);
            }
        });
    // Per tap, `[input offset, dy offset]` of every pixel whose tap reads
    // inside the input.
    let (s, d, pad) = (g.p.stride, g.p.dilation, g.p.padding);
    let inside = |o: usize, k: usize, len: usize| {
        let at = (o * s + k * d) as isize - pad as isize;
        at >= 0 && (at as usize) < len
    };
    let pairs: Vec<Vec<[u32; 2]>> = (0..taps)
        .map(|t| {
            let (i, j) = (t / g.kw, t % g.kw);
            let off = (i * d * pl.wp + j * d) * g.cin;
            let mut v = Vec::new();
            for sample in 0..g.n {
                for p in 0..ohw {
                    let (oy, ox) = (p / g.ow, p % g.ow);
                    if inside(oy, i, g.h) && inside(ox, j, g.w) {
                        let base = sample * plane + (oy * s * pl.wp + ox * s) * g.cin + off;
                        v.push([base as u32, ((sample * ohw + p) * cop) as u32]);
                    }
                }
            }
            v
        })
        .collect();
    // The pixels in blocks of `WPB` (their rows of dy and their inputs stay
    // in L1 while every tap passes over them): per tap, where each block's
    // pixels start in its list.
    let blocks = (g.n * ohw).div_ceil(WPB);
    let cuts: Vec<Vec<usize>> = pairs
        .iter()
        .map(|pix| {
            (0..=blocks)
                .map(|b| pix.partition_point(|&[_, dyo]| (dyo as usize / cop) < b * WPB))
                .collect()
        })
        .collect();
    // Work items: (block of output channels, block of input channels),
    // each all taps; a tile's sums land in `[ci][tap][32]`, so that an
    // item's sums are one transpose away from `dW`'s rows. The items go
    // in a few runs of consecutive ones, a task each, and a task takes its
    // items one block of pixels at a time, so that a block's rows of dy
    // and inputs, read from memory once, serve every item of the run from
    // L2. A tile's sum runs over the blocks in order whatever the runs.
    let (cob, cib) = (cop / WCO, g.cin.div_ceil(WCI));
    let items = cob * cib;
    let runs = (2 * rayon::current_num_threads()).clamp(1, items);
    let mut tiles: Vec<Vec<f32>> = vec![Vec::new(); items];
    tiles
        .par_chunks_mut(items.div_ceil(runs))
        .enumerate()
        .for_each(|(r, run)| {
            let first = r * items.div_ceil(runs);
            for out in run.iter_mut() {
                // Every cell written by the first block's tiles.
                *out = crate::output_buffer(taps * WCI * WCO);
            }
            for b in 0..blocks {
                for (i, out) in run.iter_mut().enumerate() {
                    let item = first + i;
                    let (co0, ci0) = (item / cib * WCO, item % cib * WCI);
                    let cn = WCI.min(g.cin - ci0);
                    for (t, (pix, cut)) in pairs.iter().zip(&cuts).enumerate() {
                        let pix = &pix[cut[b]..cut[b + 1]];
                        let o = &mut out[t * WCO..];
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: AVX-512F is present (checked above).
                        // Every input offset is a pixel's cell in `xp` plus
                        // a tap that lands inside the padded plane, so
                        // `xp[off + ci0 ..][..cn]` lies in the plane's
                        // channels; every dy offset is a pixel's row of
                        // `cop` floats in `dyt`, and `co0 + 32 <= cop`; `o`
                        // holds `cn` rows of `WCO` floats `taps · WCO` apart.
                        unsafe {
                            avx512w::tile(
                                (xp.as_ptr().add(ci0), dyt.as_ptr().add(co0)),
                                pix,
                                (cn, taps * WCO),
                                (o, b > 0),
                            )
                        };
                        #[cfg(not(target_arch = "x86_64"))]
                        unreachable!("AVX-512 on another arch: {}", (pix, o).1.len());
                    }
                }
            }
        });
    // Into `[Cout][Cin][tap]`: an item's `[ci][tap][32]` sums transposed
    // are its `cn × taps` columns of 32 rows of dW (the cells read one by
    // one, strided, were 18 % of resnet18's layer4 at 2²). Every cell of
    // dW is written.
    let mut dw = crate::output_buffer(g.weight_len());
    dw.par_chunks_mut(WCO * g.cin * taps)
        .enumerate()
        .for_each_init(Vec::new, |t, (cb, rows)| {
            for ib in 0..cib {
                let (ci0, tile) = (ib * WCI, &tiles[cb * cib + ib]);
                let len = WCI.min(g.cin - ci0) * taps;
                t.resize(len * WCO, 0.0);
                transpose(&tile[..len * WCO], len, WCO, t);
                for (row, src) in rows.chunks_exact_mut(g.cin * taps).zip(t.chunks_exact(len)) {
                    row[ci0 * taps..][..len].copy_from_slice(src);
                }
            }
        });
    Some(dw)
}

/// Pixels per block of the weight gradient's sums.
const WPB: usize = 128;

#[cfg(target_arch = "x86_64")]
mod avx512w {
    use std::arch::x86_64::*;

    use super::{WCI, WCO};

    /// `out[c·stride + k] (+)= Σ_pixels x[xo + c] · dy[dyo + k]` for the
    /// `cn ≤ 12` input channels `c` and 32 output channels `k`, over the
    /// pixels' `[xo, dyo]` offsets (from `x`, `dy`), added to what `out`
    /// holds if `accumulate`.
    ///
    /// # Safety
    /// AVX-512F; `x + xo + c` and `dy + dyo + k` readable for every pixel,
    /// `c < cn`, `k < 32`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile(
        (x, dy): (*const f32, *const f32),
        pixels: &[[u32; 2]],
        (cn, stride): (usize, usize),
        out: (&mut [f32], bool),
    ) {
        assert!(cn <= WCI && stride >= WCO && out.0.len() >= (cn.max(1) - 1) * stride + WCO);
        let out = (out.0, out.1, stride);
        // SAFETY: the caller's contract; full tiles run with `cn = 12`
        // constant so the broadcasts unroll, tails with their count.
        unsafe {
            if cn == WCI {
                sums::<WCI>((x, dy), pixels, out)
            } else {
                macro_rules! tail {
                    ($($n:literal)*) => {
                        match cn {
                            $($n => sums::<$n>((x, dy), pixels, out),)*
                            _ => unreachable!("cn <= 12"),
                        }
                    };
                }
                tail!(1 2 3 4 5 6 7 8 9 10 11)
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn sums<const C: usize>(
        (x, dy): (*const f32, *const f32),
        pixels: &[[u32; 2]],
        (out, accumulate, stride): (&mut [f32], bool, usize),
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; C];
        unsafe {
            if accumulate {
                for (c, a) in acc.iter_mut().enumerate() {
                    a[0] = _mm512_loadu_ps(out.as_ptr().add(c * stride));
                    a[1] = _mm512_loadu_ps(out.as_ptr().add(c * stride + 16));
                }
            }
            for &[xo, dyo] in pixels {
                let d = dy.add(dyo as usize);
                let (d0, d1) = (_mm512_loadu_ps(d), _mm512_loadu_ps(d.add(16)));
                let xs = x.add(xo as usize);
                for (c, a) in acc.iter_mut().enumerate() {
                    let v = _mm512_set1_ps(*xs.add(c));
                    a[0] = _mm512_fmadd_ps(v, d0, a[0]);
                    a[1] = _mm512_fmadd_ps(v, d1, a[1]);
                }
            }
            for (c, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add(c * stride), a[0]);
                _mm512_storeu_ps(out.as_mut_ptr().add(c * stride + 16), a[1]);
            }
        }
    }
}
