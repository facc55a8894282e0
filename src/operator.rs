//! `cloudpods operator`: the CloudPod and TenantQuota controllers, the worker pool, the
//! orphan scan and a small HTTP endpoint (/healthz, /readyz, /metrics), wired together with
//! one shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use futures::StreamExt;
use kube::api::{Api, ListParams};
use kube::runtime::Controller;
use kube::runtime::controller::Config as ControllerConfig;
use kube::runtime::reflector::ObjectRef;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::controller::{self, Context, ControllerMetrics, ControllerSettings, Events, KubeHealth};
use crate::crd::{CloudPod, TenantQuota};
use crate::metrics::{GaugeVec, Registry};
use crate::proxmox::config::NodesConfig;
use crate::proxmox::driver::{CommandObserver, DriverSettings, SshProxmox};
use crate::proxmox::{NodeName, Proxmox};
use crate::queue::{DoneListener, Queue};
use crate::quota::{QuotaLimits, Quotas};
use crate::worker::{Worker, WorkerHealth, WorkerMetrics, WorkerSettings};

/// Everything the operator runs with.
pub struct Parts<P> {
    /// Kubernetes client.
    pub client: kube::Client,
    /// Database (migrated).
    pub pool: PgPool,
    /// Proxmox access (built with [`with_ssh_metrics`] settings to get SSH metrics).
    pub pve: P,
    /// Nodes the worker may use.
    pub nodes: Vec<NodeName>,
    /// Quota defaults.
    pub quota_defaults: QuotaLimits,
    /// Controller settings.
    pub controller: ControllerSettings,
    /// Worker settings.
    pub worker: WorkerSettings,
    /// Where /healthz, /readyz and /metrics listen (None: no endpoint).
    pub listen: Option<SocketAddr>,
    /// How often VMs with our marker are compared with `cloud_pods`.
    pub orphan_scan_interval: Duration,
    /// The metrics registry (shared with the driver's observer).
    pub registry: Registry,
}

/// The driver settings the operator uses: the defaults, but detached jobs (clone, backup)
/// are polled at least every 500 ms (one small read on the pooled connection), so a finished
/// clone frees its node slot promptly.
pub fn driver_settings() -> DriverSettings {
    DriverSettings {
        max_poll_interval: Duration::from_millis(500),
        ..DriverSettings::default()
    }
}

/// `settings` with an observer that times every remote command into
/// `cloudpods_ssh_command_duration_seconds` of `registry`.
pub fn with_ssh_metrics(mut settings: DriverSettings, registry: &Registry) -> DriverSettings {
    let hist = registry.histogram(
        "cloudpods_ssh_command_duration_seconds",
        "Remote Proxmox command durations by command and result.",
        &["command", "result"],
        crate::metrics::LATENCY_BUCKETS,
    );
    settings.observer = Some(CommandObserver(Arc::new(move |kind, took, ok| {
        hist.observe(
            &[kind.name(), if ok { "ok" } else { "error" }],
            took.as_secs_f64(),
        );
    })));
    settings
}

/// The SSH driver over the nodes of `nodes` with [`driver_settings`] and SSH metrics in
/// `registry`, and the names of those nodes (the worker's [`Parts::nodes`]).
pub fn ssh_driver(nodes: &NodesConfig, registry: &Registry) -> (SshProxmox, Vec<NodeName>) {
    let pve = nodes.driver(with_ssh_metrics(driver_settings(), registry));
    let names = pve.node_names().into_iter().cloned().collect();
    (pve, names)
}

#[derive(Clone)]
struct Health {
    pool: PgPool,
    pods: Api<CloudPod>,
    worker: WorkerHealth,
    kube: KubeHealth,
    worker_window: Duration,
    registry: Registry,
    queue_depth: GaugeVec,
    queue: Queue,
}

/// A running operator; [`Running::stop`] shuts it down gracefully.
pub struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// The bound address of the HTTP endpoint.
    pub addr: Option<SocketAddr>,
    live: Live,
}

/// The parts still running (for a slow shutdown's log line), and the first part that ended
/// (or panicked) before a stop was asked for: the operator is then broken, not stopping.
#[derive(Clone)]
struct Live {
    parts: Arc<std::sync::Mutex<std::collections::BTreeSet<&'static str>>>,
    stop: watch::Receiver<bool>,
    ended: Arc<watch::Sender<Option<&'static str>>>,
}

impl Live {
    fn new(stop: watch::Receiver<bool>) -> Self {
        Live {
            parts: Arc::default(),
            stop,
            ended: Arc::new(watch::channel(None).0),
        }
    }

    fn set(&self, name: &'static str, running: bool) {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        if running {
            parts.insert(name);
        } else {
            parts.remove(name);
        }
    }

    fn names(&self) -> String {
        let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        parts.iter().copied().collect::<Vec<_>>().join(", ")
    }
}

/// Runs a controller (built with `graceful_shutdown_on(stop)`) until it ends. kube-rs holds
/// reconciles until the controller's cache has its first full list and, after a graceful
/// shutdown cut the watch, that never comes: a stop before the cache was ready would wait
/// forever. Nothing can be in flight then, so the controller is dropped at once; otherwise it
/// gets [`CONTROLLER_GRACE`] to finish the reconciles in flight.
async fn run_controller<K>(
    run: impl std::future::Future<Output = ()>,
    store: kube::runtime::reflector::Store<K>,
    stop: watch::Receiver<bool>,
) where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    tokio::pin!(run);
    tokio::select! {
        _ = &mut run => return,
        _ = stopped(stop) => {}
    }
    let ready = tokio::time::timeout(Duration::ZERO, store.wait_until_ready())
        .await
        .is_ok_and(|r| r.is_ok());
    if !ready {
        return;
    }
    if tokio::time::timeout(CONTROLLER_GRACE, run).await.is_err() {
        tracing::warn!(
            grace_s = CONTROLLER_GRACE.as_secs(),
            "a controller did not finish its reconciles in time; abandoned"
        );
    }
}

/// How long a stopping controller may take to finish the reconciles in flight.
const CONTROLLER_GRACE: Duration = Duration::from_secs(20);

fn spawn_part(
    tasks: &mut tokio::task::JoinSet<()>,
    live: &Live,
    name: &'static str,
    part: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use futures::FutureExt;
    live.set(name, true);
    let live = live.clone();
    tasks.spawn(async move {
        let panicked = std::panic::AssertUnwindSafe(part)
            .catch_unwind()
            .await
            .is_err();
        live.set(name, false);
        if panicked || !*live.stop.borrow() {
            tracing::error!(
                part = name,
                panicked,
                "a part of the operator ended on its own"
            );
            live.ended
                .send_if_modified(|e| e.is_none() && e.replace(name).is_none());
        } else {
            tracing::debug!(part = name, "stopped");
        }
    });
}

impl Running {
    /// Resolves with the name of the first part that ended (or panicked) before [`Running::stop`]:
    /// the operator no longer does all its work and should be restarted.
    pub async fn part_ended(&self) -> &'static str {
        let mut rx = self.live.ended.subscribe();
        loop {
            if let Some(name) = *rx.borrow_and_update() {
                return name;
            }
            if rx.changed().await.is_err() {
                return "unknown";
            }
        }
    }

    /// Signals shutdown and waits for every part to finish (logging the parts still running
    /// every 10 s).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), &mut task).await {
                Ok(_) => return,
                Err(_) => tracing::warn!(parts = %self.live.names(), "still stopping"),
            }
        }
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Runs `part` until it ends or the stop signal comes.
async fn until_stopped(part: impl std::future::Future<Output = ()>, stop: watch::Receiver<bool>) {
    tokio::select! {
        _ = part => {}
        _ = stopped(stop) => {}
    }
}

/// Starts every part in the background.
pub async fn start<P: Proxmox + 'static>(parts: Parts<P>) -> anyhow::Result<Running> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let registry = parts.registry.clone();
    let cmetrics = ControllerMetrics::register(&registry);
    let wmetrics = WorkerMetrics::register(&registry);
    let queue_depth = registry.gauge(
        "cloudpods_queue_depth",
        "Queue items by status.",
        &["status"],
    );
    let orphans = registry.gauge(
        "cloudpods_orphan_vms",
        "VMs with the CloudPods marker that no live cloud_pods row knows, by node.",
        &["node"],
    );
    let (trigger_tx, trigger_rx) = futures::channel::mpsc::unbounded();
    let ctx = Arc::new(Context {
        client: parts.client.clone(),
        pool: parts.pool.clone(),
        quotas: Quotas::new(parts.pool.clone(), parts.quota_defaults),
        settings: parts.controller.clone(),
        metrics: cmetrics,
        events: Events::new(parts.client.clone(), parts.worker.owner.clone()),
        trigger: trigger_tx,
        pods: tokio::sync::OnceCell::new(),
        kube_health: KubeHealth::default(),
    });
    let pods_api: Api<CloudPod> = match &parts.controller.namespace {
        Some(ns) => Api::namespaced(parts.client.clone(), ns),
        None => Api::all(parts.client.clone()),
    };
    let tq_api: Api<TenantQuota> = Api::all(parts.client.clone());
    let wc = controller::watcher_config(&parts.controller);
    let cconf = ControllerConfig::default().concurrency(parts.controller.concurrency);

    let worker = Worker::new(
        parts.pool.clone(),
        parts.pve,
        parts.nodes.clone(),
        parts.worker.clone(),
        wmetrics,
    );
    let worker_health = worker.health();
    let scan = worker.orphan_scan(orphans, parts.orphan_scan_interval);

    let mut tasks = tokio::task::JoinSet::new();
    let live = Live::new(stop_rx.clone());

    // CloudPod controller.
    let pod_ctrl = Controller::new(pods_api.clone(), wc.clone())
        .with_config(cconf.clone())
        .reconcile_on(trigger_rx)
        .graceful_shutdown_on(stopped(stop_rx.clone()));
    let _ = ctx.pods.set(pod_ctrl.store());
    {
        let ctx = ctx.clone();
        let store = pod_ctrl.store();
        let stop = stop_rx.clone();
        spawn_part(&mut tasks, &live, "CloudPod controller", async move {
            let run = pod_ctrl
                .run(
                    controller::cloudpod::reconcile,
                    controller::cloudpod::error_policy,
                    ctx.clone(),
                )
                .for_each(|r| {
                    if r.is_ok() {
                        ctx.kube_health.ok();
                    }
                    futures::future::ready(())
                });
            run_controller(run, store, stop).await;
        });
    }

    // TenantQuota controller, re-run when a tenant's pods change.
    let tq_ctrl = Controller::new(tq_api, wc.clone())
        .with_config(cconf)
        .watches(pods_api.clone(), wc, |cp: CloudPod| {
            Some(ObjectRef::<TenantQuota>::new(&cp.spec.tenant_id))
        })
        .graceful_shutdown_on(stopped(stop_rx.clone()));
    let tq_store = tq_ctrl.store();
    {
        let ctx = ctx.clone();
        let store = tq_store.clone();
        let stop = stop_rx.clone();
        spawn_part(&mut tasks, &live, "TenantQuota controller", async move {
            let run = tq_ctrl
                .run(
                    controller::tenant_quota::reconcile,
                    controller::tenant_quota::error_policy,
                    ctx,
                )
                .for_each(|_| futures::future::ready(()));
            run_controller(run, store, stop).await;
        });
    }
    if parts.controller.label_selector.is_none() {
        let prune =
            controller::tenant_quota::prune_loop(ctx.clone(), tq_store, Duration::from_secs(60));
        let part = until_stopped(prune, stop_rx.clone());
        spawn_part(&mut tasks, &live, "quota-row pruning", part);
    }

    // Rows whose CloudPod vanished without its cleanup.
    let sweep = controller::gc::sweep_loop(ctx.clone(), parts.controller.gc_interval);
    spawn_part(
        &mut tasks,
        &live,
        "row sweep",
        until_stopped(sweep, stop_rx.clone()),
    );

    // Finished jobs re-reconcile their pod at once.
    let listener = until_stopped(done_listener(ctx.clone()), stop_rx.clone());
    spawn_part(&mut tasks, &live, "finished-job listener", listener);

    // Worker pool.
    {
        let stop = stop_rx.clone();
        spawn_part(&mut tasks, &live, "worker pool", async move {
            worker.run(stopped(stop)).await
        });
    }

    // Orphan scan (a worker duty: it calls Proxmox).
    spawn_part(
        &mut tasks,
        &live,
        "orphan scan",
        until_stopped(scan, stop_rx.clone()),
    );

    // HTTP endpoint.
    let mut addr = None;
    if let Some(listen) = parts.listen {
        let health = Health {
            pool: parts.pool.clone(),
            pods: pods_api,
            worker: worker_health,
            kube: ctx.kube_health.clone(),
            worker_window: (parts.worker.poll_interval * 3).max(parts.worker.lease),
            registry,
            queue_depth,
            queue: Queue::new(parts.pool.clone()),
        };
        let app = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(health);
        let listener = tokio::net::TcpListener::bind(listen).await?;
        addr = Some(listener.local_addr()?);
        tracing::info!(addr = %listener.local_addr()?, "operator endpoint listening");
        let stop = stop_rx.clone();
        spawn_part(&mut tasks, &live, "HTTP endpoint", async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stopped(stop))
                .await
            {
                tracing::error!(error = %e, "operator endpoint failed");
            }
        });
    }

    let task = tokio::spawn(async move { while tasks.join_next().await.is_some() {} });
    Ok(Running {
        stop: stop_tx,
        task,
        addr,
        live,
    })
}

/// A finished queue item → reconcile its pod now. While the listener is disconnected the
/// controllers' own requeues cover.
async fn done_listener(ctx: Arc<Context>) {
    let mut done = DoneListener::new(ctx.pool.clone());
    loop {
        let pod_id = done.next().await;
        match crate::store::reconcile::pod_location(&ctx.pool, &pod_id).await {
            Ok(Some((ns, name))) => {
                let _ = ctx
                    .trigger
                    .unbounded_send(ObjectRef::<CloudPod>::new(&name).within(&ns));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "locating a finished job's pod failed"),
        }
    }
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    let db = crate::store::pods::ping(&h.pool).await.is_ok();
    let kube = h.kube.ok_within(Duration::from_secs(30))
        || tokio::time::timeout(
            Duration::from_secs(3),
            h.pods.list_metadata(&ListParams::default().limit(1)),
        )
        .await
        .is_ok_and(|r| r.is_ok());
    if kube {
        h.kube.ok();
    }
    let worker = h.worker.alive_within(h.worker_window);
    let body = format!("database: {db}\nkubernetes: {kube}\nworker: {worker}\n");
    let code = if db && kube && worker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

/// The queue depth is read at each scrape, so the gauge is never older than the answer.
async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    if let Ok(depth) = h.queue.depth().await {
        for (status, n) in depth {
            h.queue_depth.set(&[&status], n as f64);
        }
    }
    h.registry.response()
}

/// The endpoint of a standby replica: /healthz and /readyz answer 200 (a healthy standby is
/// ready, or a rolling update would wait for it forever), /metrics shows `cloudpods_leader 0`.
async fn serve_standby(listen: SocketAddr, registry: Registry) -> anyhow::Result<Running> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_rx2 = stop_rx.clone();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|| async { "standby: another replica leads\n" }),
        )
        .route(
            "/metrics",
            get(move || std::future::ready(registry.response())),
        );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "standby endpoint listening");
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stopped(stop_rx))
            .await
        {
            tracing::error!(error = %e, "standby endpoint failed");
        }
    });
    Ok(Running {
        stop: stop_tx,
        task,
        addr: Some(addr),
        live: Live::new(stop_rx2),
    })
}

/// Leaves the process at once: after lost leadership nothing may keep working, and a clean
/// shutdown could take longer than the lease allows.
fn exit_lost(lost: crate::leader::Lost) -> ! {
    tracing::error!(reason = %lost.0, "leadership lost: exiting so that no work continues");
    std::process::exit(1)
}

/// `cloudpods operator`.
pub async fn run(args: &crate::cli::OperatorArgs) -> anyhow::Result<()> {
    // One identity for the leader records and the queue leases this replica takes.
    let identity = crate::leader::holder_identity_for(args.pod_name.as_deref());
    let leader = args.leader_settings(&identity);
    if let Some(l) = &leader {
        anyhow::ensure!(
            l.lease >= Duration::from_secs(1),
            "--leader-election-lease must be at least 1s"
        );
        anyhow::ensure!(
            !l.retry.is_zero(),
            "--leader-election-retry must be more than 0"
        );
        anyhow::ensure!(!l.id.is_empty(), "--leader-election-id must not be empty");
    }
    let pool = crate::store::connect(&args.db).await?;
    crate::store::check_schema(&pool).await?;
    let client = crate::api::kube_client(args.kubeconfig.as_deref()).await?;
    let nodes_cfg = NodesConfig::load(&args.nodes_file)?;
    let registry = Registry::default();
    let leading = registry.gauge(
        "cloudpods_leader",
        "1 while this replica is the elected leader (runs controllers and workers), 0 on standby.",
        &[],
    );
    leading.set(&[], 0.0);
    let (pve, nodes) = ssh_driver(&nodes_cfg, &registry);

    // One shutdown future for the whole run: a SIGTERM during the election or the start-up
    // is not lost.
    let shutdown = crate::api::shutdown_signal();
    tokio::pin!(shutdown);

    let mut leadership = None;
    if let Some(settings) = &leader {
        let standby = serve_standby(args.listen, registry.clone()).await?;
        tokio::select! {
            l = crate::leader::acquire(&args.db.url, settings, Some(client.clone())) => {
                leadership = Some(l);
            }
            _ = &mut shutdown => {
                standby.stop().await;
                tracing::info!("standby stopped");
                return Ok(());
            }
        }
        standby.stop().await;
    }
    leading.set(&[], 1.0);

    let parts = Parts {
        client,
        pool,
        pve,
        nodes,
        quota_defaults: args.quota.limits(),
        controller: args.controller_settings(),
        worker: WorkerSettings {
            owner: identity,
            ..args.worker_settings()
        },
        listen: Some(args.listen),
        orphan_scan_interval: args.orphan_scan_interval,
        registry,
    };
    let running = start(parts).await?;
    {
        let lost = async {
            match leadership.as_mut() {
                Some(l) => l.lost().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(lost);
        tokio::select! {
            lost = &mut lost => exit_lost(lost),
            part = running.part_ended() => {
                // A controller, the worker pool or the endpoint died: exit, so the kubelet restarts
                // the process (and a standby can take over) instead of leading without working.
                tracing::error!(part, "exiting: a part of the operator stopped working");
                std::process::exit(1);
            }
            _ = &mut shutdown => {}
        }
        // Stop within --shutdown-timeout, watching the lease meanwhile. Leadership is released only
        // after every part stopped; if they do not stop in time, exit without releasing: the
        // successor then waits out the lease, so nothing overlaps.
        tokio::select! {
            lost = &mut lost => exit_lost(lost),
            stopped = tokio::time::timeout(args.shutdown_timeout, running.stop()) => {
                if stopped.is_err() {
                    tracing::error!(timeout_s = args.shutdown_timeout.as_secs(),
                        "in-flight work did not finish in time; exiting without releasing leadership");
                    std::process::exit(1);
                }
            }
        }
    }
    if let Some(l) = leadership {
        l.release().await;
    }
    tracing::info!("operator stopped");
    Ok(())
}
