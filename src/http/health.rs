use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::AppState;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// The process is up.
async fn healthz(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "status": "ok", "instance": &*state.instance }))
}

/// The database answers and every migration is applied; 503 otherwise.
async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if state.db.schema_is_current().await? {
        Ok(Json(json!({ "status": "ready" })))
    } else {
        Err(ApiError::NotReady(
            "database migrations are pending; run `dals migrate`".to_string(),
        ))
    }
}
