//! Request plumbing: request ids and the access log, authentication extractors, strict JSON
//! and query parsing with errors that name the field, and the probe and fallback handlers.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use super::auth::{Caller, Role};
use super::error::{ApiError, ErrorCause, ErrorCode};
use super::{AppState, MAX_BODY_BYTES};

/// What the middleware and the handlers of one request share.
#[derive(Debug, Default)]
pub struct RequestScope {
    /// The request id.
    pub id: String,
    /// The caller's tenant once authenticated (for the access log).
    pub tenant: OnceLock<String>,
    /// Why authentication failed, if it did (for the access log).
    pub auth_failure: OnceLock<&'static str>,
}

tokio::task_local! {
    static SCOPE: Arc<RequestScope>;
}

/// The id of the request being handled on this task, if any.
pub fn current_request_id() -> Option<String> {
    SCOPE.try_with(|s| s.id.clone()).ok()
}

fn with_scope(f: impl FnOnce(&RequestScope)) {
    let _ = SCOPE.try_with(|s| f(s));
}

/// A client-supplied X-Request-Id is kept when it is short and plain; otherwise a new one.
fn request_id(req: &Request) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Middleware: request id (header, task-local, span), error bodies stamped with it, and one
/// access-log line per request (route pattern, status, tenant, latency; never the token).
pub async fn request_scope(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let scope = Arc::new(RequestScope {
        id: request_id(&req),
        ..RequestScope::default()
    });
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let span = tracing::info_span!("request", request_id = %scope.id, %method, route = %route);
    let mut response = SCOPE
        .scope(scope.clone(), next.run(req))
        .instrument(span.clone())
        .await;
    if let Ok(v) = HeaderValue::from_str(&scope.id) {
        response.headers_mut().insert("x-request-id", v);
    }
    let status = response.status();
    let elapsed = started.elapsed();
    let m = &state.metrics;
    m.requests.inc(&[method.as_str(), &route, status.as_str()]);
    m.duration
        .observe(&[method.as_str(), &route], elapsed.as_secs_f64());
    if let Some(code) = response.extensions().get::<ErrorCode>() {
        m.errors.inc(&[code.0]);
    }
    if let Some(reason) = scope.auth_failure.get() {
        m.auth_failures.inc(&[reason]);
    }
    let _enter = span.enter();
    if let Some(cause) = response.extensions().get::<ErrorCause>() {
        tracing::error!(status = status.as_u16(), cause = %cause.0, "request failed");
    }
    tracing::info!(
        status = status.as_u16(),
        tenant = scope.tenant.get().map(String::as_str).unwrap_or("-"),
        auth_failure = scope.auth_failure.get().copied().unwrap_or("-"),
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        "access"
    );
    response
}

/// Adds the request id to an error body (called by `ApiError::into_response`).
pub fn stamp(mut body: super::ErrorBody) -> super::ErrorBody {
    body.request_id = current_request_id();
    body
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = match parts.headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| {
                with_scope(|s| {
                    let _ = s.auth_failure.set("malformed");
                });
                ApiError::Unauthorized("the Authorization header is not valid text".into())
            })?),
        };
        match state.verifier.verify(header) {
            Ok(caller) => {
                with_scope(|s| {
                    let _ = s.tenant.set(caller.tenant_id.clone());
                });
                Ok(caller)
            }
            Err(e) => {
                with_scope(|s| {
                    let _ = s.auth_failure.set(e.reason());
                });
                Err(ApiError::Unauthorized(e.to_string()))
            }
        }
    }
}

/// An authenticated caller with role admin (403 for other roles).
#[derive(Debug, Clone)]
pub struct AdminCaller(pub Caller);

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.role != Role::Admin {
            return Err(ApiError::Forbidden(
                "this endpoint needs the admin role".into(),
            ));
        }
        Ok(AdminCaller(caller))
    }
}

/// A JSON body parsed strictly (unknown fields refused) with errors naming the field.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        if bytes.is_empty() {
            return Err(ApiError::MalformedJson(
                "the request body is empty; a JSON object is expected".into(),
            ));
        }
        parse_json(&bytes).map(JsonBody)
    }
}

/// Like [`JsonBody`], but an empty body means `T::default()`.
#[derive(Debug)]
pub struct OptionalJsonBody<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(T::default()));
        }
        parse_json(&bytes).map(OptionalJsonBody)
    }
}

async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v != "0");
    if let (true, Some(ct)) = (has_body, req.headers().get(header::CONTENT_TYPE)) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let mime = ct.split(';').next().unwrap_or("").trim();
        if mime != "application/json" {
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(MAX_BODY_BYTES)
        } else {
            ApiError::MalformedJson("the request body could not be read".into())
        }
    })
}

/// Parses JSON, turning serde's errors into a field name and a message.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde would read a struct from an array positionally; every body here is an object.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| matches!(b, b'[' | b'"' | b't' | b'f' | b'n' | b'-' | b'0'..=b'9')) {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let value = parsed.map_err(|e| {
        let inner = e.inner();
        let path = e.path().to_string();
        match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                ApiError::MalformedJson(format!(
                    "malformed JSON at line {} column {}",
                    inner.line(),
                    inner.column()
                ))
            }
            _ => {
                let message = strip_position(&inner.to_string());
                let root = path == "." || path.is_empty();
                let field = match backticked(&message) {
                    // serde reports a missing field at its parent's path.
                    Some(f) if message.starts_with("missing field") && !root => {
                        format!("{path}.{f}")
                    }
                    Some(f) if root => f,
                    None if root => "body".to_string(),
                    _ => path,
                };
                ApiError::invalid(field, message)
            }
        }
    })?;
    de.end()
        .map_err(|_| ApiError::MalformedJson("unexpected data after the JSON value".into()))?;
    Ok(value)
}

/// serde_json appends " at line L column C"; the field name says more to a client.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// The first `name` in a serde message such as "missing field `planCode`".
fn backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string())
}

/// Query parameters as a map, refusing repeated and unknown names.
#[derive(Debug, Default)]
pub struct QueryMap(pub BTreeMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryMap {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> =
            axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
                .map(|q| q.0)
                .map_err(|_| ApiError::invalid("query", "the query string is malformed"))?;
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            if map.insert(k.clone(), v).is_some() {
                return Err(ApiError::invalid(k, "is given more than once"));
            }
        }
        Ok(QueryMap(map))
    }
}

impl QueryMap {
    /// Refuses names outside `allowed`.
    pub fn only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        match self.0.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(ApiError::invalid(
                k.chars().take(64).collect::<String>(),
                format!(
                    "is not a known query parameter; known: {}",
                    allowed.join(", ")
                ),
            )),
            None => Ok(()),
        }
    }

    /// An integer parameter within `min..=max`, or `default` when absent.
    pub fn int(&self, name: &str, default: i64, min: i64, max: i64) -> Result<i64, ApiError> {
        match self.0.get(name) {
            None => Ok(default),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::invalid(
                    name,
                    format!("must be an integer from {min} to {max}"),
                )),
            },
        }
    }

    /// A boolean parameter (`true`/`false`), or `default` when absent.
    pub fn bool(&self, name: &str, default: bool) -> Result<bool, ApiError> {
        match self.0.get(name).map(String::as_str) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(_) => Err(ApiError::invalid(name, "must be true or false")),
        }
    }

    /// A string parameter.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: the database answers (the API cannot do anything useful without it).
pub async fn readyz(State(state): State<AppState>) -> Response {
    let ping = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        crate::store::pods::ping(&state.pool),
    )
    .await;
    match ping {
        Ok(Ok(_)) => Json(serde_json::json!({ "status": "ready" })).into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "not ready", "reason": "database" })),
        )
            .into_response(),
    }
}

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.registry.response().into_response()
}

/// Fallback: unknown path.
pub async fn no_route() -> ApiError {
    ApiError::NoRoute
}

/// Fallback: known path, wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::model::OrderRequest;

    fn err(json: &str) -> (String, Option<String>, String) {
        match parse_json::<OrderRequest>(json.as_bytes()) {
            Ok(v) => panic!("parsed: {v:?}"),
            Err(e) => {
                let b = e.body();
                (b.error, b.field, b.message)
            }
        }
    }

    #[test]
    fn json_errors_name_the_field() {
        let (code, field, _) = err(r#"{"blueprint":"b","name":"n"}"#);
        assert_eq!(
            (code.as_str(), field.as_deref()),
            ("VALIDATION_FAILED", Some("planCode"))
        );
        let (_, field, msg) = err(r#"{"planCode":5,"blueprint":"b","name":"n"}"#);
        assert_eq!(field.as_deref(), Some("planCode"));
        assert!(msg.contains("expected a string"), "{msg}");
        assert!(!msg.contains("line"), "{msg}");
        let (_, field, _) = err(r#"{"planCode":"p","blueprint":"b","name":"n","x":1}"#);
        assert_eq!(field.as_deref(), Some("x"));
        let (_, field, _) =
            err(r#"{"planCode":"p","blueprint":"b","name":"n","options":{"sshPublicKeys":[1]}}"#);
        assert_eq!(field.as_deref(), Some("options.sshPublicKeys[0]"));
        let (_, field, _) =
            err(r#"{"planCode":"p","blueprint":"b","name":"n","options":{"bogus":true}}"#);
        assert_eq!(field.as_deref(), Some("options.bogus"));
        let (code, _, _) = err(r#"{"planCode":"p""#);
        assert_eq!(code, "MALFORMED_JSON");
        let (code, _, _) = err(r#"{"planCode":"p","blueprint":"b","name":"n"} x"#);
        assert_eq!(code, "MALFORMED_JSON");
        let (code, field, _) = err("[]");
        assert_eq!(
            (code.as_str(), field.as_deref()),
            ("VALIDATION_FAILED", Some("body"))
        );
    }
}
