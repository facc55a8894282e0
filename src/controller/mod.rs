//! The controllers: CloudPod (admission, the next queue action, status) and TenantQuota
//! (mirror limits, report usage, re-admit refused pods). Only they write CR status, with
//! server-side apply under the field manager `cloudpods-controller`.
//!
//! Triggers: the watches, a channel fed by the queue's `cloud_pod_queue_done` NOTIFY (a
//! finished job re-reconciles its pod at once), and requeues of refused pods when quota
//! frees up. Every reconcile also schedules its own next look, so lost notifications only
//! delay.

pub mod cloudpod;
mod events;
pub mod gc;
pub mod plan;
pub mod status;
pub mod tenant_quota;

use std::time::Duration;

use futures::channel::mpsc;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use sqlx::PgPool;
use tokio::sync::OnceCell;

use crate::crd::CloudPod;
use crate::metrics::{CounterVec, HistogramVec, Registry};
use crate::quota::Quotas;
use crate::store::StoreError;
use crate::telemetry::Heartbeat;

pub use events::Events;

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "cloudpods-controller";

/// Settings of the controllers.
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    /// Namespace to watch (None: all).
    pub namespace: Option<String>,
    /// Only resources with these labels (e.g. to shard, or to keep tests apart).
    pub label_selector: Option<String>,
    /// How often an active pod is compared with Proxmox.
    pub sync_interval: Duration,
    /// How long a failed pod waits before the next attempt.
    pub error_retry: Duration,
    /// How often a missing guest address is asked for again.
    pub address_retry: Duration,
    /// Look again after this long while a job runs (the job's end triggers sooner).
    pub pending_recheck: Duration,
    /// Look again at a refused pod after this long (quota changes trigger sooner).
    pub refused_recheck: Duration,
    /// Attempts of each queue item.
    pub max_attempts: i32,
    /// Reconciles at once per controller.
    pub concurrency: u16,
    /// How often live rows are checked for a vanished CloudPod (finalizer removed by hand).
    pub gc_interval: Duration,
}

impl Default for ControllerSettings {
    fn default() -> Self {
        ControllerSettings {
            namespace: None,
            label_selector: None,
            sync_interval: Duration::from_secs(300),
            error_retry: Duration::from_secs(60),
            address_retry: Duration::from_secs(10),
            pending_recheck: Duration::from_secs(60),
            refused_recheck: Duration::from_secs(600),
            max_attempts: 5,
            concurrency: 16,
            gc_interval: Duration::from_secs(60),
        }
    }
}

/// Controller metrics.
#[derive(Clone, Debug)]
pub struct ControllerMetrics {
    /// Reconciles by controller and result.
    pub reconciles: CounterVec,
    /// Failed reconciles by controller and reason.
    pub errors: CounterVec,
    /// Reconcile durations by controller.
    pub duration: HistogramVec,
    /// Writes to the Kubernetes API by kind (status, finalizer, event).
    pub kube_writes: CounterVec,
}

impl ControllerMetrics {
    /// Registers the controller metrics.
    pub fn register(registry: &Registry) -> Self {
        ControllerMetrics {
            reconciles: registry.counter(
                "cloudpods_reconcile_total",
                "Reconciles by controller and result.",
                &["controller", "result"],
            ),
            errors: registry.counter(
                "cloudpods_reconcile_errors_total",
                "Failed reconciles by controller and reason.",
                &["controller", "reason"],
            ),
            duration: registry.histogram(
                "cloudpods_reconcile_duration_seconds",
                "Reconcile durations by controller.",
                &["controller"],
                crate::metrics::LATENCY_BUCKETS,
            ),
            kube_writes: registry.counter(
                "cloudpods_kube_writes_total",
                "Writes to the Kubernetes API by kind (cloudpod_status, tenantquota_status, finalizer, event).",
                &["kind"],
            ),
        }
    }
}

/// Errors of a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A database statement failed.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// A Kubernetes call failed.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// The object lacks something Kubernetes always sets (uid, namespace).
    #[error("the object is missing {0}")]
    Malformed(&'static str),
}

impl Error {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Store(_) => "database",
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(_) => "kubernetes",
            Error::Malformed(_) => "malformed",
        }
    }
}

/// Liveness of the Kubernetes side, for /readyz.
#[derive(Clone, Debug, Default)]
pub struct KubeHealth(Heartbeat);

impl KubeHealth {
    /// Records a successful Kubernetes call.
    pub fn ok(&self) {
        self.0.beat();
    }

    /// True when a Kubernetes call succeeded within `within`.
    pub fn ok_within(&self, within: Duration) -> bool {
        self.0.beat_within(within)
    }
}

/// Shared state of the controllers.
pub struct Context {
    /// Kubernetes client.
    pub client: kube::Client,
    /// Database.
    pub pool: PgPool,
    /// Quota rules.
    pub quotas: Quotas,
    /// Settings.
    pub settings: ControllerSettings,
    /// Metrics.
    pub metrics: ControllerMetrics,
    /// Event publisher.
    pub events: Events,
    /// Triggers a CloudPod reconcile.
    pub trigger: mpsc::UnboundedSender<ObjectRef<CloudPod>>,
    /// The CloudPod controller's cache (set once it runs).
    pub pods: OnceCell<Store<CloudPod>>,
    /// Kubernetes liveness.
    pub kube_health: KubeHealth,
}

impl Context {
    /// Re-reconciles every cached CloudPod of `tenant` that has no admitted row yet (quota
    /// was refused): limits rose or pods went away.
    pub fn requeue_refused(&self, tenant: &str) {
        let Some(store) = self.pods.get() else { return };
        let mut n = 0;
        for cp in store.state() {
            if cp.spec.tenant_id != tenant {
                continue;
            }
            let refused = cp.status.as_ref().is_some_and(|s| {
                s.pod_id.is_none()
                    || s.conditions
                        .iter()
                        .any(|c| c.type_ == status::QUOTA_ADMITTED && c.status == "False")
            });
            if refused {
                let _ = self
                    .trigger
                    .unbounded_send(ObjectRef::from_obj(cp.as_ref()));
                n += 1;
            }
        }
        if n > 0 {
            tracing::info!(tenantId = tenant, pods = n, "re-admitting refused pods");
        }
    }

    /// Counts one Kubernetes write.
    pub fn wrote(&self, kind: &str) {
        self.metrics.kube_writes.inc(&[kind]);
        self.kube_health.ok();
    }

    /// Applies `status` to the object `name` (server-side apply under [`FIELD_MANAGER`],
    /// counted as a `kind` write); false when the object is gone.
    async fn apply_status<K>(
        &self,
        api: &Api<K>,
        name: &str,
        status: &impl serde::Serialize,
        kind: &str,
    ) -> Result<bool, Error>
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let body = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch_status(name, &params, &Patch::Apply(&body)).await {
            Ok(_) => {
                self.wrote(kind);
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs one reconcile of `controller`, recording its duration and result.
    async fn measured(
        &self,
        controller: &'static str,
        run: impl Future<Output = Result<Action, Error>>,
    ) -> Result<Action, Error> {
        let started = std::time::Instant::now();
        let result = run.await;
        self.metrics
            .duration
            .observe(&[controller], started.elapsed().as_secs_f64());
        self.metrics
            .reconciles
            .inc(&[controller, if result.is_ok() { "ok" } else { "error" }]);
        result
    }
}

/// `watcher::Config` with the configured label selector.
pub fn watcher_config(settings: &ControllerSettings) -> kube::runtime::watcher::Config {
    let mut wc = kube::runtime::watcher::Config::default().any_semantic();
    if let Some(sel) = &settings.label_selector {
        wc = wc.labels(sel);
    }
    wc
}
