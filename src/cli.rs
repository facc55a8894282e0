//! Command line and settings: the one place that reads the environment.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// CloudPods: Proxmox VE virtual machines for hosting customers, driven by Kubernetes resources.
#[derive(Parser, Debug)]
#[command(name = "cloudpods", version, about, long_about = None)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "cloudpods=debug,kube=warn".
    #[arg(long, env = "CLOUDPODS_LOG", default_value = "info", global = true)]
    pub log: String,

    /// Log format: "text" for people, "json" for log pipelines.
    #[arg(long, env = "CLOUDPODS_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    pub log_format: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write the CustomResourceDefinitions generated from the Rust types as YAML files.
    Crdgen(CrdgenArgs),
    /// Apply the database migrations and upsert the plan and blueprint catalog (safe to re-run).
    Migrate(MigrateArgs),
    /// Measure `qm status` throughput over one pooled SSH connection vs a connection per command.
    BenchSsh(BenchSshArgs),
    /// Serve the mPanel REST API (/api/cloud-pods/*): validates, authenticates, checks quota, writes CRs.
    Api(ApiArgs),
    /// Print a signed bearer token for the API (development, sandboxes and benchmarks).
    Token(TokenArgs),
    /// Run the operator: CloudPod and TenantQuota controllers, the worker pool, /healthz /readyz /metrics.
    // Boxed: by far the largest argument set.
    Operator(Box<OperatorArgs>),
    /// Open-loop load test of the API: p50/p90/p99 latency and throughput at fixed request rates.
    BenchApi(BenchApiArgs),
    /// Time N CloudPods to Active on simulated nodes (pve-sim), against the lower bound; API writes per pod.
    BenchOperator(BenchOperatorArgs),
    /// A local sandbox: test environment, operator, API and sample CloudPods, until Ctrl-C (needs root).
    Dev(DevArgs),
}

/// Arguments of `cloudpods bench-api`.
#[derive(Args)]
pub struct BenchApiArgs {
    /// Base URL of the API.
    #[arg(
        long,
        env = "CLOUDPODS_BENCH_API_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,

    /// Bearer token (see `cloudpods token`). Never printed.
    #[arg(long, env = "CLOUDPODS_BENCH_API_TOKEN", hide_env_values = true)]
    pub token: String,

    /// Request rates per second, one step each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "50,200,500")]
    pub rates: Vec<u32>,

    /// Length of each step.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Scenarios: list, detail, order (order creates real pods and uses quota).
    #[arg(long, value_delimiter = ',', default_value = "list,detail")]
    pub scenarios: Vec<crate::bench_api::Scenario>,

    /// Outstanding requests at most; beyond it a request is counted as dropped.
    #[arg(long, default_value_t = 512)]
    pub max_in_flight: usize,

    /// Timeout of one request.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Print the results as JSON on stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
}

impl std::fmt::Debug for BenchApiArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchApiArgs")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("rates", &self.rates)
            .field("duration", &self.duration)
            .field("scenarios", &self.scenarios)
            .finish_non_exhaustive()
    }
}

/// Arguments of `cloudpods bench-operator`.
#[derive(Args, Debug)]
pub struct BenchOperatorArgs {
    /// Database settings (a migrated database).
    #[command(flatten)]
    pub db: DatabaseArgs,

    /// kubeconfig file; without it the in-cluster service account (or ~/.kube/config) is used.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// The nodes file; every node must be a pve-sim node (its faults.json is rewritten).
    #[arg(long, env = "CLOUDPODS_NODES_FILE")]
    pub nodes_file: PathBuf,

    /// Namespace the bench's CloudPods are created in.
    #[arg(
        long,
        env = "CLOUDPODS_BENCH_NAMESPACE",
        default_value = "cloudpods-bench"
    )]
    pub namespace: String,

    /// CloudPods applied together per run.
    #[arg(long, env = "CLOUDPODS_BENCH_PODS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub pods: u32,

    /// Plan of every pod.
    #[arg(long, env = "CLOUDPODS_BENCH_PLAN", default_value = "student")]
    pub plan: String,

    /// Latency profiles, one run each: zero, realistic (clone 3 s, start 1 s, agent IP 2 s, 3 tasks per node).
    #[arg(
        long,
        env = "CLOUDPODS_BENCH_PROFILES",
        value_delimiter = ',',
        default_value = "zero,realistic"
    )]
    pub profiles: Vec<crate::bench_operator::ProfileName>,

    /// Longest wait for all pods to be Ready (and, separately, to be deleted) per run.
    #[arg(long, env = "CLOUDPODS_BENCH_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Print the results as JSON on stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `cloudpods dev`.
#[derive(Args, Debug)]
pub struct DevArgs {
    /// Where the sandbox keeps its runs (one directory each, the last few kept), its JWT secret and its lock.
    #[arg(
        long,
        env = "CLOUDPODS_DEV_STATE_DIR",
        default_value = "/var/lib/cloudpods/dev"
    )]
    pub state_dir: PathBuf,

    /// The CloudPods repository (its testenv/ scripts start the environment).
    #[arg(long, env = "CLOUDPODS_REPO_ROOT", default_value = ".")]
    pub repo_root: PathBuf,

    /// The pve-sim binary (default: `pve-sim` beside this binary; `cargo build -p pve-sim`).
    #[arg(long, env = "CLOUDPODS_PVE_SIM_BIN")]
    pub pve_sim_bin: Option<PathBuf>,

    /// Address of the REST API (port 0: any free port; the real address is printed).
    #[arg(
        long,
        env = "CLOUDPODS_DEV_API_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub api_listen: std::net::SocketAddr,

    /// Address of the operator's /healthz, /readyz and /metrics (port 0: any free port).
    #[arg(
        long,
        env = "CLOUDPODS_DEV_OPERATOR_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    pub operator_listen: std::net::SocketAddr,

    /// Longest wait for the sample CloudPods to become Active.
    #[arg(long, env = "CLOUDPODS_DEV_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Stop everything and exit 0 once every sample is Active (non-zero on timeout); for CI.
    #[arg(long, alias = "once")]
    pub exit_when_active: bool,
}

/// Kubernetes connection settings.
#[derive(Args, Debug, Clone)]
pub struct KubeArgs {
    /// kubeconfig file; without it the in-cluster service account (or ~/.kube/config) is used.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Namespace the API creates CloudPods in.
    #[arg(long, env = "CLOUDPODS_NAMESPACE", default_value = "cloudpods")]
    pub namespace: String,
}

/// Quota defaults for tenants without a TenantQuota (the seed's 2 / 4 / 8192 / 200).
#[derive(Args, Debug, Clone, Copy)]
pub struct QuotaDefaultArgs {
    /// Default maximum live pods per tenant.
    #[arg(long, env = "CLOUDPODS_DEFAULT_MAX_PODS", default_value_t = 2)]
    pub default_max_pods: i64,
    /// Default maximum vCPU cores per tenant.
    #[arg(long, env = "CLOUDPODS_DEFAULT_MAX_CPU_CORES", default_value_t = 4)]
    pub default_max_cpu_cores: i64,
    /// Default maximum memory (MiB) per tenant.
    #[arg(long, env = "CLOUDPODS_DEFAULT_MAX_MEMORY_MB", default_value_t = 8192)]
    pub default_max_memory_mb: i64,
    /// Default maximum disk (GiB) per tenant.
    #[arg(long, env = "CLOUDPODS_DEFAULT_MAX_DISK_GB", default_value_t = 200)]
    pub default_max_disk_gb: i64,
}

impl QuotaDefaultArgs {
    /// As quota limits.
    pub fn limits(&self) -> crate::quota::QuotaLimits {
        crate::quota::QuotaLimits {
            max_pods: self.default_max_pods,
            max_cpu_cores: self.default_max_cpu_cores,
            max_memory_mb: self.default_max_memory_mb,
            max_disk_gb: self.default_max_disk_gb,
        }
    }
}

/// How bearer tokens are verified.
#[derive(Args, Debug, Clone)]
pub struct JwtArgs {
    /// The only accepted signing algorithm: HS256, RS256 or ES256 (the token's own `alg` is never trusted).
    #[arg(long, env = "CLOUDPODS_JWT_ALGORITHM", default_value = "HS256")]
    pub jwt_algorithm: String,

    /// HS256: file holding the shared secret (at least 32 bytes); RS256/ES256: the PEM public key. Never logged.
    #[arg(long, env = "CLOUDPODS_JWT_KEY_FILE")]
    pub jwt_key_file: PathBuf,

    /// Required `iss` claim.
    #[arg(long, env = "CLOUDPODS_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim.
    #[arg(long, env = "CLOUDPODS_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock-skew allowance for `exp`/`nbf`, in seconds.
    #[arg(long, env = "CLOUDPODS_JWT_LEEWAY_SECONDS", default_value_t = 30)]
    pub jwt_leeway_seconds: u64,
}

/// Arguments of `cloudpods api`.
#[derive(Args, Debug)]
pub struct ApiArgs {
    /// Address to listen on.
    #[arg(long, env = "CLOUDPODS_API_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: std::net::SocketAddr,

    /// Database settings.
    #[command(flatten)]
    pub db: DatabaseArgs,

    /// Kubernetes settings.
    #[command(flatten)]
    pub kube: KubeArgs,

    /// Token verification.
    #[command(flatten)]
    pub jwt: JwtArgs,

    /// Quota defaults.
    #[command(flatten)]
    pub quota: QuotaDefaultArgs,

    /// An order's reservation whose CloudPod was never written is released after this long.
    #[arg(long, env = "CLOUDPODS_RESERVATION_TTL", default_value = "5m", value_parser = parse_duration)]
    pub reservation_ttl: Duration,

    /// How often stale reservations are looked for.
    #[arg(long, env = "CLOUDPODS_RESERVATION_SWEEP_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub reservation_sweep_interval: Duration,
}

/// Arguments of `cloudpods operator`.
#[derive(Args, Debug)]
pub struct OperatorArgs {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "CLOUDPODS_OPERATOR_LISTEN",
        default_value = "0.0.0.0:8081"
    )]
    pub listen: std::net::SocketAddr,
    /// Database settings.
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// kubeconfig file; without it the in-cluster service account (or ~/.kube/config) is used.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Watch CloudPods in this namespace only (default: all namespaces).
    #[arg(long = "watch-namespace", env = "CLOUDPODS_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Only CloudPods and TenantQuotas with these labels (e.g. `shard=a`). Disables pruning of quota rows.
    #[arg(long, env = "CLOUDPODS_LABEL_SELECTOR")]
    pub label_selector: Option<String>,
    /// The Proxmox nodes file (see config/nodes.example.yaml).
    #[arg(long, env = "CLOUDPODS_NODES_FILE")]
    pub nodes_file: PathBuf,
    /// Quota defaults.
    #[command(flatten)]
    pub quota: QuotaDefaultArgs,
    /// Queue items handled at once by this process.
    #[arg(long, env = "CLOUDPODS_WORKERS", default_value_t = 32)]
    pub workers: usize,
    /// Lease of a claimed queue item (renewed every third while it runs).
    #[arg(long, env = "CLOUDPODS_LEASE", default_value = "60s", value_parser = parse_duration)]
    pub lease: Duration,
    /// Longest pause between claim attempts when no notification arrives.
    #[arg(long, env = "CLOUDPODS_POLL_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Attempts per queue item before it fails for good.
    #[arg(long, env = "CLOUDPODS_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: i32,
    /// First retry delay (doubles each attempt, with jitter).
    #[arg(long, env = "CLOUDPODS_RETRY_BASE", default_value = "2s", value_parser = parse_duration)]
    pub retry_base: Duration,
    /// Longest retry delay.
    #[arg(long, env = "CLOUDPODS_RETRY_MAX", default_value = "120s", value_parser = parse_duration)]
    pub retry_max: Duration,
    /// Long Proxmox tasks (clone, start, stop, backup) at once per node.
    #[arg(long, env = "CLOUDPODS_MAX_TASKS_PER_NODE", default_value_t = 4)]
    pub max_tasks_per_node: usize,
    /// Where new VMs go: the blueprint's node, or spread over all nodes (each must hold the template).
    #[arg(
        long,
        env = "CLOUDPODS_PLACEMENT",
        value_enum,
        default_value = "blueprint-node"
    )]
    pub placement: crate::worker::Placement,
    /// How long a create waits for the guest agent's address.
    #[arg(long, env = "CLOUDPODS_AGENT_WAIT", default_value = "120s", value_parser = parse_duration)]
    pub agent_wait: Duration,
    /// Storage that receives backups.
    #[arg(long, env = "CLOUDPODS_BACKUP_STORAGE", default_value = "local")]
    pub backup_storage: String,
    /// How often an active pod is compared with its VM (drift).
    #[arg(long, env = "CLOUDPODS_SYNC_INTERVAL", default_value = "300s", value_parser = parse_duration)]
    pub sync_interval: Duration,
    /// How long a failed pod waits before the next attempt (a spec change retries at once).
    #[arg(long, env = "CLOUDPODS_ERROR_RETRY", default_value = "60s", value_parser = parse_duration)]
    pub error_retry: Duration,
    /// How often VMs with the CloudPods marker are checked against cloud_pods.
    #[arg(long, env = "CLOUDPODS_ORPHAN_SCAN_INTERVAL", default_value = "300s", value_parser = parse_duration)]
    pub orphan_scan_interval: Duration,
    /// Reconciles at once per controller.
    #[arg(long, env = "CLOUDPODS_RECONCILE_CONCURRENCY", default_value_t = 16)]
    pub reconcile_concurrency: u16,
    /// How often live pods are checked for a CloudPod that vanished without its cleanup.
    #[arg(long, env = "CLOUDPODS_GC_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub gc_interval: Duration,
    /// Leader election: only the replica holding the PostgreSQL advisory lock (on a dedicated
    /// connection) runs controllers and workers; the others wait as standby.
    #[arg(long, env = "CLOUDPODS_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the election: replicas with the same id compete (also the Lease's name).
    #[arg(
        long,
        env = "CLOUDPODS_LEADER_ELECTION_ID",
        default_value = "cloudpods-operator"
    )]
    pub leader_election_id: String,
    /// The leader's lease: a dead leader keeps standbys waiting at most this long.
    #[arg(long, env = "CLOUDPODS_LEADER_ELECTION_LEASE", default_value = "15s", value_parser = parse_duration)]
    pub leader_election_lease: Duration,
    /// How often a standby tries to take over.
    #[arg(long, env = "CLOUDPODS_LEADER_ELECTION_RETRY", default_value = "1s", value_parser = parse_duration)]
    pub leader_election_retry: Duration,
    /// Longest graceful shutdown (in-flight jobs finish, then leadership is released); past
    /// it the process exits without releasing, and the successor waits out the lease.
    #[arg(long, env = "CLOUDPODS_SHUTDOWN_TIMEOUT", default_value = "45s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Also hold a coordination.k8s.io Lease (named after the election id) in this namespace.
    #[arg(long, env = "CLOUDPODS_LEADER_LEASE_NAMESPACE")]
    pub leader_lease_namespace: Option<String>,
    /// This replica's name in leader records and queue leases (default: the host name); the
    /// chart passes the pod's name.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
}

impl OperatorArgs {
    /// The controller settings these flags describe.
    pub fn controller_settings(&self) -> crate::controller::ControllerSettings {
        crate::controller::ControllerSettings {
            namespace: self.watch_namespace.clone(),
            label_selector: self.label_selector.clone(),
            sync_interval: self.sync_interval,
            error_retry: self.error_retry,
            max_attempts: self.max_attempts,
            concurrency: self.reconcile_concurrency,
            gc_interval: self.gc_interval,
            ..crate::controller::ControllerSettings::default()
        }
    }

    /// The leader-election settings these flags describe for the replica `holder` (None:
    /// election off).
    pub fn leader_settings(&self, holder: &str) -> Option<crate::leader::LeaderSettings> {
        self.leader_election.then(|| {
            crate::leader::LeaderSettings::new(
                &self.leader_election_id,
                holder.to_string(),
                self.leader_election_lease,
                self.leader_election_retry,
                self.leader_lease_namespace.clone(),
            )
        })
    }

    /// The worker settings these flags describe.
    pub fn worker_settings(&self) -> crate::worker::WorkerSettings {
        crate::worker::WorkerSettings {
            concurrency: self.workers,
            lease: self.lease,
            poll_interval: self.poll_interval,
            backoff: crate::queue::Backoff {
                base: self.retry_base,
                max: self.retry_max,
            },
            max_attempts: self.max_attempts,
            max_tasks_per_node: self.max_tasks_per_node,
            placement: self.placement,
            agent_wait: self.agent_wait,
            backup_storage: self.backup_storage.clone(),
            ..crate::worker::WorkerSettings::default()
        }
    }
}

/// Arguments of `cloudpods token`.
#[derive(Args, Debug)]
pub struct TokenArgs {
    /// Signing algorithm: HS256, RS256 or ES256.
    #[arg(long, env = "CLOUDPODS_JWT_ALGORITHM", default_value = "HS256")]
    pub algorithm: String,

    /// HS256: the shared secret file; RS256/ES256: the PEM private key.
    #[arg(long, env = "CLOUDPODS_JWT_SIGNING_KEY_FILE")]
    pub signing_key_file: PathBuf,

    /// User id (`sub`).
    #[arg(long, default_value = "dev-user")]
    pub sub: String,

    /// Tenant id.
    #[arg(long)]
    pub tenant: String,

    /// Role: user or admin.
    #[arg(long, default_value = "user", value_parser = ["user", "admin"])]
    pub role: String,

    /// Lifetime, e.g. 1h, 30m, 3600s.
    #[arg(long, default_value = "60m", value_parser = parse_duration)]
    pub ttl: Duration,

    /// `iss` claim.
    #[arg(long, env = "CLOUDPODS_JWT_ISSUER")]
    pub issuer: Option<String>,

    /// `aud` claim.
    #[arg(long, env = "CLOUDPODS_JWT_AUDIENCE")]
    pub audience: Option<String>,
}

/// Arguments of `cloudpods crdgen`.
#[derive(Args, Debug)]
pub struct CrdgenArgs {
    /// Directory the CRD files are written to.
    #[arg(long, env = "CLOUDPODS_CRD_DIR", default_value = "crds")]
    pub out_dir: PathBuf,

    /// Do not write; exit non-zero if any file in the directory differs from a fresh generation.
    #[arg(long)]
    pub check: bool,
}

/// Postgres connection settings shared by every subcommand that needs the database.
#[derive(Args, Debug, Clone)]
pub struct DatabaseArgs {
    /// PostgreSQL URL, e.g. postgres://cloudpods@db:5432/cloudpods. Never logged.
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub url: String,

    /// Maximum connections in the pool.
    #[arg(
        long = "database-max-connections",
        env = "CLOUDPODS_DATABASE_MAX_CONNECTIONS",
        default_value_t = 10
    )]
    pub max_connections: u32,
}

/// Arguments of `cloudpods migrate`.
#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// Database settings.
    #[command(flatten)]
    pub db: DatabaseArgs,

    /// Plan and blueprint catalog (YAML, the CLOUD_POD_PLANS equivalent). Defaults to the built-in catalog.
    #[arg(long, env = "CLOUDPODS_CATALOG")]
    pub catalog: Option<PathBuf>,
}

/// Arguments of `cloudpods bench-ssh`.
#[derive(Args, Debug)]
pub struct BenchSshArgs {
    /// SSH host of the Proxmox node (or the test sshd).
    #[arg(long, env = "CLOUDPODS_BENCH_SSH_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// SSH port.
    #[arg(long, env = "CLOUDPODS_BENCH_SSH_PORT", default_value_t = 22)]
    pub port: u16,

    /// SSH user.
    #[arg(long, env = "CLOUDPODS_BENCH_SSH_USER")]
    pub user: String,

    /// Private key file (ed25519, unencrypted). Only the path is ever printed.
    #[arg(long, env = "CLOUDPODS_BENCH_SSH_KEY")]
    pub key: PathBuf,

    /// known_hosts file that lists the node's host key.
    #[arg(long, env = "CLOUDPODS_BENCH_SSH_KNOWN_HOSTS")]
    pub known_hosts: PathBuf,

    /// VMID passed to `qm status`.
    #[arg(long, env = "CLOUDPODS_BENCH_VMID", default_value_t = 9000)]
    pub vmid: u32,

    /// Length of each run, e.g. `5s`, `500ms`, `1m`.
    #[arg(long, env = "CLOUDPODS_BENCH_DURATION", default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Concurrent callers per run (comma-separated).
    #[arg(
        long,
        env = "CLOUDPODS_BENCH_CONCURRENCY",
        value_delimiter = ',',
        default_value = "1,8,32"
    )]
    pub concurrency: Vec<usize>,

    /// Channels open at once on the pooled connection (sshd `MaxSessions`).
    #[arg(long, env = "CLOUDPODS_BENCH_MAX_SESSIONS", default_value_t = 10)]
    pub max_sessions: usize,

    /// Send commands bare, without the remote `timeout` deadline wrapper (to measure its cost).
    #[arg(long, env = "CLOUDPODS_BENCH_BARE")]
    pub bare: bool,
}

/// Parses `5s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (try 5s, 500ms, 1m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit in {s:?} (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("duration must be positive: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("x").is_err());
    }
}
