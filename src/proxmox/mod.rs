//! Proxmox VE access over SSH.
//!
//! - [`types`]: validated values (VMIDs, names, tags, sizes, cloud-init inputs, the ownership
//!   marker); nothing reaches a command line without passing one of them.
//! - [`argv`]: argument vectors and POSIX quoting into one remote command line.
//! - [`commands`]: pure builders, one per operation.
//! - [`detached`]: long jobs (clone, vzdump, qmrestore) run under `setsid` on the node.
//! - [`parse`]: pure parsers of pvesh/qm output; [`classify`]: exit status and output to
//!   success or a [`ProxmoxError`].
//! - [`ssh`]: the russh transport; [`driver`]: [`Proxmox`] over it ([`driver::SshProxmox`]).
//! - [`Proxmox`]: the worker's view of the cluster, implemented over SSH (and by fakes).

pub mod argv;
pub mod classify;
pub mod commands;
pub mod config;
pub mod detached;
pub mod driver;
pub mod error;
pub mod parse;
pub mod ssh;
pub mod types;

use std::future::Future;
use std::time::Duration;

pub use argv::{Argv, Command, RemoteCommand};
pub use classify::{Outcome, check, classify};
pub use commands::{BackupSpec, CloneMode, CloneSpec, CloudInitSpec, CommandKind, RestoreSpec};
pub use detached::JobState;
pub use error::{LockKind, Missing, ObservedState, ProxmoxError};
pub use parse::{
    BackupEntry, ClusterVm, DiskInfo, GuestAddresses, QmpStatus, RunStatus, SnapshotInfo, Upid,
    VmConfig, VmStatus,
};
pub use types::{
    BackupVolid, BridgeName, CiUser, Cores, Description, DiskId, DnsName, IpConfig, JobId,
    MemoryMib, Nameservers, NodeName, OwnershipMarker, PodId, RemoteDir, SearchDomain, SizeSpec,
    SnapshotName, SshPublicKey, StorageId, Tag, TenantId, Vmid,
};

/// Result type of the Proxmox layer.
pub type Result<T> = std::result::Result<T, ProxmoxError>;

/// Whether a state-changing call did something or found the goal already reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// This call made the change.
    Now,
    /// Nothing to do: the object was already in the requested state.
    Already,
}

/// Result of [`Proxmox::destroy`] and [`Proxmox::delete_backup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destroyed {
    /// This call removed it.
    Now,
    /// It did not exist (any more); counts as done.
    AlreadyGone,
}

/// The worker's view of a Proxmox VE cluster. Every call names the node that owns the VM
/// (`qm` only acts on local VMs, §0.7); cluster-wide reads may go to any node.
///
/// Each method documents what happens when it is repeated, because the worker replays jobs
/// after crashes. Errors are [`ProxmoxError`]s; [`ProxmoxError::is_retryable`] tells
/// whether the same call may succeed later unchanged.
pub trait Proxmox: Send + Sync {
    /// The lowest free VMID (`pvesh get /cluster/nextid`). Reserves nothing: two callers can
    /// get the same id, and the loser's clone fails with `VmidTaken` (§2). Repeatable.
    fn next_vmid(&self, node: &NodeName) -> impl Future<Output = Result<Vmid>> + Send;

    /// `Ok(true)` when `vmid` is unused cluster-wide, `Ok(false)` when a guest has it.
    /// Read-only; a free answer can be stale by the time the clone runs.
    fn vmid_is_free(
        &self,
        node: &NodeName,
        vmid: Vmid,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Clones a template into `spec.target`, detached on the node under `job`, and waits for
    /// the end. Repeating with the same `job` never starts a second clone: it waits for (or
    /// reports) the first run, and gives `Already` when that run succeeded. Before starting,
    /// it looks at the target: one that exists with this spec's marker (not locked) is
    /// `Already`; with the marker but a config lock, `Locked`; without the marker (someone
    /// else's VM, or a half-made clone whose config has no description yet), `VmidTaken`.
    /// A run that died leaves `lock: clone` (see [`Proxmox::unlock`] and [`Proxmox::destroy`]).
    fn clone_vm(
        &self,
        node: &NodeName,
        job: &JobId,
        spec: &CloneSpec,
    ) -> impl Future<Output = Result<Applied>> + Send;

    /// Replaces the VM's tag list (`qm set --tags`). Idempotent. Never call it on a template.
    fn set_tags(
        &self,
        node: &NodeName,
        vmid: Vmid,
        tags: &[Tag],
    ) -> impl Future<Output = Result<()>> + Send;

    /// Sets cores and/or memory. Idempotent; on a running VM the values stay pending until
    /// the next stop/start or reboot (§6.1).
    fn set_resources(
        &self,
        node: &NodeName,
        vmid: Vmid,
        cores: Option<Cores>,
        memory: Option<MemoryMib>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Sets the cloud-init user, SSH keys (uploaded via stdin, §6.2), ipconfig0, name servers
    /// and search domain in one `qm set`. Idempotent; takes effect at the next boot.
    fn configure_cloud_init(
        &self,
        node: &NodeName,
        vmid: Vmid,
        spec: &CloudInitSpec,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Resizes a disk and verifies the new size in the config (resize exits 0 on failure).
    /// An absolute size is idempotent (`Already` when the disk has that size); a `+N` growth
    /// is not, so the worker uses absolute sizes. Shrinking is `Rejected { field: "size" }`.
    fn resize_disk(
        &self,
        node: &NodeName,
        vmid: Vmid,
        disk: &DiskId,
        size: SizeSpec,
    ) -> impl Future<Output = Result<Applied>> + Send;

    /// Starts the VM. Repeating is safe: an already running VM gives `Already`.
    fn start(&self, node: &NodeName, vmid: Vmid) -> impl Future<Output = Result<Applied>> + Send;

    /// Hard-stops the VM. Repeating is safe: a stopped VM gives `Already`.
    fn stop(&self, node: &NodeName, vmid: Vmid) -> impl Future<Output = Result<Applied>> + Send;

    /// Clean shutdown within `timeout`, then a hard stop if `force_stop`. A stopped VM gives
    /// `Already`; without `force_stop` a guest that ignores ACPI gives `Timeout`.
    fn shutdown(
        &self,
        node: &NodeName,
        vmid: Vmid,
        timeout: Duration,
        force_stop: bool,
    ) -> impl Future<Output = Result<Applied>> + Send;

    /// Reboots a running VM (applies pending changes). Not idempotent: each call reboots; a
    /// stopped VM gives `AlreadyInState { Stopped }`.
    fn reboot(
        &self,
        node: &NodeName,
        vmid: Vmid,
        timeout: Duration,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Current status (`status/current`). Read-only; a missing VM is `NotFound { Vm }`.
    fn status(&self, node: &NodeName, vmid: Vmid) -> impl Future<Output = Result<VmStatus>> + Send;

    /// Current config with pending values merged (raw description, tags, lock, disks).
    /// Read-only; a missing VM is `NotFound { Vm }`.
    fn config(&self, node: &NodeName, vmid: Vmid) -> impl Future<Output = Result<VmConfig>> + Send;

    /// The guest's addresses from the agent, preferring the interface with MAC `mac`.
    /// Read-only; `AgentNotReady` while the agent does not answer (poll with a deadline), and
    /// an empty result while the guest has no address yet.
    fn agent_addresses(
        &self,
        node: &NodeName,
        vmid: Vmid,
        mac: Option<&str>,
    ) -> impl Future<Output = Result<GuestAddresses>> + Send;

    /// Destroys the VM with its disks (`--purge 1 --destroy-unreferenced-disks 1`).
    /// Idempotent: a missing VM gives `AlreadyGone`. A running VM is `AlreadyInState
    /// { Running }` (stop it first); a config lock is `Locked`.
    fn destroy(
        &self,
        node: &NodeName,
        vmid: Vmid,
    ) -> impl Future<Output = Result<Destroyed>> + Send;

    /// Removes a stale config lock (`qm unlock`). Idempotent; use only when no task runs.
    fn unlock(&self, node: &NodeName, vmid: Vmid) -> impl Future<Output = Result<()>> + Send;

    /// Runs vzdump detached under `job`, waits, and returns the new archive (found by its
    /// marker notes and time). Repeating with the same `job` never runs a second backup.
    fn backup(
        &self,
        node: &NodeName,
        job: &JobId,
        spec: &BackupSpec,
    ) -> impl Future<Output = Result<BackupEntry>> + Send;

    /// The VM's backups on `storage`, oldest first. Read-only.
    fn list_backups(
        &self,
        node: &NodeName,
        storage: &StorageId,
        vmid: Vmid,
    ) -> impl Future<Output = Result<Vec<BackupEntry>>> + Send;

    /// Deletes one archive. Idempotent: a missing archive gives `AlreadyGone`.
    fn delete_backup(
        &self,
        node: &NodeName,
        volid: &BackupVolid,
    ) -> impl Future<Output = Result<Destroyed>> + Send;

    /// Restores an archive into `spec.vmid`, detached under `job`, and waits. Repeating with
    /// the same `job` never restores twice. Without `force`, an existing VMID is `VmidTaken`.
    /// A failed restore leaves the VM behind (§12.4): destroy it.
    fn restore(
        &self,
        node: &NodeName,
        job: &JobId,
        spec: &RestoreSpec,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Takes a disk snapshot. Repeating gives `Already` when a snapshot of that name exists.
    fn snapshot(
        &self,
        node: &NodeName,
        vmid: Vmid,
        name: &SnapshotName,
        description: Option<&Description>,
    ) -> impl Future<Output = Result<Applied>> + Send;

    /// Rolls back to a snapshot (a running VM is stopped first and stays stopped). Not
    /// idempotent in effect: each call discards the changes made since.
    fn rollback(
        &self,
        node: &NodeName,
        vmid: Vmid,
        name: &SnapshotName,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Deletes a snapshot. Idempotent: a missing snapshot gives `AlreadyGone`.
    fn delete_snapshot(
        &self,
        node: &NodeName,
        vmid: Vmid,
        name: &SnapshotName,
    ) -> impl Future<Output = Result<Destroyed>> + Send;

    /// The VM's snapshots (without the `current` pseudo-entry). Read-only.
    fn list_snapshots(
        &self,
        node: &NodeName,
        vmid: Vmid,
    ) -> impl Future<Output = Result<Vec<SnapshotInfo>>> + Send;

    /// The state of the detached job `job` (clone, backup, restore) on the node. Read-only.
    fn job_state(
        &self,
        node: &NodeName,
        job: &JobId,
    ) -> impl Future<Output = Result<JobState>> + Send;

    /// Every QEMU VM in the cluster tagged `cloudpods` (templates excluded), with its node,
    /// tags and lock, from `/cluster/resources` (name and status may lag, §3.3). Read-only.
    fn list_managed_vms(
        &self,
        node: &NodeName,
    ) -> impl Future<Output = Result<Vec<ClusterVm>>> + Send;
}
