//! The planner: which instances are fresh, which are stale, and why.
//!
//! An instance's key is blake3 over its op, op version, parameters and the
//! content hashes of everything it reads. It is fresh when the store holds
//! a complete record for that key. Its key can only be known once every
//! instance it reads is fresh; otherwise it waits on them, and may still
//! turn out fresh at run time if they reproduce the same bytes (early cutoff).

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::graph::Graph;
use crate::hash::Hash;
use crate::ir::{Instance, Pipeline};
use crate::store::StatCache;
use crate::store::{Record, Store};
use crate::value::{PathRef, Value};

/// Why an instance must run.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    NeverRun,
    Forced,
    OpVersion {
        old: u32,
        new: u32,
    },
    Param {
        name: String,
        old: Option<String>,
        new: Option<String>,
    },
    Input {
        label: String,
    },
    Upstream {
        label: String,
    },
    UpstreamPending {
        instance: String,
    },
    Missing,
    KeyChanged,
    /// Not in this store, but in the remote cache: fetched, not executed.
    CachedRemotely,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NeverRun => write!(f, "never run"),
            Reason::Forced => write!(f, "forced"),
            Reason::OpVersion { old, new } => write!(f, "op version changed ({old} → {new})"),
            Reason::Param { name, old, new } => {
                let (o, n) = compact_change(
                    old.as_deref().unwrap_or("unset"),
                    new.as_deref().unwrap_or("unset"),
                );
                if name.starts_with("params.") {
                    write!(f, "{name} changed ({o} → {n})")
                } else {
                    write!(f, "param {name} changed ({o} → {n})")
                }
            }
            Reason::Input { label } => write!(f, "input {label} content changed"),
            Reason::Upstream { label } => write!(f, "upstream {label} output changed"),
            Reason::UpstreamPending { instance } => write!(f, "upstream {instance} will run"),
            Reason::Missing => write!(f, "cached result missing from the store"),
            Reason::KeyChanged => write!(f, "key changed"),
            Reason::CachedRemotely => write!(f, "cached remotely"),
        }
    }
}

/// Long values shortened to the part that changed, with a little context.
fn compact_change(old: &str, new: &str) -> (String, String) {
    const CONTEXT: usize = 10;
    if old.chars().count() <= 40 && new.chars().count() <= 40 {
        return (old.to_string(), new.to_string());
    }
    let (o, n): (Vec<char>, Vec<char>) = (old.chars().collect(), new.chars().collect());
    let prefix = o.iter().zip(&n).take_while(|(a, b)| a == b).count();
    let max_suffix = o.len().min(n.len()) - prefix;
    let suffix = o
        .iter()
        .rev()
        .zip(n.iter().rev())
        .take(max_suffix)
        .take_while(|(a, b)| a == b)
        .count();
    let cut = |v: &[char]| {
        let start = prefix.saturating_sub(CONTEXT);
        let end = (v.len() - suffix + CONTEXT).min(v.len());
        let mut s = String::new();
        if start > 0 {
            s.push('…');
        }
        s.extend(&v[start..end]);
        if end < v.len() {
            s.push('…');
        }
        s
    };
    (cut(&o), cut(&n))
}

/// The planned state of one instance.
#[derive(Clone, Debug)]
pub enum Status {
    /// Up to date; its record.
    Fresh(Box<Record>),
    Stale(Vec<Reason>),
    /// Not needed for the requested targets.
    Skipped,
}

#[cfg(test)]
mod tests {
    use super::compact_change;

    #[test]
    fn long_changes_are_shortened_around_the_difference() {
        let old = format!("{}s=3{}", "a".repeat(50), "b".repeat(50));
        let new = format!("{}s=4{}", "a".repeat(50), "b".repeat(50));
        let (o, n) = compact_change(&old, &new);
        // Ten characters of context on each side of the differing `3`/`4`.
        assert_eq!(o, format!("…{}s=3{}…", "a".repeat(8), "b".repeat(10)));
        assert_eq!(n, format!("…{}s=4{}…", "a".repeat(8), "b".repeat(10)));
        assert_eq!(compact_change("1", "2"), ("1".to_string(), "2".to_string()));
    }
}

/// One instance's key and what it read, by label.
#[derive(Clone, Debug)]
pub struct Keyed {
    pub key: Hash,
    pub inputs: BTreeMap<String, String>,
}

/// The plan of a run.
pub struct Plan {
    pub status: Vec<Status>,
    /// Keys of the instances whose upstream is fresh.
    pub keys: Vec<Option<Keyed>>,
    /// Records of the remote cache for stale instances it holds (reason
    /// [`Reason::CachedRemotely`]), by instance.
    pub remote: Vec<Option<Box<Record>>>,
}

impl Plan {
    pub fn is_stale(&self, id: usize) -> bool {
        matches!(self.status[id], Status::Stale(_))
    }

    pub fn stale_count(&self) -> usize {
        self.status
            .iter()
            .filter(|s| matches!(s, Status::Stale(_)))
            .count()
    }

    pub fn fresh_count(&self) -> usize {
        self.status
            .iter()
            .filter(|s| matches!(s, Status::Fresh(_)))
            .count()
    }
}

/// Computes an instance's key. `upstream` gives the stored hash of output
/// `name` of instance `id`.
pub fn key_of(
    inst: &Instance,
    stat: &StatCache,
    upstream: &dyn Fn(usize, &str) -> Option<Hash>,
) -> Result<Keyed> {
    let mut inputs = BTreeMap::new();
    let mut err = None;
    let mut content = |r: &PathRef| -> Hash {
        let h = match r {
            PathRef::File { path, glob, .. } => stat.path(path, glob.as_deref()).at(path),
            PathRef::Artifact {
                inst: up,
                output,
                label,
            } => upstream(*up, output)
                .ok_or_else(|| Error::Corrupt(format!("no stored output for {label}"))),
        };
        match h {
            Ok(h) => {
                inputs.insert(r.label().to_string(), h.to_hex().to_string());
                h
            }
            Err(e) => {
                err.get_or_insert(e);
                Hash::from_bytes([0; 32])
            }
        }
    };
    let key = encode_key(inst, &mut content);
    match err {
        Some(e) => Err(e),
        None => Ok(Keyed { key, inputs }),
    }
}

/// Version of the key encoding itself; bump to invalidate every key.
const KEY_FORMAT: &[u8] = b"podium-key-1\0";

fn encode_key(inst: &Instance, content: &mut dyn FnMut(&PathRef) -> Hash) -> Hash {
    let op = inst.op();
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(KEY_FORMAT);
    buf.extend_from_slice(op.name().as_bytes());
    buf.push(0);
    buf.extend_from_slice(&op.version().to_le_bytes());
    // `encode` wants a `Fn`; collect the hashes first, in a stable order.
    let mut hashes: BTreeMap<PathRef, Hash> = BTreeMap::new();
    for v in inst.params.values() {
        for p in v.paths() {
            if !hashes.contains_key(p) {
                let h = content(p);
                hashes.insert(p.clone(), h);
            }
        }
    }
    let lookup = |p: &PathRef| *hashes[p].as_bytes();
    Value::encode_table(inst.params.len(), &inst.params, &mut buf, &lookup);
    blake3::hash(&buf)
}

/// Parameters as shown in explanations: the op's, and the `[params]` the
/// stage refers to (as `params.NAME`).
pub fn display_params(inst: &Instance) -> BTreeMap<String, String> {
    let ops = inst
        .params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()));
    let uses = inst
        .uses
        .iter()
        .map(|(k, v)| (format!("params.{k}"), v.to_string()));
    ops.chain(uses).collect()
}

/// Plans `targets` (all instances when `None`), with the instances of the
/// `force`d stages stale whatever their keys.
pub fn plan(
    p: &Pipeline,
    g: &Graph,
    store: &Store,
    stat: &StatCache,
    targets: Option<&[usize]>,
    force: &HashSet<String>,
) -> Result<Plan> {
    let n = p.instances.len();
    let mask = match targets {
        Some(t) => g.upstream_closure(t),
        None => vec![true; n],
    };
    let mut status: Vec<Status> = vec![Status::Skipped; n];
    let mut keys: Vec<Option<Keyed>> = vec![None; n];
    let mut remote: Vec<Option<Box<Record>>> = vec![None; n];
    // One level at a time: an instance's key needs its upstream's records,
    // and the records of one level are read in parallel.
    for level in g.levels() {
        let planned = level
            .par_iter()
            .filter(|&&id| mask[id])
            .map(|&id| plan_one(p, id, &status, &remote, store, stat, force).map(|r| (id, r)))
            .collect::<Result<Vec<_>>>()?;
        // The remote cache, for the level's stale keys all at once.
        let ask: Vec<usize> = planned
            .iter()
            .filter(|(_, (s, k))| {
                k.is_some() && matches!(s, Status::Stale(r) if r.first() != Some(&Reason::Forced))
            })
            .map(|(id, _)| *id)
            .collect();
        for (id, (s, k)) in planned {
            status[id] = s;
            keys[id] = k;
        }
        let asked: Vec<Hash> = ask
            .iter()
            .map(|&id| keys[id].as_ref().unwrap().key)
            .collect();
        for (id, rec) in ask.into_iter().zip(store.remote_records(&asked)?) {
            if let Some(rec) = rec {
                status[id] = Status::Stale(vec![Reason::CachedRemotely]);
                remote[id] = Some(Box::new(rec));
            }
        }
    }
    Ok(Plan {
        status,
        keys,
        remote,
    })
}

/// The status of one instance whose upstream is planned (or held by the
/// remote cache), and its key when it can be known. The remote cache is
/// asked afterwards, for a whole level at once.
fn plan_one(
    p: &Pipeline,
    id: usize,
    status: &[Status],
    remote: &[Option<Box<Record>>],
    store: &Store,
    stat: &StatCache,
    force: &HashSet<String>,
) -> Result<(Status, Option<Keyed>)> {
    let inst = &p.instances[id];
    // An upstream the remote holds is as good as fresh: its outputs' hashes
    // are known, so this instance's key is too.
    let upstream = |d: usize| match &status[d] {
        Status::Fresh(r) => Some(&**r),
        _ => remote[d].as_deref(),
    };
    if let Some(&d) = inst.deps.iter().find(|&&d| upstream(d).is_none()) {
        let pending = Reason::UpstreamPending {
            instance: p.instances[d].name.clone(),
        };
        return Ok((Status::Stale(vec![pending]), None));
    }
    let k = key_of(inst, stat, &|d, output| upstream(d)?.output_hash(output))?;
    let forced = force.contains(&inst.stage_name) || force.contains(&inst.name);
    let s = match (forced, store.record(&k.key)) {
        (false, Some(rec)) => Status::Fresh(Box::new(rec)),
        (true, _) => Status::Stale(vec![Reason::Forced]),
        (false, None) => Status::Stale(explain(inst, &k, store.state(&p.name, &inst.name))),
    };
    Ok((s, Some(k)))
}

/// Why an instance with key `k` is not in the store, compared with its
/// last run.
pub fn explain(inst: &Instance, k: &Keyed, last: Option<Record>) -> Vec<Reason> {
    let Some(last) = last else {
        return vec![Reason::NeverRun];
    };
    if last.key == k.key.to_hex().as_str() {
        return vec![Reason::Missing];
    }
    let mut reasons = Vec::new();
    let op = inst.op();
    if last.op_version != op.version() || last.op != op.name() {
        reasons.push(Reason::OpVersion {
            old: last.op_version,
            new: op.version(),
        });
    }
    let now = display_params(inst);
    let names: std::collections::BTreeSet<&String> = now.keys().chain(last.params.keys()).collect();
    // Manifest params first: they are what the user edited.
    let (manifest, op): (Vec<&String>, Vec<&String>) =
        names.into_iter().partition(|n| n.starts_with("params."));
    let mut edited = HashSet::new();
    for name in manifest.into_iter().chain(op) {
        let (old, new) = (last.params.get(name), now.get(name));
        if old != new {
            // An op parameter written as `${params.X}` changed because X
            // did: said once, as X.
            if let Some(p) = name.strip_prefix("params.") {
                edited.insert(p.to_string());
            } else if inst
                .derived
                .get(name.as_str())
                .is_some_and(|from| from.iter().any(|p| edited.contains(p)))
            {
                continue;
            }
            reasons.push(Reason::Param {
                name: name.clone(),
                old: old.cloned(),
                new: new.cloned(),
            });
        }
    }
    let artifacts: HashSet<&str> = inst
        .params
        .values()
        .flat_map(|v| v.paths())
        .filter(|r| matches!(r, PathRef::Artifact { .. }))
        .map(|r| r.label())
        .collect();
    for (label, h) in &k.inputs {
        if last.inputs.get(label).is_some_and(|old| old != h) {
            reasons.push(if artifacts.contains(label.as_str()) {
                Reason::Upstream {
                    label: label.clone(),
                }
            } else {
                Reason::Input {
                    label: label.clone(),
                }
            });
        }
    }
    if reasons.is_empty() {
        reasons.push(Reason::KeyChanged);
    }
    reasons
}
