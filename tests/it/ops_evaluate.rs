//! `evaluate`'s metrics against scikit-learn and pycocotools: the fixtures in
//! tests/fixtures/ops/evaluate/ were made by make.py beside them.

use std::collections::BTreeSet;

use podium::data::boxes::{Coco, Det};
use podium::metrics::{classify as m, coco};
use serde_json::Value;

fn doc() -> Value {
    let text = std::fs::read_to_string("tests/fixtures/ops/evaluate/cases.json").unwrap();
    serde_json::from_str(&text).unwrap()
}

fn cells(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| match x {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

fn sets(v: &[String]) -> Vec<BTreeSet<String>> {
    v.iter()
        .map(|c| c.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[test]
fn classification_metrics_equal_scikit_learn() {
    let mut checked = 0;
    for case in doc()["classify"].as_array().unwrap() {
        let metric = case["metric"].as_str().unwrap();
        let (t, p) = (cells(&case["truth"]), cells(&case["pred"]));
        let multi = case["truth"][0].is_string();
        let (ts, ps): (Vec<&str>, Vec<&str>) = (
            t.iter().map(String::as_str).collect(),
            p.iter().map(String::as_str).collect(),
        );
        let got = match (metric, multi) {
            ("accuracy", true) => m::accuracy_sets(&sets(&t), &sets(&p)),
            ("f1_macro", true) => m::f1_macro_sets(&sets(&t), &sets(&p)),
            ("accuracy", false) => m::accuracy(&m::labels(&ts), &m::labels(&ps)),
            ("f1_macro", false) => m::f1_macro(&m::labels(&ts), &m::labels(&ps)),
            ("qwk", _) => m::qwk(&m::labels(&ts), &m::labels(&ps)),
            ("log_loss" | "auc", _) => {
                let y: Vec<bool> = t.iter().map(|x| x == "1").collect();
                let s: Vec<f64> = p.iter().map(|x| x.parse().unwrap()).collect();
                if metric == "auc" {
                    m::auc(&y, &s)
                } else {
                    m::log_loss(&y, &s)
                }
            }
            other => panic!("{other:?}"),
        };
        let want = case["value"].as_f64().unwrap();
        assert!(
            (got - want).abs() <= 1e-6,
            "{metric} (multi-label {multi}): podium {got}, scikit-learn {want}"
        );
        checked += 1;
    }
    assert_eq!(checked, 84);
}

#[test]
fn coco_map_equals_pycocotools() {
    for (i, case) in doc()["coco"].as_array().unwrap().iter().enumerate() {
        let gt: Coco = serde_json::from_value(case["gt"].clone()).unwrap();
        let dets: Vec<Det> = serde_json::from_value(case["dets"].clone()).unwrap();
        let (map, map50) = coco::coco_map(&gt, &dets);
        let (want, want50) = (
            case["coco_map"].as_f64().unwrap(),
            case["coco_map50"].as_f64().unwrap(),
        );
        assert!(
            (map - want).abs() <= 1e-6,
            "case {i}: mAP podium {map}, pycocotools {want}"
        );
        assert!(
            (map50 - want50).abs() <= 1e-6,
            "case {i}: mAP50 podium {map50}, pycocotools {want50}"
        );
    }
}
