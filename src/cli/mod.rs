//! Argument parsing and command dispatch. Each command lives in a file of
//! its own; every flag is defined once, with its help, in [`Cli`].

mod check;
mod commands;
mod exp;
mod init;
mod op;
mod progress;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "podium",
    version,
    about = "Declarative, content-hashed pipelines for computer-vision competitions"
)]
pub struct Cli {
    /// The store: content-addressed results and run records.
    #[arg(long, global = true, env = "PODIUM_STORE", default_value = "cache")]
    store: PathBuf,
    /// Where each instance's outputs are made visible (`out/<pipeline>/<stage>/<instance>/`).
    #[arg(long, global = true, env = "PODIUM_OUT_DIR", default_value = "out")]
    out_dir: PathBuf,
    /// Settings of this machine or project (the remote cache) [default: .podium/config.toml
    /// when it exists].
    #[arg(long, global = true, env = "PODIUM_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The remote cache: s3://BUCKET/PREFIX (AWS or any S3-compatible server; credentials
    /// from the environment or ~/.aws) or file:///SHARED/DIR. Overrides the config's
    /// [remote] url.
    #[arg(long, global = true, env = "PODIUM_REMOTE", value_name = "URL")]
    remote: Option<String>,
    /// Use no remote cache, whatever the config or `--remote` say.
    #[arg(long, global = true)]
    no_remote: bool,
    #[command(subcommand)]
    command: Command,
}

/// Options naming the manifest and overriding its values.
#[derive(clap::Args, Debug, Clone)]
struct ManifestArgs {
    /// The manifest. Default: podium.toml, or the only manifest in pipelines/.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    #[command(flatten)]
    set: SetArgs,
}

/// `--set`, for every command that takes it.
#[derive(clap::Args, Debug, Clone)]
struct SetArgs {
    /// Override a value: params.NAME=VALUE, stages.STAGE.PARAM=VALUE, inputs.NAME.path=PATH;
    /// for `op`, PARAM=VALUE. VALUE is TOML; a bare word is a string.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ListFormat {
    Text,
    /// The parameter tables of docs/ops.md.
    Markdown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum CheckFormat {
    Text,
    Json,
    /// GitHub Actions annotations (`::error file=…,line=…,col=…::…`).
    Github,
}

/// What `podium init` sets the pipeline up for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum InitTask {
    Classify,
    Multilabel,
    Regress,
    Detect,
    Segment,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TableFormat {
    Text,
    Json,
    Csv,
    Markdown,
}

/// What `podium exp` does besides listing.
#[derive(Subcommand, Debug)]
enum ExpAction {
    /// Params and metrics of two experiments side by side (ids, id prefixes or names).
    Diff { a: String, b: String },
    /// Keep an experiment's results from `gc`.
    Pin { experiment: String },
    /// Let `gc` free an experiment's results again.
    Unpin { experiment: String },
    /// Name an experiment (as `run --name` does).
    Name { experiment: String, name: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DagFormat {
    Dot,
    Mermaid,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check manifests without running anything; every error with file:line:column.
    Check {
        /// Manifests to check. Default: every pipelines/*.toml (or podium.toml).
        manifests: Vec<PathBuf>,
        /// A manifest to check, as every other command names it (may repeat).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        files: Vec<PathBuf>,
        #[command(flatten)]
        set: SetArgs,
        #[arg(long, value_enum, default_value = "text")]
        format: CheckFormat,
    },
    /// Show which instances are fresh and which are stale, and why (a dry run).
    Plan {
        #[command(flatten)]
        manifest: ManifestArgs,
        /// Stages or instances (`train`, `train[fold=0]`); default all.
        targets: Vec<String>,
        /// Treat these stages or instances as stale.
        #[arg(long)]
        force: Vec<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Run the stale instances, in dependency order and in parallel.
    Run {
        #[command(flatten)]
        manifest: ManifestArgs,
        /// Stages or instances to bring up to date (with what they need); default all.
        targets: Vec<String>,
        /// Threads shared by running instances (an instance takes `resources.threads`, default 1).
        #[arg(short = 'j', long, default_value_t = default_jobs())]
        jobs: usize,
        /// GPUs on this machine, handed to instances that ask with `resources.gpu`
        /// [default: the GPUs the CUDA driver reports; 0 in a build without `cuda`].
        #[arg(long, env = "PODIUM_GPUS")]
        gpus: Option<usize>,
        /// After a failure, go on with the instances that do not depend on it.
        #[arg(short = 'k', long)]
        keep_going: bool,
        /// Rerun these stages or instances even when they are fresh.
        #[arg(long)]
        force: Vec<String>,
        /// Fail at once if another run holds the store, instead of waiting.
        #[arg(long)]
        no_wait: bool,
        /// `json` prints what ran, what was cached and what failed, for scripts.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Name this run's experiment (the manifest with its `--set`s), for `podium exp`.
        #[arg(long)]
        name: Option<String>,
        /// Where instances run: here, or as Slurm batch jobs (docs/cluster.md)
        /// [default: the config's `executor`, else local].
        #[arg(long, value_enum, env = "PODIUM_EXECUTOR")]
        executor: Option<podium::config::ExecutorKind>,
        /// With `--executor slurm`: submit the jobs and return; `podium status` shows
        /// them, and `podium run` again waits for them instead of submitting anew.
        #[arg(long)]
        detach: bool,
    },
    /// Run one instance of a Slurm run on this node (what podium's batch scripts call).
    #[command(name = "slurm-job", hide = true)]
    SlurmJob {
        /// The run's directory (`<store>/slurm/<run>`).
        run_dir: PathBuf,
        /// Array task → instance id, `0=12,1=13`.
        #[arg(long)]
        map: String,
    },
    /// Upload the results of fresh instances to the remote cache (what it lacks).
    Push {
        #[command(flatten)]
        manifest: ManifestArgs,
        /// Stages or instances (with what they read); default all.
        targets: Vec<String>,
    },
    /// Fetch from the remote cache what is stale here, and make it visible in out/;
    /// execute nothing.
    Pull {
        #[command(flatten)]
        manifest: ManifestArgs,
        /// Stages or instances (with what they read); default all.
        targets: Vec<String>,
        /// Fail at once if another run holds the store, instead of waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// The experiments of a pipeline (each configuration run): params that differ, metrics
    /// (folds as mean±std), compute time, store use.
    Exp {
        /// The manifest. Default: podium.toml, or the only manifest in pipelines/.
        #[arg(short = 'f', long = "file", global = true)]
        file: Option<PathBuf>,
        #[command(subcommand)]
        action: Option<ExpAction>,
        /// Sort by this metric (`train.accuracy`), best first; `:min` or `:max` says which
        /// is best (default: losses and errors low, the rest high).
        #[arg(long, value_name = "METRIC")]
        sort: Option<String>,
        /// Show only these metrics (may repeat).
        #[arg(short = 'm', long = "metric", value_name = "METRIC")]
        metrics: Vec<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: TableFormat,
    },
    /// Each instance's state, last run and metrics.
    Status {
        #[command(flatten)]
        manifest: ManifestArgs,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Draw the instance graph, stale instances marked.
    Dag {
        #[command(flatten)]
        manifest: ManifestArgs,
        #[arg(long, value_enum, default_value = "dot")]
        format: DagFormat,
    },
    /// Free store space not referenced by the manifests in pipelines/.
    Gc {
        /// Only report what would be freed.
        #[arg(long)]
        dry_run: bool,
        /// Manifests whose results are kept. Default: every pipelines/*.toml.
        manifests: Vec<PathBuf>,
        /// Also keep the results of each pipeline's last N experiments.
        #[arg(long, value_name = "N")]
        keep_last: Option<usize>,
        /// Also keep the results of each pipeline's best N experiments by `--by`.
        #[arg(long, value_name = "N", requires = "by")]
        keep_best: Option<usize>,
        /// The metric `--keep-best` ranks by (`train.accuracy`, `evaluate.loss:min`).
        #[arg(long, value_name = "METRIC")]
        by: Option<String>,
    },
    /// Re-hash every stored object; corrupted ones are reported and dropped.
    Verify,
    /// Write a starting manifest for a competition's data in Kaggle's layout (train.csv,
    /// train/, test/, sample_submission.csv; a COCO file for detect, masks for segment).
    Init {
        /// The data directory. Default: the current directory.
        #[arg(default_value = ".")]
        data: PathBuf,
        #[arg(long, value_enum, default_value = "classify")]
        task: InitTask,
        /// The manifest to write (never replaced). Default: pipelines/<NAME>.toml.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// The label column of train.csv. Default: the column after the id.
        #[arg(long)]
        label: Option<String>,
        /// The pipeline's name. Default: the data directory's name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Print the manifest's JSON Schema (every op, parameter, type, default and help) for
    /// editors: Taplo / Even Better TOML complete and validate with it (docs/ci.md).
    Schema,
    /// Run one op alone: `podium op KIND [--set KEY=VALUE]... INPUT... -o OUTPUT`.
    Op {
        /// The op; `podium op --list` lists them.
        kind: Option<String>,
        /// Inputs, given to the op's input parameter.
        inputs: Vec<PathBuf>,
        #[command(flatten)]
        set: SetArgs,
        /// Where to write the output (a file for a one-output op, else a directory).
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// List the ops (or the one named) with their parameters.
        #[arg(long)]
        list: bool,
        /// How `--list` prints.
        #[arg(long, value_enum, default_value = "text", requires = "list")]
        format: ListFormat,
        /// Threads the op may use.
        #[arg(short = 'j', long = "threads", default_value_t = default_jobs())]
        threads: usize,
    },
}

/// Bytes as the commands print them: `12.3 MiB`.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Runs the command line; returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    // `run` and `op` stop their commands and keep what finished; the rest
    // stop at once (once a write in flight is renamed into place).
    ctrlc_handler(match &cli.command {
        Command::Run { .. } | Command::Op { .. } | Command::SlurmJob { .. } => OnSignal::Stop(
            "interrupted: stopping running instances; finished ones are kept (Ctrl-C again to exit at once)",
        ),
        _ => OnSignal::Exit,
    });
    let result = match &cli.command {
        Command::Check {
            manifests,
            files,
            set,
            format,
        } => {
            let all: Vec<PathBuf> = manifests.iter().chain(files).cloned().collect();
            check::check(&all, &set.set, *format)
        }
        Command::Plan {
            manifest,
            targets,
            force,
            format,
        } => commands::plan(&cli, manifest, targets, force, *format),
        Command::Run {
            manifest,
            targets,
            jobs,
            gpus,
            keep_going,
            force,
            no_wait,
            format,
            name,
            executor,
            detach,
        } => commands::run(
            &cli,
            manifest,
            targets,
            &commands::RunArgs {
                jobs: *jobs,
                gpus: gpus.unwrap_or_else(podium::nn::gpu_count),
                keep_going: *keep_going,
                force,
                no_wait: *no_wait,
                format: *format,
                name: name.as_deref(),
                fetch_only: false,
                executor: *executor,
                detach: *detach,
            },
        ),
        Command::SlurmJob { run_dir, map } => {
            podium::executor::slurm::node_main(run_dir, map).map_err(anyhow::Error::from)
        }
        Command::Pull {
            manifest,
            targets,
            no_wait,
        } => commands::run(
            &cli,
            manifest,
            targets,
            &commands::RunArgs {
                jobs: default_jobs(),
                gpus: 0,
                keep_going: true,
                force: &[],
                no_wait: *no_wait,
                format: Format::Text,
                name: None,
                fetch_only: true,
                executor: Some(podium::config::ExecutorKind::Local),
                detach: false,
            },
        ),
        Command::Push { manifest, targets } => commands::push(&cli, manifest, targets),
        Command::Status { manifest, format } => commands::status(&cli, manifest, *format),
        Command::Dag { manifest, format } => commands::dag(&cli, manifest, *format),
        Command::Gc {
            dry_run,
            manifests,
            keep_last,
            keep_best,
            by,
        } => commands::gc(
            &cli,
            manifests,
            *dry_run,
            &commands::Keep {
                last: *keep_last,
                best: keep_best.zip(by.clone()),
            },
        ),
        Command::Exp {
            file,
            action,
            sort,
            metrics,
            format,
        } => exp::exp(
            &cli.store,
            file,
            action.as_ref(),
            &exp::ListOptions {
                sort: sort.as_deref(),
                metrics,
                format: *format,
            },
        ),
        Command::Verify => commands::verify(&cli),
        Command::Init {
            data,
            task,
            output,
            label,
            name,
        } => init::init(
            data,
            *task,
            output.as_deref(),
            label.as_deref(),
            name.as_deref(),
        ),
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&podium::schema::manifest_schema())
                    .expect("the schema serializes")
            );
            Ok(0)
        }
        Command::Op {
            kind,
            inputs,
            set,
            output,
            list,
            format,
            threads,
        } => op::op(
            kind.as_deref(),
            inputs,
            &set.set,
            output.as_deref(),
            list.then_some(*format),
            *threads,
        ),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if let Some(podium::Error::Manifest(report)) = e.downcast_ref::<podium::Error>() {
                eprint!("{}", report.render(use_color()));
                eprintln!("error: {} error(s) in the manifest", report.error_count());
            } else {
                eprintln!("error: {}", message(&e));
            }
            1
        }
    }
}

/// What Ctrl-C and SIGTERM do.
enum OnSignal {
    /// Cancel (with this message): the command winds down and exits
    /// non-zero; a second signal exits at once.
    Stop(&'static str),
    /// Exit at once, but never between a temporary file and its rename.
    Exit,
}

fn ctrlc_handler(on: OnSignal) {
    let _ = ctrlc::set_handler(move || match on {
        OnSignal::Exit => {
            eprintln!("\ninterrupted");
            podium::cancel::exit_when_safe();
        }
        OnSignal::Stop(message) => {
            if podium::cancel::is_cancelled() {
                eprintln!("\ninterrupted again; exiting now");
                std::process::exit(podium::cancel::EXIT_INTERRUPTED);
            }
            eprintln!("\n{message}");
            podium::cancel::cancel();
        }
    });
}

/// An error with its causes, each once: library errors already show their
/// source (`path: No such file or directory`), which `{:#}` would repeat.
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn use_color() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}

/// Every manifest in pipelines/ (or podium.toml), for commands that take all.
fn default_manifests() -> anyhow::Result<Vec<PathBuf>> {
    if Path::new("podium.toml").exists() {
        return Ok(vec!["podium.toml".into()]);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("pipelines")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    if found.is_empty() {
        anyhow::bail!("no manifest: there is no podium.toml and no pipelines/*.toml here");
    }
    Ok(found)
}

/// The manifest `-f` names, else the only one here.
fn manifest_path(file: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(f) = file {
        return Ok(f.to_path_buf());
    }
    let all = default_manifests()?;
    if all.len() == 1 {
        return Ok(all.into_iter().next().unwrap());
    }
    anyhow::bail!(
        "several manifests here; choose one with -f: {}",
        all.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

impl ManifestArgs {
    fn path(&self) -> anyhow::Result<PathBuf> {
        manifest_path(self.file.as_deref())
    }

    fn load(&self) -> anyhow::Result<podium::ir::Pipeline> {
        let path = self.path()?;
        let (p, warnings) = podium::load(&path, &self.set.set)?;
        if !warnings.diagnostics.is_empty() {
            eprint!("{}", warnings.render(use_color()));
        }
        Ok(p)
    }
}
