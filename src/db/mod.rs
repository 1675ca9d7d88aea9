//! The repository layer: every SQL statement of the registry lives under this module.

mod catalog;
mod commands;
mod history;
mod liveness;
mod webhooks;
mod workers;

use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

pub use catalog::{
    CatalogEntry, CatalogError, CatalogPatch, FamilySpec, FamilyWithEntries, NewCatalogEntry,
};
pub use commands::{CommandRow, QueueOutcome};
pub use history::{DeploymentRow, EventRow, StreamEventRow};
pub use liveness::{Lapse, LivenessState, StaleCandidates, sweep};
pub use webhooks::{
    AttemptOutcome, AttemptRow, ClaimedDelivery, DeliveryRow, NewWebhook, Settled, WebhookRow,
};
pub use workers::{
    DeregisterOutcome, FamilyStatusCount, FleetCounts, HeartbeatOutcome, ListFilter, ListOrder,
    NewDeployment, RegisterOutcome, WorkerRow,
};

use crate::settings::{DatabaseSettings, redact_url, secs};

/// The `application_name` of the registry's sessions, unless `DATABASE_URL` names another.
pub const APPLICATION_NAME: &str = "dals-registry";

/// The schema migrations, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// The registry's handle on PostgreSQL.
#[derive(Clone, Debug)]
pub struct Db {
    pool: PgPool,
}

impl Db {
    /// Connects (creating the database first when allowed and missing) without migrating.
    pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<Self> {
        let url = &settings.url;
        let unreachable = |e: sqlx::Error| {
            anyhow::anyhow!(
                "cannot connect to PostgreSQL at {}: {e}. Set DATABASE_URL (or --database-url) \
                 to a reachable server, or start one with `docker compose up -d postgres`.",
                redact_url(url)
            )
        };
        let mut options: PgConnectOptions = url
            .parse()
            .with_context(|| format!("invalid DATABASE_URL {}", redact_url(url)))?;
        // The registry's sessions are known by name: the event stream waits only on the
        // registry's own transactions (see `writing_transactions`), and a DBA sees who is who.
        if options.get_application_name().is_none() {
            options = options.application_name(APPLICATION_NAME);
        }
        if settings.create_if_missing
            && !Postgres::database_exists(url).await.map_err(unreachable)?
        {
            match Postgres::create_database(url).await {
                Ok(()) => tracing::info!(database = options.get_database(), "created database"),
                // Another replica may have created it in the meantime.
                Err(e) if !Postgres::database_exists(url).await.unwrap_or(false) => {
                    return Err(unreachable(e));
                }
                Err(_) => {}
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(secs(settings.acquire_timeout_secs))
            .connect_with(options)
            .await
            .map_err(unreachable)?;
        Ok(Db { pool })
    }

    /// Wraps an existing pool.
    pub fn from_pool(pool: PgPool) -> Self {
        Db { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations (under sqlx's advisory lock, so replicas may race safely).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .context("applying database migrations")
    }

    /// Whether the database answers and every embedded migration has been applied.
    pub async fn schema_is_current(&self) -> Result<bool, sqlx::Error> {
        let applied: Vec<i64> = sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await
        .or_else(|e| match &e {
            // No migrations table yet: the schema is not current, but the database answers.
            sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => Ok(Vec::new()),
            _ => Err(e),
        })?;
        Ok(MIGRATOR
            .iter()
            .all(|m| applied.binary_search(&m.version).is_ok()))
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// How often a registration is retried after losing a race on a unique constraint.
pub(crate) const REGISTER_ATTEMPTS: usize = 8;

/// A short pause between retries of a conflicting registration.
pub(crate) fn retry_pause(attempt: usize) -> Duration {
    Duration::from_millis(2 * attempt as u64)
}
