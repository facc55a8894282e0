//! `SshProxmox` (the `Proxmox` trait over SSH) against a real OpenSSH server in front of the
//! Proxmox simulator (`testenv/sshd`).
//!
//! Every test starts its own private sshd with fresh node states (about 0.2 s), so tests may
//! set fault knobs (`faults.json` is per node), count calls in `calls.log` and restart or stop
//! sshd, and all of them run in parallel.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use cloudpods::proxmox::driver::DriverSettings;
use cloudpods::proxmox::{
    Applied, BackupSpec, BackupVolid, CiUser, CloneSpec, CloudInitSpec, Cores, Description,
    Destroyed, DiskId, IpConfig, LockKind, MemoryMib, Missing, Nameservers, NodeName,
    ObservedState, Proxmox, ProxmoxError, RestoreSpec, RunStatus, SearchDomain, SizeSpec,
    SnapshotName, SshPublicKey, StorageId, Tag,
};
use common::proxmox::{PveEnv, TEMPLATE, clone_spec, fast_settings, job, marker, node, vmid};
use common::ssh::sshd_action;
use serde_json::json;

const T: Duration = Duration::from_secs(20);

/// A private sshd with node `pve1` and a driver for it with [`fast_settings`].
async fn start() -> PveEnv {
    PveEnv::start(fast_settings()).await
}

/// Polls `check` until it returns `Some`, failing after `within`.
async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn client_key(env: &PveEnv) -> SshPublicKey {
    let text = std::fs::read_to_string(env.sshd.file("client_ed25519.pub")).expect("pub key");
    SshPublicKey::parse(text.trim()).expect("valid key")
}

// ---- every operation, and repeating it ------------------------------------------------------

#[tokio::test]
async fn reads_next_vmid_and_vmid_checks() {
    let env = start().await;
    let n = node();
    assert_eq!(env.pve.next_vmid(&n).await, Ok(vmid(100)));
    assert_eq!(env.pve.vmid_is_free(&n, vmid(100)).await, Ok(true));
    assert_eq!(env.pve.vmid_is_free(&n, vmid(TEMPLATE)).await, Ok(false));
    assert_eq!(env.pve.list_managed_vms(&n).await, Ok(vec![]));

    env.clone_template(100, "r1").await;
    assert_eq!(env.pve.next_vmid(&n).await, Ok(vmid(101)));
    assert_eq!(env.pve.vmid_is_free(&n, vmid(100)).await, Ok(false));
    // Managed = tagged `cloudpods`; the clone only becomes managed once tagged.
    assert_eq!(env.pve.list_managed_vms(&n).await, Ok(vec![]));
    env.pve
        .set_tags(&n, vmid(100), &marker("r1").tags())
        .await
        .expect("tags");
    let managed = env.pve.list_managed_vms(&n).await.expect("managed");
    assert_eq!(managed.len(), 1);
    assert_eq!(managed[0].vmid, vmid(100));
    assert_eq!(managed[0].node, "pve1");
}

#[tokio::test]
async fn clone_is_idempotent_and_looks_before_creating() {
    let env = start().await;
    let n = node();
    let spec = clone_spec(120, "c1");
    assert_eq!(
        env.pve.clone_vm(&n, &job("clone-120"), &spec).await,
        Ok(Applied::Now)
    );
    // Same job: reports the first run, starts nothing.
    assert_eq!(
        env.pve.clone_vm(&n, &job("clone-120"), &spec).await,
        Ok(Applied::Already)
    );
    // A new job for a target that exists with our marker: looked at, not created.
    assert_eq!(
        env.pve.clone_vm(&n, &job("clone-120-b"), &spec).await,
        Ok(Applied::Already)
    );
    // The job files can be removed; the VM itself then answers.
    assert_eq!(env.pve.cleanup_job(&n, &job("clone-120")).await, Ok(true));
    assert_eq!(
        env.pve.clone_vm(&n, &job("clone-120"), &spec).await,
        Ok(Applied::Already)
    );
    assert_eq!(env.calls(&["qm", "clone"]).len(), 1, "exactly one qm clone");

    // Someone else's marker on the target: VmidTaken, and nothing is run.
    let other = clone_spec(120, "someone-else");
    assert_eq!(
        env.pve.clone_vm(&n, &job("clone-120-other"), &other).await,
        Err(ProxmoxError::VmidTaken {
            vmid: Some(vmid(120))
        })
    );
    assert_eq!(env.calls(&["qm", "clone"]).len(), 1);

    let cfg = env.pve.config(&n, vmid(120)).await.expect("config");
    assert_eq!(cfg.marker(), Some(marker("c1")));
    assert_eq!(cfg.name.as_deref(), Some("web-120"));
    assert_eq!(cfg.lock, None);
    assert!(!cfg.template);
}

#[tokio::test]
async fn the_same_job_started_concurrently_runs_once() {
    let env = start().await;
    env.set_faults(json!({"durations_ms": {"clone": 800}}));
    let spec = clone_spec(121, "c2");
    let j = job("clone-121");
    let n = node();
    let (a, b) = tokio::join!(
        env.pve.clone_vm(&n, &j, &spec),
        env.pve.clone_vm(&n, &j, &spec)
    );
    let mut got = [a.expect("first"), b.expect("second")];
    got.sort_by_key(|x| *x == Applied::Already);
    assert_eq!(got, [Applied::Now, Applied::Already]);
    assert_eq!(env.calls(&["qm", "clone"]).len(), 1);
}

#[tokio::test]
async fn settings_are_idempotent() {
    let env = start().await;
    let n = node();
    env.clone_template(130, "s1").await;
    let v = vmid(130);
    let mut tags = marker("s1").tags();
    tags.push(Tag::parse("Tenant-ACME").expect("tag"));
    for _ in 0..2 {
        env.pve.set_tags(&n, v, &tags).await.expect("tags");
        env.pve
            .set_resources(
                &n,
                v,
                Some(Cores::new(4).expect("cores")),
                Some(MemoryMib::new(4096).expect("mem")),
            )
            .await
            .expect("resources");
    }
    let cfg = env.pve.config(&n, v).await.expect("config");
    assert_eq!(cfg.tags, ["cloudpods", "cloudpods-s1", "tenant-acme"]);
    assert_eq!(cfg.cores, Some(4));
    assert_eq!(cfg.memory_mib, Some(4096));
    assert!(cfg.is_owned_by(&marker("s1")));

    let key = client_key(&env);
    let spec = CloudInitSpec {
        user: Some(CiUser::parse("deploy").expect("user")),
        ssh_keys: vec![key.clone()],
        ipconfig0: Some(IpConfig::parse("ip=10.0.0.5/24,gw=10.0.0.1").expect("ip")),
        nameservers: Some(Nameservers::parse("1.1.1.1 9.9.9.9").expect("ns")),
        searchdomain: Some(SearchDomain::parse("example.com").expect("sd")),
    };
    for _ in 0..2 {
        env.pve
            .configure_cloud_init(&n, v, &spec)
            .await
            .expect("cloud-init");
    }
    let cfg = env.pve.config(&n, v).await.expect("config");
    assert_eq!(cfg.ciuser.as_deref(), Some("deploy"));
    assert_eq!(cfg.ipconfig0.as_deref(), Some("ip=10.0.0.5/24,gw=10.0.0.1"));
    let sets = env.calls(&["qm", "set", "130"]);
    assert_eq!(sets.len(), 6);
    // The key travelled on stdin into a temp file, never on the command line.
    let last = sets.last().expect("set");
    assert!(
        last.last().expect("arg").starts_with("--sshkeys=/"),
        "{last:?}"
    );
    assert!(sets.iter().flatten().all(|a| !a.contains("AAAA")));
}

#[tokio::test]
async fn resize_is_verified_and_absolute_sizes_are_idempotent() {
    let env = start().await;
    let n = node();
    env.clone_template(140, "z1").await;
    let v = vmid(140);
    let d = DiskId::scsi0();
    let size = |cfg: cloudpods::proxmox::VmConfig| cfg.boot_disk.and_then(|b| b.size_bytes);
    assert_eq!(
        env.pve
            .resize_disk(&n, v, &d, SizeSpec::absolute_gib(10).expect("s"))
            .await,
        Ok(Applied::Now)
    );
    assert_eq!(
        env.pve
            .resize_disk(&n, v, &d, SizeSpec::absolute_gib(10).expect("s"))
            .await,
        Ok(Applied::Already)
    );
    assert_eq!(
        size(env.pve.config(&n, v).await.expect("cfg")),
        Some(10 << 30)
    );
    assert!(matches!(
        env.pve
            .resize_disk(&n, v, &d, SizeSpec::absolute_gib(5).expect("s"))
            .await,
        Err(ProxmoxError::Rejected { field, .. }) if field == "size"
    ));
    assert_eq!(
        env.pve
            .resize_disk(&n, v, &d, SizeSpec::grow_gib(2).expect("s"))
            .await,
        Ok(Applied::Now)
    );
    assert_eq!(
        size(env.pve.config(&n, v).await.expect("cfg")),
        Some(12 << 30)
    );
    assert_eq!(
        env.calls(&["qm", "disk", "resize"]).len(),
        2,
        "no command for Already/shrink"
    );
    assert_eq!(
        env.pve
            .resize_disk(
                &n,
                v,
                &DiskId::parse("scsi5").expect("d"),
                SizeSpec::absolute_gib(1).expect("s")
            )
            .await,
        Err(ProxmoxError::NotFound {
            what: Missing::Disk("scsi5".into())
        })
    );
}

#[tokio::test]
async fn power_operations_are_idempotent() {
    let env = start().await;
    let n = node();
    env.clone_template(150, "p1").await;
    let v = vmid(150);
    let secs = Duration::from_secs(5);
    assert_eq!(env.pve.stop(&n, v).await, Ok(Applied::Already));
    assert_eq!(
        env.pve.shutdown(&n, v, secs, false).await,
        Ok(Applied::Already)
    );
    assert_eq!(
        env.pve.reboot(&n, v, secs).await,
        Err(ProxmoxError::AlreadyInState {
            state: ObservedState::Stopped
        })
    );
    assert_eq!(env.pve.start(&n, v).await, Ok(Applied::Now));
    assert_eq!(env.pve.start(&n, v).await, Ok(Applied::Already));
    let st = env.pve.status(&n, v).await.expect("status");
    assert_eq!(st.status, RunStatus::Running);
    assert!(st.is_running());
    assert_eq!(env.pve.reboot(&n, v, secs).await, Ok(()));
    assert_eq!(env.pve.shutdown(&n, v, secs, false).await, Ok(Applied::Now));
    assert_eq!(
        env.pve.shutdown(&n, v, secs, true).await,
        Ok(Applied::Already)
    );
    assert_eq!(env.pve.start(&n, v).await, Ok(Applied::Now));
    assert_eq!(env.pve.stop(&n, v).await, Ok(Applied::Now));
    assert_eq!(env.pve.stop(&n, v).await, Ok(Applied::Already));
    let st = env.pve.status(&n, v).await.expect("status");
    assert_eq!(st.status, RunStatus::Stopped);
    assert_eq!(env.calls(&["qm", "stop"]).len(), 1);
    assert_eq!(env.calls(&["qm", "start"]).len(), 3);
}

#[tokio::test]
async fn snapshots_are_idempotent() {
    let env = start().await;
    let n = node();
    env.clone_template(160, "n1").await;
    let v = vmid(160);
    let snap = SnapshotName::parse("before-upgrade").expect("snap");
    let desc = Description::parse("first").expect("desc");
    assert_eq!(
        env.pve.snapshot(&n, v, &snap, Some(&desc)).await,
        Ok(Applied::Now)
    );
    assert_eq!(
        env.pve.snapshot(&n, v, &snap, Some(&desc)).await,
        Ok(Applied::Already)
    );
    let list = env.pve.list_snapshots(&n, v).await.expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, "before-upgrade");
    assert_eq!(list[0].description.as_deref(), Some("first"));

    env.pve
        .set_resources(&n, v, Some(Cores::new(8).expect("c")), None)
        .await
        .expect("set");
    env.pve.rollback(&n, v, &snap).await.expect("rollback");
    assert_eq!(
        env.pve.config(&n, v).await.expect("cfg").cores,
        Some(2),
        "rolled back"
    );
    let missing = SnapshotName::parse("nope").expect("snap");
    assert_eq!(
        env.pve.rollback(&n, v, &missing).await,
        Err(ProxmoxError::NotFound {
            what: Missing::Snapshot("nope".into())
        })
    );
    assert_eq!(
        env.pve.delete_snapshot(&n, v, &snap).await,
        Ok(Destroyed::Now)
    );
    assert_eq!(
        env.pve.delete_snapshot(&n, v, &snap).await,
        Ok(Destroyed::AlreadyGone)
    );
    assert_eq!(env.pve.list_snapshots(&n, v).await, Ok(vec![]));
}

#[tokio::test]
async fn backup_restore_and_delete_are_idempotent() {
    let env = start().await;
    let n = node();
    env.clone_template(170, "b1").await;
    let local = StorageId::parse("local").expect("sid");
    let spec = BackupSpec {
        vmid: vmid(170),
        storage: local.clone(),
        marker: marker("b1"),
        prune: false,
    };
    let entry = env
        .pve
        .backup(&n, &job("backup-170-1"), &spec)
        .await
        .expect("backup");
    assert_eq!(entry.vmid, Some(vmid(170)));
    assert_eq!(entry.marker(), Some(marker("b1")));
    assert!(
        entry
            .volid
            .as_str()
            .starts_with("local:backup/vzdump-qemu-170-")
    );
    // Same job: the same archive, no second vzdump.
    let again = env
        .pve
        .backup(&n, &job("backup-170-1"), &spec)
        .await
        .expect("backup again");
    assert_eq!(again, entry);
    assert_eq!(env.calls(&["vzdump"]).len(), 1);
    assert_eq!(
        env.pve.list_backups(&n, &local, vmid(170)).await,
        Ok(vec![entry.clone()])
    );

    let restore = RestoreSpec {
        archive: entry.volid.clone(),
        vmid: vmid(171),
        storage: StorageId::parse("local-lvm").expect("sid"),
        force: false,
    };
    env.pve
        .restore(&n, &job("restore-171"), &restore)
        .await
        .expect("restore");
    env.pve
        .restore(&n, &job("restore-171"), &restore)
        .await
        .expect("restore again");
    assert_eq!(env.calls(&["qmrestore"]).len(), 1);
    let cfg = env.pve.config(&n, vmid(171)).await.expect("restored");
    assert_eq!(cfg.marker(), Some(marker("b1")));
    // A new job into an existing VMID without force: VmidTaken.
    assert_eq!(
        env.pve.restore(&n, &job("restore-171-b"), &restore).await,
        Err(ProxmoxError::VmidTaken {
            vmid: Some(vmid(171))
        })
    );

    assert_eq!(
        env.pve.delete_backup(&n, &entry.volid).await,
        Ok(Destroyed::Now)
    );
    assert_eq!(
        env.pve.delete_backup(&n, &entry.volid).await,
        Ok(Destroyed::AlreadyGone)
    );
    assert_eq!(
        env.pve.list_backups(&n, &local, vmid(170)).await,
        Ok(vec![])
    );
}

#[tokio::test]
async fn destroy_and_unlock_are_idempotent() {
    let env = start().await;
    let n = node();
    env.clone_template(180, "d1").await;
    let v = vmid(180);
    env.pve.unlock(&n, v).await.expect("unlock without a lock");
    env.pve.start(&n, v).await.expect("start");
    assert_eq!(
        env.pve.destroy(&n, v).await,
        Err(ProxmoxError::AlreadyInState {
            state: ObservedState::Running
        })
    );
    env.pve.stop(&n, v).await.expect("stop");
    assert_eq!(env.pve.destroy(&n, v).await, Ok(Destroyed::Now));
    assert_eq!(env.pve.destroy(&n, v).await, Ok(Destroyed::AlreadyGone));
    assert!(
        env.pve
            .status(&n, v)
            .await
            .expect_err("gone")
            .is_vm_not_found()
    );
    assert_eq!(env.pve.vmid_is_free(&n, v).await, Ok(true));
}

#[tokio::test]
async fn agent_ip_appears_after_the_configured_delay() {
    let env = start().await;
    env.set_faults(json!({"agent_ready_ms": 300, "agent_ip_delay_ms": 1500}));
    let n = node();
    env.clone_template(190, "a1").await;
    let v = vmid(190);
    let mac = env.pve.config(&n, v).await.expect("cfg").net0_mac;
    assert!(mac.is_some());
    assert_eq!(
        env.pve.agent_addresses(&n, v, mac.as_deref()).await,
        Err(ProxmoxError::AlreadyInState {
            state: ObservedState::Stopped
        }),
        "agent of a stopped VM"
    );
    env.pve.start(&n, v).await.expect("start");
    let started = Instant::now();
    let mut not_ready = 0;
    let mut no_ip = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    let ip = loop {
        match env.pve.agent_addresses(&n, v, mac.as_deref()).await {
            Ok(a) if a.ipv4.is_some() => break a.ipv4.expect("ipv4"),
            Ok(_) => no_ip += 1,
            Err(ProxmoxError::AgentNotReady) => not_ready += 1,
            Err(e) => panic!("unexpected agent error: {e}"),
        }
        assert!(Instant::now() < deadline, "no IPv4 from the agent in time");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "the address came too early: {:?}",
        started.elapsed()
    );
    assert!(not_ready > 0, "the agent was not ready at first");
    assert!(no_ip > 0, "the agent answered before the address came");
    assert!(ip.to_string().starts_with("10.77."), "{ip}");
}

// ---- error mappings -------------------------------------------------------------------------

#[tokio::test]
async fn missing_objects_are_not_found() {
    let env = start().await;
    let n = node();
    let v = vmid(555);
    let vm_missing = |r: Result<(), ProxmoxError>, what: &str| {
        assert!(matches!(&r, Err(e) if e.is_vm_not_found()), "{what}: {r:?}");
    };
    vm_missing(env.pve.status(&n, v).await.map(drop), "status");
    vm_missing(env.pve.config(&n, v).await.map(drop), "config");
    vm_missing(env.pve.start(&n, v).await.map(drop), "start");
    vm_missing(env.pve.stop(&n, v).await.map(drop), "stop");
    vm_missing(
        env.pve
            .shutdown(&n, v, Duration::from_secs(5), true)
            .await
            .map(drop),
        "shutdown",
    );
    vm_missing(
        env.pve.reboot(&n, v, Duration::from_secs(5)).await,
        "reboot",
    );
    vm_missing(env.pve.unlock(&n, v).await, "unlock");
    vm_missing(
        env.pve.set_tags(&n, v, &marker("x1").tags()).await,
        "set_tags",
    );
    vm_missing(
        env.pve.agent_addresses(&n, v, None).await.map(drop),
        "agent",
    );
    vm_missing(
        env.pve
            .resize_disk(
                &n,
                v,
                &DiskId::scsi0(),
                SizeSpec::absolute_gib(9).expect("s"),
            )
            .await
            .map(drop),
        "resize",
    );
    vm_missing(
        env.pve
            .snapshot(&n, v, &SnapshotName::parse("s1").expect("s"), None)
            .await
            .map(drop),
        "snapshot",
    );
    let from_missing = CloneSpec {
        source: vmid(777),
        ..clone_spec(200, "m1")
    };
    vm_missing(
        env.pve
            .clone_vm(&n, &job("clone-200"), &from_missing)
            .await
            .map(drop),
        "clone from a missing source",
    );
    assert_eq!(env.pve.destroy(&n, v).await, Ok(Destroyed::AlreadyGone));

    let archive = BackupVolid::parse("local:backup/vzdump-qemu-555-2020_01_01-00_00_00.vma.zst")
        .expect("volid");
    assert_eq!(
        env.pve.delete_backup(&n, &archive).await,
        Ok(Destroyed::AlreadyGone)
    );
    let restore = RestoreSpec {
        archive: archive.clone(),
        vmid: vmid(201),
        storage: StorageId::parse("local-lvm").expect("sid"),
        force: false,
    };
    assert!(matches!(
        env.pve.restore(&n, &job("restore-201"), &restore).await,
        Err(ProxmoxError::NotFound {
            what: Missing::Archive(_)
        })
    ));
    let backup_missing = BackupSpec {
        vmid: v,
        storage: StorageId::parse("local").expect("sid"),
        marker: marker("m1"),
        prune: false,
    };
    vm_missing(
        env.pve
            .backup(&n, &job("backup-555"), &backup_missing)
            .await
            .map(drop),
        "backup",
    );
    assert_eq!(
        env.pve
            .list_backups(&n, &StorageId::parse("nosuch").expect("sid"), v)
            .await,
        Err(ProxmoxError::NotFound {
            what: Missing::Storage("nosuch".into())
        })
    );
    let other = NodeName::parse("pve9").expect("node");
    assert_eq!(
        env.pve.status(&other, v).await,
        Err(ProxmoxError::NotFound {
            what: Missing::Node("pve9".into())
        })
    );
}

#[tokio::test]
async fn config_locks_during_a_backup_are_locked() {
    let env = start().await;
    let n = node();
    env.clone_template(210, "l1").await;
    let v = vmid(210);
    env.set_faults(json!({"durations_ms": {"backup": 4000}}));
    let spec = BackupSpec {
        vmid: v,
        storage: StorageId::parse("local").expect("sid"),
        marker: marker("l1"),
        prune: false,
    };
    let pve = env.pve.clone();
    let running = tokio::spawn(async move { pve.backup(&node(), &job("backup-210"), &spec).await });
    wait_for("lock: backup", T, || async {
        let cfg = env.pve.config(&n, v).await.ok()?;
        (cfg.lock == Some(LockKind::Backup)).then_some(())
    })
    .await;
    let locked = Err(ProxmoxError::Locked {
        kind: LockKind::Backup,
    });
    assert_eq!(env.pve.set_tags(&n, v, &marker("l1").tags()).await, locked);
    // A stopped VM runs in `prelaunch` during its backup (§12.1): destroy refuses on that
    // before it looks at the lock.
    assert_eq!(
        env.pve.destroy(&n, v).await,
        Err(ProxmoxError::AlreadyInState {
            state: ObservedState::Running
        })
    );
    assert_eq!(
        env.pve
            .snapshot(&n, v, &SnapshotName::parse("s1").expect("s"), None)
            .await
            .map(drop),
        locked
    );
    let entry = running.await.expect("join").expect("backup");
    assert_eq!(entry.vmid, Some(v));
    assert_eq!(env.pve.config(&n, v).await.expect("cfg").lock, None);
    env.pve
        .set_tags(&n, v, &marker("l1").tags())
        .await
        .expect("tags after the backup");
}

#[tokio::test]
async fn a_clone_in_progress_locks_its_target() {
    let env = start().await;
    let n = node();
    // The clone holds the target's flock: other writers time out on it (contention, retried).
    env.set_faults(json!({"durations_ms": {"clone": 5000}, "flock_timeout_ms": 200}));
    let spec = clone_spec(220, "k1");
    let pve = env.pve.clone();
    let first = {
        let spec = spec.clone();
        tokio::spawn(async move { pve.clone_vm(&node(), &job("clone-220"), &spec).await })
    };
    wait_for("lock: clone", T, || async {
        let cfg = env.pve.config(&n, vmid(220)).await.ok()?;
        (cfg.lock == Some(LockKind::Clone)).then_some(())
    })
    .await;
    assert_eq!(
        env.pve
            .set_resources(&n, vmid(220), Some(Cores::new(2).expect("c")), None)
            .await,
        Err(ProxmoxError::Locked {
            kind: LockKind::File
        })
    );
    // Retried with backoff: three attempts of qm set.
    assert_eq!(env.calls(&["qm", "set", "220"]).len(), 3);
    // A different job for the same target is refused: before the first disk is copied the
    // placeholder has no marker (someone else's, as far as we can tell), after it the
    // marker is there but so is `lock: clone`.
    let other = env.pve.clone_vm(&n, &job("clone-220-b"), &spec).await;
    assert!(
        matches!(
            other,
            Err(ProxmoxError::VmidTaken { vmid: Some(v) }) if v == vmid(220)
        ) || other
            == Err(ProxmoxError::Locked {
                kind: LockKind::Clone
            }),
        "{other:?}"
    );
    // The same job joins the running clone.
    assert_eq!(
        env.pve.clone_vm(&n, &job("clone-220"), &spec).await,
        Ok(Applied::Already)
    );
    assert_eq!(first.await.expect("join"), Ok(Applied::Now));
    assert_eq!(env.calls(&["qm", "clone"]).len(), 1);
}

#[tokio::test]
async fn hung_commands_time_out() {
    let env = PveEnv::start(DriverSettings {
        read_timeout: Duration::from_secs(1),
        action_timeout: Duration::from_secs(1),
        ..fast_settings()
    })
    .await;
    let n = node();
    env.clone_template(230, "h1").await;
    env.set_faults(json!({"hang": ["pvesh", "start"]}));
    let before = env.calls(&["pvesh"]).len();
    let started = Instant::now();
    assert_eq!(
        env.pve.status(&n, vmid(230)).await,
        Err(ProxmoxError::Timeout {
            command: "pvesh get status/current".into(),
            after: Some(Duration::from_secs(1))
        })
    );
    // A read is retried (3 attempts of 1 s), then gives up.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        env.calls(&["pvesh"]).len(),
        before + 3,
        "hung calls are logged first"
    );
    assert!(matches!(
        env.pve.start(&n, vmid(230)).await,
        Err(ProxmoxError::Timeout { command, .. }) if command == "qm start"
    ));
}

#[tokio::test]
async fn a_guest_ignoring_shutdown_times_out_unless_forced() {
    let env = start().await;
    let n = node();
    env.clone_template(235, "h2").await;
    env.pve.start(&n, vmid(235)).await.expect("start");
    env.set_faults(json!({"shutdown_ignored": [235]}));
    assert_eq!(
        env.pve
            .shutdown(&n, vmid(235), Duration::from_secs(1), false)
            .await,
        Err(ProxmoxError::Timeout {
            command: "qm shutdown".into(),
            after: Some(Duration::from_secs(1))
        })
    );
    assert_eq!(
        env.pve
            .shutdown(&n, vmid(235), Duration::from_secs(1), true)
            .await,
        Ok(Applied::Now)
    );
    assert_eq!(
        env.pve.status(&n, vmid(235)).await.expect("status").status,
        RunStatus::Stopped
    );
}

#[tokio::test]
async fn a_stopped_sshd_is_a_transport_error() {
    let env = start().await;
    let n = node();
    env.clone_template(240, "t1").await;
    env.sshd.stop();
    let started = Instant::now();
    let err = env.pve.status(&n, vmid(240)).await.expect_err("down");
    assert!(matches!(err, ProxmoxError::Transport { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(matches!(
        env.pve
            .clone_vm(&n, &job("clone-241"), &clone_spec(241, "t2"))
            .await,
        Err(ProxmoxError::Transport { .. })
    ));
    assert!(matches!(
        env.pve.start(&n, vmid(240)).await,
        Err(ProxmoxError::Transport { .. })
    ));
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test]
async fn injected_failures_are_failed() {
    let env = start().await;
    let n = node();
    env.clone_template(250, "f1").await;
    let v = vmid(250);
    env.set_faults(json!({
        "fail_nth": {
            "set": {"n": 1, "message": "something broke"},
            "resize": {"n": 1, "message": "lvresize failed", "phase": "task"}
        }
    }));
    assert_eq!(
        env.pve.set_tags(&n, v, &marker("f1").tags()).await,
        Err(ProxmoxError::Failed {
            command: "qm set".into(),
            exit: 255,
            stderr: "something broke".into()
        })
    );
    // Not retried (not transient); the next call is not the failing one.
    assert_eq!(env.calls(&["qm", "set"]).len(), 1);
    env.pve
        .set_tags(&n, v, &marker("f1").tags())
        .await
        .expect("second set");
    // Resize fails inside its task and still exits 0: caught from stderr.
    let r = env
        .pve
        .resize_disk(
            &n,
            v,
            &DiskId::scsi0(),
            SizeSpec::absolute_gib(8).expect("s"),
        )
        .await;
    assert!(
        matches!(&r, Err(ProxmoxError::Failed { exit: 0, stderr, .. }) if stderr.contains("lvresize failed")),
        "{r:?}"
    );
    let resize = env.calls(&["qm", "disk", "resize"]);
    assert_eq!(resize.len(), 1);
}

#[tokio::test]
async fn a_failed_clone_is_reported_again_not_rerun() {
    let env = start().await;
    let n = node();
    env.set_faults(json!({
        "fail_nth": {"clone": {"n": 1, "message": "storage hiccup", "phase": "task"}}
    }));
    let spec = clone_spec(260, "g1");
    let first = env.pve.clone_vm(&n, &job("clone-260"), &spec).await;
    assert!(
        matches!(&first, Err(ProxmoxError::Failed { command, exit: 255, stderr }) if command == "qm clone" && stderr.contains("clone failed: storage hiccup")),
        "{first:?}"
    );
    assert!(
        env.pve
            .config(&n, vmid(260))
            .await
            .expect_err("rolled back")
            .is_vm_not_found()
    );
    // Same job: the same failure, without running qm clone again.
    assert_eq!(env.pve.clone_vm(&n, &job("clone-260"), &spec).await, first);
    assert_eq!(env.calls(&["qm", "clone"]).len(), 1);
    // A new job runs a new clone.
    assert_eq!(
        env.pve.clone_vm(&n, &job("clone-260-2"), &spec).await,
        Ok(Applied::Now)
    );
    assert_eq!(env.calls(&["qm", "clone"]).len(), 2);
}

#[tokio::test]
async fn a_killed_clone_leaves_a_lock_that_unlock_and_destroy_recover() {
    let env = start().await;
    let n = node();
    env.set_faults(json!({
        "durations_ms": {"clone": 600},
        "drop": {"clone": {"after_ms": 100, "effect": "kill_without_cleanup"}}
    }));
    let spec = clone_spec(270, "q1");
    let r = env.pve.clone_vm(&n, &job("clone-270"), &spec).await;
    assert!(matches!(r, Err(ProxmoxError::Failed { .. })), "{r:?}");
    let cfg = env.pve.config(&n, vmid(270)).await.expect("placeholder");
    assert_eq!(cfg.lock, Some(LockKind::Clone));
    env.set_faults(json!({}));
    // Not ours by marker (the placeholder has none): a new job refuses to touch it.
    assert_eq!(
        env.pve.clone_vm(&n, &job("clone-270-2"), &spec).await,
        Err(ProxmoxError::VmidTaken {
            vmid: Some(vmid(270))
        })
    );
    assert_eq!(
        env.pve.destroy(&n, vmid(270)).await,
        Err(ProxmoxError::Locked {
            kind: LockKind::Clone
        })
    );
    env.pve.unlock(&n, vmid(270)).await.expect("unlock");
    assert_eq!(env.pve.destroy(&n, vmid(270)).await, Ok(Destroyed::Now));
    assert_eq!(
        env.pve.clone_vm(&n, &job("clone-270-3"), &spec).await,
        Ok(Applied::Now)
    );
}

#[tokio::test]
async fn a_dropped_connection_during_a_detached_clone() {
    let env = start().await;
    let n = node();
    env.set_faults(json!({"durations_ms": {"clone": 3000}}));
    let spec = clone_spec(280, "r2");
    let pve = env.pve.clone();
    let running = {
        let spec = spec.clone();
        tokio::spawn(async move { pve.clone_vm(&node(), &job("clone-280"), &spec).await })
    };
    // Once the clone task runs on the node, every SSH connection drops.
    wait_for("the clone placeholder", T, || async {
        let path = env.state().join("qemu-server/280.json");
        path.exists().then_some(())
    })
    .await;
    let logins_before = env.sshd.accepted_logins(&env.sshd.user("pve1"));
    let dir = env.sshd.dir().to_path_buf();
    tokio::task::spawn_blocking(move || sshd_action("restart", &dir))
        .await
        .expect("restart");
    // The detached clone survives; the driver reconnects and keeps polling.
    assert_eq!(running.await.expect("join"), Ok(Applied::Now));
    assert!(env.sshd.accepted_logins(&env.sshd.user("pve1")) > logins_before);
    assert_eq!(
        env.pve.clone_vm(&n, &job("clone-280"), &spec).await,
        Ok(Applied::Already)
    );
    assert_eq!(env.calls(&["qm", "clone"]).len(), 1);
    let cfg = env.pve.config(&n, vmid(280)).await.expect("cfg");
    assert_eq!(cfg.lock, None);
    assert_eq!(cfg.marker(), Some(marker("r2")));
}

#[tokio::test]
async fn a_clone_wait_gives_up_at_its_deadline_and_resumes() {
    let env = PveEnv::start(DriverSettings {
        job_deadline: Duration::from_millis(700),
        ..fast_settings()
    })
    .await;
    let n = node();
    env.set_faults(json!({"durations_ms": {"clone": 2500}}));
    let spec = clone_spec(290, "w1");
    let r = env.pve.clone_vm(&n, &job("clone-290"), &spec).await;
    assert!(
        matches!(&r, Err(ProxmoxError::Timeout { command, .. }) if command == "qm clone"),
        "{r:?}"
    );
    // The job kept running; asking again (with patience) reports it.
    let done = wait_for("the clone", T, || async {
        match env.pve.clone_vm(&n, &job("clone-290"), &spec).await {
            Ok(a) => Some(a),
            Err(ProxmoxError::Timeout { .. }) => None,
            Err(e) => panic!("{e}"),
        }
    })
    .await;
    assert_eq!(done, Applied::Already);
    assert_eq!(env.calls(&["qm", "clone"]).len(), 1);
}
