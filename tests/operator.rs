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
    let cp = env
        .wait_pod("web-1", T, "Ready", |cp| {
            condition(cp, "Ready").is_some_and(|(s, _)| s == "True")
        })
        .await;
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
        "cloudpods_kube_writes_total{kind=\"status\"}",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }
}
