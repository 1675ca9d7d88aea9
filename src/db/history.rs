use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::Db;

/// One row of a worker's (or the fleet's) event history.
#[derive(Debug, Clone, FromRow)]
pub struct EventRow {
    pub id: i64,
    pub worker_name: Option<String>,
    pub serial_number: Option<String>,
    pub kind: String,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// One deployment (registration) of a worker name.
#[derive(Debug, Clone, FromRow)]
pub struct DeploymentRow {
    pub serial_number: String,
    pub model_number: String,
    pub worker_type: String,
    pub api_url: String,
    pub user_id: String,
    pub deployed_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub end_reason: Option<String>,
}

impl Db {
    /// A worker's events, newest first: up to `limit` with an id below `before`.
    pub async fn worker_events(
        &self,
        worker_name: &str,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<EventRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, worker_name, serial_number, kind, from_status, to_status, reason, at
             FROM worker_events
             WHERE worker_name = $1 AND ($2::bigint IS NULL OR id < $2)
             ORDER BY id DESC LIMIT $3",
        )
        .bind(worker_name)
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// Every deployment of a worker name, newest first.
    pub async fn deployments(&self, worker_name: &str) -> Result<Vec<DeploymentRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT serial_number, model_number, worker_type, api_url, user_id, deployed_at,
                    ended_at, end_reason
             FROM deployments WHERE worker_name = $1
             ORDER BY deployed_at DESC, serial_number",
        )
        .bind(worker_name)
        .fetch_all(&self.pool)
        .await
    }
}

/// An event with the family of its deployment, for the event stream's filters.
#[derive(Debug, Clone, FromRow)]
pub struct StreamEventRow {
    #[sqlx(flatten)]
    pub event: EventRow,
    pub family: Option<String>,
}

/// The channel on which every new worker event's id is announced (see the migration).
pub const EVENTS_CHANNEL: &str = "dals_worker_events";

impl Db {
    /// Events with an id above `after`, oldest first, at most `limit`.
    pub async fn events_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StreamEventRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT e.id, e.worker_name, e.serial_number, e.kind, e.from_status, e.to_status,
                    e.reason, e.at, d.family
             FROM worker_events e LEFT JOIN deployments d ON d.serial_number = e.serial_number
             WHERE e.id > $1 ORDER BY e.id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// The registry's transactions on this database that are writing now (their ids), other
    /// than this session's: sessions of the same `application_name` as this one, so an
    /// operator's open transaction in psql is none of them. An event id that is missing while
    /// a later one is visible belongs to one of them (still committing) or to a transaction
    /// that rolled back: only the registry writes events.
    pub async fn writing_transactions(&self) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT backend_xid::text FROM pg_stat_activity
             WHERE datname = current_database() AND backend_xid IS NOT NULL
               AND application_name = current_setting('application_name')
               AND pid <> pg_backend_pid()",
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Whether none of these transactions (from `writing_transactions`) is still running.
    pub async fn transactions_ended(&self, xids: &[String]) -> Result<bool, sqlx::Error> {
        if xids.is_empty() {
            return Ok(true);
        }
        sqlx::query_scalar(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity
                                WHERE backend_xid::text = ANY ($1))",
        )
        .bind(xids)
        .fetch_one(&self.pool)
        .await
    }

    /// The ids of the events visible now among the newest `window` ids, oldest first (the
    /// last is the newest event's). Read in one statement, so what was visible is exact.
    pub async fn recent_event_ids(&self, window: i64) -> Result<Vec<i64>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT id FROM worker_events
             WHERE id > (SELECT coalesce(max(id), 0) FROM worker_events) - $1
             ORDER BY id",
        )
        .bind(window)
        .fetch_all(&self.pool)
        .await
    }

    /// A listener on the event channel, on a connection of its own.
    pub async fn listen_events(&self) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(EVENTS_CHANNEL).await?;
        Ok(listener)
    }
}
