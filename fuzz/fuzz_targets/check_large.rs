//! Large generated manifests for `check`: the input chooses how many params,
//! stages and matrix values to write (up to 200,000 params, 20,000 stages, a
//! 1,000 × 1,000 matrix) and the expression text repeated in each, so that
//! what grows with the manifest is fuzzed, not only its syntax. Run with
//! libFuzzer's time and memory bounds (docs/benchmarks.md, "Fuzzing"): a
//! check that is quadratic somewhere, or that a few lines can make allocate
//! without bound, fails as a timeout or an out-of-memory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let params = data[0] as usize * 784; // up to 199,920
    let stages = data[1] as usize * 78; // up to 19,890
    let (ma, mb) = (data[2] as usize * 4 % 1001, data[3] as usize * 4 % 1001);
    // The rest: text placed inside `${...}` in every param and stage, where
    // `PREV` stands for the param or stage output above it.
    let snippet = String::from_utf8_lossy(&data[4..data.len().min(68)])
        .replace(['"', '\\', '\n', '}'], " ");
    let mut m = String::from("[pipeline]\nname = \"large\"\n[params]\np0 = 1\n");
    for i in 1..params {
        let e = snippet.replace("PREV", &format!("params.p{}", i - 1));
        m.push_str(&format!("p{i} = \"${{{e}}}\"\n"));
    }
    for i in 0..stages {
        let prev = match i {
            0 => "params.p0".to_string(),
            _ => format!("stages.s{}.o", i - 1),
        };
        let e = snippet.replace("PREV", &prev);
        m.push_str(&format!(
            "[stages.s{i}]\nop = \"exec\"\ncmd = \"echo ${{{e}}} ${{{prev}}} > $PODIUM_OUT/o\"\nouts = [\"o\"]\n"
        ));
    }
    if ma > 0 && mb > 0 {
        m.push_str(&format!(
            "[stages.m]\nop = \"exec\"\nmatrix = {{ a = \"${{range({ma})}}\", b = \"${{range({mb})}}\" }}\n\
             cmd = \"echo ${{a}} ${{b}} ${{{}}} > $PODIUM_OUT/o\"\nouts = [\"o\"]\n",
            snippet.replace("PREV", "a")
        ));
    }
    let (_, report) = podium::check_str("large.toml".as_ref(), &m, &[]);
    let _ = report.render(false);
});
