//! `/api/workers/liveness/...`: operator controls of the sweeper.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::views::LivenessView;
use crate::error::{ApiError, ErrorBody};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/workers/liveness/release", post(release))
}

/// The answer to a release.
#[derive(Debug, Serialize, ToSchema)]
pub struct Released {
    pub released: bool,
    #[serde(flatten)]
    pub liveness: LivenessView,
}

/// Releases the sweeper brake: the next sweep applies the stale transitions it held.
#[utoipa::path(
    post,
    path = "/api/workers/liveness/release",
    tag = "liveness",
    responses(
        (status = 200, description = "Released", body = Released),
        (status = 409, description = "The brake is not engaged (`brake_not_engaged`)", body = ErrorBody),
        (status = 503, description = "Database unreachable", body = ErrorBody),
    )
)]
pub(crate) async fn release(State(state): State<AppState>) -> Result<Json<Released>, ApiError> {
    if !state.db.release_brake().await? {
        return Err(ApiError::Conflict {
            code: "brake_not_engaged",
            message: "the sweeper brake is not engaged; there is nothing to release".to_string(),
        });
    }
    tracing::warn!("sweeper brake released by an operator");
    let liveness = state.db.liveness_state().await?;
    Ok(Json(Released {
        released: true,
        liveness: LivenessView::new(&liveness, &state.settings.liveness),
    }))
}
