//! The Postgres work queue `cloud_pod_queue` and its `cloud_pod_jobs` bookkeeping.
//!
//! Items run one at a time per pod, oldest first (FIFO per pod; the unique partial index
//! `cloud_pod_queue_one_running_per_pod` enforces "one running" in the database). A claim
//! bumps the item's `attempt`, which together with `lease_owner` forms the fencing token
//! ([`Lease`]): a worker whose lease expired and was reclaimed can no longer heartbeat,
//! complete or fail the item.
//!
//! The free functions take a `&mut PgConnection` so callers can run them inside their own
//! transaction (the worker commits [`complete`] together with its `cloud_pods` update).
//! Lock order is item → job: callers holding other row locks (e.g. `cloud_pods`) should take
//! them in the same order everywhere to avoid deadlocks.
//!
//! Job rules: a job stays `pending` until one of its items is claimed, then `running`; it
//! becomes `success` when every item listed in `queue_item_ids` succeeded, and `failed` as
//! soon as one of its items fails for good.

mod action;
mod items;
mod listen;
mod service;

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::FromRow;

pub use crate::backoff::Backoff;
pub use action::Action;
pub use items::{
    complete, create_job, enqueue, exists_with, fail, last_finished, last_finished_any,
    pending_for_pod,
};
pub use listen::DoneListener;
pub use service::Queue;

/// A new queue item.
#[derive(Debug, Clone)]
pub struct NewItem<'a> {
    /// Pod the item acts on.
    pub pod_id: &'a str,
    /// Job it belongs to (its id is appended to the job's `queue_item_ids`).
    pub job_id: Option<i64>,
    /// What to do.
    pub action: Action,
    /// Action arguments; must be a JSON object.
    pub payload: serde_json::Value,
    /// Give up (status `failed`) after this many claims; at least 1.
    pub max_attempts: i32,
}

/// A claimed item: what the worker runs.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Item id.
    pub id: i64,
    /// Pod the item acts on.
    pub pod_id: String,
    /// Job it belongs to.
    pub job_id: Option<i64>,
    /// What to do.
    pub action: Action,
    /// Action arguments (a JSON object).
    pub payload: serde_json::Value,
    /// This claim's number (1 for the first run).
    pub attempt: i32,
    /// Claims allowed before the item fails for good.
    pub max_attempts: i32,
    /// Failed attempts so far that were retried.
    pub retry_count: i32,
    /// The fencing token to heartbeat, complete or fail with.
    pub lease: Lease,
}

/// Fencing token: only the holder of the current (id, attempt, owner) may heartbeat/finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Item id.
    pub item_id: i64,
    /// The claim's attempt number.
    pub attempt: i32,
    /// The claiming worker.
    pub owner: String,
}

/// One not-yet-finished item of a pod (for the controller's decisions).
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct Pending {
    /// Item id.
    pub id: i64,
    /// What it does.
    pub action: Action,
    /// `queued` or `running`.
    pub status: String,
    /// Action arguments.
    pub payload: serde_json::Value,
    /// Job it belongs to.
    pub job_id: Option<i64>,
    /// Failed attempts so far that were retried.
    pub retry_count: i32,
    /// The last attempt's error, if any.
    pub error_message: Option<String>,
}

/// The last finished item of a pod for an action.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct Finished {
    /// Item id.
    pub id: i64,
    /// What it did.
    pub action: Action,
    /// `success` or `failed`.
    pub status: String,
    /// Action arguments.
    pub payload: serde_json::Value,
    /// What the worker recorded on success.
    pub result: Option<serde_json::Value>,
    /// Why it failed.
    pub error_message: Option<String>,
    /// When it finished.
    pub processed_at: DateTime<Utc>,
}

/// What [`fail`] did with the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// Back to `queued`, due again after this delay.
    Retrying {
        /// The backoff before the next claim.
        after: Duration,
    },
    /// `failed` for good (not retryable, or attempts exhausted); the job failed too.
    Failed,
}

/// The queue statuses, in lifecycle order.
pub const STATUSES: [&str; 4] = ["queued", "running", "success", "failed"];

/// The NOTIFY channel of new items (payload: item id).
pub const CHANNEL_NEW: &str = "cloud_pod_queue";

/// The NOTIFY channel of finished items (payload: pod id); see [`DoneListener`].
pub const CHANNEL_DONE: &str = "cloud_pod_queue_done";
