//! Any bytes as a manifest: parse, override and check must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let (_, report) = podium::check_str("fuzz.toml".as_ref(), text, &[]);
        // Rendering walks every span: it must not panic either.
        let _ = report.render(false);
        let _ = report.to_json();
    }
});
