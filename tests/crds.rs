//! The CRDs against the real Kubernetes API server: they apply, they teach, they validate.

mod common;

use common::fixtures::{PodManifest, tenant_quota};
use common::kube::{apply, ensure_crds, kubectl, kubectl_ok, text, unique_namespace};
use serde_json::json;

/// Asserts that applying `manifest` fails and that the error names `needle`.
fn assert_rejected(ns: &str, manifest: &str, needle: &str) {
    let out = apply(ns, manifest);
    let all = text(&out);
    assert!(
        !out.status.success(),
        "expected a rejection mentioning {needle:?}, but it was accepted:\n{all}"
    );
    assert!(
        all.contains(needle),
        "rejection does not mention {needle:?}:\n{all}"
    );
}

/// Asserts that applying `manifest` succeeds.
fn assert_accepted(ns: &str, manifest: &str) {
    let out = apply(ns, manifest);
    assert!(out.status.success(), "expected acceptance:\n{}", text(&out));
}

#[test]
fn crd_files_match_a_fresh_generation() {
    let report = cloudpods::crdgen::run(&common::kube::crd_dir(), true);
    assert!(
        report.is_ok(),
        "{:#}",
        report.err().map(|e| e.to_string()).unwrap_or_default()
    );
}

#[test]
fn valid_cloudpod_is_accepted_and_listed_with_printer_columns() {
    ensure_crds();
    let ns = unique_namespace("crd-valid");
    let pod = PodManifest::new("web-1", "acme")
        .spec("hostname", json!("web-1"))
        .spec("userId", json!("user-42"))
        .spec("powerState", json!("Stopped"))
        .resource("cpuCores", json!(2))
        .resource("memoryMb", json!(2048))
        .resource("diskGb", json!(40))
        .spec("cloudInit", json!({
            "user": "deploy",
            "sshPublicKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE8ViQ+4H6Gs5f8l1uvE7nKD4tfE2yE5Fyq4n2CwZ5tP alice@laptop"]
        }));
    assert_accepted(&ns, &pod.render());

    let table = kubectl_ok(&["get", "cloudpods", "-n", &ns]);
    let header = table.lines().next().unwrap_or_default();
    for col in ["NAME", "TENANT", "PLAN", "PHASE", "VMID", "IP", "AGE"] {
        assert!(
            header.split_whitespace().any(|c| c == col),
            "column {col} missing in:\n{table}"
        );
    }
    assert!(
        table.contains("web-1") && table.contains("acme") && table.contains("starter"),
        "{table}"
    );

    // Short name and category resolve too.
    let by_short = kubectl_ok(&[
        "get",
        "cpod",
        "web-1",
        "-n",
        &ns,
        "-o",
        "jsonpath={.spec.tenantId}",
    ]);
    assert_eq!(by_short, "acme");
    let by_category = kubectl_ok(&["get", "cloudpods-all", "-n", &ns, "-o", "name"]);
    assert!(
        by_category.contains("cloudpod.cloudpods.migrahosting.com/web-1"),
        "{by_category}"
    );
    // `kubectl get cloudpods` lists CloudPods only: kubectl expands a category before a
    // plural, so the category must not be named like the plural.
    let tq = format!("{ns}-tq");
    let applied = apply(&ns, &tenant_quota(&tq, 1, 1, 1024, 10));
    assert!(applied.status.success(), "{}", text(&applied));
    let plural = kubectl_ok(&["get", "cloudpods", "-n", &ns, "-o", "name"]);
    assert_eq!(plural.trim(), "cloudpod.cloudpods.migrahosting.com/web-1");
    kubectl_ok(&["delete", "tenantquota", &tq]);
}

#[test]
fn power_state_defaults_to_running() {
    ensure_crds();
    let ns = unique_namespace("crd-default");
    assert_accepted(&ns, &PodManifest::new("p1", "acme").render());
    let state = kubectl_ok(&[
        "get",
        "cpod",
        "p1",
        "-n",
        &ns,
        "-o",
        "jsonpath={.spec.powerState}",
    ]);
    assert_eq!(state, "Running");
}

#[test]
fn kubectl_explain_teaches_the_fields() {
    ensure_crds();
    let spec = kubectl_ok(&["explain", "cloudpod.spec"]);
    for needle in [
        "Tenant (customer account) that owns this pod",
        "Commercial plan code",
        "Desired power state",
        "Request one reboot",
    ] {
        assert!(
            spec.contains(needle),
            "explain cloudpod.spec lacks {needle:?}:\n{spec}"
        );
    }
    let status = kubectl_ok(&["explain", "cloudpod.status.phase"]);
    assert!(status.contains("Lifecycle phase"), "{status}");
    let quota = kubectl_ok(&["explain", "tenantquota.spec.maxPods"]);
    assert!(quota.contains("Maximum number of live pods"), "{quota}");
}

#[test]
fn invalid_cloudpods_are_rejected_with_the_rule_message() {
    ensure_crds();
    let ns = unique_namespace("crd-invalid");
    let base = || PodManifest::new("bad", "acme");
    let cases: Vec<(&str, PodManifest, &str)> = vec![
        (
            "uppercase hostname",
            base().spec("hostname", json!("Web_1")),
            "spec.hostname must be a DNS label",
        ),
        (
            "hostname ending in dash",
            base().spec("hostname", json!("web-")),
            "spec.hostname must be a DNS label",
        ),
        (
            "hostname too long",
            base().spec("hostname", json!("a".repeat(64))),
            "spec.hostname",
        ),
        (
            "hostname with shell",
            base().spec("hostname", json!("a;reboot")),
            "spec.hostname must be a DNS label",
        ),
        (
            "zero cores",
            base().resource("cpuCores", json!(0)),
            "spec.resources.cpuCores",
        ),
        (
            "negative cores",
            base().resource("cpuCores", json!(-2)),
            "spec.resources.cpuCores",
        ),
        (
            "too many cores",
            base().resource("cpuCores", json!(65)),
            "spec.resources.cpuCores",
        ),
        (
            "tiny memory",
            base().resource("memoryMb", json!(16)),
            "spec.resources.memoryMb",
        ),
        (
            "unknown powerState",
            base().spec("powerState", json!("Paused")),
            "spec.powerState",
        ),
        (
            "missing planCode",
            base().without("planCode"),
            "spec.planCode",
        ),
        (
            "missing tenantId",
            base().without("tenantId"),
            "spec.tenantId",
        ),
        (
            "tenantId with spaces",
            base().spec("tenantId", json!("a b")),
            "spec.tenantId must be lowercase",
        ),
        (
            "bad ssh key",
            base().spec(
                "cloudInit",
                json!({"sshPublicKeys": ["hello world this is not a key"]}),
            ),
            "spec.cloudInit.sshPublicKeys",
        ),
        (
            "ssh key with newline",
            base().spec(
                "cloudInit",
                json!({"sshPublicKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA x\nrm -rf /"]}),
            ),
            "spec.cloudInit.sshPublicKeys",
        ),
        (
            "root user",
            base().spec("cloudInit", json!({"user": "root"})),
            "spec.cloudInit.user must not be root",
        ),
        (
            "bad reboot token",
            base().spec("rebootRequest", json!("$(reboot)")),
            "spec.rebootRequest",
        ),
    ];
    let mut failures = Vec::new();
    for (what, manifest, needle) in &cases {
        let out = apply(&ns, &manifest.render());
        let all = text(&out);
        if out.status.success() || !all.contains(needle) {
            failures.push(format!(
                "{what}: expected rejection naming {needle:?}, got success={} output:\n{all}",
                out.status.success()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
    // Nothing was half-created.
    let left = kubectl_ok(&["get", "cloudpods", "-n", &ns, "-o", "name"]);
    assert!(left.trim().is_empty(), "rejected objects exist: {left}");
}

#[test]
fn metadata_name_must_be_a_dns_label_without_hostname() {
    ensure_crds();
    let ns = unique_namespace("crd-name");
    assert_rejected(
        &ns,
        &PodManifest::new("web.example.com", "acme").render(),
        "metadata.name becomes the VM hostname",
    );
    assert_accepted(
        &ns,
        &PodManifest::new("web.example.com", "acme")
            .spec("hostname", json!("web"))
            .render(),
    );
}

#[test]
fn disk_may_only_grow_and_tenant_is_immutable() {
    ensure_crds();
    let ns = unique_namespace("crd-update");
    let pod = PodManifest::new("grow", "acme").resource("diskGb", json!(40));
    assert_accepted(&ns, &pod.render());

    assert_rejected(
        &ns,
        &pod.clone().resource("diskGb", json!(30)).render(),
        "spec.resources.diskGb may only grow",
    );
    assert_rejected(
        &ns,
        &pod.clone().without("resources").render(),
        "spec.resources.diskGb cannot be removed",
    );
    assert_rejected(
        &ns,
        &pod.clone().spec("tenantId", json!("other")).render(),
        "spec.tenantId is immutable",
    );

    // Growing is fine, and the stored object reflects it.
    assert_accepted(&ns, &pod.clone().resource("diskGb", json!(80)).render());
    let disk = kubectl_ok(&[
        "get",
        "cpod",
        "grow",
        "-n",
        &ns,
        "-o",
        "jsonpath={.spec.resources.diskGb}",
    ]);
    assert_eq!(disk, "80");
    let tenant = kubectl_ok(&[
        "get",
        "cpod",
        "grow",
        "-n",
        &ns,
        "-o",
        "jsonpath={.spec.tenantId}",
    ]);
    assert_eq!(tenant, "acme");
}

#[test]
fn tenant_quota_validates_name_and_limits() {
    ensure_crds();
    let tenant = unique_namespace("tq");
    let out = kubectl_stdin_apply(&tenant_quota(&tenant, 3, 8, 16384, 400));
    assert!(out.status.success(), "{}", text(&out));
    let table = kubectl_ok(&["get", "tenantquota", &tenant]);
    assert!(
        table.lines().next().unwrap_or_default().contains("MAXPODS"),
        "{table}"
    );

    let bad = kubectl_stdin_apply(&tenant_quota("Not_A_Tenant", 3, 8, 16384, 400));
    assert!(
        !bad.status.success() && text(&bad).contains("metadata.name is the tenant id"),
        "{}",
        text(&bad)
    );
    let negative = kubectl_stdin_apply(&tenant_quota(&format!("{tenant}-n"), -1, 8, 16384, 400));
    assert!(
        !negative.status.success() && text(&negative).contains("spec.maxPods"),
        "{}",
        text(&negative)
    );
    kubectl_ok(&["delete", "tenantquota", &tenant]);
}

fn kubectl_stdin_apply(manifest: &str) -> std::process::Output {
    common::kube::kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=cloudpods-test",
            "-f",
            "-",
        ],
        Some(manifest),
    )
}

#[test]
fn kubectl_reports_missing_status_until_the_controller_writes_it() {
    // A new pod has no status: the printer columns are empty, not an error.
    ensure_crds();
    let ns = unique_namespace("crd-nostatus");
    assert_accepted(&ns, &PodManifest::new("fresh", "acme").render());
    let out = kubectl(&[
        "get",
        "cpod",
        "fresh",
        "-n",
        &ns,
        "-o",
        "jsonpath={.status}",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());
}
