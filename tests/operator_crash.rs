//! Crash safety of the real `cloudpods operator` process: 20 CloudPods are created and 8 of
//! them deleted (right after creation, mid-provisioning, once active) while the operator is
//! SIGKILLed at random moments and restarted, again and again. A final incarnation must then
//! converge on: exactly one VM per live CloudPod, none for deleted ones, no VM with our
//! marker that `cloud_pods` does not know, every queue row finished, and quota usage equal
//! to the live pods.
//!
//! The kill delays and the choice of pods to delete come from a logged seed; rerun a failure
//! with `CLOUDPODS_CRASH_SEED=<seed>` (the timing of the processes still varies).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cloudpods::crd::{CloudPod, CloudPodSpec, Phase, TenantQuota, TenantQuotaSpec};
use cloudpods::proxmox::ssh::SshNode;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::Value;
use sqlx::PgPool;

use common::kube::unique_namespace;
use common::operator::{TEST_LABEL, condition};
use common::process::{OperatorConfig, OperatorProc, log_files, tail, write_nodes_file};
use common::ssh::PrivateSshd;

const NODES: [&str; 2] = ["pve1", "pve2"];
const PODS: usize = 20;
const DELETE_IMMEDIATELY: usize = 3;
const DELETE_PROVISIONING: usize = 3;
const DELETE_ACTIVE: usize = 2;
/// At least this many kills, and at least `MIN_KILLS_MID_WORK` of them while the killed
/// process held queue items, before the last incarnation is left running.
const MIN_KILLS: usize = 8;
const MIN_KILLS_MID_WORK: usize = 3;
/// After the last deletion was issued, this many more kills (so destroys are cut too).
const KILLS_AFTER_LAST_DELETE: usize = 3;
/// No more kills after this many, or after this long, whatever happened.
const MAX_KILLS: usize = 30;
const MAX_CHAOS: Duration = Duration::from_secs(80);
/// A kill lands this long (uniform) after the process was spawned, or, for two kills in
/// three, after it first held a queue item (the lease of a killed process must expire first:
/// up to `--lease` plus a reclaim period, hence `WORK_WAIT`).
const KILL_AFTER_MS: (u64, u64) = (300, 1500);
const WORK_WAIT: Duration = Duration::from_secs(6);
/// Plan `student`.
const PLAN: &str = "student";
const PLAN_SIZE: (i64, i64, i64) = (1, 1024, 20);
/// Latency so that kills land inside clones, starts and agent waits.
const FAULTS: &str = r#"{"durations_ms": {"clone": 600, "start": 200, "stop": 100, "shutdown": 200}, "agent_ip_delay_ms": 300}"#;
/// The scenario must have found pods to delete mid-provisioning and once active by then.
const SCENARIO_WITHIN: Duration = Duration::from_secs(80);
const CONVERGE_WITHIN: Duration = Duration::from_secs(120);

// ---- a small seeded RNG (splitmix64) --------------------------------------------------

#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

fn seed() -> u64 {
    match std::env::var("CLOUDPODS_CRASH_SEED") {
        Ok(s) if !s.is_empty() => s
            .parse()
            .unwrap_or_else(|_| panic!("CLOUDPODS_CRASH_SEED={s:?} is not a u64")),
        _ => uuid::Uuid::new_v4().as_u64_pair().0,
    }
}

/// What one incarnation got done, from its log: (jobs finished, items enqueued or pods
/// admitted). Zeros after seconds of life mean it was stuck.
fn op_progress(log: &Path) -> (usize, usize) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let jobs = text.matches("job succeeded").count();
    let decided = text
        .lines()
        .filter(|l| l.contains("enqueued") || l.contains(": admitted"))
        .count();
    (jobs, decided)
}

/// The WARN and ERROR messages of all `logs`, without timestamps and spans, most frequent
/// first: what went wrong across the incarnations at a glance.
fn warnings_digest(logs: &[PathBuf]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            let Some(at) = line.find(" WARN ").or_else(|| line.find(" ERROR ")) else {
                continue;
            };
            let (level, rest) = line[at..].trim_start().split_once(' ').unwrap_or(("?", ""));
            // Spans end with `}: `; the target and the message follow.
            let msg = rest.rfind("}: ").map_or(rest, |i| &rest[i + 3..]);
            let msg: String = msg.chars().take(200).collect();
            *counts.entry(format!("{level} {msg}")).or_default() += 1;
        }
    }
    let mut top: Vec<(String, usize)> = counts.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let lines: Vec<String> = top
        .iter()
        .take(20)
        .map(|(m, n)| format!("{n:>5} x {m}"))
        .collect();
    format!(
        "---- WARN/ERROR messages of all {} incarnations ({} distinct) ----\n{}",
        logs.len(),
        top.len(),
        lines.join("\n")
    )
}

/// Keeps the operator logs; on a panic prints the tail of the last ones and keeps the dir.
struct Logs {
    dir: Option<tempfile::TempDir>,
    seed: u64,
}

impl Logs {
    fn path(&self) -> &Path {
        self.dir.as_ref().expect("log dir").path()
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Some(dir) = self.dir.take() else { return };
        let logs = log_files(dir.path());
        for log in logs.iter().rev().take(2).rev() {
            eprintln!("{}", tail(log, 80));
        }
        eprintln!("{}", warnings_digest(&logs));
        let kept = dir.keep();
        eprintln!(
            "crash-test FAILED with seed {} (rerun: CLOUDPODS_CRASH_SEED={}); all operator logs are in {}",
            self.seed,
            self.seed,
            kept.display()
        );
    }
}

// ---- the test's objects ---------------------------------------------------------------

fn pod_name(i: usize) -> String {
    format!("cp-{i:02}")
}

fn cloudpod(name: &str, ns: &str, label: &str, tenant: &str) -> CloudPod {
    let mut cp = CloudPod::new(name, CloudPodSpec::new(tenant, PLAN, "ubuntu-24-minimal"));
    cp.metadata.namespace = Some(ns.to_string());
    cp.metadata.labels = Some([(TEST_LABEL.to_string(), label.to_string())].into());
    cp
}

async fn apply_quota(client: &kube::Client, tenant: &str, label: &str) {
    let api: Api<TenantQuota> = Api::all(client.clone());
    let n = PODS as i64;
    let mut tq = TenantQuota::new(
        tenant,
        TenantQuotaSpec {
            max_pods: PODS as i32,
            max_cpu_cores: (n * PLAN_SIZE.0) as i32,
            max_memory_mb: n * PLAN_SIZE.1,
            max_disk_gb: n * PLAN_SIZE.2,
        },
    );
    tq.metadata.labels = Some([(TEST_LABEL.to_string(), label.to_string())].into());
    api.patch(
        tenant,
        &PatchParams::apply("cloudpods-test").force(),
        &Patch::Apply(&serde_json::to_value(&tq).unwrap()),
    )
    .await
    .expect("apply TenantQuota");
}

// ---- the creating and deleting side ---------------------------------------------------

/// Why a CloudPod was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum When {
    RightAfterCreate,
    MidProvisioning,
    OnceActive,
}

struct Scenario {
    pods: Api<CloudPod>,
    pool: PgPool,
    ns: String,
    label: String,
    tenant: String,
    rng: Rng,
    kills: Arc<AtomicUsize>,
    started: Instant,
}

#[derive(Debug, Default)]
struct ScenarioReport {
    created: Vec<String>,
    deleted: BTreeMap<String, When>,
}

impl Scenario {
    async fn delete(&self, report: &mut ScenarioReport, name: &str, when: When) {
        match self.pods.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => panic!("delete CloudPod {name}: {e}"),
        }
        eprintln!(
            "crash-test: t={:>5}ms deleted {name} ({when:?}) after {} kills",
            self.started.elapsed().as_millis(),
            self.kills.load(Ordering::SeqCst)
        );
        report.deleted.insert(name.to_string(), when);
    }

    /// Names of this tenant's live pods whose row has `status`, not deleted yet.
    async fn rows_in(&self, status: &str, report: &ScenarioReport) -> Vec<String> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT k8s_name FROM cloud_pods WHERE tenant_id = $1 AND status = $2 \
             AND deleted_at IS NULL ORDER BY k8s_name",
        )
        .bind(&self.tenant)
        .bind(status)
        .fetch_all(&self.pool)
        .await
        .expect("read cloud_pods");
        names
            .into_iter()
            .filter(|n| !report.deleted.contains_key(n))
            .collect()
    }

    /// Deletes `count` pods, each picked among those whose row is in `status` when it looks.
    async fn delete_in_state(
        &mut self,
        report: &mut ScenarioReport,
        status: &str,
        when: When,
        count: usize,
    ) {
        let deadline = self.started + SCENARIO_WITHIN;
        let mut done = 0;
        while done < count {
            let candidates = self.rows_in(status, report).await;
            if candidates.is_empty() {
                assert!(
                    Instant::now() < deadline,
                    "no pod of tenant {} was seen in status `{status}` within {SCENARIO_WITHIN:?} of the start (wanted {count}, deleted {done})",
                    self.tenant
                );
                tokio::time::sleep(Duration::from_millis(40)).await;
                continue;
            }
            let name = self.rng.pick(&candidates).clone();
            self.delete(report, &name, when).await;
            done += 1;
            // Spread the deletions over different moments of the run.
            tokio::time::sleep(Duration::from_millis(self.rng.between(50, 700))).await;
        }
    }

    async fn run(mut self) -> ScenarioReport {
        let mut report = ScenarioReport::default();
        let mut immediate = BTreeSet::new();
        while immediate.len() < DELETE_IMMEDIATELY {
            immediate.insert(self.rng.between(0, PODS as u64 - 1) as usize);
        }
        for i in 0..PODS {
            let name = pod_name(i);
            self.pods
                .create(
                    &PostParams::default(),
                    &cloudpod(&name, &self.ns, &self.label, &self.tenant),
                )
                .await
                .unwrap_or_else(|e| panic!("create CloudPod {name}: {e}"));
            report.created.push(name.clone());
            if immediate.contains(&i) {
                self.delete(&mut report, &name, When::RightAfterCreate)
                    .await;
            }
            // Creations spread over a few incarnations of the operator.
            tokio::time::sleep(Duration::from_millis(self.rng.between(0, 150))).await;
        }
        self.delete_in_state(
            &mut report,
            "provisioning",
            When::MidProvisioning,
            DELETE_PROVISIONING,
        )
        .await;
        self.delete_in_state(&mut report, "active", When::OnceActive, DELETE_ACTIVE)
            .await;
        report
    }
}

// ---- the final check ------------------------------------------------------------------

#[derive(sqlx::FromRow, Debug, Clone)]
struct Row {
    id: String,
    k8s_name: String,
    status: String,
    vmid: Option<i32>,
    node: Option<String>,
    live: bool,
}

/// A VM with the CloudPods marker (description line or tag) on a node.
#[derive(Debug, Clone)]
struct MarkedVm {
    node: String,
    vmid: i32,
    /// The `pod=` of the description's marker line (None: tag only).
    pod: Option<String>,
    locked: Option<String>,
}

/// Queue rows by status, the highest id, and the last change of `cloud_pods`: equal before
/// and after reading the nodes means nothing moved in between.
async fn db_fingerprint(pool: &PgPool) -> (BTreeMap<String, i64>, Option<i64>, Option<String>) {
    let by_status: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*)::bigint FROM cloud_pod_queue GROUP BY status")
            .fetch_all(pool)
            .await
            .expect("queue counts");
    let max_id: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM cloud_pod_queue")
        .fetch_one(pool)
        .await
        .expect("queue max id");
    let changed: Option<String> =
        sqlx::query_scalar("SELECT max(updated_at)::text FROM cloud_pods")
            .fetch_one(pool)
            .await
            .expect("cloud_pods last change");
    (by_status.into_iter().collect(), max_id, changed)
}

/// Every non-template VM of `node`: the marked ones, and the vmids of unmarked ones.
async fn node_vms(ssh: &SshNode, node: &str) -> (Vec<MarkedVm>, Vec<i32>) {
    let out = ssh
        .exec("pve-sim show", None, Duration::from_secs(20))
        .await
        .expect("pve-sim show");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{node}: pve-sim show is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let mut marked = Vec::new();
    let mut unmarked = Vec::new();
    for (vmid, vm) in v["vms"].as_object().cloned().unwrap_or_default() {
        let conf = &vm["conf"];
        if conf["template"].as_str() == Some("1") || conf["template"].as_i64() == Some(1) {
            continue;
        }
        let vmid: i32 = vmid.parse().expect("vmid key");
        let description = conf["description"].as_str().unwrap_or("");
        let pod = description.lines().find_map(|l| {
            let rest = l.trim().strip_prefix("managed-by=cloudpods;")?;
            rest.split(';')
                .find_map(|kv| kv.strip_prefix("pod="))
                .map(str::to_string)
        });
        let tagged = conf["tags"]
            .as_str()
            .unwrap_or("")
            .split([';', ',', ' '])
            .any(|t| t == "cloudpods");
        if pod.is_some() || tagged {
            marked.push(MarkedVm {
                node: node.to_string(),
                vmid,
                pod,
                locked: conf["lock"].as_str().map(str::to_string),
            });
        } else {
            unmarked.push(vmid);
        }
    }
    (marked, unmarked)
}

struct Check<'a> {
    pods: &'a Api<CloudPod>,
    tq: Api<TenantQuota>,
    pool: &'a PgPool,
    nodes: Vec<(String, SshNode)>,
    tenant: &'a str,
    label: &'a str,
}

/// What a converged run looked like.
struct Converged {
    live: usize,
    vms_per_node: BTreeMap<String, usize>,
    queue: BTreeMap<String, i64>,
    retried_items: i64,
}

impl Check<'_> {
    /// Every invariant at once; the list of violations when any fails.
    async fn evaluate(
        &self,
        created: &[String],
        deleted: &BTreeMap<String, When>,
    ) -> Result<Converged, Vec<String>> {
        let mut bad = Vec::new();
        // Kubernetes.
        let list = self
            .pods
            .list(&ListParams::default().labels(&format!("{TEST_LABEL}={}", self.label)))
            .await
            .expect("list CloudPods");
        let present: BTreeMap<String, CloudPod> = list
            .items
            .into_iter()
            .map(|cp| (cp.metadata.name.clone().unwrap_or_default(), cp))
            .collect();
        let live_names: Vec<&String> = created
            .iter()
            .filter(|n| !deleted.contains_key(*n))
            .collect();
        let mut live_pod_ids = BTreeMap::new();
        for name in &live_names {
            match present.get(*name) {
                None => bad.push(format!("{name}: the live CloudPod is missing")),
                Some(cp) => {
                    let st = cp.status.as_ref();
                    let phase = st.and_then(|s| s.phase);
                    let ready = condition(cp, "Ready");
                    if phase != Some(Phase::Active)
                        || ready.as_ref().is_none_or(|(s, _)| s != "True")
                    {
                        bad.push(format!(
                            "{name}: phase {phase:?}, Ready {ready:?}, lastError {:?}",
                            st.and_then(|s| s.last_error.clone())
                        ));
                    }
                    match st.and_then(|s| s.pod_id.clone()) {
                        Some(id) => {
                            live_pod_ids.insert(
                                id,
                                (
                                    name.to_string(),
                                    st.and_then(|s| s.vmid),
                                    st.and_then(|s| s.node.clone()),
                                ),
                            );
                        }
                        None => bad.push(format!("{name}: no status.podId")),
                    }
                }
            }
        }
        for name in deleted.keys() {
            if let Some(cp) = present.get(name) {
                bad.push(format!(
                    "{name}: deleted, but still present (phase {:?}, finalizers {:?})",
                    cp.status.as_ref().and_then(|s| s.phase),
                    cp.metadata.finalizers
                ));
            }
        }
        for name in present.keys() {
            if !created.contains(name) {
                bad.push(format!("{name}: a CloudPod this test never created"));
            }
        }

        // Postgres, before the nodes.
        let before = db_fingerprint(self.pool).await;
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, k8s_name, status, vmid, node, deleted_at IS NULL AS live \
             FROM cloud_pods WHERE tenant_id = $1 ORDER BY id",
        )
        .bind(self.tenant)
        .fetch_all(self.pool)
        .await
        .expect("read cloud_pods");
        let unfinished: i64 = before
            .0
            .iter()
            .filter(|(s, _)| *s == "queued" || *s == "running")
            .map(|(_, n)| n)
            .sum();
        if unfinished > 0 {
            bad.push(format!("queue rows not finished: {:?}", before.0));
        }
        let live_rows: Vec<&Row> = rows.iter().filter(|r| r.live).collect();
        if live_rows.len() != live_names.len() {
            bad.push(format!(
                "{} live cloud_pods rows for {} live CloudPods: {:?}",
                live_rows.len(),
                live_names.len(),
                live_rows
                    .iter()
                    .map(|r| format!("{}={}({})", r.k8s_name, r.id, r.status))
                    .collect::<Vec<_>>()
            ));
        }
        for r in &live_rows {
            match live_pod_ids.get(&r.id) {
                None => bad.push(format!(
                    "live row {} ({}, status {}) belongs to no live CloudPod",
                    r.id, r.k8s_name, r.status
                )),
                Some((name, vmid, node)) => {
                    if r.status != "active" || r.vmid.is_none() || r.node.is_none() {
                        bad.push(format!(
                            "{name}: row {} is {} at vmid {:?} node {:?}",
                            r.id, r.status, r.vmid, r.node
                        ));
                    }
                    if (r.vmid, &r.node) != (*vmid, node) {
                        bad.push(format!(
                            "{name}: status says vmid {vmid:?} node {node:?}, the row {:?} {:?}",
                            r.vmid, r.node
                        ));
                    }
                }
            }
        }
        for id in live_pod_ids.keys() {
            if !live_rows.iter().any(|r| &r.id == id) {
                bad.push(format!("status.podId {id}: no live cloud_pods row"));
            }
        }
        let deleted_ids: BTreeSet<&str> = rows
            .iter()
            .filter(|r| deleted.contains_key(&r.k8s_name))
            .map(|r| r.id.as_str())
            .collect();
        for r in rows.iter().filter(|r| deleted.contains_key(&r.k8s_name)) {
            if r.live || r.status != "deleted" {
                bad.push(format!(
                    "{}: deleted CloudPod, but row {} is {} (live {})",
                    r.k8s_name, r.id, r.status, r.live
                ));
            }
        }
        // Usage as the quota counts it (a pending scale's reservation included).
        let usage: (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT count(*)::bigint, \
               COALESCE(sum(GREATEST(cpu_cores, COALESCE(reserved_cpu_cores, 0))), 0)::bigint, \
               COALESCE(sum(GREATEST(memory_mb, COALESCE(reserved_memory_mb, 0))), 0)::bigint, \
               COALESCE(sum(GREATEST(disk_gb, COALESCE(reserved_disk_gb, 0))), 0)::bigint \
             FROM cloud_pods WHERE tenant_id = $1 AND deleted_at IS NULL",
        )
        .bind(self.tenant)
        .fetch_one(self.pool)
        .await
        .expect("usage");
        let n = live_names.len() as i64;
        let want = (n, n * PLAN_SIZE.0, n * PLAN_SIZE.1, n * PLAN_SIZE.2);
        if usage != want {
            bad.push(format!(
                "quota usage (pods, cores, MB, GB) is {usage:?}, the live pods hold {want:?}"
            ));
        }
        let tq_usage = self
            .tq
            .get(self.tenant)
            .await
            .expect("get TenantQuota")
            .status
            .and_then(|s| s.usage)
            .map(|u| (u.pods, u.cpu_cores, u.memory_mb, u.disk_gb));
        if tq_usage != Some(want) {
            bad.push(format!(
                "TenantQuota status.usage is {tq_usage:?}, the live pods hold {want:?}"
            ));
        }

        // The nodes.
        let mut marked = Vec::new();
        for (node, ssh) in &self.nodes {
            let (m, unmarked) = node_vms(ssh, node).await;
            if !unmarked.is_empty() {
                bad.push(format!("{node}: VMs without the marker: {unmarked:?}"));
            }
            marked.extend(m);
        }
        let after = db_fingerprint(self.pool).await;
        if before != after {
            bad.push("the database changed while the nodes were read".to_string());
        }
        let live_at: BTreeMap<(i32, &str), &Row> = live_rows
            .iter()
            .filter_map(|r| Some(((r.vmid?, r.node.as_deref()?), *r)))
            .collect();
        for vm in &marked {
            match live_at.get(&(vm.vmid, vm.node.as_str())) {
                None => bad.push(format!(
                    "{}/{}: VM with the marker (pod {:?}, lock {:?}) that no live cloud_pods row knows{}",
                    vm.node,
                    vm.vmid,
                    vm.pod,
                    vm.locked,
                    match &vm.pod {
                        Some(p) if deleted_ids.contains(p.as_str()) => " — its CloudPod was deleted",
                        _ => "",
                    }
                )),
                Some(r) if vm.pod.as_deref() != Some(r.id.as_str()) => bad.push(format!(
                    "{}/{}: the marker names pod {:?}, the row there is {}",
                    vm.node, vm.vmid, vm.pod, r.id
                )),
                Some(_) => {}
            }
            if vm.locked.is_some() {
                bad.push(format!(
                    "{}/{}: still locked ({:?})",
                    vm.node, vm.vmid, vm.locked
                ));
            }
        }
        for (id, (name, _, _)) in &live_pod_ids {
            let vms: Vec<String> = marked
                .iter()
                .filter(|vm| vm.pod.as_deref() == Some(id.as_str()))
                .map(|vm| format!("{}/{}", vm.node, vm.vmid))
                .collect();
            if vms.len() != 1 {
                bad.push(format!(
                    "{name} ({id}): {} VMs carry its marker: {vms:?}",
                    vms.len()
                ));
            }
        }
        if !bad.is_empty() {
            return Err(bad);
        }
        let retried_items: i64 =
            sqlx::query_scalar("SELECT count(*)::bigint FROM cloud_pod_queue WHERE attempt > 1")
                .fetch_one(self.pool)
                .await
                .expect("retried items");
        let mut vms_per_node = BTreeMap::new();
        for vm in &marked {
            *vms_per_node.entry(vm.node.clone()).or_insert(0) += 1;
        }
        Ok(Converged {
            live: live_names.len(),
            vms_per_node,
            queue: after.0,
            retried_items,
        })
    }
}

// ---- the test -------------------------------------------------------------------------

/// Queue rows waiting or running, and those running under `pid`'s lease.
async fn in_flight(pool: &PgPool, pid: u32) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'queued')::bigint, \
           count(*) FILTER (WHERE status = 'running')::bigint, \
           count(*) FILTER (WHERE status = 'running' AND lease_owner LIKE $1)::bigint \
         FROM cloud_pod_queue",
    )
    .bind(format!("%-{pid}-%"))
    .fetch_one(pool)
    .await
    .expect("queue in flight")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_operator_converges_on_one_vm_per_live_pod() {
    let test_started = Instant::now();
    let seed = seed();
    eprintln!("crash-test: seed={seed} (rerun with CLOUDPODS_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let logs = Logs {
        dir: Some(
            tempfile::Builder::new()
                .prefix("cloudpods-crash-test.")
                .tempdir()
                .expect("temp dir"),
        ),
        seed,
    };

    common::kube::ensure_crds();
    let (pool, db) = common::db::migrated_db().await;
    let sshd = PrivateSshd::start(&NODES);
    let nodes_file = logs.path().join("nodes.yaml");
    write_nodes_file(&sshd, &NODES, FAULTS, &nodes_file).await;
    let ns = unique_namespace("crash");
    let label = ns.clone();
    let tenant = format!("t-{}", &ns["crash-".len()..]);
    let client = common::api::kube_client().await;
    let pods: Api<CloudPod> = Api::namespaced(client.clone(), &ns);
    apply_quota(&client, &tenant, &label).await;
    let cfg = OperatorConfig {
        database_url: db.url(),
        kubeconfig: common::kube::kubeconfig(),
        namespace: ns.clone(),
        label: label.clone(),
        nodes_file,
        log_dir: logs.path().to_path_buf(),
        // One incarnation at a time: no election (tests/leader.rs covers it). With it, every
        // successor would first wait out its killed predecessor's lease.
        extra_args: vec!["--leader-election=false".into()],
    };
    eprintln!(
        "crash-test: namespace {ns}, tenant {tenant}, database {}, logs {}",
        db.name,
        logs.path().display()
    );

    // The chaos: start, let it run a random while, SIGKILL, again.
    let kills = Arc::new(AtomicUsize::new(0));
    let mut kills_mid_work = 0;
    let mut kills_in_startup = 0;
    let mut kills_after_scenario: Option<usize> = None;
    let mut scenario: Option<tokio::task::JoinHandle<ScenarioReport>> = None;
    let mut incarnation = 0;
    let chaos_started = Instant::now();
    let mut op = loop {
        incarnation += 1;
        let mut op = OperatorProc::spawn(&cfg, &format!("operator-{incarnation:02}"));
        if scenario.is_none() {
            // The limits must be mirrored before the first admission (else the defaults
            // refuse most pods), so the first incarnation gets that far.
            op.wait_ready(Duration::from_secs(30)).await;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let max: Option<i32> = sqlx::query_scalar(
                    "SELECT max_pods FROM cloud_pod_quotas WHERE tenant_id = $1",
                )
                .bind(&tenant)
                .fetch_optional(&pool)
                .await
                .expect("read cloud_pod_quotas");
                if max == Some(PODS as i32) {
                    break;
                }
                op.assert_running();
                assert!(
                    Instant::now() < deadline,
                    "the TenantQuota of {tenant} was not mirrored within 30 s (row: {max:?})"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let s = Scenario {
                pods: pods.clone(),
                pool: pool.clone(),
                ns: ns.clone(),
                label: label.clone(),
                tenant: tenant.clone(),
                rng: Rng(rng.next()),
                kills: kills.clone(),
                started: chaos_started,
            };
            scenario = Some(tokio::spawn(s.run()));
        }
        let done = kills.load(Ordering::SeqCst);
        let scenario_done = scenario.as_ref().is_some_and(|s| s.is_finished());
        if scenario_done && kills_after_scenario.is_none() {
            kills_after_scenario = Some(done);
        }
        let enough = scenario_done
            && done >= MIN_KILLS
            && kills_mid_work >= MIN_KILLS_MID_WORK
            && kills_after_scenario.is_some_and(|k| done >= k + KILLS_AFTER_LAST_DELETE);
        if enough || done >= MAX_KILLS || chaos_started.elapsed() > MAX_CHAOS {
            break op;
        }
        let delay = Duration::from_millis(rng.between(KILL_AFTER_MS.0, KILL_AFTER_MS.1));
        let after_work = rng.between(0, 2) != 0;
        let anchor = if after_work {
            // Until it holds a queue item (a condition with a deadline); then the random delay.
            let deadline = Instant::now() + WORK_WAIT;
            loop {
                op.assert_running();
                if in_flight(&pool, op.pid()).await.2 > 0 || Instant::now() > deadline {
                    break Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } else {
            op.spawned
        };
        // This wait is the point of the test (a kill at a random moment), not a synchronisation.
        tokio::time::sleep(delay.saturating_sub(anchor.elapsed())).await;
        let ready = op.is_ready();
        let pid = op.pid();
        let (queued, running, ours) = in_flight(&pool, pid).await;
        let ran = op.spawned.elapsed();
        let into = anchor.elapsed();
        let op_log = op.log.clone();
        op.kill();
        let (jobs_done, decided) = op_progress(&op_log);
        let n = kills.fetch_add(1, Ordering::SeqCst) + 1;
        if ours > 0 {
            kills_mid_work += 1;
        }
        if !ready {
            kills_in_startup += 1;
        }
        eprintln!(
            "crash-test: t={:>5}ms kill #{n} pid {pid} after {}ms ({}ms {}){}: queue queued={queued} running={running} (held by it: {ours}); it finished {jobs_done} jobs, enqueued {decided}",
            chaos_started.elapsed().as_millis(),
            ran.as_millis(),
            into.as_millis(),
            if after_work {
                "into its work"
            } else {
                "of runtime"
            },
            if ready { "" } else { ", still starting" },
        );
    };
    let kills = kills.load(Ordering::SeqCst);
    eprintln!(
        "crash-test: t={:>5}ms incarnation #{incarnation} (pid {}) is left running",
        chaos_started.elapsed().as_millis(),
        op.pid()
    );
    op.wait_ready(Duration::from_secs(30)).await;
    let report = scenario
        .take()
        .expect("scenario started")
        .await
        .expect("the create/delete scenario panicked");
    assert_eq!(report.created.len(), PODS);
    assert_eq!(
        report.deleted.len(),
        DELETE_IMMEDIATELY + DELETE_PROVISIONING + DELETE_ACTIVE
    );

    // Converge: every invariant holds at once, or the violations of the last look.
    let check = Check {
        pods: &pods,
        tq: Api::all(client.clone()),
        pool: &pool,
        nodes: NODES
            .iter()
            .map(|n| (n.to_string(), SshNode::new(sshd.settings(n))))
            .collect(),
        tenant: &tenant,
        label: &label,
    };
    let converge_started = Instant::now();
    let deadline = converge_started + CONVERGE_WITHIN;
    let converged = loop {
        op.assert_running();
        match check.evaluate(&report.created, &report.deleted).await {
            Ok(c) => break c,
            Err(violations) if Instant::now() > deadline => panic!(
                "not converged {CONVERGE_WITHIN:?} after the last restart (seed {seed}); {} violations:\n  {}",
                violations.len(),
                violations.join("\n  ")
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    };
    let converge_took = converge_started.elapsed();
    let stopped = op.terminate(Duration::from_secs(30)).await;

    let by_when = |w: When| report.deleted.values().filter(|v| **v == w).count();
    let vms: usize = converged.vms_per_node.values().sum();
    eprintln!(
        "crash-test: seed={seed} kills={kills} (holding queue items: {kills_mid_work}, during start-up: {kills_in_startup}) \
         incarnations={incarnation} pods created={} deleted={} (right after create {}, mid-provisioning {}, once active {}) \
         live={} vms={vms} {:?} queue={:?} retried_items={} converged_in={:.1}s total={:.1}s",
        report.created.len(),
        report.deleted.len(),
        by_when(When::RightAfterCreate),
        by_when(When::MidProvisioning),
        by_when(When::OnceActive),
        converged.live,
        converged.vms_per_node,
        converged.queue,
        converged.retried_items,
        converge_took.as_secs_f64(),
        test_started.elapsed().as_secs_f64(),
    );
    assert!(
        kills >= MIN_KILLS && kills_mid_work >= MIN_KILLS_MID_WORK,
        "too few kills landed: {kills} kills, {kills_mid_work} while the process held queue items"
    );
    let status = stopped.expect("the last operator stops on SIGTERM");
    assert!(status.success(), "the last operator exited with {status}");
    drop(sshd);
    drop(db);
    drop(logs);
}
