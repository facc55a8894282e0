//! The mPanel REST API (`cloudpods api`): validates, authenticates, checks quota, writes CRs.
//!
//! It reads the canonical Postgres tables, writes CloudPod and TenantQuota resources (field
//! manager `cloudpods-api`), and never talks to Proxmox. Every route is declared once in
//! [`routes`], which feeds both the router and the OpenAPI document.

pub mod admin;
pub mod auth;
pub mod catalog;
pub mod cloudpod;
pub mod error;
pub mod extract;
pub mod model;
pub mod openapi;
pub mod pods;
pub mod quota;
pub mod reaper;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{MethodRouter, get, post};
use kube::Api;
use sqlx::PgPool;

use crate::crd::{CloudPod, TenantQuota};
use crate::quota::Quotas;

pub use error::{ApiError, ErrorBody};

/// The path prefix of every API route.
pub const BASE: &str = "/api/cloud-pods";
/// The field manager of every write the API makes.
pub const FIELD_MANAGER: &str = "cloudpods-api";
/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Label carrying the tenant on every CloudPod the API creates.
pub const TENANT_LABEL: &str = "cloudpods.migrahosting.com/tenant";
/// Annotation carrying the provision job id on CloudPods the API creates.
pub const JOB_ANNOTATION: &str = "cloudpods.migrahosting.com/job-id";

/// Everything a request handler needs.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// The shared parts behind [`AppState`].
pub struct Inner {
    /// Database pool.
    pub pool: PgPool,
    /// Quota rules.
    pub quotas: Quotas,
    /// JWT verifier.
    pub verifier: auth::Verifier,
    /// CloudPods in the pods namespace.
    pub pods: Api<CloudPod>,
    /// TenantQuotas (cluster-scoped).
    pub tenant_quotas: Api<TenantQuota>,
    /// The Kubernetes client (for other namespaces).
    pub client: kube::Client,
    /// Namespace CloudPods are created in.
    pub namespace: String,
    /// Timeout of one Kubernetes call.
    pub kube_timeout: Duration,
    /// Prometheus metrics, served at `/metrics`.
    pub metrics: ApiMetrics,
}

/// The API's metrics.
#[derive(Clone)]
pub struct ApiMetrics {
    /// Where they render from.
    pub registry: crate::metrics::Registry,
    /// Requests by method, route pattern and status.
    pub requests: crate::metrics::CounterVec,
    /// Latency by method and route pattern.
    pub duration: crate::metrics::HistogramVec,
    /// Failed requests by error code (QUOTA_EXCEEDED, UNAUTHORIZED, ...).
    pub errors: crate::metrics::CounterVec,
    /// Authentication failures by reason (expired, bad_signature, ...).
    pub auth_failures: crate::metrics::CounterVec,
    /// Stale reservations cleaned up, by outcome (released, adopted).
    pub reservations: crate::metrics::CounterVec,
}

impl ApiMetrics {
    /// Registers the API's metric families.
    pub fn new() -> Self {
        let registry = crate::metrics::Registry::default();
        ApiMetrics {
            requests: registry.counter(
                "cloudpods_api_requests_total",
                "API requests by method, route pattern and status.",
                &["method", "route", "status"],
            ),
            duration: registry.histogram(
                "cloudpods_api_request_duration_seconds",
                "API request latency by method and route pattern.",
                &["method", "route"],
                crate::metrics::LATENCY_BUCKETS,
            ),
            errors: registry.counter(
                "cloudpods_api_errors_total",
                "Failed API requests by error code.",
                &["code"],
            ),
            auth_failures: registry.counter(
                "cloudpods_api_auth_failures_total",
                "Rejected bearer tokens by reason.",
                &["reason"],
            ),
            reservations: registry.counter(
                "cloudpods_api_stale_reservations_total",
                "Reservations of orders that died before their CloudPod was written, by outcome.",
                &["outcome"],
            ),
            registry,
        }
    }
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AppState {
    /// Builds the state.
    pub fn new(
        pool: PgPool,
        quotas: Quotas,
        verifier: auth::Verifier,
        client: kube::Client,
        namespace: String,
    ) -> Self {
        AppState(Arc::new(Inner {
            pods: Api::namespaced(client.clone(), &namespace),
            tenant_quotas: Api::all(client.clone()),
            client,
            pool,
            quotas,
            verifier,
            namespace,
            kube_timeout: Duration::from_secs(10),
            metrics: ApiMetrics::new(),
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// Any authenticated user (acts in the token's tenant).
    User,
    /// Authenticated with role admin.
    Admin,
}

/// One route: its method, path, handler and the facts the OpenAPI document needs.
pub struct Route {
    /// HTTP method (upper case).
    pub method: &'static str,
    /// Path in axum syntax (`{id}` parameters).
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// The OpenAPI document of the operation.
    pub doc: openapi::Operation,
    /// The handler.
    pub handler: MethodRouter<AppState>,
}

/// Every route of the API, in documentation order.
pub fn routes() -> Vec<Route> {
    use openapi::Operation as Op;
    let r = |method, path, access, doc, handler| Route {
        method,
        path,
        access,
        doc,
        handler,
    };
    vec![
        r(
            "GET",
            "/plans",
            Access::Public,
            Op::plans(),
            get(catalog::list_plans),
        ),
        r(
            "GET",
            "/plans/{code}",
            Access::Public,
            Op::plan(),
            get(catalog::get_plan),
        ),
        r(
            "GET",
            "/compare",
            Access::Public,
            Op::compare(),
            get(catalog::compare),
        ),
        r(
            "POST",
            "/order",
            Access::User,
            Op::order(),
            post(pods::order),
        ),
        r("GET", "", Access::User, Op::list(), get(pods::list)),
        r(
            "GET",
            "/my-quota",
            Access::User,
            Op::my_quota(),
            get(quota::my_quota),
        ),
        r(
            "GET",
            "/check-quota",
            Access::User,
            Op::check_quota(),
            get(quota::check_quota),
        ),
        r(
            "GET",
            "/tenants/{id}/quota",
            Access::Admin,
            Op::tenant_quota(),
            get(quota::tenant_quota),
        ),
        r(
            "POST",
            "/tenants/{id}/quota",
            Access::Admin,
            Op::set_tenant_quota(),
            post(quota::set_tenant_quota),
        ),
        r(
            "GET",
            "/admin/stats",
            Access::Admin,
            Op::admin_stats(),
            get(admin::stats),
        ),
        r(
            "GET",
            "/{id}",
            Access::User,
            Op::detail(),
            get(pods::detail),
        ),
        r(
            "POST",
            "/{id}/destroy",
            Access::User,
            Op::destroy(),
            post(pods::destroy),
        ),
        r(
            "POST",
            "/{id}/backup",
            Access::User,
            Op::backup(),
            post(pods::backup),
        ),
        r(
            "GET",
            "/{id}/health",
            Access::User,
            Op::health(),
            get(pods::health),
        ),
        r(
            "POST",
            "/{id}/scale",
            Access::User,
            Op::scale(),
            post(pods::scale),
        ),
        r(
            "GET",
            "/openapi.json",
            Access::Public,
            Op::openapi(),
            get(openapi::serve),
        ),
    ]
}

/// The whole HTTP application: API routes, health probes, fallbacks and middleware.
pub fn router(state: AppState) -> Router {
    let mut api: Router<AppState> = Router::new();
    // Routes sharing a path (GET and POST /tenants/{id}/quota) are merged per path.
    let mut by_path: Vec<(String, MethodRouter<AppState>)> = Vec::new();
    for route in routes() {
        let path = format!("{BASE}{}", route.path);
        match by_path.iter_mut().find(|(p, _)| *p == path) {
            Some((_, m)) => *m = std::mem::replace(m, MethodRouter::new()).merge(route.handler),
            None => by_path.push((path, route.handler)),
        }
    }
    for (path, handler) in by_path {
        if path == BASE {
            api = api.route(&format!("{BASE}/"), handler.clone());
        }
        api = api.route(&path, handler);
    }
    api.route("/healthz", get(extract::healthz))
        .route("/readyz", get(extract::readyz))
        .route("/metrics", get(extract::metrics))
        .fallback(extract::no_route)
        .method_not_allowed_fallback(extract::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            extract::request_scope,
        ))
        .with_state(state)
}

/// Serves the API on `listener` with the stale-reservation sweep beside it, both until
/// `shutdown` resolves (in-flight requests finish, then the sweep stops).
pub async fn serve_with_sweep(
    state: AppState,
    listener: tokio::net::TcpListener,
    sweep: reaper::ReaperSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reaper = tokio::spawn(reaper::run(state.clone(), sweep, stop_rx));
    let served = serve_on(state, listener, async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    })
    .await;
    let _ = reaper.await;
    served
}

/// Serves the API on an already bound listener (tests bind 127.0.0.1:0).
pub async fn serve_on(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| anyhow::anyhow!("API server failed: {e}"))
}

/// Builds a Kubernetes client from a kubeconfig file, or the environment when none is given.
pub async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    use anyhow::Context;
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("invalid kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig given and no in-cluster configuration found")?,
    };
    kube::Client::try_from(config).context("cannot build the Kubernetes client")
}

/// Reads a key file, naming the setting (never the content) on failure.
pub fn read_key_file(path: &std::path::Path, setting: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("{setting}: cannot read {}: {e}", path.display()))
}

/// Parses an algorithm setting and reads its key file. A trailing newline (as `echo > file`
/// leaves) is not part of an HS256 secret.
fn jwt_key(
    algorithm: &str,
    algorithm_setting: &str,
    path: &std::path::Path,
    path_setting: &str,
) -> anyhow::Result<(auth::JwtAlgorithm, Vec<u8>)> {
    let algorithm: auth::JwtAlgorithm = algorithm
        .parse()
        .map_err(|e| anyhow::anyhow!("{algorithm_setting}: {e}"))?;
    let mut key = read_key_file(path, path_setting)?;
    if algorithm == auth::JwtAlgorithm::Hs256 {
        while key.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            key.pop();
        }
    }
    Ok((algorithm, key))
}

/// Verifier settings from the command line.
pub fn auth_settings(jwt: &crate::cli::JwtArgs) -> anyhow::Result<auth::AuthSettings> {
    let (algorithm, key) = jwt_key(
        &jwt.jwt_algorithm,
        "--jwt-algorithm",
        &jwt.jwt_key_file,
        "--jwt-key-file",
    )?;
    Ok(auth::AuthSettings {
        algorithm,
        key,
        issuer: jwt.jwt_issuer.clone(),
        audience: jwt.jwt_audience.clone(),
        leeway: Duration::from_secs(jwt.jwt_leeway_seconds),
    })
}

/// `cloudpods api`: connect everything and serve until SIGINT/SIGTERM.
pub async fn run(args: &crate::cli::ApiArgs) -> anyhow::Result<()> {
    let verifier = auth::Verifier::new(auth_settings(&args.jwt)?)
        .map_err(|e| anyhow::anyhow!("JWT settings: {e}"))?;
    if !validate::is_dns_label(&args.kube.namespace) {
        anyhow::bail!("--namespace must be a DNS label");
    }
    let pool = crate::store::connect(&args.db).await?;
    crate::store::check_schema(&pool).await?;
    let client = kube_client(args.kube.kubeconfig.as_deref()).await?;
    let quotas = Quotas::new(pool.clone(), args.quota.limits());
    let state = AppState::new(pool, quotas, verifier, client, args.kube.namespace.clone());
    let addr = args.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    tracing::info!(%addr, "API listening");
    let sweep = reaper::ReaperSettings {
        ttl: args.reservation_ttl,
        interval: args.reservation_sweep_interval,
    };
    serve_with_sweep(state, listener, sweep, shutdown_signal()).await
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}

/// `cloudpods token`: mint one token and return it.
pub fn mint_token(args: &crate::cli::TokenArgs) -> anyhow::Result<String> {
    let (algorithm, key) = jwt_key(
        &args.algorithm,
        "--algorithm",
        &args.signing_key_file,
        "--signing-key-file",
    )?;
    let minter = auth::Minter::new(algorithm, &key).map_err(|e| anyhow::anyhow!("{e}"))?;
    let role = if args.role == "admin" {
        auth::Role::Admin
    } else {
        auth::Role::User
    };
    minter
        .mint(&auth::MintClaims {
            sub: args.sub.clone(),
            tenant_id: args.tenant.clone(),
            role,
            ttl: args.ttl,
            issuer: args.issuer.clone(),
            audience: args.audience.clone(),
        })
        .map_err(|e| anyhow::anyhow!("{e}"))
}
