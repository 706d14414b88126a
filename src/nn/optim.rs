//! Optimizers with PyTorch's update rules and state that can be saved in a
//! checkpoint and resumed: SGD (momentum, L2 weight decay), Adam (L2 weight
//! decay) and AdamW (decoupled weight decay). Weight decay applies to
//! weight matrices and kernels only, not to biases and norm parameters, as
//! timm's `filter_bias_and_bn`.

use std::collections::BTreeMap;

use candle_core::{Result, Tensor};

use super::vars::{Entry, Role};

pub const NAMES: &[&str] = &["sgd", "adam", "adamw"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sgd,
    Adam,
    AdamW,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "sgd" => Kind::Sgd,
            "adam" => Kind::Adam,
            "adamw" => Kind::AdamW,
            _ => return None,
        })
    }
}

pub struct Optimizer {
    pub kind: Kind,
    pub momentum: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Updates taken so far (Adam's bias correction counts them).
    pub steps: u64,
    /// Per variable: SGD's momentum buffer, or Adam's first and second moments.
    state: BTreeMap<String, Vec<Tensor>>,
}

impl Optimizer {
    pub fn new(kind: Kind, momentum: f64, weight_decay: f64) -> Optimizer {
        Optimizer {
            kind,
            momentum,
            weight_decay,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            steps: 0,
            state: BTreeMap::new(),
        }
    }

    /// One update of the variables that have a gradient in `grads`.
    pub fn step(
        &mut self,
        vars: &[(String, Entry)],
        grads: &BTreeMap<String, Tensor>,
        lr: f64,
    ) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        for (name, e) in vars {
            let Some(g) = grads.get(name) else { continue };
            if e.role == Role::Buffer {
                continue;
            }
            let decay = if e.role == Role::Weight {
                self.weight_decay
            } else {
                0.0
            };
            let p = e.var.as_tensor().detach();
            let mut g = g.detach();
            if decay > 0.0 && self.kind != Kind::AdamW {
                g = (g + (&p * decay)?)?;
            }
            let new = match self.kind {
                Kind::Sgd => {
                    let d = if self.momentum > 0.0 {
                        let buf = match self.state.get(name) {
                            Some(s) => ((&s[0] * self.momentum)? + &g)?,
                            None => g.clone(),
                        };
                        self.state.insert(name.clone(), vec![buf.clone()]);
                        buf
                    } else {
                        g
                    };
                    (p - (d * lr)?)?
                }
                Kind::Adam | Kind::AdamW => {
                    let (m, v) = match self.state.get(name) {
                        Some(s) => (
                            ((&s[0] * self.beta1)? + (&g * (1.0 - self.beta1))?)?,
                            ((&s[1] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?,
                        ),
                        None => ((&g * (1.0 - self.beta1))?, (g.sqr()? * (1.0 - self.beta2))?),
                    };
                    let bc1 = 1.0 - self.beta1.powi(t);
                    let bc2 = 1.0 - self.beta2.powi(t);
                    let denom = ((&v / bc2)?.sqrt()? + self.eps)?;
                    let upd = ((&m / bc1)? / denom)?;
                    self.state.insert(name.clone(), vec![m, v]);
                    let p = if self.kind == Kind::AdamW && decay > 0.0 {
                        (&p * (1.0 - lr * decay))?
                    } else {
                        p
                    };
                    (p - (upd * lr)?)?
                }
            };
            e.var.set(&new)?;
        }
        Ok(())
    }

    /// The state as named tensors, `<var>.0`, `<var>.1`, for a checkpoint.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (name, ts) in &self.state {
            for (i, t) in ts.iter().enumerate() {
                out.insert(format!("{name}.{i}"), t.clone());
            }
        }
        out
    }

    /// Restores what [`Optimizer::state_tensors`] saved.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, steps: u64) {
        self.state.clear();
        for (key, t) in tensors {
            if let Some((name, i)) = key.rsplit_once('.')
                && let Ok(i) = i.parse::<usize>()
            {
                let v = self.state.entry(name.to_string()).or_default();
                if v.len() <= i {
                    v.resize(i + 1, t.clone());
                }
                v[i] = t.clone();
            }
        }
        self.steps = steps;
    }
}

/// Scales the gradients so that their global L2 norm is at most `max`;
/// returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut BTreeMap<String, Tensor>, max: f64) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.values() {
        sq += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
    }
    let norm = sq.sqrt();
    if max > 0.0 && norm > max {
        let s = max / (norm + 1e-6);
        for g in grads.values_mut() {
            *g = (&*g * s)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::vars::{Init, VarStore};
    use candle_core::Device;

    /// p = 1, gradient 2p each step (loss p²): the first steps by hand.
    fn run(kind: Kind, momentum: f64, wd: f64, role: Role) -> Vec<f32> {
        let s = VarStore::new(&Device::Cpu, 0);
        s.root().var("p", 1, Init::Const(1.0), role).unwrap();
        let vars = s.entries();
        let mut o = Optimizer::new(kind, momentum, wd);
        let mut seen = Vec::new();
        for _ in 0..2 {
            let p = vars[0].1.var.as_tensor();
            let mut g = BTreeMap::new();
            g.insert("p".to_string(), (p * 2.0).unwrap());
            o.step(&vars, &g, 0.1).unwrap();
            seen.push(p.to_vec1::<f32>().unwrap()[0]);
        }
        seen
    }

    #[test]
    fn sgd_with_momentum_and_decay_follows_pytorch() {
        // torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=0.5): g' = g + 0.5p.
        // step 1: g' = 2.5, buf = 2.5, p = 0.75; step 2: g' = 1.875, buf = 4.125, p = 0.3375.
        let v = run(Kind::Sgd, 0.9, 0.5, Role::Weight);
        assert!(
            (v[0] - 0.75).abs() < 1e-6 && (v[1] - 0.3375).abs() < 1e-6,
            "{v:?}"
        );
        // No decay on a bias: g = 2, p = 0.8; buf = 1.6 + 1.8 = 3.4, p = 0.46.
        let v = run(Kind::Sgd, 0.9, 0.5, Role::NoDecay);
        assert!(
            (v[0] - 0.8).abs() < 1e-6 && (v[1] - 0.46).abs() < 1e-6,
            "{v:?}"
        );
    }

    #[test]
    fn adam_and_adamw_first_steps() {
        // Adam's first step moves by lr whatever the gradient's size.
        let v = run(Kind::Adam, 0.0, 0.0, Role::Weight);
        assert!((v[0] - 0.9).abs() < 1e-5, "{v:?}");
        // AdamW decays first: p = 1 · (1 − 0.1 · 0.5) − 0.1.
        let v = run(Kind::AdamW, 0.0, 0.5, Role::Weight);
        assert!((v[0] - 0.85).abs() < 1e-5, "{v:?}");
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut g = BTreeMap::new();
        g.insert(
            "a".to_string(),
            Tensor::new(&[3f32, 4.0], &Device::Cpu).unwrap(),
        );
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-6);
        let v: Vec<f32> = g["a"].to_vec1().unwrap();
        assert!((v[0] - 0.6).abs() < 1e-5 && (v[1] - 0.8).abs() < 1e-5);
    }
}
