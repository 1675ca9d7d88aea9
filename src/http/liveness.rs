//! `/api/workers/liveness/...`: operator controls of the sweeper.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::AppState;
use super::views::liveness_view;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/workers/liveness/release", post(release))
}

/// Releases the brake: the next sweep applies the stale transitions it held.
async fn release(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if !state.db.release_brake().await? {
        return Err(ApiError::Conflict {
            code: "brake_not_engaged",
            message: "the sweeper brake is not engaged; there is nothing to release".to_string(),
        });
    }
    tracing::warn!("sweeper brake released by an operator");
    let liveness = state.db.liveness_state().await?;
    let mut body = liveness_view(&liveness, &state.settings.liveness);
    body["released"] = json!(true);
    Ok(Json(body))
}
