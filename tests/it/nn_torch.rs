//! podium's models against PyTorch and timm on the same weights and input
//! (tests/fixtures/nn/torch.json, made by make.py there, which says how the
//! weights are filled): forward outputs of resnet18 and efficientnet_b0, and
//! one training step's loss, gradients and batch-norm statistics for
//! simple_cnn. A build with the `cuda` feature also runs both on the GPU
//! (it needs one), TF32 off.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use podium::nn::loss::{Kind, Loss, Targets};
use podium::nn::models::{Model, Task};
use podium::nn::vars::VarStore;
use serde_json::Value;

fn fixture() -> Value {
    let s = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/nn/torch.json"
    ))
    .unwrap();
    serde_json::from_str(&s).unwrap()
}

/// Fills every variable by make.py's formula.
fn fill(vars: &VarStore) {
    let entries = vars.entries();
    let names: Vec<&String> = entries.iter().map(|(n, _)| n).collect();
    let is_norm = |n: &str| {
        n.rsplit_once('.')
            .is_some_and(|(p, _)| names.iter().any(|m| *m == &format!("{p}.running_mean")))
    };
    let mut values = BTreeMap::new();
    for (k, (name, e)) in entries.iter().enumerate() {
        let dims = e.var.dims().to_vec();
        let n: usize = dims.iter().product();
        let fan_in: usize = dims[1..].iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| {
                let s = (0.37 * i as f64 + 1.3 * k as f64).sin();
                let x = if name.ends_with("running_var") {
                    1.0 + 0.5 * s.abs()
                } else if name.ends_with("running_mean") {
                    0.1 * s
                } else if dims.len() == 1 && is_norm(name) && name.ends_with("weight") {
                    1.0 + 0.1 * s
                } else if name.ends_with("bias") {
                    0.1 * s
                } else {
                    s / (fan_in as f64).sqrt()
                };
                x as f32
            })
            .collect();
        values.insert(
            name.clone(),
            Tensor::from_vec(v, dims, &Device::Cpu).unwrap(),
        );
    }
    let (loaded, skipped) = vars.load(&values).unwrap();
    assert!(skipped.is_empty() && loaded.len() == entries.len());
}

fn input(dev: &Device) -> Tensor {
    let v: Vec<f32> = (0..2 * 3 * 32 * 32)
        .map(|i| (0.11 * i as f64).sin() as f32)
        .collect();
    Tensor::from_vec(v, (2, 3, 32, 32), dev).unwrap()
}

fn model(arch: &str, dev: &Device) -> (Model, VarStore) {
    let vars = VarStore::new(dev, 0);
    let arch = podium::nn::models::Arch::parse(arch).expect("an arch podium builds");
    let m = Model::new(arch, Task::Classify, 3, vars.clone()).unwrap();
    fill(&vars);
    (m, vars)
}

fn names_of(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn resnet18_and_efficientnet_b0_equal_timm_on_the_same_weights() {
    forward_equals_timm(&Device::Cpu);
}

/// GPU 0, with cuDNN's convolutions in f32 (no TF32) as PyTorch's on the CPU.
#[cfg(feature = "cuda")]
fn gpu() -> Device {
    #[cfg(feature = "cudnn")]
    podium::nn::kernels::cudnn::set_tf32(false);
    Device::new_cuda(0).expect("a build with `cuda` runs its tests on a GPU")
}

#[cfg(feature = "cuda")]
#[test]
fn on_the_gpu_resnet18_and_efficientnet_b0_equal_timm() {
    forward_equals_timm(&gpu());
}

fn forward_equals_timm(dev: &Device) {
    let f = fixture();
    for arch in ["resnet18", "efficientnet_b0"] {
        let r = &f["forward"][arch];
        let (m, vars) = model(arch, dev);
        let ours: Vec<String> = vars.entries().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            ours,
            names_of(&r["names"]),
            "{arch}: variable names differ from timm's"
        );
        let y: Vec<Vec<f32>> = m
            .forward_t(&input(dev), false)
            .unwrap()
            .logits
            .to_vec2()
            .unwrap();
        for (row, want) in y.iter().zip(r["logits"].as_array().unwrap()) {
            for (a, b) in row.iter().zip(want.as_array().unwrap()) {
                let b = b.as_f64().unwrap();
                let tol = 1e-4 * b.abs().max(1.0);
                assert!(
                    (f64::from(*a) - b).abs() < tol,
                    "{arch} on {dev:?}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn one_training_step_of_simple_cnn_equals_pytorch() {
    training_step_equals_pytorch(&Device::Cpu);
}

#[cfg(feature = "cuda")]
#[test]
fn on_the_gpu_one_training_step_of_simple_cnn_equals_pytorch() {
    training_step_equals_pytorch(&gpu());
}

fn training_step_equals_pytorch(dev: &Device) {
    let f = fixture();
    let r = &f["train_step"];
    let (m, vars) = model("simple_cnn", dev);
    let ours: Vec<String> = vars.entries().into_iter().map(|(n, _)| n).collect();
    assert_eq!(ours, names_of(&r["names"]));
    let out = m.forward_t(&input(dev), true).unwrap();
    let target = Tensor::new(&[[1f32, 0., 0.], [0., 0., 1.]], dev).unwrap();
    let loss = Loss {
        terms: vec![(Kind::Ce, 1.0)],
        label_smoothing: 0.0,
        focal_gamma: 2.0,
    };
    let t = Targets {
        classes: Some(target),
        values: None,
        weights: Tensor::new(&[1f32, 1.], dev).unwrap(),
    };
    let l = loss.compute(Task::Classify, &out.logits, None, &t).unwrap();
    let lv: f32 = l.to_scalar().unwrap();
    let want = r["loss"].as_f64().unwrap();
    assert!((f64::from(lv) - want).abs() < 1e-5, "loss {lv} vs {want}");
    let grads = l.backward().unwrap();
    let close = |a: f64, b: f64, what: &str| {
        assert!(
            (a - b).abs() < 1e-4 * b.abs().max(1e-2) + 1e-6,
            "{what}: {a} vs {b}"
        );
    };
    for (name, want) in r["grads"].as_object().unwrap() {
        let e = vars.get(name).unwrap();
        let g: Vec<f32> = grads
            .get(e.var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let sum: f64 = g.iter().map(|&v| f64::from(v)).sum();
        let l2: f64 = g.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
        close(l2, want["l2"].as_f64().unwrap(), &format!("{name} l2"));
        // A sum can cancel to about 0: compare it on the scale of the gradient's norm.
        let ws = want["sum"].as_f64().unwrap();
        let wl2 = want["l2"].as_f64().unwrap();
        assert!(
            (sum - ws).abs() < 1e-4 * wl2 * (g.len() as f64).sqrt(),
            "{name} sum: {sum} vs {ws}"
        );
        let scale = want["l2"].as_f64().unwrap() / (g.len() as f64).sqrt();
        for (a, b) in g.iter().zip(want["first"].as_array().unwrap()) {
            let b = b.as_f64().unwrap();
            assert!(
                (f64::from(*a) - b).abs() < 1e-4 * scale.max(b.abs()) + 1e-7,
                "{name}: {a} vs {b}"
            );
        }
    }
    for (name, want) in r["running_mean_after"].as_object().unwrap() {
        let v: Vec<f32> = vars.get(name).unwrap().var.as_tensor().to_vec1().unwrap();
        for (a, b) in v.iter().zip(want.as_array().unwrap()) {
            close(f64::from(*a), b.as_f64().unwrap(), name);
        }
    }
}
