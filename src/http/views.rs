//! The JSON shapes the API answers with.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::db::{DeploymentRow, EventRow, LivenessState, WorkerRow};
use crate::settings::LivenessSettings;

/// Epoch seconds with microseconds, as the design document's `deployed_at`.
pub fn epoch(at: DateTime<Utc>) -> f64 {
    at.timestamp_micros() as f64 / 1e6
}

/// UTC ISO-8601 ending in `Z`, with milliseconds.
pub fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A worker as every endpoint shows it: the design document's fields first, then ours.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerView {
    pub worker_name: String,
    pub worker_type: String,
    pub model_number: String,
    pub serial_number: String,
    pub api_url: String,
    pub user_id: String,
    pub deployed_at: f64,
    pub deployed_iso: String,
    pub status: String,
    /// Epoch seconds of the last heartbeat, `null` before the first.
    pub heartbeat: Option<f64>,
    pub last_heartbeat_iso: Option<String>,
    pub heartbeat_count: i64,
    pub status_changed_at: String,
    pub family: String,
    pub generation: i16,
    /// The object the worker sent at registration.
    #[schema(value_type = Object)]
    pub metadata: Value,
}

impl From<WorkerRow> for WorkerView {
    fn from(row: WorkerRow) -> Self {
        WorkerView {
            deployed_at: epoch(row.deployed_at),
            deployed_iso: iso(row.deployed_at),
            heartbeat: row.last_heartbeat_at.map(epoch),
            last_heartbeat_iso: row.last_heartbeat_at.map(iso),
            status_changed_at: iso(row.status_changed_at),
            worker_name: row.worker_name,
            worker_type: row.worker_type,
            model_number: row.model_number,
            serial_number: row.serial_number,
            api_url: row.api_url,
            user_id: row.user_id,
            status: row.status,
            heartbeat_count: row.heartbeat_count,
            family: row.family,
            generation: row.generation,
            metadata: row.metadata,
        }
    }
}

/// One event of the history.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub id: i64,
    pub worker_name: Option<String>,
    pub serial_number: Option<String>,
    pub kind: String,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub reason: String,
    pub at: String,
}

impl From<EventRow> for EventView {
    fn from(row: EventRow) -> Self {
        EventView {
            id: row.id,
            worker_name: row.worker_name,
            serial_number: row.serial_number,
            kind: row.kind,
            from_status: row.from_status,
            to_status: row.to_status,
            reason: row.reason,
            at: iso(row.at),
        }
    }
}

/// One deployment of a worker name.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeploymentView {
    pub serial_number: String,
    pub model_number: String,
    pub worker_type: String,
    pub api_url: String,
    pub user_id: String,
    pub deployed_at: String,
    pub ended_at: Option<String>,
    pub end_reason: Option<String>,
}

impl From<DeploymentRow> for DeploymentView {
    fn from(row: DeploymentRow) -> Self {
        DeploymentView {
            serial_number: row.serial_number,
            model_number: row.model_number,
            worker_type: row.worker_type,
            api_url: row.api_url,
            user_id: row.user_id,
            deployed_at: iso(row.deployed_at),
            ended_at: row.ended_at.map(iso),
            end_reason: row.end_reason,
        }
    }
}

/// The sweeper brake, as `/api/workers/status` shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct BrakeView {
    /// Whether stale transitions are being held.
    pub engaged: bool,
    pub held_since: Option<String>,
    /// Stale transitions held back.
    pub held_transitions: i32,
    /// The live fleet when the brake last looked.
    pub live_workers: i32,
    /// `DALS_LIVENESS__BRAKE_FRACTION`.
    pub fraction: f64,
    /// `DALS_LIVENESS__BRAKE_MIN_WORKERS`.
    pub min_workers: i64,
    /// When an operator released it (the next sweep applies what it held).
    pub release_requested_at: Option<String>,
}

/// The replica that sweeps.
#[derive(Debug, Serialize, ToSchema)]
pub struct SweeperView {
    pub instance: Option<String>,
    pub last_sweep_at: Option<String>,
}

/// The sweeper's brake, grace and leader.
#[derive(Debug, Serialize, ToSchema)]
pub struct LivenessView {
    pub brake: BrakeView,
    /// No worker is marked stale before this time (after a registry outage); null otherwise.
    pub grace_until: Option<String>,
    pub sweeper: SweeperView,
}

impl LivenessView {
    pub fn new(state: &LivenessState, settings: &LivenessSettings) -> Self {
        LivenessView {
            brake: BrakeView {
                engaged: state.brake_engaged_at.is_some(),
                held_since: state.brake_engaged_at.map(iso),
                held_transitions: state.brake_held,
                live_workers: state.brake_live,
                fraction: settings.brake_fraction,
                min_workers: settings.brake_min_workers,
                release_requested_at: state.brake_release_requested_at.map(iso),
            },
            grace_until: state
                .grace_until
                .filter(|until| *until > state.now)
                .map(iso),
            sweeper: SweeperView {
                instance: state.sweeper_instance.clone(),
                last_sweep_at: state.last_sweep_at.map(iso),
            },
        }
    }
}

/// A page of `limit` rows, newest first, from a read of up to `limit + 1`, and the `before`
/// of the next page: the last row's id when there is more, none on the last page.
pub fn page<T>(mut rows: Vec<T>, limit: i64, id: impl Fn(&T) -> i64) -> (Vec<T>, Option<i64>) {
    let limit = usize::try_from(limit).unwrap_or(0);
    if rows.len() <= limit {
        return (rows, None);
    }
    rows.truncate(limit);
    let next = rows.last().map(id);
    (rows, next)
}
