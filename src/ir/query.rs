//! Questions the graph, the planner and the command line ask of a checked
//! [`Pipeline`].

use super::*;

/// Help for an output name that is not one of `outputs`: the closest
/// output (by full name or stem), else the list.
pub fn output_help(outputs: &[String], name: &str) -> String {
    if outputs.is_empty() {
        return "it declares no outputs".into();
    }
    let stems: Vec<String> = outputs.iter().map(|o| stem(o)).collect();
    let candidates = outputs.iter().chain(&stems).map(String::as_str);
    crate::diag::did_you_mean(name, candidates)
        .unwrap_or_else(|| format!("outputs: {}", outputs.join(", ")))
}

/// An output's name without its directory and extensions (`oof` for
/// `folds/oof.csv`).
fn stem(o: &str) -> String {
    let base = o.rsplit('/').next().unwrap_or(o);
    match base.find('.') {
        Some(i) if i > 0 => base[..i].to_string(),
        _ => base.to_string(),
    }
}

/// An output by its full name or, when unambiguous, by its stem
/// (`oof` for `oof.csv`).
pub fn resolve_output(outputs: &[String], name: &str) -> Option<String> {
    if outputs.iter().any(|o| o == name) {
        return Some(name.to_string());
    }
    let mut m = outputs.iter().filter(|o| stem(o) == name);
    match (m.next(), m.next()) {
        (Some(o), None) => Some(o.clone()),
        _ => None,
    }
}

impl Pipeline {
    /// A readable dump of the checked pipeline: params, inputs (relative
    /// to the manifest), and every instance with its parameters and reads.
    pub fn dump(&self) -> String {
        use std::fmt::Write;
        let mut s = format!("pipeline {}\n", self.name);
        for (k, v) in &self.params {
            let _ = writeln!(s, "param {k} = {v}");
        }
        for (k, i) in &self.inputs {
            let rel = i.path.strip_prefix(&self.dir).unwrap_or(&i.path);
            let glob = i
                .glob
                .as_deref()
                .map(|g| format!(" glob {g}"))
                .unwrap_or_default();
            let _ = writeln!(s, "input {k} = {}{glob}", rel.display());
        }
        for i in &self.instances {
            let _ = writeln!(
                s,
                "instance {} (op {}, threads {}, gpu {})",
                i.name, i.op, i.resources.threads, i.resources.gpu
            );
            for (k, v) in &i.params {
                let _ = writeln!(s, "  {k} = {v}");
            }
            if !i.outputs.is_empty() {
                let _ = writeln!(s, "  -> {}", i.outputs.join(", "));
            }
            if !i.deps.is_empty() {
                let deps: Vec<&str> = i
                    .deps
                    .iter()
                    .map(|&d| self.instances[d].name.as_str())
                    .collect();
                let _ = writeln!(s, "  reads {}", deps.join(", "));
            }
        }
        s
    }

    pub fn instance_by_name(&self, name: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.name == name)
    }

    /// Instances named by targets (`stage`, `stage[key=value,...]`, a full
    /// instance name), or all when there are none.
    pub fn select_targets(&self, targets: &[String]) -> Result<Vec<usize>, String> {
        if targets.is_empty() {
            return Ok((0..self.instances.len()).collect());
        }
        let mut out = Vec::new();
        for t in targets {
            let (stage, filter) = match t.find('[') {
                Some(i) if t.ends_with(']') => (&t[..i], Some(&t[i + 1..t.len() - 1])),
                _ => (t.as_str(), None),
            };
            let Some(st) = self.stages.iter().find(|s| s.name == stage) else {
                let hint = did_you_mean(stage, self.stages.iter().map(|s| s.name.as_str()))
                    .map(|h| format!(" ({h})"))
                    .unwrap_or_default();
                return Err(format!("no stage `{stage}`{hint}"));
            };
            // Each value as written, and decoded as in instance names.
            let pairs: Vec<(&str, &str, Option<String>)> = filter
                .map(|f| {
                    f.split(',')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.trim(), v.trim(), decode_matrix_value(v.trim())))
                        .collect()
                })
                .unwrap_or_default();
            let before = out.len();
            for &i in &st.instances {
                let inst = &self.instances[i];
                if pairs.iter().all(|(k, v, decoded)| {
                    inst.matrix.iter().any(|(mk, mv)| {
                        mk == k && {
                            let plain = plain(mv);
                            plain == *v || decoded.as_deref() == Some(plain.as_str())
                        }
                    })
                }) {
                    out.push(i);
                }
            }
            if out.len() == before {
                return Err(format!("target `{t}` matches no instance"));
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}
