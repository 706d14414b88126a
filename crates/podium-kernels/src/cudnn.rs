//! cuDNN convolutions for CUDA tensors (cargo feature `cudnn`): the
//! forward pass, input gradient and weight gradient of podium's conv ops,
//! with groups (depthwise included) in one call, where candle 0.11 runs
//! only the forward pass through cuDNN, one group at a time, and its own
//! naive kernels for both gradients.
//!
//! cuDNN picks each algorithm by its heuristics; the choice is cached per
//! geometry and thread (the handles are not `Send`). As in PyTorch, cuDNN
//! may use TF32 tensor cores on Ampere and later GPUs; [`set_tf32`] turns
//! that off for full f32 precision.
//!
//! The binary links cuDNN 9 dynamically: `libcudnn.so.9` must be on the
//! loader's path where it runs (PyTorch's CUDA wheels ship it, in
//! `nvidia/cudnn/lib`; docs/gpu.md).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::cuda::cudarc::cudnn::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, CudnnError,
    FilterDescriptor, TensorDescriptor, sys,
};
use candle_core::cuda::cudarc::driver::{CudaSlice, CudaView};
use candle_core::{CudaDevice, CudaStorage, Layout, Result, bail};

use super::conv::Geometry;

static TF32: AtomicBool = AtomicBool::new(true);

/// Whether cuDNN may compute f32 convolutions with TF32 tensor cores
/// (the default, as PyTorch's `torch.backends.cudnn.allow_tf32`); `false`
/// asks for f32 multiply-adds throughout.
pub fn set_tf32(allow: bool) {
    TF32.store(allow, Ordering::Relaxed);
}

/// A geometry and whether TF32 was allowed: what an algorithm is cached by.
type Key = ([usize; 13], bool);

thread_local! {
    static HANDLES: RefCell<HashMap<candle_core::cuda::DeviceId, Arc<Cudnn>>> =
        RefCell::new(HashMap::new());
    static FORWARD: RefCell<HashMap<Key, sys::cudnnConvolutionFwdAlgo_t>> =
        RefCell::new(HashMap::new());
    static BACKWARD_DATA: RefCell<HashMap<Key, sys::cudnnConvolutionBwdDataAlgo_t>> =
        RefCell::new(HashMap::new());
    static BACKWARD_FILTER: RefCell<HashMap<Key, sys::cudnnConvolutionBwdFilterAlgo_t>> =
        RefCell::new(HashMap::new());
}

fn handle(dev: &CudaDevice) -> Result<Arc<Cudnn>> {
    HANDLES.with(|h| {
        if let Some(c) = h.borrow().get(&dev.id()) {
            return Ok(c.clone());
        }
        let c = Cudnn::new(dev.cuda_stream()).map_err(candle_core::Error::wrap)?;
        h.borrow_mut().insert(dev.id(), c.clone());
        Ok(c)
    })
}

/// The descriptors of `g` on `dev`'s cuDNN handle: convolution, input,
/// weight, output.
struct Descriptors {
    conv: ConvDescriptor<f32>,
    x: TensorDescriptor<f32>,
    w: FilterDescriptor<f32>,
    y: TensorDescriptor<f32>,
    tf32: bool,
}

fn descriptors(dev: &CudaDevice, g: &Geometry) -> Result<Descriptors> {
    let c = handle(dev)?;
    let i = |v: usize| -> Result<i32> {
        i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("cudnn: {v} exceeds i32")))
    };
    let p = g.p;
    let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
    let tf32 = TF32.load(Ordering::Relaxed);
    let e = candle_core::Error::wrap;
    let mut conv = c
        .create_conv2d::<f32>(
            [i(p.padding)?; 2],
            [i(p.stride)?; 2],
            [i(p.dilation)?; 2],
            sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
        )
        .map_err(e)?;
    conv.set_group_count(i(p.groups)?).map_err(e)?;
    let math = if tf32 {
        sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
    } else {
        sys::cudnnMathType_t::CUDNN_FMA_MATH
    };
    conv.set_math_type(math).map_err(e)?;
    let (xd, wd, yd) = g.dims();
    let dims = |d: [usize; 4]| -> Result<[i32; 4]> { Ok([i(d[0])?, i(d[1])?, i(d[2])?, i(d[3])?]) };
    Ok(Descriptors {
        conv,
        x: c.create_4d_tensor::<f32>(nchw, dims(xd)?).map_err(e)?,
        w: c.create_4d_filter::<f32>(nchw, dims(wd)?).map_err(e)?,
        y: c.create_4d_tensor::<f32>(nchw, dims(yd)?).map_err(e)?,
        tf32,
    })
}

/// The algorithm `cache` holds for `g`, or the one `pick` returns.
fn algorithm<A: Copy>(
    cache: &'static std::thread::LocalKey<RefCell<HashMap<Key, A>>>,
    g: &Geometry,
    tf32: bool,
    pick: impl FnOnce() -> std::result::Result<A, CudnnError>,
) -> Result<A> {
    let p = g.p;
    let key = (
        [
            g.n, g.cin, g.h, g.w, g.cout, g.kh, g.kw, g.oh, g.ow, p.stride, p.padding, p.dilation,
            p.groups,
        ],
        tf32,
    );
    if let Some(a) = cache.with(|m| m.borrow().get(&key).copied()) {
        return Ok(a);
    }
    let a = pick().map_err(candle_core::Error::wrap)?;
    cache.with(|m| m.borrow_mut().insert(key, a));
    Ok(a)
}

/// The f32 elements of a contiguous CUDA tensor.
fn view<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, f32>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("{what}: the input must be contiguous")
    };
    Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
}

/// Scratch memory of `bytes` for one call.
fn workspace(dev: &CudaDevice, bytes: usize) -> Result<CudaSlice<u8>> {
    // SAFETY: cuDNN writes its workspace before it reads it.
    unsafe { dev.alloc::<u8>(bytes.max(1)) }
}

/// The output of one call, `dims` elements, left unset: with β = 0 cuDNN
/// writes every element and reads none.
fn output(dev: &CudaDevice, dims: [usize; 4]) -> Result<CudaSlice<f32>> {
    // SAFETY: see above; every launch below passes β = 0.
    unsafe { dev.alloc::<f32>(dims.iter().product()) }
}

/// `y = x ⊛ w` for `g`.
pub(super) fn forward(
    (xs, xl): (&CudaStorage, &Layout),
    (ws, wl): (&CudaStorage, &Layout),
    g: &Geometry,
) -> Result<CudaStorage> {
    let dev = &xs.device;
    let d = descriptors(dev, g)?;
    let op = ConvForward {
        conv: &d.conv,
        x: &d.x,
        w: &d.w,
        y: &d.y,
    };
    let e = candle_core::Error::wrap;
    let algo = algorithm(&FORWARD, g, d.tf32, || op.pick_algorithm())?;
    let mut ws_ = workspace(dev, op.get_workspace_size(algo).map_err(e)?)?;
    let (x, w) = (view(xs, xl, "conv2d")?, view(ws, wl, "conv2d weight")?);
    let mut y = output(dev, g.dims().2)?;
    // SAFETY: the descriptors were made from `g`, which the layouts match.
    unsafe { op.launch(algo, Some(&mut ws_), (1.0, 0.0), &x, &w, &mut y) }.map_err(e)?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
}

/// `dx` from `dy` and `w` for `g`.
pub(super) fn backward_data(
    (dys, dyl): (&CudaStorage, &Layout),
    (ws, wl): (&CudaStorage, &Layout),
    g: &Geometry,
) -> Result<CudaStorage> {
    let dev = &dys.device;
    let d = descriptors(dev, g)?;
    let op = ConvBackwardData {
        conv: &d.conv,
        dx: &d.x,
        w: &d.w,
        dy: &d.y,
    };
    let e = candle_core::Error::wrap;
    let algo = algorithm(&BACKWARD_DATA, g, d.tf32, || op.pick_algorithm())?;
    let mut ws_ = workspace(dev, op.get_workspace_size(algo).map_err(e)?)?;
    let (dy, w) = (
        view(dys, dyl, "conv2d backward")?,
        view(ws, wl, "conv2d weight")?,
    );
    let mut dx = output(dev, g.dims().0)?;
    // SAFETY: as in `forward`.
    unsafe { op.launch(algo, Some(&mut ws_), (1.0, 0.0), &mut dx, &w, &dy) }.map_err(e)?;
    Ok(CudaStorage::wrap_cuda_slice(dx, dev.clone()))
}

/// `dw` from `x` and `dy` for `g`.
pub(super) fn backward_weight(
    (xs, xl): (&CudaStorage, &Layout),
    (dys, dyl): (&CudaStorage, &Layout),
    g: &Geometry,
) -> Result<CudaStorage> {
    let dev = &xs.device;
    let d = descriptors(dev, g)?;
    let op = ConvBackwardFilter {
        conv: &d.conv,
        x: &d.x,
        dw: &d.w,
        dy: &d.y,
    };
    let e = candle_core::Error::wrap;
    let algo = algorithm(&BACKWARD_FILTER, g, d.tf32, || op.pick_algorithm())?;
    let mut ws_ = workspace(dev, op.get_workspace_size(algo).map_err(e)?)?;
    let (x, dy) = (
        view(xs, xl, "conv2d backward")?,
        view(dys, dyl, "conv2d backward")?,
    );
    let mut dw = output(dev, g.dims().1)?;
    // SAFETY: as in `forward`.
    unsafe { op.launch(algo, Some(&mut ws_), (1.0, 0.0), &x, &mut dw, &dy) }.map_err(e)?;
    Ok(CudaStorage::wrap_cuda_slice(dw, dev.clone()))
}
