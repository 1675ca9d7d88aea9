//! The JSON shapes the API answers with.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::db::WorkerRow;

/// Epoch seconds with microseconds, as the design document's `deployed_at`.
pub fn epoch(at: DateTime<Utc>) -> f64 {
    at.timestamp_micros() as f64 / 1e6
}

/// UTC ISO-8601 ending in `Z`, with milliseconds.
pub fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A worker as every endpoint shows it: the design document's fields first, then ours.
#[derive(Debug, Serialize)]
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
