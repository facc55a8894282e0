//! Admin routes: system-wide statistics.

use axum::Json;
use axum::extract::State;

use super::AppState;
use super::error::ApiError;
use super::extract::AdminCaller;
use super::model::{AdminStats, FailureStats, PodStats, QueueStats};
use crate::store::pods as store;

/// `GET /admin/stats`: pods by status, plan and node; queue depth; failures in the last hour.
pub async fn stats(
    State(state): State<AppState>,
    _admin: AdminCaller,
) -> Result<Json<AdminStats>, ApiError> {
    let s = store::stats(&state.pool).await?;
    let total = s
        .pods_by_status
        .iter()
        .filter(|(k, _)| k.as_str() != "deleted")
        .map(|(_, v)| v)
        .sum();
    let depth = ["queued", "running"]
        .iter()
        .filter_map(|k| s.queue_by_status.get(*k))
        .sum();
    Ok(Json(AdminStats {
        pods: PodStats {
            total,
            by_status: s.pods_by_status,
            by_plan: s.pods_by_plan,
            by_node: s.pods_by_node,
        },
        queue: QueueStats {
            depth,
            by_status: s.queue_by_status,
        },
        failures_last_hour: FailureStats {
            queue: s.failed_queue_last_hour,
            pods: s.errored_pods_last_hour,
        },
        tenants_with_pods: s.tenants_with_pods,
        generated_at: chrono::Utc::now(),
    }))
}
