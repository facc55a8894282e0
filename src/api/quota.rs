//! Quota routes: the caller's summary, a pre-check for a plan, and the admin's view and update
//! of any tenant's limits.

use axum::Json;
use axum::extract::{Path, State};
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::auth::Caller;
use super::cloudpod::kube_call;
use super::error::ApiError;
use super::extract::{AdminCaller, JsonBody, QueryMap};
use super::model::QuotaUpdate;
use super::{AppState, FIELD_MANAGER};
use crate::quota::{QuotaCheck, QuotaLimits, QuotaSummary, Requested};
use crate::store::pods as store;

/// `GET /my-quota`: the caller's tenant's limits, usage and what is left.
pub async fn my_quota(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<QuotaSummary>, ApiError> {
    Ok(Json(
        state.quotas.get_quota_summary(&caller.tenant_id).await?,
    ))
}

/// `GET /check-quota?planCode=`: would one more pod of this plan fit? (Advisory: the order
/// itself is the binding check.)
pub async fn check_quota(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryMap,
) -> Result<Json<QuotaCheck>, ApiError> {
    query.only(&["planCode"])?;
    let code = query
        .str("planCode")
        .ok_or_else(|| ApiError::invalid("planCode", "is required"))?;
    if !super::validate::is_dns_label(code) {
        return Err(ApiError::invalid(
            "planCode",
            "must be a plan code (a DNS label)",
        ));
    }
    let plan = store::plan(&state.pool, code)
        .await?
        .filter(|p| p.is_active)
        .ok_or_else(|| ApiError::Unprocessable {
            code: "UNKNOWN_PLAN",
            field: Some("planCode".into()),
            message: format!("there is no orderable plan `{code}`"),
        })?;
    let requested = Requested {
        pods: 1,
        cpu_cores: plan.vcpu.into(),
        memory_mb: plan.ram_mb.into(),
        disk_gb: plan.storage_gb.into(),
    };
    Ok(Json(
        state
            .quotas
            .check_tenant_quota(&caller.tenant_id, &requested)
            .await?,
    ))
}

fn tenant_param(id: &str) -> Result<(), ApiError> {
    if super::validate::is_dns_label(id) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "id",
            "must be a tenant id: lowercase letters, digits and '-', at most 63 characters",
        ))
    }
}

/// `GET /tenants/{id}/quota` (admin): any tenant's summary.
pub async fn tenant_quota(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<QuotaSummary>, ApiError> {
    tenant_param(&id)?;
    Ok(Json(state.quotas.get_quota_summary(&id).await?))
}

/// `POST /tenants/{id}/quota` (admin): set a tenant's limits. Idempotent: it applies the
/// TenantQuota resource (server-side apply) and mirrors the limits into `cloud_pod_quotas`
/// at once, so the next order is checked against them.
pub async fn set_tenant_quota(
    State(state): State<AppState>,
    admin: AdminCaller,
    Path(id): Path<String>,
    JsonBody(update): JsonBody<QuotaUpdate>,
) -> Result<Json<QuotaSummary>, ApiError> {
    tenant_param(&id)?;
    for (field, value, max) in [
        ("maxPods", update.max_pods, 10_000),
        ("maxCpuCores", update.max_cpu_cores, 100_000),
        ("maxMemoryMb", update.max_memory_mb, 67_108_864),
        ("maxDiskGb", update.max_disk_gb, 10_000_000),
    ] {
        if !(0..=max).contains(&value) {
            return Err(ApiError::invalid(field, format!("must be from 0 to {max}")));
        }
    }
    let object = json!({
        "apiVersion": format!("{}/v1alpha1", crate::crd::GROUP),
        "kind": "TenantQuota",
        "metadata": { "name": id },
        "spec": {
            "maxPods": update.max_pods,
            "maxCpuCores": update.max_cpu_cores,
            "maxMemoryMb": update.max_memory_mb,
            "maxDiskGb": update.max_disk_gb,
        },
    });
    kube_call(
        &state,
        "apply the TenantQuota",
        state.tenant_quotas.patch(
            &id,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&object),
        ),
    )
    .await?;
    let limits = QuotaLimits {
        max_pods: update.max_pods,
        max_cpu_cores: update.max_cpu_cores,
        max_memory_mb: update.max_memory_mb,
        max_disk_gb: update.max_disk_gb,
    };
    state.quotas.set_limits(&id, &limits).await?;
    tracing::info!(tenant_id = %id, admin = %admin.0.user_id, ?limits, action = "set-quota", "tenant quota set");
    Ok(Json(state.quotas.get_quota_summary(&id).await?))
}
