//! `podium exp`: the experiments of a pipeline side by side, one diffed
//! against another, pinned against `gc`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use podium::hash::Hash;
use podium::store::Store;
use podium::store::experiments::{
    Experiment, Summary, is_score, lower_is_better, metric_order, ranked,
};
use serde_json::json;

use super::commands::short_number;
use super::{ExpAction, TableFormat};

/// The pipeline a manifest names (`[pipeline] name`, else its stem),
/// read without checking the rest: experiments stay listable while the
/// manifest is broken.
pub fn pipeline_name(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let name = toml::from_str::<toml::Table>(&text)
        .ok()
        .and_then(|t| t.get("pipeline")?.get("name")?.as_str().map(str::to_string));
    Ok(name.unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pipeline".into())
    }))
}

pub struct ListOptions<'a> {
    pub sort: Option<&'a str>,
    pub metrics: &'a [String],
    pub format: TableFormat,
}

pub fn exp(
    store_dir: &Path,
    file: &Option<PathBuf>,
    action: Option<&ExpAction>,
    list: &ListOptions,
) -> anyhow::Result<i32> {
    let pipeline = pipeline_name(&super::manifest_path(file.as_deref())?)?;
    let store = Store::open_existing(store_dir)?;
    let journal = store.experiments();
    match action {
        None => {
            let exps = journal.all(&pipeline);
            if exps.is_empty() {
                eprintln!("pipeline {pipeline} has no experiments yet: `podium run` makes one");
                return Ok(0);
            }
            print!("{}", table(&store, &exps, list)?);
        }
        Some(ExpAction::Diff { a, b }) => {
            let a = journal.find(&pipeline, a).map_err(anyhow::Error::msg)?;
            let b = journal.find(&pipeline, b).map_err(anyhow::Error::msg)?;
            print!("{}", diff(&a, &b));
        }
        Some(ExpAction::Pin { experiment }) | Some(ExpAction::Unpin { experiment }) => {
            let pin = matches!(action, Some(ExpAction::Pin { .. }));
            let mut e = journal
                .find(&pipeline, experiment)
                .map_err(anyhow::Error::msg)?;
            e.pinned = pin;
            journal.put(&e)?;
            eprintln!(
                "{} {}",
                if pin {
                    "pinned: gc keeps"
                } else {
                    "unpinned: gc may free"
                },
                e.label()
            );
        }
        Some(ExpAction::Name { experiment, name }) => {
            let mut e = journal
                .find(&pipeline, experiment)
                .map_err(anyhow::Error::msg)?;
            e.name = Some(name.clone());
            journal.put(&e)?;
            eprintln!("named {}", e.label());
        }
    }
    Ok(0)
}

/// The store bytes an experiment's records hold (each object once), or
/// `None` when `gc` freed them.
fn store_bytes(store: &Store, e: &Experiment) -> Option<u64> {
    let mut seen = HashSet::new();
    let mut total = 0;
    for inst in e.instances.values() {
        let rec = Hash::from_hex(&inst.key)
            .ok()
            .and_then(|k| store.record(&k))?;
        for o in rec.outputs.values() {
            if o.files.is_empty() {
                if seen.insert(o.hash.clone()) {
                    total += o.size;
                }
            } else {
                for f in &o.files {
                    if seen.insert(f.hash.clone()) {
                        total += f.size;
                    }
                }
            }
        }
    }
    Some(total)
}

/// The params (and stage overrides) whose values differ among `exps`.
fn differing(exps: &[Experiment]) -> Vec<String> {
    let keys: BTreeSet<&String> = exps.iter().flat_map(|e| e.params.keys()).collect();
    let mut out: Vec<String> = keys
        .into_iter()
        .filter(|k| {
            let first = exps[0].params.get(*k);
            exps.iter().any(|e| e.params.get(*k) != first)
        })
        .cloned()
        .collect();
    // Stage overrides as `stages.train.lr` columns.
    let so: BTreeSet<String> = exps
        .iter()
        .flat_map(|e| e.stage_overrides.iter())
        .filter_map(|o| o.split_once('=').map(|(k, _)| k.to_string()))
        .collect();
    out.extend(so);
    out
}

fn param_value(e: &Experiment, k: &str) -> String {
    if let Some(v) = e.params.get(k) {
        return v.clone();
    }
    e.stage_overrides
        .iter()
        .rev()
        .find_map(|o| {
            o.split_once('=')
                .filter(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap_or_else(|| "-".into())
}

fn metric_text(s: Option<&Summary>) -> String {
    match s {
        None => "-".into(),
        Some(Summary {
            mean, std: None, ..
        }) => short_number(*mean),
        Some(Summary {
            mean,
            std: Some(sd),
            ..
        }) => format!("{}±{}", short_number(*mean), short_number(*sd)),
    }
}

/// `2026-12-07 11:40` (UTC) from seconds since the Unix epoch.
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (mo <= 2) as i64;
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}")
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "freed".into(), super::mib)
}

/// The experiments as a table, sorted by `sort` (best first) or by time.
fn table(store: &Store, exps: &[Experiment], o: &ListOptions) -> anyhow::Result<String> {
    let summaries: Vec<BTreeMap<String, Summary>> = exps.iter().map(|e| e.summary()).collect();
    let all_metrics: BTreeSet<String> = summaries.iter().flat_map(|s| s.keys().cloned()).collect();
    let metrics: Vec<String> = if o.metrics.is_empty() {
        all_metrics
            .iter()
            .filter(|m| is_score(m))
            .cloned()
            .collect()
    } else {
        for m in o.metrics {
            if !all_metrics.contains(m) {
                anyhow::bail!(
                    "no experiment has metric `{m}`; metrics: {}",
                    all_metrics.iter().cloned().collect::<Vec<_>>().join(", ")
                );
            }
        }
        o.metrics.to_vec()
    };
    let mut order: Vec<usize> = (0..exps.len()).collect();
    if let Some(sort) = o.sort {
        // Those with the metric, best first, then the others as they were.
        let mut best = ranked(&summaries, sort);
        if best.is_empty() {
            let metric = metric_order(sort).0;
            anyhow::bail!("no experiment has metric `{metric}` to sort by");
        }
        order.retain(|i| !best.contains(i));
        best.extend(order);
        order = best;
    }
    let params = differing(exps);
    let mut header: Vec<String> = vec!["experiment".into(), "name".into()];
    header.extend(params.iter().cloned());
    header.extend(metrics.iter().cloned());
    header.extend(["compute".into(), "store".into(), "finished (UTC)".into()]);
    let bytes: Vec<Option<u64>> = exps.iter().map(|e| store_bytes(store, e)).collect();
    if o.format == TableFormat::Json {
        let rows: Vec<_> = order
            .iter()
            .map(|&i| {
                let e = &exps[i];
                json!({
                    "id": e.id, "name": e.name, "pinned": e.pinned,
                    "params": e.params, "stage_overrides": e.stage_overrides,
                    "metrics": summaries[i], "compute_s": e.compute_s(),
                    "store_bytes": bytes[i], "finished_at": e.finished_at,
                    "complete": e.incomplete.is_empty(), "incomplete": e.incomplete,
                })
            })
            .collect();
        return Ok(format!("{}\n", serde_json::to_string_pretty(&rows)?));
    }
    let rows: Vec<Vec<String>> = order
        .iter()
        .map(|&i| {
            let e = &exps[i];
            let mut r = vec![
                format!(
                    "{}{}{}",
                    e.id,
                    if e.pinned { " (pinned)" } else { "" },
                    if e.incomplete.is_empty() {
                        ""
                    } else {
                        " (incomplete)"
                    }
                ),
                e.name.clone().unwrap_or_else(|| "-".into()),
            ];
            r.extend(params.iter().map(|k| param_value(e, k)));
            r.extend(metrics.iter().map(|m| metric_text(summaries[i].get(m))));
            r.push(format!("{:.1}s", e.compute_s()));
            r.push(mib(bytes[i]));
            r.push(utc(e.finished_at));
            r
        })
        .collect();
    Ok(match o.format {
        TableFormat::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(&header)?;
            for r in &rows {
                w.write_record(r)?;
            }
            String::from_utf8(w.into_inner()?)?
        }
        TableFormat::Markdown => {
            let esc = |s: &str| s.replace('|', "\\|");
            let mut s = format!(
                "| {} |\n|{}\n",
                header
                    .iter()
                    .map(|h| esc(h))
                    .collect::<Vec<_>>()
                    .join(" | "),
                "---|".repeat(header.len())
            );
            for r in &rows {
                s.push_str(&format!(
                    "| {} |\n",
                    r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")
                ));
            }
            s
        }
        _ => aligned(&header, &rows),
    })
}

/// Columns padded to their widest cell.
fn aligned(header: &[String], rows: &[Vec<String>]) -> String {
    let width: Vec<usize> = (0..header.len())
        .map(|c| {
            std::iter::once(&header[c])
                .chain(rows.iter().map(|r| &r[c]))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let mut s = cells
            .iter()
            .zip(&width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header);
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

/// Params and metrics of two experiments side by side: the params that
/// differ, then every metric with the change from A to B.
fn diff(a: &Experiment, b: &Experiment) -> String {
    let pair = [a.clone(), b.clone()];
    let params = differing(&pair);
    let mut rows: Vec<Vec<String>> = Vec::new();
    for k in &params {
        rows.push(vec![
            k.clone(),
            param_value(a, k),
            param_value(b, k),
            String::new(),
        ]);
    }
    let (sa, sb) = (a.summary(), b.summary());
    let metrics: BTreeSet<&String> = sa.keys().chain(sb.keys()).filter(|m| is_score(m)).collect();
    for m in metrics {
        let (x, y) = (sa.get(m), sb.get(m));
        let delta = match (x, y) {
            (Some(x), Some(y)) => {
                let d = y.mean - x.mean;
                let better = if d == 0.0 {
                    ""
                } else if (d < 0.0) == lower_is_better(m) {
                    " (better)"
                } else {
                    " (worse)"
                };
                format!(
                    "{}{}{better}",
                    if d >= 0.0 { "+" } else { "" },
                    short_number(d)
                )
            }
            _ => String::new(),
        };
        rows.push(vec![m.clone(), metric_text(x), metric_text(y), delta]);
    }
    rows.push(vec![
        "compute".into(),
        format!("{:.1}s", a.compute_s()),
        format!("{:.1}s", b.compute_s()),
        String::new(),
    ]);
    let header = vec![
        String::new(),
        format!("A: {}", a.label()),
        format!("B: {}", b.label()),
        "B - A".into(),
    ];
    if params.is_empty() {
        rows.insert(
            0,
            vec![
                "(params)".into(),
                "the same".into(),
                "the same".into(),
                String::new(),
            ],
        );
    }
    aligned(&header, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_match_the_calendar() {
        assert_eq!(utc(0), "1970-01-01 00:00");
        // date -u -d @1796642400
        assert_eq!(utc(1_796_642_400), "2026-12-07 11:20");
        // A leap day: date -u -d @1709210096
        assert_eq!(utc(1_709_210_096), "2024-02-29 12:34");
    }
}
