//! The schema (migrations/) and the catalog seed, against a real PostgreSQL.
//!
//! Needs `CLOUDPODS_TEST_DATABASE_URL` (see `tests/common/db.rs`); every test has its own
//! database, so they run in parallel.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgListener;
use sqlx::{AssertSqlSafe, PgPool};

use cloudpods::catalog::Catalog;
use cloudpods::store::{self, SeedReport, UpsertCounts};
use common::db::{fresh_db, migrated_db};

const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// The seed's columns (§3), which must all exist under exactly these names.
const SEED_COLUMNS: &[(&str, &[&str])] = &[
    (
        "cloud_pods",
        &[
            "id",
            "tenant_id",
            "user_id",
            "plan_code",
            "vmid",
            "node",
            "ip_address",
            "status",
            "cpu_cores",
            "memory_mb",
            "disk_gb",
            "provisioning_state",
            "created_at",
            "updated_at",
            "deleted_at",
        ],
    ),
    (
        "cloud_pod_queue",
        &[
            "id",
            "pod_id",
            "action",
            "payload",
            "status",
            "retry_count",
            "error_message",
            "created_at",
            "updated_at",
            "processed_at",
        ],
    ),
    (
        "cloud_pod_jobs",
        &[
            "id",
            "tenant_id",
            "user_id",
            "type",
            "status",
            "queue_item_ids",
            "created_at",
            "updated_at",
        ],
    ),
    (
        "cloud_pod_plans",
        &[
            "code",
            "name",
            "description",
            "price_monthly",
            "vcpu",
            "ram_mb",
            "storage_gb",
            "bandwidth_gb",
            "bandwidth_type",
            "is_active",
            "max_pods_per_tenant",
            "billing_product_id",
        ],
    ),
    (
        "cloud_pod_blueprints",
        &[
            "code",
            "name",
            "description",
            "proxmox_template_vmid",
            "default_node",
            "storage_pool",
            "network_bridge",
            "cloud_init_profile",
            "is_active",
        ],
    ),
    (
        "cloud_pod_quotas",
        &[
            "tenant_id",
            "max_pods",
            "max_cpu_cores",
            "max_memory_mb",
            "max_disk_gb",
        ],
    ),
];

/// Columns this operator adds for correctness (see the migration's comments).
const EXTRA_COLUMNS: &[(&str, &[&str])] = &[
    (
        "cloud_pods",
        &[
            "blueprint_code",
            "hostname",
            "k8s_uid",
            "k8s_namespace",
            "k8s_name",
            "reserved_cpu_cores",
            "reserved_memory_mb",
            "reserved_disk_gb",
        ],
    ),
    (
        "cloud_pod_queue",
        &[
            "job_id",
            "attempt",
            "max_attempts",
            "lease_owner",
            "lease_expires_at",
            "run_after",
            "result",
        ],
    ),
    (
        "cloud_pod_jobs",
        &["pod_id", "idempotency_key", "request_hash"],
    ),
];

async fn columns(pool: &PgPool, table: &str) -> BTreeSet<String> {
    sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name = $1",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

#[tokio::test]
async fn migrations_create_the_six_tables_with_the_seed_columns() {
    let (pool, _db) = fresh_db().await;
    let applied = store::migrate(&pool).await.unwrap();
    assert_eq!(applied, store::MIGRATOR.iter().count());
    assert!(applied >= 1);

    let tables: BTreeSet<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_name LIKE 'cloud_pod%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let expected: BTreeSet<String> = SEED_COLUMNS.iter().map(|(t, _)| t.to_string()).collect();
    assert_eq!(tables, expected);

    for (table, wanted) in SEED_COLUMNS.iter().chain(EXTRA_COLUMNS) {
        let have = columns(&pool, table).await;
        for column in *wanted {
            assert!(
                have.contains(*column),
                "{table}.{column} is missing; have {have:?}"
            );
        }
        for column in ["created_at", "updated_at"] {
            assert!(have.contains(column), "{table}.{column} is missing");
        }
    }
}

#[tokio::test]
async fn migrate_twice_applies_nothing_the_second_time() {
    let (pool, _db) = fresh_db().await;
    assert!(store::migrate(&pool).await.unwrap() >= 1);
    assert_eq!(store::migrate(&pool).await.unwrap(), 0);
}

/// (code, updated_at) of every plan and blueprint.
async fn catalog_rows(pool: &PgPool) -> BTreeMap<String, DateTime<Utc>> {
    let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT 'plan:' || code, updated_at FROM cloud_pod_plans \
         UNION ALL SELECT 'blueprint:' || code, updated_at FROM cloud_pod_blueprints",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter().collect()
}

fn counts(inserted: usize, updated: usize, unchanged: usize) -> UpsertCounts {
    UpsertCounts {
        inserted,
        updated,
        unchanged,
    }
}

#[tokio::test]
async fn seeding_twice_changes_nothing() {
    let (pool, _db) = fresh_db().await;
    store::migrate(&pool).await.unwrap();
    let catalog = Catalog::builtin().unwrap();

    let first = store::seed_catalog(&pool, &catalog).await.unwrap();
    assert_eq!(
        first,
        SeedReport {
            plans: counts(4, 0, 0),
            blueprints: counts(1, 0, 0)
        }
    );
    let before = catalog_rows(&pool).await;
    assert_eq!(before.len(), 5);

    let second = store::seed_catalog(&pool, &catalog).await.unwrap();
    assert_eq!(
        second,
        SeedReport {
            plans: counts(0, 0, 4),
            blueprints: counts(0, 0, 1)
        }
    );
    assert_eq!(
        second.to_string(),
        "plans: 0 inserted, 0 updated, 4 unchanged; blueprints: 0 inserted, 0 updated, 1 unchanged"
    );
    assert_eq!(
        catalog_rows(&pool).await,
        before,
        "no row added, none touched"
    );

    // Values as stored: exact prices, the cloud-init profile as a JSON object.
    let (price, vcpu): (String, i32) = sqlx::query_as(
        "SELECT price_monthly::text, vcpu FROM cloud_pod_plans WHERE code = 'student'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((price.as_str(), vcpu), ("4.99", 1));
    let user: String = sqlx::query_scalar(
        "SELECT cloud_init_profile->>'defaultUser' FROM cloud_pod_blueprints WHERE code = 'ubuntu-24-minimal'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(user, "ubuntu");
}

#[tokio::test]
async fn changing_one_plan_updates_exactly_that_row() {
    let (pool, _db) = migrated_db().await;
    let before = catalog_rows(&pool).await;

    let mut catalog = Catalog::builtin().unwrap();
    let starter = catalog
        .plans
        .iter_mut()
        .find(|p| p.code == "starter")
        .unwrap();
    starter.price_monthly = 11.50;
    let report = store::seed_catalog(&pool, &catalog).await.unwrap();
    assert_eq!(
        report,
        SeedReport {
            plans: counts(0, 1, 3),
            blueprints: counts(0, 0, 1)
        }
    );

    let after = catalog_rows(&pool).await;
    for (code, at) in &before {
        if code == "plan:starter" {
            assert!(after[code] > *at, "starter's updated_at must move");
        } else {
            assert_eq!(after[code], *at, "{code} must not be touched");
        }
    }
    let price: String = sqlx::query_scalar(
        "SELECT price_monthly::text FROM cloud_pod_plans WHERE code = 'starter'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(price, "11.50");

    // A blueprint change is an update too; the JSON profile is compared by value.
    catalog.blueprints[0]
        .cloud_init_profile
        .insert("defaultUser".into(), "admin".into());
    let report = store::seed_catalog(&pool, &catalog).await.unwrap();
    assert_eq!(
        report,
        SeedReport {
            plans: counts(0, 0, 4),
            blueprints: counts(0, 1, 0)
        }
    );
}

#[tokio::test]
async fn plans_missing_from_the_catalog_are_left_alone() {
    let (pool, _db) = migrated_db().await;
    sqlx::query(
        "INSERT INTO cloud_pod_plans (code, name, price_monthly, vcpu, ram_mb, storage_gb, bandwidth_gb) \
         VALUES ('legacy', 'Legacy', 1.00, 1, 512, 10, 100)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let report = store::seed_catalog(&pool, &Catalog::builtin().unwrap())
        .await
        .unwrap();
    assert_eq!(report.plans, counts(0, 0, 4));
    let active: bool =
        sqlx::query_scalar("SELECT is_active FROM cloud_pod_plans WHERE code = 'legacy'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(active);
}

/// Rows every constraint case starts from: two pods, a quota, a job and a running queue item.
async fn fixtures(pool: &PgPool) {
    sqlx::raw_sql(
        r#"
        INSERT INTO cloud_pod_quotas (tenant_id, max_pods, max_cpu_cores, max_memory_mb, max_disk_gb)
            VALUES ('t1', 2, 4, 8192, 200);
        INSERT INTO cloud_pods (id, tenant_id, user_id, plan_code, blueprint_code, vmid, node,
                ip_address, status, cpu_cores, memory_mb, disk_gb, hostname, k8s_uid,
                k8s_namespace, k8s_name)
            VALUES ('pod-1', 't1', 'user@example.com', 'starter', 'ubuntu-24-minimal', 1001,
                'pve1', '192.0.2.10', 'active', 1, 2048, 40, 'web', gen_random_uuid(), 't1', 'web'),
                   ('pod-2', 't1', NULL, 'starter', 'ubuntu-24-minimal', NULL, NULL, NULL,
                'pending', 1, 2048, 40, NULL, gen_random_uuid(), 't1', 'db.example');
        INSERT INTO cloud_pod_jobs (tenant_id, pod_id, type, idempotency_key)
            VALUES ('t1', 'pod-1', 'provision', 'k1');
        INSERT INTO cloud_pod_queue (pod_id, job_id, action, status, attempt, lease_owner, lease_expires_at)
            VALUES ('pod-1', (SELECT min(id) FROM cloud_pod_jobs), 'create', 'running', 1, 'worker-a',
                now() + interval '1 minute');
        "#,
    )
    .execute(pool)
    .await
    .unwrap();
}

/// Runs `sql` in a rolled-back transaction; returns (SQLSTATE, constraint) of its error.
async fn violation(pool: &PgPool, sql: &str) -> Result<(String, String), String> {
    let mut tx = pool.begin().await.unwrap();
    let result = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *tx).await;
    tx.rollback().await.unwrap();
    match result {
        Ok(_) => Err("succeeded".into()),
        Err(e) => match e.as_database_error() {
            Some(db) => Ok((
                db.code().map(|c| c.into_owned()).unwrap_or_default(),
                db.constraint().unwrap_or_default().to_owned(),
            )),
            None => Err(format!("not a database error: {e}")),
        },
    }
}

/// Asserts that each (constraint, sql) case fails with `code` naming that constraint.
async fn assert_violations(pool: &PgPool, code: &str, cases: &[(&str, &str)]) {
    let mut failures = Vec::new();
    for (constraint, sql) in cases {
        match violation(pool, sql).await {
            Ok((c, name)) if c == code && name == *constraint => {}
            other => failures.push(format!("{constraint}: `{sql}` gave {other:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "unexpected outcomes:\n{}",
        failures.join("\n")
    );
}

/// Names of the constraints of type `contype` on the six tables.
async fn constraint_names(pool: &PgPool, contype: &str) -> BTreeSet<String> {
    sqlx::query_scalar(
        "SELECT c.conname::text FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid \
         WHERE r.relname LIKE 'cloud_pod%' AND c.contype = $1::\"char\"",
    )
    .bind(contype)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

const CHECK_CASES: &[(&str, &str)] = &[
    (
        "cloud_pod_plans_code_check",
        "UPDATE cloud_pod_plans SET code = 'Student' WHERE code = 'student'",
    ),
    (
        "cloud_pod_plans_name_check",
        "UPDATE cloud_pod_plans SET name = '  ' WHERE code = 'student'",
    ),
    (
        "cloud_pod_plans_price_monthly_check",
        "UPDATE cloud_pod_plans SET price_monthly = -0.01 WHERE code = 'student'",
    ),
    (
        "cloud_pod_plans_vcpu_check",
        "UPDATE cloud_pod_plans SET vcpu = 0 WHERE code = 'student'",
    ),
    (
        "cloud_pod_plans_ram_mb_check",
        "UPDATE cloud_pod_plans SET ram_mb = 0 WHERE code = 'student'",
    ),
    (
        "cloud_pod_plans_storage_gb_check",
        "UPDATE cloud_pod_plans SET storage_gb = -1 WHERE code = 'student'",
    ),
    (
        "cloud_pod_plans_bandwidth_gb_check",
        "UPDATE cloud_pod_plans SET bandwidth_gb = 0 WHERE code = 'student'",
    ),
    (
        "cloud_pod_plans_bandwidth_type_check",
        "UPDATE cloud_pod_plans SET bandwidth_type = 'capped' WHERE code = 'student'",
    ),
    (
        "cloud_pod_plans_metered_bandwidth_check",
        "UPDATE cloud_pod_plans SET bandwidth_gb = NULL WHERE code = 'student'",
    ),
    (
        "cloud_pod_plans_max_pods_per_tenant_check",
        "UPDATE cloud_pod_plans SET max_pods_per_tenant = 0 WHERE code = 'student'",
    ),
    (
        "cloud_pod_plans_billing_product_id_check",
        "UPDATE cloud_pod_plans SET billing_product_id = '' WHERE code = 'student'",
    ),
    (
        "cloud_pod_blueprints_code_check",
        "UPDATE cloud_pod_blueprints SET code = 'ubuntu_24'",
    ),
    (
        "cloud_pod_blueprints_name_check",
        "UPDATE cloud_pod_blueprints SET name = ''",
    ),
    (
        "cloud_pod_blueprints_proxmox_template_vmid_check",
        "UPDATE cloud_pod_blueprints SET proxmox_template_vmid = 99",
    ),
    (
        "cloud_pod_blueprints_default_node_check",
        "UPDATE cloud_pod_blueprints SET default_node = 'pve 1'",
    ),
    (
        "cloud_pod_blueprints_storage_pool_check",
        "UPDATE cloud_pod_blueprints SET storage_pool = '1local'",
    ),
    (
        "cloud_pod_blueprints_network_bridge_check",
        "UPDATE cloud_pod_blueprints SET network_bridge = 'eth0'",
    ),
    (
        "cloud_pod_blueprints_cloud_init_profile_check",
        "UPDATE cloud_pod_blueprints SET cloud_init_profile = '[]'",
    ),
    (
        "cloud_pod_quotas_tenant_id_check",
        "UPDATE cloud_pod_quotas SET tenant_id = 'T1'",
    ),
    (
        "cloud_pod_quotas_max_pods_check",
        "UPDATE cloud_pod_quotas SET max_pods = -1",
    ),
    (
        "cloud_pod_quotas_max_cpu_cores_check",
        "UPDATE cloud_pod_quotas SET max_cpu_cores = -1",
    ),
    (
        "cloud_pod_quotas_max_memory_mb_check",
        "UPDATE cloud_pod_quotas SET max_memory_mb = -1",
    ),
    (
        "cloud_pod_quotas_max_disk_gb_check",
        "UPDATE cloud_pod_quotas SET max_disk_gb = -1",
    ),
    (
        "cloud_pods_id_check",
        "UPDATE cloud_pods SET id = 'vm-2' WHERE id = 'pod-2'",
    ),
    (
        "cloud_pods_tenant_id_check",
        "UPDATE cloud_pods SET tenant_id = 'Tenant 1' WHERE id = 'pod-2'",
    ),
    (
        "cloud_pods_user_id_check",
        "UPDATE cloud_pods SET user_id = 'a b' WHERE id = 'pod-2'",
    ),
    (
        "cloud_pods_vmid_check",
        "UPDATE cloud_pods SET vmid = 99 WHERE id = 'pod-2'",
    ),
    (
        "cloud_pods_node_check",
        "UPDATE cloud_pods SET node = 'pve;reboot' WHERE id = 'pod-2'",
    ),
    (
        "cloud_pods_k8s_uid_check",
        "UPDATE cloud_pods SET k8s_uid = NULL WHERE id = 'pod-1'",
    ),
    (
        "cloud_pods_reserved_cpu_cores_check",
        "UPDATE cloud_pods SET reserved_cpu_cores = 0 WHERE id = 'pod-2'",
    ),
    (
        "cloud_pods_reserved_memory_mb_check",
        "UPDATE cloud_pods SET reserved_memory_mb = -1 WHERE id = 'pod-2'",
    ),
    (
        "cloud_pods_reserved_disk_gb_check",
        "UPDATE cloud_pods SET reserved_disk_gb = 0 WHERE id = 'pod-2'",
    ),
    (
        "cloud_pods_status_check",
        "UPDATE cloud_pods SET status = 'running' WHERE id = 'pod-2'",
    ),
    (
        "cloud_pods_cpu_cores_check",
        "UPDATE cloud_pods SET cpu_cores = 0 WHERE id = 'pod-2'",
    ),
    (
        "cloud_pods_memory_mb_check",
        "UPDATE cloud_pods SET memory_mb = 0 WHERE id = 'pod-2'",
    ),
    (
        "cloud_pods_disk_gb_check",
        "UPDATE cloud_pods SET disk_gb = 0 WHERE id = 'pod-2'",
    ),
    (
        "cloud_pods_provisioning_state_check",
        "UPDATE cloud_pods SET provisioning_state = '\"log\"' WHERE id = 'pod-2'",
    ),
    (
        "cloud_pods_hostname_check",
        "UPDATE cloud_pods SET hostname = 'web-' WHERE id = 'pod-2'",
    ),
    (
        "cloud_pods_k8s_namespace_check",
        "UPDATE cloud_pods SET k8s_namespace = 'Team' WHERE id = 'pod-2'",
    ),
    (
        "cloud_pods_k8s_name_check",
        "UPDATE cloud_pods SET k8s_name = 'db_1' WHERE id = 'pod-2'",
    ),
    (
        "cloud_pods_deleted_at_check",
        "UPDATE cloud_pods SET status = 'deleted' WHERE id = 'pod-2'",
    ),
    (
        "cloud_pod_jobs_tenant_id_check",
        "UPDATE cloud_pod_jobs SET tenant_id = ''",
    ),
    (
        "cloud_pod_jobs_user_id_check",
        "UPDATE cloud_pod_jobs SET user_id = 'x y'",
    ),
    (
        "cloud_pod_jobs_type_check",
        "UPDATE cloud_pod_jobs SET type = 'create'",
    ),
    (
        "cloud_pod_jobs_status_check",
        "UPDATE cloud_pod_jobs SET status = 'queued'",
    ),
    (
        "cloud_pod_jobs_queue_item_ids_check",
        "UPDATE cloud_pod_jobs SET queue_item_ids = '{}'",
    ),
    (
        "cloud_pod_jobs_idempotency_key_check",
        "UPDATE cloud_pod_jobs SET idempotency_key = ''",
    ),
    (
        "cloud_pod_jobs_request_hash_check",
        "UPDATE cloud_pod_jobs SET request_hash = 'not-a-sha256'",
    ),
    (
        "cloud_pod_queue_action_check",
        "UPDATE cloud_pod_queue SET action = 'provision'",
    ),
    (
        "cloud_pod_queue_status_check",
        "UPDATE cloud_pod_queue SET status = 'pending'",
    ),
    (
        "cloud_pod_queue_payload_check",
        "UPDATE cloud_pod_queue SET payload = 'null'",
    ),
    (
        "cloud_pod_queue_retry_count_check",
        "UPDATE cloud_pod_queue SET retry_count = -1",
    ),
    (
        "cloud_pod_queue_attempt_check",
        "UPDATE cloud_pod_queue SET attempt = -1",
    ),
    (
        "cloud_pod_queue_max_attempts_check",
        "UPDATE cloud_pod_queue SET max_attempts = 0",
    ),
    (
        "cloud_pod_queue_lease_check",
        "UPDATE cloud_pod_queue SET lease_expires_at = NULL",
    ),
    (
        "cloud_pod_queue_processed_at_check",
        "UPDATE cloud_pod_queue SET status = 'success'",
    ),
];

#[tokio::test]
async fn every_check_constraint_rejects_a_bad_value() {
    let (pool, _db) = migrated_db().await;
    fixtures(&pool).await;

    let covered: BTreeSet<String> = CHECK_CASES.iter().map(|(c, _)| c.to_string()).collect();
    assert_eq!(covered.len(), CHECK_CASES.len(), "one case per constraint");
    assert_eq!(
        covered,
        constraint_names(&pool, "c").await,
        "every CHECK constraint has a case"
    );
    assert_violations(&pool, "23514", CHECK_CASES).await;

    // Second cases for the two-sided rules.
    assert_violations(
        &pool,
        "23514",
        &[
            (
                "cloud_pods_deleted_at_check",
                "UPDATE cloud_pods SET deleted_at = now() WHERE id = 'pod-2'",
            ),
            (
                "cloud_pods_vmid_check",
                "UPDATE cloud_pods SET vmid = 1000000000 WHERE id = 'pod-2'",
            ),
            (
                "cloud_pod_blueprints_proxmox_template_vmid_check",
                "UPDATE cloud_pod_blueprints SET proxmox_template_vmid = 1000000000",
            ),
            (
                "cloud_pod_queue_lease_check",
                "UPDATE cloud_pod_queue SET lease_owner = NULL",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn valid_edge_values_are_accepted() {
    let (pool, _db) = migrated_db().await;
    fixtures(&pool).await;
    for sql in [
        "UPDATE cloud_pods SET id = 'pod-1764399306066' WHERE id = 'pod-2'",
        "UPDATE cloud_pods SET vmid = 100 WHERE id = 'pod-2'",
        "UPDATE cloud_pods SET vmid = 999999999 WHERE id = 'pod-2'",
        "UPDATE cloud_pods SET status = 'deleted', deleted_at = now() WHERE id = 'pod-2'",
        "UPDATE cloud_pods SET ip_address = '2001:db8::1' WHERE id = 'pod-2'",
        "UPDATE cloud_pod_plans SET bandwidth_type = 'unmetered', bandwidth_gb = NULL, price_monthly = 0 WHERE code = 'student'",
        "UPDATE cloud_pod_quotas SET max_pods = 0, max_cpu_cores = 0, max_memory_mb = 0, max_disk_gb = 0",
        "UPDATE cloud_pod_queue SET status = 'failed', processed_at = now(), lease_owner = NULL, lease_expires_at = NULL",
        "INSERT INTO cloud_pod_jobs (tenant_id, type) VALUES ('t1', 'backup'), ('t1', 'backup')",
        "INSERT INTO cloud_pod_jobs (tenant_id, type, idempotency_key) VALUES ('t2', 'backup', 'k1')",
        "INSERT INTO cloud_pod_queue (pod_id, action) VALUES ('pod-1', 'reboot'), ('pod-1', 'backup')",
    ] {
        let mut tx = pool.begin().await.unwrap();
        let result = sqlx::raw_sql(sql).execute(&mut *tx).await;
        tx.rollback().await.unwrap();
        assert!(result.is_ok(), "`{sql}` must be accepted: {result:?}");
    }
}

#[tokio::test]
async fn foreign_keys_reject_unknown_references() {
    let (pool, _db) = migrated_db().await;
    fixtures(&pool).await;
    let cases: &[(&str, &str)] = &[
        (
            "cloud_pods_plan_code_fkey",
            "UPDATE cloud_pods SET plan_code = 'platinum' WHERE id = 'pod-2'",
        ),
        (
            "cloud_pods_blueprint_code_fkey",
            "UPDATE cloud_pods SET blueprint_code = 'debian-12' WHERE id = 'pod-2'",
        ),
        (
            "cloud_pod_jobs_pod_id_fkey",
            "UPDATE cloud_pod_jobs SET pod_id = 'pod-404'",
        ),
        (
            "cloud_pod_queue_pod_id_fkey",
            "UPDATE cloud_pod_queue SET pod_id = 'pod-404'",
        ),
        (
            "cloud_pod_queue_job_id_fkey",
            "UPDATE cloud_pod_queue SET job_id = -1",
        ),
    ];
    let covered: BTreeSet<String> = cases.iter().map(|(c, _)| c.to_string()).collect();
    assert_eq!(
        covered,
        constraint_names(&pool, "f").await,
        "every foreign key has a case"
    );
    assert_violations(&pool, "23503", cases).await;

    // The referenced side: a plan or pod in use cannot disappear.
    assert_violations(
        &pool,
        "23503",
        &[
            ("cloud_pods_plan_code_fkey", "DELETE FROM cloud_pod_plans WHERE code = 'starter'"),
            ("cloud_pod_queue_pod_id_fkey", "INSERT INTO cloud_pod_queue (pod_id, action) VALUES ('pod-2', 'sync'); DELETE FROM cloud_pods WHERE id = 'pod-2'"),
        ],
    )
    .await;
}

#[tokio::test]
async fn unique_rules_reject_duplicates() {
    let (pool, _db) = migrated_db().await;
    fixtures(&pool).await;
    assert_violations(
        &pool,
        "23505",
        &[
            ("cloud_pods_vmid_key", "UPDATE cloud_pods SET vmid = 1001 WHERE id = 'pod-2'"),
            (
                "cloud_pods_k8s_uid_key",
                "UPDATE cloud_pods SET k8s_uid = (SELECT k8s_uid FROM cloud_pods WHERE id = 'pod-1') WHERE id = 'pod-2'",
            ),
            (
                "cloud_pod_jobs_tenant_idempotency_key_key",
                "INSERT INTO cloud_pod_jobs (tenant_id, type, idempotency_key) VALUES ('t1', 'backup', 'k1')",
            ),
            (
                "cloud_pod_queue_one_running_per_pod",
                "INSERT INTO cloud_pod_queue (pod_id, action, status, lease_owner, lease_expires_at) \
                 VALUES ('pod-1', 'reboot', 'running', 'worker-b', now() + interval '1 minute')",
            ),
            (
                "cloud_pod_queue_one_running_per_pod",
                "INSERT INTO cloud_pod_queue (pod_id, action) VALUES ('pod-1', 'reboot'); \
                 UPDATE cloud_pod_queue SET status = 'running', lease_owner = 'worker-b', \
                 lease_expires_at = now() WHERE action = 'reboot'",
            ),
            ("cloud_pod_plans_pkey", "INSERT INTO cloud_pod_plans (code, name, price_monthly, vcpu, ram_mb, storage_gb, bandwidth_gb) VALUES ('starter', 'Again', 1, 1, 512, 10, 10)"),
            ("cloud_pod_quotas_pkey", "INSERT INTO cloud_pod_quotas VALUES ('t1', 1, 1, 1, 1)"),
        ],
    )
    .await;
    // A running item on another pod is fine.
    sqlx::query(
        "INSERT INTO cloud_pod_queue (pod_id, action, status, lease_owner, lease_expires_at) \
         VALUES ('pod-2', 'create', 'running', 'worker-b', now() + interval '1 minute')",
    )
    .execute(&pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn updated_at_moves_on_real_changes_only() {
    let (pool, _db) = migrated_db().await;
    fixtures(&pool).await;
    let old: DateTime<Utc> = "2000-01-01T00:00:00Z".parse().unwrap();
    let tables = [
        (
            "cloud_pod_plans",
            "code = 'student'",
            "vcpu = vcpu",
            "vcpu = 2",
        ),
        (
            "cloud_pod_blueprints",
            "true",
            "name = name",
            "name = 'Renamed'",
        ),
        (
            "cloud_pod_quotas",
            "true",
            "max_pods = max_pods",
            "max_pods = 3",
        ),
        (
            "cloud_pods",
            "id = 'pod-2'",
            "status = status",
            "status = 'provisioning'",
        ),
        (
            "cloud_pod_jobs",
            "true",
            "status = status",
            "status = 'running'",
        ),
        (
            "cloud_pod_queue",
            "true",
            "retry_count = retry_count",
            "retry_count = 1",
        ),
    ];
    for (table, row, noop, change) in tables {
        let updated_at = |set: &'static str| {
            let sql = format!("UPDATE {table} SET {set} WHERE {row} RETURNING updated_at");
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, DateTime<Utc>>(AssertSqlSafe(sql))
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
        };
        // Backdate with the trigger off, so any bump is visible regardless of clock resolution.
        sqlx::raw_sql(AssertSqlSafe(format!(
            "ALTER TABLE {table} DISABLE TRIGGER {table}_touch_updated_at; \
             UPDATE {table} SET updated_at = '2000-01-01Z' WHERE {row}; \
             ALTER TABLE {table} ENABLE TRIGGER {table}_touch_updated_at;"
        )))
        .execute(&pool)
        .await
        .unwrap();
        assert_eq!(
            updated_at(noop).await,
            old,
            "{table}: a no-op update must not bump"
        );
        assert!(
            updated_at(change).await > old,
            "{table}: a real change must bump"
        );
    }
}

async fn listener(pool: &PgPool, channel: &str) -> PgListener {
    let mut listener = PgListener::connect_with(pool).await.unwrap();
    listener.listen(channel).await.unwrap();
    listener
}

async fn next_payload(listener: &mut PgListener) -> String {
    let n = tokio::time::timeout(NOTIFY_TIMEOUT, listener.recv())
        .await
        .expect("no notification within the timeout")
        .unwrap();
    n.payload().to_owned()
}

#[tokio::test]
async fn queue_insert_notifies_workers() {
    let (pool, _db) = migrated_db().await;
    fixtures(&pool).await;
    let mut workers = listener(&pool, "cloud_pod_queue").await;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO cloud_pod_queue (pod_id, action, payload) VALUES ('pod-2', 'create', '{}') RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(next_payload(&mut workers).await, id.to_string());
}

#[tokio::test]
async fn queue_completion_notifies_the_controller_with_the_pod_id() {
    let (pool, _db) = migrated_db().await;
    fixtures(&pool).await;
    let mut controller = listener(&pool, "cloud_pod_queue_done").await;
    let run = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::raw_sql(sql).execute(&pool).await.unwrap() }
    };
    // Claiming (queued -> running) is not a completion; pod-2's success is the first event.
    run("INSERT INTO cloud_pod_queue (pod_id, action) VALUES ('pod-2', 'create')").await;
    run("UPDATE cloud_pod_queue SET status = 'running', lease_owner = 'w', lease_expires_at = now() WHERE pod_id = 'pod-2'").await;
    run("UPDATE cloud_pod_queue SET status = 'success', processed_at = now() WHERE pod_id = 'pod-2'").await;
    assert_eq!(next_payload(&mut controller).await, "pod-2");
    run("UPDATE cloud_pod_queue SET status = 'failed', processed_at = now(), error_message = 'boom' WHERE pod_id = 'pod-1'").await;
    assert_eq!(next_payload(&mut controller).await, "pod-1");
}

#[tokio::test]
async fn connect_by_url_then_migrate_and_seed_like_the_cli() {
    let (_pool, db) = fresh_db().await;
    let args = cloudpods::cli::DatabaseArgs {
        url: db.url(),
        max_connections: 2,
    };
    let pool = store::connect(&args).await.unwrap();
    assert_eq!(
        store::migrate(&pool).await.unwrap(),
        store::MIGRATOR.iter().count()
    );
    let report = store::seed_catalog(&pool, &Catalog::builtin().unwrap())
        .await
        .unwrap();
    assert_eq!(report.plans, counts(4, 0, 0));
    pool.close().await;
}
