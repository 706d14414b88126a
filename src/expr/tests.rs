//! Tests of the expression grammar and evaluator.

use std::collections::BTreeMap;

use super::*;
use crate::diag::{Diagnostic, Span};
use crate::value::Value;

/// An environment with a few params and matrix variables, and no stages.
struct TestEnv {
    params: Value,
}

impl Env for TestEnv {
    fn var(&self, name: &str, span: Span) -> Result<EVal<'_>, Diagnostic> {
        match name {
            "params" => Ok(EVal::borrowed(&self.params)),
            "fold" => Ok(EVal::owned(Value::Int(2))),
            _ => Err(
                Diagnostic::error("unknown-reference", format!("unknown name `{name}`"))
                    .at(span, ""),
            ),
        }
    }
    fn stage(&self, name: &str, span: Span) -> Result<StageSel, Diagnostic> {
        Err(Diagnostic::error("unknown-reference", format!("no stage `{name}`")).at(span, ""))
    }
}

fn env() -> TestEnv {
    let mut params = BTreeMap::new();
    params.insert("lr".into(), Value::Float(0.5));
    params.insert("folds".into(), Value::Int(5));
    params.insert(
        "archs".into(),
        Value::List(vec![Value::Str("a".into()), Value::Str("b".into())]),
    );
    TestEnv {
        params: Value::Table(params),
    }
}

fn map(s: &str) -> SpanMap {
    SpanMap {
        base: Span::new(0, 0, s.len()),
        exact: true,
    }
}

fn ev(s: &str) -> Result<Value, Diagnostic> {
    let e = parse_expr(s, &map(s))?;
    eval(&e, &env())
}

fn ok(s: &str) -> String {
    ev(s)
        .unwrap_or_else(|d| panic!("{s}: {}", d.message))
        .to_string()
}

#[test]
fn operator_precedence_and_associativity() {
    assert_eq!(ok("1 + 2 * 3"), "7");
    assert_eq!(ok("(1 + 2) * 3"), "9");
    assert_eq!(ok("10 - 3 - 2"), "5");
    assert_eq!(ok("7 / 2"), "3");
    assert_eq!(ok("7.0 / 2"), "3.5");
    assert_eq!(ok("7 % 3"), "1");
    assert_eq!(ok("-2 * 3"), "-6");
    assert_eq!(ok("1 < 2 && 2 < 3 || false"), "true");
    assert_eq!(ok("!true || 1 == 1.0"), "true");
    assert_eq!(ok("1 + 1 == 2 && !(3 > 4)"), "true");
}

#[test]
fn conditionals_references_and_indexing() {
    assert_eq!(ok("if fold == 2 then 'two' else 'other'"), "\"two\"");
    assert_eq!(ok("if fold > 5 then 1 else if fold > 1 then 2 else 3"), "2");
    assert_eq!(ok("params.lr * 2"), "1.0");
    assert_eq!(ok("params.archs[1]"), "\"b\"");
    assert_eq!(ok("params.archs[-1]"), "\"b\"");
    assert_eq!(ok("params['folds']"), "5");
}

#[test]
fn functions() {
    assert_eq!(ok("range(params.folds)"), "[0, 1, 2, 3, 4]");
    assert_eq!(ok("range(2, 8, 3)"), "[2, 5]");
    assert_eq!(ok("range(3, 0, -1)"), "[3, 2, 1]");
    assert_eq!(ok("len(params.archs)"), "2");
    assert_eq!(ok("concat(params.archs, ['c'])"), "[\"a\", \"b\", \"c\"]");
    assert_eq!(ok("concat('a', 1, 'b')"), "\"a1b\"");
    assert_eq!(ok("min(3, 1.5, 2)"), "1.5");
    assert_eq!(ok("max([1, 7, 3])"), "7");
    assert_eq!(ok("format('fold{}-{}', fold, params.lr)"), "\"fold2-0.5\"");
    assert_eq!(ok("join(params.archs, ',')"), "\"a,b\"");
    assert_eq!(ok("str(fold) + 'x'"), "\"2x\"");
    assert_eq!(ok("'it\\'s'"), "\"it's\"");
}

#[test]
fn errors_point_at_the_offending_part() {
    let e = ev("params.lr + 'x'").unwrap_err();
    assert!(
        e.message.contains("does not apply to a float and a string"),
        "{}",
        e.message
    );
    let e = ev("1 / 0").unwrap_err();
    assert_eq!(e.message, "division by zero");
    assert_eq!(e.span.unwrap(), Span::new(0, 4, 5));
    let e = ev("params.nope").unwrap_err();
    assert_eq!(e.message, "no field `nope`");
    let e = ev("rnage(3)").unwrap_err();
    assert_eq!(e.help.as_deref(), Some("did you mean `range`?"));
    let e = ev("len(1, 2)").unwrap_err();
    assert!(e.message.contains("takes 1 argument(s), not 2"));
    let e = ev("9223372036854775807 + 1").unwrap_err();
    assert_eq!(e.message, "integer overflow");
    let e = parse_expr("1 +", &map("1 +")).unwrap_err();
    assert_eq!(e.code, "expression-syntax");
    let e = parse_expr("a ==", &map("a ==")).unwrap_err();
    assert_eq!(e.span.unwrap().start, 4);
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let s = format!("{}1{}", "(".repeat(500), ")".repeat(500));
    let e = parse_expr(&s, &map(&s)).unwrap_err();
    assert!(e.message.contains("too deeply"));
}

#[test]
fn templates_keep_the_type_of_a_lone_expression() {
    let t = |s: &str| parse_template(s, &map(s)).unwrap();
    let e = env();
    assert_eq!(
        eval_template(&t("${params.folds}"), &e).unwrap(),
        Value::Int(5)
    );
    assert_eq!(
        eval_template(&t("f${fold}.pt"), &e).unwrap(),
        Value::Str("f2.pt".into())
    );
    assert_eq!(
        eval_template(&t("${params.archs}"), &e)
            .unwrap()
            .to_string(),
        "[\"a\", \"b\"]"
    );
    assert_eq!(
        eval_template(&t("x ${params.archs}"), &e).unwrap(),
        Value::Str("x a b".into())
    );
    assert_eq!(
        eval_template(&t("$${HOME} ${fold}"), &e).unwrap(),
        Value::Str("${HOME} 2".into())
    );
    assert_eq!(
        eval_template(&t("cost: $5"), &e).unwrap(),
        Value::Str("cost: $5".into())
    );
    assert_eq!(
        eval_template(&t("${'}'}"), &e).unwrap(),
        Value::Str("}".into())
    );
}

#[test]
fn template_errors_are_all_reported_with_spans_inside_the_string() {
    let s = "a ${1 +} b ${ } c ${x";
    let errs = parse_template(s, &map(s)).unwrap_err();
    assert_eq!(errs.len(), 3);
    assert_eq!(errs[1].message, "empty `${}`");
    assert_eq!(errs[2].message, "unclosed `${`");
    assert_eq!(errs[2].span.unwrap().start, s.find("${x").unwrap());
}
