//! Diagnostics: errors and warnings that point at a span of a source file.
//!
//! Every manifest value keeps a [`Span`] into a [`SourceMap`] so that a
//! diagnostic can be drawn with a caret under the offending text
//! (through miette) or written as JSON for CI.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

/// Index of a source in a [`SourceMap`].
pub type SrcId = u32;

/// A byte range in one source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub src: SrcId,
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(src: SrcId, start: usize, end: usize) -> Span {
        Span { src, start, end }
    }

    /// A span inside this one, `start..end` relative to this span's start.
    pub fn sub(self, start: usize, end: usize) -> Span {
        let s = (self.start + start).min(self.end);
        let e = (self.start + end).clamp(s, self.end);
        Span::new(self.src, s, e)
    }
}

/// One source text: a manifest file or a command-line override.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub name: String,
    pub text: Arc<str>,
}

/// All sources that spans may point into.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

impl SourceMap {
    pub fn add(&mut self, name: impl Into<String>, text: impl Into<Arc<str>>) -> SrcId {
        self.files.push(SourceFile {
            name: name.into(),
            text: text.into(),
        });
        (self.files.len() - 1) as SrcId
    }

    pub fn get(&self, id: SrcId) -> &SourceFile {
        &self.files[id as usize]
    }

    pub fn text(&self, span: Span) -> &str {
        let f = self.get(span.src);
        f.text.get(span.start..span.end).unwrap_or("")
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, src: SrcId, offset: usize) -> (usize, usize) {
        let text = &self.get(src).text;
        let offset = offset.min(text.len());
        let before = &text[..floor_char_boundary(text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// The most errors one manifest reports: after them checking stops, so that
/// a manifest of 100,000 broken lines costs no more to check and to show
/// than one of 100.
pub const MAX_ERRORS: usize = 100;

/// Keeps the diagnostics up to the [`MAX_ERRORS`]th error, and says so
/// when it drops any.
pub fn cap(diags: &mut Vec<Diagnostic>) {
    let mut errors = 0;
    let Some(cut) = diags.iter().position(|d| {
        errors += d.is_error() as usize;
        errors > MAX_ERRORS
    }) else {
        return;
    };
    diags.truncate(cut);
    diags.push(too_many_errors());
}

/// The note that ends a capped list of diagnostics.
pub fn too_many_errors() -> Diagnostic {
    Diagnostic::error(
        "too-many-errors",
        format!("stopped after {MAX_ERRORS} errors; fix these and check again"),
    )
}

/// A message about a place in a source.
#[derive(Clone, Debug)]
pub struct Diagnostic {
    pub severity: Severity,
    /// A stable short code, e.g. `unknown-reference`.
    pub code: &'static str,
    pub message: String,
    pub span: Option<Span>,
    /// Text drawn beside the caret.
    pub label: String,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            span: None,
            label: String::new(),
            help: None,
        }
    }

    pub fn at(mut self, span: Span, label: impl Into<String>) -> Diagnostic {
        self.span = Some(span);
        self.label = label.into();
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The message and its label on one line, for a diagnostic whose
    /// source is not a file worth drawing (`podium op`'s flags).
    pub fn one_line(&self) -> String {
        if self.label.is_empty() {
            self.message.clone()
        } else {
            format!("{} ({})", self.message, self.label)
        }
    }
}

/// Diagnostics together with the sources they point into.
#[derive(Clone, Debug)]
pub struct Report {
    pub sources: SourceMap,
    pub diagnostics: Vec<Diagnostic>,
}

/// The JSON form of one diagnostic (`podium check --format json`).
#[derive(Serialize, Debug)]
pub struct JsonDiagnostic {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub file: Option<String>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub end_line: Option<usize>,
    pub end_column: Option<usize>,
    pub label: String,
    pub help: Option<String>,
}

impl Report {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    pub fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    pub fn to_json(&self) -> Vec<JsonDiagnostic> {
        self.diagnostics
            .iter()
            .map(|d| {
                let (file, start, end) = match d.span {
                    Some(s) => (
                        Some(self.sources.get(s.src).name.clone()),
                        Some(self.sources.line_col(s.src, s.start)),
                        Some(self.sources.line_col(s.src, s.end)),
                    ),
                    None => (None, None, None),
                };
                JsonDiagnostic {
                    severity: d.severity,
                    code: d.code,
                    message: d.message.clone(),
                    file,
                    line: start.map(|p| p.0),
                    column: start.map(|p| p.1),
                    end_line: end.map(|p| p.0),
                    end_column: end.map(|p| p.1),
                    label: d.label.clone(),
                    help: d.help.clone(),
                }
            })
            .collect()
    }

    /// Draws every diagnostic with its source snippet and caret.
    pub fn render(&self, color: bool) -> String {
        use miette::{GraphicalReportHandler, GraphicalTheme};
        let theme = if color {
            GraphicalTheme::unicode()
        } else {
            GraphicalTheme::unicode_nocolor()
        };
        let handler = GraphicalReportHandler::new_themed(theme).with_width(100);
        let mut out = String::new();
        for d in &self.diagnostics {
            let m = MietteDiag::new(d, &self.sources);
            let _ = handler.render_report(&mut out, &m);
            out.push('\n');
        }
        out
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.diagnostics {
            match d.span {
                Some(s) => {
                    let (l, c) = self.sources.line_col(s.src, s.start);
                    writeln!(
                        f,
                        "{}:{}:{}: {}",
                        self.sources.get(s.src).name,
                        l,
                        c,
                        d.message
                    )?
                }
                None => writeln!(f, "{}", d.message)?,
            }
        }
        Ok(())
    }
}

/// Adapter from [`Diagnostic`] to miette's trait.
struct MietteDiag {
    message: String,
    code: &'static str,
    severity: Severity,
    help: Option<String>,
    label: Option<miette::LabeledSpan>,
    source: Option<miette::NamedSource<String>>,
}

impl MietteDiag {
    fn new(d: &Diagnostic, sources: &SourceMap) -> MietteDiag {
        let (label, source) = match d.span {
            Some(s) => {
                let f = sources.get(s.src);
                let len = s.end.saturating_sub(s.start);
                let label = if d.label.is_empty() {
                    None
                } else {
                    Some(d.label.clone())
                };
                (
                    Some(miette::LabeledSpan::new(label, s.start, len)),
                    Some(
                        miette::NamedSource::new(f.name.clone(), f.text.to_string())
                            .with_language("toml"),
                    ),
                )
            }
            None => (None, None),
        };
        MietteDiag {
            message: d.message.clone(),
            code: d.code,
            severity: d.severity,
            help: d.help.clone(),
            label,
            source,
        }
    }
}

impl fmt::Debug for MietteDiag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Display for MietteDiag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for MietteDiag {}

impl miette::Diagnostic for MietteDiag {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }
    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        self.label
            .as_ref()
            .map(|l| Box::new(std::iter::once(l.clone())) as Box<dyn Iterator<Item = _>>)
    }
}

/// A suggestion for a misspelt name, as `did you mean ...?` help text.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    suggest(name, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// The candidate a misspelt name most likely meant: a close spelling
/// (`stratifed` → `stratified`), or the initials of a long name
/// (`learning_rate` → `lr`).
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let initials = |s: &str| -> String {
        s.split(['_', '-'])
            .filter_map(|w| w.chars().next())
            .collect()
    };
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = if name.contains(['_', '-']) && initials(name) == c
            || c.contains(['_', '-']) && initials(c) == name
        {
            1.0
        } else {
            strsim::jaro_winkler(name, c)
        };
        if score > 0.8 && best.is_none_or(|(b, _)| score > b) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}
