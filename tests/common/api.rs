//! An in-process API server against the real test Kubernetes API server and a fresh
//! Postgres database, plus a small HTTP client and token helpers.

#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::Duration;

use cloudpods::api::auth::{AuthSettings, JwtAlgorithm, MintClaims, Minter, Role, Verifier};
use cloudpods::api::{self, AppState};
use cloudpods::quota::{QuotaLimits, Quotas};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::oneshot;

use super::db::{TestDb, migrated_db};
use super::kube::{ensure_crds, kubeconfig, unique_namespace};

/// The issuer and audience every test server requires.
pub const ISSUER: &str = "mpanel-test";
/// See [`ISSUER`].
pub const AUDIENCE: &str = "cloudpods-test";

/// A running API server.
pub struct TestApi {
    /// `http://127.0.0.1:port`.
    pub base: String,
    /// Its database.
    pub pool: PgPool,
    /// Namespace its CloudPods go to.
    pub namespace: String,
    /// Kubernetes client for assertions.
    pub kube: kube::Client,
    /// The server's state (to run its background tasks by hand).
    pub state: AppState,
    minter: Minter,
    shutdown: Option<oneshot::Sender<()>>,
    http: Client<HttpConnector, Full<Bytes>>,
    _db: TestDb,
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body as JSON (Null when empty or not JSON).
    pub body: Value,
}

impl Answer {
    /// The error code of an error body.
    pub fn code(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
    /// The field of an error body.
    pub fn field(&self) -> Option<&str> {
        self.body["field"].as_str()
    }
}

fn hs_secret() -> Vec<u8> {
    static S: OnceLock<Vec<u8>> = OnceLock::new();
    S.get_or_init(|| {
        format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        )
        .into_bytes()
    })
    .clone()
}

/// Settings for an HS256 server with issuer and audience.
pub fn hs256_settings() -> AuthSettings {
    AuthSettings {
        algorithm: JwtAlgorithm::Hs256,
        key: hs_secret(),
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        leeway: Duration::from_secs(5),
    }
}

/// A unique tenant id for one test.
pub fn tenant(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

impl TestApi {
    /// Starts a server with HS256 auth and the seed's quota defaults.
    pub async fn start() -> TestApi {
        Self::start_with(
            hs256_settings(),
            Minter::new(JwtAlgorithm::Hs256, &hs_secret()).unwrap(),
        )
        .await
    }

    /// Starts a server with the given verifier settings; `minter` signs the tokens tests use.
    pub async fn start_with(settings: AuthSettings, minter: Minter) -> TestApi {
        ensure_crds_once();
        let (pool, db) = migrated_db().await;
        let namespace = unique_namespace("api");
        let kube = kube_client().await;
        let quotas = Quotas::new(pool.clone(), QuotaLimits::default());
        let verifier = Verifier::new(settings).expect("verifier");
        let state = AppState::new(
            pool.clone(),
            quotas,
            verifier,
            kube.clone(),
            namespace.clone(),
        );
        let kept = state.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = api::serve_on(state, listener, async {
                let _ = rx.await;
            })
            .await;
        });
        let http = Client::builder(TokioExecutor::new()).build_http();
        TestApi {
            base: format!("http://{addr}"),
            pool,
            namespace,
            kube,
            state: kept,
            minter,
            shutdown: Some(tx),
            http,
            _db: db,
        }
    }

    /// A valid token for `tenant` with `role`.
    pub fn token(&self, tenant: &str, role: Role) -> String {
        self.minter
            .mint(&MintClaims {
                sub: format!("user-{tenant}"),
                tenant_id: tenant.to_string(),
                role,
                ttl: Duration::from_secs(600),
                issuer: Some(ISSUER.into()),
                audience: Some(AUDIENCE.into()),
            })
            .unwrap()
    }

    /// A user token for `tenant`.
    pub fn user(&self, tenant: &str) -> String {
        self.token(tenant, Role::User)
    }

    /// An admin token (of tenant `ops`).
    pub fn admin(&self) -> String {
        self.token("ops", Role::Admin)
    }

    /// Sends a request. `path` is below /api/cloud-pods unless it starts with `//`.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let raw = body.map(|b| serde_json::to_vec(b).unwrap());
        self.raw(
            method,
            path,
            token,
            raw,
            &[("content-type", "application/json")],
        )
        .await
    }

    /// Sends a request with a raw body and extra headers.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let url = match path.strip_prefix("//") {
            Some(p) => format!("{}/{p}", self.base),
            None => format!("{}/api/cloud-pods{path}", self.base),
        };
        let mut req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(url);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
        } else {
            for (k, v) in headers.iter().filter(|(k, _)| *k != "content-type") {
                req = req.header(*k, *v);
            }
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), self.http.request(req))
            .await
            .expect("API answered within 30 s")
            .expect("HTTP request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    /// Orders a `student` pod named `name` for `tenant`; panics unless 202.
    pub async fn order(&self, tenant: &str, name: &str) -> Value {
        let a = self
            .call(
                "POST",
                "/order",
                Some(&self.user(tenant)),
                Some(&serde_json::json!({
                    "planCode": "student", "blueprint": "ubuntu-24-minimal", "name": name
                })),
            )
            .await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
        a.body
    }

    /// [`TestApi::order`], returning just the pod id.
    pub async fn order_id(&self, tenant: &str, name: &str) -> String {
        self.order(tenant, name).await["podId"]
            .as_str()
            .expect("podId")
            .to_string()
    }

    /// Sets a tenant's quota through the admin endpoint.
    pub async fn set_quota(&self, tenant: &str, pods: i64, cores: i64, mem: i64, disk: i64) {
        let a = self
            .call(
                "POST",
                &format!("/tenants/{tenant}/quota"),
                Some(&self.admin()),
                Some(&serde_json::json!({
                    "maxPods": pods, "maxCpuCores": cores, "maxMemoryMb": mem, "maxDiskGb": disk
                })),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    }

    /// Marks a pod active with a VMID, node and IP, as the controller would.
    pub async fn make_active(&self, pod_id: &str, vmid: i32) {
        sqlx::query(
            "UPDATE cloud_pods SET status = 'active', vmid = $2, node = 'pve1', \
             ip_address = '10.0.0.10' WHERE id = $1",
        )
        .bind(pod_id)
        .bind(vmid)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// The CloudPods API of this server's namespace.
    pub fn pods(&self) -> kube::Api<cloudpods::crd::CloudPod> {
        kube::Api::namespaced(self.kube.clone(), &self.namespace)
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn ensure_crds_once() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(ensure_crds);
}

/// A kube client for the test API server.
pub async fn kube_client() -> kube::Client {
    let path = kubeconfig();
    cloudpods::api::kube_client(Some(std::path::Path::new(&path)))
        .await
        .expect("kube client")
}

/// Checks that `value` has the shape of component schema `name` in the OpenAPI `doc`:
/// required properties present, no undocumented properties, types right; recursive.
pub fn assert_conforms(doc: &Value, name: &str, value: &Value) {
    let schema = &doc["components"]["schemas"][name];
    assert!(schema.is_object(), "no schema {name}");
    conforms(doc, schema, value, name);
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) {
    let schema = resolve(doc, schema);
    if value.is_null() {
        return; // nullable fields: presence is checked through `required`
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            conforms(doc, s, value, at);
        }
        return;
    }
    if let Some(any) = schema
        .get("anyOf")
        .or_else(|| schema.get("oneOf"))
        .and_then(Value::as_array)
    {
        assert!(
            any.iter()
                .any(|s| std::panic::catch_unwind(|| conforms(doc, s, value, at)).is_ok()),
            "{at}: {value} matches none of the alternatives"
        );
        return;
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let obj = value
                .as_object()
                .unwrap_or_else(|| panic!("{at}: not an object: {value}"));
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for key in obj.keys() {
                    assert!(props.contains_key(key), "{at}: undocumented property {key}");
                }
                for (k, s) in props {
                    if let Some(v) = obj.get(k) {
                        conforms(doc, s, v, &format!("{at}.{k}"));
                    }
                }
            }
            if let Some(req) = schema.get("required").and_then(Value::as_array) {
                for r in req {
                    let r = r.as_str().unwrap();
                    assert!(obj.contains_key(r), "{at}: required property {r} missing");
                }
            }
        }
        Some("array") => {
            let arr = value
                .as_array()
                .unwrap_or_else(|| panic!("{at}: not an array"));
            if let Some(items) = schema.get("items") {
                for (i, v) in arr.iter().enumerate() {
                    conforms(doc, items, v, &format!("{at}[{i}]"));
                }
            }
        }
        Some("string") => assert!(value.is_string(), "{at}: not a string: {value}"),
        Some("integer") => assert!(
            value.is_i64() || value.is_u64(),
            "{at}: not an integer: {value}"
        ),
        Some("number") => assert!(value.is_number(), "{at}: not a number: {value}"),
        Some("boolean") => assert!(value.is_boolean(), "{at}: not a boolean: {value}"),
        _ => {}
    }
}
