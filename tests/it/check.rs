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
