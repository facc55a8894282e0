//! Pod routes: order, list, detail, destroy, backup, health, scale.
//!
//! Writes follow one pattern: validate → (admission transaction: idempotency lookup, quota,
//! reservation, job row) → write the CloudPod (idempotent) → 202 with the job. A replay with
//! the same idempotency key skips the transaction and repeats only the idempotent write, so a
//! client retrying after a timeout or a crash converges on one pod.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kube::api::DeleteParams;
use serde_json::json;

use super::auth::Caller;
use super::cloudpod::{apply_cloudpod, is_kube_not_found, kube_error, patch_spec};
use super::error::ApiError;
use super::extract::{JsonBody, OptionalJsonBody, QueryMap};
use super::model::{
    Accepted, Health, HealthCheck, OrderRequest, PodList, PodView, Resources, ScaleRequest,
};
use super::validate::{
    CPU_RANGE, DISK_RANGE, MEMORY_RANGE, check_range, idempotency_key, pod_ref, validate_order,
};
use super::{AppState, BASE};
use crate::crd::Phase;
use crate::quota::{QuotaCheck, Requested};
use crate::store::pods::{self as store, JobRef, NewJob, NewPod, PodRef, PodRow};

// ---- helpers ------------------------------------------------------------------------------

fn status_url(pod_id: &str) -> String {
    format!("{BASE}/{pod_id}")
}

/// The usual answer to an action on `pod_id`.
fn answer(pod_id: String, job_id: Option<i64>, status: String, replayed: bool) -> Accepted {
    Accepted {
        status_url: status_url(&pod_id),
        pod_id,
        job_id,
        status,
        replayed,
        backup_request: None,
        resources: None,
    }
}

fn accepted(status: StatusCode, body: Accepted) -> Response {
    let location = body.status_url.clone();
    let mut response = (status, Json(body)).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// The answer to a refused quota check.
fn quota_exceeded(check: QuotaCheck) -> ApiError {
    ApiError::QuotaExceeded {
        message: check
            .message
            .unwrap_or_else(|| "Quota exceeded".to_string()),
        details: Box::new(check.details),
    }
}

async fn find(state: &AppState, caller: &Caller, id: &str) -> Result<PodRow, ApiError> {
    let r = pod_ref(id)?;
    store::find_pod(&state.pool, &caller.tenant_id, &r)
        .await?
        .ok_or_else(not_found)
}

/// Another tenant's pod and a missing one answer the same.
fn not_found() -> ApiError {
    ApiError::NotFound("no such pod".into())
}

/// Whether `job_id` is the newest job of its type for the pod.
async fn is_latest_job(
    state: &AppState,
    pod_id: &str,
    job_type: &str,
    job_id: i64,
) -> Result<bool, ApiError> {
    Ok(store::latest_job(&state.pool, pod_id, job_type)
        .await?
        .is_some_and(|(id, _)| id == job_id))
}

/// Outcome of the idempotency lookup inside an admission.
enum Replay {
    New,
    Same(JobRef),
}

async fn replay_of(
    conn: &mut sqlx::PgConnection,
    caller: &Caller,
    key: Option<&str>,
    request: &str,
    job_type: &str,
) -> Result<Replay, ApiError> {
    let Some(key) = key else {
        return Ok(Replay::New);
    };
    match store::find_job_by_key(conn, &caller.tenant_id, key, request).await? {
        None => Ok(Replay::New),
        Some(job) if job.same_request && job.job_type == job_type => Ok(Replay::Same(job)),
        Some(_) => Err(ApiError::Conflict {
            code: "IDEMPOTENCY_KEY_REUSED",
            message: "this idempotency key was already used for a different request".into(),
        }),
    }
}

// ---- handlers -----------------------------------------------------------------------------

/// `POST /order`: admit, reserve, create the CloudPod, answer 202.
pub async fn order(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(req): JsonBody<OrderRequest>,
) -> Result<Response, ApiError> {
    validate_order(&req)?;
    let key = idempotency_key(&headers, req.order_id.as_deref())?;
    let canonical = serde_json::to_string(&req).map_err(|e| ApiError::Internal(e.into()))?;

    // Read the catalog before taking the tenant's lock, judge it after the replay check: a
    // replayed order answers as before even if its plan or blueprint was retired since.
    let plan = store::plan(&state.pool, &req.plan_code).await?;
    let blueprint = store::blueprint_active(&state.pool, &req.blueprint).await?;

    let mut admission = state.quotas.begin_admission(&caller.tenant_id).await?;
    if let Replay::Same(job) = replay_of(
        admission.conn(),
        &caller,
        key.as_deref(),
        &canonical,
        "provision",
    )
    .await?
    {
        drop(admission);
        let pod_id = job.pod_id.clone().ok_or_else(not_found)?;
        let row = store::find_pod(&state.pool, &caller.tenant_id, &PodRef::Id(pod_id))
            .await?
            .ok_or_else(not_found)?;
        // The first attempt may have died before the CloudPod was written.
        if row.k8s_uid.is_none() && row.status == "pending" {
            apply_cloudpod(&state, &NewPod::from(&row), &req, job.id).await?;
        }
        return Ok(accepted(
            StatusCode::ACCEPTED,
            answer(row.id, Some(job.id), row.status, true),
        ));
    }
    let plan = plan.ok_or_else(|| ApiError::Unprocessable {
        code: "UNKNOWN_PLAN",
        field: Some("planCode".into()),
        message: format!("there is no plan `{}`", req.plan_code),
    })?;
    if blueprint != Some(true) {
        return Err(ApiError::Unprocessable {
            code: if blueprint.is_none() {
                "UNKNOWN_BLUEPRINT"
            } else {
                "BLUEPRINT_INACTIVE"
            },
            field: Some("blueprint".into()),
            message: format!("blueprint `{}` cannot be ordered", req.blueprint),
        });
    }
    if !plan.is_active {
        return Err(ApiError::Unprocessable {
            code: "PLAN_INACTIVE",
            field: Some("planCode".into()),
            message: format!("plan `{}` can no longer be ordered", plan.code),
        });
    }

    let requested = Requested {
        pods: 1,
        cpu_cores: plan.vcpu.into(),
        memory_mb: plan.ram_mb.into(),
        disk_gb: plan.storage_gb.into(),
    };
    let check = admission.check(&requested).await?;
    if !check.allowed {
        return Err(quota_exceeded(check));
    }
    if let Some(refused) = admission
        .check_plan_cap(&plan.code, plan.max_pods_per_tenant, &check.details)
        .await?
    {
        return Err(quota_exceeded(refused));
    }

    let pod_id = store::new_pod_id();
    let new = NewPod {
        id: pod_id.clone(),
        tenant_id: caller.tenant_id.clone(),
        user_id: Some(caller.user_id.clone()),
        plan_code: plan.code.clone(),
        blueprint_code: req.blueprint.clone(),
        hostname: Some(req.name.clone()),
        cpu_cores: plan.vcpu,
        memory_mb: plan.ram_mb,
        disk_gb: plan.storage_gb,
        k8s_namespace: state.namespace.clone(),
        k8s_name: pod_id.clone(),
    };
    store::insert_pending_pod(admission.conn(), &new).await?;
    let job_id = store::insert_job(
        admission.conn(),
        &NewJob {
            tenant_id: &caller.tenant_id,
            user_id: Some(&caller.user_id),
            pod_id: &pod_id,
            job_type: "provision",
            idempotency_key: key.as_deref(),
            request: &canonical,
        },
    )
    .await?;
    admission.commit().await?;
    tracing::info!(tenant_id = %caller.tenant_id, pod_id = %pod_id, job_id, plan = %plan.code, action = "order", "pod admitted");

    if let Err(e) = apply_cloudpod(&state, &new, &req, job_id).await {
        // Give the reservation back so a failed order does not hold quota; a retry with the
        // same key finds the job and re-applies. The controller re-admits a CloudPod whose
        // row was released if the write did land after all.
        if key.is_none()
            && let Err(release) = store::release_unprovisioned(&state.pool, &pod_id).await
        {
            tracing::error!(pod_id = %pod_id, error = %release, "could not release a failed order's reservation");
        }
        return Err(e);
    }
    Ok(accepted(
        StatusCode::ACCEPTED,
        answer(
            pod_id,
            Some(job_id),
            Phase::Pending.as_db_status().to_string(),
            false,
        ),
    ))
}

/// `GET /`: the caller's pods, newest first, paginated.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryMap,
) -> Result<Json<PodList>, ApiError> {
    query.only(&["page", "pageSize", "status", "includeDeleted"])?;
    let page = query.int("page", 1, 1, 100_000)?;
    let page_size = query.int("pageSize", 20, 1, 100)?;
    let include_deleted = query.bool("includeDeleted", false)?;
    let status = query.str("status");
    if let Some(s) = status
        && Phase::from_db_status(s).is_none()
    {
        return Err(ApiError::invalid(
            "status",
            "must be one of pending, provisioning, active, error, deleting, deleted",
        ));
    }
    let (rows, total) = store::list_pods(
        &state.pool,
        &caller.tenant_id,
        status,
        include_deleted || status == Some("deleted"),
        page_size,
        (page - 1) * page_size,
    )
    .await?;
    Ok(Json(PodList {
        items: rows.iter().map(PodView::from).collect(),
        page,
        page_size,
        total,
    }))
}

/// `GET /{id}`: one pod of the caller's tenant.
pub async fn detail(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<PodView>, ApiError> {
    let row = find(&state, &caller, &id).await?;
    Ok(Json(PodView::from(&row)))
}

/// `POST /{id}/destroy`: delete the CloudPod (the controller destroys the VM, then releases
/// the quota and marks the row deleted).
pub async fn destroy(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    OptionalJsonBody(_): OptionalJsonBody<serde_json::Map<String, serde_json::Value>>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers, None)?;
    let row = find(&state, &caller, &id).await?;
    let canonical = format!("destroy {}", row.id);
    if row.status == "deleted" {
        let job = store::latest_job(&state.pool, &row.id, "destroy").await?;
        return Ok(accepted(
            StatusCode::ACCEPTED,
            answer(row.id, job.map(|j| j.0), row.status, true),
        ));
    }
    let (job_id, replayed) =
        record_job(&state, &caller, &row, key.as_deref(), &canonical, "destroy").await?;
    let deleted = tokio::time::timeout(
        state.kube_timeout,
        state.pods.delete(&row.k8s_name, &DeleteParams::default()),
    )
    .await;
    let status = match deleted {
        Ok(Ok(_)) => "deleting",
        Ok(Err(e)) if is_kube_not_found(&e) => {
            // Never created (an order that died half-way): release the reservation here.
            if store::release_unprovisioned(&state.pool, &row.id).await? {
                "deleted"
            } else {
                "deleting"
            }
        }
        Ok(Err(e)) => return Err(kube_error("delete the CloudPod", e)),
        Err(_) => {
            return Err(ApiError::Unavailable(anyhow::anyhow!(
                "delete the CloudPod: Kubernetes did not answer"
            )));
        }
    };
    tracing::info!(tenant_id = %caller.tenant_id, pod_id = %row.id, vmid = ?row.vmid, job_id, action = "destroy", "destroy requested");
    Ok(accepted(
        StatusCode::ACCEPTED,
        answer(row.id, Some(job_id), status.to_string(), replayed),
    ))
}

/// Records a job for an action on an existing pod, or finds the one a replayed request made.
async fn record_job(
    state: &AppState,
    caller: &Caller,
    row: &PodRow,
    key: Option<&str>,
    canonical: &str,
    job_type: &str,
) -> Result<(i64, bool), ApiError> {
    let mut admission = state.quotas.begin_admission(&caller.tenant_id).await?;
    if let Replay::Same(job) = replay_of(admission.conn(), caller, key, canonical, job_type).await?
    {
        return Ok((job.id, true));
    }
    let job_id = store::insert_job(
        admission.conn(),
        &NewJob {
            tenant_id: &caller.tenant_id,
            user_id: Some(&caller.user_id),
            pod_id: &row.id,
            job_type,
            idempotency_key: key,
            request: canonical,
        },
    )
    .await?;
    admission.commit().await?;
    Ok((job_id, false))
}

/// `POST /{id}/backup`: set a new declarative backup request on the CloudPod.
pub async fn backup(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    OptionalJsonBody(_): OptionalJsonBody<serde_json::Map<String, serde_json::Value>>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers, None)?;
    let row = find(&state, &caller, &id).await?;
    if row.status != "active" {
        return Err(ApiError::Conflict {
            code: "POD_NOT_ACTIVE",
            message: format!("a backup needs an active pod; this one is {}", row.status),
        });
    }
    let canonical = format!("backup {}", row.id);
    let (job_id, replayed) =
        record_job(&state, &caller, &row, key.as_deref(), &canonical, "backup").await?;
    let token = format!("api-job-{job_id}");
    // A replay re-sends its write (the first attempt may have died before it) unless a newer
    // backup was asked for since: writing the old token back would mean one more backup.
    if !replayed || is_latest_job(&state, &row.id, "backup", job_id).await? {
        patch_spec(
            &state,
            &row,
            json!({ "backupRequest": token }),
            "request a backup",
        )
        .await?;
    }
    tracing::info!(tenant_id = %caller.tenant_id, pod_id = %row.id, vmid = ?row.vmid, job_id, action = "backup", "backup requested");
    Ok(accepted(
        StatusCode::ACCEPTED,
        Accepted {
            backup_request: Some(token),
            ..answer(row.id, Some(job_id), row.status, replayed)
        },
    ))
}

/// `POST /{id}/scale`: quota-check the growth, reserve it, and change the CloudPod's size.
pub async fn scale(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ScaleRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers, None)?;
    let pod = pod_ref(&id)?;
    if req.cpu_cores.is_none() && req.memory_mb.is_none() && req.disk_gb.is_none() {
        return Err(ApiError::invalid(
            "body",
            "give at least one of cpuCores, memoryMb, diskGb",
        ));
    }
    check_range("cpuCores", req.cpu_cores, CPU_RANGE)?;
    check_range("memoryMb", req.memory_mb, MEMORY_RANGE)?;
    check_range("diskGb", req.disk_gb, DISK_RANGE)?;

    let mut admission = state.quotas.begin_admission(&caller.tenant_id).await?;
    let row = store::find_pod_on(admission.conn(), &caller.tenant_id, &pod, true)
        .await?
        .ok_or_else(not_found)?;
    if matches!(row.status.as_str(), "deleting" | "deleted") {
        return Err(ApiError::Conflict {
            code: "POD_DELETING",
            message: "the pod is being deleted".into(),
        });
    }
    if row.k8s_uid.is_none() {
        // Its order has not written the CloudPod yet; reserving now could never be applied.
        return Err(ApiError::Conflict {
            code: "POD_NOT_READY",
            message: "the pod's resource does not exist (yet); try again shortly".into(),
        });
    }
    let target = Resources {
        cpu_cores: req
            .cpu_cores
            .unwrap_or(row.reserved_cpu_cores.unwrap_or(row.cpu_cores)),
        memory_mb: req
            .memory_mb
            .unwrap_or(row.reserved_memory_mb.unwrap_or(row.memory_mb)),
        disk_gb: req
            .disk_gb
            .unwrap_or(row.reserved_disk_gb.unwrap_or(row.disk_gb)),
    };
    // The request as sent (not the computed target, which moves as other changes land).
    let canonical = format!(
        "scale {} {}",
        row.id,
        serde_json::to_string(&req).map_err(|e| ApiError::Internal(e.into()))?
    );
    let replay = replay_of(
        admission.conn(),
        &caller,
        key.as_deref(),
        &canonical,
        "scale",
    )
    .await?;
    let (job_id, replayed) = match replay {
        Replay::Same(job) => {
            drop(admission);
            (Some(job.id), true)
        }
        Replay::New => {
            let current_disk = row.reserved_disk_gb.unwrap_or(row.disk_gb).max(row.disk_gb);
            if target.disk_gb < current_disk {
                return Err(ApiError::Unprocessable {
                    code: "DISK_SHRINK",
                    field: Some("diskGb".into()),
                    message: format!(
                        "disks can only grow: the pod has {current_disk} GB, {} GB asked",
                        target.disk_gb
                    ),
                });
            }
            let held = |eff: i32, res: Option<i32>| i64::from(eff.max(res.unwrap_or(eff)));
            let requested = Requested {
                pods: 0,
                cpu_cores: i64::from(target.cpu_cores)
                    - held(row.cpu_cores, row.reserved_cpu_cores),
                memory_mb: i64::from(target.memory_mb)
                    - held(row.memory_mb, row.reserved_memory_mb),
                disk_gb: i64::from(target.disk_gb) - held(row.disk_gb, row.reserved_disk_gb),
            };
            let unchanged = target.cpu_cores == row.reserved_cpu_cores.unwrap_or(row.cpu_cores)
                && target.memory_mb == row.reserved_memory_mb.unwrap_or(row.memory_mb)
                && target.disk_gb == row.reserved_disk_gb.unwrap_or(row.disk_gb);
            if unchanged {
                drop(admission);
                return Ok(accepted(
                    StatusCode::OK,
                    Accepted {
                        resources: Some(target),
                        ..answer(row.id, None, row.status, false)
                    },
                ));
            }
            let check = admission.check(&requested).await?;
            if !check.allowed {
                return Err(quota_exceeded(check));
            }
            store::reserve_resources(
                admission.conn(),
                &row.id,
                target.cpu_cores,
                target.memory_mb,
                target.disk_gb,
            )
            .await?;
            let job_id = store::insert_job(
                admission.conn(),
                &NewJob {
                    tenant_id: &caller.tenant_id,
                    user_id: Some(&caller.user_id),
                    pod_id: &row.id,
                    job_type: "scale",
                    idempotency_key: key.as_deref(),
                    request: &canonical,
                },
            )
            .await?;
            admission.commit().await?;
            (Some(job_id), false)
        }
    };
    // As for backups: a replay re-sends its write only while it is still the newest scale.
    let newest = match job_id {
        Some(id) if replayed => is_latest_job(&state, &row.id, "scale", id).await?,
        _ => true,
    };
    if newest {
        patch_spec(
            &state,
            &row,
            json!({ "resources": {
                "cpuCores": target.cpu_cores,
                "memoryMb": target.memory_mb,
                "diskGb": target.disk_gb,
            }}),
            "scale the CloudPod",
        )
        .await?;
    }
    tracing::info!(tenant_id = %caller.tenant_id, pod_id = %row.id, vmid = ?row.vmid, job_id = ?job_id, action = "scale", "scale requested");
    Ok(accepted(
        StatusCode::ACCEPTED,
        Accepted {
            resources: Some(target),
            ..answer(row.id, job_id, row.status, replayed)
        },
    ))
}

/// `GET /{id}/health`: the record plus what the controller reports on the CloudPod.
pub async fn health(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Health>, ApiError> {
    let row = find(&state, &caller, &id).await?;
    let cr = if row.deleted_at.is_some() {
        None
    } else {
        match tokio::time::timeout(state.kube_timeout, state.pods.get_opt(&row.k8s_name)).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::warn!(pod_id = %row.id, error = %e, "health: cannot read the CloudPod");
                None
            }
            Err(_) => None,
        }
    };
    Ok(Json(health_of(&row, cr.as_ref())))
}

/// The pure part of the health answer.
pub fn health_of(row: &PodRow, cr: Option<&crate::crd::CloudPod>) -> Health {
    let check = |name: &str, ok: Option<bool>, message: String| HealthCheck {
        name: name.to_string(),
        status: match ok {
            Some(true) => "pass",
            Some(false) => "fail",
            None => "unknown",
        }
        .to_string(),
        message,
    };
    let status = cr.and_then(|c| c.status.as_ref());
    let conditions = status.map(|s| s.conditions.clone()).unwrap_or_default();
    let ready = conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status == "True", c.message.clone()));
    let reconciled =
        cr.map(|c| status.and_then(|s| s.observed_generation) == c.metadata.generation);
    let checks = vec![
        check(
            "record",
            Some(row.status == "active"),
            format!("status is {}", row.status),
        ),
        check(
            "ready",
            ready.as_ref().map(|r| r.0),
            ready
                .as_ref()
                .map(|r| r.1.clone())
                .unwrap_or_else(|| "the controller has not reported readiness".into()),
        ),
        check(
            "network",
            Some(row.ip_address.is_some()),
            row.ip_address
                .as_ref()
                .map(|ip| format!("address {ip}"))
                .unwrap_or_else(|| "no address reported yet".into()),
        ),
        check(
            "reconciled",
            reconciled,
            match reconciled {
                Some(true) => "the controller has seen the latest spec".into(),
                Some(false) => "a change is still being applied".into(),
                None => "the resource could not be read".into(),
            },
        ),
    ];
    Health {
        pod_id: row.id.clone(),
        vmid: row.vmid,
        status: row.status.clone(),
        healthy: checks.iter().all(|c| c.status == "pass"),
        checks,
        ip_address: row.ip_address.clone(),
        last_error: status.and_then(|s| s.last_error.clone()),
        conditions,
        checked_at: chrono::Utc::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::validate::pod_ref;

    #[test]
    fn new_pod_ids_are_valid_and_distinct() {
        let a = store::new_pod_id();
        let b = store::new_pod_id();
        assert_ne!(a, b);
        assert!(matches!(pod_ref(&a), Ok(PodRef::Id(_))), "{a}");
    }
}
