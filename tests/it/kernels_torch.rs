//! podium's CPU kernels against PyTorch: conv2d (strides, paddings,
//! dilations, groups, depthwise), max and average pools and bilinear
//! upsampling, forward and gradients, to 1e-4 relative. Fixture:
//! tests/fixtures/kernels/make.py → torch.json (inputs come from a formula).
//! RoIAlign against torchvision: roi_align.py → roi_align.json.
//!
//! A build with the `cuda` feature runs the same cases on the GPU (it
//! needs one): every conv case (through cuDNN with the `cudnn` feature,
//! TF32 off), and the pools and upsampling where the GPU path has them.

use candle_core::{Device, Tensor, Var};
use podium::nn::kernels::conv::{ConvParams, conv2d};
use podium::nn::kernels::pool::{Pool, PoolKind, pool2d};
use podium::nn::kernels::roi_align::roi_align;
use podium::nn::kernels::upsample::bilinear;
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/kernels/torch.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// make.py's formula: element i of tensor k of a case, on `dev`.
fn filled(shape: &[usize], k: usize, case: usize, dev: &Device) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| (0.37 * i as f64 + 1.3 * k as f64 + 0.1 * case as f64).sin() as f32)
        .collect();
    Tensor::from_vec(v, shape, dev).unwrap()
}

fn dims(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect()
}

fn u(v: &Value, k: &str) -> usize {
    v[k].as_u64().unwrap() as usize
}

fn close(got: &Tensor, want: &Value, what: &str) {
    let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    let want: Vec<f64> = want
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= 1e-4 * scale,
            "{what}[{i}]: {g} vs PyTorch {w}"
        );
    }
}

#[test]
fn kernels_equal_pytorch_forward_and_gradients() {
    let seen = check_on(&Device::Cpu);
    // Every kind of case is in the fixture, and every case ran.
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen["conv2d"] >= 18, "{seen:?}");
}

/// The GPU path on the same cases: convolutions (cuDNN's with the `cudnn`
/// feature), pools with kernel = stride and no padding, and bilinear
/// upsampling's forward pass; the pools the GPU path does not have are an
/// error, not a panic or a wrong answer.
#[cfg(feature = "cuda")]
#[test]
fn gpu_kernels_equal_pytorch_forward_and_gradients() {
    #[cfg(feature = "cudnn")]
    podium::nn::kernels::cudnn::set_tf32(false);
    let dev = Device::new_cuda(0).expect("a build with `cuda` runs its tests on a GPU");
    let seen = check_on(&dev);
    assert!(seen["conv2d"] >= 18, "{seen:?}");
    assert!(seen.get("max_pool2d").is_some_and(|&n| n >= 1), "{seen:?}");
}

/// Runs every fixture case `dev` takes; the number run per op.
fn check_on(dev: &Device) -> std::collections::BTreeMap<String, usize> {
    let fx = fixture();
    let cases = fx["cases"].as_array().unwrap();
    let mut seen = std::collections::BTreeMap::new();
    for c in cases {
        let case = u(c, "case");
        let op = c["op"].as_str().unwrap();
        let what = format!("{op} case {case} on {dev:?}");
        let x = Var::from_tensor(&filled(&dims(&c["x"]), 0, case, dev)).unwrap();
        let (y, w) = match op {
            "conv2d" => {
                let w = Var::from_tensor(&filled(&dims(&c["w"]), 1, case, dev)).unwrap();
                let p = ConvParams {
                    stride: u(c, "stride"),
                    padding: u(c, "padding"),
                    dilation: u(c, "dilation"),
                    groups: u(c, "groups"),
                };
                (conv2d(&x, &w, p).unwrap(), Some(w))
            }
            "max_pool2d" | "avg_pool2d" => {
                let kind = if op == "max_pool2d" {
                    PoolKind::Max
                } else {
                    PoolKind::Avg {
                        count_include_pad: c["count_include_pad"].as_bool().unwrap(),
                    }
                };
                let p = Pool {
                    kind,
                    k: u(c, "k"),
                    stride: u(c, "stride"),
                    padding: u(c, "padding"),
                };
                match pool2d(&x, p) {
                    Ok(y) => (y, None),
                    Err(e) if !dev.is_cpu() && (p.k != p.stride || p.padding != 0) => {
                        assert!(e.to_string().contains("only supported on the CPU"), "{e}");
                        continue;
                    }
                    Err(e) => panic!("{what}: {e}"),
                }
            }
            "bilinear" => {
                let s = dims(&c["size"]);
                let ac = c["align_corners"].as_bool().unwrap();
                let y = bilinear(&x, (s[0], s[1]), ac).unwrap();
                if !dev.is_cpu() {
                    // candle's GPU upsampling has no backward.
                    close(&y, &c["y"], &format!("{what} output"));
                    *seen.entry(op.to_string()).or_insert(0) += 1;
                    continue;
                }
                (y, None)
            }
            other => panic!("unknown op {other}"),
        };
        *seen.entry(op.to_string()).or_insert(0) += 1;
        close(&y, &c["y"], &format!("{what} output"));
        let up = filled(y.dims(), 2, case, dev);
        let grads = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
        close(
            grads.get(&x).unwrap(),
            &c["dx"],
            &format!("{what} input gradient"),
        );
        if let Some(w) = w {
            close(
                grads.get(&w).unwrap(),
                &c["dw"],
                &format!("{what} weight gradient"),
            );
        }
    }
    seen
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// RoIAlign against torchvision's `ops.roi_align`, output and gradient
/// with respect to the map, over regions inside, across the borders of,
/// outside, narrower than a pixel of and larger than the map, reversed,
/// aligned or not, fixed or adaptive sampling (tests/fixtures/kernels/roi_align.py).
#[test]
fn roi_align_equals_torchvision_forward_and_gradient() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/kernels/roi_align.json"
    );
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let dev = Device::Cpu;
    let x =
        Var::from_tensor(&Tensor::from_vec(floats(&fx["x"]), dims(&fx["x_shape"]), &dev).unwrap())
            .unwrap();
    let rois: Vec<f32> = fx["rois"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(floats)
        .collect();
    let k = rois.len() / 5;
    let rois = Tensor::from_vec(rois, (k, 5), &dev).unwrap();
    let cases = fx["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for (i, c) in cases.iter().enumerate() {
        let size = dims(&c["size"]);
        let y = roi_align(
            x.as_tensor(),
            &rois,
            (size[0], size[1]),
            c["scale"].as_f64().unwrap() as f32,
            u(c, "ratio"),
            c["aligned"].as_bool().unwrap(),
        )
        .unwrap();
        assert_eq!(y.dims(), [k, 3, size[0], size[1]], "case {i}");
        close(&y, &c["y"], &format!("case {i} output"));
        let up = Tensor::from_vec(floats(&c["up"]), y.shape(), &dev).unwrap();
        let g = (y * up).unwrap().sum_all().unwrap().backward().unwrap();
        close(
            g.get(x.as_tensor()).unwrap(),
            &c["dx"],
            &format!("case {i} gradient"),
        );
    }
    // A region of an image the batch does not have is an error, not a read
    // out of bounds.
    let bad = Tensor::new(&[[2f32, 0., 0., 4., 4.]], &dev).unwrap();
    let err = roi_align(x.as_tensor(), &bad, (2, 2), 1.0, 0, true).unwrap_err();
    assert!(err.to_string().contains("batch index 2"), "{err}");
}
