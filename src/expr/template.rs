//! Strings with `${...}` in them.

use super::parse::{Expr, parse_expr};
use super::span_map::SpanMap;
use crate::diag::Diagnostic;

/// A piece of a string: literal text or an expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Segment {
    Lit(String),
    Expr(Expr),
}

/// A parsed string.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    pub segments: Vec<Segment>,
}

impl Template {
    /// The expression, when the string is exactly one `${...}` and so keeps
    /// the expression's type.
    pub fn single(&self) -> Option<&Expr> {
        match self.segments.as_slice() {
            [Segment::Expr(e)] => Some(e),
            _ => None,
        }
    }

    pub fn is_literal(&self) -> bool {
        self.segments.iter().all(|s| matches!(s, Segment::Lit(_)))
    }

    pub fn exprs(&self) -> impl Iterator<Item = &Expr> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Expr(e) => Some(e),
            Segment::Lit(_) => None,
        })
    }
}

/// Splits a string into literal text and `${...}` expressions. `$${` is a
/// literal `${`. Every syntax error in the string is reported.
pub fn parse_template(s: &str, map: &SpanMap) -> Result<Template, Vec<Diagnostic>> {
    let mut segments = Vec::new();
    let mut errors = Vec::new();
    let mut lit = String::new();
    let mut i = 0;
    while i < s.len() {
        if s[i..].starts_with("$${") {
            lit.push_str("${");
            i += 3;
        } else if s[i..].starts_with("${") {
            let start = i + 2;
            match find_close(&s[start..]) {
                Some(len) => {
                    let text = &s[start..start + len];
                    if text.trim().is_empty() {
                        errors.push(
                            Diagnostic::error("expression-syntax", "empty `${}`")
                                .at(map.span(i, start + len + 1), "nothing inside"),
                        );
                    } else {
                        match parse_expr(text, &map.shifted(start)) {
                            Ok(e) => {
                                if !lit.is_empty() {
                                    segments.push(Segment::Lit(std::mem::take(&mut lit)));
                                }
                                segments.push(Segment::Expr(e));
                            }
                            Err(d) => errors.push(d),
                        }
                    }
                    i = start + len + 1;
                }
                None => {
                    errors.push(
                        Diagnostic::error("expression-syntax", "unclosed `${`")
                            .at(map.span(i, s.len()), "no matching `}`")
                            .help("write `$${` for a literal `${`"),
                    );
                    break;
                }
            }
        } else {
            let c = s[i..].chars().next().unwrap();
            lit.push(c);
            i += c.len_utf8();
        }
    }
    if !lit.is_empty() || segments.is_empty() {
        segments.push(Segment::Lit(lit));
    }
    if errors.is_empty() {
        Ok(Template { segments })
    } else {
        Err(errors)
    }
}

/// Length up to the `}` that closes an expression, skipping quoted strings.
fn find_close(s: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' => quote = Some(c),
                '}' => return Some(i),
                _ => {}
            },
        }
    }
    None
}
