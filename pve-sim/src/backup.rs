//! `vzdump` and `qmrestore`.

use std::fs;
use std::time::Duration;

use serde_json::json;

use crate::err::{CmdError, CmdResult};
use crate::opts::{self, Spec, T};
use crate::pvesh::{dump_dir, parse_archive_name};
use crate::qm::with_new_mac;
use crate::state::{Ctx, Drive, Vm, is_drive_key, lv_name, open_lock_file};
use crate::task::Task;
use crate::util::{self, LockMode};

fn real_dump_path(ctx: &Ctx, sid: &str) -> String {
    if sid == "local" {
        "/var/lib/vz/dump".into()
    } else {
        let _ = ctx;
        format!("/mnt/pve/{sid}/dump")
    }
}

fn hms(secs: u64) -> String {
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// Run `vzdump`.
pub fn vzdump(ctx: &mut Ctx, args: &[String]) -> CmdResult {
    let a = opts::parse(
        &Spec {
            pos: &["vmid"],
            optional: 1,
            opts: &[
                ("storage", T::Str),
                ("mode", T::Str),
                ("compress", T::Str),
                ("remove", T::Bool),
                ("notes-template", T::Str),
                ("protected", T::Bool),
                ("lockwait", T::Int),
                ("quiet", T::Bool),
                ("all", T::Bool),
                ("dumpdir", T::Str),
                ("bwlimit", T::Int),
                ("ionice", T::Int),
                ("zstd", T::Int),
                ("node", T::Str),
            ],
        },
        args,
    )?;
    let mut vmids = Vec::new();
    for v in opts::split_list(a.p("vmid")) {
        vmids.push(opts::vmid("vmid", &v)?);
    }
    let mode = a.get("mode").unwrap_or("snapshot").to_string();
    if !matches!(mode.as_str(), "snapshot" | "suspend" | "stop") {
        return Err(CmdError::param(
            "mode",
            format!(
                "value '{mode}' does not have a value in the enumeration 'snapshot, suspend, stop'"
            ),
        ));
    }
    let compress = a.get("compress").unwrap_or("0").to_string();
    let ext = match compress.as_str() {
        "0" => "vma",
        "1" | "lzo" => "vma.lzo",
        "gzip" => "vma.gz",
        "zstd" => "vma.zst",
        other => {
            return Err(CmdError::param(
                "compress",
                format!(
                    "value '{other}' does not have a value in the enumeration '0, 1, gzip, lzo, zstd'"
                ),
            ));
        }
    };
    if a.flag("all", false) {
        vmids = ctx.vmids();
    }
    if vmids.is_empty() {
        return Err(CmdError::param(
            "vmid",
            "property is missing and it is not optional",
        ));
    }
    let sid = a.get("storage").unwrap_or("local").to_string();
    if !ctx
        .need_storage(&sid)?
        .content
        .iter()
        .any(|c| c == "backup")
    {
        return Err(CmdError::die(format!(
            "can't use storage '{sid}' for backups - wrong content type"
        )));
    }
    let notes_tmpl = a.get("notes-template").map(str::to_string);
    if let Some(t) = &notes_tmpl
        && (t.contains('\n') || t.len() > 1024)
    {
        return Err(CmdError::param(
            "notes-template",
            "value must be a single line of at most 1024 characters",
        ));
    }
    // Guests living on other nodes are skipped silently.
    let local: Vec<u32> = vmids
        .iter()
        .copied()
        .filter(|id| ctx.owner_of(*id).is_none_or(|n| n == ctx.node.node))
        .collect();
    if local.is_empty() {
        return Ok(0);
    }
    ctx.fail_before()?;
    let id = if local.len() == 1 {
        local[0].to_string()
    } else {
        String::new()
    };
    let mut task = Task::start(ctx, "vzdump", &id);
    // Node-global vzdump lock.
    let lockf =
        open_lock_file(&ctx.dir.join("vzdump.lock")).map_err(|e| CmdError::die(e.to_string()))?;
    if lockf.try_lock().is_err() {
        let _ = task.say("INFO: trying to get global lock - waiting...");
        let mins: u64 = a
            .get("lockwait")
            .and_then(|x| x.parse().ok())
            .unwrap_or(180);
        if util::flock_timeout(&lockf, LockMode::Exclusive, Duration::from_secs(mins * 60)).is_err()
        {
            let e = CmdError::die("can't acquire lock '/var/run/vzdump.lock' - got timeout");
            return Ok(task.finish(ctx, Err(e), 255));
        }
        let _ = task.say("INFO: got global lock");
    }
    ctx.acquire_slot()?;
    let joined: Vec<String> = args
        .iter()
        .map(|x| {
            if x.contains(' ') || x.contains('{') {
                format!("'{x}'")
            } else {
                x.clone()
            }
        })
        .collect();
    if let Err(e) = task.say(&format!(
        "INFO: starting new backup job: vzdump {}",
        joined.join(" ")
    )) {
        return Ok(task.finish(ctx, Err(e), 255));
    }
    let mut errors = 0;
    for vmid in local {
        match backup_one(
            ctx,
            &mut task,
            vmid,
            &sid,
            &mode,
            ext,
            &a,
            notes_tmpl.as_deref(),
        ) {
            Ok(()) => {}
            Err(e) if e.msg == "interrupted by signal" => {
                errors += 1;
                let _ = task.say(&format!("ERROR: Backup of VM {vmid} failed - {}", e.msg));
                break;
            }
            Err(e) => {
                errors += 1;
                let _ = task.say(&format!("ERROR: Backup of VM {vmid} failed - {}", e.msg));
                let _ = task.say(&format!(
                    "INFO: Failed at {}",
                    util::fmt_local(util::now_secs())
                ));
            }
        }
    }
    drop(lockf);
    if errors > 0 {
        let _ = task.say("INFO: Backup job finished with errors");
        return Ok(task.finish(ctx, Err(CmdError::die("job errors")), 255));
    }
    let _ = task.say("INFO: Backup job finished successfully");
    Ok(task.finish(ctx, Ok(()), 255))
}

#[allow(clippy::too_many_arguments)]
fn backup_one(
    ctx: &mut Ctx,
    task: &mut Task,
    vmid: u32,
    sid: &str,
    mode: &str,
    ext: &str,
    a: &opts::Parsed,
    notes_tmpl: Option<&str>,
) -> Result<(), CmdError> {
    let t0 = util::now_secs();
    task.say(&format!("INFO: Starting Backup of VM {vmid} (qemu)"))?;
    task.say(&format!("INFO: Backup started at {}", util::fmt_local(t0)))?;
    let dir = dump_dir(ctx, sid);
    let _ = fs::create_dir_all(&dir);
    let keep_last = ctx.storage(sid).and_then(|s| s.keep_last);
    // set_lock(backup)
    let (vm, was_running) = ctx.locked(|ctx| {
        let mut vm = ctx
            .load_vm(vmid)?
            .ok_or_else(|| CmdError::die(format!("unable to find VM '{vmid}'")))?;
        if let Some(l) = vm.lock() {
            return Err(CmdError::die(format!("VM is locked ({l})")));
        }
        if let Some(k) = keep_last {
            let count = fs::read_dir(&dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .filter(|e| {
                            e.file_name()
                                .to_str()
                                .and_then(parse_archive_name)
                                .is_some_and(|x| x.0 == vmid)
                        })
                        .count()
                })
                .unwrap_or(0);
            if !a.flag("remove", true) && count as u32 >= k {
                return Err(CmdError::die(format!(
                    "There is a max backup limit of {k} enforced by the target storage or the vzdump parameters. Either increase the limit or delete old backups."
                )));
            }
        }
        let was_running = vm.is_running();
        vm.conf.insert("lock".into(), "backup".into());
        ctx.save_vm(&vm)?;
        Ok((vm, was_running))
    })?;
    let res = backup_body(
        ctx,
        task,
        &vm,
        was_running,
        sid,
        mode,
        ext,
        a,
        notes_tmpl,
        t0,
        keep_last,
    );
    // Always release the lock and restore the power state (clean failure path).
    ctx.locked(|ctx| {
        if let Some(mut cur) = ctx.load_vm(vmid)? {
            if cur.lock() == Some("backup") {
                cur.conf.remove("lock");
            }
            if !was_running && cur.qmpstatus == "prelaunch" {
                cur.mark_stopped();
            }
            ctx.save_vm(&cur)?;
        }
        Ok(())
    })?;
    res
}

#[allow(clippy::too_many_arguments)]
fn backup_body(
    ctx: &mut Ctx,
    task: &mut Task,
    vm: &Vm,
    was_running: bool,
    sid: &str,
    mode: &str,
    ext: &str,
    a: &opts::Parsed,
    notes_tmpl: Option<&str>,
    t0: i64,
    keep_last: Option<u32>,
) -> Result<(), CmdError> {
    let vmid = vm.vmid;
    task.say(&format!(
        "INFO: status = {}",
        if was_running { "running" } else { "stopped" }
    ))?;
    task.say(&format!("INFO: VM Name: {}", vm.display_name()))?;
    let mut total: u64 = 0;
    for k in Vm::disk_keys(&vm.conf) {
        let d = Drive::parse(&vm.conf[&k]);
        if d.is_cdrom() {
            task.say(&format!("INFO: exclude disk '{k}' '{}' (cdrom)", d.volid))?;
            continue;
        }
        let size = d.size().unwrap_or(0);
        total += size;
        task.say(&format!(
            "INFO: include disk '{k}' '{}' {}",
            d.volid,
            util::format_size(size)
        ))?;
    }
    let eff_mode = if was_running { mode } else { "stop" };
    task.say(&format!("INFO: backup mode: {eff_mode}"))?;
    task.say("INFO: ionice priority: 7")?;
    let fname = format!("vzdump-qemu-{vmid}-{}.{ext}", util::fmt_archive_ts(t0));
    task.say(&format!(
        "INFO: creating vzdump archive '{}/{fname}'",
        real_dump_path(ctx, sid)
    ))?;
    if !was_running {
        task.say("INFO: starting kvm to execute backup task")?;
        let _g = ctx.lock()?;
        if let Some(mut cur) = ctx.load_vm(vmid)? {
            cur.status = "running".into();
            cur.qmpstatus = "prelaunch".into();
            cur.started_ms = util::now_ms();
            ctx.save_vm(&cur)?;
        }
    } else if mode == "snapshot" && vm.conf.contains_key("agent") {
        task.say("INFO: issuing guest-agent 'fs-freeze' command")?;
        task.say("INFO: issuing guest-agent 'fs-thaw' command")?;
    }
    task.say(&format!(
        "INFO: started backup task '{}'",
        util::random_uuid(u64::from(vmid))
    ))?;
    if was_running && mode != "stop" {
        task.say("INFO: resuming VM again")?;
    }
    let steps = ctx.faults.progress_steps.max(1) as u64;
    let dur = ctx.faults.duration("vzdump");
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let secs = dur / 1000;
    let lines: Vec<String> = (1..=steps)
        .map(|i| {
            let p = i * 100 / steps;
            format!(
                "INFO: {p:3}% ({:.1} GiB of {:.1} GiB) in {}s, read: 1.0 GiB/s, write: 180.1 MiB/s",
                gib(total * p / 100),
                gib(total),
                secs * i / steps
            )
        })
        .collect();
    task.work_split(ctx, dur, &lines)?;
    task.say(&format!(
        "INFO: backup is sparse: {:.2} GiB (78%) total zero data",
        gib(total) * 0.78
    ))?;
    task.say(&format!(
        "INFO: transferred {:.2} GiB in {secs} seconds",
        gib(total)
    ))?;
    // Write the archive: a JSON image of the VM config.
    let dir = dump_dir(ctx, sid);
    let cur = ctx.load_vm(vmid)?.unwrap_or_else(|| vm.clone());
    let mut conf = cur.conf.clone();
    conf.remove("lock");
    let archive = json!({"vmid": vmid, "conf": conf, "disks_total": total, "node": ctx.node.node});
    let data = serde_json::to_vec_pretty(&archive).map_err(|e| CmdError::die(e.to_string()))?;
    crate::state::write_atomic(&dir.join(&fname), &data)?;
    task.say(&format!(
        "INFO: archive file size: {:.2}KB",
        data.len() as f64 / 1000.0
    ))?;
    if let Some(t) = notes_tmpl {
        match render_notes(t, ctx, vm) {
            Ok(n) => {
                task.say("INFO: adding notes to backup")?;
                let _ = fs::write(dir.join(format!("{fname}.notes")), n);
            }
            Err(unknown) => {
                task.warn(&format!("unable to add notes - found unknown: {unknown}"))?
            }
        }
    }
    if a.flag("protected", false) {
        let _ = fs::write(dir.join(format!("{fname}.protected")), "");
    }
    if !was_running {
        let _g = ctx.lock()?;
        if let Some(c) = ctx.load_vm(vmid)? {
            if c.qmpstatus == "prelaunch" {
                task.say("INFO: stopping kvm after backup task")?;
            } else {
                task.say(&format!(
                    "INFO: kvm status changed after backup ('{}') - keep VM running",
                    c.qmpstatus
                ))?;
            }
        }
    }
    if a.flag("remove", true)
        && let Some(k) = keep_last
    {
        let mut mine: Vec<(i64, String)> = fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| {
                parse_archive_name(&n)
                    .filter(|x| x.0 == vmid)
                    .map(|x| (x.1, n))
            })
            .collect();
        mine.sort();
        if mine.len() > k as usize {
            task.say(&format!(
                "INFO: prune older backups with retention: keep-last={k}"
            ))?;
            let n = mine.len() - k as usize;
            for (_, name) in mine.iter().take(n) {
                task.say(&format!("INFO: removing backup '{sid}:backup/{name}'"))?;
                let _ = fs::remove_file(dir.join(name));
                let _ = fs::remove_file(dir.join(format!("{name}.notes")));
            }
            task.say(&format!("INFO: pruned {n} backup(s)"))?;
        }
    }
    let t1 = util::now_secs();
    task.say(&format!(
        "INFO: Finished Backup of VM {vmid} ({})",
        hms((t1 - t0).max(0) as u64)
    ))?;
    task.say(&format!("INFO: Backup finished at {}", util::fmt_local(t1)))?;
    Ok(())
}

fn render_notes(t: &str, ctx: &Ctx, vm: &Vm) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = t;
    let mut unknown = Vec::new();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("{{")
            && let Some((var, after)) = r.split_once("}}")
        {
            match var {
                "cluster" => out.push_str("pve-sim"),
                "guestname" => out.push_str(&vm.display_name()),
                "node" => out.push_str(&ctx.node.node),
                "vmid" => out.push_str(&vm.vmid.to_string()),
                other => unknown.push(format!("{{{{{other}}}}}")),
            }
            rest = after;
            continue;
        }
        if let Some(r) = rest.strip_prefix("\\\\") {
            out.push('\\');
            rest = r;
            continue;
        }
        if let Some(r) = rest.strip_prefix("\\n") {
            out.push('\n');
            rest = r;
            continue;
        }
        if let Some(r) = rest.strip_prefix('\\') {
            unknown.push(format!("\\{}", r.chars().next().unwrap_or(' ')));
            rest = r.get(1..).unwrap_or("");
            continue;
        }
        let c = rest.chars().next().unwrap_or(' ');
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    if unknown.is_empty() {
        Ok(out)
    } else {
        Err(unknown.join(", "))
    }
}

/// Run `qmrestore`.
pub fn qmrestore(ctx: &mut Ctx, args: &[String]) -> CmdResult {
    let a = opts::parse(
        &Spec::new(
            &["archive", "vmid"],
            &[
                ("force", T::Bool),
                ("storage", T::Str),
                ("unique", T::Bool),
                ("start", T::Bool),
                ("pool", T::Str),
                ("bwlimit", T::Int),
                ("live-restore", T::Bool),
            ],
        ),
        args,
    )?;
    let vmid = opts::vmid("vmid", a.p("vmid"))?;
    let archive = a.p("archive").to_string();
    let path = match archive.split_once(':') {
        Some((sid, rest)) if rest.starts_with("backup/") => {
            ctx.need_storage(sid)?;
            dump_dir(ctx, sid).join(rest.trim_start_matches("backup/"))
        }
        _ => match archive.strip_prefix("/var/lib/vz/dump/") {
            Some(f) => dump_dir(ctx, "local").join(f),
            None => std::path::PathBuf::from(&archive),
        },
    };
    let text = fs::read_to_string(&path)
        .map_err(|_| CmdError::die(format!("can't find archive file '{archive}'")))?;
    let parsed: serde_json::Value = serde_json::from_str(&text).map_err(|_| {
        CmdError::die(format!(
            "unable to restore VM {vmid} - unable to parse archive '{archive}'"
        ))
    })?;
    let conf: std::collections::BTreeMap<String, String> =
        serde_json::from_value(parsed["conf"].clone()).unwrap_or_default();
    if let Some(sid) = a.get("storage")
        && !ctx.need_storage(sid)?.content.iter().any(|c| c == "images")
    {
        return Err(CmdError::param(
            "storage",
            format!("storage '{sid}' does not support vm images"),
        ));
    }
    let force = a.flag("force", false);
    ctx.locked(|c| restore_checks(c, vmid, force))?;
    ctx.fail_before()?;
    Task::run(ctx, "qmrestore", &vmid.to_string(), 255, |ctx, task| {
        let mut data_started = false;
        let r = (|| -> Result<(), CmdError> {
            ctx.flock_vm(vmid)?;
            ctx.locked(|c| {
                if let Some(e) = restore_checks(c, vmid, force)? {
                    let vols: Vec<String> = c
                        .volumes()
                        .into_iter()
                        .filter(|(_, v)| v.vmid == e.vmid)
                        .map(|(k, _)| k)
                        .collect();
                    c.free_volumes(&vols)?;
                }
                let mut vm = Vm::new(vmid);
                vm.conf.insert("lock".into(), "create".into());
                c.save_vm(&vm)
            })?;
            data_started = true;
            let real = match archive.split_once(':') {
                Some((sid, rest)) => format!(
                    "{}/{}",
                    real_dump_path(ctx, sid),
                    rest.trim_start_matches("backup/")
                ),
                None => archive.clone(),
            };
            task.say(&format!("restore vma archive: zstd -q -d -c {real} | vma extract -v -r /var/tmp/vzdumptmp{}.fifo - /var/tmp/vzdumptmp{}", std::process::id(), std::process::id()))?;
            task.say(&format!("CFG: size: {} name: qemu-server.conf", text.len()))?;
            let mut newconf = conf.clone();
            let mut total = 0u64;
            for k in Vm::disk_keys(&conf) {
                let mut d = Drive::parse(&conf[&k]);
                if d.is_cdrom() && !d.is_cloudinit() {
                    continue;
                }
                let src_sid = d.storage().unwrap_or("local-lvm").to_string();
                let sid = a.get("storage").map(str::to_string).unwrap_or(src_sid);
                let size = d.size().unwrap_or(4 << 20);
                let newvol = {
                    let _g = ctx.lock()?;
                    if d.is_cloudinit() {
                        let v = format!("{sid}:vm-{vmid}-cloudinit");
                        ctx.add_volume(&v, vmid, size)?;
                        v
                    } else {
                        total += size;
                        task.say(&format!(
                            "DEV: dev_id={} size: {size} devname: drive-{k}",
                            total / size.max(1)
                        ))?;
                        ctx.alloc_disk(&sid, vmid, size)?
                    }
                };
                if !d.is_cloudinit() {
                    let name = lv_name(&newvol);
                    task.say(&format!("  Logical volume \"{name}\" created."))?;
                    task.say(&format!("new volume ID is '{newvol}'"))?;
                    task.say(&format!(
                        "map 'drive-{k}' to '/dev/pve/{name}' (write zeros = 0)"
                    ))?;
                }
                d.volid = newvol;
                newconf.insert(k.clone(), d.render());
            }
            let steps = ctx.faults.progress_steps.max(1) as u64;
            let lines: Vec<String> = (1..=steps)
                .map(|i| {
                    format!(
                        "progress {}% (read {} bytes, duration {} sec)",
                        i * 100 / steps,
                        total * i / steps,
                        0
                    )
                })
                .collect();
            let dur = ctx.faults.duration("qmrestore");
            task.work_split(ctx, dur, &lines)?;
            task.say(&format!(
                "total bytes read {total}, sparse bytes {}",
                total / 3
            ))?;
            task.say("space reduction due to 4K zero blocks 33.33%")?;
            task.say("rescan volumes...")?;
            if a.flag("unique", false) {
                for (k, v) in newconf.clone() {
                    if k.starts_with("net") && !is_drive_key(&k) && k[3..].parse::<u32>().is_ok() {
                        newconf.insert(k.clone(), with_new_mac(&v, vmid, &k));
                    }
                }
            }
            let _g = ctx.lock()?;
            let mut vm = ctx.load_vm(vmid)?.unwrap_or_else(|| Vm::new(vmid));
            vm.conf = newconf;
            vm.conf.remove("lock");
            vm.created_ms = util::now_ms();
            if a.flag("start", false) {
                vm.mark_running();
            }
            ctx.save_vm(&vm)
        })();
        r.map_err(|e| {
            if data_started {
                // Remove the lock but leave the (partial) VM in place.
                if let Ok(_g) = ctx.lock()
                    && let Ok(Some(mut vm)) = ctx.load_vm(vmid)
                {
                    vm.conf.remove("lock");
                    let _ = ctx.save_vm(&vm);
                }
                let _ = task.say(&format!(
                    "error before or during data restore, some or all disks were not completely restored. VM {vmid} state is NOT cleaned up."
                ));
            }
            CmdError::die(format!("unable to restore VM {vmid} - {}", e.msg))
        })
    })
}

/// What `qmrestore` refuses before and again inside its task; returns the VM that `--force`
/// replaces, if any.
fn restore_checks(ctx: &Ctx, vmid: u32, force: bool) -> Result<Option<Vm>, CmdError> {
    if let Some(o) = ctx.owner_of(vmid)
        && o != ctx.node.node
    {
        return Err(CmdError::die(format!(
            "unable to restore VM {vmid} - VM {vmid} already exists on node '{o}'"
        )));
    }
    let existing = ctx.load_vm(vmid)?;
    if let Some(e) = &existing {
        if !force {
            return Err(CmdError::die(format!(
                "unable to restore VM {vmid} - VM {vmid} already exists on node '{}'",
                ctx.node.node
            )));
        }
        if e.is_running() {
            return Err(CmdError::die(format!(
                "unable to restore VM {vmid} - vm is running"
            )));
        }
        if let Some(l) = e.lock() {
            return Err(CmdError::die(format!("VM is locked ({l})")));
        }
    }
    ctx.check_quorum()?;
    Ok(existing)
}
