//! Any text inside `${...}` in a stage parameter: parse and evaluate must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(expr) = std::str::from_utf8(data) {
        let manifest = format!(
            "[params]\nn = 3\nl = [1, 2]\n[stages.a]\nop = \"exec\"\nmatrix = {{ k = [0, 1] }}\ncmd = \"x\"\nouts = [\"o\"]\n[stages.b]\nop = \"exec\"\ncmd = '''${{{expr}}}'''\n"
        );
        let (_, report) = podium::check_str("fuzz.toml".as_ref(), &manifest, &[]);
        let _ = report.render(false);
    }
});
