//! Learning-rate schedules, stepped per batch (`constant`, `cosine`, the
//! warm-up) or per epoch (`step`, `plateau`), with state that a checkpoint
//! keeps.

use serde::{Deserialize, Serialize};

crate::choice! {
    /// How the learning rate moves.
    pub enum Kind {
        /// The base rate throughout (after the warm-up).
        Constant = "constant",
        /// Times `gamma` every `step_epochs`.
        Step = "step",
        /// Cosine from the base rate down to `min_lr`.
        Cosine = "cosine",
        /// Times `gamma` after `patience` epochs without improvement.
        Plateau = "plateau",
    }
}

/// A schedule's configuration: fixed for a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub kind: Kind,
    pub base_lr: f64,
    pub min_lr: f64,
    pub epochs: usize,
    /// Linear warm-up from 0 over this many epochs (fractions allowed).
    pub warmup_epochs: f64,
    /// `step`: multiply by `gamma` every `step_epochs`; `plateau`: by
    /// `gamma` after `patience` epochs without improvement.
    pub gamma: f64,
    pub step_epochs: usize,
    pub patience: usize,
}

/// A schedule's running state (only `plateau` has any), kept in the
/// resumable training state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The factor on the base rate.
    pub scale: f64,
    /// The best monitored value so far.
    pub best: Option<f64>,
    /// Epochs since `best` improved.
    pub waited: usize,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            scale: 1.0,
            best: None,
            waited: 0,
        }
    }
}

impl Schedule {
    /// The rate at `epoch` (0-based) plus `frac` ∈ [0, 1) of the way through it.
    pub fn lr(&self, at: &Progress, epoch: usize, frac: f64) -> f64 {
        let t = epoch as f64 + frac;
        let lr = match self.kind {
            Kind::Step => self.base_lr * self.gamma.powi((epoch / self.step_epochs.max(1)) as i32),
            Kind::Cosine => {
                let span = (self.epochs as f64 - self.warmup_epochs).max(1e-9);
                let p = ((t - self.warmup_epochs) / span).clamp(0.0, 1.0);
                self.min_lr
                    + 0.5 * (self.base_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * p).cos())
            }
            Kind::Plateau => (self.base_lr * at.scale).max(self.min_lr),
            Kind::Constant => self.base_lr,
        };
        if self.warmup_epochs > 0.0 && t < self.warmup_epochs {
            lr * (t / self.warmup_epochs)
        } else {
            lr
        }
    }

    /// Ends an epoch with its validation metric (higher better): `plateau`
    /// cuts the rate after `patience` epochs without improvement.
    pub fn end_epoch(&self, at: &mut Progress, metric: Option<f64>) {
        if self.kind != Kind::Plateau {
            return;
        }
        let Some(m) = metric else { return };
        if at.best.is_none_or(|b| m > b) {
            at.best = Some(m);
            at.waited = 0;
        } else {
            at.waited += 1;
            if at.waited > self.patience {
                at.scale *= self.gamma;
                at.waited = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: Kind) -> Schedule {
        Schedule {
            kind,
            base_lr: 1.0,
            min_lr: 0.0,
            epochs: 10,
            warmup_epochs: 0.0,
            gamma: 0.1,
            step_epochs: 3,
            patience: 1,
        }
    }

    #[test]
    fn cosine_with_warmup() {
        let mut s = sched(Kind::Cosine);
        s.warmup_epochs = 2.0;
        let at = Progress::default();
        assert_eq!(s.lr(&at, 0, 0.0), 0.0);
        assert!((s.lr(&at, 1, 0.0) - 0.5).abs() < 1e-12);
        assert!((s.lr(&at, 2, 0.0) - 1.0).abs() < 1e-12);
        assert!((s.lr(&at, 6, 0.0) - 0.5).abs() < 1e-12);
        assert!(s.lr(&at, 9, 0.99) < 1e-3);
    }

    #[test]
    fn step_and_plateau() {
        let s = sched(Kind::Step);
        let mut at = Progress::default();
        assert_eq!(s.lr(&at, 2, 0.5), 1.0);
        assert!((s.lr(&at, 3, 0.0) - 0.1).abs() < 1e-12);
        let p = sched(Kind::Plateau);
        for m in [0.5, 0.6, 0.6, 0.55] {
            p.end_epoch(&mut at, Some(m));
        }
        // Best 0.6 at epoch 2; two epochs without improvement > patience 1.
        assert!((p.lr(&at, 4, 0.0) - 0.1).abs() < 1e-12);
    }
}
