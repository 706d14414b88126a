//! Where a piece of a TOML string is in the manifest's source: what the
//! expression parser and the template splitter both map offsets through.

use crate::diag::Span;

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

    pub(super) fn shifted(&self, by: usize) -> SpanMap {
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
