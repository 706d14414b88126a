//! Progress of a run: bars on a terminal, one line per instance otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use podium::executor::{Events, Job, Outcome};
use podium::ops::Step;

/// A bar of one running op (epochs and batches, images), named after it.
pub fn op_bar(name: &str) -> ProgressBar {
    let bar = ProgressBar::no_length().with_prefix(name.to_string());
    bar.set_style(
        ProgressStyle::with_template(
            "  {prefix:.bold} [{bar:24.green/white}] {pos}/{len} {wide_msg} {eta:.dim}",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    bar
}

/// Moves an op's bar to `step`.
pub fn show(bar: &ProgressBar, step: &Step) {
    bar.set_length(step.total);
    bar.set_position(step.done);
    bar.set_message(step.message.clone());
}

/// How often a job's progress is written as a line when stderr is not a
/// terminal (CI logs, `nohup`): `PODIUM_PROGRESS_SECS`, default 30 s.
pub fn line_interval() -> Duration {
    std::env::var("PODIUM_PROGRESS_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(30))
}

/// Progress as lines, at most one per `every` per job: where it is, the
/// op's message (epoch, loss), time so far and the time left at the rate
/// so far.
pub struct Lines {
    every: Duration,
    /// Per job: when it first reported, and when it last printed.
    seen: Mutex<HashMap<String, (Instant, Option<Instant>)>>,
}

impl Lines {
    pub fn new(every: Duration) -> Lines {
        Lines {
            every,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The line to print for `step` of `job`, if one is due.
    pub fn due(&self, job: &str, step: &Step) -> Option<String> {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let (start, last) = seen.entry(job.to_string()).or_insert((now, None));
        let last_done = step.total > 0 && step.done >= step.total;
        if last.is_some_and(|l| now - l < self.every) && !last_done {
            return None;
        }
        if last.is_none() && step.done == 0 && !self.every.is_zero() {
            // The first report opens the clock; a line says little yet.
            *last = Some(now);
            return None;
        }
        *last = Some(now);
        let elapsed = now - *start;
        let eta = (step.done > 0 && step.total > step.done)
            .then(|| elapsed.mul_f64((step.total - step.done) as f64 / step.done as f64));
        let pct = if step.total > 0 {
            format!(" ({:.0}%)", 100.0 * step.done as f64 / step.total as f64)
        } else {
            String::new()
        };
        Some(format!(
            "  {job}: {}/{}{pct}{}{} · {} elapsed{}",
            step.done,
            step.total,
            if step.message.is_empty() { "" } else { " · " },
            step.message,
            clock(elapsed),
            eta.map(|e| format!(" · ETA {}", clock(e)))
                .unwrap_or_default()
        ))
    }

    pub fn forget(&self, job: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(job);
    }
}

/// `1h02m03s`, `4m05s`, `6s`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

pub struct Progress {
    bars: Option<(MultiProgress, ProgressBar)>,
    /// Without a terminal: progress lines.
    lines: Lines,
    /// A bar per running job that reports steps.
    jobs: Mutex<HashMap<String, ProgressBar>>,
    running: Mutex<Vec<String>>,
    done: Mutex<usize>,
    total: usize,
}

impl Progress {
    pub fn new(total: usize) -> Progress {
        let bars = std::io::stderr().is_terminal().then(|| {
            let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let bar = mp.add(ProgressBar::new(total as u64));
            bar.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise:.dim} [{bar:30.cyan/blue}] {pos}/{len} {wide_msg}",
                )
                .unwrap()
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            (mp, bar)
        });
        Progress {
            bars,
            jobs: Mutex::new(HashMap::new()),
            lines: Lines::new(line_interval()),
            running: Mutex::new(Vec::new()),
            done: Mutex::new(0),
            total,
        }
    }

    fn line(&self, s: String) {
        match &self.bars {
            Some((mp, _)) => {
                let _ = mp.println(s);
            }
            None => eprintln!("{s}"),
        }
    }

    pub fn finish(&self) {
        if let Some((_, bar)) = &self.bars {
            bar.finish_and_clear();
        }
    }
}

impl Events for Progress {
    fn started(&self, job: &Job) {
        let mut r = self.running.lock().unwrap();
        r.push(job.name.clone());
        if let Some((_, bar)) = &self.bars {
            bar.set_message(format!("running {}", r.join(", ")));
        }
    }

    fn finished(&self, job: &Job, outcome: &Outcome, took: Duration) {
        if let (Some((mp, _)), Some(b)) = (&self.bars, self.jobs.lock().unwrap().remove(&job.name))
        {
            b.finish_and_clear();
            mp.remove(&b);
        }
        self.lines.forget(&job.name);
        let mut r = self.running.lock().unwrap();
        r.retain(|n| n != &job.name);
        let mut done = self.done.lock().unwrap();
        *done += 1;
        let width = self.total.to_string().len();
        let what = match outcome {
            Outcome::Executed => format!("ran      {} ({:.2}s)", job.name, took.as_secs_f64()),
            Outcome::Cached => format!("cached   {} (output unchanged upstream)", job.name),
            Outcome::Fetched => format!("fetched  {} (from the remote cache)", job.name),
            Outcome::Failed { message, .. } => format!("FAILED   {}: {message}", job.name),
            Outcome::Skipped { because } => format!("skipped  {} ({because})", job.name),
            Outcome::Cancelled => format!("stopped  {}", job.name),
            Outcome::Submitted { job: id } => format!("queued   {} (Slurm job {id})", job.name),
        };
        self.line(format!("[{:>width$}/{}] {what}", *done, self.total));
        if let Some((_, bar)) = &self.bars {
            bar.set_position(*done as u64);
            bar.set_message(if r.is_empty() {
                String::new()
            } else {
                format!("running {}", r.join(", "))
            });
        }
    }

    fn progress(&self, job: &Job, step: &Step) {
        let Some((mp, _)) = &self.bars else {
            if let Some(line) = self.lines.due(&job.name, step) {
                eprintln!("{line}");
            }
            return;
        };
        let mut jobs = self.jobs.lock().unwrap();
        let bar = jobs
            .entry(job.name.clone())
            .or_insert_with(|| mp.add(op_bar(&job.name)));
        show(bar, step);
    }
}
