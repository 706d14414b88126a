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

use std::collections::BTreeMap;

use super::{NamedPaths, Op, OpContext, OpError, ParamError};

pub struct Exec;

crate::params! {
    /// The parameters of `exec`.
    pub struct Args {
        /// shell command, run with `/bin/sh -c` in the manifest's directory. `$PODIUM_OUT` is a
        /// fresh directory for the outputs; `$PODIUM_THREADS` and `$OMP_NUM_THREADS` are the
        /// instance's `resources.threads`; `$CUDA_VISIBLE_DEVICES` lists its GPUs when it asked
        /// for any
        cmd: String,
        /// files or directories the command reads: references or paths relative to the
        /// manifest (which must exist). Their content is part of the key. A list sets
        /// `PODIUM_DEP_0`, `PODIUM_DEP_1`, … and `PODIUM_DEPS` (newline-separated); a table
        /// sets `PODIUM_DEP_<NAME>`
        deps: NamedPaths = [],
        /// files or directories the command writes, relative to `$PODIUM_OUT`. Absolute paths
        /// and `..` are rejected by `check`. Each is an output named by its path, or by its
        /// stem when unambiguous (`model.pt` → `${stages.S.model}`)
        outs: Vec<String> = [],
        /// extra environment variables (numbers and booleans are written out)
        env: BTreeMap<String, String> = {},
    }
}

impl Op for Exec {
    type Params = Args;
    const NAME: &'static str = "exec";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str =
        "Run a shell command and collect the files it declares in `outs`.";
    const INPUTS: &'static [&'static str] = &["deps"];

    fn outputs(&self, a: &Args) -> Vec<String> {
        a.outs.iter().map(|o| normalize_out(o)).collect()
    }

    fn validate(&self, a: &Args) -> Vec<ParamError> {
        let mut errs = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for o in &a.outs {
            if let Err(msg) = check_out(o) {
                errs.push(ParamError::new("outs", format!("output `{o}` {msg}")));
            } else if !seen.insert(normalize_out(o)) {
                errs.push(ParamError::new(
                    "outs",
                    format!("output `{o}` is declared twice"),
                ));
            }
        }
        errs
    }

    fn run(&self, a: Args, cx: &mut OpContext) -> Result<(), OpError> {
        // The POSIX shell by its path, as make and ninja run it: looking
        // `sh` up along PATH tried each directory in turn, one failed
        // exec each, while the spawning thread waited.
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(&a.cmd)
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
        match &a.deps {
            NamedPaths::List(paths) => {
                for (i, p) in paths.iter().enumerate() {
                    command.env(format!("PODIUM_DEP_{i}"), p);
                }
                let all: Vec<_> = paths.iter().map(|p| p.as_os_str()).collect();
                command.env("PODIUM_DEPS", all.join(std::ffi::OsStr::new("\n")));
            }
            NamedPaths::Table(t) => {
                for (k, p) in t {
                    command.env(format!("PODIUM_DEP_{}", env_name(k)), p);
                }
            }
        }
        if !cx.gpus.is_empty() {
            let ids: Vec<String> = cx.gpus.iter().map(|g| g.to_string()).collect();
            command.env("CUDA_VISIBLE_DEVICES", ids.join(","));
        }
        command.envs(&a.env);
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
            .map_err(|e| OpError::Command(format!("cannot start `sh`: {e}")))?;
        crate::cancel::register_child(child.id());
        let status = child.wait();
        crate::cancel::unregister_child(child.id());
        let status =
            status.map_err(|e| OpError::Command(format!("waiting for the command: {e}")))?;
        if crate::cancel::is_cancelled() {
            return Err(OpError::Cancelled);
        }
        if !status.success() {
            return Err(OpError::Command(match (status.code(), status.signal()) {
                (Some(c), _) => format!("command exited with status {c}"),
                (None, Some(s)) => format!("command was killed by signal {s}"),
                _ => "command failed".into(),
            }));
        }
        let mut missing = Vec::new();
        for o in self.outputs(&a) {
            // A link that leads nowhere is there: storing it names the problem.
            if std::fs::symlink_metadata(cx.out_dir.join(&o)).is_err() {
                missing.push(o);
            }
        }
        if !missing.is_empty() {
            return Err(OpError::Command(format!(
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
    use crate::ops::{AnyOp, Params};
    use crate::value::Value;

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
        let errs = Exec
            .check(&params(&[
                "/etc/passwd",
                "../x",
                "a/../../b",
                ".",
                "ok.csv",
            ]))
            .unwrap_err();
        let msgs: Vec<_> = errs.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(msgs.len(), 4, "{msgs:?}");
        assert!(msgs[0].contains("absolute"));
        assert!(msgs[1].contains(".."));
        assert!(msgs[2].contains(".."));
        assert!(msgs[3].contains("itself"));
    }

    #[test]
    fn duplicate_outs_are_rejected() {
        let errs = Exec.check(&params(&["a.csv", "./a.csv"])).unwrap_err();
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
        let err = AnyOp::run(&Exec, &mut cx).unwrap_err().to_string();
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
            AnyOp::run(&Exec, &mut cx).unwrap_err().to_string(),
            "command exited with status 3"
        );
    }
}
