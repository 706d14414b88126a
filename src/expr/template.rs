//! Strings with `${...}` in them.

use super::parse::{Expr, parse_expr};
use crate::diag::{Diagnostic, Span};

/// Maps offsets in a decoded string to spans in its source.
///
/// When the source text of a TOML string is exactly its content (no escape
/// sequences), offsets map one to one; otherwise every offset maps to the
/// whole string, which is still the right line.
#[derive(Clone, Copy, Debug)]
pub struct SpanMap {
    /// Span of the string's content in the source (inside the quotes).
    pub base: Span,
    pub exact: bool,
}

impl SpanMap {
    /// A map for `content`, found in the source as the value at `value_span`
    /// (quotes included) whose source text is `source_text`.
    pub fn for_string(value_span: Span, source_text: &str, content: &str) -> SpanMap {
        for q in ["\"\"\"", "'''", "\"", "'"] {
            if source_text.len() >= 2 * q.len()
                && source_text.starts_with(q)
                && source_text.ends_with(q)
            {
                let inner = &source_text[q.len()..source_text.len() - q.len()];
                if inner == content {
                    return SpanMap {
                        base: value_span.sub(q.len(), q.len() + inner.len()),
                        exact: true,
                    };
                }
            }
        }
        SpanMap {
            base: value_span,
            exact: source_text == content,
        }
    }

    pub fn whole(span: Span) -> SpanMap {
        SpanMap {
            base: span,
            exact: false,
        }
    }

    pub fn span(&self, start: usize, end: usize) -> Span {
        if self.exact {
            self.base.sub(start, end)
        } else {
            self.base
        }
    }

    fn shifted(&self, by: usize) -> SpanMap {
        if self.exact {
            SpanMap {
                base: self.base.sub(by, usize::MAX / 2),
                exact: true,
            }
        } else {
            *self
        }
    }
}

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
