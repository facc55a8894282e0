//! `pve-sim` admin commands: init, install, show, help.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::err::{CmdError, CmdResult};
use crate::state::{self, NodeCfg, Storage, Vm, Volume};
use crate::{outln, util};

const HELP: &str = "pve-sim - simulated Proxmox VE node

USAGE:
  pve-sim init --state DIR --node NAME [--template VMID[:NAME]]... [--vm VMID[:NAME]]...
               [--peer NAME=DIR]... [--nextid-lower N] [--nextid-upper N] [--host-cpus N]
               [--keep-last N] [--force]
  pve-sim install [--bin-dir DIR] [--state DIR] [--env-file PATH]
  pve-sim show [--state DIR]
  pve-sim help

Invoked as qm, pvesh, vzdump, qmrestore or pvesm (symlinks) it simulates that tool.
State dir: $PVE_SIM_STATE, else the PVE_SIM_STATE= line of $PVE_SIM_ENV_FILE or ~/.pve-sim/env.";

fn want<'a>(args: &'a [String], i: usize, name: &str) -> Result<&'a str, CmdError> {
    args.get(i + 1)
        .map(String::as_str)
        .ok_or_else(|| CmdError::die(format!("pve-sim: {name} requires a value")))
}

/// Run an admin command.
pub fn run(args: &[String]) -> CmdResult {
    match args.first().map(String::as_str) {
        Some("init") => init(&args[1..]),
        Some("install") => install(&args[1..]),
        Some("show") => show(&args[1..]),
        Some("help") | Some("--help") | Some("-h") | None => {
            outln(HELP);
            Ok(0)
        }
        Some(other) => Err(CmdError::die(format!(
            "pve-sim: unknown command '{other}'\n{HELP}"
        ))),
    }
}

fn init(args: &[String]) -> CmdResult {
    let mut dir = None;
    let mut node = None;
    let mut templates: Vec<(u32, String)> = Vec::new();
    let mut vms: Vec<(u32, String)> = Vec::new();
    let mut peers = BTreeMap::new();
    let mut lower = 100;
    let mut upper = 1_000_000;
    let mut cpus = 16;
    let mut keep_last = None;
    let mut force = false;
    let parse_id = |v: &str| -> Result<(u32, String), CmdError> {
        let (id, name) = v.split_once(':').unwrap_or((v, ""));
        let id: u32 = id
            .parse()
            .map_err(|_| CmdError::die(format!("pve-sim: bad vmid '{id}'")))?;
        Ok((id, name.to_string()))
    };
    let num = |v: &str| -> Result<u64, CmdError> {
        v.parse()
            .map_err(|_| CmdError::die(format!("pve-sim: bad number '{v}'")))
    };
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--state" => dir = Some(PathBuf::from(want(args, i, "--state")?)),
            "--node" => node = Some(want(args, i, "--node")?.to_string()),
            "--template" => templates.push(parse_id(want(args, i, "--template")?)?),
            "--vm" => vms.push(parse_id(want(args, i, "--vm")?)?),
            "--peer" => {
                let v = want(args, i, "--peer")?;
                let (n, d) = v
                    .split_once('=')
                    .ok_or_else(|| CmdError::die("pve-sim: --peer NAME=DIR"))?;
                peers.insert(n.to_string(), PathBuf::from(d));
            }
            "--nextid-lower" => lower = num(want(args, i, "--nextid-lower")?)?,
            "--nextid-upper" => upper = num(want(args, i, "--nextid-upper")?)?,
            "--host-cpus" => cpus = num(want(args, i, "--host-cpus")?)? as u32,
            "--keep-last" => keep_last = Some(num(want(args, i, "--keep-last")?)? as u32),
            "--force" => {
                force = true;
                i += 1;
                continue;
            }
            other => {
                return Err(CmdError::die(format!(
                    "pve-sim init: unknown option '{other}'"
                )));
            }
        }
        i += 2;
    }
    let dir = dir.ok_or_else(|| CmdError::die("pve-sim init: --state DIR is required"))?;
    let node = node.ok_or_else(|| CmdError::die("pve-sim init: --node NAME is required"))?;
    if dir.join("node.json").exists() && !force {
        return Err(CmdError::die(format!(
            "pve-sim init: {} already initialised (use --force)",
            dir.display()
        )));
    }
    if templates.is_empty() && vms.is_empty() {
        templates.push((9000, "ubuntu-2404-tmpl".into()));
    }
    for sub in [
        "qemu-server",
        "storage/local/dump",
        "tasks/active",
        "locks",
        "sem",
    ] {
        fs::create_dir_all(dir.join(sub))
            .map_err(|e| CmdError::die(format!("pve-sim: mkdir: {e}")))?;
    }
    let cfg = NodeCfg {
        node,
        nextid_lower: lower,
        nextid_upper: upper,
        host_cpus: cpus,
        storages: vec![
            Storage {
                id: "local".into(),
                kind: "dir".into(),
                content: vec![
                    "backup".into(),
                    "iso".into(),
                    "vztmpl".into(),
                    "snippets".into(),
                ],
                shared: false,
                disabled: false,
                keep_last,
            },
            Storage {
                id: "local-lvm".into(),
                kind: "lvmthin".into(),
                content: vec!["images".into(), "rootdir".into()],
                shared: false,
                disabled: false,
                keep_last: None,
            },
        ],
        pools: Vec::new(),
        peers,
    };
    write_json(&dir.join("node.json"), &cfg)?;
    if !dir.join("faults.json").exists() {
        fs::write(dir.join("faults.json"), "{}\n").map_err(|e| CmdError::die(e.to_string()))?;
    }
    let mut vols: BTreeMap<String, Volume> = BTreeMap::new();
    let mk = |id: u32, name: &str, template: bool, vols: &mut BTreeMap<String, Volume>| -> Vm {
        let mut vm = Vm::new(id);
        let prefix = if template { "base" } else { "vm" };
        let disk = format!("local-lvm:{prefix}-{id}-disk-0");
        let ci = format!("local-lvm:vm-{id}-cloudinit");
        vols.insert(
            disk.clone(),
            Volume {
                vmid: id,
                size: 3 << 30,
            },
        );
        vols.insert(
            ci.clone(),
            Volume {
                vmid: id,
                size: 4 << 20,
            },
        );
        let name = if name.is_empty() {
            format!("vm{id}")
        } else {
            name.to_string()
        };
        for (k, v) in [
            ("agent", "1".to_string()),
            ("boot", "order=scsi0".into()),
            ("cores", "2".into()),
            ("memory", "2048".into()),
            ("name", name),
            (
                "net0",
                format!("virtio={},bridge=vmbr0", util::random_mac(u64::from(id))),
            ),
            ("ostype", "l26".into()),
            ("scsi0", format!("{disk},size=3G")),
            ("scsihw", "virtio-scsi-single".into()),
            ("ide2", format!("{ci},media=cdrom")),
            ("serial0", "socket".into()),
            ("vga", "serial0".into()),
            (
                "smbios1",
                format!("uuid={}", util::random_uuid(u64::from(id))),
            ),
            ("ciuser", "ubuntu".into()),
            ("ipconfig0", "ip=dhcp".into()),
        ] {
            vm.conf.insert(k.to_string(), v);
        }
        if template {
            vm.conf.insert("template".into(), "1".into());
        }
        vm
    };
    for (guests, template) in [(&templates, true), (&vms, false)] {
        for (id, name) in guests {
            let vm = mk(*id, name, template, &mut vols);
            write_json(&state::vm_path(&dir, *id), &vm)?;
        }
    }
    write_json(&dir.join("volumes.json"), &vols)?;
    outln(&format!("initialised {}", dir.display()));
    Ok(0)
}

/// Write `v` as one line of JSON (keys sorted), atomically.
fn write_json(path: &Path, v: &impl serde::Serialize) -> Result<(), CmdError> {
    let v = serde_json::to_value(v).map_err(|e| CmdError::die(e.to_string()))?;
    state::write_atomic(path, v.to_string().as_bytes())
}

fn install(args: &[String]) -> CmdResult {
    let mut bin = None;
    let mut st = None;
    let mut env_file = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--bin-dir" => bin = Some(PathBuf::from(want(args, i, "--bin-dir")?)),
            "--state" => st = Some(PathBuf::from(want(args, i, "--state")?)),
            "--env-file" => env_file = Some(PathBuf::from(want(args, i, "--env-file")?)),
            other => {
                return Err(CmdError::die(format!(
                    "pve-sim install: unknown option '{other}'"
                )));
            }
        }
        i += 2;
    }
    if bin.is_none() && st.is_none() {
        return Err(CmdError::die(
            "pve-sim install: --bin-dir DIR and/or --state DIR is required",
        ));
    }
    if let Some(bin) = &bin {
        let exe = std::env::current_exe()
            .map_err(|e| CmdError::die(format!("pve-sim: current_exe: {e}")))?;
        fs::create_dir_all(bin).map_err(|e| CmdError::die(format!("pve-sim: mkdir: {e}")))?;
        for name in ["qm", "pvesh", "vzdump", "qmrestore", "pvesm"] {
            let link = bin.join(name);
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(&exe, &link)
                .map_err(|e| CmdError::die(format!("pve-sim: symlink {}: {e}", link.display())))?;
        }
        outln(&format!(
            "installed qm, pvesh, vzdump, qmrestore, pvesm in {}",
            bin.display()
        ));
    }
    if let Some(s) = st {
        let f = match env_file {
            Some(f) => f,
            None => PathBuf::from(
                std::env::var_os("HOME").ok_or_else(|| CmdError::die("pve-sim: HOME not set"))?,
            )
            .join(".pve-sim/env"),
        };
        if let Some(p) = f.parent() {
            fs::create_dir_all(p).map_err(|e| CmdError::die(format!("pve-sim: mkdir: {e}")))?;
        }
        fs::write(&f, format!("PVE_SIM_STATE={}\n", s.display()))
            .map_err(|e| CmdError::die(format!("pve-sim: write env: {e}")))?;
        outln(&format!("wrote {}", f.display()));
    }
    Ok(0)
}

fn show(args: &[String]) -> CmdResult {
    let dir = match args.iter().position(|a| a == "--state") {
        Some(i) => PathBuf::from(want(args, i, "--state")?),
        None => state::resolve_state_dir()
            .ok_or_else(|| CmdError::die("pve-sim: no state directory"))?,
    };
    let _g = state::global_lock(&dir)?;
    let node = state::load_node(&dir)?;
    let mut vms = serde_json::Map::new();
    for id in state::list_vmids_in(&dir) {
        if let Some(vm) = state::load_vm_in(&dir, id)? {
            vms.insert(
                id.to_string(),
                serde_json::to_value(&vm).map_err(|e| CmdError::die(e.to_string()))?,
            );
        }
    }
    let read = |n: &str| -> Value {
        fs::read_to_string(dir.join(n))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    };
    let mut backups = Vec::new();
    for s in &node.storages {
        if let Ok(rd) = fs::read_dir(dir.join("storage").join(&s.id).join("dump")) {
            let mut names: Vec<String> = rd
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect();
            names.sort();
            for n in names
                .into_iter()
                .filter(|n| crate::pvesh::parse_archive_name(n).is_some())
            {
                backups.push(json!(format!("{}:backup/{n}", s.id)));
            }
        }
    }
    outln(
        &json!({
            "node": node,
            "vms": vms,
            "volumes": read("volumes.json"),
            "counters": read("counters.json"),
            "faults": read("faults.json"),
            "backups": backups,
        })
        .to_string(),
    );
    Ok(0)
}
