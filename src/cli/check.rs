//! `podium check`.

use std::path::PathBuf;

use super::{Format, default_manifests, use_color};

pub fn check(manifests: &[PathBuf], set: &[String], format: Format) -> anyhow::Result<i32> {
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
                match format {
                    Format::Text => eprintln!("error: {}: {e}", f.display()),
                    Format::Json => json.push(serde_json::json!({
                        "severity": "error", "code": "io", "message": format!("{}: {e}", f.display()),
                        "file": f.display().to_string(),
                    })),
                }
                continue;
            }
        };
        errors += report.error_count();
        match format {
            Format::Text => {
                if report.diagnostics.is_empty() {
                    eprintln!("ok: {}", f.display());
                } else {
                    eprint!("{}", report.render(use_color()));
                }
            }
            Format::Json => json.extend(
                report
                    .to_json()
                    .into_iter()
                    .map(|d| serde_json::to_value(d).unwrap()),
            ),
        }
    }
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&json)?),
        Format::Text if errors > 0 => {
            eprintln!("error: {errors} error(s) in {} manifest(s)", files.len())
        }
        Format::Text => {}
    }
    Ok(if errors > 0 { 1 } else { 0 })
}
