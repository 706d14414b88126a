//! Snapshot tests of the parse and check layers: the checked IR of good
//! manifests and the diagnostics of bad ones.

use std::path::{Path, PathBuf};

fn relative(path: &Path) -> PathBuf {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap()
        .to_path_buf()
}

#[test]
fn diagnostics_of_bad_manifests() {
    insta::glob!("..", "fixtures/bad/*.toml", |path| {
        let rel = relative(path);
        let text = std::fs::read_to_string(path).unwrap();
        let (pipeline, report) = podium::check_str(&rel, &text, &[]);
        assert!(
            pipeline.is_none() || report.has_errors(),
            "{} must not check",
            rel.display()
        );
        assert!(report.has_errors());
        for d in &report.diagnostics {
            assert!(
                d.span.is_some(),
                "every manifest error points at a span: {}",
                d.message
            );
        }
        insta::assert_snapshot!(report.render(false));
    });
}

#[test]
fn json_diagnostics_carry_file_line_and_column() {
    let rel = Path::new("tests/fixtures/bad/unknown_param.toml");
    let text = std::fs::read_to_string(rel).unwrap();
    let (_, report) = podium::check_str(rel, &text, &[]);
    let json = serde_json::to_value(report.to_json()).unwrap();
    insta::assert_json_snapshot!(json);
}

#[test]
fn checked_ir_of_good_manifests() {
    insta::glob!("..", "fixtures/good/*.toml", |path| {
        let rel = relative(path);
        let (p, warnings) = podium::load(&rel, &[]).unwrap_or_else(|e| match e {
            podium::Error::Manifest(r) => panic!("{}", r.render(false)),
            e => panic!("{e}"),
        });
        assert!(warnings.diagnostics.is_empty());
        insta::assert_snapshot!(p.dump());
    });
}

#[test]
fn shipped_pipelines_check_clean() {
    const FMNIST: &str = "/usr/share/datasets/fashion-mnist/";
    let stand_in = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir("pipelines").unwrap() {
        let mut path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        // fashion_mnist.toml reads Debian's dataset-fashion-mnist package;
        // where it is not installed, empty stand-ins take the IDX files' place.
        let text = std::fs::read_to_string(&path).unwrap();
        if text.contains(FMNIST) && !Path::new(FMNIST).exists() {
            let dir = stand_in.path();
            for name in [
                "train-images-idx3-ubyte.gz",
                "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz",
                "t10k-labels-idx1-ubyte.gz",
            ] {
                std::fs::write(dir.join(name), b"").unwrap();
            }
            path = dir.join(path.file_name().unwrap());
            std::fs::write(&path, text.replace(FMNIST, &format!("{}/", dir.display()))).unwrap();
        }
        if let Err(podium::Error::Manifest(r)) = podium::load(&path, &[]) {
            panic!("{}", r.render(false));
        }
    }
}

#[test]
fn overrides_replace_params_and_stage_fields_with_spans_in_the_override() {
    let rel = Path::new("tests/fixtures/good/features.toml");
    let (p, _) = podium::load(
        rel,
        &[
            "params.folds=2".into(),
            "stages.ensemble.env={ TAG = \"x\" }".into(),
        ],
    )
    .unwrap();
    assert_eq!(
        p.stages
            .iter()
            .find(|s| s.name == "train")
            .unwrap()
            .instances
            .len(),
        4
    );
    let ens = p.instance_by_name("ensemble").unwrap();
    assert_eq!(
        ens.params.get("env").unwrap().to_string(),
        "{ TAG = \"x\" }"
    );
    let err = podium::load(rel, &["stages.nope.cmd=1".into()]).unwrap_err();
    let podium::Error::Manifest(r) = err else {
        panic!()
    };
    assert!(
        r.to_string().starts_with("--set stages.nope.cmd=1:1:"),
        "{r}"
    );
}

#[test]
fn the_op_reference_documents_every_op_parameter_and_default() {
    let doc = std::fs::read_to_string("docs/ops.md").unwrap();
    for op in podium::ops::all() {
        // The op's own section: from its heading to the next heading.
        let start = doc
            .lines()
            .position(|l| {
                l.starts_with('#') && l.trim_start_matches('#').trim() == format!("`{}`", op.name())
            })
            .unwrap_or_else(|| panic!("docs/ops.md: op {} undocumented", op.name()));
        let section: Vec<&str> = doc
            .lines()
            .skip(start + 1)
            .take_while(|l| !l.starts_with('#'))
            .collect();
        for p in op.params() {
            let default = p
                .default
                .map(|d| format!("`{d}`"))
                .unwrap_or_else(|| "required".into());
            let kind = p.kind.describe().replace('|', "\\|");
            let row = format!("| `{}` | {kind} | {default} |", p.name);
            assert!(
                section.iter().any(|l| l.starts_with(&row)),
                "docs/ops.md lacks `{row}` in the section of op {}",
                op.name()
            );
        }
    }
}

/// Regression (issue 23): a mistake in `train` was reported only once the
/// one in `split` (which it reads) was fixed, and a misspelt output read by
/// every fold was reported once per fold.
#[test]
fn check_reports_every_independent_mistake_once() {
    let rel = Path::new("tests/fixtures/bad/every_mistake_at_once.toml");
    let text = std::fs::read_to_string(rel).unwrap();
    let (_, report) = podium::check_str(rel, &text, &[]);
    let errors: Vec<(&str, &str, Option<&str>)> = report
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| (d.code, d.message.as_str(), d.help.as_deref()))
        .collect();
    let line = |d: &podium::diag::Diagnostic| {
        report
            .sources
            .line_col(d.span.unwrap().src, d.span.unwrap().start)
            .0
    };
    let lines: Vec<usize> = report.diagnostics.iter().map(line).collect();
    // split's kind, train's epochs and hflip, predict's output, labels' param.
    assert_eq!(lines, [17, 28, 29, 34, 41], "{errors:#?}");
    assert_eq!(errors[1].0, "wrong-type");
    assert_eq!(errors[2].1, "`hflip`: a probability, in [0, 1]");
    assert_eq!(errors[3].1, "stage `train` has no output `bestt`");
    let help = errors[3].2.unwrap();
    assert!(help.starts_with("did you mean `best`?"), "{help}");
    assert!(
        help.contains("in 3 instances: predict[fold=0], predict[fold=1], predict[fold=2]"),
        "{help}"
    );
    assert_eq!(errors[4].2, Some("did you mean `thresholds`?"));
}

/// Regression (issue 23): `--set params.epochs=ten` put the caret on the
/// manifest line that reads the param, not on the flag.
#[test]
fn a_bad_set_param_is_blamed_on_the_flag() {
    let rel = Path::new("pipelines/demo.toml");
    let text = std::fs::read_to_string(rel).unwrap();
    let sets = [
        "params.epochs=ten".to_string(),
        "stages.trian.lr=1".to_string(),
    ];
    let (_, report) = podium::check_str(rel, &text, &sets);
    let shown: Vec<(String, String)> = report
        .diagnostics
        .iter()
        .map(|d| {
            let s = d.span.unwrap();
            (
                report.sources.get(s.src).name.clone(),
                report.sources.text(s).to_string(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("--set stages.trian.lr=1".to_string(), "1".to_string()),
            ("--set params.epochs=ten".to_string(), "ten".to_string()),
        ]
    );
    assert_eq!(
        report.diagnostics[0].help.as_deref(),
        Some("did you mean `train`?")
    );
}

fn toml_as_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap();
    let t: toml::Table = toml::from_str(&text).unwrap();
    serde_json::to_value(t).unwrap()
}

/// The committed `docs/podium.schema.json` is what `podium schema` prints
/// (`PODIUM_BLESS=1` rewrites it), and it accepts every shipped manifest
/// while rejecting what `check` would: an unknown op parameter, a value
/// outside an enum, a missing required parameter, an unknown op.
#[test]
fn the_json_schema_is_generated_and_accepts_every_shipped_manifest() {
    let schema = podium::schema::manifest_schema();
    let text = format!("{}\n", serde_json::to_string_pretty(&schema).unwrap());
    let committed = Path::new("docs/podium.schema.json");
    if std::env::var_os("PODIUM_BLESS").is_some() {
        std::fs::write(committed, &text).unwrap();
    }
    // Not assert_eq: the schema is 100 kB.
    assert!(
        std::fs::read_to_string(committed).unwrap() == text,
        "docs/podium.schema.json is stale: PODIUM_BLESS=1 cargo test --test it json_schema"
    );
    let v = jsonschema::draft7::new(&schema).unwrap();
    for entry in std::fs::read_dir("pipelines").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let m = toml_as_json(&path);
        let errors: Vec<String> = v.iter_errors(&m).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
    }
    let demo = toml_as_json(Path::new("pipelines/demo.toml"));
    let broken = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut m = demo.clone();
        edit(&mut m);
        !v.is_valid(&m)
    };
    assert!(broken(
        &|m| m["stages"]["train"]["learning_rate"] = 0.1.into()
    ));
    assert!(broken(
        &|m| m["stages"]["split"]["kind"] = "stratifed".into()
    ));
    assert!(broken(&|m| {
        m["stages"]["train"]
            .as_object_mut()
            .unwrap()
            .remove("images");
    }));
    assert!(broken(&|m| m["stages"]["train"]["op"] = "trian".into()));
    assert!(broken(&|m| m["stages"]["train"]["epochs"] = "ten".into()));
    assert!(!broken(
        &|m| m["stages"]["train"]["epochs"] = "${params.epochs * 2}".into()
    ));
}
