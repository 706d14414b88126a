//! Experiments: every run of a manifest with its overrides, identified by
//! what it computes (its params and stage overrides), not by when it ran.
//!
//! One journal per pipeline, `experiments/<pipeline>.jsonl`: one
//! [`Experiment`] per line, appended with one `write` (`O_APPEND` keeps a
//! line whole), the last line of an id winning. A line that does not parse
//! (a torn write of a killed process) is skipped. Records of the store are
//! referenced by key, so an experiment's metrics stay in the table after
//! `gc` freed its objects.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One run of a configuration, as last seen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    /// 12 hex digits of blake3 over the pipeline, its params and its stage
    /// and input overrides: the same configuration is the same experiment.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
    pub pipeline: String,
    pub manifest: String,
    /// The `--set` flags of its last run, as given.
    pub overrides: Vec<String>,
    /// `[params]`, resolved, as plan writes them.
    pub params: BTreeMap<String, String>,
    /// The overrides of stage fields and inputs (`stages.train.lr=0.1`),
    /// which `[params]` does not show.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stage_overrides: Vec<String>,
    /// Every instance that is up to date after the run.
    pub instances: BTreeMap<String, ExpInstance>,
    /// Instances of the pipeline that were not (failed, not run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub incomplete: Vec<String>,
    /// Seconds since the Unix epoch.
    pub finished_at: u64,
}

/// One instance of an experiment: the record it is up to date with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExpInstance {
    pub stage: String,
    pub key: String,
    /// Whether the stage has a matrix: its metrics are folded into a mean
    /// and a standard deviation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub matrix: bool,
    pub duration_s: f64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
}

/// A metric of an experiment: one instance's value, or over the instances
/// of a matrix stage (the folds of `train`: the cross-validation score)
/// their mean and sample standard deviation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub mean: f64,
    /// `None` for a stage without a matrix.
    pub std: Option<f64>,
    pub n: usize,
}

impl Experiment {
    /// The identity of a configuration.
    pub fn id_of(
        pipeline: &str,
        params: &BTreeMap<String, String>,
        stage_overrides: &[String],
    ) -> String {
        let mut h = blake3::Hasher::new();
        h.update(b"podium-experiment-1\0");
        h.update(pipeline.as_bytes());
        h.update(b"\0");
        for (k, v) in params {
            h.update(k.as_bytes());
            h.update(b"\0");
            h.update(v.as_bytes());
            h.update(b"\0");
        }
        let mut so: Vec<&String> = stage_overrides.iter().collect();
        so.sort();
        for o in so {
            h.update(b"\x01");
            h.update(o.as_bytes());
        }
        h.finalize().to_hex()[..12].to_string()
    }

    /// `stage.metric` → its value (or fold mean and std), per stage.
    pub fn summary(&self) -> BTreeMap<String, Summary> {
        let mut by: BTreeMap<String, (bool, Vec<f64>)> = BTreeMap::new();
        for inst in self.instances.values() {
            for (m, v) in &inst.metrics {
                let e = by
                    .entry(format!("{}.{m}", inst.stage))
                    .or_insert((inst.matrix, Vec::new()));
                e.1.push(*v);
            }
        }
        by.into_iter()
            .map(|(k, (matrix, vs))| {
                let (mean, std) = crate::metrics::mean_and_sample_std(&vs);
                let std = matrix.then_some(std);
                (
                    k,
                    Summary {
                        mean,
                        std,
                        n: vs.len(),
                    },
                )
            })
            .collect()
    }

    /// Compute time: the instances' own durations, summed.
    pub fn compute_s(&self) -> f64 {
        self.instances.values().map(|i| i.duration_s).sum()
    }

    /// The id, or the name and the id.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("{n} ({})", self.id),
            None => self.id.clone(),
        }
    }
}

/// Numbers ops report beside their scores that say how a run went, not
/// how good it is: left out of `podium exp`'s default columns and diff.
pub const RUN_FACTS: &[&str] = &[
    "images",
    "pixels",
    "ms_per_image",
    "tta",
    "epochs",
    "best_epoch",
    "train_images_per_s",
    "steps",
    "folds",
];

/// Whether `stage.metric` is a score (not one of [`RUN_FACTS`]).
pub fn is_score(metric: &str) -> bool {
    let m = metric.rsplit('.').next().unwrap_or(metric);
    let m = m.strip_suffix("_std").unwrap_or(m);
    !RUN_FACTS.contains(&m)
}

/// Whether `stage.metric` is better low (`train.val_loss`) or high (the
/// rest), as [`crate::metrics::higher_is_better`] says of the metric.
pub fn lower_is_better(metric: &str) -> bool {
    !crate::metrics::higher_is_better(metric.rsplit('.').next().unwrap_or(metric))
}

/// A metric to rank by, `stage.metric` with an optional `:min` or `:max`
/// (default: [`lower_is_better`]): the metric and whether low is best.
pub fn metric_order(spec: &str) -> (&str, bool) {
    match spec.rsplit_once(':') {
        Some((m, "min")) => (m, true),
        Some((m, "max")) => (m, false),
        _ => (spec, lower_is_better(spec)),
    }
}

/// The indices of the summaries that have the metric `spec` names
/// ([`metric_order`]), best first; ties keep their order.
pub fn ranked(summaries: &[BTreeMap<String, Summary>], spec: &str) -> Vec<usize> {
    let (metric, low) = metric_order(spec);
    let mut r: Vec<(usize, f64)> = summaries
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.get(metric).map(|s| (i, s.mean)))
        .collect();
    r.sort_by(|a, b| {
        if low {
            a.1.total_cmp(&b.1)
        } else {
            b.1.total_cmp(&a.1)
        }
    });
    r.into_iter().map(|(i, _)| i).collect()
}

/// The journals of experiments, `experiments/<pipeline>.jsonl`.
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn new(dir: PathBuf) -> Journal {
        Journal { dir }
    }

    fn path(&self, pipeline: &str) -> PathBuf {
        self.dir
            .join(format!("{}.jsonl", super::pipeline_dir_name(pipeline)))
    }

    /// Appends `e` as its id's latest state.
    pub fn put(&self, e: &Experiment) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut line = serde_json::to_vec(e).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&e.pipeline))?;
        f.write_all(&line)
    }

    /// The experiments of a pipeline, latest state of each, oldest first
    /// (by their last run).
    pub fn all(&self, pipeline: &str) -> Vec<Experiment> {
        read(&self.path(pipeline))
    }

    /// Every pipeline with a journal.
    pub fn pipelines(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".jsonl").map(str::to_string)
            })
            .collect();
        out.sort();
        out
    }

    /// The experiment a user means by `what`: a name, an id or an id's
    /// unambiguous prefix.
    pub fn find(&self, pipeline: &str, what: &str) -> Result<Experiment, String> {
        let all = self.all(pipeline);
        if let Some(e) = all.iter().rev().find(|e| e.name.as_deref() == Some(what)) {
            return Ok(e.clone());
        }
        let hits: Vec<&Experiment> = all.iter().filter(|e| e.id.starts_with(what)).collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(format!(
                "no experiment `{what}` of pipeline {pipeline}; `podium exp` lists them"
            )),
            many => Err(format!(
                "`{what}` is the start of {} experiment ids of pipeline {pipeline}: {}",
                many.len(),
                many.iter()
                    .map(|e| e.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

fn read(path: &Path) -> Vec<Experiment> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut order: Vec<String> = Vec::new();
    let mut latest: BTreeMap<String, Experiment> = BTreeMap::new();
    for line in text.lines() {
        let Ok(e) = serde_json::from_str::<Experiment>(line) else {
            continue;
        };
        order.retain(|id| id != &e.id);
        order.push(e.id.clone());
        latest.insert(e.id.clone(), e);
    }
    order
        .into_iter()
        .filter_map(|id| latest.remove(&id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp(id: &str, stage: &str, values: &[f64]) -> Experiment {
        let matrix = values.len() > 1;
        Experiment {
            id: id.into(),
            name: None,
            pinned: false,
            pipeline: "p".into(),
            manifest: "p.toml".into(),
            overrides: vec![],
            params: BTreeMap::new(),
            stage_overrides: vec![],
            instances: values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    (
                        format!("{stage}[fold={i}]"),
                        ExpInstance {
                            stage: stage.into(),
                            key: format!("k{i}"),
                            matrix,
                            duration_s: 1.5,
                            metrics: [("accuracy".to_string(), *v)].into(),
                        },
                    )
                })
                .collect(),
            incomplete: vec![],
            finished_at: 0,
        }
    }

    #[test]
    fn folds_summarise_as_mean_and_sample_std() {
        let s = exp("a", "train", &[0.8, 0.9, 1.0]).summary();
        let t = s["train.accuracy"];
        assert!((t.mean - 0.9).abs() < 1e-12);
        // numpy.std([0.8, 0.9, 1.0], ddof=1)
        assert!((t.std.unwrap() - 0.1).abs() < 1e-12);
        assert_eq!(t.n, 3);
        let s = exp("b", "evaluate", &[0.7]).summary();
        assert_eq!(s["evaluate.accuracy"].std, None);
    }

    #[test]
    fn the_last_line_of_an_id_wins_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().to_path_buf());
        j.put(&exp("aaa111", "train", &[0.5, 0.6])).unwrap();
        j.put(&exp("bbb222", "train", &[0.7, 0.8])).unwrap();
        let mut named = exp("aaa111", "train", &[0.5, 0.6]);
        named.name = Some("base".into());
        j.put(&named).unwrap();
        let path = dir.path().join("p.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"id\": \"ccc").unwrap();
        let all = j.all("p");
        let ids: Vec<&str> = all.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["bbb222", "aaa111"]);
        assert_eq!(j.find("p", "base").unwrap().id, "aaa111");
        assert_eq!(j.find("p", "bb").unwrap().id, "bbb222");
        assert!(j.find("p", "zz").unwrap_err().contains("no experiment"));
    }

    #[test]
    fn the_same_configuration_is_the_same_experiment() {
        let p: BTreeMap<String, String> = [("lr".to_string(), "0.1".to_string())].into();
        let a = Experiment::id_of("p", &p, &["stages.a.x=1".into(), "stages.b.y=2".into()]);
        let b = Experiment::id_of("p", &p, &["stages.b.y=2".into(), "stages.a.x=1".into()]);
        assert_eq!(a, b);
        let q: BTreeMap<String, String> = [("lr".to_string(), "0.2".to_string())].into();
        assert_ne!(a, Experiment::id_of("p", &q, &[]));
        assert_ne!(
            Experiment::id_of("p", &p, &[]),
            Experiment::id_of("o", &p, &[])
        );
    }

    #[test]
    fn run_facts_are_not_scores() {
        assert!(is_score("train.accuracy"));
        assert!(!is_score("predict.ms_per_image"));
        assert!(!is_score("train.best_epoch"));
        assert!(!is_score("cv.best_epoch_std"));
        assert!(is_score("cv.accuracy_std"));
    }

    #[test]
    fn losses_and_errors_are_better_low() {
        assert!(lower_is_better("train.loss"));
        assert!(lower_is_better("evaluate.rmse"));
        assert!(!lower_is_better("train.accuracy"));
        assert!(!lower_is_better("evaluate.coco_map50"));
    }
}
