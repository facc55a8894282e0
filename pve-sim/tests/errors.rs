//! Error texts and exit codes from the reference.
mod common;

use common::Sim;
use serde_json::json;

#[test]
fn not_found_wordings() {
    let s = Sim::new("pve1");
    let cfg = "Configuration file 'nodes/pve1/qemu-server/123.conf' does not exist";
    let unable = "unable to find configuration file for VM 123 on node 'pve1'";
    for args in [
        vec!["config", "123"],
        vec!["status", "123"],
        vec!["set", "123", "--cores", "2"],
        vec!["destroy", "123"],
        vec!["start", "123"],
        vec!["listsnapshot", "123"],
        vec!["guest", "cmd", "123", "ping"],
        vec!["unlock", "123"],
    ] {
        let o = s.qm(&args);
        assert_eq!((o.code, o.stderr.trim()), (255, cfg), "{args:?}");
    }
    for args in [
        vec!["stop", "123"],
        vec!["shutdown", "123"],
        vec!["reboot", "123"],
        vec!["clone", "123", "124"],
    ] {
        let o = s.qm(&args);
        assert_eq!((o.code, o.stderr.trim()), (255, unable), "{args:?}");
    }
    let o = s.run(
        "pvesh",
        &[
            "get",
            "/nodes/pve1/qemu/123/status/current",
            "--output-format",
            "json",
        ],
    );
    assert_eq!((o.code, o.stderr.trim()), (255, cfg));
    let o = s.run("pvesh", &["get", "/nodes/pve1/qemu/123/config"]);
    assert_eq!((o.code, o.stderr.trim()), (255, cfg));
}

#[test]
fn parameter_verification() {
    let s = Sim::new("pve1");
    let o = s.qm(&["clone", "9000", "100", "--name", "bad_name"]);
    assert_eq!(o.code, 255);
    assert_eq!(
        o.stderr,
        "400 Parameter verification failed.\nname: invalid format - value does not look like a valid DNS name\nqm clone <vmid> <newid> [OPTIONS]\n"
    );
    let o = s.qm(&["clone", "9000", "99"]);
    assert_eq!(
        o.stderr.lines().nth(1),
        Some("newid: invalid format - value does not look like a valid VM ID")
    );
    let o = s.qm(&["set", "9000", "--memory", "8"]);
    assert_eq!(
        o.stderr.lines().nth(1),
        Some("memory: value must have a minimum value of 16")
    );
    let o = s.qm(&["set", "9000", "--cores", "abc"]);
    assert_eq!(
        o.stderr.lines().nth(1),
        Some("cores: type check ('integer') failed - got 'abc'")
    );
    let o = s.qm(&["set", "9000", "--tags", "ok;b@d"]);
    assert_eq!(
        o.stderr.lines().nth(1),
        Some("tags: invalid format - invalid characters in tag")
    );
    let long = "x".repeat(8193);
    let o = s.qm(&["set", "9000", &format!("--description={long}")]);
    assert_eq!(
        o.stderr.lines().nth(1),
        Some("description: value may only be 8192 characters long")
    );
    let o = s.qm(&["resize", "9000", "scsi0", "10X"]);
    assert_eq!(
        o.stderr.lines().nth(1),
        Some("size: value does not match the regex pattern")
    );
    let o = s.qm(&["set", "9000", "--net0", "bridge=vmbr0"]);
    assert!(
        o.stderr
            .contains("net0.model: property is missing and it is not optional")
    );
    // getopt-level errors
    let o = s.qm(&["clone", "--full", "9000", "123"]);
    assert_eq!(
        (o.code, o.stderr.lines().next()),
        (255, Some("400 unable to parse boolean option"))
    );
    let o = s.qm(&["start"]);
    assert_eq!(
        o.stderr,
        "400 not enough arguments\nqm start <vmid> [OPTIONS]\n"
    );
    let o = s.qm(&["start", "100", "101"]);
    assert_eq!(o.stderr.lines().next(), Some("400 too many arguments"));
    let o = s.qm(&["set", "9000", "--bogus", "1"]);
    assert_eq!(
        o.stderr.lines().take(2).collect::<Vec<_>>(),
        vec!["Unknown option: bogus", "400 unable to parse option"]
    );
    let o = s.qm(&["set", "9000", "--name="]);
    assert!(o.stderr.contains("400 unable to parse option"));
    let o = s.qm(&["set", "9000"]);
    assert_eq!(o.stderr.trim(), "no options specified");
    // unknown subcommand / prefix expansion
    let o = s.qm(&["frobnicate"]);
    assert_eq!(o.code, 255);
    assert!(o.stderr.starts_with(
        "ERROR: unknown command 'qm frobnicate'\nUSAGE: qm <COMMAND> [ARGS] [OPTIONS]\n"
    ));
    assert_eq!(s.ok("qm", &["stat", "9000"]).stdout, "status: stopped\n");
    // options: -opt, --opt=value, abbreviations
    s.ok("qm", &["clone", "9000", "100", "-name", "a-b"]);
    s.ok("qm", &["set", "100", "-cores=3", "--sshk", "/dev/null"]);
    assert_eq!(s.config(100)["cores"], 3);
    let o = s.qm(&["set", "100", "--sshkeys", "ssh-ed25519 AAAA x"]);
    assert_eq!(
        o.stderr.trim(),
        "can't open 'ssh-ed25519 AAAA x' - No such file or directory"
    );
    let bad = s.path().join("bad.pub");
    std::fs::write(&bad, "not a key\n").unwrap();
    let o = s.qm(&["set", "100", "--sshkeys", bad.to_str().unwrap()]);
    assert_eq!(o.stderr.trim(), "SSH public key validation error");
    let o = s.qm(&["set", "100", "--cipassword"]);
    assert_ne!(o.code, 0);
    // pvesh urlencoded sshkeys
    let o = s.run(
        "pvesh",
        &[
            "set",
            "/nodes/pve1/qemu/100/config",
            "--sshkeys",
            "ssh-ed25519 AAAA",
        ],
    );
    assert!(
        o.stderr
            .contains("sshkeys: invalid urlencoded string: ssh-ed25519 AAAA"),
        "{}",
        o.stderr
    );
    s.ok(
        "pvesh",
        &[
            "set",
            "/nodes/pve1/qemu/100/config",
            "--sshkeys",
            "ssh-ed25519%20AAAAC3NzaC1lZDI1NTE5AAAAIFake%20me%40x",
        ],
    );
    assert_eq!(
        s.config(100)["sshkeys"],
        "ssh-ed25519%20AAAAC3NzaC1lZDI1NTE5AAAAIFake%20me%40x"
    );
    let o = s.run("pvesh", &["get", "/nodes/pve1/nope"]);
    assert_eq!(
        o.stderr.trim(),
        "No 'get' handler defined for '/nodes/pve1/nope'"
    );
}

#[test]
fn power_matrix_and_exit_zero_quirks() {
    let s = Sim::with_init("pve1", &["--vm", "100"]);
    // stop on stopped: silent no-op exit 0
    let o = s.qm(&["stop", "100"]);
    assert_eq!((o.code, o.stdout.as_str(), o.stderr.as_str()), (0, "", ""));
    // shutdown on stopped: warning + exit 0
    let o = s.qm(&["shutdown", "100"]);
    assert_eq!((o.code, o.stderr.as_str()), (0, "VM 100 not running\n"));
    let o = s.qm(&["reboot", "100"]);
    assert_eq!((o.code, o.stderr.trim()), (255, "VM 100 not running"));
    s.ok("qm", &["start", "100"]);
    let o = s.qm(&["start", "100"]);
    assert_eq!((o.code, o.stderr.trim()), (255, "VM 100 already running"));
    // shrink refused: exit 0 (no $upid_exit for resize), error on stderr, size unchanged
    let o = s.qm(&["disk", "resize", "100", "scsi0", "1G"]);
    assert_eq!(
        (o.code, o.stderr.trim()),
        (0, "shrinking disks is not supported")
    );
    assert!(
        s.config(100)["scsi0"]
            .as_str()
            .unwrap()
            .ends_with("size=3G")
    );
    let o = s.qm(&["resize", "100", "scsi7", "+1G"]);
    assert_eq!(
        (o.code, o.stderr.trim()),
        (0, "disk 'scsi7' does not exist")
    );
    let o = s.qm(&["resize", "100", "ide2", "+1G"]);
    assert_eq!((o.code, o.stderr.trim()), (0, "you can't resize a cdrom"));
    // paused
    s.ok("qm", &["suspend", "100"]);
    assert_eq!(s.ok("qm", &["status", "100"]).stdout, "status: paused\n");
    let o = s.qm(&["shutdown", "100"]);
    assert_eq!(
        (o.code, o.stderr.trim()),
        (255, "VM is paused - cannot shutdown")
    );
    s.ok("qm", &["resume", "100"]);
    s.ok("qm", &["resume", "100"]);
    // shutdown ignored by guest
    s.faults(json!({"shutdown_ignored": [100]}));
    let o = s.qm(&["shutdown", "100", "--timeout", "1"]);
    assert_eq!(
        (o.code, o.stderr.trim()),
        (255, "VM quit/powerdown failed - got timeout")
    );
    let o = s.qm(&["shutdown", "100", "--timeout", "1", "--forceStop", "1"]);
    assert_eq!(o.code, 0);
    assert!(
        o.stdout
            .contains("VM still running - terminating now with SIGTERM")
    );
    // template conversion failing inside the task exits 0
    s.faults(
        json!({"fail_nth": {"template": {"n": 1, "phase": "task", "message": "rename failed"}}}),
    );
    let o = s.qm(&["template", "100"]);
    assert_eq!((o.code, o.stderr.trim()), (0, "rename failed"));
    let c = s.config(100);
    assert_eq!(c["template"], 1); // written before the disks are converted
    assert_eq!(c["scsi0"], "local-lvm:vm-100-disk-0,size=3G");
    // agent not configured
    s.ok("qm", &["set", "100", "--delete", "agent,nonexistent"]);
}

#[test]
fn locks() {
    let s = Sim::new("pve1");
    s.ok("qm", &["clone", "9000", "100"]);
    assert_eq!(s.config(100)["name"], "Copy-of-VM-ubuntu-2404-tmpl");
    let o = s.qm(&["clone", "9000", "100"]);
    assert_eq!(
        (o.code, o.stderr.trim()),
        (255, "unable to create VM 100: config file already exists")
    );
    let o = s.qm(&["clone", "100", "101", "--full", "0"]);
    assert_eq!(
        o.stderr.trim(),
        "Linked clone feature is not supported for 'local-lvm:base-9000-disk-0/vm-100-disk-0' (scsi0)"
    );
    let o = s.qm(&[
        "clone",
        "9000",
        "101",
        "--full",
        "0",
        "--storage",
        "local-lvm",
    ]);
    assert_eq!(
        o.stderr.trim(),
        "parameter 'storage' not allowed for linked clones"
    );
    let o = s.qm(&["clone", "9000", "101", "--storage", "nope", "--full", "1"]);
    assert_eq!(o.stderr.trim(), "storage 'nope' does not exist");
    let o = s.qm(&["clone", "9000", "101", "--pool", "nope"]);
    assert_eq!(
        o.stderr.trim(),
        "403 Permission check failed (pool 'nope' does not exist)"
    );
    // a template with linked clones cannot be destroyed
    let o = s.qm(&["destroy", "9000"]);
    assert_eq!(
        (o.code, o.stderr.trim()),
        (
            255,
            "base volume 'local-lvm:base-9000-disk-0' is still in use by linked cloned"
        )
    );
    // a stale config lock blocks everything
    let mut vm = s.vm_file(100).unwrap();
    vm["conf"]["lock"] = json!("backup");
    std::fs::write(s.state.join("qemu-server/100.json"), vm.to_string()).unwrap();
    for args in [
        vec!["set", "100", "--cores", "1"],
        vec!["start", "100"],
        vec!["destroy", "100"],
        vec!["clone", "100", "102"],
        vec!["snapshot", "100", "s1"],
    ] {
        let o = s.qm(&args);
        assert_eq!(
            (o.code, o.stderr.trim()),
            (255, "VM is locked (backup)"),
            "{args:?}"
        );
    }
    let o = s.qm(&["resize", "100", "scsi0", "+1G"]);
    assert_eq!((o.code, o.stderr.trim()), (0, "VM is locked (backup)"));
    s.ok("qm", &["set", "100", "--cores", "1", "--skiplock", "1"]);
    s.ok("qm", &["unlock", "100"]);
    s.ok("qm", &["unlock", "100"]);
    s.ok("qm", &["destroy", "100"]);
    s.ok("qm", &["destroy", "9000"]);
}

#[test]
fn pvesm_free_exits_zero_when_its_task_fails() {
    let s = Sim::new("pve1");
    s.ok("qm", &["clone", "9000", "100"]);
    s.ok("vzdump", &["100", "--storage", "local", "--protected", "1"]);
    let list = s.json(&["/nodes/pve1/storage/local/content", "--vmid", "100"]);
    let volid = list[0]["volid"].as_str().unwrap().to_string();
    // pvesm's `free` has no exit-code hook: task failures exit 0, the error on stderr.
    let o = s.run("pvesm", &["free", &volid]);
    assert_eq!(o.code, 0);
    assert!(
        o.stderr.contains("cannot remove protected archive"),
        "{}",
        o.stderr
    );
    let o = s.run(
        "pvesm",
        &[
            "free",
            "local:backup/vzdump-qemu-100-2020_01_01-00_00_00.vma",
        ],
    );
    assert_eq!(
        (o.code, o.stderr.trim()),
        (
            0,
            "volume 'local:backup/vzdump-qemu-100-2020_01_01-00_00_00.vma' does not exist"
        )
    );
    // An unknown storage fails before the task.
    let o = s.run("pvesm", &["free", "nope:vm-100-disk-0"]);
    assert_eq!(
        (o.code, o.stderr.trim()),
        (255, "storage 'nope' does not exist")
    );
    // An injected in-task failure keeps the volume.
    s.faults(json!({"fail_nth": {"pvesm": {"n": 4, "phase": "task", "message": "disk busy"}}}));
    let o = s.run("pvesm", &["free", "local-lvm:vm-100-cloudinit"]);
    assert_eq!((o.code, o.stderr.trim()), (0, "disk busy"));
    let o = s.ok("pvesm", &["free", "local-lvm:vm-100-cloudinit"]);
    assert_eq!(o.stdout, "Removed volume 'local-lvm:vm-100-cloudinit'\n");
    let tasks = s.json(&["/nodes/pve1/tasks", "--typefilter", "imgdel"]);
    assert_eq!(tasks.as_array().map(Vec::len), Some(4));
    assert_eq!(tasks[0]["id"], "100@local-lvm");
}
