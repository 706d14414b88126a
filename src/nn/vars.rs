//! The named variables of a model: weights, biases and batch-norm statistics,
//! with timm/PyTorch names (`layer1.0.conv1.weight`), created with a
//! deterministic initialization that depends only on the seed and the name.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How a variable starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// PyTorch's default for conv and linear layers: uniform in ±1/√fan_in
    /// (kaiming uniform with a = √5 gives the same bound for weights).
    Uniform {
        fan_in: usize,
    },
    /// Kaiming normal, fan-out, for ReLU (torchvision's ResNet convs).
    KaimingOut {
        fan_out: usize,
    },
    /// Normal with mean 0 and this standard deviation (detection heads).
    Normal {
        std: f64,
    },
    /// Uniform in ±bound (torchvision's FPN convs: kaiming uniform, a = 1).
    Bound(f64),
    Const(f64),
}

/// What a variable is, which decides whether the optimizer updates it and
/// whether weight decay applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A weight matrix or kernel: trained, decayed.
    Weight,
    /// A bias or a norm's scale or shift: trained, not decayed (as timm's
    /// `filter_bias_and_bn`).
    NoDecay,
    /// A running statistic: updated by the forward pass, never by the optimizer.
    Buffer,
}

#[derive(Clone)]
pub struct Entry {
    pub var: Var,
    pub role: Role,
}

/// All variables of one model, by full name, in name order.
#[derive(Clone)]
pub struct VarStore {
    inner: Arc<Mutex<BTreeMap<String, Entry>>>,
    device: Device,
    seed: u64,
    frozen: bool,
    /// Variables start as zeros: a checkpoint sets every one of them.
    zeros: bool,
}

impl VarStore {
    pub fn new(device: &Device, seed: u64) -> VarStore {
        VarStore {
            inner: Arc::default(),
            device: device.clone(),
            seed,
            frozen: false,
            zeros: false,
        }
    }

    /// A store whose variables a checkpoint will set, every one (the caller
    /// checks): created as zeros rather than drawn. For resnet18's 11.7 M
    /// values the draw was most of a one-image `predict`: 0.06–0.09 s of
    /// CPU time, 0.02 s without.
    pub fn to_load(device: &Device) -> VarStore {
        VarStore {
            zeros: true,
            ..VarStore::new(device, 0)
        }
    }

    /// The same variables, handed to the layers built from this view
    /// detached: a model built on it computes with the current values
    /// (they share storage, so `load` and the optimizer's steps show) but
    /// records no graph. Without this every inference op kept its inputs
    /// alive until the output went (candle tracks any op whose input is a
    /// variable): an EfficientNet-B0 batch of 64 at 64² held 506 MiB, whose
    /// first touch was most of a 256-image `predict`.
    pub fn frozen(&self) -> VarStore {
        VarStore {
            frozen: true,
            ..self.clone()
        }
    }

    /// A layer's handle on `var`: the variable itself, or on a frozen view
    /// a detached tensor over the same storage.
    fn handle(&self, var: &Var) -> Tensor {
        if self.frozen {
            var.as_tensor().detach()
        } else {
            var.as_tensor().clone()
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The root builder.
    pub fn root(&self) -> Vb {
        Vb {
            store: self.clone(),
            prefix: String::new(),
        }
    }

    /// Name-ordered variables.
    pub fn entries(&self) -> Vec<(String, Entry)> {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub fn get(&self, name: &str) -> Option<Entry> {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.get(name).cloned()
    }

    /// The variables' values, by name (detached copies sharing nothing).
    pub fn snapshot(&self) -> Result<BTreeMap<String, Tensor>> {
        self.entries()
            .into_iter()
            .map(|(k, e)| Ok((k, e.var.as_tensor().copy()?.detach())))
            .collect()
    }

    /// Sets every variable that `values` names (and whose shape fits);
    /// returns the names loaded and, for the rest of `values`, why not.
    pub fn load(&self, values: &BTreeMap<String, Tensor>) -> Result<(Vec<String>, Vec<String>)> {
        let mut loaded = Vec::new();
        let mut skipped = Vec::new();
        for (name, t) in values {
            match self.get(name) {
                None => skipped.push(format!("{name}: not in this model")),
                Some(e) if e.var.dims() != t.dims() => skipped.push(format!(
                    "{name}: shape {:?} here, {:?} in the file",
                    e.var.dims(),
                    t.dims()
                )),
                Some(e) => {
                    e.var
                        .set(&t.to_dtype(DType::F32)?.to_device(&self.device)?)?;
                    loaded.push(name.clone());
                }
            }
        }
        Ok((loaded, skipped))
    }

    fn create(&self, name: String, shape: Shape, init: Init, role: Role) -> Result<Tensor> {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = m.get(&name) {
            return Ok(self.handle(&e.var));
        }
        let n = shape.elem_count();
        let mut rng = ChaCha8Rng::seed_from_u64(name_seed(self.seed, &name));
        let data: Vec<f32> = match init {
            _ if self.zeros => vec![0.0; n],
            Init::Const(c) => vec![c as f32; n],
            Init::Uniform { fan_in } => {
                let b = 1.0 / (fan_in.max(1) as f64).sqrt();
                (0..n).map(|_| rng.random_range(-b..b) as f32).collect()
            }
            Init::Normal { std } => (0..n).map(|_| (normal(&mut rng) * std) as f32).collect(),
            Init::Bound(b) => (0..n).map(|_| rng.random_range(-b..b) as f32).collect(),
            Init::KaimingOut { fan_out } => {
                let std = (2.0 / fan_out.max(1) as f64).sqrt();
                (0..n).map(|_| (normal(&mut rng) * std) as f32).collect()
            }
        };
        let t = Tensor::from_vec(data, shape, &self.device)?;
        let var = Var::from_tensor(&t)?;
        let out = self.handle(&var);
        m.insert(name, Entry { var, role });
        Ok(out)
    }
}

/// A standard normal draw (Box–Muller), from the crate's own RNG so that the
/// same seed gives the same weights on every platform.
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn name_seed(seed: u64, name: &str) -> u64 {
    let h = blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .update(name.as_bytes())
        .finalize();
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// A builder at one name prefix, as candle-nn's `VarBuilder::pp`.
#[derive(Clone)]
pub struct Vb {
    store: VarStore,
    prefix: String,
}

impl Vb {
    /// The builder one level down: `vb.pp("layer1").pp(0)` names `layer1.0.*`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Vb {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Vb {
            store: self.store.clone(),
            prefix,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn device(&self) -> &Device {
        &self.store.device
    }

    /// The variable `name` under this prefix, created on first use.
    pub fn var(
        &self,
        name: &str,
        shape: impl Into<Shape>,
        init: Init,
        role: Role,
    ) -> Result<Tensor> {
        self.store
            .create(self.pp(name).prefix, shape.into(), init, role)
    }

    pub fn var_entry(&self, name: &str) -> Option<Entry> {
        self.store.get(&self.pp(name).prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_depends_on_seed_and_name_only() {
        let a = VarStore::new(&Device::Cpu, 7);
        let b = VarStore::new(&Device::Cpu, 7);
        let c = VarStore::new(&Device::Cpu, 8);
        let init = Init::Uniform { fan_in: 9 };
        let ta = a
            .root()
            .pp("x")
            .var("weight", (4, 9), init, Role::Weight)
            .unwrap();
        // A different creation order gives the same values.
        b.root()
            .pp("y")
            .var("weight", (4, 9), init, Role::Weight)
            .unwrap();
        let tb = b
            .root()
            .pp("x")
            .var("weight", (4, 9), init, Role::Weight)
            .unwrap();
        let tc = c
            .root()
            .pp("x")
            .var("weight", (4, 9), init, Role::Weight)
            .unwrap();
        let va: Vec<f32> = ta.flatten_all().unwrap().to_vec1().unwrap();
        let vb: Vec<f32> = tb.flatten_all().unwrap().to_vec1().unwrap();
        let vc: Vec<f32> = tc.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(va, vb);
        assert_ne!(va, vc);
        assert!(va.iter().all(|x| x.abs() <= 1.0 / 3.0));
    }

    #[test]
    fn load_reports_what_did_not_fit() {
        let s = VarStore::new(&Device::Cpu, 0);
        s.root()
            .var("a", 3, Init::Const(0.0), Role::Weight)
            .unwrap();
        let mut m = BTreeMap::new();
        m.insert(
            "a".to_string(),
            Tensor::new(&[1f32, 2., 3.], &Device::Cpu).unwrap(),
        );
        m.insert("b".to_string(), Tensor::new(&[1f32], &Device::Cpu).unwrap());
        let (loaded, skipped) = s.load(&m).unwrap();
        assert_eq!(loaded, ["a"]);
        assert_eq!(skipped, ["b: not in this model"]);
        let v: Vec<f32> = s.get("a").unwrap().var.as_tensor().to_vec1().unwrap();
        assert_eq!(v, [1., 2., 3.]);
    }
}
