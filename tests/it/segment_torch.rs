//! podium's U-Net decoder and segmentation losses against
//! segmentation_models_pytorch on committed cases
//! (tests/fixtures/nn/segment.json, made by segment.py there): the
//! decoder's and head's logits from the same weights and encoder maps, and
//! `DiceLoss`, `LovaszLoss`, `FocalLoss` and BCE with their gradients.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use podium::nn::loss::{Kind, Loss};
use podium::nn::models::{Arch, backbone};
use podium::nn::segment::loss::segment_loss;
use podium::nn::segment::unet::Unet;
use podium::nn::vars::VarStore;
use serde_json::Value;

fn fixture() -> Value {
    let s = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/nn/segment.json"
    ))
    .unwrap();
    serde_json::from_str(&s).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_f64().unwrap() as f32)
        .collect()
}

fn tensor(v: &Value) -> Tensor {
    let shape: Vec<usize> = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    Tensor::from_vec(floats(&v["data"]), shape, &Device::Cpu).unwrap()
}

fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: podium {g}, smp {w}"
        );
    }
}

/// The same weights and encoder maps give smp's logits: block layout,
/// nearest upsampling to each skip's size and to the input's, concatenation
/// order, conv-BN-ReLU pairs and the head, and the variable names.
#[test]
fn unet_decoder_matches_segmentation_models_pytorch() {
    let f = &fixture()["unet"];
    let vars = VarStore::new(&Device::Cpu, 0);
    let bb = backbone(Arch::SimpleCnn, &vars.root()).unwrap();
    let unet = Unet::new(&vars.root(), bb.as_ref(), 2, 4).unwrap();
    let weights: BTreeMap<String, Tensor> = f["weights"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), tensor(v)))
        .collect();
    let (loaded, skipped) = vars.load(&weights).unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    let decoder_vars = vars
        .entries()
        .into_iter()
        .filter(|(n, _)| n.starts_with("decoder") || n.starts_with("segmentation_head"))
        .count();
    assert_eq!(
        loaded.len(),
        decoder_vars,
        "every decoder variable from smp"
    );
    let enc: Vec<Tensor> = f["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(tensor)
        .collect();
    let size = f["size"].as_array().unwrap();
    let hw = (
        size[0].as_u64().unwrap() as usize,
        size[1].as_u64().unwrap() as usize,
    );
    let got = unet.forward(&enc, hw, false).unwrap();
    let want = tensor(&f["logits"]);
    assert_eq!(got.dims(), want.dims());
    close(
        &got.flatten_all().unwrap().to_vec1().unwrap(),
        &want.flatten_all().unwrap().to_vec1().unwrap(),
        1e-4,
        "logits",
    );
}

/// Each loss and its gradient with respect to the logits, alone and in a
/// weighted sum.
#[test]
fn segmentation_losses_and_gradients_match_segmentation_models_pytorch() {
    let f = &fixture()["losses"];
    let shape: Vec<usize> = f["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let dev = Device::Cpu;
    let masks = Tensor::from_vec(floats(&f["masks"]), shape.clone(), &dev).unwrap();
    let weights = Tensor::ones(shape[0], candle_core::DType::F32, &dev).unwrap();
    let mut sum = 0f32;
    for (name, kind) in [
        ("dice", Kind::Dice),
        ("lovasz", Kind::Lovasz),
        ("focal", Kind::Focal),
        ("bce", Kind::Bce),
    ] {
        let x = candle_core::Var::from_vec(floats(&f["logits"]), shape.clone(), &dev).unwrap();
        let loss = Loss {
            terms: vec![(kind, 1.0)],
            label_smoothing: 0.0,
            focal_gamma: 2.0,
        };
        let l = segment_loss(&loss, x.as_tensor(), &masks, &weights).unwrap();
        let v: f32 = l.to_scalar().unwrap();
        let want = f[name]["value"].as_f64().unwrap() as f32;
        close(&[v], &[want], 1e-5, name);
        sum += 0.5 * want;
        let g = l.backward().unwrap();
        let grad = g.get(x.as_tensor()).unwrap().flatten_all().unwrap();
        close(
            &grad.to_vec1().unwrap(),
            &floats(&f[name]["grad"]),
            1e-4,
            &format!("{name} gradient"),
        );
    }
    let x = Tensor::from_vec(floats(&f["logits"]), shape, &dev).unwrap();
    let all = Loss {
        terms: vec![
            (Kind::Dice, 0.5),
            (Kind::Lovasz, 0.5),
            (Kind::Focal, 0.5),
            (Kind::Bce, 0.5),
        ],
        label_smoothing: 0.0,
        focal_gamma: 2.0,
    };
    let v: f32 = segment_loss(&all, &x, &masks, &weights)
        .unwrap()
        .to_scalar()
        .unwrap();
    close(&[v], &[sum], 1e-5, "weighted sum");
}
