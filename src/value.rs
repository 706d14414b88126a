//! Values of the checked manifest: TOML values plus references to files.
//!
//! A [`Value::Path`] stands for a file or directory whose *content* matters:
//! a declared input, a literal dependency, or an output of another stage
//! instance. Keys hash the content behind a path, never the path itself.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// A value after expressions are evaluated.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
    Table(BTreeMap<String, Value>),
    /// A file or directory whose content is an input of the stage (boxed:
    /// it keeps every other value, and so every instance's params, small).
    Path(Box<PathRef>),
    /// A string with paths interpolated into it, e.g. a command line.
    Interp(Vec<Part>),
}

/// A type name with its article: `an integer`, `a string`.
pub fn a(type_name: &str) -> String {
    match type_name.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {type_name}"),
        _ => format!("a {type_name}"),
    }
}

/// What a [`Value::Path`] points at.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathRef {
    /// A file or directory of the workspace. `glob` restricts which files
    /// of a directory count.
    File {
        path: PathBuf,
        glob: Option<String>,
        /// How the manifest names it: `inputs.images` or the literal path.
        label: String,
    },
    /// Output `output` of graph instance number `inst`.
    Artifact {
        inst: usize,
        output: String,
        /// `stage[matrix].output`, for messages.
        label: String,
    },
}

impl PathRef {
    pub fn label(&self) -> &str {
        match self {
            PathRef::File { label, .. } | PathRef::Artifact { label, .. } => label,
        }
    }
}

/// A piece of an interpolated string.
#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    Lit(String),
    Path(PathRef),
}

impl Value {
    /// About how many bytes the value holds: what the checker's limits on
    /// values count.
    pub fn weight(&self) -> usize {
        let path = |p: &PathRef| match p {
            PathRef::File { path, glob, label } => {
                path.as_os_str().len() + glob.as_ref().map_or(0, String::len) + label.len()
            }
            PathRef::Artifact { output, label, .. } => output.len() + label.len(),
        };
        8 + match self {
            Value::Bool(_) | Value::Int(_) | Value::Float(_) => 0,
            Value::Str(s) => s.len(),
            Value::List(l) => l.iter().map(Value::weight).sum(),
            Value::Table(t) => t.iter().map(|(k, v)| k.len() + v.weight()).sum(),
            Value::Path(p) => path(p),
            Value::Interp(parts) => parts
                .iter()
                .map(|p| match p {
                    Part::Lit(s) => s.len(),
                    Part::Path(p) => path(p),
                })
                .sum(),
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Float(_) => "float",
            Value::Str(_) | Value::Interp(_) => "string",
            Value::List(_) => "list",
            Value::Table(_) => "table",
            Value::Path(_) => "path",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// Every path this value mentions, in order.
    pub fn paths(&self) -> Vec<&PathRef> {
        let mut out = Vec::new();
        self.collect_paths(&mut out);
        out
    }

    fn collect_paths<'a>(&'a self, out: &mut Vec<&'a PathRef>) {
        match self {
            Value::Path(p) => out.push(p),
            Value::Interp(parts) => out.extend(parts.iter().filter_map(|p| match p {
                Part::Path(p) => Some(p),
                Part::Lit(_) => None,
            })),
            Value::List(l) => l.iter().for_each(|v| v.collect_paths(out)),
            Value::Table(t) => t.values().for_each(|v| v.collect_paths(out)),
            _ => {}
        }
    }

    /// A string built from parts: a plain string when no path is in it.
    pub fn from_parts(mut parts: Vec<Part>) -> Value {
        match parts.as_slice() {
            [] => Value::Str(String::new()),
            [Part::Lit(_)] => match parts.pop() {
                Some(Part::Lit(s)) => Value::Str(s),
                _ => unreachable!(),
            },
            _ => Value::Interp(parts),
        }
    }

    /// Appends this value to a string being interpolated.
    pub fn interpolate_into(&self, parts: &mut Vec<Part>) {
        fn push_lit(parts: &mut Vec<Part>, s: &str) {
            if let Some(Part::Lit(last)) = parts.last_mut() {
                last.push_str(s);
            } else {
                parts.push(Part::Lit(s.to_string()));
            }
        }
        match self {
            Value::Str(s) => push_lit(parts, s),
            Value::Path(p) => parts.push(Part::Path((**p).clone())),
            Value::Interp(ps) => {
                for p in ps {
                    match p {
                        Part::Lit(s) => push_lit(parts, s),
                        Part::Path(p) => parts.push(Part::Path(p.clone())),
                    }
                }
            }
            Value::List(items) => {
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        push_lit(parts, " ");
                    }
                    v.interpolate_into(parts);
                }
            }
            other => push_lit(parts, &other.to_string()),
        }
    }

    /// Replaces every path by what `f` makes of it (at run time: its real
    /// location), turning interpolated strings into plain strings.
    pub fn map_paths(&self, f: &dyn Fn(&PathRef) -> String) -> Value {
        match self {
            Value::Path(p) => Value::Str(f(p)),
            Value::Interp(parts) => Value::Str(
                parts
                    .iter()
                    .map(|p| match p {
                        Part::Lit(s) => s.clone(),
                        Part::Path(p) => f(p),
                    })
                    .collect(),
            ),
            Value::List(l) => Value::List(l.iter().map(|v| v.map_paths(f)).collect()),
            Value::Table(t) => {
                Value::Table(t.iter().map(|(k, v)| (k.clone(), v.map_paths(f))).collect())
            }
            other => other.clone(),
        }
    }

    /// [`Value::encode`] of `Value::Table` of `entries` (`len` of them, in
    /// key order), without building it.
    pub fn encode_table<'a, K: AsRef<str>>(
        len: usize,
        entries: impl IntoIterator<Item = (K, &'a Value)>,
        out: &mut Vec<u8>,
        content: &dyn Fn(&PathRef) -> [u8; 32],
    ) {
        out.push(b't');
        out.extend_from_slice(&(len as u64).to_le_bytes());
        for (k, v) in entries {
            let k = k.as_ref();
            out.extend_from_slice(&(k.len() as u64).to_le_bytes());
            out.extend_from_slice(k.as_bytes());
            v.encode(out, content);
        }
    }

    /// Canonical bytes of this value for hashing. Paths are encoded by the
    /// content hash that `content` gives for them, so a key changes when a
    /// file's bytes change and not when its location or timestamp does.
    pub fn encode(&self, out: &mut Vec<u8>, content: &dyn Fn(&PathRef) -> [u8; 32]) {
        fn bytes(out: &mut Vec<u8>, b: &[u8]) {
            out.extend_from_slice(&(b.len() as u64).to_le_bytes());
            out.extend_from_slice(b);
        }
        match self {
            Value::Bool(b) => out.extend_from_slice(&[b'b', *b as u8]),
            Value::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(&i.to_le_bytes());
            }
            Value::Float(f) => {
                out.push(b'f');
                // -0.0 and 0.0 are the same parameter.
                let f = if *f == 0.0 { 0.0f64 } else { *f };
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            Value::Str(s) => {
                out.push(b's');
                bytes(out, s.as_bytes());
            }
            Value::List(l) => {
                out.push(b'l');
                out.extend_from_slice(&(l.len() as u64).to_le_bytes());
                l.iter().for_each(|v| v.encode(out, content));
            }
            Value::Table(t) => Value::encode_table(t.len(), t, out, content),
            Value::Path(p) => {
                out.push(b'p');
                out.extend_from_slice(&content(p));
            }
            Value::Interp(parts) => {
                out.push(b'x');
                out.extend_from_slice(&(parts.len() as u64).to_le_bytes());
                for p in parts {
                    match p {
                        Part::Lit(s) => {
                            out.push(b's');
                            bytes(out, s.as_bytes());
                        }
                        Part::Path(p) => {
                            out.push(b'p');
                            out.extend_from_slice(&content(p));
                        }
                    }
                }
            }
        }
    }
}

fn write_str_literal(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    write!(f, "{s:?}")
}

/// Values print in TOML-like syntax; paths as `<label>`.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => {
                if x.fract() == 0.0 && x.is_finite() && x.abs() < 1e15 {
                    write!(f, "{x:.1}")
                } else {
                    write!(f, "{x}")
                }
            }
            Value::Str(s) => write_str_literal(f, s),
            Value::List(l) => {
                f.write_str("[")?;
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            Value::Table(t) => {
                f.write_str("{")?;
                for (i, (k, v)) in t.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, " {k} = {v}")?;
                }
                f.write_str(" }")
            }
            Value::Path(p) => write!(f, "<{}>", p.label()),
            Value::Interp(parts) => {
                let mut s = String::new();
                for p in parts {
                    match p {
                        Part::Lit(l) => s.push_str(l),
                        Part::Path(p) => {
                            s.push('<');
                            s.push_str(p.label());
                            s.push('>');
                        }
                    }
                }
                write_str_literal(f, &s)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_paths(_: &PathRef) -> [u8; 32] {
        [0; 32]
    }

    #[test]
    fn encoding_distinguishes_types_and_structure() {
        let enc = |v: &Value| {
            let mut b = Vec::new();
            v.encode(&mut b, &no_paths);
            b
        };
        assert_ne!(enc(&Value::Int(1)), enc(&Value::Float(1.0)));
        assert_ne!(enc(&Value::Str("1".into())), enc(&Value::Int(1)));
        let ab = Value::List(vec![Value::Str("a".into()), Value::Str("b".into())]);
        let a_b = Value::List(vec![Value::Str("ab".into())]);
        assert_ne!(enc(&ab), enc(&a_b));
        assert_eq!(enc(&Value::Float(0.0)), enc(&Value::Float(-0.0)));
    }

    #[test]
    fn path_content_not_location_is_encoded() {
        let p1 = Value::Path(Box::new(PathRef::File {
            path: "a".into(),
            glob: None,
            label: "a".into(),
        }));
        let p2 = Value::Path(Box::new(PathRef::File {
            path: "b".into(),
            glob: None,
            label: "b".into(),
        }));
        let (mut b1, mut b2) = (Vec::new(), Vec::new());
        p1.encode(&mut b1, &no_paths);
        p2.encode(&mut b2, &no_paths);
        assert_eq!(b1, b2);
    }

    #[test]
    fn lists_interpolate_space_separated() {
        let v = Value::List(vec![Value::Int(1), Value::Str("x".into())]);
        let mut parts = Vec::new();
        v.interpolate_into(&mut parts);
        assert_eq!(parts, vec![Part::Lit("1 x".into())]);
    }
}
