//! Progress of a run: bars on a terminal, one line per instance otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

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

pub struct Progress {
    bars: Option<(MultiProgress, ProgressBar)>,
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
        let mut r = self.running.lock().unwrap();
        r.retain(|n| n != &job.name);
        let mut done = self.done.lock().unwrap();
        *done += 1;
        let width = self.total.to_string().len();
        let what = match outcome {
            Outcome::Executed => format!("ran      {} ({:.2}s)", job.name, took.as_secs_f64()),
            Outcome::Cached => format!("cached   {} (output unchanged upstream)", job.name),
            Outcome::Failed { message, .. } => format!("FAILED   {}: {message}", job.name),
            Outcome::Skipped { because } => format!("skipped  {} ({because})", job.name),
            Outcome::Cancelled => format!("stopped  {}", job.name),
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
        let Some((mp, _)) = &self.bars else { return };
        let mut jobs = self.jobs.lock().unwrap();
        let bar = jobs
            .entry(job.name.clone())
            .or_insert_with(|| mp.add(op_bar(&job.name)));
        show(bar, step);
    }
}
