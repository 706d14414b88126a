//! The checker: a parsed manifest to a [`Pipeline`], or diagnostics.

use super::env::{BasicEnv, StageEnv};
use super::*;

pub(super) const ROOTS: &[&str] = &["params", "inputs", "stages"];

/// Checks a parsed manifest. Returns the pipeline when no error was found,
/// and every diagnostic either way.
pub fn check(raw: &RawManifest) -> (Option<Pipeline>, Vec<Diagnostic>) {
    let mut cx = Checker {
        raw,
        diags: Vec::new(),
        seen: HashSet::new(),
        dir: absolute(raw.dir()),
        dir_shown: raw.dir().display().to_string(),
        failed: HashSet::new(),
        by_matrix: Vec::new(),
        stage_index: HashMap::new(),
        stopped: false,
        errors: 0,
        failed_inputs: HashSet::new(),
        instance_bytes: 0,
        instance: None,
        groups: HashMap::new(),
        failed_outputs: HashMap::new(),
    };
    let p = cx.run();
    let failed = cx.diags.iter().any(Diagnostic::is_error);
    (if failed { None } else { p }, cx.diags)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

struct Checker<'a> {
    raw: &'a RawManifest,
    diags: Vec<Diagnostic>,
    seen: HashSet<(String, Option<Span>)>,
    dir: PathBuf,
    /// The manifest's directory as the user named it, for messages.
    dir_shown: String,
    /// Stages with errors: stages reading them are not checked further,
    /// which would only repeat the same problem.
    failed: HashSet<String>,
    /// Per checked stage, its instances by matrix key and value.
    by_matrix: Vec<MatrixIndex>,
    /// Checked stages by name: their index in `Pipeline::stages`.
    stage_index: HashMap<String, usize>,
    /// Set after [`crate::diag::MAX_ERRORS`] errors or a value over its limit: nothing
    /// more is checked.
    stopped: bool,
    errors: usize,
    /// Inputs with errors: stages reading them are not checked further.
    failed_inputs: HashSet<String>,
    /// What every instance's parameters weigh so far ([`Value::weight`]).
    instance_bytes: usize,
    /// The matrix instance being checked, if any: its errors are grouped
    /// with the same error of its siblings.
    instance: Option<String>,
    /// Per (code, span) met in the current stage's instances: the index of
    /// the diagnostic kept and the instances that made it.
    groups: HashMap<GroupKey, (usize, Vec<String>)>,
    /// The outputs of stages that make no instances (they have errors), as
    /// far as their parameters tell: references to them are still checked.
    failed_outputs: HashMap<String, std::collections::BTreeSet<String>>,
}

/// The error code and span under which one mistake of many instances meets.
type GroupKey = (&'static str, Option<Span>);

/// A stage's matrix: keys in the order written, each with its values.
struct Matrix {
    axes: Vec<(String, Vec<Value>)>,
    /// The number of combinations (1 without a matrix).
    len: usize,
}

impl Matrix {
    /// Combination `i`, in key order then value order: the last key varies
    /// fastest.
    fn combo(&self, mut i: usize) -> Vec<(String, Value)> {
        let mut c = Vec::with_capacity(self.axes.len());
        for (k, values) in self.axes.iter().rev() {
            c.push((k.clone(), values[i % values.len()].clone()));
            i /= values.len();
        }
        c.reverse();
        c
    }
}

/// A stage's instances by `(matrix key, canonical value)`, in id order, so
/// that `stages.train[fold=fold]` from each of F instances costs a lookup,
/// not a scan of train's F instances.
pub(super) type MatrixIndex = HashMap<(String, String), Vec<usize>>;

/// A key under which values that select the same instances meet: numbers
/// by value (`1` and `1.0` alike), anything else by type and text.
pub(super) fn matrix_value_key(v: &Value) -> String {
    match v.as_f64() {
        Some(f) => format!("n:{}", (f + 0.0).to_bits()),
        None => format!("{}:{}", v.type_name(), plain(v)),
    }
}

/// The largest value one expression may make.
const MAX_VALUE_BYTES: usize = 16 << 20;
/// The most all `[params]` together may hold once evaluated.
const MAX_PARAMS_BYTES: usize = 64 << 20;
/// The most every instance's parameters together may hold.
const MAX_INSTANCES_BYTES: usize = 256 << 20;

impl Checker<'_> {
    fn push(&mut self, d: Diagnostic) {
        if self.stopped {
            return;
        }
        // The same mistake in every instance of a matrix stage is one error
        // that names the instances.
        let key = (d.code, d.span);
        if let Some(inst) = &self.instance
            && let Some((_, names)) = self.groups.get_mut(&key)
        {
            names.push(inst.clone());
            return;
        }
        if self.seen.insert((d.message.clone(), d.span)) {
            self.errors += d.is_error() as usize;
            if let Some(inst) = &self.instance {
                self.groups
                    .insert(key, (self.diags.len(), vec![inst.clone()]));
            }
            self.diags.push(d);
            if self.errors >= crate::diag::MAX_ERRORS {
                self.diags.push(crate::diag::too_many_errors());
                self.stopped = true;
            }
        }
    }

    /// An op's own checks' errors, each at the value of its parameter (or
    /// the stage's name for one written nowhere).
    fn param_errors(
        &mut self,
        errs: impl IntoIterator<Item = crate::params::ParamError>,
        spans: &[(&str, Span)],
        stage: Span,
    ) {
        for e in errs {
            let span = span_of(spans, &e.param).unwrap_or(stage);
            self.push(
                Diagnostic::error("invalid-param", format!("`{}`: {}", e.param, e.message))
                    .at(span, format!("in `{}`", e.param)),
            );
        }
    }

    /// Ends a stage's grouping: an error met in several instances says in
    /// which.
    fn finish_groups(&mut self) {
        self.instance = None;
        for (_, (i, names)) in std::mem::take(&mut self.groups) {
            if names.len() < 2 {
                continue;
            }
            const SHOWN: usize = 6;
            let mut list = names[..names.len().min(SHOWN)].join(", ");
            if names.len() > SHOWN {
                list.push_str(&format!(" and {} more", names.len() - SHOWN));
            }
            let note = format!("in {} instances: {list}", names.len());
            let d = &mut self.diags[i];
            d.help = Some(match d.help.take() {
                Some(h) => format!("{h}\n{note}"),
                None => note,
            });
        }
    }

    /// Whether a value reads a stage or an input that has errors: it cannot
    /// be checked, and its problems were already said.
    fn poisoned(&self, rv: &RawValue) -> bool {
        let mut refs = Vec::new();
        walk_raw(rv, &mut |e| collect_stage_refs(e, &mut refs));
        refs.iter().any(|(n, _)| self.failed.contains(n))
            || (!self.failed_inputs.is_empty()
                && refs_of([rv], "inputs")
                    .iter()
                    .any(|n| self.failed_inputs.contains(n)))
    }

    /// In a value that cannot be evaluated (it reads a stage with errors),
    /// the outputs it names that the stage will not have.
    fn check_failed_outputs(&mut self, rv: &RawValue) {
        let mut refs = Vec::new();
        walk_raw(rv, &mut |e| collect_output_refs(e, &mut refs));
        for (stage, output, span) in refs {
            let Some(outs) = self.failed_outputs.get(&stage) else {
                continue;
            };
            let outs: Vec<String> = outs.iter().cloned().collect();
            if crate::ir::query::resolve_output(&outs, &output).is_none() {
                self.push(
                    Diagnostic::error(
                        "unknown-reference",
                        format!("stage `{stage}` has no output `{output}`"),
                    )
                    .at(span, "unknown output")
                    .help(crate::ir::query::output_help(&outs, &output)),
                );
            }
        }
    }

    /// The span of the `--set` flag that gave a value, when the value is
    /// exactly `${params.NAME}` and that param was set on the command line.
    fn override_span(&self, rv: &RawValue) -> Option<Span> {
        let RawKind::Str(t) = &rv.kind else {
            return None;
        };
        let ExprKind::Field(root, name) = &t.single()?.kind else {
            return None;
        };
        if !matches!(&root.kind, ExprKind::Ident(n) if n == "params") {
            return None;
        }
        let (_, v) = self.raw.params.iter().find(|(k, _)| &k.name == name)?;
        (v.span.src != self.raw.src).then_some(v.span)
    }

    fn run(&mut self) -> Option<Pipeline> {
        let raw = self.raw;
        let name = raw.name.as_ref().map(|n| n.0.clone()).unwrap_or_else(|| {
            raw.path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "pipeline".into())
        });
        let params = self.params();
        let inputs = self.inputs(&params);
        let input_values: BTreeMap<String, Value> = inputs
            .iter()
            .map(|(k, i)| {
                (
                    k.clone(),
                    Value::Path(Box::new(PathRef::File {
                        path: i.path.clone(),
                        glob: i.glob.clone(),
                        label: format!("inputs.{k}"),
                    })),
                )
            })
            .collect();
        let mut p = Pipeline {
            name,
            description: raw.description.clone(),
            manifest: absolute(&raw.path),
            dir: self.dir.clone(),
            params,
            inputs,
            stages: Vec::new(),
            instances: Vec::new(),
        };
        let order = self.stage_order();
        let params_v = Value::Table(p.params.clone());
        let inputs_v = Value::Table(input_values);
        for si in order {
            if self.stopped {
                break;
            }
            self.stage(&raw.stages[si], &mut p, &params_v, &inputs_v);
        }
        Some(p)
    }

    fn params(&mut self) -> BTreeMap<String, Value> {
        // A table that grows as params are checked: each param sees those above it.
        let mut done = Value::Table(BTreeMap::new());
        let mut failed = HashSet::new();
        let mut total = 0usize;
        let raw = self.raw;
        for (k, v) in &raw.params {
            if ROOTS.contains(&k.name.as_str()) || k.name.contains(['[', ']', '.']) {
                self.push(
                    Diagnostic::error("bad-name", format!("`{}` cannot be a param name", k.name))
                        .at(k.span, "reserved"),
                );
                continue;
            }
            if self.stopped {
                break;
            }
            // A param built on one that failed fails quietly: its error was said.
            if !failed.is_empty() && param_refs_of([v]).iter().any(|r| failed.contains(r)) {
                failed.insert(k.name.clone());
                continue;
            }
            let env = BasicEnv {
                params: &done,
                inputs: None,
            };
            let val = self.value(v, &env).and_then(|val| {
                total = total.saturating_add(val.weight());
                if total > MAX_PARAMS_BYTES {
                    self.push(
                        Diagnostic::error(
                            "too-large",
                            format!(
                                "[params] evaluate to more than {} MiB",
                                MAX_PARAMS_BYTES >> 20
                            ),
                        )
                        .at(v.span, "the params up to here reach the limit")
                        .help("a param that repeats the one above it grows with every line"),
                    );
                    self.stopped = true;
                    return None;
                }
                Some(val)
            });
            match (val, &mut done) {
                (Some(val), Value::Table(done)) => {
                    done.insert(k.name.clone(), val);
                }
                _ => {
                    failed.insert(k.name.clone());
                }
            }
        }
        match done {
            Value::Table(done) => done,
            _ => unreachable!("params is a table"),
        }
    }

    fn inputs(&mut self, params: &BTreeMap<String, Value>) -> BTreeMap<String, Input> {
        let mut out = BTreeMap::new();
        let params = Value::Table(params.clone());
        let env = BasicEnv {
            params: &params,
            inputs: None,
        };
        for i in &self.raw.inputs {
            let Some(pv) = self.value(&i.path, &env) else {
                continue;
            };
            let Some(path) = pv.as_str() else {
                self.push(
                    Diagnostic::error(
                        "wrong-type",
                        format!("`inputs.{}.path` must be a string", i.name.name),
                    )
                    .at(
                        i.path.span,
                        format!("this is {}", crate::value::a(pv.type_name())),
                    ),
                );
                continue;
            };
            let full = self.dir.join(path);
            if let Some((why, label)) = unreachable_path(&full) {
                self.failed_inputs.insert(i.name.name.clone());
                self.push(
                    Diagnostic::error(
                        "missing-input",
                        format!("input `{}`: `{path}` {why}", i.name.name),
                    )
                    .at(i.path.span, label)
                    .help(format!(
                        "paths are relative to the manifest's directory, {}",
                        self.dir_shown
                    )),
                );
                continue;
            }
            let glob = match &i.glob {
                None => None,
                Some(g) => {
                    let Some(gv) = self.value(g, &env) else {
                        continue;
                    };
                    let Some(gs) = gv.as_str().map(str::to_string) else {
                        self.push(
                            Diagnostic::error("wrong-type", "`glob` must be a string")
                                .at(g.span, "not a string"),
                        );
                        continue;
                    };
                    if let Err(e) = globset::Glob::new(&gs) {
                        self.push(
                            Diagnostic::error("bad-glob", format!("invalid glob: {e}"))
                                .at(g.span, "invalid glob"),
                        );
                        continue;
                    }
                    if !full.is_dir() {
                        self.push(
                            Diagnostic::error("bad-glob", "`glob` applies to a directory input")
                                .at(g.span, format!("`{path}` is a file")),
                        );
                        continue;
                    }
                    Some(gs)
                }
            };
            out.insert(
                i.name.name.clone(),
                Input {
                    path: full,
                    glob,
                    span: i.path.span,
                },
            );
        }
        out
    }

    /// Orders stages so that each comes after the stages it references;
    /// reports unknown stages and cycles (cyclic stages are left out).
    fn stage_order(&mut self) -> Vec<usize> {
        let raw = self.raw;
        let index: HashMap<&str, usize> = raw
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.name.as_str(), i))
            .collect();
        let mut g: DiGraph<(), ()> = DiGraph::new();
        for _ in 0..raw.stages.len() {
            g.add_node(());
        }
        let mut bad = HashSet::new();
        for (i, st) in raw.stages.iter().enumerate() {
            for (name, span) in stage_refs(st) {
                match index.get(name.as_str()) {
                    Some(&j) => {
                        g.update_edge(NodeIndex::new(j), NodeIndex::new(i), ());
                    }
                    None => {
                        bad.insert(i);
                        self.push(
                            Diagnostic::error(
                                "unknown-reference",
                                format!("no stage named `{name}`"),
                            )
                            .at(span, "unknown stage")
                            .help(
                                did_you_mean(&name, index.keys().copied()).unwrap_or_else(|| {
                                    format!(
                                        "stages: {}",
                                        raw.stages
                                            .iter()
                                            .map(|s| s.name.name.as_str())
                                            .collect::<Vec<_>>()
                                            .join(", ")
                                    )
                                }),
                            ),
                        );
                    }
                }
            }
        }
        for members in crate::topo::cycles(&g) {
            let cycle = crate::topo::shortest_cycle(&g, &members);
            let names: Vec<&str> = cycle
                .iter()
                .map(|&i| raw.stages[i].name.name.as_str())
                .collect();
            let first = &raw.stages[members[0]];
            self.push(
                Diagnostic::error("cycle", format!("dependency cycle: {}", names.join(" → ")))
                    .at(
                        first.name.span,
                        "this stage depends on itself through the cycle",
                    )
                    .help("a stage cannot read, directly or through others, an output of its own"),
            );
            bad.extend(members);
        }
        // The earliest stage in the manifest first.
        let order = crate::topo::stable_order(&g);
        // Stages downstream of a bad one would only report follow-on errors.
        let mut skip = bad;
        for &i in &order {
            if g.neighbors_directed(NodeIndex::new(i), petgraph::Incoming)
                .any(|j| skip.contains(&j.index()))
            {
                skip.insert(i);
            }
        }
        order.into_iter().filter(|i| !skip.contains(i)).collect()
    }

    fn stage(&mut self, st: &RawStage, p: &mut Pipeline, params: &Value, inputs: &Value) {
        let before = self.diags.len();
        // A stage reading a stage or input with errors is still checked, all
        // but the values that read them, so that one `check` says every
        // mistake that does not follow from another; it makes no instances.
        let shadow = st
            .fields
            .iter()
            .map(|(_, v)| v)
            .chain(st.resources.iter())
            .chain(st.matrix.iter().map(|(_, v)| v))
            .any(|v| self.poisoned(v));
        // Out of `self` while the stage is checked, which borrows `self` mutably.
        let mut by_matrix = std::mem::take(&mut self.by_matrix);
        let mut stage_index = std::mem::take(&mut self.stage_index);
        self.stage_inner(
            st,
            p,
            params,
            inputs,
            &mut by_matrix,
            &mut stage_index,
            shadow,
        );
        self.finish_groups();
        self.by_matrix = by_matrix;
        self.stage_index = stage_index;
        if shadow || self.diags[before..].iter().any(Diagnostic::is_error) {
            self.failed.insert(st.name.name.clone());
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn stage_inner(
        &mut self,
        st: &RawStage,
        p: &mut Pipeline,
        params: &Value,
        inputs: &Value,
        by_matrix: &mut Vec<MatrixIndex>,
        stage_index: &mut HashMap<String, usize>,
        shadow: bool,
    ) {
        let Some((op_name, op_span)) = &st.op else {
            self.push(
                Diagnostic::error(
                    "missing-key",
                    format!("stage `{}` has no `op`", st.name.name),
                )
                .at(st.name.span, "needs `op = \"...\"`")
                .help(format!("ops: {}", op_names())),
            );
            return;
        };
        let Some(op) = ops::get(op_name) else {
            self.push(
                Diagnostic::error("unknown-op", format!("unknown op `{op_name}`"))
                    .at(*op_span, "no such op")
                    .help(
                        did_you_mean(op_name, ops::all().iter().map(|o| o.name()))
                            .unwrap_or_else(|| format!("ops: {}", op_names())),
                    ),
            );
            return;
        };
        if st.name.name.contains(['[', ']', '.', '/', '=', ',']) || st.name.name.is_empty() {
            self.push(
                Diagnostic::error(
                    "bad-name",
                    format!("`{}` cannot be a stage name", st.name.name),
                )
                .at(st.name.span, "use letters, digits, `_` and `-`"),
            );
            return;
        }
        // Unknown op parameters: reported, then the known ones are checked.
        let specs = op.params();
        // Whether the stage may make instances; if not, its values are
        // still checked.
        let mut ok = !shadow;
        let mut missing = false;
        for k in st.fields.iter().map(|(k, _)| k).chain(&st.broken) {
            if !specs.iter().any(|s| s.name == k.name) {
                ok = false;
                let mut known: Vec<&str> = specs.iter().map(|s| s.name).collect();
                known.extend(STAGE_KEYS);
                self.push(
                    Diagnostic::error(
                        "unknown-param",
                        format!("op `{op_name}` has no parameter `{}`", k.name),
                    )
                    .at(k.span, "unknown parameter")
                    .help(
                        did_you_mean(&k.name, known.iter().copied()).unwrap_or_else(|| {
                            if known.len() <= 12 {
                                format!("parameters: {}", known.join(", "))
                            } else {
                                format!(
                                    "`podium op {op_name} --list` lists its {} parameters (besides {})",
                                    specs.len(),
                                    STAGE_KEYS.join(", ")
                                )
                            }
                        }),
                    ),
                );
            }
        }
        for s in specs.iter().filter(|s| s.default.is_none()) {
            if st.broken.iter().any(|k| k.name == s.name) {
                ok = false;
            } else if !st.fields.iter().any(|(k, _)| k.name == s.name) {
                ok = false;
                missing = true;
                self.push(
                    Diagnostic::error(
                        "missing-param",
                        format!("stage `{}` needs parameter `{}`", st.name.name, s.name),
                    )
                    .at(st.name.span, format!("`{}` is missing", s.name))
                    .help(format!("{}: {}", s.name, s.help)),
                );
            }
        }
        if shadow && st.matrix.iter().any(|(_, v)| self.poisoned(v)) {
            return;
        }
        let Some(matrix) = self.matrix(st, params, inputs) else {
            return;
        };
        let stage_idx = p.stages.len();
        let resources = match &st.resources {
            Some(r) if shadow && self.poisoned(r) => Resources::default(),
            _ => self.resources(st, params, inputs),
        };
        let mut stage = Stage {
            name: st.name.name.clone(),
            op: op_name.clone(),
            description: st.description.clone(),
            span: st.name.span,
            matrix_keys: st.matrix.iter().map(|(k, _)| k.name.clone()).collect(),
            instances: Vec::new(),
        };
        // One copy for all the stage's instances, which may be a million.
        let uses = std::sync::Arc::new(
            param_refs(st)
                .into_iter()
                .filter_map(|n| p.params.get(&n).map(|v| (n, v.clone())))
                .collect::<BTreeMap<String, Value>>(),
        );
        let derived = std::sync::Arc::new(
            st.fields
                .iter()
                .map(|(k, rv)| (k.name.clone(), param_refs_of([rv]).into_iter().collect()))
                .filter(|(_, refs): &(String, Vec<String>)| !refs.is_empty())
                .collect::<BTreeMap<String, Vec<String>>>(),
        );
        // Instances declare the same outputs, as a rule: kept once.
        let mut last_outputs: Option<std::sync::Arc<[String]>> = None;
        p.instances.reserve(matrix.len);
        stage.instances.reserve_exact(matrix.len);
        for ci in 0..matrix.len {
            let combo = matrix.combo(ci);
            let name = if combo.is_empty() {
                st.name.name.clone()
            } else {
                format!("{}[{}]", st.name.name, matrix_label(&combo))
            };
            let env = StageEnv {
                params,
                inputs,
                matrix: &combo,
                stage_index,
                stages: &p.stages,
                instances: &p.instances,
                by_matrix,
            };
            if !combo.is_empty() {
                self.instance = Some(name.clone());
            }
            let mut params_out = Params::new();
            let mut spans: Vec<(&str, Span)> = Vec::with_capacity(specs.len());
            // Parameters whose value could not be made: op-level checks run
            // without them (on their defaults) where they have defaults.
            let mut unset: Vec<&str> = Vec::new();
            for spec in specs {
                let (val, span) = match st.fields.iter().find(|(k, _)| k.name == spec.name) {
                    Some((_, rv)) if shadow && self.poisoned(rv) => {
                        self.check_failed_outputs(rv);
                        unset.push(spec.name);
                        continue;
                    }
                    Some((_, rv)) => match self.value(rv, &env) {
                        Some(v) => (v, rv.span),
                        None => {
                            unset.push(spec.name);
                            continue;
                        }
                    },
                    None if missing && spec.default.is_none() => continue,
                    None if st.broken.iter().any(|k| k.name == spec.name) => {
                        unset.push(spec.name);
                        continue;
                    }
                    None => (
                        spec.default_value().expect("required params checked above"),
                        st.name.span,
                    ),
                };
                // "" means "not given": only for a path that may be left out.
                if spec.kind == ParamKind::Path
                    && spec.default.is_none()
                    && val.as_str() == Some("")
                {
                    self.push(
                        Diagnostic::error(
                            "missing-input",
                            format!("parameter `{}` needs a path", spec.name),
                        )
                        .at(span, "empty"),
                    );
                    unset.push(spec.name);
                    continue;
                }
                // A value that is a `--set` param is blamed on the flag.
                let blame = st
                    .fields
                    .iter()
                    .find(|(k, _)| k.name == spec.name)
                    .and_then(|(_, rv)| self.override_span(rv))
                    .unwrap_or(span);
                match self.typed(spec.kind, val, blame, spec.name) {
                    Some(v) => {
                        self.instance_bytes = self.instance_bytes.saturating_add(v.weight());
                        if self.instance_bytes > MAX_INSTANCES_BYTES {
                            self.push(
                                Diagnostic::error(
                                    "too-large",
                                    format!(
                                        "the stages' parameters evaluate to more than {} MiB",
                                        MAX_INSTANCES_BYTES >> 20
                                    ),
                                )
                                .at(span, "the parameters up to here reach the limit")
                                .help("a large param interpolated into many stages or instances is copied into each"),
                            );
                            self.stopped = true;
                            return;
                        }
                        params_out.insert(spec.name, v);
                        spans.push((spec.name, span));
                    }
                    None => unset.push(spec.name),
                }
            }
            if missing {
                continue;
            }
            if !unset.is_empty() || !ok {
                // The op's own checks on the values that were made, the
                // others at their defaults; only their errors are said.
                let mut trial = params_out;
                for spec in specs.iter().filter(|s| unset.contains(&s.name)) {
                    match spec.default_value() {
                        Some(v) => {
                            trial.insert(spec.name, v);
                        }
                        None => break,
                    }
                }
                if trial.len() != specs.len() {
                    continue;
                }
                if let Some(outs) = op.outputs_of(&trial) {
                    self.failed_outputs
                        .entry(st.name.name.clone())
                        .or_default()
                        .extend(outs);
                }
                if let Err(errs) = op.check(&trial) {
                    let errs = errs
                        .into_iter()
                        .filter(|e| !unset.contains(&e.param.as_str()));
                    self.param_errors(errs, &spans, st.name.span);
                }
                continue;
            }
            let outputs = match op.check(&params_out) {
                Ok(o) => match &last_outputs {
                    Some(l) if **l == *o => l.clone(),
                    _ => {
                        let o: std::sync::Arc<[String]> = o.into();
                        last_outputs = Some(o.clone());
                        o
                    }
                },
                Err(errs) => {
                    self.param_errors(errs, &spans, st.name.span);
                    continue;
                }
            };
            params_out.shrink_to_fit();
            let mut deps: Vec<usize> = params_out
                .values()
                .flat_map(|v| v.paths())
                .filter_map(|r| match r {
                    PathRef::Artifact { inst, .. } => Some(*inst),
                    PathRef::File { .. } => None,
                })
                .collect();
            deps.sort();
            deps.dedup();
            let id = p.instances.len();
            stage.instances.push(id);
            p.instances.push(Instance {
                id,
                stage: stage_idx,
                stage_name: st.name.name.clone(),
                name,
                matrix: combo,
                op: op.name(),
                params: params_out,
                outputs,
                deps,
                resources,
                uses: uses.clone(),
                derived: derived.clone(),
            });
        }
        if !ok {
            return;
        }
        let mut index = MatrixIndex::new();
        for &id in &stage.instances {
            for (k, v) in &p.instances[id].matrix {
                index
                    .entry((k.clone(), matrix_value_key(v)))
                    .or_default()
                    .push(id);
            }
        }
        by_matrix.push(index);
        stage_index.insert(stage.name.clone(), p.stages.len());
        p.stages.push(stage);
    }

    /// The matrix's axes: each key with its values. Combinations are made
    /// one at a time by [`Matrix::combo`], never all at once.
    fn matrix(&mut self, st: &RawStage, params: &Value, inputs: &Value) -> Option<Matrix> {
        let env = BasicEnv {
            params,
            inputs: Some(inputs),
        };
        let mut axes: Vec<(String, Vec<Value>)> = Vec::new();
        let mut len: usize = 1;
        let mut ok = true;
        for (k, rv) in &st.matrix {
            if ROOTS.contains(&k.name.as_str()) || crate::expr::FUNCTIONS.contains(&k.name.as_str())
            {
                self.push(
                    Diagnostic::error(
                        "matrix-clash",
                        format!("matrix key `{}` clashes with a built-in name", k.name),
                    )
                    .at(k.span, "reserved name")
                    .help(format!(
                        "reserved: {}, {}",
                        ROOTS.join(", "),
                        crate::expr::FUNCTIONS.join(", ")
                    )),
                );
                ok = false;
                continue;
            }
            let Some(v) = self.value(rv, &env) else {
                ok = false;
                continue;
            };
            let Value::List(items) = v else {
                self.push(
                    Diagnostic::error("wrong-type", format!("matrix `{}` must be a list", k.name))
                        .at(
                            rv.span,
                            format!("this is {}", crate::value::a(v.type_name())),
                        )
                        .help("for example `[0, 1, 2]` or `\"${range(5)}\"`"),
                );
                ok = false;
                continue;
            };
            if items.is_empty() {
                self.push(
                    Diagnostic::error("wrong-type", format!("matrix `{}` is empty", k.name))
                        .at(rv.span, "no values"),
                );
                ok = false;
                continue;
            }
            if let Some(bad) = items.iter().find(|v| {
                !matches!(
                    v,
                    Value::Int(_) | Value::Str(_) | Value::Bool(_) | Value::Float(_)
                )
            }) {
                self.push(
                    Diagnostic::error(
                        "wrong-type",
                        format!(
                            "matrix `{}` values must be numbers, strings or booleans",
                            k.name
                        ),
                    )
                    .at(
                        rv.span,
                        format!("contains {}", crate::value::a(bad.type_name())),
                    ),
                );
                ok = false;
                continue;
            }
            // Two instances share a name exactly when, on some key, two values
            // share a label (`1` and `"1"`, say): checked per key, not per name.
            let mut labels = HashSet::new();
            if let Some(dup) = items
                .iter()
                .find(|v| !labels.insert(encode_matrix_value(&plain(v))))
            {
                self.push(
                    Diagnostic::error(
                        "matrix-clash",
                        format!(
                            "two instances would both be named `{}[{}{}={}{}]`",
                            st.name.name,
                            if st.matrix.len() > 1 { "…," } else { "" },
                            k.name,
                            encode_matrix_value(&plain(dup)),
                            if st.matrix.len() > 1 { ",…" } else { "" },
                        ),
                    )
                    .at(rv.span, "a matrix value repeats"),
                );
                ok = false;
                continue;
            }
            len = len.saturating_mul(items.len());
            if len > 1_000_000 {
                self.push(
                    Diagnostic::error(
                        "matrix-clash",
                        "matrix has more than 1,000,000 combinations",
                    )
                    .at(rv.span, "too many"),
                );
                return None;
            }
            axes.push((k.name.clone(), items));
        }
        ok.then_some(Matrix { axes, len })
    }

    fn resources(&mut self, st: &RawStage, params: &Value, inputs: &Value) -> Resources {
        let mut r = Resources::default();
        let Some(rv) = &st.resources else { return r };
        let env = BasicEnv {
            params,
            inputs: Some(inputs),
        };
        let RawKind::Table(entries) = &rv.kind else {
            self.push(
                Diagnostic::error("wrong-type", "`resources` must be a table")
                    .at(rv.span, "e.g. { threads = 2, gpu = 1 }"),
            );
            return r;
        };
        for (k, v) in entries {
            let Some(val) = self.value(v, &env) else {
                continue;
            };
            match k.name.as_str() {
                "mem" => match super::parse_mem_mib(&val) {
                    Some(m) => r.mem_mib = Some(m),
                    None => self.push(
                        Diagnostic::error(
                            "wrong-type",
                            "`resources.mem` must be a size such as \"16G\" or \"512M\" (an integer is MiB)",
                        )
                        .at(v.span, format!("this is {val}")),
                    ),
                },
                "time" => match super::parse_time_s(&val) {
                    Some(t) => r.time_s = Some(t),
                    None => self.push(
                        Diagnostic::error(
                            "wrong-type",
                            "`resources.time` must be a wall time such as \"2h\", \"90m\", \"1d12h\" or \"04:00:00\" (an integer is minutes)",
                        )
                        .at(v.span, format!("this is {val}")),
                    ),
                },
                "threads" | "gpu" => {
                    let n = match val.as_int() {
                        Some(n) if n >= 0 => n as usize,
                        _ => {
                            self.push(
                                Diagnostic::error(
                                    "wrong-type",
                                    format!("`resources.{}` must be a non-negative integer", k.name),
                                )
                                .at(v.span, format!("this is {val}")),
                            );
                            continue;
                        }
                    };
                    match k.name.as_str() {
                        "threads" if n >= 1 => r.threads = n,
                        "threads" => self.push(
                            Diagnostic::error("wrong-type", "`resources.threads` must be at least 1")
                                .at(v.span, "zero"),
                        ),
                        _ => r.gpu = n,
                    }
                }
                _ => self.push(
                    Diagnostic::error("unknown-key", format!("unknown resource `{}`", k.name))
                        .at(k.span, "unknown")
                        .help("resources: threads, gpu, mem, time"),
                ),
            }
        }
        r
    }

    fn value(&mut self, rv: &RawValue, env: &dyn Env) -> Option<Value> {
        match &rv.kind {
            RawKind::Bool(b) => Some(Value::Bool(*b)),
            RawKind::Int(i) => Some(Value::Int(*i)),
            RawKind::Float(f) => Some(Value::Float(*f)),
            RawKind::Str(t) => self.template(t, rv.span, env),
            RawKind::Array(items) => {
                let mut out = Vec::new();
                let mut ok = true;
                for it in items {
                    match self.value(it, env) {
                        Some(v) => out.push(v),
                        None => ok = false,
                    }
                }
                ok.then_some(Value::List(out))
            }
            RawKind::Table(entries) => {
                let mut out = BTreeMap::new();
                let mut ok = true;
                for (k, v) in entries {
                    match self.value(v, env) {
                        Some(v) => {
                            out.insert(k.name.clone(), v);
                        }
                        None => ok = false,
                    }
                }
                ok.then_some(Value::Table(out))
            }
        }
    }

    fn template(&mut self, t: &Template, span: Span, env: &dyn Env) -> Option<Value> {
        match eval_template(t, env) {
            Ok(v) if v.weight() > MAX_VALUE_BYTES => {
                self.push(
                    Diagnostic::error(
                        "too-large",
                        format!("this value is larger than {} MiB", MAX_VALUE_BYTES >> 20),
                    )
                    .at(span, "too large"),
                );
                None
            }
            Ok(v) => Some(v),
            Err(d) => {
                self.push(d);
                None
            }
        }
    }

    /// Checks a value against a parameter kind; turns string paths into
    /// workspace paths (which must exist).
    fn typed(&mut self, kind: ParamKind, v: Value, span: Span, name: &str) -> Option<Value> {
        if !kind.accepts(&v) {
            let message = match kind {
                ParamKind::Enum(vs) => {
                    format!(
                        "parameter `{name}` must be one of {}, not {v}",
                        vs.join(", ")
                    )
                }
                k => format!(
                    "parameter `{name}` must be {}, not {v}",
                    crate::value::a(&k.describe())
                ),
            };
            let help = match (kind, &v) {
                (ParamKind::Enum(vs), Value::Str(s)) => did_you_mean(s, vs.iter().copied()),
                (ParamKind::Enum(_), _) => None,
                (k, _) => Some(format!("expected {}", crate::value::a(&k.describe()))),
            };
            let mut d = Diagnostic::error("wrong-type", message)
                .at(span, format!("this is {}", crate::value::a(v.type_name())));
            if let Some(h) = help {
                d = d.help(h);
            }
            self.push(d);
            return None;
        }
        match kind {
            ParamKind::Path => self.path(v, span),
            ParamKind::Paths | ParamKind::PathList => match v {
                Value::List(items) => {
                    let mut out = Vec::new();
                    for it in items {
                        out.push(self.path(it, span)?);
                    }
                    Some(Value::List(out))
                }
                Value::Table(t) => {
                    let mut out = BTreeMap::new();
                    for (k, it) in t {
                        out.insert(k, self.path(it, span)?);
                    }
                    Some(Value::Table(out))
                }
                other => Some(Value::List(vec![self.path(other, span)?])),
            },
            _ => Some(v),
        }
    }

    fn path(&mut self, v: Value, span: Span) -> Option<Value> {
        match v {
            // The empty string: an optional path not given.
            Value::Str(s) if s.is_empty() => Some(Value::Str(s)),
            Value::Str(s) => {
                let full = self.dir.join(&s);
                if let Some((why, label)) = unreachable_path(&full) {
                    self.push(
                        Diagnostic::error("missing-input", format!("`{s}` {why}"))
                            .at(span, label)
                            .help(format!(
                                "paths are relative to the manifest's directory, {}",
                                self.dir_shown
                            )),
                    );
                    return None;
                }
                Some(Value::Path(Box::new(PathRef::File {
                    path: full,
                    glob: None,
                    label: s,
                })))
            }
            other => Some(other),
        }
    }
}

/// Why a path named in the manifest cannot be read, with a short label;
/// `None` when it can.
fn unreachable_path(full: &Path) -> Option<(String, &'static str)> {
    let e = std::fs::metadata(full).err()?;
    let link = std::fs::symlink_metadata(full).is_ok_and(|m| m.file_type().is_symlink());
    Some(if e.raw_os_error() == Some(libc::ELOOP) {
        (
            "is a symbolic link loop".into(),
            "a link that leads back to itself",
        )
    } else if link && e.kind() == std::io::ErrorKind::NotFound {
        let to = std::fs::read_link(full)
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        (
            format!("is a symbolic link to `{to}`, which does not exist"),
            "dangling symbolic link",
        )
    } else if e.kind() == std::io::ErrorKind::NotFound {
        ("does not exist".into(), "no such file or directory")
    } else {
        (format!("cannot be read: {e}"), "unreadable")
    })
}

/// Where a parameter was written.
fn span_of(spans: &[(&str, Span)], param: &str) -> Option<Span> {
    spans.iter().find(|(n, _)| *n == param).map(|(_, s)| *s)
}

fn op_names() -> String {
    ops::all()
        .iter()
        .map(|o| o.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every `params.NAME` a stage mentions.
fn param_refs(st: &RawStage) -> std::collections::BTreeSet<String> {
    root_refs(st, "params")
}

/// Every `ROOT.NAME` (`params.lr`, `inputs.images`) a stage mentions.
fn root_refs(st: &RawStage, root: &str) -> std::collections::BTreeSet<String> {
    let values = st
        .fields
        .iter()
        .map(|(_, v)| v)
        .chain(st.resources.iter())
        .chain(st.matrix.iter().map(|(_, v)| v));
    refs_of(values, root)
}

/// Every `params.NAME` that `values` mention.
fn param_refs_of<'a>(
    values: impl IntoIterator<Item = &'a RawValue>,
) -> std::collections::BTreeSet<String> {
    refs_of(values, "params")
}

/// Every `ROOT.NAME` that `values` mention.
fn refs_of<'a>(
    values: impl IntoIterator<Item = &'a RawValue>,
    root: &str,
) -> std::collections::BTreeSet<String> {
    fn collect(e: &Expr, root: &str, out: &mut std::collections::BTreeSet<String>) {
        let is_params = |b: &Expr| matches!(&b.kind, ExprKind::Ident(n) if n == root);
        match &e.kind {
            ExprKind::Field(b, name) if is_params(b) => {
                out.insert(name.clone());
            }
            ExprKind::Index(b, i) if is_params(b) => {
                if let ExprKind::Lit(Value::Str(name)) = &i.kind {
                    out.insert(name.clone());
                }
            }
            _ => {}
        }
        for child in children(e) {
            collect(child, root, out);
        }
    }
    let mut out = std::collections::BTreeSet::new();
    for v in values {
        walk_raw(v, &mut |e| collect(e, root, &mut out));
    }
    out
}

/// The direct sub-expressions of an expression.
fn children(e: &Expr) -> Vec<&Expr> {
    match &e.kind {
        ExprKind::Lit(_) | ExprKind::Ident(_) => vec![],
        ExprKind::Field(b, _) | ExprKind::SelectAll(b) | ExprKind::Unary(_, b) => vec![b],
        ExprKind::Index(a, b) | ExprKind::Binary(_, a, b) => vec![a, b],
        ExprKind::Select(b, pairs) => std::iter::once(&**b)
            .chain(pairs.iter().map(|(_, x)| x))
            .collect(),
        ExprKind::If(a, b, c) => vec![a, b, c],
        ExprKind::Call(_, args) | ExprKind::List(args) => args.iter().collect(),
    }
}

/// Every `stages.NAME` a stage's fields and resources mention, with spans.
fn stage_refs(st: &RawStage) -> Vec<(String, Span)> {
    let mut out = Vec::new();
    let mut visit = |rv: &RawValue| walk_raw(rv, &mut |e| collect_stage_refs(e, &mut out));
    for (_, v) in &st.fields {
        visit(v);
    }
    if let Some(r) = &st.resources {
        visit(r);
    }
    for (_, v) in &st.matrix {
        visit(v);
    }
    out
}

fn walk_raw(rv: &RawValue, f: &mut dyn FnMut(&Expr)) {
    match &rv.kind {
        RawKind::Str(t) => t.exprs().for_each(&mut *f),
        RawKind::Array(items) => items.iter().for_each(|i| walk_raw(i, f)),
        RawKind::Table(entries) => entries.iter().for_each(|(_, v)| walk_raw(v, f)),
        _ => {}
    }
}

fn collect_stage_refs(e: &Expr, out: &mut Vec<(String, Span)>) {
    let is_stages = |b: &Expr| matches!(&b.kind, ExprKind::Ident(n) if n == "stages");
    match &e.kind {
        ExprKind::Field(b, name) if is_stages(b) => out.push((name.clone(), e.span)),
        ExprKind::Index(b, i) if is_stages(b) => {
            if let ExprKind::Lit(Value::Str(name)) = &i.kind {
                out.push((name.clone(), e.span));
            }
        }
        _ => {}
    }
    for child in children(e) {
        collect_stage_refs(child, out);
    }
}

/// Every `stages.NAME[...].OUTPUT` (or `stages.NAME.OUTPUT`) an expression
/// names, with the span of the whole reference.
fn collect_output_refs(e: &Expr, out: &mut Vec<(String, String, Span)>) {
    if let ExprKind::Field(b, output) = &e.kind {
        let mut base = &**b;
        while let ExprKind::Select(inner, _) | ExprKind::SelectAll(inner) = &base.kind {
            base = inner;
        }
        if let ExprKind::Field(root, stage) = &base.kind
            && matches!(&root.kind, ExprKind::Ident(n) if n == "stages")
        {
            out.push((stage.clone(), output.clone(), e.span));
        }
    }
    for child in children(e) {
        collect_output_refs(child, out);
    }
}

pub(super) fn unknown(span: Span, what: String, help: String) -> Diagnostic {
    Diagnostic::error("unknown-reference", what)
        .at(span, "unknown reference")
        .help(help)
}
