//! The API's writes to CloudPod resources, and how Kubernetes failures become API errors.

use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::error::ApiError;
use super::model::OrderRequest;
use super::{AppState, FIELD_MANAGER, JOB_ANNOTATION, TENANT_LABEL};
use crate::crd::PowerState;
use crate::store::pods::{self as store, NewPod, PodRow};

/// Maps a Kubernetes failure: conflicts and rejections are the client's to see, the rest is
/// logged and answered with 503.
pub fn kube_error(what: &str, e: kube::Error) -> ApiError {
    match &e {
        kube::Error::Api(s) if s.code == 409 => ApiError::Conflict {
            code: "CONFLICT",
            message: format!("{what}: the resource was changed concurrently; try again"),
        },
        kube::Error::Api(s) if s.code == 422 => ApiError::Unprocessable {
            code: "REJECTED",
            field: None,
            message: format!("{what}: Kubernetes rejected the change: {}", s.message),
        },
        _ => ApiError::Unavailable(anyhow::Error::new(e).context(what.to_string())),
    }
}

/// Runs one Kubernetes call with the configured timeout.
pub async fn kube_call<T>(
    state: &AppState,
    what: &str,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(state.kube_timeout, call).await {
        Ok(r) => r.map_err(|e| kube_error(what, e)),
        Err(_) => Err(ApiError::Unavailable(anyhow::anyhow!(
            "{what}: Kubernetes did not answer in {:?}",
            state.kube_timeout
        ))),
    }
}

/// True for a 404 from the Kubernetes API.
pub fn is_kube_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Creates (or re-applies, identically) the CloudPod of an order.
pub async fn apply_cloudpod(
    state: &AppState,
    row: &NewPod,
    req: &OrderRequest,
    job_id: i64,
) -> Result<(), ApiError> {
    let options = req.options.clone().unwrap_or_default();
    let mut spec = json!({
        "tenantId": row.tenant_id,
        "planCode": row.plan_code,
        "blueprint": row.blueprint_code,
        "hostname": row.hostname,
        "powerState": options.power_state.unwrap_or(PowerState::Running),
    });
    if let Some(user) = &row.user_id {
        spec["userId"] = json!(user);
    }
    if !options.ssh_public_keys.is_empty() || options.user.is_some() {
        let mut ci = json!({});
        if let Some(u) = &options.user {
            ci["user"] = json!(u);
        }
        if !options.ssh_public_keys.is_empty() {
            ci["sshPublicKeys"] = json!(options.ssh_public_keys);
        }
        spec["cloudInit"] = ci;
    }
    let object = json!({
        "apiVersion": format!("{}/v1alpha1", crate::crd::GROUP),
        "kind": "CloudPod",
        "metadata": {
            "name": row.k8s_name,
            "namespace": row.k8s_namespace,
            "labels": {
                TENANT_LABEL: row.tenant_id,
                "app.kubernetes.io/managed-by": FIELD_MANAGER,
            },
            "annotations": { JOB_ANNOTATION: job_id.to_string() },
        },
        "spec": spec,
    });
    let applied = kube_call(
        state,
        "create the CloudPod",
        state.pods.patch(
            &row.k8s_name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&object),
        ),
    )
    .await?;
    if let Some(uid) = applied
        .metadata
        .uid
        .as_deref()
        .and_then(|u| uuid::Uuid::parse_str(u).ok())
    {
        store::set_k8s_uid(&state.pool, &row.id, uid).await?;
    }
    Ok(())
}

/// A merge patch of the CloudPod's spec (scale, backup request).
pub async fn patch_spec(
    state: &AppState,
    row: &PodRow,
    spec: serde_json::Value,
    what: &str,
) -> Result<(), ApiError> {
    let patch = json!({ "spec": spec });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    match tokio::time::timeout(
        state.kube_timeout,
        state
            .pods
            .patch(&row.k8s_name, &params, &Patch::Merge(&patch)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if is_kube_not_found(&e) => Err(ApiError::Conflict {
            code: "POD_NOT_READY",
            message: "the pod's resource does not exist (yet); try again shortly".into(),
        }),
        Ok(Err(e)) => Err(kube_error(what, e)),
        Err(_) => Err(ApiError::Unavailable(anyhow::anyhow!(
            "{what}: Kubernetes did not answer"
        ))),
    }
}
