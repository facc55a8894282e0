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
use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::controller::{self, Context, ControllerMetrics, ControllerSettings, Events, KubeHealth};
use crate::crd::{CloudPod, TenantQuota};
use crate::metrics::{GaugeVec, Registry};
use crate::proxmox::driver::{CommandObserver, DriverSettings};
use crate::proxmox::{NodeName, Proxmox};
use crate::queue::Queue;
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
}

impl Running {
    /// Signals shutdown and waits for every part to finish.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
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

    // CloudPod controller.
    let pod_ctrl = Controller::new(pods_api.clone(), wc.clone())
        .with_config(cconf.clone())
        .reconcile_on(trigger_rx)
        .graceful_shutdown_on(stopped(stop_rx.clone()));
    let _ = ctx.pods.set(pod_ctrl.store());
    {
        let ctx = ctx.clone();
        tasks.spawn(async move {
            pod_ctrl
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
                })
                .await;
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
        tasks.spawn(async move {
            tq_ctrl
                .run(
                    controller::tenant_quota::reconcile,
                    controller::tenant_quota::error_policy,
                    ctx,
                )
                .for_each(|_| futures::future::ready(()))
                .await;
        });
    }
    if parts.controller.label_selector.is_none() {
        let ctx = ctx.clone();
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = controller::tenant_quota::prune_loop(ctx, tq_store, Duration::from_secs(60)) => {}
                _ = stopped(stop) => {}
            }
        });
    }

    // Rows whose CloudPod vanished without its cleanup.
    {
        let ctx = ctx.clone();
        let stop = stop_rx.clone();
        let every = parts.controller.gc_interval;
        tasks.spawn(async move {
            tokio::select! {
                _ = controller::gc::sweep_loop(ctx, every) => {}
                _ = stopped(stop) => {}
            }
        });
    }

    // Finished jobs re-reconcile their pod at once.
    {
        let ctx = ctx.clone();
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = done_listener(ctx) => {}
                _ = stopped(stop) => {}
            }
        });
    }

    // Worker pool.
    {
        let stop = stop_rx.clone();
        tasks.spawn(async move { worker.run(stopped(stop)).await });
    }

    // Orphan scan (a worker duty: it calls Proxmox).
    {
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = scan => {}
                _ = stopped(stop) => {}
            }
        });
    }

    // Queue depth gauge.
    let queue = Queue::new(parts.pool.clone());
    {
        let queue = queue.clone();
        let gauge = queue_depth.clone();
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            let sample = async {
                loop {
                    if let Ok(depth) = queue.depth().await {
                        for (status, n) in depth {
                            gauge.set(&[&status], n as f64);
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            };
            tokio::select! {
                _ = sample => {}
                _ = stopped(stop) => {}
            }
        });
    }

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
            queue,
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
        tasks.spawn(async move {
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
    })
}

/// LISTEN `cloud_pod_queue_done` → reconcile that pod now. Reconnects after errors; while
/// disconnected the controllers' own requeues cover.
async fn done_listener(ctx: Arc<Context>) {
    loop {
        let mut listener = match PgListener::connect_with(&ctx.pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for finished jobs; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen("cloud_pod_queue_done").await {
            tracing::warn!(error = %e, "LISTEN cloud_pod_queue_done failed; retrying");
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        loop {
            match listener.recv().await {
                Ok(n) => {
                    let pod_id = n.payload().to_string();
                    match crate::store::reconcile::pod_location(&ctx.pool, &pod_id).await {
                        Ok(Some((ns, name))) => {
                            let _ = ctx
                                .trigger
                                .unbounded_send(ObjectRef::<CloudPod>::new(&name).within(&ns));
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "locating a finished job's pod failed")
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "finished-job listener lost; reconnecting");
                    break;
                }
            }
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

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    if let Ok(depth) = h.queue.depth().await {
        for (status, n) in depth {
            h.queue_depth.set(&[&status], n as f64);
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        h.registry.render(),
    )
}

/// `cloudpods operator`.
pub async fn run(args: &crate::cli::OperatorArgs) -> anyhow::Result<()> {
    let pool = crate::store::connect(&args.db).await?;
    crate::store::check_schema(&pool).await?;
    let client = crate::api::kube_client(args.kubeconfig.as_deref()).await?;
    let nodes_cfg = crate::proxmox::config::NodesConfig::load(&args.nodes_file)?;
    let registry = Registry::default();
    let pve = nodes_cfg.driver(with_ssh_metrics(driver_settings(), &registry));
    let nodes: Vec<NodeName> = pve.node_names().into_iter().cloned().collect();
    let parts = Parts {
        client,
        pool,
        pve,
        nodes,
        quota_defaults: args.quota.limits(),
        controller: args.controller_settings(),
        worker: args.worker_settings(),
        listen: Some(args.listen),
        orphan_scan_interval: args.orphan_scan_interval,
        registry,
    };
    let running = start(parts).await?;
    crate::api::shutdown_signal().await;
    running.stop().await;
    tracing::info!("operator stopped");
    Ok(())
}
