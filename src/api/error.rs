//! The one error shape of the API: `{"error", "message", "field"?, "details"?, "requestId"}`.
//!
//! Internal causes (database, Kubernetes) are logged with the request id and never returned.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd::QuotaDetails;

/// The JSON body of every failed request.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// Machine-readable code, e.g. VALIDATION_FAILED, QUOTA_EXCEEDED, NOT_FOUND.
    pub error: String,
    /// Human-readable explanation.
    pub message: String,
    /// The offending request field (JSON path, query parameter, path parameter or header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Quota details (the seed's checkTenantQuota shape) on QUOTA_EXCEEDED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<QuotaDetails>,
    /// The request id, also in the X-Request-Id response header and the server's logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON or a field that failed validation (400).
    #[error("{message}")]
    Validation {
        /// Offending field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// Malformed JSON body (400).
    #[error("{0}")]
    MalformedJson(String),
    /// Body is not JSON (415).
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    /// Body too large (413).
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// No or invalid credentials (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated but not allowed (403).
    #[error("{0}")]
    Forbidden(String),
    /// Quota refused (403 with details).
    #[error("{message}")]
    QuotaExceeded {
        /// Why.
        message: String,
        /// The seed's details.
        details: Box<QuotaDetails>,
    },
    /// Missing, or another tenant's (404).
    #[error("{0}")]
    NotFound(String),
    /// No such route (404).
    #[error("no such endpoint")]
    NoRoute,
    /// Method not allowed on this route (405).
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// State conflict (409).
    #[error("{message}")]
    Conflict {
        /// Code, e.g. POD_NOT_ACTIVE, IDEMPOTENCY_KEY_REUSED.
        code: &'static str,
        /// Why.
        message: String,
    },
    /// Well-formed but unacceptable (422), e.g. an unknown plan.
    #[error("{message}")]
    Unprocessable {
        /// Code, e.g. UNKNOWN_PLAN.
        code: &'static str,
        /// Field.
        field: Option<String>,
        /// Why.
        message: String,
    },
    /// A dependency (database, Kubernetes) failed; the cause is logged, not returned (503).
    #[error("the service is temporarily unavailable; try again")]
    Unavailable(#[source] anyhow::Error),
    /// A bug or an unexpected state; logged, not returned (500).
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// A validation failure of `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation { .. } | ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::QuotaExceeded { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Validation { .. } => "VALIDATION_FAILED",
            ApiError::MalformedJson(_) => "MALFORMED_JSON",
            ApiError::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            ApiError::PayloadTooLarge(_) => "PAYLOAD_TOO_LARGE",
            ApiError::Unauthorized(_) => "UNAUTHORIZED",
            ApiError::Forbidden(_) => "FORBIDDEN",
            ApiError::QuotaExceeded { .. } => "QUOTA_EXCEEDED",
            ApiError::NotFound(_) | ApiError::NoRoute => "NOT_FOUND",
            ApiError::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ApiError::Conflict { code, .. } | ApiError::Unprocessable { code, .. } => code,
            ApiError::Unavailable(_) => "SERVICE_UNAVAILABLE",
            ApiError::Internal(_) => "INTERNAL_ERROR",
        }
    }

    /// The body returned to the client (without the request id, added by the middleware).
    pub fn body(&self) -> ErrorBody {
        let (field, details) = match self {
            ApiError::Validation { field, .. } => (Some(field.clone()), None),
            ApiError::Unprocessable { field, .. } => (field.clone(), None),
            ApiError::QuotaExceeded { details, .. } => (None, Some((**details).clone())),
            _ => (None, None),
        };
        ErrorBody {
            error: self.code().to_string(),
            message: self.to_string(),
            field,
            details,
            request_id: None,
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::Unavailable(e.into())
    }
}

/// Marks a response as an API error so the request-id middleware can log its cause.
#[derive(Clone)]
pub struct ErrorCause(pub std::sync::Arc<String>);

/// The error code of a failed response, for the metrics.
#[derive(Clone, Copy)]
pub struct ErrorCode(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = super::extract::stamp(self.body());
        let mut response = (status, Json(body)).into_response();
        response.extensions_mut().insert(ErrorCode(self.code()));
        if matches!(self, ApiError::Unavailable(_) | ApiError::Internal(_)) {
            // The chain goes to the log (by the middleware), never to the client.
            let cause = match &self {
                ApiError::Unavailable(e) | ApiError::Internal(e) => format!("{e:#}"),
                _ => String::new(),
            };
            response
                .extensions_mut()
                .insert(ErrorCause(std::sync::Arc::new(cause)));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_causes_are_not_in_the_body() {
        let e = ApiError::Unavailable(anyhow::anyhow!(
            "connection to postgres://cloudpods:s3cret@db failed"
        ));
        let body = serde_json::to_string(&e.body()).unwrap();
        assert!(!body.contains("s3cret"), "{body}");
        assert!(!body.contains("postgres"), "{body}");
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn validation_names_the_field() {
        let body = ApiError::invalid("planCode", "is required").body();
        assert_eq!(body.error, "VALIDATION_FAILED");
        assert_eq!(body.field.as_deref(), Some("planCode"));
    }
}
