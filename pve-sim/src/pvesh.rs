//! `pvesh` (get/set/create/delete on a subset of API paths) and `pvesm free`.

use std::path::PathBuf;

use serde_json::{Map, Value, json};

use crate::err::{CmdError, CmdResult};
use crate::opts::{self, Spec, T};
use crate::qm::{self, SshKeysMode};
use crate::state::{self, Ctx, Vm};
use crate::task::Task;
use crate::util;
use crate::{Resolved, outln};

const GET_OPTS: &[(&str, T)] = &[
    ("output-format", T::Str),
    ("noproxy", T::Bool),
    ("human-readable", T::Bool),
    ("noborder", T::Bool),
    ("noheader", T::Bool),
    ("quiet", T::Bool),
    ("vmid", T::Str),
    ("type", T::Str),
    ("full", T::Bool),
    ("current", T::Bool),
    ("snapshot", T::Str),
    ("content", T::Str),
    ("source", T::Str),
    ("typefilter", T::Str),
    ("errors", T::Bool),
    ("since", T::Int),
    ("until", T::Int),
    ("limit", T::Int),
    ("start", T::Int),
    ("userfilter", T::Str),
    ("statusfilter", T::Str),
    ("delay", T::Int),
];

/// Determine the command key of a `pvesh` invocation.
pub fn resolve(args: &[String]) -> Result<Resolved, CmdError> {
    let verb = args.first().map(String::as_str).unwrap_or("");
    if !matches!(verb, "get" | "set" | "create" | "delete" | "ls" | "usage") {
        return Err(CmdError::die(format!(
            "ERROR: unknown command 'pvesh {verb}'\nUSAGE: pvesh <COMMAND> [ARGS] [OPTIONS]\n       pvesh create <api_path> [OPTIONS] [FORMAT_OPTIONS]\n       pvesh delete <api_path> [OPTIONS] [FORMAT_OPTIONS]\n       pvesh get <api_path> [OPTIONS] [FORMAT_OPTIONS]\n       pvesh ls <api_path> [OPTIONS] [FORMAT_OPTIONS]\n       pvesh set <api_path> [OPTIONS] [FORMAT_OPTIONS]\n       pvesh usage <api_path> [OPTIONS]"
        )));
    }
    Ok(Resolved {
        key: "pvesh".into(),
        usage: format!("pvesh {verb} <api_path> [OPTIONS] [FORMAT_OPTIONS]"),
    })
}

/// `pvesm` resolution (only `free` is simulated).
pub fn resolve_pvesm(args: &[String]) -> Result<Resolved, CmdError> {
    match args.first().map(String::as_str) {
        Some("free") => Ok(Resolved {
            key: "pvesm".into(),
            usage: "pvesm free <volume> [OPTIONS]".into(),
        }),
        other => Err(CmdError::die(format!(
            "ERROR: unknown command 'pvesm {}'\nUSAGE: pvesm <COMMAND> [ARGS] [OPTIONS]\n       pvesm free <volume> [OPTIONS]",
            other.unwrap_or("")
        ))),
    }
}

/// Run `pvesm free <volid>`.
///
/// As in pve-storage, `free` has no output handler in pvesm's command table: the deletion runs
/// as an `imgdel` worker task, its error goes to stderr and the command exits 0 even when the
/// task fails (§0.2). Only option errors and an unknown storage fail before the task (255).
pub fn run_pvesm(ctx: &mut Ctx, args: &[String]) -> CmdResult {
    let a = opts::parse(
        &Spec::new(&["volume"], &[("storage", T::Str), ("delay", T::Int)]),
        &args[1..],
    )?;
    ctx.fail_before()?;
    let vol = a.p("volume").to_string();
    let (sid, name) = match vol.split_once(':') {
        Some((s, n)) => (s.to_string(), n.to_string()),
        None => (a.get("storage").unwrap_or("").to_string(), vol.clone()),
    };
    ctx.need_storage(&sid)?;
    let id = match volume_owner(&name) {
        Some(owner) => format!("{owner}@{sid}"),
        None => sid.clone(),
    };
    let mut task = Task::start(ctx, "imgdel", &id);
    let res = ctx
        .fail_task()
        .and_then(|()| free_volume(ctx, &sid, &name))
        .and_then(|()| task.say(&format!("Removed volume '{sid}:{name}'")));
    Ok(task.finish(ctx, res, 0))
}

/// The VMID owning a volume name (`vm-<id>-...`, `base-<id>-...`, a linked clone's
/// `base-<b>-.../vm-<id>-...`, or a backup archive `backup/vzdump-qemu-<id>-...`).
fn volume_owner(name: &str) -> Option<u32> {
    if let Some(file) = name.strip_prefix("backup/") {
        return parse_archive_name(file).map(|(vmid, _, _)| vmid);
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    let rest = last
        .strip_prefix("vm-")
        .or_else(|| last.strip_prefix("base-"))?;
    rest.split('-').next()?.parse().ok()
}

fn print_result(v: &Value, fmt: &str) {
    match fmt {
        "json" => outln(&v.to_string()),
        "json-pretty" => crate::out(&util::perl_pretty(v)),
        _ => match v {
            Value::Null => {}
            Value::String(s) => outln(s),
            Value::Number(n) => outln(&n.to_string()),
            other => crate::out(&util::perl_pretty(other)),
        },
    }
}

/// Build a context for another cluster node (read from its state dir).
fn peer_ctx(ctx: &Ctx, node: &str) -> Result<Option<Ctx>, CmdError> {
    if node == "localhost" || node == ctx.node.node {
        return Ok(None);
    }
    let Some(dir) = ctx.node.peers.get(node).cloned() else {
        return Err(CmdError::die(format!(
            "hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known"
        )));
    };
    Ok(Some(Ctx::new(
        dir.clone(),
        state::load_node(&dir)?,
        state::load_faults(&dir)?,
        ctx.key.clone(),
        ctx.call_no,
        None,
    )))
}

/// Run a `pvesh` invocation.
pub fn run(ctx: &mut Ctx, args: &[String]) -> CmdResult {
    let verb = args[0].clone();
    let mut o = GET_OPTS.to_vec();
    let set_owned;
    if verb == "set" || verb == "create" {
        set_owned = qm_set_opts();
        o.extend(set_owned.iter().map(|(a, b)| (a.as_str(), *b)));
    }
    let a = opts::parse(&Spec::new(&["api_path"], &o), &args[1..])?;
    let fmt = a.get("output-format").unwrap_or("text").to_string();
    if !matches!(fmt.as_str(), "text" | "json" | "json-pretty" | "yaml") {
        return Err(CmdError::param(
            "output-format",
            format!(
                "value '{fmt}' does not have a value in the enumeration 'text, json, json-pretty, yaml'"
            ),
        ));
    }
    ctx.fail_before()?;
    let path = a.p("api_path").trim_end_matches('/').to_string();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let no_handler = || CmdError::die(format!("No '{verb}' handler defined for '{path}'"));
    // Node-scoped paths may refer to a peer node.
    let mut peer = None;
    if segs.first() == Some(&"nodes") && segs.len() >= 2 {
        peer = peer_ctx(ctx, segs[1])?;
    }
    let c: &mut Ctx = match peer.as_mut() {
        Some(p) => p,
        None => ctx,
    };
    let res: Value = match (verb.as_str(), segs.as_slice()) {
        ("get", ["cluster", "nextid"]) => nextid(c, a.get("vmid"))?,
        ("get", ["cluster", "resources"]) => resources(c, a.get("type"))?,
        ("get", ["nodes", _, "qemu"]) => {
            let _g = c.lock()?;
            let full = a.flag("full", false);
            Value::Array(
                c.vmids()
                    .into_iter()
                    .filter_map(|id| c.load_vm(id).ok().flatten())
                    .map(|vm| qm::vm_status_json(c, &vm, full))
                    .collect(),
            )
        }
        ("get", ["nodes", _, "qemu", id, "status", "current"]) => {
            qm::vm_status_json(c, &vm_at(c, id)?, true)
        }
        ("get", ["nodes", _, "qemu", id, "config"]) => {
            config_json(&vm_at(c, id)?, a.flag("current", false), a.get("snapshot"))?
        }
        ("get", ["nodes", _, "qemu", id, "snapshot"]) => snapshot_list(&vm_at(c, id)?),
        ("get", ["nodes", _, "qemu", id, "agent", cmd])
        | ("create", ["nodes", _, "qemu", id, "agent", cmd]) => {
            let vmid = opts::vmid("vmid", id)?;
            json!({"result": qm::agent_call(c, vmid, cmd)?})
        }
        ("set", ["nodes", _, "qemu", id, "config"])
        | ("create", ["nodes", _, "qemu", id, "config"]) => {
            let vmid = opts::vmid("vmid", id)?;
            let params: std::collections::BTreeMap<String, String> = a
                .opts
                .iter()
                .filter(|(k, _)| !GET_OPTS.iter().any(|(g, _)| g == k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            qm::update_vm(c, vmid, params, SshKeysMode::UrlEncoded)?;
            Value::Null
        }
        ("get", ["nodes", _, "storage", sid, "content"]) => {
            storage_content(c, sid, a.get("content"), a.get("vmid"))?
        }
        ("delete", ["nodes", _, "storage", sid, "content", rest @ ..]) if !rest.is_empty() => {
            let volid = rest.join("/");
            let name = match volid.split_once(':') {
                Some((_, n)) => n.to_string(),
                None => volid.clone(),
            };
            free_volume(c, sid, &name)?;
            let upid = crate::task::make_upid(&c.node.node, "imgdel", "", util::now_secs());
            Value::String(upid)
        }
        ("get", ["nodes", _, "tasks"]) => tasks_list(c, &a)?,
        ("get", ["nodes", _, "tasks", upid, "status"]) => task_status(c, upid)?,
        ("get", ["nodes", _, "tasks", upid, "log"]) => task_log(c, upid)?,
        ("get", ["version"]) => json!({"release": "9.0", "repoid": "pve-sim", "version": "9.0.3"}),
        _ => return Err(no_handler()),
    };
    print_result(&res, &fmt);
    Ok(0)
}

/// The VM `<id>` of a `/nodes/<n>/qemu/<id>/...` path.
fn vm_at(c: &Ctx, id: &str) -> Result<Vm, CmdError> {
    let vmid = opts::vmid("vmid", id)?;
    c.locked(|c| c.need_vm(vmid))
}

fn qm_set_opts() -> Vec<(String, T)> {
    let mut v: Vec<(String, T)> = [
        "cores",
        "sockets",
        "vcpus",
        "memory",
        "balloon",
        "name",
        "tags",
        "description",
        "ciuser",
        "cipassword",
        "citype",
        "sshkeys",
        "nameserver",
        "searchdomain",
        "agent",
        "boot",
        "scsihw",
        "ostype",
        "cpu",
        "delete",
        "revert",
        "digest",
    ]
    .iter()
    .map(|k| (k.to_string(), T::Str))
    .collect();
    for k in ["onboot", "protection", "skiplock", "numa", "ciupgrade"] {
        v.push((k.to_string(), T::Bool));
    }
    v.extend(qm::indexed_set_opts());
    v
}

const INT_KEYS: &[&str] = &[
    "cores",
    "sockets",
    "onboot",
    "template",
    "protection",
    "balloon",
    "vcpus",
    "numa",
    "ciupgrade",
    "acpi",
    "kvm",
    "tablet",
    "reboot",
    "autostart",
    "shares",
];

fn conf_value(k: &str, v: &str) -> Value {
    if k == "cipassword" {
        return json!("**********");
    }
    if INT_KEYS.contains(&k)
        && let Ok(n) = v.parse::<i64>()
    {
        return json!(n);
    }
    json!(v)
}

fn config_json(vm: &Vm, current: bool, snap: Option<&str>) -> Result<Value, CmdError> {
    let conf = match snap {
        Some(s) => vm
            .snapshots
            .get(s)
            .map(|x| x.conf.clone())
            .ok_or_else(|| CmdError::die(format!("snapshot '{s}' does not exist")))?,
        None if current => vm.conf.clone(),
        None => vm.merged(),
    };
    let mut m = Map::new();
    for (k, v) in &conf {
        m.insert(k.clone(), conf_value(k, v));
    }
    m.insert("digest".into(), json!(qm::digest(vm)));
    Ok(Value::Object(m))
}

fn snapshot_list(vm: &Vm) -> Value {
    let mut v = Vec::new();
    for (n, s) in &vm.snapshots {
        let mut m = Map::new();
        m.insert("name".into(), json!(n));
        m.insert("snaptime".into(), json!(s.snaptime));
        m.insert("description".into(), json!(s.description));
        if s.vmstate {
            m.insert("vmstate".into(), json!(1));
        }
        if let Some(p) = &s.parent {
            m.insert("parent".into(), json!(p));
        }
        v.push(Value::Object(m));
    }
    let mut cur = Map::new();
    cur.insert("name".into(), json!("current"));
    cur.insert("description".into(), json!("You are here!"));
    cur.insert("running".into(), json!(if vm.is_running() { 1 } else { 0 }));
    cur.insert("digest".into(), json!(qm::digest(vm)));
    if let Some(p) = vm.conf.get("parent") {
        cur.insert("parent".into(), json!(p));
    }
    v.push(Value::Object(cur));
    Value::Array(v)
}

fn nextid(c: &Ctx, vmid: Option<&str>) -> Result<Value, CmdError> {
    let _g = c.lock()?;
    let used: Vec<u32> = c.cluster_vmids().into_iter().map(|(_, id)| id).collect();
    if let Some(v) = vmid {
        let n = opts::vmid("vmid", v)?;
        if used.contains(&n) {
            return Err(CmdError::param("vmid", format!("VM {n} already exists")));
        }
        return Ok(json!(v));
    }
    let (lo, hi) = (c.node.nextid_lower, c.node.nextid_upper);
    for id in lo..hi {
        if !used.contains(&(id as u32)) {
            return Ok(if c.faults.nextid_json == "number" {
                json!(id)
            } else {
                json!(id.to_string())
            });
        }
    }
    Err(CmdError::die(format!(
        "unable to get any free VMID in range [{lo}, {hi}]"
    )))
}

fn resources(c: &Ctx, ty: Option<&str>) -> Result<Value, CmdError> {
    if let Some(t) = ty
        && !matches!(t, "vm" | "storage" | "node" | "sdn")
    {
        return Err(CmdError::param(
            "type",
            format!(
                "value '{t}' does not have a value in the enumeration 'vm, storage, node, sdn'"
            ),
        ));
    }
    let mut out = Vec::new();
    let mut nodes: Vec<(String, PathBuf)> = vec![(c.node.node.clone(), c.dir.clone())];
    nodes.extend(c.node.peers.iter().map(|(n, d)| (n.clone(), d.clone())));
    let now = util::now_ms();
    for (node, dir) in &nodes {
        if ty.is_none() || ty == Some("node") {
            out.push(json!({"id": format!("node/{node}"), "type": "node", "node": node, "status": "online"}));
        }
        if (ty.is_none() || ty == Some("storage"))
            && let Ok(n) = state::load_node(dir)
        {
            for s in n.storages {
                out.push(json!({"id": format!("storage/{node}/{}", s.id), "type": "storage", "node": node,
                    "storage": s.id, "plugintype": s.kind, "content": s.content.join(","),
                    "shared": if s.shared {1} else {0}, "status": "available"}));
            }
        }
        if ty.is_none() || ty == Some("vm") {
            let _g = state::global_lock(dir)?;
            for id in state::list_vmids_in(dir) {
                let Some(vm) = state::load_vm_in(dir, id)? else {
                    continue;
                };
                let st = qm::vm_status_json(c, &vm, false);
                let mut m = Map::new();
                m.insert("id".into(), json!(format!("qemu/{id}")));
                m.insert("type".into(), json!("qemu"));
                m.insert("vmid".into(), json!(id));
                m.insert("node".into(), json!(node));
                if let Some(l) = vm.lock() {
                    m.insert("lock".into(), json!(l));
                }
                if let Some(t) = vm.conf.get("tags") {
                    m.insert("tags".into(), json!(t));
                }
                let lag = now.saturating_sub(vm.created_ms) < c.faults.rrd_lag_ms;
                if lag {
                    m.insert("status".into(), json!("unknown"));
                } else {
                    m.insert("status".into(), st["status"].clone());
                    m.insert("name".into(), st["name"].clone());
                    m.insert(
                        "template".into(),
                        json!(if vm.is_template() { 1 } else { 0 }),
                    );
                    for (k, src) in [
                        ("maxcpu", "cpus"),
                        ("maxmem", "maxmem"),
                        ("mem", "mem"),
                        ("maxdisk", "maxdisk"),
                        ("disk", "disk"),
                        ("cpu", "cpu"),
                        ("netin", "netin"),
                        ("netout", "netout"),
                        ("uptime", "uptime"),
                    ] {
                        m.insert(k.into(), st[src].clone());
                    }
                    m.insert("diskread".into(), json!(0));
                    m.insert("diskwrite".into(), json!(0));
                }
                out.push(Value::Object(m));
            }
        }
    }
    Ok(Value::Array(out))
}

/// Directory holding backup archives of a storage.
pub fn dump_dir(c: &Ctx, sid: &str) -> PathBuf {
    c.dir.join("storage").join(sid).join("dump")
}

/// Parse `vzdump-qemu-<vmid>-<ts>.vma[.ext]` → (vmid, ctime, format).
pub fn parse_archive_name(name: &str) -> Option<(u32, i64, String)> {
    let rest = name.strip_prefix("vzdump-qemu-")?;
    let (vmid, rest) = rest.split_once('-')?;
    let ts = rest.get(..19)?;
    let ext = rest.get(19..)?.strip_prefix('.')?;
    if !matches!(ext, "vma" | "vma.zst" | "vma.gz" | "vma.lzo") {
        return None;
    }
    let n = |a: usize, b: usize| ts.get(a..b).and_then(|x| x.parse::<i32>().ok());
    let ctime = util::local_to_epoch(
        n(0, 4)?,
        n(5, 7)?,
        n(8, 10)?,
        n(11, 13)?,
        n(14, 16)?,
        n(17, 19)?,
    );
    Some((vmid.parse().ok()?, ctime, ext.to_string()))
}

fn storage_content(
    c: &Ctx,
    sid: &str,
    content: Option<&str>,
    vmid: Option<&str>,
) -> Result<Value, CmdError> {
    let st = c.need_storage(sid)?;
    let want_vmid: Option<u32> = match vmid {
        Some(v) => Some(opts::vmid("vmid", v)?),
        None => None,
    };
    let mut out = Vec::new();
    if content.is_none_or(|x| x == "backup") && st.content.iter().any(|x| x == "backup") {
        let dir = dump_dir(c, sid);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        for n in names {
            let Some((id, ctime, format)) = parse_archive_name(&n) else {
                continue;
            };
            if want_vmid.is_some_and(|w| w != id) {
                continue;
            }
            let size = std::fs::metadata(dir.join(&n))
                .map(|m| m.len())
                .unwrap_or(0);
            let mut m = Map::new();
            m.insert("content".into(), json!("backup"));
            m.insert("ctime".into(), json!(ctime));
            m.insert("format".into(), json!(format));
            m.insert("size".into(), json!(size));
            m.insert("subtype".into(), json!("qemu"));
            m.insert("vmid".into(), json!(id));
            m.insert("volid".into(), json!(format!("{sid}:backup/{n}")));
            if let Ok(notes) = std::fs::read_to_string(dir.join(format!("{n}.notes"))) {
                m.insert("notes".into(), json!(notes.lines().next().unwrap_or("")));
            }
            if dir.join(format!("{n}.protected")).exists() {
                m.insert("protected".into(), json!(1));
            }
            out.push(Value::Object(m));
        }
    }
    if content.is_none_or(|x| x == "images") && st.content.iter().any(|x| x == "images") {
        let _g = c.lock()?;
        for (volid, v) in c.volumes() {
            if !volid.starts_with(&format!("{sid}:")) || want_vmid.is_some_and(|w| w != v.vmid) {
                continue;
            }
            out.push(json!({"content": "images", "format": "raw", "size": v.size, "vmid": v.vmid, "volid": volid}));
        }
    }
    Ok(Value::Array(out))
}

fn free_volume(c: &Ctx, sid: &str, name: &str) -> Result<(), CmdError> {
    c.need_storage(sid)?;
    if let Some(file) = name.strip_prefix("backup/") {
        let dir = dump_dir(c, sid);
        let p = dir.join(file);
        if file.contains('/') || !p.exists() {
            return Err(CmdError::die(format!(
                "volume '{sid}:{name}' does not exist"
            )));
        }
        if dir.join(format!("{file}.protected")).exists() {
            return Err(CmdError::die(format!(
                "cannot remove protected archive '{}'",
                p.display()
            )));
        }
        let _ = std::fs::remove_file(&p);
        let stem = file.split(".vma").next().unwrap_or(file);
        let _ = std::fs::remove_file(dir.join(format!("{stem}.log")));
        let _ = std::fs::remove_file(dir.join(format!("{file}.notes")));
        return Ok(());
    }
    let _g = c.lock()?;
    let volid = format!("{sid}:{name}");
    if !c.volumes().contains_key(&volid) {
        return Err(CmdError::die(format!("volume '{volid}' does not exist")));
    }
    c.free_volumes(&[volid])
}

fn all_tasks(c: &Ctx) -> Vec<(String, PathBuf)> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(c.dir.join("tasks")) {
        for d in rd.filter_map(|e| e.ok()) {
            if d.file_name() == "active" {
                continue;
            }
            if let Ok(rd2) = std::fs::read_dir(d.path()) {
                for f in rd2.filter_map(|e| e.ok()) {
                    if let Some(n) = f.file_name().to_str() {
                        v.push((n.to_string(), f.path()));
                    }
                }
            }
        }
    }
    v
}

fn task_info(c: &Ctx, upid: &str, path: &std::path::Path) -> Option<Value> {
    let p: Vec<&str> = upid.split(':').collect();
    if p.len() < 9 || p[0] != "UPID" {
        return None;
    }
    let pid = u32::from_str_radix(p[2], 16).ok()?;
    let starttime = i64::from_str_radix(p[4], 16).ok()?;
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let last = log.lines().last().unwrap_or("");
    let alive = c.dir.join("tasks/active").join(upid).exists()
        && std::path::Path::new(&format!("/proc/{pid}")).exists();
    let mut m = Map::new();
    for (k, v) in [
        ("upid", json!(upid)),
        ("node", json!(p[1])),
        ("pid", json!(pid)),
        ("pstart", json!(u64::from_str_radix(p[3], 16).unwrap_or(0))),
        ("starttime", json!(starttime)),
        ("type", json!(p[5])),
        ("id", json!(p[6])),
        ("user", json!(p[7])),
    ] {
        m.insert(k.into(), v);
    }
    let exit = if let Some(e) = last.strip_prefix("TASK ERROR: ") {
        Some(e.to_string())
    } else if last == "TASK OK" {
        Some("OK".into())
    } else {
        last.strip_prefix("TASK ").map(str::to_string)
    };
    match (alive, exit) {
        (true, None) => {
            m.insert("status".into(), json!("running"));
        }
        (_, e) => {
            m.insert("status".into(), json!("stopped"));
            m.insert(
                "exitstatus".into(),
                json!(e.unwrap_or_else(|| "unexpected status".into())),
            );
        }
    }
    Some(Value::Object(m))
}

fn task_status(c: &Ctx, upid: &str) -> Result<Value, CmdError> {
    for (n, p) in all_tasks(c) {
        if n == upid {
            return task_info(c, upid, &p).ok_or_else(|| CmdError::param("upid", "no such task"));
        }
    }
    Err(CmdError::param("upid", "no such task"))
}

fn task_log(c: &Ctx, upid: &str) -> Result<Value, CmdError> {
    for (n, p) in all_tasks(c) {
        if n == upid {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            return Ok(Value::Array(
                text.lines()
                    .enumerate()
                    .map(|(i, l)| json!({"n": i + 1, "t": l}))
                    .collect(),
            ));
        }
    }
    Err(CmdError::param("upid", "no such task"))
}

fn tasks_list(c: &Ctx, a: &opts::Parsed) -> Result<Value, CmdError> {
    let source = a.get("source").unwrap_or("archive");
    // Newest first like PVE's task index: by start second, then process start tick, then
    // when the log was last written (tasks of one second would otherwise come in any order).
    let mut v: Vec<(Value, std::time::SystemTime)> = all_tasks(c)
        .into_iter()
        .filter_map(|(n, p)| {
            let written = std::fs::metadata(&p)
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            task_info(c, &n, &p).map(|t| (t, written))
        })
        .filter(|(t, _)| match source {
            "active" => t["status"] == "running",
            "archive" => t["status"] == "stopped",
            _ => true,
        })
        .filter(|(t, _)| a.get("vmid").is_none_or(|id| t["id"] == id))
        .filter(|(t, _)| a.get("typefilter").is_none_or(|ty| t["type"] == ty))
        .filter(|(t, _)| !a.flag("errors", false) || t.get("exitstatus").is_some_and(|e| e != "OK"))
        .filter(|(t, _)| {
            a.get("since")
                .and_then(|s| s.parse::<i64>().ok())
                .is_none_or(|s| t["starttime"].as_i64().unwrap_or(0) >= s)
        })
        .collect();
    v.sort_by_key(|(t, written)| {
        std::cmp::Reverse((
            t["starttime"].as_i64().unwrap_or(0),
            t["pstart"].as_u64().unwrap_or(0),
            *written,
        ))
    });
    let mut v: Vec<Value> = v.into_iter().map(|(t, _)| t).collect();
    if let Some(l) = a.get("limit").and_then(|l| l.parse::<usize>().ok()) {
        v.truncate(l);
    }
    Ok(Value::Array(v))
}
