use super::*;

#[test]
fn outputs_resolve_by_name_or_unique_stem() {
    let outs = vec![
        "oof.csv".to_string(),
        "model.pt".to_string(),
        "a.x".into(),
        "a.y".into(),
    ];
    assert_eq!(resolve_output(&outs, "oof.csv").as_deref(), Some("oof.csv"));
    assert_eq!(resolve_output(&outs, "oof").as_deref(), Some("oof.csv"));
    assert_eq!(resolve_output(&outs, "a"), None);
    assert_eq!(resolve_output(&outs, "nope"), None);
}

#[test]
fn instances_record_the_params_their_stage_mentions() {
    let text = "[params]\nscale = 2\nother = 1\n[stages.a]\nop = \"exec\"\nmatrix = { f = [0, 1] }\ncmd = \"echo ${f} ${params.scale}\"\n";
    let (p, r) = crate::check_str("m.toml".as_ref(), text, &[]);
    assert!(!r.has_errors(), "{r}");
    let p = p.unwrap();
    let uses: Vec<&String> = p.instances[0].uses.keys().collect();
    assert_eq!(uses, ["scale"]);
}

#[test]
fn selections_match_by_value_whatever_the_number_type_and_chain() {
    let text = r#"
[stages.t]
op = "exec"
matrix = { f = [0, 1, 2], a = ["x", "y"] }
cmd = "echo ${f} ${a} > $PODIUM_OUT/o"
outs = ["o"]
[stages.u]
op = "exec"
matrix = { g = [0.0, 1.0] }
cmd = "cat ${stages.t[f=g, a='y'].o} ${stages.t[a='x'][f=g + 1].o} > $PODIUM_OUT/o"
outs = ["o"]
[stages.v]
op = "exec"
cmd = "cat ${stages.t[a='x'].o} > $PODIUM_OUT/o"
outs = ["o"]
"#;
    let (p, r) = crate::check_str("m.toml".as_ref(), text, &[]);
    assert!(!r.has_errors(), "{r}");
    let p = p.unwrap();
    let id = |n: &str| p.instances.iter().position(|i| i.name == n).unwrap();
    let deps = |n: &str| -> Vec<&str> {
        let mut d: Vec<&str> = p.instances[id(n)]
            .deps
            .iter()
            .map(|&d| p.instances[d].name.as_str())
            .collect();
        d.sort();
        d
    };
    assert_eq!(deps("u[g=0.0]"), ["t[f=0,a=y]", "t[f=1,a=x]"]);
    assert_eq!(deps("u[g=1.0]"), ["t[f=1,a=y]", "t[f=2,a=x]"]);
    assert_eq!(deps("v"), ["t[f=0,a=x]", "t[f=1,a=x]", "t[f=2,a=x]"]);
}
