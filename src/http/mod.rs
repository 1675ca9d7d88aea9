//! The HTTP layer: routers per resource, merged here, and the extractors that turn bad input
//! into clear JSON errors.

mod catalog;
mod commands;
mod dashboard;
mod extract;
mod health;
mod liveness;
mod metrics;
mod openapi;
mod stream;
mod views;
mod webhooks;
mod workers;

use std::sync::Arc;

use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use axum::{BoxError, Router};
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

pub use extract::{ApiPath, ApiQuery, JsonBody, WorkerNamePath};
use extract::{refuse_oversized_body, reject_nul_in_uri};
pub use openapi::ApiDoc;

use crate::db::Db;
use crate::error::ApiError;
use crate::events::EventBus;
use crate::metrics::{Metrics, track_http};
use crate::settings::{Settings, secs};

/// Largest request body accepted.
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub settings: Arc<Settings>,
    /// This replica's id, as the sweeper records it.
    pub instance: Arc<str>,
    /// Wakes event-stream clients.
    pub events: EventBus,
    /// Cancelled when shutdown begins, so that endless responses (event streams) end.
    pub stopping: CancellationToken,
    pub metrics: Metrics,
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let timeout = secs(state.settings.server.request_timeout_secs);
    // `/metrics` is here unless it has a listener of its own (see `metrics_router`).
    let metrics_here = state.settings.metrics.listen.trim().is_empty();
    Router::new()
        .merge(health::router())
        .merge(dashboard::router())
        .merge(workers::router())
        .merge(catalog::router())
        .merge(commands::router())
        .merge(liveness::router())
        .merge(stream::router())
        .merge(openapi::router())
        .merge(webhooks::router())
        .merge(if metrics_here {
            metrics::router()
        } else {
            Router::new()
        })
        .fallback(|| async { ApiError::NotFound("no such endpoint".to_string()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn(reject_nul_in_uri))
        .layer(axum::middleware::from_fn(refuse_oversized_body))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            track_http,
        ))
        .with_state(state)
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(
            ServiceBuilder::new()
                .layer(CatchPanicLayer::custom(|_| {
                    ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
                }))
                .layer(TraceLayer::new_for_http())
                .layer(HandleErrorLayer::new(timeout_error))
                .timeout(timeout),
        )
}

/// The router of a separate metrics listener.
pub fn metrics_router(state: AppState) -> Router {
    metrics::router().with_state(state)
}

async fn timeout_error(err: BoxError) -> ApiError {
    if err.is::<tower::timeout::error::Elapsed>() {
        ApiError::Timeout
    } else {
        ApiError::Internal(anyhow::anyhow!(err))
    }
}
