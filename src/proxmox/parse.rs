//! Pure parsers for what the node prints: pvesh JSON, guest-agent JSON, UPIDs and task results.
//!
//! JSON is read leniently where PVE is inconsistent (numbers sometimes arrive as strings,
//! §2, §3.4) and strictly where a wrong value would mislead (VMIDs, sizes).

use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::{Map, Value};

use super::error::{LockKind, ProxmoxError};
use super::types::{
    BackupVolid, MANAGED_TAG, OwnershipMarker, Vmid, parse_config_size, split_tags,
};

type Result<T> = std::result::Result<T, ProxmoxError>;

fn parse_json(what: &str, text: &str) -> Result<Value> {
    serde_json::from_str(text.trim()).map_err(|e| {
        ProxmoxError::unexpected(format!(
            "{what}: not JSON ({e}): {}",
            super::error::truncate(text, 200)
        ))
    })
}

fn object<'a>(what: &str, v: &'a Value) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| ProxmoxError::unexpected(format!("{what}: expected a JSON object")))
}

fn array<'a>(what: &str, v: &'a Value) -> Result<&'a Vec<Value>> {
    v.as_array()
        .ok_or_else(|| ProxmoxError::unexpected(format!("{what}: expected a JSON array")))
}

/// An unsigned integer that PVE may print as a number or a numeric string.
fn uint(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn flag(v: Option<&Value>) -> bool {
    uint(v).is_some_and(|n| n != 0)
}

fn vmid_field(what: &str, m: &Map<String, Value>) -> Result<Vmid> {
    let n = uint(m.get("vmid"))
        .ok_or_else(|| ProxmoxError::unexpected(format!("{what}: missing vmid")))?;
    u32::try_from(n)
        .ok()
        .and_then(|n| Vmid::new(n).ok())
        .ok_or_else(|| ProxmoxError::unexpected(format!("{what}: bad vmid {n}")))
}

fn lock_field(m: &Map<String, Value>) -> Option<LockKind> {
    text(m.get("lock"))
        .filter(|s| !s.is_empty())
        .map(|s| LockKind::from_config_value(&s))
}

fn tags_field(m: &Map<String, Value>) -> Vec<String> {
    text(m.get("tags"))
        .map(|t| split_tags(&t))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------

/// `nextid` output: a bare JSON scalar, string (`"100"`) or number (`100`), or plain text.
pub fn parse_nextid(stdout: &str) -> Result<Vmid> {
    let t = stdout.trim();
    let t = t
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(t);
    Vmid::parse(t).map_err(|_| {
        ProxmoxError::unexpected(format!(
            "nextid printed {:?}",
            super::error::truncate(stdout, 100)
        ))
    })
}

/// `status` of a VM: `running` or `stopped` (`unknown` in /cluster/resources during RRD lag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStatus {
    /// A QEMU process exists.
    Running,
    /// No QEMU process.
    Stopped,
    /// Anything else (e.g. `unknown`).
    Other(String),
}

impl RunStatus {
    fn from_text(s: &str) -> Self {
        match s {
            "running" => RunStatus::Running,
            "stopped" => RunStatus::Stopped,
            other => RunStatus::Other(other.to_string()),
        }
    }
}

/// QEMU's own run state (`qmpstatus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QmpStatus {
    /// Guest running.
    Running,
    /// Paused.
    Paused,
    /// Started but not yet running (vzdump of a stopped VM, §12.1).
    Prelaunch,
    /// Suspended.
    Suspended,
    /// Not running.
    Stopped,
    /// Any other QEMU state (`inmigrate`, `io-error`, ...).
    Other(String),
}

impl QmpStatus {
    fn from_text(s: &str) -> Self {
        match s {
            "running" => QmpStatus::Running,
            "paused" => QmpStatus::Paused,
            "prelaunch" => QmpStatus::Prelaunch,
            "suspended" => QmpStatus::Suspended,
            "stopped" => QmpStatus::Stopped,
            other => QmpStatus::Other(other.to_string()),
        }
    }
}

/// `pvesh get .../status/current` (§3.2), the fields we use.
#[derive(Debug, Clone, PartialEq)]
pub struct VmStatus {
    /// The VMID as reported (absent in some outputs).
    pub vmid: Option<Vmid>,
    /// running / stopped.
    pub status: RunStatus,
    /// QEMU state; `None` when not reported.
    pub qmpstatus: Option<QmpStatus>,
    /// The config lock, if any.
    pub lock: Option<LockKind>,
    /// True for templates.
    pub template: bool,
    /// Name (`VM <vmid>` when unset).
    pub name: Option<String>,
    /// Seconds since start (0 when stopped).
    pub uptime: u64,
    /// vCPUs.
    pub cpus: Option<u64>,
    /// Memory in bytes.
    pub maxmem: Option<u64>,
    /// Tags, lowercased.
    pub tags: Vec<String>,
    /// `agent: 1` in the config (says nothing about the agent answering).
    pub agent_configured: bool,
}

impl VmStatus {
    /// True when the guest is really running (not paused/prelaunch).
    pub fn is_running(&self) -> bool {
        self.status == RunStatus::Running
            && matches!(self.qmpstatus, None | Some(QmpStatus::Running))
    }
}

/// Parses `status/current` JSON.
pub fn parse_status(stdout: &str) -> Result<VmStatus> {
    let v = parse_json("status", stdout)?;
    let m = object("status", &v)?;
    let status =
        text(m.get("status")).ok_or_else(|| ProxmoxError::unexpected("status: missing status"))?;
    Ok(VmStatus {
        vmid: vmid_field("status", m).ok(),
        status: RunStatus::from_text(&status),
        qmpstatus: text(m.get("qmpstatus")).map(|s| QmpStatus::from_text(&s)),
        lock: lock_field(m),
        template: flag(m.get("template")),
        name: text(m.get("name")),
        uptime: uint(m.get("uptime")).unwrap_or(0),
        cpus: uint(m.get("cpus")),
        maxmem: uint(m.get("maxmem")),
        tags: tags_field(m),
        agent_configured: flag(m.get("agent")),
    })
}

/// One disk from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// Its key, e.g. `scsi0`.
    pub key: String,
    /// Its volume id.
    pub volid: String,
    /// `size=` in bytes, when present.
    pub size_bytes: Option<u64>,
    /// True for `media=cdrom` (cloud-init drives, ISOs).
    pub cdrom: bool,
}

/// `pvesh get .../config` (§3.4), the fields we use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmConfig {
    /// Name.
    pub name: Option<String>,
    /// Cores.
    pub cores: Option<u64>,
    /// Memory in MiB.
    pub memory_mib: Option<u64>,
    /// Tags, lowercased.
    pub tags: Vec<String>,
    /// Raw description.
    pub description: Option<String>,
    /// Config lock.
    pub lock: Option<LockKind>,
    /// True for templates.
    pub template: bool,
    /// `scsi0`, else `virtio0`, else `sata0`, else `ide0` (non-cdrom).
    pub boot_disk: Option<DiskInfo>,
    /// `ipconfig0`.
    pub ipconfig0: Option<String>,
    /// `ciuser`.
    pub ciuser: Option<String>,
    /// `agent` enabled.
    pub agent: bool,
    /// MAC address of `net0`, uppercase as PVE stores it.
    pub net0_mac: Option<String>,
    /// Config digest.
    pub digest: Option<String>,
}

impl VmConfig {
    /// The ownership marker in the description, if any.
    pub fn marker(&self) -> Option<OwnershipMarker> {
        self.description
            .as_deref()
            .and_then(OwnershipMarker::find_in)
    }

    /// True when the VM carries both marker forms (tag and description) of `marker` and is
    /// not a template: the check before touching a VM whose VMID might have been reused.
    pub fn is_owned_by(&self, marker: &OwnershipMarker) -> bool {
        !self.template
            && self.marker().as_ref() == Some(marker)
            && marker.tagged_in(&self.tags.join(";"))
    }
}

fn parse_disk(key: &str, value: &str) -> DiskInfo {
    let mut parts = value.split(',');
    let volid = parts.next().unwrap_or_default().to_string();
    let mut size_bytes = None;
    let mut cdrom = false;
    for p in parts {
        match p.split_once('=') {
            Some(("size", s)) => size_bytes = parse_config_size(s),
            Some(("media", "cdrom")) => cdrom = true,
            _ => {}
        }
    }
    DiskInfo {
        key: key.to_string(),
        volid,
        size_bytes,
        cdrom,
    }
}

/// Parses `config` JSON.
pub fn parse_config(stdout: &str) -> Result<VmConfig> {
    let v = parse_json("config", stdout)?;
    let m = object("config", &v)?;
    let memory_mib = text(m.get("memory")).and_then(|s| {
        // A property string since qemu-server 8.1: "2048" or "current=2048[,...]".
        s.split(',').find_map(|p| match p.split_once('=') {
            Some(("current", n)) => n.parse().ok(),
            None => p.parse().ok(),
            _ => None,
        })
    });
    let boot_disk = ["scsi0", "virtio0", "sata0", "ide0"].iter().find_map(|k| {
        let d = parse_disk(k, &text(m.get(*k))?);
        (!d.cdrom).then_some(d)
    });
    let agent =
        text(m.get("agent")).is_some_and(|a| a.split(',').any(|p| p == "1" || p == "enabled=1"));
    let net0_mac = text(m.get("net0")).and_then(|n| {
        // `virtio=BC:24:...,bridge=vmbr0` (or `macaddr=...`): the first value shaped like a MAC.
        n.split(',').find_map(|p| {
            let (_, v) = p.split_once('=')?;
            let is_mac = v.len() == 17
                && v.split(':').count() == 6
                && v.split(':')
                    .all(|o| o.len() == 2 && o.bytes().all(|c| c.is_ascii_hexdigit()));
            is_mac.then(|| v.to_ascii_uppercase())
        })
    });
    Ok(VmConfig {
        name: text(m.get("name")),
        cores: uint(m.get("cores")),
        memory_mib,
        tags: tags_field(m),
        description: text(m.get("description")),
        lock: lock_field(m),
        template: flag(m.get("template")),
        boot_disk,
        ipconfig0: text(m.get("ipconfig0")),
        ciuser: text(m.get("ciuser")),
        agent,
        net0_mac,
        digest: text(m.get("digest")),
    })
}

/// One guest from `/cluster/resources --type vm` (§3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterVm {
    /// VMID.
    pub vmid: Vmid,
    /// Node that owns it.
    pub node: String,
    /// `qemu` or `lxc`.
    pub kind: String,
    /// Name (absent during RRD lag).
    pub name: Option<String>,
    /// Tags (live), lowercased.
    pub tags: Vec<String>,
    /// True for templates.
    pub template: bool,
    /// running / stopped / unknown.
    pub status: RunStatus,
    /// Config lock (live).
    pub lock: Option<LockKind>,
}

impl ClusterVm {
    /// True for a QEMU VM (not a template) carrying the `cloudpods` tag.
    pub fn is_managed(&self) -> bool {
        self.kind == "qemu" && !self.template && self.tags.iter().any(|t| t == MANAGED_TAG)
    }
}

/// Parses `/cluster/resources` JSON (every guest; see [`managed_vms`]).
pub fn parse_resources(stdout: &str) -> Result<Vec<ClusterVm>> {
    let v = parse_json("resources", stdout)?;
    let mut out = Vec::new();
    for item in array("resources", &v)? {
        let m = object("resources entry", item)?;
        let kind = text(m.get("type")).unwrap_or_default();
        if kind != "qemu" && kind != "lxc" {
            continue;
        }
        out.push(ClusterVm {
            vmid: vmid_field("resources entry", m)?,
            node: text(m.get("node"))
                .ok_or_else(|| ProxmoxError::unexpected("resources entry: missing node"))?,
            kind,
            name: text(m.get("name")),
            tags: tags_field(m),
            template: flag(m.get("template")),
            status: RunStatus::from_text(&text(m.get("status")).unwrap_or_default()),
            lock: lock_field(m),
        });
    }
    Ok(out)
}

/// The managed VMs among `/cluster/resources` entries.
pub fn managed_vms(all: Vec<ClusterVm>) -> Vec<ClusterVm> {
    all.into_iter().filter(ClusterVm::is_managed).collect()
}

/// One backup archive from storage content (§12.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupEntry {
    /// Volume id.
    pub volid: BackupVolid,
    /// Guest it belongs to.
    pub vmid: Option<Vmid>,
    /// Creation time (epoch seconds, from the file name in node-local time).
    pub ctime: i64,
    /// Size in bytes.
    pub size: u64,
    /// First line of the notes.
    pub notes: Option<String>,
    /// Protected from deletion.
    pub protected: bool,
}

impl BackupEntry {
    /// The ownership marker in the notes, if any.
    pub fn marker(&self) -> Option<OwnershipMarker> {
        self.notes.as_deref().and_then(OwnershipMarker::find_in)
    }
}

/// Parses storage content JSON, keeping `content: backup` entries, oldest first. Entries whose
/// volid does not pass [`BackupVolid`] are skipped (they could not be passed to a command).
pub fn parse_backups(stdout: &str) -> Result<Vec<BackupEntry>> {
    let v = parse_json("storage content", stdout)?;
    let mut out = Vec::new();
    for item in array("storage content", &v)? {
        let m = object("storage content entry", item)?;
        if text(m.get("content")).is_some_and(|c| c != "backup") {
            continue;
        }
        let Some(volid) = text(m.get("volid")).and_then(|s| BackupVolid::parse(&s).ok()) else {
            continue;
        };
        out.push(BackupEntry {
            volid,
            vmid: uint(m.get("vmid"))
                .and_then(|n| u32::try_from(n).ok())
                .and_then(|n| Vmid::new(n).ok()),
            ctime: uint(m.get("ctime"))
                .and_then(|n| i64::try_from(n).ok())
                .unwrap_or(0),
            size: uint(m.get("size")).unwrap_or(0),
            notes: text(m.get("notes")).filter(|n| !n.is_empty()),
            protected: flag(m.get("protected")),
        });
    }
    out.sort_by(|a, b| (a.ctime, a.volid.as_str()).cmp(&(b.ctime, b.volid.as_str())));
    Ok(out)
}

/// One snapshot (the `current` pseudo-entry is left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Name.
    pub name: String,
    /// Creation time (epoch seconds).
    pub snaptime: Option<i64>,
    /// Parent snapshot.
    pub parent: Option<String>,
    /// Description.
    pub description: Option<String>,
}

/// Parses `pvesh get .../snapshot` JSON.
pub fn parse_snapshots(stdout: &str) -> Result<Vec<SnapshotInfo>> {
    let v = parse_json("snapshots", stdout)?;
    let mut out = Vec::new();
    for item in array("snapshots", &v)? {
        let m = object("snapshot", item)?;
        let name = text(m.get("name"))
            .ok_or_else(|| ProxmoxError::unexpected("snapshot: missing name"))?;
        if name == "current" {
            continue;
        }
        out.push(SnapshotInfo {
            name,
            snaptime: uint(m.get("snaptime")).and_then(|n| i64::try_from(n).ok()),
            parent: text(m.get("parent")),
            description: text(m.get("description")),
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------

/// Addresses reported by the guest agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GuestAddresses {
    /// First usable IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// First global IPv6 address (no link-local).
    pub ipv6: Option<Ipv6Addr>,
}

/// Interface names that are never the VM's primary address (container and bridge devices).
const SKIPPED_IFACE_PREFIXES: &[&str] = &[
    "lo", "docker", "br-", "veth", "virbr", "cni", "flannel", "cali", "tun", "wg",
];

/// Parses `qm guest cmd V network-get-interfaces` (a JSON array; pvesh wraps it in
/// `{"result": [...]}`) and picks the VM's addresses: from the interface whose MAC equals
/// `mac` (case-insensitive) when given and present, else from the first ordinary interface.
pub fn parse_agent_addresses(stdout: &str, mac: Option<&str>) -> Result<GuestAddresses> {
    let v = parse_json("network-get-interfaces", stdout)?;
    let list = match v.get("result") {
        Some(r) => array("network-get-interfaces", r)?,
        None => array("network-get-interfaces", &v)?,
    };
    let mut ifaces: Vec<(&str, Option<&str>, &Vec<Value>)> = Vec::new();
    for item in list {
        let m = object("interface", item)?;
        let name = m.get("name").and_then(Value::as_str).unwrap_or("");
        let hw = m.get("hardware-address").and_then(Value::as_str);
        let Some(addrs) = m.get("ip-addresses").and_then(Value::as_array) else {
            continue;
        };
        if SKIPPED_IFACE_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        ifaces.push((name, hw, addrs));
    }
    let by_mac = mac.and_then(|want| {
        ifaces
            .iter()
            .find(|(_, hw, _)| hw.is_some_and(|h| h.eq_ignore_ascii_case(want)))
    });
    let pick = |addrs: &Vec<Value>| {
        let mut out = GuestAddresses::default();
        for a in addrs {
            let Some(ip) = a.get("ip-address").and_then(Value::as_str) else {
                continue;
            };
            match a.get("ip-address-type").and_then(Value::as_str) {
                Some("ipv4") => {
                    if let Ok(ip) = ip.parse::<Ipv4Addr>()
                        && out.ipv4.is_none()
                        && !ip.is_loopback()
                        && !ip.is_link_local()
                        && !ip.is_unspecified()
                    {
                        out.ipv4 = Some(ip);
                    }
                }
                Some("ipv6") => {
                    if let Ok(ip) = ip.parse::<Ipv6Addr>()
                        && out.ipv6.is_none()
                        && !ip.is_loopback()
                        && !ip.is_unspecified()
                        && !ip.is_unicast_link_local()
                    {
                        out.ipv6 = Some(ip);
                    }
                }
                _ => {}
            }
        }
        out
    };
    if let Some((_, _, addrs)) = by_mac {
        return Ok(pick(addrs));
    }
    let mut out = GuestAddresses::default();
    for (_, _, addrs) in &ifaces {
        let got = pick(addrs);
        out.ipv4 = out.ipv4.or(got.ipv4);
        out.ipv6 = out.ipv6.or(got.ipv6);
        if out.ipv4.is_some() && out.ipv6.is_some() {
            break;
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------

/// A parsed task id (§1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upid {
    raw: String,
    /// Node.
    pub node: String,
    /// Worker pid.
    pub pid: u32,
    /// Process start (clock ticks since boot).
    pub pstart: u64,
    /// Start time (epoch seconds).
    pub starttime: i64,
    /// Task type, e.g. `qmclone`.
    pub task_type: String,
    /// Task id (for qmclone the *source* VMID), may be empty.
    pub id: String,
    /// User, e.g. `root@pam`.
    pub user: String,
}

impl Upid {
    /// Parses `UPID:<node>:<pid>:<pstart>:<starttime>:<type>:<id>:<user>:`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad =
            || ProxmoxError::unexpected(format!("not a UPID: {}", super::error::truncate(s, 120)));
        let s = s.trim();
        let body = s
            .strip_prefix("UPID:")
            .and_then(|b| b.strip_suffix(':'))
            .ok_or_else(bad)?;
        let f: Vec<&str> = body.split(':').collect();
        if f.len() != 7 {
            return Err(bad());
        }
        let hex = |x: &str, min: usize, max: usize| {
            (min..=max).contains(&x.len()) && x.bytes().all(|c| c.is_ascii_hexdigit())
        };
        let node_ok = !f[0].is_empty()
            && f[0].bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            && !f[0].starts_with('-')
            && !f[0].ends_with('-');
        let field_ok = |x: &str, allow_empty: bool| {
            (allow_empty || !x.is_empty())
                && !x.bytes().any(|c| c == b'/' || c.is_ascii_whitespace())
        };
        if !node_ok
            || !hex(f[1], 8, 8)
            || !hex(f[2], 8, 9)
            || !hex(f[3], 8, 8)
            || !field_ok(f[4], false)
            || !field_ok(f[5], true)
            || !field_ok(f[6], false)
        {
            return Err(bad());
        }
        Ok(Upid {
            raw: s.to_string(),
            node: f[0].to_string(),
            pid: u32::from_str_radix(f[1], 16).map_err(|_| bad())?,
            pstart: u64::from_str_radix(f[2], 16).map_err(|_| bad())?,
            starttime: i64::from_str_radix(f[3], 16).map_err(|_| bad())?,
            task_type: f[4].to_string(),
            id: f[5].to_string(),
            user: f[6].to_string(),
        })
    }

    /// The UPID text.
    pub fn raw(&self) -> &str {
        &self.raw
    }
}

/// Finds the last UPID line in output (pvesh task endpoints print it last).
pub fn find_upid(stdout: &str) -> Option<Upid> {
    stdout
        .lines()
        .rev()
        .map(|l| l.trim().trim_matches('"'))
        .find_map(|l| Upid::parse(l).ok())
}

/// Result of a finished task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskResult {
    /// `TASK OK`.
    Ok,
    /// `TASK WARNINGS: n` / `Task finished with n warning(s)!`: success.
    Warnings(u32),
    /// `TASK ERROR: msg` (or any other final line).
    Error(String),
}

/// Reads a task log's last line (`TASK OK`, `TASK WARNINGS: n`, `TASK ERROR: msg`).
pub fn parse_task_log(log: &str) -> Option<TaskResult> {
    let last = log.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    Some(task_result_from_exitstatus(
        last.strip_prefix("TASK ").unwrap_or(last),
    ))
}

fn task_result_from_exitstatus(s: &str) -> TaskResult {
    if s == "OK" {
        TaskResult::Ok
    } else if let Some(n) = s
        .strip_prefix("WARNINGS: ")
        .and_then(|n| n.trim().parse().ok())
    {
        TaskResult::Warnings(n)
    } else {
        TaskResult::Error(s.strip_prefix("ERROR: ").unwrap_or(s).to_string())
    }
}

/// The `N` of `Task finished with N warning(s)!` on a CLI's stderr, else 0.
pub fn warning_count(stderr: &str) -> u32 {
    stderr
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("Task finished with ")?
                .strip_suffix(" warning(s)!")?
                .parse::<u32>()
                .ok()
        })
        .sum()
}

/// `tasks/<UPID>/status`: running, or finished with a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    /// Still running.
    Running,
    /// Stopped with this result.
    Finished(TaskResult),
}

/// Parses `pvesh get /nodes/N/tasks/UPID/status` JSON.
pub fn parse_task_status(stdout: &str) -> Result<TaskState> {
    let v = parse_json("task status", stdout)?;
    let m = object("task status", &v)?;
    match text(m.get("status")).as_deref() {
        Some("running") => Ok(TaskState::Running),
        Some("stopped") => Ok(TaskState::Finished(task_result_from_exitstatus(
            &text(m.get("exitstatus")).unwrap_or_else(|| "unknown".into()),
        ))),
        _ => Err(ProxmoxError::unexpected("task status: missing status")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Fixtures: real pve-sim output (sim) and reference examples (ref).
    const SIM_STATUS_RUNNING: &str = r#"{"agent":1,"cpu":0.01,"cpus":2,"disk":0,"diskread":0,"diskwrite":0,"ha":{"managed":0},"maxdisk":3221225472,"maxmem":2147483648,"mem":536870912,"memhost":536870912,"name":"web-01","netin":0,"netout":0,"pid":100123,"qmpstatus":"running","running-machine":"pc-i440fx-9.2+pve1","running-qemu":"9.2.0","status":"running","tags":"cloudpods;cloudpods-1","uptime":0,"vmid":123}"#;
    const SIM_STATUS_LOCKED: &str = r#"{"cpu":0,"cpus":2,"disk":0,"ha":{"managed":0},"lock":"clone","maxdisk":10737418240,"maxmem":2147483648,"mem":0,"memhost":0,"name":"web-01","netin":0,"netout":0,"qmpstatus":"stopped","status":"stopped","tags":"cloudpods;cloudpods-1","uptime":0,"vmid":123}"#;
    const REF_STATUS_STOPPED: &str = r#"{"agent":1,"cpu":0,"cpus":2,"disk":0,"ha":{"managed":0},"maxdisk":34359738368,"maxmem":2147483648,"mem":0,"memhost":0,"name":"web-01","netin":0,"netout":0,"qmpstatus":"stopped","status":"stopped","tags":"acme;tenant-42","uptime":0,"vmid":123}"#;
    const SIM_CONFIG: &str = r#"{"agent":"1","boot":"order=scsi0","ciuser":"ubuntu","cores":2,"description":"managed-by=cloudpods;pod=pod-1;tenant=acme","digest":"4e7088bafe06ee325683ef04deb9c7ee0329a296","ide2":"local-lvm:vm-123-cloudinit,media=cdrom","ipconfig0":"ip=dhcp","memory":"2048","name":"web-01","net0":"virtio=BC:24:11:1A:23:CC,bridge=vmbr0","ostype":"l26","scsi0":"local-lvm:base-9000-disk-0/vm-123-disk-0,size=3G","scsihw":"virtio-scsi-single","serial0":"socket","smbios1":"uuid=e7347c6a-23fb-41ac-ae8e-fb0fc7dbacc2","tags":"cloudpods;cloudpods-1","vga":"serial0"}"#;
    const SIM_TEMPLATE_CONFIG: &str = r#"{"agent":"1","boot":"order=scsi0","ciuser":"ubuntu","cores":2,"digest":"6f0e008aeda235c43ac786fce1e04f5f60ba6eda","ide2":"local-lvm:vm-9000-cloudinit,media=cdrom","ipconfig0":"ip=dhcp","memory":"2048","name":"ubuntu-2404-tmpl","net0":"virtio=BC:24:11:1D:F1:8A,bridge=vmbr0","ostype":"l26","scsi0":"local-lvm:base-9000-disk-0,size=3G","scsihw":"virtio-scsi-single","serial0":"socket","smbios1":"uuid=0a18da6f-9eae-46ad-a03b-ec3aba264b76","template":1,"vga":"serial0"}"#;
    const SIM_RESOURCES: &str = r#"[{"cpu":0,"disk":0,"diskread":0,"diskwrite":0,"id":"qemu/101","maxcpu":2,"maxdisk":3221225472,"maxmem":2147483648,"mem":0,"name":"web","netin":0,"netout":0,"node":"pve1","status":"stopped","template":0,"type":"qemu","uptime":0,"vmid":101},{"cpu":0.01,"disk":0,"diskread":0,"diskwrite":0,"id":"qemu/123","maxcpu":2,"maxdisk":3221225472,"maxmem":2147483648,"mem":536870912,"name":"web-01","netin":0,"netout":0,"node":"pve1","status":"running","tags":"cloudpods;cloudpods-1","template":0,"type":"qemu","uptime":0,"vmid":123},{"cpu":0,"disk":0,"diskread":0,"diskwrite":0,"id":"qemu/9000","maxcpu":2,"maxdisk":3221225472,"maxmem":2147483648,"mem":0,"name":"ubuntu-2404-tmpl","netin":0,"netout":0,"node":"pve1","status":"stopped","tags":"cloudpods","template":1,"type":"qemu","uptime":0,"vmid":9000},{"id":"qemu/130","node":"pve2","status":"unknown","tags":"cloudpods;cloudpods-9","type":"qemu","vmid":130,"lock":"clone"},{"id":"lxc/200","node":"pve1","status":"running","tags":"cloudpods","type":"lxc","vmid":200},{"id":"storage/pve1/local","node":"pve1","type":"storage","status":"available"}]"#;
    const SIM_BACKUPS: &str = r#"[{"content":"backup","ctime":1795748097,"format":"vma.zst","notes":"managed-by=cloudpods;pod=pod-1;tenant=acme","size":705,"subtype":"qemu","vmid":123,"volid":"local:backup/vzdump-qemu-123-2026_11_27-02_54_57.vma.zst"}]"#;
    const REF_BACKUPS: &str = r#"[{"content":"backup","ctime":1714557600,"format":"vma.zst","notes":"web-01","size":2481234567,"subtype":"qemu","vmid":123,"volid":"local:backup/vzdump-qemu-123-2024_05_01-10_00_00.vma.zst","protected":1},{"content":"backup","ctime":1714500000,"format":"vma.zst","size":1,"vmid":123,"volid":"local:backup/../../etc/passwd"}]"#;
    const SIM_AGENT: &str = r#"[
   {
      "hardware-address" : "00:00:00:00:00:00",
      "ip-addresses" : [
         { "ip-address" : "127.0.0.1", "ip-address-type" : "ipv4", "prefix" : 8 },
         { "ip-address" : "::1", "ip-address-type" : "ipv6", "prefix" : 128 }
      ],
      "name" : "lo",
      "statistics" : { "rx-bytes" : 0 }
   },
   {
      "hardware-address" : "bc:24:11:1a:23:cc",
      "ip-addresses" : [
         { "ip-address" : "10.77.0.124", "ip-address-type" : "ipv4", "prefix" : 24 },
         { "ip-address" : "fe80::be24:11ff:fe1a:23cc", "ip-address-type" : "ipv6", "prefix" : 64 }
      ],
      "name" : "eth0",
      "statistics" : { "rx-bytes" : 0 }
   }
]"#;

    #[test]
    fn nextid_both_encodings() {
        assert_eq!(parse_nextid("\"100\"\n").map(Vmid::get), Ok(100));
        assert_eq!(parse_nextid("100\n").map(Vmid::get), Ok(100));
        assert_eq!(parse_nextid("\"9000\"").map(Vmid::get), Ok(9000));
        assert!(parse_nextid("").is_err());
        assert!(parse_nextid("\"abc\"").is_err());
        assert!(parse_nextid("\"99\"").is_err());
    }

    #[test]
    fn status_fixtures() {
        let s = parse_status(SIM_STATUS_RUNNING).expect("status");
        assert_eq!(s.status, RunStatus::Running);
        assert_eq!(s.qmpstatus, Some(QmpStatus::Running));
        assert!(s.is_running());
        assert_eq!(s.vmid.map(Vmid::get), Some(123));
        assert_eq!(s.name.as_deref(), Some("web-01"));
        assert_eq!(s.cpus, Some(2));
        assert_eq!(s.maxmem, Some(2 << 30));
        assert_eq!(s.tags, vec!["cloudpods", "cloudpods-1"]);
        assert!(s.agent_configured);
        assert_eq!(s.lock, None);
        let s = parse_status(SIM_STATUS_LOCKED).expect("status");
        assert_eq!(s.lock, Some(LockKind::Clone));
        assert!(!s.is_running());
        assert!(!s.agent_configured);
        let s = parse_status(REF_STATUS_STOPPED).expect("status");
        assert_eq!(s.status, RunStatus::Stopped);
        assert!(!s.template);
        let p = parse_status(r#"{"status":"running","qmpstatus":"prelaunch","template":"1"}"#)
            .expect("s");
        assert!(!p.is_running());
        assert!(p.template);
        assert!(parse_status("[]").is_err());
        assert!(parse_status("{}").is_err());
        assert!(parse_status("Configuration file does not exist").is_err());
    }

    #[test]
    fn config_fixtures() {
        let c = parse_config(SIM_CONFIG).expect("config");
        assert_eq!(c.cores, Some(2));
        assert_eq!(c.memory_mib, Some(2048));
        assert_eq!(c.tags, vec!["cloudpods", "cloudpods-1"]);
        assert_eq!(c.ipconfig0.as_deref(), Some("ip=dhcp"));
        assert_eq!(c.ciuser.as_deref(), Some("ubuntu"));
        assert!(c.agent);
        assert!(!c.template);
        assert_eq!(c.net0_mac.as_deref(), Some("BC:24:11:1A:23:CC"));
        let d = c.boot_disk.clone().expect("disk");
        assert_eq!(d.key, "scsi0");
        assert_eq!(d.volid, "local-lvm:base-9000-disk-0/vm-123-disk-0");
        assert_eq!(d.size_bytes, Some(3 << 30));
        let m = c.marker().expect("marker");
        assert_eq!(m.pod_id.as_str(), "pod-1");
        assert!(c.is_owned_by(&m));
        let t = parse_config(SIM_TEMPLATE_CONFIG).expect("config");
        assert!(t.template);
        assert_eq!(t.marker(), None);
        let odd = parse_config(
            r#"{"memory":"current=4096","cores":"4","virtio0":"local:123/vm-123-disk-0.qcow2,size=1.5G","agent":"enabled=1,fstrim_cloned_disks=1","lock":"backup","description":"a\nmanaged-by=cloudpods;pod=pod-x;tenant=t\n"}"#,
        )
        .expect("config");
        assert_eq!(odd.memory_mib, Some(4096));
        assert_eq!(odd.cores, Some(4));
        assert_eq!(
            odd.boot_disk.clone().map(|d| (d.key, d.size_bytes)),
            Some(("virtio0".into(), Some(3 << 29)))
        );
        assert!(odd.agent);
        assert_eq!(odd.lock, Some(LockKind::Backup));
        assert_eq!(odd.marker().map(|m| m.tenant.to_string()), Some("t".into()));
        // A template never counts as owned, even when it carries the marker.
        let mut templ = c.clone();
        templ.template = true;
        assert!(!templ.is_owned_by(&m));
        assert!(parse_config("not json").is_err());
    }

    #[test]
    fn resources_fixture() {
        let all = parse_resources(SIM_RESOURCES).expect("resources");
        assert_eq!(all.len(), 5, "storage entry skipped, lxc kept");
        let lagging = all.iter().find(|r| r.vmid.get() == 130).expect("130");
        assert_eq!(lagging.status, RunStatus::Other("unknown".into()));
        assert_eq!(lagging.name, None);
        assert_eq!(lagging.lock, Some(LockKind::Clone));
        let managed: Vec<u32> = managed_vms(all).iter().map(|r| r.vmid.get()).collect();
        assert_eq!(managed, vec![123, 130], "template and lxc excluded");
        assert!(parse_resources("{}").is_err());
        assert!(parse_resources(r#"[{"type":"qemu","vmid":5,"node":"x"}]"#).is_err());
    }

    #[test]
    fn backups_fixtures() {
        let b = parse_backups(SIM_BACKUPS).expect("backups");
        assert_eq!(b.len(), 1);
        assert_eq!(
            b[0].volid.as_str(),
            "local:backup/vzdump-qemu-123-2026_11_27-02_54_57.vma.zst"
        );
        assert_eq!(b[0].vmid.map(Vmid::get), Some(123));
        assert_eq!(b[0].ctime, 1_795_748_097);
        assert_eq!(b[0].size, 705);
        assert_eq!(
            b[0].marker().map(|m| m.pod_id.to_string()),
            Some("pod-1".into())
        );
        let r = parse_backups(REF_BACKUPS).expect("backups");
        assert_eq!(r.len(), 1, "unsafe volid skipped");
        assert!(r[0].protected);
        assert_eq!(r[0].notes.as_deref(), Some("web-01"));
        assert_eq!(parse_backups("[]"), Ok(vec![]));
    }

    #[test]
    fn snapshots_fixture() {
        let s = parse_snapshots(
            r#"[{"description":"x","name":"before-x","snaptime":1795748000,"vmstate":0},{"description":"You are here!","digest":"b2","name":"current","parent":"before-x","running":1}]"#,
        )
        .expect("snaps");
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name, "before-x");
        assert_eq!(s[0].snaptime, Some(1_795_748_000));
    }

    #[test]
    fn agent_fixtures() {
        let a = parse_agent_addresses(SIM_AGENT, None).expect("agent");
        assert_eq!(a.ipv4, Some(Ipv4Addr::new(10, 77, 0, 124)));
        assert_eq!(a.ipv6, None, "link-local skipped");
        let wrapped = format!("{{\"result\":{SIM_AGENT}}}");
        assert_eq!(
            parse_agent_addresses(&wrapped, Some("BC:24:11:1A:23:CC")),
            Ok(a)
        );
        let multi = r#"[{"name":"docker0","hardware-address":"02:42:00:00:00:01","ip-addresses":[{"ip-address":"172.17.0.1","ip-address-type":"ipv4","prefix":16}]},
            {"name":"eth1","hardware-address":"aa:bb:cc:dd:ee:01","ip-addresses":[{"ip-address":"192.168.5.5","ip-address-type":"ipv4","prefix":24}]},
            {"name":"eth0","hardware-address":"BC:24:11:00:00:02","ip-addresses":[{"ip-address":"169.254.1.1","ip-address-type":"ipv4","prefix":16},{"ip-address":"10.0.0.9","ip-address-type":"ipv4","prefix":24},{"ip-address":"2001:db8::9","ip-address-type":"ipv6","prefix":64}]},
            {"name":"eth2"}]"#;
        let first = parse_agent_addresses(multi, None).expect("agent");
        assert_eq!(first.ipv4, Some(Ipv4Addr::new(192, 168, 5, 5)));
        assert_eq!(first.ipv6, Some("2001:db8::9".parse().expect("v6")));
        let by_mac = parse_agent_addresses(multi, Some("bc:24:11:00:00:02")).expect("agent");
        assert_eq!(by_mac.ipv4, Some(Ipv4Addr::new(10, 0, 0, 9)));
        let no_ipv4 = r#"[{"name":"eth0","ip-addresses":[{"ip-address":"fe80::1","ip-address-type":"ipv6","prefix":64}]}]"#;
        assert_eq!(
            parse_agent_addresses(no_ipv4, None),
            Ok(GuestAddresses::default())
        );
        assert!(parse_agent_addresses("QEMU guest agent is not running", None).is_err());
    }

    #[test]
    fn upids() {
        let u = Upid::parse("UPID:pve1:0003A2F1:01B4C6D2:66A0F3B1:qmclone:9000:root@pam:")
            .expect("upid");
        assert_eq!(u.node, "pve1");
        assert_eq!(u.pid, 0x0003_A2F1);
        assert_eq!(u.pstart, 0x01B4_C6D2);
        assert_eq!(u.starttime, 0x66A0_F3B1);
        assert_eq!(u.task_type, "qmclone");
        assert_eq!(u.id, "9000");
        assert_eq!(u.user, "root@pam");
        let sim =
            Upid::parse("UPID:pve1:00005C53:0001E585:6B08F104:imgdel::root@pam:").expect("upid");
        assert_eq!(sim.id, "");
        assert_eq!(
            find_upid("some output\n\"UPID:pve1:00005C53:0001E585:6B08F104:imgdel::root@pam:\"\n")
                .map(|u| u.task_type),
            Some("imgdel".into())
        );
        for bad in [
            "UPID:pve1:0003A2F1:01B4C6D2:66A0F3B1:qmclone:9000:root@pam",
            "UPID:pve1:3A2F1:01B4C6D2:66A0F3B1:qmclone:9000:root@pam:",
            "UPID:-pve:0003A2F1:01B4C6D2:66A0F3B1:qmclone:9000:root@pam:",
            "UPID:pve1:0003A2F1:01B4C6D2:66A0F3B1:qm/clone:9000:root@pam:",
            "UPID:pve1:0003A2F1:01B4C6D2:66A0F3B1:qmclone:9000:root pam:",
            "UPID:pve1:0003A2F1:01B4C6D2:66A0F3B1::9000:root@pam:",
            "nope",
        ] {
            assert!(Upid::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn task_results() {
        assert_eq!(parse_task_log("INFO: x\nTASK OK\n"), Some(TaskResult::Ok));
        assert_eq!(
            parse_task_log("WARN: x\nTASK WARNINGS: 2"),
            Some(TaskResult::Warnings(2))
        );
        assert_eq!(
            parse_task_log("clone failed: no space\nTASK ERROR: clone failed: no space\n"),
            Some(TaskResult::Error("clone failed: no space".into()))
        );
        assert_eq!(parse_task_log(""), None);
        assert_eq!(warning_count("Task finished with 1 warning(s)!\n"), 1);
        assert_eq!(warning_count("trying to acquire lock...\n OK\n"), 0);
        assert_eq!(
            parse_task_status(
                r#"{"exitstatus":"WARNINGS: 1","id":"131","node":"pve1","pid":23866,"pstart":124753,"starttime":1795748105,"status":"stopped","type":"qmdestroy","upid":"UPID:pve1:00005D3A:0001E751:6B08F109:qmdestroy:131:root@pam:","user":"root@pam"}"#
            ),
            Ok(TaskState::Finished(TaskResult::Warnings(1)))
        );
        assert_eq!(
            parse_task_status(
                r#"{"exitstatus":"VM quit/powerdown failed - got timeout","status":"stopped"}"#
            ),
            Ok(TaskState::Finished(TaskResult::Error(
                "VM quit/powerdown failed - got timeout".into()
            )))
        );
        assert_eq!(
            parse_task_status(r#"{"status":"running"}"#),
            Ok(TaskState::Running)
        );
        assert_eq!(
            parse_task_status(r#"{"status":"stopped","exitstatus":"OK"}"#),
            Ok(TaskState::Finished(TaskResult::Ok))
        );
        assert!(parse_task_status("{}").is_err());
    }
}
