//! Leader election statements (see `crate::leader`): the session advisory lock and the
//! `cloudpods_leader` row, all on the elector's own dedicated connection.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Row};

use super::{StoreError, describe};

/// Opens the elector's dedicated connection. Server-side TCP keepalives and a user timeout
/// bound how long the server keeps a session (and its lock) whose client vanished without
/// closing the socket (a partition rather than a crash).
pub async fn connect_dedicated(url: &str, holder: &str) -> Result<PgConnection, StoreError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(StoreError::InvalidUrl)?
        .application_name(&format!("cloudpods-leader {holder}"))
        .options([
            ("client_min_messages", "warning"),
            ("tcp_keepalives_idle", "5"),
            ("tcp_keepalives_interval", "2"),
            ("tcp_keepalives_count", "3"),
            ("tcp_user_timeout", "10000"),
        ]);
    let target = describe(&options);
    options
        .connect()
        .await
        .map_err(|source| StoreError::Connect { target, source })
}

/// Tries to take the election's session lock (never waits).
pub async fn try_lock(conn: &mut PgConnection, id: &str) -> Result<bool, StoreError> {
    sqlx::query_scalar(
        "SELECT pg_try_advisory_lock(hashtextextended('cloudpods-leader:' || $1, 0))",
    )
    .bind(id)
    .fetch_one(conn)
    .await
    .map_err(StoreError::query("take the leader lock"))
}

/// The previous leader as its row tells, with how long its lease still runs by the
/// database's clock (zero when it ran out or was released).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Previous {
    /// Its identity.
    pub holder: String,
    /// Released cleanly on shutdown.
    pub released: bool,
    /// Time left until its lease runs out.
    pub remaining: Duration,
}

/// Reads the election's row, if any.
pub async fn previous(conn: &mut PgConnection, id: &str) -> Result<Option<Previous>, StoreError> {
    let row = sqlx::query(
        "SELECT holder, released,
                GREATEST(0, CEIL(EXTRACT(EPOCH FROM
                    (renewed_at + lease_ms * INTERVAL '1 millisecond' - clock_timestamp())) * 1000))::BIGINT
                    AS remaining_ms
           FROM cloudpods_leader WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
    .map_err(StoreError::query("read the leader row"))?;
    Ok(row.map(|r| Previous {
        holder: r.get("holder"),
        released: r.get("released"),
        remaining: Duration::from_millis(r.get::<i64, _>("remaining_ms").max(0) as u64),
    }))
}

/// Records `holder` as the leader from now on (the caller holds the lock).
pub async fn claim(
    conn: &mut PgConnection,
    id: &str,
    holder: &str,
    lease: Duration,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO cloudpods_leader (id, holder, acquired_at, renewed_at, lease_ms, released)
         VALUES ($1, $2, clock_timestamp(), clock_timestamp(), $3, false)
         ON CONFLICT (id) DO UPDATE SET holder = EXCLUDED.holder, acquired_at = EXCLUDED.acquired_at,
             renewed_at = EXCLUDED.renewed_at, lease_ms = EXCLUDED.lease_ms, released = false",
    )
    .bind(id)
    .bind(holder)
    .bind(lease.as_millis().min(i64::MAX as u128) as i64)
    .execute(conn)
    .await
    .map_err(StoreError::query("record the new leader"))?;
    Ok(())
}

/// Renews the lease; false when the row names someone else or this session no longer holds
/// the lock (e.g. behind a pooler in transaction mode, or after `pg_advisory_unlock_all`).
pub async fn renew(conn: &mut PgConnection, id: &str, holder: &str) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE cloudpods_leader SET renewed_at = clock_timestamp()
          WHERE id = $1 AND holder = $2 AND NOT released
            AND EXISTS (SELECT 1 FROM pg_locks
                         WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()
                           AND objsubid = 1
                           AND ((classid::BIGINT << 32) | objid::BIGINT)
                               = hashtextextended('cloudpods-leader:' || $1, 0))",
    )
    .bind(id)
    .bind(holder)
    .execute(conn)
    .await
    .map_err(StoreError::query("renew the leader lease"))?;
    Ok(done.rows_affected() == 1)
}

/// Marks the row released and drops the lock: the next leader starts without waiting.
pub async fn release(conn: &mut PgConnection, id: &str, holder: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE cloudpods_leader SET released = true WHERE id = $1 AND holder = $2")
        .bind(id)
        .bind(holder)
        .execute(&mut *conn)
        .await
        .map_err(StoreError::query("release the leader row"))?;
    sqlx::query("SELECT pg_advisory_unlock(hashtextextended('cloudpods-leader:' || $1, 0))")
        .bind(id)
        .execute(conn)
        .await
        .map_err(StoreError::query("release the leader lock"))?;
    Ok(())
}
