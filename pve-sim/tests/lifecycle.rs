//! Happy-path lifecycle and read APIs.
mod common;

use std::time::Duration;

use common::{Sim, poll};
use serde_json::{Value, json};

#[test]
fn clone_set_resize_start_agent_stop_destroy() {
    let s = Sim::new("pve1");
    s.faults(json!({"agent_ip_delay_ms": 400, "durations_ms": {"clone": 50, "start": 50}}));
    let id = s.json(&["/cluster/nextid"]);
    assert_eq!(id, json!("100"));
    let o = s.ok(
        "qm",
        &[
            "clone",
            "9000",
            "100",
            "--name",
            "web-01",
            "--description=managed-by=acme;id=1",
        ],
    );
    assert!(
        o.stdout
            .contains("create linked clone of drive scsi0 (local-lvm:base-9000-disk-0)"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout
            .contains("create full clone of drive ide2 (local-lvm:vm-9000-cloudinit)")
    );
    let c = s.config(100);
    assert_eq!(c["name"], "web-01");
    assert_eq!(
        c["scsi0"],
        "local-lvm:base-9000-disk-0/vm-100-disk-0,size=3G"
    );
    assert!(c.get("template").is_none());
    assert!(c.get("lock").is_none());
    assert_eq!(c["cores"], 2); // integers are JSON numbers
    assert_eq!(c["memory"], "2048"); // memory is a string

    let keyf = s.path().join("key.pub");
    std::fs::write(
        &keyf,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyMaterial0000000000 ops@example\n",
    )
    .unwrap();
    let o = s.ok(
        "qm",
        &[
            "set",
            "100",
            "--cores",
            "4",
            "--memory",
            "4096",
            "--tags",
            "Acme;tenant-42,acme",
            "--ciuser",
            "ubuntu",
            "--sshkeys",
            keyf.to_str().unwrap(),
            "--ipconfig0",
            "ip=10.0.0.5/24,gw=10.0.0.1",
            "--nameserver",
            "1.1.1.1 9.9.9.9",
            "--searchdomain",
            "example.com",
            "--onboot",
            "1",
            "--cipassword",
            "secret",
        ],
    );
    assert!(
        o.stdout
            .starts_with("update VM 100: -cipassword <hidden> -ciuser ubuntu -cores 4"),
        "{}",
        o.stdout
    );
    let c = s.config(100);
    assert_eq!(c["tags"], "acme;tenant-42");
    assert_eq!(c["cores"], 4);
    assert_eq!(c["cipassword"], "**********");
    assert!(
        c["sshkeys"]
            .as_str()
            .unwrap()
            .starts_with("ssh-ed25519%20AAAA")
    );
    assert!(
        c["sshkeys"]
            .as_str()
            .unwrap()
            .contains("%20ops%40example%0A")
    );
    let ud = s.ok("qm", &["cloudinit", "dump", "100", "user"]).stdout;
    assert!(
        ud.contains("hostname: web-01\n") && ud.contains("fqdn: web-01.example.com\n"),
        "{ud}"
    );
    assert!(ud.contains("  - ssh-ed25519 AAAAC3"));
    let nd = s.ok("qm", &["cloudinit", "dump", "100", "network"]).stdout;
    assert!(
        nd.contains("address: '10.0.0.5'") && nd.contains("gateway: '10.0.0.1'"),
        "{nd}"
    );

    // resize: relative then absolute, idempotent absolute
    s.ok("qm", &["disk", "resize", "100", "scsi0", "+1G"]);
    s.ok("qm", &["resize", "100", "scsi0", "8G"]);
    s.ok("qm", &["resize", "100", "scsi0", "8G"]);
    assert!(
        s.config(100)["scsi0"]
            .as_str()
            .unwrap()
            .ends_with("size=8G")
    );

    // agent before start
    let o = s.qm(&["guest", "cmd", "100", "network-get-interfaces"]);
    assert_ne!(o.code, 0);
    assert_eq!(o.stderr.trim(), "VM 100 is not running");

    let o = s.ok("qm", &["start", "100"]);
    assert!(o.stdout.contains("generating cloud-init ISO"));
    assert_eq!(s.ok("qm", &["status", "100"]).stdout, "status: running\n");
    let st = s.json(&["/nodes/pve1/qemu/100/status/current"]);
    assert_eq!(st["status"], "running");
    assert_eq!(st["qmpstatus"], "running");
    assert_eq!(st["agent"], 1);
    assert_eq!(st["maxmem"], 4096u64 << 20);
    assert_eq!(st["maxdisk"], 8u64 << 30);

    // IP appears after the configured delay: poll with a deadline.
    let mut saw_not_running = false;
    let ip = poll(Duration::from_secs(10), || {
        let o = s.qm(&["guest", "cmd", "100", "network-get-interfaces"]);
        if o.code != 0 {
            assert_eq!(o.stderr.trim(), "QEMU guest agent is not running");
            saw_not_running = true;
            return None;
        }
        let v: Value = serde_json::from_str(&o.stdout).unwrap();
        let eth = v
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == "eth0")
            .cloned()
            .unwrap();
        eth["ip-addresses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["ip-address-type"] == "ipv4")
            .map(|a| a["ip-address"].as_str().unwrap().to_string())
    })
    .expect("agent IP never appeared");
    assert!(
        saw_not_running,
        "agent answered before the configured delay"
    );
    assert!(ip.starts_with("10.77."));
    // MAC in the guest's lowercase matches the config's net0.
    let net0 = s.config(100)["net0"].as_str().unwrap().to_string();
    let o = s.ok(
        "pvesh",
        &[
            "get",
            "/nodes/pve1/qemu/100/agent/network-get-interfaces",
            "--output-format",
            "json",
        ],
    );
    let v: Value = serde_json::from_str(o.stdout.trim()).unwrap();
    let mac = v["result"][1]["hardware-address"]
        .as_str()
        .unwrap()
        .to_uppercase();
    assert!(net0.contains(&mac), "{net0} vs {mac}");
    assert_eq!(s.ok("qm", &["guest", "cmd", "100", "ping"]).stdout, "");

    // running VM: cores pending, name immediate
    s.ok("qm", &["set", "100", "--cores", "8", "--name", "web-02"]);
    assert_eq!(
        s.json(&["/nodes/pve1/qemu/100/config", "--current", "1"])["cores"],
        4
    );
    assert_eq!(s.config(100)["cores"], 8);
    assert_eq!(
        s.json(&["/nodes/pve1/qemu/100/config", "--current", "1"])["name"],
        "web-02"
    );
    let p = s.ok("qm", &["pending", "100"]).stdout;
    assert!(p.contains("cur cores: 4\nnew cores: 8\n"), "{p}");

    let o = s.qm(&["destroy", "100"]);
    assert_ne!(o.code, 0);
    assert_eq!(o.stderr.trim(), "VM 100 is running - destroy failed");
    s.ok("qm", &["stop", "100"]);
    assert_eq!(s.ok("qm", &["status", "100"]).stdout, "status: stopped\n");
    s.ok("qm", &["start", "100"]);
    assert_eq!(
        s.json(&["/nodes/pve1/qemu/100/config", "--current", "1"])["cores"],
        8
    );
    s.ok("qm", &["shutdown", "100", "--timeout", "5"]);
    let o = s.ok("qm", &["destroy", "100", "--purge", "1"]);
    assert!(
        o.stdout
            .contains("Logical volume \"vm-100-disk-0\" successfully removed.")
    );
    let o = s.qm(&["config", "100"]);
    assert_eq!(
        o.stderr.trim(),
        "Configuration file 'nodes/pve1/qemu-server/100.conf' does not exist"
    );
    // nextid reuses the lowest free id
    assert_eq!(s.json(&["/cluster/nextid"]), json!("100"));
}

#[test]
fn qm_list_and_config_formats() {
    let s = Sim::with_init("pve1", &["--template", "9000:tmpl", "--vm", "101"]);
    let l = s.ok("qm", &["list"]).stdout;
    let lines: Vec<&str> = l.lines().collect();
    assert_eq!(
        lines[0],
        "      VMID NAME                 STATUS     MEM(MB)    BOOTDISK(GB) PID       "
    );
    assert_eq!(
        lines[1],
        "       101 vm101                stopped    2048               3.00 0         "
    );
    s.ok(
        "qm",
        &["set", "101", "--description", "managed-by:acme\n100% é"],
    );
    let c = s.ok("qm", &["config", "101"]).stdout;
    assert!(
        c.contains("description: managed-by%3Aacme%0A100%25 %C3%A9\n"),
        "{c}"
    );
    assert!(!c.contains("digest"));
    assert_eq!(s.config(101)["description"], "managed-by:acme\n100% é");
    s.ok("qm", &["destroy", "101"]);
    s.ok("qm", &["destroy", "9000"]);
    assert_eq!(s.ok("qm", &["list"]).stdout, "");
}

#[test]
fn cluster_resources_and_peers() {
    let s2 = Sim::with_init("pve2", &["--vm", "100:other"]);
    let s = Sim::with_init("pve1", &["--peer", &format!("pve2={}", s2.state.display())]);
    let r = s.json(&["/cluster/resources", "--type", "vm"]);
    let arr = r.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    let other = arr.iter().find(|x| x["vmid"] == 100).unwrap();
    assert_eq!(other["node"], "pve2");
    assert_eq!(other["id"], "qemu/100");
    // nextid is cluster-wide
    assert_eq!(s.json(&["/cluster/nextid"]), json!("101"));
    let o = s.run("pvesh", &["get", "/cluster/nextid", "--vmid", "100"]);
    assert_eq!(o.code, 255);
    assert_eq!(
        o.stderr,
        "400 Parameter verification failed.\nvmid: VM 100 already exists\npvesh get <api_path> [OPTIONS] [FORMAT_OPTIONS]\n"
    );
    assert_eq!(
        s.ok("pvesh", &["get", "/cluster/nextid", "--vmid", "555"])
            .stdout,
        "555\n"
    );
    // qm does not see the peer's VM
    let o = s.qm(&["stop", "100"]);
    assert_eq!(
        o.stderr.trim(),
        "unable to find configuration file for VM 100 on node 'pve1'"
    );
    // pvesh forwards to the peer
    assert_eq!(
        s.json(&["/nodes/pve2/qemu/100/status/current"])["name"],
        "other"
    );
    // vzdump of a VM on another node: silent exit 0
    let o = s.run("vzdump", &["100", "--storage", "local"]);
    assert_eq!((o.code, o.stdout.as_str(), o.stderr.as_str()), (0, "", ""));
    // rrd lag
    s.faults(json!({"rrd_lag_ms": 60000, "nextid_json": "number"}));
    s.ok("qm", &["clone", "9000", "101", "--name", "fresh"]);
    let r = s.json(&["/cluster/resources", "--type", "vm"]);
    let fresh = r
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["vmid"] == 101)
        .unwrap()
        .clone();
    assert_eq!(fresh["status"], "unknown");
    assert!(fresh.get("name").is_none());
    assert_eq!(s.json(&["/cluster/nextid"]), json!(102));
}

#[test]
fn snapshots_tree_and_rollback() {
    let s = Sim::with_init("pve1", &["--vm", "100:web"]);
    s.ok(
        "qm",
        &[
            "snapshot",
            "100",
            "before",
            "--description",
            "first\nsecond",
        ],
    );
    s.ok("qm", &["set", "100", "--cores", "6"]);
    s.ok("qm", &["snapshot", "100", "after"]);
    let t = s.ok("qm", &["listsnapshot", "100"]).stdout;
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 3, "{t}");
    // printf("%s %-Ns %-23s %s\n", prefix, name, time, desc) with N = 30 - len(prefix)
    assert!(
        lines[0].starts_with(&format!("`-> {:<27} 2", "before")),
        "{t}"
    );
    assert!(lines[0].ends_with(" first"));
    assert!(
        lines[1].starts_with(&format!(" `-> {:<26} 2", "after")),
        "{t}"
    );
    assert!(lines[1].ends_with("no-description"));
    assert_eq!(
        lines[2],
        format!("  `-> {:<25} {:<23} You are here!", "current", "")
    );
    let o = s.qm(&["snapshot", "100", "before"]);
    assert_eq!(o.stderr.trim(), "snapshot name 'before' already used");
    let o = s.qm(&["snapshot", "100", "current"]);
    assert_eq!(
        o.stderr.trim(),
        "unable to use snapshot name 'current' (reserved name)"
    );
    s.ok("qm", &["start", "100"]);
    s.ok("qm", &["rollback", "100", "before"]);
    assert_eq!(s.config(100)["cores"], 2);
    assert_eq!(s.ok("qm", &["status", "100"]).stdout, "status: stopped\n");
    s.ok("qm", &["delsnapshot", "100", "before"]);
    let o = s.qm(&["delsnapshot", "100", "before"]);
    assert_eq!(o.stderr.trim(), "snapshot 'before' does not exist");
    let o = s.qm(&["template", "100"]);
    assert_eq!(
        o.stderr.trim(),
        "unable to create template, because VM contains snapshots"
    );
    s.ok("qm", &["delsnapshot", "100", "after"]);
    s.ok("qm", &["template", "100"]);
    assert_eq!(s.config(100)["scsi0"], "local-lvm:base-100-disk-0,size=3G");
    let o = s.qm(&["start", "100"]);
    assert_eq!(
        (o.code, o.stderr.trim()),
        (255, "you can't start a vm if it's a template")
    );
}

#[test]
fn backup_list_restore_delete() {
    let s = Sim::with_init("pve1", &["--vm", "100:web", "--keep-last", "2"]);
    s.ok("qm", &["set", "100", "--tags", "acme"]);
    let o = s.ok(
        "vzdump",
        &[
            "100",
            "--storage",
            "local",
            "--mode",
            "snapshot",
            "--compress",
            "zstd",
            "--notes-template",
            "{{guestname}} on {{node}}",
        ],
    );
    assert!(o.stdout.contains("INFO: backup mode: stop"), "{}", o.stdout); // stopped VM
    assert!(
        o.stdout
            .contains("INFO: starting kvm to execute backup task")
    );
    assert!(o.stdout.contains("INFO: stopping kvm after backup task"));
    assert!(
        o.stdout
            .ends_with("INFO: Backup job finished successfully\n")
    );
    let list = s.json(&["/nodes/pve1/storage/local/content", "--content", "backup"]);
    let b = &list[0];
    let volid = b["volid"].as_str().unwrap().to_string();
    assert!(volid.starts_with("local:backup/vzdump-qemu-100-") && volid.ends_with(".vma.zst"));
    assert_eq!(b["notes"], "web on pve1");
    assert_eq!(b["format"], "vma.zst");
    assert_eq!(b["subtype"], "qemu");
    assert!(b["ctime"].as_i64().unwrap() > 1_600_000_000);
    assert!(s.config(100).get("lock").is_none());

    let o = s.run("qmrestore", &[&volid, "100"]);
    assert_eq!(o.code, 255);
    assert_eq!(
        o.stderr.trim(),
        "unable to restore VM 100 - VM 100 already exists on node 'pve1'"
    );
    let o = s.ok("qmrestore", &[&volid, "200", "--storage", "local-lvm"]);
    assert!(
        o.stdout
            .contains("new volume ID is 'local-lvm:vm-200-disk-0'")
    );
    let c = s.config(200);
    assert_eq!(c["tags"], "acme");
    assert_eq!(c["scsi0"], "local-lvm:vm-200-disk-0,size=3G");
    s.ok("qmrestore", &[&volid, "100", "--force", "1"]);

    // unknown notes variable: warning, still exit 0
    let o = s.run(
        "vzdump",
        &["200", "--storage", "local", "--notes-template", "{{bogus}}"],
    );
    assert_eq!(o.code, 0);
    assert!(
        o.stdout
            .contains("WARN: unable to add notes - found unknown: {{bogus}}")
    );
    assert_eq!(o.stderr, "Task finished with 1 warning(s)!\n");
    // unknown vmid: job errors
    let o = s.run("vzdump", &["777", "--storage", "local"]);
    assert_eq!(o.code, 255);
    assert!(
        o.stdout
            .contains("ERROR: Backup of VM 777 failed - unable to find VM '777'")
    );
    assert!(o.stdout.contains("INFO: Backup job finished with errors"));
    assert_eq!(o.stderr, "job errors\n");
    // wrong content type
    let o = s.run("vzdump", &["100", "--storage", "local-lvm"]);
    assert_eq!(
        o.stderr.trim(),
        "can't use storage 'local-lvm' for backups - wrong content type"
    );

    let o = s.ok(
        "pvesh",
        &[
            "delete",
            &format!("/nodes/pve1/storage/local/content/{volid}"),
        ],
    );
    assert!(
        o.stdout
            .trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("UPID:pve1:")
    );
    let list = s.json(&[
        "/nodes/pve1/storage/local/content",
        "--content",
        "backup",
        "--vmid",
        "100",
    ]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|b| b["volid"] != volid.as_str())
    );
}

#[test]
fn task_status_api() {
    let s = Sim::with_init("pve1", &["--vm", "100"]);
    s.ok("qm", &["start", "100"]);
    let calls = s.calls();
    let upid = calls.last().unwrap()["upid"].as_str().unwrap().to_string();
    let re_ok = upid.starts_with("UPID:pve1:")
        && upid.ends_with(":qmstart:100:root@pam:")
        && upid.split(':').count() == 9;
    assert!(re_ok, "{upid}");
    let st = s.json(&[&format!("/nodes/pve1/tasks/{upid}/status")]);
    assert_eq!(st["status"], "stopped");
    assert_eq!(st["exitstatus"], "OK");
    let o = s.run(
        "pvesh",
        &[
            "get",
            "/nodes/pve1/tasks/UPID:pve1:00000001:00000001:00000001:x:1:root@pam:/status",
        ],
    );
    assert!(o.stderr.contains("upid: no such task"));
    let l = s.json(&["/nodes/pve1/tasks", "--typefilter", "qmstart"]);
    assert_eq!(l.as_array().unwrap().len(), 1);
}
