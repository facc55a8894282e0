//! A fresh PostgreSQL database per test, on the throwaway server of `scripts/test`.
//!
//! `CLOUDPODS_TEST_DATABASE_URL` is a superuser URL; each test gets its own database
//! `cp_test_<uuid>`, dropped (WITH FORCE) when the [`TestDb`] guard goes out of scope, even
//! when the test panics. Set `CLOUDPODS_TEST_KEEP_DB=1` to keep them for inspection.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};

/// The superuser URL of the test server.
pub const URL_VAR: &str = "CLOUDPODS_TEST_DATABASE_URL";

/// Owns one test database; dropping it drops the database.
pub struct TestDb {
    /// The database name (`cp_test_<uuid>`).
    pub name: String,
    admin: PgConnectOptions,
    keep: bool,
}

impl TestDb {
    /// Connect options for this database (e.g. for a `PgListener` or a second pool).
    pub fn options(&self) -> PgConnectOptions {
        self.admin.clone().database(&self.name)
    }

    /// A `postgres://` URL for this database, for code under test that takes a URL.
    pub fn url(&self) -> String {
        let admin = admin_url();
        let (base, query) = admin.split_at(admin.find('?').unwrap_or(admin.len()));
        // The database is the path after the authority: scheme://authority/database.
        let authority = base.find("://").map_or(0, |i| i + 3);
        let path = base[authority..]
            .find('/')
            .map_or(base.len(), |i| authority + i);
        format!("{}/{}{}", &base[..path], self.name, query)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("keeping test database {}", self.name);
            return;
        }
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Drop cannot be async, and may run inside the test's runtime: use a thread with
        // its own runtime. Best effort: a failure is reported, not raised.
        let joined = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut conn = PgConnection::connect_with(&admin)
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
                conn.close().await.map_err(|e| e.to_string())
            })
        })
        .join();
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!(
                "could not drop test database {}: cleanup thread panicked",
                self.name
            ),
        }
    }
}

fn admin_url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| {
        panic!("{URL_VAR} is not set: run the tests through scripts/test (see README)")
    })
}

/// Creates an empty database and returns a pool to it plus the guard that drops it.
pub async fn fresh_db() -> (PgPool, TestDb) {
    let admin = PgConnectOptions::from_str(&admin_url())
        .unwrap_or_else(|e| panic!("{URL_VAR} is not a valid PostgreSQL URL: {e}"));
    let name = format!("cp_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect_with(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL server: {e}"));
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
    let _ = conn.close().await;
    let guard = TestDb {
        keep: std::env::var("CLOUDPODS_TEST_KEEP_DB").is_ok_and(|v| v == "1"),
        name,
        admin,
    };
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(guard.options())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to test database {}: {e}", guard.name));
    (pool, guard)
}

/// A fresh database with the migrations applied and the built-in catalog seeded.
pub async fn migrated_db() -> (PgPool, TestDb) {
    let (pool, guard) = fresh_db().await;
    cloudpods::store::migrate(&pool).await.expect("migrate");
    let catalog = cloudpods::catalog::Catalog::builtin().expect("built-in catalog");
    cloudpods::store::seed_catalog(&pool, &catalog)
        .await
        .expect("seed catalog");
    (pool, guard)
}

/// Inserts a valid `pending` pod (plan `starter`, blueprint `ubuntu-24-minimal`, namespace
/// = tenant) into a migrated, seeded database; returns its id.
pub async fn insert_pod(pool: &PgPool, tenant_id: &str) -> String {
    let uid = uuid::Uuid::new_v4();
    let id = format!("pod-{}", uid.simple());
    sqlx::query(
        "INSERT INTO cloud_pods (id, tenant_id, plan_code, blueprint_code, cpu_cores, memory_mb, \
         disk_gb, k8s_uid, k8s_namespace, k8s_name) \
         VALUES ($1, $2, 'starter', 'ubuntu-24-minimal', 1, 2048, 40, $3, $2, $1)",
    )
    .bind(&id)
    .bind(tenant_id)
    .bind(uid)
    .execute(pool)
    .await
    .unwrap_or_else(|e| panic!("insert pod for tenant {tenant_id}: {e}"));
    id
}
