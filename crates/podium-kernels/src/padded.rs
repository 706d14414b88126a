//! A plane zero-padded and split into column phases by the stride
//! ([`Phased`]): the layout the direct kernels ([`super::depthwise`]) and
//! im2col ([`super::conv`]) read, in which every tap of a strided kernel
//! reads a contiguous run of cells along an output row.

/// Lanes of one accumulator: the f32s of an AVX register.
pub(super) const LANES: usize = 8;

/// A plane zero-padded by `top` rows and `left` columns (and as many as
/// needed below and to the right), its columns split into `s` phases:
/// padded cell `(r, c)` lies at `(r·s + c % s)·width + c / s`. Along an
/// output row, a tap of a stride-`s` kernel then reads consecutive cells
/// of one phase.
pub(super) struct Phased {
    pub(super) s: usize,
    pub(super) width: usize,
    pub(super) buf: Vec<f32>,
    /// The `(rows, top, left, h, w)` of the last fill.
    layout: Option<[usize; 5]>,
}

impl Phased {
    /// An empty buffer for stride `s`, `width` cells per phase row.
    pub(super) fn new(s: usize, width: usize) -> Phased {
        Phased {
            s,
            width,
            buf: Vec::new(),
            layout: None,
        }
    }

    /// Refills the buffer from `plane` (`h × w`) for `rows` padded rows of
    /// `width` cells per phase.
    pub(super) fn fill(
        &mut self,
        plane: &[f32],
        (h, w): (usize, usize),
        (top, left): (usize, usize),
        rows: usize,
    ) {
        let (s, width) = (self.s, self.width);
        // Every plane of one layout writes the same cells: the padding,
        // zeroed once, stays zero.
        if self.layout != Some([rows, top, left, h, w]) {
            self.buf.clear();
            self.buf.resize(rows * s * width, 0.0);
            self.layout = Some([rows, top, left, h, w]);
        }
        for (y, src) in plane.chunks_exact(w).take(h).enumerate() {
            let r = top + y;
            let phases = &mut self.buf[r * s * width..][..s * width];
            split_row(src, phases, (s, width, width), left);
        }
    }

    /// Zeroes the buffer for `rows` padded rows, to be summed into and read
    /// back with [`Phased::extract`].
    pub(super) fn zero(&mut self, rows: usize) {
        self.buf.clear();
        self.buf.resize(rows * self.s * self.width, 0.0);
        self.layout = None;
    }

    /// The inverse of [`Phased::fill`]: `plane` (`h × w`) from the cells at
    /// rows `top..` and columns `left..`.
    pub(super) fn extract(
        &self,
        plane: &mut [f32],
        (h, w): (usize, usize),
        (top, left): (usize, usize),
    ) {
        let (s, width) = (self.s, self.width);
        for (y, dst) in plane.chunks_exact_mut(w).take(h).enumerate() {
            let phases = &self.buf[(top + y) * s * width..][..s * width];
            if s == 1 {
                copy(&phases[left..][..w], dst);
            } else if s == 2 {
                let (p0, p1) = phases.split_at(width);
                let (even, odd) = if left % 2 == 0 { (p0, p1) } else { (p1, p0) };
                interleave2(&even[left / 2..], &odd[left.div_ceil(2)..], dst);
            } else {
                for q in 0..s {
                    let x0 = (q + s - left % s) % s;
                    let src = &phases[q * width + (left + x0) / s..];
                    for (d, &v) in dst.iter_mut().skip(x0).step_by(s).zip(src) {
                        *d = v;
                    }
                }
            }
        }
    }

    /// Where padded cell `(r, c)` lies.
    pub(super) fn at(&self, r: usize, c: usize) -> usize {
        (r * self.s + c % self.s) * self.width + c / self.s
    }
}

/// One input row split into its `s` column phases: input column `x` is
/// padded column `left + x`, cell `(left + x) / s` of phase
/// `(left + x) % s`, whose row starts at `dst[phase · stride]`. Columns
/// that would land at or past `width` are dropped.
pub(super) fn split_row(
    src: &[f32],
    dst: &mut [f32],
    (s, stride, width): (usize, usize, usize),
    left: usize,
) {
    let src = &src[..src.len().min((width * s).saturating_sub(left))];
    if src.is_empty() {
        return;
    }
    if s == 1 {
        copy(src, &mut dst[left..][..src.len()]);
    } else if s == 2 {
        let (p0, p1) = dst.split_at_mut(stride);
        let (even, odd) = if left.is_multiple_of(2) {
            (p0, p1)
        } else {
            (p1, p0)
        };
        deinterleave2(src, &mut even[left / 2..], &mut odd[left.div_ceil(2)..]);
    } else {
        for q in 0..s {
            // Input columns x with (left + x) % s == q.
            let x0 = (q + s - left % s) % s;
            let dst = &mut dst[q * stride + (left + x0) / s..];
            for (d, &v) in dst.iter_mut().zip(src.iter().skip(x0).step_by(s)) {
                *d = v;
            }
        }
    }
}

/// `even[t] = src[2t]`, `odd[t] = src[2t + 1]`, as far as `src` goes.
#[inline(always)]
fn deinterleave2(src: &[f32], even: &mut [f32], odd: &mut [f32]) {
    let whole = src.len() / (2 * LANES);
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut done = false;
    #[cfg(target_arch = "x86_64")]
    if whole > 0 && super::avx2_fma() {
        assert!(even.len() >= whole * LANES && odd.len() >= whole * LANES);
        // SAFETY: AVX2 is present; the assert above and `whole` keep every
        // block read and written inside its slice.
        unsafe { avx::deinterleave2(src.as_ptr(), even.as_mut_ptr(), odd.as_mut_ptr(), whole) };
        done = true;
    }
    if !done {
        for ((pair, e), o) in src
            .chunks_exact(2 * LANES)
            .zip(even.chunks_exact_mut(LANES))
            .zip(odd.chunks_exact_mut(LANES))
        {
            for l in 0..LANES {
                e[l] = pair[2 * l];
                o[l] = pair[2 * l + 1];
            }
        }
    }
    for x in whole * 2 * LANES..src.len() {
        let dst = if x % 2 == 0 { &mut *even } else { &mut *odd };
        dst[x / 2] = src[x];
    }
}

/// `out[2t] = even[t]`, `out[2t + 1] = odd[t]`, as far as `out` goes.
#[inline(always)]
pub(super) fn interleave2(even: &[f32], odd: &[f32], out: &mut [f32]) {
    let whole = out.len() / (2 * LANES);
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut done = false;
    #[cfg(target_arch = "x86_64")]
    if whole > 0 && super::avx2_fma() {
        assert!(even.len() >= whole * LANES && odd.len() >= whole * LANES);
        // SAFETY: AVX2 is present; the assert above and `whole` keep every
        // block read and written inside its slice.
        unsafe { avx::interleave2(even.as_ptr(), odd.as_ptr(), out.as_mut_ptr(), whole) };
        done = true;
    }
    if !done {
        for ((pair, e), o) in out
            .chunks_exact_mut(2 * LANES)
            .zip(even.chunks_exact(LANES))
            .zip(odd.chunks_exact(LANES))
        {
            for l in 0..LANES {
                pair[2 * l] = e[l];
                pair[2 * l + 1] = o[l];
            }
        }
    }
    for x in whole * 2 * LANES..out.len() {
        out[x] = if x % 2 == 0 { even[x / 2] } else { odd[x / 2] };
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    /// [`super::deinterleave2`] over `blocks` blocks of 16 floats of `src`:
    /// two shuffles and two lane permutes per block.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn deinterleave2(
        src: *const f32,
        even: *mut f32,
        odd: *mut f32,
        blocks: usize,
    ) {
        unsafe {
            for b in 0..blocks {
                let lo = _mm256_loadu_ps(src.add(16 * b));
                let hi = _mm256_loadu_ps(src.add(16 * b + 8));
                // [l0 l2 h0 h2 | l4 l6 h4 h6] → [l0 l2 l4 l6 h0 h2 h4 h6].
                let e = _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi);
                let o = _mm256_shuffle_ps::<0b11_01_11_01>(lo, hi);
                let e =
                    _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(e)));
                let o =
                    _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(o)));
                _mm256_storeu_ps(even.add(8 * b), e);
                _mm256_storeu_ps(odd.add(8 * b), o);
            }
        }
    }

    /// [`super::interleave2`] over `blocks` blocks of 16 floats of `out`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn interleave2(
        even: *const f32,
        odd: *const f32,
        out: *mut f32,
        blocks: usize,
    ) {
        unsafe {
            for b in 0..blocks {
                let e = _mm256_loadu_ps(even.add(8 * b));
                let o = _mm256_loadu_ps(odd.add(8 * b));
                // [e0 o0 e1 o1 | e4 o4 e5 o5] and [e2 o2 e3 o3 | e6 o6 e7 o7].
                let a = _mm256_unpacklo_ps(e, o);
                let c = _mm256_unpackhi_ps(e, o);
                _mm256_storeu_ps(out.add(16 * b), _mm256_permute2f128_ps::<0x20>(a, c));
                _mm256_storeu_ps(out.add(16 * b + 8), _mm256_permute2f128_ps::<0x31>(a, c));
            }
        }
    }
}

/// `dst += src`, in fixed-size blocks.
#[inline(always)]
pub(super) fn add(src: &[f32], dst: &mut [f32]) {
    let mut d = dst.chunks_exact_mut(LANES);
    let mut s = src.chunks_exact(LANES);
    for (d, s) in (&mut d).zip(&mut s) {
        let s: &[f32; LANES] = s.try_into().unwrap();
        for (d, s) in d.iter_mut().zip(s) {
            *d += s;
        }
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d += *s;
    }
}

/// `dst = src`, in fixed-size blocks the compiler moves inline (the rows
/// are short, and a call to `memcpy` per row costs as much as the copy).
#[inline(always)]
pub(super) fn copy(src: &[f32], dst: &mut [f32]) {
    let mut d = dst.chunks_exact_mut(LANES);
    let mut s = src.chunks_exact(LANES);
    for (d, s) in (&mut d).zip(&mut s) {
        let s: &[f32; LANES] = s.try_into().unwrap();
        d.copy_from_slice(s);
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = *s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splitting a row into even and odd columns and merging them back, over
    /// lengths of no, one and several whole blocks with every tail.
    #[test]
    fn deinterleave_and_interleave_invert_each_other() {
        for len in 0..50 {
            let src: Vec<f32> = (0..len).map(|v| v as f32).collect();
            let (mut even, mut odd) = (vec![-1f32; len / 2 + 1], vec![-1f32; len / 2 + 1]);
            deinterleave2(&src, &mut even, &mut odd);
            for (x, &v) in src.iter().enumerate() {
                let got = if x % 2 == 0 { even[x / 2] } else { odd[x / 2] };
                assert_eq!(got, v, "len {len}, column {x}");
            }
            // Cells past the row are left as they were.
            assert_eq!(
                even[len.div_ceil(2)..],
                vec![-1.0; len / 2 + 1 - len.div_ceil(2)]
            );
            assert_eq!(odd[len / 2..], vec![-1.0; 1]);
            let mut back = vec![0f32; len];
            interleave2(&even, &odd, &mut back);
            assert_eq!(back, src, "len {len}");
        }
    }
}
