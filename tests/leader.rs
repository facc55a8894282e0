//! Leader election between real `cloudpods operator` processes sharing one database: only
//! the elected replica runs controllers and workers; a standby takes over within a bounded
//! time when the leader is SIGKILLed or loses its database connection, and at once when the
//! leader shuts down cleanly; a leader that lost its connection stops before its successor
//! starts.

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use cloudpods::crd::{CloudPod, CloudPodSpec, Phase};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, PostParams};
use sqlx::PgPool;

use common::kube::unique_namespace;
use common::operator::{TEST_LABEL, http_get};
use common::process::{OperatorConfig, OperatorProc, log_files, tail, write_nodes_file};
use common::ssh::PrivateSshd;

const NODES: [&str; 2] = ["pve1", "pve2"];
const LEASE: Duration = Duration::from_secs(5);
const RETRY: Duration = Duration::from_millis(100);
/// Takeover after a crash: the standby's next try, the lease of the dead leader (counted from
/// its last renewal, so at most one lease), and slack for a loaded 2-core machine.
const TAKEOVER_BOUND: Duration =
    Duration::from_millis(LEASE.as_millis() as u64 + RETRY.as_millis() as u64 + 2_000);

struct Setup {
    cfg: OperatorConfig,
    logs: Option<tempfile::TempDir>,
    pool: PgPool,
    pods: Api<CloudPod>,
    _db: common::db::TestDb,
    _sshd: PrivateSshd,
}

impl Drop for Setup {
    /// On a failure, print the tail of every replica's log and keep them.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Some(dir) = self.logs.take() else { return };
        for log in &log_files(dir.path()) {
            eprintln!("{}", tail(log, 40));
        }
        eprintln!("replica logs kept in {}", dir.keep().display());
    }
}

async fn setup() -> Setup {
    setup_with(&[]).await
}

async fn setup_with(more: &[&str]) -> Setup {
    common::kube::ensure_crds();
    let (pool, db) = common::db::migrated_db().await;
    let sshd = PrivateSshd::start(&NODES);
    let logs = tempfile::tempdir().expect("log dir");
    let nodes_file = logs.path().join("nodes.yaml");
    write_nodes_file(&sshd, &NODES, "{}", &nodes_file).await;
    let ns = unique_namespace("leader");
    let label = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let client = kube::Client::try_default().await.expect("kube client");
    let cfg = OperatorConfig {
        database_url: db.url(),
        kubeconfig: common::kube::kubeconfig(),
        namespace: ns.clone(),
        label,
        nodes_file,
        log_dir: logs.path().to_path_buf(),
        extra_args: [
            "--leader-election=true",
            "--leader-election-lease",
            "5s",
            "--leader-election-retry",
            "100ms", // = LEASE, RETRY
        ]
        .iter()
        .chain(more)
        .map(|a| a.replace("{ns}", &ns))
        .collect(),
    };
    Setup {
        cfg,
        pool,
        pods: Api::namespaced(client, &ns),
        _db: db,
        _sshd: sshd,
        logs: Some(logs),
    }
}

/// The address the replica's endpoint bound (`addr=...` of its "listening" line).
fn endpoint(p: &OperatorProc, which: &str) -> std::net::SocketAddr {
    let (_, line) = p
        .log_line(which)
        .unwrap_or_else(|| panic!("no {which:?} line"));
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr= in {line:?}"));
    addr.parse().expect("a socket address")
}

/// A standby: its endpoint says so, it holds no controller or worker metrics, and its log
/// shows no reconcile, claim or job.
async fn assert_standby(p: &OperatorProc) {
    let addr = endpoint(p, "standby endpoint listening");
    let (code, body) = http_get(addr, "/readyz").await;
    assert_eq!(
        code, 200,
        "a standby is ready (else rolling updates stall): {body}"
    );
    assert!(body.starts_with("standby"), "{body}");
    let (_, metrics) = http_get(addr, "/metrics").await;
    assert!(
        metrics.lines().any(|l| l == "cloudpods_leader 0"),
        "{metrics}"
    );
    for family in [
        "cloudpods_reconcile",
        "cloudpods_job_duration",
        "cloudpods_queue_depth",
    ] {
        assert!(
            !metrics.contains(family),
            "a standby exposes {family}: it runs controllers or workers\n{metrics}"
        );
    }
    let log = p.log_text();
    for work in [
        "elected leader",
        "reconcil",
        "job succeeded",
        "claimed",
        "enqueued",
    ] {
        assert!(
            !log.contains(work),
            "the standby's log shows {work:?}:\n{log}"
        );
    }
}

fn cloudpod(setup: &Setup, name: &str) -> CloudPod {
    let mut cp = CloudPod::new(
        name,
        CloudPodSpec::new(
            &format!("t-{}", setup.cfg.label),
            "student",
            "ubuntu-24-minimal",
        ),
    );
    cp.metadata.namespace = Some(setup.cfg.namespace.clone());
    cp.metadata.labels = Some([(TEST_LABEL.to_string(), setup.cfg.label.clone())].into());
    cp
}

async fn wait_active(pods: &Api<CloudPod>, name: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let cp = pods.get(name).await.expect("get CloudPod");
        let phase = cp.status.as_ref().and_then(|s| s.phase);
        if phase == Some(Phase::Active) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is not Active within {within:?}: {:?}",
            cp.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_gone(pods: &Api<CloudPod>, name: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while pods.get_opt(name).await.expect("get CloudPod").is_some() {
        assert!(
            Instant::now() < deadline,
            "{name} still exists after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replica `a`, elected and running its parts, and replica `b` as its standby.
async fn leader_and_standby(s: &Setup) -> (OperatorProc, OperatorProc) {
    let mut a = OperatorProc::spawn(&s.cfg, "a");
    a.wait_log("elected leader", Duration::from_secs(30)).await;
    a.wait_log("operator endpoint listening", Duration::from_secs(10))
        .await;
    let mut b = OperatorProc::spawn(&s.cfg, "b");
    b.wait_log("another replica leads", Duration::from_secs(30))
        .await;
    (a, b)
}

/// Once `leader` runs its controllers: `create` goes Active, then `delete` is deleted and gone
/// (VM destroyed, finalizer removed).
async fn new_leader_works(s: &Setup, leader: &mut OperatorProc, create: &str, delete: &str) {
    leader
        .wait_log("operator endpoint listening", Duration::from_secs(10))
        .await;
    s.pods
        .create(&PostParams::default(), &cloudpod(s, create))
        .await
        .unwrap_or_else(|e| panic!("create {create}: {e}"));
    wait_active(&s.pods, create, Duration::from_secs(60)).await;
    s.pods
        .delete(delete, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete {delete}: {e}"));
    wait_gone(&s.pods, delete, Duration::from_secs(60)).await;
}

async fn exit_code(p: &mut OperatorProc, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = p.child.try_wait().expect("try_wait") {
            return status.code();
        }
        assert!(
            Instant::now() < deadline,
            "pid {} did not exit within {within:?}:\n{}",
            p.pid(),
            tail(&p.log, 40)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_after_sigkill_and_at_once_after_a_clean_shutdown() {
    let s = setup().await;
    let (a, mut b) = leader_and_standby(&s).await;

    // The leader works; the standby does nothing meanwhile.
    s.pods
        .create(&PostParams::default(), &cloudpod(&s, "first"))
        .await
        .expect("create first");
    wait_active(&s.pods, "first", Duration::from_secs(60)).await;
    assert_standby(&b).await;
    let leader_metrics = http_get(endpoint(&a, "operator endpoint listening"), "/metrics")
        .await
        .1;
    assert!(
        leader_metrics.lines().any(|l| l == "cloudpods_leader 1"),
        "{leader_metrics}"
    );

    // SIGKILL the leader: the standby takes over within the bound.
    let killed_at = Instant::now();
    a.kill();
    let (_, line) = b
        .wait_log("elected leader", TAKEOVER_BOUND + Duration::from_secs(5))
        .await;
    let takeover = killed_at.elapsed();
    eprintln!(
        "leader: SIGKILL → standby elected in {} ms ({line})",
        takeover.as_millis()
    );
    assert!(
        takeover <= TAKEOVER_BOUND,
        "takeover took {takeover:?}, bound {TAKEOVER_BOUND:?}"
    );
    // The new leader does the work: a new pod goes Active, the old one is deleted.
    new_leader_works(&s, &mut b, "second", "first").await;
    // Its workers claim queue items under its holder identity (docs/runbook.md checks
    // `lease_owner` against the leader after a takeover).
    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT q.lease_owner FROM cloud_pod_queue q JOIN cloud_pods p ON p.id = q.pod_id \
         WHERE p.k8s_name = 'second' AND q.lease_owner IS NOT NULL",
    )
    .fetch_all(&s.pool)
    .await
    .expect("read lease owners");
    assert_eq!(
        owners,
        vec![holder_of(&line)],
        "lease owners of second's items"
    );

    // A restarted replica (what Kubernetes does with the killed pod) is a standby.
    let mut c = OperatorProc::spawn(&s.cfg, "c");
    c.wait_log("another replica leads", Duration::from_secs(30))
        .await;
    assert_standby(&c).await;

    // Clean shutdown (rolling update): the leader releases, the standby starts at once.
    let stopped_at = Instant::now();
    let b_log = b.log.clone();
    let status = b
        .terminate(Duration::from_secs(30))
        .await
        .expect("SIGTERM b");
    assert!(status.success(), "b exited with {status}");
    let (_, line) = c.wait_log("elected leader", Duration::from_secs(10)).await;
    let handoff = stopped_at.elapsed();
    eprintln!(
        "leader: SIGTERM → standby elected in {} ms ({line})",
        handoff.as_millis()
    );
    let waited: u64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("waited_ms="))
        .and_then(|v| v.parse().ok())
        .expect("waited_ms= in the election line");
    assert!(
        waited < LEASE.as_millis() as u64 / 2,
        "after a clean release the successor waited {waited} ms (no lease wait expected)"
    );
    let b_text = std::fs::read_to_string(&b_log).unwrap_or_default();
    assert!(
        b_text.contains("leadership released"),
        "{}",
        tail(&b_log, 20)
    );

    s.pods
        .delete("second", &DeleteParams::default())
        .await
        .expect("delete second");
    wait_gone(&s.pods, "second", Duration::from_secs(60)).await;
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM cloud_pods WHERE status <> 'deleted'")
        .fetch_one(&s.pool)
        .await
        .expect("count rows");
    assert_eq!(live, 0);
    c.terminate(Duration::from_secs(30))
        .await
        .expect("SIGTERM c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_its_connection_stops_before_the_standby_starts() {
    let s = setup().await;
    let (mut a, mut b) = leader_and_standby(&s).await;

    // The leader keeps leading well past its lease: renewals work (without a Lease, too).
    let held_for = |pool: PgPool| async move {
        sqlx::query_as::<_, (String, f64)>(
            "SELECT holder, EXTRACT(EPOCH FROM clock_timestamp() - acquired_at)::float8 FROM cloudpods_leader",
        )
        .fetch_one(&pool)
        .await
        .expect("read cloudpods_leader")
    };
    let first_holder = held_for(s.pool.clone()).await.0;
    let deadline = Instant::now() + LEASE * 4;
    loop {
        let (holder, secs) = held_for(s.pool.clone()).await;
        assert_eq!(holder, first_holder, "the leader changed");
        a.assert_running();
        if secs > (LEASE * 2).as_secs_f64() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cloudpods_leader.acquired_at does not advance"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !a.log_text().contains("leadership lost"),
        "{}",
        tail(&a.log, 20)
    );

    // Exactly one session holds the election lock: the leader's dedicated connection.
    let holders: Vec<(i32, String)> = sqlx::query_as(
        "SELECT a.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE 'cloudpods-leader %'
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(&s.pool)
    .await
    .expect("read pg_locks");
    assert_eq!(holders.len(), 1, "lock holders: {holders:?}");

    // Cut the leader's connection from the server side.
    let cut_at = Instant::now();
    let cut_wall = Utc::now();
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(holders[0].0)
        .fetch_one(&s.pool)
        .await
        .expect("pg_terminate_backend");
    assert!(terminated);

    let code = exit_code(&mut a, LEASE * 2).await;
    assert_eq!(
        code,
        Some(1),
        "the deposed leader exits with 1:\n{}",
        tail(&a.log, 20)
    );
    let (lost_at, lost) = a.log_line("leadership lost").expect("a logs the loss");
    let (elected_at, elected) = b
        .wait_log("elected leader", TAKEOVER_BOUND + Duration::from_secs(5))
        .await;
    let takeover = cut_at.elapsed();
    eprintln!(
        "leader: connection cut → old leader stopped after {} ms, standby elected after {} ms",
        (lost_at - cut_wall).num_milliseconds(),
        (elected_at - cut_wall).num_milliseconds()
    );
    assert!(
        lost_at < elected_at,
        "the new leader started before the old one stopped:\n{lost}\n{elected}"
    );
    // Nothing after the loss: the process left at once.
    let after: Vec<String> = a
        .log_text()
        .lines()
        .skip_while(|l| !l.contains("leadership lost"))
        .skip(1)
        .map(str::to_string)
        .collect();
    assert!(after.is_empty(), "a kept logging after the loss: {after:?}");
    assert!(
        takeover <= TAKEOVER_BOUND + Duration::from_secs(1),
        "takeover {takeover:?}"
    );

    // And the new leader works.
    new_leader_works(&s, &mut b, "after-cut", "after-cut").await;
    b.terminate(Duration::from_secs(30))
        .await
        .expect("SIGTERM b");
}

/// The built-in `coordination.k8s.io/v1` Lease where the server has it; on the CRD-only test
/// server, a CustomResourceDefinition of the same group, version, kind and spec fields (the
/// protected group is allowed with the `api-approved.kubernetes.io` annotation).
fn ensure_lease_api() {
    let found = common::kube::kubectl_ok(&[
        "api-resources",
        "--api-group=coordination.k8s.io",
        "-o",
        "name",
    ]);
    if found.lines().any(|l| l.starts_with("leases")) {
        return;
    }
    let crd = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: leases.coordination.k8s.io
  annotations:
    api-approved.kubernetes.io: "unapproved, test stand-in for the built-in Lease"
spec:
  group: coordination.k8s.io
  scope: Namespaced
  names: {plural: leases, singular: lease, kind: Lease, listKind: LeaseList}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                holderIdentity: {type: string}
                leaseDurationSeconds: {type: integer, format: int32}
                acquireTime: {type: string, format: date-time}
                renewTime: {type: string, format: date-time}
                leaseTransitions: {type: integer, format: int32}
"#;
    let out = common::kube::kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=cloudpods-test",
            "-f",
            "-",
        ],
        Some(crd),
    );
    assert!(
        out.status.success(),
        "install the Lease stand-in: {}",
        common::kube::text(&out)
    );
    common::kube::kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/leases.coordination.k8s.io",
    ]);
}

fn holder_of(line: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("holder="))
        .unwrap_or_else(|| panic!("no holder= in {line:?}"))
        .to_string()
}

async fn wait_lease_holder(leases: &Api<Lease>, want: Option<&str>, within: Duration) -> Lease {
    let deadline = Instant::now() + within;
    loop {
        let got = leases
            .get_opt("cloudpods-operator")
            .await
            .expect("get Lease");
        let holder = got
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.holder_identity.clone());
        if let Some(l) = got
            && holder.as_deref() == want
        {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "Lease holder {holder:?}, want {want:?} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_also_holds_a_lease_when_asked() {
    ensure_lease_api();
    let s = setup_with(&["--leader-lease-namespace", "{ns}"]).await;
    let client = kube::Client::try_default().await.expect("kube client");
    let leases: Api<Lease> = Api::namespaced(client, &s.cfg.namespace);

    let mut a = OperatorProc::spawn(&s.cfg, "a");
    let (_, elected) = a.wait_log("elected leader", Duration::from_secs(30)).await;
    let a_holder = holder_of(&elected);
    let lease = wait_lease_holder(&leases, Some(&a_holder), Duration::from_secs(5)).await;
    let spec = lease.spec.expect("spec");
    assert_eq!(spec.lease_duration_seconds, Some(LEASE.as_secs() as i32));
    assert_eq!(spec.lease_transitions, Some(1));
    let first_renew = spec.renew_time.expect("renewTime");
    // Renewed with the row (every lease/5).
    let deadline = Instant::now() + LEASE;
    loop {
        let l = leases.get("cloudpods-operator").await.expect("get Lease");
        if l.spec.and_then(|s| s.renew_time) != Some(first_renew.clone()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Lease was not renewed within {LEASE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut b = OperatorProc::spawn(&s.cfg, "b");
    b.wait_log("another replica leads", Duration::from_secs(30))
        .await;
    assert_standby(&b).await;

    // A clean shutdown empties the Lease; the successor takes it (a second transition).
    let status = a
        .terminate(Duration::from_secs(30))
        .await
        .expect("SIGTERM a");
    assert!(status.success(), "a exited with {status}");
    let (_, elected) = b.wait_log("elected leader", Duration::from_secs(10)).await;
    let b_holder = holder_of(&elected);
    let lease = wait_lease_holder(&leases, Some(&b_holder), Duration::from_secs(5)).await;
    assert_eq!(lease.spec.and_then(|s| s.lease_transitions), Some(2));
    b.terminate(Duration::from_secs(30))
        .await
        .expect("SIGTERM b");
    wait_lease_holder(&leases, None, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_held_elsewhere_blocks_nobody_for_good() {
    ensure_lease_api();
    let s = setup_with(&["--leader-lease-namespace", "{ns}"]).await;
    let client = kube::Client::try_default().await.expect("kube client");
    let leases: Api<Lease> = Api::namespaced(client, &s.cfg.namespace);
    // Someone outside the election holds the Lease for an hour.
    let intruder: Lease = serde_json::from_value(serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "cloudpods-operator"},
        "spec": {
            "holderIdentity": "intruder",
            "leaseDurationSeconds": 3600,
            "renewTime": k8s_openapi::jiff::Timestamp::now().to_string(),
        }
    }))
    .expect("a Lease");
    leases
        .create(&PostParams::default(), &intruder)
        .await
        .expect("create the intruder's Lease");

    let mut a = OperatorProc::spawn(&s.cfg, "a");
    let mut b = OperatorProc::spawn(&s.cfg, "b");
    // Neither leads, and the one that took the database lock gives it up after one lease
    // instead of sitting on it.
    let deadline = Instant::now() + LEASE * 3;
    while !(a.log_text().contains("could not be taken")
        || b.log_text().contains("could not be taken"))
    {
        a.assert_running();
        b.assert_running();
        assert!(
            Instant::now() < deadline,
            "no replica gave up on the Lease within {:?}",
            LEASE * 3
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for p in [&a, &b] {
        assert!(
            !p.log_text().contains("elected leader"),
            "{}",
            tail(&p.log, 20)
        );
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM cloudpods_leader")
        .fetch_one(&s.pool)
        .await
        .expect("count leader rows");
    assert_eq!(n, 0, "nobody may claim the row without the Lease");

    // The intruder lets go: one of them leads within a lease and a retry.
    leases
        .delete("cloudpods-operator", &DeleteParams::default())
        .await
        .expect("delete the intruder's Lease");
    let deadline = Instant::now() + TAKEOVER_BOUND + LEASE;
    let leader = loop {
        if a.log_text().contains("elected leader") {
            break &mut a;
        }
        if b.log_text().contains("elected leader") {
            break &mut b;
        }
        a.assert_running();
        b.assert_running();
        assert!(
            Instant::now() < deadline,
            "nobody leads after the Lease was freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (_, elected) = leader
        .wait_log("elected leader", Duration::from_secs(1))
        .await;
    wait_lease_holder(&leases, Some(&holder_of(&elected)), Duration::from_secs(5)).await;
}
