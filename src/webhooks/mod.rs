//! Webhook delivery: every replica runs a task that sends the outbox.
//!
//! Deliveries are written by the database in the transaction of each worker event (see the
//! webhooks migration), so this task only has to send what is due. It claims due deliveries
//! with `FOR UPDATE SKIP LOCKED` and a `locked_until` time, so replicas never send one
//! delivery at once, and a replica that dies mid-delivery only delays it until its claim
//! expires. It wakes on each worker event (LISTEN, through the event bus) and also polls,
//! so a missed notification delays a delivery but never loses it. Delivery is at least once:
//! receivers deduplicate by the `X-DALS-Delivery` header.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::header::{CONTENT_TYPE, USER_AGENT};
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::db::{AttemptOutcome, ClaimedDelivery, Db, NewWebhook, Settled};
use crate::domain::signature::{
    DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign,
};
use crate::domain::{backoff_secs, parse_event_kinds};
use crate::settings::{WebhookSettings, secs};

/// Deliveries one replica sends at once.
const CONCURRENCY: usize = 8;
/// How long a claim outlives the request timeout, for recording the attempt.
const CLAIM_MARGIN_SECS: f64 = 5.0;
/// The shortest pause between rounds, so a delivery due right now never spins the loop.
const MIN_PAUSE: Duration = Duration::from_millis(20);
/// How much of a failed answer's body is kept as its error.
const ERROR_BODY_BYTES: usize = 300;

/// A new endpoint secret: 32 random bytes from the operating system, as 64 hex digits.
pub fn generate_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("cannot read random bytes for a webhook secret: {e}"))?;
    Ok(hex::encode(bytes))
}

/// Upserts the `[[webhooks.endpoints]]` of the settings file (by URL).
pub async fn apply_settings_endpoints(db: &Db, settings: &WebhookSettings) -> anyhow::Result<()> {
    if settings.endpoints.is_empty() {
        return Ok(());
    }
    let endpoints = settings
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let events = parse_event_kinds(&e.events).map_err(|(_, rule)| {
                anyhow::anyhow!("invalid settings: webhooks.endpoints[{i}].events {rule}")
            })?;
            Ok(NewWebhook {
                url: e.url.clone(),
                secret: e.secret.clone(),
                events,
                enabled: e.enabled,
                description: e.description.clone(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ids = db
        .upsert_settings_webhooks(&endpoints)
        .await
        .context("storing the webhook endpoints of the settings file")?;
    tracing::info!(?ids, "webhook endpoints of the settings file stored");
    Ok(())
}

/// The delivery task of one replica.
pub struct Deliverer {
    sender: Sender,
    /// Wake-ups on new worker events; `None` once the bus is gone (then polling alone).
    wake: Option<broadcast::Receiver<()>>,
}

/// What sending one delivery takes; cloned into each delivery's task.
#[derive(Clone)]
struct Sender {
    db: Db,
    settings: Arc<WebhookSettings>,
    instance: Arc<str>,
    client: reqwest::Client,
}

impl Deliverer {
    /// A deliverer woken by `wake` (one message per worker event, from any replica).
    pub fn new(
        db: Db,
        settings: WebhookSettings,
        instance: String,
        wake: broadcast::Receiver<()>,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(secs(settings.timeout_secs))
            // A redirect is not a delivery: a receiver that moved must be reconfigured.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the webhook HTTP client")?;
        Ok(Deliverer {
            sender: Sender {
                db,
                settings: Arc::new(settings),
                instance: instance.into(),
                client,
            },
            wake: Some(wake),
        })
    }

    /// Sends due deliveries until cancelled, then gives up its claims. Each delivery runs as
    /// a task of its own, at most `CONCURRENCY` at once, so a receiver that hangs until the
    /// timeout holds one slot, not the deliveries to everyone else.
    pub async fn run(mut self, cancel: CancellationToken) {
        let poll = secs(self.sender.settings.poll_interval_secs);
        let mut in_flight: JoinSet<()> = JoinSet::new();
        loop {
            while in_flight.try_join_next().is_some() {}
            let free = CONCURRENCY - in_flight.len();
            let pause = if free == 0 {
                poll
            } else {
                match self.claim(free).await {
                    Ok(batch) => {
                        let full = batch.len() == free;
                        for claimed in batch {
                            in_flight.spawn(self.sender.clone().deliver(claimed));
                        }
                        // A full batch may leave more due now: claim again at once.
                        if full {
                            Duration::ZERO
                        } else {
                            self.next_due(poll).await
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot claim webhook deliveries; will retry");
                        poll
                    }
                }
            };
            let woken = async {
                match self.wake.as_mut() {
                    Some(wake) => match wake.recv().await {
                        Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => true,
                        Err(broadcast::error::RecvError::Closed) => false,
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
                // A freed slot may take a delivery that is due.
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                woken = woken => if !woken {
                    self.wake = None;
                }
            }
        }
        // Attempts in flight get the delivery timeout to finish and be recorded; those cut
        // short are not recorded, and their claims are released for any replica.
        let drain = async { while in_flight.join_next().await.is_some() {} };
        if tokio::time::timeout(secs(self.sender.settings.timeout_secs), drain)
            .await
            .is_err()
        {
            in_flight.shutdown().await;
        }
        match self
            .sender
            .db
            .release_delivery_claims(&self.sender.instance)
            .await
        {
            Ok(0) => {}
            Ok(released) => tracing::info!(released, "webhook delivery claims released"),
            Err(e) => tracing::warn!(error = %e, "cannot release webhook delivery claims"),
        }
        tracing::debug!("webhook deliverer stopped");
    }

    /// Claims up to `free` due deliveries.
    async fn claim(&self, free: usize) -> Result<Vec<ClaimedDelivery>, sqlx::Error> {
        let lock_secs = self.sender.settings.timeout_secs + CLAIM_MARGIN_SECS;
        self.sender
            .db
            .claim_deliveries(&self.sender.instance, free as i64, lock_secs)
            .await
    }

    /// How long to wait for the next due delivery, at most `poll`.
    async fn next_due(&self, poll: Duration) -> Duration {
        match self.sender.db.next_delivery_due_in().await {
            Ok(Some(due_in)) => Duration::from_secs_f64(due_in.max(0.0))
                .max(MIN_PAUSE)
                .min(poll),
            Ok(None) => poll,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the webhook outbox; will retry");
                poll
            }
        }
    }
}

impl Sender {
    /// One attempt of one claimed delivery, recorded.
    async fn deliver(self, claimed: ClaimedDelivery) {
        let outcome = self.attempt(&claimed).await;
        match self
            .db
            .record_attempt(
                &claimed,
                &self.instance,
                self.settings.max_attempts,
                &outcome,
            )
            .await
        {
            Ok(Settled::Recorded { attempt, status }) => match status.as_str() {
                "delivered" => tracing::debug!(delivery = claimed.id, attempt, "webhook delivered"),
                "failed" => tracing::error!(
                    delivery = claimed.id,
                    url = %claimed.url,
                    attempt,
                    error = outcome.error.as_deref().unwrap_or(""),
                    "webhook delivery failed for good; giving up"
                ),
                _ => tracing::warn!(
                    delivery = claimed.id,
                    url = %claimed.url,
                    attempt,
                    error = outcome.error.as_deref().unwrap_or(""),
                    retry_in_secs = outcome.retry_in_secs,
                    "webhook delivery attempt failed; will retry"
                ),
            },
            Ok(Settled::ClaimLost) => tracing::warn!(
                delivery = claimed.id,
                "webhook delivery claim expired or its endpoint is gone; attempt not recorded"
            ),
            // The claim expires and the delivery is sent again: at least once.
            Err(e) => tracing::warn!(
                delivery = claimed.id,
                error = %e,
                "cannot record a webhook attempt; it will be sent again"
            ),
        }
    }

    /// POSTs the recorded payload, signed at the claim's database time.
    async fn attempt(&self, claimed: &ClaimedDelivery) -> AttemptOutcome {
        let timestamp = claimed.claimed_at.timestamp();
        let signature = sign(
            claimed.secret.as_bytes(),
            timestamp,
            claimed.payload.as_bytes(),
        );
        let started = Instant::now();
        let sent = self
            .client
            .post(&claimed.url)
            .header(CONTENT_TYPE, "application/json")
            .header(
                USER_AGENT,
                concat!("dals-registry/", env!("CARGO_PKG_VERSION")),
            )
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signature)
            .header(EVENT_HEADER, claimed.kind.as_str())
            .header(DELIVERY_HEADER, claimed.id.to_string())
            .body(claimed.payload.clone())
            .send()
            .await;
        let (http_status, error) = match sent {
            Ok(response) if response.status().is_success() => {
                (Some(i32::from(response.status().as_u16())), None)
            }
            Ok(response) => {
                let status = response.status();
                let body = body_excerpt(response).await;
                (
                    Some(i32::from(status.as_u16())),
                    Some(match body.trim() {
                        "" => format!("answered {status}"),
                        body => format!("answered {status}: {body}"),
                    }),
                )
            }
            Err(e) => (None, Some(error_chain(&e))),
        };
        let duration_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
        AttemptOutcome {
            delivered: error.is_none(),
            http_status,
            error,
            duration_ms,
            retry_in_secs: backoff_secs(
                self.settings.backoff_base_secs,
                self.settings.backoff_max_secs,
                claimed.attempts + 1,
            ),
        }
    }
}

/// The start of a response body, as text, for the attempt's error.
async fn body_excerpt(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < ERROR_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    bytes.truncate(ERROR_BODY_BYTES);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// An error with its causes, e.g. "error sending request: connection refused".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}
