//! Leader election for `cloudpods operator` replicas: at most one replica runs the
//! controllers, the workers, the orphan scan and the row sweep at any time.
//!
//! The election is a PostgreSQL session advisory lock held on a dedicated connection, so it
//! works wherever the operator does (the database is required anyway) and is lost with that
//! connection: a killed leader's lock is gone as soon as the server sees the socket close.
//! Lock ownership alone cannot stop a leader whose connection broke while it still works, so
//! every leader also holds a time lease, renewed on the same connection in the
//! `cloudpods_leader` row:
//!
//! - the leader renews every `lease / 5`; when it has not renewed successfully for
//!   `lease * 4 / 5` (a renewal still running then is abandoned), or a renewal fails (the
//!   connection is gone), it has lost leadership and must stop working at once (the binary
//!   exits);
//! - a newly elected leader waits until the previous holder's lease has run out by the
//!   database's clock (`renewed_at + lease`) before it starts, unless that holder released
//!   the row on a clean shutdown.
//!
//! Takeover after a crash is therefore bounded by the poll interval plus one lease. Where the
//! cluster serves `coordination.k8s.io` Leases, the leader can additionally hold one
//! ([`LeaseLock`]), which makes the holder visible to `kubectl get lease` and to other tools.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use sqlx::postgres::PgConnection;
use tokio::sync::{oneshot, watch};

use crate::store::leader as db;

/// How a replica takes part in the election.
#[derive(Debug, Clone)]
pub struct LeaderSettings {
    /// Name of the election (replicas with the same id compete).
    pub id: String,
    /// This replica's identity (see [`holder_identity_for`]).
    pub holder: String,
    /// Lease length: the longest a dead leader keeps the others waiting.
    pub lease: Duration,
    /// How often a standby tries to take the lock.
    pub retry: Duration,
    /// Also hold a `coordination.k8s.io` Lease of this name in this namespace.
    pub lease_namespace: Option<String>,
}

impl LeaderSettings {
    /// Settings for the replica `holder` (see [`holder_identity_for`]).
    pub fn new(
        id: &str,
        holder: String,
        lease: Duration,
        retry: Duration,
        lease_namespace: Option<String>,
    ) -> Self {
        LeaderSettings {
            id: id.to_string(),
            holder,
            lease,
            retry,
            lease_namespace,
        }
    }

    /// Interval between renewals.
    pub fn renew_interval(&self) -> Duration {
        (self.lease / 5).max(Duration::from_millis(100))
    }

    /// Without a successful renewal for this long, the leader steps down.
    pub fn step_down_after(&self) -> Duration {
        self.lease * 4 / 5
    }
}

/// `name` (`--pod-name`; default: the host name), the process id and a random suffix:
/// unique per call, readable in leader records and `lease_owner`.
pub fn holder_identity_for(name: Option<&str>) -> String {
    let host = name
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("{host}-{}-{suffix}", std::process::id())
}

/// [`holder_identity_for`] the host name, for processes without a configured name.
pub fn holder_identity() -> String {
    holder_identity_for(None)
}

/// Why leadership ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost(pub String);

/// Held leadership: renewals run in the background until [`Leadership::release`] or loss.
pub struct Leadership {
    lost: watch::Receiver<Option<Lost>>,
    release: Option<oneshot::Sender<oneshot::Sender<()>>>,
    /// This replica's identity.
    pub holder: String,
    /// How long the new leader waited for the previous lease to run out.
    pub waited: Duration,
}

impl Leadership {
    /// Resolves when leadership is lost; the caller must stop working at once.
    pub async fn lost(&mut self) -> Lost {
        loop {
            if let Some(l) = self.lost.borrow().clone() {
                return l;
            }
            if self.lost.changed().await.is_err() {
                return Lost("the leader renewal task ended".into());
            }
        }
    }

    /// Gives leadership up cleanly (marks the row released, drops the lock and the Lease), so
    /// a standby takes over without waiting for the lease to run out.
    pub async fn release(mut self) {
        if let Some(tx) = self.release.take() {
            let (done_tx, done_rx) = oneshot::channel();
            if tx.send(done_tx).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(5), done_rx).await;
            }
        }
    }
}

/// Campaigns until this replica leads (with the Lease too when `settings.lease_namespace`
/// and `client` are given). Never returns an error: connection trouble is logged and retried
/// every `settings.retry`.
pub async fn acquire(
    url: &str,
    settings: &LeaderSettings,
    client: Option<kube::Client>,
) -> Leadership {
    let lease_lock = match (&settings.lease_namespace, client) {
        (Some(ns), Some(client)) => Some(LeaseLock::new(client, ns, settings)),
        _ => None,
    };
    let mut logged_standby = false;
    loop {
        let connect = bounded(
            settings.lease,
            "connecting",
            db::connect_dedicated(url, &settings.holder),
        );
        let mut conn = match connect.await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "leader election: cannot connect; retrying");
                tokio::time::sleep(settings.retry).await;
                continue;
            }
        };
        match campaign(
            &mut conn,
            settings,
            lease_lock.as_ref(),
            &mut logged_standby,
        )
        .await
        {
            Ok(won) => return spawn_renewals(conn, settings.clone(), lease_lock, won),
            Err(e) => {
                tracing::warn!(error = %e, "leader election: connection trouble; reconnecting");
                tokio::time::sleep(settings.retry).await;
            }
        }
    }
}

/// What a won campaign hands to the renewals.
struct Won {
    /// How long the lease wait took.
    waited: Duration,
    /// When the claim of the row was sent (the lease runs from no earlier than this).
    claimed: Instant,
    /// When the Lease was last written, if one is held.
    lease_written: Option<Instant>,
}

/// `call`, bounded by `limit`: a database call that hangs (a half-open connection) must not
/// keep a replica from campaigning.
async fn bounded<T, E: std::error::Error + 'static>(
    limit: Duration,
    what: &str,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(anyhow::anyhow!(
            "{what}: {}",
            crate::telemetry::error_chain(&e)
        )),
        Err(_) => Err(anyhow::anyhow!(
            "{what}: no answer within {} ms",
            limit.as_millis()
        )),
    }
}

/// Takes the lock on `conn`, waits out the previous lease, takes the Lease if configured and
/// records this replica. Errors mean the connection must be replaced (which drops the lock).
async fn campaign(
    conn: &mut PgConnection,
    settings: &LeaderSettings,
    lease_lock: Option<&LeaseLock>,
    logged_standby: &mut bool,
) -> anyhow::Result<Won> {
    let limit = settings.lease;
    while !bounded(
        limit,
        "taking the leader lock",
        db::try_lock(conn, &settings.id),
    )
    .await?
    {
        if !*logged_standby {
            tracing::info!(id = %settings.id, holder = %settings.holder, "standby: another replica leads");
            *logged_standby = true;
        }
        tokio::time::sleep(settings.retry).await;
    }
    let started = Instant::now();
    if let Some(prev) = bounded(
        limit,
        "reading the leader row",
        db::previous(conn, &settings.id),
    )
    .await?
        && !prev.released
        && !prev.remaining.is_zero()
    {
        tracing::info!(previous = %prev.holder, wait_ms = prev.remaining.as_millis() as u64,
            "lock taken; waiting for the previous leader's lease to run out");
        // A little slack for clock-rate differences between the database and the old leader.
        tokio::time::sleep(prev.remaining + Duration::from_millis(100)).await;
        // Keep the connection honest: a dead one must not be mistaken for leadership.
        bounded(
            limit,
            "reading the leader row",
            db::previous(conn, &settings.id),
        )
        .await?;
    }
    let lease_written = match lease_lock {
        // Bounded: a Lease that cannot be taken (no RBAC, no API, a holder that keeps
        // renewing) must not let this replica sit on the database lock forever.
        Some(lock) => Some(
            tokio::time::timeout(limit, lock.take())
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "the Lease could not be taken within {} ms",
                        limit.as_millis()
                    )
                })?,
        ),
        None => None,
    };
    let claimed = Instant::now();
    bounded(
        limit,
        "recording the new leader",
        db::claim(conn, &settings.id, &settings.holder, settings.lease),
    )
    .await?;
    let waited = started.elapsed();
    tracing::info!(id = %settings.id, holder = %settings.holder, waited_ms = waited.as_millis() as u64, "elected leader");
    Ok(Won {
        waited,
        claimed,
        lease_written,
    })
}

fn spawn_renewals(
    mut conn: PgConnection,
    settings: LeaderSettings,
    lease_lock: Option<LeaseLock>,
    won: Won,
) -> Leadership {
    let (lost_tx, lost_rx) = watch::channel(None);
    let (release_tx, mut release_rx) = oneshot::channel::<oneshot::Sender<()>>();
    let holder = settings.holder.clone();
    tokio::spawn(async move {
        let every = settings.renew_interval();
        // Send times of the last successful renewals: of the row, and of the Lease if one is
        // held. Leadership ends `step_down_after` past the older of the two.
        let mut row_ok = won.claimed;
        let mut lease_ok = won.lease_written;
        let oldest =
            |row_ok: Instant, lease_ok: Option<Instant>| lease_ok.map_or(row_ok, |l| l.min(row_ok));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                done = &mut release_rx => {
                    if let Err(e) = db::release(&mut conn, &settings.id, &settings.holder).await {
                        tracing::warn!(error = %crate::telemetry::error_chain(&e), "releasing leadership failed; the lease runs out instead");
                    }
                    if let Some(lock) = &lease_lock {
                        lock.release().await;
                    }
                    tracing::info!(holder = %settings.holder, "leadership released");
                    if let Ok(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
            }
            let sent = Instant::now();
            // Every call may take until the step-down deadline (a slow database is not a lost
            // one); past it, this replica must stop, whatever the call would have said.
            let deadline = tokio::time::Instant::from_std(
                oldest(row_ok, lease_ok) + settings.step_down_after(),
            );
            // The row: a failed statement means the connection (and with it the lock) is gone.
            let mut reason = tokio::select! {
                r = db::renew(&mut conn, &settings.id, &settings.holder) => match r {
                    Ok(true) => None,
                    Ok(false) => Some("the leader row names another holder, or this session lost the lock".to_string()),
                    Err(e) => Some(format!("renewal failed: {}", crate::telemetry::error_chain(&e))),
                },
                _ = tokio::time::sleep_until(deadline) => Some("no renewal within the lease".to_string()),
            };
            if reason.is_none() {
                row_ok = sent;
            }
            // The Lease: an API hiccup is retried until the deadline; a Lease taken by someone
            // else ends leadership at once.
            if reason.is_none()
                && let Some(lock) = &lease_lock
            {
                tokio::select! {
                    r = lock.renew() => match r {
                        Ok(()) => lease_ok = Some(sent),
                        Err(LeaseError::Taken) => reason = Some("the Lease names another holder".into()),
                        Err(LeaseError::Api(e)) => tracing::warn!(error = %e, "renewing the Lease failed; retrying"),
                    },
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
            let reason = reason.or_else(|| {
                (oldest(row_ok, lease_ok).elapsed() >= settings.step_down_after())
                    .then(|| "no renewal within the lease".to_string())
            });
            if let Some(reason) = reason {
                tracing::warn!(holder = %settings.holder, %reason, "leader lease not renewed");
                let _ = lost_tx.send(Some(Lost(reason)));
                return;
            }
        }
    });
    Leadership {
        lost: lost_rx,
        release: Some(release_tx),
        holder,
        waited: won.waited,
    }
}

/// What a replica may do with a Lease it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDecision {
    /// Free, expired or released: take it.
    Take,
    /// Ours already: renew it.
    Renew,
    /// Held by someone else for this much longer.
    Wait(Duration),
}

/// Decides from a Lease's spec (pure; `now` by the caller's clock).
pub fn lease_decision(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> LeaseDecision {
    let Some(spec) = spec else {
        return LeaseDecision::Take;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() {
        return LeaseDecision::Take;
    }
    if holder == me {
        return LeaseDecision::Renew;
    }
    let seconds = i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0));
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return LeaseDecision::Take;
    };
    let expires = renewed.0.as_millisecond().saturating_add(seconds * 1000);
    let left = expires - now.as_millisecond();
    if left <= 0 {
        LeaseDecision::Take
    } else {
        LeaseDecision::Wait(Duration::from_millis(left as u64))
    }
}

/// Why renewing the Lease failed.
#[derive(Debug)]
pub enum LeaseError {
    /// Another replica holds it now.
    Taken,
    /// The API failed (retried until the step-down deadline).
    Api(kube::Error),
}

/// A `coordination.k8s.io/v1` Lease held next to the database lock.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    holder: String,
    lease: Duration,
    retry: Duration,
}

impl LeaseLock {
    /// A Lease named after the election id in `namespace`.
    pub fn new(client: kube::Client, namespace: &str, settings: &LeaderSettings) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            name: settings.id.clone(),
            holder: settings.holder.clone(),
            lease: settings.lease,
            retry: settings.retry,
        }
    }

    fn spec(&self, previous: Option<&LeaseSpec>, acquire: bool) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.holder.clone()),
            lease_duration_seconds: Some(self.lease.as_secs().clamp(1, i32::MAX as u64) as i32),
            acquire_time: if acquire {
                Some(now.clone())
            } else {
                previous.and_then(|s| s.acquire_time.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if acquire {
                transitions + 1
            } else {
                transitions
            }),
            ..LeaseSpec::default()
        }
    }

    /// Takes the Lease, waiting while another holder's is still valid; returns when the
    /// successful write was sent.
    pub async fn take(&self) -> Instant {
        loop {
            let sent = Instant::now();
            match self.try_take().await {
                Ok(None) => return sent,
                Ok(Some(wait)) => {
                    tracing::info!(lease = %self.name, wait_ms = wait.as_millis() as u64, "Lease held by another replica; waiting");
                    tokio::time::sleep(wait.min(self.retry.max(Duration::from_secs(1)))).await;
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "taking the Lease failed; retrying");
                    tokio::time::sleep(self.retry).await;
                }
            }
        }
    }

    async fn try_take(&self) -> Result<Option<Duration>, kube::Error> {
        match self.api.get_opt(&self.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(None, true)),
                };
                self.api.create(&PostParams::default(), &lease).await?;
                Ok(None)
            }
            Some(mut lease) => {
                match lease_decision(lease.spec.as_ref(), &self.holder, Timestamp::now()) {
                    LeaseDecision::Wait(d) => Ok(Some(d)),
                    decision => {
                        let acquire = decision == LeaseDecision::Take;
                        lease.spec = Some(self.spec(lease.spec.as_ref(), acquire));
                        // replace() carries the resourceVersion read above: a concurrent writer gets 409.
                        self.api
                            .replace(&self.name, &PostParams::default(), &lease)
                            .await?;
                        Ok(None)
                    }
                }
            }
        }
    }

    /// Renews the Lease.
    pub async fn renew(&self) -> Result<(), LeaseError> {
        let mut lease = self.api.get(&self.name).await.map_err(LeaseError::Api)?;
        if lease_decision(lease.spec.as_ref(), &self.holder, Timestamp::now())
            != LeaseDecision::Renew
        {
            return Err(LeaseError::Taken);
        }
        lease.spec = Some(self.spec(lease.spec.as_ref(), false));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            // Someone wrote it between our read and write: only a takeover does that.
            Err(kube::Error::Api(s)) if s.code == 409 => Err(LeaseError::Taken),
            Err(e) => Err(LeaseError::Api(e)),
        }
    }

    /// Empties the holder so the next replica takes the Lease at once.
    pub async fn release(&self) {
        let Ok(mut lease) = self.api.get(&self.name).await else {
            return;
        };
        if lease_decision(lease.spec.as_ref(), &self.holder, Timestamp::now())
            != LeaseDecision::Renew
        {
            return;
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
        }
        if let Err(e) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(lease = %self.name, error = %e, "releasing the Lease failed; it runs out instead");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed_ms_ago: i64, seconds: i32, now: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(seconds),
            renew_time: Some(MicroTime(
                Timestamp::from_millisecond(now.as_millisecond() - renewed_ms_ago).unwrap(),
            )),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn lease_decisions() {
        let now = Timestamp::now();
        assert_eq!(lease_decision(None, "me", now), LeaseDecision::Take);
        assert_eq!(
            lease_decision(Some(&spec(None, 0, 15, now)), "me", now),
            LeaseDecision::Take
        );
        assert_eq!(
            lease_decision(Some(&spec(Some(""), 0, 15, now)), "me", now),
            LeaseDecision::Take
        );
        assert_eq!(
            lease_decision(Some(&spec(Some("me"), 0, 15, now)), "me", now),
            LeaseDecision::Renew
        );
        // Ours even when expired: renewing is right, nobody else took it.
        assert_eq!(
            lease_decision(Some(&spec(Some("me"), 60_000, 15, now)), "me", now),
            LeaseDecision::Renew
        );
        assert_eq!(
            lease_decision(Some(&spec(Some("other"), 5_000, 15, now)), "me", now),
            LeaseDecision::Wait(Duration::from_millis(10_000))
        );
        assert_eq!(
            lease_decision(Some(&spec(Some("other"), 15_000, 15, now)), "me", now),
            LeaseDecision::Take
        );
        let no_times = LeaseSpec {
            holder_identity: Some("other".into()),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        };
        assert_eq!(
            lease_decision(Some(&no_times), "me", now),
            LeaseDecision::Take
        );
    }

    #[test]
    fn renewal_timing_keeps_the_step_down_inside_the_lease() {
        // The leader stops at the latest `step_down_after` after its last successful renewal
        // was sent; the others wait a full lease from that renewal (by the database's clock,
        // which stamped it later). Several renewals must fit before the step-down.
        for lease_ms in [1_000u64, 3_000, 15_000, 60_000] {
            let s = LeaderSettings::new(
                "x",
                "holder".into(),
                Duration::from_millis(lease_ms),
                Duration::from_secs(1),
                None,
            );
            assert!(s.step_down_after() < s.lease);
            assert!(
                s.lease - s.step_down_after() >= s.lease / 5,
                "margin for the exit"
            );
            assert!(
                s.renew_interval() * 3 <= s.step_down_after(),
                "lease {lease_ms} ms"
            );
        }
    }

    #[test]
    fn holder_identity_is_unique_per_call() {
        let a = holder_identity();
        let b = holder_identity();
        assert_ne!(a, b);
        assert!(a.contains(&std::process::id().to_string()));
    }

    #[test]
    fn holder_identity_starts_with_the_pod_name() {
        let pid = std::process::id();
        let named = holder_identity_for(Some("cp-operator-7f9c"));
        assert!(
            named.starts_with(&format!("cp-operator-7f9c-{pid}-")),
            "{named}"
        );
        assert_ne!(named, holder_identity_for(Some("cp-operator-7f9c")));
        // An empty name (an unset downward-API field) falls back like no name.
        let host = holder_identity_for(Some(""));
        assert!(!host.starts_with(&format!("-{pid}-")), "{host}");
        let host_prefix = |s: &str| s.rsplitn(3, '-').nth(2).map(str::to_string);
        assert_eq!(host_prefix(&host), host_prefix(&holder_identity()));
    }
}
