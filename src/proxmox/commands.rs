//! Pure builders: one function per Proxmox operation, returning the exact argv to run.
//!
//! Conventions (reference §0.5, §14): positionals first, every option as one `--key=value`
//! element, booleans as explicit `1`/`0`, reads through `pvesh ... --output-format=json`,
//! actions through `qm` (whose exit codes reflect task results, except resize and template).

use std::fmt;
use std::time::Duration;

use super::argv::{Argv, Command, RemoteCommand};
use super::error::ProxmoxError;
use super::types::{
    BackupVolid, CiUser, Cores, Description, DiskId, DnsName, IpConfig, MemoryMib, Nameservers,
    NodeName, OwnershipMarker, SearchDomain, SizeSpec, SnapshotName, SshPublicKey, StorageId, Tag,
    Vmid,
};

type Result<T> = std::result::Result<T, ProxmoxError>;

/// What a command does; [`super::classify`] uses it to read the command's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    /// `pvesh get /cluster/nextid`.
    NextId,
    /// `pvesh get /cluster/nextid --vmid N`.
    CheckVmid,
    /// `qm clone`.
    Clone,
    /// `qm set` (tags, resources, cloud-init).
    Set,
    /// `qm disk resize` (exit 0 even when the task fails).
    Resize,
    /// `qm start`.
    Start,
    /// `qm stop`.
    Stop,
    /// `qm shutdown`.
    Shutdown,
    /// `qm reboot`.
    Reboot,
    /// `pvesh get .../status/current`.
    Status,
    /// `pvesh get .../config`.
    Config,
    /// `qm guest cmd V network-get-interfaces`.
    AgentNetwork,
    /// `qm destroy`.
    Destroy,
    /// `qm unlock`.
    Unlock,
    /// `vzdump`.
    Backup,
    /// `pvesh get .../storage/S/content --content backup`.
    ListBackups,
    /// `pvesm free` (exit 0 even when the deletion task fails).
    DeleteBackup,
    /// `qmrestore`.
    Restore,
    /// `qm snapshot`.
    Snapshot,
    /// `qm rollback`.
    Rollback,
    /// `qm delsnapshot`.
    DeleteSnapshot,
    /// `pvesh get .../snapshot`.
    ListSnapshots,
    /// `pvesh get /cluster/resources --type vm`.
    ListResources,
    /// `pvesh get /nodes/N/tasks/UPID/status`.
    TaskStatus,
    /// Starting a detached job (see [`super::detached`]).
    DetachedStart,
    /// Polling a detached job.
    DetachedPoll,
    /// Removing a detached job's files.
    DetachedCleanup,
}

impl CommandKind {
    /// A short, secret-free name for logs and errors, e.g. `qm clone`.
    pub fn name(self) -> &'static str {
        match self {
            CommandKind::NextId | CommandKind::CheckVmid => "pvesh get /cluster/nextid",
            CommandKind::Clone => "qm clone",
            CommandKind::Set => "qm set",
            CommandKind::Resize => "qm disk resize",
            CommandKind::Start => "qm start",
            CommandKind::Stop => "qm stop",
            CommandKind::Shutdown => "qm shutdown",
            CommandKind::Reboot => "qm reboot",
            CommandKind::Status => "pvesh get status/current",
            CommandKind::Config => "pvesh get config",
            CommandKind::AgentNetwork => "qm guest cmd network-get-interfaces",
            CommandKind::Destroy => "qm destroy",
            CommandKind::Unlock => "qm unlock",
            CommandKind::Backup => "vzdump",
            CommandKind::ListBackups => "pvesh get storage content",
            CommandKind::DeleteBackup => "pvesm free",
            CommandKind::Restore => "qmrestore",
            CommandKind::Snapshot => "qm snapshot",
            CommandKind::Rollback => "qm rollback",
            CommandKind::DeleteSnapshot => "qm delsnapshot",
            CommandKind::ListSnapshots => "pvesh get snapshot",
            CommandKind::ListResources => "pvesh get /cluster/resources",
            CommandKind::TaskStatus => "pvesh get task status",
            CommandKind::DetachedStart => "detached start",
            CommandKind::DetachedPoll => "detached poll",
            CommandKind::DetachedCleanup => "detached cleanup",
        }
    }

    /// True for commands whose exit status is 0 even when their task failed (§0.2, §12.3).
    pub fn exit_code_lies(self) -> bool {
        matches!(self, CommandKind::Resize | CommandKind::DeleteBackup)
    }

    /// True for long-running tasks that should run detached (§14.4).
    pub fn is_long(self) -> bool {
        matches!(
            self,
            CommandKind::Clone | CommandKind::Backup | CommandKind::Restore
        )
    }
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn cmd(kind: CommandKind, argv: Argv) -> Command {
    Command { kind, argv }
}

fn qm(sub: &str, vmid: Vmid) -> Argv {
    Argv::new("qm").arg(sub).arg(vmid.to_string())
}

fn pvesh_get(path: String) -> Argv {
    Argv::new("pvesh").arg("get").arg(path)
}

fn json(argv: Argv) -> Argv {
    argv.opt("output-format", "json")
}

/// `pvesh get /cluster/nextid --output-format=json`: the lowest free VMID (reserves nothing).
pub fn next_id() -> Command {
    cmd(
        CommandKind::NextId,
        json(pvesh_get("/cluster/nextid".into())),
    )
}

/// `pvesh get /cluster/nextid --vmid=N --output-format=json`: succeeds only if N is free.
pub fn check_vmid(vmid: Vmid) -> Command {
    cmd(
        CommandKind::CheckVmid,
        json(pvesh_get("/cluster/nextid".into()).opt("vmid", vmid)),
    )
}

/// Full or linked clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloneMode {
    /// Linked clone of a template (fast; needs a base volume on a capable storage).
    Linked,
    /// Full copy, optionally onto another storage.
    Full {
        /// Target storage for the disks; `None` keeps the source's storages.
        storage: Option<StorageId>,
    },
}

/// Options of `qm clone`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneSpec {
    /// Template (or VM) to copy.
    pub source: Vmid,
    /// The new VMID.
    pub target: Vmid,
    /// Full or linked.
    pub mode: CloneMode,
    /// The new VM's name (its first label becomes the guest hostname).
    pub name: DnsName,
    /// The new VM's description; must carry the ownership marker line.
    pub description: Description,
    /// Move the clone to this node (shared storage only).
    pub target_node: Option<NodeName>,
}

/// `qm clone SRC NEW --full=0|1 --name=.. --description=.. [--storage=..] [--target=..]`.
///
/// The description is always passed so the template's is never inherited (§15). It must
/// contain the ownership marker line.
pub fn clone_vm(spec: &CloneSpec) -> Result<Command> {
    if OwnershipMarker::find_in(spec.description.as_str()).is_none() {
        return Err(ProxmoxError::invalid(
            "description",
            "a clone's description must carry the ownership marker line",
        ));
    }
    let mut argv = Argv::new("qm")
        .arg("clone")
        .arg(spec.source.to_string())
        .arg(spec.target.to_string());
    argv = match &spec.mode {
        CloneMode::Linked => argv.flag("full", false),
        CloneMode::Full { storage } => {
            let a = argv.flag("full", true);
            match storage {
                Some(s) => a.opt("storage", s),
                None => a,
            }
        }
    };
    argv = argv
        .opt("name", &spec.name)
        .opt("description", &spec.description);
    if let Some(node) = &spec.target_node {
        argv = argv.opt("target", node);
    }
    Ok(cmd(CommandKind::Clone, argv))
}

/// `qm set V --tags=a;b`: replaces the VM's whole tag list (run after clone; never on templates).
pub fn set_tags(vmid: Vmid, tags: &[Tag]) -> Result<Command> {
    if tags.is_empty() {
        return Err(ProxmoxError::invalid("tags", "no tags given"));
    }
    let mut list: Vec<&str> = tags.iter().map(Tag::as_str).collect();
    list.sort_unstable();
    list.dedup();
    Ok(cmd(
        CommandKind::Set,
        qm("set", vmid).opt("tags", list.join(";")),
    ))
}

/// `qm set V --description=..`.
pub fn set_description(vmid: Vmid, description: &Description) -> Command {
    cmd(
        CommandKind::Set,
        qm("set", vmid).opt("description", description),
    )
}

/// `qm set V [--cores=N] [--memory=MiB]`; on a running VM these stay pending until restart.
pub fn set_resources(
    vmid: Vmid,
    cores: Option<Cores>,
    memory: Option<MemoryMib>,
) -> Result<Command> {
    if cores.is_none() && memory.is_none() {
        return Err(ProxmoxError::invalid("resources", "nothing to set"));
    }
    let mut argv = qm("set", vmid);
    if let Some(c) = cores {
        argv = argv.opt("cores", c.get());
    }
    if let Some(m) = memory {
        argv = argv.opt("memory", m.get());
    }
    Ok(cmd(CommandKind::Set, argv))
}

/// Cloud-init settings applied with one `qm set`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CloudInitSpec {
    /// `--ciuser`.
    pub user: Option<CiUser>,
    /// `--sshkeys` (written to a temporary file on the node; at most 32).
    pub ssh_keys: Vec<SshPublicKey>,
    /// `--ipconfig0`.
    pub ipconfig0: Option<IpConfig>,
    /// `--nameserver`.
    pub nameservers: Option<Nameservers>,
    /// `--searchdomain`.
    pub searchdomain: Option<SearchDomain>,
}

impl CloudInitSpec {
    /// True when nothing would be set.
    pub fn is_empty(&self) -> bool {
        self.user.is_none()
            && self.ssh_keys.is_empty()
            && self.ipconfig0.is_none()
            && self.nameservers.is_none()
            && self.searchdomain.is_none()
    }
}

/// Most keys accepted in one `--sshkeys` file.
pub const MAX_SSH_KEYS: usize = 32;

/// `qm set V --ciuser=.. --ipconfig0=.. --nameserver=.. --searchdomain=.. [--sshkeys=FILE]`.
///
/// `qm --sshkeys` takes a *file path on the node* (§6.2). The keys therefore travel on stdin
/// into a private `mktemp` file (umask 077) that is removed right after `qm set`, whatever
/// its result:
///
/// ```sh
/// umask 077 && f=$(mktemp) || exit 1
/// if cat >"$f"; then LC_ALL=C.UTF-8 'qm' 'set' '123' ... "--sshkeys=$f"; rc=$?; else rc=1; fi
/// rm -f "$f"; exit $rc
/// ```
///
/// Why this scheme: key text never appears in argv (no quoting risk, no `ps` exposure, no
/// argument-size limit), and the only shell-expanded value is `$f`, produced by `mktemp`.
/// `pvesh set --sshkeys` would need exact URL-encoding and puts the keys on the command line.
/// A dropped connection between `mktemp` and `rm` can leave a root-only file of public keys in
/// the node's temp directory; that is harmless.
pub fn set_cloud_init(vmid: Vmid, spec: &CloudInitSpec) -> Result<RemoteCommand> {
    if spec.is_empty() {
        return Err(ProxmoxError::invalid("cloud_init", "nothing to set"));
    }
    if spec.ssh_keys.len() > MAX_SSH_KEYS {
        return Err(ProxmoxError::invalid(
            "ssh_keys",
            format!("at most {MAX_SSH_KEYS} keys"),
        ));
    }
    let mut argv = qm("set", vmid);
    if let Some(u) = &spec.user {
        argv = argv.opt("ciuser", u);
    }
    if let Some(ip) = &spec.ipconfig0 {
        argv = argv.opt("ipconfig0", ip);
    }
    if let Some(ns) = &spec.nameservers {
        argv = argv.opt("nameserver", ns);
    }
    if let Some(sd) = &spec.searchdomain {
        argv = argv.opt("searchdomain", sd);
    }
    if spec.ssh_keys.is_empty() {
        return RemoteCommand::from_argv(CommandKind::Set, &argv);
    }
    let qm_set = argv.to_shell_command()?;
    let script = format!(
        "umask 077 && f=$(mktemp) || exit 1\n\
         if cat >\"$f\"; then {qm_set} \"--sshkeys=$f\"; rc=$?; else rc=1; fi\n\
         rm -f \"$f\"; exit $rc"
    );
    let mut stdin = Vec::new();
    for k in &spec.ssh_keys {
        stdin.extend_from_slice(k.as_str().as_bytes());
        stdin.push(b'\n');
    }
    Ok(RemoteCommand {
        kind: CommandKind::Set,
        script,
        stdin: Some(stdin),
    })
}

/// `qm disk resize V DISK SIZE`. Exit 0 even on failure: check stderr and re-read the config.
pub fn resize_disk(vmid: Vmid, disk: &DiskId, size: SizeSpec) -> Command {
    cmd(
        CommandKind::Resize,
        Argv::new("qm")
            .arg("disk")
            .arg("resize")
            .arg(vmid.to_string())
            .arg(disk.as_str())
            .arg(size.to_string()),
    )
}

fn timeout_secs(field: &'static str, t: Duration) -> Result<u64> {
    let s = t.as_secs();
    if (1..=3600).contains(&s) {
        Ok(s)
    } else {
        Err(ProxmoxError::invalid(
            field,
            format!("{s}s is outside 1..=3600 seconds"),
        ))
    }
}

/// `qm start V`.
pub fn start(vmid: Vmid) -> Command {
    cmd(CommandKind::Start, qm("start", vmid))
}

/// `qm stop V`: hard stop (silent success on a stopped VM).
pub fn stop(vmid: Vmid) -> Command {
    cmd(CommandKind::Stop, qm("stop", vmid))
}

/// `qm shutdown V --timeout=S [--forceStop=1]`: clean shutdown, hard stop after the timeout if forced.
pub fn shutdown(vmid: Vmid, timeout: Duration, force_stop: bool) -> Result<Command> {
    let mut argv = qm("shutdown", vmid).opt("timeout", timeout_secs("timeout", timeout)?);
    if force_stop {
        argv = argv.flag("forceStop", true);
    }
    Ok(cmd(CommandKind::Shutdown, argv))
}

/// `qm reboot V --timeout=S`: shutdown then start; applies pending changes.
pub fn reboot(vmid: Vmid, timeout: Duration) -> Result<Command> {
    Ok(cmd(
        CommandKind::Reboot,
        qm("reboot", vmid).opt("timeout", timeout_secs("timeout", timeout)?),
    ))
}

/// `pvesh get /nodes/N/qemu/V/status/current --output-format=json`.
pub fn status(node: &NodeName, vmid: Vmid) -> Command {
    cmd(
        CommandKind::Status,
        json(pvesh_get(format!(
            "/nodes/{node}/qemu/{vmid}/status/current"
        ))),
    )
}

/// `pvesh get /nodes/N/qemu/V/config --output-format=json` (pending values merged in).
pub fn config(node: &NodeName, vmid: Vmid) -> Command {
    cmd(
        CommandKind::Config,
        json(pvesh_get(format!("/nodes/{node}/qemu/{vmid}/config"))),
    )
}

/// `qm guest cmd V network-get-interfaces`.
pub fn agent_network(vmid: Vmid) -> Command {
    cmd(
        CommandKind::AgentNetwork,
        Argv::new("qm")
            .arg("guest")
            .arg("cmd")
            .arg(vmid.to_string())
            .arg("network-get-interfaces"),
    )
}

/// `qm destroy V --purge=1 --destroy-unreferenced-disks=1`.
pub fn destroy(vmid: Vmid) -> Command {
    cmd(
        CommandKind::Destroy,
        qm("destroy", vmid)
            .flag("purge", true)
            .flag("destroy-unreferenced-disks", true),
    )
}

/// `qm unlock V`: removes a (stale) config lock; no error when there is none.
pub fn unlock(vmid: Vmid) -> Command {
    cmd(CommandKind::Unlock, qm("unlock", vmid))
}

/// Options of one vzdump run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSpec {
    /// The VM.
    pub vmid: Vmid,
    /// Target storage (needs `backup` content).
    pub storage: StorageId,
    /// Marker written into the archive's notes.
    pub marker: OwnershipMarker,
    /// `--remove=1`: let the storage's retention prune old archives of this VM; `false` keeps
    /// them all (and vzdump refuses once the retention limit is reached).
    pub prune: bool,
}

/// `vzdump V --storage=S --mode=snapshot --compress=zstd --remove=0|1 --notes-template=<marker>`.
pub fn backup(spec: &BackupSpec) -> Command {
    cmd(
        CommandKind::Backup,
        Argv::new("vzdump")
            .arg(spec.vmid.to_string())
            .opt("storage", &spec.storage)
            .opt("mode", "snapshot")
            .opt("compress", "zstd")
            .flag("remove", spec.prune)
            .opt("notes-template", spec.marker.notes_template()),
    )
}

/// `pvesh get /nodes/N/storage/S/content --content=backup --vmid=V --output-format=json`.
pub fn list_backups(node: &NodeName, storage: &StorageId, vmid: Vmid) -> Command {
    cmd(
        CommandKind::ListBackups,
        json(
            pvesh_get(format!("/nodes/{node}/storage/{storage}/content"))
                .opt("content", "backup")
                .opt("vmid", vmid),
        ),
    )
}

/// `pvesm free VOLID`. A volid holds `/`, so it is passed as an argument rather than inside a
/// `pvesh delete` API path. Exit 0 even on failure: check stderr.
pub fn delete_backup(volid: &BackupVolid) -> Command {
    cmd(
        CommandKind::DeleteBackup,
        Argv::new("pvesm").arg("free").arg(volid.as_str()),
    )
}

/// Options of qmrestore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSpec {
    /// The archive.
    pub archive: BackupVolid,
    /// The VMID to restore into.
    pub vmid: Vmid,
    /// Storage for all restored disks.
    pub storage: StorageId,
    /// Overwrite an existing VM with this VMID (`--force=1`); the VM must be stopped.
    pub force: bool,
}

/// `qmrestore ARCHIVE V --storage=S [--force=1]`.
pub fn restore(spec: &RestoreSpec) -> Command {
    let mut argv = Argv::new("qmrestore")
        .arg(spec.archive.as_str())
        .arg(spec.vmid.to_string())
        .opt("storage", &spec.storage);
    if spec.force {
        argv = argv.flag("force", true);
    }
    cmd(CommandKind::Restore, argv)
}

/// `qm snapshot V NAME [--description=..]` (disk-only; no RAM state).
pub fn snapshot(vmid: Vmid, name: &SnapshotName, description: Option<&Description>) -> Command {
    let mut argv = qm("snapshot", vmid).arg(name.as_str());
    if let Some(d) = description {
        argv = argv.opt("description", d);
    }
    cmd(CommandKind::Snapshot, argv)
}

/// `qm rollback V NAME` (stops a running VM first; it stays stopped).
pub fn rollback(vmid: Vmid, name: &SnapshotName) -> Command {
    cmd(
        CommandKind::Rollback,
        qm("rollback", vmid).arg(name.as_str()),
    )
}

/// `qm delsnapshot V NAME`.
pub fn delete_snapshot(vmid: Vmid, name: &SnapshotName) -> Command {
    cmd(
        CommandKind::DeleteSnapshot,
        qm("delsnapshot", vmid).arg(name.as_str()),
    )
}

/// `pvesh get /nodes/N/qemu/V/snapshot --output-format=json`.
pub fn list_snapshots(node: &NodeName, vmid: Vmid) -> Command {
    cmd(
        CommandKind::ListSnapshots,
        json(pvesh_get(format!("/nodes/{node}/qemu/{vmid}/snapshot"))),
    )
}

/// `pvesh get /cluster/resources --type=vm --output-format=json` (filter with the tag afterwards).
pub fn list_resources() -> Command {
    cmd(
        CommandKind::ListResources,
        json(pvesh_get("/cluster/resources".into()).opt("type", "vm")),
    )
}

/// `pvesh get /nodes/N/tasks/UPID/status --output-format=json`.
pub fn task_status(node: &NodeName, upid: &super::parse::Upid) -> Result<Command> {
    // A parsed UPID holds only `[^:\s/]` fields, so it is safe inside the path.
    Ok(cmd(
        CommandKind::TaskStatus,
        json(pvesh_get(format!(
            "/nodes/{node}/tasks/{}/status",
            upid.raw()
        ))),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxmox::types::{PodId, TenantId};

    fn v(n: u32) -> Vmid {
        Vmid::new(n).expect("vmid")
    }

    fn args(c: &Command) -> Vec<&str> {
        c.argv.as_slice().iter().map(String::as_str).collect()
    }

    fn marker() -> OwnershipMarker {
        OwnershipMarker::new(
            PodId::parse("pod-1764399306066").expect("pod"),
            TenantId::parse("acme").expect("tenant"),
        )
    }

    fn node() -> NodeName {
        NodeName::parse("pve1").expect("node")
    }

    #[test]
    fn nextid_builders() {
        assert_eq!(
            args(&next_id()),
            ["pvesh", "get", "/cluster/nextid", "--output-format=json"]
        );
        assert_eq!(
            args(&check_vmid(v(123))),
            [
                "pvesh",
                "get",
                "/cluster/nextid",
                "--vmid=123",
                "--output-format=json"
            ]
        );
        assert_eq!(check_vmid(v(123)).kind, CommandKind::CheckVmid);
    }

    #[test]
    fn clone_builders() {
        let desc = marker().description(Some("it's -x $(id)")).expect("desc");
        let spec = CloneSpec {
            source: v(9000),
            target: v(123),
            mode: CloneMode::Linked,
            name: DnsName::parse("web-01").expect("name"),
            description: desc.clone(),
            target_node: None,
        };
        let c = clone_vm(&spec).expect("clone");
        assert_eq!(c.kind, CommandKind::Clone);
        assert_eq!(
            args(&c),
            [
                "qm",
                "clone",
                "9000",
                "123",
                "--full=0",
                "--name=web-01",
                "--description=managed-by=cloudpods;pod=pod-1764399306066;tenant=acme\nit's -x $(id)",
            ]
        );
        let full = CloneSpec {
            mode: CloneMode::Full {
                storage: Some(StorageId::parse("local-lvm").expect("sid")),
            },
            target_node: Some(NodeName::parse("pve2").expect("node")),
            ..spec.clone()
        };
        let c = clone_vm(&full).expect("clone");
        assert_eq!(&args(&c)[4..6], ["--full=1", "--storage=local-lvm"]);
        assert_eq!(args(&c).last(), Some(&"--target=pve2"));
        let unmarked = CloneSpec {
            description: Description::parse("hello").expect("desc"),
            ..spec
        };
        assert!(matches!(
            clone_vm(&unmarked),
            Err(ProxmoxError::InvalidArgument {
                field: "description",
                ..
            })
        ));
    }

    #[test]
    fn tag_builder_sorts_and_dedups() {
        let mut tags = marker().tags();
        tags.insert(0, Tag::parse("cloudpods").expect("tag"));
        let c = set_tags(v(123), &tags).expect("tags");
        assert_eq!(
            args(&c),
            [
                "qm",
                "set",
                "123",
                "--tags=cloudpods;cloudpods-1764399306066"
            ]
        );
        assert!(set_tags(v(123), &[]).is_err());
        let d = set_description(v(123), &Description::parse("x").expect("d"));
        assert_eq!(args(&d), ["qm", "set", "123", "--description=x"]);
    }

    #[test]
    fn resource_builder() {
        let c = set_resources(
            v(123),
            Some(Cores::new(2).expect("c")),
            Some(MemoryMib::new(2048).expect("m")),
        )
        .expect("set");
        assert_eq!(args(&c), ["qm", "set", "123", "--cores=2", "--memory=2048"]);
        let c = set_resources(v(123), None, Some(MemoryMib::new(512).expect("m"))).expect("set");
        assert_eq!(args(&c), ["qm", "set", "123", "--memory=512"]);
        assert!(set_resources(v(123), None, None).is_err());
    }

    #[test]
    fn cloud_init_without_keys_is_plain_argv() {
        let spec = CloudInitSpec {
            user: Some(CiUser::parse("ubuntu").expect("u")),
            ipconfig0: Some(IpConfig::parse("ip=10.0.0.5/24,gw=10.0.0.1").expect("ip")),
            nameservers: Some(Nameservers::parse("1.1.1.1 9.9.9.9").expect("ns")),
            searchdomain: Some(SearchDomain::parse("example.com").expect("sd")),
            ssh_keys: vec![],
        };
        let r = set_cloud_init(v(123), &spec).expect("ci");
        assert_eq!(r.stdin, None);
        assert_eq!(
            r.script,
            "LC_ALL=C.UTF-8 'qm' 'set' '123' '--ciuser=ubuntu' '--ipconfig0=ip=10.0.0.5/24,gw=10.0.0.1' \
             '--nameserver=1.1.1.1 9.9.9.9' '--searchdomain=example.com'"
        );
        assert!(set_cloud_init(v(123), &CloudInitSpec::default()).is_err());
    }

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIr7/JRUm5v8BLKQByHb06ztfJUFND9h3+T10SxY/HLz it's $(me)";

    #[test]
    fn cloud_init_keys_go_through_stdin() {
        let spec = CloudInitSpec {
            ssh_keys: vec![SshPublicKey::parse(KEY).expect("key")],
            ..Default::default()
        };
        let r = set_cloud_init(v(123), &spec).expect("ci");
        assert_eq!(r.stdin.as_deref(), Some(format!("{KEY}\n").as_bytes()));
        assert!(
            !r.script.contains("AAAA"),
            "key text must not be in the script"
        );
        assert!(r.script.contains("\"--sshkeys=$f\""));
        let too_many = CloudInitSpec {
            ssh_keys: vec![SshPublicKey::parse(KEY).expect("key"); 33],
            ..Default::default()
        };
        assert!(set_cloud_init(v(123), &too_many).is_err());
    }

    /// Runs the sshkeys script with a fake `qm` that copies the keys file and its argv, proving
    /// the file holds exactly the keys, is private, and is removed afterwards.
    #[test]
    fn cloud_init_script_runs() {
        let dir = tempfile::tempdir().expect("tmp");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("bin");
        let fake = bin.join("qm");
        let out = dir.path().join("out");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > '{o}.args'\n\
                 f=${{3#--sshkeys=}}\ncp \"$f\" '{o}.keys'\nls -l \"$f\" | cut -c1-10 > '{o}.mode'\n\
                 echo \"$f\" > '{o}.path'\nexit 7\n",
                o = out.display()
            ),
        )
        .expect("write");
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let spec = CloudInitSpec {
            ssh_keys: vec![
                SshPublicKey::parse(KEY).expect("key"),
                SshPublicKey::parse(KEY).expect("key"),
            ],
            ..Default::default()
        };
        let r = set_cloud_init(v(123), &spec).expect("ci");
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(&r.script)
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .env("TMPDIR", dir.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(r.stdin.as_deref().unwrap_or_default())
                .expect("write");
        }
        let status = child.wait().expect("wait");
        assert_eq!(status.code(), Some(7), "qm's exit status is passed through");
        let read =
            |ext: &str| std::fs::read_to_string(format!("{}.{ext}", out.display())).expect("read");
        assert_eq!(read("keys"), format!("{KEY}\n{KEY}\n"));
        assert_eq!(read("mode").trim(), "-rw-------");
        let path = read("path");
        let path = path.trim();
        let argv_seen = read("args");
        assert_eq!(
            argv_seen.lines().collect::<Vec<_>>(),
            ["set", "123", format!("--sshkeys={path}").as_str()]
        );
        assert!(!std::path::Path::new(path).exists(), "temp file removed");
    }

    #[test]
    fn resize_builder() {
        let c = resize_disk(
            v(123),
            &DiskId::scsi0(),
            SizeSpec::grow_gib(10).expect("size"),
        );
        assert_eq!(args(&c), ["qm", "disk", "resize", "123", "scsi0", "+10G"]);
        assert!(c.kind.exit_code_lies());
    }

    #[test]
    fn power_builders() {
        assert_eq!(args(&start(v(123))), ["qm", "start", "123"]);
        assert_eq!(args(&stop(v(123))), ["qm", "stop", "123"]);
        assert_eq!(
            args(&shutdown(v(123), Duration::from_secs(60), true).expect("sd")),
            ["qm", "shutdown", "123", "--timeout=60", "--forceStop=1"]
        );
        assert_eq!(
            args(&shutdown(v(123), Duration::from_secs(5), false).expect("sd")),
            ["qm", "shutdown", "123", "--timeout=5"]
        );
        assert!(shutdown(v(123), Duration::from_millis(500), false).is_err());
        assert!(shutdown(v(123), Duration::from_secs(3601), false).is_err());
        assert_eq!(
            args(&reboot(v(123), Duration::from_secs(120)).expect("rb")),
            ["qm", "reboot", "123", "--timeout=120"]
        );
    }

    #[test]
    fn read_builders() {
        assert_eq!(
            args(&status(&node(), v(123))),
            [
                "pvesh",
                "get",
                "/nodes/pve1/qemu/123/status/current",
                "--output-format=json"
            ]
        );
        assert_eq!(
            args(&config(&node(), v(123))),
            [
                "pvesh",
                "get",
                "/nodes/pve1/qemu/123/config",
                "--output-format=json"
            ]
        );
        assert_eq!(
            args(&agent_network(v(123))),
            ["qm", "guest", "cmd", "123", "network-get-interfaces"]
        );
        assert_eq!(
            args(&list_resources()),
            [
                "pvesh",
                "get",
                "/cluster/resources",
                "--type=vm",
                "--output-format=json"
            ]
        );
        assert_eq!(
            args(&list_snapshots(&node(), v(123))),
            [
                "pvesh",
                "get",
                "/nodes/pve1/qemu/123/snapshot",
                "--output-format=json"
            ]
        );
    }

    #[test]
    fn destroy_and_unlock() {
        assert_eq!(
            args(&destroy(v(123))),
            [
                "qm",
                "destroy",
                "123",
                "--purge=1",
                "--destroy-unreferenced-disks=1"
            ]
        );
        assert_eq!(args(&unlock(v(123))), ["qm", "unlock", "123"]);
    }

    #[test]
    fn backup_builders() {
        let spec = BackupSpec {
            vmid: v(123),
            storage: StorageId::parse("local").expect("sid"),
            marker: marker(),
            prune: false,
        };
        assert_eq!(
            args(&backup(&spec)),
            [
                "vzdump",
                "123",
                "--storage=local",
                "--mode=snapshot",
                "--compress=zstd",
                "--remove=0",
                "--notes-template=managed-by=cloudpods;pod=pod-1764399306066;tenant=acme",
            ]
        );
        assert_eq!(
            args(&list_backups(
                &node(),
                &StorageId::parse("local").expect("sid"),
                v(123)
            )),
            [
                "pvesh",
                "get",
                "/nodes/pve1/storage/local/content",
                "--content=backup",
                "--vmid=123",
                "--output-format=json"
            ]
        );
        let volid = BackupVolid::parse("local:backup/vzdump-qemu-123-2026_11_27-02_54_57.vma.zst")
            .expect("volid");
        assert_eq!(
            args(&delete_backup(&volid)),
            [
                "pvesm",
                "free",
                "local:backup/vzdump-qemu-123-2026_11_27-02_54_57.vma.zst"
            ]
        );
        let r = RestoreSpec {
            archive: volid,
            vmid: v(124),
            storage: StorageId::parse("local-lvm").expect("sid"),
            force: true,
        };
        assert_eq!(
            args(&restore(&r)),
            [
                "qmrestore",
                "local:backup/vzdump-qemu-123-2026_11_27-02_54_57.vma.zst",
                "124",
                "--storage=local-lvm",
                "--force=1"
            ]
        );
        assert!(CommandKind::Restore.is_long());
    }

    #[test]
    fn snapshot_builders() {
        let n = SnapshotName::parse("before-up").expect("snap");
        assert_eq!(
            args(&snapshot(
                v(123),
                &n,
                Some(&Description::parse("x y").expect("d"))
            )),
            ["qm", "snapshot", "123", "before-up", "--description=x y"]
        );
        assert_eq!(
            args(&rollback(v(123), &n)),
            ["qm", "rollback", "123", "before-up"]
        );
        assert_eq!(
            args(&delete_snapshot(v(123), &n)),
            ["qm", "delsnapshot", "123", "before-up"]
        );
    }

    #[test]
    fn task_status_builder() {
        let upid = super::super::parse::Upid::parse(
            "UPID:pve1:0003A2F1:01B4C6D2:66A0F3B1:qmclone:9000:root@pam:",
        )
        .expect("upid");
        assert_eq!(
            args(&task_status(&node(), &upid).expect("ts")),
            [
                "pvesh",
                "get",
                "/nodes/pve1/tasks/UPID:pve1:0003A2F1:01B4C6D2:66A0F3B1:qmclone:9000:root@pam:/status",
                "--output-format=json"
            ]
        );
    }
}
