//! `podium op KIND [--set KEY=VALUE]... INPUT... -o OUTPUT`: one op alone,
//! with the same parameters as in a manifest, outside the store.

use std::path::{Path, PathBuf};

use podium::ops::{self, OpContext};

pub fn op(
    kind: Option<&str>,
    inputs: &[PathBuf],
    set: &[String],
    output: Option<&Path>,
    list: Option<super::ListFormat>,
    threads: usize,
) -> anyhow::Result<i32> {
    if list.is_some() || kind.is_none() {
        let ops: Vec<_> = match kind {
            Some(k) => vec![known(k)?],
            None => ops::all().to_vec(),
        };
        if list == Some(super::ListFormat::Markdown) {
            print!("{}", ops::markdown(&ops));
            return Ok(0);
        }
        for o in ops {
            println!("{:<10} {}", o.name(), o.summary());
            for p in o.params() {
                let default = p
                    .default
                    .map(|d| format!(" (default {d})"))
                    .unwrap_or_else(|| " (required)".into());
                println!("    {:<12} {}{default}", p.name, p.kind.describe());
                if kind.is_some() {
                    println!("        {}", p.help);
                }
            }
        }
        return Ok(0);
    }
    let kind = kind.unwrap();
    let op = known(kind)?;
    for i in inputs {
        if !i.exists() {
            anyhow::bail!("{}: no such file or directory", i.display());
        }
    }
    // The same checks as a manifest stage.
    let (pipeline, report) = match podium::check_one_op(kind, inputs, set) {
        Ok(r) => r,
        Err(podium::Error::Usage(m)) => anyhow::bail!(m),
        Err(e) => return Err(e.into()),
    };
    let diags = report.diagnostics;
    let Some(pipeline) = pipeline else {
        for d in diags.iter().filter(|d| d.is_error()) {
            eprintln!("error: {kind}: {}", d.one_line());
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
    if let Some(output) = output {
        check_output(kind, output, &inst.outputs)?;
    }
    // The work directory sits in the output directory, or beside the output
    // file, so that the result is renamed into place rather than copied
    // across filesystems.
    let beside = match output {
        Some(o) if o.is_dir() => o.to_path_buf(),
        Some(o) => o
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && d.is_dir())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        None => PathBuf::from("."),
    };
    let work = tempfile::Builder::new()
        .prefix(".podium-op")
        .tempdir_in(&beside)?;
    let out_dir = work.path().join("out");
    std::fs::create_dir(&out_dir)?;
    let params = inst.params_placed(&|r| match r {
        podium::value::PathRef::File { path, .. } => path.display().to_string(),
        other => other.label().to_string(),
    });
    let log_path = work.path().join("log");
    let mut log = std::fs::File::create(&log_path)?;
    let cwd = std::env::current_dir()?;
    let bar =
        std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| super::progress::op_bar(kind));
    let lines = super::progress::Lines::new(super::progress::line_interval());
    let report = |s: &podium::ops::Step| match &bar {
        Some(b) => super::progress::show(b, s),
        None => {
            if let Some(line) = lines.due(kind, s) {
                eprintln!("{line}");
            }
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
        // Name an output where it was to go, not in the work directory.
        let mut message = e.to_string();
        let shown = match (output, &inst.outputs[..]) {
            (Some(o), [_]) => Some((out_dir.join(&inst.outputs[0]), o.to_path_buf())),
            (Some(o), _) => Some((out_dir.clone(), o.to_path_buf())),
            (None, _) => None,
        };
        if let Some((from, to)) = shown {
            message = message.replace(&from.display().to_string(), &to.display().to_string());
        }
        let full = podium::store::disk_full(&[&out_dir, &beside]);
        match full {
            Some(full) => eprintln!("error: {kind}: {message}; {full}"),
            None => eprintln!("error: {kind}: {message}"),
        }
        return Ok(1);
    }
    if let Some(output) = output {
        let src: PathBuf = if inst.outputs.len() == 1 {
            out_dir.join(&inst.outputs[0])
        } else {
            out_dir.clone()
        };
        place(&src, output)?;
    }
    Ok(0)
}

/// Refuses, before the op runs, an `-o` that [`place`] would refuse.
fn check_output(kind: &str, output: &Path, outputs: &[String]) -> anyhow::Result<()> {
    let several = outputs.len() > 1;
    match std::fs::symlink_metadata(output) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) if several => anyhow::bail!(
            "{}: exists and is not a directory, but op `{kind}` writes several outputs ({}): \
             -o names the directory they go into",
            output.display(),
            outputs.join(", ")
        ),
        Ok(_) => Ok(()),
        Err(_) if several && outputs.iter().any(|o| same_extension(o, output)) => anyhow::bail!(
            "-o {}: op `{kind}` writes several outputs ({}), so -o names a directory to create \
             and fill, not one of the files",
            output.display(),
            outputs.join(", ")
        ),
        Err(_) => Ok(()),
    }
}

fn same_extension(a: &str, b: &Path) -> bool {
    let ext = Path::new(a).extension();
    ext.is_some() && ext == b.extension()
}

/// Puts the op's result `src` (a file or a directory) at `dest`, never
/// deleting anything that was there:
/// - `dest` does not exist: `src` is renamed (or copied) to it;
/// - `src` is a file and `dest` an existing file: it is replaced;
/// - `dest` an existing directory: `src`'s entries (or the file itself,
///   under its own name) are added to it, and one that is there already is
///   an error naming it, before anything is moved.
pub fn place(src: &Path, dest: &Path) -> anyhow::Result<()> {
    let src_is_dir = src.is_dir();
    let dest_meta = std::fs::symlink_metadata(dest).ok();
    match dest_meta {
        None => move_path(src, dest),
        Some(m) if !m.is_dir() => {
            if src_is_dir {
                anyhow::bail!(
                    "{}: exists and is not a directory; the op writes a directory",
                    dest.display()
                );
            }
            move_path(src, dest)
        }
        Some(_) => {
            let entries: Vec<(PathBuf, PathBuf)> = if src_is_dir {
                std::fs::read_dir(src)?
                    .map(|e| e.map(|e| (e.path(), dest.join(e.file_name()))))
                    .collect::<Result<_, _>>()?
            } else {
                let name = src.file_name().expect("an output has a name");
                vec![(src.to_path_buf(), dest.join(name))]
            };
            if let Some((_, there)) = entries
                .iter()
                .find(|(_, d)| std::fs::symlink_metadata(d).is_ok())
            {
                anyhow::bail!(
                    "{}: exists; podium op adds its outputs to an existing directory but never \
                     replaces what is in it: remove it or choose another -o",
                    there.display()
                );
            }
            for (s, d) in &entries {
                move_path(s, d)?;
            }
            Ok(())
        }
    }
}

/// Renames `src` to `dest`; across filesystems, copies (a directory
/// recursively) to a temporary name beside `dest` and renames that.
fn move_path(src: &Path, dest: &Path) -> anyhow::Result<()> {
    if std::fs::rename(src, dest).is_ok() {
        return Ok(());
    }
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".podium-op")
        .tempdir_in(parent)?;
    let staged = tmp.path().join("x");
    copy_tree(src, &staged)?;
    std::fs::rename(&staged, dest).map_err(|e| anyhow::anyhow!("{}: {e}", dest.display()))?;
    Ok(())
}

fn copy_tree(src: &Path, dest: &Path) -> anyhow::Result<()> {
    if src.is_dir() {
        std::fs::create_dir(dest)?;
        for e in std::fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dest.join(e.file_name()))?;
        }
    } else {
        std::fs::copy(src, dest).map_err(|e| anyhow::anyhow!("{}: {e}", dest.display()))?;
    }
    Ok(())
}

/// The op named `kind`, or an error listing them.
fn known(kind: &str) -> anyhow::Result<&'static dyn ops::AnyOp> {
    ops::get(kind).ok_or_else(|| {
        let names: Vec<&str> = ops::all().iter().map(|o| o.name()).collect();
        let hint = podium::params::suggest(kind, names.iter().copied())
            .map(|c| format!("did you mean `{c}`? "))
            .unwrap_or_default();
        anyhow::anyhow!("unknown op `{kind}`; {hint}ops: {}", names.join(", "))
    })
}
