//! `/api/workers/...`: registration, heartbeats and what operators read.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::commands::CommandView;
use super::views::{DeploymentView, EventView, WorkerView, liveness_view};
use super::{ApiPath, ApiQuery, AppState, JsonBody};
use crate::db::{DeregisterOutcome, HeartbeatOutcome, ListFilter, ListOrder, NewDeployment};
use crate::domain::{
    FamilyCode, ModelNumber, WorkerStatus, validate_api_url, validate_user_id,
    validate_worker_name, validate_worker_type,
};
use crate::error::ApiError;
use crate::metrics::Metrics;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/workers/register", post(register))
        .route("/api/workers/heartbeat", post(heartbeat))
        .route("/api/workers/list", get(list))
        .route("/api/workers/status", get(status))
        .route("/api/workers/{name}", get(worker).delete(deregister))
        .route("/api/workers/{name}/events", get(events))
        .route("/api/workers/{name}/deployments", get(deployments))
}

/// The body of `POST /api/workers/register`. Fields are optional here so that a missing one
/// is reported by name rather than as a parse failure.
#[derive(Debug, Deserialize)]
pub struct RegisterRequest {
    pub name: Option<String>,
    pub worker_type: Option<String>,
    pub api_url: Option<String>,
    pub user_id: Option<String>,
    pub metadata: Option<Map<String, Value>>,
}

/// The answer to a registration: the worker plus anything the client should know.
#[derive(Debug, Serialize)]
struct Registered {
    #[serde(flatten)]
    worker: WorkerView,
    warnings: Vec<String>,
    /// The heartbeat interval the registry asks for.
    heartbeat_interval_secs: f64,
    /// Always empty: a new deployment is a new process, and the previous deployment's
    /// commands were cancelled with it.
    commands: Vec<CommandView>,
}

/// A required field, checked by its rule.
fn required(
    value: Option<String>,
    field: &str,
    rule: fn(&str) -> Result<(), String>,
) -> Result<String, ApiError> {
    let value = value.ok_or_else(|| ApiError::validation(field, "is required"))?;
    rule(&value).map_err(|r| ApiError::validation(field, r))?;
    Ok(value)
}

async fn register(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> Result<Json<Registered>, ApiError> {
    let worker_name = required(req.name, "name", validate_worker_name)?;
    let worker_type = required(req.worker_type, "worker_type", validate_worker_type)?;
    let api_url = required(req.api_url, "api_url", validate_api_url)?;
    let user_id = required(req.user_id, "user_id", validate_user_id)?;

    let mut warnings = Vec::new();
    let model = match state.db.model_for(&worker_type).await? {
        Some(model) => model,
        None if state.settings.registry.reject_unknown_worker_types => {
            return Err(ApiError::validation(
                "worker_type",
                format!(
                    "{worker_type:?} is not in the model catalog \
                     (GET /api/workers/models/catalog lists the known types)"
                ),
            ));
        }
        None => {
            let generic = match state.db.model_for("generic").await? {
                Some(model) => model,
                None => ModelNumber::new(FamilyCode::generic(), 1).map_err(|e| {
                    ApiError::Internal(anyhow::anyhow!("generic model number: {e}"))
                })?,
            };
            warnings.push(format!(
                "worker_type {worker_type:?} is not in the model catalog; registered under \
                 the Generic family as {generic}"
            ));
            generic
        }
    };

    let row = state
        .db
        .register(&NewDeployment {
            worker_name,
            worker_type,
            model,
            api_url,
            user_id,
            metadata: Value::Object(req.metadata.unwrap_or_default()),
        })
        .await?;
    tracing::info!(
        worker = %row.worker_name,
        serial = %row.serial_number,
        "worker registered"
    );
    state
        .metrics
        .registrations
        .with_label_values(&[row.family.as_str()])
        .inc();
    Ok(Json(Registered {
        worker: row.into(),
        warnings,
        heartbeat_interval_secs: state.settings.liveness.heartbeat_interval_secs,
        commands: Vec::new(),
    }))
}

/// The body of `POST /api/workers/heartbeat`.
#[derive(Debug, Deserialize)]
pub struct HeartbeatRequest {
    pub worker_name: Option<String>,
    /// When given, the heartbeat counts only if this is still the worker's deployment, and
    /// the answer carries `heartbeat_interval_secs` and the deployment's open `commands`.
    pub serial_number: Option<String>,
    /// Ids of delivered commands the worker has taken; they are not delivered again.
    pub acked_commands: Option<Vec<i64>>,
}

async fn heartbeat(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<HeartbeatRequest>,
) -> Result<Json<Value>, ApiError> {
    let name = req
        .worker_name
        .ok_or_else(|| ApiError::validation("worker_name", "is required"))?;
    if req.acked_commands.is_some() && req.serial_number.is_none() {
        return Err(ApiError::validation(
            "acked_commands",
            "requires serial_number (commands belong to one deployment)",
        ));
    }
    let outcome = state
        .db
        .heartbeat(&name, req.serial_number.as_deref())
        .await?;
    record_heartbeat(&state.metrics, &outcome);
    match outcome {
        // The design document's body, exactly, for workers that do not send their serial.
        HeartbeatOutcome::Updated { .. } => match req.serial_number.as_deref() {
            None => Ok(Json(json!({ "status": "updated", "worker": name }))),
            Some(serial) => {
                let acked = req.acked_commands.unwrap_or_default();
                let commands: Vec<CommandView> = state
                    .db
                    .exchange_commands(serial, &acked)
                    .await?
                    .into_iter()
                    .map(Into::into)
                    .collect();
                Ok(Json(json!({
                    "status": "updated",
                    "worker": name,
                    "heartbeat_interval_secs": state.settings.liveness.heartbeat_interval_secs,
                    "commands": commands,
                })))
            }
        },
        HeartbeatOutcome::UnknownWorker => Err(ApiError::WorkerNotFound(name)),
        HeartbeatOutcome::Deregistered => Err(ApiError::WorkerDeregistered(name)),
        HeartbeatOutcome::SerialMismatch { current } => Err(ApiError::SerialMismatch {
            worker: name,
            current,
            sent: req.serial_number.unwrap_or_default(),
        }),
    }
}

fn record_heartbeat(metrics: &Metrics, outcome: &HeartbeatOutcome) {
    let label = match outcome {
        HeartbeatOutcome::Updated { since_previous } => {
            if let Some(secs) = since_previous {
                metrics.heartbeat_interval.observe(*secs);
            }
            "updated"
        }
        HeartbeatOutcome::UnknownWorker => "unknown_worker",
        HeartbeatOutcome::Deregistered => "deregistered",
        HeartbeatOutcome::SerialMismatch { .. } => "serial_mismatch",
    };
    metrics.heartbeats.with_label_values(&[label]).inc();
}

/// Query parameters of `GET /api/workers/list`.
#[derive(Debug, Deserialize)]
pub struct ListParams {
    pub status: Option<String>,
    pub worker_type: Option<String>,
    pub family: Option<String>,
    pub user_id: Option<String>,
    /// `deployed_at` (default), `-deployed_at`, `name` or `-name`.
    pub sort: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

impl ListParams {
    fn parse(self) -> Result<(ListFilter, ListOrder), ApiError> {
        let status = self
            .status
            .map(|s| s.parse::<WorkerStatus>())
            .transpose()
            .map_err(|rule| ApiError::validation("status", rule))?;
        let family = self
            .family
            .map(|f| f.parse::<FamilyCode>())
            .transpose()
            .map_err(|rule| ApiError::validation("family", rule))?;
        let order = match self.sort.as_deref() {
            None | Some("deployed_at") => ListOrder::DeployedAt,
            Some("-deployed_at") => ListOrder::DeployedAtDesc,
            Some("name") => ListOrder::Name,
            Some("-name") => ListOrder::NameDesc,
            Some(_) => {
                return Err(ApiError::validation(
                    "sort",
                    "must be one of deployed_at, -deployed_at, name, -name",
                ));
            }
        };
        if self.limit.is_some_and(|l| l < 1) {
            return Err(ApiError::validation("limit", "must be at least 1"));
        }
        if self.offset.is_some_and(|o| o < 0) {
            return Err(ApiError::validation("offset", "must be 0 or more"));
        }
        let filter = ListFilter {
            status,
            worker_type: self.worker_type,
            family: family.map(|f| f.to_string()),
            user_id: self.user_id,
            limit: self.limit,
            offset: self.offset,
        };
        Ok((filter, order))
    }
}

/// Streams the list as a JSON array: the fleet is never held in memory. The first row is
/// fetched before answering so that an unreachable database is a clean 503.
async fn list(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Response, ApiError> {
    let (filter, order) = params.parse()?;
    let mut rows = Box::pin(state.db.list_workers(filter, order));
    let first = rows.try_next().await?;
    let body = async_stream::stream! {
        yield Ok::<_, std::io::Error>(Bytes::from_static(b"["));
        if let Some(first) = first {
            yield Ok(to_json(first.into(), false));
            while let Some(row) = rows.next().await {
                match row {
                    Ok(row) => yield Ok(to_json(row.into(), true)),
                    Err(e) => {
                        tracing::error!(error = %e, "worker list stream failed");
                        yield Err(std::io::Error::other(e));
                        return;
                    }
                }
            }
        }
        yield Ok(Bytes::from_static(b"]"));
    };
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response())
}

fn to_json(view: WorkerView, comma: bool) -> Bytes {
    let mut out = Vec::with_capacity(512);
    if comma {
        out.push(b',');
    }
    // Serializing plain strings and numbers into a Vec cannot fail.
    serde_json::to_writer(&mut out, &view).expect("a worker serializes");
    Bytes::from(out)
}

async fn worker(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<WorkerView>, ApiError> {
    state
        .db
        .worker(&name)
        .await?
        .map(|row| Json(row.into()))
        .ok_or(ApiError::WorkerNotFound(name))
}

async fn status(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let counts = state.db.fleet_counts().await?;
    let by_family = state.db.fleet_by_family().await?;
    let liveness = state.db.liveness_state().await?;
    let mut families = Map::new();
    for row in by_family {
        let entry = families
            .entry(row.family)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("family entries are objects");
        entry.insert(row.status, json!(row.workers));
    }
    let mut body = json!({
        "available": true,
        "total_workers": counts.total,
        "active_workers": counts.active,
        "model_families": counts.families,
        "counts": {
            "registered": counts.registered,
            "active": counts.active,
            "stale": counts.stale,
            "offline": counts.offline,
            "deregistered": counts.deregistered,
        },
        "by_family": families,
    });
    if let (Value::Object(body), Value::Object(extra)) = (
        &mut body,
        liveness_view(&liveness, &state.settings.liveness),
    ) {
        body.extend(extra);
    }
    Ok(Json(body))
}

/// Query parameters of `DELETE /api/workers/{name}`.
#[derive(Debug, Deserialize)]
pub struct DeregisterParams {
    /// When given, only this deployment may deregister the name.
    pub serial_number: Option<String>,
}

/// A worker's graceful shutdown. Idempotent; the worker stays in history.
async fn deregister(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(params): ApiQuery<DeregisterParams>,
) -> Result<Json<WorkerView>, ApiError> {
    match state
        .db
        .deregister(&name, params.serial_number.as_deref())
        .await?
    {
        DeregisterOutcome::Deregistered(row) => {
            tracing::info!(worker = %name, "worker deregistered");
            Ok(Json((*row).into()))
        }
        DeregisterOutcome::UnknownWorker => Err(ApiError::WorkerNotFound(name)),
        DeregisterOutcome::SerialMismatch { current } => Err(ApiError::SerialMismatch {
            worker: name,
            current,
            sent: params.serial_number.unwrap_or_default(),
        }),
    }
}

/// Paging of a worker's events.
#[derive(Debug, Deserialize)]
pub struct EventsParams {
    /// Events with an id below this one (the previous page's `next_before`).
    pub before: Option<i64>,
    /// Page size, 1-500 (default 50).
    pub limit: Option<i64>,
}

/// A worker's timeline, newest first, paginated by `before`.
async fn events(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(params): ApiQuery<EventsParams>,
) -> Result<Json<Value>, ApiError> {
    let limit = params.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::validation("limit", "must be from 1 to 500"));
    }
    if state.db.worker(&name).await?.is_none() {
        return Err(ApiError::WorkerNotFound(name));
    }
    let rows = state.db.worker_events(&name, params.before, limit).await?;
    let next_before = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    let events: Vec<EventView> = rows.into_iter().map(Into::into).collect();
    Ok(Json(json!({
        "worker_name": name,
        "events": events,
        "next_before": next_before,
    })))
}

/// Every deployment of a worker name, newest first.
async fn deployments(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let rows = state.db.deployments(&name).await?;
    if rows.is_empty() {
        return Err(ApiError::WorkerNotFound(name));
    }
    let deployments: Vec<DeploymentView> = rows.into_iter().map(Into::into).collect();
    Ok(Json(
        json!({ "worker_name": name, "deployments": deployments }),
    ))
}
