//! The OpenAPI 3 document, generated from the route table ([`super::routes`]) and the
//! request/response types (schemas by schemars), served at `GET /api/cloud-pods/openapi.json`.

use std::sync::OnceLock;

use axum::Json;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value, json};

use super::error::ErrorBody;
use super::model::{
    Accepted, AdminStats, Comparison, Health, OrderRequest, PlanList, PlanView, PodList, PodView,
    QuotaUpdate, ScaleRequest,
};
use super::{Access, BASE, Route};
use crate::quota::{QuotaCheck, QuotaSummary};

/// Produces a schema (and registers its definitions) in a generator.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema<T: JsonSchema>() -> SchemaFn {
    |g| g.subschema_for::<T>()
}

/// One parameter of an operation.
#[derive(Debug, Clone)]
pub struct Param {
    /// Name.
    pub name: &'static str,
    /// `path`, `query` or `header`.
    pub location: &'static str,
    /// Required.
    pub required: bool,
    /// Description.
    pub description: &'static str,
    /// JSON schema of the value.
    pub schema: Value,
}

/// The documentation of one operation.
#[derive(Debug, Clone)]
pub struct Operation {
    /// operationId.
    pub id: &'static str,
    /// One-line summary.
    pub summary: &'static str,
    /// Longer description.
    pub description: &'static str,
    /// Tag (group).
    pub tag: &'static str,
    /// Parameters.
    pub params: Vec<Param>,
    /// Request body schema, if any (required when present unless `body_optional`).
    pub body: Option<SchemaFn>,
    /// The body may be left out.
    pub body_optional: bool,
    /// Responses besides the common error ones: (status, description, schema).
    pub responses: Vec<(u16, &'static str, Option<SchemaFn>)>,
}

fn id_param() -> Param {
    Param {
        name: "id",
        location: "path",
        required: true,
        description: "The pod id (pod-...) or its Proxmox VMID.",
        schema: json!({ "type": "string", "pattern": "^(pod-[a-z0-9]([-a-z0-9]*[a-z0-9])?|[0-9]{3,9})$" }),
    }
}

fn idempotency_param() -> Param {
    Param {
        name: "Idempotency-Key",
        location: "header",
        required: false,
        description: "Repeating a request with the same key returns the first answer instead of acting twice (1-255 visible ASCII characters).",
        schema: json!({ "type": "string", "minLength": 1, "maxLength": 255 }),
    }
}

fn tenant_param() -> Param {
    Param {
        name: "id",
        location: "path",
        required: true,
        description: "The tenant id.",
        schema: json!({ "type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63 }),
    }
}

fn op(
    id: &'static str,
    tag: &'static str,
    summary: &'static str,
    description: &'static str,
) -> Operation {
    Operation {
        id,
        summary,
        description,
        tag,
        params: Vec::new(),
        body: None,
        body_optional: false,
        responses: Vec::new(),
    }
}

impl Operation {
    fn param(mut self, p: Param) -> Self {
        self.params.push(p);
        self
    }
    fn body(mut self, s: SchemaFn) -> Self {
        self.body = Some(s);
        self
    }
    fn respond(mut self, status: u16, description: &'static str, s: Option<SchemaFn>) -> Self {
        self.responses.push((status, description, s));
        self
    }

    /// GET /plans.
    pub fn plans() -> Self {
        op(
            "listPlans",
            "plans",
            "List orderable plans",
            "Plans in display order.",
        )
        .respond(200, "The plans", Some(schema::<PlanList>()))
    }
    /// GET /plans/{code}.
    pub fn plan() -> Self {
        op("getPlan", "plans", "One plan", "An orderable plan by code.")
            .param(Param {
                name: "code",
                location: "path",
                required: true,
                description: "Plan code.",
                schema: json!({ "type": "string" }),
            })
            .respond(200, "The plan", Some(schema::<PlanView>()))
            .respond(404, "No such orderable plan", Some(schema::<ErrorBody>()))
    }
    /// GET /compare.
    pub fn compare() -> Self {
        op(
            "comparePlans",
            "plans",
            "Plan comparison table",
            "Features as rows, plans as columns, ready for a pricing page.",
        )
        .respond(200, "The table", Some(schema::<Comparison>()))
    }
    /// POST /order.
    pub fn order() -> Self {
        op("orderPod", "pods", "Order a CloudPod", "Validates the order, checks the tenant's quota, reserves it and creates the CloudPod resource. With an Idempotency-Key (or orderId) a repeated order returns the same pod.")
            .param(idempotency_param())
            .body(schema::<OrderRequest>())
            .respond(202, "Accepted: the pod is being provisioned", Some(schema::<Accepted>()))
            .respond(403, "QUOTA_EXCEEDED (with details) or FORBIDDEN", Some(schema::<ErrorBody>()))
            .respond(409, "IDEMPOTENCY_KEY_REUSED or CONFLICT", Some(schema::<ErrorBody>()))
            .respond(422, "UNKNOWN_PLAN, PLAN_INACTIVE, UNKNOWN_BLUEPRINT, BLUEPRINT_INACTIVE", Some(schema::<ErrorBody>()))
    }
    /// GET /.
    pub fn list() -> Self {
        let int = |min: i64, max: i64| json!({ "type": "integer", "minimum": min, "maximum": max });
        op("listPods", "pods", "List the caller's pods", "The caller's tenant's pods, newest first. Deleted pods only with includeDeleted=true or status=deleted.")
            .param(Param { name: "page", location: "query", required: false, description: "Page, from 1 (default 1).", schema: int(1, 100_000) })
            .param(Param { name: "pageSize", location: "query", required: false, description: "Items per page, 1-100 (default 20).", schema: int(1, 100) })
            .param(Param { name: "status", location: "query", required: false, description: "Only pods with this status.", schema: json!({ "type": "string", "enum": ["pending", "provisioning", "active", "error", "deleting", "deleted"] }) })
            .param(Param { name: "includeDeleted", location: "query", required: false, description: "Include deleted pods (default false).", schema: json!({ "type": "boolean" }) })
            .respond(200, "One page", Some(schema::<PodList>()))
    }
    /// GET /{id}.
    pub fn detail() -> Self {
        op(
            "getPod",
            "pods",
            "One pod",
            "A pod of the caller's tenant; another tenant's pod is a 404 like a missing one.",
        )
        .param(id_param())
        .respond(200, "The pod", Some(schema::<PodView>()))
        .respond(404, "No such pod", Some(schema::<ErrorBody>()))
    }
    /// POST /{id}/destroy.
    pub fn destroy() -> Self {
        let mut o = op("destroyPod", "pods", "Destroy a pod", "Deletes the CloudPod; the operator destroys the VM, releases the quota and marks the pod deleted. Repeating it is harmless.")
            .param(id_param())
            .param(idempotency_param())
            .respond(202, "Accepted", Some(schema::<Accepted>()))
            .respond(404, "No such pod", Some(schema::<ErrorBody>()));
        o.body_optional = true;
        o
    }
    /// POST /{id}/backup.
    pub fn backup() -> Self {
        let mut o = op("backupPod", "pods", "Back up a pod", "Sets a new declarative backup request on the CloudPod; the operator takes exactly one vzdump backup for it.")
            .param(id_param())
            .param(idempotency_param())
            .respond(202, "Accepted", Some(schema::<Accepted>()))
            .respond(404, "No such pod", Some(schema::<ErrorBody>()))
            .respond(409, "POD_NOT_ACTIVE", Some(schema::<ErrorBody>()));
        o.body_optional = true;
        o
    }
    /// GET /{id}/health.
    pub fn health() -> Self {
        op(
            "podHealth",
            "pods",
            "Pod health",
            "The record, readiness, network and reconciliation checks.",
        )
        .param(id_param())
        .respond(200, "The checks", Some(schema::<Health>()))
        .respond(404, "No such pod", Some(schema::<ErrorBody>()))
    }
    /// POST /{id}/scale.
    pub fn scale() -> Self {
        op("scalePod", "pods", "Scale a pod", "Checks the growth against the quota, reserves it and changes the CloudPod's size. Disks only grow.")
            .param(id_param())
            .param(idempotency_param())
            .body(schema::<ScaleRequest>())
            .respond(200, "Nothing to change (jobId null)", Some(schema::<Accepted>()))
            .respond(202, "Accepted", Some(schema::<Accepted>()))
            .respond(403, "QUOTA_EXCEEDED (with details)", Some(schema::<ErrorBody>()))
            .respond(404, "No such pod", Some(schema::<ErrorBody>()))
            .respond(409, "POD_DELETING, POD_NOT_READY or IDEMPOTENCY_KEY_REUSED", Some(schema::<ErrorBody>()))
            .respond(422, "DISK_SHRINK", Some(schema::<ErrorBody>()))
    }
    /// GET /my-quota.
    pub fn my_quota() -> Self {
        op(
            "myQuota",
            "quota",
            "The caller's quota",
            "Limits, usage and what is left for the caller's tenant.",
        )
        .respond(200, "The summary", Some(schema::<QuotaSummary>()))
    }
    /// GET /check-quota.
    pub fn check_quota() -> Self {
        op(
            "checkQuota",
            "quota",
            "Would one more pod of a plan fit?",
            "Advisory: the order is the binding check.",
        )
        .param(Param {
            name: "planCode",
            location: "query",
            required: true,
            description: "Plan code.",
            schema: json!({ "type": "string" }),
        })
        .respond(
            200,
            "The seed's checkTenantQuota result",
            Some(schema::<QuotaCheck>()),
        )
        .respond(422, "UNKNOWN_PLAN", Some(schema::<ErrorBody>()))
    }
    /// GET /tenants/{id}/quota.
    pub fn tenant_quota() -> Self {
        op(
            "getTenantQuota",
            "admin",
            "A tenant's quota (admin)",
            "Limits, usage and what is left for any tenant.",
        )
        .param(tenant_param())
        .respond(200, "The summary", Some(schema::<QuotaSummary>()))
    }
    /// POST /tenants/{id}/quota.
    pub fn set_tenant_quota() -> Self {
        op(
            "setTenantQuota",
            "admin",
            "Set a tenant's quota (admin)",
            "Applies the TenantQuota resource and mirrors it into cloud_pod_quotas. Idempotent.",
        )
        .param(tenant_param())
        .body(schema::<QuotaUpdate>())
        .respond(200, "The new summary", Some(schema::<QuotaSummary>()))
    }
    /// GET /admin/stats.
    pub fn admin_stats() -> Self {
        op(
            "adminStats",
            "admin",
            "System statistics (admin)",
            "Pods by status, plan and node; queue depth; failures in the last hour.",
        )
        .respond(200, "The statistics", Some(schema::<AdminStats>()))
    }
    /// GET /openapi.json.
    pub fn openapi() -> Self {
        op(
            "openapi",
            "meta",
            "This document",
            "The OpenAPI 3 description of the API.",
        )
        .respond(200, "The document", None)
    }
}

/// Builds the whole document from the route table.
pub fn document(routes: &[Route]) -> Value {
    let mut request_gen = SchemaSettings::openapi3()
        .for_deserialize()
        .into_generator();
    let mut response_gen = SchemaSettings::openapi3().for_serialize().into_generator();
    let error_ref = response_gen.subschema_for::<ErrorBody>();
    let mut paths: Map<String, Value> = Map::new();
    for route in routes {
        let d = &route.doc;
        let mut responses = Map::new();
        for (status, description, s) in &d.responses {
            let mut r = json!({ "description": description });
            if let Some(s) = s {
                r["content"] = json!({ "application/json": { "schema": s(&mut response_gen) } });
            }
            responses.insert(status.to_string(), r);
        }
        let mut common = vec![(503, "SERVICE_UNAVAILABLE: a dependency failed; retry")];
        if d.body.is_some() || !d.params.is_empty() {
            common.push((400, "VALIDATION_FAILED or MALFORMED_JSON, naming the field"));
        }
        if route.access != Access::Public {
            common.push((401, "UNAUTHORIZED: missing, invalid or expired token"));
        }
        if route.access == Access::Admin {
            common.push((403, "FORBIDDEN: the admin role is required"));
        }
        for (status, description) in common {
            responses.entry(status.to_string()).or_insert_with(|| {
                json!({ "description": description,
                        "content": { "application/json": { "schema": error_ref.clone() } } })
            });
        }
        let mut operation = json!({
            "operationId": d.id,
            "summary": d.summary,
            "description": d.description,
            "tags": [d.tag],
            "responses": responses,
            "security": if route.access == Access::Public { json!([]) } else { json!([{ "bearerAuth": [] }]) },
        });
        if !d.params.is_empty() {
            operation["parameters"] = d
                .params
                .iter()
                .map(|p| {
                    json!({ "name": p.name, "in": p.location, "required": p.required,
                            "description": p.description, "schema": p.schema })
                })
                .collect();
        }
        if let Some(s) = d.body {
            operation["requestBody"] = json!({
                "required": !d.body_optional,
                "content": { "application/json": { "schema": s(&mut request_gen) } },
            });
        }
        let path = format!("{BASE}{}", route.path);
        let entry = paths.entry(path).or_insert_with(|| json!({}));
        entry[route.method.to_ascii_lowercase()] = operation;
    }
    let mut schemas = response_gen.take_definitions(true);
    for (k, v) in request_gen.take_definitions(true) {
        schemas.entry(k).or_insert(v);
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "CloudPods API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The mPanel REST API of CloudPods: plans, orders, pods, quotas. Every failure has the ErrorBody shape. Protected routes take `Authorization: Bearer <JWT>` issued by mPanel; the tenant always comes from the token.",
        },
        "servers": [{ "url": "/" }],
        "tags": [
            { "name": "plans", "description": "Public catalog" },
            { "name": "pods", "description": "The caller's pods" },
            { "name": "quota", "description": "Quota" },
            { "name": "admin", "description": "Admin only" },
            { "name": "meta", "description": "This document" },
        ],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" },
            },
        },
    })
}

/// `GET /openapi.json`.
pub async fn serve() -> Json<Value> {
    static DOC: OnceLock<Value> = OnceLock::new();
    Json(DOC.get_or_init(|| document(&super::routes())).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn every_route_is_documented_once_and_every_ref_resolves() {
        let routes = super::super::routes();
        let doc = document(&routes);
        assert_eq!(doc["openapi"], "3.0.3");
        let mut ids = std::collections::BTreeSet::new();
        for r in &routes {
            let op = &doc["paths"][format!("{BASE}{}", r.path)][r.method.to_ascii_lowercase()];
            assert!(op.is_object(), "{} {} undocumented", r.method, r.path);
            assert!(ids.insert(op["operationId"].as_str().unwrap().to_string()));
            let protected = op["security"].as_array().unwrap().len() == 1;
            assert_eq!(protected, r.access != Access::Public, "{}", r.path);
            if protected {
                assert!(op["responses"]["401"].is_object(), "{} lacks 401", r.path);
            }
            // Every {param} in the path is declared.
            for seg in r.path.split('/').filter(|s| s.starts_with('{')) {
                let name = seg.trim_matches(|c| c == '{' || c == '}');
                let declared = op["parameters"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["name"] == name && p["in"] == "path"));
                assert!(declared, "{} does not declare {name}", r.path);
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let name = r.strip_prefix("#/components/schemas/").expect(&r);
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "dangling {r}"
            );
        }
        let err = &doc["components"]["schemas"]["ErrorBody"];
        assert!(err["properties"]["error"].is_object());
        assert!(err["properties"]["field"].is_object());
    }
}
