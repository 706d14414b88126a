//! `evaluate`'s metrics against scikit-learn and pycocotools: the fixtures in
//! tests/fixtures/ops/evaluate/ were made by make.py beside them.

use std::collections::BTreeSet;

use podium::data::boxes::{Coco, Det};
use podium::data::coco_rle::{Rle, Segmentation};
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

fn segm_doc() -> Value {
    let text = std::fs::read_to_string("tests/fixtures/ops/evaluate/segm.json").unwrap();
    serde_json::from_str(&text).unwrap()
}

fn usz(v: &Value) -> usize {
    v.as_u64().unwrap() as usize
}

/// COCO run-length masks as pycocotools' `mask` module writes them:
/// compressed counts, area, bbox, and back (segm.py).
#[test]
fn coco_rle_encodes_as_pycocotools_and_round_trips() {
    let doc = segm_doc();
    let cases = doc["masks"].as_array().unwrap();
    assert_eq!(cases.len(), 41);
    for (i, c) in cases.iter().enumerate() {
        let (h, w) = (usz(&c["h"]), usz(&c["w"]));
        let want = c["counts"].as_str().unwrap();
        let r = Rle::from_string(want, h, w).unwrap();
        assert_eq!(r.to_string(), want, "mask {i}: compressed counts");
        assert_eq!(r.area(), c["area"].as_u64().unwrap(), "mask {i}: area");
        let bbox: Vec<f64> = serde_json::from_value(c["bbox"].clone()).unwrap();
        assert_eq!(r.bbox().to_vec(), bbox, "mask {i}: bbox");
        if c["mask"].is_null() {
            continue;
        }
        let m: Vec<bool> = c["mask"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64() == Some(1))
            })
            .collect();
        let enc = Rle::encode(&m, h, w);
        assert_eq!(enc, r, "mask {i}: encode");
        assert_eq!(enc.decode(), m, "mask {i}: decode");
    }
    assert!(
        Rle::from_string("0", 2, 2).is_err(),
        "runs must cover the mask"
    );
    assert!(
        Rle::from_string("1 ", 1, 1).is_err(),
        "a space is no run character"
    );
}

/// Polygons rasterized as pycocotools' `annToRLE` (`frPyObjects` and
/// `merge`): across the image's border, concave, with repeated points, in
/// several parts.
#[test]
fn coco_polygons_rasterize_as_pycocotools() {
    let doc = segm_doc();
    let cases = doc["polygons"].as_array().unwrap();
    assert_eq!(cases.len(), 40);
    for (i, c) in cases.iter().enumerate() {
        let (h, w) = (usz(&c["h"]), usz(&c["w"]));
        let seg: Segmentation = serde_json::from_value(c["segmentation"].clone()).unwrap();
        let r = seg.to_rle(h, w).unwrap();
        assert_eq!(r.to_string(), c["counts"].as_str().unwrap(), "polygon {i}");
        assert_eq!(r.area(), c["area"].as_u64().unwrap(), "polygon {i}: area");
    }
    let short = Segmentation::Polygons(vec![vec![1.0, 2.0, 3.0, 4.0]]);
    assert!(short.to_rle(5, 5).unwrap_err().contains("6 or more"));
}

#[test]
fn coco_mask_iou_equals_pycocotools() {
    let doc = segm_doc();
    for (i, c) in doc["ious"].as_array().unwrap().iter().enumerate() {
        let (h, w) = (usz(&c["h"]), usz(&c["w"]));
        let dt = Rle::from_string(c["dt"].as_str().unwrap(), h, w).unwrap();
        let gt = Rle::from_string(c["gt"].as_str().unwrap(), h, w).unwrap();
        let got = Rle::iou(&dt, &gt, c["crowd"].as_bool().unwrap());
        let want = c["iou"].as_f64().unwrap();
        assert!((got - want).abs() <= 1e-12, "pair {i}: {got} vs {want}");
    }
}

/// COCOeval("segm"): polygon, uncompressed and crowd run-length ground
/// truth, empty images, an image with more than 100 results; COCO's
/// thresholds and HuBMAP 2023's single 0.6.
#[test]
fn coco_segm_map_equals_pycocotools() {
    let doc = segm_doc();
    for (i, case) in doc["eval"].as_array().unwrap().iter().enumerate() {
        let gt: Coco = serde_json::from_value(case["gt"].clone()).unwrap();
        let dets: Vec<Det> = serde_json::from_value(case["dets"].clone()).unwrap();
        let ap = coco::coco_ap(&gt, &dets, coco::IouType::Segm, &coco::coco_thresholds()).unwrap();
        let at06 = coco::coco_ap(&gt, &dets, coco::IouType::Segm, &[0.6]).unwrap();
        for (what, got, key) in [
            ("mAP", ap.mean, "coco_segm_map"),
            ("mAP50", ap.per_threshold[0], "coco_segm_map50"),
            ("mAP@0.6", at06.mean, "coco_segm_map_at_06"),
        ] {
            let want = case[key].as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-9,
                "case {i}: {what} podium {got}, pycocotools {want}"
            );
        }
    }
}
