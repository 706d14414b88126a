//! `exec`: runs an external command, the way competitors run their own
//! training scripts, and collects the files it declares.
//!
//! ```toml
//! [stages.train]
//! op = "exec"
//! matrix = { fold = "${range(5)}" }
//! cmd = "python train.py --fold ${fold} --folds ${stages.split.folds} --out $PODIUM_OUT"
//! deps = ["train.py"]
//! outs = ["model.pt", "oof.csv"]
//! ```

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Component, Path};
use std::process::{Command, Stdio};

use super::{Op, OpContext, OpError, ParamError, ParamKind, ParamSpec, Params};
use crate::value::Value;

pub struct Exec;

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "cmd",
        kind: ParamKind::Str,
        default: None,
        help: "Shell command, run with `sh -c` in the manifest's directory. $PODIUM_OUT is a fresh directory for the outputs.",
    },
    ParamSpec {
        name: "deps",
        kind: ParamKind::Paths,
        default: Some("[]"),
        help: "Files or directories the command reads: references or paths relative to the manifest. Their content is part of the key. A list sets PODIUM_DEP_0, PODIUM_DEP_1, ... and PODIUM_DEPS (newline-separated); a table sets PODIUM_DEP_<NAME>.",
    },
    ParamSpec {
        name: "outs",
        kind: ParamKind::StrList,
        default: Some("[]"),
        help: "Files or directories the command writes, relative to $PODIUM_OUT. Each becomes an output named by its path (or by its stem, when unambiguous).",
    },
    ParamSpec {
        name: "env",
        kind: ParamKind::Any,
        default: Some("{}"),
        help: "Extra environment variables, a table of strings.",
    },
];

impl Op for Exec {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn version(&self) -> u32 {
        1
    }

    fn summary(&self) -> &'static str {
        "Run a shell command and collect the files it declares in `outs`."
    }

    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }

    fn inputs(&self) -> &'static [&'static str] {
        &["deps"]
    }

    fn outputs(&self, params: &Params) -> Result<Vec<String>, ParamError> {
        let outs = params.get("outs").and_then(Value::as_list).unwrap_or(&[]);
        Ok(outs
            .iter()
            .filter_map(|v| v.as_str().map(normalize_out))
            .collect())
    }

    fn validate(&self, params: &Params) -> Vec<ParamError> {
        let mut errs = Vec::new();
        let outs = params.get("outs").and_then(Value::as_list).unwrap_or(&[]);
        let mut seen = std::collections::BTreeSet::new();
        for o in outs.iter().filter_map(Value::as_str) {
            if let Err(msg) = check_out(o) {
                errs.push(ParamError::new("outs", format!("output `{o}` {msg}")));
            } else if !seen.insert(normalize_out(o)) {
                errs.push(ParamError::new(
                    "outs",
                    format!("output `{o}` is declared twice"),
                ));
            }
        }
        match params.get("env") {
            Some(Value::Table(t)) => {
                for (k, v) in t {
                    if !matches!(
                        v,
                        Value::Str(_)
                            | Value::Interp(_)
                            | Value::Int(_)
                            | Value::Float(_)
                            | Value::Bool(_)
                            | Value::Path(_)
                    ) {
                        errs.push(ParamError::new(
                            "env",
                            format!(
                                "env `{k}` must be a string, not {}",
                                crate::value::a(v.type_name())
                            ),
                        ));
                    }
                }
            }
            Some(v) => errs.push(ParamError::new(
                "env",
                format!(
                    "`env` must be a table, not {}",
                    crate::value::a(v.type_name())
                ),
            )),
            None => {}
        }
        errs
    }

    fn run(&self, cx: &mut OpContext) -> Result<(), OpError> {
        let cmd = cx.str("cmd").to_string();
        // The POSIX shell by its path, as make and ninja run it: looking
        // `sh` up along PATH tried each directory in turn, one failed
        // exec each, while the spawning thread waited.
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(&cmd)
            .current_dir(cx.work_dir)
            .env("PODIUM_OUT", cx.out_dir)
            .env("PODIUM_THREADS", cx.threads.to_string())
            .env("OMP_NUM_THREADS", cx.threads.to_string())
            .stdin(Stdio::null())
            .process_group(0);
        // The command dies with podium, even with podium killed by SIGKILL
        // (a shell that runs several programs leaves them in its process
        // group, which the next run stops: `cancel::reap`).
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: prctl, getppid and _exit are async-signal-safe, as code
        // between fork and exec must be; nothing is allocated.
        unsafe {
            command.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
                // Podium died before the line above: nobody would signal.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        match cx.params.get("deps") {
            Some(Value::List(items)) => {
                let paths: Vec<String> = items.iter().map(plain).collect();
                for (i, p) in paths.iter().enumerate() {
                    command.env(format!("PODIUM_DEP_{i}"), p);
                }
                command.env("PODIUM_DEPS", paths.join("\n"));
            }
            Some(Value::Table(t)) => {
                for (k, v) in t {
                    command.env(format!("PODIUM_DEP_{}", env_name(k)), plain(v));
                }
            }
            Some(v @ Value::Str(_)) => {
                command
                    .env("PODIUM_DEP_0", plain(v))
                    .env("PODIUM_DEPS", plain(v));
            }
            _ => {}
        }
        if !cx.gpus.is_empty() {
            let ids: Vec<String> = cx.gpus.iter().map(|g| g.to_string()).collect();
            command.env("CUDA_VISIBLE_DEVICES", ids.join(","));
        }
        if let Some(Value::Table(t)) = cx.params.get("env") {
            for (k, v) in t {
                command.env(k, plain(v));
            }
        }
        let log_out = cx
            .log
            .try_clone()
            .map_err(|e| OpError::io(Path::new("log"), e))?;
        let log_err = cx
            .log
            .try_clone()
            .map_err(|e| OpError::io(Path::new("log"), e))?;
        command.stdout(log_out).stderr(log_err);
        let mut child = command
            .spawn()
            .map_err(|e| OpError::Failed(format!("cannot start `sh`: {e}")))?;
        crate::cancel::register_child(child.id());
        let status = child.wait();
        crate::cancel::unregister_child(child.id());
        let status =
            status.map_err(|e| OpError::Failed(format!("waiting for the command: {e}")))?;
        if crate::cancel::is_cancelled() {
            return Err(OpError::Cancelled);
        }
        if !status.success() {
            return Err(OpError::Failed(match (status.code(), status.signal()) {
                (Some(c), _) => format!("command exited with status {c}"),
                (None, Some(s)) => format!("command was killed by signal {s}"),
                _ => "command failed".into(),
            }));
        }
        let mut missing = Vec::new();
        for o in self.outputs(cx.params).unwrap_or_default() {
            // A link that leads nowhere is there: storing it names the problem.
            if std::fs::symlink_metadata(cx.out_dir.join(&o)).is_err() {
                missing.push(o);
            }
        }
        if !missing.is_empty() {
            return Err(OpError::Failed(format!(
                "the command did not write declared output(s) {} to $PODIUM_OUT",
                missing
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(())
    }
}

fn plain(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        other => other.to_string(),
    }
}

fn env_name(k: &str) -> String {
    k.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// `./a//b/` → `a/b`.
fn normalize_out(o: &str) -> String {
    Path::new(o)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn check_out(o: &str) -> Result<(), &'static str> {
    let p = Path::new(o);
    if o.trim().is_empty() {
        return Err("is empty");
    }
    if p.is_absolute() {
        return Err("is an absolute path; outputs are relative to $PODIUM_OUT");
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err("points outside $PODIUM_OUT (`..`)");
    }
    if normalize_out(o).is_empty() {
        return Err("names $PODIUM_OUT itself; name a file or directory inside it");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    fn params(outs: &[&str]) -> Params {
        let mut p = Params::new();
        p.insert("cmd", Value::Str("true".into()));
        p.insert(
            "outs",
            Value::List(outs.iter().map(|s| Value::Str(s.to_string())).collect()),
        );
        p
    }

    #[test]
    fn outs_outside_the_output_directory_are_rejected() {
        let errs = Exec.validate(&params(&[
            "/etc/passwd",
            "../x",
            "a/../../b",
            ".",
            "ok.csv",
        ]));
        let msgs: Vec<_> = errs.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(msgs.len(), 4, "{msgs:?}");
        assert!(msgs[0].contains("absolute"));
        assert!(msgs[1].contains(".."));
        assert!(msgs[2].contains(".."));
        assert!(msgs[3].contains("itself"));
    }

    #[test]
    fn duplicate_outs_are_rejected() {
        let errs = Exec.validate(&params(&["a.csv", "./a.csv"]));
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.contains("twice"));
    }

    #[test]
    fn runs_a_command_and_checks_declared_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let mut log = std::fs::File::create(dir.path().join("log")).unwrap();
        let mut p = params(&["a.txt", "b.txt"]);
        p.insert(
            "cmd",
            Value::Str("echo hi > $PODIUM_OUT/a.txt; echo to-log".into()),
        );
        let cancel = std::sync::atomic::AtomicBool::new(false);
        let mut cx = OpContext {
            params: &p,
            out_dir: &out,
            work_dir: dir.path(),
            log: &mut log,
            cancel: &cancel,
            threads: 1,
            gpus: &[],
            resume_dir: None,
            progress: &crate::ops::no_report,
        };
        let err = Exec.run(&mut cx).unwrap_err().to_string();
        assert!(err.contains("`b.txt`"), "{err}");
        assert_eq!(std::fs::read_to_string(out.join("a.txt")).unwrap(), "hi\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("log")).unwrap(),
            "to-log\n"
        );
    }

    #[test]
    fn a_failing_command_reports_its_status() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = std::fs::File::create(dir.path().join("log")).unwrap();
        let mut p = params(&[]);
        p.insert("cmd", Value::Str("exit 3".into()));
        let cancel = std::sync::atomic::AtomicBool::new(false);
        let mut cx = OpContext {
            params: &p,
            out_dir: dir.path(),
            work_dir: dir.path(),
            log: &mut log,
            cancel: &cancel,
            threads: 1,
            gpus: &[],
            resume_dir: None,
            progress: &crate::ops::no_report,
        };
        assert_eq!(
            Exec.run(&mut cx).unwrap_err().to_string(),
            "command exited with status 3"
        );
    }
}
