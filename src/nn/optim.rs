//! Optimizers with PyTorch's update rules and state that can be saved in a
//! checkpoint and resumed: SGD (momentum, L2 weight decay), Adam (L2 weight
//! decay) and AdamW (decoupled weight decay). Weight decay applies to
//! weight matrices and kernels only, not to biases and norm parameters, as
//! timm's `filter_bias_and_bn`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use candle_core::{CpuStorage, Device, InplaceOp2, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::vars::{Entry, Role};

crate::choice! {
    /// An optimizer.
    pub enum Kind {
        /// SGD with momentum; weight decay added to the gradient.
        Sgd = "sgd",
        /// Adam; weight decay added to the gradient.
        Adam = "adam",
        /// Adam with decoupled weight decay.
        AdamW = "adamw",
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
    state: BTreeMap<String, Slot>,
}

/// One variable's optimizer state.
enum Slot {
    /// Tensors, updated by candle's ops (off the CPU, or as loaded from a
    /// checkpoint until the first CPU step).
    Tensors(Vec<Tensor>),
    /// Plain buffers, updated in place together with the variable in one
    /// fused pass ([`FusedStep`]).
    Host { bufs: Vec<Vec<f32>>, shape: Shape },
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
        self.step_as(vars, grads, lr, true)
    }

    /// [`Optimizer::step`]; `fused`: f32 variables on the CPU take the
    /// fused in-place update, the others candle's tensor ops.
    fn step_as(
        &mut self,
        vars: &[(String, Entry)],
        grads: &BTreeMap<String, Tensor>,
        lr: f64,
        fused: bool,
    ) -> Result<()> {
        self.steps += 1;
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
            let p = e.var.as_tensor();
            if fused && p.device().is_cpu() && p.dtype() == candle_core::DType::F32 {
                self.fused_step(name, p, &g.contiguous()?, lr, decay)?;
            } else {
                let new = self.tensor_step(name, &p.detach(), &g.detach(), lr, decay)?;
                e.var.set(&new)?;
            }
        }
        Ok(())
    }

    /// The update with candle's ops: the new value of `p`.
    fn tensor_step(
        &mut self,
        name: &str,
        p: &Tensor,
        g: &Tensor,
        lr: f64,
        decay: f64,
    ) -> Result<Tensor> {
        let t = self.steps as i32;
        let mut g = g.clone();
        if decay > 0.0 && self.kind != Kind::AdamW {
            g = (g + (p * decay)?)?;
        }
        let prev = match self.state.remove(name) {
            Some(Slot::Tensors(ts)) => Some(ts),
            Some(Slot::Host { bufs, shape }) => Some(
                bufs.iter()
                    .map(|b| Tensor::from_slice(b, shape.clone(), p.device()))
                    .collect::<Result<Vec<_>>>()?,
            ),
            None => None,
        };
        Ok(match self.kind {
            Kind::Sgd => {
                let d = if self.momentum > 0.0 {
                    let buf = match prev {
                        Some(s) => ((&s[0] * self.momentum)? + &g)?,
                        None => g.clone(),
                    };
                    self.state
                        .insert(name.to_string(), Slot::Tensors(vec![buf.clone()]));
                    buf
                } else {
                    g
                };
                (p - (d * lr)?)?
            }
            Kind::Adam | Kind::AdamW => {
                let (m, v) = match prev {
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
                self.state
                    .insert(name.to_string(), Slot::Tensors(vec![m, v]));
                let p = if self.kind == Kind::AdamW && decay > 0.0 {
                    (p * (1.0 - lr * decay))?
                } else {
                    p.clone()
                };
                (p - (upd * lr)?)?
            }
        })
    }

    /// The update in place, one pass over the variable, its gradient and
    /// its state, where candle's ops take a dozen passes over the variable,
    /// each into a fresh allocation.
    fn fused_step(
        &mut self,
        name: &str,
        p: &Tensor,
        g: &Tensor,
        lr: f64,
        decay: f64,
    ) -> Result<()> {
        let n = p.elem_count();
        let bufs_wanted = match self.kind {
            Kind::Sgd if self.momentum > 0.0 => 1,
            Kind::Sgd => 0,
            Kind::Adam | Kind::AdamW => 2,
        };
        let (mut bufs, first) = match self.state.remove(name) {
            Some(Slot::Host { bufs, .. }) => (bufs, false),
            Some(Slot::Tensors(ts)) => (
                ts.iter()
                    .map(|t| t.flatten_all()?.to_vec1::<f32>())
                    .collect::<Result<Vec<_>>>()?,
                false,
            ),
            None => (vec![vec![0f32; n]; bufs_wanted], true),
        };
        if bufs.len() != bufs_wanted || bufs.iter().any(|b| b.len() != n) {
            bail!("optimizer state of {name} does not fit the variable")
        }
        let t = self.steps as i32;
        let op = FusedStep {
            kind: self.kind,
            lr: lr as f32,
            decay: decay as f32,
            momentum: self.momentum as f32,
            first,
            beta1: self.beta1 as f32,
            beta2: self.beta2 as f32,
            eps: self.eps as f32,
            bc1: (1.0 - self.beta1.powi(t)) as f32,
            bc2: (1.0 - self.beta2.powi(t)) as f32,
            bufs: Mutex::new(&mut bufs),
        };
        p.inplace_op2(g, &op)?;
        let shape = p.shape().clone();
        if bufs_wanted > 0 {
            self.state
                .insert(name.to_string(), Slot::Host { bufs, shape });
        }
        Ok(())
    }

    /// The state as named tensors, `<var>.0`, `<var>.1`, for a checkpoint.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (name, slot) in &self.state {
            let ts: Vec<Tensor> = match slot {
                Slot::Tensors(ts) => ts.clone(),
                Slot::Host { bufs, shape } => bufs
                    .iter()
                    .filter_map(|b| Tensor::from_slice(b, shape.clone(), &Device::Cpu).ok())
                    .collect(),
            };
            for (i, t) in ts.into_iter().enumerate() {
                out.insert(format!("{name}.{i}"), t);
            }
        }
        out
    }

    /// Restores what [`Optimizer::state_tensors`] saved.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, steps: u64) {
        let mut loaded: BTreeMap<String, Vec<Tensor>> = BTreeMap::new();
        for (key, t) in tensors {
            if let Some((name, i)) = key.rsplit_once('.')
                && let Ok(i) = i.parse::<usize>()
            {
                let v = loaded.entry(name.to_string()).or_default();
                if v.len() <= i {
                    v.resize(i + 1, t.clone());
                }
                v[i] = t.clone();
            }
        }
        self.state = loaded
            .into_iter()
            .map(|(k, ts)| (k, Slot::Tensors(ts)))
            .collect();
        self.steps = steps;
    }
}

/// One variable's update, in place (the variable is the op's mutable
/// first tensor, the gradient its second): SGD with momentum and L2 decay,
/// Adam with L2 decay, AdamW with decoupled decay, with the state buffers
/// updated in the same pass. The arithmetic is [`Optimizer::tensor_step`]'s,
/// in f32 as candle's ops do it.
struct FusedStep<'a> {
    kind: Kind,
    lr: f32,
    decay: f32,
    momentum: f32,
    /// No state yet: SGD's buffer starts as the gradient, Adam's moments at 0.
    first: bool,
    beta1: f32,
    beta2: f32,
    eps: f32,
    bc1: f32,
    bc2: f32,
    bufs: Mutex<&'a mut Vec<Vec<f32>>>,
}

/// Elements per parallel work item.
const FUSED_CHUNK: usize = 1 << 15;

impl FusedStep<'_> {
    fn run(&self, p: &mut [f32], g: &[f32], bufs: &mut [Vec<f32>]) {
        match (self.kind, bufs) {
            (Kind::Sgd, []) => p
                .par_chunks_mut(FUSED_CHUNK)
                .zip(g.par_chunks(FUSED_CHUNK))
                .for_each(|(p, g)| {
                    for (p, &g) in p.iter_mut().zip(g) {
                        *p -= (g + *p * self.decay) * self.lr;
                    }
                }),
            (Kind::Sgd, [buf]) => p
                .par_chunks_mut(FUSED_CHUNK)
                .zip(
                    g.par_chunks(FUSED_CHUNK)
                        .zip(buf.par_chunks_mut(FUSED_CHUNK)),
                )
                .for_each(|(p, (g, b))| {
                    for ((p, &g), b) in p.iter_mut().zip(g).zip(b) {
                        let g = g + *p * self.decay;
                        *b = if self.first {
                            g
                        } else {
                            *b * self.momentum + g
                        };
                        *p -= *b * self.lr;
                    }
                }),
            (_, [m, v]) => {
                let adamw = self.kind == Kind::AdamW;
                let (l2, keep) = if adamw {
                    (0.0, 1.0 - self.lr * self.decay)
                } else {
                    (self.decay, 1.0)
                };
                p.par_chunks_mut(FUSED_CHUNK)
                    .zip(g.par_chunks(FUSED_CHUNK))
                    .zip(
                        m.par_chunks_mut(FUSED_CHUNK)
                            .zip(v.par_chunks_mut(FUSED_CHUNK)),
                    )
                    .for_each(|((p, g), (m, v))| {
                        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                            let g = g + *p * l2;
                            *m = *m * self.beta1 + g * (1.0 - self.beta1);
                            *v = *v * self.beta2 + g * g * (1.0 - self.beta2);
                            let upd = (*m / self.bc1) / ((*v / self.bc2).sqrt() + self.eps);
                            *p = *p * keep - upd * self.lr;
                        }
                    })
            }
            _ => unreachable!("fused_step sizes the state for its kind"),
        }
    }
}

impl InplaceOp2 for FusedStep<'_> {
    fn name(&self) -> &'static str {
        "podium-optimizer-step"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (s1, s2) else {
            bail!("optimizer step: f32 variables only")
        };
        let (Some((p0, p1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            bail!("optimizer step: variable or gradient not contiguous")
        };
        if p1 - p0 != g1 - g0 {
            bail!(
                "optimizer step: gradient of {} elements for {}",
                g1 - g0,
                p1 - p0
            )
        }
        let mut bufs = self.bufs.lock().unwrap_or_else(|e| e.into_inner());
        self.run(&mut p[p0..p1], &g[g0..g1], bufs.as_mut_slice());
        Ok(())
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

    /// The fused in-place update equals candle's tensor ops, for every
    /// optimizer, with and without decay, over variables larger than one
    /// work item, and across a save and restore of the state in between.
    #[test]
    fn the_fused_step_equals_the_tensor_ops() {
        let dev = Device::Cpu;
        let n = FUSED_CHUNK + 37;
        for (kind, momentum) in [
            (Kind::Sgd, 0.0),
            (Kind::Sgd, 0.9),
            (Kind::Adam, 0.0),
            (Kind::AdamW, 0.0),
        ] {
            let mut results = Vec::new();
            for fused in [false, true] {
                let s = VarStore::new(&dev, 0);
                s.root()
                    .var("w", (n / 37, 37), Init::Const(0.5), Role::Weight)
                    .unwrap();
                s.root()
                    .var("b", 37, Init::Const(-0.25), Role::NoDecay)
                    .unwrap();
                let vars = s.entries();
                let mut o = Optimizer::new(kind, momentum, 0.01);
                for step in 0..4u32 {
                    let mut grads = BTreeMap::new();
                    for (name, e) in &vars {
                        let k = e.var.elem_count();
                        let g: Vec<f32> = (0..k)
                            .map(|i| {
                                ((i as u32).wrapping_mul(2654435761).wrapping_add(step * 97) % 1000)
                                    as f32
                                    / 500.0
                                    - 1.0
                            })
                            .collect();
                        grads.insert(
                            name.clone(),
                            Tensor::from_vec(g, e.var.shape(), &dev).unwrap(),
                        );
                    }
                    o.step_as(&vars, &grads, 0.05, fused).unwrap();
                    if step == 1 {
                        // As a resumed run: the state through a checkpoint.
                        let saved = o.state_tensors();
                        let mut r = Optimizer::new(kind, momentum, 0.01);
                        r.load_state(&saved, o.steps);
                        o = r;
                    }
                }
                let flat = |e: &Entry| e.var.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                results.push(vars.iter().flat_map(|(_, e)| flat(e)).collect::<Vec<f32>>());
            }
            for (a, b) in results[0].iter().zip(&results[1]) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
                    "{kind:?}: {a} vs {b}"
                );
            }
            assert_ne!(results[1][0], 0.5, "{kind:?} moved nothing");
        }
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
