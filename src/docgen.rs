//! Reference documents generated from the schemas: `docs/crd-reference.md` from the CRDs
//! and `docs/api-reference.md` from the OpenAPI document. Pure functions from JSON values to
//! Markdown; `tests/docs.rs` writes the files and fails when the committed ones drift.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde_json::{Map, Value};

/// The command that rewrites the generated documents.
pub const BLESS_COMMAND: &str = "CLOUDPODS_BLESS=1 cargo nextest run --test docs";

/// One documented field of a schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRow {
    /// Dotted path, `[]` for array items (e.g. `spec.cloudInit.sshPublicKeys[]`).
    pub path: String,
    /// Rendered type, e.g. `integer (int32)`, `array of string`, a link to a schema.
    pub ty: String,
    /// Listed in the parent's `required`.
    pub required: bool,
    /// The default value as JSON, if any.
    pub default: Option<String>,
    /// Validation facts: enum, bounds, pattern, CEL rules with their messages, nullable.
    pub constraints: Vec<String>,
    /// The description, on one line.
    pub description: String,
}

/// Escapes text for one Markdown table cell (pipes, line breaks).
pub fn cell(s: &str) -> String {
    s.replace('\r', "")
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// Wraps text in a code span that survives backticks inside it.
pub fn code(s: &str) -> String {
    if s.contains('`') {
        format!("`` {s} ``")
    } else {
        format!("`{s}`")
    }
}

/// The HTML anchor id of a component schema in the API reference.
pub fn schema_anchor(name: &str) -> String {
    let mut id = String::from("schema-");
    for c in name.chars() {
        id.push(if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '-'
        });
    }
    id
}

/// A JSON number or other scalar as people write it (`64`, not `64.0`).
fn scalar(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn ref_name(r: &str) -> &str {
    r.rsplit('/').next().unwrap_or(r)
}

/// The schema behind the wrappers schemars emits around a reference or an optional value:
/// `allOf: [X]`, and `anyOf: [X, {enum: [null]}]`. Returns it and whether null is allowed.
fn unwrap_schema(schema: &Value) -> (&Value, bool) {
    let nullable = schema.get("nullable").and_then(Value::as_bool) == Some(true);
    for key in ["allOf", "anyOf"] {
        if let Some(list) = schema.get(key).and_then(Value::as_array) {
            let non_null: Vec<&Value> = list.iter().filter(|s| !is_null_schema(s)).collect();
            if non_null.len() == 1 {
                let (inner, inner_nullable) = unwrap_schema(non_null[0]);
                return (
                    inner,
                    nullable || inner_nullable || non_null.len() < list.len(),
                );
            }
        }
    }
    (schema, nullable)
}

fn is_null_schema(s: &Value) -> bool {
    s.get("type").and_then(Value::as_str) == Some("null")
        || s.get("enum")
            .and_then(Value::as_array)
            .is_some_and(|e| e.len() == 1 && e[0].is_null())
}

/// Enum values of a schema: `enum`, or a `oneOf` whose branches each have one value.
fn enum_values(schema: &Value) -> Option<Vec<(String, Option<String>)>> {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let out: Vec<_> = values
            .iter()
            .filter(|v| !v.is_null())
            .map(|v| (scalar(v), None))
            .collect();
        return (!out.is_empty()).then_some(out);
    }
    let branches = schema.get("oneOf").and_then(Value::as_array)?;
    let mut out = Vec::new();
    for b in branches {
        let values = b.get("enum").and_then(Value::as_array)?;
        if values.len() != 1 {
            return None;
        }
        let description = b
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_string);
        out.push((scalar(&values[0]), description));
    }
    (!out.is_empty()).then_some(out)
}

/// The type of a schema in words; `$ref`s become links when `link_refs` is set.
pub fn type_name(schema: &Value, link_refs: bool) -> String {
    let (s, _) = unwrap_schema(schema);
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = ref_name(r);
        return if link_refs {
            format!("[{name}](#{})", schema_anchor(name))
        } else {
            name.to_string()
        };
    }
    let ty = s.get("type").and_then(Value::as_str).or_else(|| {
        // A oneOf of single-valued string enums.
        s.get("oneOf")
            .and_then(Value::as_array)
            .and_then(|b| b.first())
            .and_then(|b| b.get("type"))
            .and_then(Value::as_str)
    });
    match ty {
        Some("array") => match s.get("items") {
            Some(items) => format!("array of {}", type_name(items, link_refs)),
            None => "array".to_string(),
        },
        Some("object") => match s.get("additionalProperties") {
            Some(v @ Value::Object(_)) => format!("map of string to {}", type_name(v, link_refs)),
            Some(Value::Bool(true)) => "map of string to any".to_string(),
            _ => "object".to_string(),
        },
        Some(t) => match s.get("format").and_then(Value::as_str) {
            Some(f) => format!("{t} ({f})"),
            None => t.to_string(),
        },
        None if s.get("x-kubernetes-int-or-string").is_some() => "integer or string".to_string(),
        None => "any".to_string(),
    }
}

/// The validation facts of one schema, in the order a reader checks them.
pub fn constraints(schema: &Value) -> Vec<String> {
    let (s, nullable) = unwrap_schema(schema);
    let mut out = Vec::new();
    if let Some(values) = enum_values(s) {
        let list: Vec<String> = values.iter().map(|(v, _)| code(v)).collect();
        out.push(format!("one of {}", list.join(", ")));
    }
    let bound = |key: &str| s.get(key).map(scalar);
    match (bound("minimum"), bound("maximum")) {
        (Some(lo), Some(hi)) => out.push(format!("{lo} ≤ value ≤ {hi}")),
        (Some(lo), None) => out.push(format!("value ≥ {lo}")),
        (None, Some(hi)) => out.push(format!("value ≤ {hi}")),
        (None, None) => {}
    }
    for (key, words) in [
        ("exclusiveMinimum", "value >"),
        ("exclusiveMaximum", "value <"),
    ] {
        if let Some(v) = s.get(key).filter(|v| v.is_number()) {
            out.push(format!("{words} {}", scalar(v)));
        }
    }
    match (bound("minLength"), bound("maxLength")) {
        (Some(lo), Some(hi)) => out.push(format!("length {lo}-{hi}")),
        (Some(lo), None) => out.push(format!("length ≥ {lo}")),
        (None, Some(hi)) => out.push(format!("length ≤ {hi}")),
        (None, None) => {}
    }
    match (bound("minItems"), bound("maxItems")) {
        (Some(lo), Some(hi)) => out.push(format!("{lo}-{hi} items")),
        (Some(lo), None) => out.push(format!("at least {lo} items")),
        (None, Some(hi)) => out.push(format!("at most {hi} items")),
        (None, None) => {}
    }
    if s.get("uniqueItems").and_then(Value::as_bool) == Some(true) {
        out.push("items unique".to_string());
    }
    if let Some(p) = s.get("pattern").and_then(Value::as_str) {
        out.push(format!("pattern {}", code(p)));
    }
    if let Some(rules) = s.get("x-kubernetes-validations").and_then(Value::as_array) {
        for rule in rules {
            let text = rule.get("rule").and_then(Value::as_str).unwrap_or_default();
            let mut line = format!("CEL {}", code(text));
            if let Some(m) = rule
                .get("message")
                .or_else(|| rule.get("messageExpression"))
                .and_then(Value::as_str)
            {
                let _ = write!(line, " — “{m}”");
            }
            out.push(line);
        }
    }
    if s.get("additionalProperties") == Some(&Value::Bool(false)) {
        out.push("no other fields".to_string());
    }
    if nullable {
        out.push("nullable".to_string());
    }
    out
}

/// Every field below `schema` (recursively through inline objects and arrays of them),
/// `prefix` naming the schema itself (empty for the root).
pub fn field_rows(schema: &Value, prefix: &str, link_refs: bool) -> Vec<FieldRow> {
    let mut rows = Vec::new();
    walk_fields(schema, prefix, link_refs, &mut rows);
    rows
}

fn walk_fields(schema: &Value, prefix: &str, link_refs: bool, rows: &mut Vec<FieldRow>) {
    let (s, _) = unwrap_schema(schema);
    if s.get("$ref").is_some() {
        return;
    }
    if let Some(items) = s.get("items") {
        let item_path = format!("{prefix}[]");
        let (inner, _) = unwrap_schema(items);
        // Items that are plain values get a row of their own: their constraints live there.
        if inner.get("properties").is_none() && inner.get("$ref").is_none() {
            rows.push(row(&item_path, items, false, link_refs));
        }
        walk_fields(items, &item_path, link_refs, rows);
    }
    if let Some(values @ Value::Object(_)) = s.get("additionalProperties") {
        walk_fields(values, &format!("{prefix}.*"), link_refs, rows);
    }
    let Some(props) = s.get("properties").and_then(Value::as_object) else {
        return;
    };
    let required: BTreeSet<&str> = s
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, child) in props {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        rows.push(row(
            &path,
            child,
            required.contains(name.as_str()),
            link_refs,
        ));
        walk_fields(child, &path, link_refs, rows);
    }
}

fn row(path: &str, schema: &Value, required: bool, link_refs: bool) -> FieldRow {
    let (inner, _) = unwrap_schema(schema);
    let description = schema
        .get("description")
        .or_else(|| inner.get("description"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    FieldRow {
        path: path.to_string(),
        ty: type_name(schema, link_refs),
        required,
        default: schema
            .get("default")
            .or_else(|| inner.get("default"))
            .map(|d| d.to_string()),
        constraints: constraints(schema),
        description: cell(description),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn constraint_cell(c: &[String]) -> String {
    if c.is_empty() {
        String::new()
    } else {
        cell(&c.join("; "))
    }
}

/// A field table with a default column (the CRD reference).
fn crd_field_table(out: &mut String, rows: &[FieldRow]) {
    out.push_str("| field | type | required | default | constraints | description |\n");
    out.push_str("| --- | --- | --- | --- | --- | --- |\n");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            code(&r.path),
            cell(&r.ty),
            yes_no(r.required),
            r.default.as_deref().map(code).unwrap_or_default(),
            constraint_cell(&r.constraints),
            r.description
        );
    }
}

/// A field table where a default is one more constraint (the API reference).
fn api_field_table(out: &mut String, rows: &[FieldRow]) {
    out.push_str("| field | type | required | constraints | description |\n");
    out.push_str("| --- | --- | --- | --- | --- |\n");
    for r in rows {
        let mut c = r.constraints.clone();
        if let Some(d) = &r.default {
            c.insert(0, format!("default {}", code(d)));
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            code(&r.path),
            cell(&r.ty),
            yes_no(r.required),
            constraint_cell(&c),
            r.description
        );
    }
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn or_dash(list: &[String]) -> String {
    if list.is_empty() {
        "–".to_string()
    } else {
        list.iter().map(|s| code(s)).collect::<Vec<_>>().join(", ")
    }
}

/// The Markdown section of one CustomResourceDefinition (as JSON).
pub fn crd_section(crd: &Value) -> String {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let kind = names["kind"].as_str().unwrap_or("?");
    let group = spec["group"].as_str().unwrap_or("?");
    let mut out = String::new();
    let _ = writeln!(out, "## {kind}\n");
    out.push_str("| | |\n| --- | --- |\n");
    let _ = writeln!(
        out,
        "| CRD name | {} |",
        code(crd["metadata"]["name"].as_str().unwrap_or("?"))
    );
    let _ = writeln!(out, "| group | {} |", code(group));
    let _ = writeln!(out, "| kind | {} |", code(kind));
    let _ = writeln!(
        out,
        "| plural / singular | {} / {} |",
        code(names["plural"].as_str().unwrap_or("?")),
        code(names["singular"].as_str().unwrap_or("?"))
    );
    let _ = writeln!(out, "| scope | {} |", spec["scope"].as_str().unwrap_or("?"));
    let _ = writeln!(
        out,
        "| short names | {} |",
        or_dash(&str_list(names.get("shortNames")))
    );
    let _ = writeln!(
        out,
        "| categories | {} |",
        or_dash(&str_list(names.get("categories")))
    );
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    let version_list: Vec<String> = versions
        .iter()
        .map(|v| {
            let mut flags = Vec::new();
            if v["served"].as_bool() == Some(true) {
                flags.push("served");
            }
            if v["storage"].as_bool() == Some(true) {
                flags.push("storage");
            }
            if v["deprecated"].as_bool() == Some(true) {
                flags.push("deprecated");
            }
            format!(
                "{} ({})",
                code(v["name"].as_str().unwrap_or("?")),
                flags.join(", ")
            )
        })
        .collect();
    let _ = writeln!(out, "| versions | {} |", version_list.join("; "));
    out.push('\n');

    for v in &versions {
        let version = v["name"].as_str().unwrap_or("?");
        let root = &v["schema"]["openAPIV3Schema"];
        let _ = writeln!(out, "### {kind} {version}\n");
        let _ = writeln!(out, "`apiVersion: {group}/{version}`, `kind: {kind}`.");
        if let Some(d) = root.get("description").and_then(Value::as_str) {
            let _ = writeln!(out, "{}", cell(d));
        }
        out.push('\n');
        let mut sub = Vec::new();
        if v["subresources"].get("status").is_some() {
            sub.push("`status`".to_string());
        }
        if v["subresources"].get("scale").is_some() {
            sub.push("`scale`".to_string());
        }
        let selectable: Vec<String> = v
            .get("selectableFields")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|f| f["jsonPath"].as_str())
                    .map(code)
                    .collect()
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "Subresources: {}. Selectable fields (`kubectl get --field-selector`): {}.\n",
            if sub.is_empty() {
                "none".to_string()
            } else {
                sub.join(", ")
            },
            if selectable.is_empty() {
                "none".to_string()
            } else {
                selectable.join(", ")
            }
        );

        if let Some(cols) = v.get("additionalPrinterColumns").and_then(Value::as_array) {
            let _ = writeln!(out, "#### Printer columns (`kubectl get`)\n");
            out.push_str(
                "| column | type | JSON path | description |\n| --- | --- | --- | --- |\n",
            );
            for c in cols {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} |",
                    cell(c["name"].as_str().unwrap_or("?")),
                    c["type"].as_str().unwrap_or("?"),
                    code(c["jsonPath"].as_str().unwrap_or("?")),
                    cell(c.get("description").and_then(Value::as_str).unwrap_or(""))
                );
            }
            out.push('\n');
        }

        let object_rules = constraints(&json_only_rules(root));
        if !object_rules.is_empty() {
            let _ = writeln!(out, "#### Rules on the whole object\n");
            for r in object_rules {
                let _ = writeln!(out, "- {r}");
            }
            out.push('\n');
        }

        let required = str_list(root.get("required"));
        if let Some(props) = root.get("properties").and_then(Value::as_object) {
            for (name, child) in props {
                if matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let _ = writeln!(out, "#### `{name}`\n");
                let mut rows = vec![row(name, child, required.contains(name), false)];
                rows.extend(field_rows(child, name, false));
                crd_field_table(&mut out, &rows);
                out.push('\n');
            }
        }
    }
    out
}

/// Only the `x-kubernetes-validations` of a schema (its other facts belong to its fields).
fn json_only_rules(schema: &Value) -> Value {
    let mut m = Map::new();
    if let Some(r) = schema.get("x-kubernetes-validations") {
        m.insert("x-kubernetes-validations".into(), r.clone());
    }
    Value::Object(m)
}

/// `docs/crd-reference.md` from the CustomResourceDefinitions (as JSON, in order).
pub fn crd_reference(crds: &[Value]) -> String {
    let mut out = String::new();
    out.push_str("# CRD reference\n\n");
    let _ = writeln!(
        out,
        "> Generated from the CustomResourceDefinitions (`crds/*.yaml`, themselves generated from \
         `src/crd/`) by `src/docgen.rs` — do not edit. Regenerate: `{BLESS_COMMAND}`.\n"
    );
    out.push_str(
        "Every field of every custom resource CloudPods defines. `required` means listed in the \
         parent object's `required`; constraints are enforced by the Kubernetes API server \
         (OpenAPI schema and CEL `x-kubernetes-validations`, where `oldSelf` is the stored \
         object on an update). `kubectl explain` shows the same descriptions.\n\n",
    );
    for crd in crds {
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap_or("?");
        let _ = writeln!(out, "- [{kind}](#{})", kind.to_ascii_lowercase());
    }
    out.push('\n');
    for crd in crds {
        out.push_str(&crd_section(crd));
    }
    trim_end(out)
}

fn trim_end(mut s: String) -> String {
    while s.ends_with("\n\n") {
        s.pop();
    }
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

const METHODS: [&str; 7] = ["get", "put", "post", "patch", "delete", "head", "options"];

/// One operation of the OpenAPI document, with where it lives.
struct Op<'a> {
    method: &'a str,
    path: &'a str,
    op: &'a Value,
}

fn operations(doc: &Value) -> Vec<Op<'_>> {
    let mut out = Vec::new();
    if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
        for (path, item) in paths {
            for method in METHODS {
                if let Some(op) = item.get(method) {
                    out.push(Op { method, path, op });
                }
            }
        }
    }
    out
}

fn op_anchor(op: &Op<'_>) -> String {
    let id = op.op["operationId"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}-{}", op.method, op.path));
    schema_anchor(&id).replacen("schema-", "op-", 1)
}

fn auth_text(doc: &Value, op: &Value) -> String {
    let security = op.get("security").or_else(|| doc.get("security"));
    let Some(reqs) = security.and_then(Value::as_array) else {
        return "none".to_string();
    };
    let names: Vec<String> = reqs
        .iter()
        .filter_map(Value::as_object)
        .flat_map(|m| m.keys().cloned())
        .collect();
    if names.is_empty() {
        return "none (public)".to_string();
    }
    let admin = if needs_admin(op) { ", admin role" } else { "" };
    let text = names
        .iter()
        .map(|n| {
            let scheme = &doc["components"]["securitySchemes"][n];
            match (scheme["type"].as_str(), scheme["scheme"].as_str()) {
                (Some("http"), Some("bearer")) => {
                    format!("`Authorization: Bearer <token>` ({})", code(n))
                }
                _ => code(n),
            }
        })
        .collect::<Vec<_>>()
        .join(" or ");
    format!("{text}{admin}")
}

/// The operation documents a 403 for callers without the admin role.
fn needs_admin(op: &Value) -> bool {
    op["responses"]["403"]["description"]
        .as_str()
        .is_some_and(|d| d.contains("admin role"))
}

fn body_schema(v: &Value) -> Option<(&str, &Value)> {
    let content = v.get("content")?.as_object()?;
    content
        .iter()
        .next()
        .map(|(mt, c)| (mt.as_str(), &c["schema"]))
}

fn operation_section(out: &mut String, doc: &Value, op: &Op<'_>) {
    let o = op.op;
    let _ = writeln!(
        out,
        "<a id=\"{}\"></a>\n### `{} {}`\n",
        op_anchor(op),
        op.method.to_ascii_uppercase(),
        op.path
    );
    if let Some(s) = o.get("summary").and_then(Value::as_str) {
        let _ = writeln!(
            out,
            "**{}.** {}\n",
            cell(s),
            cell(o.get("description").and_then(Value::as_str).unwrap_or(""))
        );
    }
    let _ = writeln!(
        out,
        "- operation id: {}\n- authentication: {}",
        code(o["operationId"].as_str().unwrap_or("?")),
        auth_text(doc, o)
    );
    if let Some(body) = o.get("requestBody") {
        if let Some((media, schema)) = body_schema(body) {
            let _ = writeln!(
                out,
                "- request body ({}, {}): {}",
                code(media),
                if body["required"].as_bool() == Some(true) {
                    "required"
                } else {
                    "optional"
                },
                type_name(schema, true)
            );
        }
    } else {
        out.push_str("- request body: none\n");
    }
    out.push('\n');
    if let Some(params) = o.get("parameters").and_then(Value::as_array) {
        out.push_str("| parameter | in | type | required | constraints | description |\n");
        out.push_str("| --- | --- | --- | --- | --- | --- |\n");
        for p in params {
            let schema = p.get("schema").cloned().unwrap_or(Value::Null);
            let mut c = constraints(&schema);
            if let Some(d) = schema.get("default") {
                c.insert(0, format!("default {}", code(&d.to_string())));
            }
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                code(p["name"].as_str().unwrap_or("?")),
                p["in"].as_str().unwrap_or("?"),
                cell(&type_name(&schema, true)),
                yes_no(p["required"].as_bool() == Some(true)),
                constraint_cell(&c),
                cell(p.get("description").and_then(Value::as_str).unwrap_or(""))
            );
        }
        out.push('\n');
    }
    out.push_str("| status | meaning | body |\n| --- | --- | --- |\n");
    if let Some(responses) = o.get("responses").and_then(Value::as_object) {
        for (status, r) in responses {
            let body = match body_schema(r) {
                Some((media, schema)) => format!("{} {}", type_name(schema, true), code(media)),
                None => "–".to_string(),
            };
            let _ = writeln!(
                out,
                "| {status} | {} | {} |",
                cell(r.get("description").and_then(Value::as_str).unwrap_or("")),
                cell(&body)
            );
        }
    }
    out.push('\n');
}

fn schema_section(out: &mut String, name: &str, schema: &Value) {
    let _ = writeln!(out, "<a id=\"{}\"></a>\n### {name}\n", schema_anchor(name));
    if let Some(d) = schema.get("description").and_then(Value::as_str) {
        let _ = writeln!(out, "{}\n", cell(d));
    }
    let rows = field_rows(schema, "", true);
    if rows.is_empty() {
        let _ = write!(out, "Type: {}", type_name(schema, true));
        if let Some(values) = enum_values(unwrap_schema(schema).0) {
            out.push_str(", one of:\n\n");
            for (v, d) in values {
                match d {
                    Some(d) => {
                        let _ = writeln!(out, "- {}: {}", code(&v), cell(&d));
                    }
                    None => {
                        let _ = writeln!(out, "- {}", code(&v));
                    }
                }
            }
            out.push('\n');
        } else {
            let c = constraints(schema);
            if c.is_empty() {
                out.push_str(".\n\n");
            } else {
                let _ = writeln!(out, "; {}.\n", cell(&c.join("; ")));
            }
        }
    } else {
        let c = constraints(schema);
        if !c.is_empty() {
            let _ = writeln!(out, "Object: {}.\n", cell(&c.join("; ")));
        }
        api_field_table(out, &rows);
        out.push('\n');
    }
}

/// `docs/api-reference.md` from the OpenAPI 3 document the API serves.
pub fn api_reference(doc: &Value) -> String {
    let mut out = String::new();
    out.push_str("# API reference\n\n");
    let _ = writeln!(
        out,
        "> Generated from the OpenAPI document the API serves (`src/api/openapi.rs`) by \
         `src/docgen.rs` — do not edit. Regenerate: `{BLESS_COMMAND}`.\n"
    );
    let title = doc["info"]["title"].as_str().unwrap_or("API");
    let _ = writeln!(
        out,
        "{title}, OpenAPI {}. The running server serves the same document at \
         `GET /api/cloud-pods/openapi.json`. How to run the API and what it records: \
         [api.md](api.md).\n",
        doc["openapi"].as_str().unwrap_or("?")
    );
    if let Some(d) = doc["info"].get("description").and_then(Value::as_str) {
        let _ = writeln!(out, "{}\n", cell(d));
    }
    let ops = operations(doc);

    out.push_str("## Authentication\n\n");
    out.push_str("| scheme | type | details |\n| --- | --- | --- |\n");
    if let Some(schemes) = doc["components"]
        .get("securitySchemes")
        .and_then(Value::as_object)
    {
        for (name, s) in schemes {
            let mut details = Vec::new();
            for key in ["scheme", "bearerFormat", "in", "name"] {
                if let Some(v) = s.get(key).and_then(Value::as_str) {
                    details.push(format!("{key} {}", code(v)));
                }
            }
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                code(name),
                s["type"].as_str().unwrap_or("?"),
                details.join(", ")
            );
        }
    }
    out.push_str(
        "\nOperations whose authentication is \"none (public)\" need no token; every other \
         operation answers 401 without a valid one.\n\n",
    );

    out.push_str("## Errors\n\n");
    out.push_str(
        "Every failure has one body shape, [ErrorBody](#schema-errorbody). The statuses and \
         codes the operations document:\n\n",
    );
    let mut seen: Vec<(String, String)> = Vec::new();
    for op in &ops {
        if let Some(responses) = op.op.get("responses").and_then(Value::as_object) {
            for (status, r) in responses {
                let is_error = body_schema(r)
                    .and_then(|(_, s)| s.get("$ref"))
                    .and_then(Value::as_str)
                    .is_some_and(|r| ref_name(r) == "ErrorBody");
                let d = r
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if is_error && !seen.contains(&(status.clone(), d.clone())) {
                    seen.push((status.clone(), d));
                }
            }
        }
    }
    seen.sort();
    out.push_str("| status | meaning |\n| --- | --- |\n");
    for (status, d) in &seen {
        let _ = writeln!(out, "| {status} | {} |", cell(d));
    }
    out.push('\n');

    out.push_str("## Operations\n\n");
    out.push_str("| method | path | authentication | summary |\n| --- | --- | --- | --- |\n");
    // The document's tags in their order, then any tag only an operation names.
    let mut order: Vec<(String, String)> = doc
        .get("tags")
        .and_then(Value::as_array)
        .map(|t| {
            t.iter()
                .map(|t| {
                    (
                        t["name"].as_str().unwrap_or("").to_string(),
                        t.get("description")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let tag_of = |op: &Op<'_>| {
        op.op["tags"]
            .get(0)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    for op in &ops {
        let t = tag_of(op);
        if !order.iter().any(|(n, _)| *n == t) {
            order.push((t, String::new()));
        }
    }
    let mut sorted: Vec<&Op<'_>> = Vec::new();
    for (t, _) in &order {
        sorted.extend(ops.iter().filter(|op| tag_of(op) == *t));
    }
    for op in &sorted {
        let auth = if auth_text(doc, op.op).starts_with("none") {
            "public"
        } else if needs_admin(op.op) {
            "bearer, admin"
        } else {
            "bearer"
        };
        let _ = writeln!(
            out,
            "| {} | [`{}`](#{}) | {auth} | {} |",
            op.method.to_ascii_uppercase(),
            op.path,
            op_anchor(op),
            cell(op.op.get("summary").and_then(Value::as_str).unwrap_or(""))
        );
    }
    out.push('\n');
    for (t, description) in &order {
        let group: Vec<&&Op<'_>> = sorted.iter().filter(|op| tag_of(op) == *t).collect();
        if group.is_empty() {
            continue;
        }
        if description.is_empty() {
            let _ = writeln!(out, "## Operations: {t}\n");
        } else {
            let _ = writeln!(out, "## Operations: {t} ({})\n", cell(description));
        }
        for op in group {
            operation_section(&mut out, doc, op);
        }
    }

    out.push_str("## Schemas\n\n");
    if let Some(schemas) = doc["components"].get("schemas").and_then(Value::as_object) {
        for (name, schema) in schemas {
            schema_section(&mut out, name, schema);
        }
    }
    trim_end(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_escape_pipes_and_join_lines() {
        assert_eq!(cell("a|b\n  c\n\nd"), "a\\|b c d");
        assert_eq!(code("x`y"), "`` x`y ``");
        assert_eq!(code("plain"), "`plain`");
        assert_eq!(schema_anchor("io.k8s.Condition"), "schema-io-k8s-condition");
    }

    #[test]
    fn types_unwrap_refs_nullables_arrays_maps_and_enums() {
        let nullable_ref = json!({"anyOf": [{"$ref": "#/components/schemas/Resources"},
                                            {"enum": [null], "nullable": true}]});
        assert_eq!(
            type_name(&nullable_ref, true),
            "[Resources](#schema-resources)"
        );
        assert_eq!(type_name(&nullable_ref, false), "Resources");
        assert!(constraints(&nullable_ref).contains(&"nullable".to_string()));
        let all_of = json!({"allOf": [{"$ref": "#/components/schemas/QuotaUsage"}]});
        assert_eq!(type_name(&all_of, false), "QuotaUsage");
        assert_eq!(
            type_name(&json!({"type": "integer", "format": "int32"}), true),
            "integer (int32)"
        );
        assert_eq!(
            type_name(&json!({"type": "array", "items": {"type": "string"}}), true),
            "array of string"
        );
        assert_eq!(
            type_name(
                &json!({"type": "object", "additionalProperties": {"type": "integer"}}),
                true
            ),
            "map of string to integer"
        );
        let one_of = json!({"oneOf": [
            {"type": "string", "enum": ["Running"], "description": "runs"},
            {"type": "string", "enum": ["Stopped"]}]});
        assert_eq!(type_name(&one_of, true), "string");
        assert_eq!(constraints(&one_of), ["one of `Running`, `Stopped`"]);
        assert_eq!(type_name(&json!({}), true), "any");
    }

    #[test]
    fn constraints_name_bounds_patterns_and_cel_rules() {
        let s = json!({
            "type": "integer", "minimum": 1.0, "maximum": 64.0,
            "x-kubernetes-validations": [{"rule": "self >= oldSelf", "message": "may only grow"}]
        });
        assert_eq!(
            constraints(&s),
            ["1 ≤ value ≤ 64", "CEL `self >= oldSelf` — “may only grow”"]
        );
        let s = json!({"type": "string", "minLength": 1, "maxLength": 63, "pattern": "^(a|b)$",
                       "enum": ["a", "b"]});
        assert_eq!(
            constraints(&s),
            ["one of `a`, `b`", "length 1-63", "pattern `^(a|b)$`"]
        );
        let s = json!({"type": "array", "maxItems": 32, "items": {"type": "string"}});
        assert_eq!(constraints(&s), ["at most 32 items"]);
        let s = json!({"type": "object", "additionalProperties": false});
        assert_eq!(constraints(&s), ["no other fields"]);
    }

    #[test]
    fn rows_walk_nested_objects_and_arrays_with_required() {
        let s = json!({
            "type": "object",
            "required": ["a"],
            "properties": {
                "a": {"type": "string", "description": "first\nline"},
                "b": {"type": "object", "nullable": true, "properties": {
                    "c": {"type": "integer", "default": 3}}},
                "d": {"type": "array", "items": {"type": "object", "required": ["e"],
                      "properties": {"e": {"type": "boolean"}}}},
                "r": {"$ref": "#/components/schemas/X"}
            }
        });
        let rows = field_rows(&s, "spec", false);
        let paths: Vec<&str> = rows.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.a",
                "spec.b",
                "spec.b.c",
                "spec.d",
                "spec.d[].e",
                "spec.r"
            ]
        );
        assert!(rows[0].required && !rows[1].required && rows[4].required);
        assert_eq!(rows[0].description, "first line");
        assert_eq!(rows[2].default.as_deref(), Some("3"));
        assert_eq!(rows[3].ty, "array of object");
        assert_eq!(rows[5].ty, "X");
    }

    #[test]
    fn crd_reference_covers_every_schema_property_of_the_real_crds() {
        let crds: Vec<Value> = crate::crd::all_crds()
            .into_iter()
            .map(|(_, c)| serde_json::to_value(c).unwrap())
            .collect();
        let md = crd_reference(&crds);
        assert!(md.contains(BLESS_COMMAND));
        for needle in [
            "## CloudPod",
            "## TenantQuota",
            "| scope | Namespaced |",
            "| scope | Cluster |",
            "| short names | `cpod` |",
            "| VMID | integer | `.status.vmid` |",
            "| `spec.powerState` | string | no | `\"Running\"` | one of `Running`, `Stopped`",
            "`spec.cloudInit.sshPublicKeys[]`",
            "“spec.tenantId is immutable: a pod cannot move to another tenant”",
            "`status.conditions[].reason`",
            "512 ≤ value ≤ 262144",
        ] {
            assert!(md.contains(needle), "missing {needle:?}");
        }
        // Every property of every schema has a row.
        fn paths(v: &Value, prefix: &str, out: &mut Vec<String>) {
            if let Some(p) = v.get("properties").and_then(Value::as_object) {
                for (k, c) in p {
                    let here = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    out.push(here.clone());
                    paths(c, &here, out);
                }
            }
            if let Some(items) = v.get("items") {
                paths(items, &format!("{prefix}[]"), out);
            }
        }
        for crd in &crds {
            let mut all = Vec::new();
            paths(
                &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
                "",
                &mut all,
            );
            for p in all
                .iter()
                .filter(|p| !p.starts_with("metadata") && *p != "apiVersion" && *p != "kind")
            {
                assert!(md.contains(&format!("| `{p}` |")), "no row for {p}");
            }
        }
    }

    #[test]
    fn api_reference_lists_every_operation_with_auth_params_and_responses() {
        let doc = json!({
            "openapi": "3.0.3",
            "info": {"title": "T", "version": "1"},
            "tags": [{"name": "pods", "description": "Pods"}],
            "paths": {"/x/{id}": {"post": {
                "operationId": "doIt", "summary": "Do it", "description": "Does it.",
                "tags": ["pods"], "security": [{"bearerAuth": []}],
                "parameters": [{"name": "id", "in": "path", "required": true,
                                "description": "The id.", "schema": {"type": "string", "pattern": "^[0-9]+$"}}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Req"}}}},
                "responses": {
                    "202": {"description": "Accepted"},
                    "404": {"description": "No such thing", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
                }
            }}},
            "components": {
                "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
                "schemas": {
                    "ErrorBody": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                    "Req": {"type": "object", "additionalProperties": false, "properties": {"n": {"type": "integer", "minimum": 1}}}
                }
            }
        });
        let md = api_reference(&doc);
        for needle in [
            "### `POST /x/{id}`",
            "**Do it.** Does it.",
            "`Authorization: Bearer <token>` (`bearerAuth`)",
            "| `id` | path | string | yes | pattern `^[0-9]+$` | The id. |",
            "- request body (`application/json`, required): [Req](#schema-req)",
            "| 404 | No such thing | [ErrorBody](#schema-errorbody) `application/json` |",
            "| 202 | Accepted | – |",
            "| POST | [`/x/{id}`](#op-doit) | bearer | Do it |",
            "Object: no other fields.",
            "| `n` | integer | no | value ≥ 1 |  |",
            "| 404 | No such thing |",
        ] {
            assert!(md.contains(needle), "missing {needle:?} in\n{md}");
        }
    }
}
