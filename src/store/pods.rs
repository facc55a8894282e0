//! Reads and the few writes the REST API makes on the canonical tables: pods, jobs, plans,
//! blueprints and the admin statistics.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use super::StoreError;

/// One `cloud_pods` row as the API shows it.
#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct PodRow {
    /// Pod id.
    pub id: String,
    /// Owner tenant.
    pub tenant_id: String,
    /// Creating user.
    pub user_id: Option<String>,
    /// Plan.
    pub plan_code: String,
    /// Blueprint.
    pub blueprint_code: String,
    /// Proxmox VMID once reserved.
    pub vmid: Option<i32>,
    /// Proxmox node.
    pub node: Option<String>,
    /// Guest address (text form of the INET).
    pub ip_address: Option<String>,
    /// Seed status.
    pub status: String,
    /// Effective vCPU cores.
    pub cpu_cores: i32,
    /// Effective memory in MiB.
    pub memory_mb: i32,
    /// Effective disk in GiB.
    pub disk_gb: i32,
    /// Admitted, not yet applied cores.
    pub reserved_cpu_cores: Option<i32>,
    /// Admitted, not yet applied memory.
    pub reserved_memory_mb: Option<i32>,
    /// Admitted, not yet applied disk.
    pub reserved_disk_gb: Option<i32>,
    /// Guest hostname.
    pub hostname: Option<String>,
    /// Extra provisioning metadata.
    pub provisioning_state: serde_json::Value,
    /// The CloudPod's uid (absent until the resource exists).
    pub k8s_uid: Option<Uuid>,
    /// The CloudPod's namespace.
    pub k8s_namespace: String,
    /// The CloudPod's name.
    pub k8s_name: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Deleted.
    pub deleted_at: Option<DateTime<Utc>>,
}

pub(crate) const POD_COLUMNS: &str = "id, tenant_id, user_id, plan_code, blueprint_code, vmid, node, \
    host(ip_address) AS ip_address, status, cpu_cores, memory_mb, disk_gb, reserved_cpu_cores, \
    reserved_memory_mb, reserved_disk_gb, hostname, provisioning_state, k8s_uid, k8s_namespace, \
    k8s_name, created_at, updated_at, deleted_at";

/// How a caller names a pod: by pod id or by VMID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodRef {
    /// `pod-...`.
    Id(String),
    /// The Proxmox VMID.
    Vmid(i32),
}

/// A pending pod reserved by an order.
#[derive(Debug, Clone)]
pub struct NewPod {
    /// Pod id.
    pub id: String,
    /// Owner tenant.
    pub tenant_id: String,
    /// Ordering user.
    pub user_id: Option<String>,
    /// Plan.
    pub plan_code: String,
    /// Blueprint.
    pub blueprint_code: String,
    /// Guest hostname.
    pub hostname: Option<String>,
    /// vCPU cores.
    pub cpu_cores: i32,
    /// Memory in MiB.
    pub memory_mb: i32,
    /// Disk in GiB.
    pub disk_gb: i32,
    /// Where the CloudPod will live.
    pub k8s_namespace: String,
    /// The CloudPod's name.
    pub k8s_name: String,
}

impl From<&PodRow> for NewPod {
    fn from(r: &PodRow) -> Self {
        NewPod {
            id: r.id.clone(),
            tenant_id: r.tenant_id.clone(),
            user_id: r.user_id.clone(),
            plan_code: r.plan_code.clone(),
            blueprint_code: r.blueprint_code.clone(),
            hostname: r.hostname.clone(),
            cpu_cores: r.cpu_cores,
            memory_mb: r.memory_mb,
            disk_gb: r.disk_gb,
            k8s_namespace: r.k8s_namespace.clone(),
            k8s_name: r.k8s_name.clone(),
        }
    }
}

/// Whether the database answers (readiness).
pub async fn ping(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .map(drop)
        .map_err(StoreError::query("ping the database"))
}

/// A user-level action recorded in `cloud_pod_jobs`.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    /// Tenant.
    pub tenant_id: &'a str,
    /// User.
    pub user_id: Option<&'a str>,
    /// Pod acted on.
    pub pod_id: &'a str,
    /// `provision`, `destroy`, `scale`, `backup`, ...
    pub job_type: &'a str,
    /// Client idempotency key.
    pub idempotency_key: Option<&'a str>,
    /// Canonical request text; its SHA-256 is stored to detect a reused key.
    pub request: &'a str,
}

/// A job found by its idempotency key.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct JobRef {
    /// Job id.
    pub id: i64,
    /// Pod it acts on.
    pub pod_id: Option<String>,
    /// Job type.
    pub job_type: String,
    /// Whether the stored request hash equals the hash of the request now presented.
    pub same_request: bool,
}

/// Finds a tenant's pod by id or VMID. Another tenant's pod is simply not found.
pub async fn find_pod(
    pool: &PgPool,
    tenant_id: &str,
    pod: &PodRef,
) -> Result<Option<PodRow>, StoreError> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(StoreError::query("get a database connection"))?;
    find_pod_on(&mut conn, tenant_id, pod, false).await
}

/// [`find_pod`] on a connection; `lock` takes a row lock (inside a transaction).
pub async fn find_pod_on(
    conn: &mut PgConnection,
    tenant_id: &str,
    pod: &PodRef,
    lock: bool,
) -> Result<Option<PodRow>, StoreError> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    let q = match pod {
        PodRef::Id(_) => {
            format!("SELECT {POD_COLUMNS} FROM cloud_pods WHERE tenant_id = $1 AND id = $2{lock}")
        }
        // A VMID can be reused after a pod was deleted: prefer the live one, then the newest.
        PodRef::Vmid(_) => format!(
            "SELECT {POD_COLUMNS} FROM cloud_pods WHERE tenant_id = $1 AND vmid = $2 \
             ORDER BY (deleted_at IS NULL) DESC, created_at DESC LIMIT 1{lock}"
        ),
    };
    let query = sqlx::query_as::<_, PodRow>(sqlx::AssertSqlSafe(q)).bind(tenant_id);
    let query = match pod {
        PodRef::Id(id) => query.bind(id.clone()),
        PodRef::Vmid(v) => query.bind(*v),
    };
    query
        .fetch_optional(conn)
        .await
        .map_err(StoreError::query("read a pod"))
}

/// One page of a tenant's pods, newest first, plus the total count.
pub async fn list_pods(
    pool: &PgPool,
    tenant_id: &str,
    status: Option<&str>,
    include_deleted: bool,
    limit: i64,
    offset: i64,
) -> Result<(Vec<PodRow>, i64), StoreError> {
    let filter = "tenant_id = $1 AND ($2::text IS NULL OR status = $2) \
                  AND ($3 OR deleted_at IS NULL)";
    let rows = sqlx::query_as::<_, PodRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {POD_COLUMNS} FROM cloud_pods WHERE {filter} \
         ORDER BY created_at DESC, id DESC LIMIT $4 OFFSET $5"
    )))
    .bind(tenant_id)
    .bind(status)
    .bind(include_deleted)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await
    .map_err(StoreError::query("list pods"))?;
    let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*)::bigint FROM cloud_pods WHERE {filter}"
    )))
    .bind(tenant_id)
    .bind(status)
    .bind(include_deleted)
    .fetch_one(pool)
    .await
    .map_err(StoreError::query("count pods"))?;
    Ok((rows, total))
}

/// Inserts a pending pod (inside the admission transaction).
pub async fn insert_pending_pod(conn: &mut PgConnection, pod: &NewPod) -> Result<(), StoreError> {
    insert_pod(conn, pod, None).await
}

/// Inserts a `pending` pod, with the CloudPod's uid when the resource exists already.
pub async fn insert_pod(
    conn: &mut PgConnection,
    pod: &NewPod,
    uid: Option<Uuid>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO cloud_pods (id, tenant_id, user_id, plan_code, blueprint_code, hostname, \
         cpu_cores, memory_mb, disk_gb, k8s_namespace, k8s_name, k8s_uid, status) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'pending')",
    )
    .bind(&pod.id)
    .bind(&pod.tenant_id)
    .bind(&pod.user_id)
    .bind(&pod.plan_code)
    .bind(&pod.blueprint_code)
    .bind(&pod.hostname)
    .bind(pod.cpu_cores)
    .bind(pod.memory_mb)
    .bind(pod.disk_gb)
    .bind(&pod.k8s_namespace)
    .bind(&pod.k8s_name)
    .bind(uid)
    .execute(conn)
    .await
    .map_err(StoreError::query(format!("reserve pod `{}`", pod.id)))?;
    Ok(())
}

/// Live pods of a tenant on one plan (for a plan's per-tenant cap).
pub async fn count_live_on_plan(
    conn: &mut PgConnection,
    tenant_id: &str,
    plan_code: &str,
) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "SELECT count(*)::bigint FROM cloud_pods \
         WHERE tenant_id = $1 AND plan_code = $2 AND deleted_at IS NULL",
    )
    .bind(tenant_id)
    .bind(plan_code)
    .fetch_one(conn)
    .await
    .map_err(StoreError::query("count pods on a plan"))
}

/// A fresh pod id: `pod-<unix ms>-<8 random hex>` (a valid [`crate::proxmox::PodId`]).
pub fn new_pod_id() -> String {
    let ms = Utc::now().timestamp_millis();
    let rand = Uuid::new_v4().simple().to_string();
    format!("pod-{ms}-{}", &rand[..8])
}

/// Records the CloudPod's uid once the resource exists (no-op when already set); on a pool
/// or inside a transaction.
pub async fn set_k8s_uid<'e>(
    db: impl sqlx::PgExecutor<'e>,
    pod_id: &str,
    uid: Uuid,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE cloud_pods SET k8s_uid = $2 WHERE id = $1 AND k8s_uid IS NULL")
        .bind(pod_id)
        .bind(uid)
        .execute(db)
        .await
        .map_err(StoreError::query(format!(
            "record the uid of pod `{pod_id}`"
        )))?;
    Ok(())
}

/// Releases a reservation whose CloudPod was never created (pending, no uid). Returns
/// whether a row changed.
pub async fn release_unprovisioned(pool: &PgPool, pod_id: &str) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE cloud_pods SET status = 'deleted', deleted_at = now() \
         WHERE id = $1 AND k8s_uid IS NULL AND status = 'pending'",
    )
    .bind(pod_id)
    .execute(pool)
    .await
    .map_err(StoreError::query(format!(
        "release the reservation of pod `{pod_id}`"
    )))?;
    Ok(done.rows_affected() > 0)
}

/// Reservations whose order never recorded a CloudPod uid: `pending`, no `k8s_uid`, created
/// more than `older_than` ago. Returns `(id, k8s_namespace, k8s_name)`.
pub async fn stale_reservations(
    pool: &PgPool,
    older_than: std::time::Duration,
    limit: i64,
) -> Result<Vec<(String, String, String)>, StoreError> {
    sqlx::query_as(
        "SELECT id, k8s_namespace, k8s_name FROM cloud_pods \
         WHERE status = 'pending' AND k8s_uid IS NULL \
           AND created_at < now() - make_interval(secs => $1) \
         ORDER BY created_at LIMIT $2",
    )
    .bind(older_than.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(StoreError::query("list stale reservations"))
}

/// Records the resources a scale was admitted for (inside the admission transaction).
pub async fn reserve_resources(
    conn: &mut PgConnection,
    pod_id: &str,
    cpu_cores: i32,
    memory_mb: i32,
    disk_gb: i32,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE cloud_pods SET \
           reserved_cpu_cores = NULLIF($2, cpu_cores), \
           reserved_memory_mb = NULLIF($3, memory_mb), \
           reserved_disk_gb = NULLIF($4, disk_gb) \
         WHERE id = $1",
    )
    .bind(pod_id)
    .bind(cpu_cores)
    .bind(memory_mb)
    .bind(disk_gb)
    .execute(conn)
    .await
    .map_err(StoreError::query(format!(
        "reserve resources for pod `{pod_id}`"
    )))?;
    Ok(())
}

/// Records a user-level action; returns the job id.
pub async fn insert_job(conn: &mut PgConnection, job: &NewJob<'_>) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "INSERT INTO cloud_pod_jobs (tenant_id, user_id, pod_id, type, idempotency_key, request_hash) \
         VALUES ($1, $2, $3, $4, $5, encode(sha256(convert_to($6, 'UTF8')), 'hex')) RETURNING id",
    )
    .bind(job.tenant_id)
    .bind(job.user_id)
    .bind(job.pod_id)
    .bind(job.job_type)
    .bind(job.idempotency_key)
    .bind(job.request)
    .fetch_one(conn)
    .await
    .map_err(StoreError::query(format!("record a {} job", job.job_type)))
}

/// The job a tenant created earlier with `key`, compared with `request`.
pub async fn find_job_by_key(
    conn: &mut PgConnection,
    tenant_id: &str,
    key: &str,
    request: &str,
) -> Result<Option<JobRef>, StoreError> {
    sqlx::query_as(
        "SELECT id, pod_id, type AS job_type, \
           request_hash IS NOT DISTINCT FROM encode(sha256(convert_to($3, 'UTF8')), 'hex') AS same_request \
         FROM cloud_pod_jobs WHERE tenant_id = $1 AND idempotency_key = $2",
    )
    .bind(tenant_id)
    .bind(key)
    .bind(request)
    .fetch_optional(conn)
    .await
    .map_err(StoreError::query("look up an idempotency key"))
}

/// The newest job of one type for a pod, if any.
pub async fn latest_job(
    pool: &PgPool,
    pod_id: &str,
    job_type: &str,
) -> Result<Option<(i64, String)>, StoreError> {
    sqlx::query_as(
        "SELECT id, status FROM cloud_pod_jobs WHERE pod_id = $1 AND type = $2 \
         ORDER BY id DESC LIMIT 1",
    )
    .bind(pod_id)
    .bind(job_type)
    .fetch_optional(pool)
    .await
    .map_err(StoreError::query("read the latest job of a pod"))
}

/// One `cloud_pod_plans` row.
#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct PlanRow {
    /// Code.
    pub code: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Monthly price.
    pub price_monthly: f64,
    /// vCPU cores.
    pub vcpu: i32,
    /// Memory in MiB.
    pub ram_mb: i32,
    /// Disk in GiB.
    pub storage_gb: i32,
    /// Monthly transfer in GB.
    pub bandwidth_gb: Option<i32>,
    /// `metered` or `unmetered`.
    pub bandwidth_type: String,
    /// Orderable.
    pub is_active: bool,
    /// Per-tenant cap.
    pub max_pods_per_tenant: Option<i32>,
}

const PLAN_COLUMNS: &str = "code, name, description, price_monthly::float8 AS price_monthly, \
    vcpu, ram_mb, storage_gb, bandwidth_gb, bandwidth_type, is_active, max_pods_per_tenant";

/// Active plans in display order.
pub async fn active_plans(pool: &PgPool) -> Result<Vec<PlanRow>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PLAN_COLUMNS} FROM cloud_pod_plans WHERE is_active \
         ORDER BY sort_order, price_monthly, code"
    )))
    .fetch_all(pool)
    .await
    .map_err(StoreError::query("list plans"))
}

/// One plan by code (active or not); on a pool or inside a transaction.
pub async fn plan<'e>(
    db: impl sqlx::PgExecutor<'e>,
    code: &str,
) -> Result<Option<PlanRow>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PLAN_COLUMNS} FROM cloud_pod_plans WHERE code = $1"
    )))
    .bind(code)
    .fetch_optional(db)
    .await
    .map_err(StoreError::query("read a plan"))
}

/// Whether a blueprint exists and is active: `None` when unknown.
pub async fn blueprint_active(pool: &PgPool, code: &str) -> Result<Option<bool>, StoreError> {
    sqlx::query_scalar("SELECT is_active FROM cloud_pod_blueprints WHERE code = $1")
        .bind(code)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::query("read a blueprint"))
}

/// System-wide counts for the admin dashboard.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Pods by seed status (deleted included).
    pub pods_by_status: BTreeMap<String, i64>,
    /// Live pods by plan.
    pub pods_by_plan: BTreeMap<String, i64>,
    /// Live pods by node (`unassigned` before placement).
    pub pods_by_node: BTreeMap<String, i64>,
    /// Queue items by status.
    pub queue_by_status: BTreeMap<String, i64>,
    /// Queue items that failed in the last hour.
    pub failed_queue_last_hour: i64,
    /// Pods that went to `error` in the last hour.
    pub errored_pods_last_hour: i64,
    /// Tenants with live pods.
    pub tenants_with_pods: i64,
}

/// Reads [`Stats`] in one repeatable-read snapshot.
pub async fn stats(pool: &PgPool) -> Result<Stats, StoreError> {
    let mut tx = pool
        .begin()
        .await
        .map_err(StoreError::query("begin the stats snapshot"))?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(StoreError::query("set the stats snapshot isolation"))?;
    let mut out = Stats::default();
    for (sql, target) in [
        (
            ("SELECT status, count(*)::bigint FROM cloud_pods GROUP BY status"),
            &mut out.pods_by_status,
        ),
        (
            "SELECT plan_code, count(*)::bigint FROM cloud_pods WHERE deleted_at IS NULL GROUP BY plan_code",
            &mut out.pods_by_plan,
        ),
        (
            "SELECT COALESCE(node, 'unassigned'), count(*)::bigint FROM cloud_pods \
             WHERE deleted_at IS NULL GROUP BY 1",
            &mut out.pods_by_node,
        ),
        (
            ("SELECT status, count(*)::bigint FROM cloud_pod_queue GROUP BY status"),
            &mut out.queue_by_status,
        ),
    ] {
        let rows: Vec<(String, i64)> = sqlx::query_as(sql)
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::query("read admin statistics"))?;
        target.extend(rows);
    }
    let (failed, errored, tenants): (i64, i64, i64) = sqlx::query_as(
        "SELECT \
           (SELECT count(*) FROM cloud_pod_queue WHERE status = 'failed' \
              AND updated_at > now() - interval '1 hour')::bigint, \
           (SELECT count(*) FROM cloud_pods WHERE status = 'error' \
              AND updated_at > now() - interval '1 hour')::bigint, \
           (SELECT count(DISTINCT tenant_id) FROM cloud_pods WHERE deleted_at IS NULL)::bigint",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(StoreError::query("read admin failure counts"))?;
    out.failed_queue_last_hour = failed;
    out.errored_pods_last_hour = errored;
    out.tenants_with_pods = tenants;
    tx.commit()
        .await
        .map_err(StoreError::query("end the stats snapshot"))?;
    Ok(out)
}
