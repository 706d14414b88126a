//! Learning-rate schedules, stepped per batch (`constant`, `cosine`, the
//! warm-up) or per epoch (`step`, `plateau`), with state that a checkpoint
//! keeps.

use serde::{Deserialize, Serialize};

pub const NAMES: &[&str] = &["constant", "step", "cosine", "plateau"];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub kind: String,
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
    /// `plateau`'s state: the current scale, the best metric, bad epochs.
    pub scale: f64,
    pub best: Option<f64>,
    pub bad_epochs: usize,
}

impl Schedule {
    /// The rate at `epoch` (0-based) plus `frac` ∈ [0, 1) of the way through it.
    pub fn lr(&self, epoch: usize, frac: f64) -> f64 {
        let t = epoch as f64 + frac;
        let lr = match self.kind.as_str() {
            "step" => self.base_lr * self.gamma.powi((epoch / self.step_epochs.max(1)) as i32),
            "cosine" => {
                let span = (self.epochs as f64 - self.warmup_epochs).max(1e-9);
                let p = ((t - self.warmup_epochs) / span).clamp(0.0, 1.0);
                self.min_lr
                    + 0.5 * (self.base_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * p).cos())
            }
            "plateau" => (self.base_lr * self.scale).max(self.min_lr),
            _ => self.base_lr,
        };
        if self.warmup_epochs > 0.0 && t < self.warmup_epochs {
            lr * (t / self.warmup_epochs)
        } else {
            lr
        }
    }

    /// Ends an epoch with its validation metric (higher better): `plateau`
    /// cuts the rate after `patience` epochs without improvement.
    pub fn end_epoch(&mut self, metric: Option<f64>) {
        if self.kind != "plateau" {
            return;
        }
        let Some(m) = metric else { return };
        if self.best.is_none_or(|b| m > b) {
            self.best = Some(m);
            self.bad_epochs = 0;
        } else {
            self.bad_epochs += 1;
            if self.bad_epochs > self.patience {
                self.scale *= self.gamma;
                self.bad_epochs = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: &str) -> Schedule {
        Schedule {
            kind: kind.into(),
            base_lr: 1.0,
            min_lr: 0.0,
            epochs: 10,
            warmup_epochs: 0.0,
            gamma: 0.1,
            step_epochs: 3,
            patience: 1,
            scale: 1.0,
            best: None,
            bad_epochs: 0,
        }
    }

    #[test]
    fn cosine_with_warmup() {
        let mut s = sched("cosine");
        s.warmup_epochs = 2.0;
        assert_eq!(s.lr(0, 0.0), 0.0);
        assert!((s.lr(1, 0.0) - 0.5).abs() < 1e-12);
        assert!((s.lr(2, 0.0) - 1.0).abs() < 1e-12);
        assert!((s.lr(6, 0.0) - 0.5).abs() < 1e-12);
        assert!(s.lr(9, 0.99) < 1e-3);
    }

    #[test]
    fn step_and_plateau() {
        let s = sched("step");
        assert_eq!(s.lr(2, 0.5), 1.0);
        assert!((s.lr(3, 0.0) - 0.1).abs() < 1e-12);
        let mut p = sched("plateau");
        for m in [0.5, 0.6, 0.6, 0.55] {
            p.end_epoch(Some(m));
        }
        // Best 0.6 at epoch 2; two epochs without improvement > patience 1.
        assert!((p.lr(4, 0.0) - 0.1).abs() < 1e-12);
    }
}
