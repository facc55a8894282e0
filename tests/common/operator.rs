//! An in-process operator for one test: its own database, its own sshd with simulated nodes
//! `pve1` and `pve2`, its own namespace, and a label that keeps other tests' TenantQuotas
//! out of its watches. Fast pacing (short leases, quick retries) so tests wait on seconds.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cloudpods::controller::ControllerSettings;
use cloudpods::crd::{CloudPod, CloudPodSpec, TenantQuota, TenantQuotaSpec};
use cloudpods::metrics::Registry;
use cloudpods::operator::{self, Parts, Running};
use cloudpods::proxmox::driver::{DriverSettings, SshProxmox};
use cloudpods::proxmox::ssh::SshNode;
use cloudpods::proxmox::{NodeName, RemoteDir};
use cloudpods::queue::Backoff;
use cloudpods::quota::QuotaLimits;
use cloudpods::worker::{Placement, WorkerSettings};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::Value;
use sqlx::PgPool;

use super::db::{TestDb, migrated_db};
use super::kube::{ensure_crds, unique_namespace};
use super::ssh::PrivateSshd;

/// The label every object of one test carries (value: the test's id).
pub const TEST_LABEL: &str = "cloudpods-test";

fn crds_once() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(ensure_crds);
}

/// Driver settings for tests: quick polls, short retries, room for slow clones.
pub fn fast_driver() -> DriverSettings {
    DriverSettings {
        job_deadline: Duration::from_secs(120),
        ..super::proxmox::fast_settings()
    }
}

/// Worker settings for tests.
pub fn fast_worker() -> WorkerSettings {
    WorkerSettings {
        concurrency: 16,
        lease: Duration::from_secs(5),
        poll_interval: Duration::from_millis(300),
        backoff: Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        },
        max_attempts: 5,
        max_tasks_per_node: 4,
        placement: Placement::Spread,
        agent_wait: Duration::from_secs(10),
        agent_poll: Duration::from_millis(100),
        shutdown_timeout: Duration::from_secs(5),
        ..WorkerSettings::default()
    }
}

/// A test's operator and everything around it.
pub struct OpEnv {
    /// The database (dropped with the env).
    pub pool: PgPool,
    _db: TestDb,
    /// The sshd + simulated nodes.
    pub sshd: PrivateSshd,
    /// The driver (the same nodes the operator uses).
    pub pve: SshProxmox,
    /// The test's namespace.
    pub ns: String,
    /// The test's label value.
    pub id: String,
    /// Kubernetes client.
    pub client: kube::Client,
    /// CloudPods in the namespace.
    pub pods: Api<CloudPod>,
    running: Option<Running>,
    /// The operator's /metrics and /readyz address.
    pub addr: std::net::SocketAddr,
    /// The operator's metrics.
    pub registry: Registry,
}

/// Options of [`OpEnv::start_with`].
pub struct Options {
    /// Controller settings (namespace and label are filled in).
    pub controller: ControllerSettings,
    /// Worker settings.
    pub worker: WorkerSettings,
    /// Quota defaults.
    pub defaults: QuotaLimits,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            controller: ControllerSettings {
                sync_interval: Duration::from_secs(30),
                error_retry: Duration::from_secs(2),
                address_retry: Duration::from_secs(1),
                pending_recheck: Duration::from_secs(10),
                refused_recheck: Duration::from_secs(30),
                gc_interval: Duration::from_secs(2),
                ..ControllerSettings::default()
            },
            worker: fast_worker(),
            defaults: QuotaLimits::default(),
        }
    }
}

/// The node state directory of `node` as its sshd user sees it (`$PVE_SIM_STATE`).
pub async fn state_dir(ssh: &SshNode) -> String {
    ssh.exec(
        "printf %s \"$PVE_SIM_STATE\"",
        None,
        Duration::from_secs(20),
    )
    .await
    .expect("read PVE_SIM_STATE")
    .stdout_lossy()
}

impl OpEnv {
    /// Starts with the default options.
    pub async fn start() -> OpEnv {
        Self::start_with(Options::default()).await
    }

    /// Starts an operator with `opts`.
    pub async fn start_with(opts: Options) -> OpEnv {
        crds_once();
        let filter = std::env::var("CLOUDPODS_TEST_LOG").unwrap_or_else(|_| "warn".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
        let (pool, db) = migrated_db().await;
        let ns = unique_namespace("op");
        let id = ns.clone();
        let sshd = PrivateSshd::start(&["pve1", "pve2"]);
        let registry = Registry::default();
        let mut pve = SshProxmox::new(operator::with_ssh_metrics(fast_driver(), &registry));
        for n in ["pve1", "pve2"] {
            let ssh = SshNode::new(sshd.settings(n));
            let dir = RemoteDir::parse(&state_dir(&ssh).await).expect("state dir");
            pve = pve.with_node_in(NodeName::parse(n).unwrap(), ssh, dir);
        }
        let nodes: Vec<NodeName> = pve.node_names().into_iter().cloned().collect();
        let client = super::api::kube_client().await;
        let mut controller = opts.controller;
        controller.namespace = Some(ns.clone());
        controller.label_selector = Some(format!("{TEST_LABEL}={id}"));
        let parts = Parts {
            client: client.clone(),
            pool: pool.clone(),
            pve: pve.clone(),
            nodes,
            quota_defaults: opts.defaults,
            controller,
            worker: opts.worker,
            listen: Some("127.0.0.1:0".parse().unwrap()),
            orphan_scan_interval: Duration::from_secs(2),
            registry: registry.clone(),
        };
        let running = operator::start(parts).await.expect("operator starts");
        let addr = running.addr.expect("endpoint");
        OpEnv {
            pods: Api::namespaced(client.clone(), &ns),
            pool,
            _db: db,
            sshd,
            pve,
            ns,
            id,
            client,
            running: Some(running),
            addr,
            registry,
        }
    }

    /// Stops the operator (graceful).
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }

    /// A CloudPod spec for `tenant` on `plan` (blueprint ubuntu-24-minimal), labelled.
    pub fn cloudpod(&self, name: &str, tenant: &str, plan: &str) -> CloudPod {
        let mut cp = CloudPod::new(name, CloudPodSpec::new(tenant, plan, "ubuntu-24-minimal"));
        cp.metadata.namespace = Some(self.ns.clone());
        cp.metadata.labels = Some([(TEST_LABEL.to_string(), self.id.clone())].into());
        cp
    }

    /// Creates a CloudPod.
    pub async fn create(&self, cp: &CloudPod) -> CloudPod {
        self.pods
            .create(&PostParams::default(), cp)
            .await
            .expect("create CloudPod")
    }

    /// Deletes a CloudPod (returns at once; the finalizer holds it until the VM is gone).
    pub async fn delete(&self, name: &str) {
        let _ = self.pods.delete(name, &DeleteParams::default()).await;
    }

    /// Applies a labelled TenantQuota (cluster-scoped, named after the tenant).
    pub async fn set_quota(&self, tenant: &str, pods: i32, cores: i32, mem: i64, disk: i64) {
        let api: Api<TenantQuota> = Api::all(self.client.clone());
        let mut tq = TenantQuota::new(
            tenant,
            TenantQuotaSpec {
                max_pods: pods,
                max_cpu_cores: cores,
                max_memory_mb: mem,
                max_disk_gb: disk,
            },
        );
        tq.metadata.labels = Some([(TEST_LABEL.to_string(), self.id.clone())].into());
        let body = serde_json::to_value(&tq).unwrap();
        api.patch(
            tenant,
            &kube::api::PatchParams::apply("cloudpods-test").force(),
            &kube::api::Patch::Apply(&body),
        )
        .await
        .expect("apply TenantQuota");
    }

    /// Polls `name` until `pred` holds, or panics after `within` with the last state.
    pub async fn wait_pod(
        &self,
        name: &str,
        within: Duration,
        what: &str,
        pred: impl Fn(&CloudPod) -> bool,
    ) -> CloudPod {
        let deadline = Instant::now() + within;
        loop {
            let got = self.pods.get_opt(name).await.expect("get CloudPod");
            if let Some(cp) = &got
                && pred(cp)
            {
                return cp.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "{name}: not {what} after {within:?}; last: {}",
                    serde_json::to_string_pretty(&got.map(|c| c.status)).unwrap()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the CloudPod is gone.
    pub async fn wait_gone(&self, name: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while self.pods.get_opt(name).await.expect("get").is_some() {
            assert!(
                Instant::now() < deadline,
                "{name} still exists after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The operator's /metrics text.
    pub async fn metrics(&self) -> String {
        http_get(self.addr, "/metrics").await.1
    }

    /// Every VM on `node` in the simulator (`pve-sim show`): vmid → the VM's JSON.
    pub async fn node_vms(&self, node: &str) -> serde_json::Map<String, Value> {
        let ssh = self.pve.ssh(&NodeName::parse(node).unwrap()).unwrap();
        let out = ssh
            .exec("pve-sim show", None, Duration::from_secs(20))
            .await
            .expect("pve-sim show");
        let v: Value = serde_json::from_str(&out.stdout_lossy()).expect("show json");
        v["vms"].as_object().cloned().unwrap_or_default()
    }
}

impl Drop for OpEnv {
    /// Best effort: the operator is dropped first, before the database and the sshd it uses;
    /// the runtime ends with the test.
    fn drop(&mut self) {
        self.running.take();
    }
}

/// A plain HTTP/1.1 GET on loopback: (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The condition `type_` of a CloudPod: (status, reason).
pub fn condition(cp: &CloudPod, type_: &str) -> Option<(String, String)> {
    cp.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}
