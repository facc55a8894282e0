//! Statements on one connection: enqueue, read a pod's items, finish a claimed item, and the
//! job bookkeeping that goes with them. Callers may run them inside their own transaction.

use std::time::Duration;

use sqlx::PgConnection;

use super::{Action, FailOutcome, Finished, Lease, NewItem, Pending};
use crate::store::StoreError;

/// Inserts an item (status queued, run_after now()) and appends its id to the job's queue_item_ids (job_id given); returns the id.
pub async fn enqueue(conn: &mut PgConnection, item: &NewItem<'_>) -> Result<i64, StoreError> {
    // One statement, so the item and the job's list change together even outside a transaction.
    sqlx::query_scalar(
        "WITH ins AS ( \
           INSERT INTO cloud_pod_queue (pod_id, job_id, action, payload, max_attempts) \
           VALUES ($1, $2, $3, $4, $5) RETURNING id, job_id \
         ), job AS ( \
           UPDATE cloud_pod_jobs j SET queue_item_ids = j.queue_item_ids || to_jsonb(ins.id) \
           FROM ins WHERE j.id = ins.job_id \
         ) \
         SELECT id FROM ins",
    )
    .bind(item.pod_id)
    .bind(item.job_id)
    .bind(item.action)
    .bind(&item.payload)
    .bind(item.max_attempts)
    .fetch_one(conn)
    .await
    .map_err(StoreError::query(format!(
        "enqueue `{}` for pod `{}`",
        item.action, item.pod_id
    )))
}

/// Creates a cloud_pod_jobs row (status pending) and returns its id.
pub async fn create_job(
    conn: &mut PgConnection,
    tenant_id: &str,
    user_id: Option<&str>,
    pod_id: &str,
    job_type: &str,
) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "INSERT INTO cloud_pod_jobs (tenant_id, user_id, pod_id, type, status) \
         VALUES ($1, $2, $3, $4, 'pending') RETURNING id",
    )
    .bind(tenant_id)
    .bind(user_id)
    .bind(pod_id)
    .bind(job_type)
    .fetch_one(conn)
    .await
    .map_err(StoreError::query(format!(
        "create a {job_type} job for pod `{pod_id}`"
    )))
}

/// The pod's queued and running items, oldest first.
pub async fn pending_for_pod(
    conn: &mut PgConnection,
    pod_id: &str,
) -> Result<Vec<Pending>, StoreError> {
    sqlx::query_as(
        "SELECT id, action, status, payload, job_id, retry_count, error_message \
         FROM cloud_pod_queue WHERE pod_id = $1 AND status IN ('queued', 'running') ORDER BY id",
    )
    .bind(pod_id)
    .fetch_all(conn)
    .await
    .map_err(StoreError::query(format!(
        "list the pending queue items of pod `{pod_id}`"
    )))
}

/// The most recent finished item of `action` for the pod, if any.
pub async fn last_finished(
    conn: &mut PgConnection,
    pod_id: &str,
    action: Action,
) -> Result<Option<Finished>, StoreError> {
    last_finished_of(conn, pod_id, Some(action)).await
}

/// The most recent finished item of the pod, whatever its action.
pub async fn last_finished_any(
    conn: &mut PgConnection,
    pod_id: &str,
) -> Result<Option<Finished>, StoreError> {
    last_finished_of(conn, pod_id, None).await
}

async fn last_finished_of(
    conn: &mut PgConnection,
    pod_id: &str,
    action: Option<Action>,
) -> Result<Option<Finished>, StoreError> {
    sqlx::query_as(
        "SELECT id, action, status, payload, result, error_message, processed_at \
         FROM cloud_pod_queue \
         WHERE pod_id = $1 AND ($2::text IS NULL OR action = $2) \
           AND status IN ('success', 'failed') \
         ORDER BY processed_at DESC, id DESC LIMIT 1",
    )
    .bind(pod_id)
    .bind(action.map(Action::as_str))
    .fetch_optional(conn)
    .await
    .map_err(StoreError::query(format!(
        "read the last finished item of pod `{pod_id}`"
    )))
}

/// True when any item (any status) of `action` for the pod has payload->>key = value (used for "each reboot/backup request exactly once").
pub async fn exists_with(
    conn: &mut PgConnection,
    pod_id: &str,
    action: Action,
    key: &str,
    value: &str,
) -> Result<bool, StoreError> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM cloud_pod_queue \
           WHERE pod_id = $1 AND action = $2 AND payload ->> $3 = $4)",
    )
    .bind(pod_id)
    .bind(action)
    .bind(key)
    .bind(value)
    .fetch_one(conn)
    .await
    .map_err(StoreError::query(format!(
        "look for a `{action}` of pod `{pod_id}` with {key} = {value:?}"
    )))
}

/// Marks the claimed item `success` with `result`, fenced: only while it is `running` under
/// this lease. Returns false when fenced out (nothing changed). The item's job becomes
/// `success` once all its listed items succeeded.
pub async fn complete(
    conn: &mut PgConnection,
    lease: &Lease,
    result: &serde_json::Value,
) -> Result<bool, StoreError> {
    let context = || format!("complete queue item {}", lease.item_id);
    let done: Option<(Option<i64>,)> = sqlx::query_as(
        "UPDATE cloud_pod_queue SET status = 'success', result = $4, error_message = NULL, \
           processed_at = now(), lease_expires_at = NULL \
         WHERE id = $1 AND status = 'running' AND attempt = $2 AND lease_owner = $3 \
         RETURNING job_id",
    )
    .bind(lease.item_id)
    .bind(lease.attempt)
    .bind(&lease.owner)
    .bind(result)
    .fetch_optional(&mut *conn)
    .await
    .map_err(StoreError::query(context()))?;
    let Some((job_id,)) = done else {
        return Ok(false);
    };
    if let Some(job_id) = job_id {
        // Lock the job first, then look at its items in a new statement: its fresh snapshot
        // sees every sibling that committed before we got the lock, so of two items of one
        // job finishing at once, the later one always sees the earlier.
        sqlx::query("SELECT 1 FROM cloud_pod_jobs WHERE id = $1 FOR UPDATE")
            .bind(job_id)
            .execute(&mut *conn)
            .await
            .map_err(StoreError::query(context()))?;
        sqlx::query(
            "UPDATE cloud_pod_jobs j SET status = 'success' \
             WHERE j.id = $1 AND j.status <> 'success' AND NOT EXISTS ( \
               SELECT 1 FROM jsonb_array_elements_text(j.queue_item_ids) AS e(item_id) \
               JOIN cloud_pod_queue i ON i.id = e.item_id::bigint \
               WHERE i.status <> 'success')",
        )
        .bind(job_id)
        .execute(&mut *conn)
        .await
        .map_err(StoreError::query(context()))?;
    }
    Ok(true)
}

/// Records a failed attempt, fenced like [`complete`]. When `retryable` and attempts remain:
/// back to `queued` (retry_count + 1, error_message, run_after = now() + `delay`, lease
/// cleared). Otherwise `failed` (processed_at now, error_message) and the job `failed`.
/// None when fenced out (nothing changed).
pub async fn fail(
    conn: &mut PgConnection,
    lease: &Lease,
    error: &str,
    retryable: bool,
    delay: Duration,
) -> Result<Option<FailOutcome>, StoreError> {
    let context = || format!("record a failed attempt of queue item {}", lease.item_id);
    // In SET, column references are the old row: `attempt` is this claim's attempt.
    let row: Option<(String, Option<i64>)> = sqlx::query_as(
        "UPDATE cloud_pod_queue SET \
           status = CASE WHEN $5 AND attempt < max_attempts THEN 'queued' ELSE 'failed' END, \
           retry_count = retry_count + CASE WHEN $5 AND attempt < max_attempts THEN 1 ELSE 0 END, \
           error_message = $4, \
           run_after = CASE WHEN $5 AND attempt < max_attempts \
             THEN now() + make_interval(secs => $6) ELSE run_after END, \
           processed_at = CASE WHEN $5 AND attempt < max_attempts THEN NULL ELSE now() END, \
           lease_owner = CASE WHEN $5 AND attempt < max_attempts THEN NULL ELSE lease_owner END, \
           lease_expires_at = NULL \
         WHERE id = $1 AND status = 'running' AND attempt = $2 AND lease_owner = $3 \
         RETURNING status, job_id",
    )
    .bind(lease.item_id)
    .bind(lease.attempt)
    .bind(&lease.owner)
    .bind(error)
    .bind(retryable)
    .bind(interval_secs(delay))
    .fetch_optional(&mut *conn)
    .await
    .map_err(StoreError::query(context()))?;
    let Some((status, job_id)) = row else {
        return Ok(None);
    };
    if status == "queued" {
        return Ok(Some(FailOutcome::Retrying { after: delay }));
    }
    if let Some(job_id) = job_id {
        fail_job(conn, job_id).await?;
    }
    Ok(Some(FailOutcome::Failed))
}

/// A duration as seconds for `make_interval(secs => ..)`, capped at ten years (Postgres
/// intervals overflow long before `Duration::MAX`).
pub(super) fn interval_secs(d: Duration) -> f64 {
    const TEN_YEARS: f64 = 10.0 * 365.25 * 86_400.0;
    d.as_secs_f64().min(TEN_YEARS)
}

/// Marks a job `failed` (one of its items failed for good).
async fn fail_job(conn: &mut PgConnection, job_id: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE cloud_pod_jobs SET status = 'failed' WHERE id = $1 AND status <> 'failed'")
        .bind(job_id)
        .execute(conn)
        .await
        .map(drop)
        .map_err(StoreError::query(format!("mark job {job_id} failed")))
}
