//! The worker pool: claims `cloud_pod_queue` items (SKIP LOCKED + lease), runs one handler
//! per action against Proxmox, and records the outcome together with the pod's new state in
//! one transaction, fenced by the lease. The only caller of [`crate::proxmox`] and the only
//! writer of queue statuses running/success/failed.
//!
//! - A slot claims, handles, records; when nothing is due it waits for a NOTIFY on
//!   `cloud_pod_queue` or the poll interval, whichever comes first.
//! - While an item runs its lease is extended every third of its length; a worker that loses
//!   its lease (it stalled, another claimed the item) cannot record anything.
//! - A reclaimer returns items of dead workers (expired leases) to the queue.
//! - Failures are retried with exponential backoff and jitter up to the item's
//!   `max_attempts`; then the item is `failed` and the pod `error` with the message.

mod handlers;
pub mod orphans;
pub mod payload;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Semaphore, watch};
use tracing::Instrument;

use crate::metrics::{CounterVec, HistogramVec, Registry};
use crate::proxmox::{NodeName, Proxmox};
use crate::queue::{self, Backoff, Claimed, FailOutcome, Queue};
use crate::store::StoreError;
use crate::store::reconcile::{self as rstore, Fenced, PodUpdate};
use crate::telemetry::Heartbeat;

pub use handlers::{Done, JobError, clone_job_id};
// Moved to telemetry; re-exported for the callers that still import it from here.
use crate::telemetry::error_chain;

/// Where new VMs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Placement {
    /// On the blueprint's default node (where its template lives).
    BlueprintNode,
    /// On the configured node with the fewest live pods; every node must hold the template
    /// under the blueprint's VMID (standalone nodes).
    Spread,
}

/// Settings of the worker pool.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Items handled at once by this process.
    pub concurrency: usize,
    /// Lease length; renewed every third of it while an item runs.
    pub lease: Duration,
    /// Longest wait between two claim attempts when no NOTIFY arrives.
    pub poll_interval: Duration,
    /// Retry delays of failed attempts.
    pub backoff: Backoff,
    /// Attempts per queue item before it is `failed`.
    pub max_attempts: i32,
    /// Long Proxmox tasks (clone, start, stop, backup) at once per node.
    pub max_tasks_per_node: usize,
    /// Where new VMs go.
    pub placement: Placement,
    /// How long a create waits for the guest agent's address before finishing without one
    /// (a later sync fills it in).
    pub agent_wait: Duration,
    /// Pause between two guest-agent polls.
    pub agent_poll: Duration,
    /// Storage that receives vzdump archives.
    pub backup_storage: String,
    /// Clean shutdown time before a hard stop.
    pub shutdown_timeout: Duration,
    /// This worker's identity in `lease_owner`.
    pub owner: String,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            concurrency: 32,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(2),
            backoff: Backoff {
                base: Duration::from_secs(2),
                max: Duration::from_secs(120),
            },
            max_attempts: 5,
            max_tasks_per_node: 4,
            placement: Placement::BlueprintNode,
            agent_wait: Duration::from_secs(120),
            agent_poll: Duration::from_millis(500),
            backup_storage: "local".into(),
            shutdown_timeout: Duration::from_secs(60),
            // Unique per process and readable in `lease_owner`.
            owner: crate::leader::holder_identity(),
        }
    }
}

/// The worker's metrics.
#[derive(Clone, Debug)]
pub struct WorkerMetrics {
    /// Job durations by action and result.
    pub job_duration: HistogramVec,
    /// Finished attempts by action and outcome (success, retry, failed, fenced).
    pub jobs: CounterVec,
}

impl WorkerMetrics {
    /// Registers the worker's metrics.
    pub fn register(registry: &Registry) -> Self {
        WorkerMetrics {
            job_duration: registry.histogram(
                "cloudpods_job_duration_seconds",
                "Duration of queue item attempts by action and result.",
                &["action", "result"],
                crate::metrics::JOB_BUCKETS,
            ),
            jobs: registry.counter(
                "cloudpods_jobs_total",
                "Queue item attempts by action and outcome (success, retry, failed, fenced).",
                &["action", "outcome"],
            ),
        }
    }
}

/// Liveness of the worker loop, for /readyz.
#[derive(Clone, Debug, Default)]
pub struct WorkerHealth(Heartbeat);

impl WorkerHealth {
    fn beat(&self) {
        self.0.beat();
    }

    /// True when a worker loop went round within `within`.
    pub fn alive_within(&self, within: Duration) -> bool {
        self.0.beat_within(within)
    }
}

/// Shared state of all slots.
pub(crate) struct Ctx<P> {
    pub(crate) pool: PgPool,
    pub(crate) queue: Queue,
    pub(crate) pve: P,
    pub(crate) nodes: Vec<NodeName>,
    pub(crate) permits: HashMap<NodeName, Arc<Semaphore>>,
    pub(crate) settings: WorkerSettings,
    metrics: WorkerMetrics,
    health: WorkerHealth,
}

/// The worker pool.
pub struct Worker<P> {
    ctx: Arc<Ctx<P>>,
}

impl<P: Proxmox + 'static> Worker<P> {
    /// A pool over `pve` for `nodes` (the nodes it may place VMs on and drive).
    pub fn new(
        pool: PgPool,
        pve: P,
        nodes: Vec<NodeName>,
        settings: WorkerSettings,
        metrics: WorkerMetrics,
    ) -> Self {
        let permits = nodes
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    Arc::new(Semaphore::new(settings.max_tasks_per_node.max(1))),
                )
            })
            .collect();
        Worker {
            ctx: Arc::new(Ctx {
                queue: Queue::new(pool.clone()),
                pool,
                pve,
                nodes,
                permits,
                settings,
                metrics,
                health: WorkerHealth::default(),
            }),
        }
    }

    /// The liveness handle.
    pub fn health(&self) -> WorkerHealth {
        self.ctx.health.clone()
    }

    /// The orphan scan, every `every`, counted into `gauge` (run it beside [`Worker::run`]).
    pub fn orphan_scan(
        &self,
        gauge: crate::metrics::GaugeVec,
        every: Duration,
    ) -> impl Future<Output = ()> + Send + 'static {
        orphans::scan_loop(self.ctx.clone(), gauge, every)
    }

    /// One orphan scan now: the orphans per node.
    pub async fn scan_orphans(
        &self,
    ) -> std::collections::BTreeMap<String, Vec<crate::proxmox::ClusterVm>> {
        orphans::scan_once(&self.ctx).await
    }

    /// Runs the slots and the reclaimer until `shutdown` resolves; items already running are
    /// finished (their leases keep them ours), then it returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        for slot in 0..self.ctx.settings.concurrency.max(1) {
            let ctx = self.ctx.clone();
            let stop = stop_rx.clone();
            tasks.spawn(async move { slot_loop(ctx, slot, stop).await });
        }
        {
            let ctx = self.ctx.clone();
            let stop = stop_rx.clone();
            tasks.spawn(async move { reclaim_loop(ctx, stop).await });
        }
        tracing::info!(
            owner = %self.ctx.settings.owner,
            slots = self.ctx.settings.concurrency,
            "worker pool started"
        );
        shutdown.await;
        let _ = stop_tx.send(true);
        while tasks.join_next().await.is_some() {}
        tracing::info!("worker pool stopped");
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

async fn slot_loop<P: Proxmox + 'static>(
    ctx: Arc<Ctx<P>>,
    slot: usize,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        ctx.health.beat();
        match ctx
            .queue
            .claim(&ctx.settings.owner, ctx.settings.lease)
            .await
        {
            Ok(Some(item)) => process(&ctx, item).await,
            Ok(None) => {
                tokio::select! {
                    _ = ctx.queue.wait_for_work(ctx.settings.poll_interval) => {}
                    _ = stopped(&mut stop) => {}
                }
            }
            Err(e) => {
                tracing::warn!(slot, error = %error_chain(&e), "claiming a queue item failed");
                tokio::select! {
                    _ = tokio::time::sleep(ctx.settings.poll_interval) => {}
                    _ = stopped(&mut stop) => {}
                }
            }
        }
    }
}

async fn reclaim_loop<P>(ctx: Arc<Ctx<P>>, mut stop: watch::Receiver<bool>) {
    let every = (ctx.settings.lease / 4).max(Duration::from_millis(200));
    while !*stop.borrow() {
        match ctx.queue.reclaim_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(items = n, "reclaimed queue items of lost workers"),
            Err(e) => tracing::warn!(error = %error_chain(&e), "reclaiming expired leases failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped(&mut stop) => {}
        }
    }
}

/// Runs one claimed item: handler under a renewed lease, then the fenced record.
async fn process<P: Proxmox + 'static>(ctx: &Arc<Ctx<P>>, item: Claimed) {
    let row = match pod_row(&ctx.pool, &item.pod_id).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(pod_id = %item.pod_id, error = %error_chain(&e), "cannot read the pod of a queue item");
            record_failure(
                ctx,
                &item,
                &JobError::retry(format!("reading the pod failed: {e}")),
            )
            .await;
            return;
        }
    };
    let span = tracing::info_span!(
        "job",
        tenantId = row.as_ref().map_or("", |r| r.tenant_id.as_str()),
        podId = %item.pod_id,
        vmid = row.as_ref().and_then(|r| r.vmid),
        action = item.action.as_str(),
        item = item.id,
        attempt = item.attempt,
    );
    async {
        let Some(row) = row else {
            record_failure(
                ctx,
                &item,
                &JobError::fatal("the pod's cloud_pods row does not exist"),
            )
            .await;
            return;
        };
        tracing::info!("job started");
        let started = tokio::time::Instant::now();
        let heartbeat = spawn_heartbeat(ctx, &item);
        let outcome = handlers::handle(ctx, &item, &row).await;
        heartbeat.abort();
        let secs = started.elapsed().as_secs_f64();
        match outcome {
            Ok(done) => {
                let recorded = record_success(ctx, &item, &done).await;
                let result = if recorded { "success" } else { "fenced" };
                ctx.metrics
                    .job_duration
                    .observe(&[item.action.as_str(), result], secs);
                ctx.metrics.jobs.inc(&[item.action.as_str(), result]);
                if recorded {
                    tracing::info!(elapsed_ms = (secs * 1000.0) as u64, "job succeeded");
                }
            }
            Err(err) => {
                let outcome = record_failure(ctx, &item, &err).await;
                ctx.metrics
                    .job_duration
                    .observe(&[item.action.as_str(), "failure"], secs);
                ctx.metrics.jobs.inc(&[item.action.as_str(), outcome]);
            }
        }
    }
    .instrument(span)
    .await
}

async fn pod_row(
    pool: &PgPool,
    id: &str,
) -> Result<Option<crate::store::pods::PodRow>, StoreError> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(StoreError::query("get a connection for a job"))?;
    rstore::pod_by_id(&mut conn, id).await
}

fn spawn_heartbeat<P: Proxmox + 'static>(
    ctx: &Arc<Ctx<P>>,
    item: &Claimed,
) -> tokio::task::JoinHandle<()> {
    let ctx = ctx.clone();
    let lease = item.lease.clone();
    tokio::spawn(async move {
        let every = (ctx.settings.lease / 3).max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(every).await;
            match ctx.queue.heartbeat(&lease, ctx.settings.lease).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        item = lease.item_id,
                        "lease lost; the result will not be recorded"
                    );
                    return;
                }
                Err(e) => tracing::warn!(error = %error_chain(&e), "renewing the lease failed"),
            }
        }
    })
}

/// Completes the item and applies the pod update in one transaction. False when fenced out.
async fn record_success<P>(ctx: &Ctx<P>, item: &Claimed, done: &Done) -> bool {
    let attempt = async {
        let mut tx = ctx
            .pool
            .begin()
            .await
            .map_err(StoreError::query("begin recording a job"))?;
        match rstore::update_pod(&mut tx, &item.pod_id, &done.update, Some(&item.lease)).await? {
            Fenced::Applied => {}
            other => {
                tracing::warn!(?other, "pod update refused; not completing the item");
                return Ok::<bool, StoreError>(false);
            }
        }
        if !queue::complete(&mut tx, &item.lease, &done.result).await? {
            return Ok(false);
        }
        tx.commit()
            .await
            .map_err(StoreError::query("commit a job's result"))?;
        Ok(true)
    };
    match attempt.await {
        Ok(ok) => ok,
        Err(e) => {
            // The lease will expire and the item run again; every handler is idempotent.
            tracing::warn!(error = %error_chain(&e), "recording the job's result failed");
            false
        }
    }
}

/// Records a failed attempt: retry later, or give up (`failed`, pod `error` when its row
/// exists). Returns the metrics outcome label.
async fn record_failure<P>(ctx: &Ctx<P>, item: &Claimed, err: &JobError) -> &'static str {
    let retry = u32::try_from(item.attempt).unwrap_or(1).max(1);
    let delay = ctx.settings.backoff.delay(retry);
    let attempt = async {
        let mut tx = ctx
            .pool
            .begin()
            .await
            .map_err(StoreError::query("begin recording a failure"))?;
        // Pod row before queue item, the order every other writer uses; the locked row is
        // also the current one to note the error on.
        let row = rstore::pod_by_id_locked(&mut tx, &item.pod_id).await?;
        let outcome = queue::fail(&mut tx, &item.lease, &err.message, err.retryable, delay).await?;
        if let (Some(FailOutcome::Failed), Some(row)) = (&outcome, row) {
            let mut state = payload::PodState::from_json(&row.provisioning_state);
            state.last_error = Some(format!("{} failed: {}", item.action.as_str(), err.message));
            let update = PodUpdate {
                status: (row.deleted_at.is_none()).then_some("error"),
                state: Some(state),
                ..PodUpdate::default()
            };
            rstore::update_pod(&mut tx, &item.pod_id, &update, None).await?;
        }
        tx.commit()
            .await
            .map_err(StoreError::query("commit a job failure"))?;
        Ok::<_, StoreError>(outcome)
    };
    match attempt.await {
        Ok(Some(FailOutcome::Retrying { after })) => {
            tracing::warn!(error = %err.message, retry_in_ms = after.as_millis() as u64, "job failed; will retry");
            "retry"
        }
        Ok(Some(FailOutcome::Failed)) => {
            tracing::error!(error = %err.message, "job failed for good");
            "failed"
        }
        Ok(None) => "fenced",
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "recording the failure failed");
            "fenced"
        }
    }
}
