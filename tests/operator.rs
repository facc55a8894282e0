//! The operator end to end: in-process controllers and workers against the real Kubernetes
//! API server, a fresh PostgreSQL database and a real sshd in front of two simulated
//! Proxmox nodes. Every test has its own namespace, database, sshd and label.

mod common;

use std::time::Duration;

use cloudpods::crd::{CloudPod, Phase, PowerState, ResourceOverrides};
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use common::operator::{OpEnv, condition, http_get};

const T: Duration = Duration::from_secs(60);

fn phase(cp: &CloudPod) -> Option<Phase> {
    cp.status.as_ref().and_then(|s| s.phase)
}

fn ready(cp: &CloudPod) -> bool {
    condition(cp, "Ready").is_some_and(|(s, _)| s == "True")
}

async fn patch_spec(env: &OpEnv, name: &str, spec: serde_json::Value) {
    env.pods
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "spec": spec })),
        )
        .await
        .expect("patch spec");
}

#[tokio::test]
async fn a_cloudpod_goes_active_scales_reboots_backs_up_stops_and_is_destroyed() {
    let env = OpEnv::start().await;
    let tenant = format!("t-{}", &env.id[3..]);
    env.create(&env.cloudpod("web-1", &tenant, "starter")).await;
    let cp = env.wait_pod("web-1", T, "Ready", ready).await;
    let st = cp.status.clone().unwrap();
    assert_eq!(st.phase, Some(Phase::Active));
    let vmid = st.vmid.expect("vmid");
    let node = st.node.clone().expect("node");
    assert!(st.ip_address.is_some(), "{st:?}");
    assert_eq!(
        st.resources.map(|r| (r.cpu_cores, r.memory_mb, r.disk_gb)),
        Some((1, 2048, 40))
    );
    assert_eq!(condition(&cp, "Provisioned").unwrap().0, "True");
    assert_eq!(condition(&cp, "QuotaAdmitted").unwrap().0, "True");
    assert!(
        cp.finalizers()
            .iter()
            .any(|f| f == cloudpods::crd::FINALIZER)
    );
    let pod_id = st.pod_id.clone().unwrap();
    // The row, the queue and the job.
    let (status, k8s_uid): (String, Option<uuid::Uuid>) =
        sqlx::query_as("SELECT status, k8s_uid FROM cloud_pods WHERE id = $1")
            .bind(&pod_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(status, "active");
    assert_eq!(k8s_uid.map(|u| u.to_string()), cp.metadata.uid.clone());
    let job: (String, String) = sqlx::query_as(
        "SELECT type, status FROM cloud_pod_jobs WHERE pod_id = $1 ORDER BY id LIMIT 1",
    )
    .bind(&pod_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(job, ("provision".to_string(), "success".to_string()));
    let vms = env.node_vms(&node).await;
    let vm = &vms[&vmid.to_string()];
    assert!(
        vm.to_string().contains(&format!("pod={pod_id}")),
        "marker: {vm}"
    );

    // Scale cores: applied, restart required.
    patch_spec(&env, "web-1", json!({ "resources": ResourceOverrides { cpu_cores: Some(2), memory_mb: None, disk_gb: Some(50) } })).await;
    let cp = env
        .wait_pod("web-1", T, "scaled", |cp| {
            cp.status
                .as_ref()
                .and_then(|s| s.resources)
                .is_some_and(|r| r.cpu_cores == 2 && r.disk_gb == 50)
                && condition(cp, "RestartRequired").is_some_and(|(s, _)| s == "True")
        })
        .await;
    assert_eq!(phase(&cp), Some(Phase::Active));

    // A reboot request clears it, once.
    patch_spec(&env, "web-1", json!({ "rebootRequest": "r1" })).await;
    env.wait_pod("web-1", T, "rebooted", |cp| {
        cp.status
            .as_ref()
            .and_then(|s| s.handled_reboot_request.as_deref())
            == Some("r1")
            && condition(cp, "RestartRequired").is_some_and(|(s, _)| s == "False")
    })
    .await;

    // A backup request takes one backup.
    patch_spec(&env, "web-1", json!({ "backupRequest": "b1" })).await;
    let cp = env
        .wait_pod("web-1", T, "backed up", |cp| {
            cp.status
                .as_ref()
                .and_then(|s| s.last_backup.as_ref())
                .is_some()
        })
        .await;
    let backup = cp.status.unwrap().last_backup.unwrap();
    assert_eq!(backup.request.as_deref(), Some("b1"));
    let (reboots, backups): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE action = 'reboot'), count(*) FILTER (WHERE action = 'backup') \
         FROM cloud_pod_queue WHERE pod_id = $1",
    )
    .bind(&pod_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((reboots, backups), (1, 1), "each request exactly once");

    // Stop.
    patch_spec(&env, "web-1", json!({ "powerState": "Stopped" })).await;
    env.wait_pod("web-1", T, "stopped", |cp| {
        cp.status.as_ref().and_then(|s| s.power_state) == Some(PowerState::Stopped)
    })
    .await;

    // Delete: VM gone, row deleted, finalizer released.
    env.delete("web-1").await;
    env.wait_gone("web-1", T).await;
    let (status, deleted): (String, bool) =
        sqlx::query_as("SELECT status, deleted_at IS NOT NULL FROM cloud_pods WHERE id = $1")
            .bind(&pod_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), deleted), ("deleted", true));
    assert!(
        !env.node_vms(&node).await.contains_key(&vmid.to_string()),
        "VM destroyed"
    );
    let unfinished: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM cloud_pod_queue WHERE status IN ('queued', 'running')",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(unfinished, 0);

    // Observability.
    let (code, body) = http_get(env.addr, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    let m = env.metrics().await;
    for needle in [
        "cloudpods_reconcile_total{controller=\"cloudpod\",result=\"ok\"}",
        "cloudpods_queue_depth{status=\"success\"}",
        "cloudpods_job_duration_seconds_count{action=\"create\",result=\"success\"} 1",
        "cloudpods_ssh_command_duration_seconds_count",
        "cloudpods_kube_writes_total{kind=\"cloudpod_status\"}",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }
}

fn admitted(cp: &CloudPod) -> Option<bool> {
    condition(cp, "QuotaAdmitted").map(|(s, _)| s == "True")
}

async fn live_rows(env: &OpEnv, tenant: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM cloud_pods WHERE tenant_id = $1 AND deleted_at IS NULL",
    )
    .bind(tenant)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// Lists the test's CloudPods until `pred` holds for the whole list.
async fn wait_all(
    env: &OpEnv,
    within: Duration,
    what: &str,
    pred: impl Fn(&[CloudPod]) -> bool,
) -> Vec<CloudPod> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let list = env
            .pods
            .list(&Default::default())
            .await
            .expect("list")
            .items;
        if pred(&list) {
            return list;
        }
        if std::time::Instant::now() > deadline {
            let summary: Vec<_> = list
                .iter()
                .map(|c| (c.name_any(), phase(c), admitted(c)))
                .collect();
            panic!("not {what} after {within:?}: {summary:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_cloudpods_against_max_pods_3_admit_exactly_3_then_2_more_after_2_deletes()
{
    let env = OpEnv::start().await;
    let tenant = format!("race-{}", &env.id[3..]);
    env.set_quota(&tenant, 3, 1000, 10_000_000, 10_000_000)
        .await;
    // The mirror lands before the pods come (the API and the controller admit against it).
    let deadline = std::time::Instant::now() + T;
    loop {
        let n: Option<i32> =
            sqlx::query_scalar("SELECT max_pods FROM cloud_pod_quotas WHERE tenant_id = $1")
                .bind(&tenant)
                .fetch_optional(&env.pool)
                .await
                .unwrap();
        if n == Some(3) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "TenantQuota not mirrored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let creates = (0..50).map(|i| {
        let cp = env.cloudpod(&format!("p{i:02}"), &tenant, "starter");
        let api = env.pods.clone();
        async move { api.create(&Default::default(), &cp).await.expect("create") }
    });
    futures::future::join_all(creates).await;
    let list = wait_all(&env, Duration::from_secs(120), "all decided", |l| {
        l.len() == 50 && l.iter().all(|c| admitted(c).is_some())
    })
    .await;
    let yes: Vec<_> = list.iter().filter(|c| admitted(c) == Some(true)).collect();
    assert_eq!(yes.len(), 3, "exactly 3 admitted");
    for c in list.iter().filter(|c| admitted(c) == Some(false)) {
        let q = c
            .status
            .as_ref()
            .and_then(|s| s.quota.clone())
            .expect("quota details");
        assert_eq!((q.max_pods, q.current_pods, q.requested_pods), (3, 3, 1));
        assert_eq!(q.error_code.as_deref(), Some("POD_LIMIT_EXCEEDED"));
        assert_eq!(q.error_field.as_deref(), Some("pods"));
        assert_eq!(phase(c), Some(Phase::Pending));
    }
    assert_eq!(live_rows(&env, &tenant).await, 3);

    let gone: Vec<String> = yes.iter().take(2).map(|c| c.name_any()).collect();
    for name in &gone {
        env.delete(name).await;
    }
    for name in &gone {
        env.wait_gone(name, T).await;
    }
    let list = wait_all(&env, T, "two more admitted", |l| {
        l.len() == 48 && l.iter().filter(|c| admitted(c) == Some(true)).count() == 3
    })
    .await;
    assert_eq!(list.iter().filter(|c| admitted(c) == Some(true)).count(), 3);
    assert_eq!(
        live_rows(&env, &tenant).await,
        3,
        "never more than the quota"
    );
}

#[tokio::test]
async fn a_pod_ordered_through_the_api_is_adopted_not_admitted_twice() {
    use cloudpods::store::pods::{self as pstore, NewJob, NewPod};
    let env = OpEnv::start().await;
    let tenant = format!("api-{}", &env.id[3..]);
    let pod_id = format!("pod-{}", &env.id[3..]);
    // What the API's order transaction records.
    let mut tx = env.pool.begin().await.unwrap();
    pstore::insert_pending_pod(
        &mut tx,
        &NewPod {
            id: pod_id.clone(),
            tenant_id: tenant.clone(),
            user_id: Some("u-1".into()),
            plan_code: "starter".into(),
            blueprint_code: "ubuntu-24-minimal".into(),
            hostname: Some(pod_id.clone()),
            cpu_cores: 1,
            memory_mb: 2048,
            disk_gb: 40,
            k8s_namespace: env.ns.clone(),
            k8s_name: pod_id.clone(),
        },
    )
    .await
    .unwrap();
    let job = pstore::insert_job(
        &mut tx,
        &NewJob {
            tenant_id: &tenant,
            user_id: Some("u-1"),
            pod_id: &pod_id,
            job_type: "provision",
            idempotency_key: None,
            request: "{}",
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let mut cp = env.cloudpod(&pod_id, &tenant, "starter");
    cp.metadata.annotations =
        Some([(cloudpods::api::JOB_ANNOTATION.to_string(), job.to_string())].into());
    let created = env.create(&cp).await;
    let cp = env.wait_pod(&pod_id, T, "Ready", ready).await;
    assert_eq!(
        cp.status.as_ref().and_then(|s| s.pod_id.clone()),
        Some(pod_id.clone())
    );
    let (uid, rows): (Option<uuid::Uuid>, i64) = sqlx::query_as(
        "SELECT (SELECT k8s_uid FROM cloud_pods WHERE id = $1), \
         (SELECT count(*) FROM cloud_pods WHERE tenant_id = $2)",
    )
    .bind(&pod_id)
    .bind(&tenant)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(uid.map(|u| u.to_string()), created.metadata.uid);
    assert_eq!(rows, 1, "no second admission");
    let (item_job, job_status): (Option<i64>, String) = sqlx::query_as(
        "SELECT q.job_id, j.status FROM cloud_pod_queue q JOIN cloud_pod_jobs j ON j.id = q.job_id \
         WHERE q.pod_id = $1 AND q.action = 'create'",
    )
    .bind(&pod_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((item_job, job_status.as_str()), (Some(job), "success"));
}

/// Creates `name` for a tenant named after the test (`<prefix>-<id>`) and waits until it
/// is Ready; gives the tenant and the status.
async fn ready_pod(
    env: &OpEnv,
    prefix: &str,
    name: &str,
    plan: &str,
) -> (String, cloudpods::crd::CloudPodStatus) {
    let tenant = format!("{prefix}-{}", &env.id[3..]);
    env.create(&env.cloudpod(name, &tenant, plan)).await;
    let cp = env.wait_pod(name, T, "Ready", ready).await;
    (tenant, cp.status.expect("status"))
}

#[tokio::test]
async fn drift_is_corrected_and_a_vanished_vm_is_reported() {
    use cloudpods::proxmox::{NodeName, Proxmox, RunStatus, Vmid};
    let mut opts = common::operator::Options::default();
    opts.controller.sync_interval = Duration::from_secs(1);
    let env = OpEnv::start_with(opts).await;
    let (_tenant, st) = ready_pod(&env, "d", "drifty", "starter").await;
    let node = NodeName::parse(st.node.as_deref().unwrap()).unwrap();
    let vmid = Vmid::new(st.vmid.unwrap() as u32).unwrap();
    let ssh = env.pve.ssh(&node).unwrap();
    let run = |cmd: String| async move {
        let out = ssh
            .exec(&cmd, None, Duration::from_secs(20))
            .await
            .expect("ssh");
        assert_eq!(out.exit_status, Some(0), "{cmd}: {}", out.stderr_lossy());
    };
    // Stopped and resized behind the operator's back.
    run(format!("qm stop {vmid}")).await;
    run(format!("qm set {vmid} --cores 3")).await;
    let deadline = std::time::Instant::now() + T;
    loop {
        let status = env.pve.status(&node, vmid).await.unwrap();
        let cfg = env.pve.config(&node, vmid).await.unwrap();
        if status.status == RunStatus::Running && cfg.cores == Some(1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "drift not corrected: {status:?} {cfg:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Destroyed behind its back: an error with a clear message, nothing recreated silently.
    run(format!("qm stop {vmid} && qm destroy {vmid}")).await;
    let cp = env
        .wait_pod("drifty", T, "in error", |c| phase(c) == Some(Phase::Error))
        .await;
    let msg = cp.status.unwrap().last_error.unwrap_or_default();
    assert!(msg.contains("no longer exists"), "{msg}");
    // Deleting it still works (the VM is already gone).
    env.delete("drifty").await;
    env.wait_gone("drifty", T).await;
}

#[tokio::test]
async fn orphan_vms_are_reported_never_destroyed() {
    use cloudpods::proxmox::{
        CloneMode, CloneSpec, DnsName, JobId, NodeName, OwnershipMarker, PodId, Proxmox, TenantId,
        Vmid,
    };
    let env = OpEnv::start().await;
    let node = NodeName::parse("pve1").unwrap();
    let marker = OwnershipMarker::new(
        PodId::parse("pod-ghost").unwrap(),
        TenantId::parse("nobody").unwrap(),
    );
    let vmid = Vmid::new(4242).unwrap();
    env.pve
        .clone_vm(
            &node,
            &JobId::parse("ghost-clone").unwrap(),
            &CloneSpec {
                source: Vmid::new(9000).unwrap(),
                target: vmid,
                mode: CloneMode::Linked,
                name: DnsName::label("ghost").unwrap(),
                description: marker.description(None).unwrap(),
                target_node: None,
            },
        )
        .await
        .unwrap();
    env.pve.set_tags(&node, vmid, &marker.tags()).await.unwrap();
    let deadline = std::time::Instant::now() + T;
    while !env
        .metrics()
        .await
        .contains("cloudpods_orphan_vms{node=\"pve1\"} 1")
    {
        assert!(std::time::Instant::now() < deadline, "orphan not reported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        env.pve.status(&node, vmid).await.is_ok(),
        "the orphan is left alone"
    );
}

#[tokio::test]
async fn an_unknown_plan_is_reported_once_without_a_retry_storm() {
    let env = OpEnv::start().await;
    let tenant = format!("u-{}", &env.id[3..]);
    env.create(&env.cloudpod("nope", &tenant, "gold")).await;
    let cp = env
        .wait_pod("nope", T, "refused", |c| phase(c) == Some(Phase::Error))
        .await;
    assert_eq!(
        condition(&cp, "Ready").map(|c| c.1),
        Some("UnknownPlan".into())
    );
    assert!(
        cp.status
            .unwrap()
            .last_error
            .unwrap()
            .contains("spec.planCode")
    );
    let count = |m: &str| -> u64 {
        m.lines()
            .find(|l| {
                l.starts_with("cloudpods_reconcile_total{controller=\"cloudpod\",result=\"ok\"}")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    // The reconcile that wrote this status counts itself only when it returns, and its own
    // write triggers one more: wait until the count holds still for a second.
    let deadline = std::time::Instant::now() + T;
    let mut before = count(&env.metrics().await);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = count(&env.metrics().await);
        if now == before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reconciles never settled: {now}"
        );
        before = now;
    }
    // A settled refusal waits for a change (the test's recheck is 30 s, the error retry 2 s);
    // watch for a while that nothing spins.
    let quiet_until = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < quiet_until {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = count(&env.metrics().await);
    assert!(
        after - before <= 1,
        "reconciles kept running: {before} -> {after}"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM cloud_pods")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    // Fixing the spec admits it.
    patch_spec(&env, "nope", json!({ "planCode": "student" })).await;
    env.wait_pod("nope", T, "Ready", ready).await;
}

#[tokio::test]
async fn tenant_quota_is_mirrored_and_reports_usage() {
    use cloudpods::crd::TenantQuota;
    let env = OpEnv::start().await;
    let tenant = format!("q-{}", &env.id[3..]);
    env.set_quota(&tenant, 5, 10, 20480, 500).await;
    let tqs: kube::Api<TenantQuota> = kube::Api::all(env.client.clone());
    let wait_usage = |pods: i64| {
        let tqs = tqs.clone();
        let tenant = tenant.clone();
        async move {
            let deadline = std::time::Instant::now() + T;
            loop {
                let tq = tqs.get(&tenant).await.unwrap();
                if tq
                    .status
                    .as_ref()
                    .and_then(|s| s.usage)
                    .is_some_and(|u| u.pods == pods)
                {
                    return tq;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "usage never {pods}: {:?}",
                    tq.status
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let tq = wait_usage(0).await;
    assert_eq!(
        tq.status.unwrap().observed_generation,
        tq.metadata.generation
    );
    let row: (i32, i32, i32, i32) = sqlx::query_as(
        "SELECT max_pods, max_cpu_cores, max_memory_mb, max_disk_gb FROM cloud_pod_quotas WHERE tenant_id = $1",
    )
    .bind(&tenant)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(row, (5, 10, 20480, 500));
    env.create(&env.cloudpod("one", &tenant, "premium")).await;
    let tq = wait_usage(1).await;
    let u = tq.status.unwrap().usage.unwrap();
    assert_eq!((u.cpu_cores, u.memory_mb, u.disk_gb), (2, 4096, 80));
}

#[tokio::test]
async fn quota_rows_of_deleted_tenant_quotas_are_pruned_after_a_grace_period() {
    let (pool, _db) = common::db::migrated_db().await;
    for t in ["kept", "gone"] {
        sqlx::query(
            "INSERT INTO cloud_pod_quotas (tenant_id, max_pods, max_cpu_cores, max_memory_mb, max_disk_gb) \
             VALUES ($1, 1, 1, 1, 1)",
        )
        .bind(t)
        .execute(&pool)
        .await
        .unwrap();
    }
    let keep = vec!["kept".to_string()];
    let fresh = cloudpods::store::reconcile::prune_quotas(&pool, &keep, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        fresh.is_empty(),
        "rows younger than the grace period stay: {fresh:?}"
    );
    let gone = cloudpods::store::reconcile::prune_quotas(&pool, &keep, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(gone, vec!["gone".to_string()]);
}

#[tokio::test]
async fn readyz_fails_when_the_database_is_gone() {
    let env = OpEnv::start().await;
    let deadline = std::time::Instant::now() + T;
    while http_get(env.addr, "/readyz").await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The operator shares this pool: closing it takes Postgres away from it.
    env.pool.close().await;
    let (code, body) = http_get(env.addr, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("database: false"), "{body}");
    assert_eq!(http_get(env.addr, "/healthz").await.0, 200);
}

#[tokio::test]
async fn a_cloudpod_whose_finalizer_is_removed_by_hand_still_loses_its_vm() {
    let env = OpEnv::start().await;
    let (tenant, st) = ready_pod(&env, "f", "forced", "student").await;
    let (pod_id, vmid, node) = (st.pod_id.unwrap(), st.vmid.unwrap(), st.node.unwrap());
    // What an impatient admin does: drop the finalizer, then delete.
    env.pods
        .patch(
            "forced",
            &PatchParams::default(),
            &Patch::Merge(&json!({ "metadata": { "finalizers": null } })),
        )
        .await
        .unwrap();
    env.delete("forced").await;
    env.wait_gone("forced", T).await;
    let deadline = std::time::Instant::now() + T;
    loop {
        let deleted: bool =
            sqlx::query_scalar("SELECT deleted_at IS NOT NULL FROM cloud_pods WHERE id = $1")
                .bind(&pod_id)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        if deleted {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the row of a vanished CloudPod stays live"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !env.node_vms(&node).await.contains_key(&vmid.to_string()),
        "VM destroyed"
    );
    assert_eq!(live_rows(&env, &tenant).await, 0, "quota released");
}

#[tokio::test]
async fn a_destroy_killed_half_way_is_finished_not_left_behind() {
    use cloudpods::proxmox::{LockKind, NodeName, Proxmox, Vmid};
    let env = OpEnv::start().await;
    let (tenant, st) = ready_pod(&env, "h", "halfway", "student").await;
    let node = NodeName::parse(st.node.as_deref().unwrap()).unwrap();
    let vmid = Vmid::new(st.vmid.unwrap() as u32).unwrap();
    let owned_volumes = |show: &serde_json::Value| -> usize {
        show["volumes"].as_object().map_or(0, |v| {
            v.values()
                .filter(|x| x["vmid"].as_u64() == Some(u64::from(vmid.get())))
                .count()
        })
    };
    let ssh = env.pve.ssh(&node).unwrap();
    let show = || async {
        let out = ssh
            .exec("pve-sim show", None, Duration::from_secs(20))
            .await
            .expect("pve-sim show");
        serde_json::from_str::<serde_json::Value>(&out.stdout_lossy()).expect("show json")
    };
    assert!(owned_volumes(&show().await) > 0, "the VM has disks");
    // Every `qm destroy` on the node is killed mid-task, after it replaced the config with
    // the `lock: destroyed` placeholder and before it freed the disks (a crash, a cut link).
    let faults = std::path::PathBuf::from(common::operator::state_dir(ssh).await);
    let set_faults = |v: serde_json::Value| {
        let tmp = faults.join("faults.json.new");
        std::fs::write(&tmp, v.to_string()).expect("write faults");
        std::fs::rename(&tmp, faults.join("faults.json")).expect("rename faults");
    };
    set_faults(json!({
        "durations_ms": {"destroy": 2000},
        "drop": {"destroy": {"after_ms": 100, "effect": "kill_without_cleanup"}}
    }));
    env.delete("halfway").await;
    let deadline = std::time::Instant::now() + T;
    loop {
        if let Ok(cfg) = env.pve.config(&node, vmid).await
            && cfg.lock == Some(LockKind::Destroyed)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no half-way destroy happened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    set_faults(json!({}));
    env.wait_gone("halfway", T).await;
    let show = show().await;
    assert!(
        !show["vms"]
            .as_object()
            .unwrap()
            .contains_key(&vmid.to_string()),
        "the placeholder is left behind: {}",
        show["vms"][vmid.to_string()]
    );
    assert_eq!(owned_volumes(&show), 0, "disks left behind");
    assert_eq!(live_rows(&env, &tenant).await, 0, "quota released");
}
