//! The data ops through `podium op` (the pinned interface): results on good
//! input, and on bad input a one-line `error:` naming the file, a non-zero
//! exit and the output left untouched.

use std::path::Path;
use std::process::Output;

use serde_json::{Value, json};

use crate::ws::Ws;

impl Ws {
    fn op(&self, args: &[&str]) -> Output {
        self.cmd(&["op"]).args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) {
        let out = self.op(args);
        assert!(
            out.status.success(),
            "podium op {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Fails with one `error:` line mentioning `needle`; the output
    /// directory (`-o failed`, holding one file) untouched.
    fn fails(&self, args: &[&str], needle: &str) {
        self.write("failed/out.txt", "untouched");
        let mut all = args.to_vec();
        all.extend(["-o", "failed"]);
        let out = self.op(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "podium op {args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "podium op {args:?}: {err}");
        assert!(lines[0].contains(needle), "podium op {args:?}: {err}");
        assert_eq!(self.read("failed/out.txt"), "untouched");
        let entries = std::fs::read_dir(self.dir.path().join("failed")).unwrap();
        assert_eq!(entries.count(), 1, "podium op {args:?} left files in -o");
    }
}

fn det(image: Value, cat: i64, bbox: [f64; 4], score: f64) -> Value {
    json!({"image_id": image, "category_id": cat, "bbox": bbox, "score": score})
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn wbf_fuses_pixel_boxes_through_image_sizes_and_writes_pixels_back() {
    let ws = Ws::new();
    let a = json!([det(json!("img1"), 1, [100.0, 50.0, 200.0, 100.0], 0.9)]);
    let b = json!([
        det(json!("img1"), 1, [110.0, 50.0, 200.0, 100.0], 0.3),
        det(json!(7), 2, [0.0, 0.0, 10.0, 10.0], 0.5)
    ]);
    ws.write("a.json", &a.to_string());
    ws.write("b.json", &b.to_string());
    let images = json!({"images": [
        {"id": "img1", "width": 1000, "height": 500},
        {"id": 7, "width": 20, "height": 20}
    ]});
    ws.write("images.json", &images.to_string());
    ws.ok(&[
        "wbf",
        "--set",
        "images=images.json",
        "--set",
        "conf_type=max",
        "--set",
        "weights=[2,1]",
        "a.json",
        "b.json",
        "-o",
        "fused.json",
    ]);
    let out = read_json(&ws.path("fused.json"));
    let out = out.as_array().unwrap();
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0]["image_id"], json!("img1"));
    assert_eq!(out[1]["image_id"], json!(7));
    let x = out[0]["bbox"][0].as_f64().unwrap();
    let want = (1.8 * 100.0 + 0.3 * 110.0) / 2.1;
    assert!((x - want).abs() < 1e-3, "{x} vs {want}");
    // max: the best weighted score over the largest weight.
    assert!((out[0]["score"].as_f64().unwrap() - 0.9).abs() < 1e-6);
    let bbox: Vec<f64> = serde_json::from_value(out[1]["bbox"].clone()).unwrap();
    for (g, w) in bbox.iter().zip([0.0, 0.0, 10.0, 10.0]) {
        assert!((g - w).abs() < 1e-4, "{bbox:?}");
    }
}

#[test]
fn box_ops_reject_bad_input_with_one_error_line_naming_the_file() {
    let ws = Ws::new();
    ws.write(
        "ok.json",
        &json!([det(json!(1), 0, [0.1, 0.1, 0.2, 0.2], 0.5)]).to_string(),
    );
    ws.write(
        "pixels.json",
        &json!([det(json!(1), 0, [10.0, 10.0, 200.0, 200.0], 0.5)]).to_string(),
    );
    ws.write(
        "broken.json",
        "[{\"image_id\": 1, \"category_id\": 0,\n \"bbox\": [0.1, 0.1, 0.2, 0.2]",
    );
    ws.write(
        "short.json",
        "[{\"image_id\": 1, \"category_id\": 0, \"bbox\": [0.1, 0.1, 0.2], \"score\": 1}]",
    );
    ws.write(
        "nan.json",
        "[{\"image_id\": 1, \"category_id\": 0, \"bbox\": [0.1, 0.1, 0.2, 0.2], \"score\": NaN}]",
    );
    ws.write("empty.json", "");
    ws.write(
        "sizes.json",
        &json!({"images": [{"id": 2, "width": 10, "height": 10}]}).to_string(),
    );
    for op in ["wbf", "nms", "soft_nms"] {
        ws.fails(
            &[op, "ok.json", "pixels.json"],
            "pixels.json: boxes look like pixels",
        );
        ws.fails(
            &[op, "ok.json", "broken.json"],
            "broken.json:2: EOF while parsing",
        );
        ws.fails(&[op, "short.json"], "short.json:1: invalid length 3");
        ws.fails(&[op, "nan.json"], "nan.json:1: expected value");
        ws.fails(&[op, "empty.json"], "empty.json: empty file");
        ws.fails(
            &[op, "missing.json"],
            "missing.json: no such file or directory",
        );
        ws.fails(
            &[op, "--set", "images=sizes.json", "ok.json"],
            "image 1 is not in the image sizes file",
        );
        ws.fails(
            &[op, "--set", "weights=[1,2,3]", "ok.json"],
            "3 weights for 1 models; give one per item of `boxes`",
        );
    }
}

fn fixture(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
        .display()
        .to_string()
}

#[test]
fn folds_writes_one_fold_per_id_for_every_kind() {
    let ws = Ws::new();
    let mut csv = String::from("id,label,patient\n");
    for i in 0..60 {
        csv += &format!("r{i},{},{}\n", ["a", "b", "c"][i % 3], i / 4);
    }
    ws.write("labels.csv", &csv);
    for (kind, extra) in [
        ("kfold", vec![]),
        ("stratified", vec!["--set", "by=label"]),
        ("group", vec!["--set", "group=patient"]),
        (
            "stratified_group",
            vec!["--set", "by=label", "--set", "group=patient"],
        ),
    ] {
        let mut args = vec!["folds", "--set", "k=4", "--set"];
        let kind_arg = format!("kind={kind}");
        args.push(&kind_arg);
        args.extend(extra);
        args.extend(["labels.csv", "-o", "folds.csv"]);
        ws.ok(&args);
        let text = ws.read("folds.csv");
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("id,fold"));
        let rows: Vec<(String, usize)> = lines
            .map(|l| {
                let (id, f) = l.split_once(',').unwrap();
                (id.to_string(), f.parse().unwrap())
            })
            .collect();
        assert_eq!(rows.len(), 60, "{kind}");
        assert!(
            rows.iter()
                .enumerate()
                .all(|(i, (id, f))| *id == format!("r{i}") && *f < 4)
        );
    }
    ws.ok(&[
        "folds",
        "--set",
        "kind=multilabel",
        "--set",
        "by=Target",
        &fixture("ops/folds/multilabel_hpa.csv"),
        "-o",
        "ml.csv",
    ]);
    assert_eq!(ws.read("ml.csv").lines().count(), 3001);
}

/// COCO images split into folds by an image field (SIIM's study, HuBMAP's
/// whole-slide image), stratified by their category.
#[test]
fn folds_split_coco_images_grouped_by_a_field_of_theirs() {
    let ws = Ws::new();
    let mut images = Vec::new();
    let mut anns = Vec::new();
    for i in 0..40 {
        images.push(json!({"id": i + 1, "width": 8, "height": 8,
            "file_name": format!("img{i}.png"), "study_id": format!("s{}", i / 4)}));
        // Images 0, 4, 8, … have no annotation; the others one or two.
        for c in 0..(i % 4).min(2) {
            anns.push(json!({"id": anns.len() + 1, "image_id": i + 1,
                "category_id": (i + c) % 2, "bbox": [1, 1, 2, 2]}));
        }
    }
    ws.write(
        "coco.json",
        &json!({"images": images, "annotations": anns}).to_string(),
    );
    ws.ok(&[
        "folds",
        "--set",
        "k=5",
        "--set",
        "kind=stratified_group",
        "--set",
        "by=category",
        "--set",
        "group=study_id",
        "coco.json",
        "-o",
        "folds.csv",
    ]);
    let text = ws.read("folds.csv");
    let fold: std::collections::HashMap<&str, &str> = text
        .lines()
        .skip(1)
        .map(|l| l.split_once(',').unwrap())
        .collect();
    assert_eq!(fold.len(), 40);
    for i in 0..40 {
        let id = format!("img{i}");
        let first = format!("img{}", i / 4 * 4);
        assert_eq!(
            fold[id.as_str()],
            fold[first.as_str()],
            "{id} left its study"
        );
    }
    let used: std::collections::BTreeSet<&&str> = fold.values().collect();
    assert_eq!(used.len(), 5, "every fold gets studies: {text}");
    // The rows folds splits: the images' fields, their counts and categories.
    let t = podium::data::boxes::coco_table(&ws.path("coco.json")).unwrap();
    assert_eq!(t.columns, ["id", "study_id", "count", "category"]);
    assert_eq!(t.ids[..2], ["img0", "img1"]);
    assert_eq!(t.rows[0], ["s0", "0", "none"]);
    assert_eq!(t.rows[1], ["s0", "1", "1"]);
    assert_eq!(t.rows[2], ["s0", "2", "0"], "a tie goes to the smaller id");
    ws.fails(
        &[
            "folds",
            "--set",
            "kind=group",
            "--set",
            "group=site",
            "coco.json",
        ],
        "site",
    );
}

#[test]
fn folds_rejects_bad_input_with_one_error_line_naming_the_file() {
    let ws = Ws::new();
    ws.write("labels.csv", "id,label\na,x\nb,y\nc,x\n");
    ws.write("dup.csv", "id,label\na,x\na,y\nc,x\n");
    ws.write("ragged.csv", "id,label\na,x\nb\n");
    ws.write("cols.csv", "id,l0,l1\na,1,0\nb,0,2\n");
    ws.fails(
        &["folds", "--set", "k=5", "labels.csv"],
        "labels.csv: 5 folds, but only 3 rows",
    );
    ws.fails(
        &[
            "folds",
            "--set",
            "k=2",
            "--set",
            "kind=stratified",
            "--set",
            "by=lable",
            "labels.csv",
        ],
        "labels.csv:1: no column `lable`; columns: label",
    );
    ws.fails(
        &["folds", "--set", "k=2", "dup.csv"],
        "dup.csv:3: id `a` appears twice",
    );
    ws.fails(
        &["folds", "--set", "k=2", "ragged.csv"],
        "ragged.csv:3: row has 1 fields, the header has 2",
    );
    ws.fails(
        &[
            "folds",
            "--set",
            "k=2",
            "--set",
            "kind=multilabel",
            "--set",
            "by=[\"l0\",\"l1\"]",
            "cols.csv",
        ],
        "cols.csv:3: `2` in column `l1` (id b) is not 0 or 1",
    );
    ws.fails(
        &["folds", "--set", "kind=group", "labels.csv"],
        "needs `group`, the group column",
    );
    ws.fails(
        &[
            "folds",
            "--set",
            "k=2",
            "--set",
            "kind=group",
            "--set",
            "group=label",
            "--set",
            "k=3",
            "labels.csv",
        ],
        "3 folds, but only 2 groups",
    );
}

fn metric(ws: &Ws, file: &str, name: &str) -> f64 {
    read_json(&ws.path(file))[name].as_f64().unwrap()
}

#[test]
fn evaluate_joins_on_id_and_writes_metrics() {
    let ws = Ws::new();
    ws.write(
        "truth.csv",
        "id,grade,Target\na,0,1 2\nb,1,3\nc,2,\nd,2,1\n",
    );
    ws.write("pred.csv", "id,grade\nd,2\nc,1\nb,1\na,0\n");
    ws.ok(&[
        "evaluate",
        "--set",
        "metric=[\"accuracy\",\"qwk\"]",
        "truth.csv",
        "pred.csv",
        "-o",
        "m.json",
    ]);
    assert_eq!(metric(&ws, "m.json", "accuracy"), 0.75);
    assert!(metric(&ws, "m.json", "qwk") > 0.7);
    ws.write("labels.csv", "id,Target\nd,1\nc,\nb,3\na,2 1\n");
    ws.ok(&[
        "evaluate",
        "--set",
        "metric=accuracy",
        "--set",
        "column=Target",
        "truth.csv",
        "labels.csv",
        "-o",
        "t.json",
    ]);
    assert_eq!(metric(&ws, "t.json", "accuracy"), 1.0);
    ws.write("gt.json", &json!({"images": [{"id": 1, "width": 10, "height": 10}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0}],
        "categories": [{"id": 1}]}).to_string());
    ws.write(
        "dets.json",
        &json!([det(json!(1), 1, [1.0, 1.0, 4.0, 4.0], 0.9)]).to_string(),
    );
    ws.ok(&[
        "evaluate",
        "--set",
        "metric=[\"coco_map\",\"coco_map50\"]",
        "gt.json",
        "dets.json",
        "-o",
        "c.json",
    ]);
    // pycocotools' precision is tp / (tp + fp + eps): a perfect match is
    // 1 − 2⁻⁵² per point, read back exactly (serde_json's float_roundtrip).
    let map = metric(&ws, "c.json", "coco_map");
    assert!((map - 1.0).abs() < 1e-12, "{map}");
}

#[test]
fn evaluate_rejects_bad_input_with_one_error_line_naming_the_file() {
    let ws = Ws::new();
    ws.write("truth.csv", "id,y\na,0\nb,1\n");
    ws.write("missing_id.csv", "id,y\na,0.5\n");
    ws.write("extra_id.csv", "id,y\na,0.5\nb,0.5\nz,0.1\n");
    ws.write("nan.csv", "id,y\na,0.5\nb,nan\n");
    ws.write("other.csv", "id,p\na,0.5\nb,0.5\n");
    ws.write("one_class.csv", "id,y\na,1\nb,1\n");
    ws.write(
        "dets.json",
        &json!([det(json!(9), 1, [1.0, 1.0, 4.0, 4.0], 0.9)]).to_string(),
    );
    ws.write(
        "gt.json",
        &json!({"images": [{"id": 1, "width": 10, "height": 10}]}).to_string(),
    );
    ws.fails(
        &["evaluate", "truth.csv", "missing_id.csv"],
        "missing_id.csv: no prediction for id `b` (line 3 of",
    );
    ws.fails(
        &["evaluate", "truth.csv", "extra_id.csv"],
        "extra_id.csv:4: id `z` is not in the truth",
    );
    ws.fails(
        &["evaluate", "--set", "metric=auc", "truth.csv", "nan.csv"],
        "nan.csv:3: `nan` in column `y` (id b) is not a finite number",
    );
    ws.fails(
        &["evaluate", "truth.csv", "other.csv"],
        "other.csv:1: no value column in common with",
    );
    ws.fails(
        &[
            "evaluate",
            "--set",
            "metric=auc",
            "one_class.csv",
            "truth.csv",
        ],
        "one_class.csv: log_loss and auc need two classes in column `y`, found 1",
    );
    ws.fails(
        &[
            "evaluate",
            "--set",
            "metric=coco_map",
            "gt.json",
            "dets.json",
        ],
        "dets.json: image 9 is not in the ground truth",
    );
    ws.fails(
        &[
            "evaluate",
            "--set",
            "metric=kappa",
            "truth.csv",
            "truth.csv",
        ],
        "unknown metric `kappa`",
    );
}

#[test]
fn ensemble_aligns_rows_by_id_and_rejects_mismatched_tables() {
    let ws = Ws::new();
    ws.write("a.csv", "id,p0,p1\nx,0.2,0.8\ny,0.6,0.4\n");
    ws.write("b.csv", "id,p1,p0\ny,0.2,0.8\nx,0.6,0.4\n");
    ws.ok(&[
        "ensemble",
        "--set",
        "weights=[3,1]",
        "a.csv",
        "b.csv",
        "-o",
        "e.csv",
    ]);
    let got: Vec<Vec<String>> = ws
        .read("e.csv")
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    assert_eq!(got[0], ["id", "p0", "p1"]);
    for (row, want) in got[1..]
        .iter()
        .zip([("x", [0.25, 0.75]), ("y", [0.65, 0.35])])
    {
        assert_eq!(row[0], want.0);
        for (g, w) in row[1..].iter().zip(want.1) {
            assert!((g.parse::<f64>().unwrap() - w).abs() < 1e-12, "{row:?}");
        }
    }
    ws.write("c.csv", "id,p0,p1\nx,0.2,0.8\nz,0.6,0.4\n");
    ws.write("d.csv", "id,p0\nx,0.2\ny,0.6\n");
    ws.write("zero.csv", "id,p0,p1\nx,0,0.8\ny,0.6,0.4\n");
    ws.fails(&["ensemble", "a.csv", "c.csv"], "c.csv: no row for id `y`");
    ws.fails(&["ensemble", "a.csv", "d.csv"], "d.csv:1: no column `p1`");
    ws.fails(
        &["ensemble", "--set", "method=geometric", "a.csv", "zero.csv"],
        "zero.csv:2: `0` in column `p0` (id x) is not positive",
    );
    ws.fails(
        &["ensemble", "--set", "weights=[1]", "a.csv", "b.csv"],
        "1 weights for 2 tables; give one per item of `preds`",
    );
}

fn write_images(ws: &Ws) {
    std::fs::create_dir_all(ws.path("imgs/sub")).unwrap();
    let rgb = image::RgbImage::from_fn(40, 20, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 12) as u8, 90])
    });
    rgb.save(ws.path("imgs/a.png")).unwrap();
    rgb.save(ws.path("imgs/sub/b.jpg")).unwrap();
    let g16 = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(30, 30, |x, _| {
        image::Luma([(x * 2000) as u16])
    });
    g16.save(ws.path("imgs/c.tif")).unwrap();
}

#[test]
fn resize_writes_every_size_and_transforms_boxes() {
    let ws = Ws::new();
    write_images(&ws);
    ws.write("coco.json", &json!({"images": [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 20},
        {"id": 2, "file_name": "sub/b.jpg", "width": 40, "height": 20}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 10, 10, 5], "area": 50, "iscrowd": 0}],
        "categories": [{"id": 1}]}).to_string());
    ws.ok(&[
        "resize",
        "--set",
        "sizes=[16, 8]",
        "--set",
        "mode=longest_side_pad",
        "--set",
        "boxes=coco.json",
        "imgs",
        "-o",
        "out",
    ]);
    for (size, name) in [
        (16, "a.png"),
        (16, "sub/b.png"),
        (16, "c.png"),
        (8, "a.png"),
    ] {
        let img = image::open(ws.path(&format!("out/images_{size}/{name}"))).unwrap();
        assert_eq!((img.width(), img.height()), (size, size), "{name}");
    }
    let c16 = image::open(ws.path("out/images_16/c.png")).unwrap();
    assert!(
        matches!(c16, image::DynamicImage::ImageLuma16(_)),
        "16-bit stays 16-bit"
    );
    // 40x20 into 16: scale 0.4, 16x8 placed 4 rows down.
    let coco = read_json(&ws.path("out/coco_16.json"));
    let bbox: Vec<f64> = serde_json::from_value(coco["annotations"][0]["bbox"].clone()).unwrap();
    assert_eq!(bbox, [8.0, 8.0, 4.0, 2.0]);
    assert_eq!(coco["images"][1]["file_name"], json!("sub/b.png"));
    assert_eq!(coco["images"][0]["width"], json!(16.0));
}

#[test]
fn resize_names_a_corrupt_image_or_skips_it_into_a_report() {
    let ws = Ws::new();
    write_images(&ws);
    ws.write("imgs/bad.png", "not a png");
    ws.fails(
        &["resize", "--set", "sizes=[8]", "imgs"],
        "bad.png: cannot decode the image",
    );
    ws.ok(&[
        "resize",
        "--set",
        "sizes=[8]",
        "--set",
        "on_error=skip",
        "imgs",
        "-o",
        "out",
    ]);
    let report = ws.read("out/skipped.csv");
    assert!(report.starts_with("id,error\nbad.png,"), "{report}");
    assert!(ws.path("out/images_8/a.png").exists());
    ws.fails(
        &["resize", "--set", "sizes=[0]", "imgs"],
        "0 is not a whole number of pixels",
    );
    ws.write("empty/readme.txt", "x");
    ws.fails(&["resize", "empty"], "empty: no PNG, JPEG or TIFF images");
}

#[test]
fn stats_gives_per_channel_mean_and_std_in_unit_range() {
    let ws = Ws::new();
    std::fs::create_dir_all(ws.path("imgs")).unwrap();
    // Red channel 0 and 255 in equal parts: mean 0.5, std 0.5; green constant 51: 0.2, 0.
    image::RgbImage::from_fn(4, 2, |x, _| {
        image::Rgb([if x < 2 { 0 } else { 255 }, 51, 0])
    })
    .save(ws.path("imgs/a.png"))
    .unwrap();
    image::RgbImage::from_fn(2, 2, |x, _| {
        image::Rgb([if x < 1 { 0 } else { 255 }, 51, 0])
    })
    .save(ws.path("imgs/b.png"))
    .unwrap();
    ws.ok(&["stats", "imgs", "-o", "s.json"]);
    let s = read_json(&ws.path("s.json"));
    let close = |v: &Value, w: f64| assert!((v.as_f64().unwrap() - w).abs() < 1e-12, "{v} vs {w}");
    close(&s["mean"][0], 0.5);
    close(&s["std"][0], 0.5);
    close(&s["mean"][1], 0.2);
    close(&s["std"][1], 0.0);
    assert_eq!(s["pixels"], json!(12));
}

#[test]
fn synth_is_deterministic_and_shaped_like_a_competition() {
    let ws = Ws::new();
    for task in [
        "classify",
        "multilabel",
        "regress",
        "box",
        "detect",
        "segment",
    ] {
        let set = format!("task={task}");
        for out in ["a", "b"] {
            ws.ok(&[
                "synth",
                "--set",
                &set,
                "--set",
                "n_train=12",
                "--set",
                "n_test=5",
                "--set",
                "size=16",
                "-o",
                out,
            ]);
        }
        for f in [
            "train.csv",
            "test.csv",
            "sample_submission.csv",
            "train_images/train_00011.png",
            "test_images/test_00004.png",
        ] {
            assert_eq!(
                std::fs::read(ws.path(&format!("a/{f}"))).unwrap(),
                std::fs::read(ws.path(&format!("b/{f}"))).unwrap(),
                "{task}: {f} differs between two runs"
            );
        }
        assert_eq!(ws.read("a/train.csv").lines().count(), 13, "{task}");
        assert_eq!(
            ws.read("a/sample_submission.csv").lines().count(),
            6,
            "{task}"
        );
        std::fs::remove_dir_all(ws.path("a")).unwrap();
        std::fs::remove_dir_all(ws.path("b")).unwrap();
    }
}

#[test]
fn synth_draws_shapeless_images_and_one_class_for_detection() {
    let ws = Ws::new();
    let det = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "synth",
            "--set",
            "task=detect",
            "--set",
            "n_train=40",
            "--set",
            "n_test=4",
            "--set",
            "size=24",
        ];
        args.extend_from_slice(extra);
        args.extend(["-o", out]);
        ws.ok(&args);
    };
    det("full", &[]);
    det("some", &["--set", "empty=0.5", "--set", "classes=1"]);
    let boxed = |out: &str| -> (usize, Vec<i64>) {
        let c = read_json(&ws.path(&format!("{out}/train_coco.json")));
        let anns = c["annotations"].as_array().unwrap();
        let mut with: Vec<i64> = anns
            .iter()
            .map(|a| a["image_id"].as_i64().unwrap())
            .collect();
        with.dedup();
        let cats = anns
            .iter()
            .map(|a| a["category_id"].as_i64().unwrap())
            .collect();
        (with.len(), cats)
    };
    assert_eq!(boxed("full").0, 40, "every image has a shape by default");
    let (with, cats) = boxed("some");
    assert!(
        (10..=30).contains(&with),
        "about half of 40 images with shapes: {with}"
    );
    assert!(cats.iter().all(|&c| c == 0), "one class");
    // The rest are images like any other, listed without annotations.
    let c = read_json(&ws.path("some/train_coco.json"));
    assert_eq!(c["images"].as_array().unwrap().len(), 40);
    assert_eq!(
        ws.read("some/sample_submission.csv")
            .lines()
            .take(2)
            .collect::<Vec<_>>(),
        ["id,PredictionString", "test_00000,none 1 0 0 1 1"]
    );
    // Each object's visible pixels, inside its box; scored against
    // themselves, the masks are perfect.
    let coco: podium::data::boxes::Coco =
        serde_json::from_value(read_json(&ws.path("full/train_coco.json"))).unwrap();
    let mut results = Vec::new();
    for a in &coco.annotations {
        let Some(podium::data::coco_rle::Segmentation::Rle(r)) = &a.segmentation else {
            panic!("annotation {} without a run-length mask", a.id);
        };
        let m = r.to_rle().unwrap();
        assert_eq!((m.h, m.w), (24, 24));
        let [x, y, w, h] = a.bbox;
        let [mx, my, mw, mh] = m.bbox();
        if m.area() > 0 {
            assert!(mx >= x.floor() && my >= y.floor(), "annotation {}", a.id);
            assert!(
                mx + mw <= (x + w).ceil() && my + mh <= (y + h).ceil(),
                "annotation {}",
                a.id
            );
        }
        results.push(
            json!({"image_id": a.image_id, "category_id": a.category_id, "bbox": a.bbox,
            "score": 1.0, "segmentation": r}),
        );
    }
    ws.write("self.json", &Value::Array(results).to_string());
    ws.ok(&[
        "evaluate",
        "--set",
        "metric=coco_segm_map",
        "full/train_coco.json",
        "self.json",
        "-o",
        "self_m.json",
    ]);
    assert_eq!(read_json(&ws.path("self_m.json"))["coco_segm_map"], 1.0);
    ws.fails(
        &["synth", "--set", "classes=1"],
        "classes must be from 2 to 8 for task classify",
    );
    ws.fails(
        &["synth", "--set", "empty=0.2"],
        "empty applies to tasks detect and segment only",
    );
    ws.fails(
        &["synth", "--set", "task=detect", "--set", "empty=1.5"],
        "empty must be from 0 to 1",
    );
}

#[test]
fn postprocess_fits_thresholds_and_grades_and_overrides_by_nearest_neighbour() {
    let ws = Ws::new();
    // Class "1" is present when its score is above 0.3; "0" above 0.6.
    ws.write(
        "oof.csv",
        "id,0,1\na,0.9,0.4\nb,0.7,0.2\nc,0.2,0.35\nd,0.5,0.1\n",
    );
    ws.write("truth.csv", "id,Target\na,0 1\nb,0\nc,1\nd,\n");
    ws.write("test.csv", "id,0,1\nx,0.65,0.32\ny,0.1,0.1\n");
    ws.ok(&[
        "postprocess",
        "--set",
        "method=threshold",
        "--set",
        "fit_pred=oof.csv",
        "--set",
        "fit_truth=truth.csv",
        "--set",
        "at_least_one=true",
        "--set",
        "column=Predicted",
        "test.csv",
        "-o",
        "out",
    ]);
    assert_eq!(ws.read("out/labels.csv"), "id,Predicted\nx,0 1\ny,0\n");
    let fitted = read_json(&ws.path("out/fitted.json"));
    assert_eq!(fitted["thresholds"], json!([0.6, 0.275]));
    // Grades from a regressor reading 0.6 too high.
    ws.write("reg_oof.csv", "id,grade\na,0.6\nb,1.6\nc,2.6\nd,3.6\n");
    ws.write("reg_truth.csv", "id,grade\na,0\nb,1\nc,2\nd,3\n");
    ws.write("reg_test.csv", "id,grade\nx,2.65\n");
    ws.ok(&[
        "postprocess",
        "--set",
        "method=grades",
        "--set",
        "grades=4",
        "--set",
        "fit_pred=reg_oof.csv",
        "--set",
        "fit_truth=reg_truth.csv",
        "reg_test.csv",
        "-o",
        "g",
    ]);
    assert_eq!(ws.read("g/labels.csv"), "id,label\nx,2\n");
    // Nearest neighbour: x points the way train row t1 does.
    ws.write("emb.csv", "id,e0,e1\nx,1,0.01\ny,0,1\n");
    ws.write("train_emb.csv", "id,e0,e1\nt1,2,0\nt2,1,1\n");
    ws.write("train_labels.csv", "id,Target\nt1,5 7\nt2,3\n");
    ws.ok(&[
        "postprocess",
        "--set",
        "embeddings=emb.csv",
        "--set",
        "train_embeddings=train_emb.csv",
        "--set",
        "train_labels=train_labels.csv",
        "--set",
        "nn_distance=0.01",
        "test.csv",
        "-o",
        "nn",
    ]);
    assert_eq!(ws.read("nn/labels.csv"), "id,label\nx,5 7\ny,0\n");
    ws.fails(
        &["postprocess", "--set", "method=grades", "test.csv"],
        "test.csv:1: grades needs one value column, found 2",
    );
    ws.fails(
        &["postprocess", "--set", "fit_pred=oof.csv", "test.csv"],
        "fitting needs both `fit_pred` and `fit_truth`",
    );
}

#[test]
fn pseudo_label_keeps_confident_rows_hard_soft_or_boxes() {
    let ws = Ws::new();
    ws.write("p.csv", "id,cat,dog\na,0.9,0.1\nb,0.45,0.55\nc,0.2,0.8\n");
    ws.ok(&[
        "pseudo_label",
        "--set",
        "threshold=0.7",
        "--set",
        "weight=true",
        "p.csv",
        "-o",
        "h.csv",
    ]);
    assert_eq!(ws.read("h.csv"), "id,label,weight\na,cat,0.9\nc,dog,0.8\n");
    ws.ok(&["pseudo_label", "--set", "mode=soft", "p.csv", "-o", "s.csv"]);
    assert_eq!(ws.read("s.csv"), ws.read("p.csv"));
    ws.write(
        "boxes.json",
        &json!([
            det(json!(1), 0, [1.0, 2.0, 3.0, 4.0], 0.9),
            det(json!(1), 0, [5.0, 5.0, 3.0, 4.0], 0.95),
            det(json!(2), 0, [1.0, 1.0, 1.0, 1.0], 0.2)
        ])
        .to_string(),
    );
    ws.write("images.json", &json!({"images": [{"id": 1, "width": 10, "height": 10}, {"id": 2, "width": 10, "height": 10}]}).to_string());
    ws.ok(&[
        "pseudo_label",
        "--set",
        "mode=boxes",
        "--set",
        "threshold=0.5",
        "--set",
        "images=images.json",
        "boxes.json",
        "-o",
        "b",
    ]);
    assert_eq!(
        ws.read("b/labels.csv"),
        "id,label,bbox\n1,0,5.0 5.0 3.0 4.0\n"
    );
    let anns = read_json(&ws.path("b/pseudo_coco.json"))["annotations"].clone();
    assert_eq!(anns.as_array().unwrap().len(), 2);
    assert!(anns[0].get("weight").is_none(), "unweighted by default");
    ws.ok(&[
        "pseudo_label",
        "--set",
        "mode=boxes",
        "--set",
        "threshold=0.5",
        "--set",
        "weight=true",
        "--set",
        "images=images.json",
        "boxes.json",
        "-o",
        "w",
    ]);
    let anns = read_json(&ws.path("w/pseudo_coco.json"))["annotations"].clone();
    let weights: Vec<f64> = anns
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["weight"].as_f64().unwrap())
        .collect();
    assert_eq!(weights, [0.9, 0.95], "each box weighted by its score");
    // Instance results keep their masks.
    let mut inst = det(json!(1), 0, [1.0, 1.0, 2.0, 1.0], 0.8);
    inst["segmentation"] = json!({"size": [10, 10], "counts": ";190U2"});
    ws.write("inst.json", &json!([inst]).to_string());
    ws.ok(&[
        "pseudo_label",
        "--set",
        "mode=boxes",
        "--set",
        "images=images.json",
        "inst.json",
        "-o",
        "i",
    ]);
    let ann = &read_json(&ws.path("i/pseudo_coco.json"))["annotations"][0];
    assert_eq!(ann["segmentation"], inst["segmentation"], "{ann}");
    ws.fails(
        &["pseudo_label", "--set", "mode=boxes", "boxes.json"],
        "needs `images`",
    );
}

/// A SIIM sample submission of images `x` and `y` (ids with `_image`) and
/// two boxes of image `x` (scores 0.5 and 0.75).
fn siim_boxes(ws: &Ws) {
    ws.write(
        "siim.csv",
        "id,PredictionString\nx_image,none 1 0 0 1 1\ny_image,none 1 0 0 1 1\n",
    );
    ws.write(
        "boxes.json",
        &json!([
            det(json!("x"), 0, [10.0, 20.0, 30.0, 40.0], 0.5),
            det(json!("x"), 0, [0.0, 0.0, 5.0, 5.0], 0.75)
        ])
        .to_string(),
    );
}

#[test]
fn submission_follows_the_sample_order_and_writes_detection_strings() {
    let ws = Ws::new();
    ws.write("sample.csv", "Id,Predicted\nb,0\na,0\n");
    ws.write("labels.csv", "id,label\na,1 5\nb,2\nc,3\n");
    ws.ok(&["submission", "labels.csv", "sample.csv", "-o", "sub.csv"]);
    assert_eq!(ws.read("sub.csv"), "Id,Predicted\nb,2\na,1 5\n");
    siim_boxes(&ws);
    ws.ok(&[
        "submission",
        "--set",
        "class_names={ 0 = \"opacity\" }",
        "--set",
        "id_suffix=_image",
        "boxes.json",
        "siim.csv",
        "-o",
        "s.csv",
    ]);
    assert_eq!(
        ws.read("s.csv"),
        "id,PredictionString\nx_image,opacity 0.75 0 0 5 5 opacity 0.5 10 20 40 60\ny_image,none 1 0 0 1 1\n"
    );
    ws.write("short.csv", "id,label\na,1\n");
    ws.fails(
        &["submission", "short.csv", "sample.csv"],
        "short.csv: no prediction for id `b` of the sample submission",
    );
    ws.fails(
        &["submission", "boxes.json", "sample.csv"],
        "boxes.json: image `x` is not in the sample submission",
    );
    // COCO image ids (numbers) named by their files' stems.
    ws.write(
        "numbered.json",
        &json!([det(json!(2), 0, [1.0, 2.0, 3.0, 4.0], 0.5)]).to_string(),
    );
    ws.write(
        "coco.json",
        &json!({"images": [
            {"id": 1, "width": 9, "height": 9, "file_name": "x_image.png"},
            {"id": 2, "width": 9, "height": 9, "file_name": "y_image.png"}
        ]})
        .to_string(),
    );
    ws.ok(&[
        "submission",
        "--set",
        "images=coco.json",
        "numbered.json",
        "siim.csv",
        "-o",
        "n.csv",
    ]);
    assert_eq!(
        ws.read("n.csv"),
        "id,PredictionString\nx_image,none 1 0 0 1 1\ny_image,0 0.5 1 2 4 6\n"
    );
    ws.write(
        "stray.json",
        &json!([det(json!(7), 0, [1.0, 2.0, 3.0, 4.0], 0.5)]).to_string(),
    );
    ws.fails(
        &[
            "submission",
            "--set",
            "images=coco.json",
            "stray.json",
            "siim.csv",
        ],
        "stray.json: image `7` is not in",
    );
}

/// SIIM's image-level `none` box after every image's boxes: P = 1 − the
/// best box's score, or a classifier's probability from a table keyed with
/// or without the id suffix; its mistakes are errors naming the parameter
/// or the file and line.
#[test]
fn submission_appends_siim_none_probabilities() {
    let ws = Ws::new();
    siim_boxes(&ws);
    let run = |extra: &[&str], out: &str| {
        let mut args = vec![
            "submission",
            "--set",
            "class_names={ 0 = \"opacity\" }",
            "--set",
            "id_suffix=_image",
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["boxes.json", "siim.csv"]);
        if !out.is_empty() {
            args.extend_from_slice(&["-o", out]);
        }
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let args = run(&["--set", "none=boxes"], "b.csv");
    ws.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        ws.read("b.csv"),
        "id,PredictionString\nx_image,opacity 0.75 0 0 5 5 opacity 0.5 10 20 40 60 none 0.25 0 0 1 1\ny_image,none 1 0 0 1 1\n"
    );
    // A study classifier's probabilities, keyed without the suffix.
    ws.write("cls.csv", "id,negative,typical\nx,0.9,0.1\ny,0.125,0.875\n");
    let args = run(
        &[
            "--set",
            "none=table",
            "--set",
            "none_table=cls.csv",
            "--set",
            "none_column=negative",
        ],
        "t.csv",
    );
    ws.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        ws.read("t.csv"),
        "id,PredictionString\nx_image,opacity 0.75 0 0 5 5 opacity 0.5 10 20 40 60 none 0.9 0 0 1 1\ny_image,none 0.125 0 0 1 1\n"
    );
    let fails = |extra: &[&str], message: &str| {
        let args = run(extra, "");
        ws.fails(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            message,
        );
    };
    fails(
        &["--set", "none=table"],
        "none = \"table\" needs `none_table`",
    );
    fails(
        &["--set", "none_table=cls.csv"],
        "`none_table`: is read only with none = \"table\"",
    );
    fails(
        &["--set", "none=table", "--set", "none_table=cls.csv"],
        "cls.csv:1: 2 value columns: name the probability's with `none_column`",
    );
    ws.write("bad.csv", "id,p\nx,0.5\ny,1.5\n");
    fails(
        &["--set", "none=table", "--set", "none_table=bad.csv"],
        "bad.csv:3: `1.5` is no probability",
    );
    ws.write("short.csv", "id,p\nx_image,0.5\n");
    fails(
        &["--set", "none=table", "--set", "none_table=short.csv"],
        "short.csv: no `none` probability for id `y_image`",
    );
    fails(
        &["--set", "none=boxes", "--set", "format=masks"],
        "`none`: applies to format boxes only",
    );
}

/// Pillow's resize of the same images (tests/fixtures/ops/images/make.py):
/// every value within one level, 8- and 16-bit alike.
#[test]
fn resize_matches_pillow_within_one_level_and_stats_match_numpy() {
    let ws = Ws::new();
    let src = fixture("ops/images/src");
    for filter in ["bicubic", "bilinear"] {
        let set = format!("filter={filter}");
        ws.ok(&[
            "resize",
            "--set",
            "sizes=[24]",
            "--set",
            &set,
            &src,
            "-o",
            filter,
        ]);
        for name in ["a", "b"] {
            let ours = image::open(ws.path(&format!("{filter}/{name}.png"))).unwrap();
            let pillow =
                image::open(fixture(&format!("ops/images/pillow/{name}_{filter}.png"))).unwrap();
            assert_eq!(ours.color(), pillow.color(), "{name}");
            let (a, b) = (ours.to_rgb16().into_raw(), pillow.to_rgb16().into_raw());
            // 16-bit values compared as they are, 8-bit ones widened (x 257).
            let level = if matches!(ours, image::DynamicImage::ImageLuma16(_)) {
                1
            } else {
                257
            };
            let worst = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
            assert!(worst <= level, "{filter} {name}: off by {worst}");
        }
    }
    std::fs::create_dir_all(ws.path("one")).unwrap();
    std::fs::copy(fixture("ops/images/src/a.png"), ws.path("one/a.png")).unwrap();
    ws.ok(&["stats", "one", "-o", "s.json"]);
    let ours = read_json(&ws.path("s.json"));
    let numpy = read_json(Path::new(&fixture("ops/images/reference.json")));
    for key in ["mean", "std"] {
        for c in 0..3 {
            let (o, n) = (
                ours[key][c].as_f64().unwrap(),
                numpy["a.png"][key][c].as_f64().unwrap(),
            );
            assert!((o - n).abs() < 1e-9, "{key}[{c}]: {o} vs numpy {n}");
        }
    }
}

#[test]
fn a_required_path_left_empty_is_an_error_before_running() {
    let ws = Ws::new();
    ws.fails(
        &["folds", "--set", "labels=\"\""],
        "parameter `labels` needs a path",
    );
}

#[test]
fn submission_encodes_mask_images_as_run_lengths() {
    let ws = Ws::new();
    std::fs::create_dir_all(ws.path("masks")).unwrap();
    let on = [(1, 0), (1, 1), (3, 2)];
    image::GrayImage::from_fn(4, 3, |x, y| {
        image::Luma([if on.contains(&(x, y)) { 255 } else { 0 }])
    })
    .save(ws.path("masks/k1.png"))
    .unwrap();
    image::GrayImage::new(4, 3)
        .save(ws.path("masks/k2.png"))
        .unwrap();
    ws.write("sample.csv", "id,predicted\nk2,\nk1,\n");
    ws.ok(&["submission", "masks", "sample.csv", "-o", "sub.csv"]);
    // Numbered from 1 down each column: (1,0) is 4, (1,1) 5, (3,2) 12.
    assert_eq!(ws.read("sub.csv"), "id,predicted\nk2,\nk1,4 2 12 1\n");
    ws.write("more.csv", "id,predicted\nk3,\n");
    ws.fails(
        &["submission", "masks", "more.csv"],
        "masks: no mask image for id `k3`",
    );
}

/// `evaluate`'s mask mAP through the command line, at COCO's thresholds and
/// at HuBMAP 2023's 0.6 (values: tests/fixtures/ops/evaluate/segm.py).
#[test]
fn evaluate_scores_instance_masks_at_chosen_iou_thresholds() {
    let ws = Ws::new();
    let doc = read_json(Path::new("tests/fixtures/ops/evaluate/segm.json"));
    let case = &doc["eval"][5];
    ws.write("gt.json", &case["gt"].to_string());
    ws.write("dets.json", &case["dets"].to_string());
    let metric = "metric=[\"coco_segm_map\", \"coco_segm_map50\", \"coco_map50\"]";
    ws.ok(&[
        "evaluate",
        "--set",
        metric,
        "gt.json",
        "dets.json",
        "-o",
        "m.json",
    ]);
    ws.ok(&[
        "evaluate",
        "--set",
        metric,
        "--set",
        "iou_thrs=[0.6]",
        "gt.json",
        "dets.json",
        "-o",
        "m6.json",
    ]);
    let (m, m6) = (
        read_json(&ws.path("m.json")),
        read_json(&ws.path("m6.json")),
    );
    let close = |a: &Value, b: &Value| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-9;
    assert!(close(&m["coco_segm_map"], &case["coco_segm_map"]), "{m}");
    assert!(
        close(&m["coco_segm_map50"], &case["coco_segm_map50"]),
        "{m}"
    );
    assert!(
        close(&m6["coco_segm_map"], &case["coco_segm_map_at_06"]),
        "{m6}"
    );
    assert!(
        close(&m6["coco_segm_map50"], &m["coco_segm_map50"]),
        "mAP50 stays at .50"
    );
    // Boxes of the same results: another number.
    assert!(!close(&m["coco_map50"], &m["coco_segm_map50"]), "{m}");
    // Results without masks are named.
    ws.write(
        "boxes.json",
        &json!([det(json!(1), 1, [1.0, 1.0, 5.0, 5.0], 0.5)]).to_string(),
    );
    ws.fails(
        &[
            "evaluate",
            "--set",
            "metric=coco_segm_map",
            "gt.json",
            "boxes.json",
        ],
        "boxes.json: result 1 (image 1) has no segmentation",
    );
    ws.fails(
        &[
            "evaluate",
            "--set",
            "metric=coco_map",
            "--set",
            "iou_thrs=[1.5]",
            "gt.json",
            "dets.json",
        ],
        "an IoU threshold lies between 0 and 1, not 1.5",
    );
}

/// HuBMAP 2023's instance strings (the Open Images encoding): podium reads
/// the competition's own `encode_binary_mask` output back to the same mask,
/// and writes strings that decode to pycocotools' run lengths
/// (tests/fixtures/ops/submission/hubmap.py).
#[test]
fn submission_writes_hubmap_instance_masks_as_the_competition_encodes_them() {
    use podium::data::coco_rle::{Rle, RleJson, oid_decode, oid_encode};
    let doc = read_json(Path::new("tests/fixtures/ops/submission/hubmap.json"));
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 12);
    let mut results = Vec::new();
    let mut sample = String::from("id,height,width,prediction_string\n");
    for (i, c) in cases.iter().enumerate() {
        let (h, w) = (
            c["h"].as_u64().unwrap() as usize,
            c["w"].as_u64().unwrap() as usize,
        );
        let mask: Vec<bool> = c["mask"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_u64() == Some(1)))
            .collect();
        let rle = Rle::encode(&mask, h, w);
        assert_eq!(rle.to_string(), c["counts"].as_str().unwrap(), "mask {i}");
        assert_eq!(
            oid_decode(c["encoded"].as_str().unwrap(), h, w).unwrap(),
            rle,
            "mask {i}: the competition's string"
        );
        assert_eq!(
            oid_decode(&oid_encode(&rle), h, w).unwrap(),
            rle,
            "mask {i}"
        );
        sample.push_str(&format!("img{i},0,0,\n"));
        if i % 4 != 3 {
            results.push(json!({"image_id": format!("img{i}"), "category_id": 0,
                "bbox": rle.bbox(), "score": 0.5 + i as f64 / 100.0,
                "segmentation": RleJson::from_rle(&rle)}));
        }
    }
    let ws = Ws::new();
    ws.write("sample.csv", &sample);
    ws.write("instances.json", &Value::Array(results).to_string());
    ws.ok(&[
        "submission",
        "--set",
        "format=masks",
        "instances.json",
        "sample.csv",
        "-o",
        "sub.csv",
    ]);
    let sub = ws.read("sub.csv");
    let mut lines = sub.lines();
    assert_eq!(lines.next(), Some("id,height,width,prediction_string"));
    for (i, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        let c = &cases[i];
        let (h, w) = (
            c["h"].as_u64().unwrap() as usize,
            c["w"].as_u64().unwrap() as usize,
        );
        if i % 4 == 3 {
            assert_eq!(
                cells,
                [format!("img{i}").as_str(), "0", "0", ""],
                "no instance"
            );
            continue;
        }
        assert_eq!(cells[1..3], [h.to_string(), w.to_string()], "{line}");
        let words: Vec<&str> = cells[3].split(' ').collect();
        assert_eq!(
            words[..2],
            ["0", format!("{}", 0.5 + i as f64 / 100.0).as_str()]
        );
        let got = oid_decode(words[2], h, w).unwrap();
        assert_eq!(got.to_string(), c["counts"].as_str().unwrap(), "{line}");
    }
    // Named by its place in the file, whatever its score.
    let mut first = det(json!("img1"), 0, [1.0, 1.0, 2.0, 2.0], 0.1);
    first["segmentation"] = json!({"size": [1, 1], "counts": "01"});
    ws.write(
        "boxes.json",
        &json!([first, det(json!("img0"), 0, [1.0, 1.0, 2.0, 2.0], 0.5)]).to_string(),
    );
    ws.fails(
        &[
            "submission",
            "--set",
            "format=masks",
            "boxes.json",
            "sample.csv",
        ],
        "boxes.json: result 2 (image img0) has no segmentation",
    );
}

/// `cv` (issue 23: no cross-validation score without three extra stages):
/// the folds' out-of-fold tables as one, fold metrics with mean and sample
/// std; folds that disagree are one error naming the file.
#[test]
fn cv_joins_the_folds_and_summarises_their_metrics() {
    let ws = Ws::new();
    ws.write("f0/oof.csv", "id,0,1\na,0.9,0.1\nb,0.2,0.8\n");
    ws.write("f1/oof.csv", "id,0,1\nc,0.6,0.4\n");
    ws.write("f0/metrics.json", r#"{"accuracy": 0.5, "val_loss": 0.7}"#);
    ws.write("f1/metrics.json", r#"{"accuracy": 1.0, "val_loss": 0.3}"#);
    ws.ok(&[
        "cv",
        "--set",
        r#"metrics=["f0/metrics.json", "f1/metrics.json"]"#,
        "f0/oof.csv",
        "f1/oof.csv",
        "-o",
        "cv",
    ]);
    assert_eq!(
        ws.read("cv/oof.csv"),
        "id,0,1\na,0.9,0.1\nb,0.2,0.8\nc,0.6,0.4\n"
    );
    let m = read_json(&ws.path("cv/metrics.json"));
    assert_eq!(m["accuracy"], 0.75);
    // numpy.std([0.5, 1.0], ddof=1)
    assert!((m["accuracy_std"].as_f64().unwrap() - 0.35355339059327373).abs() < 1e-12);
    assert_eq!(m["folds"], 2.0);
    assert_eq!(
        ws.read("cv/folds.csv"),
        "fold,accuracy,val_loss\n0,0.5,0.7\n1,1.0,0.3\n"
    );
    ws.write("f1/metrics.json", r#"{"accuracy": 1.0}"#);
    ws.fails(
        &[
            "cv",
            "--set",
            r#"metrics=["f0/metrics.json", "f1/metrics.json"]"#,
            "f0/oof.csv",
            "f1/oof.csv",
        ],
        "f0/metrics.json",
    );
}
