//! The checked layer: params resolved, inputs found, matrices expanded,
//! every op parameter type-checked, every reference bound to the instance
//! it names. A [`Pipeline`] is what the graph and the planner work on.

use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use petgraph::graphmap::DiGraphMap;

use crate::diag::{Diagnostic, Span, did_you_mean};
use crate::expr::{EVal, Env, Expr, ExprKind, StageSel, Template, eval_template};
use crate::manifest::{RawKind, RawManifest, RawStage, RawValue, STAGE_KEYS};
use crate::ops::{self, AnyOp, ParamKind, Params};
use crate::value::{PathRef, Value};

/// A checked pipeline.
#[derive(Debug)]
pub struct Pipeline {
    pub name: String,
    pub description: Option<String>,
    /// The manifest file.
    pub manifest: PathBuf,
    /// The directory relative paths are resolved against.
    pub dir: PathBuf,
    pub params: BTreeMap<String, Value>,
    pub inputs: BTreeMap<String, Input>,
    /// Stages in dependency order.
    pub stages: Vec<Stage>,
    /// Instances in dependency order: every instance comes after those it reads.
    pub instances: Vec<Instance>,
}

#[derive(Debug, Clone)]
pub struct Input {
    pub path: PathBuf,
    pub glob: Option<String>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    pub op: String,
    pub description: Option<String>,
    pub span: Span,
    pub matrix_keys: Vec<String>,
    pub instances: Vec<usize>,
}

/// What an instance asks of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Resources {
    pub threads: usize,
    pub gpu: usize,
}

impl Default for Resources {
    fn default() -> Self {
        Resources { threads: 1, gpu: 0 }
    }
}

/// One instance of a stage: one combination of its matrix.
#[derive(Debug, Clone)]
pub struct Instance {
    pub id: usize,
    pub stage: usize,
    pub stage_name: String,
    /// `train[fold=0,arch=resnet18]`, or the stage name without a matrix.
    pub name: String,
    pub matrix: Vec<(String, Value)>,
    pub op: &'static str,
    /// Every parameter of the op, defaults filled in.
    pub params: Params,
    /// Shared by the instances of a stage that declare the same ones.
    pub outputs: std::sync::Arc<[String]>,
    /// Instances whose outputs this one reads, ascending.
    pub deps: Vec<usize>,
    pub resources: Resources,
    /// The `[params]` this instance's stage refers to, with their values:
    /// explanations name `params.lr` rather than only the op parameter it
    /// was interpolated into.
    pub uses: std::sync::Arc<BTreeMap<String, Value>>,
}

impl Instance {
    pub fn op(&self) -> &'static dyn AnyOp {
        ops::get(self.op).expect("checked op exists")
    }

    /// The parameters as the op runs with them: every path (and every path
    /// in an interpolated string) replaced by where `place` says it is.
    pub fn params_placed(&self, place: &dyn Fn(&PathRef) -> String) -> Params {
        self.params
            .iter()
            .map(|(name, v)| (name, v.map_paths(place)))
            .collect()
    }

    /// `fold=0,arch=resnet18`: the instance's directory name under its stage
    /// (each value encoded by [`encode_matrix_value`]).
    pub fn matrix_label(&self) -> String {
        matrix_label(&self.matrix)
    }
}

/// `k=v,k2=v2` with each value encoded by [`encode_matrix_value`]: one path
/// component whatever the values hold.
pub fn matrix_label(combo: &[(String, Value)]) -> String {
    combo
        .iter()
        .map(|(k, v)| format!("{k}={}", encode_matrix_value(&plain(v))))
        .collect::<Vec<_>>()
        .join(",")
}

/// A matrix value as it appears in instance names and directory names:
/// ASCII letters, digits and `-_.+@~` stay; every other byte (`/`, `,`,
/// `=`, `%`, `[`, `]`, spaces, control characters, non-ASCII) and a leading
/// `.` become `%XX`, so that no value forms a path component of its own
/// (`..`, `a/b`, a newline) and every instance can be named as a target.
pub fn encode_matrix_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, b) in v.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b"-_+@~".contains(&b) || (b == b'.' && i > 0);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The inverse of [`encode_matrix_value`]; `None` when `s` is not an
/// encoding (a `%` not followed by two hex digits, or bytes that are not
/// UTF-8).
pub fn decode_matrix_value(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn plain(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        other => other.to_string(),
    }
}

const ROOTS: &[&str] = &["params", "inputs", "stages"];

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
}

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
type MatrixIndex = HashMap<(String, String), Vec<usize>>;

/// A key under which values that select the same instances meet: numbers
/// by value (`1` and `1.0` alike), anything else by type and text.
fn matrix_value_key(v: &Value) -> String {
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
        // A bad reference in a matrix stage would otherwise repeat once per instance.
        if self.seen.insert((d.message.clone(), d.span)) {
            self.errors += d.is_error() as usize;
            self.diags.push(d);
            if self.errors >= crate::diag::MAX_ERRORS {
                self.diags.push(crate::diag::too_many_errors());
                self.stopped = true;
            }
        }
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
        let mut g: DiGraphMap<usize, ()> = DiGraphMap::new();
        for i in 0..raw.stages.len() {
            g.add_node(i);
        }
        let mut bad = HashSet::new();
        for (i, st) in raw.stages.iter().enumerate() {
            for (name, span) in stage_refs(st) {
                match index.get(name.as_str()) {
                    Some(&j) => {
                        g.add_edge(j, i, ());
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
        for scc in petgraph::algo::tarjan_scc(&g) {
            let cyclic = scc.len() > 1 || g.contains_edge(scc[0], scc[0]);
            if !cyclic {
                continue;
            }
            let mut members = scc.clone();
            members.sort();
            let cycle = cycle_path(&g, &members);
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
        // Kahn's algorithm, taking the earliest stage in the manifest first.
        let mut indeg: Vec<usize> = (0..raw.stages.len())
            .map(|i| g.neighbors_directed(i, petgraph::Incoming).count())
            .collect();
        let mut ready: BinaryHeap<std::cmp::Reverse<usize>> = (0..raw.stages.len())
            .filter(|&i| indeg[i] == 0)
            .map(std::cmp::Reverse)
            .collect();
        let mut order = Vec::new();
        while let Some(std::cmp::Reverse(i)) = ready.pop() {
            order.push(i);
            for j in g.neighbors_directed(i, petgraph::Outgoing) {
                indeg[j] -= 1;
                if indeg[j] == 0 {
                    ready.push(std::cmp::Reverse(j));
                }
            }
        }
        // Stages downstream of a bad one would only report follow-on errors.
        let mut skip = bad;
        for &i in &order {
            if g.neighbors_directed(i, petgraph::Incoming)
                .any(|j| skip.contains(&j))
            {
                skip.insert(i);
            }
        }
        order.into_iter().filter(|i| !skip.contains(i)).collect()
    }

    fn stage(&mut self, st: &RawStage, p: &mut Pipeline, params: &Value, inputs: &Value) {
        let before = self.diags.len();
        if stage_refs(st)
            .iter()
            .any(|(name, _)| self.failed.contains(name))
            || (!self.failed_inputs.is_empty()
                && root_refs(st, "inputs")
                    .iter()
                    .any(|name| self.failed_inputs.contains(name)))
        {
            self.failed.insert(st.name.name.clone());
            return;
        }
        // Out of `self` while the stage is checked, which borrows `self` mutably.
        let mut by_matrix = std::mem::take(&mut self.by_matrix);
        let mut stage_index = std::mem::take(&mut self.stage_index);
        self.stage_inner(st, p, params, inputs, &mut by_matrix, &mut stage_index);
        self.by_matrix = by_matrix;
        self.stage_index = stage_index;
        if self.diags[before..].iter().any(Diagnostic::is_error) {
            self.failed.insert(st.name.name.clone());
        }
    }

    fn stage_inner(
        &mut self,
        st: &RawStage,
        p: &mut Pipeline,
        params: &Value,
        inputs: &Value,
        by_matrix: &mut Vec<MatrixIndex>,
        stage_index: &mut HashMap<String, usize>,
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
        // Unknown op parameters.
        let specs = op.params();
        let mut ok = true;
        for (k, _) in &st.fields {
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
            if !st.fields.iter().any(|(k, _)| k.name == s.name) {
                ok = false;
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
        let Some(matrix) = self.matrix(st, params, inputs) else {
            return;
        };
        if !ok {
            return;
        }
        let stage_idx = p.stages.len();
        let resources = self.resources(st, params, inputs);
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
            let mut params_out = Params::new();
            let mut spans: Vec<(&str, Span)> = Vec::with_capacity(specs.len());
            let mut inst_ok = true;
            for spec in specs {
                let (val, span) = match st.fields.iter().find(|(k, _)| k.name == spec.name) {
                    Some((_, rv)) => match self.value(rv, &env) {
                        Some(v) => (v, rv.span),
                        None => {
                            inst_ok = false;
                            continue;
                        }
                    },
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
                    inst_ok = false;
                    continue;
                }
                match self.typed(spec.kind, val, span, spec.name) {
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
                    None => inst_ok = false,
                }
            }
            if !inst_ok {
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
                    for e in errs {
                        let span = span_of(&spans, &e.param).unwrap_or(st.name.span);
                        self.push(
                            Diagnostic::error("invalid-param", e.message)
                                .at(span, format!("in `{}`", e.param)),
                        );
                    }
                    continue;
                }
            };
            if !inst_ok {
                continue;
            }
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
            });
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
                "gpu" => r.gpu = n,
                _ => self.push(
                    Diagnostic::error("unknown-key", format!("unknown resource `{}`", k.name))
                        .at(k.span, "unknown")
                        .help("resources: threads, gpu"),
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

/// A shortest cycle through the first member, as stage indices, closed.
fn cycle_path(g: &DiGraphMap<usize, ()>, members: &[usize]) -> Vec<usize> {
    let start = members[0];
    let inside: HashSet<usize> = members.iter().copied().collect();
    let mut prev: HashMap<usize, usize> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        let mut next: Vec<usize> = g
            .neighbors_directed(n, petgraph::Outgoing)
            .filter(|m| inside.contains(m))
            .collect();
        next.sort();
        for m in next {
            if m == start {
                let mut path = vec![start];
                let mut cur = n;
                while cur != start {
                    path.push(cur);
                    cur = prev[&cur];
                }
                path.push(start);
                let n = path.len();
                path[1..n - 1].reverse();
                return path;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = prev.entry(m) {
                e.insert(n);
                queue.push_back(m);
            }
        }
    }
    members.to_vec()
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

fn unknown(span: Span, what: String, help: String) -> Diagnostic {
    Diagnostic::error("unknown-reference", what)
        .at(span, "unknown reference")
        .help(help)
}

/// Names visible in params, inputs, matrices and resources.
struct BasicEnv<'a> {
    params: &'a Value,
    inputs: Option<&'a Value>,
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
struct StageEnv<'a> {
    params: &'a Value,
    inputs: &'a Value,
    matrix: &'a [(String, Value)],
    stage_index: &'a HashMap<String, usize>,
    stages: &'a [Stage],
    instances: &'a [Instance],
    by_matrix: &'a [MatrixIndex],
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
                Diagnostic::error(
                    "unknown-reference",
                    format!("`{}` has no output `{output}`", inst.name),
                )
                .at(span, "unknown output")
                .help(if inst.outputs.is_empty() {
                    format!("`{}` declares no outputs", inst.name)
                } else {
                    format!("outputs: {}", inst.outputs.join(", "))
                })
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

/// An output by its full name or, when unambiguous, by its stem
/// (`oof` for `oof.csv`).
pub fn resolve_output(outputs: &[String], name: &str) -> Option<String> {
    if outputs.iter().any(|o| o == name) {
        return Some(name.to_string());
    }
    let stem = |o: &str| -> String {
        let base = o.rsplit('/').next().unwrap_or(o);
        match base.find('.') {
            Some(i) if i > 0 => base[..i].to_string(),
            _ => base.to_string(),
        }
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_resolve_by_name_or_unique_stem() {
        let outs = vec![
            "oof.csv".to_string(),
            "model.pt".to_string(),
            "a.x".into(),
            "a.y".into(),
        ];
        assert_eq!(resolve_output(&outs, "oof.csv").as_deref(), Some("oof.csv"));
        assert_eq!(resolve_output(&outs, "oof").as_deref(), Some("oof.csv"));
        assert_eq!(resolve_output(&outs, "a"), None);
        assert_eq!(resolve_output(&outs, "nope"), None);
    }

    #[test]
    fn instances_record_the_params_their_stage_mentions() {
        let text = "[params]\nscale = 2\nother = 1\n[stages.a]\nop = \"exec\"\nmatrix = { f = [0, 1] }\ncmd = \"echo ${f} ${params.scale}\"\n";
        let (p, r) = crate::check_str("m.toml".as_ref(), text, &[]);
        assert!(!r.has_errors(), "{r}");
        let p = p.unwrap();
        let uses: Vec<&String> = p.instances[0].uses.keys().collect();
        assert_eq!(uses, ["scale"]);
    }

    #[test]
    fn selections_match_by_value_whatever_the_number_type_and_chain() {
        let text = r#"
[stages.t]
op = "exec"
matrix = { f = [0, 1, 2], a = ["x", "y"] }
cmd = "echo ${f} ${a} > $PODIUM_OUT/o"
outs = ["o"]
[stages.u]
op = "exec"
matrix = { g = [0.0, 1.0] }
cmd = "cat ${stages.t[f=g, a='y'].o} ${stages.t[a='x'][f=g + 1].o} > $PODIUM_OUT/o"
outs = ["o"]
[stages.v]
op = "exec"
cmd = "cat ${stages.t[a='x'].o} > $PODIUM_OUT/o"
outs = ["o"]
"#;
        let (p, r) = crate::check_str("m.toml".as_ref(), text, &[]);
        assert!(!r.has_errors(), "{r}");
        let p = p.unwrap();
        let id = |n: &str| p.instances.iter().position(|i| i.name == n).unwrap();
        let deps = |n: &str| -> Vec<&str> {
            let mut d: Vec<&str> = p.instances[id(n)]
                .deps
                .iter()
                .map(|&d| p.instances[d].name.as_str())
                .collect();
            d.sort();
            d
        };
        assert_eq!(deps("u[g=0.0]"), ["t[f=0,a=y]", "t[f=1,a=x]"]);
        assert_eq!(deps("u[g=1.0]"), ["t[f=1,a=y]", "t[f=2,a=x]"]);
        assert_eq!(deps("v"), ["t[f=0,a=x]", "t[f=1,a=x]", "t[f=2,a=x]"]);
    }
}
