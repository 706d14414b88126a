//! `podium check`.

use std::path::PathBuf;

use podium::diag::{JsonDiagnostic, Severity};

use super::{CheckFormat, default_manifests, use_color};

pub fn check(manifests: &[PathBuf], set: &[String], format: CheckFormat) -> anyhow::Result<i32> {
    let files = if manifests.is_empty() {
        default_manifests()?
    } else {
        manifests.to_vec()
    };
    let mut errors = 0;
    let mut json = Vec::new();
    for f in &files {
        let report = match std::fs::read_to_string(f) {
            Ok(text) => podium::check_str(f, &text, set).1,
            Err(e) => {
                errors += 1;
                let d = JsonDiagnostic {
                    severity: Severity::Error,
                    code: "io",
                    message: format!("{}: {e}", f.display()),
                    file: Some(f.display().to_string()),
                    line: None,
                    column: None,
                    end_line: None,
                    end_column: None,
                    label: String::new(),
                    help: None,
                };
                match format {
                    CheckFormat::Text => eprintln!("error: {}", d.message),
                    CheckFormat::Json => json.push(serde_json::to_value(d)?),
                    CheckFormat::Github => println!("{}", github(&d)),
                }
                continue;
            }
        };
        errors += report.error_count();
        match format {
            CheckFormat::Text => {
                if report.diagnostics.is_empty() {
                    eprintln!("ok: {}", f.display());
                } else {
                    eprint!("{}", report.render(use_color()));
                }
            }
            CheckFormat::Json => {
                for d in report.to_json() {
                    json.push(serde_json::to_value(d)?);
                }
            }
            CheckFormat::Github => {
                for d in report.to_json() {
                    println!("{}", github(&d));
                }
            }
        }
    }
    match format {
        CheckFormat::Json => println!("{}", serde_json::to_string_pretty(&json)?),
        CheckFormat::Text | CheckFormat::Github if errors > 0 => {
            eprintln!("error: {errors} error(s) in {} manifest(s)", files.len())
        }
        CheckFormat::Text | CheckFormat::Github => {}
    }
    Ok(if errors > 0 { 1 } else { 0 })
}

/// One GitHub Actions workflow command: an annotation on the file and
/// line, which GitHub shows on the pull request's diff.
/// <https://docs.github.com/en/actions/reference/workflows-and-actions/workflow-commands>
fn github(d: &JsonDiagnostic) -> String {
    let level = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let mut props = Vec::new();
    if let Some(f) = &d.file {
        props.push(format!("file={}", escape_property(f)));
    }
    for (key, v) in [
        ("line", d.line),
        ("col", d.column),
        ("endLine", d.end_line),
        ("endColumn", d.end_column),
    ] {
        if let Some(v) = v {
            props.push(format!("{key}={v}"));
        }
    }
    props.push(format!(
        "title={}",
        escape_property(&format!("podium {}", d.code))
    ));
    let mut message = d.message.clone();
    if !d.label.is_empty() {
        message.push_str(&format!(" ({})", d.label));
    }
    if let Some(h) = &d.help {
        message.push_str(&format!("\nhelp: {h}"));
    }
    format!("::{level} {}::{}", props.join(","), escape_data(&message))
}

/// The escapes GitHub's runner decodes in a command's message.
fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// The escapes GitHub's runner decodes in a command's properties.
fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_annotations_escape_what_the_runner_decodes() {
        let d = JsonDiagnostic {
            severity: Severity::Error,
            code: "wrong-type",
            message: "100% wrong, really:\nyes".into(),
            file: Some("pipelines/a,b:c.toml".into()),
            line: Some(3),
            column: Some(7),
            end_line: Some(3),
            end_column: Some(9),
            label: "this is a string".into(),
            help: Some("expected an integer".into()),
        };
        assert_eq!(
            github(&d),
            "::error file=pipelines/a%2Cb%3Ac.toml,line=3,col=7,endLine=3,endColumn=9,\
             title=podium wrong-type::100%25 wrong, really:%0Ayes (this is a string)%0A\
             help: expected an integer"
        );
    }
}
