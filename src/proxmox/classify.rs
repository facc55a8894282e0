//! Turning a command's exit status and output into success or a [`ProxmoxError`], by the
//! stable substrings of the reference (§0.4, §0.8, §14.3).
//!
//! Both functions accept separate stdout/stderr (foreground runs) or the same merged text
//! twice (detached jobs, whose log holds both streams).

use super::commands::CommandKind;
use super::error::{LockKind, Missing, ObservedState, ProxmoxError, STDERR_EXCERPT_MAX, truncate};
use super::parse::warning_count;
use super::types::Vmid;

/// A successful command's side notes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// `Task finished with N warning(s)!` (success with warnings).
    pub warnings: u32,
}

/// Success or the classified error for a finished command.
///
/// Beyond the exit status this catches the reference's quiet failures: `qm disk resize` and
/// `pvesm free` exit 0 with the error on stderr (§0.2), and vzdump exits 0 without doing
/// anything when the VM is not on this node (§12.1), reported as `NotFound { Vm }`.
pub fn check(
    kind: CommandKind,
    exit: i32,
    stdout: &str,
    stderr: &str,
) -> Result<Outcome, ProxmoxError> {
    if exit != 0 {
        return Err(classify(kind, exit, stdout, stderr));
    }
    if kind.exit_code_lies() && !meaningful_lines(stderr).is_empty() {
        return Err(classify(kind, exit, stdout, stderr));
    }
    if kind == CommandKind::Backup
        && !stdout.contains("Finished Backup of VM")
        && !stderr.contains("Finished Backup of VM")
    {
        return Err(ProxmoxError::NotFound { what: Missing::Vm });
    }
    // max, not sum: a detached job passes its merged log as both streams.
    let warnings = warning_count(stderr).max(warning_count(stdout));
    Ok(Outcome { warnings })
}

/// Classifies a failed command. Never returns success; see [`check`] for the full decision.
pub fn classify(kind: CommandKind, exit: i32, stdout: &str, stderr: &str) -> ProxmoxError {
    if let Some(e) = recognize(kind, stderr) {
        return e;
    }
    // vzdump reports per-guest failures as `ERROR: ...` lines on stdout (§12.1).
    let error_lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("ERROR: "))
        .collect();
    if let Some(e) = recognize(kind, &error_lines.join("\n")) {
        return e;
    }
    let mut excerpt = meaningful_lines(stderr);
    excerpt.retain(|l| *l != "job errors");
    let excerpt = if excerpt.is_empty() {
        error_lines.join("\n")
    } else {
        excerpt.join("\n")
    };
    ProxmoxError::Failed {
        command: kind.name().to_string(),
        exit,
        stderr: truncate(&excerpt, STDERR_EXCERPT_MAX),
    }
}

/// Stderr lines that are not harmless noise (lock waits, warning summaries).
fn meaningful_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .map(str::trim)
        .filter(|l| !is_noise(l))
        .collect()
}

/// Harmless stderr lines: lock waits that succeeded, warning summaries, `WARN:` lines.
fn is_noise(l: &str) -> bool {
    let warning_summary = l.starts_with("Task finished with ") && l.ends_with(" warning(s)!");
    l.is_empty()
        || l == "OK"
        || l.starts_with("trying to acquire lock...")
        || l.starts_with("WARN: ")
        || warning_summary
}

/// The text inside single quotes right after `prefix`, e.g. `disk '` → `scsi9`.
fn quoted_after(text: &str, prefix: &str) -> Option<String> {
    let start = text.find(prefix)? + prefix.len();
    let rest = &text[start..];
    let end = rest.find('\'')?;
    Some(rest[..end].to_string())
}

/// The first number (as a VMID) right after `prefix`.
fn vmid_after(text: &str, prefix: &str) -> Option<Vmid> {
    let start = text.find(prefix)? + prefix.len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Vmid::parse(&digits).ok()
}

fn rejected(field: &str, message: &str) -> ProxmoxError {
    ProxmoxError::Rejected {
        field: field.to_string(),
        message: truncate(message, STDERR_EXCERPT_MAX),
    }
}

/// The line of `text` containing `needle`, for messages.
fn line_with<'a>(text: &'a str, needle: &'a str) -> &'a str {
    text.lines()
        .find(|l| l.contains(needle))
        .map_or(needle, str::trim)
}

fn recognize(kind: CommandKind, text: &str) -> Option<ProxmoxError> {
    if text.trim().is_empty() {
        return None;
    }
    if let Some(e) = parameter_error(text) {
        return Some(e);
    }
    if text.contains("ERROR: unknown command '") {
        return Some(rejected("command", line_with(text, "unknown command")));
    }

    // VMID collisions (§5.1, §5.4, §12.4).
    if text.contains("config file already exists") {
        return Some(ProxmoxError::VmidTaken {
            vmid: vmid_after(text, "unable to create VM "),
        });
    }
    if text.contains("already exists on node '") {
        return Some(ProxmoxError::VmidTaken {
            vmid: vmid_after(text, "unable to restore VM "),
        });
    }
    if text.contains("atomic file '") && text.contains("File exists") {
        return Some(ProxmoxError::VmidTaken {
            vmid: vmid_after(text, "/qemu-server/"),
        });
    }

    // Locks (§0.6): a config lock vs flock contention.
    if let Some(value) = text
        .find("VM is locked (")
        .and_then(|i| text[i + "VM is locked (".len()..].split(')').next())
    {
        return Some(ProxmoxError::Locked {
            kind: LockKind::from_config_value(value),
        });
    }
    if text.contains("can't lock file '") && text.contains("got timeout") {
        return Some(ProxmoxError::Locked {
            kind: LockKind::File,
        });
    }
    if text.contains("can't acquire lock '") && text.contains("got timeout") {
        return Some(ProxmoxError::Locked {
            kind: LockKind::BackupJob,
        });
    }

    if text.contains("cluster not ready - no quorum") {
        return Some(ProxmoxError::Unavailable {
            message: line_with(text, "no quorum").to_string(),
        });
    }

    // Guest agent (§10): checked before "not running", which the agent message contains.
    if text.contains("QEMU guest agent is not running")
        || (text.contains("qga command '") && text.contains("got timeout"))
    {
        return Some(ProxmoxError::AgentNotReady);
    }
    if text.contains("No QEMU guest agent configured") {
        return Some(rejected("agent", "No QEMU guest agent configured"));
    }

    // Not found (§0.8 and per-object messages).
    if (text.contains("Configuration file '") && text.contains("does not exist"))
        || text.contains("unable to find configuration file for VM")
        || text.contains("unable to find VM '")
    {
        return Some(ProxmoxError::NotFound { what: Missing::Vm });
    }
    for (prefix, make) in [
        ("disk '", Missing::Disk as fn(String) -> Missing),
        ("snapshot '", Missing::Snapshot),
        ("volume '", Missing::Volume),
        ("storage '", Missing::Storage),
    ] {
        if let Some(name) = quoted_after(text, prefix)
            && text.contains(&format!("{prefix}{name}' does not exist"))
        {
            return Some(ProxmoxError::NotFound { what: make(name) });
        }
    }
    if let Some(a) = quoted_after(text, "can't find archive file '") {
        return Some(ProxmoxError::NotFound {
            what: Missing::Archive(a),
        });
    }
    if let Some(n) = quoted_after(text, "hostname lookup '") {
        return Some(ProxmoxError::NotFound {
            what: Missing::Node(n),
        });
    }
    if text.contains("no such task") {
        return Some(ProxmoxError::NotFound {
            what: Missing::Task,
        });
    }

    // State mismatches (§8, §9, §11, §12.4).
    if let Some(s) = quoted_after(text, "snapshot name '")
        && text.contains("already used")
    {
        return Some(ProxmoxError::AlreadyInState {
            state: ObservedState::SnapshotExists(s),
        });
    }
    if text.contains("already running")
        || text.contains("is running - destroy failed")
        || text.contains("- vm is running")
    {
        return Some(ProxmoxError::AlreadyInState {
            state: ObservedState::Running,
        });
    }
    if text.contains("VM is paused - cannot shutdown") {
        return Some(ProxmoxError::AlreadyInState {
            state: ObservedState::Paused,
        });
    }
    if text.contains(" not running") {
        return Some(ProxmoxError::AlreadyInState {
            state: ObservedState::Stopped,
        });
    }

    // Timeouts of the node's own waits.
    if text.contains("VM quit/powerdown failed - got timeout")
        || text.contains("wait failed - got timeout")
    {
        return Some(ProxmoxError::Timeout {
            command: kind.name().to_string(),
            after: None,
        });
    }

    // Requests the node refuses for good.
    const REJECTIONS: &[(&str, &str)] = &[
        ("shrinking disks is not supported", "size"),
        ("you can't resize a cdrom", "disk"),
        ("has no associated volume", "disk"),
        ("it's a template", "template"),
        ("vm is a template", "template"),
        ("protection mode enabled", "protection"),
        ("cannot remove protected", "protected"),
        ("is still in use by linked clone", "vmid"),
        ("clone feature is not supported", "full"),
        ("not allowed for linked clones", "full"),
        ("can't clone to non-shared storage", "target"),
        ("can't clone VM to node", "target"),
        ("snapshot feature is not available", "snapshot"),
        ("unable to rollback to incomplete snapshot", "snapshot"),
        ("reserved name", "snapname"),
        ("wrong content type", "storage"),
        ("does not support vm images", "storage"),
        ("max backup limit", "storage"),
        ("SSH public key validation error", "sshkeys"),
        ("vcpus allowed per VM", "cores"),
        ("balloon value too large", "memory"),
        ("please run as root", "user"),
        ("Permission check failed", "permission"),
    ];
    for (needle, field) in REJECTIONS {
        if text.contains(needle) {
            return Some(rejected(field, line_with(text, needle)));
        }
    }
    if text.contains("unable to get any free VMID") || text.contains("' is disabled") {
        let needle = if text.contains("free VMID") {
            "free VMID"
        } else {
            "is disabled"
        };
        return Some(ProxmoxError::Unavailable {
            message: line_with(text, needle).to_string(),
        });
    }
    if text.contains("interrupted by signal") {
        return Some(ProxmoxError::Transport {
            message: format!(
                "{} was interrupted by a signal (channel closed?)",
                kind.name()
            ),
        });
    }
    None
}

/// `400 Parameter verification failed.` + `<param>: <reason>`, and getopt-level 400s (§0.4).
fn parameter_error(text: &str) -> Option<ProxmoxError> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    if let Some(i) = lines
        .iter()
        .position(|l| l.starts_with("400 Parameter verification failed"))
    {
        let detail = lines[i + 1..]
            .iter()
            .find(|l| !l.is_empty())
            .copied()
            .unwrap_or("");
        let (field, reason) = detail.split_once(": ").unwrap_or(("parameter", detail));
        if field == "vmid" && reason.contains("already exists") {
            return Some(ProxmoxError::VmidTaken {
                vmid: vmid_after(reason, "VM "),
            });
        }
        if field == "upid" && reason.contains("no such task") {
            return Some(ProxmoxError::NotFound {
                what: Missing::Task,
            });
        }
        return Some(rejected(field, reason));
    }
    let getopt = lines.iter().find(|l| {
        matches!(
            **l,
            "400 unable to parse option"
                | "400 unable to parse boolean option"
                | "400 too many arguments"
                | "400 not enough arguments"
        )
    })?;
    let field = lines
        .iter()
        .find_map(|l| l.strip_prefix("Unknown option: "))
        .unwrap_or("argv");
    Some(rejected(field, getopt.trim_start_matches("400 ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use CommandKind as K;

    fn err(kind: K, exit: i32, stdout: &str, stderr: &str) -> ProxmoxError {
        match check(kind, exit, stdout, stderr) {
            Err(e) => e,
            Ok(o) => panic!("expected an error, got {o:?}"),
        }
    }

    fn vmid(n: u32) -> Option<Vmid> {
        Vmid::new(n).ok()
    }

    #[test]
    fn successes() {
        assert_eq!(
            check(K::Set, 0, "update VM 123: -cores 2\n", ""),
            Ok(Outcome::default())
        );
        // Lock contention that resolved is not a failure (§0.6).
        assert_eq!(
            check(
                K::Set,
                0,
                "update VM 123: -cores 2\n",
                "trying to acquire lock...\n OK\n"
            ),
            Ok(Outcome::default())
        );
        // Destroy with warnings (sim output).
        assert_eq!(
            check(
                K::Destroy,
                0,
                "  Logical volume \"vm-131-disk-0\" successfully removed.\npurging VM 131 from related configurations..\nWARN: simulated warning 1\n",
                "Task finished with 1 warning(s)!\n"
            ),
            Ok(Outcome { warnings: 1 })
        );
        // Shutdown of a stopped VM: warning on stderr, exit 0 (§8).
        assert_eq!(
            check(K::Shutdown, 0, "", "VM 123 not running\n"),
            Ok(Outcome::default())
        );
        // Resize that worked prints LVM lines on stdout only.
        assert_eq!(
            check(
                K::Resize,
                0,
                "  Logical volume pve/vm-123-disk-0 successfully resized.\n",
                ""
            ),
            Ok(Outcome::default())
        );
        assert_eq!(
            check(
                K::DeleteBackup,
                0,
                "Removed volume 'local:backup/x.vma.zst'\n",
                ""
            ),
            Ok(Outcome::default())
        );
        assert_eq!(
            check(
                K::Backup,
                0,
                "INFO: Finished Backup of VM 123 (00:00:42)\nINFO: Backup job finished successfully\n",
                ""
            ),
            Ok(Outcome::default())
        );
    }

    #[test]
    fn exit_zero_failures() {
        // qm disk resize exits 0 when its task fails (sim output).
        assert_eq!(
            err(K::Resize, 0, "", "shrinking disks is not supported\n"),
            ProxmoxError::Rejected {
                field: "size".into(),
                message: "shrinking disks is not supported".into()
            }
        );
        assert_eq!(
            err(K::Resize, 0, "", "disk 'scsi9' does not exist\n"),
            ProxmoxError::NotFound {
                what: Missing::Disk("scsi9".into())
            }
        );
        // vzdump of a VM on another node: nothing printed, exit 0 (§12.1).
        assert!(err(K::Backup, 0, "", "").is_vm_not_found());
        // An unclassified quiet failure still fails.
        assert!(matches!(
            err(K::DeleteBackup, 0, "", "something odd happened\n"),
            ProxmoxError::Failed { exit: 0, .. }
        ));
    }

    #[test]
    fn not_found_wordings() {
        for (kind, stderr) in [
            (
                K::Status,
                "Configuration file 'nodes/pve1/qemu-server/555.conf' does not exist\n",
            ),
            (
                K::Destroy,
                "Configuration file 'nodes/pve1/qemu-server/124.conf' does not exist\n",
            ),
            (
                K::Stop,
                "unable to find configuration file for VM 123 on node 'pve1'\n",
            ),
            (
                K::Clone,
                "unable to find configuration file for VM 9000 on node 'pve1'\n",
            ),
        ] {
            assert!(err(kind, 255, "", stderr).is_vm_not_found(), "{stderr}");
        }
        // vzdump of an unknown VMID (sim output).
        let out = "INFO: starting new backup job: vzdump 777 --storage local\nINFO: Starting Backup of VM 777 (qemu)\nERROR: Backup of VM 777 failed - unable to find VM '777'\nINFO: Backup job finished with errors\n";
        assert!(err(K::Backup, 255, out, "job errors\n").is_vm_not_found());
        assert_eq!(
            err(K::Rollback, 255, "", "snapshot 'nope' does not exist\n"),
            ProxmoxError::NotFound {
                what: Missing::Snapshot("nope".into())
            }
        );
        assert_eq!(
            err(
                K::DeleteBackup,
                255,
                "",
                "volume 'local:backup/x.vma.zst' does not exist\n"
            ),
            ProxmoxError::NotFound {
                what: Missing::Volume("local:backup/x.vma.zst".into())
            }
        );
        assert_eq!(
            err(K::Clone, 255, "", "storage 'fast' does not exist\n"),
            ProxmoxError::NotFound {
                what: Missing::Storage("fast".into())
            }
        );
        assert_eq!(
            err(
                K::Restore,
                255,
                "",
                "can't find archive file 'local:backup/nope.vma.zst'\n"
            ),
            ProxmoxError::NotFound {
                what: Missing::Archive("local:backup/nope.vma.zst".into())
            }
        );
        assert_eq!(
            err(
                K::TaskStatus,
                255,
                "",
                "400 Parameter verification failed.\nupid: no such task\npvesh get <api_path> [OPTIONS] [FORMAT_OPTIONS]\n"
            ),
            ProxmoxError::NotFound {
                what: Missing::Task
            }
        );
        assert_eq!(
            err(
                K::Status,
                255,
                "",
                "hostname lookup 'pve9' failed - failed to get address info for: pve9\n"
            ),
            ProxmoxError::NotFound {
                what: Missing::Node("pve9".into())
            }
        );
    }

    #[test]
    fn locks() {
        assert_eq!(
            err(K::Set, 255, "", "VM is locked (clone)\n"),
            ProxmoxError::Locked {
                kind: LockKind::Clone
            }
        );
        assert_eq!(
            err(K::Destroy, 255, "", "VM is locked (backup)\n"),
            ProxmoxError::Locked {
                kind: LockKind::Backup
            }
        );
        assert_eq!(
            err(K::Snapshot, 255, "", "VM is locked (snapshot-delete)\n"),
            ProxmoxError::Locked {
                kind: LockKind::SnapshotDelete
            }
        );
        // sim output of a contended flock.
        assert_eq!(
            err(
                K::Set,
                255,
                "",
                "trying to acquire lock...\ncan't lock file '/var/lock/qemu-server/lock-123.conf' - got timeout\n"
            ),
            ProxmoxError::Locked {
                kind: LockKind::File
            }
        );
        // Inside a clone task.
        assert_eq!(
            err(
                K::Clone,
                255,
                "creating a clone of VM 9000 with ID 123\n",
                "clone failed: can't lock file '/var/lock/qemu-server/lock-9000.conf' - got timeout\n"
            ),
            ProxmoxError::Locked {
                kind: LockKind::File
            }
        );
        assert_eq!(
            err(
                K::Backup,
                255,
                "INFO: trying to get global lock - waiting...\n",
                "can't acquire lock '/var/run/vzdump.lock' - got timeout\n"
            ),
            ProxmoxError::Locked {
                kind: LockKind::BackupJob
            }
        );
        // vzdump on a VM locked by a clone reports it in an ERROR line.
        assert_eq!(
            err(
                K::Backup,
                255,
                "ERROR: Backup of VM 123 failed - VM is locked (clone)\n",
                "job errors\n"
            ),
            ProxmoxError::Locked {
                kind: LockKind::Clone
            }
        );
    }

    #[test]
    fn states() {
        assert_eq!(
            err(K::Start, 255, "", "VM 123 already running\n"),
            ProxmoxError::AlreadyInState {
                state: ObservedState::Running
            }
        );
        assert_eq!(
            err(K::Reboot, 255, "", "VM 123 not running\n"),
            ProxmoxError::AlreadyInState {
                state: ObservedState::Stopped
            }
        );
        assert_eq!(
            err(K::AgentNetwork, 255, "", "VM 9000 is not running\n"),
            ProxmoxError::AlreadyInState {
                state: ObservedState::Stopped
            }
        );
        assert_eq!(
            err(K::Destroy, 255, "", "VM 123 is running - destroy failed\n"),
            ProxmoxError::AlreadyInState {
                state: ObservedState::Running
            }
        );
        assert_eq!(
            err(
                K::Restore,
                255,
                "",
                "unable to restore VM 123 - vm is running\n"
            ),
            ProxmoxError::AlreadyInState {
                state: ObservedState::Running
            }
        );
        assert_eq!(
            err(K::Shutdown, 255, "", "VM is paused - cannot shutdown\n"),
            ProxmoxError::AlreadyInState {
                state: ObservedState::Paused
            }
        );
        assert_eq!(
            err(
                K::Snapshot,
                255,
                "",
                "snapshot name 'before-x' already used\n"
            ),
            ProxmoxError::AlreadyInState {
                state: ObservedState::SnapshotExists("before-x".into())
            }
        );
    }

    #[test]
    fn vmid_collisions() {
        assert_eq!(
            err(
                K::Clone,
                255,
                "",
                "unable to create VM 123: config file already exists\n"
            ),
            ProxmoxError::VmidTaken { vmid: vmid(123) }
        );
        assert_eq!(
            err(
                K::Restore,
                255,
                "",
                "unable to restore VM 123 - VM 123 already exists on node 'pve1'\n"
            ),
            ProxmoxError::VmidTaken { vmid: vmid(123) }
        );
        assert_eq!(
            err(
                K::CheckVmid,
                255,
                "",
                "400 Parameter verification failed.\nvmid: VM 9000 already exists\npvesh get <api_path> [OPTIONS] [FORMAT_OPTIONS]\n"
            ),
            ProxmoxError::VmidTaken { vmid: vmid(9000) }
        );
        assert_eq!(
            err(
                K::Clone,
                255,
                "",
                "clone failed: close (rename) atomic file '/etc/pve/nodes/pve1/qemu-server/124.conf' failed: File exists\n"
            ),
            ProxmoxError::VmidTaken { vmid: vmid(124) }
        );
    }

    #[test]
    fn agent_and_cluster() {
        assert_eq!(
            err(
                K::AgentNetwork,
                255,
                "",
                "QEMU guest agent is not running\n"
            ),
            ProxmoxError::AgentNotReady
        );
        assert_eq!(
            err(
                K::AgentNetwork,
                255,
                "",
                "VM 123 qga command 'guest-network-get-interfaces' failed - got timeout\n"
            ),
            ProxmoxError::AgentNotReady
        );
        assert!(matches!(
            err(K::AgentNetwork, 255, "", "No QEMU guest agent configured\n"),
            ProxmoxError::Rejected { field, .. } if field == "agent"
        ));
        assert_eq!(
            err(K::Set, 255, "", "cluster not ready - no quorum?\n"),
            ProxmoxError::Unavailable {
                message: "cluster not ready - no quorum?".into()
            }
        );
        assert!(matches!(
            err(
                K::NextId,
                255,
                "",
                "unable to get any free VMID in range [100, 1000000]\n"
            ),
            ProxmoxError::Unavailable { .. }
        ));
    }

    #[test]
    fn parameter_errors() {
        assert_eq!(
            err(
                K::Set,
                255,
                "",
                "400 Parameter verification failed.\nname: invalid format - value does not look like a valid DNS name\nqm set <vmid> [OPTIONS]\n"
            ),
            ProxmoxError::Rejected {
                field: "name".into(),
                message: "invalid format - value does not look like a valid DNS name".into()
            }
        );
        assert_eq!(
            err(
                K::Resize,
                255,
                "",
                "400 Parameter verification failed.\nsize: value does not match the regex pattern\nqm disk resize <vmid> <disk> <size> [OPTIONS]\n"
            ),
            ProxmoxError::Rejected {
                field: "size".into(),
                message: "value does not match the regex pattern".into()
            }
        );
        assert_eq!(
            err(
                K::Set,
                255,
                "",
                "Unknown option: bogus\n400 unable to parse option\nqm set <vmid> [OPTIONS]\n"
            ),
            ProxmoxError::Rejected {
                field: "bogus".into(),
                message: "unable to parse option".into()
            }
        );
        assert_eq!(
            err(
                K::Clone,
                255,
                "",
                "400 unable to parse boolean option\nqm clone <vmid> <newid> [OPTIONS]\n"
            ),
            ProxmoxError::Rejected {
                field: "argv".into(),
                message: "unable to parse boolean option".into()
            }
        );
        assert!(matches!(
            err(K::Set, 255, "", "ERROR: unknown command 'qm foo'\nUSAGE: qm <COMMAND> [ARGS] [OPTIONS]\n"),
            ProxmoxError::Rejected { field, .. } if field == "command"
        ));
    }

    #[test]
    fn refusals_and_timeouts() {
        for (kind, stderr, field) in [
            (
                K::Start,
                "you can't start a vm if it's a template\n",
                "template",
            ),
            (
                K::Snapshot,
                "unable to use snapshot name 'current' (reserved name)\n",
                "snapname",
            ),
            (K::Set, "SSH public key validation error\n", "sshkeys"),
            (
                K::Clone,
                "Linked clone feature is not supported for 'local:9000/base-9000-disk-0.raw' (scsi0)\n",
                "full",
            ),
            (
                K::Destroy,
                "can't remove VM 123 - protection mode enabled\n",
                "protection",
            ),
            (
                K::Start,
                "MAX 4 vcpus allowed per VM on this node\n",
                "cores",
            ),
        ] {
            assert!(
                matches!(err(kind, 255, "", stderr), ProxmoxError::Rejected { field: f, .. } if f == field),
                "{stderr}"
            );
        }
        let out = "INFO: starting new backup job: vzdump 123\nERROR: Backup of VM 123 failed - There is a max backup limit of 1 enforced by the target storage or the vzdump parameters. Either increase the limit or delete old backups.\n";
        assert!(matches!(
            err(K::Backup, 255, out, "job errors\n"),
            ProxmoxError::Rejected { field, .. } if field == "storage"
        ));
        assert_eq!(
            err(
                K::Shutdown,
                255,
                "",
                "VM quit/powerdown failed - got timeout\n"
            ),
            ProxmoxError::Timeout {
                command: "qm shutdown".into(),
                after: None
            }
        );
        assert!(matches!(
            err(K::Clone, 255, "", "clone failed: interrupted by signal\n"),
            ProxmoxError::Transport { .. }
        ));
    }

    #[test]
    fn unclassified_failures_keep_a_short_excerpt() {
        // sim: clone failing inside the task after partial work.
        let e = err(
            K::Clone,
            255,
            "creating a clone of VM 9000 with ID 130\ncreate full clone of drive ide2 (local-lvm:vm-9000-cloudinit)\n",
            "clone failed: no space\n",
        );
        assert_eq!(
            e,
            ProxmoxError::Failed {
                command: "qm clone".into(),
                exit: 255,
                stderr: "clone failed: no space".into()
            }
        );
        // vzdump: the reason comes from the ERROR line, not "job errors".
        let out = "INFO: Starting Backup of VM 123 (qemu)\nERROR: Backup of VM 123 failed - disk full\nINFO: Backup job finished with errors\n";
        assert_eq!(
            err(K::Backup, 255, out, "job errors\n"),
            ProxmoxError::Failed {
                command: "vzdump".into(),
                exit: 255,
                stderr: "ERROR: Backup of VM 123 failed - disk full".into()
            }
        );
        let long = "x".repeat(5000);
        match err(K::Start, 255, "", &long) {
            ProxmoxError::Failed { stderr, .. } => assert!(stderr.len() <= STDERR_EXCERPT_MAX + 3),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            err(K::Start, 1, "", ""),
            ProxmoxError::Failed { exit: 1, .. }
        ));
    }

    #[test]
    fn merged_detached_logs() {
        let log = "creating a clone of VM 9000 with ID 130\ncreate full clone of drive ide2 (local-lvm:vm-9000-cloudinit)\nclone failed: VM is locked (backup)\n";
        assert_eq!(
            check(K::Clone, 255, log, log),
            Err(ProxmoxError::Locked {
                kind: LockKind::Backup
            })
        );
        let ok =
            "INFO: Finished Backup of VM 123 (00:00:00)\nINFO: Backup job finished successfully\n";
        assert_eq!(check(K::Backup, 0, ok, ok), Ok(Outcome::default()));
        let warned = "WARN: unable to add notes - found unknown: x\nTask finished with 1 warning(s)!\nINFO: Finished Backup of VM 123 (00:00:00)\n";
        assert_eq!(
            check(K::Backup, 0, warned, warned),
            Ok(Outcome { warnings: 1 })
        );
    }
}
