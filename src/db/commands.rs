//! Operator commands for workers: queued by operators or by the sweeper, delivered in
//! heartbeat responses until the worker acknowledges them.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::Db;

/// The columns of a `CommandRow`, for `concat!` into statements.
macro_rules! command_columns {
    () => {
        "id, worker_name, serial_number, command, status, source, reason, created_at, \
         delivered_at, acknowledged_at, cancelled_at"
    };
}

/// One command as stored.
#[derive(Debug, Clone, FromRow)]
pub struct CommandRow {
    pub id: i64,
    pub worker_name: String,
    pub serial_number: String,
    pub command: String,
    pub status: String,
    pub source: String,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
}

/// What queueing a command found.
#[derive(Debug, Clone)]
pub enum QueueOutcome {
    /// Queued now, or already open for this deployment (one open command of a kind is enough).
    Queued(Box<CommandRow>),
    UnknownWorker,
    Deregistered,
}

/// How often queueing retries when the open command it collided with was closed meanwhile.
const QUEUE_ATTEMPTS: usize = 3;

impl Db {
    /// Queues `command` for the worker's current deployment. When the same command is already
    /// open for that deployment, that one is returned instead of a second.
    pub async fn queue_command(
        &self,
        worker_name: &str,
        command: &str,
        reason: &str,
    ) -> Result<QueueOutcome, sqlx::Error> {
        for _ in 0..QUEUE_ATTEMPTS {
            let mut tx = self.pool.begin().await?;
            // A share lock on the worker row: a registration or deregistration of the name
            // (which lock it for update) waits for this command, then cancels it with the
            // deployment, so no command is left open on an ended deployment.
            let current: Option<(String, String)> = sqlx::query_as(
                "SELECT serial_number, status FROM workers WHERE worker_name = $1 FOR SHARE",
            )
            .bind(worker_name)
            .fetch_optional(&mut *tx)
            .await?;
            let serial = match current {
                None => return Ok(QueueOutcome::UnknownWorker),
                Some((_, status)) if status == "deregistered" => {
                    return Ok(QueueOutcome::Deregistered);
                }
                Some((serial, _)) => serial,
            };
            let inserted: Option<CommandRow> = sqlx::query_as(concat!(
                "INSERT INTO worker_commands
                     (worker_name, serial_number, command, source, reason, created_at)
                 VALUES ($1, $2, $3, 'operator', $4, clock_timestamp())
                 ON CONFLICT (serial_number, command) WHERE status IN ('pending', 'delivered')
                 DO NOTHING
                 RETURNING ",
                command_columns!()
            ))
            .bind(worker_name)
            .bind(&serial)
            .bind(command)
            .bind(reason)
            .fetch_optional(&mut *tx)
            .await?;
            // A new statement sees an open command committed while this one waited on it.
            let row = match inserted {
                Some(row) => Some(row),
                None => {
                    sqlx::query_as(concat!(
                        "SELECT ",
                        command_columns!(),
                        " FROM worker_commands
                         WHERE serial_number = $1 AND command = $2
                           AND status IN ('pending', 'delivered')"
                    ))
                    .bind(&serial)
                    .bind(command)
                    .fetch_optional(&mut *tx)
                    .await?
                }
            };
            tx.commit().await?;
            if let Some(row) = row {
                return Ok(QueueOutcome::Queued(Box::new(row)));
            }
        }
        Err(sqlx::Error::Protocol(
            "queueing a command kept colliding with commands being acknowledged".into(),
        ))
    }

    /// The commands of a worker name (every deployment), newest first.
    pub async fn worker_commands(
        &self,
        worker_name: &str,
        limit: i64,
    ) -> Result<Vec<CommandRow>, sqlx::Error> {
        sqlx::query_as(concat!(
            "SELECT ",
            command_columns!(),
            " FROM worker_commands WHERE worker_name = $1 ORDER BY id DESC LIMIT $2"
        ))
        .bind(worker_name)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// The command exchange of a heartbeat from deployment `serial_number`: acknowledges the
    /// delivered commands in `acked`, then returns every command still open (marking it
    /// delivered), oldest first. Unknown or foreign ids in `acked` are ignored, so a worker
    /// may repeat an acknowledgement whose answer it lost.
    pub async fn exchange_commands(
        &self,
        serial_number: &str,
        acked: &[i64],
    ) -> Result<Vec<CommandRow>, sqlx::Error> {
        let mut rows: Vec<CommandRow> = sqlx::query_as(concat!(
            "WITH acked AS (
                 UPDATE worker_commands
                 SET status = 'acknowledged',
                     acknowledged_at = greatest(clock_timestamp(), delivered_at)
                 WHERE serial_number = $1 AND id = ANY($2) AND status = 'delivered'
             )
             UPDATE worker_commands
             SET status = 'delivered',
                 delivered_at = coalesce(delivered_at, greatest(clock_timestamp(), created_at))
             WHERE serial_number = $1 AND status IN ('pending', 'delivered')
               AND NOT (id = ANY($2) AND status = 'delivered')
             RETURNING ",
            command_columns!()
        ))
        .bind(serial_number)
        .bind(acked)
        .fetch_all(&self.pool)
        .await?;
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }
}
