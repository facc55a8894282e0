//! The job queue (`cloud_pod_queue` + `cloud_pod_jobs`) against a real PostgreSQL.
//!
//! Needs `CLOUDPODS_TEST_DATABASE_URL` (see `tests/common/db.rs`); every test has its own
//! database, so they run in parallel.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{FromRow, PgPool};
use tokio::time::Instant;

use cloudpods::queue::{
    self, Action, Backoff, Claimed, FailOutcome, Lease, NewItem, Pending, Queue,
};
use common::db::{insert_pod, migrated_db};

const LEASE: Duration = Duration::from_secs(30);
const DEADLINE: Duration = Duration::from_secs(20);
const TENANT: &str = "acme";

/// A queue item as stored, for assertions.
#[derive(Debug, FromRow)]
struct Row {
    status: String,
    attempt: i32,
    retry_count: i32,
    error_message: Option<String>,
    lease_owner: Option<String>,
    result: Option<serde_json::Value>,
    processed: bool,
    due_in_secs: f64,
}

async fn row(pool: &PgPool, id: i64) -> Row {
    sqlx::query_as(
        "SELECT status, attempt, retry_count, error_message, lease_owner, result, \
           processed_at IS NOT NULL AS processed, \
           extract(epoch FROM run_after - now())::float8 AS due_in_secs \
         FROM cloud_pod_queue WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn job(pool: &PgPool, id: i64) -> (String, serde_json::Value) {
    sqlx::query_as("SELECT status, queue_item_ids FROM cloud_pod_jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn enqueue(
    pool: &PgPool,
    pod: &str,
    job: Option<i64>,
    action: Action,
    payload: serde_json::Value,
    max_attempts: i32,
) -> i64 {
    let mut conn = pool.acquire().await.unwrap();
    queue::enqueue(
        &mut conn,
        &NewItem {
            pod_id: pod,
            job_id: job,
            action,
            payload,
            max_attempts,
        },
    )
    .await
    .unwrap()
}

async fn create_job(pool: &PgPool, pod: &str, action: Action) -> i64 {
    let mut conn = pool.acquire().await.unwrap();
    queue::create_job(&mut conn, TENANT, Some("user-1"), pod, action.job_type())
        .await
        .unwrap()
}

/// A new pod with a job of `action` holding one item: `(pod, job, item)`.
async fn pod_with_job(
    pool: &PgPool,
    action: Action,
    payload: serde_json::Value,
    max_attempts: i32,
) -> (String, i64, i64) {
    let pod = insert_pod(pool, TENANT).await;
    let job_id = create_job(pool, &pod, action).await;
    let id = enqueue(pool, &pod, Some(job_id), action, payload, max_attempts).await;
    (pod, job_id, id)
}

async fn claim(q: &Queue, owner: &str) -> Option<Claimed> {
    q.claim(owner, LEASE).await.unwrap()
}

async fn complete(q: &Queue, lease: &Lease, result: serde_json::Value) -> bool {
    let mut conn = q.pool().acquire().await.unwrap();
    queue::complete(&mut conn, lease, &result).await.unwrap()
}

async fn fail(
    q: &Queue,
    lease: &Lease,
    error: &str,
    retryable: bool,
    delay: Duration,
) -> Option<FailOutcome> {
    let mut conn = q.pool().acquire().await.unwrap();
    queue::fail(&mut conn, lease, error, retryable, delay)
        .await
        .unwrap()
}

/// Polls `f` until it yields `Some`, failing the test after `DEADLINE`.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn enqueue_claim_complete_round_trip_drives_the_job() {
    let (pool, _db) = migrated_db().await;
    let q = Queue::new(pool.clone());
    let pod = insert_pod(&pool, TENANT).await;
    let job_id = create_job(&pool, &pod, Action::Create).await;
    assert_eq!(job(&pool, job_id).await, ("pending".into(), json!([])));

    let first = enqueue(
        &pool,
        &pod,
        Some(job_id),
        Action::Create,
        json!({"vmid": 101}),
        5,
    )
    .await;
    let second = enqueue(&pool, &pod, Some(job_id), Action::Start, json!({}), 5).await;
    assert_eq!(
        job(&pool, job_id).await,
        ("pending".into(), json!([first, second]))
    );
    let r = row(&pool, first).await;
    assert_eq!(
        (r.status.as_str(), r.attempt, r.retry_count),
        ("queued", 0, 0)
    );
    assert!(r.due_in_secs <= 0.0);

    let c = claim(&q, "worker-a").await.expect("an item is due");
    assert_eq!(c.id, first);
    assert_eq!(c.pod_id, pod);
    assert_eq!(c.job_id, Some(job_id));
    assert_eq!(c.action, Action::Create);
    assert_eq!(c.payload, json!({"vmid": 101}));
    assert_eq!((c.attempt, c.max_attempts, c.retry_count), (1, 5, 0));
    assert_eq!(
        c.lease,
        Lease {
            item_id: first,
            attempt: 1,
            owner: "worker-a".into()
        }
    );
    assert_eq!(job(&pool, job_id).await.0, "running");
    let r = row(&pool, first).await;
    assert_eq!(
        (r.status.as_str(), r.lease_owner.as_deref()),
        ("running", Some("worker-a"))
    );
    assert!(q.heartbeat(&c.lease, LEASE).await.unwrap());

    assert!(complete(&q, &c.lease, json!({"upid": "UPID:1"})).await);
    let r = row(&pool, first).await;
    assert_eq!(r.status, "success");
    assert_eq!(r.result, Some(json!({"upid": "UPID:1"})));
    assert!(r.processed);
    // One of two items done: the job still runs.
    assert_eq!(job(&pool, job_id).await.0, "running");
    // Completing twice is fenced out and changes nothing.
    assert!(!complete(&q, &c.lease, json!({"again": true})).await);
    assert!(!q.heartbeat(&c.lease, LEASE).await.unwrap());
    assert_eq!(
        row(&pool, first).await.result,
        Some(json!({"upid": "UPID:1"}))
    );

    let c2 = claim(&q, "worker-b").await.expect("the second item");
    assert_eq!((c2.id, c2.action), (second, Action::Start));
    assert!(complete(&q, &c2.lease, json!({})).await);
    assert_eq!(
        job(&pool, job_id).await,
        ("success".into(), json!([first, second]))
    );
    assert!(claim(&q, "worker-a").await.is_none());

    // An item without a job works the same.
    let lone = enqueue(&pool, &pod, None, Action::Sync, json!({}), 1).await;
    let c3 = claim(&q, "worker-a").await.unwrap();
    assert_eq!((c3.id, c3.job_id), (lone, None));
    assert!(complete(&q, &c3.lease, json!({"state": "running"})).await);
}

#[tokio::test]
async fn items_of_one_pod_run_one_at_a_time_in_order() {
    let (pool, _db) = migrated_db().await;
    let q = Queue::new(pool.clone());
    let a = insert_pod(&pool, TENANT).await;
    let b = insert_pod(&pool, TENANT).await;
    let a1 = enqueue(&pool, &a, None, Action::Create, json!({}), 5).await;
    let a2 = enqueue(&pool, &a, None, Action::Start, json!({}), 5).await;
    let b1 = enqueue(&pool, &b, None, Action::Create, json!({}), 5).await;

    let first = claim(&q, "w1").await.unwrap();
    assert_eq!(first.id, a1, "the oldest item first");
    // a2 waits for a1; b's item is free to run.
    let second = claim(&q, "w2").await.unwrap();
    assert_eq!(second.id, b1);
    assert!(
        claim(&q, "w3").await.is_none(),
        "a2 must wait while a1 runs"
    );

    // Finishing b1 does not release a2.
    assert!(complete(&q, &second.lease, json!({})).await);
    assert!(claim(&q, "w3").await.is_none());

    assert!(complete(&q, &first.lease, json!({})).await);
    let third = claim(&q, "w3").await.unwrap();
    assert_eq!(third.id, a2);

    // The database itself refuses a second running item for a pod.
    let a3 = enqueue(&pool, &a, None, Action::Stop, json!({}), 5).await;
    let err = sqlx::query(
        "UPDATE cloud_pod_queue SET status = 'running', lease_owner = 'x', \
         lease_expires_at = now() WHERE id = $1",
    )
    .bind(a3)
    .execute(&pool)
    .await
    .unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|e| e.constraint()),
        Some("cloud_pod_queue_one_running_per_pod")
    );

    // A later item of a pod waits behind an older one that is not yet due (FIFO holds
    // through retries).
    let c = insert_pod(&pool, TENANT).await;
    let c1 = enqueue(&pool, &c, None, Action::Reboot, json!({}), 5).await;
    let c2 = enqueue(&pool, &c, None, Action::Backup, json!({}), 5).await;
    let claimed = claim(&q, "w4").await.unwrap();
    assert_eq!(claimed.id, c1);
    assert_eq!(
        fail(&q, &claimed.lease, "busy", true, Duration::from_secs(3600)).await,
        Some(FailOutcome::Retrying {
            after: Duration::from_secs(3600)
        })
    );
    assert!(
        claim(&q, "w4").await.is_none(),
        "c2 must not overtake c1 ({c2})"
    );
}

/// One claim-to-finish interval of an item, as seen by its worker.
#[derive(Debug, Clone)]
struct Run {
    item: i64,
    pod: String,
    attempt: i32,
    start: Instant,
    end: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claimers_never_double_claim_or_overlap_a_pod() {
    const PODS: usize = 20;
    const PER_POD: usize = 10;
    const WORKERS: usize = 16;
    let (pool, db) = migrated_db().await;
    // A pool big enough that all claimers really run at once.
    let big = PgPoolOptions::new()
        .max_connections(WORKERS as u32 + 2)
        .connect_with(db.options())
        .await
        .unwrap();
    let q = Queue::new(big);

    let mut pods = Vec::new();
    for _ in 0..PODS {
        pods.push(insert_pod(&pool, TENANT).await);
    }
    // Interleave the pods so that every claim has competition.
    let mut order: HashMap<i64, usize> = HashMap::new();
    for round in 0..PER_POD {
        for pod in &pods {
            let id = enqueue(&pool, pod, None, Action::Sync, json!({"round": round}), 3).await;
            order.insert(id, round);
        }
    }
    let total = PODS * PER_POD;

    let runs = Arc::new(Mutex::new(Vec::<Run>::new()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let q = q.clone();
        let runs = runs.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("worker-{w}");
            loop {
                assert!(
                    Instant::now() < deadline,
                    "{owner}: queue not drained in time"
                );
                match q.claim(&owner, LEASE).await.unwrap() {
                    Some(c) => {
                        let start = Instant::now();
                        // A little "work" so runs of one pod would overlap if allowed to.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        let end = Instant::now();
                        let mut conn = q.pool().acquire().await.unwrap();
                        assert!(
                            queue::complete(&mut conn, &c.lease, &json!({}))
                                .await
                                .unwrap()
                        );
                        runs.lock().unwrap().push(Run {
                            item: c.id,
                            pod: c.pod_id,
                            attempt: c.attempt,
                            start,
                            end,
                        });
                    }
                    None => {
                        let done = q.depth().await.unwrap()["success"];
                        if done as usize == total {
                            return;
                        }
                        // Other workers hold the remaining pods: look again shortly.
                        q.wait_for_work(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), total, "every item ran exactly once");
    let ids: BTreeSet<i64> = runs.iter().map(|r| r.item).collect();
    assert_eq!(ids.len(), total, "no item was claimed twice");
    assert!(runs.iter().all(|r| r.attempt == 1));

    let mut by_pod: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
    for r in &runs {
        by_pod.entry(r.pod.as_str()).or_default().push(r);
    }
    assert_eq!(by_pod.len(), PODS);
    for (pod, mut rs) in by_pod {
        rs.sort_by_key(|r| r.start);
        for pair in rs.windows(2) {
            assert!(
                pair[0].end <= pair[1].start,
                "pod {pod}: items {} and {} ran at the same time",
                pair[0].item,
                pair[1].item
            );
            assert!(
                order[&pair[0].item] < order[&pair[1].item],
                "pod {pod}: item {} ran before the older {}",
                pair[0].item,
                pair[1].item
            );
        }
    }
    let depth = q.depth().await.unwrap();
    assert_eq!(depth["success"], total as i64);
    assert_eq!(depth["queued"] + depth["running"] + depth["failed"], 0);
}

#[tokio::test]
async fn a_reclaimed_lease_is_fenced_out() {
    let (pool, _db) = migrated_db().await;
    let q = Queue::new(pool.clone());
    let (_pod, job_id, id) =
        pod_with_job(&pool, Action::Backup, json!({"request": "b-1"}), 3).await;

    let old = q
        .claim("worker-a", Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.attempt, 1);
    // Nothing to reclaim while the lease holds... then exactly this one.
    eventually("the lease to expire", || async {
        (q.reclaim_expired().await.unwrap() == 1).then_some(())
    })
    .await;
    let r = row(&pool, id).await;
    assert_eq!(r.status, "queued");
    assert_eq!(r.lease_owner, None);
    assert!(r.error_message.unwrap().contains("expired"));
    assert!(r.due_in_secs <= 0.0, "requeued items are due at once");
    assert_eq!(job(&pool, job_id).await.0, "running");
    assert_eq!(q.reclaim_expired().await.unwrap(), 0);

    // The lost worker comes back: everything it tries is refused.
    assert!(!q.heartbeat(&old.lease, LEASE).await.unwrap());
    assert!(!complete(&q, &old.lease, json!({})).await);
    assert_eq!(
        fail(&q, &old.lease, "boom", true, Duration::ZERO).await,
        None
    );
    assert_eq!(row(&pool, id).await.status, "queued");

    // The same owner claiming again still gets a new token: the attempt tells them apart.
    let new = claim(&q, "worker-a").await.unwrap();
    assert_eq!((new.id, new.attempt), (id, 2));
    assert_ne!(new.lease, old.lease);
    assert!(!q.heartbeat(&old.lease, LEASE).await.unwrap());
    assert!(!complete(&q, &old.lease, json!({"stale": true})).await);
    assert_eq!(
        fail(&q, &old.lease, "stale", false, Duration::ZERO).await,
        None
    );
    assert_eq!(row(&pool, id).await.status, "running");
    assert!(q.heartbeat(&new.lease, LEASE).await.unwrap());
    assert!(complete(&q, &new.lease, json!({"archive": "a.vma.zst"})).await);
    let r = row(&pool, id).await;
    assert_eq!((r.status.as_str(), r.attempt), ("success", 2));
    assert_eq!(r.error_message, None);
    assert_eq!(job(&pool, job_id).await.0, "success");
    assert_eq!(q.reclaim_expired().await.unwrap(), 0);
}

#[tokio::test]
async fn a_retryable_failure_requeues_with_backoff() {
    let (pool, _db) = migrated_db().await;
    let q = Queue::new(pool.clone());
    let (pod, job_id, id) = pod_with_job(&pool, Action::Start, json!({}), 5).await;

    let c = claim(&q, "w").await.unwrap();
    let out = fail(
        &q,
        &c.lease,
        "node unreachable",
        true,
        Duration::from_secs(600),
    )
    .await;
    assert_eq!(
        out,
        Some(FailOutcome::Retrying {
            after: Duration::from_secs(600)
        })
    );
    let r = row(&pool, id).await;
    assert_eq!(r.status, "queued");
    assert_eq!(r.retry_count, 1);
    assert_eq!(r.error_message.as_deref(), Some("node unreachable"));
    assert_eq!(r.lease_owner, None);
    assert!(!r.processed);
    assert!(
        (590.0..=600.5).contains(&r.due_in_secs),
        "due in {}",
        r.due_in_secs
    );
    assert_eq!(
        job(&pool, job_id).await.0,
        "running",
        "a retry does not fail the job"
    );
    assert!(
        claim(&q, "w").await.is_none(),
        "not claimable before it is due"
    );
    // Fenced: the attempt is over.
    assert!(!complete(&q, &c.lease, json!({})).await);
    let mut conn = pool.acquire().await.unwrap();
    let pending = queue::pending_for_pod(&mut conn, &pod).await.unwrap();
    assert_eq!(
        pending,
        vec![Pending {
            id,
            action: Action::Start,
            status: "queued".into(),
            payload: json!({}),
            job_id: Some(job_id),
            retry_count: 1,
            error_message: Some("node unreachable".into()),
        }]
    );

    // A short delay: claimable again once it passes, not before.
    sqlx::query("UPDATE cloud_pod_queue SET run_after = now() WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let c = claim(&q, "w").await.unwrap();
    assert_eq!((c.attempt, c.retry_count), (2, 1));
    let failed_at = Instant::now();
    let delay = Duration::from_millis(400);
    assert!(matches!(
        fail(&q, &c.lease, "again", true, delay).await,
        Some(FailOutcome::Retrying { .. })
    ));
    assert!(claim(&q, "w").await.is_none());
    let c = eventually("the retry to fall due", || async { claim(&q, "w").await }).await;
    assert!(failed_at.elapsed() >= delay - Duration::from_millis(50));
    assert_eq!((c.id, c.attempt, c.retry_count), (id, 3, 2));

    // Not retryable: failed at once even with attempts left.
    assert_eq!(
        fail(&q, &c.lease, "bad disk size", false, delay).await,
        Some(FailOutcome::Failed)
    );
    let r = row(&pool, id).await;
    assert_eq!((r.status.as_str(), r.retry_count), ("failed", 2));
    assert_eq!(r.error_message.as_deref(), Some("bad disk size"));
    assert!(r.processed);
    assert_eq!(job(&pool, job_id).await.0, "failed");
}

#[tokio::test]
async fn exhausted_attempts_fail_the_item_and_job_and_notify() {
    let (pool, db) = migrated_db().await;
    let q = Queue::new(pool.clone());
    let mut done = PgListener::connect(&db.url()).await.unwrap();
    done.listen(queue::CHANNEL_DONE).await.unwrap();

    let (pod, job_id, id) = pod_with_job(&pool, Action::Reboot, json!({"request": "r-1"}), 2).await;

    let c = claim(&q, "w").await.unwrap();
    assert!(matches!(
        fail(&q, &c.lease, "timeout", true, Duration::ZERO).await,
        Some(FailOutcome::Retrying { .. })
    ));
    let c = claim(&q, "w").await.unwrap();
    assert_eq!(c.attempt, 2);
    assert_eq!(
        fail(&q, &c.lease, "timeout again", true, Duration::ZERO).await,
        Some(FailOutcome::Failed)
    );
    let r = row(&pool, id).await;
    assert_eq!(
        (r.status.as_str(), r.attempt, r.retry_count),
        ("failed", 2, 1)
    );
    assert_eq!(r.error_message.as_deref(), Some("timeout again"));
    assert!(r.processed);
    assert_eq!(job(&pool, job_id).await.0, "failed");
    assert!(claim(&q, "w").await.is_none());

    let n = tokio::time::timeout(DEADLINE, done.recv())
        .await
        .expect("a NOTIFY on cloud_pod_queue_done")
        .unwrap();
    assert_eq!(n.channel(), queue::CHANNEL_DONE);
    assert_eq!(n.payload(), pod);

    // A worker lost on the last attempt: reclaim fails the item and its job.
    let (pod2, job2, id2) = pod_with_job(&pool, Action::Stop, json!({}), 1).await;
    let lost = q
        .claim("gone", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    eventually("the lease to expire", || async {
        (q.reclaim_expired().await.unwrap() == 1).then_some(())
    })
    .await;
    let r = row(&pool, id2).await;
    assert_eq!(r.status, "failed");
    assert_eq!(
        r.error_message.as_deref(),
        Some("lease expired after 1 attempts (worker lost)")
    );
    assert!(r.processed);
    assert_eq!(job(&pool, job2).await.0, "failed");
    assert!(!complete(&q, &lost.lease, json!({})).await);
    let n = tokio::time::timeout(DEADLINE, done.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.payload(), pod2);
}

#[tokio::test]
async fn pod_history_queries() {
    let (pool, _db) = migrated_db().await;
    let q = Queue::new(pool.clone());
    let pod = insert_pod(&pool, TENANT).await;
    let other = insert_pod(&pool, TENANT).await;
    let mut conn = pool.acquire().await.unwrap();

    assert!(
        queue::pending_for_pod(&mut conn, &pod)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        queue::last_finished(&mut conn, &pod, Action::Reboot)
            .await
            .unwrap(),
        None
    );

    let r1 = enqueue(
        &pool,
        &pod,
        None,
        Action::Reboot,
        json!({"request": "r-1"}),
        5,
    )
    .await;
    let b1 = enqueue(
        &pool,
        &pod,
        None,
        Action::Backup,
        json!({"request": "b-1", "n": 1}),
        5,
    )
    .await;
    enqueue(
        &pool,
        &other,
        None,
        Action::Reboot,
        json!({"request": "r-9"}),
        5,
    )
    .await;

    for (action, key, value, want) in [
        (Action::Reboot, "request", "r-1", true),
        (Action::Reboot, "request", "b-1", false),
        (Action::Backup, "request", "b-1", true),
        (Action::Backup, "n", "1", true),
        (Action::Backup, "missing", "b-1", false),
        (Action::Reboot, "request", "r-9", false),
        (Action::Stop, "request", "r-1", false),
        // Hostile keys and values are just data.
        (
            Action::Reboot,
            "request'; DROP TABLE cloud_pods; --",
            "r-1",
            false,
        ),
    ] {
        assert_eq!(
            queue::exists_with(&mut conn, &pod, action, key, value)
                .await
                .unwrap(),
            want,
            "{action} {key}={value}"
        );
    }

    let c = claim(&q, "w").await.unwrap();
    assert_eq!(c.id, r1);
    let pending = queue::pending_for_pod(&mut conn, &pod).await.unwrap();
    let summary: Vec<_> = pending
        .iter()
        .map(|p| (p.id, p.action, p.status.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (r1, Action::Reboot, "running"),
            (b1, Action::Backup, "queued")
        ]
    );

    assert!(complete(&q, &c.lease, json!({"upid": "u1"})).await);
    // Still found once finished: "each request exactly once".
    assert!(
        queue::exists_with(&mut conn, &pod, Action::Reboot, "request", "r-1")
            .await
            .unwrap()
    );
    let last = queue::last_finished(&mut conn, &pod, Action::Reboot)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (last.id, last.action, last.status.as_str()),
        (r1, Action::Reboot, "success")
    );
    assert_eq!(last.payload, json!({"request": "r-1"}));
    assert_eq!(last.result, Some(json!({"upid": "u1"})));
    assert_eq!(last.error_message, None);
    assert_eq!(
        queue::last_finished(&mut conn, &pod, Action::Backup)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        queue::last_finished(&mut conn, &other, Action::Reboot)
            .await
            .unwrap(),
        None
    );

    // A later reboot that fails becomes the last one.
    let c = claim(&q, "w").await.unwrap();
    assert_eq!(c.id, b1);
    assert!(complete(&q, &c.lease, json!({"archive": "x"})).await);
    // The other pod's reboot is older than the next one: let it run (and stay running).
    let c = claim(&q, "w").await.unwrap();
    assert_eq!(c.pod_id, other);
    let r2 = enqueue(
        &pool,
        &pod,
        None,
        Action::Reboot,
        json!({"request": "r-2"}),
        1,
    )
    .await;
    let c = claim(&q, "w").await.unwrap();
    assert_eq!(c.id, r2);
    assert_eq!(
        fail(&q, &c.lease, "guest agent gone", true, Duration::ZERO).await,
        Some(FailOutcome::Failed)
    );
    let last = queue::last_finished(&mut conn, &pod, Action::Reboot)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((last.id, last.status.as_str()), (r2, "failed"));
    assert_eq!(last.error_message.as_deref(), Some("guest agent gone"));
    assert_eq!(last.result, None);
    assert!(
        queue::pending_for_pod(&mut conn, &pod)
            .await
            .unwrap()
            .is_empty()
    );
    let others = queue::pending_for_pod(&mut conn, &other).await.unwrap();
    assert_eq!(others.len(), 1);
    assert_eq!(others[0].status, "running");
}

#[tokio::test]
async fn depth_counts_every_status() {
    let (pool, _db) = migrated_db().await;
    let q = Queue::new(pool.clone());
    let zero: BTreeMap<String, i64> = ["failed", "queued", "running", "success"]
        .into_iter()
        .map(|s| (s.to_owned(), 0))
        .collect();
    assert_eq!(q.depth().await.unwrap(), zero);

    let pods = [
        insert_pod(&pool, TENANT).await,
        insert_pod(&pool, TENANT).await,
        insert_pod(&pool, TENANT).await,
        insert_pod(&pool, TENANT).await,
    ];
    for pod in &pods {
        enqueue(&pool, pod, None, Action::Sync, json!({}), 1).await;
    }
    enqueue(&pool, &pods[0], None, Action::Sync, json!({}), 1).await;
    let ok = claim(&q, "w").await.unwrap();
    assert!(complete(&q, &ok.lease, json!({})).await);
    let bad = claim(&q, "w").await.unwrap();
    assert_eq!(
        fail(&q, &bad.lease, "x", false, Duration::ZERO).await,
        Some(FailOutcome::Failed)
    );
    let _running = claim(&q, "w").await.unwrap();
    let want: BTreeMap<String, i64> =
        [("failed", 1), ("queued", 2), ("running", 1), ("success", 1)]
            .into_iter()
            .map(|(s, n)| (s.to_owned(), n))
            .collect();
    assert_eq!(q.depth().await.unwrap(), want);
}

#[tokio::test]
async fn wait_for_work_wakes_on_insert_and_times_out_without() {
    let (pool, _db) = migrated_db().await;
    let q = Queue::new(pool.clone());
    let pod = insert_pod(&pool, TENANT).await;

    // Nothing inserted: returns after the timeout (this call also starts listening).
    let t = Instant::now();
    q.wait_for_work(Duration::from_millis(300)).await;
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");

    // An insert wakes a waiter long before its timeout.
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            q.wait_for_work(Duration::from_secs(30)).await;
            t.elapsed()
        })
    };
    enqueue(&pool, &pod, None, Action::Start, json!({}), 1).await;
    let woke = tokio::time::timeout(DEADLINE, waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(woke < Duration::from_secs(5), "woke after {woke:?}");

    // The notification was used up: the next wait times out again.
    let t = Instant::now();
    q.wait_for_work(Duration::from_millis(200)).await;
    assert!(t.elapsed() >= Duration::from_millis(200));

    // The listener has its own connection: it never holds a slot of the main pool.
    let small = PgPoolOptions::new()
        .max_connections(1)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    let q1 = Queue::new(small.clone());
    q1.wait_for_work(Duration::from_millis(50)).await;
    assert!(
        tokio::time::timeout(DEADLINE, small.acquire())
            .await
            .unwrap()
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_race_for_a_pod_moves_on_to_another() {
    let (pool, _db) = migrated_db().await;
    let q = Queue::new(pool.clone());
    let a = insert_pod(&pool, TENANT).await;
    let b = insert_pod(&pool, TENANT).await;
    let a1 = enqueue(&pool, &a, None, Action::Start, json!({}), 5).await;
    let a2 = enqueue(&pool, &a, None, Action::Stop, json!({}), 5).await;
    let b1 = enqueue(&pool, &b, None, Action::Start, json!({}), 5).await;

    // Another transaction (think: a worker whose claim has not committed yet) starts a2.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(
        "UPDATE cloud_pod_queue SET status = 'running', attempt = 1, lease_owner = 'other', \
         lease_expires_at = now() + interval '1 minute' WHERE id = $1",
    )
    .bind(a2)
    .execute(&mut *tx)
    .await
    .unwrap();

    // Our claim sees a1 as due, starts it, and blocks on the unique index behind `tx`.
    let claimer = {
        let q = q.clone();
        tokio::spawn(async move { q.claim("w", LEASE).await })
    };
    eventually("the claim to wait on the other transaction", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock' \
               AND query LIKE '%claimed%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (waiting == 1).then_some(())
    })
    .await;
    tx.commit().await.unwrap();

    // The unique violation is not an error: the claim moves on to pod b.
    let c = tokio::time::timeout(DEADLINE, claimer)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .expect("pod b's item");
    assert_eq!(c.id, b1);
    assert_eq!(row(&pool, a1).await.status, "queued");
    assert_eq!(row(&pool, a1).await.attempt, 0);
    assert!(claim(&q, "w").await.is_none());
}

#[test]
fn backoff_is_exposed_for_workers() {
    let b = Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(10),
    };
    for n in 1..=8 {
        let d = b.delay(n);
        let cap = b.cap(n);
        assert!(d >= cap / 2 && d <= cap);
    }
    assert_eq!(b.cap(10), Duration::from_secs(10));
}
