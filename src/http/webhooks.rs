//! `/api/webhooks`: endpoints that receive worker transitions, and their deliveries.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::views::{iso, page};
use super::{ApiPath, ApiQuery, AppState, JsonBody};
use crate::db::{AttemptRow, DeliveryRow, NewWebhook, WebhookRow};
use crate::domain::{
    parse_event_kinds, validate_webhook_description, validate_webhook_secret, validate_webhook_url,
};
use crate::error::{ApiError, ErrorBody};
use crate::webhooks::generate_secret;

/// The routes of `/api/webhooks`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/webhooks", get(list).post(create))
        .route("/api/webhooks/{id}", get(one).delete(delete))
        .route("/api/webhooks/{id}/deliveries", get(deliveries))
}

/// The body of `POST /api/webhooks`. Fields are optional here so that a missing one is
/// reported by name rather than as a parse failure.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// An http(s) URL.
    #[schema(required = true, example = "http://orchestrator:9000/dals")]
    pub url: Option<String>,
    /// Event kinds to receive: stale, offline, recovered, deregistered, brake (both brake
    /// kinds), or any other worker event kind.
    #[schema(required = true, example = json!(["stale", "offline", "recovered"]))]
    pub events: Option<Vec<String>>,
    /// Generated when absent.
    pub secret: Option<String>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

/// An endpoint as the API shows it: never with its secret (but once, at creation).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    pub id: i64,
    pub url: String,
    pub events: Vec<String>,
    pub enabled: bool,
    pub description: String,
    /// `api` or `settings` (from `[[webhooks.endpoints]]` of the settings file).
    pub source: String,
    pub created_at: String,
    /// Deliveries by status: `{"pending": n, "delivered": n, "failed": n}`.
    #[schema(value_type = Object)]
    pub deliveries: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl From<WebhookRow> for WebhookView {
    fn from(row: WebhookRow) -> Self {
        WebhookView {
            id: row.id,
            url: row.url,
            events: row.events,
            enabled: row.enabled,
            description: row.description,
            source: row.source,
            created_at: iso(row.created_at),
            deliveries: json!({
                "pending": row.pending,
                "delivered": row.delivered,
                "failed": row.failed,
            }),
            secret: None,
        }
    }
}

/// One delivery with every attempt at it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    pub id: i64,
    pub event_id: i64,
    pub kind: String,
    /// `pending`, `delivered` or `failed` (out of attempts).
    pub status: String,
    pub created_at: String,
    /// When the next attempt is due; only while pending.
    pub next_attempt_at: Option<String>,
    pub delivered_at: Option<String>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub attempts: Vec<AttemptView>,
    /// The request body exactly as recorded, signed and sent.
    #[schema(value_type = Object)]
    pub payload: Box<RawValue>,
}

/// One attempt at a delivery.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    pub attempt: i32,
    pub at: String,
    pub duration_ms: i32,
    /// The receiver's answer; `null` when none came (refused, timed out).
    pub http_status: Option<i32>,
    pub error: Option<String>,
}

impl DeliveryView {
    fn new(row: DeliveryRow, attempts: Vec<AttemptView>) -> Result<Self, ApiError> {
        let payload = RawValue::from_string(row.payload)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored webhook payload: {e}")))?;
        Ok(DeliveryView {
            next_attempt_at: (row.status == "pending").then(|| iso(row.next_attempt_at)),
            id: row.id,
            event_id: row.event_id,
            kind: row.kind,
            status: row.status,
            created_at: iso(row.created_at),
            delivered_at: row.delivered_at.map(iso),
            last_status: row.last_status,
            last_error: row.last_error,
            attempts,
            payload,
        })
    }
}

impl From<AttemptRow> for AttemptView {
    fn from(row: AttemptRow) -> Self {
        AttemptView {
            attempt: row.attempt,
            at: iso(row.at),
            duration_ms: row.duration_ms,
            http_status: row.http_status,
            error: row.error,
        }
    }
}

/// Parses the `{id}` of a webhook path.
fn webhook_id(id: &str) -> Result<i64, ApiError> {
    // Digits only: `+1` is not how an id is written.
    Some(id)
        .filter(|id| id.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|id| id.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::validation("id", "must be a positive integer (a webhook id)"))
}

fn not_found(id: i64) -> ApiError {
    ApiError::NotFound(format!(
        "no webhook endpoint with id {id}; GET /api/webhooks lists them"
    ))
}

/// Creates an endpoint; the answer holds its secret, which is never shown again.
#[utoipa::path(
    post,
    path = "/api/webhooks",
    tag = "webhooks",
    request_body = CreateWebhook,
    responses(
        (status = 201, description = "Created; `secret` is shown this once", body = WebhookView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 422, description = "A field breaks its rule", body = ErrorBody),
        (status = 503, description = "Database unreachable (with Retry-After)", body = ErrorBody),
    )
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<CreateWebhook>,
) -> Result<(StatusCode, Json<WebhookView>), ApiError> {
    let url = req
        .url
        .ok_or_else(|| ApiError::validation("url", "is required"))?;
    validate_webhook_url(&url).map_err(|rule| ApiError::validation("url", rule))?;
    let events = req.events.ok_or_else(|| {
        ApiError::validation(
            "events",
            "is required: a list of event kinds, e.g. [\"offline\"]",
        )
    })?;
    let events = parse_event_kinds(&events).map_err(|(index, rule)| match index {
        Some(i) => ApiError::validation(format!("events[{i}]"), rule),
        None => ApiError::validation("events", rule),
    })?;
    let secret = match req.secret {
        Some(secret) => {
            validate_webhook_secret(&secret)
                .map_err(|rule| ApiError::validation("secret", rule))?;
            secret
        }
        None => generate_secret().map_err(ApiError::Internal)?,
    };
    let description = req.description.unwrap_or_default();
    validate_webhook_description(&description)
        .map_err(|rule| ApiError::validation("description", rule))?;
    let new = NewWebhook {
        url,
        secret,
        events,
        enabled: req.enabled.unwrap_or(true),
        description,
    };
    let row = state.db.create_webhook(&new).await?;
    tracing::info!(id = row.id, url = %row.url, events = ?row.events, "webhook endpoint created");
    let mut view = WebhookView::from(row);
    view.secret = Some(new.secret);
    Ok((StatusCode::CREATED, Json(view)))
}

/// Every webhook endpoint.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhooksPage {
    pub webhooks: Vec<WebhookView>,
}

/// Every endpoint, without secrets.
#[utoipa::path(
    get,
    path = "/api/webhooks",
    tag = "webhooks",
    responses(
        (status = 200, description = "The endpoints", body = WebhooksPage),
        (status = 503, description = "Database unreachable (with Retry-After)", body = ErrorBody),
    )
)]
pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<WebhooksPage>, ApiError> {
    let webhooks: Vec<WebhookView> = state
        .db
        .webhooks()
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(Json(WebhooksPage { webhooks }))
}

/// One endpoint, without its secret.
#[utoipa::path(
    get,
    path = "/api/webhooks/{id}",
    tag = "webhooks",
    params(("id" = i64, Path, description = "The endpoint's id")),
    responses(
        (status = 200, description = "The endpoint", body = WebhookView),
        (status = 422, description = "The id is not a positive integer", body = ErrorBody),
        (status = 404, description = "No such endpoint", body = ErrorBody),
        (status = 503, description = "Database unreachable (with Retry-After)", body = ErrorBody),
    )
)]
pub(crate) async fn one(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let id = webhook_id(&id)?;
    let row = state.db.webhook(id).await?.ok_or_else(|| not_found(id))?;
    Ok(Json(row.into()))
}

/// Deletes an endpoint with its pending deliveries and history; answers what it was.
#[utoipa::path(
    delete,
    path = "/api/webhooks/{id}",
    tag = "webhooks",
    params(("id" = i64, Path, description = "The endpoint's id")),
    responses(
        (status = 200, description = "Deleted; the endpoint as it was", body = WebhookView),
        (status = 422, description = "The id is not a positive integer", body = ErrorBody),
        (status = 404, description = "No such endpoint", body = ErrorBody),
        (status = 503, description = "Database unreachable (with Retry-After)", body = ErrorBody),
    )
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let id = webhook_id(&id)?;
    let row = state
        .db
        .delete_webhook(id)
        .await?
        .ok_or_else(|| not_found(id))?;
    tracing::info!(id, url = %row.url, "webhook endpoint deleted");
    Ok(Json(row.into()))
}

/// Paging and filter of an endpoint's deliveries.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
// A misspelt parameter is refused, not ignored (it would widen the answer silently).
#[serde(deny_unknown_fields)]
pub struct DeliveriesParams {
    /// Deliveries with an id below this one (the previous page's `next_before`).
    pub before: Option<i64>,
    /// Page size, 1-500 (default 50).
    pub limit: Option<i64>,
    /// Only deliveries in this status: `pending`, `delivered` or `failed`.
    pub status: Option<String>,
}

/// A page of an endpoint's deliveries.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveriesPage {
    pub webhook_id: i64,
    /// Newest first.
    pub deliveries: Vec<DeliveryView>,
    /// Pass as `before` for the next page; null on the last page.
    pub next_before: Option<i64>,
}

/// An endpoint's deliveries, newest first, each with its attempts and payload.
#[utoipa::path(
    get,
    path = "/api/webhooks/{id}/deliveries",
    tag = "webhooks",
    params(("id" = i64, Path, description = "The endpoint's id"), DeliveriesParams),
    responses(
        (status = 200, description = "A page of deliveries", body = DeliveriesPage),
        (status = 422, description = "The id is not a positive integer", body = ErrorBody),
        (status = 404, description = "No such endpoint", body = ErrorBody),
        (status = 422, description = "`limit` or `status` breaks its rule", body = ErrorBody),
        (status = 503, description = "Database unreachable (with Retry-After)", body = ErrorBody),
    )
)]
pub(crate) async fn deliveries(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<DeliveriesParams>,
) -> Result<Json<DeliveriesPage>, ApiError> {
    let id = webhook_id(&id)?;
    let limit = params.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::validation("limit", "must be 1-500"));
    }
    if let Some(status) = params.status.as_deref()
        && !matches!(status, "pending" | "delivered" | "failed")
    {
        return Err(ApiError::validation(
            "status",
            "must be one of pending, delivered, failed",
        ));
    }
    if state.db.webhook(id).await?.is_none() {
        return Err(not_found(id));
    }
    let rows = state
        .db
        .webhook_deliveries(id, params.before, params.status.as_deref(), limit + 1)
        .await?;
    let (rows, next_before) = page(rows, limit, |r| r.id);
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let mut attempts: HashMap<i64, Vec<AttemptView>> = HashMap::new();
    for attempt in state.db.webhook_attempts(&ids).await? {
        attempts
            .entry(attempt.delivery_id)
            .or_default()
            .push(attempt.into());
    }
    let views = rows
        .into_iter()
        .map(|row| {
            let mine = attempts.remove(&row.id).unwrap_or_default();
            DeliveryView::new(row, mine)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(DeliveriesPage {
        webhook_id: id,
        deliveries: views,
        next_before,
    }))
}
