//! podium's CPU kernels against PyTorch: conv2d (strides, paddings,
//! dilations, groups, depthwise), max and average pools and bilinear
//! upsampling, forward and gradients, to 1e-4 relative. Fixture:
//! tests/fixtures/kernels/make.py → torch.json (inputs come from a formula).

use candle_core::{Device, Tensor, Var};
use podium::nn::kernels::conv::{ConvParams, conv2d};
use podium::nn::kernels::pool::{Pool, PoolKind, pool2d};
use podium::nn::kernels::upsample::bilinear;
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/kernels/torch.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// make.py's formula: element i of tensor k of a case.
fn filled(shape: &[usize], k: usize, case: usize) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| (0.37 * i as f64 + 1.3 * k as f64 + 0.1 * case as f64).sin() as f32)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
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
    let fx = fixture();
    let cases = fx["cases"].as_array().unwrap();
    let mut seen = std::collections::BTreeMap::new();
    for c in cases {
        let case = u(c, "case");
        let op = c["op"].as_str().unwrap();
        *seen.entry(op.to_string()).or_insert(0) += 1;
        let what = format!("{op} case {case}");
        let x = Var::from_tensor(&filled(&dims(&c["x"]), 0, case)).unwrap();
        let (y, w) = match op {
            "conv2d" => {
                let w = Var::from_tensor(&filled(&dims(&c["w"]), 1, case)).unwrap();
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
                (pool2d(&x, p).unwrap(), None)
            }
            "bilinear" => {
                let s = dims(&c["size"]);
                let ac = c["align_corners"].as_bool().unwrap();
                (bilinear(&x, (s[0], s[1]), ac).unwrap(), None)
            }
            other => panic!("unknown op {other}"),
        };
        close(&y, &c["y"], &format!("{what} output"));
        let up = filled(y.dims(), 2, case);
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
    // Every kind of case is in the fixture.
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen["conv2d"] >= 18, "{seen:?}");
}
