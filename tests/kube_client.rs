//! The Rust types against the real API server through kube-rs: create, read back, status via
//! server-side apply on the status subresource, and a CEL rejection surfaced as a 422.

mod common;

use cloudpods::crd::{
    CloudPod, CloudPodSpec, CloudPodStatus, EffectiveResources, Phase, PowerState,
    ResourceOverrides, TenantQuota, TenantQuotaSpec,
};
use common::kube::{ensure_crds, unique_namespace};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

async fn client() -> kube::Client {
    let path = common::kube::kubeconfig();
    let kubeconfig = Kubeconfig::read_from(&path).expect("readable kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("valid kubeconfig");
    kube::Client::try_from(config).expect("client")
}

fn spec(tenant: &str) -> CloudPodSpec {
    CloudPodSpec {
        tenant_id: tenant.into(),
        user_id: None,
        plan_code: "premium".into(),
        blueprint: "ubuntu-24-minimal".into(),
        hostname: None,
        resources: Some(ResourceOverrides {
            cpu_cores: Some(2),
            memory_mb: None,
            disk_gb: Some(100),
        }),
        power_state: PowerState::Running,
        cloud_init: None,
        reboot_request: None,
        backup_request: None,
    }
}

#[tokio::test]
async fn typed_cloudpod_round_trips_and_status_is_applied_server_side() {
    ensure_crds();
    let ns = unique_namespace("kube-rs");
    let api: Api<CloudPod> = Api::namespaced(client().await, &ns);

    let created = api
        .create(&PostParams::default(), &CloudPod::new("db-1", spec("acme")))
        .await
        .expect("create");
    assert_eq!(created.spec, spec("acme"));
    assert_eq!(created.status, None);

    let status = CloudPodStatus {
        phase: Some(Phase::Provisioning),
        pod_id: Some("pod-1764399306066".into()),
        vmid: Some(101),
        node: Some("pve1".into()),
        resources: Some(EffectiveResources {
            cpu_cores: 2,
            memory_mb: 4096,
            disk_gb: 100,
        }),
        observed_generation: created.metadata.generation,
        ..Default::default()
    };
    let patch = serde_json::json!({
        "apiVersion": "cloudpods.migrahosting.com/v1alpha1",
        "kind": "CloudPod",
        "status": status,
    });
    api.patch_status(
        "db-1",
        &PatchParams::apply("cloudpods-controller").force(),
        &Patch::Apply(&patch),
    )
    .await
    .expect("status apply");

    let read = api.get("db-1").await.expect("get");
    assert_eq!(read.status.as_ref(), Some(&status));
    // The status subresource does not bump the generation; the spec stays as created.
    assert_eq!(read.metadata.generation, created.metadata.generation);
    assert_eq!(read.spec, spec("acme"));
}

#[tokio::test]
async fn cel_violation_is_a_422_with_the_rule_message() {
    ensure_crds();
    let ns = unique_namespace("kube-rs-422");
    let api: Api<CloudPod> = Api::namespaced(client().await, &ns);
    let mut bad = spec("acme");
    bad.hostname = Some("Not_A_Label".into());
    let err = api
        .create(&PostParams::default(), &CloudPod::new("bad", bad))
        .await
        .expect_err("must be rejected");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(
                status.message.contains("spec.hostname must be a DNS label"),
                "{}",
                status.message
            );
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn tenant_quota_is_cluster_scoped() {
    ensure_crds();
    let name = unique_namespace("tq-kube");
    let api: Api<TenantQuota> = Api::all(client().await);
    let quota = TenantQuota::new(
        &name,
        TenantQuotaSpec {
            max_pods: 3,
            max_cpu_cores: 8,
            max_memory_mb: 16384,
            max_disk_gb: 400,
        },
    );
    let created = api
        .create(&PostParams::default(), &quota)
        .await
        .expect("create");
    assert_eq!(created.spec.max_pods, 3);
    assert!(created.metadata.namespace.is_none());
    api.delete(&name, &Default::default())
        .await
        .expect("delete");
}
