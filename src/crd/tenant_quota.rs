//! The `TenantQuota` custom resource: per-tenant limits, named after the tenant id.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Resource limits of one tenant. The object's name is the tenant id; without one the defaults apply (2 pods, 4 cores, 8192 MiB, 200 GiB).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[kube(
    group = "cloudpods.migrahosting.com",
    version = "v1alpha1",
    kind = "TenantQuota",
    plural = "tenantquotas",
    singular = "tenantquota",
    shortname = "tq",
    category = "cloudpods-all",
    status = "TenantQuotaStatus",
    doc = "A TenantQuota caps what one tenant may run: pods, vCPU cores, memory and disk. Its name is the tenant id.",
    printcolumn(name = "MaxPods", type_ = "integer", json_path = ".spec.maxPods", description = "Maximum pods"),
    printcolumn(name = "Pods", type_ = "integer", json_path = ".status.usage.pods", description = "Pods in use"),
    printcolumn(name = "MaxCores", type_ = "integer", json_path = ".spec.maxCpuCores", description = "Maximum vCPU cores"),
    printcolumn(name = "Cores", type_ = "integer", json_path = ".status.usage.cpuCores", description = "vCPU cores in use"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && self.metadata.name.size() <= 63")
        .message("metadata.name is the tenant id: lowercase letters, digits and '-', at most 63 characters"),
)]
#[serde(rename_all = "camelCase")]
pub struct TenantQuotaSpec {
    /// Maximum number of live pods (0-10000).
    #[schemars(range(min = 0, max = 10000))]
    pub max_pods: i32,
    /// Maximum vCPU cores summed over live pods (0-100000).
    #[schemars(range(min = 0, max = 100000))]
    pub max_cpu_cores: i32,
    /// Maximum memory in MiB summed over live pods (0-67108864, i.e. 64 TiB).
    #[schemars(range(min = 0, max = 67108864))]
    pub max_memory_mb: i64,
    /// Maximum disk in GiB summed over live pods (0-10000000).
    #[schemars(range(min = 0, max = 10000000))]
    pub max_disk_gb: i64,
}

/// Resources a tenant's live pods hold.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct QuotaUsage {
    /// Live pods.
    pub pods: i64,
    /// vCPU cores.
    pub cpu_cores: i64,
    /// Memory in MiB.
    pub memory_mb: i64,
    /// Disk in GiB.
    pub disk_gb: i64,
}

/// Observed usage of a tenant, written only by the controller.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TenantQuotaStatus {
    /// What the tenant's live pods hold now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<QuotaUsage>,
    /// The metadata.generation these limits were mirrored from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions, e.g. Synced (limits mirrored into cloud_pod_quotas) and Exceeded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
