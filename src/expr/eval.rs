//! Evaluation of expressions against an environment of params, inputs,
//! matrix variables and stages.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::parse::{BinOp, Expr, ExprKind, UnOp};
use super::template::{Segment, Template};
use crate::diag::{Diagnostic, Span};
use crate::value::Value;

/// A selection of instances of one stage, before an output is named.
#[derive(Clone, Debug, PartialEq)]
pub struct StageSel {
    pub stage: String,
    /// Graph instance numbers, in matrix order.
    pub instances: Vec<usize>,
    /// True after `[*]` or a partial selection: outputs come as a list.
    pub many: bool,
}

/// An intermediate result: a value, the `stages` namespace, or a stage.
/// A value is borrowed from the environment where it can be, so that
/// `params.lr` costs a lookup, not a copy of every param.
#[derive(Clone, Debug, PartialEq)]
pub enum EVal<'a> {
    V(Cow<'a, Value>),
    Stages,
    Stage(StageSel),
}

impl<'a> EVal<'a> {
    /// A value the caller owns.
    pub fn owned(v: Value) -> Self {
        EVal::V(Cow::Owned(v))
    }
    /// A value the environment keeps.
    pub fn borrowed(v: &'a Value) -> Self {
        EVal::V(Cow::Borrowed(v))
    }
}

/// `table[key]` of a borrowed or owned table, without copying the rest of
/// it; `missing` makes the error when the key is not there.
fn entry<'a>(
    table: Cow<'a, Value>,
    key: &str,
    missing: impl FnOnce(&BTreeMap<String, Value>) -> Diagnostic,
) -> Result<EVal<'a>, Diagnostic> {
    match table {
        Cow::Borrowed(Value::Table(t)) => t.get(key).map(EVal::borrowed).ok_or_else(|| missing(t)),
        Cow::Owned(Value::Table(mut t)) => match t.remove(key) {
            Some(v) => Ok(EVal::owned(v)),
            None => Err(missing(&t)),
        },
        _ => unreachable!("callers pass tables"),
    }
}

/// What names resolve to.
pub trait Env {
    /// A bare name: `params`, `inputs`, `stages`, or a matrix variable.
    fn var(&self, name: &str, span: Span) -> Result<EVal<'_>, Diagnostic>;
    /// `stages.NAME`.
    fn stage(&self, name: &str, span: Span) -> Result<StageSel, Diagnostic>;
    /// `stage[key=value, ...]`. Only reached with a selection that
    /// [`Env::stage`] made, so environments without stages need not say.
    fn select(
        &self,
        _sel: &StageSel,
        _keys: &[(String, Value, Span)],
        span: Span,
    ) -> Result<StageSel, Diagnostic> {
        Err(Diagnostic::error("unknown-reference", "no stages here").at(span, "not a stage"))
    }
    /// `stage.OUTPUT` (or `stage["OUTPUT"]`); as [`Env::select`].
    fn output(&self, _sel: &StageSel, _output: &str, span: Span) -> Result<Value, Diagnostic> {
        Err(Diagnostic::error("unknown-reference", "no stages here").at(span, "not a stage"))
    }
}

fn err(span: Span, msg: impl Into<String>, label: impl Into<String>) -> Diagnostic {
    Diagnostic::error("expression-type", msg).at(span, label)
}

/// Evaluates a parsed string: a lone `${...}` keeps its type, anything
/// else becomes a string (or an interpolated string when paths are in it).
pub fn eval_template(t: &Template, env: &dyn Env) -> Result<Value, Diagnostic> {
    if let Some(e) = t.single() {
        return eval(e, env);
    }
    let mut parts = Vec::new();
    for seg in &t.segments {
        match seg {
            Segment::Lit(s) => Value::Str(s.clone()).interpolate_into(&mut parts),
            Segment::Expr(e) => {
                let v = eval(e, env)?;
                if let Value::Table(_) = v {
                    return Err(err(
                        e.span,
                        "a table cannot be interpolated into a string",
                        "this is a table",
                    ));
                }
                v.interpolate_into(&mut parts)
            }
        }
    }
    Ok(Value::from_parts(parts))
}

/// Evaluates an expression to a value.
pub fn eval(e: &Expr, env: &dyn Env) -> Result<Value, Diagnostic> {
    match eval_inner(e, env)? {
        EVal::V(v) => Ok(v.into_owned()),
        EVal::Stages => Err(err(
            e.span,
            "`stages` needs a stage name",
            "write stages.NAME.OUTPUT",
        )),
        EVal::Stage(s) => Err(err(
            e.span,
            format!("`stages.{}` needs an output name", s.stage),
            "write stages.NAME.OUTPUT",
        )),
    }
}

fn eval_inner<'a>(e: &Expr, env: &'a dyn Env) -> Result<EVal<'a>, Diagnostic> {
    Ok(EVal::owned(match &e.kind {
        ExprKind::Lit(v) => v.clone(),
        ExprKind::Ident(name) => return env.var(name, e.span),
        ExprKind::Field(base, name) => {
            return match eval_inner(base, env)? {
                EVal::Stages => Ok(EVal::Stage(env.stage(name, e.span)?)),
                EVal::Stage(sel) => Ok(EVal::owned(env.output(&sel, name, e.span)?)),
                EVal::V(v) if matches!(*v, Value::Table(_)) => entry(v, name, |t| {
                    Diagnostic::error("unknown-reference", format!("no field `{name}`"))
                        .at(e.span, "not found")
                        .help(
                            crate::diag::did_you_mean(name, t.keys().map(String::as_str))
                                .unwrap_or_else(|| format!("fields: {}", keys(t))),
                        )
                }),
                EVal::V(v) => Err(err(
                    e.span,
                    format!("{} has no fields", crate::value::a(v.type_name())),
                    format!("`.{name}` on {}", crate::value::a(v.type_name())),
                )),
            };
        }
        ExprKind::Index(base, idx) => {
            let b = eval_inner(base, env)?;
            let i = eval(idx, env)?;
            return match (b, i) {
                (EVal::Stages, Value::Str(name)) => Ok(EVal::Stage(env.stage(&name, e.span)?)),
                (EVal::Stage(sel), Value::Str(out)) => {
                    Ok(EVal::owned(env.output(&sel, &out, e.span)?))
                }
                (EVal::V(b), Value::Int(i)) if matches!(*b, Value::List(_)) => {
                    let Value::List(l) = &*b else { unreachable!() };
                    let n = l.len() as i64;
                    let j = if i < 0 { n + i } else { i };
                    if j < 0 || j >= n {
                        Err(err(
                            idx.span,
                            format!("index {i} is out of range for a list of {n}"),
                            "out of range",
                        ))
                    } else {
                        Ok(EVal::V(match b {
                            Cow::Borrowed(Value::List(l)) => Cow::Borrowed(&l[j as usize]),
                            Cow::Owned(Value::List(mut l)) => Cow::Owned(l.swap_remove(j as usize)),
                            _ => unreachable!(),
                        }))
                    }
                }
                (EVal::V(b), Value::Str(k)) if matches!(*b, Value::Table(_)) => entry(b, &k, |t| {
                    Diagnostic::error("unknown-reference", format!("no key `{k}`"))
                        .at(idx.span, "not in the table")
                        .help(format!("keys: {}", keys(t)))
                }),
                (b, i) => Err(err(
                    e.span,
                    format!(
                        "cannot index {} with {}",
                        eval_name(&b),
                        crate::value::a(i.type_name())
                    ),
                    "bad index",
                )),
            };
        }
        ExprKind::Select(base, pairs) => {
            let sel = stage_of(base, env, "`[key=value]` selects instances of a stage")?;
            let mut vals = Vec::new();
            for (k, ex) in pairs {
                vals.push((k.clone(), eval(ex, env)?, ex.span));
            }
            return Ok(EVal::Stage(env.select(&sel, &vals, e.span)?));
        }
        ExprKind::SelectAll(base) => {
            let mut sel = stage_of(base, env, "`[*]` selects all instances of a stage")?;
            sel.many = true;
            return Ok(EVal::Stage(sel));
        }
        ExprKind::Unary(op, x) => {
            let v = eval(x, env)?;
            match (op, v) {
                (UnOp::Neg, Value::Int(i)) => Value::Int(
                    i.checked_neg()
                        .ok_or_else(|| err(e.span, "integer overflow", "overflows"))?,
                ),
                (UnOp::Neg, Value::Float(f)) => Value::Float(-f),
                (UnOp::Not, Value::Bool(b)) => Value::Bool(!b),
                (op, v) => {
                    return Err(err(
                        x.span,
                        format!(
                            "`{}` does not apply to {}",
                            if *op == UnOp::Neg { "-" } else { "!" },
                            crate::value::a(v.type_name())
                        ),
                        format!("this is {}", crate::value::a(v.type_name())),
                    ));
                }
            }
        }
        ExprKind::Binary(op, a, b) => binary(*op, a, b, e.span, env)?,
        ExprKind::If(c, t, f) => {
            let cv = eval(c, env)?;
            match cv {
                Value::Bool(true) => eval(t, env)?,
                Value::Bool(false) => eval(f, env)?,
                v => {
                    return Err(err(
                        c.span,
                        format!(
                            "the condition of `if` must be a boolean, not {}",
                            crate::value::a(v.type_name())
                        ),
                        "not a boolean",
                    ));
                }
            }
        }
        ExprKind::List(items) => Value::List(
            items
                .iter()
                .map(|x| eval(x, env))
                .collect::<Result<_, _>>()?,
        ),
        ExprKind::Call(name, args) => {
            let vals: Vec<Value> = args
                .iter()
                .map(|x| eval(x, env))
                .collect::<Result<_, _>>()?;
            call(name, &vals, args, e.span)?
        }
    }))
}

/// A table's keys for a message: the first few, and how many more.
fn keys(t: &BTreeMap<String, Value>) -> String {
    const SHOWN: usize = 12;
    let mut s = t
        .keys()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if t.len() > SHOWN {
        s.push_str(&format!(", … ({} more)", t.len() - SHOWN));
    }
    s
}

fn eval_name(v: &EVal) -> &'static str {
    match v {
        EVal::V(v) => v.type_name(),
        EVal::Stages => "`stages`",
        EVal::Stage(_) => "a stage",
    }
}

fn stage_of(base: &Expr, env: &dyn Env, what: &str) -> Result<StageSel, Diagnostic> {
    match eval_inner(base, env)? {
        EVal::Stage(s) => Ok(s),
        other => Err(err(
            base.span,
            what.to_string(),
            format!("this is {}, not a stage", eval_name(&other)),
        )),
    }
}

fn binary(op: BinOp, a: &Expr, b: &Expr, span: Span, env: &dyn Env) -> Result<Value, Diagnostic> {
    // `&&` and `||` short-circuit.
    if matches!(op, BinOp::And | BinOp::Or) {
        let av = eval(a, env)?;
        let ab = av.as_bool().ok_or_else(|| {
            err(
                a.span,
                format!("`{}` needs booleans", op.symbol()),
                format!("this is {}", crate::value::a(av.type_name())),
            )
        })?;
        if (op == BinOp::And && !ab) || (op == BinOp::Or && ab) {
            return Ok(Value::Bool(ab));
        }
        let bv = eval(b, env)?;
        return bv.as_bool().map(Value::Bool).ok_or_else(|| {
            err(
                b.span,
                format!("`{}` needs booleans", op.symbol()),
                format!("this is {}", crate::value::a(bv.type_name())),
            )
        });
    }
    let av = eval(a, env)?;
    let bv = eval(b, env)?;
    let mismatch = || {
        err(
            span,
            format!(
                "`{}` does not apply to {} and {}",
                op.symbol(),
                crate::value::a(av.type_name()),
                crate::value::a(bv.type_name())
            ),
            "type mismatch",
        )
    };
    let overflow = || err(span, "integer overflow", "overflows");
    use Value::*;
    Ok(match op {
        BinOp::Eq => Bool(values_equal(&av, &bv)),
        BinOp::Ne => Bool(!values_equal(&av, &bv)),
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let ord = match (&av, &bv) {
                (Str(x), Str(y)) => x.partial_cmp(y),
                _ => match (av.as_f64(), bv.as_f64()) {
                    (Some(x), Some(y)) => x.partial_cmp(&y),
                    _ => return Err(mismatch()),
                },
            };
            let Some(ord) = ord else {
                return Ok(Bool(false));
            };
            Bool(match op {
                BinOp::Lt => ord.is_lt(),
                BinOp::Le => ord.is_le(),
                BinOp::Gt => ord.is_gt(),
                _ => ord.is_ge(),
            })
        }
        BinOp::Add => match (&av, &bv) {
            (Int(x), Int(y)) => Int(x.checked_add(*y).ok_or_else(overflow)?),
            (Str(x), Str(y)) => Str(format!("{x}{y}")),
            (List(x), List(y)) => List(x.iter().chain(y).cloned().collect()),
            _ => arith(&av, &bv, |x, y| x + y).ok_or_else(mismatch)?,
        },
        BinOp::Sub => match (&av, &bv) {
            (Int(x), Int(y)) => Int(x.checked_sub(*y).ok_or_else(overflow)?),
            _ => arith(&av, &bv, |x, y| x - y).ok_or_else(mismatch)?,
        },
        BinOp::Mul => match (&av, &bv) {
            (Int(x), Int(y)) => Int(x.checked_mul(*y).ok_or_else(overflow)?),
            _ => arith(&av, &bv, |x, y| x * y).ok_or_else(mismatch)?,
        },
        BinOp::Div | BinOp::Rem => match (&av, &bv) {
            (Int(_), Int(0)) => return Err(err(b.span, "division by zero", "zero")),
            (Int(x), Int(y)) => Int(if op == BinOp::Div {
                x.checked_div(*y).ok_or_else(overflow)?
            } else {
                x.checked_rem(*y).ok_or_else(overflow)?
            }),
            _ => {
                if op == BinOp::Div {
                    arith(&av, &bv, |x, y| x / y).ok_or_else(mismatch)?
                } else {
                    arith(&av, &bv, |x, y| x % y).ok_or_else(mismatch)?
                }
            }
        },
        BinOp::And | BinOp::Or => unreachable!(),
    })
}

fn values_equal(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn arith(a: &Value, b: &Value, f: impl Fn(f64, f64) -> f64) -> Option<Value> {
    Some(Value::Float(f(a.as_f64()?, b.as_f64()?)))
}

/// The names of the built-in functions.
pub const FUNCTIONS: &[&str] = &[
    "range", "len", "concat", "min", "max", "format", "str", "join",
];

fn call(name: &str, vals: &[Value], args: &[Expr], span: Span) -> Result<Value, Diagnostic> {
    let arity = |lo: usize, hi: usize| -> Result<(), Diagnostic> {
        if vals.len() < lo || vals.len() > hi {
            let want = if lo == hi {
                format!("{lo}")
            } else if hi == usize::MAX {
                format!("at least {lo}")
            } else {
                format!("{lo} to {hi}")
            };
            Err(err(
                span,
                format!("`{name}` takes {want} argument(s), not {}", vals.len()),
                "wrong number of arguments",
            ))
        } else {
            Ok(())
        }
    };
    let int_arg = |i: usize| -> Result<i64, Diagnostic> {
        vals[i].as_int().ok_or_else(|| {
            err(
                args[i].span,
                format!("`{name}` needs an integer"),
                format!("this is {}", crate::value::a(vals[i].type_name())),
            )
        })
    };
    match name {
        "range" => {
            arity(1, 3)?;
            let (start, end) = if vals.len() == 1 {
                (0, int_arg(0)?)
            } else {
                (int_arg(0)?, int_arg(1)?)
            };
            let step = if vals.len() == 3 { int_arg(2)? } else { 1 };
            if step == 0 {
                return Err(err(args[2].span, "`range` step must not be zero", "zero"));
            }
            let count = if step > 0 {
                (end - start).max(0) / step
            } else {
                (start - end).max(0) / -step
            };
            if count > 1_000_000 {
                return Err(err(
                    span,
                    "`range` of more than 1,000,000 values",
                    "too large",
                ));
            }
            let mut out = Vec::new();
            let mut i = start;
            while (step > 0 && i < end) || (step < 0 && i > end) {
                out.push(Value::Int(i));
                i += step;
            }
            Ok(Value::List(out))
        }
        "len" => {
            arity(1, 1)?;
            match &vals[0] {
                Value::List(l) => Ok(Value::Int(l.len() as i64)),
                Value::Str(s) => Ok(Value::Int(s.chars().count() as i64)),
                Value::Table(t) => Ok(Value::Int(t.len() as i64)),
                v => Err(err(
                    args[0].span,
                    format!("`len` of {}", crate::value::a(v.type_name())),
                    "no length",
                )),
            }
        }
        "concat" => {
            if vals.iter().all(|v| matches!(v, Value::List(_))) {
                Ok(Value::List(
                    vals.iter()
                        .flat_map(|v| v.as_list().unwrap().to_vec())
                        .collect(),
                ))
            } else {
                let mut parts = Vec::new();
                for (v, a) in vals.iter().zip(args) {
                    match v {
                        Value::List(_) | Value::Table(_) => {
                            return Err(err(
                                a.span,
                                "`concat` takes all lists or all strings",
                                "mixed",
                            ));
                        }
                        v => v.interpolate_into(&mut parts),
                    }
                }
                Ok(Value::from_parts(parts))
            }
        }
        "min" | "max" => {
            arity(1, usize::MAX)?;
            let items: Vec<Value> = match vals {
                [Value::List(l)] => l.clone(),
                _ => vals.to_vec(),
            };
            let mut best: Option<Value> = None;
            for v in items {
                if v.as_f64().is_none() {
                    return Err(err(
                        span,
                        format!(
                            "`{name}` needs numbers, got {}",
                            crate::value::a(v.type_name())
                        ),
                        "not a number",
                    ));
                }
                best = Some(match best {
                    None => v,
                    Some(b) => {
                        let (x, y) = (b.as_f64().unwrap(), v.as_f64().unwrap());
                        if (name == "min" && y < x) || (name == "max" && y > x) {
                            v
                        } else {
                            b
                        }
                    }
                });
            }
            best.ok_or_else(|| err(span, format!("`{name}` of an empty list"), "empty"))
        }
        "format" => {
            arity(1, usize::MAX)?;
            let Value::Str(fmt) = &vals[0] else {
                return Err(err(
                    args[0].span,
                    "`format` needs a format string first",
                    "not a string",
                ));
            };
            let pieces: Vec<&str> = fmt.split("{}").collect();
            if pieces.len() - 1 != vals.len() - 1 {
                return Err(err(
                    span,
                    format!(
                        "format string has {} `{{}}` but {} value(s) follow",
                        pieces.len() - 1,
                        vals.len() - 1
                    ),
                    "count mismatch",
                ));
            }
            let mut parts = Vec::new();
            for (i, p) in pieces.iter().enumerate() {
                Value::Str(p.to_string()).interpolate_into(&mut parts);
                if let Some(v) = vals.get(i + 1) {
                    v.interpolate_into(&mut parts);
                }
            }
            Ok(Value::from_parts(parts))
        }
        "str" => {
            arity(1, 1)?;
            let mut parts = Vec::new();
            vals[0].interpolate_into(&mut parts);
            Ok(Value::from_parts(parts))
        }
        "join" => {
            arity(2, 2)?;
            let (Value::List(items), Value::Str(sep)) = (&vals[0], &vals[1]) else {
                return Err(err(
                    span,
                    "`join` takes a list and a separator string",
                    "bad arguments",
                ));
            };
            let mut parts = Vec::new();
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    Value::Str(sep.clone()).interpolate_into(&mut parts);
                }
                v.interpolate_into(&mut parts);
            }
            Ok(Value::from_parts(parts))
        }
        _ => Err(
            Diagnostic::error("unknown-function", format!("unknown function `{name}`"))
                .at(span, "not a function")
                .help(
                    crate::diag::did_you_mean(name, FUNCTIONS.iter().copied())
                        .unwrap_or_else(|| format!("functions: {}", FUNCTIONS.join(", "))),
                ),
        ),
    }
}
