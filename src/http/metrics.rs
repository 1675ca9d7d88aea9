//! `GET /metrics`: Prometheus text, on the API listener or a listener of its own.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// Prometheus text (version 0.0.4) of this replica's metrics and the fleet gauges.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text", content_type = "text/plain", body = String),
        (status = 503, description = "Database unreachable (with Retry-After)", body = crate::error::ErrorBody),
    )
)]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    crate::metrics::scrape(&state.metrics, &state.db).await
}
