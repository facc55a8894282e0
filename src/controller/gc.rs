//! Rows without a resource: a live `cloud_pods` row whose CloudPod is gone (its finalizer
//! was removed by hand, or the resource was deleted and recreated under the same name) still
//! holds a VM and quota. The sweep confirms with the Kubernetes API that the resource with
//! that uid no longer exists, then queues the destroy; the worker removes the VM and marks
//! the row deleted, which releases the quota.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::Api;
use serde_json::json;

use super::{Context, Error};
use crate::crd::CloudPod;
use crate::queue::{self, Action as QAction};
use crate::store::StoreError;
use crate::store::reconcile as rstore;

/// One sweep; returns the pods whose destroy it queued.
pub async fn sweep(ctx: &Context, min_age: Duration) -> Result<Vec<String>, Error> {
    let rows =
        rstore::live_rows_with_uid(&ctx.pool, ctx.settings.namespace.as_deref(), min_age).await?;
    let mut queued = Vec::new();
    for (id, ns, name, uid) in rows {
        let api: Api<CloudPod> = Api::namespaced(ctx.client.clone(), &ns);
        let alive = api
            .get_opt(&name)
            .await?
            .is_some_and(|cp| cp.uid().as_deref() == Some(uid.to_string().as_str()));
        if alive {
            continue;
        }
        let mut tx = ctx
            .pool
            .begin()
            .await
            .map_err(StoreError::query("begin a row sweep"))?;
        let Some(row) = rstore::pod_by_id_locked(&mut tx, &id).await? else {
            continue;
        };
        if row.deleted_at.is_some() {
            continue;
        }
        let pending = queue::pending_for_pod(&mut tx, &id).await?;
        if pending.iter().any(|p| p.action == QAction::Destroy) {
            continue;
        }
        rstore::mark_deleting(&mut tx, &id).await?;
        let payload = json!({ "reason": "the CloudPod no longer exists" });
        super::cloudpod::enqueue(&mut tx, ctx, &row, QAction::Destroy, payload, None).await?;
        tx.commit()
            .await
            .map_err(StoreError::query("commit a row sweep"))?;
        tracing::warn!(
            podId = %id, tenantId = %row.tenant_id, namespace = %ns, name = %name,
            "the CloudPod of this pod is gone without its cleanup (finalizer removed by hand?); destroying its VM"
        );
        queued.push(id);
    }
    Ok(queued)
}

/// Sweeps every `every` (rows younger than `every` are left for the reconciler).
pub async fn sweep_loop(ctx: Arc<Context>, every: Duration) {
    loop {
        if let Err(e) = sweep(&ctx, every).await {
            tracing::warn!(error = %e, "sweeping rows without a CloudPod failed");
        }
        tokio::time::sleep(every).await;
    }
}
