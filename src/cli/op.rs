//! `podium op KIND [--set KEY=VALUE]... INPUT... -o OUTPUT`: one op alone,
//! with the same parameters as in a manifest, outside the store.

use std::path::{Path, PathBuf};

use podium::diag::{SourceMap, Span};
use podium::expr::{Segment, Template};
use podium::manifest::{Name, RawKind, RawManifest, RawStage, RawValue, parse_override};
use podium::ops::{self, OpContext};

pub fn op(
    kind: Option<&str>,
    inputs: &[PathBuf],
    set: &[String],
    output: Option<&Path>,
    list: bool,
    threads: usize,
) -> anyhow::Result<i32> {
    if list || kind.is_none() {
        for o in ops::all() {
            println!("{:<10} {}", o.name(), o.summary());
            for p in o.params() {
                let default = p
                    .default
                    .map(|d| format!(" (default {d})"))
                    .unwrap_or_else(|| " (required)".into());
                println!("    {:<12} {}{default}", p.name, p.kind.describe());
            }
        }
        return Ok(0);
    }
    let kind = kind.unwrap();
    let Some(op) = ops::get(kind) else {
        let names: Vec<&str> = ops::all().iter().map(|o| o.name()).collect();
        anyhow::bail!("unknown op `{kind}`; ops: {}", names.join(", "));
    };
    for i in inputs {
        if !i.exists() {
            anyhow::bail!("{}: no such file or directory", i.display());
        }
    }
    // The same checks as a manifest stage: build one stage from the flags.
    let mut sources = SourceMap::default();
    let src = sources.add("<podium op>", "");
    let span = Span::new(src, 0, 0);
    let lit = |s: String| RawValue {
        kind: RawKind::Str(Template {
            segments: vec![Segment::Lit(s)],
        }),
        span,
    };
    let name = |n: &str| Name {
        name: n.to_string(),
        span,
    };
    let mut stage = RawStage {
        name: name("op"),
        op: Some((kind.to_string(), span)),
        matrix: Vec::new(),
        resources: None,
        description: None,
        fields: Vec::new(),
    };
    if !inputs.is_empty() {
        let abs: Vec<RawValue> = inputs
            .iter()
            .map(|i| {
                lit(std::path::absolute(i)
                    .unwrap_or_else(|_| i.clone())
                    .display()
                    .to_string())
            })
            .collect();
        let names = op.inputs();
        let takes_list = |n: &str| {
            op.params()
                .iter()
                .any(|p| p.name == n && p.kind == ops::ParamKind::Paths)
        };
        match names {
            [] => anyhow::bail!("op `{kind}` takes no inputs; give its parameters with --set"),
            [one] if takes_list(one) => stage.fields.push((
                name(one),
                RawValue {
                    kind: RawKind::Array(abs),
                    span,
                },
            )),
            _ if abs.len() > names.len() => anyhow::bail!(
                "op `{kind}` takes at most {} input(s): {}",
                names.len(),
                names.join(", ")
            ),
            _ => {
                for (n, v) in names.iter().zip(abs) {
                    stage.fields.push((name(n), v));
                }
            }
        }
    }
    let mut raw = RawManifest {
        path: PathBuf::from("podium-op.toml"),
        src,
        name: Some(("op".into(), span)),
        description: None,
        params: Vec::new(),
        inputs: Vec::new(),
        stages: vec![stage],
    };
    let mut diags = Vec::new();
    for s in set {
        match parse_override(&format!("stages.op.{s}"), &mut sources).and_then(|o| raw.apply(&o)) {
            Ok(()) => {}
            Err(d) => diags.push(d),
        }
    }
    let mut pipeline = None;
    if diags.is_empty() {
        let (p, more) = podium::ir::check(&raw);
        (pipeline, diags) = (p, more);
    }
    let Some(pipeline) = pipeline else {
        for d in diags.iter().filter(|d| d.is_error()) {
            let label = if d.label.is_empty() {
                String::new()
            } else {
                format!(" ({})", d.label)
            };
            eprintln!("error: {kind}: {}{label}", d.message);
        }
        return Ok(1);
    };
    let inst = &pipeline.instances[0];
    if !inst.outputs.is_empty() && output.is_none() {
        anyhow::bail!(
            "op `{kind}` writes {}; say where with -o",
            inst.outputs.join(", ")
        );
    }
    let work = tempfile::Builder::new()
        .prefix(".podium-op")
        .tempdir_in(".")?;
    let out_dir = work.path().join("out");
    std::fs::create_dir(&out_dir)?;
    let params = inst
        .params
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.map_paths(&|r| match r {
                    podium::value::PathRef::File { path, .. } => path.display().to_string(),
                    other => other.label().to_string(),
                }),
            )
        })
        .collect();
    let log_path = work.path().join("log");
    let mut log = std::fs::File::create(&log_path)?;
    let cwd = std::env::current_dir()?;
    let bar =
        std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| super::progress::op_bar(kind));
    let report = |s: &podium::ops::Step| {
        if let Some(b) = &bar {
            super::progress::show(b, s);
        }
    };
    let mut cx = OpContext {
        params: &params,
        out_dir: &out_dir,
        work_dir: &cwd,
        log: &mut log,
        cancel: podium::cancel::flag(),
        threads: threads.max(1),
        gpus: &[],
        resume_dir: None,
        progress: &report,
    };
    let result = op.run(&mut cx);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
    eprint!("{log_text}");
    if let Err(e) = result {
        eprintln!("error: {kind}: {e}");
        return Ok(1);
    }
    if let Some(output) = output {
        // Written beside the target, then renamed: a failure leaves it untouched.
        let src: PathBuf = if inst.outputs.len() == 1 {
            out_dir.join(&inst.outputs[0])
        } else {
            out_dir.clone()
        };
        if inst.outputs.len() != 1 && output.exists() && !output.is_dir() {
            anyhow::bail!(
                "{}: exists and is not a directory, but op `{kind}` writes several outputs ({})",
                output.display(),
                inst.outputs.join(", ")
            );
        }
        if output.is_dir() && inst.outputs.len() != 1 {
            podium::store::remove_all(output)?;
        }
        std::fs::rename(&src, output).or_else(|_| std::fs::copy(&src, output).map(|_| ()))?;
    }
    Ok(0)
}
