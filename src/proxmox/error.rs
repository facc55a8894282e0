//! `ProxmoxError`: what can go wrong when driving a Proxmox VE node, classified for the caller.

use std::fmt;
use std::time::Duration;

use super::types::Vmid;

/// Longest stderr excerpt kept in [`ProxmoxError::Failed`], in bytes.
pub const STDERR_EXCERPT_MAX: usize = 1024;

/// Which lock blocked an operation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LockKind {
    /// Config lock `backup` (vzdump is running).
    Backup,
    /// Config lock `clone` (the VM is a clone target still being copied).
    Clone,
    /// Config lock `create` (qm create / qmrestore is running).
    Create,
    /// Config lock `migrate`.
    Migrate,
    /// Config lock `rollback`.
    Rollback,
    /// Config lock `snapshot`.
    Snapshot,
    /// Config lock `snapshot-delete`.
    SnapshotDelete,
    /// Config lock `suspending`.
    Suspending,
    /// Config lock `suspended`.
    Suspended,
    /// Config lock `destroyed` (a destroy is in progress or died half-way).
    Destroyed,
    /// Config lock `import`.
    Import,
    /// A config lock value this code does not know.
    Other(String),
    /// The per-VMID flock `/var/lock/qemu-server/lock-<vmid>.conf` timed out: transient contention.
    File,
    /// The node-global vzdump lock `/var/run/vzdump.lock` timed out.
    BackupJob,
}

impl LockKind {
    /// The kind for a config `lock:` value as PVE writes it.
    pub fn from_config_value(value: &str) -> Self {
        match value {
            "backup" => LockKind::Backup,
            "clone" => LockKind::Clone,
            "create" => LockKind::Create,
            "migrate" => LockKind::Migrate,
            "rollback" => LockKind::Rollback,
            "snapshot" => LockKind::Snapshot,
            "snapshot-delete" => LockKind::SnapshotDelete,
            "suspending" => LockKind::Suspending,
            "suspended" => LockKind::Suspended,
            "destroyed" => LockKind::Destroyed,
            "import" => LockKind::Import,
            other => LockKind::Other(other.to_string()),
        }
    }

    /// True for the short-lived flock and vzdump-queue timeouts (as opposed to a config lock).
    pub fn is_contention(&self) -> bool {
        matches!(self, LockKind::File | LockKind::BackupJob)
    }
}

impl fmt::Display for LockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            LockKind::Backup => "backup",
            LockKind::Clone => "clone",
            LockKind::Create => "create",
            LockKind::Migrate => "migrate",
            LockKind::Rollback => "rollback",
            LockKind::Snapshot => "snapshot",
            LockKind::SnapshotDelete => "snapshot-delete",
            LockKind::Suspending => "suspending",
            LockKind::Suspended => "suspended",
            LockKind::Destroyed => "destroyed",
            LockKind::Import => "import",
            LockKind::Other(s) => s,
            LockKind::File => "file lock (contention)",
            LockKind::BackupJob => "node-wide vzdump lock",
        };
        f.write_str(s)
    }
}

/// What was not found.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Missing {
    /// The VM (no config on the node addressed).
    Vm,
    /// A disk key of the VM, e.g. `scsi0`.
    Disk(String),
    /// A snapshot of the VM.
    Snapshot(String),
    /// A storage volume (e.g. a backup archive volid).
    Volume(String),
    /// A storage id.
    Storage(String),
    /// A backup archive given to qmrestore.
    Archive(String),
    /// A task (UPID).
    Task,
    /// A cluster node.
    Node(String),
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::Vm => f.write_str("VM"),
            Missing::Disk(d) => write!(f, "disk '{d}'"),
            Missing::Snapshot(s) => write!(f, "snapshot '{s}'"),
            Missing::Volume(v) => write!(f, "volume '{v}'"),
            Missing::Storage(s) => write!(f, "storage '{s}'"),
            Missing::Archive(a) => write!(f, "archive '{a}'"),
            Missing::Task => f.write_str("task"),
            Missing::Node(n) => write!(f, "node '{n}'"),
        }
    }
}

/// The state a VM (or object) was already in when an operation refused to run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ObservedState {
    /// The VM is running (`already running`, `is running - destroy failed`, `vm is running`).
    Running,
    /// The VM is not running (`not running`, also for guest-agent calls on a stopped VM).
    Stopped,
    /// The VM is paused (`VM is paused - cannot shutdown`).
    Paused,
    /// A snapshot with this name already exists.
    SnapshotExists(String),
}

impl fmt::Display for ObservedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObservedState::Running => f.write_str("running"),
            ObservedState::Stopped => f.write_str("stopped"),
            ObservedState::Paused => f.write_str("paused"),
            ObservedState::SnapshotExists(s) => write!(f, "snapshot '{s}' exists"),
        }
    }
}

/// Errors of the Proxmox layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxmoxError {
    /// The object does not exist (on the node addressed).
    #[error("{what} not found")]
    NotFound {
        /// What is missing.
        what: Missing,
    },
    /// A lock blocked the operation.
    #[error("locked: {kind}")]
    Locked {
        /// Which lock.
        kind: LockKind,
    },
    /// The VM is already in the state the operation would reach, or in one that forbids it.
    #[error("already in state: {state}")]
    AlreadyInState {
        /// The state it is in.
        state: ObservedState,
    },
    /// The VMID is already used (clone/restore target collision, or `nextid --vmid` refused).
    #[error("VMID {} is already taken", .vmid.map_or_else(|| "?".to_string(), |v| v.to_string()))]
    VmidTaken {
        /// The VMID, when the message names it.
        vmid: Option<Vmid>,
    },
    /// The QEMU guest agent does not answer (yet).
    #[error("the QEMU guest agent is not running")]
    AgentNotReady,
    /// The cluster or node cannot serve the request now (no quorum, VMID range exhausted, ...).
    #[error("unavailable: {message}")]
    Unavailable {
        /// The node's message.
        message: String,
    },
    /// The node refused a parameter or the request as such; retrying the same call will not help.
    #[error("rejected ({field}): {message}")]
    Rejected {
        /// The parameter (or aspect) refused.
        field: String,
        /// The node's reason.
        message: String,
    },
    /// A value failed local validation before any command was built.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The argument.
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// A command or wait did not finish in time.
    #[error("{command} timed out{}", .after.map_or_else(String::new, |d| format!(" after {}s", d.as_secs())))]
    Timeout {
        /// The command (kind, not the full argv).
        command: String,
        /// How long we waited, when known.
        after: Option<Duration>,
    },
    /// The SSH transport failed, or the task was interrupted because its channel went away.
    #[error("transport: {message}")]
    Transport {
        /// What happened.
        message: String,
    },
    /// The command failed in a way not classified above.
    #[error("{command} failed (exit {exit}): {stderr}")]
    Failed {
        /// The command (kind, not the full argv, so no tenant text or secret ends up here).
        command: String,
        /// Its exit status (-1 when killed by a signal).
        exit: i32,
        /// A truncated excerpt of its error output.
        stderr: String,
    },
    /// Output that could not be parsed.
    #[error("unexpected output: {what}")]
    Unexpected {
        /// What was wrong with it.
        what: String,
    },
}

impl ProxmoxError {
    /// True when the same call may succeed later without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            // Config locks clear when their task ends; stale ones need recovery, which the
            // caller reaches after its retry budget.
            ProxmoxError::Locked { .. }
            | ProxmoxError::AgentNotReady
            | ProxmoxError::Unavailable { .. }
            | ProxmoxError::Timeout { .. }
            | ProxmoxError::Transport { .. } => true,
            ProxmoxError::NotFound { .. }
            | ProxmoxError::AlreadyInState { .. }
            | ProxmoxError::VmidTaken { .. }
            | ProxmoxError::Rejected { .. }
            | ProxmoxError::InvalidArgument { .. }
            | ProxmoxError::Failed { .. }
            | ProxmoxError::Unexpected { .. } => false,
        }
    }

    /// True when the node refused because the VM is already in `state`.
    pub fn is_already(&self, state: &ObservedState) -> bool {
        matches!(self, ProxmoxError::AlreadyInState { state: s } if s == state)
    }

    /// True for "the VM does not exist".
    pub fn is_vm_not_found(&self) -> bool {
        matches!(self, ProxmoxError::NotFound { what: Missing::Vm })
    }

    /// Shorthand for [`ProxmoxError::InvalidArgument`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        ProxmoxError::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`ProxmoxError::Unexpected`].
    pub fn unexpected(what: impl Into<String>) -> Self {
        ProxmoxError::Unexpected { what: what.into() }
    }
}

/// Cuts `text` to at most `max` bytes on a char boundary, marking the cut.
pub fn truncate(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_split() {
        assert!(
            ProxmoxError::Locked {
                kind: LockKind::File
            }
            .is_retryable()
        );
        assert!(
            ProxmoxError::Locked {
                kind: LockKind::Clone
            }
            .is_retryable()
        );
        assert!(ProxmoxError::AgentNotReady.is_retryable());
        assert!(
            ProxmoxError::Unavailable {
                message: "no quorum".into()
            }
            .is_retryable()
        );
        assert!(
            ProxmoxError::Transport {
                message: "eof".into()
            }
            .is_retryable()
        );
        assert!(
            ProxmoxError::Timeout {
                command: "qm shutdown".into(),
                after: None
            }
            .is_retryable()
        );
        assert!(!ProxmoxError::NotFound { what: Missing::Vm }.is_retryable());
        assert!(!ProxmoxError::VmidTaken { vmid: None }.is_retryable());
        assert!(!ProxmoxError::invalid("vmid", "x").is_retryable());
        assert!(
            !ProxmoxError::Rejected {
                field: "size".into(),
                message: "shrinking disks is not supported".into()
            }
            .is_retryable()
        );
        assert!(
            !ProxmoxError::Failed {
                command: "qm set".into(),
                exit: 255,
                stderr: String::new()
            }
            .is_retryable()
        );
        assert!(!ProxmoxError::unexpected("x").is_retryable());
    }

    #[test]
    fn lock_kinds() {
        assert_eq!(LockKind::from_config_value("clone"), LockKind::Clone);
        assert_eq!(
            LockKind::from_config_value("snapshot-delete"),
            LockKind::SnapshotDelete
        );
        assert_eq!(
            LockKind::from_config_value("weird"),
            LockKind::Other("weird".into())
        );
        assert!(LockKind::File.is_contention());
        assert!(!LockKind::Backup.is_contention());
        assert_eq!(LockKind::SnapshotDelete.to_string(), "snapshot-delete");
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("  short  ", 10), "short");
        let long = "é".repeat(10); // 20 bytes
        let cut = truncate(&long, 5);
        assert_eq!(cut, "éé…");
    }

    #[test]
    fn display_is_readable() {
        assert_eq!(
            ProxmoxError::VmidTaken {
                vmid: Vmid::new(123).ok()
            }
            .to_string(),
            "VMID 123 is already taken"
        );
        assert_eq!(
            ProxmoxError::NotFound {
                what: Missing::Disk("scsi9".into())
            }
            .to_string(),
            "disk 'scsi9' not found"
        );
        assert_eq!(
            ProxmoxError::Timeout {
                command: "qm shutdown".into(),
                after: Some(Duration::from_secs(60))
            }
            .to_string(),
            "qm shutdown timed out after 60s"
        );
    }
}
