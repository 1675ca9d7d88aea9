//! `/api/workers/...`: registration, heartbeats and what operators read.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::commands::CommandView;
use super::views::{DeploymentView, EventView, LivenessView, WorkerView, page};
use super::{ApiQuery, AppState, JsonBody, WorkerNamePath};
use crate::db::{
    DeregisterOutcome, FleetCounts, HeartbeatOutcome, ListFilter, ListOrder, NewDeployment,
    RegisterOutcome,
};
use crate::domain::{
    FamilyCode, WorkerStatus, validate_api_url, validate_serial_number, validate_user_id,
    validate_worker_name, validate_worker_type,
};
use crate::error::{ApiError, ErrorBody};
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
#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterRequest {
    /// 1-128 characters, no control characters, not a word of the API (`list`, `status`, ...).
    #[schema(required = true, example = "Josephine-user_123")]
    pub name: Option<String>,
    /// A key of the model catalog; unknown types register as Generic (DMN-GN-01).
    #[schema(required = true, example = "truemark")]
    pub worker_type: Option<String>,
    /// An http(s) URL of at most 2048 characters.
    #[schema(required = true, example = "http://localhost:8080")]
    pub api_url: Option<String>,
    /// 1-128 characters.
    #[schema(required = true, example = "user_123")]
    pub user_id: Option<String>,
    /// Anything the worker wants kept with its deployment.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// Fields the registry does not know: accepted (workers may send more than the design
    /// document's four), and named in `warnings` so a misspelt one is noticed.
    #[serde(flatten)]
    #[schema(ignore)]
    pub unknown: BTreeMap<String, Value>,
}

/// The answer to a registration: the worker plus anything the client should know.
#[derive(Debug, Serialize, ToSchema)]
pub struct Registered {
    #[serde(flatten)]
    worker: WorkerView,
    /// Notes for the worker, e.g. that its worker_type is not in the catalog.
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

/// A `serial_number` sent back by a client, when there is one, must be a serial number.
fn check_serial(serial: Option<&str>) -> Result<(), ApiError> {
    serial
        .map(validate_serial_number)
        .transpose()
        .map(|_| ())
        .map_err(|rule| ApiError::validation("serial_number", rule))
}

/// A warning per field the registry did not know and ignored; `known` lists the fields.
fn ignored_fields(unknown: &BTreeMap<String, Value>, known: &str) -> Vec<String> {
    unknown
        .keys()
        .map(|field| format!("unknown field {field:?} ignored (the fields are {known})"))
        .collect()
}

/// Registers a worker (a new deployment with a new serial number).
#[utoipa::path(
    post,
    path = "/api/workers/register",
    tag = "workers",
    request_body = RegisterRequest,
    responses(
        (status = 200, description = "Registered", body = Registered),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 422, description = "A field is missing or breaks its rule", body = ErrorBody),
        (status = 503, description = "Database unreachable (with Retry-After)", body = ErrorBody),
    )
)]
pub(crate) async fn register(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> Result<Json<Registered>, ApiError> {
    let worker_name = required(req.name, "name", validate_worker_name)?;
    let worker_type = required(req.worker_type, "worker_type", validate_worker_type)?;
    let api_url = required(req.api_url, "api_url", validate_api_url)?;
    let user_id = required(req.user_id, "user_id", validate_user_id)?;
    let ignored = ignored_fields(
        &req.unknown,
        "name, worker_type, api_url, user_id and metadata",
    );

    let outcome = state
        .db
        .register(&NewDeployment {
            worker_name,
            worker_type: worker_type.clone(),
            reject_unknown_type: state.settings.registry.reject_unknown_worker_types,
            api_url,
            user_id,
            metadata: Value::Object(req.metadata.unwrap_or_default()),
        })
        .await?;
    let (row, mut warnings) = match outcome {
        RegisterOutcome::Registered {
            row,
            generic: false,
        } => (*row, Vec::new()),
        RegisterOutcome::Registered { row, generic: true } => {
            let warning = format!(
                "worker_type {worker_type:?} is not in the model catalog; registered under \
                 the Generic family as {}",
                row.model_number
            );
            (*row, vec![warning])
        }
        RegisterOutcome::UnknownType => {
            return Err(ApiError::validation(
                "worker_type",
                format!(
                    "{worker_type:?} is not in the model catalog \
                     (GET /api/workers/models/catalog lists the known types)"
                ),
            ));
        }
    };
    warnings.extend(ignored);
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
#[derive(Debug, Deserialize, ToSchema)]
pub struct HeartbeatRequest {
    #[schema(required = true, example = "Josephine-user_123")]
    pub worker_name: Option<String>,
    /// When given, the heartbeat counts only if this is still the worker's deployment, and
    /// the answer carries `heartbeat_interval_secs` and the deployment's open `commands`.
    pub serial_number: Option<String>,
    /// Ids of delivered commands the worker has taken; they are not delivered again.
    pub acked_commands: Option<Vec<i64>>,
    /// Fields the registry does not know: accepted, and named in the answer's `warnings`
    /// (a misspelt `serial_number` would otherwise drop its protection unnoticed).
    #[serde(flatten)]
    #[schema(ignore)]
    pub unknown: BTreeMap<String, Value>,
}

/// The answer to a heartbeat. The design document's body (`worker_name` alone) is answered
/// with exactly `status` and `worker`, as its workers expect.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeartbeatAnswer {
    /// Always `updated`.
    pub status: &'static str,
    pub worker: String,
    /// The interval the registry wants (only when the heartbeat carried `serial_number`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_secs: Option<f64>,
    /// Open operator commands for this deployment (only with `serial_number`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commands: Option<Vec<CommandView>>,
    /// Fields of the heartbeat the registry ignored (only when there were any).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<String>>,
}

/// Records a heartbeat: the worker becomes `active`.
#[utoipa::path(
    post,
    path = "/api/workers/heartbeat",
    tag = "workers",
    request_body = HeartbeatRequest,
    responses(
        (status = 200, description = "Recorded", body = HeartbeatAnswer),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "No such worker (`worker_not_found`): register first", body = ErrorBody),
        (status = 409, description = "`serial_number` is not the current deployment (`serial_mismatch`)", body = ErrorBody),
        (status = 410, description = "The worker deregistered (`worker_deregistered`)", body = ErrorBody),
        (status = 422, description = "`worker_name` missing or breaking the name rule, `serial_number` not a serial number, or a field of the wrong type", body = ErrorBody),
        (status = 503, description = "Database unreachable (with Retry-After)", body = ErrorBody),
    )
)]
pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<HeartbeatRequest>,
) -> Result<Json<HeartbeatAnswer>, ApiError> {
    let name = required(req.worker_name, "worker_name", validate_worker_name)?;
    check_serial(req.serial_number.as_deref())?;
    if req.acked_commands.is_some() && req.serial_number.is_none() {
        return Err(ApiError::validation(
            "acked_commands",
            "requires serial_number (commands belong to one deployment)",
        ));
    }
    let warnings = Some(ignored_fields(
        &req.unknown,
        "worker_name, serial_number and acked_commands",
    ))
    .filter(|w| !w.is_empty());
    let outcome = state
        .db
        .heartbeat(&name, req.serial_number.as_deref())
        .await?;
    record_heartbeat(&state.metrics, &outcome);
    match outcome {
        // The design document's body, exactly, for workers that do not send their serial.
        HeartbeatOutcome::Updated { .. } => match req.serial_number.as_deref() {
            None => Ok(Json(HeartbeatAnswer {
                status: "updated",
                worker: name,
                heartbeat_interval_secs: None,
                commands: None,
                warnings,
            })),
            Some(serial) => {
                let acked = req.acked_commands.unwrap_or_default();
                let commands: Vec<CommandView> = state
                    .db
                    .exchange_commands(serial, &acked)
                    .await?
                    .into_iter()
                    .map(Into::into)
                    .collect();
                Ok(Json(HeartbeatAnswer {
                    status: "updated",
                    worker: name,
                    heartbeat_interval_secs: Some(state.settings.liveness.heartbeat_interval_secs),
                    commands: Some(commands),
                    warnings,
                }))
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
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// A misspelt parameter is refused, not ignored (it would widen the answer silently).
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// `registered`, `active`, `stale`, `offline` or `deregistered`; without it, every worker
    /// but the deregistered ones.
    pub status: Option<String>,
    pub worker_type: Option<String>,
    /// A family code such as `TM`.
    pub family: Option<String>,
    pub user_id: Option<String>,
    /// `deployed_at` (default), `-deployed_at`, `name` or `-name`.
    pub sort: Option<String>,
    /// At most this many workers (1 or more).
    pub limit: Option<i64>,
    /// Skip this many.
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
#[utoipa::path(
    get,
    path = "/api/workers/list",
    tag = "workers",
    params(ListParams),
    responses(
        (status = 200, description = "The matching workers", body = Vec<WorkerView>),
        (status = 422, description = "A filter breaks its rule", body = ErrorBody),
        (status = 503, description = "Database unreachable (with Retry-After)", body = ErrorBody),
    )
)]
pub(crate) async fn list(
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

/// One worker, whatever its status.
#[utoipa::path(
    get,
    path = "/api/workers/{name}",
    tag = "workers",
    params(("name" = String, Path, description = "The worker's name, percent-encoded")),
    responses(
        (status = 200, description = "The worker", body = WorkerView),
        (status = 400, description = "The name is not valid percent-encoded UTF-8", body = ErrorBody),
        (status = 404, description = "No such worker", body = ErrorBody),
        (status = 503, description = "Database unreachable (with Retry-After)", body = ErrorBody),
    )
)]
pub(crate) async fn worker(
    State(state): State<AppState>,
    WorkerNamePath(name): WorkerNamePath,
) -> Result<Json<WorkerView>, ApiError> {
    state
        .db
        .worker(&name)
        .await?
        .map(|row| Json(row.into()))
        .ok_or(ApiError::WorkerNotFound(name))
}

/// Workers per status.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusCounts {
    pub registered: i64,
    pub active: i64,
    pub stale: i64,
    pub offline: i64,
    pub deregistered: i64,
}

/// The registry's status, as the design document shows it, plus counts and the sweeper.
#[derive(Debug, Serialize, ToSchema)]
pub struct FleetStatus {
    pub available: bool,
    /// Workers that have not deregistered.
    pub total_workers: i64,
    pub active_workers: i64,
    /// Sorted family codes of the workers that have not deregistered.
    pub model_families: Vec<String>,
    pub counts: StatusCounts,
    /// Family code -> status -> workers.
    pub by_family: BTreeMap<String, BTreeMap<String, i64>>,
    #[serde(flatten)]
    pub liveness: LivenessView,
}

#[utoipa::path(
    get,
    path = "/api/workers/status",
    tag = "workers",
    responses(
        (status = 200, description = "Fleet status", body = FleetStatus),
        (status = 503, description = "Database unreachable (with Retry-After)", body = ErrorBody),
    )
)]
pub(crate) async fn status(State(state): State<AppState>) -> Result<Json<FleetStatus>, ApiError> {
    // One read of the fleet: the counts and the families are tallied from it.
    let by_family_rows = state.db.fleet_by_family().await?;
    let counts = FleetCounts::tally(&by_family_rows);
    let liveness = state.db.liveness_state().await?;
    let mut by_family: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for row in by_family_rows {
        by_family
            .entry(row.family)
            .or_default()
            .insert(row.status, row.workers);
    }
    Ok(Json(FleetStatus {
        available: true,
        total_workers: counts.total,
        active_workers: counts.active,
        model_families: counts.families,
        counts: StatusCounts {
            registered: counts.registered,
            active: counts.active,
            stale: counts.stale,
            offline: counts.offline,
            deregistered: counts.deregistered,
        },
        by_family,
        liveness: LivenessView::new(&liveness, &state.settings.liveness),
    }))
}

/// Query parameters of `DELETE /api/workers/{name}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// A misspelt parameter is refused, not ignored (it would widen the answer silently).
#[serde(deny_unknown_fields)]
pub struct DeregisterParams {
    /// When given, only this deployment may deregister the name.
    pub serial_number: Option<String>,
}

/// A worker's graceful shutdown. Idempotent; the worker stays in history.
#[utoipa::path(
    delete,
    path = "/api/workers/{name}",
    tag = "workers",
    params(("name" = String, Path, description = "The worker's name, percent-encoded"), DeregisterParams),
    responses(
        (status = 200, description = "Deregistered (also when it already was)", body = WorkerView),
        (status = 404, description = "No such worker", body = ErrorBody),
        (status = 409, description = "`serial_number` is not the current deployment", body = ErrorBody),
        (status = 422, description = "`serial_number` is not a serial number", body = ErrorBody),
        (status = 503, description = "Database unreachable (with Retry-After)", body = ErrorBody),
    )
)]
pub(crate) async fn deregister(
    State(state): State<AppState>,
    WorkerNamePath(name): WorkerNamePath,
    ApiQuery(params): ApiQuery<DeregisterParams>,
) -> Result<Json<WorkerView>, ApiError> {
    check_serial(params.serial_number.as_deref())?;
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
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// A misspelt parameter is refused, not ignored (it would widen the answer silently).
#[serde(deny_unknown_fields)]
pub struct EventsParams {
    /// Events with an id below this one (the previous page's `next_before`).
    pub before: Option<i64>,
    /// Page size, 1-500 (default 50).
    pub limit: Option<i64>,
}

/// A page of a worker's events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsPage {
    pub worker_name: String,
    /// Newest first.
    pub events: Vec<EventView>,
    /// Pass as `before` for the next page; null on the last page.
    pub next_before: Option<i64>,
}

/// A worker's timeline, newest first, paginated by `before`.
#[utoipa::path(
    get,
    path = "/api/workers/{name}/events",
    tag = "workers",
    params(("name" = String, Path, description = "The worker's name, percent-encoded"), EventsParams),
    responses(
        (status = 200, description = "A page of events", body = EventsPage),
        (status = 404, description = "No such worker", body = ErrorBody),
        (status = 422, description = "`limit` out of range", body = ErrorBody),
        (status = 503, description = "Database unreachable (with Retry-After)", body = ErrorBody),
    )
)]
pub(crate) async fn events(
    State(state): State<AppState>,
    WorkerNamePath(name): WorkerNamePath,
    ApiQuery(params): ApiQuery<EventsParams>,
) -> Result<Json<EventsPage>, ApiError> {
    let limit = params.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::validation("limit", "must be from 1 to 500"));
    }
    if state.db.worker(&name).await?.is_none() {
        return Err(ApiError::WorkerNotFound(name));
    }
    let rows = state
        .db
        .worker_events(&name, params.before, limit + 1)
        .await?;
    let (rows, next_before) = page(rows, limit, |r| r.id);
    let events: Vec<EventView> = rows.into_iter().map(Into::into).collect();
    Ok(Json(EventsPage {
        worker_name: name,
        events,
        next_before,
    }))
}

/// Every deployment of a worker name.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeploymentsPage {
    pub worker_name: String,
    /// Newest first.
    pub deployments: Vec<DeploymentView>,
}

/// Every deployment of a worker name, newest first.
#[utoipa::path(
    get,
    path = "/api/workers/{name}/deployments",
    tag = "workers",
    params(("name" = String, Path, description = "The worker's name, percent-encoded")),
    responses(
        (status = 200, description = "The deployments", body = DeploymentsPage),
        (status = 404, description = "The name never registered", body = ErrorBody),
        (status = 503, description = "Database unreachable (with Retry-After)", body = ErrorBody),
    )
)]
pub(crate) async fn deployments(
    State(state): State<AppState>,
    WorkerNamePath(name): WorkerNamePath,
) -> Result<Json<DeploymentsPage>, ApiError> {
    let rows = state.db.deployments(&name).await?;
    if rows.is_empty() {
        return Err(ApiError::WorkerNotFound(name));
    }
    let deployments: Vec<DeploymentView> = rows.into_iter().map(Into::into).collect();
    Ok(Json(DeploymentsPage {
        worker_name: name,
        deployments,
    }))
}
