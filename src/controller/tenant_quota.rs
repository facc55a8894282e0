//! The TenantQuota reconciler: mirrors limits into `cloud_pod_quotas` (which every
//! admission reads), writes usage into status, and re-admits the tenant's refused CloudPods
//! when limits rise or usage falls. Rows of deleted TenantQuotas are pruned periodically, so
//! the tenant falls back to the defaults.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{Context, Error, FIELD_MANAGER};
use crate::crd::{GROUP, QuotaUsage, TenantQuota, TenantQuotaStatus};
use crate::quota::QuotaLimits;

/// Reconciles one TenantQuota.
pub async fn reconcile(tq: Arc<TenantQuota>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = run(&tq, &ctx).await;
    ctx.metrics
        .duration
        .observe(&["tenantquota"], started.elapsed().as_secs_f64());
    ctx.metrics
        .reconciles
        .inc(&["tenantquota", if result.is_ok() { "ok" } else { "error" }]);
    result
}

/// Counts the failure and retries after a pause.
pub fn error_policy(tq: Arc<TenantQuota>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.errors.inc(&["tenantquota", err.reason()]);
    tracing::warn!(tenantId = %tq.name_any(), error = %err, "TenantQuota reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

async fn run(tq: &TenantQuota, ctx: &Context) -> Result<Action, Error> {
    let tenant = tq.name_any();
    let limits = QuotaLimits {
        max_pods: tq.spec.max_pods.into(),
        max_cpu_cores: tq.spec.max_cpu_cores.into(),
        max_memory_mb: tq.spec.max_memory_mb,
        max_disk_gb: tq.spec.max_disk_gb,
    };
    let (before, _) = ctx.quotas.get_tenant_quota(&tenant).await?;
    if before != limits {
        ctx.quotas.set_limits(&tenant, &limits).await?;
        tracing::info!(tenantId = %tenant, ?limits, "quota limits mirrored");
    }
    let usage = ctx.quotas.get_tenant_usage(&tenant).await?;
    let old = tq.status.as_ref();
    let grew = before.max_pods < limits.max_pods
        || before.max_cpu_cores < limits.max_cpu_cores
        || before.max_memory_mb < limits.max_memory_mb
        || before.max_disk_gb < limits.max_disk_gb;
    let freed = old.and_then(|s| s.usage).is_some_and(|u| {
        u.pods > usage.pods
            || u.cpu_cores > usage.cpu_cores
            || u.memory_mb > usage.memory_mb
            || u.disk_gb > usage.disk_gb
    });
    if grew || freed {
        ctx.requeue_refused(&tenant);
    }
    let status = build_status(tq, &limits, usage, k8s_openapi::jiff::Timestamp::now());
    if old != Some(&status) {
        let api: Api<TenantQuota> = Api::all(ctx.client.clone());
        let body = json!({
            "apiVersion": format!("{GROUP}/v1alpha1"),
            "kind": "TenantQuota",
            "status": status,
        });
        match api
            .patch_status(
                &tenant,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            Ok(_) => ctx.wrote("tenantquota_status"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        let exceeded_now = is_exceeded(&status);
        if exceeded_now && old.is_none_or(|o| !is_exceeded(o)) {
            let reference = tq.object_ref(&());
            if ctx
                .events
                .publish(
                    &reference,
                    true,
                    "QuotaExceeded",
                    "Reconcile",
                    "usage is above the limits (they were lowered); new pods are refused",
                )
                .await
            {
                ctx.wrote("event");
            }
        }
    }
    // Usage changes as pods come and go; the CloudPod watch re-triggers this too.
    Ok(Action::requeue(ctx.settings.sync_interval))
}

fn is_exceeded(s: &TenantQuotaStatus) -> bool {
    s.conditions
        .iter()
        .any(|c| c.type_ == "Exceeded" && c.status == "True")
}

/// The status for limits and usage; transition times are kept while a condition holds.
pub fn build_status(
    tq: &TenantQuota,
    limits: &QuotaLimits,
    usage: QuotaUsage,
    now: k8s_openapi::jiff::Timestamp,
) -> TenantQuotaStatus {
    let exceeded = usage.pods > limits.max_pods
        || usage.cpu_cores > limits.max_cpu_cores
        || usage.memory_mb > limits.max_memory_mb
        || usage.disk_gb > limits.max_disk_gb;
    let generation = tq.meta().generation;
    let old = tq.status.as_ref();
    let mk = |t: &str, ok: bool, reason: &str, msg: &str| {
        let status = if ok { "True" } else { "False" }.to_string();
        let time = old
            .and_then(|o| o.conditions.iter().find(|c| c.type_ == t))
            .filter(|c| c.status == status)
            .map_or_else(|| Time(now), |c| c.last_transition_time.clone());
        Condition {
            type_: t.into(),
            status,
            reason: reason.into(),
            message: msg.into(),
            observed_generation: generation,
            last_transition_time: time,
        }
    };
    TenantQuotaStatus {
        usage: Some(usage),
        observed_generation: generation,
        conditions: vec![
            mk(
                "Synced",
                true,
                "Mirrored",
                "limits are in force for new pods and scales",
            ),
            if exceeded {
                mk(
                    "Exceeded",
                    true,
                    "OverLimit",
                    "usage is above the limits; new pods and growth are refused",
                )
            } else {
                mk(
                    "Exceeded",
                    false,
                    "WithinLimits",
                    "usage is within the limits",
                )
            },
        ],
    }
}

/// Periodically removes mirrored limits whose TenantQuota is gone (no finalizer is needed,
/// so deleting a TenantQuota never blocks), and re-admits that tenant's refused pods.
pub async fn prune_loop(ctx: Arc<Context>, store: Store<TenantQuota>, every: Duration) {
    if store.wait_until_ready().await.is_err() {
        return;
    }
    loop {
        let keep: Vec<String> = store.state().iter().map(|t| t.name_any()).collect();
        match crate::store::reconcile::prune_quotas(&ctx.pool, &keep, every).await {
            Ok(gone) => {
                for tenant in gone {
                    tracing::info!(tenantId = %tenant, "TenantQuota deleted: the default limits apply");
                    ctx.requeue_refused(&tenant);
                }
            }
            Err(e) => tracing::warn!(error = %e, "pruning quotas failed"),
        }
        tokio::time::sleep(every).await;
    }
}
