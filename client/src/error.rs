//! The client's one error type: what went wrong, typed so a worker can react to it.

use std::time::Duration;

use serde_json::Value;

/// Everything a registry call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The registry URL given to the builder is not an http(s) URL.
    #[error("invalid registry URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The token cannot be sent in an HTTP header.
    #[error("the token cannot be sent as an HTTP header: it must be visible ASCII")]
    InvalidToken,
    /// The HTTP client could not be set up.
    #[error("cannot set up the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
    /// `spawn_heartbeats` was called outside a Tokio runtime.
    #[error("the heartbeat task needs a Tokio runtime; call spawn_heartbeats from async code")]
    NoRuntime,
    /// The registry did not answer in time.
    #[error("the registry did not answer within the timeout")]
    Timeout,
    /// The registry could not be reached (connection refused, reset, DNS...); `detail` has
    /// the causes.
    #[error("cannot reach the registry: {detail}")]
    Unreachable {
        detail: String,
        #[source]
        source: reqwest::Error,
    },
    /// 404 `worker_not_found`: the registry does not know the name (never registered, or lost).
    #[error("the registry knows no worker named {worker:?}")]
    WorkerNotFound { worker: String },
    /// 410 `worker_deregistered`: the name was deregistered (by the worker or an operator).
    #[error("worker {worker:?} has been deregistered")]
    Deregistered { worker: String },
    /// 409 `serial_mismatch`: a newer deployment of the name exists; this process is old.
    #[error(
        "serial number {serial_number} is no longer the deployment of {worker:?}: \
         {current_serial_number} replaced it"
    )]
    Superseded {
        worker: String,
        serial_number: String,
        current_serial_number: String,
    },
    /// Another 4xx: the request itself is refused (bad input, wrong URL, missing token...).
    #[error("the registry refused the request ({status} {code}): {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
        /// The field a validation error names, when it names one.
        field: Option<String>,
        /// The rule that field broke.
        rule: Option<String>,
    },
    /// 5xx, 429 or 408: worth retrying later, after `retry_after` when the registry said so.
    #[error("the registry is unavailable ({status} {code}): {message}")]
    Unavailable {
        status: u16,
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    /// The answer was not what the registry's API promises.
    #[error("unexpected answer from the registry: {0}")]
    Protocol(String),
    /// The heartbeat task ended abnormally.
    #[error("the heartbeat task failed: {0}")]
    Task(String),
}

impl Error {
    /// Whether trying again later may succeed (timeouts, unreachable or overloaded registry).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Timeout | Error::Unreachable { .. } | Error::Unavailable { .. }
        )
    }

    /// The HTTP status the registry answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::WorkerNotFound { .. } => Some(404),
            Error::Deregistered { .. } => Some(410),
            Error::Superseded { .. } => Some(409),
            Error::Rejected { status, .. } | Error::Unavailable { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// How long the registry asked the client to wait (`Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub(crate) fn from_transport(err: reqwest::Error) -> Self {
        if err.is_timeout() {
            return Error::Timeout;
        }
        // reqwest's own message is only "error sending request"; the cause is in the chain.
        let mut detail = err.to_string();
        let mut cause = std::error::Error::source(&err);
        while let Some(c) = cause {
            detail.push_str(": ");
            detail.push_str(&c.to_string());
            cause = c.source();
        }
        Error::Unreachable {
            detail,
            source: err,
        }
    }

    /// The error for a non-2xx answer: its status, `Retry-After` and JSON body (the registry's
    /// `{"error", "message", ...}`, or anything else a proxy may answer).
    pub(crate) fn from_answer(
        status: u16,
        retry_after: Option<Duration>,
        body: &[u8],
        worker: &str,
        serial_number: Option<&str>,
    ) -> Self {
        let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let text = |key: &str| json.get(key).and_then(Value::as_str).map(str::to_string);
        let code = text("error").unwrap_or_default();
        let message = text("message").unwrap_or_else(|| {
            let body = String::from_utf8_lossy(body);
            let body = body.trim();
            if body.is_empty() {
                "no message".to_string()
            } else {
                body.chars().take(200).collect()
            }
        });
        let worker = text("worker").unwrap_or_else(|| worker.to_string());
        match (status, code.as_str()) {
            (404, "worker_not_found") => Error::WorkerNotFound { worker },
            (410, _) => Error::Deregistered { worker },
            (409, "serial_mismatch") => Error::Superseded {
                worker,
                serial_number: text("serial_number")
                    .or_else(|| serial_number.map(str::to_string))
                    .unwrap_or_default(),
                current_serial_number: text("current_serial_number").unwrap_or_default(),
            },
            (408 | 429 | 500..=599, _) => Error::Unavailable {
                status,
                code,
                message,
                retry_after,
            },
            _ => Error::Rejected {
                status,
                field: text("field"),
                rule: text("rule"),
                code,
                message,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_map_to_typed_errors() {
        let e = Error::from_answer(
            404,
            None,
            br#"{"error":"worker_not_found","message":"no","worker":"w"}"#,
            "w",
            Some("S1"),
        );
        assert!(matches!(e, Error::WorkerNotFound { ref worker } if worker == "w"));

        let e = Error::from_answer(
            409,
            None,
            br#"{"error":"serial_mismatch","message":"m","worker":"w","serial_number":"S1","current_serial_number":"S2"}"#,
            "w",
            Some("S1"),
        );
        match e {
            Error::Superseded {
                serial_number,
                current_serial_number,
                ..
            } => {
                assert_eq!(serial_number, "S1");
                assert_eq!(current_serial_number, "S2");
            }
            other => panic!("{other:?}"),
        }

        let e = Error::from_answer(410, None, br#"{"error":"worker_deregistered"}"#, "w", None);
        assert!(matches!(e, Error::Deregistered { .. }));

        let e = Error::from_answer(
            503,
            Some(Duration::from_secs(5)),
            b"<html>bad gateway</html>",
            "w",
            None,
        );
        assert!(e.is_transient());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(5)));
        assert!(e.to_string().contains("bad gateway"), "{e}");

        let e = Error::from_answer(
            422,
            None,
            br#"{"error":"validation_failed","message":"name: is required","field":"name","rule":"is required"}"#,
            "w",
            None,
        );
        assert!(!e.is_transient());
        match e {
            Error::Rejected { field, rule, .. } => {
                assert_eq!(field.as_deref(), Some("name"));
                assert_eq!(rule.as_deref(), Some("is required"));
            }
            other => panic!("{other:?}"),
        }

        // A 404 that is not about the worker (a wrong base URL) is not "lost".
        let e = Error::from_answer(404, None, br#"{"error":"not_found"}"#, "w", None);
        assert!(matches!(e, Error::Rejected { status: 404, .. }));
        assert!(Error::from_answer(429, None, b"", "w", None).is_transient());
    }
}
