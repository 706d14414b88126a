//! What names mean where expressions are evaluated: params, inputs and
//! matrix values ([`BasicEnv`]), and other stages' instances and outputs in
//! a stage's parameters ([`StageEnv`]).

use super::check::*;
use super::*;

/// Names visible in params, inputs, matrices and resources.
pub(super) struct BasicEnv<'a> {
    pub(super) params: &'a Value,
    pub(super) inputs: Option<&'a Value>,
}

impl Env for BasicEnv<'_> {
    fn var(&self, name: &str, span: Span) -> Result<EVal<'_>, Diagnostic> {
        match (name, &self.inputs) {
            ("params", _) => Ok(EVal::borrowed(self.params)),
            ("inputs", Some(i)) => Ok(EVal::borrowed(i)),
            ("inputs", None) | ("stages", _) => Err(unknown(
                span,
                format!("`{name}` cannot be used here"),
                if self.inputs.is_none() {
                    "params can refer only to params defined above them".into()
                } else {
                    "matrix values and resources cannot depend on stage outputs".into()
                },
            )),
            _ => Err(unknown(
                span,
                format!("unknown name `{name}`"),
                "names: params, inputs, stages, and the stage's matrix keys".into(),
            )),
        }
    }
    fn stage(&self, name: &str, span: Span) -> Result<StageSel, Diagnostic> {
        Err(unknown(
            span,
            format!("`stages.{name}` cannot be used here"),
            "only stage parameters can refer to stages".into(),
        ))
    }
}

/// Names visible in a stage's parameters.
pub(super) struct StageEnv<'a> {
    pub(super) params: &'a Value,
    pub(super) inputs: &'a Value,
    pub(super) matrix: &'a [(String, Value)],
    pub(super) stage_index: &'a HashMap<String, usize>,
    pub(super) stages: &'a [Stage],
    pub(super) instances: &'a [Instance],
    pub(super) by_matrix: &'a [MatrixIndex],
}

impl Env for StageEnv<'_> {
    fn var(&self, name: &str, span: Span) -> Result<EVal<'_>, Diagnostic> {
        match name {
            "params" => Ok(EVal::borrowed(self.params)),
            "inputs" => Ok(EVal::borrowed(self.inputs)),
            "stages" => Ok(EVal::Stages),
            _ => match self.matrix.iter().find(|(k, _)| k == name) {
                Some((_, v)) => Ok(EVal::borrowed(v)),
                None => {
                    let mut names: Vec<&str> = ROOTS.to_vec();
                    names.extend(self.matrix.iter().map(|(k, _)| k.as_str()));
                    Err(unknown(
                        span,
                        format!("unknown name `{name}`"),
                        did_you_mean(name, names.iter().copied())
                            .unwrap_or_else(|| format!("names here: {}", names.join(", "))),
                    ))
                }
            },
        }
    }

    fn stage(&self, name: &str, span: Span) -> Result<StageSel, Diagnostic> {
        let &i = self.stage_index.get(name).ok_or_else(|| {
            unknown(
                span,
                format!("no stage named `{name}`"),
                did_you_mean(name, self.stage_index.keys().map(String::as_str)).unwrap_or_default(),
            )
        })?;
        Ok(StageSel {
            stage: name.to_string(),
            instances: self.stages[i].instances.clone(),
            many: false,
        })
    }

    fn select(
        &self,
        sel: &StageSel,
        keys: &[(String, Value, Span)],
        span: Span,
    ) -> Result<StageSel, Diagnostic> {
        let si = self.stage_index[&sel.stage];
        let st = &self.stages[si];
        for (k, _, kspan) in keys {
            if !st.matrix_keys.contains(k) {
                return Err(Diagnostic::error(
                    "unknown-reference",
                    format!("stage `{}` has no matrix key `{k}`", st.name),
                )
                .at(*kspan, "not a matrix key")
                .help(if st.matrix_keys.is_empty() {
                    format!("`{}` has no matrix; refer to it without `[...]`", st.name)
                } else {
                    format!(
                        "matrix keys of `{}`: {}",
                        st.name,
                        st.matrix_keys.join(", ")
                    )
                }));
            }
        }
        // The index narrows the candidates (never dropping a match); the
        // exact test below decides.
        let candidates: Vec<usize> = match keys
            .iter()
            .map(|(k, v, _)| self.by_matrix[si].get(&(k.clone(), matrix_value_key(v))))
            .min_by_key(|l| l.map_or(0, |l| l.len()))
        {
            Some(narrow) => narrow
                .map(|l| {
                    l.iter()
                        .copied()
                        .filter(|i| sel.instances.binary_search(i).is_ok())
                        .collect()
                })
                .unwrap_or_default(),
            None => sel.instances.clone(),
        };
        let chosen: Vec<usize> = candidates
            .into_iter()
            .filter(|&i| {
                let inst = &self.instances[i];
                keys.iter().all(|(k, v, _)| {
                    inst.matrix.iter().any(|(mk, mv)| mk == k && (mv == v || matches!((mv.as_f64(), v.as_f64()), (Some(a), Some(b)) if a == b)))
                })
            })
            .collect();
        if chosen.is_empty() {
            let want = keys
                .iter()
                .map(|(k, v, _)| format!("{k}={}", plain(v)))
                .collect::<Vec<_>>()
                .join(",");
            return Err(Diagnostic::error(
                "unknown-reference",
                format!("no instance `{}[{want}]`", st.name),
            )
            .at(span, "matches no instance")
            .help(format!(
                "instances: {}",
                st.instances
                    .iter()
                    .take(8)
                    .map(|&i| self.instances[i].name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let all_keys = st
            .matrix_keys
            .iter()
            .all(|mk| keys.iter().any(|(k, _, _)| k == mk));
        Ok(StageSel {
            stage: sel.stage.clone(),
            instances: chosen,
            many: sel.many || !all_keys,
        })
    }

    fn output(&self, sel: &StageSel, output: &str, span: Span) -> Result<Value, Diagnostic> {
        let st = &self.stages[self.stage_index[&sel.stage]];
        if !sel.many && sel.instances.len() != 1 {
            return Err(Diagnostic::error(
                "unknown-reference",
                format!("stage `{}` has {} instances", st.name, sel.instances.len()),
            )
            .at(span, "which instance?")
            .help(format!(
                "select one with `stages.{0}[{1}=...]` or all with `stages.{0}[*]`",
                st.name,
                st.matrix_keys.first().map(String::as_str).unwrap_or("key")
            )));
        }
        let mut out = Vec::new();
        for &i in &sel.instances {
            let inst = &self.instances[i];
            let name = resolve_output(&inst.outputs, output).ok_or_else(|| {
                // Said of the stage when none of its instances has it, so
                // that every instance reading it meets the same error.
                let whole = st
                    .instances
                    .iter()
                    .all(|&j| resolve_output(&self.instances[j].outputs, output).is_none());
                let who = if whole && st.instances.len() > 1 {
                    format!("stage `{}`", st.name)
                } else {
                    format!("`{}`", inst.name)
                };
                Diagnostic::error(
                    "unknown-reference",
                    format!("{who} has no output `{output}`"),
                )
                .at(span, "unknown output")
                .help(super::query::output_help(&inst.outputs, output))
            })?;
            out.push(Value::Path(Box::new(PathRef::Artifact {
                inst: i,
                label: format!("{}.{name}", inst.name),
                output: name,
            })));
        }
        Ok(if sel.many {
            Value::List(out)
        } else {
            out.pop().unwrap()
        })
    }
}
