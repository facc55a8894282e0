//! The CloudPod reconciler: finalizer → find or admit the row → decide the next queue
//! action → status. Deletion: mark `deleting`, let the worker destroy the VM, then drop the
//! finalizer once the row is `deleted`.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::Instrument;
use uuid::Uuid;

use super::plan::{self, Inputs, Pacing, Step};
use super::status::{self, NotAdmitted, View};
use super::{Context, Error};
use crate::api::JOB_ANNOTATION;
use crate::crd::{CloudPod, FINALIZER};
use crate::queue::{self, Action as QAction, NewItem};
use crate::quota::{QuotaCheck, Requested};
use crate::store::StoreError;
use crate::store::pods::{self as pstore, NewPod, PodRow};
use crate::store::reconcile as rstore;
use crate::worker::payload::{
    CreatePayload, PodState, PowerPayload, RequestPayload, ScalePayload, Size,
};

/// Reconciles one CloudPod.
pub async fn reconcile(cp: Arc<CloudPod>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = tracing::info_span!(
        "reconcile",
        tenantId = %cp.spec.tenant_id,
        namespace = cp.namespace().unwrap_or_default(),
        name = %cp.name_any(),
        podId = tracing::field::Empty,
        vmid = tracing::field::Empty,
    );
    ctx.measured("cloudpod", run(&cp, &ctx).instrument(span))
        .await
}

/// What to do after a failed reconcile: count it and try again with a pause.
pub fn error_policy(cp: Arc<CloudPod>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.errors.inc(&["cloudpod", err.reason()]);
    tracing::warn!(name = %cp.name_any(), error = %err, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

async fn run(cp: &CloudPod, ctx: &Context) -> Result<Action, Error> {
    let ns = cp
        .namespace()
        .ok_or(Error::Malformed("metadata.namespace"))?;
    let api: Api<CloudPod> = Api::namespaced(ctx.client.clone(), &ns);
    if cp.meta().deletion_timestamp.is_some() {
        return cleanup(cp, ctx, &api, &ns).await;
    }
    if !has_finalizer(cp) {
        // Nothing is admitted or built until the stored object carries the finalizer: the
        // update event re-runs this reconcile with an object that proves it does.
        add_finalizer(cp, ctx, &api).await?;
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    apply(cp, ctx, &api, &ns).await
}

fn uid_of(cp: &CloudPod) -> Result<Uuid, Error> {
    cp.uid()
        .and_then(|u| Uuid::parse_str(&u).ok())
        .ok_or(Error::Malformed("metadata.uid"))
}

async fn add_finalizer(cp: &CloudPod, ctx: &Context, api: &Api<CloudPod>) -> Result<(), Error> {
    let mut list = cp.finalizers().to_vec();
    list.push(FINALIZER.to_string());
    set_finalizers(cp, ctx, api, list).await
}

/// Whether the object carries our finalizer.
fn has_finalizer(cp: &CloudPod) -> bool {
    cp.finalizers().iter().any(|f| f == FINALIZER)
}

async fn remove_finalizer(cp: &CloudPod, ctx: &Context, api: &Api<CloudPod>) -> Result<(), Error> {
    let without_ours = |cp: &CloudPod| -> Vec<String> {
        cp.finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect()
    };
    let result = match set_finalizers(cp, ctx, api, without_ours(cp)).await {
        // Our own status write moved the resourceVersion on: once more on a fresh copy.
        Err(Error::Kube(kube::Error::Api(s))) if s.code == 409 => {
            let Some(fresh) = api.get_opt(&cp.name_any()).await? else {
                return Ok(());
            };
            set_finalizers(&fresh, ctx, api, without_ours(&fresh)).await
        }
        other => other,
    };
    match result {
        // Gone meanwhile: nothing left to release.
        Err(Error::Kube(kube::Error::Api(s))) if s.code == 404 => Ok(()),
        other => other,
    }
}

/// Replaces the finalizer list, guarded by the resourceVersion it was computed from (a
/// concurrent change is a 409 and the reconcile runs again on the fresh object).
async fn set_finalizers(
    cp: &CloudPod,
    ctx: &Context,
    api: &Api<CloudPod>,
    list: Vec<String>,
) -> Result<(), Error> {
    let patch = json!({
        "metadata": { "finalizers": list, "resourceVersion": cp.resource_version() }
    });
    api.patch(
        &cp.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    ctx.wrote("finalizer");
    Ok(())
}

/// The admission outcome for a pod without a live row.
enum Admission {
    Admitted(Box<PodRow>),
    Refused(NotAdmitted),
}

async fn apply(
    cp: &CloudPod,
    ctx: &Context,
    api: &Api<CloudPod>,
    ns: &str,
) -> Result<Action, Error> {
    let uid = uid_of(cp)?;
    let name = cp.name_any();
    let mut conn = acquire(ctx).await?;
    let found = rstore::find_for_resource(&mut conn, uid, ns, &name).await?;
    drop(conn);
    let row = match found {
        Some(r) if r.deleted_at.is_none() => {
            if r.k8s_uid.is_none() {
                pstore::set_k8s_uid(&ctx.pool, &r.id, uid).await?;
            }
            Some(r)
        }
        // A released API reservation that never got a VM: admitted again below.
        Some(r) if r.vmid.is_none() && r.id == name => None,
        Some(r) => {
            // The VM was destroyed but the resource lives on (it was recreated under the
            // same uid, which cannot happen, or the row was edited by hand): report it.
            let view = view_for(cp, Some(&r), None, None, 0);
            write_status(cp, ctx, api, &view).await?;
            return Ok(Action::await_change());
        }
        None => None,
    };
    let row = match row {
        Some(r) => r,
        None => match admit(cp, ctx, uid, ns).await? {
            Admission::Admitted(r) => *r,
            Admission::Refused(why) => {
                let view = view_for(cp, None, Some(&why), None, 0);
                write_status(cp, ctx, api, &view).await?;
                return Ok(Action::requeue(ctx.settings.refused_recheck));
            }
        },
    };
    tracing::Span::current().record("podId", row.id.as_str());
    if let Some(v) = row.vmid {
        tracing::Span::current().record("vmid", v);
    }
    let (step, scale_refused, pending) = decide_and_enqueue(cp, ctx, &row).await?;
    // Re-read: the enqueue may have changed nothing, but the worker may have.
    let mut conn = acquire(ctx).await?;
    let row = rstore::pod_by_id(&mut conn, &row.id).await?.unwrap_or(row);
    drop(conn);
    let view = view_for(cp, Some(&row), None, scale_refused.as_ref(), pending);
    write_status(cp, ctx, api, &view).await?;
    Ok(match step {
        Step::Wait | Step::Enqueue(_) => Action::requeue(ctx.settings.pending_recheck),
        Step::Scale(_) if scale_refused.is_some() => Action::requeue(ctx.settings.refused_recheck),
        Step::Scale(_) => Action::requeue(ctx.settings.pending_recheck),
        Step::Idle(d) => Action::requeue(d.max(Duration::from_secs(1))),
    })
}

async fn acquire(ctx: &Context) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, Error> {
    ctx.pool
        .acquire()
        .await
        .map_err(|e| Error::Store(StoreError::query("get a database connection")(e)))
}

fn view_for<'a>(
    cp: &CloudPod,
    row: Option<&'a PodRow>,
    refused: Option<&'a NotAdmitted>,
    scale_refused: Option<&'a NotAdmitted>,
    pending: usize,
) -> View<'a> {
    View {
        generation: cp.meta().generation,
        row,
        refused,
        scale_refused,
        pending,
        deleting: cp.meta().deletion_timestamp.is_some(),
        desired_power: cp.spec.power_state,
    }
}

/// Writes the status unless it is unchanged; publishes the events of the change.
async fn write_status(
    cp: &CloudPod,
    ctx: &Context,
    api: &Api<CloudPod>,
    view: &View<'_>,
) -> Result<(), Error> {
    let old = cp.status.as_ref();
    let new = status::build(view, old, k8s_openapi::jiff::Timestamp::now());
    if old == Some(&new) {
        return Ok(());
    }
    if !ctx
        .apply_status(api, &cp.name_any(), &new, "cloudpod_status")
        .await?
    {
        // Gone meanwhile (deleted and finalized): nothing to report on.
        return Ok(());
    }
    let reference = cp.object_ref(&());
    for note in status::notes(old, &new) {
        if ctx
            .events
            .publish(
                &reference,
                note.warning,
                &note.reason,
                "Reconcile",
                &note.message,
            )
            .await
        {
            ctx.wrote("event");
        }
    }
    Ok(())
}

/// Resolves plan and blueprint; runs the admission transaction; enqueues the create.
async fn admit(cp: &CloudPod, ctx: &Context, uid: Uuid, ns: &str) -> Result<Admission, Error> {
    let spec = &cp.spec;
    let name = cp.name_any();
    let plan = match pstore::plan(&ctx.pool, &spec.plan_code).await? {
        Some(p) if p.is_active => p,
        Some(_) => {
            return Ok(Admission::Refused(NotAdmitted::Invalid {
                reason: "PlanRetired",
                message: format!(
                    "spec.planCode: plan `{}` is no longer offered; choose another plan",
                    spec.plan_code
                ),
            }));
        }
        None => {
            return Ok(Admission::Refused(NotAdmitted::Invalid {
                reason: "UnknownPlan",
                message: format!("spec.planCode: plan `{}` does not exist", spec.plan_code),
            }));
        }
    };
    // Catalog reads happen before any transaction: a pooled connection is never held while
    // asking the pool for another one.
    let bp = rstore::blueprint(&ctx.pool, &spec.blueprint).await?;
    match &bp {
        Some(b) if b.is_active => {}
        Some(_) => {
            return Ok(Admission::Refused(NotAdmitted::Invalid {
                reason: "BlueprintRetired",
                message: format!(
                    "spec.blueprint: blueprint `{}` is no longer offered",
                    spec.blueprint
                ),
            }));
        }
        None => {
            return Ok(Admission::Refused(NotAdmitted::Invalid {
                reason: "UnknownBlueprint",
                message: format!(
                    "spec.blueprint: blueprint `{}` does not exist",
                    spec.blueprint
                ),
            }));
        }
    }
    let size = plan::desired_size(&plan, spec, None);
    // An API order whose reservation was released keeps its id (the resource's name).
    let reuse_name = crate::proxmox::PodId::parse(&name).is_ok();
    let pod_id = if reuse_name {
        name.clone()
    } else {
        pstore::new_pod_id()
    };
    let new = NewPod {
        id: pod_id,
        tenant_id: spec.tenant_id.clone(),
        user_id: spec.user_id.clone(),
        plan_code: plan.code.clone(),
        blueprint_code: spec.blueprint.clone(),
        hostname: Some(spec.hostname.clone().unwrap_or_else(|| name.clone())),
        cpu_cores: size.cpu_cores,
        memory_mb: size.memory_mb,
        disk_gb: size.disk_gb,
        k8s_namespace: ns.to_string(),
        k8s_name: name.clone(),
    };
    let mut adm = ctx.quotas.begin_admission(&spec.tenant_id).await?;
    let check = adm.check(&requested(1, size)).await?;
    if !check.allowed {
        return Ok(Admission::Refused(quota_refusal(check)));
    }
    if let Some(refused) = adm
        .check_plan_cap(&plan.code, plan.max_pods_per_tenant, &check.details)
        .await?
    {
        return Ok(Admission::Refused(quota_refusal(refused)));
    }
    let revived = reuse_name && rstore::revive_released(adm.conn(), &new, uid).await?;
    if !revived {
        pstore::insert_pod(adm.conn(), &new, Some(uid)).await?;
    }
    let row = rstore::pod_by_id(adm.conn(), &new.id)
        .await?
        .ok_or(Error::Malformed("the admitted row"))?;
    let payload = create_payload(cp, bp, size)?;
    enqueue(adm.conn(), ctx, &row, QAction::Create, payload, None).await?;
    adm.commit().await?;
    tracing::info!(podId = %new.id, "admitted");
    Ok(Admission::Admitted(Box::new(row)))
}

/// What `pods` pods of `size` ask of the tenant's quota.
fn requested(pods: i64, size: Size) -> Requested {
    Requested {
        pods,
        cpu_cores: size.cpu_cores.into(),
        memory_mb: size.memory_mb.into(),
        disk_gb: size.disk_gb.into(),
    }
}

/// The refusal a failed quota check reports.
fn quota_refusal(check: QuotaCheck) -> NotAdmitted {
    NotAdmitted::Quota {
        message: check.message.unwrap_or_else(|| "Quota exceeded".into()),
        details: check.details,
    }
}

fn create_payload(
    cp: &CloudPod,
    bp: Option<rstore::BlueprintRow>,
    size: Size,
) -> Result<serde_json::Value, Error> {
    let spec = &cp.spec;
    let bp = bp.ok_or(Error::Malformed("the blueprint"))?;
    let ci = spec.cloud_init.clone().unwrap_or_default();
    let profile_user = bp
        .cloud_init_profile
        .get("user")
        .and_then(|u| u.as_str())
        .map(str::to_string);
    let p = CreatePayload {
        size,
        hostname: spec.hostname.clone().unwrap_or_else(|| cp.name_any()),
        template_vmid: bp.proxmox_template_vmid,
        template_node: bp.default_node,
        storage: bp.storage_pool,
        ci_user: ci.user.or(profile_user),
        ssh_keys: ci.ssh_public_keys,
        power_state: spec.power_state,
        generation: cp.meta().generation.unwrap_or(0),
    };
    Ok(serde_json::to_value(&p).unwrap_or_default())
}

/// The job an action belongs to: the API's (annotation / `api-job-N` request) when it names
/// a job of this pod, else a new one.
async fn job_for(
    conn: &mut sqlx::PgConnection,
    row: &PodRow,
    action: QAction,
    api_job: Option<i64>,
) -> Result<i64, Error> {
    if let Some(id) = api_job
        && rstore::job_pod(conn, id).await?.as_deref() == Some(row.id.as_str())
    {
        return Ok(id);
    }
    Ok(queue::create_job(
        conn,
        &row.tenant_id,
        row.user_id.as_deref(),
        &row.id,
        action.job_type(),
    )
    .await?)
}

/// A transaction holding the pod row's lock (taken after any tenant lock, never before).
async fn begin_locked(
    ctx: &Context,
    id: &str,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, Error> {
    let mut tx = ctx
        .pool
        .begin()
        .await
        .map_err(StoreError::query("begin a reconcile"))?;
    rstore::pod_by_id_locked(&mut tx, id).await?;
    Ok(tx)
}

/// Enqueues `action` for the pod, in the job named by the API (when it is this pod's) or a
/// new one.
pub(super) async fn enqueue(
    conn: &mut sqlx::PgConnection,
    ctx: &Context,
    row: &PodRow,
    action: QAction,
    payload: serde_json::Value,
    api_job: Option<i64>,
) -> Result<(), Error> {
    let job = job_for(conn, row, action, api_job).await?;
    queue::enqueue(
        conn,
        &NewItem {
            pod_id: &row.id,
            job_id: Some(job),
            action,
            payload,
            max_attempts: ctx.settings.max_attempts,
        },
    )
    .await?;
    tracing::info!(action = action.as_str(), "enqueued");
    Ok(())
}

/// Decides the next step for an admitted pod and enqueues it (one transaction, the pod row
/// locked so two decisions never race). Returns the step, a scale refusal, and how many
/// items are unfinished.
async fn decide_and_enqueue(
    cp: &CloudPod,
    ctx: &Context,
    row: &PodRow,
) -> Result<(Step, Option<NotAdmitted>, usize), Error> {
    let spec = &cp.spec;
    let mut tx = begin_locked(ctx, &row.id).await?;
    let pending = queue::pending_for_pod(&mut tx, &row.id).await?;
    let state = PodState::from_json(&row.provisioning_state);
    let effective = Size {
        cpu_cores: row.cpu_cores,
        memory_mb: row.memory_mb,
        disk_gb: row.disk_gb,
    };
    // Catalog rows are read only where a branch needs them, and on the transaction's own
    // connection: a pooled connection is never held while asking the pool for another.
    let plan_row = if state.provisioned {
        Some(pstore::plan(&mut *tx, &spec.plan_code).await?)
    } else {
        None
    };
    let desired = match &plan_row {
        Some(Some(p)) => plan::desired_size(p, spec, Some(row.disk_gb)),
        _ => effective,
    };
    let reboot_seen = match &spec.reboot_request {
        Some(r) => queue::exists_with(&mut tx, &row.id, QAction::Reboot, "request", r).await?,
        None => false,
    };
    let backup_seen = match &spec.backup_request {
        Some(r) => queue::exists_with(&mut tx, &row.id, QAction::Backup, "request", r).await?,
        None => false,
    };
    let mut since_failure = None;
    let mut failure_outdated = false;
    if row.status == "error" {
        let latest = queue::last_finished_any(&mut tx, &row.id).await?;
        if let Some(f) = latest.filter(|f| f.status == "failed") {
            since_failure = (chrono::Utc::now() - f.processed_at).to_std().ok();
            let planned = f.payload.get("generation").and_then(|g| g.as_i64());
            failure_outdated = planned.is_some_and(|g| Some(g) < cp.meta().generation);
        }
    }
    let since_sync = state
        .last_sync
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .and_then(|t| {
            (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
                .to_std()
                .ok()
        });
    let inputs = Inputs {
        status: &row.status,
        effective,
        desired,
        state: &state,
        has_ip: row.ip_address.is_some(),
        spec,
        pending: pending.len(),
        reboot_seen,
        backup_seen,
        since_failure,
        failure_outdated,
        since_sync,
    };
    let pacing = Pacing {
        sync_interval: ctx.settings.sync_interval,
        error_retry: ctx.settings.error_retry,
        address_retry: ctx.settings.address_retry,
    };
    let step = plan::next_step(&inputs, &pacing);
    let generation = cp.meta().generation.unwrap_or(0);
    let item = match &step {
        Step::Enqueue(QAction::Create) => {
            let plan_row = match plan_row {
                Some(read) => read,
                None => pstore::plan(&mut *tx, &spec.plan_code).await?,
            };
            let size = plan_row
                .as_ref()
                .map_or(effective, |p| plan::desired_size(p, spec, None));
            let bp = rstore::blueprint(&mut *tx, &spec.blueprint).await?;
            let api_job = cp
                .annotations()
                .get(JOB_ANNOTATION)
                .and_then(|j| j.parse::<i64>().ok());
            Some((QAction::Create, create_payload(cp, bp, size)?, api_job))
        }
        Step::Enqueue(a @ (QAction::Start | QAction::Stop | QAction::Sync)) => Some((
            *a,
            serde_json::to_value(PowerPayload {
                power_state: spec.power_state,
            })
            .unwrap_or_default(),
            None,
        )),
        Step::Enqueue(QAction::Reboot) => spec.reboot_request.as_ref().map(|r| {
            (
                QAction::Reboot,
                json!(RequestPayload { request: r.clone() }),
                None,
            )
        }),
        Step::Enqueue(QAction::Backup) => spec.backup_request.as_ref().map(|r| {
            let api_job = r.strip_prefix("api-job-").and_then(|n| n.parse().ok());
            (
                QAction::Backup,
                json!(RequestPayload { request: r.clone() }),
                api_job,
            )
        }),
        Step::Enqueue(QAction::Destroy | QAction::Scale) | Step::Wait | Step::Idle(_) => None,
        Step::Scale(size) => {
            // Admission takes the tenant's lock before the pod's: release ours first.
            tx.rollback()
                .await
                .map_err(StoreError::query("end a reconcile"))?;
            return match admit_scale(ctx, row, *size, generation).await? {
                Ok(enqueued) => Ok((step, None, pending.len() + usize::from(enqueued))),
                Err(why) => Ok((step, Some(why), pending.len())),
            };
        }
    };
    let enqueued = usize::from(item.is_some());
    if let Some((action, payload, api_job)) = item {
        enqueue(&mut tx, ctx, row, action, payload, api_job).await?;
    }
    tx.commit()
        .await
        .map_err(StoreError::query("commit a reconcile"))?;
    Ok((step, None, pending.len() + enqueued))
}

/// Admits a scale's growth under the tenant's lock, reserves the new size and enqueues the
/// scale, all in the admission transaction. `Ok(false)`: another decision got there first.
async fn admit_scale(
    ctx: &Context,
    row: &PodRow,
    desired: Size,
    generation: i64,
) -> Result<Result<bool, NotAdmitted>, Error> {
    let mut adm = ctx.quotas.begin_admission(&row.tenant_id).await?;
    let row = match rstore::pod_by_id_locked(adm.conn(), &row.id).await? {
        Some(r) if r.deleted_at.is_none() => r,
        _ => return Ok(Ok(false)),
    };
    if !queue::pending_for_pod(adm.conn(), &row.id)
        .await?
        .is_empty()
    {
        return Ok(Ok(false));
    }
    let held = Size {
        cpu_cores: row.cpu_cores.max(row.reserved_cpu_cores.unwrap_or(0)),
        memory_mb: row.memory_mb.max(row.reserved_memory_mb.unwrap_or(0)),
        disk_gb: row.disk_gb.max(row.reserved_disk_gb.unwrap_or(0)),
    };
    let already = row.reserved_cpu_cores.unwrap_or(row.cpu_cores) == desired.cpu_cores
        && row.reserved_memory_mb.unwrap_or(row.memory_mb) == desired.memory_mb
        && row.reserved_disk_gb.unwrap_or(row.disk_gb) == desired.disk_gb;
    if !already {
        let check = adm
            .check(&requested(0, plan::growth(desired, held)))
            .await?;
        if !check.allowed {
            return Ok(Err(quota_refusal(check)));
        }
        pstore::reserve_resources(
            adm.conn(),
            &row.id,
            desired.cpu_cores,
            desired.memory_mb,
            desired.disk_gb,
        )
        .await?;
    }
    let payload = serde_json::to_value(ScalePayload {
        size: desired,
        generation,
    })
    .unwrap_or_default();
    enqueue(adm.conn(), ctx, &row, QAction::Scale, payload, None).await?;
    adm.commit().await?;
    tracing::info!(?desired, "scale admitted and enqueued");
    Ok(Ok(true))
}

/// Deletion: destroy through the worker, then release the finalizer.
async fn cleanup(
    cp: &CloudPod,
    ctx: &Context,
    api: &Api<CloudPod>,
    ns: &str,
) -> Result<Action, Error> {
    if !has_finalizer(cp) {
        return Ok(Action::await_change());
    }
    let uid = uid_of(cp)?;
    let mut conn = acquire(ctx).await?;
    let row = rstore::find_for_resource(&mut conn, uid, ns, &cp.name_any()).await?;
    drop(conn);
    let row = match row {
        Some(r) if r.deleted_at.is_none() => r,
        // Never admitted, or already destroyed: nothing holds the finalizer.
        other => {
            remove_finalizer(cp, ctx, api).await?;
            tracing::info!(
                podId = other.as_ref().map(|r| r.id.as_str()),
                "finalizer removed"
            );
            ctx.requeue_refused(&cp.spec.tenant_id);
            return Ok(Action::await_change());
        }
    };
    tracing::Span::current().record("podId", row.id.as_str());
    let mut tx = begin_locked(ctx, &row.id).await?;
    let pending = queue::pending_for_pod(&mut tx, &row.id).await?;
    let destroy_pending = pending.iter().any(|p| p.action == QAction::Destroy);
    let mut requeue = ctx.settings.pending_recheck;
    if !destroy_pending {
        let last = queue::last_finished(&mut tx, &row.id, QAction::Destroy).await?;
        let wait = match last.filter(|l| l.status == "failed") {
            Some(l) => {
                let since = (chrono::Utc::now() - l.processed_at)
                    .to_std()
                    .unwrap_or_default();
                ctx.settings.error_retry.saturating_sub(since)
            }
            None => Duration::ZERO,
        };
        if wait.is_zero() {
            rstore::mark_deleting(&mut tx, &row.id).await?;
            enqueue(&mut tx, ctx, &row, QAction::Destroy, json!({}), None).await?;
        } else {
            requeue = wait;
        }
    }
    tx.commit()
        .await
        .map_err(StoreError::query("commit a deletion"))?;
    let mut conn = acquire(ctx).await?;
    let row = rstore::pod_by_id(&mut conn, &row.id).await?.unwrap_or(row);
    drop(conn);
    let view = view_for(cp, Some(&row), None, None, pending.len().max(1));
    write_status(cp, ctx, api, &view).await?;
    Ok(Action::requeue(requeue))
}
