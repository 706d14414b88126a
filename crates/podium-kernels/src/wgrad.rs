//! The weight gradient of convolutions with few weights and many pixels
//! (the stems from 3 input channels with a 3×3 kernel: 27 rows of K), as
//! dot products.
//!
//! There `dW (M × K) += dy (M × P) · columnsᵀ (P × K)` is a gemm whose
//! output is a few hundred floats and whose reduction runs over thousands
//! of pixels. A packed gemm spends much of its time copying both operands
//! into panels for so little output; here both operands are read where
//! they lie, each row contiguous over pixels. A micro-kernel keeps a tile
//! of 2 rows of `dy` × 6 rows of the columns as twelve vectors of eight
//! partial sums, loading eight pixels of each of the eight rows per step
//! (eight loads for twelve multiply-adds). Pixels go in blocks of 1,024: a
//! block's six column rows stay in L1 while every row of `dy` passes over
//! them, the partial sums kept per cell between blocks and added across
//! at the end.
//!
//! Measured (`benches/conv.rs`, 2 threads): simple_cnn's first conv (3 → 32
//! channels, 3×3) at 64², batch 32, 3.2 → 2.0–2.2 ms; at 224², batch 8,
//! 10.5 → 7.2–7.6 ms; EfficientNet's stem (3×3/2) at 64², 0.88 → 0.55–0.61
//! ms. Not resnet18's 7×7 stem (147 rows of K for 64 output channels, whose
//! `dy` block no longer stays in L2 as it passes): 4.5 → 4.9 ms.
//!
//! Sums run in a fixed order: results are bit-identical from run to run.

use super::avx2_fma;

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
