//! Task detect end to end through the CLI: a detector learns synthetic
//! shapes (COCO box mAP50 on its validation fold and on the test set),
//! writes COCO results with the COCO file's image ids, predicts with TTA,
//! and a killed detector training resumes bit-identical.

use std::path::Path;

use podium::data::boxes::{read_coco, read_dets};
use podium::metrics::coco::coco_map;
use serde_json::Value;

use crate::ws::podium_at as podium;

fn ok(dir: &Path, args: &[&str]) {
    let out = podium(dir, args);
    assert!(
        out.status.success(),
        "podium {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Synthetic detection data (1 to 4 shapes of 3 classes per 64-pixel
/// image) with 5 folds.
fn data(dir: &Path, n: usize) {
    let n = format!("n_train={n}");
    ok(
        dir,
        &[
            "op",
            "synth",
            "--set",
            "task=detect",
            "--set",
            &n,
            "--set",
            "n_test=40",
            "--set",
            "size=64",
            "--set",
            "classes=3",
            "--set",
            "seed=3",
            "-o",
            "data",
        ],
    );
    ok(
        dir,
        &[
            "op",
            "folds",
            "--set",
            "k=5",
            "data/train.csv",
            "-o",
            "folds.csv",
        ],
    );
}

/// A small FCOS (simple_cnn, 32-channel pyramid, one conv per tower).
const SMALL: &[&str] = &[
    "task=detect",
    "arch=simple_cnn",
    "fpn_channels=32",
    "head_convs=1",
    "batch_size=16",
    "lr=0.004",
    "hflip=0.5",
];

#[test]
fn a_detector_learns_shapes_and_predicts_coco_results_with_tta() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    data(d, 600);
    let mut args = vec!["op", "train"];
    for s in SMALL.iter().chain(&["fold=0", "epochs=16"]) {
        args.extend(["--set", s]);
    }
    args.extend([
        "data/train_images",
        "data/train_coco.json",
        "folds.csv",
        "-o",
        "tr",
    ]);
    ok(d, &args);
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("tr/metrics.json")).unwrap()).unwrap();
    let map50 = m["coco_map50"].as_f64().unwrap();
    assert!(map50 >= 0.8, "validation mAP50 {map50}: {m}");
    assert!(m["coco_map"].as_f64().unwrap() > 0.4, "{m}");

    // oof.json: COCO results on the validation fold's images, by their
    // COCO ids, scoring as metrics.json says.
    let gt = read_coco(&d.join("data/train_coco.json")).unwrap();
    let oof = read_dets(&d.join("tr/oof.json")).unwrap();
    let folds = std::fs::read_to_string(d.join("folds.csv")).unwrap();
    let val: Vec<&str> = folds
        .lines()
        .filter(|l| l.ends_with(",0"))
        .map(|l| l.split(',').next().unwrap())
        .collect();
    let mut val_gt = gt.clone();
    val_gt
        .images
        .retain(|im| val.contains(&im.file_name.trim_end_matches(".png")));
    assert_eq!(val_gt.images.len(), val.len());
    let ids: Vec<_> = val_gt.images.iter().map(|i| i.id.clone()).collect();
    val_gt.annotations.retain(|a| ids.contains(&a.image_id));
    assert!(oof.iter().all(|o| ids.contains(&o.image_id)));
    let (_, oof50) = coco_map(&val_gt, &oof);
    assert!(
        (oof50 - map50).abs() < 1e-9,
        "oof.json {oof50}, metrics {map50}"
    );
    let ex = image::open(d.join("tr/examples.png")).unwrap();
    assert!(ex.width() >= 192 * 6);

    // predict on the test images with TTA, ids from the test COCO file.
    ok(
        d,
        &[
            "op",
            "predict",
            "--set",
            "tta=[\"default\", \"fliplr\"]",
            "--set",
            "coco=data/test_coco.json",
            "tr/best.safetensors",
            "data/test_images",
            "-o",
            "pred",
        ],
    );
    let test_gt = read_coco(&d.join("data/test_coco.json")).unwrap();
    let dets = read_dets(&d.join("pred/detections.json")).unwrap();
    assert!(dets.len() <= 100 * 40);
    let (_, test50) = coco_map(&test_gt, &dets);
    assert!(test50 >= 0.7, "test mAP50 with TTA {test50}");
    let pred = std::fs::read_to_string(d.join("pred/pred.csv")).unwrap();
    assert!(pred.starts_with("id,detections\n"), "{pred}");
}

const RESUME: &str = r#"
[pipeline]
name = "resume"

[inputs.images]
path = "data/train_images"

[inputs.labels]
path = "data/train_coco.json"

[inputs.folds]
path = "folds.csv"

[stages.train]
op = "train"
task = "detect"
images = "${inputs.images}"
labels = "${inputs.labels}"
folds = "${inputs.folds}"
fold = 1
fpn_channels = 16
head_convs = 1
epochs = 3
batch_size = 8
hflip = 0.5
ema = 0.9
seed = 7
"#;

/// As for the image-level tasks: killed after an epoch, run again, the
/// detector ends with the same bytes, out-of-fold detections included.
#[test]
fn a_killed_detector_training_resumes_and_ends_bit_identical() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    data(d, 80);
    std::fs::write(d.join("p.toml"), RESUME).unwrap();
    crate::ws::run_whole_then_killed_and_resumed(d, "train");
    for f in ["last.safetensors", "best.safetensors", "oof.json"] {
        assert_eq!(
            std::fs::read(d.join("o1/resume/train").join(f)).unwrap(),
            std::fs::read(d.join("o2/resume/train").join(f)).unwrap(),
            "{f} differs after resuming"
        );
    }
}

/// Task instance: the detector with a mask head learns the shapes' boxes
/// and masks (COCO mask mAP50 on its validation fold and, with TTA, on the
/// test set, scored against the COCO files' run-length masks), and writes
/// each detection's mask as a compressed run-length `segmentation`.
#[test]
fn an_instance_model_learns_masks_and_predicts_them_with_tta() {
    use podium::metrics::coco::{IouType, coco_ap, coco_thresholds};
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    data(d, 600);
    let mut args = vec!["op", "train"];
    for s in SMALL.iter().chain(&[
        "task=instance",
        "mask_convs=2",
        "max_det=20",
        "fold=0",
        "epochs=16",
    ]) {
        args.extend(["--set", s]);
    }
    args.extend([
        "data/train_images",
        "data/train_coco.json",
        "folds.csv",
        "-o",
        "tr",
    ]);
    ok(d, &args);
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("tr/metrics.json")).unwrap()).unwrap();
    let segm50 = m["coco_segm_map50"].as_f64().unwrap();
    assert!(segm50 >= 0.7, "validation mask mAP50 {segm50}: {m}");
    assert!(m["coco_map50"].as_f64().unwrap() >= 0.8, "{m}");

    // oof.json's masks score as metrics.json says.
    let gt = read_coco(&d.join("data/train_coco.json")).unwrap();
    let oof = read_dets(&d.join("tr/oof.json")).unwrap();
    assert!(oof.iter().all(|o| o.segmentation.is_some()));
    let mut val_gt = gt.clone();
    let ids: std::collections::HashSet<_> = oof.iter().map(|o| o.image_id.clone()).collect();
    val_gt.images.retain(|im| ids.contains(&im.id));
    val_gt.annotations.retain(|a| ids.contains(&a.image_id));
    let ap = coco_ap(&val_gt, &oof, IouType::Segm, &coco_thresholds()).unwrap();
    // Images without detections are left out here, so at least as high.
    assert!(
        ap.per_threshold[0] >= segm50 - 1e-9,
        "{} {segm50}",
        ap.per_threshold[0]
    );

    ok(
        d,
        &[
            "op",
            "predict",
            "--set",
            "tta=[\"default\", \"fliplr\", \"transpose\"]",
            "--set",
            "coco=data/test_coco.json",
            "--set",
            "max_det=20",
            "tr/best.safetensors",
            "data/test_images",
            "-o",
            "pred",
        ],
    );
    let test_gt = read_coco(&d.join("data/test_coco.json")).unwrap();
    let dets = read_dets(&d.join("pred/detections.json")).unwrap();
    assert!(
        dets.iter()
            .all(|o| o.segmentation.as_ref().is_some_and(|s| s.size == [64, 64]))
    );
    let ap = coco_ap(&test_gt, &dets, IouType::Segm, &coco_thresholds()).unwrap();
    assert!(
        ap.per_threshold[0] >= 0.7,
        "test mask mAP50 with TTA {}",
        ap.per_threshold[0]
    );
}

/// Task instance resumes bit-identical too, its out-of-fold masks included.
#[test]
fn a_killed_instance_training_resumes_and_ends_bit_identical() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    data(d, 80);
    let manifest = RESUME.replace("task = \"detect\"", "task = \"instance\"\nmask_convs = 1");
    std::fs::write(d.join("p.toml"), manifest).unwrap();
    crate::ws::run_whole_then_killed_and_resumed(d, "train");
    for f in ["last.safetensors", "best.safetensors", "oof.json"] {
        assert_eq!(
            std::fs::read(d.join("o1/resume/train").join(f)).unwrap(),
            std::fs::read(d.join("o2/resume/train").join(f)).unwrap(),
            "{f} differs after resuming"
        );
    }
}
