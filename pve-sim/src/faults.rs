//! Fault and latency knobs, read from `<state>/faults.json` at every invocation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Which invocation numbers (1-based, per command key) fail.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NSpec {
    /// A single call number.
    One(u64),
    /// Several call numbers.
    Many(Vec<u64>),
}

/// Failure details shared by `fail_nth` and `fail_rate`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct FailOpts {
    /// stderr text (default `simulated failure (...)`).
    pub message: Option<String>,
    /// Exit code (default 255; resize/template still exit 0 for in-task failures).
    pub exit_code: Option<i32>,
    /// `before` (nothing changes) or `task` (inside the task, after partial side effects).
    pub phase: Option<String>,
}

/// `fail_nth` entry: a bare number or an object.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FailNth {
    /// Fail exactly the n-th call.
    N(u64),
    /// Full form.
    Full {
        /// Call number(s) to fail.
        n: NSpec,
        /// Failure details.
        #[serde(flatten)]
        opts: FailOpts,
    },
}

/// `fail_rate` entry: a bare fraction or an object.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FailRate {
    /// Probability in 0..=1.
    Rate(f64),
    /// Full form.
    Full {
        /// Probability in 0..=1.
        rate: f64,
        /// Failure details.
        #[serde(flatten)]
        opts: FailOpts,
    },
}

/// Simulated dropped SSH connection.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct DropSpec {
    /// Milliseconds after the task started.
    pub after_ms: u64,
    /// `kill_without_cleanup` (default) or `abort_with_cleanup`.
    pub effect: String,
    /// Also send SIGHUP to the sshd session process (nearest `sshd` ancestor) first.
    pub hup_parent: bool,
}

/// All knobs. Every field is optional in the JSON file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Task durations in ms per command key (clone, start, stop, shutdown, reboot, resize,
    /// destroy, snapshot, rollback, delsnapshot, template, backup|vzdump, restore|qmrestore).
    pub durations_ms: BTreeMap<String, u64>,
    /// IPv4 shows up in `network-get-interfaces` this long after start.
    pub agent_ip_delay_ms: u64,
    /// Agent answers this long after start (default: `agent_ip_delay_ms`).
    pub agent_ready_ms: Option<u64>,
    /// `normal`, `never` (agent never answers) or `no_ipv4` (answers, never an IPv4).
    pub agent_mode: String,
    /// Per-vmid override of `agent_mode`.
    pub agent_mode_by_vmid: BTreeMap<String, String>,
    /// How long `qm guest cmd` waits before `QEMU guest agent is not running` (real: 3000).
    pub agent_timeout_ms: u64,
    /// Counting semaphore for long tasks on this node (0 = unlimited).
    pub max_concurrent_tasks: u32,
    /// Fail the n-th call of a command key.
    pub fail_nth: BTreeMap<String, FailNth>,
    /// Fail a fraction of calls of a command key (deterministic, see `seed`).
    pub fail_rate: BTreeMap<String, FailRate>,
    /// Seed for `fail_rate`.
    pub seed: u64,
    /// Command keys that hang forever (inside the task for task commands).
    pub hang: Vec<String>,
    /// Command keys whose connection drops mid-task.
    pub drop: BTreeMap<String, DropSpec>,
    /// How long a new VM shows `status: unknown` and no name in /cluster/resources.
    pub rrd_lag_ms: u64,
    /// JSON encoding of `/cluster/nextid`: `string` (default) or `number`.
    pub nextid_json: String,
    /// Modifying operations fail with `cluster not ready - no quorum?`.
    pub no_quorum: bool,
    /// VMIDs whose guest ignores ACPI shutdown.
    pub shutdown_ignored: Vec<u32>,
    /// 8 or 9: toggles version-dependent output lines.
    pub pve_version: u32,
    /// Timeout of the per-VMID flock (real: 10000).
    pub flock_timeout_ms: u64,
    /// Timeout of clone's flocks (real: 1000).
    pub clone_flock_timeout_ms: u64,
    /// Command keys that finish with N `WARN:` lines (exit 0).
    pub task_warnings: BTreeMap<String, u32>,
    /// Number of progress lines printed over a long task's duration.
    pub progress_steps: u32,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            durations_ms: BTreeMap::new(),
            agent_ip_delay_ms: 0,
            agent_ready_ms: None,
            agent_mode: "normal".into(),
            agent_mode_by_vmid: BTreeMap::new(),
            agent_timeout_ms: 0,
            max_concurrent_tasks: 0,
            fail_nth: BTreeMap::new(),
            fail_rate: BTreeMap::new(),
            seed: 0,
            hang: Vec::new(),
            drop: BTreeMap::new(),
            rrd_lag_ms: 0,
            nextid_json: "string".into(),
            no_quorum: false,
            shutdown_ignored: Vec::new(),
            pve_version: 9,
            flock_timeout_ms: 10_000,
            clone_flock_timeout_ms: 1_000,
            task_warnings: BTreeMap::new(),
            progress_steps: 4,
        }
    }
}

/// A decided injected failure for this invocation.
#[derive(Debug, Clone)]
pub struct FailHit {
    /// stderr text.
    pub message: String,
    /// exit code.
    pub code: i32,
    /// true: fail inside the task; false: before anything changes.
    pub in_task: bool,
}

/// Aliases: the same knob may be spelled with either name.
pub fn aliases(key: &str) -> Vec<&str> {
    match key {
        "vzdump" | "backup" => vec!["vzdump", "backup"],
        "qmrestore" | "restore" => vec!["qmrestore", "restore"],
        other => vec![other],
    }
}

impl Faults {
    /// Task duration for a command key.
    pub fn duration(&self, key: &str) -> u64 {
        aliases(key)
            .iter()
            .find_map(|k| self.durations_ms.get(*k).copied())
            .unwrap_or(0)
    }

    /// Whether the command key hangs.
    pub fn hangs(&self, key: &str) -> bool {
        aliases(key)
            .iter()
            .any(|k| self.hang.iter().any(|h| h == k))
    }

    /// Drop spec for a command key.
    pub fn drop_for(&self, key: &str) -> Option<&DropSpec> {
        aliases(key).iter().find_map(|k| self.drop.get(*k))
    }

    /// Decide whether call number `n` (1-based) of `key` fails.
    pub fn decide(&self, key: &str, n: u64) -> Option<FailHit> {
        let mk = |opts: &FailOpts, why: String| FailHit {
            message: opts
                .message
                .clone()
                .unwrap_or_else(|| format!("simulated failure ({why})")),
            code: opts.exit_code.unwrap_or(255),
            in_task: opts.phase.as_deref() == Some("task"),
        };
        for k in aliases(key) {
            if let Some(spec) = self.fail_nth.get(k) {
                let (hit, opts) = match spec {
                    FailNth::N(m) => (*m == n, FailOpts::default()),
                    FailNth::Full {
                        n: NSpec::One(m),
                        opts,
                    } => (*m == n, opts.clone()),
                    FailNth::Full {
                        n: NSpec::Many(v),
                        opts,
                    } => (v.contains(&n), opts.clone()),
                };
                if hit {
                    return Some(mk(&opts, format!("fail_nth {k} #{n}")));
                }
            }
            if let Some(spec) = self.fail_rate.get(k) {
                let (rate, opts) = match spec {
                    FailRate::Rate(r) => (*r, FailOpts::default()),
                    FailRate::Full { rate, opts } => (*rate, opts.clone()),
                };
                let r = crate::util::splitmix64(self.seed ^ crate::util::fnv(k) ^ n);
                let u = (r >> 11) as f64 / (1u64 << 53) as f64;
                if u < rate {
                    return Some(mk(&opts, format!("fail_rate {k} #{n}")));
                }
            }
        }
        None
    }
}
