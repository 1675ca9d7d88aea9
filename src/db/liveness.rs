//! Statements of the liveness sweeper. They run on the sweeping replica's own connection, the
//! one that holds the advisory lock, so a replica that lost its session cannot sweep.

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{FromRow, PgConnection, Postgres};

use super::Db;

/// Moves lapsed workers from the statuses `$from` to `$to`, at most `$2` of them, recording
/// an event per move. `$1` is the lapse in seconds, `$3` the reason. `$also` adds further
/// common table expressions over `moved`, so whatever they write lands with the move.
macro_rules! mark_sql {
    ($from:literal, $to:literal) => {
        mark_sql!($from, $to, "")
    };
    ($from:literal, $to:literal, $also:literal) => {
        concat!(
            "WITH picked AS (
                 SELECT worker_name, status FROM workers
                 WHERE status IN ", $from, "
                   AND coalesce(last_heartbeat_at, deployed_at) < now() - make_interval(secs => $1)
                 ORDER BY coalesce(last_heartbeat_at, deployed_at)
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED
             ), moved AS (
                 UPDATE workers w
                 SET status = '", $to, "',
                     status_changed_at = greatest(clock_timestamp(), w.status_changed_at)
                 FROM picked p
                 WHERE w.worker_name = p.worker_name
                 RETURNING w.worker_name, w.serial_number, p.status AS from_status,
                           w.status_changed_at AS at
             ), evented AS (
                 INSERT INTO worker_events
                     (worker_name, serial_number, kind, from_status, to_status, reason, at)
                 SELECT worker_name, serial_number, '", $to, "', from_status, '", $to, "', $3, at
                 FROM moved
             )", $also, "
             SELECT count(*) FROM moved"
        )
    };
}

/// The advisory lock key that elects the sweeping replica ("DALSSWEP").
const SWEEPER_LOCK_KEY: i64 = 0x4441_4c53_5357_4550;

/// The shared sweeper state, as `/api/workers/status` shows it.
#[derive(Debug, Clone, FromRow)]
pub struct LivenessState {
    pub now: DateTime<Utc>,
    pub last_sweep_at: Option<DateTime<Utc>>,
    pub sweeper_instance: Option<String>,
    pub grace_until: Option<DateTime<Utc>>,
    pub brake_engaged_at: Option<DateTime<Utc>>,
    pub brake_held: i32,
    pub brake_live: i32,
    pub brake_release_requested_at: Option<DateTime<Utc>>,
}

/// Workers that would go stale now, the live fleet they belong to, and those that went stale
/// within the last `stale_after` (a mass lapse spreads over a heartbeat interval, so it shows
/// across several sweeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromRow)]
pub struct StaleCandidates {
    pub lapsed: i64,
    pub live: i64,
    pub recently_stale: i64,
}

const STATE_COLUMNS: &str = "SELECT now() AS now, last_sweep_at, sweeper_instance, grace_until, \
     brake_engaged_at, brake_held, brake_live, brake_release_requested_at FROM liveness_state";

impl Db {
    /// Tries to become the sweeping replica: a connection of its own holding the advisory lock.
    ///
    /// The lock lasts as long as the session, so the session must end soon after this replica
    /// is gone. A crashed process closes its socket at once; a host that vanishes (power
    /// loss, a network partition) does not, so the server is told to probe an idle
    /// connection after `dead_after_secs` and to drop it after three more unanswered seconds,
    /// instead of the operating system's default of about two hours.
    pub async fn try_lead(
        &self,
        dead_after_secs: u32,
    ) -> Result<Option<PgConnection>, sqlx::Error> {
        let mut conn: PoolConnection<Postgres> = self.pool.acquire().await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(SWEEPER_LOCK_KEY)
            .fetch_one(&mut *conn)
            .await?;
        if !got {
            return Ok(None);
        }
        // The lock lives as long as this session: detach it from the pool so that dropping it
        // (on shutdown or a crash) ends the session and frees the lock for another replica.
        let mut conn = conn.detach();
        let idle = dead_after_secs.max(1);
        sqlx::query(
            "SELECT set_config('tcp_keepalives_idle', $1, false),
                    set_config('tcp_keepalives_interval', '1', false),
                    set_config('tcp_keepalives_count', '3', false),
                    set_config('tcp_user_timeout', $2, false)",
        )
        .bind(idle.to_string())
        // Milliseconds: data sent and not acknowledged for that long ends the session too.
        .bind(((idle + 3) * 1000).to_string())
        .execute(&mut conn)
        .await?;
        Ok(Some(conn))
    }

    /// The sweeper state with the database's current time.
    pub async fn liveness_state(&self) -> Result<LivenessState, sqlx::Error> {
        sqlx::query_as(STATE_COLUMNS).fetch_one(&self.pool).await
    }

    /// An operator's release of the brake: recorded at once, applied by the next sweep.
    /// Returns false when the brake was not engaged.
    pub async fn release_brake(&self) -> Result<bool, sqlx::Error> {
        let released: Option<bool> = sqlx::query_scalar(
            "WITH released AS (
                 UPDATE liveness_state
                 SET brake_release_requested_at = now(), brake_engaged_at = NULL,
                     brake_held = 0, brake_live = 0
                 WHERE brake_engaged_at IS NOT NULL
                 RETURNING 1
             ), evented AS (
                 INSERT INTO worker_events (kind, reason)
                 SELECT 'brake_released', 'released by an operator' FROM released
             )
             SELECT true FROM released",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(released.is_some())
    }
}

/// Sweeper statements, on the leader's connection.
pub mod sweep {
    use super::*;

    /// Checks the session still answers (and so still holds the lock).
    pub async fn ping(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(conn).await.map(|_| ())
    }

    /// Reads the state and stamps this sweep. When the registry was away for longer than
    /// `stale_after_secs` (down, or cut off from the database) — no sweep for longer than
    /// that plus the usual `sweep_interval_secs` between two — opens a grace period of
    /// `stale_after_secs`: workers could not heartbeat to a registry that was not there.
    pub async fn begin(
        conn: &mut PgConnection,
        instance: &str,
        stale_after_secs: f64,
        sweep_interval_secs: f64,
    ) -> Result<(LivenessState, bool), sqlx::Error> {
        let before: LivenessState = sqlx::query_as(STATE_COLUMNS).fetch_one(&mut *conn).await?;
        let away = before.last_sweep_at.is_some_and(|last| {
            (before.now - last).as_seconds_f64() > stale_after_secs + sweep_interval_secs
        });
        let state: LivenessState = sqlx::query_as(
            "UPDATE liveness_state
             SET last_sweep_at = now(), sweeper_instance = $1,
                 grace_until = CASE WHEN $2 THEN now() + make_interval(secs => $3)
                                    ELSE grace_until END
             RETURNING now() AS now, last_sweep_at, sweeper_instance, grace_until,
                       brake_engaged_at, brake_held, brake_live, brake_release_requested_at",
        )
        .bind(instance)
        .bind(away)
        .bind(stale_after_secs)
        .fetch_one(&mut *conn)
        .await?;
        Ok((state, away))
    }

    /// How many live workers are lapsed past `stale_after_secs`.
    pub async fn stale_candidates(
        conn: &mut PgConnection,
        stale_after_secs: f64,
    ) -> Result<StaleCandidates, sqlx::Error> {
        sqlx::query_as(
            "SELECT count(*) FILTER (
                        WHERE status IN ('registered', 'active')
                          AND coalesce(last_heartbeat_at, deployed_at)
                              < now() - make_interval(secs => $1)) AS lapsed,
                    count(*) FILTER (WHERE status IN ('registered', 'active')) AS live,
                    count(*) FILTER (
                        WHERE status = 'stale'
                          AND status_changed_at > now() - make_interval(secs => $1))
                        AS recently_stale
             FROM workers WHERE status IN ('registered', 'active', 'stale')",
        )
        .bind(stale_after_secs)
        .fetch_one(conn)
        .await
    }

    /// Marks up to `batch` lapsed workers: `registered`/`active` -> `stale` past
    /// `after_secs`, or `stale` -> `offline`. Rows a heartbeat holds are skipped, and the
    /// condition is re-checked on the latest row, so a heartbeat always wins. Returns how many
    /// moved; each move is an event in the same statement. With `restart_on_stale`, each
    /// worker going stale also gets a restart command for its deployment (unless one is open
    /// already), in the same statement: a hung worker that answers again is restarted.
    pub async fn mark_batch(
        conn: &mut PgConnection,
        to: Lapse,
        after_secs: f64,
        batch: i64,
        reason: &str,
        restart_on_stale: bool,
    ) -> Result<i64, sqlx::Error> {
        let sql = match (to, restart_on_stale) {
            (Lapse::Stale, false) => mark_sql!("('registered', 'active')", "stale"),
            (Lapse::Stale, true) => mark_sql!(
                "('registered', 'active')",
                "stale",
                ", restarted AS (
                     INSERT INTO worker_commands
                         (worker_name, serial_number, command, source, reason, created_at)
                     SELECT worker_name, serial_number, 'restart', 'remediation',
                            'went stale: ' || $3, at
                     FROM moved
                     ON CONFLICT (serial_number, command)
                         WHERE status IN ('pending', 'delivered') DO NOTHING
                 )"
            ),
            (Lapse::Offline, _) => mark_sql!("('stale')", "offline"),
        };
        sqlx::query_scalar(sql)
            .bind(after_secs)
            .bind(batch)
            .bind(reason)
            .fetch_one(conn)
            .await
    }

    /// Engages the brake (or refreshes what it holds) and records the event once.
    pub async fn hold_brake(
        conn: &mut PgConnection,
        candidates: StaleCandidates,
        reason: &str,
    ) -> Result<bool, sqlx::Error> {
        let newly: bool = sqlx::query_scalar(
            "WITH before AS (SELECT brake_engaged_at FROM liveness_state FOR UPDATE),
             held AS (
                 UPDATE liveness_state
                 SET brake_engaged_at = coalesce(brake_engaged_at, now()),
                     brake_held = $1, brake_live = $2
                 RETURNING 1
             ), evented AS (
                 INSERT INTO worker_events (kind, reason)
                 SELECT 'brake_held', $3 FROM before WHERE brake_engaged_at IS NULL
             )
             SELECT brake_engaged_at IS NULL FROM before",
        )
        .bind(i32::try_from(candidates.lapsed).unwrap_or(i32::MAX))
        .bind(i32::try_from(candidates.live).unwrap_or(i32::MAX))
        .bind(reason)
        .fetch_one(conn)
        .await?;
        Ok(newly)
    }

    /// Lets the brake go because heartbeats resumed; records the event if it was engaged.
    pub async fn release_brake(conn: &mut PgConnection, reason: &str) -> Result<bool, sqlx::Error> {
        let released: Option<bool> = sqlx::query_scalar(
            "WITH released AS (
                 UPDATE liveness_state
                 SET brake_engaged_at = NULL, brake_held = 0, brake_live = 0
                 WHERE brake_engaged_at IS NOT NULL
                 RETURNING 1
             ), evented AS (
                 INSERT INTO worker_events (kind, reason)
                 SELECT 'brake_released', $1 FROM released
             )
             SELECT true FROM released",
        )
        .bind(reason)
        .fetch_optional(conn)
        .await?;
        Ok(released.is_some())
    }

    /// Clears an operator's release once a sweep has applied it.
    pub async fn clear_release_request(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE liveness_state SET brake_release_requested_at = NULL")
            .execute(conn)
            .await
            .map(|_| ())
    }

    /// Creates upcoming heartbeat partitions and drops those past retention.
    pub async fn maintain_partitions(
        conn: &mut PgConnection,
        days_ahead: i32,
        retention_days: i32,
    ) -> Result<(i32, i32), sqlx::Error> {
        sqlx::query_as("SELECT ensure_heartbeat_partitions($1), drop_heartbeat_partitions($2)")
            .bind(days_ahead)
            .bind(retention_days)
            .fetch_one(conn)
            .await
    }
}

/// Where a lapsed worker goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lapse {
    Stale,
    Offline,
}
