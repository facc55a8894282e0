//! Cleans up after orders that died between their admission commit and the CloudPod write
//! (a crash or a lost connection with no retry): such a reservation would otherwise hold the
//! tenant's quota for ever. Safe to run in every API replica at once.

use std::time::Duration;

use kube::Api;

use super::AppState;
use crate::crd::CloudPod;
use crate::store::pods as store;

/// When and how often to sweep.
#[derive(Debug, Clone, Copy)]
pub struct ReaperSettings {
    /// A reservation without a CloudPod uid older than this is stale (well above the
    /// Kubernetes call timeout, so an order in flight is never touched).
    pub ttl: Duration,
    /// Pause between sweeps.
    pub interval: Duration,
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Reservations whose CloudPod did exist after all: its uid is now recorded.
    pub adopted: u64,
    /// Reservations without a CloudPod: released (row marked deleted).
    pub released: u64,
    /// Reservations that could not be checked this time (Kubernetes or database error).
    pub skipped: u64,
}

/// One pass over the stale reservations (at most 100).
pub async fn sweep(
    state: &AppState,
    ttl: Duration,
) -> Result<SweepReport, crate::store::StoreError> {
    let mut report = SweepReport::default();
    for (id, namespace, name) in store::stale_reservations(&state.pool, ttl, 100).await? {
        let pods: Api<CloudPod> = Api::namespaced(state.client.clone(), &namespace);
        match tokio::time::timeout(state.kube_timeout, pods.get_opt(&name)).await {
            Ok(Ok(Some(cr))) => {
                match cr
                    .metadata
                    .uid
                    .as_deref()
                    .and_then(|u| uuid::Uuid::parse_str(u).ok())
                {
                    Some(uid) => {
                        store::set_k8s_uid(&state.pool, &id, uid).await?;
                        report.adopted += 1;
                        tracing::info!(pod_id = %id, "stale reservation: its CloudPod exists; uid recorded");
                    }
                    None => report.skipped += 1,
                }
            }
            Ok(Ok(None)) => {
                if store::release_unprovisioned(&state.pool, &id).await? {
                    report.released += 1;
                    tracing::warn!(pod_id = %id, "stale reservation without a CloudPod released");
                }
            }
            Ok(Err(e)) => {
                report.skipped += 1;
                tracing::warn!(pod_id = %id, error = %e, "stale reservation: cannot read its CloudPod");
            }
            Err(_) => {
                report.skipped += 1;
                tracing::warn!(pod_id = %id, "stale reservation: Kubernetes did not answer");
            }
        }
    }
    let m = &state.metrics;
    m.reservations.inc_by(&["adopted"], report.adopted);
    m.reservations.inc_by(&["released"], report.released);
    Ok(report)
}

/// Sweeps every `interval` until `stop` turns true.
pub async fn run(
    state: AppState,
    settings: ReaperSettings,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if let Err(e) = sweep(&state, settings.ttl).await {
            tracing::warn!(error = %e, "reservation sweep failed; next try in {:?}", settings.interval);
        }
        tokio::select! {
            _ = tokio::time::sleep(settings.interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
