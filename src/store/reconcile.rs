//! The controller's and the worker's statements on `cloud_pods`: finding a CloudPod's row,
//! admitting one, and the worker's fenced updates (only the holder of a queue item's current
//! lease can change the pod it works on).

use std::collections::BTreeMap;

use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::StoreError;
use super::pods::{NewPod, POD_COLUMNS, PodRow};
use crate::queue::Lease;
use crate::worker::payload::{PodState, Size};

/// The row of a CloudPod: by its uid, else (for pods the REST API ordered) the row named
/// like the resource that has no uid yet. Deleted rows are returned too.
pub async fn find_for_resource(
    conn: &mut PgConnection,
    uid: Uuid,
    namespace: &str,
    name: &str,
) -> Result<Option<PodRow>, StoreError> {
    let q = format!(
        "SELECT {POD_COLUMNS} FROM cloud_pods WHERE k8s_uid = $1 \
         UNION ALL \
         SELECT {POD_COLUMNS} FROM cloud_pods WHERE id = $3 AND k8s_namespace = $2 \
           AND k8s_name = $3 AND (k8s_uid IS NULL OR k8s_uid = $1) \
         LIMIT 1"
    );
    sqlx::query_as::<_, PodRow>(sqlx::AssertSqlSafe(q))
        .bind(uid)
        .bind(namespace)
        .bind(name)
        .fetch_optional(conn)
        .await
        .map_err(StoreError::query(format!(
            "find the row of CloudPod {namespace}/{name}"
        )))
}

/// A pod row by id.
pub async fn pod_by_id(conn: &mut PgConnection, id: &str) -> Result<Option<PodRow>, StoreError> {
    pod_row(conn, id, "").await
}

/// A pod row by id, locked for the rest of the transaction.
pub async fn pod_by_id_locked(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<PodRow>, StoreError> {
    pod_row(conn, id, " FOR UPDATE").await
}

async fn pod_row(
    conn: &mut PgConnection,
    id: &str,
    lock: &str,
) -> Result<Option<PodRow>, StoreError> {
    sqlx::query_as::<_, PodRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {POD_COLUMNS} FROM cloud_pods WHERE id = $1{lock}"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
    .map_err(StoreError::query(format!("read pod `{id}`")))
}

/// Where a pod's CloudPod lives: `(namespace, name)`.
pub async fn pod_location(pool: &PgPool, id: &str) -> Result<Option<(String, String)>, StoreError> {
    sqlx::query_as("SELECT k8s_namespace, k8s_name FROM cloud_pods WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::query(format!("locate pod `{id}`")))
}

/// Re-admits a released reservation that never got a VM (an API order whose reservation was
/// released although its CloudPod was written after all). Returns false when the row is not
/// such a row.
pub async fn revive_released(
    conn: &mut PgConnection,
    pod: &NewPod,
    uid: Uuid,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE cloud_pods SET status = 'pending', deleted_at = NULL, k8s_uid = $2, \
           plan_code = $3, blueprint_code = $4, hostname = $5, cpu_cores = $6, memory_mb = $7, \
           disk_gb = $8, user_id = $9, reserved_cpu_cores = NULL, reserved_memory_mb = NULL, \
           reserved_disk_gb = NULL, provisioning_state = '{}'::jsonb \
         WHERE id = $1 AND status = 'deleted' AND vmid IS NULL AND (k8s_uid IS NULL OR k8s_uid = $2)",
    )
    .bind(&pod.id)
    .bind(uid)
    .bind(&pod.plan_code)
    .bind(&pod.blueprint_code)
    .bind(&pod.hostname)
    .bind(pod.cpu_cores)
    .bind(pod.memory_mb)
    .bind(pod.disk_gb)
    .bind(&pod.user_id)
    .execute(conn)
    .await
    .map_err(StoreError::query(format!("re-admit pod `{}`", pod.id)))?;
    Ok(done.rows_affected() > 0)
}

/// The pod a job acts on (None: no such job, or a job without a pod).
pub async fn job_pod(conn: &mut PgConnection, job_id: i64) -> Result<Option<String>, StoreError> {
    let owner: Option<Option<String>> =
        sqlx::query_scalar("SELECT pod_id FROM cloud_pod_jobs WHERE id = $1")
            .bind(job_id)
            .fetch_optional(conn)
            .await
            .map_err(StoreError::query(format!("read job {job_id}")))?;
    Ok(owner.flatten())
}

/// Marks a live pod `deleting` (the controller, when its CloudPod is being deleted).
pub async fn mark_deleting(conn: &mut PgConnection, id: &str) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE cloud_pods SET status = 'deleting' WHERE id = $1 AND deleted_at IS NULL \
         AND status <> 'deleting'",
    )
    .bind(id)
    .execute(conn)
    .await
    .map_err(StoreError::query(format!("mark pod `{id}` deleting")))?;
    Ok(())
}

/// Takes the VMID-allocation lock for the rest of the transaction and returns the highest
/// VMID ever recorded (deleted rows keep theirs: a VMID is never reused).
pub async fn lock_vmids(conn: &mut PgConnection) -> Result<Option<i32>, StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('cloudpods-vmid', 0))")
        .execute(&mut *conn)
        .await
        .map_err(StoreError::query("lock VMID allocation"))?;
    sqlx::query_scalar("SELECT max(vmid) FROM cloud_pods")
        .fetch_one(conn)
        .await
        .map_err(StoreError::query("read the highest VMID"))
}

/// Live pods per node (placement).
pub async fn live_pods_per_node(pool: &PgPool) -> Result<BTreeMap<String, i64>, StoreError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT node, count(*)::bigint FROM cloud_pods \
         WHERE node IS NOT NULL AND deleted_at IS NULL GROUP BY node",
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::query("count pods per node"))?;
    Ok(rows.into_iter().collect())
}

/// Every live pod's `(vmid, node)` (orphan detection).
pub async fn live_vmids(pool: &PgPool) -> Result<Vec<(i32, String)>, StoreError> {
    sqlx::query_as(
        "SELECT vmid, node FROM cloud_pods \
         WHERE vmid IS NOT NULL AND node IS NOT NULL AND deleted_at IS NULL",
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::query("list the VMIDs of live pods"))
}

/// One change of a pod row by the worker; `None` fields are left alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodUpdate {
    /// New seed status.
    pub status: Option<&'static str>,
    /// Reserve (Some(Some)) or release (Some(None)) a VMID on a node.
    pub placement: Option<Option<(i32, String)>>,
    /// New effective size (clears the reservation when it is reached).
    pub size: Option<Size>,
    /// New address (Some(None) clears it).
    pub ip: Option<Option<String>>,
    /// New worker notes.
    pub state: Option<PodState>,
    /// Mark deleted (`deleted_at`), releasing the quota.
    pub deleted: bool,
}

impl PodUpdate {
    /// True when nothing would change.
    pub fn is_empty(&self) -> bool {
        *self == PodUpdate::default()
    }
}

/// How a fenced update went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// The row changed.
    Applied,
    /// The lease is no longer ours (or the pod row is gone): nothing changed.
    LeaseLost,
    /// The VMID is recorded for another pod already.
    VmidTaken,
}

/// Applies `update` to pod `id` if `lease` (when given) is still the current lease of a
/// running queue item. Run it in the transaction that completes the item.
pub async fn update_pod(
    conn: &mut PgConnection,
    id: &str,
    update: &PodUpdate,
    lease: Option<&Lease>,
) -> Result<Fenced, StoreError> {
    if update.is_empty() {
        return Ok(Fenced::Applied);
    }
    let mut q: QueryBuilder<Postgres> = QueryBuilder::new("UPDATE cloud_pods SET ");
    let mut set = q.separated(", ");
    if let Some(status) = update.status {
        set.push("status = ").push_bind_unseparated(status);
    }
    match &update.placement {
        Some(Some((vmid, node))) => {
            set.push("vmid = ").push_bind_unseparated(*vmid);
            set.push("node = ").push_bind_unseparated(node.clone());
        }
        Some(None) => {
            set.push("vmid = NULL");
            set.push("node = NULL");
        }
        None => {}
    }
    if let Some(size) = update.size {
        set.push("cpu_cores = ")
            .push_bind_unseparated(size.cpu_cores);
        set.push("memory_mb = ")
            .push_bind_unseparated(size.memory_mb);
        set.push("disk_gb = ").push_bind_unseparated(size.disk_gb);
        set.push("reserved_cpu_cores = NULL");
        set.push("reserved_memory_mb = NULL");
        set.push("reserved_disk_gb = NULL");
    }
    match &update.ip {
        Some(Some(ip)) => {
            set.push("ip_address = ")
                .push_bind_unseparated(ip.clone())
                .push_unseparated("::inet");
        }
        Some(None) => {
            set.push("ip_address = NULL");
        }
        None => {}
    }
    if let Some(state) = &update.state {
        set.push("provisioning_state = ")
            .push_bind_unseparated(state.to_json());
    }
    if update.deleted {
        set.push("status = 'deleted'");
        set.push("deleted_at = now()");
    }
    q.push(" WHERE id = ").push_bind(id.to_string());
    if let Some(lease) = lease {
        q.push(
            " AND EXISTS (SELECT 1 FROM cloud_pod_queue f WHERE f.status = 'running' AND f.id = ",
        )
        .push_bind(lease.item_id)
        .push(" AND f.attempt = ")
        .push_bind(lease.attempt)
        .push(" AND f.lease_owner = ")
        .push_bind(lease.owner.clone())
        .push(")");
    }
    match q.build().execute(conn).await {
        Ok(done) if done.rows_affected() > 0 => Ok(Fenced::Applied),
        Ok(_) => Ok(Fenced::LeaseLost),
        Err(e) => {
            let err = StoreError::query(format!("update pod `{id}`"))(e);
            if err.is_unique_violation() {
                Ok(Fenced::VmidTaken)
            } else {
                Err(err)
            }
        }
    }
}

/// A blueprint as the controller needs it.
#[derive(Debug, Clone, sqlx::FromRow, PartialEq)]
pub struct BlueprintRow {
    /// Code.
    pub code: String,
    /// Template VMID.
    pub proxmox_template_vmid: i32,
    /// Node holding the template.
    pub default_node: String,
    /// Storage for clones.
    pub storage_pool: String,
    /// Bridge of net0.
    pub network_bridge: String,
    /// Automation metadata (e.g. `{"user": "ubuntu"}`).
    pub cloud_init_profile: serde_json::Value,
    /// Orderable.
    pub is_active: bool,
}

/// One blueprint by code (active or not); on a pool or inside a transaction.
pub async fn blueprint<'e>(
    db: impl sqlx::PgExecutor<'e>,
    code: &str,
) -> Result<Option<BlueprintRow>, StoreError> {
    sqlx::query_as(
        "SELECT code, proxmox_template_vmid, default_node, storage_pool, network_bridge, \
         cloud_init_profile, is_active FROM cloud_pod_blueprints WHERE code = $1",
    )
    .bind(code)
    .fetch_optional(db)
    .await
    .map_err(StoreError::query(format!("read blueprint `{code}`")))
}

/// Deletes mirrored quota rows of tenants not in `keep` that were not touched for
/// `older_than` (their TenantQuota is gone). Returns the tenants whose row was removed.
pub async fn prune_quotas(
    pool: &PgPool,
    keep: &[String],
    older_than: std::time::Duration,
) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar(
        "DELETE FROM cloud_pod_quotas WHERE NOT (tenant_id = ANY($1)) \
         AND updated_at < now() - make_interval(secs => $2) RETURNING tenant_id",
    )
    .bind(keep)
    .bind(older_than.as_secs_f64())
    .fetch_all(pool)
    .await
    .map_err(StoreError::query("prune quotas of deleted TenantQuotas"))
}

/// Live rows with a CloudPod uid, older than `min_age`, optionally in one namespace:
/// `(id, namespace, name, uid)`.
pub async fn live_rows_with_uid(
    pool: &PgPool,
    namespace: Option<&str>,
    min_age: std::time::Duration,
) -> Result<Vec<(String, String, String, Uuid)>, StoreError> {
    sqlx::query_as(
        "SELECT id, k8s_namespace, k8s_name, k8s_uid FROM cloud_pods \
         WHERE deleted_at IS NULL AND k8s_uid IS NOT NULL \
           AND ($1::text IS NULL OR k8s_namespace = $1) \
           AND created_at < now() - make_interval(secs => $2) \
         ORDER BY id",
    )
    .bind(namespace)
    .bind(min_age.as_secs_f64())
    .fetch_all(pool)
    .await
    .map_err(StoreError::query("list live pods with a resource"))
}
