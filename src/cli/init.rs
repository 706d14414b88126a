//! `podium init`: a starting manifest for a competition's data as Kaggle
//! lays it out (`train.csv`, `train/` or `train_images/`, `test/`,
//! `sample_submission.csv`, a COCO file for boxes, masks for
//! segmentation), read from what is there, with the seeds' further stages
//! as comments. It writes one new file and never replaces one.

use std::path::{Component, Path, PathBuf};

use super::InitTask;

impl InitTask {
    /// The task as `--task` and `train`'s `task` spell it.
    fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }
}

/// What was found in the data directory, as paths relative to the manifest.
struct Layout {
    train_images: String,
    test_images: String,
    labels: String,
    id_column: String,
    label_column: String,
    sample: Option<String>,
    coco: Option<String>,
    test_coco: Option<String>,
    masks: Option<String>,
}

fn first_dir(data: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|n| data.join(n)).find(|p| p.is_dir())
}

fn first_file(data: &Path, pred: impl Fn(&str) -> bool) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(data)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| pred(&n.to_string_lossy())))
        .collect();
    found.sort();
    found.into_iter().next()
}

/// `to` relative to the directory `from` (both made absolute).
fn relative(from: &Path, to: &Path) -> String {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let norm = |p: PathBuf| -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for c in p.components() {
            match c {
                Component::ParentDir => {
                    out.pop();
                }
                Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
                _ => {}
            }
        }
        out
    };
    let (f, t) = (norm(abs(from)), norm(abs(to)));
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".into(); f.len() - common];
    parts.extend(t[common..].iter().cloned());
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

fn layout(
    data: &Path,
    manifest_dir: &Path,
    task: InitTask,
    label: Option<&str>,
) -> anyhow::Result<Layout> {
    let rel = |p: &Path| relative(manifest_dir, p);
    let need = |what: &str, p: Option<PathBuf>, looked: &str| {
        p.ok_or_else(|| {
            anyhow::anyhow!(
                "{}: no {what} (looked for {looked}); podium init reads a competition's data as Kaggle lays it out",
                data.display()
            )
        })
    };
    let train_images = need(
        "training images",
        first_dir(
            data,
            &["train_images", "train", "images/train", "train_img"],
        ),
        "train_images/, train/, images/train/",
    )?;
    let test_images = need(
        "test images",
        first_dir(data, &["test_images", "test", "images/test", "test_img"]),
        "test_images/, test/, images/test/",
    )?;
    let labels = need(
        "training labels",
        Some(data.join("train.csv"))
            .filter(|p| p.is_file())
            .or_else(|| first_file(data, |n| n.ends_with(".csv") && n.contains("train"))),
        "train.csv",
    )?;
    let header = std::fs::read_to_string(&labels)
        .map_err(|e| anyhow::anyhow!("{}: {e}", labels.display()))?;
    let header: Vec<String> = header
        .lines()
        .next()
        .unwrap_or("")
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_string())
        .collect();
    if header.len() < 2 && !matches!(task, InitTask::Detect | InitTask::Segment) {
        anyhow::bail!(
            "{}: its header ({}) has no label column beside the id",
            labels.display(),
            header.join(",")
        );
    }
    let label_column = match label {
        Some(l) if header.iter().any(|h| h == l) => l.to_string(),
        Some(l) => anyhow::bail!(
            "{}: no column `{l}`; its columns: {}",
            labels.display(),
            header.join(", ")
        ),
        None => header.get(1).cloned().unwrap_or_default(),
    };
    let coco_named = |part: &str| first_file(data, |n| n.ends_with(".json") && n.contains(part));
    let (coco, test_coco) = match task {
        InitTask::Detect => {
            let train = coco_named("train").or_else(|| first_file(data, |n| n.ends_with(".json")));
            let train = need("COCO ground truth for the boxes", train, "train*.json")?;
            (Some(rel(&train)), coco_named("test").map(|p| rel(&p)))
        }
        _ => (None, None),
    };
    let masks = match task {
        InitTask::Segment => {
            first_dir(data, &["train_masks", "masks", "train_label", "labels"]).map(|p| rel(&p))
        }
        _ => None,
    };
    let sample = Some(data.join("sample_submission.csv"))
        .filter(|p| p.is_file())
        .or_else(|| first_file(data, |n| n.contains("sample") && n.ends_with(".csv")))
        .map(|p| rel(&p));
    Ok(Layout {
        train_images: rel(&train_images),
        test_images: rel(&test_images),
        labels: rel(&labels),
        id_column: header.first().cloned().unwrap_or_else(|| "id".into()),
        label_column,
        sample,
        coco,
        test_coco,
        masks,
    })
}

/// A TOML string.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn manifest(name: &str, task: InitTask, l: &Layout) -> String {
    let task_name = task.name();
    let mut s = format!(
        r#"# {name}: a starting pipeline written by `podium init --task {task_name}` from the data it
# found. Check it with `podium check -f THIS_FILE`, run it with `podium run -f THIS_FILE`,
# try variants with `--set params.arch=resnet18` and compare them with `podium exp`.
# docs/manifest.md and docs/ops.md describe every key; the commented stages below are what
# published winning solutions add next.

[pipeline]
name = {name_q}

[params]
folds = 5
seed = 42
arch = "simple_cnn"      # resnet18, resnet34, efficientnet_b0 (`pretrained` for timm weights)
epochs = 10
image_size = 64
lr = 0.003

[inputs]
train_images = {ti}
test_images = {te}
labels = {lb}       # id column `{idc}`, label column `{lc}`
"#,
        name_q = q(name),
        ti = q(&l.train_images),
        te = q(&l.test_images),
        lb = q(&l.labels),
        idc = l.id_column,
        lc = l.label_column,
    );
    if let Some(c) = &l.coco {
        s.push_str(&format!("coco = {}\n", q(c)));
    }
    if let Some(c) = &l.test_coco {
        s.push_str(&format!("test_coco = {}\n", q(c)));
    }
    if let Some(m) = &l.masks {
        s.push_str(&format!("masks = {}\n", q(m)));
    }
    if let Some(sm) = &l.sample {
        s.push_str(&format!("sample = {}\n", q(sm)));
    }
    let (kind, by) = match task {
        InitTask::Classify => ("stratified", Some(l.label_column.as_str())),
        InitTask::Multilabel => ("multilabel", Some(l.label_column.as_str())),
        _ => ("kfold", None),
    };
    let split_labels = if task == InitTask::Detect {
        "${inputs.coco}"
    } else {
        "${inputs.labels}"
    };
    s.push_str(&format!(
        r#"
[stages.split]
op = "folds"
labels = "{split_labels}"
kind = "{kind}"
{by}k = "${{params.folds}}"
seed = "${{params.seed}}"
# Group folds (SIIM: by study; HuBMAP: by whole-slide image): kind = "group", group = "study_id".
"#,
        by = by.map(|b| format!("by = {}\n", q(b))).unwrap_or_default(),
    ));
    let train_labels = if task == InitTask::Detect {
        "${inputs.coco}"
    } else {
        "${inputs.labels}"
    };
    s.push_str(&format!(
        r#"
[stages.train]
op = "train"
description = "One model per fold; validates on its fold and keeps the best epoch."
matrix = {{ fold = "${{range(params.folds)}}" }}
task = "{task_name}"
arch = "${{params.arch}}"
images = "${{inputs.train_images}}"
labels = "{train_labels}"
{masks}folds = "${{stages.split.folds}}"
fold = "${{fold}}"
image_size = "${{params.image_size}}"
epochs = "${{params.epochs}}"
lr = "${{params.lr}}"
warmup_epochs = 0.5
hflip = 0.5
seed = "${{params.seed + fold}}"
keep_last = false        # true keeps last.safetensors, to go on from with `init`
resources = {{ threads = 2 }}
# Fine-tune from the best epoch (APTOS, HuBMAP): a second train stage with
# init = "${{stages.train[fold=fold].best}}" and a lower lr.
"#,
        masks = l
            .masks
            .as_ref()
            .map(|_| "masks = \"${inputs.masks}\"\n".to_string())
            .unwrap_or_default(),
    ));
    if matches!(
        task,
        InitTask::Classify | InitTask::Multilabel | InitTask::Regress
    ) {
        s.push_str(
            r#"
[stages.cv]
op = "cv"
description = "Cross-validation: out-of-fold predictions of the training set, fold mean and std."
oofs = "${stages.train[*].oof}"
metrics = "${stages.train[*].metrics}"
"#,
        );
    }
    let tta = match task {
        InitTask::Classify | InitTask::Multilabel | InitTask::Segment => {
            r#"["default", "fliplr"]     # dihedral names; flips suit most photos, not text or laterality"#
        }
        _ => r#"["default", "fliplr"]"#,
    };
    s.push_str(&format!(
        r#"
[stages.predict]
op = "predict"
matrix = {{ fold = "${{range(params.folds)}}" }}
checkpoint = "${{stages.train[fold=fold].best}}"
images = "${{inputs.test_images}}"
{coco}tta = {tta}
resources = {{ threads = 2 }}
"#,
        coco = l
            .test_coco
            .as_ref()
            .map(|_| "coco = \"${inputs.test_coco}\"\n".to_string())
            .unwrap_or_default(),
    ));
    match task {
        InitTask::Classify | InitTask::Multilabel | InitTask::Regress => {
            s.push_str(
                r#"
[stages.blend]
op = "ensemble"
preds = "${stages.predict[*].pred}"
method = "mean"
"#,
            );
            let post = match task {
                InitTask::Classify => format!(
                    r#"
[stages.labels]
op = "postprocess"
pred = "${{stages.blend.pred}}"
method = "argmax"
column = {}
"#,
                    q(&l.label_column)
                ),
                InitTask::Multilabel => format!(
                    r#"
[stages.labels]
op = "postprocess"
description = "Per-class thresholds fitted on the out-of-fold predictions (HPA)."
pred = "${{stages.blend.pred}}"
method = "threshold"
fit_pred = "${{stages.cv.oof}}"
fit_truth = "${{inputs.labels}}"
at_least_one = true
column = {}
"#,
                    q(&l.label_column)
                ),
                _ => format!(
                    r#"
# Grades (APTOS): cut points fitted on the out-of-fold predictions to maximise QWK.
# [stages.labels]
# op = "postprocess"
# pred = "${{stages.blend.pred}}"
# method = "grades"
# grades = 5
# fit_pred = "${{stages.cv.oof}}"
# fit_truth = "${{inputs.labels}}"
# column = {}
"#,
                    q(&l.label_column)
                ),
            };
            s.push_str(&post);
            if l.sample.is_some() {
                let pred = if task == InitTask::Regress {
                    "${stages.blend.pred}"
                } else {
                    "${stages.labels.labels}"
                };
                s.push_str(&format!(
                    r#"
[stages.submission]
op = "submission"
pred = "{pred}"
sample = "${{inputs.sample}}"
"#
                ));
            }
            s.push_str(
                r#"
# Pseudo labels (APTOS, SIIM): the blend's confident test predictions as extra
# training data for a second round:
# [stages.pseudo]
# op = "pseudo_label"
# pred = "${stages.blend.pred}"
"#,
            );
        }
        InitTask::Detect => {
            // wbf works on boxes normalized by each image's size, which a
            // COCO file of the test images gives.
            let fuse = r#"[stages.fuse]
op = "wbf"
description = "The folds' boxes fused by weighted boxes fusion (SIIM)."
boxes = "${stages.predict[*].detections}"
images = "${inputs.test_coco}"
iou_thr = 0.55
"#;
            if l.test_coco.is_some() {
                s.push('\n');
                s.push_str(fuse);
            } else {
                s.push_str(
                    "\n# The folds' boxes fused by WBF, given a COCO file of the test images (their sizes):\n",
                );
                for line in fuse.lines() {
                    s.push_str(&format!("# {line}\n"));
                }
            }
            if l.sample.is_some() {
                s.push_str(
                    r#"
# SIIM's strings (`opacity score x1 y1 x2 y2 …`, `none 1 0 0 1 1`):
# [stages.submission]
# op = "submission"
# pred = "${stages.fuse.boxes}"
# sample = "${inputs.sample}"
# class_names = { 0 = "opacity" }
"#,
                );
            }
        }
        InitTask::Segment => {
            s.push_str(
                r#"
[stages.blend]
op = "mask_ensemble"
description = "The folds' mask probabilities, averaged pixel by pixel."
probs = "${stages.predict[*].probs}"
"#,
            );
        }
    }
    s
}

pub fn init(
    data: &Path,
    task: InitTask,
    output: Option<&Path>,
    label: Option<&str>,
    name: Option<&str>,
) -> anyhow::Result<i32> {
    if !data.is_dir() {
        anyhow::bail!("{}: not a directory", data.display());
    }
    let name = match name {
        Some(n) => n.to_string(),
        None => std::path::absolute(data)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "pipeline".into()),
    };
    let out = output.map(Path::to_path_buf).unwrap_or_else(|| {
        PathBuf::from("pipelines").join(format!("{}.toml", podium::store::pipeline_dir_name(&name)))
    });
    if out.exists() {
        anyhow::bail!(
            "{}: exists; podium init writes a new file and never replaces one (name another with -o)",
            out.display()
        );
    }
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let l = layout(data, &dir, task, label)?;
    let text = manifest(&name, task, &l);
    std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    // create_new: a file that appeared meanwhile is not replaced either.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&out)
        .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    eprintln!(
        "wrote {} (task {}, labels {} column `{}`); check it with `podium check -f {0}`",
        out.display(),
        task.name(),
        l.labels,
        l.label_column
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_written_relative_to_the_manifest() {
        assert_eq!(
            relative(Path::new("/a/pipelines"), Path::new("/a/data/train.csv")),
            "../data/train.csv"
        );
        assert_eq!(relative(Path::new("/a"), Path::new("/a/data")), "data");
        assert_eq!(relative(Path::new("/a/b"), Path::new("/a/b")), ".");
    }
}
