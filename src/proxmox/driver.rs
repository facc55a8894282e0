//! [`SshProxmox`]: the [`Proxmox`] trait over SSH, one pooled [`SshNode`] per Proxmox node.
//!
//! Every operation is *look → build → run → classify → (verify)*: the argv comes from
//! [`commands`], the output goes through [`parse`] and [`check`], and this file only decides
//! the order of the steps, the retries and the waits. It never builds a shell string.
//!
//! - **Timeouts**: every remote command has one ([`DriverSettings::timeout_for`]); an expired
//!   one is [`ProxmoxError::Timeout`].
//! - **Retries**: exponential backoff with jitter ([`Backoff`]), only for transient errors
//!   (transport, flock contention, no quorum) and only where repeating is harmless. Reads and
//!   idempotent sets repeat freely; non-idempotent commands (reboot, rollback, a `+N` resize)
//!   are only re-sent when the transport proves the first attempt never reached the node. A
//!   clone, backup or restore is never re-run: they are detached jobs guarded by their job id.
//! - **Lying exit codes**: after `qm disk resize` and `pvesm free` the state is read back.
//! - **Long jobs** (clone, vzdump, qmrestore) run detached ([`detached`]) and are polled with
//!   a deadline; a dropped connection during the wait reconnects and keeps polling.
//! - **Idempotency** follows the trait's documentation: look before acting where the node's
//!   answer would not tell (stop, shutdown, clone, resize), and map "already"/"gone" answers
//!   to [`Applied::Already`] / [`Destroyed::AlreadyGone`].

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::{Instant, sleep};
use tracing::Instrument;

use super::argv::{Command, RemoteCommand};
use super::classify::{Outcome, check};
use super::commands::{self, BackupSpec, CloneSpec, CloudInitSpec, CommandKind, RestoreSpec};
use super::detached::{self, JobPoll, JobState, StartOutcome};
use super::error::{Missing, ObservedState, ProxmoxError, truncate};
use super::parse::{
    self, BackupEntry, ClusterVm, GuestAddresses, RunStatus, SnapshotInfo, VmConfig, VmStatus,
};
use super::ssh::{SshError, SshNode};
use super::types::{
    BackupVolid, Cores, Description, DiskId, JobId, MemoryMib, NodeName, OwnershipMarker,
    RemoteDir, SizeSpec, SnapshotName, StorageId, Tag, Vmid, parse_config_size,
};
use super::{Applied, Destroyed, Proxmox, Result};
use crate::backoff::Backoff;

/// Retry policy for transient failures: exponential backoff with jitter ([`Backoff`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (1 = no retry).
    pub attempts: u32,
    /// Delay before the first retry (before jitter).
    pub base_delay: Duration,
    /// Upper bound of any delay.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            attempts: 1,
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        }
    }

    /// The schedule of the delays between attempts.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            base: self.base_delay,
            max: self.max_delay,
        }
    }

    /// The delay before retry number `retry` (1-based): see [`Backoff::delay`].
    pub fn delay(&self, retry: u32) -> Duration {
        self.backoff().delay(retry)
    }
}

impl Default for RetryPolicy {
    /// 3 attempts, 200 ms then 400 ms (each jittered), at most 5 s.
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
        }
    }
}

/// Called after every remote command with its kind, duration and whether it succeeded
/// (metrics). Must be cheap: it runs on the caller's task.
#[derive(Clone)]
pub struct CommandObserver(pub std::sync::Arc<dyn Fn(CommandKind, Duration, bool) + Send + Sync>);

impl std::fmt::Debug for CommandObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommandObserver")
    }
}

/// Timeouts, retries and polling of [`SshProxmox`].
#[derive(Debug, Clone)]
pub struct DriverSettings {
    /// Timeout of reads (pvesh get, guest agent, job polls).
    pub read_timeout: Duration,
    /// Timeout of actions (qm set/start/stop/destroy/snapshot/...).
    pub action_timeout: Duration,
    /// Per-command overrides of the two timeouts above.
    pub timeouts: HashMap<CommandKind, Duration>,
    /// Extra time given to `qm shutdown`/`qm reboot` on top of their own `--timeout`.
    pub power_wait_margin: Duration,
    /// How long a clone, backup or restore may take before the wait gives up (the job keeps
    /// running on the node; calling again with the same job id resumes waiting).
    pub job_deadline: Duration,
    /// First pause between two polls of a detached job.
    pub poll_interval: Duration,
    /// Longest pause between two polls (the pause doubles up to this).
    pub max_poll_interval: Duration,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// Told about every remote command (for metrics), if set.
    pub observer: Option<CommandObserver>,
}

impl Default for DriverSettings {
    fn default() -> Self {
        DriverSettings {
            read_timeout: Duration::from_secs(30),
            action_timeout: Duration::from_secs(180),
            timeouts: HashMap::new(),
            power_wait_margin: Duration::from_secs(30),
            job_deadline: Duration::from_secs(2 * 3600),
            poll_interval: Duration::from_millis(250),
            max_poll_interval: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            observer: None,
        }
    }
}

impl DriverSettings {
    /// The timeout of one run of a command of this kind.
    pub fn timeout_for(&self, kind: CommandKind) -> Duration {
        if let Some(t) = self.timeouts.get(&kind) {
            return *t;
        }
        if is_read(kind) {
            self.read_timeout
        } else {
            self.action_timeout
        }
    }
}

/// Commands that change nothing on the node.
fn is_read(kind: CommandKind) -> bool {
    matches!(
        kind,
        CommandKind::NextId
            | CommandKind::CheckVmid
            | CommandKind::Status
            | CommandKind::Config
            | CommandKind::AgentNetwork
            | CommandKind::ListBackups
            | CommandKind::ListSnapshots
            | CommandKind::ListResources
            | CommandKind::TaskStatus
            | CommandKind::DetachedPoll
    )
}

/// Whether a command may be sent again after an attempt that may have reached the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Repeating cannot do harm (reads, idempotent sets, guarded starts).
    Safe,
    /// Re-send only when the transport proves the first attempt never ran.
    Once,
}

/// A successful command's output.
struct Ran {
    stdout: String,
}

/// One node: its SSH connection and where detached job files live.
#[derive(Debug, Clone)]
struct Node {
    ssh: SshNode,
    job_dir: RemoteDir,
}

/// The [`Proxmox`] implementation over SSH.
#[derive(Debug, Clone)]
pub struct SshProxmox {
    nodes: HashMap<NodeName, Node>,
    settings: DriverSettings,
}

impl SshProxmox {
    /// A driver with no nodes yet; add them with [`SshProxmox::with_node`].
    pub fn new(settings: DriverSettings) -> Self {
        SshProxmox {
            nodes: HashMap::new(),
            settings,
        }
    }

    /// Adds a node whose detached job files go to `/var/tmp`.
    pub fn with_node(self, name: NodeName, ssh: SshNode) -> Self {
        self.with_node_in(name, ssh, RemoteDir::var_tmp())
    }

    /// Adds a node whose detached job files go to `job_dir` (an existing directory on the node).
    pub fn with_node_in(mut self, name: NodeName, ssh: SshNode, job_dir: RemoteDir) -> Self {
        self.nodes.insert(name, Node { ssh, job_dir });
        self
    }

    /// The nodes this driver knows, sorted.
    pub fn node_names(&self) -> Vec<&NodeName> {
        let mut names: Vec<&NodeName> = self.nodes.keys().collect();
        names.sort();
        names
    }

    /// The settings.
    pub fn settings(&self) -> &DriverSettings {
        &self.settings
    }

    /// The SSH connection of a node.
    pub fn ssh(&self, node: &NodeName) -> Result<&SshNode> {
        self.node(node).map(|n| &n.ssh)
    }

    /// Removes a finished detached job's files (its result can no longer be reported after
    /// that; a clone is then recognised by its marker). `Ok(false)` while it still runs.
    pub async fn cleanup_job(&self, node: &NodeName, job: &JobId) -> Result<bool> {
        let cmd = detached::cleanup_detached(&self.node(node)?.job_dir, job)?;
        let ran = self.run(node, &cmd, Repeat::Safe, None).await?;
        detached::parse_cleanup(&ran.stdout)
    }

    fn node(&self, node: &NodeName) -> Result<&Node> {
        self.nodes.get(node).ok_or_else(|| ProxmoxError::NotFound {
            what: Missing::Node(node.to_string()),
        })
    }

    // ---- running commands ---------------------------------------------------------------

    /// Runs one command with its timeout (or `timeout`), retrying transient failures as
    /// `repeat` allows, and classifies the result.
    async fn run(
        &self,
        node: &NodeName,
        cmd: &RemoteCommand,
        repeat: Repeat,
        timeout: Option<Duration>,
    ) -> Result<Ran> {
        let ssh = &self.node(node)?.ssh;
        let timeout = timeout.unwrap_or_else(|| self.settings.timeout_for(cmd.kind));
        let policy = self.settings.retry;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let last = attempt >= policy.attempts.max(1);
            let started = Instant::now();
            let err = match ssh.exec(&cmd.script, cmd.stdin.as_deref(), timeout).await {
                Ok(out) => {
                    let stdout = out.stdout_lossy();
                    let stderr = out.stderr_lossy();
                    let exit = out
                        .exit_status
                        .map_or(-1, |s| i32::try_from(s).unwrap_or(-1));
                    let checked = check(cmd.kind, exit, &stdout, &stderr);
                    if let Some(obs) = &self.settings.observer {
                        (obs.0)(cmd.kind, started.elapsed(), checked.is_ok());
                    }
                    tracing::debug!(
                        command = cmd.kind.name(),
                        exit,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        ok = checked.is_ok(),
                        "remote command finished"
                    );
                    match checked {
                        Ok(outcome) => {
                            if outcome.warnings > 0 {
                                tracing::warn!(
                                    command = cmd.kind.name(),
                                    warnings = outcome.warnings,
                                    "task finished with warnings"
                                );
                            }
                            return Ok(Ran { stdout });
                        }
                        Err(e) if repeat == Repeat::Safe && !last && transient(&e) => e,
                        Err(e) => return Err(e),
                    }
                }
                Err(se) => {
                    if let Some(obs) = &self.settings.observer {
                        (obs.0)(cmd.kind, started.elapsed(), false);
                    }
                    let e = from_ssh(cmd.kind, &se);
                    let may_repeat = ssh_transient(&se)
                        && (repeat == Repeat::Safe || !se.command_may_have_run());
                    if !may_repeat || last {
                        return Err(e);
                    }
                    e
                }
            };
            let delay = policy.delay(attempt);
            tracing::warn!(
                command = cmd.kind.name(),
                attempt,
                error = %err,
                delay_ms = delay.as_millis() as u64,
                "transient failure; retrying"
            );
            sleep(delay).await;
        }
    }

    async fn run_cmd(&self, node: &NodeName, cmd: &Command, repeat: Repeat) -> Result<Ran> {
        self.run(node, &cmd.to_remote()?, repeat, None).await
    }

    /// Runs a command for its effect only.
    async fn act(&self, node: &NodeName, cmd: &Command, repeat: Repeat) -> Result<()> {
        self.run_cmd(node, cmd, repeat).await.map(drop)
    }

    /// Runs a safe-to-repeat command whose refusal `already` means "the goal is reached".
    async fn apply_safe(
        &self,
        node: &NodeName,
        cmd: &Command,
        already: impl FnOnce(&ProxmoxError) -> bool,
    ) -> Result<Applied> {
        applied_unless(self.run_cmd(node, cmd, Repeat::Safe).await, already)
    }

    /// Runs a safe-to-repeat removal whose refusal `gone` means "nothing was there".
    async fn remove_safe(
        &self,
        node: &NodeName,
        cmd: &Command,
        gone: impl FnOnce(&ProxmoxError) -> bool,
    ) -> Result<Destroyed> {
        destroyed_unless(self.run_cmd(node, cmd, Repeat::Safe).await, gone)
    }

    /// Runs a freshly built, safe-to-repeat command for its effect (a builder error is
    /// returned as is).
    async fn act_built(&self, node: &NodeName, cmd: Result<Command>) -> Result<()> {
        self.act(node, &cmd?, Repeat::Safe).await
    }

    /// Runs a read (safe to repeat) and parses its stdout.
    async fn query<T>(
        &self,
        node: &NodeName,
        cmd: &Command,
        parse: impl FnOnce(&str) -> Result<T>,
    ) -> Result<T> {
        let ran = self.run_cmd(node, cmd, Repeat::Safe).await?;
        parse(&ran.stdout)
    }

    /// How long to wait for `qm shutdown`/`qm reboot` with their own `--timeout`.
    fn power_wait(&self, kind: CommandKind, timeout: Duration) -> Duration {
        self.settings
            .timeout_for(kind)
            .max(timeout + self.settings.power_wait_margin)
    }

    // ---- detached jobs ------------------------------------------------------------------

    async fn poll_job(&self, node: &NodeName, job: &JobId) -> Result<JobPoll> {
        let cmd = detached::poll_detached(&self.node(node)?.job_dir, job)?;
        let ran = self.run(node, &cmd, Repeat::Safe, None).await?;
        detached::parse_poll(&ran.stdout)
    }

    /// Starts the job unless its directory exists; `true` when this call started it.
    async fn start_job(&self, node: &NodeName, job: &JobId, command: &Command) -> Result<bool> {
        let cmd = detached::detached(&self.node(node)?.job_dir, job, command)?;
        // Safe to repeat: the job directory is created atomically, once.
        let ran = self.run(node, &cmd, Repeat::Safe, None).await?;
        let started = detached::parse_start(&ran.stdout)? == StartOutcome::Started;
        tracing::info!(job = %job, command = command.kind.name(), started, "detached job");
        Ok(started)
    }

    /// Polls until the job is done or lost, or `job_deadline` passes. Transport failures and
    /// timeouts of single polls only delay the next poll (the connection is re-made).
    async fn wait_job(&self, node: &NodeName, job: &JobId, kind: CommandKind) -> Result<JobPoll> {
        let deadline = Instant::now() + self.settings.job_deadline;
        let mut interval = self.settings.poll_interval;
        loop {
            match self.poll_job(node, job).await {
                Ok(p) => match p.state {
                    JobState::Done { .. } | JobState::Lost => return Ok(p),
                    JobState::Absent => {
                        return Err(ProxmoxError::unexpected(format!(
                            "detached job {job} vanished while {} ran",
                            kind.name()
                        )));
                    }
                    JobState::Running => {}
                },
                Err(
                    e @ (ProxmoxError::Transport { .. }
                    | ProxmoxError::Timeout { .. }
                    | ProxmoxError::Unavailable { .. }),
                ) => {
                    tracing::warn!(job = %job, error = %e, "polling the job failed; polling on");
                }
                Err(e) => return Err(e),
            }
            if Instant::now() + interval >= deadline {
                return Err(ProxmoxError::Timeout {
                    command: kind.name().to_string(),
                    after: Some(self.settings.job_deadline),
                });
            }
            sleep(interval).await;
            interval = (interval * 2).min(self.settings.max_poll_interval);
        }
    }

    /// Starts the job if it has never started (after `look` found nothing in the way) and
    /// waits for it. Returns whether this call started it, and the final poll.
    async fn run_job(
        &self,
        node: &NodeName,
        job: &JobId,
        command: &Command,
    ) -> Result<(bool, JobPoll)> {
        let first = self.poll_job(node, job).await?;
        let started = match first.state {
            JobState::Absent => self.start_job(node, job, command).await?,
            JobState::Done { .. } | JobState::Lost => return Ok((false, first)),
            JobState::Running => false,
        };
        let poll = self.wait_job(node, job, command.kind).await?;
        Ok((started, poll))
    }

    // ---- shared reads ---------------------------------------------------------------------

    async fn read_config(&self, node: &NodeName, on: &NodeName, vmid: Vmid) -> Result<VmConfig> {
        self.query(node, &commands::config(on, vmid), parse::parse_config)
            .await
    }

    async fn read_status(&self, node: &NodeName, vmid: Vmid) -> Result<VmStatus> {
        self.query(node, &commands::status(node, vmid), parse::parse_status)
            .await
    }

    /// The size in bytes of `disk` from the config (`size=`).
    async fn disk_size(&self, node: &NodeName, vmid: Vmid, disk: &DiskId) -> Result<u64> {
        self.query(node, &commands::config(node, vmid), |out| {
            disk_size_in(out, disk)
        })
        .await
    }

    async fn read_backups(
        &self,
        node: &NodeName,
        storage: &StorageId,
        vmid: Vmid,
    ) -> Result<Vec<BackupEntry>> {
        let cmd = commands::list_backups(node, storage, vmid);
        self.query(node, &cmd, parse::parse_backups).await
    }

    // ---- operations -----------------------------------------------------------------------

    async fn clone_impl(&self, node: &NodeName, job: &JobId, spec: &CloneSpec) -> Result<Applied> {
        let command = commands::clone_vm(spec)?;
        let marker = OwnershipMarker::find_in(spec.description.as_str()).ok_or_else(|| {
            ProxmoxError::invalid("description", "a clone's description must carry the marker")
        })?;
        let home = spec.target_node.as_ref().unwrap_or(node);
        let first = self.poll_job(node, job).await?;
        let started = match first.state {
            JobState::Absent => {
                // Look before creating: the job files may be gone while the VM exists.
                match self.read_config(node, home, spec.target).await {
                    Ok(cfg) => return existing_clone(&cfg, &marker, spec.target),
                    Err(e) if e.is_vm_not_found() => {}
                    Err(e) => return Err(e),
                }
                self.start_job(node, job, &command).await?
            }
            _ => false,
        };
        let poll = if matches!(first.state, JobState::Done { .. } | JobState::Lost) {
            first
        } else {
            self.wait_job(node, job, CommandKind::Clone).await?
        };
        let applied = if started {
            Applied::Now
        } else {
            Applied::Already
        };
        match job_result(&poll, CommandKind::Clone) {
            Some(r) => r.map(|_| applied),
            None => {
                // Lost: the wrapper died. The clone itself may have finished.
                match self.read_config(node, home, spec.target).await {
                    Ok(cfg) if existing_clone(&cfg, &marker, spec.target).is_ok() => Ok(applied),
                    _ => Err(lost(CommandKind::Clone, &poll)),
                }
            }
        }
    }

    async fn resize_impl(
        &self,
        node: &NodeName,
        vmid: Vmid,
        disk: &DiskId,
        size: SizeSpec,
    ) -> Result<Applied> {
        let before = self.disk_size(node, vmid, disk).await?;
        let want = if size.is_growth() {
            before.saturating_add(size.bytes())
        } else {
            size.bytes()
        };
        if !size.is_growth() {
            if before == want {
                return Ok(Applied::Already);
            }
            if before > want {
                return Err(ProxmoxError::Rejected {
                    field: "size".into(),
                    message: format!(
                        "shrinking disks is not supported ({disk} is {before} bytes, asked {want})"
                    ),
                });
            }
        }
        let repeat = if size.is_growth() {
            Repeat::Once
        } else {
            Repeat::Safe
        };
        self.act(node, &commands::resize_disk(vmid, disk, size), repeat)
            .await?;
        // qm disk resize exits 0 when its task fails (§0.2): believe the config only.
        let after = self.disk_size(node, vmid, disk).await?;
        if after != want {
            return Err(ProxmoxError::Failed {
                command: CommandKind::Resize.name().to_string(),
                exit: 0,
                stderr: format!(
                    "reported success, but {disk} is {after} bytes instead of {want} bytes"
                ),
            });
        }
        Ok(Applied::Now)
    }

    async fn backup_impl(
        &self,
        node: &NodeName,
        job: &JobId,
        spec: &BackupSpec,
    ) -> Result<BackupEntry> {
        let command = commands::backup(spec);
        let (_, poll) = self.run_job(node, job, &command).await?;
        match job_result(&poll, CommandKind::Backup) {
            Some(r) => r?,
            None => return Err(lost(CommandKind::Backup, &poll)),
        };
        let archive = archive_name(&poll.log);
        let list = self.read_backups(node, &spec.storage, spec.vmid).await?;
        let found = match &archive {
            Some(name) => list
                .into_iter()
                .find(|e| e.volid.as_str().rsplit('/').next() == Some(name.as_str())),
            // No archive line in the log tail: the newest archive carrying our marker.
            None => list
                .into_iter()
                .rev()
                .find(|e| e.marker().as_ref() == Some(&spec.marker)),
        };
        found.ok_or_else(|| {
            ProxmoxError::unexpected(format!(
                "vzdump finished, but its archive {} is not listed on {}",
                archive.as_deref().unwrap_or("(unnamed)"),
                spec.storage
            ))
        })
    }

    async fn delete_backup_impl(&self, node: &NodeName, volid: &BackupVolid) -> Result<Destroyed> {
        let ran = self
            .run_cmd(node, &commands::delete_backup(volid), Repeat::Safe)
            .await;
        let gone = |e: &ProxmoxError| {
            matches!(
                e,
                ProxmoxError::NotFound {
                    what: Missing::Volume(_)
                }
            )
        };
        if destroyed_unless(ran, gone)? == Destroyed::AlreadyGone {
            return Ok(Destroyed::AlreadyGone);
        }
        // pvesm free may exit 0 when its task fails: check that the archive is gone.
        if let (Some(vmid), Ok(storage)) = (archive_vmid(volid), StorageId::parse(volid.storage()))
        {
            let left = self.read_backups(node, &storage, vmid).await?;
            if left.iter().any(|e| e.volid == *volid) {
                return Err(ProxmoxError::Failed {
                    command: CommandKind::DeleteBackup.name().to_string(),
                    exit: 0,
                    stderr: format!("reported success, but {volid} is still listed"),
                });
            }
        }
        Ok(Destroyed::Now)
    }
}

/// What an existing clone target means for a clone with `marker`.
fn existing_clone(cfg: &VmConfig, marker: &OwnershipMarker, vmid: Vmid) -> Result<Applied> {
    if cfg.template || cfg.marker().as_ref() != Some(marker) {
        return Err(ProxmoxError::VmidTaken { vmid: Some(vmid) });
    }
    match &cfg.lock {
        None => Ok(Applied::Already),
        Some(kind) => Err(ProxmoxError::Locked { kind: kind.clone() }),
    }
}

/// A finished job's classified result; `None` for a lost one.
fn job_result(poll: &JobPoll, kind: CommandKind) -> Option<Result<Outcome>> {
    let r = poll.result(kind)?;
    if let Ok(o) = &r
        && o.warnings > 0
    {
        tracing::warn!(
            command = kind.name(),
            warnings = o.warnings,
            "job finished with warnings"
        );
    }
    Some(r)
}

fn lost(kind: CommandKind, poll: &JobPoll) -> ProxmoxError {
    ProxmoxError::Failed {
        command: kind.name().to_string(),
        exit: -1,
        stderr: format!(
            "the detached job died without an exit status (killed or node rebooted); \
             expect a stale config lock. Log tail: {}",
            truncate(&poll.log, 512)
        ),
    }
}

/// The archive file name from vzdump's `creating vzdump archive '<path>/<name>'` line.
fn archive_name(log: &str) -> Option<String> {
    const NEEDLE: &str = "creating vzdump archive '";
    let line = log.lines().find(|l| l.contains(NEEDLE))?;
    let rest = &line[line.find(NEEDLE)? + NEEDLE.len()..];
    let path = &rest[..rest.find('\'')?];
    path.rsplit('/').next().map(str::to_string)
}

/// The VMID in a `vzdump-qemu-<vmid>-...` archive name.
fn archive_vmid(volid: &BackupVolid) -> Option<Vmid> {
    let name = volid.as_str().rsplit('/').next()?;
    let rest = name.strip_prefix("vzdump-qemu-")?;
    Vmid::parse(rest.split('-').next()?).ok()
}

/// The `size=` of `disk` in config JSON, in bytes.
fn disk_size_in(config_json: &str, disk: &DiskId) -> Result<u64> {
    let v: serde_json::Value = serde_json::from_str(config_json.trim())
        .map_err(|e| ProxmoxError::unexpected(format!("config: not JSON ({e})")))?;
    let value = v
        .get(disk.as_str())
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| ProxmoxError::NotFound {
            what: Missing::Disk(disk.to_string()),
        })?;
    value
        .split(',')
        .find_map(|p| p.strip_prefix("size="))
        .and_then(parse_config_size)
        .ok_or_else(|| ProxmoxError::unexpected(format!("config: {disk} has no size")))
}

/// True for classified failures worth another attempt of a safe command.
fn transient(e: &ProxmoxError) -> bool {
    match e {
        ProxmoxError::Locked { kind } => kind.is_contention(),
        ProxmoxError::Unavailable { .. } | ProxmoxError::Transport { .. } => true,
        _ => false,
    }
}

/// SSH failures that may pass: not configuration problems (keys, known_hosts, auth).
fn ssh_transient(e: &SshError) -> bool {
    matches!(
        e,
        SshError::Connect { .. }
            | SshError::ChannelOpen { .. }
            | SshError::Disconnected { .. }
            | SshError::Timeout { .. }
    )
}

/// The Proxmox-level view of a transport failure.
fn from_ssh(kind: CommandKind, e: &SshError) -> ProxmoxError {
    match e {
        SshError::Timeout { after } => ProxmoxError::Timeout {
            command: kind.name().to_string(),
            after: Some(*after),
        },
        other => ProxmoxError::Transport {
            message: format!("{}: {other}", kind.name()),
        },
    }
}

/// `done` when the command succeeded, `settled` when it failed in a way `accepts` takes as
/// "the goal was already reached" (the node refuses to do again what is done, or there was
/// nothing to remove).
fn outcome_unless<T, O>(
    ran: Result<T>,
    accepts: impl FnOnce(&ProxmoxError) -> bool,
    done: O,
    settled: O,
) -> Result<O> {
    match ran {
        Ok(_) => Ok(done),
        Err(e) if accepts(&e) => Ok(settled),
        Err(e) => Err(e),
    }
}

/// [`outcome_unless`] for actions: `Now` or `Already`.
fn applied_unless<T>(
    ran: Result<T>,
    already: impl FnOnce(&ProxmoxError) -> bool,
) -> Result<Applied> {
    outcome_unless(ran, already, Applied::Now, Applied::Already)
}

/// [`outcome_unless`] for removals: `Now` or `AlreadyGone`.
fn destroyed_unless<T>(
    ran: Result<T>,
    gone: impl FnOnce(&ProxmoxError) -> bool,
) -> Result<Destroyed> {
    outcome_unless(ran, gone, Destroyed::Now, Destroyed::AlreadyGone)
}

fn op_span(op: &'static str, node: &NodeName, vmid: Option<Vmid>) -> tracing::Span {
    let span = tracing::info_span!(
        "proxmox",
        op,
        node = %node,
        vmid = tracing::field::Empty,
        job = tracing::field::Empty
    );
    if let Some(v) = vmid {
        span.record("vmid", v.get());
    }
    span
}

/// The span of an operation that runs as a detached job.
fn job_span(op: &'static str, node: &NodeName, vmid: Vmid, job: &JobId) -> tracing::Span {
    let span = op_span(op, node, Some(vmid));
    span.record("job", job.as_str());
    span
}

impl Proxmox for SshProxmox {
    async fn next_vmid(&self, node: &NodeName) -> Result<Vmid> {
        self.query(node, &commands::next_id(), parse::parse_nextid)
            .instrument(op_span("next_vmid", node, None))
            .await
    }

    async fn vmid_is_free(&self, node: &NodeName, vmid: Vmid) -> Result<bool> {
        async {
            match self
                .run_cmd(node, &commands::check_vmid(vmid), Repeat::Safe)
                .await
            {
                Ok(_) => Ok(true),
                Err(ProxmoxError::VmidTaken { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        }
        .instrument(op_span("vmid_is_free", node, Some(vmid)))
        .await
    }

    async fn clone_vm(&self, node: &NodeName, job: &JobId, spec: &CloneSpec) -> Result<Applied> {
        self.clone_impl(node, job, spec)
            .instrument(job_span("clone", node, spec.target, job))
            .await
    }

    async fn set_tags(&self, node: &NodeName, vmid: Vmid, tags: &[Tag]) -> Result<()> {
        self.act_built(node, commands::set_tags(vmid, tags))
            .instrument(op_span("set_tags", node, Some(vmid)))
            .await
    }

    async fn set_resources(
        &self,
        node: &NodeName,
        vmid: Vmid,
        cores: Option<Cores>,
        memory: Option<MemoryMib>,
    ) -> Result<()> {
        self.act_built(node, commands::set_resources(vmid, cores, memory))
            .instrument(op_span("set_resources", node, Some(vmid)))
            .await
    }

    async fn configure_cloud_init(
        &self,
        node: &NodeName,
        vmid: Vmid,
        spec: &CloudInitSpec,
    ) -> Result<()> {
        async {
            let cmd = commands::set_cloud_init(vmid, spec)?;
            self.run(node, &cmd, Repeat::Safe, None).await.map(drop)
        }
        .instrument(op_span("configure_cloud_init", node, Some(vmid)))
        .await
    }

    async fn resize_disk(
        &self,
        node: &NodeName,
        vmid: Vmid,
        disk: &DiskId,
        size: SizeSpec,
    ) -> Result<Applied> {
        self.resize_impl(node, vmid, disk, size)
            .instrument(op_span("resize_disk", node, Some(vmid)))
            .await
    }

    async fn start(&self, node: &NodeName, vmid: Vmid) -> Result<Applied> {
        self.apply_safe(node, &commands::start(vmid), |e| {
            e.is_already(&ObservedState::Running)
        })
        .instrument(op_span("start", node, Some(vmid)))
        .await
    }

    async fn stop(&self, node: &NodeName, vmid: Vmid) -> Result<Applied> {
        async {
            // qm stop is silent on a stopped VM, so look first to tell "done" from "did".
            if self.read_status(node, vmid).await?.status == RunStatus::Stopped {
                return Ok(Applied::Already);
            }
            self.act(node, &commands::stop(vmid), Repeat::Safe).await?;
            Ok(Applied::Now)
        }
        .instrument(op_span("stop", node, Some(vmid)))
        .await
    }

    async fn shutdown(
        &self,
        node: &NodeName,
        vmid: Vmid,
        timeout: Duration,
        force_stop: bool,
    ) -> Result<Applied> {
        async {
            if self.read_status(node, vmid).await?.status == RunStatus::Stopped {
                return Ok(Applied::Already);
            }
            let cmd = commands::shutdown(vmid, timeout, force_stop)?;
            let wait = self.power_wait(cmd.kind, timeout);
            match self
                .run(node, &cmd.to_remote()?, Repeat::Safe, Some(wait))
                .await
            {
                Ok(_) => Ok(Applied::Now),
                Err(ProxmoxError::Timeout {
                    command,
                    after: None,
                }) => Err(ProxmoxError::Timeout {
                    command,
                    after: Some(timeout),
                }),
                Err(e) => Err(e),
            }
        }
        .instrument(op_span("shutdown", node, Some(vmid)))
        .await
    }

    async fn reboot(&self, node: &NodeName, vmid: Vmid, timeout: Duration) -> Result<()> {
        async {
            let cmd = commands::reboot(vmid, timeout)?;
            let wait = self.power_wait(cmd.kind, timeout);
            self.run(node, &cmd.to_remote()?, Repeat::Once, Some(wait))
                .await
                .map(drop)
        }
        .instrument(op_span("reboot", node, Some(vmid)))
        .await
    }

    async fn status(&self, node: &NodeName, vmid: Vmid) -> Result<VmStatus> {
        self.read_status(node, vmid)
            .instrument(op_span("status", node, Some(vmid)))
            .await
    }

    async fn config(&self, node: &NodeName, vmid: Vmid) -> Result<VmConfig> {
        self.read_config(node, node, vmid)
            .instrument(op_span("config", node, Some(vmid)))
            .await
    }

    async fn agent_addresses(
        &self,
        node: &NodeName,
        vmid: Vmid,
        mac: Option<&str>,
    ) -> Result<GuestAddresses> {
        self.query(node, &commands::agent_network(vmid), |out| {
            parse::parse_agent_addresses(out, mac)
        })
        .instrument(op_span("agent_addresses", node, Some(vmid)))
        .await
    }

    async fn destroy(&self, node: &NodeName, vmid: Vmid) -> Result<Destroyed> {
        self.remove_safe(
            node,
            &commands::destroy(vmid),
            ProxmoxError::is_vm_not_found,
        )
        .instrument(op_span("destroy", node, Some(vmid)))
        .await
    }

    async fn unlock(&self, node: &NodeName, vmid: Vmid) -> Result<()> {
        self.act(node, &commands::unlock(vmid), Repeat::Safe)
            .instrument(op_span("unlock", node, Some(vmid)))
            .await
    }

    async fn backup(&self, node: &NodeName, job: &JobId, spec: &BackupSpec) -> Result<BackupEntry> {
        self.backup_impl(node, job, spec)
            .instrument(job_span("backup", node, spec.vmid, job))
            .await
    }

    async fn list_backups(
        &self,
        node: &NodeName,
        storage: &StorageId,
        vmid: Vmid,
    ) -> Result<Vec<BackupEntry>> {
        self.read_backups(node, storage, vmid)
            .instrument(op_span("list_backups", node, Some(vmid)))
            .await
    }

    async fn delete_backup(&self, node: &NodeName, volid: &BackupVolid) -> Result<Destroyed> {
        self.delete_backup_impl(node, volid)
            .instrument(op_span("delete_backup", node, archive_vmid(volid)))
            .await
    }

    async fn restore(&self, node: &NodeName, job: &JobId, spec: &RestoreSpec) -> Result<()> {
        async {
            let (_, poll) = self.run_job(node, job, &commands::restore(spec)).await?;
            match job_result(&poll, CommandKind::Restore) {
                Some(r) => r.map(drop),
                None => Err(lost(CommandKind::Restore, &poll)),
            }
        }
        .instrument(job_span("restore", node, spec.vmid, job))
        .await
    }

    async fn snapshot(
        &self,
        node: &NodeName,
        vmid: Vmid,
        name: &SnapshotName,
        description: Option<&Description>,
    ) -> Result<Applied> {
        let cmd = commands::snapshot(vmid, name, description);
        self.apply_safe(node, &cmd, |e| {
            matches!(
                e,
                ProxmoxError::AlreadyInState {
                    state: ObservedState::SnapshotExists(_)
                }
            )
        })
        .instrument(op_span("snapshot", node, Some(vmid)))
        .await
    }

    async fn rollback(&self, node: &NodeName, vmid: Vmid, name: &SnapshotName) -> Result<()> {
        self.act(node, &commands::rollback(vmid, name), Repeat::Once)
            .instrument(op_span("rollback", node, Some(vmid)))
            .await
    }

    async fn delete_snapshot(
        &self,
        node: &NodeName,
        vmid: Vmid,
        name: &SnapshotName,
    ) -> Result<Destroyed> {
        self.remove_safe(node, &commands::delete_snapshot(vmid, name), |e| {
            matches!(
                e,
                ProxmoxError::NotFound {
                    what: Missing::Snapshot(_)
                }
            )
        })
        .instrument(op_span("delete_snapshot", node, Some(vmid)))
        .await
    }

    async fn list_snapshots(&self, node: &NodeName, vmid: Vmid) -> Result<Vec<SnapshotInfo>> {
        self.query(
            node,
            &commands::list_snapshots(node, vmid),
            parse::parse_snapshots,
        )
        .instrument(op_span("list_snapshots", node, Some(vmid)))
        .await
    }

    async fn job_state(&self, node: &NodeName, job: &JobId) -> Result<JobState> {
        Ok(self.poll_job(node, job).await?.state)
    }

    async fn list_managed_vms(&self, node: &NodeName) -> Result<Vec<ClusterVm>> {
        self.query(node, &commands::list_resources(), |out| {
            Ok(parse::managed_vms(parse::parse_resources(out)?))
        })
        .instrument(op_span("list_managed_vms", node, None))
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let p = RetryPolicy {
            attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
        };
        for _ in 0..50 {
            let d1 = p.delay(1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d2 = p.delay(2);
            assert!(d2 >= Duration::from_millis(100) && d2 <= Duration::from_millis(200));
            let d5 = p.delay(5);
            assert!(d5 >= Duration::from_millis(150) && d5 <= Duration::from_millis(300));
        }
        assert_eq!(RetryPolicy::none().delay(3), Duration::ZERO);
        assert!(p.delay(40) <= Duration::from_millis(300));
    }

    #[test]
    fn timeouts_per_kind() {
        let mut s = DriverSettings::default();
        assert_eq!(s.timeout_for(CommandKind::Status), s.read_timeout);
        assert_eq!(s.timeout_for(CommandKind::Start), s.action_timeout);
        s.timeouts
            .insert(CommandKind::Start, Duration::from_secs(7));
        assert_eq!(s.timeout_for(CommandKind::Start), Duration::from_secs(7));
    }

    #[test]
    fn transport_errors_map_to_transport_or_timeout() {
        let t = from_ssh(
            CommandKind::Status,
            &SshError::Timeout {
                after: Duration::from_secs(2),
            },
        );
        assert_eq!(
            t,
            ProxmoxError::Timeout {
                command: "pvesh get status/current".into(),
                after: Some(Duration::from_secs(2))
            }
        );
        let d = from_ssh(
            CommandKind::Start,
            &SshError::Disconnected {
                message: "eof".into(),
            },
        );
        assert!(matches!(d, ProxmoxError::Transport { .. }));
        assert!(ssh_transient(&SshError::Connect {
            host: "h".into(),
            port: 22,
            message: "refused".into()
        }));
        assert!(!ssh_transient(&SshError::Auth { user: "u".into() }));
        assert!(!ssh_transient(&SshError::HostKeyUnknown {
            host: "h".into(),
            port: 22
        }));
    }

    #[test]
    fn only_contention_and_availability_are_retried() {
        use super::super::error::LockKind;
        assert!(transient(&ProxmoxError::Locked {
            kind: LockKind::File
        }));
        assert!(!transient(&ProxmoxError::Locked {
            kind: LockKind::Clone
        }));
        assert!(transient(&ProxmoxError::Unavailable {
            message: "no quorum".into()
        }));
        assert!(!transient(&ProxmoxError::NotFound { what: Missing::Vm }));
        assert!(!transient(&ProxmoxError::AgentNotReady));
    }

    #[test]
    fn archive_helpers() {
        let log = "INFO: starting new backup job\nINFO: creating vzdump archive '/var/lib/vz/dump/vzdump-qemu-123-2026_11_27-02_54_57.vma.zst'\nINFO: done\n";
        assert_eq!(
            archive_name(log).as_deref(),
            Some("vzdump-qemu-123-2026_11_27-02_54_57.vma.zst")
        );
        assert_eq!(archive_name("nothing"), None);
        let v = BackupVolid::parse("local:backup/vzdump-qemu-123-2026_11_27-02_54_57.vma.zst")
            .expect("volid");
        assert_eq!(archive_vmid(&v), Vmid::new(123).ok());
        let odd = BackupVolid::parse("local:backup/other.vma").expect("volid");
        assert_eq!(archive_vmid(&odd), None);
    }

    #[test]
    fn disk_sizes_from_config() {
        let cfg = r#"{"scsi0":"local-lvm:vm-1-disk-0,size=3G","ide2":"local-lvm:vm-1-cloudinit,media=cdrom","scsi1":"local-lvm:vm-1-disk-1"}"#;
        assert_eq!(disk_size_in(cfg, &DiskId::scsi0()), Ok(3 << 30));
        assert_eq!(
            disk_size_in(cfg, &DiskId::parse("scsi2").expect("disk")),
            Err(ProxmoxError::NotFound {
                what: Missing::Disk("scsi2".into())
            })
        );
        assert!(matches!(
            disk_size_in(cfg, &DiskId::parse("scsi1").expect("disk")),
            Err(ProxmoxError::Unexpected { .. })
        ));
    }

    #[test]
    fn existing_clone_target() {
        let marker = OwnershipMarker::new(
            super::super::types::PodId::parse("pod-a1").expect("pod"),
            super::super::types::TenantId::parse("acme").expect("tenant"),
        );
        let v = Vmid::new(123).expect("vmid");
        let ours = VmConfig {
            description: Some(marker.line()),
            ..Default::default()
        };
        assert_eq!(existing_clone(&ours, &marker, v), Ok(Applied::Already));
        let locked = VmConfig {
            lock: Some(super::super::error::LockKind::Clone),
            ..ours.clone()
        };
        assert!(matches!(
            existing_clone(&locked, &marker, v),
            Err(ProxmoxError::Locked { .. })
        ));
        let theirs = VmConfig::default();
        assert_eq!(
            existing_clone(&theirs, &marker, v),
            Err(ProxmoxError::VmidTaken { vmid: Some(v) })
        );
        let template = VmConfig {
            template: true,
            ..ours
        };
        assert!(existing_clone(&template, &marker, v).is_err());
    }
}
