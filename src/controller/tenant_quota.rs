//! The TenantQuota reconciler: mirrors limits into `cloud_pod_quotas` (which every
//! admission reads), writes usage into status, and re-admits the tenant's refused CloudPods
//! when limits rise or usage falls. Rows of deleted TenantQuotas are pruned periodically, so
//! the tenant falls back to the defaults.

use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};

use super::status::{EXCEEDED, SYNCED, cond, stamp};
use super::{Context, Error};
use crate::crd::{QuotaUsage, TenantQuota, TenantQuotaStatus};
use crate::quota::QuotaLimits;

/// Reconciles one TenantQuota.
pub async fn reconcile(tq: Arc<TenantQuota>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.measured("tenantquota", run(&tq, &ctx)).await
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
        ctx.apply_status(&api, &tenant, &status, "tenantquota_status")
            .await?;
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
        .any(|c| c.type_ == EXCEEDED && c.status == "True")
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
    let mut conditions = vec![
        cond(
            SYNCED,
            true,
            "Mirrored",
            "limits are in force for new pods and scales",
        ),
        if exceeded {
            cond(
                EXCEEDED,
                true,
                "OverLimit",
                "usage is above the limits; new pods and growth are refused",
            )
        } else {
            cond(
                EXCEEDED,
                false,
                "WithinLimits",
                "usage is within the limits",
            )
        },
    ];
    stamp(
        &mut conditions,
        tq.status.as_ref().map(|o| o.conditions.as_slice()),
        generation,
        now,
    );
    TenantQuotaStatus {
        usage: Some(usage),
        observed_generation: generation,
        conditions,
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
