//! Fault knobs, concurrency, races, dropped connections, argv logging.
mod common;

use std::time::Duration;

use common::{Sim, poll};
use serde_json::{Value, json};

#[test]
fn concurrency_limit_20_clones_3_slots() {
    let s = Sim::new("pve1");
    s.faults(json!({"max_concurrent_tasks": 3, "durations_ms": {"clone": 150}}));
    let kids: Vec<_> = (0..20)
        .map(|i| {
            let id = (200 + i).to_string();
            let name = format!("c{i}");
            s.spawn("qm", &["clone", "9000", &id, "--name", &name])
        })
        .collect();
    for k in kids {
        let o = k.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let calls: Vec<Value> = s
        .calls()
        .into_iter()
        .filter(|c| c["key"] == "clone")
        .collect();
    assert_eq!(calls.len(), 20);
    let mut ev: Vec<(u64, i32)> = Vec::new();
    for c in &calls {
        assert_eq!(c["exit"], 0);
        ev.push((c["task_start_ms"].as_u64().unwrap(), 1));
        ev.push((c["task_end_ms"].as_u64().unwrap(), -1));
    }
    ev.sort_by_key(|(t, d)| (*t, *d)); // ends before starts at equal times
    let (mut cur, mut max) = (0, 0);
    for (_, d) in ev {
        cur += d;
        max = max.max(cur);
    }
    assert!(max <= 3, "max concurrency {max}");
    assert!(max >= 2, "tasks never overlapped ({max})");
    for i in 0..20 {
        assert!(s.config(200 + i)["name"].as_str().unwrap().starts_with('c'));
    }
}

#[test]
fn clone_race_same_newid() {
    let s = Sim::new("pve1");
    s.faults(json!({"durations_ms": {"clone": 300}}));
    let id = s
        .ok("pvesh", &["get", "/cluster/nextid"])
        .stdout
        .trim()
        .to_string();
    let a = s.spawn("qm", &["clone", "9000", &id, "--name", "a"]);
    let b = s.spawn("qm", &["clone", "9000", &id, "--name", "b"]);
    let oa = a.wait_with_output().unwrap();
    let ob = b.wait_with_output().unwrap();
    let codes = [oa.status.code().unwrap(), ob.status.code().unwrap()];
    assert!(codes.contains(&0) && codes.contains(&255), "{codes:?}");
    let loser = if codes[0] == 0 { &ob } else { &oa };
    let err = String::from_utf8_lossy(&loser.stderr);
    assert!(
        err.contains(&format!(
            "unable to create VM {id}: config file already exists"
        )),
        "{err}"
    );
    let winner = if codes[0] == 0 { "a" } else { "b" };
    assert_eq!(s.config(id.parse().unwrap())["name"], winner);
}

#[test]
fn fail_nth_before_and_in_task() {
    let s = Sim::new("pve1");
    s.faults(json!({"fail_nth": {"clone": 2}}));
    s.ok("qm", &["clone", "9000", "100"]);
    let o = s.qm(&["clone", "9000", "101"]);
    assert_eq!(
        (o.code, o.stderr.trim()),
        (255, "simulated failure (fail_nth clone #2)")
    );
    assert!(s.vm_file(101).is_none());
    s.ok("qm", &["clone", "9000", "101"]);
    // in-task failure: rolled back, "clone failed: ..."
    s.faults(
        json!({"fail_nth": {"clone": {"n": [4], "phase": "task", "message": "storage exploded"}}}),
    );
    let o = s.qm(&["clone", "9000", "102"]);
    assert_eq!(
        (o.code, o.stderr.trim()),
        (255, "clone failed: storage exploded")
    );
    assert!(o.stdout.contains("create full clone of drive ide2"));
    assert!(!o.stdout.contains("drive scsi0"));
    assert!(s.vm_file(102).is_none());
    let vols = std::fs::read_to_string(s.state.join("volumes.json")).unwrap();
    assert!(!vols.contains("vm-102-"), "{vols}");
    s.ok("qm", &["clone", "9000", "102"]);
    // custom exit code
    s.faults(json!({"fail_nth": {"status": {"n": 1, "exit_code": 2, "message": "boom"}}}));
    let o = s.qm(&["status", "100"]);
    assert_eq!((o.code, o.stderr.trim()), (2, "boom"));
}

#[test]
fn fail_rate_is_deterministic() {
    let pattern = |seed: u64| -> Vec<i32> {
        let s = Sim::new("pve1");
        s.faults(json!({"fail_rate": {"status": 0.5}, "seed": seed}));
        (0..20).map(|_| s.qm(&["status", "9000"]).code).collect()
    };
    let a = pattern(7);
    let b = pattern(7);
    assert_eq!(a, b);
    assert!(a.contains(&0) && a.contains(&255), "{a:?}");
    assert_ne!(a, pattern(8));
}

#[test]
fn hang_knob() {
    let s = Sim::new("pve1");
    s.faults(json!({"hang": ["clone"]}));
    let mut k = s.spawn("qm", &["clone", "9000", "100"]);
    let logged = poll(Duration::from_secs(10), || {
        s.calls().into_iter().find(|c| c["outcome"] == "hang")
    });
    assert!(logged.is_some());
    assert!(k.try_wait().unwrap().is_none(), "hung process exited");
    // mid-task: the placeholder with only lock: clone exists
    assert_eq!(s.vm_file(100).unwrap()["conf"], json!({"lock": "clone"}));
    k.kill().unwrap();
    k.wait().unwrap();
}

#[test]
fn drop_without_cleanup_leaves_locked_half_vm() {
    let s = Sim::new("pve1");
    s.faults(json!({"durations_ms": {"clone": 2000}, "drop": {"clone": {"after_ms": 100}}}));
    let o = s.qm(&["clone", "9000", "100", "--name", "web"]);
    assert_ne!(o.code, 0);
    let vm = s.vm_file(100).unwrap();
    assert_eq!(vm["conf"]["lock"], "clone");
    assert!(vm["conf"].get("name").is_none());
    assert!(vm["conf"].get("tags").is_none());
    assert!(s.calls().iter().any(|c| c["outcome"] == "dropped"));
    let o = s.qm(&["destroy", "100"]);
    assert_eq!(o.stderr.trim(), "VM is locked (clone)");
    s.faults(json!({}));
    s.ok("qm", &["unlock", "100"]);
    s.ok(
        "qm",
        &[
            "destroy",
            "100",
            "--purge",
            "1",
            "--destroy-unreferenced-disks",
            "1",
        ],
    );
    let vols = std::fs::read_to_string(s.state.join("volumes.json")).unwrap();
    assert!(!vols.contains("vm-100-"), "{vols}");
}

#[test]
fn drop_with_cleanup_rolls_back() {
    let s = Sim::new("pve1");
    s.faults(json!({"durations_ms": {"clone": 2000}, "drop": {"clone": {"after_ms": 100, "effect": "abort_with_cleanup"}}}));
    let o = s.qm(&["clone", "9000", "100"]);
    assert_eq!(
        (o.code, o.stderr.trim()),
        (255, "clone failed: interrupted by signal")
    );
    assert!(s.vm_file(100).is_none());
}

#[test]
fn sighup_mid_clone_leaves_lock() {
    let s = Sim::new("pve1");
    s.faults(json!({"durations_ms": {"clone": 5000}}));
    let mut k = s.spawn("qm", &["clone", "9000", "100", "--name", "web"]);
    let placeholder = poll(Duration::from_secs(10), || {
        s.vm_file(100).filter(|v| v["conf"]["lock"] == "clone")
    });
    assert!(placeholder.is_some());
    let st = std::process::Command::new("kill")
        .args(["-HUP", &k.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    k.wait().unwrap();
    let vm = s.vm_file(100).unwrap();
    assert_eq!(vm["conf"]["lock"], "clone");
    // the task shows as stopped with an unexpected status (its process is gone)
    let l = s.json(&["/nodes/pve1/tasks", "--source", "active"]);
    assert_eq!(l.as_array().unwrap().len(), 0);
}

#[test]
fn broken_stdout_aborts_with_cleanup() {
    // Closing the reading end (the SSH channel) makes the next task write fail → rollback.
    let s = Sim::new("pve1");
    s.faults(json!({"durations_ms": {"clone": 800}, "progress_steps": 8}));
    let mut k = s.spawn("qm", &["clone", "9000", "100", "--full", "1"]);
    drop(k.stdout.take());
    let o = k.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&o.stderr).contains("clone failed: interrupted by signal"));
    assert!(s.vm_file(100).is_none());
}

#[test]
fn agent_modes() {
    let s = Sim::new("pve1");
    s.ok("qm", &["clone", "9000", "100"]);
    s.ok("qm", &["clone", "9000", "101"]);
    s.faults(json!({"agent_mode_by_vmid": {"100": "never", "101": "no_ipv4"}}));
    s.ok("qm", &["start", "100"]);
    s.ok("qm", &["start", "101"]);
    let o = s.qm(&["guest", "cmd", "100", "network-get-interfaces"]);
    assert_eq!(
        (o.code, o.stderr.trim()),
        (255, "QEMU guest agent is not running")
    );
    let o = s.ok("qm", &["guest", "cmd", "101", "network-get-interfaces"]);
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert!(!o.stdout.contains("10.77."));
    assert_eq!(v[1]["name"], "eth0");
    // deleting `agent` on a running VM is only pending: still configured
    s.ok("qm", &["set", "101", "--delete", "agent"]);
    s.ok("qm", &["guest", "cmd", "101", "ping"]);
    s.ok("qm", &["stop", "101"]);
    s.ok("qm", &["start", "101"]);
    let o = s.qm(&["guest", "cmd", "101", "ping"]);
    assert_eq!(o.stderr.trim(), "No QEMU guest agent configured");
}

#[test]
fn flock_contention_times_out() {
    let s = Sim::new("pve1");
    s.ok("qm", &["clone", "9000", "100"]);
    s.ok("qm", &["start", "100"]);
    s.faults(json!({"durations_ms": {"stop": 1500}, "flock_timeout_ms": 300}));
    let k = s.spawn("qm", &["stop", "100"]);
    poll(Duration::from_secs(5), || {
        s.ok(
            "pvesh",
            &[
                "get",
                "/nodes/pve1/tasks",
                "--source",
                "active",
                "--output-format",
                "json",
            ],
        )
        .stdout
        .contains("qmstop")
        .then_some(())
    })
    .unwrap();
    let o = s.qm(&["set", "100", "--name", "x"]);
    assert_eq!(o.code, 255);
    assert_eq!(
        o.stderr,
        "trying to acquire lock...\ncan't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout\n"
    );
    assert!(k.wait_with_output().unwrap().status.success());
}

#[test]
fn argv_logged_exactly() {
    let s = Sim::new("pve1");
    s.ok("qm", &["clone", "9000", "100"]);
    let hostile =
        "it's \"quoted\" $(rm -rf /) `id` ; | & \\ \n second line\ttab — ünïcødé 🚀 %0A %s";
    let arg = format!("--description={hostile}");
    s.ok("qm", &["set", "100", &arg]);
    let calls = s.calls();
    let last = calls.last().unwrap();
    // argv[0] is logged as invoked (here: the symlink's full path)
    assert!(last["argv"][0].as_str().unwrap().ends_with("/qm"));
    assert_eq!(
        last["argv"].as_array().unwrap()[1..],
        [json!("set"), json!("100"), json!(arg)]
    );
    assert_eq!(last["tool"], "qm");
    assert_eq!(last["exit"], 0);
    assert_eq!(s.config(100)["description"], hostile);
    // Through a shell with POSIX single quoting, the way an SSH driver sends it.
    let quoted = format!("'{}'", arg.replace('\'', "'\\''"));
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("qm set 100 {quoted} && echo ok"))
        .env("PATH", format!("{}:/usr/bin:/bin", s.bin.display()))
        .env("PVE_SIM_STATE", &s.state)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        s.calls().last().unwrap()["argv"],
        json!(["qm", "set", "100", arg])
    );
}

#[test]
fn env_file_selects_node() {
    let s = Sim::new("pve7");
    let env = s.path().join("env");
    std::fs::write(
        &env,
        format!("# comment\nPVE_SIM_STATE={}\n", s.state.display()),
    )
    .unwrap();
    let o = std::process::Command::new(s.bin.join("pvesh"))
        .args(["get", "/nodes/pve7/qemu", "--output-format", "json"])
        .env_remove("PVE_SIM_STATE")
        .env("PVE_SIM_ENV_FILE", &env)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["vmid"], 9000);
    assert_eq!(v[0]["template"], 1);
}

#[test]
fn vzdump_lock_blocks_and_serialises() {
    let s = Sim::with_init("pve1", &["--vm", "100", "--vm", "101"]);
    s.faults(json!({"durations_ms": {"backup": 600}}));
    let k = s.spawn("vzdump", &["100", "--storage", "local"]);
    poll(Duration::from_secs(5), || {
        (s.vm_file(100)?["conf"]["lock"] == "backup").then_some(())
    })
    .unwrap();
    let st = s.json(&["/nodes/pve1/qemu/100/status/current"]);
    assert_eq!(
        (st["status"].as_str(), st["qmpstatus"].as_str()),
        (Some("running"), Some("prelaunch"))
    );
    let o = s.qm(&["set", "100", "--cores", "1"]);
    assert_eq!(o.stderr.trim(), "VM is locked (backup)");
    let k2 = s.spawn("vzdump", &["101", "--storage", "local"]);
    let o2 = k2.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&o2.stdout)
            .contains("INFO: trying to get global lock - waiting...")
    );
    assert!(o2.status.success());
    assert!(k.wait_with_output().unwrap().status.success());
    assert!(s.config(100).get("lock").is_none());
    assert_eq!(s.ok("qm", &["status", "100"]).stdout, "status: stopped\n");
}

#[test]
fn show_and_no_quorum() {
    let s = Sim::new("pve1");
    s.faults(json!({"no_quorum": true}));
    let o = s.qm(&["clone", "9000", "100"]);
    assert_eq!(
        (o.code, o.stderr.trim()),
        (255, "cluster not ready - no quorum?")
    );
    let o = s.qm(&["set", "9000", "--cores", "1"]);
    assert_eq!(o.stderr.trim(), "cluster not ready - no quorum?");
    let o = std::process::Command::new(common::exe())
        .args(["show", "--state"])
        .arg(&s.state)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["node"]["node"], "pve1");
    assert_eq!(v["vms"]["9000"]["conf"]["template"], "1");
    assert_eq!(v["counters"]["clone"], 1);
}
