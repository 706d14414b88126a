//! podium's FCOS pieces against torchvision on committed cases
//! (tests/fixtures/nn/detect.json, made by detect.py there): which box each
//! location learns, the three losses of `FCOS.compute_loss` and their
//! gradient, `generalized_box_iou_loss` and `sigmoid_focal_loss`.

use candle_core::{Device, Tensor};
use podium::nn::detect::assign::{self, Points, RADIUS};
use podium::nn::detect::fcos::{Level, Raw};
use podium::nn::detect::loss::{fcos_loss, giou_loss, sigmoid_focal};
use serde_json::Value;

fn fixture() -> Value {
    let s = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/nn/detect.json"
    ))
    .unwrap();
    serde_json::from_str(&s).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(a) => a.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap() as f32],
        _ => panic!("not a number: {v}"),
    }
}

fn boxes(v: &Value) -> Vec<[f32; 4]> {
    floats(v)
        .chunks(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect()
}

fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: podium {g}, torchvision {w}"
        );
    }
}

#[test]
fn fcos_assignment_and_losses_match_torchvision() {
    let f = &fixture()["fcos"];
    let dev = Device::Cpu;
    let levels: Vec<Level> = f["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let stride = l[0].as_u64().unwrap() as usize;
            // detect.py's anchors are centred on the cells.
            Level {
                stride,
                h: l[1].as_u64().unwrap() as usize,
                w: l[2].as_u64().unwrap() as usize,
                offset: stride as f32 / 2.0,
            }
        })
        .collect();
    let points = Points::new(&levels);
    let gt = boxes(&f["boxes"]);
    let labels: Vec<usize> = f["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let want: Vec<i64> = f["matched"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let got = assign::assign(&points, &gt, RADIUS);
    assert_eq!(got, want, "matched box per location");
    assert!(got.iter().filter(|&&g| g >= 0).count() > 10);

    let k = f["classes"].as_u64().unwrap() as usize;
    let a = points.len();
    let cls = candle_core::Var::from_vec(floats(&f["cls"]), (2, a, k), &dev).unwrap();
    let reg = candle_core::Var::from_vec(floats(&f["reg"]), (2, a, 4), &dev).unwrap();
    let ctr = candle_core::Var::from_vec(floats(&f["ctr"]), (2, a), &dev).unwrap();
    let raw = Raw {
        cls: cls.as_tensor().clone(),
        reg: reg.as_tensor().clone(),
        ctr: ctr.as_tensor().clone(),
        levels,
    };
    let objects: Vec<assign::Object> = gt.iter().zip(&labels).map(|(b, &l)| (l, *b, 1.0)).collect();
    let t = assign::targets(&points, &[objects, Vec::new()], k, &dev).unwrap();
    let parts = fcos_loss(&raw, &t).unwrap();
    let scalar = |t: &Tensor| t.to_scalar::<f32>().unwrap();
    close(
        &[scalar(&parts.cls), scalar(&parts.bbox), scalar(&parts.ctr)],
        &[
            f["loss_cls"].as_f64().unwrap() as f32,
            f["loss_bbox"].as_f64().unwrap() as f32,
            f["loss_ctr"].as_f64().unwrap() as f32,
        ],
        1e-5,
        "loss cls, bbox, ctr",
    );
    // The gradient of their sum with respect to every head output.
    let g = parts.total().unwrap().backward().unwrap();
    for (name, v) in [("grad_cls", &cls), ("grad_reg", &reg), ("grad_ctr", &ctr)] {
        let got: Vec<f32> = g
            .get(v.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        close(&got, &floats(&f[name]), 1e-5, name);
    }
}

#[test]
fn giou_loss_matches_torchvision() {
    let f = &fixture()["giou"];
    let dev = Device::Cpu;
    let a = boxes(&f["a"]);
    let t = |b: Vec<[f32; 4]>| {
        let n = b.len();
        Tensor::from_vec(b.concat(), (n, 4), &dev).unwrap()
    };
    let got: Vec<f32> = giou_loss(&t(a), &t(boxes(&f["b"])))
        .unwrap()
        .to_vec1()
        .unwrap();
    close(&got, &floats(&f["loss"]), 1e-6, "giou loss");
}

#[test]
fn sigmoid_focal_loss_matches_torchvision() {
    let f = &fixture()["focal"];
    let dev = Device::Cpu;
    let x = Tensor::from_vec(floats(&f["x"]), (5, 4), &dev).unwrap();
    let t = Tensor::from_vec(floats(&f["t"]), (5, 4), &dev).unwrap();
    let got: Vec<f32> = sigmoid_focal(&x, &t, 0.25, 2.0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    close(&got, &floats(&f["loss"]), 1e-5, "focal loss");
}

/// The network itself (tests/fixtures/nn/detect_head.json, made by
/// detect_head.py there): torchvision's feature pyramid with P6/P7 and
/// `FCOSHead` (two convs per tower, group norm) from the same weights and
/// C3–C5 maps give the same class logits, box distances and centre-ness
/// at every location of every level, in the same order.
#[test]
fn fcos_pyramid_and_head_match_torchvision() {
    use podium::nn::detect::fcos::{Config, Fcos};
    use podium::nn::models::{Arch, backbone};
    use podium::nn::vars::VarStore;
    let s = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/nn/detect_head.json"
    ))
    .unwrap();
    let f: Value = serde_json::from_str(&s).unwrap();
    let tensor = |v: &Value| {
        let shape: Vec<usize> = v["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        Tensor::from_vec(floats(&v["data"]), shape, &Device::Cpu).unwrap()
    };
    let vars = VarStore::new(&Device::Cpu, 0);
    let bb = backbone(Arch::SimpleCnn, &vars.root()).unwrap();
    let cfg = Config {
        channels: 32,
        convs: 2,
    };
    let fcos = Fcos::new(&vars.root(), bb.as_ref(), 3, cfg).unwrap();
    let weights: std::collections::BTreeMap<String, Tensor> = f["weights"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), tensor(v)))
        .collect();
    let (loaded, skipped) = vars.load(&weights).unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    let ours = vars
        .entries()
        .into_iter()
        .filter(|(n, _)| n.starts_with("fpn.") || n.starts_with("head."))
        .count();
    assert_eq!(
        loaded.len(),
        ours,
        "every pyramid and head variable from torchvision"
    );
    let c: Vec<Tensor> = f["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(tensor)
        .collect();
    let raw = fcos
        .forward(&[c[0].clone(), c[1].clone(), c[2].clone()])
        .unwrap();
    let sizes: Vec<(usize, usize)> = raw.levels.iter().map(|l| (l.h, l.w)).collect();
    let want: Vec<(usize, usize)> = f["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l[0].as_u64().unwrap() as usize,
                l[1].as_u64().unwrap() as usize,
            )
        })
        .collect();
    assert_eq!(sizes, want);
    for (name, got) in [("cls", &raw.cls), ("reg", &raw.reg), ("ctr", &raw.ctr)] {
        let w = tensor(&f[name]);
        assert_eq!(got.elem_count(), w.elem_count(), "{name}");
        close(
            &got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            &w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            1e-4,
            name,
        );
    }
}
