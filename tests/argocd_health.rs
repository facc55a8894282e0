//! The Argo CD health check (`deploy/argocd/cloudpod-health.lua`) run by a real Lua 5.1
//! interpreter (Argo CD embeds gopher-lua, which has Lua 5.1 semantics) against CloudPods
//! whose status is built by the controller's own `status::build`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;

use cloudpods::controller::status::{self, NotAdmitted, View};
use cloudpods::crd::{CloudPod, CloudPodSpec, CloudPodStatus, PowerState, QuotaDetails};
use cloudpods::store::pods::PodRow;
use cloudpods::worker::payload::PodState;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::Value;

const LUA: &str = "lua5.1";

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/argocd/cloudpod-health.lua")
}

/// A JSON value as a Lua table literal (null fields are left out, as Argo CD does).
fn lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(a) => format!("{{{}}}", a.iter().map(lua).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b}")),
        }
    }
    out.push('"');
    out
}

/// Runs the health script with `obj` = `pod`; returns (hs.status, hs.message).
fn health(pod: &Value) -> (String, String) {
    let script = script();
    let harness = format!(
        "obj = {}\nlocal chunk = assert(loadfile({}))\nlocal hs = chunk()\nio.write(tostring(hs.status), \"\\n\", tostring(hs.message), \"\\n\")\n",
        lua(pod),
        lua_string(&script.display().to_string())
    );
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(harness.as_bytes()).expect("write harness");
    let out = match Command::new(LUA).arg(file.path()).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "{LUA} is not installed: run the tests through scripts/test (it installs it), or `apt-get install lua5.1`"
        ),
        Err(e) => panic!("cannot run {LUA}: {e}"),
    };
    assert!(
        out.status.success(),
        "the health script failed under {LUA}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = text.lines();
    let status = lines.next().unwrap_or_default().to_string();
    let message = lines.next().unwrap_or_default().to_string();
    (status, message)
}

fn spec(power: PowerState) -> CloudPodSpec {
    CloudPodSpec {
        user_id: Some("user-42".into()),
        power_state: power,
        ..CloudPodSpec::new("acme", "starter", "ubuntu-24-minimal")
    }
}

/// A `cloud_pods` row as the worker leaves it.
fn row(status: &str, ip: Option<&str>, state: PodState) -> PodRow {
    let now = chrono::Utc::now();
    PodRow {
        id: "pod-web-1".into(),
        tenant_id: "acme".into(),
        user_id: Some("user-42".into()),
        plan_code: "starter".into(),
        blueprint_code: "ubuntu-24-minimal".into(),
        vmid: Some(101),
        node: Some("pve1".into()),
        ip_address: ip.map(str::to_string),
        status: status.into(),
        cpu_cores: 1,
        memory_mb: 2048,
        disk_gb: 40,
        reserved_cpu_cores: None,
        reserved_memory_mb: None,
        reserved_disk_gb: None,
        hostname: Some("web-1".into()),
        provisioning_state: state.to_json(),
        k8s_uid: None,
        k8s_namespace: "tenant-acme".into(),
        k8s_name: "web-1".into(),
        created_at: now,
        updated_at: now,
        deleted_at: None,
    }
}

fn provisioned() -> PodState {
    PodState {
        provisioned: true,
        power_state: Some(PowerState::Running),
        ..PodState::default()
    }
}

fn view<'a>(row: Option<&'a PodRow>) -> View<'a> {
    View {
        generation: Some(1),
        row,
        refused: None,
        scale_refused: None,
        pending: 0,
        deleting: false,
        desired_power: PowerState::Running,
    }
}

/// The CloudPod as Argo CD sees it: metadata (generation 1 unless changed), spec, status.
fn pod(power: PowerState, status: Option<CloudPodStatus>) -> Value {
    let mut p = CloudPod::new("web-1", spec(power));
    p.metadata.namespace = Some("tenant-acme".into());
    p.metadata.generation = Some(1);
    p.status = status;
    serde_json::to_value(&p).expect("CloudPod as JSON")
}

fn build(v: &View<'_>) -> CloudPodStatus {
    status::build(v, None, k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

/// A CloudPod asking for `Running` whose status the controller builds from `v`.
fn running(v: &View<'_>) -> Value {
    pod(PowerState::Running, Some(build(v)))
}

fn quota_refusal() -> NotAdmitted {
    NotAdmitted::Quota {
        message: "Pod limit exceeded: 2 of 2 pods in use".into(),
        details: QuotaDetails {
            max_pods: 2,
            current_pods: 2,
            requested_pods: 1,
            error_field: Some("pods".into()),
            error_code: Some("POD_LIMIT_EXCEEDED".into()),
            ..QuotaDetails::default()
        },
    }
}

/// Asserts the health status and a part of the message; returns the whole message.
fn assert_health(pod: &Value, status: &str, message_has: &str) -> String {
    let (s, m) = health(pod);
    assert_eq!(s, status, "status for message {m:?}");
    assert!(
        m.contains(message_has),
        "message {m:?} does not contain {message_has:?}"
    );
    m
}

#[test]
fn no_status_yet_is_progressing() {
    assert_health(
        &pod(PowerState::Running, None),
        "Progressing",
        "Waiting for the operator",
    );
}

#[test]
fn status_of_an_older_generation_is_progressing() {
    let r = row("active", Some("10.0.0.5"), provisioned());
    let mut p = running(&view(Some(&r)));
    p["metadata"]["generation"] = 2.into();
    assert_health(&p, "Progressing", "observe generation 2");
}

#[test]
fn waiting_for_admission_is_progressing() {
    assert_health(
        &running(&view(None)),
        "Progressing",
        "Pending: waiting for quota admission",
    );
}

#[test]
fn quota_refusal_is_degraded_with_reason_and_message() {
    let refused = quota_refusal();
    let v = View {
        refused: Some(&refused),
        ..view(None)
    };
    let s = build(&v);
    assert_eq!(s.phase, Some(cloudpods::crd::Phase::Pending));
    assert_health(
        &pod(PowerState::Running, Some(s)),
        "Degraded",
        "QuotaExceeded: Pod limit exceeded: 2 of 2 pods in use",
    );
}

#[test]
fn refused_scale_is_degraded_but_says_the_vm_keeps_its_size() {
    let refused = quota_refusal();
    let r = row("active", Some("10.0.0.5"), provisioned());
    let v = View {
        scale_refused: Some(&refused),
        ..view(Some(&r))
    };
    let m = assert_health(
        &running(&v),
        "Degraded",
        "ScaleQuotaExceeded: the new size does not fit",
    );
    assert!(m.contains("keeps its current size"), "{m}");
}

#[test]
fn unknown_plan_is_degraded_with_the_reason() {
    let bad = NotAdmitted::Invalid {
        reason: "UnknownPlan",
        message: "plan `gold` does not exist".into(),
    };
    let v = View {
        refused: Some(&bad),
        ..view(None)
    };
    assert_health(
        &running(&v),
        "Degraded",
        "UnknownPlan: plan `gold` does not exist",
    );
}

#[test]
fn provisioning_is_progressing() {
    let r = row("provisioning", None, PodState::default());
    assert_health(
        &running(&view(Some(&r))),
        "Progressing",
        "Provisioning: the VM is being built",
    );
}

#[test]
fn active_with_an_address_is_healthy() {
    let r = row("active", Some("10.0.0.5"), provisioned());
    assert_health(
        &running(&view(Some(&r))),
        "Healthy",
        "VM 101 on pve1: running at 10.0.0.5",
    );
}

#[test]
fn active_without_an_address_or_with_work_in_flight_is_progressing() {
    let r = row("active", None, provisioned());
    assert_health(
        &running(&view(Some(&r))),
        "Progressing",
        "waiting for the guest agent",
    );
    let r = row("active", Some("10.0.0.5"), provisioned());
    let v = View {
        pending: 1,
        ..view(Some(&r))
    };
    assert_health(
        &running(&v),
        "Progressing",
        "an operation on the VM is in progress",
    );
}

#[test]
fn stopped_on_request_is_suspended() {
    let state = PodState {
        power_state: Some(PowerState::Stopped),
        ..provisioned()
    };
    let r = row("active", None, state);
    let v = View {
        desired_power: PowerState::Stopped,
        ..view(Some(&r))
    };
    assert_health(
        &pod(PowerState::Stopped, Some(build(&v))),
        "Suspended",
        "stopped as requested",
    );
}

#[test]
fn restart_required_stays_healthy_and_says_so() {
    let state = PodState {
        restart_required: true,
        ..provisioned()
    };
    let r = row("active", Some("10.0.0.5"), state);
    assert_health(
        &running(&view(Some(&r))),
        "Healthy",
        "apply at the next reboot",
    );
}

#[test]
fn error_is_degraded_with_last_error() {
    let state = PodState {
        last_error: Some("VM 101 no longer exists on node pve1".into()),
        ..provisioned()
    };
    let r = row("error", Some("10.0.0.5"), state);
    assert_health(
        &running(&view(Some(&r))),
        "Degraded",
        "VM 101 no longer exists on node pve1",
    );
}

#[test]
fn being_deleted_is_progressing_and_a_failed_destroy_is_degraded() {
    let r = row("active", Some("10.0.0.5"), provisioned());
    let v = View {
        deleting: true,
        ..view(Some(&r))
    };
    let mut p = running(&v);
    p["metadata"]["deletionTimestamp"] =
        serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)).expect("time");
    assert_health(&p, "Progressing", "Deleting: the VM is being destroyed");

    let state = PodState {
        last_error: Some("destroy of VM 101 failed: VM is locked (backup)".into()),
        ..provisioned()
    };
    let r = row("error", Some("10.0.0.5"), state);
    let v = View {
        deleting: true,
        ..view(Some(&r))
    };
    let mut p = running(&v);
    p["metadata"]["deletionTimestamp"] = "2026-11-27T10:00:00Z".into();
    assert_health(&p, "Degraded", "VM is locked (backup)");
}

#[test]
fn strings_with_quotes_and_non_ascii_reach_lua_intact() {
    let state = PodState {
        last_error: Some("bad \"quote\" \\ back\nslash — ünïcode".into()),
        ..provisioned()
    };
    let r = row("error", None, state);
    let (s, m) = health(&running(&view(Some(&r))));
    assert_eq!(s, "Degraded");
    assert!(m.starts_with("bad \"quote\" \\ back"), "{m}");
}

#[test]
fn the_documented_configmap_snippet_carries_the_script_verbatim() {
    let doc =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/argocd.md"))
            .expect("docs/argocd.md");
    assert!(doc.contains("resource.customizations.health.cloudpods.migrahosting.com_CloudPod: |"));
    let script = std::fs::read_to_string(script()).expect("script");
    let indented: String = script
        .lines()
        .map(|l| {
            if l.is_empty() {
                String::from("\n")
            } else {
                format!("    {l}\n")
            }
        })
        .collect();
    assert!(
        doc.contains(&indented),
        "docs/argocd.md must embed deploy/argocd/cloudpod-health.lua verbatim, indented by 4 spaces"
    );
}
