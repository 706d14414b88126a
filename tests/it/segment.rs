//! Task segment end to end through the CLI: a U-Net learns synthetic
//! shapes' masks (Dice on its validation fold and on the test set), writes
//! out-of-fold and test masks, predicts with TTA; trains on windows and
//! predicts over tiles from run-length masks; and a killed segmenter
//! training resumes bit-identical.

use std::path::Path;

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

/// Synthetic segmentation data (1 to 4 shapes of 3 classes per image,
/// class-index masks and a run-length column) with 5 folds.
fn data(dir: &Path, n: usize, size: u32) {
    let n = format!("n_train={n}");
    let size = format!("size={size}");
    ok(
        dir,
        &[
            "op",
            "synth",
            "--set",
            "task=segment",
            "--set",
            &n,
            "--set",
            "n_test=30",
            "--set",
            &size,
            "--set",
            "classes=3",
            "--set",
            "seed=4",
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

fn json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_segmenter_learns_shape_masks_and_predicts_them_with_tta() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    data(d, 300, 64);
    let mut args = vec!["op", "train"];
    for s in [
        "task=segment",
        "masks=data/train_masks",
        "fold=0",
        "epochs=8",
        "batch_size=16",
        "lr=0.003",
        "hflip=0.5",
    ] {
        args.extend(["--set", s]);
    }
    args.extend([
        "data/train_images",
        "data/train.csv",
        "folds.csv",
        "-o",
        "tr",
    ]);
    ok(d, &args);
    let m = json(&d.join("tr/metrics.json"));
    let dice = m["dice"].as_f64().unwrap();
    assert!(dice >= 0.8, "validation dice {dice}: {m}");
    assert!(m["iou"].as_f64().unwrap() <= dice, "{m}");

    // oof: the validation fold's masks and probabilities, and their
    // run-length encodings, one column per class.
    let folds = std::fs::read_to_string(d.join("folds.csv")).unwrap();
    let mut val: Vec<String> = folds
        .lines()
        .filter(|l| l.ends_with(",0"))
        .map(|l| format!("{}.png", l.split(',').next().unwrap()))
        .collect();
    val.sort();
    assert_eq!(files(&d.join("tr/oof/masks")), val);
    assert_eq!(files(&d.join("tr/oof/probs")), ["1", "2", "3"]);
    let oof = std::fs::read_to_string(d.join("tr/oof.csv")).unwrap();
    assert!(oof.starts_with("id,1,2,3\n"), "{oof}");
    assert_eq!(oof.lines().count(), val.len() + 1);
    // The oof masks score what metrics.json says.
    ok(
        d,
        &[
            "op",
            "evaluate",
            "--set",
            "metric=dice",
            "data/train_masks",
            "tr/oof/masks",
            "-o",
            "oof_dice.json",
        ],
    );
    let od = json(&d.join("oof_dice.json"))["dice"].as_f64().unwrap();
    assert!(od >= 0.75, "oof masks' dice {od}");
    let ex = image::open(d.join("tr/examples.png")).unwrap();
    assert!(ex.width() >= 192 * 6);

    // predict the test images with flip TTA; score against their masks.
    ok(
        d,
        &[
            "op",
            "predict",
            "--set",
            "tta=[\"default\", \"fliplr\"]",
            "tr/best.safetensors",
            "data/test_images",
            "-o",
            "pred",
        ],
    );
    assert_eq!(files(&d.join("pred/masks")).len(), 30);
    let p = image::open(d.join("pred/probs/2/test_00003.png")).unwrap();
    assert_eq!((p.width(), p.height()), (64, 64));
    ok(
        d,
        &[
            "op",
            "evaluate",
            "--set",
            "metric=[\"dice\", \"iou\"]",
            "data/test_masks",
            "pred/masks",
            "-o",
            "test.json",
        ],
    );
    let s = json(&d.join("test.json"));
    assert!(s["dice"].as_f64().unwrap() >= 0.75, "test {s}");
    let pred = std::fs::read_to_string(d.join("pred/pred.csv")).unwrap();
    assert!(pred.starts_with("id,1,2,3\n"), "{pred}");
    let pm = json(&d.join("pred/metrics.json"));
    assert!(pm["ms_per_image"].as_f64().unwrap() > 0.0);
}

/// HuBMAP's way: masks as run-length encodings in the labels table,
/// training on windows at native resolution, prediction over overlapping
/// tiles (what the checkpoint asks for), scored on the run-length table.
#[test]
fn a_segmenter_trains_on_windows_of_run_length_masks_and_predicts_over_tiles() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    data(d, 40, 96);
    let mut args = vec!["op", "train"];
    for s in [
        "task=segment",
        "tile=true",
        "image_size=48",
        "fold=1",
        "epochs=2",
        "batch_size=8",
    ] {
        args.extend(["--set", s]);
    }
    args.extend([
        "data/train_images",
        "data/train.csv",
        "folds.csv",
        "-o",
        "tr",
    ]);
    ok(d, &args);
    let oof = std::fs::read_to_string(d.join("tr/oof.csv")).unwrap();
    assert!(oof.starts_with("id,mask\n"), "{oof}");
    let m = json(&d.join("tr/metrics.json"));
    assert!((0.0..=1.0).contains(&m["dice"].as_f64().unwrap()), "{m}");
    ok(
        d,
        &[
            "op",
            "predict",
            "tr/best.safetensors",
            "data/test_images",
            "-o",
            "pred",
        ],
    );
    let log = std::fs::read_to_string(d.join("pred/pred.csv")).unwrap();
    assert!(log.starts_with("id,mask\n"));
    // Tiles of 48 over 96-pixel images: probabilities at full size.
    let p = image::open(d.join("pred/probs/test_00000.png")).unwrap();
    assert_eq!((p.width(), p.height()), (96, 96));
    ok(
        d,
        &[
            "op",
            "evaluate",
            "--set",
            "metric=[\"dice\", \"iou\"]",
            "--set",
            "column=mask",
            "data/test.csv",
            "pred/pred.csv",
            "-o",
            "test.json",
        ],
    );
    let s = json(&d.join("test.json"));
    assert!((0.0..=1.0).contains(&s["dice"].as_f64().unwrap()), "{s}");
}

const RESUME: &str = r#"
[pipeline]
name = "resume"

[inputs.images]
path = "data/train_images"

[inputs.labels]
path = "data/train.csv"

[inputs.masks]
path = "data/train_masks"

[inputs.folds]
path = "folds.csv"

[stages.train]
op = "train"
task = "segment"
images = "${inputs.images}"
labels = "${inputs.labels}"
masks = "${inputs.masks}"
folds = "${inputs.folds}"
fold = 1
decoder_width = 8
epochs = 3
batch_size = 8
hflip = 0.5
ema = 0.9
seed = 7
"#;

/// Killed after an epoch, run again, the segmenter ends with the same
/// bytes: weights, out-of-fold masks and their encodings.
#[test]
fn a_killed_segmenter_training_resumes_and_ends_bit_identical() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    data(d, 80, 32);
    std::fs::write(d.join("p.toml"), RESUME).unwrap();
    crate::ws::run_whole_then_killed_and_resumed(d, "train");
    let masks = files(&d.join("o1/resume/train/oof/masks"));
    assert!(!masks.is_empty());
    let mut compared: Vec<String> = ["last.safetensors", "best.safetensors", "oof.csv"]
        .map(String::from)
        .to_vec();
    compared.extend(masks.iter().map(|m| format!("oof/masks/{m}")));
    for f in compared {
        assert_eq!(
            std::fs::read(d.join("o1/resume/train").join(&f)).unwrap(),
            std::fs::read(d.join("o2/resume/train").join(&f)).unwrap(),
            "{f} differs after resuming"
        );
    }
}

/// `mask_ensemble` averages (weighted) or takes the max of probability
/// PNGs pixel by pixel, numbers its classes in numeric order of their
/// directories (2 before 10), and writes masks and run-length cells at the
/// threshold; inputs of other sizes are an error naming the file.
#[test]
fn mask_ensemble_merges_probabilities_pixel_by_pixel() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let put = |root: &str, class: &str, v: [u8; 4]| {
        let dir = d.join(root).join(class);
        std::fs::create_dir_all(&dir).unwrap();
        image::GrayImage::from_raw(2, 2, v.to_vec())
            .unwrap()
            .save(dir.join("a.png"))
            .unwrap();
    };
    put("p1", "2", [255, 0, 100, 200]);
    put("p1", "10", [0, 255, 100, 0]);
    put("p2", "2", [255, 0, 0, 100]);
    put("p2", "10", [0, 0, 200, 0]);
    ok(
        d,
        &[
            "op",
            "mask_ensemble",
            "--set",
            "weights=[3, 1]",
            "p1",
            "p2",
            "-o",
            "m",
        ],
    );
    let probs = |root: &str, c: &str| {
        image::open(d.join(root).join("probs").join(c).join("a.png"))
            .unwrap()
            .into_luma8()
            .into_raw()
    };
    // (3·a + b) / 4, rounded.
    assert_eq!(probs("m", "2"), [255, 0, 75, 175]);
    assert_eq!(probs("m", "10"), [0, 191, 125, 0]);
    let masks = image::open(d.join("m/masks/a.png")).unwrap().into_luma8();
    // Class "2" is index 1, "10" index 2; below 0.5 everywhere: 0.
    assert_eq!(masks.into_raw(), [1, 2, 0, 1]);
    let pred = std::fs::read_to_string(d.join("m/pred.csv")).unwrap();
    assert_eq!(pred, "id,2,10\na,1 1 4 1,3 1\n");
    ok(
        d,
        &[
            "op",
            "mask_ensemble",
            "--set",
            "method=max",
            "p1",
            "p2",
            "-o",
            "x",
        ],
    );
    assert_eq!(probs("x", "10"), [0, 255, 200, 0]);
    put("p3", "2", [0; 4]);
    let dir = d.join("p3/10");
    std::fs::create_dir_all(&dir).unwrap();
    image::GrayImage::new(3, 2).save(dir.join("a.png")).unwrap();
    let out = podium(d, &["op", "mask_ensemble", "p1", "p3", "-o", "y"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("p3/10/a.png") && err.contains("3×2"), "{err}");
}

/// Task segment from a COCO ground-truth file (HuBMAP's and most
/// microscopy sets' format): each class's mask is the union of its objects'
/// `segmentation`s, classes named by the file's categories; `masks` beside
/// a COCO file is an error.
#[test]
fn a_segmenter_trains_on_a_coco_files_object_masks() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(
        d,
        &[
            "op",
            "synth",
            "--set",
            "task=detect",
            "--set",
            "n_train=40",
            "--set",
            "n_test=4",
            "--set",
            "size=48",
            "--set",
            "classes=2",
            "--set",
            "seed=5",
            "-o",
            "data",
        ],
    );
    ok(
        d,
        &[
            "op",
            "folds",
            "--set",
            "k=4",
            "data/train.csv",
            "-o",
            "folds.csv",
        ],
    );
    let mut args = vec!["op", "train"];
    let sets = [
        "task=segment",
        "fold=0",
        "epochs=1",
        "batch_size=8",
        "decoder_width=8",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    let inputs = ["data/train_images", "data/train_coco.json", "folds.csv"];
    args.extend(inputs);
    args.extend(["-o", "tr"]);
    ok(d, &args);
    let m = json(&d.join("tr/metrics.json"));
    assert!((0.0..=1.0).contains(&m["dice"].as_f64().unwrap()), "{m}");
    // One run-length column per category, named as the COCO file names it.
    let coco = json(&d.join("data/train_coco.json"));
    let names: Vec<&str> = coco["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    let oof = std::fs::read_to_string(d.join("tr/oof.csv")).unwrap();
    assert_eq!(
        oof.lines().next().unwrap(),
        format!("id,{}", names.join(","))
    );
    // The masks are the objects': the same run (same seed) on the same file
    // with its annotations taken out ends elsewhere.
    let mut none = coco.clone();
    none["annotations"] = serde_json::json!([]);
    std::fs::write(d.join("data/none.json"), none.to_string()).unwrap();
    let empty_args: Vec<&str> = args
        .iter()
        .map(|&a| match a {
            "data/train_coco.json" => "data/none.json",
            "tr" => "tr_none",
            a => a,
        })
        .collect();
    ok(d, &empty_args);
    let e = json(&d.join("tr_none/metrics.json"));
    assert_ne!(e["val_loss"], m["val_loss"], "{e} {m}");
    let mut bad = vec![
        "op",
        "train",
        "--set",
        "task=segment",
        "--set",
        "masks=data/train_images",
    ];
    bad.extend(inputs);
    bad.extend(["-o", "bad"]);
    let out = podium(d, &bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`masks`: with a COCO file as `labels`"),
        "{err}"
    );
}
