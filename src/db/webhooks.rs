//! Webhook endpoints and their outbox. Deliveries are written by a trigger on `worker_events`
//! (see the webhooks migration); these statements manage endpoints and let the delivery task
//! claim, settle and list them.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::Db;

/// The columns of a `WebhookRow`, for `concat!` into statements; `e` is the endpoint.
macro_rules! webhook_columns {
    () => {
        "e.id, e.url, e.events, e.enabled, e.description, e.source, e.created_at, \
         (SELECT count(*) FROM webhook_deliveries d
          WHERE d.endpoint_id = e.id AND d.status = 'pending') AS pending, \
         (SELECT count(*) FROM webhook_deliveries d
          WHERE d.endpoint_id = e.id AND d.status = 'delivered') AS delivered, \
         (SELECT count(*) FROM webhook_deliveries d
          WHERE d.endpoint_id = e.id AND d.status = 'failed') AS failed"
    };
}

/// An endpoint as stored, without its secret, with its deliveries counted by status.
#[derive(Debug, Clone, FromRow)]
pub struct WebhookRow {
    pub id: i64,
    pub url: String,
    pub events: Vec<String>,
    pub enabled: bool,
    pub description: String,
    pub source: String,
    pub created_at: DateTime<Utc>,
    pub pending: i64,
    pub delivered: i64,
    pub failed: i64,
}

/// What creating (or upserting) an endpoint stores; `events` are already expanded kinds.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    pub url: String,
    pub secret: String,
    pub events: Vec<String>,
    pub enabled: bool,
    pub description: String,
}

/// One delivery of the outbox.
#[derive(Debug, Clone, FromRow)]
pub struct DeliveryRow {
    pub id: i64,
    pub event_id: i64,
    pub kind: String,
    pub payload: String,
    pub status: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, FromRow)]
pub struct AttemptRow {
    pub delivery_id: i64,
    pub attempt: i32,
    pub at: DateTime<Utc>,
    pub duration_ms: i32,
    pub http_status: Option<i32>,
    pub error: Option<String>,
}

/// A delivery claimed by this replica, with what it takes to send it.
#[derive(Debug, Clone, FromRow)]
pub struct ClaimedDelivery {
    pub id: i64,
    pub kind: String,
    pub payload: String,
    /// Attempts made before this one.
    pub attempts: i32,
    pub url: String,
    pub secret: String,
    /// The database time of the claim: the attempt's time and the signature's timestamp.
    pub claimed_at: DateTime<Utc>,
}

/// How one attempt went.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    /// A 2xx answer.
    pub delivered: bool,
    pub http_status: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i32,
    /// When to try again after a failure (ignored once delivered or out of attempts).
    pub retry_in_secs: f64,
}

/// What recording an attempt did to its delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// The attempt was recorded; the delivery is now in this status.
    Recorded { attempt: i32, status: String },
    /// The claim had expired and been taken over, or the endpoint was deleted meanwhile.
    ClaimLost,
}

impl Db {
    /// Creates an endpoint from the API.
    pub async fn create_webhook(&self, new: &NewWebhook) -> Result<WebhookRow, sqlx::Error> {
        sqlx::query_as(
            "WITH e AS (
                 INSERT INTO webhook_endpoints (url, secret, events, enabled, description, source)
                 VALUES ($1, $2, $3, $4, $5, 'api') RETURNING *
             )
             SELECT e.id, e.url, e.events, e.enabled, e.description, e.source, e.created_at,
                    0::bigint AS pending, 0::bigint AS delivered, 0::bigint AS failed
             FROM e",
        )
        .bind(&new.url)
        .bind(&new.secret)
        .bind(&new.events)
        .bind(new.enabled)
        .bind(&new.description)
        .fetch_one(&self.pool)
        .await
    }

    /// Upserts the endpoints of the settings file by URL, in one transaction; returns their ids.
    pub async fn upsert_settings_webhooks(
        &self,
        endpoints: &[NewWebhook],
    ) -> Result<Vec<i64>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut ids = Vec::with_capacity(endpoints.len());
        for new in endpoints {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO webhook_endpoints (url, secret, events, enabled, description, source)
                 VALUES ($1, $2, $3, $4, $5, 'settings')
                 ON CONFLICT (url) WHERE source = 'settings' DO UPDATE
                 SET secret = EXCLUDED.secret, events = EXCLUDED.events,
                     enabled = EXCLUDED.enabled, description = EXCLUDED.description
                 RETURNING id",
            )
            .bind(&new.url)
            .bind(&new.secret)
            .bind(&new.events)
            .bind(new.enabled)
            .bind(&new.description)
            .fetch_one(&mut *tx)
            .await?;
            ids.push(id);
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// Every endpoint, oldest first.
    pub async fn webhooks(&self) -> Result<Vec<WebhookRow>, sqlx::Error> {
        sqlx::query_as(concat!(
            "SELECT ",
            webhook_columns!(),
            " FROM webhook_endpoints e ORDER BY e.id"
        ))
        .fetch_all(&self.pool)
        .await
    }

    /// One endpoint.
    pub async fn webhook(&self, id: i64) -> Result<Option<WebhookRow>, sqlx::Error> {
        sqlx::query_as(concat!(
            "SELECT ",
            webhook_columns!(),
            " FROM webhook_endpoints e WHERE e.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
    }

    /// Deletes an endpoint with its outbox and attempts; returns it as it was.
    pub async fn delete_webhook(&self, id: i64) -> Result<Option<WebhookRow>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let row: Option<WebhookRow> = sqlx::query_as(concat!(
            "SELECT ",
            webhook_columns!(),
            " FROM webhook_endpoints e WHERE e.id = $1 FOR UPDATE"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if row.is_some() {
            sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(row)
    }

    /// An endpoint's deliveries, newest first: up to `limit` with an id below `before`, of
    /// `status` when given.
    pub async fn webhook_deliveries(
        &self,
        endpoint_id: i64,
        before: Option<i64>,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, event_id, kind, payload, status, attempts, created_at, next_attempt_at,
                    delivered_at, last_status, last_error
             FROM webhook_deliveries
             WHERE endpoint_id = $1 AND ($2::bigint IS NULL OR id < $2)
               AND ($3::text IS NULL OR status = $3)
             ORDER BY id DESC LIMIT $4",
        )
        .bind(endpoint_id)
        .bind(before)
        .bind(status)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// The attempts of the given deliveries, in order.
    pub async fn webhook_attempts(
        &self,
        delivery_ids: &[i64],
    ) -> Result<Vec<AttemptRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT delivery_id, attempt, at, duration_ms, http_status, error
             FROM webhook_attempts WHERE delivery_id = ANY ($1)
             ORDER BY delivery_id, attempt",
        )
        .bind(delivery_ids)
        .fetch_all(&self.pool)
        .await
    }

    /// Claims up to `batch` due deliveries of enabled endpoints for `lock_secs`. Rows another
    /// replica is claiming right now are skipped; a claim that has expired is void.
    pub async fn claim_deliveries(
        &self,
        instance: &str,
        batch: i64,
        lock_secs: f64,
    ) -> Result<Vec<ClaimedDelivery>, sqlx::Error> {
        sqlx::query_as(
            "WITH due AS (
                 SELECT d.id FROM webhook_deliveries d
                 JOIN webhook_endpoints e ON e.id = d.endpoint_id
                 WHERE d.status = 'pending' AND d.next_attempt_at <= now()
                   AND (d.locked_until IS NULL OR d.locked_until <= now())
                   AND e.enabled
                 ORDER BY d.next_attempt_at, d.id
                 LIMIT $1
                 FOR UPDATE OF d SKIP LOCKED
             )
             UPDATE webhook_deliveries d
             SET locked_until = now() + make_interval(secs => $2), locked_by = $3
             FROM due, webhook_endpoints e
             WHERE d.id = due.id AND e.id = d.endpoint_id
             RETURNING d.id, d.kind, d.payload, d.attempts, e.url, e.secret, now() AS claimed_at",
        )
        .bind(batch)
        .bind(lock_secs)
        .bind(instance)
        .fetch_all(&self.pool)
        .await
    }

    /// Records an attempt of a delivery this replica claimed and settles the delivery:
    /// delivered, failed after `max_attempts`, or pending again after the backoff.
    pub async fn record_attempt(
        &self,
        claimed: &ClaimedDelivery,
        instance: &str,
        max_attempts: i32,
        outcome: &AttemptOutcome,
    ) -> Result<Settled, sqlx::Error> {
        let settled: Option<(i32, String)> = sqlx::query_as(
            "WITH settled AS (
                 UPDATE webhook_deliveries
                 SET attempts = attempts + 1,
                     status = CASE WHEN $2 THEN 'delivered'
                                   WHEN attempts + 1 >= $3 THEN 'failed'
                                   ELSE 'pending' END,
                     delivered_at = CASE WHEN $2 THEN clock_timestamp() END,
                     next_attempt_at = CASE WHEN $2 OR attempts + 1 >= $3 THEN next_attempt_at
                                            ELSE clock_timestamp() + make_interval(secs => $4)
                                       END,
                     locked_until = NULL, locked_by = NULL,
                     last_status = $5, last_error = $6
                 WHERE id = $1 AND status = 'pending' AND locked_by = $7
                 RETURNING id, attempts, status
             ), logged AS (
                 INSERT INTO webhook_attempts
                     (delivery_id, attempt, at, duration_ms, http_status, error)
                 SELECT id, attempts, $8, $9, $5, $6 FROM settled
             )
             SELECT attempts, status FROM settled",
        )
        .bind(claimed.id)
        .bind(outcome.delivered)
        .bind(max_attempts)
        .bind(outcome.retry_in_secs)
        .bind(outcome.http_status)
        .bind(outcome.error.as_deref())
        .bind(instance)
        .bind(claimed.claimed_at)
        .bind(outcome.duration_ms)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match settled {
            Some((attempt, status)) => Settled::Recorded { attempt, status },
            None => Settled::ClaimLost,
        })
    }

    /// Gives up this replica's claims (on shutdown), so another replica sends them at once.
    pub async fn release_delivery_claims(&self, instance: &str) -> Result<u64, sqlx::Error> {
        sqlx::query(
            "UPDATE webhook_deliveries SET locked_until = NULL, locked_by = NULL
             WHERE locked_by = $1 AND status = 'pending'",
        )
        .bind(instance)
        .execute(&self.pool)
        .await
        .map(|done| done.rows_affected())
    }

    /// Seconds until the next pending delivery of an enabled endpoint is due (zero or less
    /// when one is due now), or `None` when none is pending.
    pub async fn next_delivery_due_in(&self) -> Result<Option<f64>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT extract(epoch FROM min(greatest(d.next_attempt_at,
                                                    coalesce(d.locked_until, d.next_attempt_at)))
                                   - now())::float8
             FROM webhook_deliveries d
             JOIN webhook_endpoints e ON e.id = d.endpoint_id
             WHERE d.status = 'pending' AND e.enabled",
        )
        .fetch_one(&self.pool)
        .await
    }
}
