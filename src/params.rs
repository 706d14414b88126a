//! Op parameters, declared once.
//!
//! Each op declares its parameters as a plain struct inside [`params!`](crate::params!):
//! a field's name is the parameter's name, its type says what the
//! parameter accepts ([`Param`]), `= DEFAULT` (TOML) makes it optional, and
//! its doc comment is the help text shown by `podium op --list` and in
//! docs/ops.md. From that one declaration come the [`ParamSpec`] list the
//! checker uses, and [`Declared::from_params`], which turns an instance's
//! checked [`Params`] into the struct that the op's `check` and `run` read.
//! A parameter the code reads that is not declared is a compile error.
//!
//! Values with a fixed set of spellings are Rust enums declared with
//! [`choice!`](crate::choice!).
//!
//! ```
//! use podium::params::{Declared, Params};
//! use podium::value::Value;
//!
//! podium::params! {
//!     pub struct Example {
//!         /// the number of folds
//!         k: usize = 5,
//!         /// a table to read, optional
//!         table: Option<std::path::PathBuf> = "",
//!     }
//! }
//!
//! let mut p = Params::new();
//! p.insert("k", Value::Int(3));
//! let e = Example::from_params(&p, "".as_ref()).unwrap();
//! assert_eq!((e.k, e.table), (3, None)); // `table` took its default
//! assert_eq!(Example::SPECS[0].help, "the number of folds");
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::value::{Part, Value};

/// Resolved parameters of one instance, by name, in name order.
///
/// A sorted vector rather than a map: an op has a few dozen parameters at
/// most, and a matrix stage may have a million instances, each with its own
/// `Params` (a `BTreeMap` node alone would be most of an instance's memory).
/// Names are the op's [`ParamSpec::name`]s.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params(Vec<(&'static str, Value)>);

impl Params {
    pub fn new() -> Self {
        Params(Vec::new())
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| (*k).cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    /// Sets `name`, returning the value it replaces.
    pub fn insert(&mut self, name: &'static str, value: Value) -> Option<Value> {
        match self.find(name) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (name, value));
                None
            }
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Value)> {
        self.0.iter().map(|(k, v)| (*k, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &Value> {
        self.0.iter().map(|(_, v)| v)
    }

    /// Gives back spare capacity (a stage's instances keep theirs for good).
    pub fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit()
    }
}

impl FromIterator<(&'static str, Value)> for Params {
    fn from_iter<I: IntoIterator<Item = (&'static str, Value)>>(it: I) -> Self {
        let mut p = Params::new();
        for (k, v) in it {
            p.insert(k, v);
        }
        p
    }
}

impl<'a> IntoIterator for &'a Params {
    type Item = (&'static str, &'a Value);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (&'static str, Value)>,
        fn(&'a (&'static str, Value)) -> (&'static str, &'a Value),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (*k, v))
    }
}

/// The type a parameter accepts, as the checker and the docs see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    Str,
    Int,
    Float,
    Bool,
    /// One of the listed strings.
    Enum(&'static [&'static str]),
    /// A file or directory: a reference, or a string path relative to the manifest.
    Path,
    /// A list of paths (one path counts as a list of one).
    PathList,
    /// Paths, as a list or as a table of named paths.
    Paths,
    /// A list of strings.
    StrList,
    /// A list of numbers.
    FloatList,
    /// A string, or a list of them.
    Strs,
    /// A table of strings (numbers and booleans are written out).
    StrTable,
    /// Anything.
    Any,
}

impl ParamKind {
    pub fn describe(self) -> String {
        match self {
            ParamKind::Str => "string".into(),
            ParamKind::Int => "integer".into(),
            ParamKind::Float => "number".into(),
            ParamKind::Bool => "boolean".into(),
            ParamKind::Enum(vs) => vs.join(" | "),
            ParamKind::Path => "path".into(),
            ParamKind::PathList => "list of paths".into(),
            ParamKind::Paths => "list or table of paths".into(),
            ParamKind::StrList => "list of strings".into(),
            ParamKind::FloatList => "list of numbers".into(),
            ParamKind::Strs => "string or list of strings".into(),
            ParamKind::StrTable => "table of strings".into(),
            ParamKind::Any => "any".into(),
        }
    }

    /// Whether `v` fits; `Path` kinds also take strings, which the checker
    /// turns into workspace paths.
    pub fn accepts(self, v: &Value) -> bool {
        let path = |x: &Value| matches!(x, Value::Path(_) | Value::Str(_));
        let text = |x: &Value| matches!(x, Value::Str(_));
        match (self, v) {
            (ParamKind::Any, _) => true,
            (ParamKind::Str, Value::Str(_) | Value::Interp(_)) => true,
            (ParamKind::Int, Value::Int(_)) => true,
            (ParamKind::Float, Value::Int(_) | Value::Float(_)) => true,
            (ParamKind::Bool, Value::Bool(_)) => true,
            (ParamKind::Enum(vs), Value::Str(s)) => vs.contains(&s.as_str()),
            (ParamKind::Path, v) => path(v),
            (ParamKind::PathList | ParamKind::Paths, Value::List(l)) => l.iter().all(path),
            (ParamKind::Paths, Value::Table(t)) => t.values().all(path),
            (ParamKind::PathList | ParamKind::Paths, v) => path(v),
            (ParamKind::StrList, Value::List(l)) => l.iter().all(text),
            (ParamKind::Strs, Value::Str(_)) => true,
            (ParamKind::Strs, Value::List(l)) => l.iter().all(text),
            (ParamKind::FloatList, Value::List(l)) => l
                .iter()
                .all(|x| matches!(x, Value::Int(_) | Value::Float(_))),
            (ParamKind::StrTable, Value::Table(t)) => t.values().all(|x| {
                matches!(
                    x,
                    Value::Str(_)
                        | Value::Interp(_)
                        | Value::Path(_)
                        | Value::Int(_)
                        | Value::Float(_)
                        | Value::Bool(_)
                )
            }),
            _ => false,
        }
    }

    /// Whether the checker turns strings in the value into paths.
    pub fn holds_paths(self) -> bool {
        matches!(
            self,
            ParamKind::Path | ParamKind::PathList | ParamKind::Paths
        )
    }
}

/// One parameter of an op, as [`params!`](crate::params!) declares it.
#[derive(Clone, Copy, Debug)]
pub struct ParamSpec {
    pub name: &'static str,
    pub kind: ParamKind,
    /// The default as TOML text, or `None` when the parameter is required.
    pub default: Option<&'static str>,
    pub help: &'static str,
}

impl ParamSpec {
    /// The default as a value.
    pub fn default_value(&self) -> Option<Value> {
        let text = self.default?;
        let v = toml::de::DeValue::parse(text).expect("op defaults are valid TOML");
        Some(crate::manifest::plain_value(v.get_ref()))
    }
}

/// A problem with one parameter, found before or while running.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamError {
    pub param: String,
    pub message: String,
}

impl ParamError {
    pub fn new(param: &str, message: impl Into<String>) -> ParamError {
        ParamError {
            param: param.to_string(),
            message: message.into(),
        }
    }
}

/// A Rust type a parameter can have: what it accepts and how it is read.
pub trait Param: Sized {
    const KIND: ParamKind;

    /// Reads a checked value. Paths are joined to `dir` (the manifest's
    /// directory). At check time a path stands for what the manifest names
    /// (`stages.split.folds`); at run time for its real location.
    fn from_value(v: &Value, dir: &Path) -> Result<Self, String>;
}

/// The text of a string value; an interpolated one (at check time) with
/// its paths written as the manifest names them.
pub fn text(v: &Value) -> Option<String> {
    match v {
        Value::Str(s) => Some(s.clone()),
        Value::Interp(parts) => Some(
            parts
                .iter()
                .map(|p| match p {
                    Part::Lit(s) => s.clone(),
                    Part::Path(r) => format!("${{{}}}", r.label()),
                })
                .collect(),
        ),
        _ => None,
    }
}

fn wrong(v: &Value, kind: ParamKind) -> String {
    format!(
        "must be {}, not {}",
        crate::value::a(&kind.describe()),
        crate::value::a(v.type_name())
    )
}

impl Param for String {
    const KIND: ParamKind = ParamKind::Str;
    fn from_value(v: &Value, _: &Path) -> Result<Self, String> {
        text(v).ok_or_else(|| wrong(v, Self::KIND))
    }
}

impl Param for i64 {
    const KIND: ParamKind = ParamKind::Int;
    fn from_value(v: &Value, _: &Path) -> Result<Self, String> {
        v.as_int().ok_or_else(|| wrong(v, Self::KIND))
    }
}

macro_rules! unsigned {
    ($($t:ty),*) => {$(
        impl Param for $t {
            const KIND: ParamKind = ParamKind::Int;
            fn from_value(v: &Value, _: &Path) -> Result<Self, String> {
                let i = v.as_int().ok_or_else(|| wrong(v, Self::KIND))?;
                if i < 0 {
                    return Err("must not be negative".into());
                }
                <$t>::try_from(i).map_err(|_| format!("must be at most {}", <$t>::MAX))
            }
        }
    )*};
}
unsigned!(u8, u16, u32, u64, usize);

impl Param for f64 {
    const KIND: ParamKind = ParamKind::Float;
    fn from_value(v: &Value, _: &Path) -> Result<Self, String> {
        v.as_f64().ok_or_else(|| wrong(v, Self::KIND))
    }
}

impl Param for bool {
    const KIND: ParamKind = ParamKind::Bool;
    fn from_value(v: &Value, _: &Path) -> Result<Self, String> {
        v.as_bool().ok_or_else(|| wrong(v, Self::KIND))
    }
}

/// A path, or `None` for a string (the empty one: not given).
fn path_of(v: &Value, dir: &Path) -> Result<Option<PathBuf>, String> {
    match v {
        Value::Str(s) if s.is_empty() => Ok(None),
        Value::Str(s) => Ok(Some(dir.join(s))),
        Value::Path(r) => Ok(Some(PathBuf::from(r.label()))),
        v => Err(wrong(v, ParamKind::Path)),
    }
}

/// A required path.
impl Param for PathBuf {
    const KIND: ParamKind = ParamKind::Path;
    fn from_value(v: &Value, dir: &Path) -> Result<Self, String> {
        path_of(v, dir)?.ok_or_else(|| "needs a path".into())
    }
}

/// An optional path: `""` (its default) means not given.
impl Param for Option<PathBuf> {
    const KIND: ParamKind = ParamKind::Path;
    fn from_value(v: &Value, dir: &Path) -> Result<Self, String> {
        path_of(v, dir)
    }
}

/// A list of paths; one path is a list of one, `""` an empty list.
impl Param for Vec<PathBuf> {
    const KIND: ParamKind = ParamKind::PathList;
    fn from_value(v: &Value, dir: &Path) -> Result<Self, String> {
        match v {
            Value::List(l) => l
                .iter()
                .map(|x| path_of(x, dir)?.ok_or_else(|| "an empty path".to_string()))
                .collect(),
            v => Ok(path_of(v, dir)?.into_iter().collect()),
        }
    }
}

/// Paths given as a list or as a table of named paths.
#[derive(Clone, Debug, PartialEq)]
pub enum NamedPaths {
    List(Vec<PathBuf>),
    Table(BTreeMap<String, PathBuf>),
}

impl Param for NamedPaths {
    const KIND: ParamKind = ParamKind::Paths;
    fn from_value(v: &Value, dir: &Path) -> Result<Self, String> {
        let one = |x: &Value| path_of(x, dir)?.ok_or_else(|| "an empty path".to_string());
        match v {
            Value::Table(t) => Ok(NamedPaths::Table(
                t.iter()
                    .map(|(k, x)| Ok((k.clone(), one(x)?)))
                    .collect::<Result<_, String>>()?,
            )),
            v => Ok(NamedPaths::List(Vec::<PathBuf>::from_value(v, dir)?)),
        }
    }
}

impl Param for Vec<String> {
    const KIND: ParamKind = ParamKind::StrList;
    fn from_value(v: &Value, _: &Path) -> Result<Self, String> {
        match v {
            Value::List(l) => l
                .iter()
                .map(|x| text(x).ok_or_else(|| wrong(x, ParamKind::Str)))
                .collect(),
            v => Err(wrong(v, Self::KIND)),
        }
    }
}

impl Param for Vec<f64> {
    const KIND: ParamKind = ParamKind::FloatList;
    fn from_value(v: &Value, _: &Path) -> Result<Self, String> {
        match v {
            Value::List(l) => l
                .iter()
                .map(|x| x.as_f64().ok_or_else(|| wrong(x, ParamKind::Float)))
                .collect(),
            v => Err(wrong(v, Self::KIND)),
        }
    }
}

/// A string or a list of them, as a list (`""` is the empty list).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Strs(pub Vec<String>);

impl Param for Strs {
    const KIND: ParamKind = ParamKind::Strs;
    fn from_value(v: &Value, dir: &Path) -> Result<Self, String> {
        match v {
            Value::Str(s) if s.is_empty() => Ok(Strs(Vec::new())),
            Value::List(_) => Ok(Strs(Vec::<String>::from_value(v, dir)?)),
            v => Ok(Strs(vec![text(v).ok_or_else(|| wrong(v, Self::KIND))?])),
        }
    }
}

/// A table of strings, such as environment variables.
impl Param for BTreeMap<String, String> {
    const KIND: ParamKind = ParamKind::StrTable;
    fn from_value(v: &Value, _: &Path) -> Result<Self, String> {
        let Value::Table(t) = v else {
            return Err(wrong(v, Self::KIND));
        };
        t.iter()
            .map(|(k, x)| {
                let s = match x {
                    Value::Int(_) | Value::Float(_) | Value::Bool(_) => x.to_string(),
                    Value::Path(r) => r.label().to_string(),
                    x => text(x).ok_or_else(|| {
                        format!(
                            "`{k}` must be a string, not {}",
                            crate::value::a(x.type_name())
                        )
                    })?,
                };
                Ok((k.clone(), s))
            })
            .collect()
    }
}

/// Any value, read by the op itself.
impl Param for Value {
    const KIND: ParamKind = ParamKind::Any;
    fn from_value(v: &Value, _: &Path) -> Result<Self, String> {
        Ok(v.clone())
    }
}

/// An op's parameters as one typed struct: made by [`params!`](crate::params!).
pub trait Declared: Sized {
    /// Every parameter, in declaration order.
    const SPECS: &'static [ParamSpec];

    /// Reads checked parameters; a parameter not in `p` takes its default.
    /// Every parameter that cannot be read gives one error.
    fn from_params(p: &Params, dir: &Path) -> Result<Self, Vec<ParamError>>;
}

/// Reads parameter `name` of `specs` from `p` for [`params!`](crate::params!): its value,
/// or its default when `p` lacks it.
#[doc(hidden)]
pub fn read<T: Param>(
    p: &Params,
    specs: &[ParamSpec],
    name: &'static str,
    dir: &Path,
    errs: &mut Vec<ParamError>,
) -> Option<T> {
    let owned;
    let v = match p.get(name) {
        Some(v) => v,
        None => {
            let spec = specs.iter().find(|s| s.name == name)?;
            match spec.default_value() {
                Some(v) => {
                    owned = v;
                    &owned
                }
                None => {
                    errs.push(ParamError::new(name, "is required"));
                    return None;
                }
            }
        }
    };
    match T::from_value(v, dir) {
        Ok(t) => Some(t),
        Err(m) => {
            errs.push(ParamError::new(name, m));
            None
        }
    }
}

/// Trims a doc comment's lines, joined by `concat!`, at compile time.
#[doc(hidden)]
pub const fn help(doc: &'static str) -> &'static str {
    doc.trim_ascii()
}

/// Declares an op's parameters once: a struct whose fields are the
/// parameters (see the [module docs](mod@crate::params)).
///
/// Each field is `/// help` lines, `name: Type`, and optionally `= DEFAULT`
/// as a TOML value (`0.5`, `""`, `[1.0, 1.0]`, `"cosine"`, `{}`); a field
/// without a default is required.
#[macro_export]
macro_rules! params {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $doc:expr])*
                $field:ident : $ty:ty $(= $default:expr)?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq)]
        $vis struct $name {
            $(
                $(#[doc = $doc])*
                pub $field: $ty,
            )*
        }

        impl $crate::params::Declared for $name {
            const SPECS: &'static [$crate::params::ParamSpec] = &[
                $(
                    $crate::params::ParamSpec {
                        name: stringify!($field),
                        kind: <$ty as $crate::params::Param>::KIND,
                        default: $crate::params!(@default $($default)?),
                        help: $crate::params::help(concat!($($doc),*)),
                    },
                )*
            ];

            fn from_params(
                p: &$crate::params::Params,
                dir: &::std::path::Path,
            ) -> ::std::result::Result<Self, ::std::vec::Vec<$crate::params::ParamError>> {
                let mut errs = ::std::vec::Vec::new();
                $(
                    let $field = $crate::params::read::<$ty>(
                        p, Self::SPECS, stringify!($field), dir, &mut errs,
                    );
                )*
                match ($($field,)*) {
                    ($(Some($field),)*) if errs.is_empty() => Ok($name { $($field,)* }),
                    _ => Err(errs),
                }
            }
        }
    };
    (@default) => { None };
    (@default $default:expr) => { Some(stringify!($default)) };
}

/// Declares a parameter that takes one of a few spellings, as a Rust enum:
/// `choice! { pub enum Kind { Kfold = "kfold", Group = "group" } }`.
///
/// The enum gets `NAMES` (the spellings, in order), `as_str`, `parse`,
/// `Display`, serde as its spelling, and [`Param`] (a misspelt value is
/// caught by the checker with a did-you-mean).
#[macro_export]
macro_rules! choice {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $(
                $(#[$vmeta:meta])*
                $variant:ident = $text:literal
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every spelling, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            pub fn parse(s: &str) -> Option<$name> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::params::Param for $name {
            const KIND: $crate::params::ParamKind =
                $crate::params::ParamKind::Enum($name::NAMES);
            fn from_value(
                v: &$crate::value::Value,
                _: &::std::path::Path,
            ) -> ::std::result::Result<Self, String> {
                v.as_str()
                    .and_then($name::parse)
                    .ok_or_else(|| $crate::params::not_one_of(v, $name::NAMES))
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> ::std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> ::std::result::Result<Self, D::Error> {
                let s = <::std::borrow::Cow<'de, str>>::deserialize(d)?;
                $name::parse(&s).ok_or_else(|| {
                    ::serde::de::Error::custom(format!(
                        "`{s}` is not one of {}",
                        $name::NAMES.join(", ")
                    ))
                })
            }
        }
    };
}

/// The message for a value that is none of `names`, with a suggestion.
pub fn not_one_of(v: &Value, names: &'static [&'static str]) -> String {
    let s = match v.as_str() {
        Some(s) => s,
        None => return wrong(v, ParamKind::Enum(names)),
    };
    match suggest(s, names.iter().copied()) {
        Some(c) => format!(
            "`{s}` is not one of {}; did you mean `{c}`?",
            names.join(", ")
        ),
        None => format!("`{s}` is not one of {}", names.join(", ")),
    }
}

pub use crate::diag::suggest;

/// A markdown table of parameters: name, type, default, help.
pub fn markdown_table(specs: &[ParamSpec]) -> String {
    let mut s = String::from("| parameter | type | default | meaning |\n|---|---|---|---|\n");
    for p in specs {
        let default = p
            .default
            .map(|d| format!("`{d}`"))
            .unwrap_or_else(|| "required".into());
        s.push_str(&format!(
            "| `{}` | {} | {default} | {} |\n",
            p.name,
            p.kind.describe().replace('|', "\\|"),
            p.help.replace('|', "\\|")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::choice! {
        enum Fruit { Apple = "apple", Pear = "pear" }
    }

    crate::params! {
        struct Example {
            /// how many
            /// of them
            n: usize = 2,
            /// which fruit
            fruit: Fruit = "pear",
            /// a file
            table: PathBuf,
            /// maybe a file
            other: Option<PathBuf> = "",
            /// words
            words: Strs = "",
            /// numbers
            xs: Vec<f64> = [1, 2.5],
        }
    }

    fn with(pairs: &[(&'static str, Value)]) -> Params {
        pairs.iter().cloned().collect()
    }

    #[test]
    fn one_declaration_gives_specs_defaults_and_help() {
        let names: Vec<_> = Example::SPECS.iter().map(|s| s.name).collect();
        assert_eq!(names, ["n", "fruit", "table", "other", "words", "xs"]);
        assert_eq!(Example::SPECS[0].help, "how many of them");
        assert_eq!(Example::SPECS[0].default, Some("2"));
        assert_eq!(Example::SPECS[1].kind, ParamKind::Enum(&["apple", "pear"]));
        assert_eq!(Example::SPECS[2].default, None);
        assert_eq!(Example::SPECS[5].default, Some("[1, 2.5]"));
        let e = Example::from_params(
            &with(&[("table", Value::Str("t.csv".into()))]),
            "d".as_ref(),
        )
        .unwrap();
        assert_eq!(
            e,
            Example {
                n: 2,
                fruit: Fruit::Pear,
                table: "d/t.csv".into(),
                other: None,
                words: Strs(vec![]),
                xs: vec![1.0, 2.5],
            }
        );
    }

    #[test]
    fn every_unreadable_parameter_is_one_error() {
        let errs = Example::from_params(
            &with(&[("n", Value::Int(-1)), ("fruit", Value::Str("appel".into()))]),
            "".as_ref(),
        )
        .unwrap_err();
        let msgs: Vec<_> = errs
            .iter()
            .map(|e| format!("{}: {}", e.param, e.message))
            .collect();
        assert_eq!(
            msgs,
            [
                "n: must not be negative",
                "fruit: `appel` is not one of apple, pear; did you mean `apple`?",
                "table: is required",
            ]
        );
    }

    #[test]
    fn suggestions_take_close_spellings_and_initials() {
        let train = ["lr", "epochs", "batch_size", "min_lr"];
        assert_eq!(suggest("learning_rate", train), Some("lr"));
        assert_eq!(suggest("batchsize", train), Some("batch_size"));
        assert_eq!(suggest("bs", train), Some("batch_size"));
        assert_eq!(suggest("weights", train), None);
        let kinds = ["kfold", "stratified", "group", "stratified_group"];
        assert_eq!(suggest("stratifed", kinds), Some("stratified"));
    }

    #[test]
    fn a_choice_reads_and_writes_its_spelling() {
        assert_eq!(Fruit::parse("apple"), Some(Fruit::Apple));
        assert_eq!(Fruit::ALL, [Fruit::Apple, Fruit::Pear]);
        assert_eq!(Fruit::NAMES, ["apple", "pear"]);
        assert_eq!(Fruit::Pear.to_string(), "pear");
        assert_eq!(serde_json::to_string(&Fruit::Pear).unwrap(), "\"pear\"");
        assert_eq!(
            serde_json::from_str::<Fruit>("\"apple\"").unwrap(),
            Fruit::Apple
        );
        assert!(serde_json::from_str::<Fruit>("\"plum\"").is_err());
    }
}
