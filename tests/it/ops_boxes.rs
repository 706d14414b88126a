//! `wbf`, `nms` and `soft_nms` against ensemble-boxes 1.0.9: the fixtures in
//! tests/fixtures/ops/boxes/ were made by make.py beside them.

use podium::data::boxes::NBox;
use podium::ops::nms::{Method, SuppressParams, suppress};
use podium::ops::wbf::{ConfType, WbfParams, fuse, weights_or_ones};
use serde_json::Value;

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string("tests/fixtures/ops/boxes/cases.json").unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc["cases"].as_array().unwrap().clone()
}

fn models(case: &Value) -> Vec<Vec<NBox>> {
    case["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m.as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    let d: Vec<f64> = d
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap())
                        .collect();
                    NBox {
                        label: d[0] as i64,
                        score: d[5],
                        xyxy: [d[1], d[2], d[1] + d[3], d[2] + d[4]],
                    }
                })
                .collect()
        })
        .collect()
}

fn rows(out: &[NBox]) -> Vec<[f64; 6]> {
    out.iter()
        .map(|b| {
            [
                b.label as f64,
                b.score,
                b.xyxy[0],
                b.xyxy[1],
                b.xyxy[2],
                b.xyxy[3],
            ]
        })
        .collect()
}

fn expected(case: &Value, method: &str) -> Option<Vec<[f64; 6]>> {
    let e = case["expected"].get(method)?;
    Some(
        e.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let v: Vec<f64> = r
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect();
                v.try_into().unwrap()
            })
            .collect(),
    )
}

/// Same rows in the same order, each number within 1e-4.
fn assert_close(case: &Value, method: &str, got: &[[f64; 6]], want: &[[f64; 6]]) {
    let name = case["name"].as_str().unwrap();
    assert_eq!(
        got.len(),
        want.len(),
        "{name}, {method}: {got:?}\nwant {want:?}"
    );
    for (g, w) in got.iter().zip(want) {
        for k in 0..6 {
            assert!(
                (g[k] - w[k]).abs() <= 1e-4,
                "{name}, {method}: got {g:?}, ensemble-boxes {w:?}"
            );
        }
    }
}

fn weights(case: &Value, n: usize) -> Vec<f64> {
    let w: Vec<f64> = case["params"]["weights"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_f64().unwrap()).collect())
        .unwrap_or_default();
    weights_or_ones(&w, n)
}

#[test]
fn wbf_matches_ensemble_boxes_for_every_conf_type() {
    let mut checked = 0;
    for case in cases() {
        let m = models(&case);
        for (name, ct) in [
            ("avg", ConfType::Avg),
            ("max", ConfType::Max),
            ("box_and_model_avg", ConfType::BoxAndModelAvg),
            ("absent_model_aware_avg", ConfType::AbsentModelAwareAvg),
        ] {
            let p = WbfParams {
                iou_thr: case["params"]["iou_thr"].as_f64().unwrap(),
                skip_box_thr: case["params"]["skip_box_thr"].as_f64().unwrap(),
                conf_type: ct,
                weights: weights(&case, m.len()),
            };
            let method = format!("wbf_{name}");
            let want = expected(&case, &method).unwrap();
            assert_close(&case, &method, &rows(&fuse(&m, &p)), &want);
            checked += 1;
        }
    }
    assert!(checked > 600, "{checked}");
}

#[test]
fn nms_and_soft_nms_match_ensemble_boxes() {
    let mut checked = 0;
    for case in cases() {
        let m = models(&case);
        let w: Vec<f64> = case["params"]["weights"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_f64().unwrap()).collect())
            .unwrap_or_default();
        for (method, kind) in [
            ("nms", Method::Hard),
            ("soft_nms_gaussian", Method::Gaussian),
            ("soft_nms_linear", Method::Linear),
        ] {
            let Some(want) = expected(&case, method) else {
                continue;
            };
            let p = SuppressParams {
                method: kind,
                iou_thr: case["params"]["nms_iou_thr"].as_f64().unwrap(),
                sigma: case["params"]["sigma"].as_f64().unwrap(),
                thresh: case["params"]["thresh"].as_f64().unwrap(),
                weights: w.clone(),
                decayed_scores: false,
            };
            assert_close(&case, method, &rows(&suppress(&m, &p)), &want);
            checked += 1;
        }
    }
    assert!(checked > 450, "{checked}");
}
