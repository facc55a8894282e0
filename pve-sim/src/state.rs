//! Persistent node state: node config, VM configs, volumes, counters, locks.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::err::CmdError;
use crate::faults::{FailHit, Faults};
use crate::util::{self, LockMode};

/// One storage of the node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Storage {
    /// Storage id, e.g. `local-lvm`.
    pub id: String,
    /// `dir`, `lvmthin`, `lvm`, `zfspool`, `nfs`, `rbd`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Content types (`images`, `backup`, `iso`, ...).
    pub content: Vec<String>,
    /// Shared between nodes.
    #[serde(default)]
    pub shared: bool,
    /// Disabled storages refuse allocation.
    #[serde(default)]
    pub disabled: bool,
    /// `prune-backups keep-last=N`.
    #[serde(default)]
    pub keep_last: Option<u32>,
}

impl Storage {
    /// Whether linked clones / snapshots are supported.
    pub fn supports_linked(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "lvmthin" | "zfspool" | "rbd" | "dir" | "nfs"
        )
    }
}

/// `<state>/node.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeCfg {
    /// Node name.
    pub node: String,
    /// datacenter.cfg next-id lower bound.
    #[serde(default = "default_lower")]
    pub nextid_lower: u64,
    /// datacenter.cfg next-id upper bound (exclusive).
    #[serde(default = "default_upper")]
    pub nextid_upper: u64,
    /// Host CPU count (`MAX n vcpus allowed per VM on this node`).
    #[serde(default = "default_cpus")]
    pub host_cpus: u32,
    /// Storages.
    pub storages: Vec<Storage>,
    /// Existing resource pools.
    #[serde(default)]
    pub pools: Vec<String>,
    /// Other cluster nodes: name → state directory.
    #[serde(default)]
    pub peers: BTreeMap<String, PathBuf>,
}

fn default_lower() -> u64 {
    100
}
fn default_upper() -> u64 {
    1_000_000
}
fn default_cpus() -> u32 {
    16
}

/// A snapshot entry.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Snapshot {
    /// Config at snapshot time.
    pub conf: BTreeMap<String, String>,
    /// Epoch seconds.
    pub snaptime: i64,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// RAM state saved.
    #[serde(default)]
    pub vmstate: bool,
    /// Parent snapshot.
    #[serde(default)]
    pub parent: Option<String>,
}

/// One VM: config plus runtime state (`<state>/qemu-server/<vmid>.json`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Vm {
    /// VMID.
    pub vmid: u32,
    /// Applied config, values as `qm config` shows them (description raw).
    pub conf: BTreeMap<String, String>,
    /// Pending changes.
    #[serde(default)]
    pub pending: BTreeMap<String, String>,
    /// Pending deletions.
    #[serde(default)]
    pub pending_delete: BTreeSet<String>,
    /// Snapshots.
    #[serde(default)]
    pub snapshots: BTreeMap<String, Snapshot>,
    /// `running` or `stopped`.
    pub status: String,
    /// QMP status.
    pub qmpstatus: String,
    /// Start time (ms) when running.
    #[serde(default)]
    pub started_ms: u64,
    /// Creation time (ms), for the /cluster/resources lag.
    #[serde(default)]
    pub created_ms: u64,
}

impl Vm {
    /// A new stopped VM.
    pub fn new(vmid: u32) -> Self {
        Vm {
            vmid,
            status: "stopped".into(),
            qmpstatus: "stopped".into(),
            created_ms: util::now_ms(),
            ..Vm::default()
        }
    }

    /// Config lock value if any.
    pub fn lock(&self) -> Option<&str> {
        self.conf.get("lock").map(String::as_str)
    }

    /// `template: 1`.
    pub fn is_template(&self) -> bool {
        self.conf.get("template").map(String::as_str) == Some("1")
    }

    /// Running (including paused/prelaunch).
    pub fn is_running(&self) -> bool {
        self.status == "running"
    }

    /// Fake QEMU pid.
    pub fn pid(&self) -> u64 {
        100_000 + u64::from(self.vmid % 800_000)
    }

    /// Mark the VM running (status, QMP status, start time now).
    pub fn mark_running(&mut self) {
        self.status = "running".into();
        self.qmpstatus = "running".into();
        self.started_ms = util::now_ms();
    }

    /// Mark the VM stopped (status and QMP status; the start time is kept).
    pub fn mark_stopped(&mut self) {
        self.status = "stopped".into();
        self.qmpstatus = "stopped".into();
    }

    /// Apply pending changes and deletions to the config (what a start or reboot does).
    pub fn apply_pending(&mut self) {
        self.conf = self.merged();
        self.pending.clear();
        self.pending_delete.clear();
    }

    /// Whether a cloud-init drive is attached.
    pub fn has_cloudinit_drive(&self) -> bool {
        Vm::disk_keys(&self.conf)
            .iter()
            .any(|k| Drive::parse(&self.conf[k]).is_cloudinit())
    }

    /// Config with pending values merged.
    pub fn merged(&self) -> BTreeMap<String, String> {
        let mut c = self.conf.clone();
        for (k, v) in &self.pending {
            c.insert(k.clone(), v.clone());
        }
        for k in &self.pending_delete {
            c.remove(k);
        }
        c
    }

    /// `name` or `VM <vmid>`.
    pub fn display_name(&self) -> String {
        self.conf
            .get("name")
            .cloned()
            .unwrap_or_else(|| format!("VM {}", self.vmid))
    }

    /// Disk drive keys (ide/sata/scsi/virtio/efidisk/tpmstate), sorted.
    pub fn disk_keys(conf: &BTreeMap<String, String>) -> Vec<String> {
        conf.keys().filter(|k| is_drive_key(k)).cloned().collect()
    }

    /// Boot disk size in bytes (first non-cdrom disk in boot order or sorted order).
    pub fn maxdisk(&self) -> u64 {
        let boot = self
            .conf
            .get("boot")
            .and_then(|b| b.strip_prefix("order="))
            .and_then(|o| o.split(';').next())
            .map(str::to_string);
        let mut keys = Vm::disk_keys(&self.conf);
        if let Some(b) = boot {
            keys.insert(0, b);
        }
        for k in keys {
            if let Some(v) = self.conf.get(&k) {
                let d = Drive::parse(v);
                if !d.is_cdrom() {
                    return d.size().unwrap_or(0);
                }
            }
        }
        0
    }

    /// Memory in MiB.
    pub fn memory_mib(&self) -> u64 {
        self.conf
            .get("memory")
            .and_then(|m| m.split(',').next())
            .map(|m| m.trim_start_matches("current="))
            .and_then(|m| m.parse().ok())
            .unwrap_or(512)
    }

    /// sockets × cores (or vcpus).
    pub fn cpus(&self) -> u64 {
        let g = |k: &str, d: u64| self.conf.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
        if let Some(v) = self.conf.get("vcpus").and_then(|v| v.parse().ok()) {
            return v;
        }
        g("sockets", 1) * g("cores", 1)
    }
}

/// Whether a config key names a drive.
pub fn is_drive_key(k: &str) -> bool {
    let num = |p: &str, max: u32| match k.strip_prefix(p) {
        Some(n)
            if !n.is_empty()
                && n.bytes().all(|c| c.is_ascii_digit())
                && (n == "0" || !n.starts_with('0')) =>
        {
            n.parse::<u32>().is_ok_and(|x| x <= max)
        }
        _ => false,
    };
    num("ide", 3)
        || num("sata", 5)
        || num("scsi", 30)
        || num("virtio", 15)
        || k == "efidisk0"
        || k == "tpmstate0"
}

/// A parsed drive property string (`local-lvm:vm-100-disk-0,size=32G`).
#[derive(Debug, Clone)]
pub struct Drive {
    /// Volume id (or `none`/`cdrom`).
    pub volid: String,
    /// Remaining `key=value` options, in order.
    pub opts: Vec<(String, String)>,
}

impl Drive {
    /// Parse a drive string.
    pub fn parse(s: &str) -> Drive {
        let mut parts = s.split(',');
        let first = parts.next().unwrap_or("").to_string();
        let mut opts = Vec::new();
        let mut volid = first.clone();
        if let Some(v) = first.strip_prefix("file=") {
            volid = v.to_string();
        }
        for p in parts {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            opts.push((k.to_string(), v.to_string()));
        }
        Drive { volid, opts }
    }

    /// Option value.
    pub fn opt(&self, k: &str) -> Option<&str> {
        self.opts
            .iter()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.as_str())
    }

    /// Set an option.
    pub fn set_opt(&mut self, k: &str, v: String) {
        if let Some(e) = self.opts.iter_mut().find(|(a, _)| a == k) {
            e.1 = v;
        } else {
            self.opts.push((k.to_string(), v));
        }
    }

    /// Serialize back.
    pub fn render(&self) -> String {
        let mut s = self.volid.clone();
        for (k, v) in &self.opts {
            s.push(',');
            s.push_str(k);
            s.push('=');
            s.push_str(v);
        }
        s
    }

    /// media=cdrom.
    pub fn is_cdrom(&self) -> bool {
        self.opt("media") == Some("cdrom")
    }

    /// A cloud-init drive.
    pub fn is_cloudinit(&self) -> bool {
        self.volid.contains("cloudinit")
    }

    /// size= in bytes.
    pub fn size(&self) -> Option<u64> {
        self.opt("size").and_then(util::parse_size)
    }

    /// Storage id of the volume.
    pub fn storage(&self) -> Option<&str> {
        self.volid.split_once(':').map(|(s, _)| s)
    }
}

/// A volume allocated on a storage (`<state>/volumes.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Volume {
    /// Owner VMID.
    pub vmid: u32,
    /// Size in bytes.
    pub size: u64,
}

/// The logical-volume name of a volid (`local-lvm:base-9000-disk-0/vm-100-disk-0` →
/// `vm-100-disk-0`).
pub fn lv_name(volid: &str) -> &str {
    volid
        .rsplit('/')
        .next()
        .unwrap_or(volid)
        .rsplit(':')
        .next()
        .unwrap_or("")
}

/// Exclusive flock on `<state>/.lock`; released on drop.
pub struct GlobalLock {
    _file: File,
}

/// Per-invocation context.
pub struct Ctx {
    /// State directory.
    pub dir: PathBuf,
    /// Node configuration.
    pub node: NodeCfg,
    /// Knobs.
    pub faults: Faults,
    /// Command key (`clone`, `vzdump`, ...).
    pub key: String,
    /// Call number of this key (1-based).
    pub call_no: u64,
    /// Injected failure decided for this call.
    pub fail: Option<FailHit>,
    /// When the long task acquired its semaphore slot.
    pub task_start_ms: Option<u64>,
    /// When the long task ended.
    pub task_end_ms: Option<u64>,
    /// UPID of the task, if any.
    pub upid: Option<String>,
    /// Held per-VMID flocks (released on exit).
    pub held: Vec<File>,
    /// Held semaphore slot.
    pub slot: Option<File>,
}

/// Read `PVE_SIM_STATE`, `PVE_SIM_ENV_FILE` or `~/.pve-sim/env`.
pub fn resolve_state_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("PVE_SIM_STATE")
        && !d.is_empty()
    {
        return Some(PathBuf::from(d));
    }
    let env_file = std::env::var_os("PVE_SIM_ENV_FILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pve-sim/env")))?;
    let text = fs::read_to_string(env_file).ok()?;
    text.lines().find_map(|l| {
        l.trim()
            .strip_prefix("PVE_SIM_STATE=")
            .map(|v| PathBuf::from(v.trim().trim_matches('"').trim_matches('\'')))
    })
}

fn io_err(what: &str, e: impl std::fmt::Display) -> CmdError {
    CmdError::die(format!("pve-sim: {what}: {e}"))
}

/// Write a file atomically (tmp + rename).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), CmdError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    fs::write(&tmp, data).map_err(|e| io_err(&format!("write {}", tmp.display()), e))?;
    fs::rename(&tmp, path).map_err(|e| io_err(&format!("rename {}", path.display()), e))
}

/// Load the node config of a state dir.
pub fn load_node(dir: &Path) -> Result<NodeCfg, CmdError> {
    let p = dir.join("node.json");
    let text = fs::read_to_string(&p).map_err(|e| io_err(&format!("read {}", p.display()), e))?;
    serde_json::from_str(&text).map_err(|e| io_err(&format!("parse {}", p.display()), e))
}

/// Load the knobs of a state dir (missing file = defaults).
pub fn load_faults(dir: &Path) -> Result<Faults, CmdError> {
    let p = dir.join("faults.json");
    match fs::read_to_string(&p) {
        Ok(t) if t.trim().is_empty() => Ok(Faults::default()),
        Ok(t) => serde_json::from_str(&t).map_err(|e| io_err(&format!("parse {}", p.display()), e)),
        Err(_) => Ok(Faults::default()),
    }
}

/// Open (creating it if needed, never truncating) a file used only for its flock.
pub fn open_lock_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

/// Take the global state lock of `dir`.
pub fn global_lock(dir: &Path) -> Result<GlobalLock, CmdError> {
    let f = open_lock_file(&dir.join(".lock")).map_err(|e| io_err("open lock", e))?;
    f.lock().map_err(|e| io_err("flock", e))?;
    Ok(GlobalLock { _file: f })
}

/// Path of a VM file in a state dir.
pub fn vm_path(dir: &Path, vmid: u32) -> PathBuf {
    dir.join("qemu-server").join(format!("{vmid}.json"))
}

/// Load a VM from a state dir.
pub fn load_vm_in(dir: &Path, vmid: u32) -> Result<Option<Vm>, CmdError> {
    match fs::read_to_string(vm_path(dir, vmid)) {
        Ok(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| io_err(&format!("parse VM {vmid}"), e)),
        Err(_) => Ok(None),
    }
}

/// All VMIDs in a state dir, sorted.
pub fn list_vmids_in(dir: &Path) -> Vec<u32> {
    let mut v: Vec<u32> = fs::read_dir(dir.join("qemu-server"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".json"))
                        .and_then(|n| n.parse().ok())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

impl Ctx {
    /// A context for command key `key` (call number `call_no`) on the node in `dir`, with no
    /// task, flock or semaphore slot yet.
    pub fn new(
        dir: PathBuf,
        node: NodeCfg,
        faults: Faults,
        key: String,
        call_no: u64,
        fail: Option<FailHit>,
    ) -> Ctx {
        Ctx {
            dir,
            node,
            faults,
            key,
            call_no,
            fail,
            task_start_ms: None,
            task_end_ms: None,
            upid: None,
            held: Vec::new(),
            slot: None,
        }
    }

    /// Take the global lock.
    pub fn lock(&self) -> Result<GlobalLock, CmdError> {
        global_lock(&self.dir)
    }

    /// Run `f` while holding the global lock.
    pub fn locked<R>(&self, f: impl FnOnce(&Ctx) -> Result<R, CmdError>) -> Result<R, CmdError> {
        let _g = self.lock()?;
        f(self)
    }

    /// Read-modify-write of a local VM under the global lock: load it (failing with the
    /// `load_config` wording, see [`Ctx::need_vm`]), apply `f` and save it. Nothing is saved
    /// when `f` fails.
    pub fn modify_vm<R>(
        &self,
        vmid: u32,
        f: impl FnOnce(&Ctx, &mut Vm) -> Result<R, CmdError>,
    ) -> Result<R, CmdError> {
        let _g = self.lock()?;
        let mut vm = self.need_vm(vmid)?;
        let r = f(self, &mut vm)?;
        self.save_vm(&vm)?;
        Ok(r)
    }

    /// Load a local VM.
    pub fn load_vm(&self, vmid: u32) -> Result<Option<Vm>, CmdError> {
        load_vm_in(&self.dir, vmid)
    }

    /// Save a local VM.
    pub fn save_vm(&self, vm: &Vm) -> Result<(), CmdError> {
        let data = serde_json::to_vec_pretty(vm).map_err(|e| io_err("serialize", e))?;
        write_atomic(&vm_path(&self.dir, vm.vmid), &data)
    }

    /// Delete a local VM config.
    pub fn delete_vm(&self, vmid: u32) {
        let _ = fs::remove_file(vm_path(&self.dir, vmid));
    }

    /// Local VMIDs.
    pub fn vmids(&self) -> Vec<u32> {
        list_vmids_in(&self.dir)
    }

    /// `(node, vmid)` for every VM on this node and on peers.
    pub fn cluster_vmids(&self) -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = self
            .vmids()
            .into_iter()
            .map(|id| (self.node.node.clone(), id))
            .collect();
        for (name, dir) in &self.node.peers {
            for id in list_vmids_in(dir) {
                v.push((name.clone(), id));
            }
        }
        v
    }

    /// The node that owns `vmid`, if any.
    pub fn owner_of(&self, vmid: u32) -> Option<String> {
        self.cluster_vmids()
            .into_iter()
            .find(|(_, id)| *id == vmid)
            .map(|(n, _)| n)
    }

    /// Storage by id.
    pub fn storage(&self, id: &str) -> Option<&Storage> {
        self.node.storages.iter().find(|s| s.id == id)
    }

    /// Storage by id, or `storage '<id>' does not exist`.
    pub fn need_storage(&self, id: &str) -> Result<&Storage, CmdError> {
        self.storage(id)
            .ok_or_else(|| CmdError::die(format!("storage '{id}' does not exist")))
    }

    /// Whether storage `sid` is LVM-backed (its tools print `Logical volume ...` lines).
    pub fn on_lvm(&self, sid: &str) -> bool {
        self.storage(sid).is_some_and(|s| s.kind.starts_with("lvm"))
    }

    /// Volume table.
    pub fn volumes(&self) -> BTreeMap<String, Volume> {
        fs::read_to_string(self.dir.join("volumes.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// Save the volume table.
    pub fn save_volumes(&self, v: &BTreeMap<String, Volume>) -> Result<(), CmdError> {
        let data = serde_json::to_vec_pretty(v).map_err(|e| io_err("serialize", e))?;
        write_atomic(&self.dir.join("volumes.json"), &data)
    }

    /// Allocate `<sid>:vm-<vmid>-disk-N` (lowest free N). Caller holds the global lock.
    pub fn alloc_disk(&self, sid: &str, vmid: u32, size: u64) -> Result<String, CmdError> {
        let mut vols = self.volumes();
        let mut n = 0;
        let volid = loop {
            let v = format!("{sid}:vm-{vmid}-disk-{n}");
            if !vols.contains_key(&v) {
                break v;
            }
            n += 1;
        };
        vols.insert(volid.clone(), Volume { vmid, size });
        self.save_volumes(&vols)?;
        Ok(volid)
    }

    /// Register a named volume. Caller holds the global lock.
    pub fn add_volume(&self, volid: &str, vmid: u32, size: u64) -> Result<(), CmdError> {
        let mut vols = self.volumes();
        vols.insert(volid.to_string(), Volume { vmid, size });
        self.save_volumes(&vols)
    }

    /// Free volumes. Caller holds the global lock.
    pub fn free_volumes(&self, volids: &[String]) -> Result<(), CmdError> {
        let mut vols = self.volumes();
        for v in volids {
            vols.remove(v);
        }
        self.save_volumes(&vols)
    }

    /// Take a per-VMID flock (`/var/lock/qemu-server/lock-<vmid>.conf`), kept until exit.
    pub fn flock_vmid(
        &mut self,
        vmid: u32,
        mode: LockMode,
        timeout_ms: u64,
    ) -> Result<(), CmdError> {
        let dir = self.dir.join("locks");
        let _ = fs::create_dir_all(&dir);
        let f = open_lock_file(&dir.join(format!("lock-{vmid}.conf")))
            .map_err(|e| io_err("open flock", e))?;
        let path = format!("/var/lock/qemu-server/lock-{vmid}.conf");
        match f.try_lock_shared_or_ex(mode) {
            true => {}
            false => {
                let _ = write!(std::io::stderr(), "trying to acquire lock...");
                match util::flock_timeout(&f, mode, Duration::from_millis(timeout_ms)) {
                    Ok(_) => crate::errln(" OK"),
                    Err(()) => {
                        crate::errln("");
                        return Err(CmdError::die(format!(
                            "can't lock file '{path}' - got timeout"
                        )));
                    }
                }
            }
        }
        self.held.push(f);
        Ok(())
    }

    /// Take the exclusive per-VMID flock with the usual timeout (`flock_timeout_ms`), as every
    /// modifying command but clone does.
    pub fn flock_vm(&mut self, vmid: u32) -> Result<(), CmdError> {
        self.flock_vmid(vmid, LockMode::Exclusive, self.faults.flock_timeout_ms)
    }

    /// Release every held per-VMID flock.
    pub fn release_flocks(&mut self) {
        self.held.clear();
    }

    /// Acquire a slot of the long-task semaphore (waits while all are busy).
    pub fn acquire_slot(&mut self) -> Result<(), CmdError> {
        let limit = self.faults.max_concurrent_tasks;
        if limit > 0 {
            let dir = self.dir.join("sem");
            let _ = fs::create_dir_all(&dir);
            'outer: loop {
                for i in 0..limit {
                    let f = open_lock_file(&dir.join(format!("slot-{i}")))
                        .map_err(|e| io_err("open slot", e))?;
                    if f.try_lock().is_ok() {
                        self.slot = Some(f);
                        break 'outer;
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.task_start_ms = Some(util::now_ms());
        Ok(())
    }

    /// Release the semaphore slot.
    pub fn release_slot(&mut self) {
        if self.task_start_ms.is_some() && self.task_end_ms.is_none() {
            self.task_end_ms = Some(util::now_ms());
        }
        self.slot = None;
    }

    /// Fail before the task if an injected failure says so.
    pub fn fail_before(&self) -> Result<(), CmdError> {
        match &self.fail {
            Some(h) if !h.in_task => Err(CmdError::die(h.message.clone()).with_code(h.code)),
            _ => Ok(()),
        }
    }

    /// Fail inside the task (after partial side effects) if an injected failure says so.
    pub fn fail_task(&self) -> Result<(), CmdError> {
        match &self.fail {
            Some(h) if h.in_task => Err(CmdError::die(h.message.clone())),
            _ => Ok(()),
        }
    }

    /// `cluster not ready - no quorum?` knob.
    pub fn check_quorum(&self) -> Result<(), CmdError> {
        if self.faults.no_quorum {
            return Err(CmdError::die("cluster not ready - no quorum?"));
        }
        Ok(())
    }

    /// `Configuration file 'nodes/<node>/qemu-server/<vmid>.conf' does not exist`.
    pub fn err_conf_missing(&self, vmid: u32) -> CmdError {
        CmdError::die(format!(
            "Configuration file 'nodes/{}/qemu-server/{vmid}.conf' does not exist",
            self.node.node
        ))
    }

    /// `unable to find configuration file for VM <vmid> on node '<node>'`.
    pub fn err_unable_find(&self, vmid: u32) -> CmdError {
        CmdError::die(format!(
            "unable to find configuration file for VM {vmid} on node '{}'",
            self.node.node
        ))
    }

    /// Load a VM or fail with the `load_config` wording.
    pub fn need_vm(&self, vmid: u32) -> Result<Vm, CmdError> {
        self.load_vm(vmid)?
            .ok_or_else(|| self.err_conf_missing(vmid))
    }

    /// Load a VM or fail with the `unable to find configuration file` wording (§0.8).
    pub fn find_vm(&self, vmid: u32) -> Result<Vm, CmdError> {
        self.load_vm(vmid)?
            .ok_or_else(|| self.err_unable_find(vmid))
    }

    /// Append one line to `<state>/calls.log`.
    pub fn log_call(dir: &Path, line: &serde_json::Value) {
        if let Ok(mut f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("calls.log"))
        {
            let mut s = line.to_string();
            s.push('\n');
            let _ = f.write_all(s.as_bytes());
        }
    }
}

trait TryLockMode {
    fn try_lock_shared_or_ex(&self, mode: LockMode) -> bool;
}

impl TryLockMode for File {
    fn try_lock_shared_or_ex(&self, mode: LockMode) -> bool {
        match mode {
            LockMode::Shared => self.try_lock_shared().is_ok(),
            LockMode::Exclusive => self.try_lock().is_ok(),
        }
    }
}

/// Increment and return the per-key call counter (`<state>/counters.json`).
pub fn bump_counter(dir: &Path, key: &str) -> Result<u64, CmdError> {
    let _g = global_lock(dir)?;
    let p = dir.join("counters.json");
    let mut m: BTreeMap<String, u64> = fs::read_to_string(&p)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let n = m.get(key).copied().unwrap_or(0) + 1;
    m.insert(key.to_string(), n);
    let data = serde_json::to_vec(&m).map_err(|e| io_err("serialize", e))?;
    write_atomic(&p, &data)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_keys() {
        assert!(is_drive_key("scsi0"));
        assert!(is_drive_key("ide2"));
        assert!(is_drive_key("virtio15"));
        assert!(!is_drive_key("scsi31"));
        assert!(!is_drive_key("net0"));
        assert!(!is_drive_key("scsihw"));
        assert!(!is_drive_key("scsi01"));
    }
}
