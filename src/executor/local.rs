//! The local executor: a thread pool, a ready queue, and resource counts.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc;
use std::time::Instant;

use super::{Events, Executor, Job, Outcome, Work};

/// Runs jobs on this machine with at most `threads` threads busy and at most
/// `gpus` GPUs handed out at once.
pub struct LocalExecutor {
    pub threads: usize,
    pub gpus: usize,
    /// Go on with independent jobs after a failure.
    pub keep_going: bool,
}

impl Executor for LocalExecutor {
    fn execute(&self, jobs: &[Job], work: &dyn Work, events: &dyn Events) -> Vec<(usize, Outcome)> {
        let threads = self.threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("podium-worker-{i}"))
            .build()
            .expect("thread pool");
        let index: HashMap<usize, usize> =
            jobs.iter().enumerate().map(|(i, j)| (j.id, i)).collect();
        let mut waiting: Vec<usize> = jobs
            .iter()
            .map(|j| j.deps.iter().filter(|d| index.contains_key(d)).count())
            .collect();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); jobs.len()];
        for (i, j) in jobs.iter().enumerate() {
            for d in &j.deps {
                if let Some(&di) = index.get(d) {
                    dependents[di].push(i);
                }
            }
        }
        let mut ready: VecDeque<usize> = (0..jobs.len()).filter(|&i| waiting[i] == 0).collect();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; jobs.len()];
        let mut free_threads = threads;
        let mut free_gpus: Vec<usize> = (0..self.gpus).rev().collect();
        let mut running = 0usize;
        let mut stop = false;
        let (tx, rx) = mpsc::channel::<(usize, Outcome, Vec<usize>, usize, std::time::Duration)>();

        pool.in_place_scope(|scope| {
            loop {
                if crate::cancel::is_cancelled() {
                    stop = true;
                }
                // Launch what fits, in order; a job that does not fit yet
                // keeps its place.
                let mut i = 0;
                while !stop && i < ready.len() {
                    let ji = ready[i];
                    let job = &jobs[ji];
                    let want_threads = job.resources.threads.clamp(1, threads);
                    if job.resources.gpu > self.gpus {
                        ready.remove(i);
                        outcomes[ji] = Some(Outcome::Failed {
                            message: format!(
                                "needs {} GPU(s); {} available (--gpus; by default the GPUs the CUDA driver reports)",
                                job.resources.gpu, self.gpus
                            ),
                            log: None,
                            log_tail: String::new(),
                        });
                        events.finished(job, outcomes[ji].as_ref().unwrap(), Default::default());
                        skip_dependents(ji, jobs, &dependents, &mut outcomes, &mut waiting, events);
                        if !self.keep_going {
                            stop = true;
                        }
                        continue;
                    }
                    if want_threads <= free_threads && job.resources.gpu <= free_gpus.len() {
                        ready.remove(i);
                        free_threads -= want_threads;
                        let gpus: Vec<usize> = (0..job.resources.gpu)
                            .map(|_| free_gpus.pop().unwrap())
                            .collect();
                        running += 1;
                        events.started(job);
                        let tx = tx.clone();
                        scope.spawn(move |_| {
                            let t = Instant::now();
                            let outcome = work.run(job, &gpus);
                            let _ = tx.send((ji, outcome, gpus, want_threads, t.elapsed()));
                        });
                    } else {
                        i += 1;
                    }
                }
                if running == 0 {
                    break;
                }
                let Ok((ji, outcome, gpus, used, took)) = rx.recv() else {
                    break;
                };
                running -= 1;
                free_threads += used;
                free_gpus.extend(gpus);
                events.finished(&jobs[ji], &outcome, took);
                let ok = matches!(outcome, Outcome::Executed | Outcome::Cached | Outcome::Fetched);
                if matches!(outcome, Outcome::Cancelled) {
                    stop = true;
                }
                outcomes[ji] = Some(outcome);
                if ok {
                    for &d in &dependents[ji] {
                        waiting[d] -= 1;
                        if waiting[d] == 0 && outcomes[d].is_none() {
                            ready.push_back(d);
                        }
                    }
                } else {
                    skip_dependents(ji, jobs, &dependents, &mut outcomes, &mut waiting, events);
                    if !self.keep_going {
                        stop = true;
                    }
                }
            }
        });
        jobs.iter()
            .zip(outcomes)
            .map(|(j, o)| {
                (
                    j.id,
                    o.unwrap_or(if crate::cancel::is_cancelled() {
                        Outcome::Cancelled
                    } else {
                        Outcome::Skipped {
                            because: "the run stopped after a failure (use --keep-going to go on)"
                                .into(),
                        }
                    }),
                )
            })
            .collect()
    }
}

fn skip_dependents(
    failed: usize,
    jobs: &[Job],
    dependents: &[Vec<usize>],
    outcomes: &mut [Option<Outcome>],
    waiting: &mut [usize],
    events: &dyn Events,
) {
    let mut stack = vec![failed];
    while let Some(i) = stack.pop() {
        for &d in &dependents[i] {
            if outcomes[d].is_none() {
                let o = Outcome::Skipped {
                    because: format!("{} did not finish", jobs[failed].name),
                };
                events.finished(&jobs[d], &o, Default::default());
                outcomes[d] = Some(o);
                waiting[d] = usize::MAX / 2;
                stack.push(d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::NoEvents;
    use crate::ir::Resources;
    use std::sync::Mutex;

    fn job(id: usize, deps: &[usize], threads: usize) -> Job {
        Job {
            id,
            name: format!("j{id}"),
            stage: format!("j{id}"),
            index: 0,
            deps: deps.to_vec(),
            resources: Resources {
                threads,
                ..Resources::default()
            },
        }
    }

    #[test]
    fn runs_in_dependency_order_and_skips_after_failure() {
        let jobs = vec![
            job(0, &[], 1),
            job(1, &[0], 1),
            job(2, &[1], 1),
            job(3, &[], 1),
        ];
        let log = Mutex::new(Vec::new());
        let run = |j: &Job, _: &[usize]| {
            log.lock().unwrap().push(j.id);
            if j.id == 1 {
                Outcome::Failed {
                    message: "boom".into(),
                    log: None,
                    log_tail: String::new(),
                }
            } else {
                Outcome::Executed
            }
        };
        let ex = LocalExecutor {
            threads: 2,
            gpus: 0,
            keep_going: true,
        };
        let out: HashMap<usize, Outcome> = ex.execute(&jobs, &run, &NoEvents).into_iter().collect();
        assert_eq!(out[&0], Outcome::Executed);
        assert!(matches!(out[&1], Outcome::Failed { .. }));
        assert!(matches!(out[&2], Outcome::Skipped { .. }));
        assert_eq!(out[&3], Outcome::Executed);
        let order = log.lock().unwrap().clone();
        assert!(order.iter().position(|&x| x == 0) < order.iter().position(|&x| x == 1));
        assert!(!order.contains(&2));
    }

    #[test]
    fn thread_budget_is_respected() {
        let jobs: Vec<Job> = (0..6).map(|i| job(i, &[], 2)).collect();
        let busy = Mutex::new((0usize, 0usize));
        let run = |_: &Job, _: &[usize]| {
            {
                let mut b = busy.lock().unwrap();
                b.0 += 2;
                b.1 = b.1.max(b.0);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            busy.lock().unwrap().0 -= 2;
            Outcome::Executed
        };
        let ex = LocalExecutor {
            threads: 4,
            gpus: 0,
            keep_going: false,
        };
        ex.execute(&jobs, &run, &NoEvents);
        assert!(busy.lock().unwrap().1 <= 4);
    }

    #[test]
    fn a_job_needing_more_gpus_than_exist_fails_clearly() {
        let mut j = job(0, &[], 1);
        j.resources.gpu = 1;
        let ex = LocalExecutor {
            threads: 1,
            gpus: 0,
            keep_going: false,
        };
        let out = ex.execute(&[j], &|_: &Job, _: &[usize]| Outcome::Executed, &NoEvents);
        match &out[0].1 {
            Outcome::Failed { message, .. } => assert!(message.contains("GPU")),
            o => panic!("{o:?}"),
        }
    }
}
