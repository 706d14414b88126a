//! The parse layer: a manifest's TOML as written, every value with its span,
//! every string split into literal text and `${...}` expressions. Nothing is
//! resolved here; see [`crate::ir`] for the checked form.

use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use crate::diag::{Diagnostic, SourceMap, Span, SrcId, did_you_mean};
use crate::expr::{SpanMap, Template, parse_template};
use crate::value::Value;

/// A value as written, with its span.
#[derive(Clone, Debug)]
pub struct RawValue {
    pub kind: RawKind,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum RawKind {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Template),
    Array(Vec<RawValue>),
    Table(Vec<(Name, RawValue)>),
}

/// A key with its span.
#[derive(Clone, Debug)]
pub struct Name {
    pub name: String,
    pub span: Span,
}

/// `[inputs.NAME]`: a file or directory outside the store.
#[derive(Clone, Debug)]
pub struct RawInput {
    pub name: Name,
    pub path: RawValue,
    pub glob: Option<RawValue>,
}

/// `[stages.NAME]`.
#[derive(Clone, Debug)]
pub struct RawStage {
    pub name: Name,
    pub op: Option<(String, Span)>,
    pub matrix: Vec<(Name, RawValue)>,
    pub resources: Option<RawValue>,
    pub description: Option<String>,
    /// The op's parameters.
    pub fields: Vec<(Name, RawValue)>,
    /// Parameters written with a value that did not parse (its error is
    /// said): neither missing nor checked further.
    pub broken: Vec<Name>,
}

/// A manifest as written.
#[derive(Clone, Debug)]
pub struct RawManifest {
    pub path: PathBuf,
    pub src: SrcId,
    pub name: Option<(String, Span)>,
    pub description: Option<String>,
    pub params: Vec<(Name, RawValue)>,
    pub inputs: Vec<RawInput>,
    pub stages: Vec<RawStage>,
}

impl RawManifest {
    /// The directory relative paths in the manifest are resolved against.
    pub fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    }
}

const SECTIONS: &[&str] = &["pipeline", "params", "inputs", "stages"];
/// Keys of a stage table that are not op parameters.
pub const STAGE_KEYS: &[&str] = &["op", "matrix", "resources", "description"];

/// Parses manifest text. Returns the manifest (as far as it could be read)
/// and every problem found.
pub fn parse(
    path: &Path,
    text: &str,
    sources: &mut SourceMap,
) -> (Option<RawManifest>, Vec<Diagnostic>) {
    let src = sources.add(path.display().to_string(), text);
    let mut diags = Vec::new();
    let (doc, errors) = DeTable::parse_recoverable(text);
    for e in &errors {
        let span = e.span().unwrap_or(0..0);
        let mut msg = e.message().trim().to_string();
        if let Some(first) = msg.lines().next() {
            msg = first.to_string();
        }
        diags.push(
            Diagnostic::error("toml-syntax", format!("invalid TOML: {msg}"))
                .at(Span::new(src, span.start, span.end.max(span.start)), msg),
        );
    }
    if !errors.is_empty() {
        return (None, diags);
    }
    let cx = Cx { src, text };
    let root = doc.into_inner();
    let mut m = RawManifest {
        path: path.to_path_buf(),
        src,
        name: None,
        description: None,
        params: Vec::new(),
        inputs: Vec::new(),
        stages: Vec::new(),
    };
    for (k, v) in root.iter() {
        let key = cx.name(k);
        match key.name.as_str() {
            "pipeline" => {
                let Some(t) = cx.table(v, "[pipeline]", &mut diags) else {
                    continue;
                };
                for (k, v) in t.iter() {
                    let key = cx.name(k);
                    match key.name.as_str() {
                        "name" | "description" => {
                            let Some(s) = v.get_ref().as_str() else {
                                diags.push(type_error(
                                    &cx,
                                    v,
                                    &format!("pipeline.{}", key.name),
                                    "a string",
                                ));
                                continue;
                            };
                            if key.name == "name" {
                                m.name = Some((s.to_string(), cx.span(v)));
                            } else {
                                m.description = Some(s.to_string());
                            }
                        }
                        _ => diags.push(unknown_key(&key, "[pipeline]", &["name", "description"])),
                    }
                }
            }
            "params" => {
                let Some(t) = cx.table(v, "[params]", &mut diags) else {
                    continue;
                };
                m.params = cx.entries(t, &mut diags, |cx, key, v, diags| {
                    cx.value(v, diags).map(|v| (key, v))
                });
            }
            "inputs" => {
                let Some(t) = cx.table(v, "[inputs]", &mut diags) else {
                    continue;
                };
                for (k, v) in t.iter() {
                    let key = cx.name(k);
                    if let Some(i) = cx.input(key, v, &mut diags) {
                        m.inputs.push(i);
                    }
                }
            }
            "stages" => {
                let Some(t) = cx.table(v, "[stages]", &mut diags) else {
                    continue;
                };
                m.stages = cx.entries(t, &mut diags, |cx, key, v, diags| cx.stage(key, v, diags));
            }
            _ => diags.push(unknown_key(&key, "the manifest", SECTIONS)),
        }
    }
    (Some(m), diags)
}

fn unknown_key(key: &Name, place: &str, known: &[&str]) -> Diagnostic {
    Diagnostic::error(
        "unknown-key",
        format!("unknown key `{}` in {place}", key.name),
    )
    .at(key.span, "unknown key")
    .help(
        did_you_mean(&key.name, known.iter().copied())
            .unwrap_or_else(|| format!("allowed here: {}", known.join(", "))),
    )
}

/// A TOML integer (any radix, `_` separators), or `None` beyond 64 bits.
fn toml_int(i: &toml::de::DeInteger) -> Option<i64> {
    i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok()
}

/// A TOML float, `inf` and `nan` included.
fn toml_float(f: &toml::de::DeFloat) -> f64 {
    match f.as_str().replace('_', "").as_str() {
        "inf" | "+inf" => f64::INFINITY,
        "-inf" => f64::NEG_INFINITY,
        "nan" | "+nan" | "-nan" => f64::NAN,
        s => s.parse().unwrap_or(f64::NAN),
    }
}

/// A TOML value with no `${...}` in it (an op's default) as a [`Value`]:
/// strings are taken literally; datetimes as their text.
pub fn plain_value(v: &DeValue) -> Value {
    match v {
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Integer(i) => Value::Int(toml_int(i).unwrap_or(0)),
        DeValue::Float(f) => Value::Float(toml_float(f)),
        DeValue::String(s) => Value::Str(s.to_string()),
        DeValue::Array(a) => Value::List(a.iter().map(|x| plain_value(x.get_ref())).collect()),
        DeValue::Table(t) => Value::Table(
            t.iter()
                .map(|(k, v)| (k.get_ref().to_string(), plain_value(v.get_ref())))
                .collect(),
        ),
        DeValue::Datetime(d) => Value::Str(d.to_string()),
    }
}

fn type_error(cx: &Cx, v: &toml::Spanned<DeValue>, what: &str, want: &str) -> Diagnostic {
    Diagnostic::error("wrong-type", format!("`{what}` must be {want}")).at(
        cx.span(v),
        format!("this is {}", crate::value::a(v.get_ref().type_str())),
    )
}

struct Cx<'t> {
    src: SrcId,
    text: &'t str,
}

impl Cx<'_> {
    fn span<T>(&self, v: &toml::Spanned<T>) -> Span {
        let r = v.span();
        Span::new(self.src, r.start, r.end)
    }

    fn name(&self, k: &toml::Spanned<std::borrow::Cow<str>>) -> Name {
        Name {
            name: k.get_ref().to_string(),
            span: self.span(k),
        }
    }

    /// `f` of each entry of `t`, in order, with the problems it found in
    /// order. Entries are read in parallel: most of a large manifest's time
    /// is parsing the expressions in its strings.
    fn entries<'a, 'i, T: Send>(
        &self,
        t: &'a DeTable<'i>,
        diags: &mut Vec<Diagnostic>,
        f: impl Fn(&Self, Name, &'a toml::Spanned<DeValue<'i>>, &mut Vec<Diagnostic>) -> Option<T>
        + Sync,
    ) -> Vec<T> {
        use rayon::prelude::*;
        let entries: Vec<_> = t.iter().collect();
        let read: Vec<(Option<T>, Vec<Diagnostic>)> = entries
            .par_iter()
            .with_min_len(256)
            .map(|(k, v)| {
                let mut d = Vec::new();
                (f(self, self.name(k), v, &mut d), d)
            })
            .collect();
        let mut out = Vec::with_capacity(read.len());
        for (item, d) in read {
            diags.extend(d);
            out.extend(item);
        }
        out
    }

    fn table<'a, 'i>(
        &self,
        v: &'a toml::Spanned<DeValue<'i>>,
        what: &str,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<&'a DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                diags.push(type_error(self, v, what, "a table"));
                None
            }
        }
    }

    fn value(&self, v: &toml::Spanned<DeValue>, diags: &mut Vec<Diagnostic>) -> Option<RawValue> {
        let span = self.span(v);
        let kind = match v.get_ref() {
            DeValue::Boolean(b) => RawKind::Bool(*b),
            DeValue::Integer(i) => match toml_int(i) {
                Some(n) => RawKind::Int(n),
                None => {
                    diags.push(
                        Diagnostic::error("wrong-type", "integer out of range")
                            .at(span, "does not fit in 64 bits"),
                    );
                    return None;
                }
            },
            DeValue::Float(f) => RawKind::Float(toml_float(f)),
            DeValue::String(s) => {
                let source_text = self.text.get(span.start..span.end).unwrap_or("");
                let map = SpanMap::for_string(span, source_text, s);
                match parse_template(s, &map) {
                    Ok(t) => RawKind::Str(t),
                    Err(es) => {
                        diags.extend(es);
                        return None;
                    }
                }
            }
            DeValue::Datetime(_) => {
                diags.push(
                    Diagnostic::error("wrong-type", "dates and times are not supported")
                        .at(span, "a datetime")
                        .help("quote it to make it a string"),
                );
                return None;
            }
            DeValue::Array(a) => {
                let mut items = Vec::new();
                let mut ok = true;
                for item in a.iter() {
                    match self.value(item, diags) {
                        Some(v) => items.push(v),
                        None => ok = false,
                    }
                }
                if !ok {
                    return None;
                }
                RawKind::Array(items)
            }
            DeValue::Table(t) => {
                let mut entries = Vec::new();
                let mut ok = true;
                for (k, v) in t.iter() {
                    match self.value(v, diags) {
                        Some(v) => entries.push((self.name(k), v)),
                        None => ok = false,
                    }
                }
                if !ok {
                    return None;
                }
                RawKind::Table(entries)
            }
        };
        Some(RawValue { kind, span })
    }

    fn input(
        &self,
        name: Name,
        v: &toml::Spanned<DeValue>,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<RawInput> {
        match v.get_ref() {
            DeValue::String(_) => Some(RawInput {
                name,
                path: self.value(v, diags)?,
                glob: None,
            }),
            DeValue::Table(t) => {
                let mut path = None;
                let mut glob = None;
                for (k, v) in t.iter() {
                    let key = self.name(k);
                    match key.name.as_str() {
                        "path" => path = self.value(v, diags),
                        "glob" => glob = self.value(v, diags),
                        "description" => {}
                        _ => diags.push(unknown_key(
                            &key,
                            &format!("[inputs.{}]", name.name),
                            &["path", "glob", "description"],
                        )),
                    }
                }
                match path {
                    Some(path) => Some(RawInput { name, path, glob }),
                    None => {
                        diags.push(
                            Diagnostic::error(
                                "missing-key",
                                format!("input `{}` has no `path`", name.name),
                            )
                            .at(name.span, "needs `path = \"...\"`"),
                        );
                        None
                    }
                }
            }
            _ => {
                diags.push(type_error(
                    self,
                    v,
                    &format!("inputs.{}", name.name),
                    "a path string or a table",
                ));
                None
            }
        }
    }

    fn stage(
        &self,
        name: Name,
        v: &toml::Spanned<DeValue>,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<RawStage> {
        let t = self.table(v, &format!("stages.{}", name.name), diags)?;
        let mut st = RawStage {
            name,
            op: None,
            matrix: Vec::new(),
            resources: None,
            description: None,
            fields: Vec::new(),
            broken: Vec::new(),
        };
        for (k, v) in t.iter() {
            let key = self.name(k);
            match key.name.as_str() {
                "op" => match v.get_ref().as_str() {
                    Some(s) => st.op = Some((s.to_string(), self.span(v))),
                    None => diags.push(type_error(self, v, "op", "a string naming an op")),
                },
                "description" => st.description = v.get_ref().as_str().map(str::to_string),
                "matrix" => {
                    let Some(mt) = self.table(v, "matrix", diags) else {
                        continue;
                    };
                    for (mk, mv) in mt.iter() {
                        if let Some(val) = self.value(mv, diags) {
                            st.matrix.push((self.name(mk), val));
                        }
                    }
                }
                "resources" => st.resources = self.value(v, diags),
                _ => match self.value(v, diags) {
                    Some(val) => st.fields.push((key, val)),
                    None => st.broken.push(key),
                },
            }
        }
        Some(st)
    }
}

/// One `--set KEY=VALUE` from the command line.
#[derive(Clone, Debug)]
pub struct Override {
    pub path: Vec<String>,
    pub value: RawValue,
}

/// Parses `KEY=VALUE`, where VALUE is a TOML value or else a bare string.
pub fn parse_override(arg: &str, sources: &mut SourceMap) -> Result<Override, Diagnostic> {
    let src = sources.add(format!("--set {arg}"), arg);
    let Some(eq) = arg.find('=') else {
        return Err(
            Diagnostic::error("bad-override", format!("`--set {arg}` needs KEY=VALUE"))
                .at(Span::new(src, 0, arg.len()), "no `=`"),
        );
    };
    let key = arg[..eq].trim();
    let path: Vec<String> = key.split('.').map(|s| s.trim().to_string()).collect();
    if path.iter().any(String::is_empty) {
        return Err(
            Diagnostic::error("bad-override", format!("bad key `{key}`"))
                .at(Span::new(src, 0, eq), "empty key part"),
        );
    }
    let vtext = &arg[eq + 1..];
    let vspan = Span::new(src, eq + 1, arg.len());
    let mut diags = Vec::new();
    let cx = Cx { src, text: arg };
    let value = match DeValue::parse(vtext) {
        Ok(v) => {
            // Spans from parsing `vtext` alone are relative to it.
            let shifted = shift(v, eq + 1);
            cx.value(&shifted, &mut diags)
        }
        Err(_) => {
            let map = SpanMap::for_string(vspan, vtext, vtext);
            match parse_template(vtext, &map) {
                Ok(t) => Some(RawValue {
                    kind: RawKind::Str(t),
                    span: vspan,
                }),
                Err(es) => {
                    diags.extend(es);
                    None
                }
            }
        }
    };
    match value {
        Some(value) if diags.is_empty() => Ok(Override { path, value }),
        _ => Err(diags
            .into_iter()
            .next()
            .unwrap_or_else(|| Diagnostic::error("bad-override", "bad value").at(vspan, "here"))),
    }
}

fn shift<'i>(v: toml::Spanned<DeValue<'i>>, by: usize) -> toml::Spanned<DeValue<'i>> {
    let r = v.span();
    let inner = match v.into_inner() {
        DeValue::Array(a) => {
            let mut out = toml::de::DeArray::new();
            for item in a.into_iter() {
                out.push(shift(item, by));
            }
            DeValue::Array(out)
        }
        DeValue::Table(t) => {
            let mut out = DeTable::new();
            for (k, v) in t.into_iter() {
                let kr = k.span();
                out.insert(
                    toml::Spanned::new(kr.start + by..kr.end + by, k.into_inner()),
                    shift(v, by),
                );
            }
            DeValue::Table(out)
        }
        other => other,
    };
    toml::Spanned::new(r.start + by..r.end + by, inner)
}

impl RawManifest {
    /// Applies a `--set` override: `params.NAME[.KEY...]`, `stages.NAME.FIELD`,
    /// `inputs.NAME.path`, `pipeline.name`.
    pub fn apply(&mut self, o: &Override) -> Result<(), Diagnostic> {
        let bad =
            |msg: String| Diagnostic::error("bad-override", msg).at(o.value.span, "for this value");
        let named = |n: &str| Name {
            name: n.to_string(),
            span: o.value.span,
        };
        match o
            .path
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["params", name, rest @ ..] => {
                match self.params.iter_mut().find(|(k, _)| k.name == *name) {
                    Some((_, v)) => set_in(v, rest, o.value.clone()).map_err(bad)?,
                    None if rest.is_empty() => self.params.push((named(name), o.value.clone())),
                    None => return Err(bad(format!("there is no param `{name}`"))),
                }
            }
            ["stages", stage, field, rest @ ..] => {
                let st = self
                    .stages
                    .iter_mut()
                    .find(|s| s.name.name == *stage)
                    .ok_or_else(|| bad(format!("there is no stage `{stage}`")));
                let st = match st {
                    Ok(st) => st,
                    Err(d) => {
                        let names = self.stages.iter().map(|s| s.name.name.as_str());
                        return Err(match crate::diag::did_you_mean(stage, names) {
                            Some(h) => d.help(h),
                            None => d,
                        });
                    }
                };
                match *field {
                    "matrix" | "op" | "description" => {
                        return Err(bad(format!("`{field}` cannot be overridden")));
                    }
                    "resources" => match &mut st.resources {
                        Some(v) => set_in(v, rest, o.value.clone()).map_err(bad)?,
                        None if rest.is_empty() => st.resources = Some(o.value.clone()),
                        None => {
                            st.resources = Some(RawValue {
                                kind: RawKind::Table(vec![]),
                                span: o.value.span,
                            });
                            set_in(st.resources.as_mut().unwrap(), rest, o.value.clone())
                                .map_err(bad)?
                        }
                    },
                    _ => match st.fields.iter_mut().find(|(k, _)| k.name == *field) {
                        Some((_, v)) => set_in(v, rest, o.value.clone()).map_err(bad)?,
                        None if rest.is_empty() => st.fields.push((named(field), o.value.clone())),
                        None => return Err(bad(format!("stage `{stage}` has no `{field}`"))),
                    },
                }
            }
            ["inputs", name, "path"] => {
                let i = self
                    .inputs
                    .iter_mut()
                    .find(|i| i.name.name == *name)
                    .ok_or_else(|| bad(format!("there is no input `{name}`")))?;
                i.path = o.value.clone();
            }
            ["pipeline", "name"] => {
                let RawKind::Str(t) = &o.value.kind else {
                    return Err(bad("pipeline.name must be a string".into()));
                };
                let Some(crate::expr::Segment::Lit(s)) = t.segments.first() else {
                    return Err(bad("pipeline.name must be a plain string".into()));
                };
                self.name = Some((s.clone(), o.value.span));
            }
            _ => {
                return Err(bad(format!(
                    "cannot set `{}`: use params.NAME, stages.NAME.FIELD or inputs.NAME.path",
                    o.path.join(".")
                )));
            }
        }
        Ok(())
    }
}

fn set_in(target: &mut RawValue, rest: &[&str], value: RawValue) -> Result<(), String> {
    let Some((first, rest)) = rest.split_first() else {
        *target = value;
        return Ok(());
    };
    match &mut target.kind {
        RawKind::Table(entries) => match entries.iter_mut().find(|(k, _)| k.name == *first) {
            Some((_, v)) => set_in(v, rest, value),
            None if rest.is_empty() => {
                entries.push((
                    Name {
                        name: first.to_string(),
                        span: value.span,
                    },
                    value,
                ));
                Ok(())
            }
            None => Err(format!("no key `{first}`")),
        },
        _ => Err(format!("`{first}` is not inside a table")),
    }
}
