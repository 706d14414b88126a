//! `train` and `predict` end to end, through the CLI: real learning on a
//! separable synthetic set, checkpoints that reproduce the out-of-fold
//! predictions, TTA on symmetric images, resuming a killed training, and
//! clear errors.

use std::path::Path;

use serde_json::Value;

use crate::ws::{podium_at as podium, podium_cmd};

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = podium(dir, args);
    assert!(
        out.status.success(),
        "podium {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A synthetic data set with 5 folds in `dir`.
fn data(dir: &Path, task: &str, n: usize, classes: usize) {
    ok(
        dir,
        &[
            "op",
            "synth",
            "--set",
            &format!("task={task}"),
            "--set",
            &format!("n_train={n}"),
            "--set",
            "n_test=40",
            "--set",
            "size=24",
            "--set",
            &format!("classes={classes}"),
            "--set",
            "noise=0.05",
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

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn table(p: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(String::from).collect())
        .collect()
}

#[test]
fn a_small_cnn_learns_a_separable_set_and_its_checkpoint_reproduces_the_oof() {
    learns_and_reproduces("cpu", 1e-5);
}

/// The same on the GPU, in a build with the `cuda` feature (it needs one);
/// the checkpoint's predictions agree to 1e-3, as cuDNN may pick other
/// algorithms (and TF32) for other batch sizes.
#[cfg(feature = "cuda")]
#[test]
fn on_the_gpu_a_small_cnn_learns_and_its_checkpoint_reproduces_the_oof() {
    learns_and_reproduces("cuda", 1e-3);
}

fn learns_and_reproduces(device: &str, tol: f64) {
    let device = format!("device={device}");
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    data(d, "classify", 300, 3);
    ok(
        d,
        &[
            "op",
            "train",
            "--set",
            "fold=0",
            "--set",
            "epochs=6",
            "--set",
            "lr=0.003",
            "--set",
            "batch_size=16",
            "--set",
            &device,
            "data/train_images",
            "data/train.csv",
            "folds.csv",
            "-o",
            "tr",
        ],
    );
    let m = read_json(&d.join("tr/metrics.json"));
    let acc = m["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.95, "validation accuracy {acc}: {m}");
    for f in [
        "best.safetensors",
        "last.safetensors",
        "curves.png",
        "history.csv",
    ] {
        assert!(d.join("tr").join(f).is_file(), "{f}");
    }
    let hist = table(&d.join("tr/history.csv"));
    assert_eq!(hist.len(), 7, "a header and six epochs");
    let img = image::open(d.join("tr/curves.png")).unwrap();
    assert!(img.width() > 1000 && img.height() > 200);
    // The confusion matrix of a learnt set is dark on its diagonal only
    // (cells of 44 px from x = 48, past the row title `true`, and y = 44;
    // rows the true class).
    let c = image::open(d.join("tr/confusion.png")).unwrap().to_rgb8();
    let red = |i: u32, j: u32| c.get_pixel(48 + j * 44 + 2, 44 + i * 44 + 2).0[0];
    for i in 0..3 {
        for j in 0..3 {
            if i == j {
                assert!(red(i, j) < 100, "diagonal ({i}, {j}) is dark");
            } else {
                assert!(red(i, j) > 200, "({i}, {j}) off the diagonal is light");
            }
        }
    }
    // The twelve worst validation images, four to a row.
    let ex = image::open(d.join("tr/examples.png")).unwrap();
    assert_eq!((ex.width(), ex.height()), (4 * 160, 3 * 160));

    // The best checkpoint predicts the validation fold as `oof.csv` says.
    ok(
        d,
        &[
            "op",
            "predict",
            "--set",
            &device,
            "tr/best.safetensors",
            "data/train_images",
            "-o",
            "pred",
        ],
    );
    let oof = table(&d.join("tr/oof.csv"));
    let pred = table(&d.join("pred/pred.csv"));
    assert_eq!(oof[0], ["id", "0", "1", "2"]);
    assert_eq!(pred[0], oof[0]);
    assert_eq!(pred.len(), 301);
    let by_id: std::collections::HashMap<&str, &Vec<String>> =
        pred.iter().map(|r| (r[0].as_str(), r)).collect();
    assert_eq!(oof.len(), 61, "fold 0 holds a fifth of 300");
    for row in &oof[1..] {
        let p = by_id[row[0].as_str()];
        for k in 1..4 {
            let (a, b): (f64, f64) = (row[k].parse().unwrap(), p[k].parse().unwrap());
            assert!((a - b).abs() < tol, "{}: {a} vs {b}", row[0]);
        }
    }
    let pm = read_json(&d.join("pred/metrics.json"));
    assert!(pm["ms_per_image"].as_f64().unwrap() > 0.0);
}

/// Images that every dihedral transform leaves unchanged.
fn symmetric_images(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for k in 0..n {
        let s = 24u32;
        let img = image::RgbImage::from_fn(s, s, |x, y| {
            let (dx, dy) = (x.min(s - 1 - x), y.min(s - 1 - y));
            let (a, b) = (dx.min(dy), dx.max(dy));
            let v = ((a * 37 + b * 11 + k as u32 * 53) % 256) as u8;
            image::Rgb([v, v.wrapping_mul(3), 255 - v])
        });
        img.save(dir.join(format!("img_{k}.png"))).unwrap();
    }
}

#[test]
fn tta_of_a_symmetric_image_equals_no_tta_and_embeddings_are_written() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    data(d, "classify", 60, 3);
    ok(
        d,
        &[
            "op",
            "train",
            "--set",
            "epochs=1",
            "--set",
            "batch_size=16",
            "data/train_images",
            "data/train.csv",
            "-o",
            "tr",
        ],
    );
    symmetric_images(&d.join("sym"), 5);
    ok(
        d,
        &["op", "predict", "tr/best.safetensors", "sym", "-o", "plain"],
    );
    for merge in ["mean", "max"] {
        ok(
            d,
            &[
                "op",
                "predict",
                "--set",
                "tta=all",
                "--set",
                &format!("merge={merge}"),
                "--set",
                "embed=true",
                "tr/best.safetensors",
                "sym",
                "-o",
                merge,
            ],
        );
        assert_eq!(
            table(&d.join("plain/pred.csv")),
            table(&d.join(merge).join("pred.csv")),
            "merge {merge}"
        );
    }
    let emb = table(&d.join("mean/embeddings.csv"));
    assert_eq!(emb.len(), 6);
    assert_eq!(emb[0].len(), 1 + 128, "simple_cnn's 128 features");
    assert_eq!(read_json(&d.join("mean/metrics.json"))["tta"], 8);
}

#[test]
fn box_task_trains_writes_examples_and_predicts_pixel_boxes() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    data(d, "box", 80, 2);
    ok(
        d,
        &[
            "op",
            "train",
            "--set",
            "task=box",
            "--set",
            "fold=1",
            "--set",
            "epochs=2",
            "--set",
            "batch_size=16",
            "--set",
            "loss={ bce = 1.0, smooth_l1 = 5.0 }",
            "--set",
            "hflip=0.5",
            "--set",
            "rot90=0.5",
            "--set",
            "crop_scale=[0.6, 1.0]",
            "data/train_images",
            "data/train.csv",
            "folds.csv",
            "-o",
            "tr",
        ],
    );
    let ex = image::open(d.join("tr/examples.png")).unwrap();
    assert_eq!(ex.height(), 192);
    assert_eq!(ex.width(), 192 * 6, "three best and three worst");
    let m = read_json(&d.join("tr/metrics.json"));
    assert!(m["box_iou"].as_f64().unwrap() >= 0.0);
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
            "p",
        ],
    );
    let p = table(&d.join("p/pred.csv"));
    assert_eq!(p[0], ["id", "label", "score", "bbox"]);
    for r in &p[1..] {
        let b: Vec<f64> = r[3].split(' ').map(|v| v.parse().unwrap()).collect();
        assert_eq!(b.len(), 4);
        assert!(
            b.iter().all(|v| (-0.01..=24.01).contains(v)),
            "{b:?} inside the 24² image"
        );
    }
}

#[test]
fn multilabel_and_regress_train_with_their_metrics() {
    for (task, metric, cols) in [("multilabel", "f1_macro", 4), ("regress", "qwk", 2)] {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        data(d, task, 60, 3);
        ok(
            d,
            &[
                "op",
                "train",
                "--set",
                &format!("task={task}"),
                "--set",
                "fold=2",
                "--set",
                "epochs=1",
                "--set",
                "batch_size=16",
                "--set",
                "arch=simple_cnn",
                "data/train_images",
                "data/train.csv",
                "folds.csv",
                "-o",
                "tr",
            ],
        );
        let m = read_json(&d.join("tr/metrics.json"));
        assert!(m[metric].is_number(), "{task}: {m}");
        let oof = table(&d.join("tr/oof.csv"));
        assert_eq!(oof[0].len(), cols, "{task}: {:?}", oof[0]);
        if task == "multilabel" {
            // Per class: TP, FN, FP, TN; and the worst images.
            let c = image::open(d.join("tr/confusion.png")).unwrap();
            assert!(c.width() >= 4 * 44 && c.height() >= 44 + 3 * 44, "{task}");
            assert!(image::open(d.join("tr/examples.png")).is_ok(), "{task}");
        }
    }
}

#[test]
fn bad_inputs_are_one_clear_error_naming_the_file() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    data(d, "classify", 20, 2);
    // A label row whose image is missing.
    let mut labels = std::fs::read_to_string(d.join("data/train.csv")).unwrap();
    labels.push_str("ghost,1\n");
    std::fs::write(d.join("bad.csv"), labels).unwrap();
    let out = podium(
        d,
        &["op", "train", "data/train_images", "bad.csv", "-o", "tr"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.csv:22: id `ghost` has no image in"),
        "{err}"
    );
    assert!(!d.join("tr").exists());
    // A checkpoint that is not one.
    std::fs::write(d.join("x.safetensors"), b"nope").unwrap();
    let out = podium(
        d,
        &[
            "op",
            "predict",
            "x.safetensors",
            "data/test_images",
            "-o",
            "p",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("x.safetensors: not a safetensors file"),
        "{err}"
    );
    // A fold without a folds table is a check-time error.
    let out = podium(
        d,
        &[
            "op",
            "train",
            "--set",
            "fold=1",
            "data/train_images",
            "data/train.csv",
            "-o",
            "tr",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("a validation fold needs a folds table"));
}

const RESUME: &str = r#"
[pipeline]
name = "resume"

[inputs.images]
path = "data/train_images"

[inputs.labels]
path = "data/train.csv"

[stages.train]
op = "train"
images = "${inputs.images}"
labels = "${inputs.labels}"
epochs = 4
batch_size = 8
hflip = 0.5
ema = 0.9
seed = 7
"#;

/// A training killed after its first epoch resumes from there and ends
/// with the same bytes as an uninterrupted run: the same weights,
/// optimizer state and EMA.
#[test]
fn a_killed_training_resumes_and_ends_bit_identical() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    data(d, "classify", 120, 3);
    std::fs::write(d.join("p.toml"), RESUME).unwrap();
    crate::ws::run_whole_then_killed_and_resumed(d, "train");
    for f in ["last.safetensors", "best.safetensors"] {
        assert_eq!(
            std::fs::read(d.join("o1/resume/train").join(f)).unwrap(),
            std::fs::read(d.join("o2/resume/train").join(f)).unwrap(),
            "{f} differs after resuming"
        );
    }
}

/// `podium op train` on `data/train_images`, `labels` and `folds.csv` with
/// `--set` for each of `sets`, into `out`.
fn train_op(d: &Path, sets: &[String], labels: &str, out: &str) {
    let mut args = vec!["op", "train"];
    for s in sets {
        args.extend(["--set", s.as_str()]);
    }
    args.extend(["data/train_images", labels, "folds.csv", "-o", out]);
    ok(d, &args);
}

/// Reads a checkpoint's podium header.
fn checkpoint_meta(p: &Path) -> Value {
    podium::nn::checkpoint::load(p, &candle_core::Device::Cpu)
        .unwrap()
        .1
}

/// On labels drawn at random the validation loss stalls: the plateau
/// schedule halves the rate after each epoch without a better loss, early
/// stopping ends the run after three, and the best checkpoint and
/// `metrics.json` are the best epoch's. The expected rates and the epoch of
/// the stop are replayed from the validation losses in `history.csv`.
#[test]
fn plateau_and_early_stopping_follow_the_validation_loss() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    data(d, "classify", 60, 3);
    let labels = std::fs::read_to_string(d.join("data/train.csv")).unwrap();
    let mut shuffled = String::from("id,label\n");
    for (i, row) in labels.lines().skip(1).enumerate() {
        let id = row.split(',').next().unwrap();
        shuffled += &format!("{id},{}\n", (i * 7 + i / 3) % 3);
    }
    std::fs::write(d.join("data/random.csv"), shuffled).unwrap();
    let (epochs, patience, stop_after) = (12, 0, 3);
    let sets = [
        "fold=0".into(),
        format!("epochs={epochs}"),
        "lr=0.01".into(),
        "batch_size=8".into(),
        "schedule=plateau".into(),
        format!("patience={patience}"),
        "gamma=0.5".into(),
        format!("early_stopping={stop_after}"),
        "monitor=loss".into(),
    ];
    train_op(d, &sets, "data/random.csv", "tr");
    let hist = table(&d.join("tr/history.csv"));
    let col = |name: &str| hist[0].iter().position(|c| c == name).unwrap();
    let (lr_c, vl_c, acc_c) = (col("lr"), col("val_loss"), col("accuracy"));
    let rows = &hist[1..];
    // Replay: the rate of each epoch, and where the run must end.
    let (mut lr, mut best, mut bad_sched, mut bad_stop) = (0.01f64, f64::INFINITY, 0, 0);
    let mut best_epoch = 0;
    let mut expected_len = epochs;
    for (e, r) in rows.iter().enumerate() {
        let got: f64 = r[lr_c].parse().unwrap();
        assert!(
            (got - lr).abs() < 1e-12,
            "epoch {}: lr {got}, want {lr}",
            e + 1
        );
        let v: f64 = r[vl_c].parse().unwrap();
        if v < best {
            (best, best_epoch, bad_sched, bad_stop) = (v, e + 1, 0, 0);
        } else {
            bad_sched += 1;
            bad_stop += 1;
            if bad_sched > patience {
                lr *= 0.5;
                bad_sched = 0;
            }
            if bad_stop >= stop_after {
                expected_len = e + 1;
                break;
            }
        }
    }
    assert!(expected_len < epochs, "the loss never stalled: {hist:?}");
    assert_eq!(rows.len(), expected_len, "{hist:?}");
    assert!(
        rows.iter().any(|r| r[lr_c] != rows[0][lr_c]),
        "the rate never fell: {hist:?}"
    );
    let meta = checkpoint_meta(&d.join("tr/best.safetensors"));
    assert_eq!(meta["epoch"], best_epoch);
    let last = checkpoint_meta(&d.join("tr/last.safetensors"));
    assert_eq!(last["epoch"], expected_len);
    let m = read_json(&d.join("tr/metrics.json"));
    let best_acc: f64 = rows[best_epoch - 1][acc_c].parse().unwrap();
    assert!(
        (m["accuracy"].as_f64().unwrap() - best_acc).abs() < 1e-12,
        "{m}"
    );
}

/// Gradient accumulation takes one optimizer step per `accumulate`
/// batches (the last one may be short), and still learns.
#[test]
fn accumulated_gradients_step_once_per_group_and_learn() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    data(d, "classify", 150, 3);
    // Fold 0 leaves 120 training images: 15 batches of 8 per epoch.
    for (accumulate, steps) in [(1, 3 * 15), (4, 3 * 4)] {
        let out = format!("tr{accumulate}");
        let sets = [
            "fold=0".into(),
            "epochs=3".into(),
            "lr=0.003".into(),
            "batch_size=8".into(),
            format!("accumulate={accumulate}"),
        ];
        train_op(d, &sets, "data/train.csv", &out);
        let meta = checkpoint_meta(&d.join(&out).join("last.safetensors"));
        assert_eq!(meta["steps"], steps, "accumulate = {accumulate}");
        let acc = read_json(&d.join(&out).join("metrics.json"))["accuracy"]
            .as_f64()
            .unwrap();
        assert!(acc > 0.6, "accumulate = {accumulate}: accuracy {acc}");
    }
}

/// Regression (issue 23): `ema = 0.999` gave chance accuracy after a few
/// hundred steps, its average still mostly the random init. With the
/// decay warmed up, 45 steps learn as well as no EMA does.
#[test]
fn a_high_ema_decay_follows_the_weights_from_the_first_steps() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    data(d, "classify", 150, 3);
    let sets = [
        "fold=0".into(),
        "epochs=3".into(),
        "lr=0.003".into(),
        "batch_size=8".into(),
        "ema=0.999".into(),
    ];
    train_op(d, &sets, "data/train.csv", "tr");
    let acc = read_json(&d.join("tr/metrics.json"))["accuracy"]
        .as_f64()
        .unwrap();
    assert!(acc > 0.6, "ema = 0.999 over 45 steps: accuracy {acc}");
}

/// Runs op `kind` through the library with its defaults and `set`, in
/// `dir`, collecting the progress it reports.
fn run_reporting(
    dir: &Path,
    kind: &str,
    set: &[(&str, podium::value::Value)],
) -> Vec<podium::ops::Step> {
    use podium::ops::{OpContext, Params, Step};
    let op = podium::ops::get(kind).unwrap();
    // Parameters not set take their defaults.
    let mut params = Params::new();
    for (k, v) in set {
        let spec = op.params().iter().find(|s| s.name == *k).unwrap();
        params.insert(spec.name, v.clone());
    }
    let out = dir.join(format!("{kind}-out"));
    std::fs::create_dir_all(&out).unwrap();
    let mut log = std::fs::File::create(dir.join(format!("{kind}.log"))).unwrap();
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let steps = std::sync::Mutex::new(Vec::<Step>::new());
    let report = |s: &Step| steps.lock().unwrap().push(s.clone());
    let mut cx = OpContext {
        params: &params,
        out_dir: &out,
        work_dir: dir,
        log: &mut log,
        cancel: &cancel,
        threads: 2,
        gpus: &[],
        resume_dir: None,
        progress: &report,
    };
    op.run(&mut cx).unwrap();
    steps.into_inner().unwrap()
}

/// `train` reports every batch of every epoch, with the running loss and,
/// from the second epoch, the last validation; `predict` counts images ×
/// TTA variants to the end. A terminal shows these as a bar.
#[test]
fn train_and_predict_report_their_progress() {
    use podium::value::Value;
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    data(d, "classify", 60, 3);
    let s = |v: &str| Value::Str(v.into());
    let steps = run_reporting(
        d,
        "train",
        &[
            ("images", s("data/train_images")),
            ("labels", s("data/train.csv")),
            ("folds", s("folds.csv")),
            ("fold", Value::Int(0)),
            ("epochs", Value::Int(2)),
            ("batch_size", Value::Int(8)),
        ],
    );
    // 48 training images: 6 batches of 8 per epoch.
    assert_eq!(steps.len(), 12, "{steps:?}");
    for (i, st) in steps.iter().enumerate() {
        assert_eq!((st.done, st.total), (i as u64, 12), "{st:?}");
        let epoch = if i < 6 { "epoch 1/2" } else { "epoch 2/2" };
        assert!(st.message.starts_with(epoch), "{st:?}");
        assert_eq!(st.message.contains("val_loss"), i >= 6, "{st:?}");
    }
    let steps = run_reporting(
        d,
        "predict",
        &[
            ("checkpoint", s("train-out/best.safetensors")),
            ("images", s("data/test_images")),
            ("tta", Value::List(vec![s("default"), s("fliplr")])),
            ("batch_size", Value::Int(16)),
        ],
    );
    let done: Vec<u64> = steps.iter().map(|s| s.done).collect();
    assert_eq!(
        done,
        [0, 16, 32, 40, 56, 72, 80],
        "40 test images, two variants"
    );
    assert!(steps.iter().all(|s| s.total == 80));
}

/// Every kernel path this CPU runs (`PODIUM_CPU=portable|avx2|avx512`,
/// src/nn/kernels/isa.rs) predicts what the widest path predicts, from one
/// checkpoint: the paths differ only in the order of their sums. A path the
/// CPU lacks is skipped with its reason.
#[test]
fn every_kernel_path_the_cpu_runs_predicts_as_the_widest_does() {
    use podium::nn::kernels::isa::Isa;
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    data(d, "classify", 100, 3);
    ok(
        d,
        &[
            "op",
            "train",
            "--set",
            "fold=0",
            "--set",
            "epochs=1",
            "--set",
            "batch_size=16",
            "data/train_images",
            "data/train.csv",
            "folds.csv",
            "-o",
            "tr",
        ],
    );
    let predict = |isa: Isa| {
        let out = podium_cmd(d, &[])
            .env("PODIUM_CPU", isa.name())
            .args([
                "op",
                "predict",
                "tr/best.safetensors",
                "data/train_images",
                "-o",
                &format!("pred_{}", isa.name()),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            isa.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        table(&d.join(format!("pred_{}/pred.csv", isa.name())))
    };
    let widest = Isa::detected();
    let want = predict(widest);
    assert_eq!(want.len(), 101);
    for isa in Isa::ALL {
        if !isa.available() {
            eprintln!("skipped {}: this CPU does not run it", isa.name());
            continue;
        }
        if isa == widest {
            continue;
        }
        let got = predict(isa);
        assert_eq!(got.len(), want.len());
        for (a, b) in got.iter().zip(&want).skip(1) {
            assert_eq!(a[0], b[0]);
            for k in 1..a.len() {
                let (x, y): (f64, f64) = (a[k].parse().unwrap(), b[k].parse().unwrap());
                assert!(
                    (x - y).abs() < 1e-4,
                    "{} vs {}: {x} vs {y}",
                    isa.name(),
                    widest.name()
                );
            }
        }
    }
}

/// Regression (issue 23): piped output (CI logs, `nohup`) showed nothing
/// during a training; it now gets a progress line per job at most every
/// `PODIUM_PROGRESS_SECS` (here every report), with the epoch, the loss
/// and the time left.
#[test]
fn piped_output_gets_progress_lines_with_epoch_loss_and_eta() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    data(d, "classify", 60, 2);
    let out = podium_cmd(
        d,
        &[
            "op",
            "train",
            "--set",
            "fold=0",
            "--set",
            "epochs=2",
            "--set",
            "batch_size=8",
            "data/train_images",
            "data/train.csv",
            "folds.csv",
            "-o",
            "tr",
        ],
    )
    .env("PODIUM_PROGRESS_SECS", "0")
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("  train: ")).collect();
    assert!(lines.len() >= 4, "{err}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("epoch 2/2") && l.contains("loss")),
        "{err}"
    );
    assert!(lines.iter().any(|l| l.contains("ETA")), "{err}");
}

/// `keep_last = false` (issue 23: 134 MB of `last.safetensors` per resnet18
/// fold, always kept) writes only the best checkpoint.
#[test]
fn keep_last_false_keeps_only_the_best_checkpoint() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    data(d, "classify", 60, 2);
    let sets = [
        "fold=0".into(),
        "epochs=1".into(),
        "batch_size=8".into(),
        "keep_last=false".into(),
    ];
    train_op(d, &sets, "data/train.csv", "tr");
    assert!(d.join("tr/best.safetensors").is_file());
    assert!(!d.join("tr/last.safetensors").exists());
    assert!(d.join("tr/metrics.json").is_file());
}
