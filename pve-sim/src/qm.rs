//! `qm` subcommands.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::err::{CmdError, CmdResult};
use crate::opts::{self, Parsed, Spec, T};
use crate::state::{Ctx, Drive, Snapshot, Vm, is_drive_key, lv_name};
use crate::task::Task;
use crate::util::{self, LockMode};
use crate::{Resolved, outln};

/// Subcommand names known to the simulator (for prefix expansion and usage).
const CMDS: &[&str] = &[
    "agent",
    "clone",
    "cloudinit",
    "config",
    "delsnapshot",
    "destroy",
    "disk",
    "guest",
    "list",
    "listsnapshot",
    "pending",
    "reboot",
    "reset",
    "resize",
    "resume",
    "rollback",
    "set",
    "shutdown",
    "snapshot",
    "start",
    "status",
    "stop",
    "suspend",
    "template",
    "unlock",
];

fn usage_of(cmd: &str) -> String {
    let u = match cmd {
        "clone" => "qm clone <vmid> <newid> [OPTIONS]",
        "set" => "qm set <vmid> [OPTIONS]",
        "resize" => "qm disk resize <vmid> <disk> <size> [OPTIONS]",
        "config" => "qm config <vmid> [OPTIONS]",
        "list" => "qm list  [OPTIONS]",
        "destroy" => "qm destroy <vmid> [OPTIONS]",
        "guest" => "qm guest cmd <vmid> <command>",
        "agent" => "qm agent <vmid> <command>",
        "snapshot" => "qm snapshot <vmid> <snapname> [OPTIONS]",
        "rollback" => "qm rollback <vmid> <snapname> [OPTIONS]",
        "delsnapshot" => "qm delsnapshot <vmid> <snapname> [OPTIONS]",
        "listsnapshot" => "qm listsnapshot <vmid>",
        "template" => "qm template <vmid> [OPTIONS]",
        "cloudinit" => "qm cloudinit dump <vmid> <type>",
        "pending" => "qm pending <vmid>",
        "unlock" => "qm unlock <vmid>",
        "status" => "qm status <vmid> [OPTIONS]",
        other => return format!("qm {other} <vmid> [OPTIONS]"),
    };
    u.to_string()
}

fn unknown(cmd: &str) -> CmdError {
    let mut msg =
        format!("ERROR: unknown command 'qm {cmd}'\nUSAGE: qm <COMMAND> [ARGS] [OPTIONS]");
    for c in CMDS {
        msg.push_str(&format!("\n       {}", usage_of(c)));
    }
    CmdError::die(msg)
}

fn expand(cmd: &str) -> Option<&'static str> {
    if let Some(c) = CMDS.iter().find(|c| **c == cmd) {
        return Some(c);
    }
    let m: Vec<&&str> = CMDS.iter().filter(|c| c.starts_with(cmd)).collect();
    if m.len() == 1 && !cmd.is_empty() {
        Some(m[0])
    } else {
        None
    }
}

/// Determine the command key of a `qm` invocation.
pub fn resolve(args: &[String]) -> Result<Resolved, CmdError> {
    let Some(first) = args.first() else {
        return Err(unknown(""));
    };
    let cmd = expand(first).ok_or_else(|| unknown(first))?;
    let key = match cmd {
        "disk" => match args.get(1).map(String::as_str) {
            Some("resize") => "resize",
            Some(o) => return Err(unknown(&format!("disk {o}"))),
            None => return Err(unknown("disk")),
        },
        "agent" => "guest",
        c => c,
    };
    Ok(Resolved {
        key: key.to_string(),
        usage: usage_of(key),
    })
}

/// Run a `qm` invocation.
pub fn run(ctx: &mut Ctx, args: &[String]) -> CmdResult {
    let cmd = expand(&args[0]).unwrap_or("");
    let rest: &[String] = match cmd {
        "disk" => &args[2..],
        "guest" => {
            if args.get(1).map(String::as_str) != Some("cmd") {
                return Err(unknown(&format!(
                    "guest {}",
                    args.get(1).map(String::as_str).unwrap_or("")
                )));
            }
            &args[2..]
        }
        "cloudinit" => &args[1..],
        _ => &args[1..],
    };
    match cmd {
        "clone" => clone(ctx, rest),
        "set" => set(ctx, rest),
        "disk" | "resize" => resize(ctx, rest),
        "start" => start(ctx, rest),
        "stop" => stop(ctx, rest),
        "shutdown" => shutdown(ctx, rest),
        "reboot" => reboot(ctx, rest),
        "reset" | "suspend" | "resume" => simple_power(ctx, cmd, rest),
        "status" => status(ctx, rest),
        "config" => config(ctx, rest),
        "pending" => pending(ctx, rest),
        "list" => list(ctx, rest),
        "destroy" => destroy(ctx, rest),
        "guest" | "agent" => guest(ctx, rest),
        "snapshot" => snapshot(ctx, rest),
        "rollback" => rollback(ctx, rest),
        "delsnapshot" => delsnapshot(ctx, rest),
        "listsnapshot" => listsnapshot(ctx, rest),
        "template" => template(ctx, rest),
        "cloudinit" => cloudinit(ctx, rest),
        "unlock" => unlock(ctx, rest),
        _ => Err(unknown(&args[0])),
    }
}

fn vm_locked(vm: &Vm) -> Result<(), CmdError> {
    match vm.lock() {
        Some(l) => Err(CmdError::die(format!("VM is locked ({l})"))),
        None => Ok(()),
    }
}

fn pvmid(a: &Parsed) -> Result<u32, CmdError> {
    opts::vmid("vmid", a.p("vmid"))
}

/// The usual shape of a VM worker task: a semaphore slot, task `ttype` with id `vmid`, the
/// VM's exclusive flock taken inside the task, then `body`. A failed task exits 255.
fn run_vm_task(
    ctx: &mut Ctx,
    ttype: &str,
    vmid: u32,
    body: impl FnOnce(&mut Ctx, &mut Task) -> Result<(), CmdError>,
) -> CmdResult {
    Task::run(ctx, ttype, &vmid.to_string(), 255, |ctx, task| {
        ctx.flock_vm(vmid)?;
        body(ctx, task)
    })
}

/// A `netN` value with the model kept and a new MAC derived from `vmid` and `key`.
pub fn with_new_mac(net: &str, vmid: u32, key: &str) -> String {
    let mut d = Drive::parse(net);
    let model = d.volid.split('=').next().unwrap_or("virtio").to_string();
    d.volid = format!(
        "{model}={}",
        util::random_mac(u64::from(vmid) ^ util::fnv(key))
    );
    d.render()
}

// ---------------------------------------------------------------- clone

struct ClonePlan {
    src: Vm,
    srcconf: BTreeMap<String, String>,
    full: bool,
}

fn clone_checks(ctx: &Ctx, a: &Parsed, src: u32, newid: u32) -> Result<ClonePlan, CmdError> {
    let vm = ctx.find_vm(src)?;
    if let Some(p) = a.get("pool")
        && !ctx.node.pools.iter().any(|x| x == p)
    {
        return Err(CmdError::die(format!(
            "403 Permission check failed (pool '{p}' does not exist)"
        )));
    }
    if let Some(sid) = a.get("storage") {
        let s = ctx.need_storage(sid)?;
        if s.disabled {
            return Err(CmdError::die(format!("storage '{sid}' is disabled")));
        }
        if !s.content.iter().any(|c| c == "images") {
            return Err(CmdError::param(
                "storage",
                format!("storage '{sid}' does not support vm images"),
            ));
        }
    }
    if let Some(t) = a.get("target")
        && t != ctx.node.node
    {
        if !ctx.node.peers.contains_key(t) {
            return Err(CmdError::param(
                "target",
                format!("no such cluster node '{t}'"),
            ));
        }
        for k in Vm::disk_keys(&vm.conf) {
            let d = Drive::parse(&vm.conf[&k]);
            if d.is_cdrom() && !d.is_cloudinit() {
                continue;
            }
            let sid = a.get("storage").or(d.storage()).unwrap_or("");
            if !ctx.storage(sid).is_some_and(|s| s.shared) {
                if a.get("storage").is_some() {
                    return Err(CmdError::die(format!(
                        "can't clone to non-shared storage '{sid}'"
                    )));
                }
                return Err(CmdError::die(format!(
                    "can't clone VM to node '{t}' (VM uses local storage)"
                )));
            }
        }
    }
    ctx.check_quorum()?;
    vm_locked(&vm)?;
    let srcconf = match a.get("snapname") {
        Some(s) => match vm.snapshots.get(s) {
            Some(snap) => snap.conf.clone(),
            None => return Err(CmdError::die(format!("snapshot '{s}' does not exist"))),
        },
        None => vm.conf.clone(),
    };
    let full = a.flag("full", !vm.is_template());
    if !full {
        if a.get("storage").is_some() {
            return Err(CmdError::die(
                "parameter 'storage' not allowed for linked clones",
            ));
        }
        if a.get("format").is_some() {
            return Err(CmdError::die(
                "parameter 'format' not allowed for linked clones",
            ));
        }
    }
    if ctx.load_vm(newid)?.is_some() {
        return Err(CmdError::die(format!(
            "unable to create VM {newid}: config file already exists"
        )));
    }
    for k in Vm::disk_keys(&srcconf) {
        let d = Drive::parse(&srcconf[&k]);
        if d.is_cdrom() {
            continue;
        }
        let st = d.storage().and_then(|s| ctx.storage(s));
        if !full && (!vm.is_template() || !st.is_some_and(|s| s.supports_linked())) {
            return Err(CmdError::die(format!(
                "Linked clone feature is not supported for '{}' ({k})",
                d.volid
            )));
        }
        if k == "tpmstate0" && vm.is_running() {
            return Err(CmdError::die("cannot clone TPM state while VM is running"));
        }
    }
    Ok(ClonePlan {
        src: vm,
        srcconf,
        full,
    })
}

fn clone(ctx: &mut Ctx, args: &[String]) -> CmdResult {
    let a = opts::parse(
        &Spec {
            pos: &["vmid", "newid"],
            optional: 0,
            opts: &[
                ("name", T::Str),
                ("description", T::Str),
                ("pool", T::Str),
                ("full", T::Bool),
                ("storage", T::Str),
                ("format", T::Str),
                ("target", T::Str),
                ("snapname", T::Str),
                ("bwlimit", T::Int),
            ],
        },
        args,
    )?;
    let src = pvmid(&a)?;
    let newid = opts::vmid("newid", a.p("newid"))?;
    if let Some(n) = a.get("name")
        && !opts::is_dns_name(n)
    {
        return Err(CmdError::param(
            "name",
            "invalid format - value does not look like a valid DNS name",
        ));
    }
    if let Some(d) = a.get("description")
        && d.chars().count() > 8192
    {
        return Err(CmdError::param(
            "description",
            "value may only be 8192 characters long",
        ));
    }
    if let Some(f) = a.get("format")
        && !matches!(f, "raw" | "qcow2" | "vmdk")
    {
        return Err(CmdError::param(
            "format",
            format!("value '{f}' does not have a value in the enumeration 'raw, qcow2, vmdk'"),
        ));
    }
    ctx.fail_before()?;
    ctx.locked(|c| clone_checks(c, &a, src, newid))?;
    Task::run(ctx, "qmclone", &src.to_string(), 255, |ctx, task| {
        let tmo = ctx.faults.clone_flock_timeout_ms;
        let running = ctx.load_vm(src)?.is_some_and(|v| v.is_running());
        let src_mode = if running {
            LockMode::Exclusive
        } else {
            LockMode::Shared
        };
        ctx.flock_vmid(src, src_mode, tmo)?;
        ctx.flock_vmid(newid, LockMode::Exclusive, tmo)?;
        // Re-run the checks and write the placeholder config.
        let plan = ctx.locked(|c| {
            let plan = clone_checks(c, &a, src, newid)?;
            let mut tmp = Vm::new(newid);
            tmp.conf.insert("lock".into(), "clone".into());
            c.save_vm(&tmp)?;
            Ok(plan)
        })?;
        let mut allocated: Vec<String> = Vec::new();
        clone_task(ctx, task, &a, src, newid, &plan, &mut allocated).map_err(|e| {
            // rollback: free new volumes, delete the new config
            if let Ok(_g) = ctx.lock() {
                let _ = ctx.free_volumes(&allocated);
                ctx.delete_vm(newid);
            }
            if e.msg.starts_with("clone failed:") || e.msg.starts_with("can't lock file") {
                CmdError::die(e.msg)
            } else {
                CmdError::die(format!("clone failed: {}", e.msg))
            }
        })
    })
}

fn clone_task(
    ctx: &mut Ctx,
    task: &mut Task,
    a: &Parsed,
    src: u32,
    newid: u32,
    plan: &ClonePlan,
    allocated: &mut Vec<String>,
) -> Result<(), CmdError> {
    if ctx.faults.pve_version >= 9 {
        task.say(&format!("creating a clone of VM {src} with ID {newid}"))?;
    }
    // Build the non-disk part of the new config.
    let mut base: BTreeMap<String, String> = BTreeMap::new();
    let srcvm = &plan.src;
    if !srcvm.pending.is_empty() || !srcvm.pending_delete.is_empty() {
        let mut keys: Vec<String> = srcvm.pending.keys().cloned().collect();
        keys.extend(srcvm.pending_delete.iter().cloned());
        task.say(&format!(
            "WARN: found pending changes for '{}', discarding for clone",
            keys.join(",")
        ))?;
    }
    for (k, v) in &plan.srcconf {
        if is_drive_key(k)
            || matches!(
                k.as_str(),
                "template" | "parent" | "vmstate" | "lock" | "snaptime"
            )
            || k.starts_with("unused")
        {
            continue;
        }
        let v = if k.starts_with("net") && k[3..].bytes().all(|b| b.is_ascii_digit()) {
            with_new_mac(v, newid, k)
        } else if k == "smbios1" {
            format!("uuid={}", util::random_uuid(u64::from(newid)))
        } else if k == "vmgenid" {
            util::random_uuid(u64::from(newid) + 1)
        } else {
            v.clone()
        };
        base.insert(k.clone(), v);
    }
    let name = a.get("name").map(str::to_string).unwrap_or_else(|| {
        format!(
            "Copy-of-VM-{}",
            plan.srcconf
                .get("name")
                .cloned()
                .unwrap_or_else(|| src.to_string())
        )
    });
    base.insert("name".into(), name);
    if let Some(d) = a.get("description") {
        base.insert("description".into(), d.to_string());
    }
    let mut disks: BTreeMap<String, String> = BTreeMap::new();
    let keys = Vm::disk_keys(&plan.srcconf);
    let dur = ctx.faults.duration("clone");
    let ndisks = keys
        .iter()
        .filter(|k| {
            !Drive::parse(&plan.srcconf[*k]).is_cdrom()
                || Drive::parse(&plan.srcconf[*k]).is_cloudinit()
        })
        .count()
        .max(1) as u64;
    let steps = ctx.faults.progress_steps.max(1) as u64;
    let mut first_done = false;
    for k in keys {
        let mut d = Drive::parse(&plan.srcconf[&k]);
        if d.is_cdrom() && !d.is_cloudinit() {
            disks.insert(k.clone(), d.render());
            continue;
        }
        let srcvol = d.volid.clone();
        let src_sid = d.storage().unwrap_or("local-lvm").to_string();
        let size = d.size().unwrap_or(4 << 20);
        let linked = !plan.full && !d.is_cloudinit();
        let sid = if linked {
            src_sid.clone()
        } else {
            a.get("storage").unwrap_or(&src_sid).to_string()
        };
        task.say(&format!(
            "create {} clone of drive {k} ({srcvol})",
            if linked { "linked" } else { "full" }
        ))?;
        let newvol = {
            let _g = ctx.lock()?;
            if d.is_cloudinit() {
                let v = format!("{sid}:vm-{newid}-cloudinit");
                ctx.add_volume(&v, newid, size)?;
                v
            } else if linked {
                let plain = ctx.alloc_disk(&sid, newid, size)?;
                let volname = plain.split_once(':').map(|x| x.1).unwrap_or("");
                let basename = srcvol.split_once(':').map(|x| x.1).unwrap_or("");
                let v = format!("{sid}:{basename}/{volname}");
                ctx.free_volumes(std::slice::from_ref(&plain))?;
                ctx.add_volume(&v, newid, size)?;
                v
            } else {
                ctx.alloc_disk(&sid, newid, size)?
            }
        };
        allocated.push(newvol.clone());
        if ctx.on_lvm(&sid) && !linked {
            task.say(&format!(
                "  Logical volume \"{}\" created.",
                lv_name(&newvol)
            ))?;
        }
        if ctx.faults.pve_version >= 9 {
            task.say(&format!("allocated target volume '{newvol}'"))?;
        }
        let lines: Vec<String> = if linked || d.is_cloudinit() {
            Vec::new()
        } else {
            let gib = size as f64 / (1u64 << 30) as f64;
            (1..=steps)
                .map(|i| {
                    let p = i as f64 * 100.0 / steps as f64;
                    format!(
                        "transferred {:.1} GiB of {:.1} GiB ({:.2}%)",
                        gib * p / 100.0,
                        gib,
                        p
                    )
                })
                .collect()
        };
        task.work(ctx, dur / ndisks, &lines)?;
        if !first_done {
            ctx.fail_task()?;
        }
        first_done = true;
        d.volid = newvol;
        disks.insert(k.clone(), d.render());
        // Rewrite the config with all copied keys plus `lock: clone`.
        let _g = ctx.lock()?;
        let mut vm = ctx.load_vm(newid)?.unwrap_or_else(|| Vm::new(newid));
        vm.conf = base.clone();
        vm.conf.extend(disks.clone());
        vm.conf.insert("lock".into(), "clone".into());
        ctx.save_vm(&vm)?;
    }
    if ndisks == 1 && disks.is_empty() {
        task.work(ctx, dur, &[])?;
    }
    if !first_done {
        ctx.fail_task()?;
    }
    // Finalize.
    let target = a
        .get("target")
        .filter(|t| *t != ctx.node.node)
        .map(str::to_string);
    let _g = ctx.lock()?;
    if let Some(owner) = ctx.owner_of(newid)
        && owner != ctx.node.node
    {
        return Err(CmdError::die(format!(
            "clone failed: close (rename) atomic file '/etc/pve/nodes/{}/qemu-server/{newid}.conf' failed: File exists",
            ctx.node.node
        )));
    }
    let mut vm = ctx.load_vm(newid)?.unwrap_or_else(|| Vm::new(newid));
    vm.conf = base;
    vm.conf.extend(disks);
    vm.conf.remove("lock");
    vm.created_ms = util::now_ms();
    match target {
        Some(t) => {
            let dir = ctx.node.peers.get(&t).cloned().unwrap_or_default();
            let _pg = crate::state::global_lock(&dir)?;
            let data = serde_json::to_vec_pretty(&vm).map_err(|e| CmdError::die(e.to_string()))?;
            crate::state::write_atomic(&crate::state::vm_path(&dir, newid), &data)?;
            ctx.delete_vm(newid);
        }
        None => ctx.save_vm(&vm)?,
    }
    Ok(())
}

// ---------------------------------------------------------------- set

const PENDING_KEYS: &[&str] = &[
    "cores", "sockets", "memory", "agent", "cpu", "numa", "ostype", "scsihw", "bios", "machine",
];

fn set_spec_opts() -> Vec<(String, T)> {
    let mut v: Vec<(String, T)> = [
        ("cores", T::Int),
        ("sockets", T::Int),
        ("vcpus", T::Int),
        ("memory", T::Str),
        ("balloon", T::Int),
        ("name", T::Str),
        ("tags", T::Str),
        ("description", T::Str),
        ("ciuser", T::Str),
        ("cipassword", T::Str),
        ("citype", T::Str),
        ("ciupgrade", T::Bool),
        ("sshkeys", T::Str),
        ("nameserver", T::Str),
        ("searchdomain", T::Str),
        ("agent", T::Str),
        ("onboot", T::Bool),
        ("protection", T::Bool),
        ("boot", T::Str),
        ("scsihw", T::Str),
        ("ostype", T::Str),
        ("cpu", T::Str),
        ("numa", T::Bool),
        ("delete", T::Str),
        ("revert", T::Str),
        ("digest", T::Str),
        ("skiplock", T::Bool),
        ("efidisk0", T::Str),
        ("tpmstate0", T::Str),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), *b))
    .collect();
    v.extend(indexed_set_opts());
    v
}

/// The numbered string options of `qm set` and `pvesh set .../config`: `net0..31`,
/// `ipconfig0..31` and the drive keys `ide0..3 sata0..5 scsi0..30 virtio0..15`.
pub fn indexed_set_opts() -> Vec<(String, T)> {
    let mut v = Vec::new();
    for i in 0..32 {
        v.push((format!("net{i}"), T::Str));
        v.push((format!("ipconfig{i}"), T::Str));
    }
    for (p, n) in [("ide", 4), ("sata", 6), ("scsi", 31), ("virtio", 16)] {
        for i in 0..n {
            v.push((format!("{p}{i}"), T::Str));
        }
    }
    v
}

/// Config text as `qm config` prints it (used for the digest too).
pub fn render_conf(conf: &BTreeMap<String, String>) -> String {
    let mut s = String::new();
    for (k, v) in conf {
        let v = match k.as_str() {
            "description" => util::encode_text(v),
            "cipassword" => "**********".to_string(),
            _ => v.clone(),
        };
        s.push_str(&format!("{k}: {v}\n"));
    }
    s
}

/// The config digest.
pub fn digest(vm: &Vm) -> String {
    let mut text = render_conf(&vm.conf);
    for (k, v) in &vm.pending {
        text.push_str(&format!("[PENDING]{k}: {v}\n"));
    }
    util::sha1_hex(text.as_bytes())
}

fn valid_ipconfig(v: &str) -> bool {
    let ipv4 = |s: &str| {
        let p: Vec<&str> = s.split('.').collect();
        p.len() == 4 && p.iter().all(|x| x.parse::<u8>().is_ok())
    };
    let cidr4 = |s: &str| match s.split_once('/') {
        Some((ip, n)) => ipv4(ip) && n.parse::<u8>().is_ok_and(|n| n <= 32),
        None => false,
    };
    let mut has_ip = false;
    let mut has_gw = false;
    for part in v.split(',') {
        let Some((k, val)) = part.split_once('=') else {
            return false;
        };
        match k {
            "ip" => {
                has_ip = true;
                if val != "dhcp" && !cidr4(val) {
                    return false;
                }
            }
            "gw" => {
                has_gw = true;
                if !ipv4(val) {
                    return false;
                }
            }
            "ip6" => {
                if !(val == "dhcp" || val == "auto" || val.contains(':')) {
                    return false;
                }
            }
            "gw6" => {
                if !val.contains(':') {
                    return false;
                }
            }
            _ => return false,
        }
    }
    !has_gw || has_ip
}

fn validate_ssh_keys(text: &str) -> Result<(), CmdError> {
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let mut parts = l.split_whitespace();
        let t = parts.next().unwrap_or("");
        let b = parts.next().unwrap_or("");
        let ok_type = t.starts_with("ssh-") || t.starts_with("ecdsa-") || t.starts_with("sk-");
        let ok_b64 = b.len() >= 16
            && b.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"+/=".contains(&c));
        if !ok_type || !ok_b64 {
            return Err(CmdError::die("SSH public key validation error"));
        }
    }
    Ok(())
}

/// Where `--sshkeys` comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SshKeysMode {
    /// `qm set`: a file path on the node.
    FilePath,
    /// `pvesh set`: already URL-encoded.
    UrlEncoded,
}

fn set(ctx: &mut Ctx, args: &[String]) -> CmdResult {
    // A bare or empty --cipassword makes the real qm prompt on the TTY.
    let n = args.len();
    for (i, x) in args.iter().enumerate() {
        let bare = (x == "--cipassword" || x == "-cipassword") && (i + 1 == n);
        if bare || x == "--cipassword=" || x == "-cipassword=" {
            return Err(CmdError::die(
                "unable to read password - no tty (interactive prompt for 'cipassword')",
            ));
        }
    }
    let owned = set_spec_opts();
    let refs: Vec<(&str, T)> = owned.iter().map(|(a, b)| (a.as_str(), *b)).collect();
    let a = opts::parse(&Spec::new(&["vmid"], &refs), args)?;
    let vmid = pvmid(&a)?;
    let out = update_vm(ctx, vmid, a.opts.clone(), SshKeysMode::FilePath)?;
    outln(&out);
    Ok(0)
}

/// Apply `qm set`/`pvesh set .../config` parameters; returns the `update VM` line.
pub fn update_vm(
    ctx: &mut Ctx,
    vmid: u32,
    mut params: BTreeMap<String, String>,
    mode: SshKeysMode,
) -> Result<String, CmdError> {
    // Schema validation.
    for (k, v) in params.clone() {
        let min = |m: i64| -> Result<(), CmdError> {
            match v.parse::<i64>() {
                Ok(x) if x < m => Err(CmdError::param(
                    &k,
                    format!("value must have a minimum value of {m}"),
                )),
                Ok(_) => Ok(()),
                Err(_) => Err(CmdError::param(
                    &k,
                    format!("type check ('integer') failed - got '{v}'"),
                )),
            }
        };
        match k.as_str() {
            "cores" | "sockets" | "vcpus" => min(1)?,
            "balloon" => min(0)?,
            "memory" => min(16)?,
            "name" if !opts::is_dns_name(&v) => {
                return Err(CmdError::param(
                    "name",
                    "invalid format - value does not look like a valid DNS name",
                ));
            }
            "tags" => {
                params.insert(k.clone(), opts::normalize_tags(&v)?);
            }
            "description" if v.chars().count() > 8192 => {
                return Err(CmdError::param(
                    "description",
                    "value may only be 8192 characters long",
                ));
            }
            "searchdomain" | "nameserver" => {
                for x in opts::split_list(&v) {
                    if !x
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b))
                    {
                        return Err(CmdError::param(
                            &k,
                            "invalid format - value does not look like a valid DNS name",
                        ));
                    }
                }
            }
            "agent" => {
                let first = v.split(',').next().unwrap_or("");
                let val = first.strip_prefix("enabled=").unwrap_or(first);
                if opts::parse_bool(val).is_none() {
                    return Err(CmdError::param(
                        "agent",
                        format!("invalid format - type check ('boolean') failed - got '{val}'"),
                    ));
                }
            }
            "sshkeys" => {
                let enc = match mode {
                    SshKeysMode::FilePath => {
                        let text = std::fs::read_to_string(&v).map_err(|_| {
                            CmdError::die(format!("can't open '{v}' - No such file or directory"))
                        })?;
                        util::uri_escape(&text)
                    }
                    SshKeysMode::UrlEncoded => {
                        if !v
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-%_.!~*'()".contains(&b))
                        {
                            return Err(CmdError::param(
                                "sshkeys",
                                format!("invalid urlencoded string: {v}"),
                            ));
                        }
                        v.clone()
                    }
                };
                validate_ssh_keys(&util::uri_unescape(&enc))?;
                params.insert(k.clone(), enc);
            }
            "cipassword" => {
                let hashed = ["$1$", "$5$", "$6$", "$2a$", "$2y$"]
                    .iter()
                    .any(|p| v.starts_with(p));
                if !hashed {
                    let h = util::sha1_hex(v.as_bytes());
                    params.insert(k.clone(), format!("$5$sim${h}"));
                }
            }
            _ if k.starts_with("ipconfig") && !valid_ipconfig(&v) => {
                return Err(CmdError::param(
                    &k,
                    "invalid format - value does not look like a valid ipconfig",
                ));
            }
            _ if k.starts_with("net") && k[3..].parse::<u32>().is_ok() => {
                let d = Drive::parse(&v);
                let (model, mac) = match d.volid.split_once('=') {
                    Some((m, mac)) => (m.to_string(), Some(mac.to_string())),
                    None => (d.volid.clone(), None),
                };
                if !matches!(
                    model.as_str(),
                    "virtio" | "e1000" | "e1000e" | "rtl8139" | "vmxnet3"
                ) {
                    return Err(CmdError::param(
                        &k,
                        format!(
                            "invalid format - format error\n{k}.model: property is missing and it is not optional"
                        ),
                    ));
                }
                let mut d2 = d.clone();
                d2.volid = format!(
                    "{model}={}",
                    mac.unwrap_or_else(|| util::random_mac(u64::from(vmid) ^ util::fnv(&k)))
                );
                params.insert(k.clone(), d2.render());
            }
            _ => {}
        }
    }
    let delete: Vec<String> = params
        .get("delete")
        .map(|d| opts::split_list(d))
        .unwrap_or_default();
    let revert: Vec<String> = params
        .get("revert")
        .map(|d| opts::split_list(d))
        .unwrap_or_default();
    let skiplock = params.get("skiplock").is_some_and(|v| v == "1");
    let changes: Vec<String> = params
        .keys()
        .filter(|k| !matches!(k.as_str(), "digest" | "skiplock" | "delete" | "revert"))
        .cloned()
        .collect();
    if changes.is_empty() && delete.is_empty() && revert.is_empty() {
        return Err(CmdError::die("no options specified"));
    }
    ctx.fail_before()?;
    ctx.check_quorum()?;
    ctx.flock_vm(vmid)?;
    let _g = ctx.lock()?;
    let mut vm = ctx.need_vm(vmid)?;
    if !skiplock {
        vm_locked(&vm)?;
    }
    if let Some(d) = params.get("digest")
        && *d != digest(&vm)
    {
        return Err(CmdError::die(
            "checksum mismatch (file change by other user?)",
        ));
    }
    if let Some(b) = params.get("balloon").and_then(|b| b.parse::<u64>().ok()) {
        let mem = params
            .get("memory")
            .and_then(|m| m.parse::<u64>().ok())
            .unwrap_or_else(|| vm.memory_mib());
        if b > mem {
            return Err(CmdError::die(
                "balloon value too large (must be smaller than assigned memory)",
            ));
        }
    }
    let mut line_parts = Vec::new();
    for (k, v) in &params {
        let shown = if k == "cipassword" {
            "<hidden>".to_string()
        } else {
            v.clone()
        };
        line_parts.push(format!("-{k} {shown}"));
    }
    let running = vm.is_running();
    for k in &revert {
        vm.pending.remove(k);
        vm.pending_delete.remove(k);
    }
    for k in &delete {
        if !vm.conf.contains_key(k) && !vm.pending.contains_key(k) {
            crate::errln(&format!(
                "cannot delete '{k}' - not set in current configuration!"
            ));
            continue;
        }
        if running && PENDING_KEYS.contains(&k.as_str()) {
            vm.pending_delete.insert(k.clone());
        } else {
            if let Some(v) = vm.conf.remove(k)
                && is_drive_key(k)
            {
                let d = Drive::parse(&v);
                if !d.is_cdrom() || d.is_cloudinit() {
                    let n = (0..)
                        .find(|i| !vm.conf.contains_key(&format!("unused{i}")))
                        .unwrap_or(0);
                    vm.conf.insert(format!("unused{n}"), d.volid);
                }
            }
            vm.pending.remove(k);
        }
    }
    for k in changes {
        let mut v = params[&k].clone();
        if is_drive_key(&k) {
            v = new_drive(ctx, vmid, &v)?;
        }
        if running && PENDING_KEYS.contains(&k.as_str()) {
            if vm.conf.get(&k) != Some(&v) {
                vm.pending.insert(k, v);
            }
        } else {
            vm.pending.remove(&k);
            vm.conf.insert(k, v);
        }
    }
    ctx.save_vm(&vm)?;
    Ok(format!("update VM {vmid}: {}", line_parts.join(" ")))
}

fn new_drive(ctx: &Ctx, vmid: u32, v: &str) -> Result<String, CmdError> {
    let d = Drive::parse(v);
    if let Some((sid, what)) = d.volid.split_once(':')
        && (what == "cloudinit" || what.parse::<f64>().is_ok())
    {
        let st = ctx.need_storage(sid)?;
        if what == "cloudinit" {
            let vol = format!("{}:vm-{vmid}-cloudinit", st.id);
            ctx.add_volume(&vol, vmid, 4 << 20)?;
            let mut nd = d.clone();
            nd.volid = vol;
            nd.set_opt("media", "cdrom".into());
            return Ok(nd.render());
        }
        let gib: f64 = what.parse().unwrap_or(0.0);
        let size = (gib * (1u64 << 30) as f64) as u64;
        let vol = ctx.alloc_disk(sid, vmid, size)?;
        let mut nd = d.clone();
        nd.volid = vol;
        nd.set_opt("size", util::format_size(size));
        return Ok(nd.render());
    }
    Ok(v.to_string())
}

// ---------------------------------------------------------------- resize

fn resize(ctx: &mut Ctx, args: &[String]) -> CmdResult {
    let a = opts::parse(
        &Spec::new(
            &["vmid", "disk", "size"],
            &[("skiplock", T::Bool), ("digest", T::Str)],
        ),
        args,
    )?;
    let vmid = pvmid(&a)?;
    let disk = a.p("disk").to_string();
    if !is_drive_key(&disk) {
        return Err(CmdError::param(
            "disk",
            format!(
                "value '{disk}' does not have a value in the enumeration 'ide0, ide1, ide2, ide3, scsi0, ..., virtio15, sata0, ..., sata5, efidisk0, tpmstate0'"
            ),
        ));
    }
    let size = a.p("size").to_string();
    let re_ok = {
        let s = size.strip_prefix('+').unwrap_or(&size);
        let s = s.strip_suffix(['K', 'M', 'G', 'T']).unwrap_or(s);
        let (i, f) = s.split_once('.').unwrap_or((s, "0"));
        !i.is_empty()
            && i.bytes().all(|b| b.is_ascii_digit())
            && !f.is_empty()
            && f.bytes().all(|b| b.is_ascii_digit())
    };
    if !re_ok {
        return Err(CmdError::param(
            "size",
            "value does not match the regex pattern",
        ));
    }
    let skiplock = a.flag("skiplock", false);
    ctx.fail_before()?;
    // qm has no $upid_exit hook for resize: exit 0 even when the task failed.
    Task::run(ctx, "resize", &vmid.to_string(), 0, |ctx, task| {
        resize_task(ctx, task, vmid, &disk, &size, skiplock)
    })
}

fn resize_task(
    ctx: &mut Ctx,
    task: &mut Task,
    vmid: u32,
    disk: &str,
    size: &str,
    skiplock: bool,
) -> Result<(), CmdError> {
    ctx.flock_vm(vmid)?;
    let (cur, volid, newsize) = ctx.locked(|c| {
        let vm = c.need_vm(vmid)?;
        if !skiplock {
            vm_locked(&vm)?;
        }
        let Some(v) = vm.conf.get(disk) else {
            return Err(CmdError::die(format!("disk '{disk}' does not exist")));
        };
        let d = Drive::parse(v);
        if d.is_cdrom() {
            return Err(CmdError::die("you can't resize a cdrom"));
        }
        if d.volid.is_empty() || d.volid == "none" {
            return Err(CmdError::die(format!(
                "disk '{disk}' has no associated volume"
            )));
        }
        let cur = d.size().ok_or_else(|| {
            CmdError::die(format!(
                "Could not determine current size of volume '{}'",
                d.volid
            ))
        })?;
        let (rel, s) = match size.strip_prefix('+') {
            Some(s) => (true, s),
            None => (false, size),
        };
        let n = util::parse_size(s).unwrap_or(0);
        let newsize = if rel { cur + n } else { n };
        if newsize < cur {
            return Err(CmdError::die("shrinking disks is not supported"));
        }
        Ok((cur, d.volid, newsize))
    })?;
    if newsize == cur {
        return Ok(());
    }
    task.run_phase(ctx, "resize")?;
    ctx.modify_vm(vmid, |c, vm| {
        if let Some(v) = vm.conf.get(disk).cloned() {
            let mut d = Drive::parse(&v);
            d.set_opt("size", util::format_size(newsize));
            vm.conf.insert(disk.to_string(), d.render());
        }
        if c.on_lvm(volid.split(':').next().unwrap_or("")) {
            let name = lv_name(&volid);
            let g = |b: u64| b as f64 / (1u64 << 30) as f64;
            task.say(&format!(
                "  Size of logical volume pve/{name} changed from {:.2} GiB ({} extents) to {:.2} GiB ({} extents).",
                g(cur),
                cur / (4 << 20),
                g(newsize),
                newsize / (4 << 20)
            ))?;
            task.say(&format!(
                "  Logical volume pve/{name} successfully resized."
            ))?;
        }
        let mut vols = c.volumes();
        if let Some(v) = vols.get_mut(&volid) {
            v.size = newsize;
        }
        c.save_volumes(&vols)
    })
}

// ---------------------------------------------------------------- power

fn power_spec(extra: &'static [(&'static str, T)]) -> Spec<'static> {
    Spec::new(&["vmid"], extra)
}

fn start(ctx: &mut Ctx, args: &[String]) -> CmdResult {
    let a = opts::parse(
        &power_spec(&[
            ("skiplock", T::Bool),
            ("timeout", T::Int),
            ("machine", T::Str),
            ("stateuri", T::Str),
        ]),
        args,
    )?;
    let vmid = pvmid(&a)?;
    let skip = a.flag("skiplock", false);
    ctx.fail_before()?;
    let resumed = ctx.locked(|c| {
        let mut vm = c.need_vm(vmid)?;
        if vm.is_running() {
            if vm.lock() == Some("backup") && vm.qmpstatus == "prelaunch" {
                vm.qmpstatus = "running".into();
                vm.started_ms = util::now_ms();
                c.save_vm(&vm)?;
                return Ok(true);
            }
            return Err(CmdError::die(format!("VM {vmid} already running")));
        }
        c.check_quorum()?;
        Ok(false)
    })?;
    if resumed {
        return Ok(0);
    }
    run_vm_task(ctx, "qmstart", vmid, |ctx, task| {
        let vm = ctx.locked(|c| {
            let vm = c.need_vm(vmid)?;
            if vm.is_template() {
                return Err(CmdError::die("you can't start a vm if it's a template"));
            }
            if !skip && vm.lock() != Some("suspended") {
                vm_locked(&vm)?;
            }
            if vm.is_running() {
                return Err(CmdError::die(format!("VM {vmid} already running")));
            }
            let mut probe = vm.clone();
            probe.conf = vm.merged();
            if probe.cpus() > u64::from(c.node.host_cpus) {
                return Err(CmdError::die(format!(
                    "MAX {} vcpus allowed per VM on this node",
                    c.node.host_cpus
                )));
            }
            Ok(vm)
        })?;
        if vm.has_cloudinit_drive() {
            task.say("generating cloud-init ISO")?;
        }
        task.run_phase(ctx, "start")?;
        ctx.modify_vm(vmid, |_, vm| {
            vm.apply_pending();
            if vm.lock() == Some("suspended") {
                vm.conf.remove("lock");
            }
            vm.mark_running();
            Ok(())
        })
    })
}

fn stop(ctx: &mut Ctx, args: &[String]) -> CmdResult {
    let a = opts::parse(
        &power_spec(&[
            ("skiplock", T::Bool),
            ("timeout", T::Int),
            ("keepActive", T::Bool),
            ("overrule-shutdown", T::Bool),
        ]),
        args,
    )?;
    let vmid = pvmid(&a)?;
    let skip = a.flag("skiplock", false);
    ctx.fail_before()?;
    ctx.locked(|c| {
        c.find_vm(vmid)?;
        c.check_quorum()
    })?;
    run_vm_task(ctx, "qmstop", vmid, |ctx, task| {
        let running = ctx.locked(|c| {
            let vm = c.find_vm(vmid)?;
            if !skip {
                vm_locked(&vm)?;
            }
            Ok(vm.is_running())
        })?;
        if !running {
            return Ok(());
        }
        task.run_phase(ctx, "stop")?;
        set_stopped(ctx, vmid)
    })
}

fn set_stopped(ctx: &Ctx, vmid: u32) -> Result<(), CmdError> {
    ctx.locked(|c| {
        let mut vm = c.find_vm(vmid)?;
        vm.mark_stopped();
        vm.started_ms = 0;
        c.save_vm(&vm)
    })
}

fn shutdown(ctx: &mut Ctx, args: &[String]) -> CmdResult {
    let a = opts::parse(
        &power_spec(&[
            ("skiplock", T::Bool),
            ("timeout", T::Int),
            ("forceStop", T::Bool),
            ("keepActive", T::Bool),
        ]),
        args,
    )?;
    let vmid = pvmid(&a)?;
    let skip = a.flag("skiplock", false);
    let force = a.flag("forceStop", false);
    let timeout_s: u64 = a.get("timeout").and_then(|t| t.parse().ok()).unwrap_or(60);
    ctx.fail_before()?;
    let vm = ctx.locked(|c| c.find_vm(vmid))?;
    ctx.check_quorum()?;
    if !vm.is_running() {
        crate::errln(&format!("VM {vmid} not running"));
    }
    run_vm_task(ctx, "qmshutdown", vmid, |ctx, task| {
        let vm = ctx.locked(|c| {
            let vm = c.find_vm(vmid)?;
            if !skip {
                vm_locked(&vm)?;
            }
            Ok(vm)
        })?;
        if !vm.is_running() {
            return Ok(());
        }
        if vm.qmpstatus == "paused" {
            if !force {
                return Err(CmdError::die("VM is paused - cannot shutdown"));
            }
            task.say("VM is paused - stop instead of shutdown")?;
            return set_stopped(ctx, vmid);
        }
        if ctx.faults.shutdown_ignored.contains(&vmid) {
            task.work(ctx, timeout_s * 1000, &[])?;
            if !force {
                return Err(CmdError::die("VM quit/powerdown failed - got timeout"));
            }
            task.say("VM still running - terminating now with SIGTERM")?;
            return set_stopped(ctx, vmid);
        }
        task.run_phase(ctx, "shutdown")?;
        set_stopped(ctx, vmid)
    })
}

fn reboot(ctx: &mut Ctx, args: &[String]) -> CmdResult {
    let a = opts::parse(&power_spec(&[("timeout", T::Int)]), args)?;
    let vmid = pvmid(&a)?;
    ctx.fail_before()?;
    ctx.locked(|c| {
        let vm = c.find_vm(vmid)?;
        if !vm.is_running() {
            return Err(CmdError::die(format!("VM {vmid} not running")));
        }
        vm_locked(&vm)?;
        if vm.qmpstatus == "paused" {
            return Err(CmdError::die("VM is paused - cannot shutdown"));
        }
        Ok(())
    })?;
    run_vm_task(ctx, "qmreboot", vmid, |ctx, task| {
        let d = ctx
            .faults
            .duration("reboot")
            .max(ctx.faults.duration("shutdown") + ctx.faults.duration("start"));
        task.work(ctx, d, &[])?;
        ctx.fail_task()?;
        ctx.modify_vm(vmid, |_, vm| {
            vm.apply_pending();
            vm.started_ms = util::now_ms();
            vm.qmpstatus = "running".into();
            Ok(())
        })
    })
}

fn simple_power(ctx: &mut Ctx, cmd: &str, args: &[String]) -> CmdResult {
    let a = opts::parse(
        &power_spec(&[
            ("skiplock", T::Bool),
            ("todisk", T::Bool),
            ("statestorage", T::Str),
            ("nocheck", T::Bool),
        ]),
        args,
    )?;
    let vmid = pvmid(&a)?;
    ctx.fail_before()?;
    let _g = ctx.lock()?;
    let mut vm = ctx.find_vm(vmid)?;
    if !vm.is_running() {
        return Err(CmdError::die(format!("VM {vmid} not running")));
    }
    let skip = a.flag("skiplock", false);
    match cmd {
        "reset" => {
            if !skip {
                vm_locked(&vm)?;
            }
            vm.started_ms = util::now_ms();
        }
        "suspend" => {
            if !skip && vm.lock() != Some("backup") {
                vm_locked(&vm)?;
            }
            vm.qmpstatus = "paused".into();
        }
        _ => {
            if vm.qmpstatus == "paused" {
                vm.qmpstatus = "running".into();
            }
        }
    }
    ctx.save_vm(&vm)?;
    Ok(0)
}

// ---------------------------------------------------------------- status/config/list

/// vmstatus JSON object (§3.1; `full` adds the §3.2 fields).
pub fn vm_status_json(ctx: &Ctx, vm: &Vm, full: bool) -> Value {
    let running = vm.is_running();
    let maxmem = vm.memory_mib() * (1 << 20);
    let cpus = vm.cpus().min(u64::from(ctx.node.host_cpus));
    let mut m = Map::new();
    m.insert("vmid".into(), json!(vm.vmid));
    m.insert(
        "status".into(),
        json!(if running { "running" } else { "stopped" }),
    );
    m.insert("name".into(), json!(vm.display_name()));
    m.insert("cpus".into(), json!(cpus));
    m.insert("maxmem".into(), json!(maxmem));
    m.insert("maxdisk".into(), json!(vm.maxdisk()));
    m.insert("mem".into(), json!(if running { maxmem / 4 } else { 0 }));
    m.insert("disk".into(), json!(0));
    m.insert("netin".into(), json!(0));
    m.insert("netout".into(), json!(0));
    let uptime = if running {
        (util::now_ms().saturating_sub(vm.started_ms)) / 1000
    } else {
        0
    };
    m.insert("uptime".into(), json!(uptime));
    m.insert("cpu".into(), if running { json!(0.01) } else { json!(0) });
    if running {
        m.insert("pid".into(), json!(vm.pid()));
    }
    if let Some(l) = vm.lock() {
        m.insert("lock".into(), json!(l));
    }
    if let Some(t) = vm.conf.get("tags") {
        m.insert("tags".into(), json!(t));
    }
    if vm.is_template() {
        m.insert("template".into(), json!(1));
    }
    if full {
        m.insert(
            "qmpstatus".into(),
            json!(if running {
                vm.qmpstatus.as_str()
            } else {
                "stopped"
            }),
        );
        m.insert("ha".into(), json!({"managed": 0}));
        m.insert(
            "memhost".into(),
            json!(if running { maxmem / 4 } else { 0 }),
        );
        if agent_enabled(vm) {
            m.insert("agent".into(), json!(1));
        }
        if running {
            m.insert("running-machine".into(), json!("pc-i440fx-9.2+pve1"));
            m.insert("running-qemu".into(), json!("9.2.0"));
            m.insert("diskread".into(), json!(0));
            m.insert("diskwrite".into(), json!(0));
        }
    }
    Value::Object(m)
}

fn agent_enabled(vm: &Vm) -> bool {
    vm.conf.get("agent").is_some_and(|a| {
        let f = a.split(',').next().unwrap_or("");
        opts::parse_bool(f.strip_prefix("enabled=").unwrap_or(f)) == Some(true)
    })
}

fn status(ctx: &mut Ctx, args: &[String]) -> CmdResult {
    let a = opts::parse(&power_spec(&[("verbose", T::Bool)]), args)?;
    let vmid = pvmid(&a)?;
    ctx.fail_before()?;
    let vm = ctx.locked(|c| c.need_vm(vmid))?;
    let st = vm_status_json(ctx, &vm, true);
    if a.flag("verbose", false) {
        if let Value::Object(m) = st {
            for (k, v) in m {
                if k == "cpu" {
                    continue;
                }
                match v {
                    Value::Object(inner) => {
                        outln(&format!("{k}:"));
                        for (ik, iv) in inner {
                            outln(&format!("\t{ik}: {}", scalar(&iv)));
                        }
                    }
                    other => outln(&format!("{k}: {}", scalar(&other))),
                }
            }
        }
    } else {
        let s = st
            .get("qmpstatus")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        outln(&format!("status: {s}"));
    }
    Ok(0)
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn config(ctx: &mut Ctx, args: &[String]) -> CmdResult {
    let a = opts::parse(
        &power_spec(&[("current", T::Bool), ("snapshot", T::Str)]),
        args,
    )?;
    let vmid = pvmid(&a)?;
    ctx.fail_before()?;
    let vm = ctx.locked(|c| c.need_vm(vmid))?;
    let conf = match a.get("snapshot") {
        Some(s) => vm
            .snapshots
            .get(s)
            .map(|x| x.conf.clone())
            .ok_or_else(|| CmdError::die(format!("snapshot '{s}' does not exist")))?,
        None if a.flag("current", false) => vm.conf.clone(),
        None => vm.merged(),
    };
    crate::out(&render_conf(&conf));
    Ok(0)
}

fn pending(ctx: &mut Ctx, args: &[String]) -> CmdResult {
    let a = opts::parse(&power_spec(&[]), args)?;
    let vmid = pvmid(&a)?;
    let vm = ctx.locked(|c| c.need_vm(vmid))?;
    let mut keys: Vec<&String> = vm.conf.keys().chain(vm.pending.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let show = |v: &String| {
            if k == "description" {
                util::encode_text(v)
            } else {
                v.clone()
            }
        };
        match (vm.conf.get(k), vm.pending.get(k)) {
            (Some(c), _) if vm.pending_delete.contains(k) => {
                outln(&format!("del {k}: {}", show(c)))
            }
            (Some(c), Some(n)) => {
                outln(&format!("cur {k}: {}", show(c)));
                outln(&format!("new {k}: {}", show(n)));
            }
            (Some(c), None) => outln(&format!("cur {k}: {}", show(c))),
            (None, Some(n)) => outln(&format!("new {k}: {}", show(n))),
            _ => {}
        }
    }
    Ok(0)
}

fn list(ctx: &mut Ctx, args: &[String]) -> CmdResult {
    let a = opts::parse(&Spec::new(&[], &[("full", T::Bool)]), args)?;
    ctx.fail_before()?;
    let _g = ctx.lock()?;
    let ids = ctx.vmids();
    let mut first = true;
    for id in ids {
        let Some(vm) = ctx.load_vm(id)? else { continue };
        if first {
            outln(&format!(
                "{:>10} {:<20} {:<10} {:<10} {:>12} {:<10}",
                "VMID", "NAME", "STATUS", "MEM(MB)", "BOOTDISK(GB)", "PID"
            ));
            first = false;
        }
        let st = if a.flag("full", false) && vm.is_running() {
            vm.qmpstatus.clone()
        } else {
            vm.status.clone()
        };
        outln(&format!(
            "{:>10} {:<20} {:<10} {:<10} {:>12.2} {:<10}",
            id,
            vm.display_name(),
            st,
            vm.memory_mib(),
            vm.maxdisk() as f64 / (1u64 << 30) as f64,
            if vm.is_running() { vm.pid() } else { 0 }
        ));
    }
    Ok(0)
}

fn unlock(ctx: &mut Ctx, args: &[String]) -> CmdResult {
    let a = opts::parse(&power_spec(&[]), args)?;
    let vmid = pvmid(&a)?;
    ctx.fail_before()?;
    ctx.flock_vm(vmid)?;
    ctx.modify_vm(vmid, |_, vm| {
        vm.conf.remove("lock");
        Ok(())
    })?;
    Ok(0)
}

// ---------------------------------------------------------------- destroy

fn destroy(ctx: &mut Ctx, args: &[String]) -> CmdResult {
    let a = opts::parse(
        &power_spec(&[
            ("purge", T::Bool),
            ("destroy-unreferenced-disks", T::Bool),
            ("skiplock", T::Bool),
        ]),
        args,
    )?;
    let vmid = pvmid(&a)?;
    let skip = a.flag("skiplock", false);
    let purge = a.flag("purge", false);
    let unref = a.flag("destroy-unreferenced-disks", false);
    ctx.fail_before()?;
    ctx.locked(|c| destroy_checks(c, vmid, &c.need_vm(vmid)?))?;
    run_vm_task(ctx, "qmdestroy", vmid, |ctx, task| {
        let volids = ctx.modify_vm(vmid, |c, vm| {
            destroy_checks(c, vmid, vm)?;
            if !skip && vm.lock() != Some("suspended") {
                vm_locked(vm)?;
            }
            let vols = c.volumes();
            let mut volids: Vec<String> = Vec::new();
            let mut confs = vec![vm.conf.clone(), vm.pending.clone()];
            confs.extend(vm.snapshots.values().map(|s| s.conf.clone()));
            for c in &confs {
                for (k, v) in c {
                    if is_drive_key(k) || k.starts_with("unused") || k == "vmstate" {
                        let d = Drive::parse(v);
                        if vols.get(&d.volid).is_some_and(|x| x.vmid == vmid)
                            && !volids.contains(&d.volid)
                        {
                            volids.push(d.volid);
                        }
                    }
                }
            }
            if vm.is_template() {
                for v in &volids {
                    let prefix = format!("{v}/");
                    if vols.keys().any(|k| k.starts_with(&prefix)) {
                        return Err(CmdError::die(format!(
                            "base volume '{v}' is still in use by linked cloned"
                        )));
                    }
                }
            }
            if unref {
                for (k, v) in &vols {
                    if v.vmid == vmid && !volids.contains(k) {
                        volids.push(k.clone());
                    }
                }
            }
            vm.conf = BTreeMap::from([("lock".to_string(), "destroyed".to_string())]);
            vm.pending.clear();
            vm.snapshots.clear();
            Ok(volids)
        })?;
        task.run_phase(ctx, "destroy")?;
        let _g = ctx.lock()?;
        for v in &volids {
            if ctx.on_lvm(v.split(':').next().unwrap_or("")) {
                task.say(&format!(
                    "  Logical volume \"{}\" successfully removed.",
                    lv_name(v)
                ))?;
            }
        }
        ctx.free_volumes(&volids)?;
        if purge {
            task.say(&format!("purging VM {vmid} from related configurations.."))?;
        }
        ctx.delete_vm(vmid);
        Ok(())
    })
}

/// What `qm destroy` refuses before and again inside its task.
fn destroy_checks(ctx: &Ctx, vmid: u32, vm: &Vm) -> Result<(), CmdError> {
    if vm.conf.get("protection").map(String::as_str) == Some("1") {
        return Err(CmdError::die(format!(
            "can't remove VM {vmid} - protection mode enabled"
        )));
    }
    if vm.is_running() {
        return Err(CmdError::die(format!(
            "VM {vmid} is running - destroy failed"
        )));
    }
    ctx.check_quorum()
}

// ---------------------------------------------------------------- guest agent

/// Deterministic documentation-range IPv4 of a VM (data only).
pub fn vm_ipv4(vmid: u32) -> String {
    format!("10.77.{}.{}", (vmid / 254) % 256, vmid % 254 + 1)
}

/// Agent mode for a VM: `normal`, `never`, `no_ipv4`.
fn agent_mode(ctx: &Ctx, vmid: u32) -> String {
    ctx.faults
        .agent_mode_by_vmid
        .get(&vmid.to_string())
        .cloned()
        .unwrap_or_else(|| ctx.faults.agent_mode.clone())
}

/// Run the agent preconditions and a command; returns the `result` value.
pub fn agent_call(ctx: &Ctx, vmid: u32, command: &str) -> Result<Value, CmdError> {
    let vm = ctx.locked(|c| c.need_vm(vmid))?;
    if !vm.conf.contains_key("agent") {
        return Err(CmdError::die("No QEMU guest agent configured"));
    }
    if !vm.is_running() {
        return Err(CmdError::die(format!("VM {vmid} is not running")));
    }
    let up_ms = util::now_ms().saturating_sub(vm.started_ms);
    let mode = agent_mode(ctx, vmid);
    let ready_at = ctx
        .faults
        .agent_ready_ms
        .unwrap_or(ctx.faults.agent_ip_delay_ms);
    if !agent_enabled(&vm) || mode == "never" || up_ms < ready_at || vm.qmpstatus != "running" {
        std::thread::sleep(std::time::Duration::from_millis(
            ctx.faults.agent_timeout_ms,
        ));
        return Err(CmdError::die("QEMU guest agent is not running"));
    }
    let mac = vm
        .conf
        .get("net0")
        .map(|n| {
            Drive::parse(n)
                .volid
                .split_once('=')
                .map(|x| x.1.to_lowercase())
                .unwrap_or_default()
        })
        .unwrap_or_else(|| "bc:24:11:00:00:00".into());
    let stats = json!({"rx-bytes": 0, "rx-dropped": 0, "rx-errs": 0, "rx-packets": 0,
        "tx-bytes": 0, "tx-dropped": 0, "tx-errs": 0, "tx-packets": 0});
    let hostname = vm
        .conf
        .get("name")
        .map(|n| n.split('.').next().unwrap_or("").to_string())
        .unwrap_or_else(|| format!("VM{vmid}"));
    Ok(match command {
        "ping" | "fsfreeze-freeze" | "fsfreeze-thaw" | "shutdown" | "fstrim" => json!({}),
        "fsfreeze-status" => json!("thawed"),
        "get-host-name" => json!({"host-name": hostname}),
        "get-osinfo" => {
            json!({"id": "ubuntu", "kernel-release": "6.8.0-31-generic", "machine": "x86_64", "name": "Ubuntu", "pretty-name": "Ubuntu 24.04 LTS", "version": "24.04 LTS (Noble Numbat)", "version-id": "24.04"})
        }
        "info" => json!({"version": "8.2.2", "supported_commands": []}),
        "get-time" => json!(util::now_ms() * 1_000_000),
        "network-get-interfaces" => {
            let mut addrs = Vec::new();
            if mode != "no_ipv4" && up_ms >= ctx.faults.agent_ip_delay_ms {
                addrs.push(
                    json!({"ip-address": vm_ipv4(vmid), "ip-address-type": "ipv4", "prefix": 24}),
                );
            }
            let m: Vec<&str> = mac.split(':').collect();
            let ll = if m.len() == 6 {
                format!(
                    "fe80::{:x}{}:{}ff:fe{}:{}{}",
                    u8::from_str_radix(m[0], 16).unwrap_or(0) ^ 2,
                    m[1],
                    m[2],
                    m[3],
                    m[4],
                    m[5]
                )
            } else {
                "fe80::1".into()
            };
            addrs.push(json!({"ip-address": ll, "ip-address-type": "ipv6", "prefix": 64}));
            json!([
                {"hardware-address": "00:00:00:00:00:00", "name": "lo", "statistics": stats,
                 "ip-addresses": [
                    {"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8},
                    {"ip-address": "::1", "ip-address-type": "ipv6", "prefix": 128}]},
                {"hardware-address": mac, "name": "eth0", "statistics": stats, "ip-addresses": addrs}
            ])
        }
        other => {
            return Err(CmdError::param(
                "command",
                format!(
                    "value '{other}' does not have a value in the enumeration 'fsfreeze-freeze, fsfreeze-status, fsfreeze-thaw, fstrim, get-fsinfo, get-host-name, get-memory-block-info, get-memory-blocks, get-osinfo, get-time, get-timezone, get-users, get-vcpus, info, network-get-interfaces, ping, shutdown, suspend-disk, suspend-hybrid, suspend-ram'"
                ),
            ));
        }
    })
}

fn guest(ctx: &mut Ctx, args: &[String]) -> CmdResult {
    let a = opts::parse(&Spec::new(&["vmid", "command"], &[]), args)?;
    let vmid = pvmid(&a)?;
    ctx.fail_before()?;
    let r = agent_call(ctx, vmid, a.p("command"))?;
    let empty = match &r {
        Value::Object(m) => m.is_empty(),
        Value::Null => true,
        _ => false,
    };
    if !empty {
        crate::out(&util::perl_pretty(&r));
    }
    Ok(0)
}

// ---------------------------------------------------------------- snapshots

fn check_snapname(name: &str) -> Result<(), CmdError> {
    if name == "current" || name == "pending" {
        return Err(CmdError::die(format!(
            "unable to use snapshot name '{name}' (reserved name)"
        )));
    }
    let ok = name.len() >= 2
        && name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        return Err(CmdError::param(
            "snapname",
            format!("invalid format - invalid configuration ID '{name}'"),
        ));
    }
    Ok(())
}

fn snapshot(ctx: &mut Ctx, args: &[String]) -> CmdResult {
    let a = opts::parse(
        &Spec::new(
            &["vmid", "snapname"],
            &[("vmstate", T::Bool), ("description", T::Str)],
        ),
        args,
    )?;
    let vmid = pvmid(&a)?;
    let name = a.p("snapname").to_string();
    check_snapname(&name)?;
    let vmstate = a.flag("vmstate", false);
    let desc = a.get("description").unwrap_or("").to_string();
    ctx.fail_before()?;
    ctx.locked(|c| c.need_vm(vmid))?;
    run_vm_task(ctx, "qmsnapshot", vmid, |ctx, task| {
        ctx.modify_vm(vmid, |c, vm| {
            if vm.is_template() {
                return Err(CmdError::die(
                    "you can't take a snapshot if it's a template",
                ));
            }
            vm_locked(vm)?;
            if vm.snapshots.contains_key(&name) {
                return Err(CmdError::die(format!(
                    "snapshot name '{name}' already used"
                )));
            }
            for k in Vm::disk_keys(&vm.conf) {
                let d = Drive::parse(&vm.conf[&k]);
                if d.is_cdrom() {
                    continue;
                }
                let ok = d.storage().and_then(|s| c.storage(s)).is_some_and(|s| {
                    matches!(s.kind.as_str(), "lvmthin" | "zfspool" | "rbd")
                        || d.volid.ends_with(".qcow2")
                });
                if !ok {
                    return Err(CmdError::die("snapshot feature is not available"));
                }
            }
            vm.conf.insert("lock".into(), "snapshot".into());
            Ok(())
        })?;
        let res = task.run_phase(ctx, "snapshot");
        ctx.modify_vm(vmid, |_, vm| {
            vm.conf.remove("lock");
            if res.is_ok() {
                let mut conf = vm.conf.clone();
                conf.remove("parent");
                let parent = vm.conf.get("parent").cloned();
                vm.snapshots.insert(
                    name.clone(),
                    Snapshot {
                        conf,
                        snaptime: util::now_secs(),
                        description: desc.clone(),
                        vmstate: vmstate && vm.is_running(),
                        parent,
                    },
                );
                vm.conf.insert("parent".into(), name.clone());
            }
            Ok(())
        })?;
        res
    })
}

fn rollback(ctx: &mut Ctx, args: &[String]) -> CmdResult {
    let a = opts::parse(
        &Spec::new(&["vmid", "snapname"], &[("start", T::Bool)]),
        args,
    )?;
    let vmid = pvmid(&a)?;
    let name = a.p("snapname").to_string();
    let start = a.flag("start", false);
    ctx.fail_before()?;
    ctx.locked(|c| c.need_vm(vmid))?;
    run_vm_task(ctx, "qmrollback", vmid, |ctx, task| {
        ctx.modify_vm(vmid, |_, vm| {
            let Some(snap) = vm.snapshots.get(&name) else {
                return Err(CmdError::die(format!("snapshot '{name}' does not exist")));
            };
            if let Some(state) = snap.conf.get("snapstate") {
                return Err(CmdError::die(format!(
                    "unable to rollback to incomplete snapshot (snapstate = {state})"
                )));
            }
            if vm.is_template() {
                return Err(CmdError::die("you can't rollback if vm is a template"));
            }
            vm_locked(vm)?;
            vm.conf.insert("lock".into(), "rollback".into());
            Ok(())
        })?;
        task.run_phase(ctx, "rollback")?;
        ctx.modify_vm(vmid, |_, vm| {
            let snap = vm.snapshots.get(&name).cloned().unwrap_or_default();
            vm.conf = snap.conf;
            vm.conf.insert("parent".into(), name.clone());
            vm.pending.clear();
            vm.pending_delete.clear();
            if snap.vmstate || start {
                vm.mark_running();
            } else {
                vm.mark_stopped();
            }
            Ok(())
        })
    })
}

fn delsnapshot(ctx: &mut Ctx, args: &[String]) -> CmdResult {
    let a = opts::parse(
        &Spec::new(&["vmid", "snapname"], &[("force", T::Bool)]),
        args,
    )?;
    let vmid = pvmid(&a)?;
    let name = a.p("snapname").to_string();
    ctx.fail_before()?;
    ctx.locked(|c| c.need_vm(vmid))?;
    run_vm_task(ctx, "qmdelsnapshot", vmid, |ctx, task| {
        ctx.modify_vm(vmid, |_, vm| {
            if !vm.snapshots.contains_key(&name) {
                return Err(CmdError::die(format!("snapshot '{name}' does not exist")));
            }
            vm_locked(vm)?;
            vm.conf.insert("lock".into(), "snapshot-delete".into());
            Ok(())
        })?;
        task.run_phase(ctx, "delsnapshot")?;
        ctx.modify_vm(vmid, |_, vm| {
            let parent = vm.snapshots.get(&name).and_then(|s| s.parent.clone());
            vm.snapshots.remove(&name);
            for s in vm.snapshots.values_mut() {
                if s.parent.as_deref() == Some(name.as_str()) {
                    s.parent = parent.clone();
                }
            }
            if vm.conf.get("parent") == Some(&name) {
                match &parent {
                    Some(p) => vm.conf.insert("parent".into(), p.clone()),
                    None => vm.conf.remove("parent"),
                };
            }
            vm.conf.remove("lock");
            Ok(())
        })
    })
}

fn listsnapshot(ctx: &mut Ctx, args: &[String]) -> CmdResult {
    let a = opts::parse(&power_spec(&[]), args)?;
    let vmid = pvmid(&a)?;
    ctx.fail_before()?;
    let vm = ctx.locked(|c| c.need_vm(vmid))?;
    fn walk(vm: &Vm, parent: Option<&str>, level: usize, out: &mut String) {
        let mut kids: Vec<(&String, &Snapshot)> = vm
            .snapshots
            .iter()
            .filter(|(_, s)| s.parent.as_deref() == parent)
            .collect();
        kids.sort_by_key(|(n, s)| (s.snaptime, (*n).clone()));
        for (n, s) in kids {
            let prefix = format!("{}`->", " ".repeat(level));
            let w = 30usize.saturating_sub(prefix.len());
            let desc = s
                .description
                .lines()
                .next()
                .filter(|d| !d.is_empty())
                .unwrap_or("no-description");
            out.push_str(&format!(
                "{prefix} {n:<w$} {:<23} {desc}\n",
                util::fmt_local(s.snaptime)
            ));
            walk(vm, Some(n), level + 1, out);
        }
        if parent == vm.conf.get("parent").map(String::as_str) {
            let prefix = format!("{}`->", " ".repeat(level));
            let w = 30usize.saturating_sub(prefix.len());
            out.push_str(&format!(
                "{prefix} {:<w$} {:<23} You are here!\n",
                "current", ""
            ));
        }
    }
    let mut s = String::new();
    walk(&vm, None, 0, &mut s);
    crate::out(&s);
    Ok(0)
}

// ---------------------------------------------------------------- template

fn template(ctx: &mut Ctx, args: &[String]) -> CmdResult {
    let a = opts::parse(&power_spec(&[("disk", T::Str)]), args)?;
    let vmid = pvmid(&a)?;
    ctx.fail_before()?;
    ctx.flock_vm(vmid)?;
    ctx.modify_vm(vmid, |_, vm| {
        vm_locked(vm)?;
        if !vm.snapshots.is_empty() {
            return Err(CmdError::die(
                "unable to create template, because VM contains snapshots",
            ));
        }
        if vm.is_template() {
            return Err(CmdError::die("you can't convert a template to a template"));
        }
        if vm.is_running() {
            return Err(CmdError::die(
                "you can't convert a VM to template if VM is running",
            ));
        }
        vm.conf.insert("template".into(), "1".into());
        Ok(())
    })?;
    // No $upid_exit hook for template: exit 0 even on failure.
    Task::run(ctx, "qmtemplate", &vmid.to_string(), 0, |ctx, task| {
        task.run_phase(ctx, "template")?;
        ctx.modify_vm(vmid, |c, vm| {
            let mut vols = c.volumes();
            for k in Vm::disk_keys(&vm.conf) {
                let mut d = Drive::parse(&vm.conf[&k]);
                if d.is_cdrom() || d.is_cloudinit() {
                    continue;
                }
                let Some((sid, name)) = d
                    .volid
                    .split_once(':')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                else {
                    continue;
                };
                if let Some(rest) = name.strip_prefix(&format!("vm-{vmid}-")) {
                    let newname = format!("base-{vmid}-{rest}");
                    task.say(&format!(
                        "  Renamed \"{name}\" to \"{newname}\" in volume group \"pve\""
                    ))?;
                    task.say(&format!("  Logical volume pve/{newname} changed."))?;
                    let newvol = format!("{sid}:{newname}");
                    if let Some(v) = vols.remove(&d.volid) {
                        vols.insert(newvol.clone(), v);
                    }
                    d.volid = newvol;
                    vm.conf.insert(k, d.render());
                }
            }
            c.save_volumes(&vols)
        })
    })
}

// ---------------------------------------------------------------- cloud-init

/// Generated cloud-init data (`user`, `network`, `meta`).
pub fn cloudinit_dump(vm: &Vm, kind: &str) -> String {
    let c = &vm.conf;
    let name = c.get("name").cloned();
    let hostname = name
        .as_deref()
        .map(|n| n.split('.').next().unwrap_or("").to_string())
        .unwrap_or_else(|| format!("VM{}", vm.vmid));
    let full = name.clone().unwrap_or_else(|| hostname.clone());
    let fqdn = if full.contains('.') {
        full
    } else if let Some(sd) = c
        .get("searchdomain")
        .and_then(|s| opts::split_list(s).into_iter().next())
    {
        format!("{full}.{sd}")
    } else {
        full
    };
    match kind {
        "user" => {
            let mut s = format!(
                "#cloud-config\nhostname: {hostname}\nmanage_etc_hosts: true\nfqdn: {fqdn}\n"
            );
            let user = c.get("ciuser").cloned();
            if let Some(u) = &user {
                s.push_str(&format!("user: {u}\n"));
            }
            if let Some(p) = c.get("cipassword") {
                s.push_str(&format!("password: {p}\n"));
            }
            if let Some(k) = c.get("sshkeys") {
                s.push_str("ssh_authorized_keys:\n");
                for l in util::uri_unescape(k)
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                {
                    s.push_str(&format!("  - {l}\n"));
                }
            }
            s.push_str("chpasswd:\n  expire: False\n");
            if user.as_deref() != Some("root") {
                s.push_str("users:\n  - default\n");
            }
            if c.get("ciupgrade").map(String::as_str) != Some("0") {
                s.push_str("package_upgrade: true\n");
            }
            s
        }
        "network" => {
            let mut s = String::from("version: 1\nconfig:\n");
            for i in 0..32 {
                let (Some(net), Some(ipc)) =
                    (c.get(&format!("net{i}")), c.get(&format!("ipconfig{i}")))
                else {
                    continue;
                };
                let mac = Drive::parse(net)
                    .volid
                    .split_once('=')
                    .map(|x| x.1.to_lowercase())
                    .unwrap_or_default();
                s.push_str(&format!("    - type: physical\n      name: eth{i}\n      mac_address: '{mac}'\n      subnets:\n"));
                for part in ipc.split(',') {
                    match part.split_once('=') {
                        Some(("ip", "dhcp")) => s.push_str("      - type: dhcp4\n"),
                        Some(("ip", cidr)) => {
                            let (ip, pfx) = cidr.split_once('/').unwrap_or((cidr, "24"));
                            let p: u32 = pfx.parse().unwrap_or(24);
                            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
                            s.push_str(&format!(
                                "      - type: static\n        address: '{ip}'\n        netmask: '{}.{}.{}.{}'\n",
                                mask >> 24, (mask >> 16) & 255, (mask >> 8) & 255, mask & 255
                            ));
                            if let Some(gw) = ipc.split(',').find_map(|x| x.strip_prefix("gw=")) {
                                s.push_str(&format!("        gateway: '{gw}'\n"));
                            }
                        }
                        Some(("ip6", "dhcp")) => s.push_str("      - type: dhcp6\n"),
                        _ => {}
                    }
                }
            }
            let ns = c
                .get("nameserver")
                .map(|n| opts::split_list(n))
                .unwrap_or_default();
            let sd = c
                .get("searchdomain")
                .map(|n| opts::split_list(n))
                .unwrap_or_default();
            if !ns.is_empty() || !sd.is_empty() {
                s.push_str("    - type: nameserver\n      address:\n");
                for n in ns {
                    s.push_str(&format!("      - '{n}'\n"));
                }
                s.push_str("      search:\n");
                for n in sd {
                    s.push_str(&format!("      - '{n}'\n"));
                }
            }
            s
        }
        _ => {
            let id = util::sha1_hex(format!("{}{}", vm.vmid, render_conf(c)).as_bytes());
            format!("instance-id: {id}\n")
        }
    }
}

fn cloudinit(ctx: &mut Ctx, args: &[String]) -> CmdResult {
    let sub = args.first().map(String::as_str).unwrap_or("");
    let rest = args.get(1..).unwrap_or(&[]);
    match sub {
        "dump" => {
            let a = opts::parse(&Spec::new(&["vmid", "type"], &[]), rest)?;
            let vmid = pvmid(&a)?;
            let t = a.p("type");
            if !matches!(t, "user" | "network" | "meta") {
                return Err(CmdError::param(
                    "type",
                    format!(
                        "value '{t}' does not have a value in the enumeration 'user, network, meta'"
                    ),
                ));
            }
            ctx.fail_before()?;
            let vm = ctx.locked(|c| c.need_vm(vmid))?;
            let mut v2 = vm.clone();
            v2.conf = vm.merged();
            crate::out(&cloudinit_dump(&v2, t));
            Ok(0)
        }
        "update" => {
            let a = opts::parse(&power_spec(&[]), rest)?;
            let vmid = pvmid(&a)?;
            ctx.fail_before()?;
            let vm = ctx.locked(|c| c.need_vm(vmid))?;
            vm_locked(&vm)?;
            if vm.has_cloudinit_drive() {
                outln("generating cloud-init ISO");
            }
            Ok(0)
        }
        "pending" => pending(ctx, rest),
        other => Err(unknown(&format!("cloudinit {other}"))),
    }
}
