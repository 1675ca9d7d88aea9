//! The liveness sweeper: marks lapsed workers stale and then offline, by the database clock.
//!
//! Every replica runs one; exactly one sweeps at a time, the one holding a PostgreSQL advisory
//! lock on its own connection. When that replica dies its session ends, the lock frees, and
//! another replica takes over at its next tick (within one sweep interval).

use std::time::{Duration, Instant};

use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use crate::db::{Db, Lapse, StaleCandidates, sweep};
use crate::metrics::Metrics;
use crate::settings::{LivenessSettings, RemediationSettings, RetentionSettings, secs};

/// Workers moved per statement, so no sweep holds many row locks at once.
pub const SWEEP_BATCH: i64 = 1000;
/// How often the sweeping replica maintains heartbeat partitions.
const PARTITION_MAINTENANCE_EVERY: Duration = Duration::from_secs(3600);
/// Daily heartbeat partitions kept ready ahead of time.
const PARTITION_DAYS_AHEAD: i32 = 3;
/// How often a held brake is logged again.
const BRAKE_WARN_EVERY: Duration = Duration::from_secs(60);

/// The brake rule: hold a sweep that would mark stale, together with those marked in the
/// last `stale_after`, more than `fraction` of the fleet that was live, when that is at least
/// `min_workers` workers.
pub fn brake_holds(c: StaleCandidates, fraction: f64, min_workers: i64) -> bool {
    let lapsing = c.lapsed + c.recently_stale;
    c.lapsed > 0
        && lapsing >= min_workers
        && lapsing as f64 > fraction * (c.live + c.recently_stale) as f64
}

/// The background task of one replica.
pub struct Sweeper {
    db: Db,
    liveness: LivenessSettings,
    retention: RetentionSettings,
    remediation: RemediationSettings,
    instance: String,
    leader: Option<PgConnection>,
    last_maintenance: Option<Instant>,
    last_brake_warning: Option<Instant>,
    metrics: Metrics,
}

impl Sweeper {
    pub fn new(
        db: Db,
        liveness: LivenessSettings,
        retention: RetentionSettings,
        instance: String,
    ) -> Self {
        Sweeper {
            db,
            liveness,
            retention,
            remediation: RemediationSettings::default(),
            instance,
            leader: None,
            last_maintenance: None,
            last_brake_warning: None,
            metrics: Metrics::default(),
        }
    }

    /// Applies the remediation policy (restart-on-stale) to the sweeps.
    pub fn with_remediation(mut self, remediation: RemediationSettings) -> Self {
        self.remediation = remediation;
        self
    }

    /// Records sweeps in these metrics.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Ticks every sweep interval until cancelled.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(secs(self.liveness.sweep_interval_secs));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = ticker.tick() => {}
            }
            if let Err(e) = self.tick().await {
                // A failed session may have lost the lock: step down and try again next tick.
                tracing::warn!(error = %e, "liveness sweep failed; will retry");
                self.leader = None;
            }
        }
        tracing::debug!("sweeper stopped");
    }

    async fn tick(&mut self) -> Result<(), sqlx::Error> {
        if self.leader.is_none() {
            // The leader pings every interval, so its connection is idle no longer than that.
            let dead_after = self.liveness.sweep_interval_secs.ceil().min(3600.0) as u32;
            self.leader = self.db.try_lead(dead_after).await?;
            if self.leader.is_some() {
                tracing::info!(instance = %self.instance, "this replica now sweeps liveness");
                self.last_maintenance = None;
            }
        }
        let Some(conn) = self.leader.as_mut() else {
            return Ok(());
        };
        sweep::ping(conn).await?;
        if self
            .last_maintenance
            .is_none_or(|at| at.elapsed() >= PARTITION_MAINTENANCE_EVERY)
        {
            let (made, dropped) = sweep::maintain_partitions(
                conn,
                PARTITION_DAYS_AHEAD,
                self.retention.heartbeat_days,
            )
            .await?;
            tracing::debug!(made, dropped, "heartbeat partitions maintained");
            self.last_maintenance = Some(Instant::now());
        }
        let started = Instant::now();
        let outcome = sweep_once(conn, &self.instance, &self.liveness, &self.remediation).await?;
        self.record(outcome, started.elapsed());
        if let SweepOutcome::BrakeHeld {
            candidates,
            newly_engaged,
        } = outcome
            && (newly_engaged
                || self
                    .last_brake_warning
                    .is_none_or(|at| at.elapsed() >= BRAKE_WARN_EVERY))
        {
            tracing::warn!(
                lapsed = candidates.lapsed,
                live = candidates.live,
                "sweeper brake engaged: holding stale transitions (POST /api/workers/liveness/release to apply them)"
            );
            self.last_brake_warning = Some(Instant::now());
        }
        Ok(())
    }
}

impl Sweeper {
    fn record(&self, outcome: SweepOutcome, took: Duration) {
        let m = &self.metrics;
        m.sweep_duration.observe(took.as_secs_f64());
        let label = match outcome {
            SweepOutcome::Grace => "grace",
            SweepOutcome::BrakeHeld { .. } => "brake_held",
            SweepOutcome::Swept { stale, offline } => {
                m.sweep_transitions
                    .with_label_values(&["stale"])
                    .inc_by(stale.max(0) as u64);
                m.sweep_transitions
                    .with_label_values(&["offline"])
                    .inc_by(offline.max(0) as u64);
                "swept"
            }
        };
        m.sweeps.with_label_values(&[label]).inc();
    }
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepOutcome {
    /// The registry was away; no one is marked stale until the grace period ends.
    Grace,
    BrakeHeld {
        candidates: StaleCandidates,
        newly_engaged: bool,
    },
    Swept {
        stale: i64,
        offline: i64,
    },
}

/// One sweep on the leader's connection.
pub async fn sweep_once(
    conn: &mut PgConnection,
    instance: &str,
    settings: &LivenessSettings,
    remediation: &RemediationSettings,
) -> Result<SweepOutcome, sqlx::Error> {
    let (state, away) = sweep::begin(
        conn,
        instance,
        settings.stale_after_secs,
        settings.sweep_interval_secs,
    )
    .await?;
    if away {
        tracing::warn!(
            grace_until = %state.grace_until.map(|t| t.to_rfc3339()).unwrap_or_default(),
            "no sweep ran for longer than stale_after + sweep_interval: the registry was \
             away; giving workers a grace period before marking any stale"
        );
    }
    if state.grace_until.is_some_and(|until| state.now < until) {
        return Ok(SweepOutcome::Grace);
    }

    let offline = mark_all(
        conn,
        Lapse::Offline,
        settings.offline_after_secs,
        &format!("no heartbeat for {} s", settings.offline_after_secs),
        false,
    )
    .await?;

    let candidates = sweep::stale_candidates(conn, settings.stale_after_secs).await?;
    let released_by_operator = state.brake_release_requested_at.is_some();
    if !released_by_operator
        && brake_holds(
            candidates,
            settings.brake_fraction,
            settings.brake_min_workers,
        )
    {
        let reason = format!(
            "{} of {} live workers lapsed within {} s (more than {}%); holding {} stale transitions",
            candidates.lapsed + candidates.recently_stale,
            candidates.live + candidates.recently_stale,
            settings.stale_after_secs,
            settings.brake_fraction * 100.0,
            candidates.lapsed
        );
        let newly_engaged = sweep::hold_brake(conn, candidates, &reason).await?;
        return Ok(SweepOutcome::BrakeHeld {
            candidates,
            newly_engaged,
        });
    }
    if state.brake_engaged_at.is_some() {
        sweep::release_brake(conn, "heartbeats resumed").await?;
        tracing::info!("sweeper brake released: heartbeats resumed");
    }
    let stale = if candidates.lapsed > 0 {
        mark_all(
            conn,
            Lapse::Stale,
            settings.stale_after_secs,
            &format!("no heartbeat for {} s", settings.stale_after_secs),
            remediation.restart_on_stale,
        )
        .await?
    } else {
        0
    };
    if released_by_operator {
        sweep::clear_release_request(conn).await?;
    }
    if stale + offline > 0 {
        tracing::info!(stale, offline, "liveness sweep marked workers");
    }
    Ok(SweepOutcome::Swept { stale, offline })
}

/// Marks every lapsed worker, one short batch per statement.
async fn mark_all(
    conn: &mut PgConnection,
    to: Lapse,
    after_secs: f64,
    reason: &str,
    restart_on_stale: bool,
) -> Result<i64, sqlx::Error> {
    let mut total = 0;
    loop {
        let moved =
            sweep::mark_batch(conn, to, after_secs, SWEEP_BATCH, reason, restart_on_stale).await?;
        total += moved;
        if moved < SWEEP_BATCH {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brake_rule() {
        let c = |lapsed, live, recently_stale| StaleCandidates {
            lapsed,
            live,
            recently_stale,
        };
        assert!(
            !brake_holds(c(9, 10, 0), 0.5, 10),
            "below the minimum count"
        );
        assert!(brake_holds(c(10, 10, 0), 0.5, 10));
        assert!(
            !brake_holds(c(10, 20, 0), 0.5, 10),
            "exactly half is not more than half"
        );
        assert!(brake_holds(c(11, 20, 0), 0.5, 10));
        assert!(!brake_holds(c(0, 0, 0), 0.5, 10));
        // A lapse spread over several sweeps: 5 went stale a moment ago, 7 more lapse now.
        assert!(brake_holds(c(7, 7, 5), 0.5, 10));
        // Nothing left to hold.
        assert!(!brake_holds(c(0, 7, 12), 0.5, 10));
    }
}
