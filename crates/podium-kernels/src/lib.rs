//! podium's own CPU kernels, as candle custom ops with their backward, for
//! the layers where candle 0.11's CPU path is slow or has no backward:
//!
//! - [`conv`]: 2-D convolution forward, backward-data and backward-weights
//!   (im2col / col2im around the `gemm` crate, a direct kernel for dense
//!   convs on larger maps, a channels-last implicit gemm for those on small
//!   maps, dot products for the stems' weight gradients, and a direct
//!   depthwise kernel);
//! - [`bn`]: batch norm, in training and evaluation, fused with its
//!   activation (ReLU, SiLU);
//! - [`pool`]: max and average pooling with any kernel, stride and padding;
//! - [`upsample`]: nearest and bilinear resizing;
//! - [`roi_align`]: RoIAlign (Mask R-CNN's region features);
//! - [`affine`]: a per-channel scale and shift (convolution biases, group
//!   norm's affine), whose gradients sum each plane contiguously.
//!
//! Every op runs on f32 NCHW tensors on the CPU; the layers in
//! podium's `nn::layers` fall back to candle's own ops on other devices.
//!
//! Threads: each op splits its work over rayon's global pool (the number of
//! threads is `RAYON_NUM_THREADS`, default the machine's cores). Reductions
//! are split into a fixed number of parts summed in order, so that a run is
//! bit-identical to the next on the same machine.

pub mod affine;
pub mod bn;
pub mod conv;
#[cfg(feature = "cudnn")]
pub mod cudnn;
mod depthwise;
mod direct;
mod implicit;
pub mod isa;
mod padded;
pub mod pool;
pub mod roi_align;
pub mod upsample;
mod wgrad;

pub use bn::{Act, BnEval, BnTrain};

use std::ops::Range;

use candle_core::{CpuStorage, Layout, Result, bail};
use rayon::prelude::*;

/// Whether the AVX2 + FMA kernels (`depthwise`, `direct`, `implicit`,
/// `wgrad`) run: this CPU has AVX2 and FMA, and `PODIUM_CPU` does not ask
/// for the portable path ([`isa::isa`]).
pub(crate) fn avx2_fma() -> bool {
    isa::isa() >= isa::Isa::Avx2
}

/// A buffer of `len` floats for a kernel that writes every one of them
/// before anything reads them: not zeroed first in release builds (zeroing
/// fresh outputs was 9 % of resnet18's inference at 64², batch 64). Debug
/// builds, which run the tests, fill it with NaN instead, so that a cell a
/// kernel missed shows in every comparison against the definition.
/// (candle's `CpuStorage` allocates its outputs the same way).
#[allow(clippy::uninit_vec)]
pub(crate) fn output_buffer(len: usize) -> Vec<f32> {
    if cfg!(debug_assertions) {
        return vec![f32::NAN; len];
    }
    let mut v = Vec::with_capacity(len);
    // SAFETY: the capacity is `len`; every caller writes all `len` floats
    // (each kernel's tests compare every cell with the definition, on a
    // NaN-filled buffer) before the buffer is read or handed out.
    unsafe { v.set_len(len) };
    v
}

/// The f32 elements of a contiguous CPU tensor.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{what}: only f32 is supported")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("{what}: the input must be contiguous"),
    }
}

/// The four dimensions of an NCHW layout.
pub(crate) fn dims4(l: &Layout, what: &str) -> Result<[usize; 4]> {
    match l.dims() {
        &[n, c, h, w] => Ok([n, c, h, w]),
        d => bail!("{what}: expected [N, C, H, W], got {d:?}"),
    }
}

/// `Σ f` over the items `0..items`, into a vector of `len`: the items go in
/// a fixed number of contiguous parts (at most one per thread), each part
/// accumulates alone through `f(range, acc)`, and the parts are added in
/// order, so the sum has the same bits from run to run.
pub(crate) fn sum_in_parts(
    items: usize,
    len: usize,
    f: impl Fn(Range<usize>, &mut [f32]) + Sync,
) -> Vec<f32> {
    let parts = items.min(rayon::current_num_threads()).max(1);
    let partials: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .map(|part| {
            let mut acc = vec![0f32; len];
            f(part * items / parts..(part + 1) * items / parts, &mut acc);
            acc
        })
        .collect();
    let mut it = partials.into_iter();
    let mut total = it.next().unwrap_or_else(|| vec![0f32; len]);
    for part in it {
        for (t, v) in total.iter_mut().zip(part) {
            *t += v;
        }
    }
    total
}

/// The largest `|a − b|` over two tensors of one shape (the kernels' tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar())
        .unwrap()
}
