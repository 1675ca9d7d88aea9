//! Extractors whose failures are `ApiError`s: malformed JSON is a 400, a field of the wrong
//! type a 422 naming the field, an oversized body a 413.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// A JSON request body, parsed leniently about `Content-Type` and strictly about shape.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::BadRequest(e.body_text())
                }
            })?;
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
        if !value.is_object() {
            return Err(ApiError::BadRequest(
                "the body must be a JSON object".to_string(),
            ));
        }
        if let Some(path) = nul_in(&value, "") {
            return Err(ApiError::validation(path, NUL_RULE));
        }
        serde_path_to_error::deserialize(value)
            .map(JsonBody)
            .map_err(|e| {
                ApiError::validation(e.path().to_string(), type_rule(&e.inner().to_string()))
            })
    }
}

/// serde's complaint about a value of the wrong type (`invalid type: integer `5`, expected a
/// string`), as the rule it broke (`must be a string (got integer `5`)`).
fn type_rule(complaint: &str) -> String {
    let parsed = complaint
        .strip_prefix("invalid type: ")
        .or_else(|| complaint.strip_prefix("invalid value: "))
        .and_then(|rest| rest.split_once(", expected "));
    let Some((got, expected)) = parsed else {
        return complaint.to_string();
    };
    let expected = match expected {
        "a map" => "a JSON object",
        "a sequence" => "a JSON array",
        "i64" | "i32" | "i16" => "an integer",
        "u8" | "u16" | "u32" | "u64" => "a whole number of 0 or more",
        "f64" | "f32" => "a number",
        other => other,
    };
    // serde's names for JSON's kinds of value.
    let got = match got {
        "sequence" => "array",
        "map" => "object",
        other => other,
    };
    format!("must be {expected} (got {got})")
}

/// PostgreSQL text cannot hold NUL, so no input may carry one.
pub const NUL_RULE: &str = "must not contain NUL (\\u0000) characters";

/// The path (`field`, `field.key`, `field[2]`) of the first string or key holding a NUL.
fn nul_in(value: &Value, path: &str) -> Option<String> {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        Value::String(s) if s.contains('\0') => Some(if path.is_empty() {
            "body".to_string()
        } else {
            path.to_string()
        }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_in(v, &format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                Some(join(k))
            } else {
                nul_in(v, &join(k))
            }
        }),
        _ => None,
    }
}

/// Query-string parameters; a value of the wrong type is a 422 naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let params =
            serde_urlencoded::Deserializer::new(url::form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(params)
            .map(ApiQuery)
            .map_err(|e| {
                let complaint = e.inner().to_string();
                // `?limit=5&limit=6`: serde names the parameter only in its message.
                if let Some(name) = complaint
                    .strip_prefix("duplicate field `")
                    .and_then(|rest| rest.strip_suffix('`'))
                {
                    return ApiError::validation(name, "must be given once");
                }
                let field = match e.path().to_string() {
                    path if path == "." => "query".to_string(),
                    path => path,
                };
                ApiError::validation(field, query_rule(&complaint))
            })
    }
}

/// The rule a query value broke, from the parser's complaint.
fn query_rule(complaint: &str) -> String {
    if complaint.contains("invalid digit") || complaint.contains("cannot parse integer") {
        "must be an integer".to_string()
    } else if complaint.contains("too large") || complaint.contains("too small") {
        "is out of range for an integer".to_string()
    } else {
        complaint.to_string()
    }
}

/// Path parameters, percent-decoded.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// A worker's name from the path (`/api/workers/{name}/...`), held to the name rule: a name
/// that could never be registered is a 422, not a 404 that echoes it.
pub struct WorkerNamePath(pub String);

impl<S> FromRequestParts<S> for WorkerNamePath
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let ApiPath(name) = ApiPath::<String>::from_request_parts(parts, state).await?;
        crate::domain::validate_worker_name(&name)
            .map_err(|rule| ApiError::validation("name", rule))?;
        Ok(WorkerNamePath(name))
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

/// Refuses a request whose path or query string carries a percent-encoded NUL (`%00`),
/// before any handler could pass it on to PostgreSQL.
pub async fn reject_nul_in_uri(
    request: Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, ApiError> {
    let uri = request.uri();
    if uri.path().contains("%00") {
        return Err(ApiError::validation("path", NUL_RULE));
    }
    if let Some(query) = uri.query().filter(|q| q.contains("%00")) {
        // Name the parameter that carries it (or the first key that is one).
        let field = url::form_urlencoded::parse(query.as_bytes())
            .find(|(key, value)| key.contains('\0') || value.contains('\0'))
            .map_or_else(
                || "query".to_string(),
                |(key, _)| key.replace('\0', "\\u0000"),
            );
        return Err(ApiError::validation(field, NUL_RULE));
    }
    Ok(next.run(request).await)
}

/// Refuses a body whose declared length is over the limit at once, before reading any of it
/// (the limit on the body itself still holds for chunked bodies).
pub async fn refuse_oversized_body(
    request: Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, ApiError> {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > super::BODY_LIMIT_BYTES as u64) {
        return Err(ApiError::PayloadTooLarge);
    }
    Ok(next.run(request).await)
}
