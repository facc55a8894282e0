//! Request and response bodies of the REST API. The OpenAPI document's schemas are generated
//! from these types, so the documentation cannot drift from what the server parses and sends.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd::PowerState;
use crate::store::pods::{PlanRow, PodRow};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// `POST /api/cloud-pods/order`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderRequest {
    /// Plan code, e.g. `starter` (see GET /plans).
    pub plan_code: String,
    /// Blueprint code, e.g. `ubuntu-24-minimal`.
    pub blueprint: String,
    /// Pod name, used as the guest hostname: a DNS label (lowercase letters, digits, '-'; at most 63).
    pub name: String,
    /// Optional settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<OrderOptions>,
    /// mPanel's order id; acts as the idempotency key when no Idempotency-Key header is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
}

/// Optional settings of an order.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderOptions {
    /// OpenSSH public keys for the login user (at most 32).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_public_keys: Vec<String>,
    /// Login user created by cloud-init (not root). Defaults to the blueprint's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Initial power state: Running (default) or Stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_state: Option<PowerState>,
}

/// `POST /api/cloud-pods/{id}/scale`: the new size; fields left out keep their value.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleRequest {
    /// vCPU cores (1-64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<i32>,
    /// Memory in MiB (512-262144).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<i32>,
    /// Disk in GiB (5-4096); disks only grow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_gb: Option<i32>,
}

/// `POST /api/cloud-pods/tenants/{id}/quota`: the tenant's new limits (all required).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaUpdate {
    /// Maximum live pods (0-10000).
    pub max_pods: i64,
    /// Maximum vCPU cores (0-100000).
    pub max_cpu_cores: i64,
    /// Maximum memory in MiB (0-67108864).
    pub max_memory_mb: i64,
    /// Maximum disk in GiB (0-10000000).
    pub max_disk_gb: i64,
}

/// 202 (or 200) answer to an action: what was accepted and where to follow it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    /// The pod.
    pub pod_id: String,
    /// The job that groups the work (null when there was nothing to do).
    pub job_id: Option<i64>,
    /// The pod's status as recorded now (seed statuses).
    pub status: String,
    /// GET this to follow the pod.
    pub status_url: String,
    /// True when this answers a repeated request (same idempotency key).
    pub replayed: bool,
    /// The backup request token (backup only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_request: Option<String>,
    /// The size asked for (scale only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

/// vCPU, memory and disk.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// vCPU cores.
    pub cpu_cores: i32,
    /// Memory in MiB.
    pub memory_mb: i32,
    /// Disk in GiB.
    pub disk_gb: i32,
}

/// One pod as mPanel shows it (from `cloud_pods`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodView {
    /// Pod id.
    pub pod_id: String,
    /// Proxmox VMID once reserved.
    pub vmid: Option<i32>,
    /// Pod name (guest hostname).
    pub name: Option<String>,
    /// Owner tenant.
    pub tenant_id: String,
    /// Ordering user.
    pub user_id: Option<String>,
    /// Plan.
    pub plan_code: String,
    /// Blueprint.
    pub blueprint: String,
    /// Seed status: pending, provisioning, active, error, deleting, deleted.
    pub status: String,
    /// Proxmox node.
    pub node: Option<String>,
    /// Guest address.
    pub ip_address: Option<String>,
    /// Effective resources.
    pub resources: Resources,
    /// Admitted resources not yet applied (a pending scale).
    pub pending_resources: Option<Resources>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Deleted.
    pub deleted_at: Option<DateTime<Utc>>,
}

impl From<&PodRow> for PodView {
    fn from(r: &PodRow) -> Self {
        let resources = Resources {
            cpu_cores: r.cpu_cores,
            memory_mb: r.memory_mb,
            disk_gb: r.disk_gb,
        };
        let pending = (r.reserved_cpu_cores.is_some()
            || r.reserved_memory_mb.is_some()
            || r.reserved_disk_gb.is_some())
        .then(|| Resources {
            cpu_cores: r.reserved_cpu_cores.unwrap_or(r.cpu_cores),
            memory_mb: r.reserved_memory_mb.unwrap_or(r.memory_mb),
            disk_gb: r.reserved_disk_gb.unwrap_or(r.disk_gb),
        });
        PodView {
            pod_id: r.id.clone(),
            vmid: r.vmid,
            name: r.hostname.clone(),
            tenant_id: r.tenant_id.clone(),
            user_id: r.user_id.clone(),
            plan_code: r.plan_code.clone(),
            blueprint: r.blueprint_code.clone(),
            status: r.status.clone(),
            node: r.node.clone(),
            ip_address: r.ip_address.clone(),
            resources,
            pending_resources: pending,
            created_at: r.created_at,
            updated_at: r.updated_at,
            deleted_at: r.deleted_at,
        }
    }
}

/// `GET /api/cloud-pods`: one page of the caller's pods, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodList {
    /// The page.
    pub items: Vec<PodView>,
    /// Page number (from 1).
    pub page: i64,
    /// Page size.
    pub page_size: i64,
    /// Pods matching the filter in all pages.
    pub total: i64,
}

/// One health check of a pod.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// record, ready, network or reconciled.
    pub name: String,
    /// pass, fail or unknown.
    pub status: String,
    /// Detail.
    pub message: String,
}

/// `GET /api/cloud-pods/{id}/health`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Pod id.
    pub pod_id: String,
    /// VMID.
    pub vmid: Option<i32>,
    /// Seed status.
    pub status: String,
    /// Every check passed.
    pub healthy: bool,
    /// The checks.
    pub checks: Vec<HealthCheck>,
    /// Guest address.
    pub ip_address: Option<String>,
    /// The controller's last error, if any.
    pub last_error: Option<String>,
    /// The CloudPod's conditions.
    pub conditions: Vec<Condition>,
    /// When this was computed.
    pub checked_at: DateTime<Utc>,
}

/// One plan.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PlanView {
    /// Code used in orders.
    pub code: String,
    /// Display name.
    pub name: String,
    /// Display description.
    pub description: String,
    /// Monthly price.
    pub price_monthly: f64,
    /// vCPU cores.
    pub vcpu: i32,
    /// Memory in MiB.
    pub ram_mb: i32,
    /// Disk in GiB.
    pub storage_gb: i32,
    /// Monthly transfer in GB (null when unmetered).
    pub bandwidth_gb: Option<i32>,
    /// metered or unmetered.
    pub bandwidth_type: String,
    /// Per-tenant cap on pods of this plan.
    pub max_pods_per_tenant: Option<i32>,
}

impl From<&PlanRow> for PlanView {
    fn from(p: &PlanRow) -> Self {
        PlanView {
            code: p.code.clone(),
            name: p.name.clone(),
            description: p.description.clone(),
            price_monthly: p.price_monthly,
            vcpu: p.vcpu,
            ram_mb: p.ram_mb,
            storage_gb: p.storage_gb,
            bandwidth_gb: p.bandwidth_gb,
            bandwidth_type: p.bandwidth_type.clone(),
            max_pods_per_tenant: p.max_pods_per_tenant,
        }
    }
}

/// `GET /api/cloud-pods/plans`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct PlanList {
    /// Orderable plans in display order.
    pub plans: Vec<PlanView>,
}

/// One row of the comparison table: a feature and its value per plan.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CompareRow {
    /// Stable key, e.g. vcpu.
    pub key: String,
    /// Label for people, e.g. "vCPU cores".
    pub label: String,
    /// Unit, e.g. GB, EUR/month.
    pub unit: Option<String>,
    /// One value per column, in the order of `plans`.
    pub values: Vec<serde_json::Value>,
}

/// `GET /api/cloud-pods/compare`: a table a pricing page renders as is.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Comparison {
    /// Columns: the plans, cheapest first.
    pub plans: Vec<PlanView>,
    /// Rows: one feature each.
    pub rows: Vec<CompareRow>,
}

/// `GET /api/cloud-pods/admin/stats`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdminStats {
    /// Pod counts.
    pub pods: PodStats,
    /// Queue counts.
    pub queue: QueueStats,
    /// Failures in the last hour.
    pub failures_last_hour: FailureStats,
    /// Tenants with live pods.
    pub tenants_with_pods: i64,
    /// When this was computed.
    pub generated_at: DateTime<Utc>,
}

/// Pod counts.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    /// Live pods.
    pub total: i64,
    /// All pods by status (deleted included).
    pub by_status: BTreeMap<String, i64>,
    /// Live pods by plan.
    pub by_plan: BTreeMap<String, i64>,
    /// Live pods by node.
    pub by_node: BTreeMap<String, i64>,
}

/// Queue counts.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QueueStats {
    /// Queued plus running items.
    pub depth: i64,
    /// Items by status.
    pub by_status: BTreeMap<String, i64>,
}

/// Failures in the last hour.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailureStats {
    /// Queue items that ended failed.
    pub queue: i64,
    /// Pods that went to error.
    pub pods: i64,
}
