//! The REST API's authorization matrix and its table of bad inputs, against the real
//! Kubernetes API server and Postgres.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cloudpods::api::auth::{AuthSettings, JwtAlgorithm, Minter};
use common::api::{AUDIENCE, ISSUER, TestApi, hs256_settings, tenant};
use hyper::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(tenant: &str, role: &str) -> Value {
    json!({
        "sub": format!("user-{tenant}"), "tenant_id": tenant, "role": role,
        "iss": ISSUER, "aud": AUDIENCE, "iat": now(), "exp": now() + 600,
    })
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn b64(data: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// An unsigned token (`alg: none`).
fn alg_none(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    )
}

/// The protected routes, with `{id}` for the victim pod and `{t}` for a tenant.
const PROTECTED: &[(&str, &str, Option<&str>)] = &[
    (
        "POST",
        "/order",
        Some(r#"{"planCode":"student","blueprint":"ubuntu-24-minimal","name":"m"}"#),
    ),
    ("GET", "", None),
    ("GET", "/{id}", None),
    ("POST", "/{id}/backup", None),
    ("GET", "/{id}/health", None),
    ("POST", "/{id}/scale", Some(r#"{"cpuCores":1}"#)),
    ("GET", "/my-quota", None),
    ("GET", "/check-quota?planCode=student", None),
    ("GET", "/tenants/{t}/quota", None),
    (
        "POST",
        "/tenants/{t}/quota",
        Some(r#"{"maxPods":5,"maxCpuCores":8,"maxMemoryMb":16384,"maxDiskGb":400}"#),
    ),
    ("GET", "/admin/stats", None),
    // Last: for the owner it deletes the pod the other routes act on.
    ("POST", "/{id}/destroy", None),
];

fn is_admin_route(path: &str) -> bool {
    path.starts_with("/tenants") || path.starts_with("/admin")
}

fn is_pod_route(path: &str) -> bool {
    path.starts_with("/{id}")
}

#[tokio::test]
async fn authorization_matrix() {
    let api = TestApi::start().await;
    let victim = tenant("victim");
    let intruder = tenant("intruder");
    let pod = api.order_id(&victim, "precious").await;
    api.make_active(&pod, 31337).await;
    let secret = hs256_settings().key;

    let mut expired = claims(&victim, "user");
    expired["exp"] = json!(now() - 3600);
    let mut future = claims(&victim, "user");
    future["nbf"] = json!(now() + 3600);
    let mut wrong_aud = claims(&victim, "user");
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = claims(&victim, "user");
    wrong_iss["iss"] = json!("evil");
    let mut no_tenant = claims(&victim, "user");
    no_tenant.as_object_mut().unwrap().remove("tenant_id");
    let mut superuser = claims(&victim, "user");
    superuser["role"] = json!("superuser");

    let credentials: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("garbage", Some("not.a.jwt".into())),
        (
            "bad signature",
            Some(hs256(
                b"another-secret-that-is-long-enough-000",
                &claims(&victim, "admin"),
            )),
        ),
        ("alg none", Some(alg_none(&claims(&victim, "admin")))),
        ("expired", Some(hs256(&secret, &expired))),
        ("not yet valid", Some(hs256(&secret, &future))),
        ("wrong audience", Some(hs256(&secret, &wrong_aud))),
        ("wrong issuer", Some(hs256(&secret, &wrong_iss))),
        ("no tenant claim", Some(hs256(&secret, &no_tenant))),
        ("unknown role", Some(hs256(&secret, &superuser))),
        ("other tenant", Some(api.user(&intruder))),
        ("owner", Some(api.user(&victim))),
        ("admin", Some(api.admin())),
    ];

    let mut table =
        String::from("credential       | route                              | status\n");
    for (name, token) in &credentials {
        for (method, path, body) in PROTECTED {
            let concrete = path.replace("{id}", &pod).replace("{t}", &victim);
            let raw = body.map(|b| b.as_bytes().to_vec());
            let a = api
                .raw(
                    method,
                    &concrete,
                    token.as_deref(),
                    raw,
                    &[("content-type", "application/json")],
                )
                .await;
            table.push_str(&format!(
                "{name:<16} | {method:<4} {path:<30} | {}\n",
                a.status.as_u16()
            ));
            let want: &[StatusCode] = match *name {
                "owner" if is_admin_route(path) => &[StatusCode::FORBIDDEN],
                "owner" if *path == "/order" => &[StatusCode::ACCEPTED, StatusCode::FORBIDDEN],
                "owner" => &[StatusCode::OK, StatusCode::ACCEPTED],
                "other tenant" if is_admin_route(path) => &[StatusCode::FORBIDDEN],
                // Another tenant's pod is indistinguishable from a missing one.
                "other tenant" if is_pod_route(path) => &[StatusCode::NOT_FOUND],
                // Tenant-scoped routes answer for the intruder's own (empty) tenant.
                "other tenant" => &[StatusCode::OK, StatusCode::ACCEPTED],
                "admin" if is_admin_route(path) => &[StatusCode::OK],
                // The admin acts in its own tenant on pod routes: the victim's pod is not there.
                "admin" if is_pod_route(path) => &[StatusCode::NOT_FOUND],
                "admin" => &[StatusCode::OK, StatusCode::ACCEPTED],
                _ => &[StatusCode::UNAUTHORIZED],
            };
            assert!(
                want.contains(&a.status),
                "{name} on {method} {path}: got {} {:?}, want {want:?}",
                a.status,
                a.body
            );
            if a.status == StatusCode::UNAUTHORIZED {
                assert_eq!(a.code(), "UNAUTHORIZED");
                let text = a.body.to_string();
                if let Some(t) = token {
                    assert!(!text.contains(t.as_str()), "token echoed");
                }
            }
            if *name == "other tenant" && is_pod_route(path) {
                let missing = api
                    .raw(
                        method,
                        &path.replace("{id}", "pod-does-not-exist"),
                        token.as_deref(),
                        body.map(|b| b.as_bytes().to_vec()),
                        &[("content-type", "application/json")],
                    )
                    .await;
                assert_eq!(missing.status, a.status);
                assert_eq!(
                    missing.body["message"], a.body["message"],
                    "404s must be identical"
                );
                let by_vmid = api
                    .raw(
                        method,
                        &path.replace("{id}", "31337"),
                        token.as_deref(),
                        body.map(|b| b.as_bytes().to_vec()),
                        &[("content-type", "application/json")],
                    )
                    .await;
                assert_eq!(
                    by_vmid.status,
                    StatusCode::NOT_FOUND,
                    "{method} {path} by VMID"
                );
            }
        }
        if *name == "other tenant" {
            // The intruder changed nothing: the victim's CloudPod still exists with no backup
            // request, and no job was recorded for the intruder's tenant on it.
            let cr = api.pods().get_opt(&pod).await.unwrap();
            assert!(cr.is_some(), "the victim's pod was deleted");
            let intruder_jobs: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM cloud_pod_jobs WHERE tenant_id = $1 AND pod_id = $2",
            )
            .bind(&intruder)
            .bind(&pod)
            .fetch_one(&api.pool)
            .await
            .unwrap();
            assert_eq!(intruder_jobs, 0);
            assert!(cr.unwrap().spec.backup_request.is_none());
        }
    }
    println!("{table}");
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test]
async fn rs256_server_refuses_hs256_tokens_signed_with_its_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("rsa.pem");
    let p = private.to_str().unwrap();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        p,
    ]);
    let public = openssl(&["pkey", "-in", p, "-pubout"]);
    let private_pem = std::fs::read(&private).unwrap();
    let settings = AuthSettings {
        algorithm: JwtAlgorithm::Rs256,
        key: public.clone(),
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        leeway: Duration::from_secs(5),
    };
    let api = TestApi::start_with(
        settings,
        Minter::new(JwtAlgorithm::Rs256, &private_pem).unwrap(),
    )
    .await;
    let t = tenant("rsa");

    let good = api
        .call("GET", "/my-quota", Some(&api.user(&t)), None)
        .await;
    assert_eq!(good.status, StatusCode::OK, "{:?}", good.body);

    // The classic confusion: HMAC keyed with the server's public key.
    let forged = hs256(&public, &claims(&t, "admin"));
    let a = api.call("GET", "/admin/stats", Some(&forged), None).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNAUTHORIZED, "UNAUTHORIZED")
    );
    let a = api
        .call(
            "GET",
            "/admin/stats",
            Some(&alg_none(&claims(&t, "admin"))),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

/// (method, path, body, expected status, expected error code, expected field)
type Case = (
    &'static str,
    String,
    Option<Vec<u8>>,
    u16,
    &'static str,
    Option<&'static str>,
);

fn json_body(v: Value) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(&v).unwrap())
}

fn order(overrides: Value) -> Option<Vec<u8>> {
    let mut body = json!({ "planCode": "student", "blueprint": "ubuntu-24-minimal", "name": "ok" });
    for (k, v) in overrides.as_object().unwrap() {
        if v.is_null() {
            body.as_object_mut().unwrap().remove(k);
        } else {
            body[k] = v.clone();
        }
    }
    json_body(body)
}

#[tokio::test]
async fn bad_inputs_are_refused_with_the_field_named_and_nothing_created() {
    let api = TestApi::start().await;
    let t = tenant("bad");
    let token = api.user(&t);
    let pod = api.order_id(&t, "target").await;
    let long = "a".repeat(300);
    let hostile = [
        ";reboot", "$(id)", "`id`", "a'b", "a\"b", "a\nb", "a\u{0}b", "ünï", "a b", "../x",
    ];

    let mut cases: Vec<Case> = vec![
        (
            "POST",
            "/order".into(),
            order(json!({"planCode": null})),
            400,
            "VALIDATION_FAILED",
            Some("planCode"),
        ),
        (
            "POST",
            "/order".into(),
            order(json!({"blueprint": null})),
            400,
            "VALIDATION_FAILED",
            Some("blueprint"),
        ),
        (
            "POST",
            "/order".into(),
            order(json!({"name": null})),
            400,
            "VALIDATION_FAILED",
            Some("name"),
        ),
        (
            "POST",
            "/order".into(),
            order(json!({"planCode": 5})),
            400,
            "VALIDATION_FAILED",
            Some("planCode"),
        ),
        (
            "POST",
            "/order".into(),
            order(json!({"name": ["x"]})),
            400,
            "VALIDATION_FAILED",
            Some("name"),
        ),
        (
            "POST",
            "/order".into(),
            order(json!({"planCode": "gold"})),
            422,
            "UNKNOWN_PLAN",
            Some("planCode"),
        ),
        (
            "POST",
            "/order".into(),
            order(json!({"blueprint": "windows-95"})),
            422,
            "UNKNOWN_BLUEPRINT",
            Some("blueprint"),
        ),
        (
            "POST",
            "/order".into(),
            order(json!({"name": long})),
            400,
            "VALIDATION_FAILED",
            Some("name"),
        ),
        (
            "POST",
            "/order".into(),
            order(json!({"name": "UPPER"})),
            400,
            "VALIDATION_FAILED",
            Some("name"),
        ),
        (
            "POST",
            "/order".into(),
            order(json!({"surprise": 1})),
            400,
            "VALIDATION_FAILED",
            Some("surprise"),
        ),
        (
            "POST",
            "/order".into(),
            order(json!({"options": {"user": "root"}})),
            400,
            "VALIDATION_FAILED",
            Some("options.user"),
        ),
        (
            "POST",
            "/order".into(),
            order(json!({"options": {"sshPublicKeys": ["ssh-ed25519 AAAA; rm -rf /"]}})),
            400,
            "VALIDATION_FAILED",
            Some("options.sshPublicKeys[0]"),
        ),
        (
            "POST",
            "/order".into(),
            order(json!({"options": {"powerState": "Exploded"}})),
            400,
            "VALIDATION_FAILED",
            Some("options.powerState"),
        ),
        (
            "POST",
            "/order".into(),
            order(json!({"orderId": ""})),
            400,
            "VALIDATION_FAILED",
            Some("orderId"),
        ),
        (
            "POST",
            "/order".into(),
            Some(b"{\"planCode\": ".to_vec()),
            400,
            "MALFORMED_JSON",
            None,
        ),
        (
            "POST",
            "/order".into(),
            Some(b"[1,2]".to_vec()),
            400,
            "VALIDATION_FAILED",
            Some("body"),
        ),
        (
            "POST",
            "/order".into(),
            Some(Vec::new()),
            400,
            "MALFORMED_JSON",
            None,
        ),
        (
            "POST",
            "/order".into(),
            Some(vec![b' '; 70 * 1024]),
            413,
            "PAYLOAD_TOO_LARGE",
            None,
        ),
        (
            "POST",
            format!("/{pod}/scale"),
            json_body(json!({})),
            400,
            "VALIDATION_FAILED",
            Some("body"),
        ),
        (
            "POST",
            format!("/{pod}/scale"),
            json_body(json!({"cpuCores": 0})),
            400,
            "VALIDATION_FAILED",
            Some("cpuCores"),
        ),
        (
            "POST",
            format!("/{pod}/scale"),
            json_body(json!({"cpuCores": 65})),
            400,
            "VALIDATION_FAILED",
            Some("cpuCores"),
        ),
        (
            "POST",
            format!("/{pod}/scale"),
            json_body(json!({"memoryMb": 256})),
            400,
            "VALIDATION_FAILED",
            Some("memoryMb"),
        ),
        (
            "POST",
            format!("/{pod}/scale"),
            json_body(json!({"diskGb": 5000})),
            400,
            "VALIDATION_FAILED",
            Some("diskGb"),
        ),
        (
            "POST",
            format!("/{pod}/scale"),
            json_body(json!({"cpuCores": "2"})),
            400,
            "VALIDATION_FAILED",
            Some("cpuCores"),
        ),
        (
            "POST",
            format!("/{pod}/scale"),
            json_body(json!({"cpuCores": 2.5})),
            400,
            "VALIDATION_FAILED",
            Some("cpuCores"),
        ),
        (
            "GET",
            "?page=0".into(),
            None,
            400,
            "VALIDATION_FAILED",
            Some("page"),
        ),
        (
            "GET",
            "?pageSize=1000".into(),
            None,
            400,
            "VALIDATION_FAILED",
            Some("pageSize"),
        ),
        (
            "GET",
            "?status=exploded".into(),
            None,
            400,
            "VALIDATION_FAILED",
            Some("status"),
        ),
        (
            "GET",
            "?sort=name".into(),
            None,
            400,
            "VALIDATION_FAILED",
            Some("sort"),
        ),
        (
            "GET",
            "?page=1&page=2".into(),
            None,
            400,
            "VALIDATION_FAILED",
            Some("page"),
        ),
        (
            "GET",
            "/check-quota".into(),
            None,
            400,
            "VALIDATION_FAILED",
            Some("planCode"),
        ),
        (
            "GET",
            "/check-quota?planCode=gold".into(),
            None,
            422,
            "UNKNOWN_PLAN",
            Some("planCode"),
        ),
        (
            "GET",
            "/check-quota?planCode=%3Breboot".into(),
            None,
            400,
            "VALIDATION_FAILED",
            Some("planCode"),
        ),
        (
            "GET",
            "/pod-UPPER".into(),
            None,
            400,
            "VALIDATION_FAILED",
            Some("id"),
        ),
        (
            "GET",
            "/12".into(),
            None,
            400,
            "VALIDATION_FAILED",
            Some("id"),
        ),
        (
            "GET",
            "/pod-x%3Bid".into(),
            None,
            400,
            "VALIDATION_FAILED",
            Some("id"),
        ),
        ("GET", "/pod-missing".into(), None, 404, "NOT_FOUND", None),
        (
            "POST",
            format!("/{pod}/destroy"),
            Some(b"{not json".to_vec()),
            400,
            "MALFORMED_JSON",
            None,
        ),
        (
            "POST",
            format!("/{pod}/backup"),
            Some(b"[]".to_vec()),
            400,
            "VALIDATION_FAILED",
            Some("body"),
        ),
        (
            "POST",
            "/pod-UPPER/destroy".into(),
            None,
            400,
            "VALIDATION_FAILED",
            Some("id"),
        ),
        (
            "POST",
            "/99/backup".into(),
            None,
            400,
            "VALIDATION_FAILED",
            Some("id"),
        ),
        (
            "GET",
            "/pod-x%24%28id%29/health".into(),
            None,
            400,
            "VALIDATION_FAILED",
            Some("id"),
        ),
        (
            "GET",
            "/plans/%3Bx".into(),
            None,
            400,
            "VALIDATION_FAILED",
            Some("code"),
        ),
        (
            "GET",
            "/tenants/x/quota".into(),
            None,
            403,
            "FORBIDDEN",
            None,
        ),
    ];
    for h in hostile {
        cases.push((
            "POST",
            "/order".into(),
            order(json!({"name": h})),
            400,
            "VALIDATION_FAILED",
            Some("name"),
        ));
        cases.push((
            "POST",
            "/order".into(),
            order(json!({"planCode": h})),
            400,
            "VALIDATION_FAILED",
            Some("planCode"),
        ));
        cases.push((
            "POST",
            "/order".into(),
            order(json!({"options": {"user": h}})),
            400,
            "VALIDATION_FAILED",
            Some("options.user"),
        ));
        cases.push(("POST", "/order".into(), order(json!({"options": {"sshPublicKeys": [format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 {h}")]}})), 400, "VALIDATION_FAILED", Some("options.sshPublicKeys[0]")));
    }

    for (method, path, body, status, code, field) in &cases {
        let a = api
            .raw(
                method,
                path,
                Some(&token),
                body.clone(),
                &[("content-type", "application/json")],
            )
            .await;
        assert_eq!(
            a.status.as_u16(),
            *status,
            "{method} {path} {:?}: {:?}",
            body.as_ref()
                .map(|b| String::from_utf8_lossy(&b[..b.len().min(200)]).to_string()),
            a.body
        );
        assert_eq!(a.code(), *code, "{method} {path}: {:?}", a.body);
        assert_eq!(a.field(), *field, "{method} {path}: {:?}", a.body);
        assert!(a.body["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(a.body["requestId"].is_string());
    }

    // Wrong content type, and the admin route's own inputs.
    let a = api
        .raw(
            "POST",
            "/order",
            Some(&token),
            order(json!({})),
            &[("content-type", "text/plain")],
        )
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code()),
        (415, "UNSUPPORTED_MEDIA_TYPE")
    );
    let admin = api.admin();
    let a = api
        .call(
            "POST",
            "/tenants/Bad_Tenant/quota",
            Some(&admin),
            Some(&json!({"maxPods": 1, "maxCpuCores": 1, "maxMemoryMb": 1, "maxDiskGb": 1})),
        )
        .await;
    assert_eq!((a.status.as_u16(), a.field()), (400, Some("id")));
    let a = api
        .call(
            "POST",
            &format!("/tenants/{t}/quota"),
            Some(&admin),
            Some(&json!({"maxPods": -1, "maxCpuCores": 1, "maxMemoryMb": 1, "maxDiskGb": 1})),
        )
        .await;
    assert_eq!((a.status.as_u16(), a.field()), (400, Some("maxPods")));
    let a = api
        .call(
            "POST",
            &format!("/tenants/{t}/quota"),
            Some(&admin),
            Some(&json!({"maxPods": 1})),
        )
        .await;
    assert_eq!((a.status.as_u16(), a.field()), (400, Some("maxCpuCores")));

    // Nothing beyond the one good order was created.
    let pods: i64 = sqlx::query_scalar("SELECT count(*) FROM cloud_pods WHERE tenant_id = $1")
        .bind(&t)
        .fetch_one(&api.pool)
        .await
        .unwrap();
    assert_eq!(pods, 1);
    let crs = api.pods().list(&Default::default()).await.unwrap();
    assert_eq!(crs.items.len(), 1);
    println!("{} bad-input cases refused as expected", cases.len() + 4);
}
