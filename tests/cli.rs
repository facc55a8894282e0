//! The `cloudpods` binary itself: `migrate` twice against a real PostgreSQL, `crdgen` into a
//! fresh directory, and clear errors for bad input.

mod common;

use std::process::{Command, Output};

fn cloudpods(args: &[&str], database_url: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cloudpods"));
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("CLOUDPODS_CATALOG");
    if let Some(url) = database_url {
        cmd.env("DATABASE_URL", url);
    }
    cmd.output().expect("run cloudpods")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn migrate_applies_once_then_changes_nothing() {
    let (pool, db) = common::db::fresh_db().await;
    let url = db.url();

    let first = cloudpods(&["migrate"], Some(&url));
    assert!(first.status.success(), "{}", text(&first));
    let first = text(&first);
    let all = cloudpods::store::MIGRATOR.iter().count();
    assert!(
        first.contains(&format!("migrations: {all} newly applied")),
        "{first}"
    );
    assert!(
        first.contains("plans: 4 inserted, 0 updated, 0 unchanged"),
        "{first}"
    );
    assert!(
        first.contains("blueprints: 1 inserted, 0 updated, 0 unchanged"),
        "{first}"
    );

    let second = cloudpods(&["migrate"], Some(&url));
    assert!(second.status.success(), "{}", text(&second));
    let second = text(&second);
    assert!(second.contains("migrations: 0 newly applied"), "{second}");
    assert!(
        second.contains("plans: 0 inserted, 0 updated, 4 unchanged"),
        "{second}"
    );

    let plans: i64 = sqlx::query_scalar("SELECT count(*) FROM cloud_pod_plans")
        .fetch_one(&pool)
        .await
        .expect("count plans");
    assert_eq!(plans, 4);
}

#[tokio::test]
async fn migrate_with_a_bad_catalog_names_the_field_and_writes_nothing() {
    let (pool, db) = common::db::fresh_db().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = dir.path().join("plans.yaml");
    std::fs::write(
        &catalog,
        include_str!("../config/catalog.yaml").replacen("vcpu: 1", "vcpu: 0", 1),
    )
    .expect("write catalog");
    let out = cloudpods(
        &["migrate", "--catalog", catalog.to_str().expect("utf-8")],
        Some(&db.url()),
    );
    assert!(!out.status.success());
    let all = text(&out);
    assert!(all.contains("vcpu"), "error does not name the field: {all}");
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'cloud_pod_plans'",
    )
    .fetch_one(&pool)
    .await
    .expect("query");
    assert_eq!(tables, 0, "a rejected catalog must not migrate half-way");
}

#[test]
fn migrate_never_echoes_the_password() {
    let out = cloudpods(
        &["migrate"],
        Some("postgres://app:s3cret-pw@127.0.0.1:1/cloudpods"),
    );
    assert!(!out.status.success());
    let all = text(&out);
    assert!(
        all.contains("cannot connect to PostgreSQL at app@127.0.0.1:1/cloudpods"),
        "{all}"
    );
    assert!(!all.contains("s3cret-pw"), "password leaked: {all}");
}

#[test]
fn migrate_without_a_database_url_names_the_setting() {
    let out = cloudpods(&["migrate"], None);
    assert!(!out.status.success());
    let all = text(&out);
    assert!(all.contains("--database-url"), "{all}");
}

#[test]
fn crdgen_writes_what_is_committed_and_check_detects_drift() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().to_str().expect("utf-8");
    let out = cloudpods(&["crdgen", "--out-dir", out_dir], None);
    assert!(out.status.success(), "{}", text(&out));
    for file in ["cloudpods.yaml", "tenantquotas.yaml"] {
        let fresh = std::fs::read_to_string(dir.path().join(file)).expect("generated");
        let committed =
            std::fs::read_to_string(common::kube::crd_dir().join(file)).expect("committed");
        assert_eq!(fresh, committed, "{file} differs from crds/");
    }
    let clean = cloudpods(&["crdgen", "--out-dir", out_dir, "--check"], None);
    assert!(clean.status.success(), "{}", text(&clean));

    std::fs::write(dir.path().join("cloudpods.yaml"), "edited by hand\n").expect("write");
    let drift = cloudpods(&["crdgen", "--out-dir", out_dir, "--check"], None);
    assert!(!drift.status.success());
    assert!(text(&drift).contains("cloudpods.yaml"), "{}", text(&drift));
}

#[test]
fn token_mints_a_token_the_verifier_accepts_and_never_prints_the_secret() {
    use cloudpods::api::auth::{AuthSettings, JwtAlgorithm, Role, Verifier};
    let dir = tempfile::tempdir().unwrap();
    let secret = "a-test-secret-that-is-long-enough-for-hs256";
    let key = dir.path().join("jwt.key");
    std::fs::write(&key, format!("{secret}\n")).unwrap();
    let key = key.to_str().unwrap();
    let out = cloudpods(
        &[
            "token",
            "--signing-key-file",
            key,
            "--tenant",
            "acme",
            "--role",
            "admin",
            "--issuer",
            "mpanel",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let token = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(!text(&out).contains(secret));
    let verifier = Verifier::new(AuthSettings {
        algorithm: JwtAlgorithm::Hs256,
        key: secret.as_bytes().to_vec(),
        issuer: Some("mpanel".into()),
        audience: None,
        leeway: std::time::Duration::from_secs(5),
    })
    .unwrap();
    let caller = verifier
        .verify(Some(&format!("Bearer {}", token.trim())))
        .unwrap();
    assert_eq!(
        (caller.tenant_id.as_str(), caller.role),
        ("acme", Role::Admin)
    );

    let bad = cloudpods(
        &[
            "token",
            "--signing-key-file",
            key,
            "--tenant",
            "Not A Tenant",
        ],
        None,
    );
    assert!(!bad.status.success());
    assert!(text(&bad).contains("tenant"), "{}", text(&bad));
}

#[test]
fn api_refuses_a_short_secret_and_an_unknown_algorithm_without_echoing_them() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("jwt.key");
    std::fs::write(&key, "short-secret-xyz").unwrap();
    let key = key.to_str().unwrap();
    let url = Some("postgres://nobody:pw@127.0.0.1:1/none");
    let out = cloudpods(&["api", "--jwt-key-file", key], url);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("JWT settings"), "{t}");
    assert!(!t.contains("short-secret-xyz"), "{t}");
    let out = cloudpods(
        &["api", "--jwt-key-file", key, "--jwt-algorithm", "none"],
        url,
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("--jwt-algorithm"), "{}", text(&out));
}

#[tokio::test]
async fn api_serves_logs_without_secrets_and_stops_cleanly_on_sigterm() {
    use std::io::Read;
    use std::time::{Duration, Instant};

    let (_pool, db) = common::db::migrated_db().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let key = dir.path().join("jwt.key");
    std::fs::write(&key, &secret).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = dir.path().join("api.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloudpods"))
        .args([
            "--log-format",
            "json",
            "api",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--jwt-key-file",
            key.to_str().unwrap(),
            "--namespace",
            "cli-api",
        ])
        .env("DATABASE_URL", db.url())
        .env("KUBECONFIG", common::kube::kubeconfig())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("api.err")).unwrap())
        .spawn()
        .unwrap();

    let get = |path: &str, token: Option<&str>| -> Option<String> {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get("/readyz", None).is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
        assert!(child.try_wait().unwrap().is_none(), "api exited early");
        assert!(Instant::now() < deadline, "api not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = cloudpods::api::auth::Minter::new(
        cloudpods::api::auth::JwtAlgorithm::Hs256,
        secret.as_bytes(),
    )
    .unwrap()
    .mint(&cloudpods::api::auth::MintClaims {
        sub: "u-1".into(),
        tenant_id: "logcheck".into(),
        role: cloudpods::api::auth::Role::User,
        ttl: Duration::from_secs(60),
        issuer: None,
        audience: None,
    })
    .unwrap();
    let r = get("/api/cloud-pods/my-quota", Some(&token)).unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = get("/api/cloud-pods/my-quota", Some("forged.token.value")).unwrap();
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");

    // SIGTERM to the process this test started: it finishes and exits 0.
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "api did not stop within 15 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");

    let logs = std::fs::read_to_string(&log).unwrap()
        + &std::fs::read_to_string(dir.path().join("api.err")).unwrap();
    let access: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.to_string().contains("\"access\""))
        .collect();
    assert!(
        access.iter().any(|v| v.to_string().contains("logcheck")
            && v.to_string().contains("/api/cloud-pods/my-quota")),
        "no access line with tenant and route:\n{logs}"
    );
    assert!(
        access.iter().any(|v| v.to_string().contains("malformed")),
        "{logs}"
    );
    for secret_text in [
        token.as_str(),
        secret.as_str(),
        "forged.token.value",
        db.url().as_str(),
    ] {
        assert!(
            !logs.contains(secret_text),
            "a secret reached the logs:\n{logs}"
        );
    }
    assert!(logs.contains("shutdown requested"), "{logs}");
}
