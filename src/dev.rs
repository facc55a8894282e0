//! `cloudpods dev`: a one-command local sandbox.
//!
//! It starts the project's own test environment (`testenv/up`: PostgreSQL, the CRD-only
//! Kubernetes API server, sshd in front of two simulated Proxmox nodes) into a fresh run
//! directory, applies the CRDs, migrates the database and seeds the catalog, gives the nodes
//! realistic latencies ([`ProfileName::Realistic`] of the operator bench), starts the operator
//! and the REST API in this process, applies a TenantQuota for the tenant `demo`, orders one
//! sample CloudPod through the REST API (the path mPanel takes) and applies two more as
//! manifests, and shows their progress until they are Active. Then it prints how to reach
//! everything and runs until Ctrl-C, SIGTERM or SIGHUP (the terminal closed); then (and on any
//! error) it stops what it started and says so. A second signal while stopping skips the
//! graceful stop of the operator and the API and goes straight to `testenv/down`.
//!
//! The operator's and the API's logs go to `RUN/cloudpods.log`, not the terminal, so the table
//! stays readable ([`init_logging`]).

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::bench_operator::ProfileName;
use crate::cli::{DatabaseArgs, DevArgs, JwtArgs, TokenArgs};
use crate::controller::ControllerSettings;
use crate::crd::{CloudPod, CloudPodSpec, TenantQuota, TenantQuotaSpec};
use crate::metrics::Registry;
use crate::operator::{self, Parts};
use crate::proxmox::config::NodesConfig;
use crate::quota::{QuotaLimits, Quotas};
use crate::worker::{Placement, WorkerSettings};

/// The sandbox's tenant (its TenantQuota, its token, its sample pods).
pub const TENANT: &str = "demo";
/// Namespace of the sample CloudPods (the API's namespace too).
pub const NAMESPACE: &str = "demo";
/// The blueprint of the samples (template 9000 exists on every simulated node).
pub const BLUEPRINT: &str = "ubuntu-24-minimal";
/// Field manager of the sandbox's own writes (CRDs, TenantQuota, manifests).
const FIELD_MANAGER: &str = "cloudpods-dev";
/// Run directories kept in the state directory (older ones are removed).
const KEEP_RUNS: usize = 5;
/// How often the sample pods are read while waiting.
const POLL: Duration = Duration::from_millis(500);
/// A line saying a silent testenv step still runs, this often.
const HEARTBEAT: Duration = Duration::from_secs(30);
/// How long stopping the operator may take: in-flight jobs finish first, and a job waits for
/// the node (a clone, a start); after this the jobs are abandoned.
const OPERATOR_STOP: Duration = Duration::from_secs(15);
/// How long the API may take to finish its open requests when stopping.
const API_STOP: Duration = Duration::from_secs(5);
/// How long closing the database pool may take (connections of abandoned jobs never return).
const POOL_CLOSE: Duration = Duration::from_secs(5);
/// Lifetime of the printed bearer token.
const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// The TenantQuota of [`TENANT`]: the three samples, with room for two more orders.
const QUOTA: TenantQuotaSpec = TenantQuotaSpec {
    max_pods: 5,
    max_cpu_cores: 8,
    max_memory_mb: 16384,
    max_disk_gb: 400,
};

// ---------------------------------------------------------------------------------------------
// The samples and the table (pure)
// ---------------------------------------------------------------------------------------------

/// How a sample pod is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `POST /api/cloud-pods/order` with the demo tenant's bearer token (what mPanel does).
    Api,
    /// A CloudPod manifest applied with the Kubernetes client (what kubectl or GitOps do).
    Manifest,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Api => "REST API",
            Via::Manifest => "manifest",
        }
    }
}

/// One sample pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Hostname (the API's order name; the manifest's resource name).
    pub name: &'static str,
    /// Plan code.
    pub plan: &'static str,
    /// How it is created.
    pub via: Via,
}

/// The sample pods: a shop's web server ordered like mPanel orders, its database and a blog
/// applied as manifests (4 cores, 7 GiB, 140 GiB of the demo quota).
pub const SAMPLES: [Sample; 3] = [
    Sample {
        name: "shop-web",
        plan: "starter",
        via: Via::Api,
    },
    Sample {
        name: "shop-db",
        plan: "premium",
        via: Via::Manifest,
    },
    Sample {
        name: "blog",
        plan: "student",
        via: Via::Manifest,
    },
];

/// One line of the progress table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The sample's name (the API's order name is the hostname; its CloudPod is named after
    /// the pod id the API chose).
    pub name: String,
    /// How it was created.
    pub via: Via,
    /// Plan code.
    pub plan: String,
    /// Phase, `-` before the operator's first status.
    pub phase: String,
    /// Proxmox VMID.
    pub vmid: Option<i32>,
    /// Node.
    pub node: Option<String>,
    /// Guest IP.
    pub ip: Option<String>,
    /// `status.lastError`.
    pub last_error: Option<String>,
    /// Since the pod was created.
    pub age: Duration,
}

impl Row {
    /// A row for `cp` (or for a pod not seen yet when `None`).
    pub fn of(name: &str, via: Via, plan: &str, cp: Option<&CloudPod>, age: Duration) -> Row {
        let status = cp.and_then(|c| c.status.as_ref());
        Row {
            name: name.to_string(),
            via,
            plan: plan.to_string(),
            phase: status
                .and_then(|s| s.phase)
                .map_or_else(|| "-".into(), |p| format!("{p:?}")),
            vmid: status.and_then(|s| s.vmid),
            node: status.and_then(|s| s.node.clone()),
            ip: status.and_then(|s| s.ip_address.clone()),
            last_error: status.and_then(|s| s.last_error.clone()),
            age,
        }
    }

    /// Active with an address: what the sandbox waits for.
    pub fn is_active(&self) -> bool {
        self.phase == "Active" && self.ip.is_some()
    }

    /// Everything but the age: a change of it is worth a new table when not on a terminal.
    fn key(&self) -> (&str, Option<i32>, Option<&str>, Option<&str>, Option<&str>) {
        (
            &self.phase,
            self.vmid,
            self.node.as_deref(),
            self.ip.as_deref(),
            self.last_error.as_deref(),
        )
    }
}

/// Whether every row is [`Row::is_active`].
pub fn all_active(rows: &[Row]) -> bool {
    !rows.is_empty() && rows.iter().all(Row::is_active)
}

/// The table: a header, one line per pod, and the last error of any pod that has one.
pub fn format_table(rows: &[Row]) -> String {
    // Narrow enough for an 80-column terminal: a wrapped line would break the redraw.
    let width = |f: &dyn Fn(&Row) -> usize, min: usize| {
        rows.iter().map(f).chain([min]).max().unwrap_or(min)
    };
    let name_w = width(&|r| r.name.len(), 4);
    let plan_w = width(&|r| r.plan.len(), 4);
    let node_w = width(&|r| r.node.as_deref().map_or(1, str::len), 4);
    let mut out = format!(
        "{:<name_w$}  {:<8}  {:<plan_w$}  {:<12}  {:>5}  {:<node_w$}  {:<15}  {:>4}\n",
        "NAME", "VIA", "PLAN", "PHASE", "VMID", "NODE", "IP", "AGE"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<name_w$}  {:<8}  {:<plan_w$}  {:<12}  {:>5}  {:<node_w$}  {:<15}  {:>3}s",
            r.name,
            r.via.as_str(),
            r.plan,
            r.phase,
            r.vmid.map_or_else(|| "-".into(), |v| v.to_string()),
            r.node.as_deref().unwrap_or("-"),
            r.ip.as_deref().unwrap_or("-"),
            r.age.as_secs(),
        );
    }
    for r in rows.iter().filter(|r| !r.is_active()) {
        if let Some(e) = &r.last_error {
            let line = format!("  {}: {e}", r.name);
            match line.char_indices().nth(77) {
                Some((cut, _)) => {
                    let _ = writeln!(out, "{}...", &line[..cut]);
                }
                None => {
                    let _ = writeln!(out, "{line}");
                }
            }
        }
    }
    out
}

/// One process `testenv` recorded (`NAME PID STARTTIME SIGNAL` in a `pids` file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// What it is (`postgres`, `sshd`, `etcd`, `kube-apiserver`).
    pub name: String,
    /// Its PID.
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat` when it was recorded, so a reused PID is told apart.
    pub start: String,
}

/// The records of a `pids` file (lines that do not parse are skipped).
pub fn parse_pids(text: &str) -> Vec<Recorded> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            Some(Recorded {
                name: f.next()?.to_string(),
                pid: f.next()?.parse().ok()?,
                start: f.next()?.to_string(),
            })
        })
        .collect()
}

impl Recorded {
    /// Whether the recorded process still runs (same start time, not a zombie).
    pub fn alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        // The command name is in parentheses and may hold spaces; fields follow the last ')'.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            return false;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        matches!(f.first(), Some(s) if *s != "Z" && *s != "X")
            && f.get(19).is_some_and(|s| *s == self.start)
    }
}

/// `NAME (pid PID)` of each recorded process that still runs.
fn alive_names(procs: &[Recorded]) -> Vec<String> {
    procs
        .iter()
        .filter(|p| p.alive())
        .map(|p| format!("{} (pid {})", p.name, p.pid))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Logging into the run directory
// ---------------------------------------------------------------------------------------------

enum Sink {
    /// Before the run directory exists (bounded; flushed into the file once it does).
    Buffer(Vec<u8>),
    File(std::fs::File),
}

static LOG: Mutex<Sink> = Mutex::new(Sink::Buffer(Vec::new()));
const LOG_BUFFER_MAX: usize = 1 << 20;

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut sink = LOG.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *sink {
            Sink::Buffer(v) => {
                if v.len() < LOG_BUFFER_MAX {
                    v.extend_from_slice(buf);
                }
                Ok(buf.len())
            }
            Sink::File(f) => f.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut *LOG.lock().unwrap_or_else(|e| e.into_inner()) {
            Sink::Buffer(_) => Ok(()),
            Sink::File(f) => f.flush(),
        }
    }
}

/// Installs the global log subscriber of `cloudpods dev` (like [`crate::telemetry::init`],
/// but into the run's log file instead of stderr); call once at start-up.
pub fn init_logging(filter: &str, format: &str) -> anyhow::Result<()> {
    crate::telemetry::init_with_writer(filter, format, || LogWriter, false)
}

/// From now on the log goes to `path` (appended), starting with what was buffered.
fn log_to(path: &Path) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open the log file {}", path.display()))?;
    let mut sink = LOG.lock().unwrap_or_else(|e| e.into_inner());
    if let Sink::Buffer(v) = &*sink {
        file.write_all(v)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    *sink = Sink::File(file);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

/// Progress lines on stdout with the seconds since the command started.
struct Out {
    t0: Instant,
}

impl Out {
    fn say(&self, msg: impl AsRef<str>) {
        emit(&format!(
            "[dev {:>6.1}s] {}\n",
            self.t0.elapsed().as_secs_f64(),
            msg.as_ref()
        ));
    }
}

/// Writes to stdout, ignoring errors: a closed pipe (`cloudpods dev | head`) must not stop
/// the clean-up the way a panicking `print!` would.
fn emit(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

// ---------------------------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------------------------

/// SIGINT (Ctrl-C), SIGTERM and SIGHUP (the terminal closed), taken over once at start-up:
/// from then on none of them ends the process before it has stopped what it started.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            hup: signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
        })
    }

    /// The next signal's name (a signal that came while nobody waited is returned at once).
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            Some(()) = self.int.recv() => "SIGINT",
            Some(()) = self.term.recv() => "SIGTERM",
            Some(()) = self.hup.recv() => "SIGHUP",
            else => std::future::pending().await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What was started, and stopping it
// ---------------------------------------------------------------------------------------------

/// Everything this run started, so it can all be stopped whatever happened.
#[derive(Default)]
struct Started {
    /// The run's testenv directory once `testenv/up` was started.
    env_dir: Option<PathBuf>,
    /// `testenv/up` while it runs (its own process group).
    up: Option<tokio::process::Child>,
    operator: Option<operator::Running>,
    api: Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>,
    pool: Option<sqlx::PgPool>,
}

/// The processes recorded in the testenv directory's `kube`, `postgres` and `sshd` pids files.
fn recorded(env_dir: &Path) -> Vec<Recorded> {
    ["kube", "postgres", "sshd"]
        .iter()
        .flat_map(|d| {
            std::fs::read_to_string(env_dir.join(d).join("pids"))
                .map(|t| parse_pids(&t))
                .unwrap_or_default()
        })
        .collect()
}

/// Sends SIGTERM to the process group `pgid` (the `kill` command: no libc in this crate).
async fn kill_group(pgid: u32) {
    let _ = tokio::process::Command::new("kill")
        .args(["-TERM", "--", &format!("-{pgid}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
}

/// Runs a testenv script with its stderr progress relayed as our own lines (and appended to
/// `log`); returns its stdout. Its own process group: a Ctrl-C on the terminal reaches only
/// us, and we decide what the script gets.
fn testenv_command(
    root: &Path,
    script: &str,
    dir: &Path,
    sim: Option<&Path>,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(root.join("testenv").join(script));
    cmd.arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        // The sandbox always runs its own API server, never a cluster named for the tests.
        .env_remove("TEST_KUBECONFIG");
    if let Some(sim) = sim {
        cmd.env("CLOUDPODS_PVE_SIM_BIN", sim);
    }
    cmd
}

/// Relays `[testenv]   1.2s message` lines as `  message`, appending them to `log`.
async fn relay(out: &Out, stderr: tokio::process::ChildStderr, log: &Path) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let mut last = Instant::now();
    loop {
        // A long step (debootstrap, apt-get, go build) is silent for minutes: say it still runs.
        match tokio::time::timeout(HEARTBEAT, lines.next_line()).await {
            Ok(line) => {
                let Some(line) = line? else {
                    return Ok(());
                };
                let _ = writeln!(file, "{line}");
                out.say(format!("  {}", strip_testenv_prefix(&line)));
                last = Instant::now();
            }
            Err(_) => out.say(format!(
                "  ... still working ({} s since the last line)",
                last.elapsed().as_secs()
            )),
        }
    }
}

/// `[testenv]   12.3s message` → `message` (other lines unchanged).
pub fn strip_testenv_prefix(line: &str) -> &str {
    line.strip_prefix("[testenv]")
        .map(str::trim_start)
        .and_then(|rest| {
            let (t, msg) = rest.split_once(' ')?;
            let secs = t.strip_suffix('s')?;
            secs.parse::<f64>().ok().map(|_| msg)
        })
        .unwrap_or(line)
}

impl Started {
    /// Stops everything (API, operator, `testenv/up` if it still runs, the environment) and
    /// prints what was stopped. A signal during the graceful stop of the API and the operator
    /// cuts it short (straight to `testenv/down`); signals during `testenv/down` do not stop
    /// it. Err when a recorded process is still running afterwards.
    async fn stop(&mut self, out: &Out, root: &Path, signals: &mut Signals) -> anyhow::Result<()> {
        let mut stopped = Vec::new();
        let api = self.api.take();
        let api_abort = api.as_ref().map(|(_, task)| task.abort_handle());
        let operator = self.operator.take();
        let (had_api, had_operator) = (api.is_some(), operator.is_some());
        let pool = self.pool.take();
        let graceful = async {
            if let Some((tx, task)) = api {
                let _ = tx.send(true);
                if tokio::time::timeout(API_STOP, task).await.is_ok() {
                    stopped.push("API".to_string());
                } else {
                    out.say(format!(
                        "the API did not finish its open requests within {} s; abandoning them",
                        API_STOP.as_secs()
                    ));
                    stopped.push("API (requests abandoned)".to_string());
                }
            }
            if let Some(running) = operator {
                out.say(format!(
                    "stopping the operator (in-flight jobs finish first, {} s at most; another Ctrl-C skips this)",
                    OPERATOR_STOP.as_secs()
                ));
                if tokio::time::timeout(OPERATOR_STOP, running.stop())
                    .await
                    .is_ok()
                {
                    stopped.push("operator".to_string());
                } else {
                    out.say(format!(
                        "the operator did not stop within {} s: its in-flight jobs are abandoned (testenv/down stops the simulated nodes)",
                        OPERATOR_STOP.as_secs()
                    ));
                    stopped.push("operator (in-flight jobs abandoned)".to_string());
                }
            }
            if let Some(pool) = pool {
                // Connections held by abandoned jobs never come back: do not wait for them.
                let _ = tokio::time::timeout(POOL_CLOSE, pool.close()).await;
            }
        };
        let hurried = tokio::select! {
            () = graceful => None,
            sig = signals.recv() => Some(sig),
        };
        if let Some(sig) = hurried {
            out.say(format!(
                "{sig} while stopping: skipping the graceful stop of the operator and the API (in-flight jobs and requests abandoned); stopping the environment now"
            ));
            for (part, had) in [("API", had_api), ("operator", had_operator)] {
                if had && !stopped.iter().any(|s| s.starts_with(part)) {
                    stopped.push(format!("{part} (abandoned)"));
                }
            }
        }
        if let Some(abort) = api_abort {
            abort.abort();
        }
        if let Some(mut up) = self.up.take() {
            if let Some(pid) = up.id() {
                out.say("interrupting testenv/up");
                kill_group(pid).await;
            }
            let _ = up.wait().await;
        }
        let Some(env_dir) = self.env_dir.take() else {
            if !stopped.is_empty() {
                out.say(format!("stopped: {}", stopped.join(", ")));
            }
            return Ok(());
        };
        let procs = recorded(&env_dir);
        out.say("stopping the environment (testenv/down)");
        let log = env_dir.with_file_name("testenv.log");
        let down = async {
            let mut child = testenv_command(root, "down", &env_dir, None)
                .spawn()
                .context("cannot run testenv/down")?;
            if let Some(stderr) = child.stderr.take() {
                relay(out, stderr, &log).await?;
            }
            let status = child.wait().await?;
            anyhow::ensure!(
                status.success(),
                "testenv/down {} failed",
                env_dir.display()
            );
            anyhow::Ok(())
        };
        tokio::pin!(down);
        let down = loop {
            tokio::select! {
                r = &mut down => break r,
                sig = signals.recv() => out.say(format!(
                    "{sig}: testenv/down is already stopping the environment; waiting for it, so that nothing is left running"
                )),
            }
        };
        let left = alive_names(&procs);
        for p in procs.iter().filter(|p| !p.alive()) {
            // testenv records the API server as "apiserver".
            let name = if p.name == "apiserver" {
                "kube-apiserver"
            } else {
                &p.name
            };
            stopped.push(format!("{name} (pid {})", p.pid));
        }
        out.say(format!("stopped: {}", stopped.join(", ")));
        anyhow::ensure!(
            left.is_empty(),
            "still running after testenv/down: {} (see {})",
            left.join(", "),
            log.display()
        );
        down
    }
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

/// Files and addresses of a started environment.
struct EnvInfo {
    /// The run's testenv directory.
    dir: PathBuf,
    kubeconfig: PathBuf,
    database_url: String,
    ssh_port: String,
    nodes: Vec<String>,
}

/// What the finished set-up hands to the summary.
struct Ready {
    env: EnvInfo,
    api: SocketAddr,
    operator: Option<SocketAddr>,
    token: String,
    env_secs: f64,
    active_secs: Option<f64>,
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The pve-sim binary: the flag, or `pve-sim` beside this binary.
fn sim_binary(args: &DevArgs) -> anyhow::Result<PathBuf> {
    let path = match &args.pve_sim_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("cannot find this binary's path")?
            .with_file_name("pve-sim"),
    };
    anyhow::ensure!(
        path.is_file(),
        "no pve-sim binary at {} (cargo build -p pve-sim, then pass --pve-sim-bin or CLOUDPODS_PVE_SIM_BIN; scripts/dev does both)",
        path.display()
    );
    std::fs::canonicalize(&path).with_context(|| format!("cannot resolve {}", path.display()))
}

async fn bind(addr: SocketAddr, what: &str, flag: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "{addr} is already in use (another sandbox, or a `cloudpods {what}`?): pass another address with {flag}, e.g. {flag} 127.0.0.1:0 for any free port"
            )
        } else {
            anyhow::anyhow!("cannot listen on {addr} for the {what}: {e}")
        }
    })
}

/// Takes the state directory's lock, stops what earlier runs left running (a killed
/// `cloudpods dev`), and removes all but the newest runs.
async fn prepare_state(out: &Out, args: &DevArgs, root: &Path) -> anyhow::Result<std::fs::File> {
    let state = &args.state_dir;
    std::fs::create_dir_all(state.join("runs"))
        .with_context(|| format!("cannot create {}", state.display()))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(state.join("lock"))
        .with_context(|| format!("cannot open {}", state.join("lock").display()))?;
    if lock.try_lock().is_err() {
        anyhow::bail!(
            "another `cloudpods dev` uses {} (stop it, or pass another --state-dir)",
            state.display()
        );
    }
    let mut runs: Vec<PathBuf> = std::fs::read_dir(state.join("runs"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    runs.sort();
    for run in &runs {
        let env = run.join("testenv");
        if recorded(&env).iter().any(Recorded::alive) {
            out.say(format!(
                "an earlier run left its environment running: testenv/down {}",
                env.display()
            ));
            let status = testenv_command(root, "down", &env, None)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .await?;
            if !status.success() {
                out.say("  testenv/down reported a problem; continuing");
            }
        }
    }
    if runs.len() >= KEEP_RUNS {
        for old in &runs[..runs.len() + 1 - KEEP_RUNS] {
            let env = old.join("testenv");
            // Its pids files are the only record of processes testenv/down could not stop.
            let alive = alive_names(&recorded(&env));
            if alive.is_empty() {
                let _ = std::fs::remove_dir_all(old);
            } else {
                out.say(format!(
                    "keeping the old run {}: its processes still run ({}); stop them with testenv/down {}",
                    old.display(),
                    alive.join(", "),
                    env.display()
                ));
            }
        }
    }
    Ok(lock)
}

/// A fresh run directory `STATE/runs/<UTC time>`.
fn new_run_dir(state: &Path) -> anyhow::Result<PathBuf> {
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
    for n in 0..100 {
        let name = if n == 0 {
            stamp.clone()
        } else {
            format!("{stamp}-{n}")
        };
        let dir = state.join("runs").join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }
    anyhow::bail!("cannot create a run directory under {}", state.display())
}

/// The JWT secret of the sandbox (HS256, 64 hex characters, 0600), made on the first run.
fn jwt_secret(state: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = state.join("jwt-hs256.secret");
    if path.is_file() {
        return Ok(path);
    }
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(secret.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// `testenv/up DIR`, relaying its progress; `started.up` holds it while it runs.
async fn env_up(
    out: &Out,
    root: &Path,
    sim: &Path,
    run: &Path,
    started: &mut Started,
) -> anyhow::Result<EnvInfo> {
    let dir = run.join("testenv");
    std::fs::create_dir_all(&dir)?;
    let log = run.join("testenv.log");
    out.say(format!(
        "starting the environment: PostgreSQL, Kubernetes API server, sshd + pve-sim nodes pve1, pve2 (testenv/up; the very first time it builds the API server: 7-20 min, progress below; log {})",
        log.display()
    ));
    let mut child = testenv_command(root, "up", &dir, Some(sim))
        .spawn()
        .context("cannot run testenv/up")?;
    started.env_dir = Some(dir.clone());
    let stderr = child.stderr.take();
    let child = started.up.insert(child);
    if let Some(stderr) = stderr {
        relay(out, stderr, &log).await?;
    }
    let status = child.wait().await?;
    started.up = None;
    anyhow::ensure!(
        status.success(),
        "testenv/up failed (see {} and the logs in {})",
        log.display(),
        dir.display()
    );
    let read = |p: &str| -> anyhow::Result<String> {
        let path = dir.join(p);
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("testenv/up left no {}", path.display()))?
            .trim()
            .to_string())
    };
    let nodes_dir = dir.join("sshd").join("nodes");
    let mut nodes: Vec<String> = std::fs::read_dir(&nodes_dir)
        .with_context(|| {
            format!(
                "testenv/up started no sshd with simulated nodes (no {})",
                nodes_dir.display()
            )
        })?
        .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
        .collect();
    nodes.sort();
    anyhow::ensure!(
        !nodes.is_empty(),
        "no simulated nodes in {}",
        nodes_dir.display()
    );
    Ok(EnvInfo {
        kubeconfig: dir.join("kube").join("kubeconfig"),
        database_url: read("postgres/url")?,
        ssh_port: read("sshd/port")?,
        nodes,
        dir,
    })
}

/// The nodes file for the simulated nodes (written to `RUN/nodes.yaml`), with the
/// realistic latencies written into each node's `faults.json`.
fn nodes_file(run: &Path, env: &EnvInfo) -> anyhow::Result<PathBuf> {
    let sshd = run.join("testenv").join("sshd");
    let faults = ProfileName::Realistic.profile().faults().to_string();
    let mut yaml = format!(
        "# written by cloudpods dev: the simulated nodes behind the sandbox's sshd\ndefaults:\n  port: {}\n  keyFile: {}\n  knownHostsFile: {}\nnodes:\n",
        env.ssh_port,
        sshd.join("client_ed25519").display(),
        sshd.join("known_hosts").display(),
    );
    for n in &env.nodes {
        let state = std::fs::canonicalize(sshd.join("nodes").join(n))
            .with_context(|| format!("no simulator state for node {n}"))?;
        // Root writes the knobs straight into the node's state (pve-sim reads it at every
        // call); write, then rename, so the simulator never reads half a file.
        let tmp = state.join("faults.json.new");
        std::fs::write(&tmp, &faults).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, state.join("faults.json"))
            .with_context(|| format!("cannot replace the knobs of node {n}"))?;
        let _ = write!(
            yaml,
            "  - name: {n}\n    host: 127.0.0.1\n    user: cpsim-{n}\n    jobDir: {}\n",
            state.display()
        );
    }
    let path = run.join("nodes.yaml");
    std::fs::write(&path, yaml).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Server-side applies the CRDs (generated from the Rust types) and waits until both are
/// Established.
async fn apply_crds(client: &kube::Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let crds = crate::crd::all_crds();
    for (_, crd) in &crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &pp, &Patch::Apply(crd))
            .await
            .with_context(|| format!("applying CRD {name}"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for (_, crd) in &crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        loop {
            let got = api.get(&name).await?;
            let established = got
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "CRD {name} not Established within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Applies the demo TenantQuota and waits until the operator mirrored it (the API admits
/// against the mirrored row).
async fn apply_quota(client: &kube::Client) -> anyhow::Result<()> {
    let tq = TenantQuota::new(TENANT, QUOTA);
    crate::bench_operator::apply_quota_synced(client, &tq, FIELD_MANAGER).await
}

/// `POST /api/cloud-pods/order` for `sample`; returns the pod id (the CloudPod's name).
async fn order(api: SocketAddr, token: &str, sample: &Sample) -> anyhow::Result<String> {
    let http: HttpClient<_, Full<Bytes>> = HttpClient::builder(TokioExecutor::new()).build_http();
    let body = json!({"planCode": sample.plan, "blueprint": BLUEPRINT, "name": sample.name});
    let req = hyper::Request::post(format!("http://{api}{}/order", crate::api::BASE))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header(CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", format!("dev-{}", sample.name))
        .body(Full::new(Bytes::from(body.to_string())))?;
    let resp = tokio::time::timeout(Duration::from_secs(30), http.request(req))
        .await
        .context("the API did not answer the order within 30 s")?
        .context("ordering through the API")?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    anyhow::ensure!(
        status == hyper::StatusCode::ACCEPTED,
        "the API refused the order of {}: {status} {answer}",
        sample.name
    );
    answer["podId"]
        .as_str()
        .map(str::to_string)
        .context("the API's answer to the order has no podId")
}

fn manifest(sample: &Sample) -> CloudPod {
    let mut cp = CloudPod::new(
        sample.name,
        CloudPodSpec {
            user_id: Some("demo-user".into()),
            ..CloudPodSpec::new(TENANT, sample.plan, BLUEPRINT)
        },
    );
    cp.metadata.namespace = Some(NAMESPACE.into());
    cp
}

/// The samples' current rows.
async fn rows(pods: &Api<CloudPod>, made: &[(String, Sample, Instant)]) -> Vec<Row> {
    let mut out = Vec::with_capacity(made.len());
    for (name, sample, at) in made {
        let cp = pods.get_opt(name).await.ok().flatten();
        out.push(Row::of(
            sample.name,
            sample.via,
            sample.plan,
            cp.as_ref(),
            at.elapsed(),
        ));
    }
    out
}

/// Shows the table until every sample is Active (true) or the timeout (false). On a terminal
/// the table is redrawn in place; otherwise it is printed again whenever something but the
/// age changed.
async fn watch_pods(
    out: &Out,
    pods: &Api<CloudPod>,
    made: &[(String, Sample, Instant)],
    timeout: Duration,
) -> bool {
    let tty = std::io::stdout().is_terminal();
    let deadline = Instant::now() + timeout;
    let mut drawn_lines = 0usize;
    let mut last_keys: Option<Vec<String>> = None;
    loop {
        let rows = rows(pods, made).await;
        let done = all_active(&rows);
        let timed_out = Instant::now() >= deadline;
        let table = format_table(&rows);
        if tty {
            let mut stdout = std::io::stdout().lock();
            if drawn_lines > 0 {
                // Up to the table's first line, clear to the end of the screen, redraw.
                let _ = write!(stdout, "\x1b[{drawn_lines}F\x1b[J");
            }
            let _ = write!(stdout, "{table}");
            let _ = stdout.flush();
            drawn_lines = table.lines().count();
        } else {
            let keys: Vec<String> = rows.iter().map(|r| format!("{:?}", r.key())).collect();
            if last_keys.as_ref() != Some(&keys) || done || timed_out {
                out.say("sample CloudPods:");
                emit(&table);
                last_keys = Some(keys);
            }
        }
        if done {
            return true;
        }
        if timed_out {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Everything from `testenv/up` to the printed summary.
async fn sandbox(
    out: &Out,
    args: &DevArgs,
    root: &Path,
    sim: &Path,
    run: &Path,
    api_listener: tokio::net::TcpListener,
    started: &mut Started,
) -> anyhow::Result<Ready> {
    let t0 = Instant::now();
    let env = env_up(out, root, sim, run, started).await?;
    let env_secs = t0.elapsed().as_secs_f64();
    out.say(format!("environment up in {env_secs:.1} s"));

    let client = crate::api::kube_client(Some(&env.kubeconfig)).await?;
    apply_crds(&client).await?;
    out.say("CRDs CloudPod and TenantQuota applied and Established");

    let pool = crate::store::connect(&DatabaseArgs {
        url: env.database_url.clone(),
        max_connections: 20,
    })
    .await?;
    started.pool = Some(pool.clone());
    let applied = crate::store::migrate(&pool).await?;
    let catalog = crate::catalog::Catalog::builtin()?;
    let seeded = crate::store::seed_catalog(&pool, &catalog).await?;
    out.say(format!(
        "database migrated ({applied} migrations); plans and blueprints: {}",
        seeded.to_string().replace('\n', "; ")
    ));

    let nodes_path = nodes_file(run, &env)?;
    let profile = ProfileName::Realistic.profile();
    out.say(format!(
        "simulated latency on {}: clone {} s, start {} s, guest agent address {} s after start, {} long tasks at once per node",
        env.nodes.join(", "),
        profile.clone.as_secs(),
        profile.start.as_secs(),
        profile.agent_ip.as_secs(),
        profile.slots(),
    ));

    // The operator.
    let nodes_cfg = NodesConfig::load(&nodes_path)?;
    let registry = Registry::default();
    let (pve, nodes) = operator::ssh_driver(&nodes_cfg, &registry);
    let running = operator::start(Parts {
        client: client.clone(),
        pool: pool.clone(),
        pve,
        nodes,
        quota_defaults: QuotaLimits::default(),
        controller: ControllerSettings {
            error_retry: Duration::from_secs(10),
            ..ControllerSettings::default()
        },
        worker: WorkerSettings {
            max_tasks_per_node: profile.worker_slots,
            placement: Placement::Spread,
            agent_poll: Duration::from_millis(250),
            shutdown_timeout: Duration::from_secs(10),
            ..WorkerSettings::default()
        },
        listen: Some(args.operator_listen),
        orphan_scan_interval: Duration::from_secs(300),
        registry,
    })
    .await?;
    let operator_addr = running.addr;
    started.operator = Some(running);
    out.say(format!(
        "operator started (controllers, workers; /metrics on {})",
        operator_addr.map_or_else(|| "-".into(), |a| format!("http://{a}"))
    ));

    // The API, with the sandbox's own HS256 secret.
    let secret = jwt_secret(&args.state_dir)?;
    let verifier = crate::api::auth::Verifier::new(crate::api::auth_settings(&JwtArgs {
        jwt_algorithm: "HS256".into(),
        jwt_key_file: secret.clone(),
        jwt_issuer: None,
        jwt_audience: None,
        jwt_leeway_seconds: 30,
    })?)
    .map_err(|e| anyhow::anyhow!("JWT settings: {e}"))?;
    let state = crate::api::AppState::new(
        pool.clone(),
        Quotas::new(pool.clone(), QuotaLimits::default()),
        verifier,
        client.clone(),
        NAMESPACE.into(),
    );
    let api_addr = api_listener.local_addr()?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let sweep = crate::api::reaper::ReaperSettings {
        ttl: Duration::from_secs(300),
        interval: Duration::from_secs(60),
    };
    let api_task = tokio::spawn(async move {
        // Stops on `true`, or when the sender is gone.
        let stop = async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        };
        if let Err(e) = crate::api::serve_with_sweep(state, api_listener, sweep, stop).await {
            tracing::error!(error = %e, "the sandbox's API failed");
        }
    });
    started.api = Some((stop_tx, api_task));
    let api = if api_addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], api_addr.port()))
    } else {
        api_addr
    };
    out.say(format!("REST API on http://{api}{}", crate::api::BASE));
    let token = crate::api::mint_token(&TokenArgs {
        algorithm: "HS256".into(),
        signing_key_file: secret,
        sub: "demo-user".into(),
        tenant: TENANT.into(),
        role: "user".into(),
        ttl: TOKEN_TTL,
        issuer: None,
        audience: None,
    })?;

    // Quota, then the samples.
    crate::bench_operator::create_namespace(&client, NAMESPACE).await;
    apply_quota(&client).await?;
    out.say(format!(
        "TenantQuota {TENANT}: {} pods, {} cores, {} MiB, {} GiB (mirrored into cloud_pod_quotas)",
        QUOTA.max_pods, QUOTA.max_cpu_cores, QUOTA.max_memory_mb, QUOTA.max_disk_gb
    ));
    let pods: Api<CloudPod> = Api::namespaced(client.clone(), NAMESPACE);
    let t_pods = Instant::now();
    let mut made = Vec::new();
    for sample in &SAMPLES {
        let name = match sample.via {
            Via::Api => {
                let id = order(api, &token, sample).await?;
                out.say(format!(
                    "ordered {} ({}) through POST {}/order as tenant {TENANT}: CloudPod {NAMESPACE}/{id}",
                    sample.name,
                    sample.plan,
                    crate::api::BASE
                ));
                id
            }
            Via::Manifest => {
                pods.patch(
                    sample.name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&manifest(sample)),
                )
                .await
                .with_context(|| format!("applying CloudPod {}", sample.name))?;
                out.say(format!(
                    "applied CloudPod {NAMESPACE}/{} ({}) as a manifest",
                    sample.name, sample.plan
                ));
                sample.name.to_string()
            }
        };
        made.push((name, *sample, Instant::now()));
    }

    let active = watch_pods(out, &pods, &made, args.timeout).await;
    let active_secs = active.then(|| t_pods.elapsed().as_secs_f64());
    if !active {
        let msg = format!(
            "not every sample CloudPod was Active within {:?} (the table above shows any lastError; logs: {})",
            args.timeout,
            run.join("cloudpods.log").display()
        );
        if args.exit_when_active {
            anyhow::bail!(msg);
        }
        out.say(format!("{msg}; the sandbox keeps running so you can look"));
    }
    Ok(Ready {
        env,
        api,
        operator: operator_addr,
        token,
        env_secs,
        active_secs,
    })
}

/// The how-to-use-it block printed once the samples are Active.
fn summary(args: &DevArgs, run: &Path, ready: &Ready, total: f64) -> String {
    let base = format!("http://{}{}", ready.api, crate::api::BASE);
    let env = &ready.env;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nsandbox ready in {total:.1} s (environment {:.1} s, pods Active {})\n",
        ready.env_secs,
        ready
            .active_secs
            .map_or_else(|| "not yet".into(), |t| format!("{t:.1} s"))
    );
    let _ = writeln!(s, "kubectl (the Kubernetes API server of this run):");
    let _ = writeln!(s, "  export KUBECONFIG={}", env.kubeconfig.display());
    let _ = writeln!(s, "  kubectl get cloudpods -A");
    let _ = writeln!(s, "  kubectl get tenantquotas");
    let _ = writeln!(s, "  kubectl -n {NAMESPACE} describe cloudpod shop-db\n");
    let _ = writeln!(
        s,
        "REST API (tenant {TENANT}, token valid {} h):",
        TOKEN_TTL.as_secs() / 3600
    );
    let _ = writeln!(s, "  export TOKEN={}", ready.token);
    let _ = writeln!(s, "  curl -s -H \"Authorization: Bearer $TOKEN\" {base}");
    let _ = writeln!(
        s,
        "  curl -s -H \"Authorization: Bearer $TOKEN\" {base}/my-quota"
    );
    let _ = writeln!(
        s,
        "  curl -s -X POST -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' \\\n    -d '{{\"planCode\":\"student\",\"blueprint\":\"{BLUEPRINT}\",\"name\":\"my-pod\"}}' {base}/order"
    );
    let _ = writeln!(
        s,
        "  more tokens: cloudpods token --signing-key-file {} --tenant {TENANT}\n",
        args.state_dir.join("jwt-hs256.secret").display()
    );
    let _ = writeln!(s, "PostgreSQL (the canonical tables):");
    let _ = writeln!(
        s,
        "  psql {} -c 'SELECT id, status, plan_code, vmid, node, ip_address FROM cloud_pods'\n",
        env.database_url
    );
    if let Some(op) = ready.operator {
        let _ = writeln!(s, "operator: http://{op}/metrics  http://{op}/readyz");
    }
    let _ = writeln!(
        s,
        "nodes:    {} = pve-sim behind sshd on 127.0.0.1:{} ({})",
        env.nodes.join(", "),
        env.ssh_port,
        run.join("nodes.yaml").display()
    );
    let _ = writeln!(
        s,
        "logs:     {} (operator and API), {} (environment)",
        run.join("cloudpods.log").display(),
        env.dir.display()
    );
    s
}

/// `cloudpods dev`.
pub async fn run(args: &DevArgs) -> anyhow::Result<()> {
    let out = Out { t0: Instant::now() };
    anyhow::ensure!(
        is_root(),
        "cloudpods dev needs root: testenv/sshd creates the simulator's users and runs sshd for them"
    );
    let root = std::fs::canonicalize(&args.repo_root)
        .with_context(|| format!("--repo-root {}", args.repo_root.display()))?;
    anyhow::ensure!(
        root.join("testenv").join("up").is_file(),
        "no testenv/up under {}: run from the CloudPods repository or pass --repo-root",
        root.display()
    );
    let sim = sim_binary(args)?;
    // From here on a signal is handled, never fatal: whatever it interrupts, what was started
    // is stopped.
    let mut signals = Signals::new()?;
    // Taken ports fail here, before anything starts.
    let api_listener = bind(args.api_listen, "api", "--api-listen").await?;
    drop(bind(args.operator_listen, "operator", "--operator-listen").await?);

    let _lock = prepare_state(&out, args, &root).await?;
    let run = new_run_dir(&args.state_dir)?;
    log_to(&run.join("cloudpods.log"))?;
    out.say(format!(
        "cloudpods dev: a local sandbox in {}",
        run.display()
    ));

    let mut started = Started::default();
    let outcome = tokio::select! {
        r = sandbox(&out, args, &root, &sim, &run, api_listener, &mut started) => r.map(Ok),
        sig = signals.recv() => Ok(Err(sig)),
    };
    let result = match outcome {
        Ok(Ok(ready)) => {
            emit(&summary(args, &run, &ready, out.t0.elapsed().as_secs_f64()));
            if args.exit_when_active {
                Ok(())
            } else {
                emit("\nrunning; Ctrl-C (or SIGTERM, or closing the terminal) stops everything\n");
                let sig = signals.recv().await;
                out.say(format!("{sig} received"));
                Ok(())
            }
        }
        Ok(Err(sig)) => {
            out.say(format!("interrupted by {sig}"));
            Ok(())
        }
        Err(e) => {
            out.say(format!("failed: {e:#}"));
            Err(e)
        }
    };
    out.say("stopping (a second Ctrl-C skips the graceful stop of the operator and the API)");
    let stopped = started.stop(&out, &root, &mut signals).await;
    match (result, stopped) {
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(())) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{CloudPodStatus, Phase};

    fn with_status(status: CloudPodStatus) -> CloudPod {
        let mut cp = manifest(&SAMPLES[1]);
        cp.status = Some(status);
        cp
    }

    #[test]
    fn rows_from_pods() {
        let none = Row::of(
            "blog",
            Via::Manifest,
            "student",
            None,
            Duration::from_secs(3),
        );
        assert_eq!(none.phase, "-");
        assert!(!none.is_active());
        let active = with_status(CloudPodStatus {
            phase: Some(Phase::Active),
            vmid: Some(101),
            node: Some("pve2".into()),
            ip_address: Some("10.0.0.12".into()),
            ..CloudPodStatus::default()
        });
        let r = Row::of(
            "shop-db",
            Via::Manifest,
            "premium",
            Some(&active),
            Duration::ZERO,
        );
        assert!(r.is_active());
        assert_eq!((r.vmid, r.node.as_deref()), (Some(101), Some("pve2")));
        // Active without an address is not there yet.
        let no_ip = with_status(CloudPodStatus {
            phase: Some(Phase::Active),
            ..CloudPodStatus::default()
        });
        assert!(!Row::of("x", Via::Api, "starter", Some(&no_ip), Duration::ZERO).is_active());
        assert!(all_active(std::slice::from_ref(&r)));
        assert!(!all_active(&[r, none]));
        assert!(!all_active(&[]));
    }

    #[test]
    fn table_lines() {
        let failed = with_status(CloudPodStatus {
            phase: Some(Phase::Error),
            last_error: Some("clone failed on pve1".into()),
            ..CloudPodStatus::default()
        });
        let rows = [
            Row::of(
                "shop-web",
                Via::Api,
                "starter",
                None,
                Duration::from_millis(4200),
            ),
            Row::of(
                "blog",
                Via::Manifest,
                "student",
                Some(&failed),
                Duration::from_secs(12),
            ),
        ];
        let t = format_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "NAME      VIA       PLAN     PHASE          VMID  NODE  IP                AGE"
        );
        assert_eq!(
            lines[1],
            "shop-web  REST API  starter  -                 -  -     -                  4s"
        );
        assert!(
            lines[2].contains("Error") && lines[2].ends_with(" 12s"),
            "{t}"
        );
        assert_eq!(lines[3], "  blog: clone failed on pve1");
        assert_eq!(lines.len(), 4);
        assert!(t.lines().all(|l| l.len() <= 80), "{t}");
        // A long error is cut to the terminal's width.
        let long = with_status(CloudPodStatus {
            phase: Some(Phase::Error),
            last_error: Some("x".repeat(200)),
            ..CloudPodStatus::default()
        });
        let t = format_table(&[Row::of(
            "blog",
            Via::Manifest,
            "student",
            Some(&long),
            Duration::ZERO,
        )]);
        assert!(t.lines().all(|l| l.len() <= 80), "{t}");
        assert!(t.ends_with("...\n"), "{t}");
    }

    #[test]
    fn pids_files() {
        let p = parse_pids("etcd 123 456 TERM\nkube-apiserver 124 460 TERM\nbad line\n");
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].name, "kube-apiserver");
        assert_eq!((p[1].pid, p[1].start.as_str()), (124, "460"));
        assert!(!p[0].alive() || p[0].pid == std::process::id());
        // This process, with its real start time, is alive; with another start time it is not.
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let start = stat
            .rsplit_once(") ")
            .unwrap()
            .1
            .split_whitespace()
            .nth(19)
            .unwrap();
        let me = Recorded {
            name: "me".into(),
            pid: std::process::id(),
            start: start.into(),
        };
        assert!(me.alive());
        assert!(
            !Recorded {
                start: "1".into(),
                ..me
            }
            .alive()
        );
    }

    #[test]
    fn testenv_lines() {
        assert_eq!(
            strip_testenv_prefix("[testenv]    2.1s postgres ready in 1.5s"),
            "postgres ready in 1.5s"
        );
        assert_eq!(strip_testenv_prefix("plain"), "plain");
        assert_eq!(strip_testenv_prefix("[testenv] weird"), "[testenv] weird");
    }

    #[test]
    fn samples_fit_the_quota() {
        let catalog = crate::catalog::Catalog::builtin().unwrap();
        let (mut cores, mut mem, mut disk) = (0, 0, 0);
        for s in &SAMPLES {
            let plan = catalog.plans.iter().find(|p| p.code == s.plan).unwrap();
            cores += i64::from(plan.vcpu);
            mem += i64::from(plan.ram_mb);
            disk += i64::from(plan.storage_gb);
        }
        assert!(SAMPLES.len() as i64 <= i64::from(QUOTA.max_pods));
        assert!(
            cores <= i64::from(QUOTA.max_cpu_cores)
                && mem <= QUOTA.max_memory_mb
                && disk <= QUOTA.max_disk_gb
        );
        assert!(SAMPLES.iter().any(|s| s.via == Via::Api));
    }
}
