//! `/api/workers/{name}/commands`: operator commands (restart) for a worker, delivered in its
//! heartbeat responses.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::views::iso;
use super::{ApiQuery, AppState, JsonBody, WorkerNamePath};
use crate::db::{CommandRow, QueueOutcome};
use crate::domain::{WorkerCommand, validate_command_reason};
use crate::error::{ApiError, ErrorBody};

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/api/workers/{name}/commands",
        get(list_commands).post(queue_command),
    )
}

/// A command as the API shows it, in listings and in heartbeat responses.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CommandView {
    pub id: i64,
    pub worker_name: String,
    pub serial_number: String,
    pub command: String,
    /// `pending`, `delivered`, `acknowledged` or `cancelled`.
    pub status: String,
    /// `operator` or `remediation` (the restart-on-stale policy).
    pub source: String,
    pub reason: String,
    pub created_at: String,
    pub delivered_at: Option<String>,
    pub acknowledged_at: Option<String>,
    pub cancelled_at: Option<String>,
}

impl From<CommandRow> for CommandView {
    fn from(row: CommandRow) -> Self {
        CommandView {
            id: row.id,
            worker_name: row.worker_name,
            serial_number: row.serial_number,
            command: row.command,
            status: row.status,
            source: row.source,
            reason: row.reason,
            created_at: iso(row.created_at),
            delivered_at: row.delivered_at.map(iso),
            acknowledged_at: row.acknowledged_at.map(iso),
            cancelled_at: row.cancelled_at.map(iso),
        }
    }
}

/// The body of `POST /api/workers/{name}/commands`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueRequest {
    /// `restart`.
    #[schema(required = true, example = "restart")]
    pub command: Option<String>,
    /// Why, for the worker's log and the command history.
    pub reason: Option<String>,
}

/// Queues a command for the worker's current deployment: 202, delivered on its next
/// heartbeat. A command already open for that deployment is answered instead of a second.
#[utoipa::path(
    post,
    path = "/api/workers/{name}/commands",
    tag = "commands",
    params(("name" = String, Path, description = "The worker's name, percent-encoded")),
    request_body = QueueRequest,
    responses(
        (status = 202, description = "Queued (or the open command of that kind)", body = CommandView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "No such worker", body = ErrorBody),
        (status = 410, description = "The worker deregistered", body = ErrorBody),
        (status = 422, description = "Unknown command or a bad reason", body = ErrorBody),
        (status = 503, description = "Database unreachable (with Retry-After)", body = ErrorBody),
    )
)]
pub(crate) async fn queue_command(
    State(state): State<AppState>,
    WorkerNamePath(name): WorkerNamePath,
    JsonBody(req): JsonBody<QueueRequest>,
) -> Result<(StatusCode, Json<CommandView>), ApiError> {
    let command: WorkerCommand = req
        .command
        .ok_or_else(|| ApiError::validation("command", "is required"))?
        .parse()
        .map_err(|rule| ApiError::validation("command", rule))?;
    let reason = req.reason.unwrap_or_default();
    validate_command_reason(&reason).map_err(|rule| ApiError::validation("reason", rule))?;
    match state
        .db
        .queue_command(&name, command.as_str(), &reason)
        .await?
    {
        QueueOutcome::Queued(row) => {
            tracing::info!(
                worker = %name,
                serial = %row.serial_number,
                command = %row.command,
                id = row.id,
                "worker command queued"
            );
            Ok((StatusCode::ACCEPTED, Json((*row).into())))
        }
        QueueOutcome::UnknownWorker => Err(ApiError::WorkerNotFound(name)),
        QueueOutcome::Deregistered => Err(ApiError::WorkerDeregistered(name)),
    }
}

/// Paging of a worker's commands.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
// A misspelt parameter is refused, not ignored (it would widen the answer silently).
#[serde(deny_unknown_fields)]
pub struct CommandsParams {
    /// How many, 1-500 (default 50).
    pub limit: Option<i64>,
}

/// A worker's commands.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CommandsPage {
    pub worker_name: String,
    /// Newest first.
    pub commands: Vec<CommandView>,
}

/// A worker's commands across its deployments, newest first.
#[utoipa::path(
    get,
    path = "/api/workers/{name}/commands",
    tag = "commands",
    params(("name" = String, Path, description = "The worker's name, percent-encoded"), CommandsParams),
    responses(
        (status = 200, description = "The commands", body = CommandsPage),
        (status = 404, description = "No such worker", body = ErrorBody),
        (status = 422, description = "`limit` out of range", body = ErrorBody),
        (status = 503, description = "Database unreachable (with Retry-After)", body = ErrorBody),
    )
)]
pub(crate) async fn list_commands(
    State(state): State<AppState>,
    WorkerNamePath(name): WorkerNamePath,
    ApiQuery(params): ApiQuery<CommandsParams>,
) -> Result<Json<CommandsPage>, ApiError> {
    let limit = params.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::validation("limit", "must be from 1 to 500"));
    }
    if state.db.worker(&name).await?.is_none() {
        return Err(ApiError::WorkerNotFound(name));
    }
    let commands: Vec<CommandView> = state
        .db
        .worker_commands(&name, limit)
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(Json(CommandsPage {
        worker_name: name,
        commands,
    }))
}
