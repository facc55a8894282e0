//! `cloudpods bench-operator`: how long N CloudPods applied together take to become Active and
//! Ready, against simulated Proxmox nodes (pve-sim behind sshd), next to the lower bound the
//! simulator's settings allow; and what it costs in Kubernetes API writes and SSH commands.
//!
//! Each profile is one run with a fresh in-process operator ([`crate::operator::start`]) that
//! only sees this run's objects (a label `cloudpods-bench=<run id>`), its own tenant and
//! TenantQuota. The simulator's latency knobs are written to every node's
//! `$PVE_SIM_STATE/faults.json` first (refused on a node without `PVE_SIM_STATE`: never on a
//! real Proxmox node).
//!
//! **Lower bound.** In pve-sim, `qm clone` and `qm start` are long tasks: each holds one of the
//! node's `max_concurrent_tasks` slots for its whole duration (the operator's own
//! `max_tasks_per_node` permits cap the same thing), the guest agent reports the IPv4 address
//! `agent_ip_delay_ms` after the start task ends, and the operator reports a pod Active only
//! once it has that address. Every pod lives on one node, so the busiest node holds at least
//! `ceil(N / nodes)` pods, and its slots must do `ceil(N / nodes) × (clone + start)` of task
//! time; the last of those tasks is a start, whose pod then still waits for its address. No
//! pod can beat its own chain (clone, then start, then the address) either:
//!
//! ```text
//! slots = min(sim max_concurrent_tasks, worker max_tasks_per_node)
//! bound = max(ceil(N / nodes) × (clone + start) / slots, clone + start) + agent_ip
//! ```
//!
//! With zero latency the bound is 0: everything measured is the operator's own overhead.
//! The bound counts only simulated durations (not SSH round trips, `qm set`, the zero-length
//! resize task, polling, Kubernetes or Postgres), so any real run stays above it; the ratio
//! says by how much.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::join_all;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::time::Instant;

use crate::cli::BenchOperatorArgs;
use crate::controller::ControllerSettings;
use crate::controller::status::SYNCED;
use crate::crd::{CloudPod, CloudPodSpec, Phase, TenantQuota, TenantQuotaSpec};
use crate::metrics::Registry;
use crate::operator::{self, Parts};
use crate::proxmox::config::NodesConfig;
use crate::proxmox::driver::SshProxmox;
use crate::quota::QuotaLimits;
use crate::worker::{Placement, WorkerSettings};

/// Label on every object of one run (value: the run id).
pub const RUN_LABEL: &str = "cloudpods-bench";
/// Blueprint of the bench's pods (its template, 9000, exists on every simulated node).
pub const BLUEPRINT: &str = "ubuntu-24-minimal";
/// Field manager of the bench's own writes.
const FIELD_MANAGER: &str = "cloudpods-bench";
/// How often the bench lists the run's CloudPods.
const POLL: Duration = Duration::from_millis(250);
/// How often a progress line is printed while waiting.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Timeout of one SSH command of the bench itself (writing the knobs).
const SSH_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Profiles and the lower bound (pure)
// ---------------------------------------------------------------------------------------------

/// Which latency settings a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileName {
    /// No simulated latency at all (`{}`): the operator's own overhead.
    Zero,
    /// Clone 3 s, start 1 s, guest agent address 2 s after start, 3 tasks at once per node.
    Realistic,
}

impl ProfileName {
    /// The name on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileName::Zero => "zero",
            ProfileName::Realistic => "realistic",
        }
    }

    /// The profile's settings.
    pub fn profile(self) -> Profile {
        match self {
            ProfileName::Zero => Profile {
                name: self,
                clone: Duration::ZERO,
                start: Duration::ZERO,
                agent_ip: Duration::ZERO,
                sim_slots: None,
                worker_slots: 4,
            },
            ProfileName::Realistic => Profile {
                name: self,
                clone: Duration::from_secs(3),
                start: Duration::from_secs(1),
                agent_ip: Duration::from_secs(2),
                sim_slots: Some(3),
                worker_slots: 3,
            },
        }
    }
}

impl fmt::Display for ProfileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A profile name that is not `zero` or `realistic`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown profile {0:?} (expected zero or realistic)")]
pub struct ParseProfileError(pub String);

impl FromStr for ProfileName {
    type Err = ParseProfileError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [ProfileName::Zero, ProfileName::Realistic]
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ParseProfileError(s.to_owned()))
    }
}

/// Simulated latencies of one run and the concurrency that applies to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// Which profile.
    pub name: ProfileName,
    /// Duration of the clone task (`durations_ms.clone`).
    pub clone: Duration,
    /// Duration of the start task (`durations_ms.start`).
    pub start: Duration,
    /// Time from the end of the start task to the guest agent's IPv4 address
    /// (`agent_ip_delay_ms`; the agent answers from then on too: `agent_ready_ms`).
    pub agent_ip: Duration,
    /// Long tasks at once per simulated node (`max_concurrent_tasks`; None: unlimited).
    pub sim_slots: Option<u32>,
    /// The operator's long tasks at once per node (`max_tasks_per_node`).
    pub worker_slots: usize,
}

impl Profile {
    /// The simulator's `faults.json` for this profile.
    pub fn faults(&self) -> serde_json::Value {
        let mut f = serde_json::Map::new();
        let mut durations = serde_json::Map::new();
        if !self.clone.is_zero() {
            durations.insert("clone".into(), json!(ms(self.clone)));
        }
        if !self.start.is_zero() {
            durations.insert("start".into(), json!(ms(self.start)));
        }
        if !durations.is_empty() {
            f.insert("durations_ms".into(), durations.into());
        }
        if !self.agent_ip.is_zero() {
            f.insert("agent_ready_ms".into(), json!(ms(self.agent_ip)));
            f.insert("agent_ip_delay_ms".into(), json!(ms(self.agent_ip)));
        }
        if let Some(n) = self.sim_slots {
            f.insert("max_concurrent_tasks".into(), json!(n));
        }
        f.into()
    }

    /// Long tasks that can run at once on one node: the tighter of the two limits.
    pub fn slots(&self) -> usize {
        let worker = self.worker_slots.max(1);
        match self.sim_slots {
            Some(n) if n > 0 => worker.min(n as usize),
            _ => worker,
        }
    }

    /// The shortest wall time in which `pods` pods spread over `nodes` nodes can all become
    /// Active: `max(ceil(pods / nodes) × (clone + start) / slots, clone + start) + agent_ip`
    /// (see the module docs).
    pub fn lower_bound(&self, pods: usize, nodes: usize) -> Duration {
        if pods == 0 {
            return Duration::ZERO;
        }
        let chain = self.clone + self.start;
        let busiest = u32::try_from(pods.div_ceil(nodes.max(1))).unwrap_or(u32::MAX);
        let slots = u32::try_from(self.slots()).unwrap_or(u32::MAX);
        (chain * busiest / slots).max(chain) + self.agent_ip
    }

    /// The formula with this run's numbers filled in, for the report.
    pub fn lower_bound_text(&self, pods: usize, nodes: usize) -> String {
        if self.clone.is_zero() && self.start.is_zero() && self.agent_ip.is_zero() {
            return "0 (no simulated latency)".into();
        }
        format!(
            "max(ceil({pods} pods / {nodes} nodes) = {} x (clone {} + start {}) / {} slots, clone + start) + agent IP {} = {}",
            pods.div_ceil(nodes.max(1)),
            secs(self.clone),
            secs(self.start),
            self.slots(),
            secs(self.agent_ip),
            secs(self.lower_bound(pods, nodes)),
        )
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `12.34 s`.
fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// Metrics text (pure)
// ---------------------------------------------------------------------------------------------

/// One sample line of the text exposition format: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Label name → value.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// Every sample of the series `name` (exact name: `foo` does not match `foo_count`).
pub fn samples(text: &str, name: &str) -> Vec<Sample> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = if let Some(inner) = rest.strip_prefix('{') {
                let (labels, after) = parse_labels(inner)?;
                (labels, after)
            } else if rest.starts_with(' ') {
                (BTreeMap::new(), rest)
            } else {
                return None;
            };
            let value = value.split_whitespace().next()?.parse().ok()?;
            Some(Sample { labels, value })
        })
        .collect()
}

/// `a="x",b="y\"z"} 3` → the labels and the text after `}`.
fn parse_labels(mut s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches(',');
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_string(), value);
        s = &rest[end + 1..];
    }
}

/// The series `name` summed per value of `label` (an absent label counts as "").
pub fn sum_by(text: &str, name: &str, label: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for s in samples(text, name) {
        let key = s.labels.get(label).cloned().unwrap_or_default();
        *out.entry(key).or_insert(0) += s.value.max(0.0).round() as u64;
    }
    out
}

/// Counts by key, with their total.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Per key (kind of write, SSH command, ...).
    pub by: BTreeMap<String, u64>,
}

impl Counts {
    /// The sum over every key.
    pub fn total(&self) -> u64 {
        self.by.values().sum()
    }

    /// `self - earlier`, per key (keys only in `earlier` are dropped).
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            by: self
                .by
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.saturating_sub(*earlier.by.get(k).unwrap_or(&0)),
                    )
                })
                .filter(|(_, v)| *v > 0)
                .collect(),
        }
    }

    /// `a=1 b=2`.
    fn text(&self) -> String {
        if self.by.is_empty() {
            return "none".into();
        }
        self.by
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The operator counters the bench reads, at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `cloudpods_kube_writes_total` by kind.
    pub kube_writes: Counts,
    /// `cloudpods_ssh_command_duration_seconds_count` by command.
    pub ssh_commands: Counts,
    /// `cloudpods_reconcile_total` by controller.
    pub reconciles: Counts,
}

impl Snapshot {
    /// Reads the counters out of a rendered registry.
    pub fn parse(text: &str) -> Snapshot {
        Snapshot {
            kube_writes: Counts {
                by: sum_by(text, "cloudpods_kube_writes_total", "kind"),
            },
            ssh_commands: Counts {
                by: sum_by(
                    text,
                    "cloudpods_ssh_command_duration_seconds_count",
                    "command",
                ),
            },
            reconciles: Counts {
                by: sum_by(text, "cloudpods_reconcile_total", "controller"),
            },
        }
    }

    /// `self - earlier`, per counter.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            kube_writes: self.kube_writes.since(&earlier.kube_writes),
            ssh_commands: self.ssh_commands.since(&earlier.ssh_commands),
            reconciles: self.reconciles.since(&earlier.reconciles),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reports (pure)
// ---------------------------------------------------------------------------------------------

/// Median, 90th percentile and maximum of the per-pod times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spread {
    /// 50th percentile (nearest rank).
    pub p50: Duration,
    /// 90th percentile (nearest rank).
    pub p90: Duration,
    /// Largest.
    pub max: Duration,
}

impl Spread {
    /// Nearest-rank percentiles of `times`; None when empty.
    pub fn of(times: &[Duration]) -> Option<Spread> {
        if times.is_empty() {
            return None;
        }
        let mut t = times.to_vec();
        t.sort_unstable();
        let rank = |q: f64| {
            let r = (q * t.len() as f64).ceil() as usize;
            t[r.clamp(1, t.len()) - 1]
        };
        Some(Spread {
            p50: rank(0.5),
            p90: rank(0.9),
            max: *t.last()?,
        })
    }
}

/// The result of one profile's run.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The profile.
    pub profile: Profile,
    /// The run id (label value and part of the pod names).
    pub run_id: String,
    /// Pods created.
    pub pods: usize,
    /// Nodes the operator placed pods on.
    pub nodes: usize,
    /// Pods seen Active and Ready before the timeout.
    pub ready: usize,
    /// From the first create to the moment every pod was seen Active and Ready (None: timeout).
    pub wall_ready: Option<Duration>,
    /// The lower bound the profile allows.
    pub lower_bound: Duration,
    /// Per pod, from its create to the first list that showed it Active and Ready.
    pub per_pod: Option<Spread>,
    /// The operator's counters when every pod was Ready (or at the timeout).
    pub at_ready: Snapshot,
    /// What the deletion added to them.
    pub for_delete: Snapshot,
    /// Kubernetes writes the bench itself made for the pods (one create each).
    pub bench_creates: u64,
    /// From the first delete to the moment no pod of the run was left (None: timeout).
    pub delete_wall: Option<Duration>,
    /// Phases of the pods that were not Ready at the timeout.
    pub not_ready: BTreeMap<String, usize>,
    /// Pods per node (`status.node`) when the wait ended.
    pub per_node: BTreeMap<String, usize>,
    /// One `status.lastError` seen, if any pod reported one.
    pub last_error: Option<String>,
}

impl RunReport {
    /// `wall / bound`, when both are known and the bound is not 0.
    pub fn ratio(&self) -> Option<f64> {
        let wall = self.wall_ready?;
        (!self.lower_bound.is_zero()).then(|| wall.as_secs_f64() / self.lower_bound.as_secs_f64())
    }

    fn per_pod(&self, n: u64) -> f64 {
        n as f64 / self.pods.max(1) as f64
    }
}

fn opt_secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "timeout".into(), |d| format!("{:.2}", d.as_secs_f64()))
}

/// The results as a table, one row per profile, with notes (bound formula, breakdowns) below.
pub fn format_table(reports: &[RunReport]) -> String {
    let mut lines = vec![format!(
        "{:<10} {:>5} {:>6} {:>10} {:>9} {:>6} {:>19} {:>11} {:>11} {:>9} {:>9} {:>10}",
        "profile",
        "pods",
        "ready",
        "wall s",
        "bound s",
        "ratio",
        "per-pod p50/p90/max",
        "kube wr/pod",
        "bench wr/pod",
        "ssh/pod",
        "ssh/pod",
        "delete s",
    )];
    lines.push(format!(
        "{:<10} {:>5} {:>6} {:>10} {:>9} {:>6} {:>19} {:>11} {:>11} {:>9} {:>9} {:>10}",
        "", "", "", "to Ready", "", "", "s", "(operator)", "", "create", "delete", ""
    ));
    for r in reports {
        let spread = r.per_pod.map_or_else(
            || "-".into(),
            |s| {
                format!(
                    "{:.1}/{:.1}/{:.1}",
                    s.p50.as_secs_f64(),
                    s.p90.as_secs_f64(),
                    s.max.as_secs_f64()
                )
            },
        );
        lines.push(format!(
            "{:<10} {:>5} {:>6} {:>10} {:>9.2} {:>6} {:>19} {:>11.2} {:>11.2} {:>9.2} {:>9.2} {:>10}",
            r.profile.name.as_str(),
            r.pods,
            r.ready,
            opt_secs(r.wall_ready),
            r.lower_bound.as_secs_f64(),
            r.ratio().map_or_else(|| "-".into(), |x| format!("{x:.2}")),
            spread,
            r.per_pod(r.at_ready.kube_writes.total()),
            r.per_pod(r.bench_creates),
            r.per_pod(r.at_ready.ssh_commands.total()),
            r.per_pod(r.for_delete.ssh_commands.total()),
            opt_secs(r.delete_wall),
        ));
    }
    lines.push(String::new());
    for r in reports {
        let p = r.profile.name.as_str();
        lines.push(format!(
            "{p}: lower bound {}",
            r.profile.lower_bound_text(r.pods, r.nodes)
        ));
        lines.push(format!(
            "{p}: kube writes until Ready (operator): {} (total {}); during delete: {} (total {})",
            r.at_ready.kube_writes.text(),
            r.at_ready.kube_writes.total(),
            r.for_delete.kube_writes.text(),
            r.for_delete.kube_writes.total(),
        ));
        lines.push(format!(
            "{p}: ssh commands until Ready: {} (total {})",
            r.at_ready.ssh_commands.text(),
            r.at_ready.ssh_commands.total(),
        ));
        lines.push(format!(
            "{p}: ssh commands during delete: {} (total {})",
            r.for_delete.ssh_commands.text(),
            r.for_delete.ssh_commands.total(),
        ));
        lines.push(format!(
            "{p}: reconciles until Ready: {}; during delete: {}",
            r.at_ready.reconciles.text(),
            r.for_delete.reconciles.text(),
        ));
        if !r.per_node.is_empty() {
            let nodes: Vec<String> = r.per_node.iter().map(|(k, v)| format!("{k}={v}")).collect();
            lines.push(format!("{p}: pods per node: {}", nodes.join(" ")));
        }
        if !r.not_ready.is_empty() {
            let phases: Vec<String> = r
                .not_ready
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            lines.push(format!(
                "{p}: not Ready at the timeout: {}",
                phases.join(" ")
            ));
        }
        if let Some(e) = &r.last_error {
            lines.push(format!("{p}: a pod reported: {e}"));
        }
    }
    lines
        .iter()
        .map(|l| format!("{}\n", l.trim_end()))
        .collect()
}

fn counts_json(c: &Counts) -> serde_json::Value {
    json!({ "total": c.total(), "by": c.by })
}

fn snapshot_json(s: &Snapshot) -> serde_json::Value {
    json!({
        "kubeWrites": counts_json(&s.kube_writes),
        "sshCommands": counts_json(&s.ssh_commands),
        "reconciles": counts_json(&s.reconciles),
    })
}

/// The reports as a JSON array (camelCase keys, times in seconds, `null` when timed out).
pub fn to_json(reports: &[RunReport]) -> serde_json::Value {
    reports
        .iter()
        .map(|r| {
            let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
            json!({
                "profile": r.profile.name.as_str(),
                "runId": r.run_id,
                "pods": r.pods,
                "nodes": r.nodes,
                "ready": r.ready,
                "faults": r.profile.faults(),
                "slotsPerNode": r.profile.slots(),
                "wallToReadySeconds": secs(r.wall_ready),
                "lowerBoundSeconds": r.lower_bound.as_secs_f64(),
                "lowerBound": r.profile.lower_bound_text(r.pods, r.nodes),
                "ratio": r.ratio(),
                "perPodSeconds": r.per_pod.map(|s| json!({
                    "p50": s.p50.as_secs_f64(),
                    "p90": s.p90.as_secs_f64(),
                    "max": s.max.as_secs_f64(),
                })),
                "kubeWritesPerPod": r.per_pod(r.at_ready.kube_writes.total()),
                "benchWritesPerPod": r.per_pod(r.bench_creates),
                "sshCommandsPerPod": r.per_pod(r.at_ready.ssh_commands.total()),
                "untilReady": snapshot_json(&r.at_ready),
                "delete": snapshot_json(&r.for_delete),
                "deleteWallSeconds": secs(r.delete_wall),
                "notReady": r.not_ready,
                "podsPerNode": r.per_node,
                "lastError": r.last_error,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The run (I/O)
// ---------------------------------------------------------------------------------------------

/// Writes `faults` as `$PVE_SIM_STATE/faults.json` on every node (write, then rename, so the
/// simulator never reads half a file). Refuses nodes without `PVE_SIM_STATE`.
async fn set_faults(pve: &SshProxmox, faults: &serde_json::Value) -> anyhow::Result<()> {
    const SCRIPT: &str = "if [ -z \"${PVE_SIM_STATE:-}\" ] || [ ! -d \"$PVE_SIM_STATE\" ]; then \
         echo 'PVE_SIM_STATE is not set: not a pve-sim node' >&2; exit 3; fi; \
         cat > \"$PVE_SIM_STATE/faults.json.new\" && \
         mv -f \"$PVE_SIM_STATE/faults.json.new\" \"$PVE_SIM_STATE/faults.json\"";
    let body = faults.to_string();
    for node in pve.node_names() {
        let ssh = pve.ssh(node)?;
        let out = ssh
            .exec(SCRIPT, Some(body.as_bytes()), SSH_TIMEOUT)
            .await
            .with_context(|| format!("writing the simulator's knobs on {node}"))?;
        anyhow::ensure!(
            out.success(),
            "writing the simulator's knobs on {node} failed: {}",
            out.stderr_lossy().trim()
        );
    }
    Ok(())
}

/// Active with condition Ready True.
fn is_ready(cp: &CloudPod) -> bool {
    cp.status.as_ref().is_some_and(|s| {
        s.phase == Some(Phase::Active)
            && s.conditions
                .iter()
                .any(|c| c.type_ == crate::controller::status::READY && c.status == "True")
    })
}

fn phase_name(cp: &CloudPod) -> String {
    cp.status
        .as_ref()
        .and_then(|s| s.phase)
        .map_or_else(|| "None".into(), |p| format!("{p:?}"))
}

fn pod(name: &str, ns: &str, tenant: &str, plan: &str, run_id: &str) -> CloudPod {
    let mut cp = CloudPod::new(name, CloudPodSpec::new(tenant, plan, BLUEPRINT));
    cp.metadata.namespace = Some(ns.into());
    cp.metadata.labels = Some([(RUN_LABEL.to_string(), run_id.to_string())].into());
    cp
}

/// Applies the run's TenantQuota (the largest limits the CRD accepts) and waits until the
/// operator has mirrored it, so no pod is measured waiting on quota admission.
async fn quota(client: &kube::Client, tenant: &str, run_id: &str) -> anyhow::Result<()> {
    let mut tq = TenantQuota::new(
        tenant,
        TenantQuotaSpec {
            max_pods: 10_000,
            max_cpu_cores: 100_000,
            max_memory_mb: 67_108_864,
            max_disk_gb: 10_000_000,
        },
    );
    tq.metadata.labels = Some([(RUN_LABEL.to_string(), run_id.to_string())].into());
    apply_quota_synced(client, &tq, FIELD_MANAGER).await
}

/// Server-side applies `tq` (as `field_manager`) and waits up to 60 s until the operator has
/// mirrored it (`Synced=True` for the current generation).
pub async fn apply_quota_synced(
    client: &kube::Client,
    tq: &TenantQuota,
    field_manager: &str,
) -> anyhow::Result<()> {
    let api: Api<TenantQuota> = Api::all(client.clone());
    let name = tq
        .metadata
        .name
        .as_deref()
        .context("the TenantQuota has no name")?;
    api.patch(
        name,
        &PatchParams::apply(field_manager).force(),
        &Patch::Apply(tq),
    )
    .await
    .with_context(|| format!("applying TenantQuota {name}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tq = api.get(name).await?;
        let synced = tq.status.as_ref().is_some_and(|s| {
            s.observed_generation == tq.metadata.generation
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == SYNCED && c.status == "True")
        });
        if synced {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the operator did not mirror TenantQuota {name} within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates the namespace `name` if it can: a real cluster needs it, the CRD-only test server
/// has no namespaces at all (a failure, or an existing namespace, is only logged).
pub async fn create_namespace(client: &kube::Client, name: &str) {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let mut ns = k8s_openapi::api::core::v1::Namespace::default();
    ns.metadata.name = Some(name.into());
    if let Err(e) = api.create(&PostParams::default(), &ns).await {
        tracing::debug!(error = %e, "namespace not created (exists, or no core API)");
    }
}

/// What waiting for the pods saw.
struct Waited {
    wall: Option<Duration>,
    ready_at: BTreeMap<String, Instant>,
    not_ready: BTreeMap<String, usize>,
    per_node: BTreeMap<String, usize>,
    last_error: Option<String>,
}

/// Lists the run's pods every [`POLL`] until all `n` are Ready or `timeout` passes.
async fn wait_ready(
    pods: &Api<CloudPod>,
    lp: &ListParams,
    n: usize,
    t0: Instant,
    timeout: Duration,
    label: &str,
) -> anyhow::Result<Waited> {
    let mut ready_at = BTreeMap::new();
    let mut last_error = None;
    let mut next_progress = t0 + PROGRESS_EVERY;
    loop {
        let list = pods.list(lp).await.context("listing the run's CloudPods")?;
        let now = Instant::now();
        let mut phases: BTreeMap<String, usize> = BTreeMap::new();
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for cp in &list.items {
            if let Some(node) = cp.status.as_ref().and_then(|s| s.node.clone()) {
                *per_node.entry(node).or_insert(0) += 1;
            }
            let name = cp.metadata.name.clone().unwrap_or_default();
            if is_ready(cp) {
                ready_at.entry(name).or_insert(now);
            } else {
                *phases.entry(phase_name(cp)).or_insert(0) += 1;
            }
            if let Some(e) = cp.status.as_ref().and_then(|s| s.last_error.clone()) {
                last_error = Some(format!(
                    "{}: {e}",
                    cp.metadata.name.as_deref().unwrap_or("?")
                ));
            }
        }
        let all = ready_at.len() >= n && phases.is_empty();
        if all || now.duration_since(t0) >= timeout || now >= next_progress {
            let waiting: Vec<String> = phases.iter().map(|(k, v)| format!("{k} {v}")).collect();
            eprintln!(
                "[{label}] {:>6.1} s: {}/{n} Ready{}",
                now.duration_since(t0).as_secs_f64(),
                ready_at.len(),
                if waiting.is_empty() {
                    String::new()
                } else {
                    format!(" (not yet: {})", waiting.join(", "))
                }
            );
            next_progress = now + PROGRESS_EVERY;
        }
        if all {
            return Ok(Waited {
                wall: Some(now.duration_since(t0)),
                ready_at,
                not_ready: BTreeMap::new(),
                per_node,
                last_error,
            });
        }
        if now.duration_since(t0) >= timeout {
            return Ok(Waited {
                wall: None,
                ready_at,
                not_ready: phases,
                per_node,
                last_error,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Deletes the run's pods and waits until none is left; None after `timeout`.
async fn delete_all(
    pods: &Api<CloudPod>,
    lp: &ListParams,
    names: &[String],
    timeout: Duration,
    label: &str,
) -> anyhow::Result<Option<Duration>> {
    let t0 = Instant::now();
    let dp = DeleteParams::default();
    let results = join_all(names.iter().map(|n| pods.delete(n, &dp))).await;
    for (name, r) in names.iter().zip(results) {
        match r {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("deleting CloudPod {name}")),
        }
    }
    let mut next_progress = t0 + PROGRESS_EVERY;
    loop {
        let left = pods.list_metadata(lp).await?.items.len();
        let now = Instant::now();
        if left == 0 {
            eprintln!(
                "[{label}] deleted in {:.1} s",
                now.duration_since(t0).as_secs_f64()
            );
            return Ok(Some(now.duration_since(t0)));
        }
        if now.duration_since(t0) >= timeout {
            eprintln!("[{label}] {left} pods still there after {timeout:?}");
            return Ok(None);
        }
        if now >= next_progress {
            eprintln!(
                "[{label}] {:>6.1} s: {left} pods left",
                now.duration_since(t0).as_secs_f64()
            );
            next_progress = now + PROGRESS_EVERY;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Everything a run needs that outlives it.
struct Env<'a> {
    args: &'a BenchOperatorArgs,
    client: kube::Client,
    pool: sqlx::PgPool,
    nodes: &'a NodesConfig,
}

/// One profile: knobs, operator, quota, N pods to Ready, delete, stop.
async fn run_profile(env: &Env<'_>, name: ProfileName) -> anyhow::Result<RunReport> {
    let profile = name.profile();
    let args = env.args;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let run_id = format!("{}-{}", name.as_str(), &id[..8]);
    let tenant = format!("bench-{}", &id[..8]);
    let label = name.as_str();
    let n = args.pods as usize;

    let registry = Registry::default();
    let (pve, nodes) = operator::ssh_driver(env.nodes, &registry);
    set_faults(&pve, &profile.faults()).await?;
    eprintln!(
        "[{label}] run {run_id}: {n} pods (plan {}) on {} nodes, knobs {}",
        args.plan,
        nodes.len(),
        profile.faults()
    );

    let selector = format!("{RUN_LABEL}={run_id}");
    let parts = Parts {
        client: env.client.clone(),
        pool: env.pool.clone(),
        pve: pve.clone(),
        nodes: nodes.clone(),
        quota_defaults: QuotaLimits::default(),
        controller: ControllerSettings {
            namespace: Some(args.namespace.clone()),
            label_selector: Some(selector.clone()),
            pending_recheck: Duration::from_secs(10),
            ..ControllerSettings::default()
        },
        worker: WorkerSettings {
            concurrency: 64,
            max_tasks_per_node: profile.worker_slots,
            placement: Placement::Spread,
            agent_poll: Duration::from_millis(100),
            ..WorkerSettings::default()
        },
        listen: None,
        // One scan at start-up at most; the bench measures pods, not the scan.
        orphan_scan_interval: Duration::from_secs(3600),
        registry: registry.clone(),
    };
    let running = operator::start(parts).await?;

    let pods: Api<CloudPod> = Api::namespaced(env.client.clone(), &args.namespace);
    let lp = ListParams::default().labels(&selector);
    let names: Vec<String> = (1..=n).map(|i| format!("b{}-{i:05}", &id[..8])).collect();
    let measured = async {
        quota(&env.client, &tenant, &run_id).await?;
        let specs: Vec<CloudPod> = names
            .iter()
            .map(|nm| pod(nm, &args.namespace, &tenant, &args.plan, &run_id))
            .collect();
        let t0 = Instant::now();
        let sent = join_all(specs.iter().map(|cp| async {
            let at = Instant::now();
            pods.create(&PostParams::default(), cp).await.map(|_| at)
        }))
        .await;
        let mut sent_at = BTreeMap::new();
        for (name, r) in names.iter().zip(sent) {
            let at = r.with_context(|| format!("creating CloudPod {name}"))?;
            sent_at.insert(name.clone(), at);
        }
        eprintln!(
            "[{label}] {n} creates answered in {:.2} s",
            t0.elapsed().as_secs_f64()
        );
        let waited = wait_ready(&pods, &lp, n, t0, args.timeout, label).await?;
        let at_ready = Snapshot::parse(&registry.render());
        let times: Vec<Duration> = waited
            .ready_at
            .iter()
            .filter_map(|(name, at)| Some(at.duration_since(*sent_at.get(name)?)))
            .collect();
        anyhow::Ok((waited, at_ready, times))
    }
    .await;

    // Clean up whatever happened above; the environment may be shared by later runs.
    let delete_wall = delete_all(&pods, &lp, &names, args.timeout, label).await;
    let end = Snapshot::parse(&registry.render());
    let tq: Api<TenantQuota> = Api::all(env.client.clone());
    let _ = tq.delete(&tenant, &DeleteParams::default()).await;
    running.stop().await;
    let reset = set_faults(&pve, &json!({})).await;
    for node in &nodes {
        if let Ok(ssh) = pve.ssh(node) {
            ssh.close().await;
        }
    }

    let (waited, at_ready, times) = measured?;
    let delete_wall = delete_wall?;
    reset?;
    Ok(RunReport {
        profile,
        run_id,
        pods: n,
        nodes: nodes.len(),
        ready: waited.ready_at.len(),
        wall_ready: waited.wall,
        lower_bound: profile.lower_bound(n, nodes.len()),
        per_pod: Spread::of(&times),
        for_delete: end.since(&at_ready),
        at_ready,
        bench_creates: n as u64,
        delete_wall,
        not_ready: waited.not_ready,
        per_node: waited.per_node,
        last_error: waited.last_error,
    })
}

/// `cloudpods bench-operator`: runs every profile, prints progress on stderr and the table
/// (or, with `--json`, JSON) on stdout.
pub async fn run(args: &BenchOperatorArgs) -> anyhow::Result<Vec<RunReport>> {
    anyhow::ensure!(
        !args.profiles.is_empty(),
        "--profiles: at least one profile"
    );
    let pool = crate::store::connect(&args.db).await?;
    crate::store::check_schema(&pool).await?;
    let client = crate::api::kube_client(args.kubeconfig.as_deref()).await?;
    let nodes = NodesConfig::load(&args.nodes_file)?;
    create_namespace(&client, &args.namespace).await;
    let env = Env {
        args,
        client,
        pool,
        nodes: &nodes,
    };
    let mut reports = Vec::new();
    for &name in &args.profiles {
        reports.push(run_profile(&env, name).await?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&reports))?);
    } else {
        println!();
        print!("{}", format_table(&reports));
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_and_print() {
        assert_eq!("zero".parse(), Ok(ProfileName::Zero));
        assert_eq!(" Realistic ".parse(), Ok(ProfileName::Realistic));
        assert!("fast".parse::<ProfileName>().is_err());
        assert_eq!(ProfileName::Realistic.to_string(), "realistic");
    }

    #[test]
    fn faults_of_each_profile() {
        assert_eq!(ProfileName::Zero.profile().faults(), json!({}));
        assert_eq!(
            ProfileName::Realistic.profile().faults(),
            json!({
                "durations_ms": {"clone": 3000, "start": 1000},
                "agent_ready_ms": 2000,
                "agent_ip_delay_ms": 2000,
                "max_concurrent_tasks": 3,
            })
        );
    }

    #[test]
    fn lower_bound() {
        let r = ProfileName::Realistic.profile();
        // 50 pods per node x 4 s over 3 slots + 2 s.
        assert_eq!(r.lower_bound(100, 2), Duration::from_nanos(68_666_666_666));
        // Odd counts round up on the busiest node: 51 x 4 / 3 + 2 = 70.
        assert_eq!(r.lower_bound(101, 2), Duration::from_secs(70));
        // One pod: its own chain.
        assert_eq!(r.lower_bound(1, 2), Duration::from_secs(6));
        assert_eq!(r.lower_bound(0, 2), Duration::ZERO);
        assert_eq!(
            ProfileName::Zero.profile().lower_bound(100, 2),
            Duration::ZERO
        );
        // The tighter of the simulator's and the worker's slots counts.
        let mut p = r;
        p.worker_slots = 1;
        assert_eq!(p.slots(), 1);
        assert_eq!(p.lower_bound(4, 2), Duration::from_secs(10));
        p.sim_slots = None;
        p.worker_slots = 8;
        assert_eq!(p.slots(), 8);
        assert!(
            r.lower_bound_text(100, 2).ends_with("= 68.67 s"),
            "{}",
            r.lower_bound_text(100, 2)
        );
        assert_eq!(
            ProfileName::Zero.profile().lower_bound_text(100, 2),
            "0 (no simulated latency)"
        );
    }

    const METRICS: &str = "\
# HELP cloudpods_kube_writes_total Writes to the Kubernetes API by kind (status, finalizer, event).
# TYPE cloudpods_kube_writes_total counter
cloudpods_kube_writes_total{kind=\"status\"} 250
cloudpods_kube_writes_total{kind=\"finalizer\"} 100
cloudpods_kube_writes_total_extra{kind=\"x\"} 9
# TYPE cloudpods_ssh_command_duration_seconds histogram
cloudpods_ssh_command_duration_seconds_bucket{command=\"clone\",result=\"ok\",le=\"0.001\"} 0
cloudpods_ssh_command_duration_seconds_sum{command=\"clone\",result=\"ok\"} 12.5
cloudpods_ssh_command_duration_seconds_count{command=\"clone\",result=\"ok\"} 100
cloudpods_ssh_command_duration_seconds_count{command=\"clone\",result=\"error\"} 2
cloudpods_ssh_command_duration_seconds_count{command=\"weird \\\"q\\\"\",result=\"ok\"} 1
cloudpods_reconcile_total{controller=\"cloudpod\",result=\"ok\"} 7
plain_gauge 3
";

    #[test]
    fn reads_counters_from_the_text_format() {
        let s = Snapshot::parse(METRICS);
        assert_eq!(s.kube_writes.total(), 350);
        assert_eq!(s.kube_writes.by["finalizer"], 100);
        assert_eq!(s.ssh_commands.by["clone"], 102);
        assert_eq!(s.ssh_commands.by["weird \"q\""], 1);
        assert_eq!(s.ssh_commands.total(), 103);
        assert_eq!(s.reconciles.total(), 7);
        assert_eq!(samples(METRICS, "plain_gauge")[0].value, 3.0);
        assert!(samples(METRICS, "plain").is_empty());
        assert!(samples("", "x").is_empty());
    }

    #[test]
    fn snapshot_differences() {
        let a = Snapshot::parse(METRICS);
        let mut later = METRICS.replace("} 250", "} 260");
        later.push_str("cloudpods_kube_writes_total{kind=\"event\"} 4\n");
        let d = Snapshot::parse(&later).since(&a);
        assert_eq!(
            d.kube_writes.by,
            BTreeMap::from([("event".into(), 4), ("status".into(), 10)])
        );
        assert_eq!(d.ssh_commands.total(), 0);
        assert_eq!(d.kube_writes.text(), "event=4 status=10");
        assert_eq!(Counts::default().text(), "none");
    }

    #[test]
    fn spread_is_nearest_rank() {
        assert_eq!(Spread::of(&[]), None);
        let t: Vec<Duration> = (1..=10).rev().map(Duration::from_secs).collect();
        let s = Spread::of(&t).unwrap();
        assert_eq!(s.p50, Duration::from_secs(5));
        assert_eq!(s.p90, Duration::from_secs(9));
        assert_eq!(s.max, Duration::from_secs(10));
        let one = Spread::of(&[Duration::from_secs(2)]).unwrap();
        assert_eq!(
            (one.p50, one.p90, one.max),
            (
                Duration::from_secs(2),
                Duration::from_secs(2),
                Duration::from_secs(2)
            )
        );
    }

    fn report(name: ProfileName, wall: Option<Duration>) -> RunReport {
        let profile = name.profile();
        let at_ready = Snapshot::parse(METRICS);
        RunReport {
            profile,
            run_id: "r".into(),
            pods: 100,
            nodes: 2,
            ready: if wall.is_some() { 100 } else { 40 },
            wall_ready: wall,
            lower_bound: profile.lower_bound(100, 2),
            per_pod: Spread::of(&[Duration::from_secs(3), Duration::from_secs(5)]),
            for_delete: Snapshot::default(),
            at_ready,
            bench_creates: 100,
            delete_wall: Some(Duration::from_secs(4)),
            not_ready: if wall.is_some() {
                BTreeMap::new()
            } else {
                BTreeMap::from([("Provisioning".into(), 60)])
            },
            per_node: BTreeMap::from([("pve1".into(), 50), ("pve2".into(), 50)]),
            last_error: None,
        }
    }

    #[test]
    fn table_and_json_shapes() {
        let zero = report(ProfileName::Zero, Some(Duration::from_secs(10)));
        let slow = report(ProfileName::Realistic, None);
        assert_eq!(zero.ratio(), None, "no ratio against a zero bound");
        let mut fast = report(ProfileName::Realistic, Some(Duration::from_millis(137_333)));
        fast.lower_bound = Duration::from_millis(68_666);
        assert!((fast.ratio().unwrap() - 2.0).abs() < 0.001);

        let table = format_table(&[zero.clone(), slow.clone()]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("profile"));
        assert!(
            lines[2].starts_with("zero") && lines[2].contains("10.00"),
            "{}",
            lines[2]
        );
        assert!(
            lines[2].contains(" 3.50 "),
            "kube writes per pod: {}",
            lines[2]
        );
        assert!(
            lines[3].starts_with("realistic") && lines[3].contains("timeout"),
            "{}",
            lines[3]
        );
        assert!(table.contains("realistic: not Ready at the timeout: Provisioning=60"));
        assert!(table.contains("zero: lower bound 0 (no simulated latency)"));
        assert!(table.contains("zero: pods per node: pve1=50 pve2=50"));
        assert!(table.lines().all(|l| l == l.trim_end()));

        let j = to_json(&[zero, slow]);
        assert_eq!(j[0]["profile"], "zero");
        assert_eq!(j[0]["kubeWritesPerPod"], 3.5);
        assert_eq!(j[0]["untilReady"]["kubeWrites"]["by"]["status"], 250);
        assert_eq!(j[0]["perPodSeconds"]["max"], 5.0);
        assert_eq!(j[1]["wallToReadySeconds"], serde_json::Value::Null);
        assert_eq!(j[1]["slotsPerNode"], 3);
        assert_eq!(j[1]["notReady"]["Provisioning"], 60);
    }

    #[test]
    fn pods_are_labelled_and_valid_names() {
        let cp = pod(
            "b1a2b3c4d-00001",
            "ns",
            "bench-1a2b3c4d",
            "student",
            "zero-1a2b3c4d",
        );
        assert_eq!(cp.metadata.labels.unwrap()[RUN_LABEL], "zero-1a2b3c4d");
        assert_eq!(cp.spec.blueprint, BLUEPRINT);
        assert_eq!(cp.metadata.namespace.as_deref(), Some("ns"));
    }
}
