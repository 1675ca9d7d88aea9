//! Prometheus metrics of one replica. Counters and histograms are recorded where things happen;
//! fleet gauges (workers by status and family, the brake, the connection pool) are read from
//! the database and the pool at scrape time, so every replica reports the same fleet.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::db::Db;
use crate::error::ApiError;

/// Every metric of the registry, in a registry of its own (no global state, so several
/// registries can run in one process, as tests do).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub registrations: IntCounterVec,
    pub heartbeats: IntCounterVec,
    pub heartbeat_interval: Histogram,
    pub sweeps: IntCounterVec,
    pub sweep_duration: Histogram,
    pub sweep_transitions: IntCounterVec,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    workers: IntGaugeVec,
    brake_engaged: IntGauge,
    brake_held: IntGauge,
    pool_connections: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid histogram");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

fn plain_histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid histogram");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let workers = IntGaugeVec::new(
            Opts::new("dals_workers", "Workers by family and status"),
            &["family", "status"],
        )
        .expect("valid gauge");
        registry
            .register(Box::new(workers.clone()))
            .expect("unique metric");
        let brake_engaged = IntGauge::new(
            "dals_sweeper_brake_engaged",
            "1 while the sweeper brake holds stale transitions",
        )
        .expect("valid gauge");
        registry
            .register(Box::new(brake_engaged.clone()))
            .expect("unique metric");
        let brake_held = IntGauge::new(
            "dals_sweeper_brake_held_transitions",
            "Stale transitions the brake holds",
        )
        .expect("valid gauge");
        registry
            .register(Box::new(brake_held.clone()))
            .expect("unique metric");
        let pool_connections = IntGaugeVec::new(
            Opts::new(
                "dals_db_pool_connections",
                "Database pool connections by state",
            ),
            &["state"],
        )
        .expect("valid gauge");
        registry
            .register(Box::new(pool_connections.clone()))
            .expect("unique metric");
        Metrics {
            registrations: counter(
                r,
                "dals_registrations_total",
                "Registrations (deployments) accepted",
                &["family"],
            ),
            heartbeats: counter(
                r,
                "dals_heartbeats_total",
                "Heartbeats received, by outcome",
                &["outcome"],
            ),
            heartbeat_interval: plain_histogram(
                r,
                "dals_heartbeat_interval_seconds",
                "Time between a worker's consecutive heartbeats (database clock)",
                vec![
                    1.0, 5.0, 10.0, 15.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0, 600.0,
                ],
            ),
            sweeps: counter(
                r,
                "dals_sweeper_runs_total",
                "Liveness sweeps, by outcome",
                &["outcome"],
            ),
            sweep_duration: plain_histogram(
                r,
                "dals_sweeper_duration_seconds",
                "Duration of one liveness sweep",
                prometheus::exponential_buckets(0.001, 2.0, 14).expect("valid buckets"),
            ),
            sweep_transitions: counter(
                r,
                "dals_sweeper_transitions_total",
                "Workers the sweeper marked, by new status",
                &["to"],
            ),
            http_requests: counter(
                r,
                "dals_http_requests_total",
                "HTTP requests by method, route and status",
                &["method", "route", "status"],
            ),
            http_duration: histogram(
                r,
                "dals_http_request_duration_seconds",
                "HTTP request latency by method and route",
                &["method", "route"],
                prometheus::exponential_buckets(0.0005, 2.0, 16).expect("valid buckets"),
            ),
            workers,
            brake_engaged,
            brake_held,
            pool_connections,
            registry,
        }
    }

    /// Reads the fleet gauges and renders every metric in Prometheus text format.
    pub async fn render(&self, db: &Db) -> Result<String, ApiError> {
        let fleet = db.fleet_by_family().await?;
        let liveness = db.liveness_state().await?;
        self.workers.reset();
        for row in fleet {
            self.workers
                .with_label_values(&[row.family.as_str(), row.status.as_str()])
                .set(row.workers);
        }
        self.brake_engaged
            .set(i64::from(liveness.brake_engaged_at.is_some()));
        self.brake_held.set(i64::from(liveness.brake_held));
        let pool = db.pool();
        let idle = pool.num_idle() as i64;
        self.pool_connections.with_label_values(&["idle"]).set(idle);
        self.pool_connections
            .with_label_values(&["in_use"])
            .set(i64::from(pool.size()) - idle);
        self.pool_connections
            .with_label_values(&["max"])
            .set(i64::from(pool.options().get_max_connections()));

        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .map_err(|e| ApiError::Internal(e.into()))?;
        String::from_utf8(out).map_err(|e| ApiError::Internal(e.into()))
    }
}

/// Records every request's route, status and latency.
pub async fn track_http(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // Methods outside HTTP's own set are one label, so a client cannot grow the series.
    const METHODS: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
    ];
    let method = METHODS
        .into_iter()
        .find(|m| *m == request.method().as_str())
        .unwrap_or("other");
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics
        .http_requests
        .with_label_values(&[method, route.as_str(), status.as_str()])
        .inc();
    metrics
        .http_duration
        .with_label_values(&[method, route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The `/metrics` response.
pub async fn scrape(metrics: &Metrics, db: &Db) -> Response {
    match metrics.render(db).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}
