//! The manifest's JSON Schema, generated from the op declarations: every
//! op, its parameters with their types, defaults and help. Editors with a
//! TOML language server (Taplo, Even Better TOML) use it for completion,
//! hover help and validation as you type; `podium check` remains the
//! judge (expressions, references, paths are its business).
//!
//! `podium schema` prints it; `docs/podium.schema.json` is the committed
//! copy (a test keeps it equal to this).

use serde_json::{Map, Value as Json, json};

use crate::ops::{self, ParamKind, ParamSpec};

/// A `${...}` expression: any parameter may be one.
fn expression() -> Json {
    json!({"type": "string", "pattern": "\\$\\{", "description": "a ${...} expression"})
}

/// A value of `kind`, or an expression.
fn kind_schema(kind: ParamKind) -> Json {
    let plain = match kind {
        ParamKind::Str | ParamKind::Path => json!({"type": "string"}),
        ParamKind::Int => json!({"type": "integer"}),
        ParamKind::Float => json!({"type": "number"}),
        ParamKind::Bool => json!({"type": "boolean"}),
        ParamKind::Enum(vs) => json!({"enum": vs}),
        ParamKind::PathList | ParamKind::StrList => {
            json!({"type": ["array", "string"], "items": {"type": "string"}})
        }
        ParamKind::Paths => json!({"type": ["array", "object", "string"]}),
        ParamKind::FloatList => {
            json!({"type": "array", "items": {"anyOf": [{"type": "number"}, expression()]}})
        }
        ParamKind::Strs => json!({"type": ["string", "array"], "items": {"type": "string"}}),
        ParamKind::StrTable => json!({"type": "object"}),
        ParamKind::Any => return json!({}),
    };
    match kind {
        // A string already takes an expression.
        ParamKind::Str | ParamKind::Path | ParamKind::Strs => plain,
        _ => json!({"anyOf": [plain, expression()]}),
    }
}

/// An op default (TOML text) as JSON.
fn default_json(text: &str) -> Option<Json> {
    let t: toml::Table = toml::from_str(&format!("v = {text}")).ok()?;
    serde_json::to_value(t.get("v")?).ok()
}

fn param_schema(p: &ParamSpec) -> Json {
    let mut s = match kind_schema(p.kind) {
        Json::Object(m) => m,
        _ => Map::new(),
    };
    let mut help = p.help.to_string();
    if let Some(d) = p.default {
        help.push_str(&format!(" (default: {d})"));
        if let Some(v) = default_json(d) {
            s.insert("default".into(), v);
        }
    }
    s.insert("description".into(), Json::String(help));
    Json::Object(s)
}

/// The stage keys every op takes besides its parameters.
fn stage_keys(op: &str) -> Map<String, Json> {
    let mut m = Map::new();
    m.insert(
        "op".into(),
        json!({"const": op, "description": ops::get(op).map(|o| o.summary()).unwrap_or("")}),
    );
    m.insert(
        "description".into(),
        json!({"type": "string", "description": "free text, shown in plan, dag and the report"}),
    );
    m.insert(
        "matrix".into(),
        json!({"type": "object", "description": "one instance per combination: key = list or ${...} list",
               "additionalProperties": {"anyOf": [{"type": "array"}, expression()]}}),
    );
    let int = json!({"anyOf": [{"type": "integer", "minimum": 0}, expression()]});
    m.insert(
        "resources".into(),
        json!({"type": "object", "additionalProperties": false,
               "description": "what one instance takes of the machine",
               "properties": {
                   "threads": int,
                   "gpu": int,
                   "mem": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "string"}],
                           "description": "memory of one instance on a cluster: \"16G\", \"512M\" (an integer is MiB)"},
                   "time": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "string"}],
                            "description": "wall time of one instance on a cluster: \"2h\", \"90m\", \"04:00:00\" (an integer is minutes)"}}}),
    );
    m
}

/// The schema of one op's stage.
fn op_schema(op: &dyn ops::AnyOp) -> Json {
    let mut props = stage_keys(op.name());
    for p in op.params() {
        props.insert(p.name.into(), param_schema(p));
    }
    let mut required = vec![Json::String("op".into())];
    required.extend(
        op.params()
            .iter()
            .filter(|p| p.default.is_none())
            .map(|p| Json::String(p.name.into())),
    );
    json!({
        "type": "object",
        "title": format!("op {}", op.name()),
        "description": op.summary(),
        "required": required,
        "additionalProperties": false,
        "properties": props,
    })
}

/// The whole manifest's schema (JSON Schema draft-07).
pub fn manifest_schema() -> Json {
    let ops: Vec<&str> = ops::all().iter().map(|o| o.name()).collect();
    let mut defs = Map::new();
    for op in ops::all() {
        defs.insert(format!("op_{}", op.name()), op_schema(*op));
    }
    let one_of: Vec<Json> = ops
        .iter()
        .map(|o| json!({"$ref": format!("#/definitions/op_{o}")}))
        .collect();
    defs.insert(
        "stage".into(),
        json!({
            "type": "object",
            "required": ["op"],
            "properties": {"op": {"enum": ops, "description": "the op this stage runs"}},
            "oneOf": one_of,
        }),
    );
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "podium manifest",
        "description": "A podium pipeline: params, inputs and stages (docs/manifest.md).",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "pipeline": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "name": {"type": "string", "description": "names the pipeline in the store and out/<pipeline>/ (default: the file's stem)"},
                    "description": {"type": "string"},
                },
            },
            "params": {
                "type": "object",
                "description": "values the stages refer to as ${params.NAME}; --set params.NAME=... overrides",
            },
            "inputs": {
                "type": "object",
                "description": "files and directories the pipeline reads, as ${inputs.NAME}",
                "additionalProperties": {
                    "anyOf": [
                        {"type": "string"},
                        {
                            "type": "object",
                            "required": ["path"],
                            "additionalProperties": false,
                            "properties": {
                                "path": {"type": "string", "description": "relative to the manifest; must exist"},
                                "glob": {"type": "string", "description": "for a directory: only matching files count"},
                            },
                        },
                    ],
                },
            },
            "stages": {
                "type": "object",
                "description": "one table per stage: op, its parameters, matrix, resources",
                "additionalProperties": {"$ref": "#/definitions/stage"},
            },
        },
        "definitions": defs,
    })
}
