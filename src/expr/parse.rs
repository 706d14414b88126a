//! Parsing with pest and a Pratt parser for operator precedence.

use std::sync::LazyLock;

use pest::Parser;
use pest::iterators::{Pair, Pairs};
use pest::pratt_parser::{Assoc, Op, PrattParser};

use super::span_map::SpanMap;
use crate::diag::{Diagnostic, Span};
use crate::value::Value;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/expr.pest"]
struct ExprParser;

/// A parsed expression with the span it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Lit(Value),
    Ident(String),
    Field(Box<Expr>, String),
    Index(Box<Expr>, Box<Expr>),
    Select(Box<Expr>, Vec<(String, Expr)>),
    SelectAll(Box<Expr>),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    If(Box<Expr>, Box<Expr>, Box<Expr>),
    Call(String, Vec<Expr>),
    List(Vec<Expr>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "||",
            BinOp::And => "&&",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
        }
    }
}

static PRATT: LazyLock<PrattParser<Rule>> = LazyLock::new(|| {
    PrattParser::new()
        .op(Op::infix(Rule::or, Assoc::Left))
        .op(Op::infix(Rule::and, Assoc::Left))
        .op(Op::infix(Rule::eq, Assoc::Left)
            | Op::infix(Rule::ne, Assoc::Left)
            | Op::infix(Rule::lt, Assoc::Left)
            | Op::infix(Rule::le, Assoc::Left)
            | Op::infix(Rule::gt, Assoc::Left)
            | Op::infix(Rule::ge, Assoc::Left))
        .op(Op::infix(Rule::add, Assoc::Left) | Op::infix(Rule::sub, Assoc::Left))
        .op(Op::infix(Rule::mul, Assoc::Left)
            | Op::infix(Rule::div, Assoc::Left)
            | Op::infix(Rule::rem, Assoc::Left))
        .op(Op::prefix(Rule::neg) | Op::prefix(Rule::not))
        .op(Op::postfix(Rule::field)
            | Op::postfix(Rule::index)
            | Op::postfix(Rule::select)
            | Op::postfix(Rule::select_all))
});

/// Nesting deeper than this is refused rather than risking the stack.
const MAX_DEPTH: usize = 64;

/// Parses the text of one `${...}` (without the braces). `map` turns
/// offsets in `text` into source spans.
pub fn parse_expr(text: &str, map: &SpanMap) -> Result<Expr, Diagnostic> {
    let depth = text
        .chars()
        .scan(0i64, |d, c| {
            match c {
                '(' | '[' => *d += 1,
                ')' | ']' => *d -= 1,
                _ => {}
            }
            Some(*d)
        })
        .max()
        .unwrap_or(0);
    if depth as usize > MAX_DEPTH {
        return Err(
            Diagnostic::error("expression-syntax", "expression nests too deeply")
                .at(map.span(0, text.len()), "more than 64 levels of brackets"),
        );
    }
    let mut pairs = ExprParser::parse(Rule::expression, text).map_err(|e| {
        let (start, end) = match e.location {
            pest::error::InputLocation::Pos(p) => (p, p + 1),
            pest::error::InputLocation::Span((s, e)) => (s, e),
        };
        let end = end.min(text.len()).max(start);
        let found = text[start.min(text.len())..]
            .chars()
            .next()
            .map(|c| format!("unexpected `{c}`"))
            .unwrap_or_else(|| "the expression ends too soon".into());
        Diagnostic::error("expression-syntax", "invalid expression")
            .at(map.span(start, end), found)
            .help(expected_help(&e))
    })?;
    let expression = pairs.next().expect("grammar: expression");
    let expr = expression.into_inner().next().expect("grammar: expr");
    Ok(build(expr.into_inner(), map))
}

fn expected_help(e: &pest::error::Error<Rule>) -> String {
    match &e.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } if !positives.is_empty() => {
            let mut names: Vec<&str> = positives.iter().map(|r| rule_name(*r)).collect();
            names.sort();
            names.dedup();
            format!("expected {}", names.join(", "))
        }
        _ => "see grammar/GRAMMAR.md for the expression syntax".into(),
    }
}

fn rule_name(r: Rule) -> &'static str {
    match r {
        Rule::expr
        | Rule::primary
        | Rule::operand
        | Rule::boolean
        | Rule::list
        | Rule::call
        | Rule::conditional
        | Rule::neg
        | Rule::not
        | Rule::prefix
        | Rule::literal => "a value",
        Rule::ident => "a name",
        Rule::int | Rule::float => "a number",
        Rule::string => "a string",
        Rule::EOI => "the end of the expression",
        Rule::or
        | Rule::and
        | Rule::eq
        | Rule::ne
        | Rule::lt
        | Rule::le
        | Rule::gt
        | Rule::ge
        | Rule::add
        | Rule::sub
        | Rule::mul
        | Rule::div
        | Rule::rem
        | Rule::infix => "an operator",
        Rule::field | Rule::index | Rule::select | Rule::select_all | Rule::postfix => "`.`, `[`",
        Rule::selector => "`key=value`",
        _ => "more",
    }
}

fn span_of(p: &Pair<Rule>, map: &SpanMap) -> Span {
    let s = p.as_span();
    map.span(s.start(), s.end())
}

fn join(a: Span, b: Span) -> Span {
    Span::new(a.src, a.start.min(b.start), a.end.max(b.end))
}

fn build(pairs: Pairs<Rule>, map: &SpanMap) -> Expr {
    PRATT
        .map_primary(|p| primary(p, map))
        .map_prefix(|op, rhs| {
            let span = join(span_of(&op, map), rhs.span);
            let op = match op.as_rule() {
                Rule::neg => UnOp::Neg,
                _ => UnOp::Not,
            };
            Expr {
                kind: ExprKind::Unary(op, Box::new(rhs)),
                span,
            }
        })
        .map_postfix(|lhs, op| {
            let span = join(lhs.span, span_of(&op, map));
            let lhs = Box::new(lhs);
            let kind = match op.as_rule() {
                Rule::field => {
                    ExprKind::Field(lhs, op.into_inner().next().unwrap().as_str().to_string())
                }
                Rule::index => ExprKind::Index(
                    lhs,
                    Box::new(build_expr(op.into_inner().next().unwrap(), map)),
                ),
                Rule::select_all => ExprKind::SelectAll(lhs),
                _ => ExprKind::Select(
                    lhs,
                    op.into_inner()
                        .map(|sel| {
                            let mut it = sel.into_inner();
                            let key = it.next().unwrap().as_str().to_string();
                            (key, build_expr(it.next().unwrap(), map))
                        })
                        .collect(),
                ),
            };
            Expr { kind, span }
        })
        .map_infix(|lhs, op, rhs| {
            let op = match op.as_rule() {
                Rule::or => BinOp::Or,
                Rule::and => BinOp::And,
                Rule::eq => BinOp::Eq,
                Rule::ne => BinOp::Ne,
                Rule::lt => BinOp::Lt,
                Rule::le => BinOp::Le,
                Rule::gt => BinOp::Gt,
                Rule::ge => BinOp::Ge,
                Rule::add => BinOp::Add,
                Rule::sub => BinOp::Sub,
                Rule::mul => BinOp::Mul,
                Rule::div => BinOp::Div,
                _ => BinOp::Rem,
            };
            Expr {
                span: join(lhs.span, rhs.span),
                kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
            }
        })
        .parse(pairs)
}

fn build_expr(p: Pair<Rule>, map: &SpanMap) -> Expr {
    debug_assert_eq!(p.as_rule(), Rule::expr);
    build(p.into_inner(), map)
}

fn primary(p: Pair<Rule>, map: &SpanMap) -> Expr {
    let span = span_of(&p, map);
    let kind = match p.as_rule() {
        Rule::expr => return build_expr(p, map),
        Rule::boolean => ExprKind::Lit(Value::Bool(p.as_str() == "true")),
        Rule::int => match p.as_str().parse::<i64>() {
            Ok(i) => ExprKind::Lit(Value::Int(i)),
            // Too large for an integer: keep it as a float rather than fail.
            Err(_) => ExprKind::Lit(Value::Float(p.as_str().parse().unwrap_or(f64::INFINITY))),
        },
        Rule::float => ExprKind::Lit(Value::Float(p.as_str().parse().unwrap_or(f64::NAN))),
        Rule::string => {
            let inner = p.into_inner().next().unwrap().as_str();
            ExprKind::Lit(Value::Str(unescape(inner)))
        }
        Rule::ident => ExprKind::Ident(p.as_str().to_string()),
        Rule::list => ExprKind::List(p.into_inner().map(|e| build_expr(e, map)).collect()),
        Rule::call => {
            let mut it = p.into_inner();
            let name = it.next().unwrap().as_str().to_string();
            ExprKind::Call(name, it.map(|e| build_expr(e, map)).collect())
        }
        Rule::conditional => {
            let mut it = p.into_inner().map(|e| build_expr(e, map));
            let (c, t, e) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
            ExprKind::If(Box::new(c), Box::new(t), Box::new(e))
        }
        r => unreachable!("grammar: unexpected primary {r:?}"),
    };
    Expr { kind, span }
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}
