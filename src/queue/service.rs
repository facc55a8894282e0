//! The queue service over a pool: claim, heartbeat, reclaim, depth and the wake-up listener.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{FromRow, PgPool};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::items::interval_secs;
use super::{Action, CHANNEL_NEW, Claimed, Lease, STATUSES};
use crate::store::StoreError;

/// How often one `claim` call moves on after losing a race for a pod (unique violation).
const CLAIM_ATTEMPTS: usize = 5;

/// The claim: the oldest due queued item whose pod has nothing running and nothing older
/// queued, locked with SKIP LOCKED so concurrent claimers take different items; its job (if
/// still pending) becomes running in the same statement.
const CLAIM_SQL: &str = "\
WITH claimed AS ( \
  UPDATE cloud_pod_queue q SET status = 'running', attempt = q.attempt + 1, lease_owner = $1, \
    lease_expires_at = now() + make_interval(secs => $2) \
  WHERE q.id = ( \
    SELECT c.id FROM cloud_pod_queue c \
    WHERE c.status = 'queued' AND c.run_after <= now() \
      AND NOT EXISTS ( \
        SELECT 1 FROM cloud_pod_queue o WHERE o.pod_id = c.pod_id \
          AND (o.status = 'running' OR (o.status = 'queued' AND o.id < c.id))) \
    ORDER BY c.run_after, c.id \
    LIMIT 1 \
    FOR UPDATE OF c SKIP LOCKED) \
  AND q.status = 'queued' \
  RETURNING q.id, q.pod_id, q.job_id, q.action, q.payload, q.attempt, q.max_attempts, \
    q.retry_count, q.lease_owner \
), job AS ( \
  UPDATE cloud_pod_jobs j SET status = 'running' FROM claimed \
  WHERE j.id = claimed.job_id AND j.status = 'pending' \
) \
SELECT id, pod_id, job_id, action, payload, attempt, max_attempts, retry_count, lease_owner \
FROM claimed";

/// Running items whose lease passed: requeued, or failed (with their job) when out of attempts.
const RECLAIM_SQL: &str = "\
WITH expired AS ( \
  SELECT id FROM cloud_pod_queue \
  WHERE status = 'running' AND lease_expires_at < now() \
  FOR UPDATE SKIP LOCKED \
), upd AS ( \
  UPDATE cloud_pod_queue q SET \
    status = CASE WHEN q.attempt >= q.max_attempts THEN 'failed' ELSE 'queued' END, \
    error_message = CASE WHEN q.attempt >= q.max_attempts \
      THEN format('lease expired after %s attempts (worker lost)', q.attempt) \
      ELSE format('lease of %s expired on attempt %s (worker lost); requeued', \
                  q.lease_owner, q.attempt) END, \
    processed_at = CASE WHEN q.attempt >= q.max_attempts THEN now() ELSE NULL END, \
    run_after = CASE WHEN q.attempt >= q.max_attempts THEN q.run_after ELSE now() END, \
    lease_owner = NULL, \
    lease_expires_at = NULL \
  FROM expired \
  WHERE q.id = expired.id AND q.status = 'running' AND q.lease_expires_at < now() \
  RETURNING q.id, q.status, q.job_id \
), jobs AS ( \
  UPDATE cloud_pod_jobs j SET status = 'failed' FROM upd \
  WHERE j.id = upd.job_id AND upd.status = 'failed' AND j.status <> 'failed' \
) \
SELECT count(*)::bigint FROM upd";

/// The queue service over a pool.
#[derive(Clone, Debug)]
pub struct Queue {
    pool: PgPool,
    wake: Arc<Mutex<Wake>>,
}

/// The lazily connected LISTEN side of [`Queue::wait_for_work`].
#[derive(Debug, Default)]
struct Wake {
    /// A one-connection pool of its own, so the listener never holds a slot of the main pool.
    pool: Option<PgPool>,
    listener: Option<PgListener>,
}

#[derive(FromRow)]
struct ClaimRow {
    id: i64,
    pod_id: String,
    job_id: Option<i64>,
    action: Action,
    payload: serde_json::Value,
    attempt: i32,
    max_attempts: i32,
    retry_count: i32,
    lease_owner: String,
}

impl From<ClaimRow> for Claimed {
    fn from(r: ClaimRow) -> Self {
        Claimed {
            lease: Lease {
                item_id: r.id,
                attempt: r.attempt,
                owner: r.lease_owner,
            },
            id: r.id,
            pod_id: r.pod_id,
            job_id: r.job_id,
            action: r.action,
            payload: r.payload,
            attempt: r.attempt,
            max_attempts: r.max_attempts,
            retry_count: r.retry_count,
        }
    }
}

impl Queue {
    /// A queue over `pool`.
    pub fn new(pool: PgPool) -> Self {
        Queue {
            pool,
            wake: Arc::default(),
        }
    }

    /// The pool (for callers' own transactions around the free functions).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Claims the next due item for `owner` with a lease of `lease`: FIFO per pod, never two
    /// running items of one pod; the item's job becomes `running`. None when nothing is due.
    pub async fn claim(&self, owner: &str, lease: Duration) -> Result<Option<Claimed>, StoreError> {
        for _ in 0..CLAIM_ATTEMPTS {
            let claimed = sqlx::query_as::<_, ClaimRow>(CLAIM_SQL)
                .bind(owner)
                .bind(interval_secs(lease))
                .fetch_optional(&self.pool)
                .await;
            match claimed {
                Ok(row) => return Ok(row.map(Claimed::from)),
                // Another worker started an item of the same pod after our snapshot was
                // taken; a new statement sees it and moves on to other pods.
                Err(e) if is_unique_violation(&e) => continue,
                Err(e) => {
                    return Err(StoreError::query(format!("claim a queue item for {owner}"))(e));
                }
            }
        }
        Ok(None)
    }

    /// Extends the lease to now + `extend`; false when fenced out (someone else owns it now or it finished).
    pub async fn heartbeat(&self, lease: &Lease, extend: Duration) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE cloud_pod_queue SET lease_expires_at = now() + make_interval(secs => $4) \
             WHERE id = $1 AND status = 'running' AND attempt = $2 AND lease_owner = $3",
        )
        .bind(lease.item_id)
        .bind(lease.attempt)
        .bind(&lease.owner)
        .bind(interval_secs(extend))
        .execute(&self.pool)
        .await
        .map_err(StoreError::query(format!(
            "extend the lease of queue item {}",
            lease.item_id
        )))?;
        Ok(done.rows_affected() == 1)
    }

    /// Items `running` whose lease expired go back to `queued` (due now) or, after their last
    /// attempt, to `failed` ("lease expired after N attempts (worker lost)", job failed too).
    /// Returns how many were touched.
    pub async fn reclaim_expired(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(RECLAIM_SQL)
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::query("reclaim queue items with expired leases"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Counts by status for metrics: all four statuses present (0 when none).
    pub async fn depth(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*)::bigint FROM cloud_pod_queue GROUP BY status")
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::query("count queue items by status"))?;
        let mut out: BTreeMap<String, i64> =
            STATUSES.iter().map(|s| ((*s).to_owned(), 0)).collect();
        out.extend(rows);
        Ok(out)
    }

    /// Waits until a NOTIFY on `cloud_pod_queue` arrives or `timeout` passes (a wake-up hint;
    /// callers poll anyway). Each notification wakes one waiter. Listener errors are logged,
    /// the listener is dropped (reconnected on the next call) and the timeout is slept out.
    pub async fn wait_for_work(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        // Waiters sharing this Queue take turns on the one listener.
        let Ok(mut wake) = tokio::time::timeout_at(deadline, self.wake.lock()).await else {
            return;
        };
        let wake = &mut *wake;
        if wake.listener.is_none() {
            let pool = wake
                .pool
                .get_or_insert_with(|| listener_pool(&self.pool))
                .clone();
            match tokio::time::timeout_at(deadline, listen(&pool)).await {
                Ok(Ok(listener)) => wake.listener = Some(listener),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot LISTEN for new queue items; polling only");
                    tokio::time::sleep_until(deadline).await;
                    return;
                }
                Err(_) => return,
            }
        }
        let Some(listener) = wake.listener.as_mut() else {
            return;
        };
        // try_recv is cancel-safe, so the timeout leaves the listener usable.
        match tokio::time::timeout_at(deadline, listener.try_recv()).await {
            // A notification, or the connection was lost and re-established (notifications
            // may have been missed): either way the caller should look for work now.
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "lost the LISTEN connection for new queue items");
                wake.listener = None;
                tokio::time::sleep_until(deadline).await;
            }
        }
    }
}

/// A lazily connecting one-connection pool with the main pool's settings.
fn listener_pool(main: &PgPool) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with((*main.connect_options()).clone())
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // The pool is private to the listener: nobody closes it but our drop.
    listener.ignore_pool_close_event(true);
    listener.listen(CHANNEL_NEW).await?;
    Ok(listener)
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}
