//! `GET /metrics`: Prometheus text, on the API listener or a listener of its own.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<AppState>) -> Response {
    crate::metrics::scrape(&state.metrics, &state.db).await
}
