use chrono::{DateTime, Utc};
use futures::Stream;
use futures::TryStreamExt;
use serde_json::Value;
use sqlx::{FromRow, PgConnection};

use super::{Db, REGISTER_ATTEMPTS, retry_pause};
use crate::domain::{FamilyCode, ModelNumber, SerialNumber, WorkerStatus};

/// The columns of a `WorkerRow`, for `concat!` into statements.
macro_rules! worker_columns {
    () => {
        "worker_name, worker_type, family, generation, model_number, serial_number, api_url, \
         user_id, metadata, status, deployed_at, status_changed_at, last_heartbeat_at, \
         heartbeat_count"
    };
}

/// A worker's current state.
#[derive(Debug, Clone, FromRow)]
pub struct WorkerRow {
    pub worker_name: String,
    pub worker_type: String,
    pub family: String,
    pub generation: i16,
    pub model_number: String,
    pub serial_number: String,
    pub api_url: String,
    pub user_id: String,
    pub metadata: Value,
    pub status: String,
    pub deployed_at: DateTime<Utc>,
    pub status_changed_at: DateTime<Utc>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub heartbeat_count: i64,
}

/// What a registration stores.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    pub worker_name: String,
    pub worker_type: String,
    /// Refuse a worker_type missing from the catalog instead of registering it as Generic.
    pub reject_unknown_type: bool,
    pub api_url: String,
    pub user_id: String,
    pub metadata: Value,
}

/// What a registration did.
#[derive(Debug, Clone)]
pub enum RegisterOutcome {
    /// Registered; `generic` when the worker_type is not in the catalog and the worker was
    /// registered under the Generic family.
    Registered { row: Box<WorkerRow>, generic: bool },
    /// The worker_type is not in the catalog and unknown types are refused.
    UnknownType,
}

/// What a heartbeat found.
#[derive(Debug, Clone, PartialEq)]
pub enum HeartbeatOutcome {
    /// Recorded; with the seconds since the worker's previous heartbeat, if it had one.
    Updated {
        since_previous: Option<f64>,
    },
    UnknownWorker,
    Deregistered,
    SerialMismatch {
        current: String,
    },
}

/// What a deregistration found.
#[derive(Debug, Clone)]
pub enum DeregisterOutcome {
    /// The worker is (now, or already was) deregistered.
    Deregistered(Box<WorkerRow>),
    UnknownWorker,
    SerialMismatch {
        current: String,
    },
}

/// Workers of one family in one status.
#[derive(Debug, Clone, FromRow)]
pub struct FamilyStatusCount {
    pub family: String,
    pub status: String,
    pub workers: i64,
}

/// Filters of the worker list; `None` matches everything. Without a status, deregistered
/// workers are left out.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<WorkerStatus>,
    pub worker_type: Option<String>,
    pub family: Option<String>,
    pub user_id: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// Orders of the worker list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ListOrder {
    /// Oldest deployment first (the default).
    #[default]
    DeployedAt,
    /// Newest deployment first.
    DeployedAtDesc,
    Name,
    NameDesc,
}

/// Worker counts for the status endpoint, tallied from one per-family-and-status read.
#[derive(Debug, Clone, Default)]
pub struct FleetCounts {
    pub total: i64,
    pub registered: i64,
    pub active: i64,
    pub stale: i64,
    pub offline: i64,
    pub deregistered: i64,
    /// Sorted codes of the families with a worker that has not deregistered.
    pub families: Vec<String>,
}

impl FleetCounts {
    /// Sums the rows of `fleet_by_family` (sorted by family) per status.
    pub fn tally(rows: &[FamilyStatusCount]) -> Self {
        let mut counts = FleetCounts::default();
        for row in rows {
            let slot = match row.status.as_str() {
                "registered" => &mut counts.registered,
                "active" => &mut counts.active,
                "stale" => &mut counts.stale,
                "offline" => &mut counts.offline,
                _ => &mut counts.deregistered,
            };
            *slot += row.workers;
            if row.status != "deregistered" {
                counts.total += row.workers;
                if counts.families.last() != Some(&row.family) {
                    counts.families.push(row.family.clone());
                }
            }
        }
        counts
    }
}

macro_rules! list_sql {
    ($order:literal) => {
        concat!(
            "SELECT ",
            worker_columns!(),
            " FROM workers ",
            "WHERE (($1::text IS NULL AND status <> 'deregistered') OR status = $1) ",
            "AND ($2::text IS NULL OR worker_type = $2) ",
            "AND ($3::text IS NULL OR family = $3) ",
            "AND ($4::text IS NULL OR user_id = $4) ",
            "ORDER BY ",
            $order,
            " LIMIT $5 OFFSET $6"
        )
    };
}

/// A registration that lost a race: a unique constraint (a serial collision), or a deadlock or
/// serialization failure with another writer. A fresh transaction settles it.
fn lost_a_race(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if db.is_unique_violation() || matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

/// The advisory lock class under which registrations of one name queue (the second key is
/// the name's hash). Two-key advisory locks never meet the sweeper's one-key lock.
const NAME_LOCK_CLASS: i32 = 0x444E_414D; // "DNAM"

impl Db {
    /// Registers a deployment: a new serial, the name's previous deployment closed, the worker
    /// row (re)set to `registered`, and an event, all in one transaction. Retries when it
    /// loses a race (a serial collision, a deadlock).
    pub async fn register(&self, new: &NewDeployment) -> Result<RegisterOutcome, sqlx::Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut tx = self.pool.begin().await?;
            match register_once(&mut tx, new).await {
                Ok(outcome) => {
                    tx.commit().await?;
                    return Ok(outcome);
                }
                Err(e) if lost_a_race(&e) && attempt < REGISTER_ATTEMPTS => {
                    tx.rollback().await?;
                    tracing::debug!(attempt, error = %e, "registration raced; retrying");
                    tokio::time::sleep(retry_pause(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Records a heartbeat (database time) when the worker exists, has not deregistered and,
    /// when a serial is given, is still that deployment. One statement: the status change,
    /// the heartbeat row and any event land together.
    pub async fn heartbeat(
        &self,
        worker_name: &str,
        serial_number: Option<&str>,
    ) -> Result<HeartbeatOutcome, sqlx::Error> {
        let row: Option<(String, String, bool, Option<f64>)> = sqlx::query_as(
            "WITH current AS (
                 SELECT worker_name, serial_number, status, last_heartbeat_at FROM workers
                 WHERE worker_name = $1 FOR UPDATE
             ), beat AS (
                 UPDATE workers w
                 SET status = 'active',
                     -- Read after the row lock, so it never precedes a registration that
                     -- held the lock.
                     last_heartbeat_at = t.at,
                     heartbeat_count = w.heartbeat_count + 1,
                     status_changed_at = CASE WHEN w.status = 'active'
                                              THEN w.status_changed_at ELSE t.at END
                 FROM current c, LATERAL (SELECT clock_timestamp() AS at) t
                 WHERE w.worker_name = c.worker_name
                   AND c.status <> 'deregistered'
                   AND ($2::text IS NULL OR c.serial_number = $2)
                 RETURNING w.worker_name, w.serial_number, c.status AS from_status,
                           w.last_heartbeat_at AS at
             ), logged AS (
                 INSERT INTO heartbeats (worker_name, serial_number, received_at)
                 SELECT worker_name, serial_number, at FROM beat
             ), evented AS (
                 INSERT INTO worker_events
                     (worker_name, serial_number, kind, from_status, to_status, reason, at)
                 SELECT worker_name, serial_number,
                        CASE WHEN from_status = 'registered' THEN 'first_heartbeat'
                             ELSE 'recovered' END,
                        from_status, 'active', 'heartbeat received', at
                 FROM beat WHERE from_status <> 'active'
             )
             SELECT c.status, c.serial_number, EXISTS (SELECT 1 FROM beat),
                    extract(epoch FROM (SELECT at FROM beat) - c.last_heartbeat_at)::float8
             FROM current c",
        )
        .bind(worker_name)
        .bind(serial_number)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            None => HeartbeatOutcome::UnknownWorker,
            Some((_, _, true, since_previous)) => HeartbeatOutcome::Updated { since_previous },
            // An old process hears that it was replaced, even when its successor has since
            // deregistered: it must not take the name back.
            Some((_, current, false, _)) if serial_number.is_some_and(|s| s != current) => {
                HeartbeatOutcome::SerialMismatch { current }
            }
            Some(_) => HeartbeatOutcome::Deregistered,
        })
    }

    /// One worker by name, whatever its status.
    pub async fn worker(&self, worker_name: &str) -> Result<Option<WorkerRow>, sqlx::Error> {
        sqlx::query_as(concat!(
            "SELECT ",
            worker_columns!(),
            " FROM workers WHERE worker_name = $1"
        ))
        .bind(worker_name)
        .fetch_optional(&self.pool)
        .await
    }

    /// Streams the workers that match, row by row, so the fleet is never held in memory.
    pub fn list_workers(
        &self,
        filter: ListFilter,
        order: ListOrder,
    ) -> impl Stream<Item = Result<WorkerRow, sqlx::Error>> + Send + 'static {
        let sql = match order {
            ListOrder::DeployedAt => list_sql!("deployed_at, worker_name"),
            ListOrder::DeployedAtDesc => list_sql!("deployed_at DESC, worker_name"),
            ListOrder::Name => list_sql!("worker_name"),
            ListOrder::NameDesc => list_sql!("worker_name DESC"),
        };
        let pool = self.pool.clone();
        async_stream::try_stream! {
            let mut rows = sqlx::query_as::<_, WorkerRow>(sql)
                .bind(filter.status.map(WorkerStatus::as_str))
                .bind(filter.worker_type)
                .bind(filter.family)
                .bind(filter.user_id)
                .bind(filter.limit)
                .bind(filter.offset)
                .fetch(&pool);
            while let Some(row) = rows.try_next().await? {
                yield row;
            }
        }
    }

    /// Deregisters a worker (its graceful shutdown): status `deregistered`, its deployment
    /// closed, an event. Idempotent. With a serial, only that deployment may deregister.
    pub async fn deregister(
        &self,
        worker_name: &str,
        serial_number: Option<&str>,
    ) -> Result<DeregisterOutcome, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // Lock the worker first and act in the next statement: its snapshot is taken after the
        // lock, so it sees the deployment of a registration that committed while this waited.
        let current: Option<(String, String)> = sqlx::query_as(
            "SELECT serial_number, status FROM workers WHERE worker_name = $1 FOR UPDATE",
        )
        .bind(worker_name)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((current, status)) = current else {
            return Ok(DeregisterOutcome::UnknownWorker);
        };
        if serial_number.is_some_and(|s| s != current) {
            return Ok(DeregisterOutcome::SerialMismatch { current });
        }
        let row: WorkerRow = if status == "deregistered" {
            sqlx::query_as(concat!(
                "SELECT ",
                worker_columns!(),
                " FROM workers WHERE worker_name = $1"
            ))
            .bind(worker_name)
            .fetch_one(&mut *tx)
            .await?
        } else {
            sqlx::query_as(concat!(
                "WITH gone AS (
                     UPDATE workers w
                     SET status = 'deregistered',
                         status_changed_at = greatest(clock_timestamp(), w.status_changed_at)
                     WHERE w.worker_name = $1
                     RETURNING ",
                worker_columns!(),
                "
                 ), closed AS (
                     UPDATE deployments d
                     SET ended_at = greatest(g.status_changed_at, d.deployed_at),
                         end_reason = 'deregistered'
                     FROM gone g
                     WHERE d.serial_number = g.serial_number AND d.ended_at IS NULL
                 ), evented AS (
                     INSERT INTO worker_events
                         (worker_name, serial_number, kind, from_status, to_status, reason, at)
                     SELECT worker_name, serial_number, 'deregistered', $2, 'deregistered',
                            'deregistered (DELETE /api/workers/{name})', status_changed_at
                     FROM gone
                 )
                 SELECT * FROM gone"
            ))
            .bind(worker_name)
            .bind(&status)
            .fetch_one(&mut *tx)
            .await?
        };
        tx.commit().await?;
        Ok(DeregisterOutcome::Deregistered(Box::new(row)))
    }

    /// Workers per family and status (deregistered included).
    pub async fn fleet_by_family(&self) -> Result<Vec<FamilyStatusCount>, sqlx::Error> {
        sqlx::query_as(
            "SELECT family, status, count(*) AS workers FROM workers
             GROUP BY family, status ORDER BY family, status",
        )
        .fetch_all(&self.pool)
        .await
    }
}

/// The model a worker type registers as, read under a share lock so that the catalog entry
/// cannot change or go away until the registration commits; `None` when the type is not in
/// the catalog.
async fn catalog_model(
    conn: &mut PgConnection,
    worker_type: &str,
) -> Result<Option<ModelNumber>, sqlx::Error> {
    let row: Option<(String, i16)> = sqlx::query_as(
        "SELECT family, generation FROM model_catalog WHERE worker_type = $1 FOR SHARE",
    )
    .bind(worker_type)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|(family, generation)| {
        family
            .parse()
            .and_then(|f| ModelNumber::new(f, generation as u8))
            .map_err(|e| sqlx::Error::Decode(e.into()))
    })
    .transpose()
}

async fn register_once(
    conn: &mut PgConnection,
    new: &NewDeployment,
) -> Result<RegisterOutcome, sqlx::Error> {
    // Registrations of one name take turns, the very first one included (it has no worker row
    // to lock yet): the second sees the first's deployment and records a re-registration.
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(NAME_LOCK_CLASS)
        .bind(&new.worker_name)
        .execute(&mut *conn)
        .await?;
    let (model, generic) = match catalog_model(conn, &new.worker_type).await? {
        Some(model) => (model, false),
        None if new.reject_unknown_type => return Ok(RegisterOutcome::UnknownType),
        None => match catalog_model(conn, "generic").await? {
            Some(model) => (model, true),
            None => (
                ModelNumber::new(FamilyCode::generic(), 1)
                    .map_err(|e| sqlx::Error::Decode(e.into()))?,
                true,
            ),
        },
    };

    // Lock the name first, then read the clock: a registration that waited for another one
    // of the same name is stamped after it.
    let previous: Option<String> =
        sqlx::query_scalar("SELECT status FROM workers WHERE worker_name = $1 FOR UPDATE")
            .bind(&new.worker_name)
            .fetch_optional(&mut *conn)
            .await?;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE deployments SET ended_at = greatest($2, deployed_at), end_reason = 're-registered'
         WHERE worker_name = $1 AND ended_at IS NULL",
    )
    .bind(&new.worker_name)
    .bind(now)
    .execute(&mut *conn)
    .await?;

    let serial = SerialNumber::generate(model.clone(), now).to_string();
    let family = model.family.as_str();
    let generation = i16::from(model.generation);
    let model_number = model.to_string();
    sqlx::query(
        "INSERT INTO deployments (serial_number, worker_name, worker_type, family, generation,
                                  model_number, api_url, user_id, metadata, deployed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&serial)
    .bind(&new.worker_name)
    .bind(&new.worker_type)
    .bind(family)
    .bind(generation)
    .bind(&model_number)
    .bind(&new.api_url)
    .bind(&new.user_id)
    .bind(&new.metadata)
    .bind(now)
    .execute(&mut *conn)
    .await?;

    let row: WorkerRow = sqlx::query_as(concat!(
        "INSERT INTO workers (worker_name, serial_number, worker_type, family, generation,
                              model_number, api_url, user_id, metadata, status, deployed_at,
                              status_changed_at, last_heartbeat_at, heartbeat_count)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'registered', $10, $10, NULL, 0)
         ON CONFLICT (worker_name) DO UPDATE SET
             serial_number = EXCLUDED.serial_number, worker_type = EXCLUDED.worker_type,
             family = EXCLUDED.family, generation = EXCLUDED.generation,
             model_number = EXCLUDED.model_number, api_url = EXCLUDED.api_url,
             user_id = EXCLUDED.user_id, metadata = EXCLUDED.metadata, status = 'registered',
             deployed_at = $10, status_changed_at = $10, last_heartbeat_at = NULL,
             heartbeat_count = 0
         RETURNING ",
        worker_columns!()
    ))
    .bind(&new.worker_name)
    .bind(&serial)
    .bind(&new.worker_type)
    .bind(family)
    .bind(generation)
    .bind(&model_number)
    .bind(&new.api_url)
    .bind(&new.user_id)
    .bind(&new.metadata)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;

    let (kind, reason) = match &previous {
        None => ("registered", "registered"),
        Some(_) => (
            "re_registered",
            "registered again; previous deployment closed",
        ),
    };
    sqlx::query(
        "INSERT INTO worker_events
             (worker_name, serial_number, kind, from_status, to_status, reason, at)
         VALUES ($1, $2, $3, $4, 'registered', $5, $6)",
    )
    .bind(&new.worker_name)
    .bind(&serial)
    .bind(kind)
    .bind(previous)
    .bind(reason)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(RegisterOutcome::Registered {
        row: Box::new(row),
        generic,
    })
}

#[cfg(test)]
mod tests {
    use super::{FamilyStatusCount, FleetCounts};

    fn row(family: &str, status: &str, workers: i64) -> FamilyStatusCount {
        FamilyStatusCount {
            family: family.to_owned(),
            status: status.to_owned(),
            workers,
        }
    }

    #[test]
    fn tally_sums_statuses_and_leaves_deregistered_out_of_total_and_families() {
        let counts = FleetCounts::tally(&[
            row("GN", "deregistered", 4),
            row("RG", "active", 2),
            row("RG", "stale", 1),
            row("TM", "active", 3),
            row("TM", "offline", 5),
            row("TM", "registered", 7),
        ]);
        assert_eq!(counts.total, 18);
        assert_eq!(counts.active, 5);
        assert_eq!(counts.stale, 1);
        assert_eq!(counts.offline, 5);
        assert_eq!(counts.registered, 7);
        assert_eq!(counts.deregistered, 4);
        assert_eq!(counts.families, ["RG", "TM"]);
    }
}
