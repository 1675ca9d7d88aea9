//! One error type for the HTTP API: every error is a JSON object with a stable `error` code
//! and a human `message`. Server faults are logged, never echoed.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Seconds a client is asked to wait when the database is unreachable.
const RETRY_AFTER_SECS: &str = "5";

/// Everything an API request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("{field}: {rule}")]
    Validation { field: String, rule: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("no worker named {0:?} is registered; register it with POST /api/workers/register")]
    WorkerNotFound(String),
    #[error("{0}")]
    NotFound(String),
    #[error("worker {0:?} has deregistered; register it again with POST /api/workers/register")]
    WorkerDeregistered(String),
    #[error(
        "serial_number {sent} is not the current deployment of {worker:?}: the name now \
         belongs to deployment {current}, so this process must not act for it"
    )]
    SerialMismatch {
        worker: String,
        current: String,
        sent: String,
    },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("request body is larger than the limit of 64 KiB")]
    PayloadTooLarge,
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    #[error("the database is unreachable or too busy to answer in time; retry shortly")]
    DatabaseUnavailable,
    #[error("{0}")]
    NotReady(String),
    #[error("the request took too long; retry shortly")]
    Timeout,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// A 422 naming the field and the rule it broke.
    pub fn validation(field: impl Into<String>, rule: impl Into<String>) -> Self {
        ApiError::Validation {
            field: field.into(),
            rule: rule.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::WorkerNotFound(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::WorkerDeregistered(_) => StatusCode::GONE,
            ApiError::SerialMismatch { .. } | ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::DatabaseUnavailable | ApiError::NotReady(_) | ApiError::Timeout => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, machine-readable code of the error.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::Validation { .. } => "validation_failed",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::WorkerNotFound(_) => "worker_not_found",
            ApiError::NotFound(_) => "not_found",
            ApiError::WorkerDeregistered(_) => "worker_deregistered",
            ApiError::SerialMismatch { .. } => "serial_mismatch",
            ApiError::Conflict { code, .. } => code,
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::DatabaseUnavailable => "database_unavailable",
            ApiError::NotReady(_) => "not_ready",
            ApiError::Timeout => "timeout",
            ApiError::Internal(_) => "internal_error",
        }
    }

    fn body(&self) -> ErrorBody {
        let mut body = ErrorBody {
            error: self.code().to_string(),
            message: self.to_string(),
            ..ErrorBody::default()
        };
        match self {
            ApiError::Validation { field, rule } => {
                body.field = Some(field.clone());
                body.rule = Some(rule.clone());
            }
            ApiError::WorkerNotFound(name) | ApiError::WorkerDeregistered(name) => {
                body.worker = Some(name.clone());
            }
            ApiError::SerialMismatch {
                worker,
                current,
                sent,
            } => {
                body.worker = Some(worker.clone());
                body.current_serial_number = Some(current.clone());
                body.serial_number = Some(sent.clone());
            }
            _ => {}
        }
        body
    }
}

/// The JSON body of every error answer.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable, machine-readable code, e.g. `validation_failed`, `worker_not_found`.
    pub error: String,
    /// What went wrong and, where it helps, what to do.
    pub message: String,
    /// The field (or query parameter) that broke a rule (422 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The rule the field broke (422 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The worker concerned (404, 409, 410 on worker endpoints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The worker's current deployment (409 `serial_mismatch`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_serial_number: Option<String>,
    /// The serial the request carried (409 `serial_mismatch`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(err) => tracing::error!(error = ?err, "request failed"),
            ApiError::DatabaseUnavailable => tracing::warn!("request failed: database unreachable"),
            _ => {}
        }
        let mut response = (self.status(), Json(self.body())).into_response();
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        if is_unavailable(&err) {
            ApiError::DatabaseUnavailable
        } else if matches!(&err, sqlx::Error::Database(db) if db.code().as_deref() == Some("22021"))
        {
            // Text PostgreSQL cannot store (a NUL byte) that slipped past input checks.
            ApiError::BadRequest("the request carries text with a NUL character".to_string())
        } else {
            ApiError::Internal(err.into())
        }
    }
}

/// Whether the error means the database could not be reached (as opposed to a bad statement).
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => true,
        // Connection failures, shutdowns, too many connections, the database gone or closed
        // to connections.
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some(code) if code.starts_with("08") || code.starts_with("57P") => true,
            Some("53300" | "3D000") => true,
            Some("55000") => db.message().contains("not currently accepting connections"),
            _ => false,
        },
        _ => false,
    }
}
