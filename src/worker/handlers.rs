//! One handler per queue action. Each is idempotent: it looks at the node before it acts,
//! so running it again after a crash (the lease expired, another worker took over) converges
//! on the same VM. A handler returns what to record ([`Done`]); the caller records it in one
//! transaction with the item's completion, fenced by the lease.

use std::time::Duration;

use serde_json::{Value, json};

use super::payload::{CreatePayload, PodState, PowerPayload, RequestPayload, ScalePayload, Size};
use super::{Ctx, Placement};
use crate::crd::{BackupInfo, PowerState};
use crate::proxmox::{
    Applied, BackupSpec, CiUser, CloneMode, CloneSpec, CloudInitSpec, Cores, DiskId, DnsName,
    IpConfig, JobId, JobState, LockKind, MemoryMib, NodeName, OwnershipMarker, PodId, Proxmox,
    ProxmoxError, RunStatus, SizeSpec, SshPublicKey, StorageId, TenantId, Vmid,
};
use crate::queue::{Action, Claimed};
use crate::store::StoreError;
use crate::store::pods::PodRow;
use crate::store::reconcile::{self as rstore, Fenced, PodUpdate};

/// What a successful handler asks to record.
#[derive(Debug, Clone, Default)]
pub struct Done {
    /// The pod's new state.
    pub update: PodUpdate,
    /// The queue item's `result` (the Proxmox outcome).
    pub result: Value,
}

/// A failed attempt.
#[derive(Debug, Clone)]
pub struct JobError {
    /// What went wrong, for `error_message` and the pod's lastError. No secrets.
    pub message: String,
    /// Whether trying again later may help.
    pub retryable: bool,
}

impl JobError {
    /// A failure worth retrying.
    pub fn retry(message: impl Into<String>) -> Self {
        JobError {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure that repeating will not fix.
    pub fn fatal(message: impl Into<String>) -> Self {
        JobError {
            message: message.into(),
            retryable: false,
        }
    }
}

impl From<ProxmoxError> for JobError {
    fn from(e: ProxmoxError) -> Self {
        JobError {
            retryable: e.is_retryable(),
            message: e.to_string(),
        }
    }
}

impl From<StoreError> for JobError {
    fn from(e: StoreError) -> Self {
        JobError::retry(crate::telemetry::error_chain(&e))
    }
}

type Outcome = Result<Done, JobError>;

/// The detached clone job of a pod's VM: stable across retries of the same VMID.
pub fn clone_job_id(vmid: i32, pod_id: &str) -> String {
    let short = pod_id.strip_prefix("pod-").unwrap_or(pod_id);
    let short: String = short.chars().take(40).collect();
    format!("clone-{vmid}-{}", short.trim_end_matches('-'))
}

/// Dispatches one claimed item.
pub(crate) async fn handle<P: Proxmox>(ctx: &Ctx<P>, item: &Claimed, row: &PodRow) -> Outcome {
    match item.action {
        Action::Create => create(ctx, item, row).await,
        Action::Destroy => destroy(ctx, row).await,
        Action::Start | Action::Stop => {
            let p: PowerPayload = payload(item)?;
            let want = match item.action {
                Action::Start => PowerState::Running,
                _ => p.power_state,
            };
            power(ctx, row, want).await
        }
        Action::Reboot => reboot(ctx, item, row).await,
        Action::Backup => backup(ctx, item, row).await,
        Action::Scale => scale(ctx, item, row).await,
        Action::Sync => sync(ctx, item, row).await,
    }
}

fn payload<T: serde::de::DeserializeOwned>(item: &Claimed) -> Result<T, JobError> {
    serde_json::from_value(item.payload.clone()).map_err(|e| {
        JobError::fatal(format!(
            "the {} item's payload is not valid: {e}",
            item.action.as_str()
        ))
    })
}

fn bad(field: &str, e: ProxmoxError) -> JobError {
    JobError::fatal(format!("{field}: {e}"))
}

fn marker(row: &PodRow) -> Result<OwnershipMarker, JobError> {
    Ok(OwnershipMarker::new(
        PodId::parse(&row.id).map_err(|e| bad("pod id", e))?,
        TenantId::parse(&row.tenant_id).map_err(|e| bad("tenant id", e))?,
    ))
}

/// The VM's node and VMID, or a fatal error when the pod has none.
fn located(row: &PodRow) -> Result<(NodeName, Vmid), JobError> {
    match (&row.node, row.vmid) {
        (Some(n), Some(v)) => Ok((
            NodeName::parse(n).map_err(|e| bad("node", e))?,
            Vmid::new(u32::try_from(v).unwrap_or(0)).map_err(|e| bad("vmid", e))?,
        )),
        _ => Err(JobError::fatal("the pod has no VM yet")),
    }
}

fn size_of(cpu: i32, mem: i32, disk: i32) -> Result<(Cores, MemoryMib, SizeSpec), JobError> {
    Ok((
        Cores::new(u32::try_from(cpu).unwrap_or(0)).map_err(|e| bad("cpuCores", e))?,
        MemoryMib::new(u32::try_from(mem).unwrap_or(0)).map_err(|e| bad("memoryMb", e))?,
        SizeSpec::absolute_gib(u64::try_from(disk).unwrap_or(0)).map_err(|e| bad("diskGb", e))?,
    ))
}

async fn permit<P>(
    ctx: &Ctx<P>,
    node: &NodeName,
) -> Result<tokio::sync::OwnedSemaphorePermit, JobError> {
    match ctx.permits.get(node) {
        Some(s) => s
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| JobError::retry("the worker is shutting down")),
        None => Err(JobError::fatal(format!(
            "node {node} is not configured on this worker"
        ))),
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The update after a handler succeeded: the pod is `active` and its last error is cleared.
fn active(mut state: PodState) -> PodUpdate {
    state.last_error = None;
    PodUpdate {
        status: Some("active"),
        state: Some(state),
        ..PodUpdate::default()
    }
}

// ---- create ---------------------------------------------------------------------------

async fn create<P: Proxmox>(ctx: &Ctx<P>, item: &Claimed, row: &PodRow) -> Outcome {
    if row.deleted_at.is_some() || row.status == "deleting" {
        return Ok(Done {
            result: json!({ "skipped": "the pod is being deleted" }),
            ..Done::default()
        });
    }
    let p: CreatePayload = payload(item)?;
    let marker = marker(row)?;
    let mut state = PodState::from_json(&row.provisioning_state);

    // 1. A VMID and node, recorded before anything is cloned (invariant 3).
    let (node, vmid) = match (&row.node, row.vmid) {
        (Some(_), Some(_)) => located(row)?,
        _ => reserve_vmid(ctx, item, row, &p).await?,
    };
    if row.status != "provisioning" {
        fenced(
            ctx,
            item,
            &row.id,
            PodUpdate {
                status: Some("provisioning"),
                ..PodUpdate::default()
            },
        )
        .await?;
    }
    let job = JobId::parse(&clone_job_id(vmid_i32(vmid), &row.id)).map_err(|e| bad("job", e))?;
    let hostname = DnsName::label(&p.hostname).map_err(|e| bad("hostname", e))?;
    let spec = CloneSpec {
        source: Vmid::new(u32::try_from(p.template_vmid).unwrap_or(0))
            .map_err(|e| bad("templateVmid", e))?,
        target: vmid,
        mode: CloneMode::Full {
            storage: Some(StorageId::parse(&p.storage).map_err(|e| bad("storage", e))?),
        },
        name: hostname,
        description: marker
            .description(Some("CloudPods VM; do not edit this line"))
            .map_err(|e| bad("description", e))?,
        target_node: None,
    };

    // 2. Clone (detached, guarded by the job id: a retry waits for the same run). One node
    // slot is held from the clone through the start, so pods finish in the order they began
    // instead of every start queueing behind every clone.
    let slot = permit(ctx, &node).await?;
    let cloned = ctx.pve.clone_vm(&node, &job, &spec).await;
    let cloned = match cloned {
        Ok(a) => a,
        Err(ProxmoxError::VmidTaken { .. }) => {
            // Someone else's guest has this VMID: give it up and pick another next time.
            release_vmid(ctx, item, row).await?;
            return Err(JobError::retry(format!(
                "VMID {vmid} is used by another guest on {node}; a new VMID will be chosen"
            )));
        }
        Err(e) if e.is_retryable() => return Err(e.into()),
        Err(e) => {
            // The clone failed or its run was lost: remove what it left (only if it carries
            // this pod's marker), and start over with a fresh VMID.
            discard(ctx, &node, vmid, &marker, &job).await?;
            release_vmid(ctx, item, row).await?;
            return Err(JobError::retry(format!(
                "clone into VMID {vmid} failed: {e}"
            )));
        }
    };

    // 3. Configure: tags, size, disk, cloud-init. All idempotent.
    ctx.pve.set_tags(&node, vmid, &marker.tags()).await?;
    let (cores, memory, disk) = size_of(p.size.cpu_cores, p.size.memory_mb, p.size.disk_gb)?;
    ctx.pve
        .set_resources(&node, vmid, Some(cores), Some(memory))
        .await?;
    ctx.pve
        .resize_disk(&node, vmid, &DiskId::scsi0(), disk)
        .await?;
    let ci = CloudInitSpec {
        user: p
            .ci_user
            .as_deref()
            .map(CiUser::parse)
            .transpose()
            .map_err(|e| bad("cloudInit.user", e))?,
        ssh_keys: p
            .ssh_keys
            .iter()
            .map(|k| SshPublicKey::parse(k))
            .collect::<Result<_, _>>()
            .map_err(|e| bad("cloudInit.sshPublicKeys", e))?,
        ipconfig0: Some(IpConfig::dhcp()),
        nameservers: None,
        searchdomain: None,
    };
    ctx.pve.configure_cloud_init(&node, vmid, &ci).await?;

    // 4. Power, then the address (the agent wait holds no node slot).
    let mut ip = None;
    if p.power_state == PowerState::Running {
        ctx.pve.start(&node, vmid).await?;
        drop(slot);
        ip = wait_for_ip(ctx, &node, vmid, ctx.settings.agent_wait).await;
    } else {
        drop(slot);
    }
    state.power_state = Some(p.power_state);
    state.last_sync = Some(now_rfc3339());
    state.provisioned = true;
    state.restart_required = false;
    Ok(Done {
        update: PodUpdate {
            size: Some(p.size),
            ip: Some(ip.clone()),
            ..active(state)
        },
        result: json!({
            "node": node.to_string(),
            "vmid": vmid_i32(vmid),
            "clone": if cloned == Applied::Now { "cloned" } else { "already" },
            "job": job.to_string(),
            "ipAddress": ip,
        }),
    })
}

fn vmid_i32(v: Vmid) -> i32 {
    i32::try_from(v.get()).unwrap_or(i32::MAX)
}

/// Picks a node and a free VMID and records both on the pod (fenced). Reservations are
/// serialised by a database lock, so concurrent workers (and replicas) never race for the
/// same number; the node is asked whether each candidate is free.
async fn reserve_vmid<P: Proxmox>(
    ctx: &Ctx<P>,
    item: &Claimed,
    row: &PodRow,
    p: &CreatePayload,
) -> Result<(NodeName, Vmid), JobError> {
    let node = pick_node(ctx, p).await?;
    let next = ctx.pve.next_vmid(&node).await?;
    let mut tx = ctx
        .pool
        .begin()
        .await
        .map_err(StoreError::query("begin a VMID reservation"))?;
    let recorded = rstore::lock_vmids(&mut tx).await?.unwrap_or(0);
    let first = next.get().max(u32::try_from(recorded).unwrap_or(0) + 1);
    let mut found = None;
    for candidate in first..first + 50 {
        let v = Vmid::new(candidate).map_err(|e| bad("vmid", e))?;
        if ctx.pve.vmid_is_free(&node, v).await? {
            found = Some(v);
            break;
        }
    }
    let Some(vmid) = found else {
        return Err(JobError::retry(format!("no free VMID found on {node}")));
    };
    let update = PodUpdate {
        placement: Some(Some((vmid_i32(vmid), node.to_string()))),
        ..PodUpdate::default()
    };
    match rstore::update_pod(&mut tx, &row.id, &update, Some(&item.lease)).await? {
        Fenced::Applied => {}
        Fenced::VmidTaken => return Err(JobError::retry("VMID conflict; trying again")),
        Fenced::LeaseLost => return Err(lease_lost()),
    }
    tx.commit()
        .await
        .map_err(StoreError::query("commit a VMID reservation"))?;
    tracing::Span::current().record("vmid", vmid_i32(vmid));
    tracing::info!(%node, "VMID reserved");
    Ok((node, vmid))
}

fn lease_lost() -> JobError {
    JobError::retry("the lease of this item was lost")
}

async fn pick_node<P: Proxmox>(ctx: &Ctx<P>, p: &CreatePayload) -> Result<NodeName, JobError> {
    match ctx.settings.placement {
        Placement::BlueprintNode => {
            let node = NodeName::parse(&p.template_node).map_err(|e| bad("defaultNode", e))?;
            if !ctx.nodes.contains(&node) {
                return Err(JobError::fatal(format!(
                    "the blueprint's node {node} is not in the nodes file"
                )));
            }
            Ok(node)
        }
        Placement::Spread => {
            let counts = rstore::live_pods_per_node(&ctx.pool).await?;
            ctx.nodes
                .iter()
                .min_by_key(|n| counts.get(n.as_str()).copied().unwrap_or(0))
                .cloned()
                .ok_or_else(|| JobError::fatal("no Proxmox nodes are configured"))
        }
    }
}

async fn fenced<P>(
    ctx: &Ctx<P>,
    item: &Claimed,
    id: &str,
    update: PodUpdate,
) -> Result<(), JobError> {
    let mut conn = ctx
        .pool
        .acquire()
        .await
        .map_err(StoreError::query("get a connection"))?;
    match rstore::update_pod(&mut conn, id, &update, Some(&item.lease)).await? {
        Fenced::Applied => Ok(()),
        Fenced::LeaseLost => Err(lease_lost()),
        Fenced::VmidTaken => Err(JobError::retry("VMID conflict")),
    }
}

async fn release_vmid<P>(ctx: &Ctx<P>, item: &Claimed, row: &PodRow) -> Result<(), JobError> {
    fenced(
        ctx,
        item,
        &row.id,
        PodUpdate {
            placement: Some(None),
            ..PodUpdate::default()
        },
    )
    .await
}

/// True when the VM is this pod's: it carries the marker, or it is what this pod's own
/// clone left when it failed or died (still `lock: clone`, no description written yet, and
/// this pod's clone job for exactly this VMID ran on the node and is over). A clone only
/// starts when the target VMID is free, so nobody else's guest can look like that.
fn is_ours(cfg: &crate::proxmox::VmConfig, marker: &OwnershipMarker, clone_job: &JobState) -> bool {
    cfg.marker().as_ref() == Some(marker)
        || (cfg.lock == Some(LockKind::Clone)
            && cfg.description.is_none()
            && matches!(clone_job, JobState::Done { .. } | JobState::Lost))
}

/// True when the config is only the placeholder `qm destroy` writes before it frees the disks
/// (`lock: destroyed`, nothing else of the guest): a destroy died half-way, or still runs.
/// Whoever started it, the guest is gone in all but name; finishing it frees the rest.
fn half_destroyed(cfg: &crate::proxmox::VmConfig) -> bool {
    cfg.lock == Some(LockKind::Destroyed) && cfg.description.is_none() && cfg.boot_disk.is_none()
}

/// Destroys the stopped, unlocked VM and confirms it is gone.
async fn destroy_confirmed<P: Proxmox>(
    ctx: &Ctx<P>,
    node: &NodeName,
    vmid: Vmid,
) -> Result<&'static str, JobError> {
    ctx.pve.destroy(node, vmid).await?;
    // Confirm: destroy answers before the config is gone on a busy node.
    match ctx.pve.status(node, vmid).await {
        Err(e) if e.is_vm_not_found() => Ok("destroyed"),
        Ok(_) => Err(JobError::retry("the VM still exists after destroy")),
        Err(e) => Err(e.into()),
    }
}

/// Finishes a destroy that died half-way ([`half_destroyed`]). `qm unlock` takes the VM's
/// flock, which a running destroy holds, so it waits for that one; the VM may be gone then.
async fn finish_destroy<P: Proxmox>(
    ctx: &Ctx<P>,
    node: &NodeName,
    vmid: Vmid,
) -> Result<&'static str, JobError> {
    tracing::warn!(%node, vmid = vmid.get(), "finishing a destroy that stopped half-way");
    match ctx.pve.unlock(node, vmid).await {
        Ok(()) => {}
        Err(e) if e.is_vm_not_found() => return Ok("already gone"),
        Err(e) => return Err(e.into()),
    }
    destroy_confirmed(ctx, node, vmid).await
}

/// Whether the caller holds the node slot already (a create discarding its failed clone holds
/// it from the clone on) or [`remove_own_vm`] takes it around the stop (a destroy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeSlot {
    Held,
    Take,
}

/// What [`remove_own_vm`] found at the VMID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    /// Nothing: the VM does not exist.
    Gone,
    /// A guest that is not this pod's; left alone.
    NotOurs,
    /// This pod's VM, or the remains of a half-finished destroy, removed (the outcome).
    Removed(&'static str),
}

/// Removes this pod's VM at `vmid`: waits for a running clone of this pod, finishes a destroy
/// that died half-way, leaves a guest that is not this pod's ([`is_ours`]), waits for a
/// running backup, and otherwise unlocks, stops and destroys the VM and confirms it is gone.
async fn remove_own_vm<P: Proxmox>(
    ctx: &Ctx<P>,
    node: &NodeName,
    vmid: Vmid,
    marker: &OwnershipMarker,
    clone_job: &JobId,
    slot: NodeSlot,
) -> Result<Removal, JobError> {
    let cfg = match ctx.pve.config(node, vmid).await {
        Ok(cfg) => cfg,
        Err(e) if e.is_vm_not_found() => return Ok(Removal::Gone),
        Err(e) => return Err(e.into()),
    };
    // A clone of this pod may still run on the node (its worker died; the job is detached):
    // its config gets the marker only at the end. Wait for it.
    let run = ctx.pve.job_state(node, clone_job).await?;
    if run == JobState::Running {
        return Err(JobError::retry("the VM is still being cloned"));
    }
    if half_destroyed(&cfg) {
        // An earlier destroy died after it wiped the config (a crash, a cut connection) and
        // left the placeholder: finish it.
        return finish_destroy(ctx, node, vmid).await.map(Removal::Removed);
    }
    if !is_ours(&cfg, marker, &run) {
        // Never destroy a guest that is not this pod's (a clone that never ran leaves the
        // VMID to whoever took it).
        return Ok(Removal::NotOurs);
    }
    if let Some(lock) = &cfg.lock {
        if matches!(lock, LockKind::Backup) {
            return Err(JobError::retry("a backup of the VM is running"));
        }
        ctx.pve.unlock(node, vmid).await?;
    }
    match slot {
        NodeSlot::Held => {
            ctx.pve.stop(node, vmid).await?;
        }
        NodeSlot::Take => {
            let _permit = permit(ctx, node).await?;
            ctx.pve.stop(node, vmid).await?;
        }
    }
    destroy_confirmed(ctx, node, vmid)
        .await
        .map(Removal::Removed)
}

/// Removes what a failed clone of this pod left at `vmid`, under the node slot the create
/// holds.
async fn discard<P: Proxmox>(
    ctx: &Ctx<P>,
    node: &NodeName,
    vmid: Vmid,
    marker: &OwnershipMarker,
    job: &JobId,
) -> Result<(), JobError> {
    remove_own_vm(ctx, node, vmid, marker, job, NodeSlot::Held)
        .await
        .map(|_| ())
}

async fn wait_for_ip<P: Proxmox>(
    ctx: &Ctx<P>,
    node: &NodeName,
    vmid: Vmid,
    within: Duration,
) -> Option<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match ctx.pve.agent_addresses(node, vmid, None).await {
            Ok(a) => {
                if let Some(v4) = a.ipv4 {
                    return Some(v4.to_string());
                }
                if let Some(v6) = a.ipv6 {
                    return Some(v6.to_string());
                }
            }
            Err(ProxmoxError::AgentNotReady) => {}
            Err(e) if e.is_retryable() => {}
            Err(e) => {
                tracing::warn!(error = %e, "guest agent query failed; the address stays unknown");
                return None;
            }
        }
        if tokio::time::Instant::now() + ctx.settings.agent_poll > deadline {
            return None;
        }
        tokio::time::sleep(ctx.settings.agent_poll).await;
    }
}

// ---- destroy --------------------------------------------------------------------------

async fn destroy<P: Proxmox>(ctx: &Ctx<P>, row: &PodRow) -> Outcome {
    if row.deleted_at.is_some() {
        return Ok(Done {
            result: json!({ "destroyed": "already deleted" }),
            ..Done::default()
        });
    }
    let mut outcome = "no VM was ever created";
    if let (Some(_), Some(_)) = (&row.node, row.vmid) {
        let (node, vmid) = located(row)?;
        let marker = marker(row)?;
        let job =
            JobId::parse(&clone_job_id(vmid_i32(vmid), &row.id)).map_err(|e| bad("job", e))?;
        outcome = match remove_own_vm(ctx, &node, vmid, &marker, &job, NodeSlot::Take).await? {
            Removal::Gone => "already gone",
            Removal::NotOurs => {
                tracing::warn!(%node, vmid = vmid.get(), "the guest at this VMID is not ours; leaving it");
                "the VMID holds another guest; left alone"
            }
            Removal::Removed(how) => how,
        };
    }
    let mut state = PodState::from_json(&row.provisioning_state);
    state.last_error = None;
    Ok(Done {
        update: PodUpdate {
            deleted: true,
            ip: Some(None),
            state: Some(state),
            ..PodUpdate::default()
        },
        result: json!({ "destroyed": outcome, "vmid": row.vmid, "node": row.node }),
    })
}

// ---- power, reboot --------------------------------------------------------------------

async fn power<P: Proxmox>(ctx: &Ctx<P>, row: &PodRow, want: PowerState) -> Outcome {
    let (node, vmid) = located(row)?;
    let applied = {
        let _permit = permit(ctx, &node).await?;
        match want {
            PowerState::Running => ctx.pve.start(&node, vmid).await?,
            PowerState::Stopped => {
                ctx.pve
                    .shutdown(&node, vmid, ctx.settings.shutdown_timeout, true)
                    .await?
            }
        }
    };
    let mut ip = None;
    if want == PowerState::Running {
        ip = wait_for_ip(ctx, &node, vmid, ctx.settings.agent_wait).await;
    }
    let mut state = PodState::from_json(&row.provisioning_state);
    state.power_state = Some(want);
    if applied == Applied::Now {
        // A cold start applies pending cores/memory.
        state.restart_required = false;
    }
    Ok(Done {
        update: PodUpdate {
            ip: Some(ip),
            ..active(state)
        },
        result: json!({ "powerState": want, "changed": applied == Applied::Now }),
    })
}

async fn reboot<P: Proxmox>(ctx: &Ctx<P>, item: &Claimed, row: &PodRow) -> Outcome {
    let p: RequestPayload = payload(item)?;
    let (node, vmid) = located(row)?;
    let mut state = PodState::from_json(&row.provisioning_state);
    let done = {
        let _permit = permit(ctx, &node).await?;
        match ctx
            .pve
            .reboot(&node, vmid, ctx.settings.shutdown_timeout)
            .await
        {
            Ok(()) => "rebooted",
            Err(e) if e.is_already(&crate::proxmox::ObservedState::Stopped) => {
                "the VM is stopped; nothing to reboot"
            }
            Err(e) => return Err(e.into()),
        }
    };
    state.restart_required = false;
    state.handled_reboot_request = Some(p.request.clone());
    Ok(Done {
        update: active(state),
        result: json!({ "request": p.request, "reboot": done }),
    })
}

// ---- backup ---------------------------------------------------------------------------

async fn backup<P: Proxmox>(ctx: &Ctx<P>, item: &Claimed, row: &PodRow) -> Outcome {
    let p: RequestPayload = payload(item)?;
    let (node, vmid) = located(row)?;
    let storage =
        StorageId::parse(&ctx.settings.backup_storage).map_err(|e| bad("backup storage", e))?;
    // One vzdump per queue item, whatever the number of attempts.
    let job = JobId::parse(&format!("backup-{}", item.id)).map_err(|e| bad("job", e))?;
    let spec = BackupSpec {
        vmid,
        storage,
        marker: marker(row)?,
        prune: true,
    };
    let entry = {
        let _permit = permit(ctx, &node).await?;
        ctx.pve.backup(&node, &job, &spec).await?
    };
    let time = chrono::DateTime::from_timestamp(entry.ctime, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(now_rfc3339);
    let info = BackupInfo {
        time,
        volid: entry.volid.to_string(),
        request: Some(p.request.clone()),
    };
    let mut state = PodState::from_json(&row.provisioning_state);
    state.handled_backup_request = Some(p.request.clone());
    state.last_backup = Some(info.clone());
    Ok(Done {
        update: active(state),
        result: json!({ "request": p.request, "volid": info.volid, "size": entry.size }),
    })
}

// ---- scale ----------------------------------------------------------------------------

async fn scale<P: Proxmox>(ctx: &Ctx<P>, item: &Claimed, row: &PodRow) -> Outcome {
    let p: ScalePayload = payload(item)?;
    let (node, vmid) = located(row)?;
    let (cores, memory, disk) = size_of(p.size.cpu_cores, p.size.memory_mb, p.size.disk_gb)?;
    let cpu_mem_changed = p.size.cpu_cores != row.cpu_cores || p.size.memory_mb != row.memory_mb;
    if cpu_mem_changed {
        ctx.pve
            .set_resources(&node, vmid, Some(cores), Some(memory))
            .await?;
    }
    let resized = ctx
        .pve
        .resize_disk(&node, vmid, &DiskId::scsi0(), disk)
        .await?;
    let mut state = PodState::from_json(&row.provisioning_state);
    // Only new cores/memory on a running VM wait for a restart; ask the node only then.
    if cpu_mem_changed && ctx.pve.status(&node, vmid).await?.status == RunStatus::Running {
        state.restart_required = true;
    }
    let restart_required = state.restart_required;
    Ok(Done {
        update: PodUpdate {
            size: Some(p.size),
            ..active(state)
        },
        result: json!({
            "size": p.size,
            "diskResized": resized == Applied::Now,
            "restartRequired": restart_required,
        }),
    })
}

// ---- sync -----------------------------------------------------------------------------

/// Why a sync stopped early.
enum SyncStop {
    /// Proxmox says the VM does not exist (before or in the middle of the sync).
    Vanished,
    /// Anything else: the queue's retry rules apply.
    Job(JobError),
}

impl From<ProxmoxError> for SyncStop {
    fn from(e: ProxmoxError) -> Self {
        if e.is_vm_not_found() {
            SyncStop::Vanished
        } else {
            SyncStop::Job(e.into())
        }
    }
}

impl From<JobError> for SyncStop {
    fn from(e: JobError) -> Self {
        SyncStop::Job(e)
    }
}

async fn sync<P: Proxmox>(ctx: &Ctx<P>, item: &Claimed, row: &PodRow) -> Outcome {
    let p: PowerPayload = payload(item)?;
    let (node, vmid) = located(row)?;
    let mut state = PodState::from_json(&row.provisioning_state);
    state.last_sync = Some(now_rfc3339());
    match sync_vm(ctx, row, &p, &node, vmid, state.clone()).await {
        Ok(done) => Ok(done),
        Err(SyncStop::Job(e)) => Err(e),
        // Also when the VM vanished between two of the sync's commands.
        Err(SyncStop::Vanished) => {
            let msg = format!(
                "VM {vmid} no longer exists on node {node}; it was removed outside CloudPods"
            );
            tracing::error!("{msg}");
            state.last_error = Some(msg.clone());
            Ok(Done {
                update: PodUpdate {
                    status: Some("error"),
                    ip: Some(None),
                    state: Some(state),
                    ..PodUpdate::default()
                },
                result: json!({ "vm": "missing", "message": msg }),
            })
        }
    }
}

/// Compares the VM with the row and corrects drift.
async fn sync_vm<P: Proxmox>(
    ctx: &Ctx<P>,
    row: &PodRow,
    p: &PowerPayload,
    node: &NodeName,
    vmid: Vmid,
    mut state: PodState,
) -> Result<Done, SyncStop> {
    let cfg = ctx.pve.config(node, vmid).await?;
    if cfg.lock.is_some() {
        return Err(JobError::retry("the VM is locked by a running task").into());
    }
    let mut drift = Vec::new();
    let want = Size {
        cpu_cores: row.cpu_cores,
        memory_mb: row.memory_mb,
        disk_gb: row.disk_gb,
    };
    let (cores, memory, disk) = size_of(want.cpu_cores, want.memory_mb, want.disk_gb)?;
    let have_cores = cfg.cores.unwrap_or(0);
    let have_mem = cfg.memory_mib.unwrap_or(0);
    if have_cores != u64::from(cores.get()) || have_mem != u64::from(memory.get()) {
        drift.push(format!(
            "cores/memory were {have_cores}/{have_mem} MiB, restored to {}/{}",
            cores.get(),
            memory.get()
        ));
        ctx.pve
            .set_resources(node, vmid, Some(cores), Some(memory))
            .await?;
    }
    let disk_bytes = cfg.boot_disk.as_ref().and_then(|d| d.size_bytes);
    if let Some(bytes) = disk_bytes {
        if bytes < disk.bytes() {
            drift.push(format!(
                "disk was {bytes} bytes, grown back to {} GiB",
                want.disk_gb
            ));
            ctx.pve
                .resize_disk(node, vmid, &DiskId::scsi0(), disk)
                .await?;
        } else if bytes > disk.bytes() {
            drift.push(format!(
                "disk is {bytes} bytes, larger than the recorded {} GiB (disks cannot shrink; left as is)",
                want.disk_gb
            ));
        }
    }
    let status = ctx.pve.status(node, vmid).await?;
    let running = status.status == RunStatus::Running;
    match (p.power_state, running) {
        (PowerState::Running, false) => {
            drift.push("the VM was stopped; started again".into());
            let _permit = permit(ctx, node).await?;
            ctx.pve.start(node, vmid).await?;
        }
        (PowerState::Stopped, true) => {
            drift.push("the VM was running; stopped again".into());
            let _permit = permit(ctx, node).await?;
            ctx.pve
                .shutdown(node, vmid, ctx.settings.shutdown_timeout, true)
                .await?;
        }
        _ => {}
    }
    for d in &drift {
        tracing::warn!(drift = %d, "drift corrected");
    }
    let mut ip = row.ip_address.clone();
    if p.power_state == PowerState::Running {
        let wait = if ip.is_none() && !drift.is_empty() {
            ctx.settings.agent_wait
        } else {
            Duration::ZERO
        };
        if let Some(found) = wait_for_ip(ctx, node, vmid, wait).await {
            ip = Some(found);
        }
    } else {
        ip = None;
    }
    state.power_state = Some(p.power_state);
    Ok(Done {
        update: PodUpdate {
            ip: Some(ip.clone()),
            ..active(state)
        },
        result: json!({ "drift": drift, "ipAddress": ip }),
    })
}
