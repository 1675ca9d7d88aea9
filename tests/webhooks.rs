//! Webhooks: worker transitions arrive signed and byte for byte as the outbox recorded them,
//! through receiver failures and registry crashes; the example restart receiver acts on them.

mod common;

#[allow(dead_code)]
#[path = "../examples/restart_receiver.rs"]
mod restart_receiver;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use common::{TestApp, encode, json};
use dals_registry::domain::signature::{self, sign, verify};
use dals_registry::settings::{Overrides, Settings};
use serde_json::{Value, json};
use tokio::net::TcpListener;

const SECRET: &str = "test-secret-0123456789abcdef";
/// Long enough for a slow, shared machine; every wait polls and returns as soon as it can.
const PATIENCE: Duration = Duration::from_secs(30);

/// Delivery timings short enough for a test.
fn fast(s: &mut Settings) {
    s.webhooks.backoff_base_secs = 0.3;
    s.webhooks.backoff_max_secs = 5.0;
    s.webhooks.timeout_secs = 2.0;
    s.webhooks.poll_interval_secs = 0.2;
}

/// Liveness timings short enough that a silent worker goes stale, then offline, in seconds.
fn fast_liveness(s: &mut Settings) {
    s.liveness.stale_after_secs = 0.6;
    s.liveness.offline_after_secs = 1.2;
    s.liveness.sweep_interval_secs = 0.1;
    s.liveness.heartbeat_interval_secs = 0.3;
    s.liveness.brake_min_workers = 1_000_000;
}

async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    while start.elapsed() < PATIENCE {
        if let Some(found) = check().await {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {PATIENCE:?} waiting for {what}");
}

// ---------------------------------------------------------------------------------------------
// A webhook receiver for the tests: records every request, answers as told.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Answer,
    /// Accept the request and never answer.
    Hang,
}

/// One request as received.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn delivery_id(&self) -> i64 {
        self.header(signature::DELIVERY_HEADER)
            .expect("X-DALS-Delivery header")
            .parse()
            .expect("numeric delivery id")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    /// Verifies the signature as a receiver would, against the current time.
    fn verify(&self, secret: &str) -> Result<(), signature::SignatureError> {
        let now = chrono::Utc::now().timestamp();
        verify(
            secret.as_bytes(),
            self.header(signature::TIMESTAMP_HEADER),
            self.header(signature::SIGNATURE_HEADER),
            &self.body,
            now,
            signature::DEFAULT_TOLERANCE_SECS,
        )
    }
}

#[derive(Default)]
struct Recorder {
    received: Mutex<Vec<Received>>,
    /// Requests still to be answered 500.
    fail_next: AtomicUsize,
    mode: Mutex<Option<Mode>>,
}

#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    recorder: Arc<Recorder>,
}

impl Receiver {
    async fn start() -> Receiver {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.expect("bind")).await
    }

    async fn start_on(listener: TcpListener) -> Receiver {
        let addr = listener.local_addr().expect("addr");
        let recorder = Arc::new(Recorder::default());
        let app = axum::Router::new()
            .fallback(record)
            .with_state(recorder.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, recorder }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn fail_next(&self, n: usize) {
        self.recorder.fail_next.store(n, Ordering::SeqCst);
    }

    fn set_mode(&self, mode: Mode) {
        *self.recorder.mode.lock().unwrap() = Some(mode);
    }

    fn received(&self) -> Vec<Received> {
        self.recorder.received.lock().unwrap().clone()
    }

    async fn wait_for_requests(&self, n: usize) -> Vec<Received> {
        wait_for(&format!("{n} webhook requests"), async || {
            let got = self.received();
            (got.len() >= n).then_some(got)
        })
        .await
    }
}

async fn record(
    State(recorder): State<Arc<Recorder>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    recorder.received.lock().unwrap().push(Received {
        path: uri.path().to_string(),
        headers,
        body,
    });
    let mode = recorder.mode.lock().unwrap().unwrap_or(Mode::Answer);
    if mode == Mode::Hang {
        std::future::pending::<()>().await;
    }
    let failing = recorder
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers over the registry.

async fn create_webhook(app: &TestApp, body: Value) -> Value {
    json(app.post("/api/webhooks", &body).await, 201).await
}

async fn subscribe(app: &TestApp, url: &str, events: &[&str]) -> i64 {
    let created =
        create_webhook(app, json!({"url": url, "events": events, "secret": SECRET})).await;
    created["id"].as_i64().expect("id")
}

async fn deliveries(app: &TestApp, webhook: i64) -> Vec<Value> {
    let page = json(
        app.get(&format!("/api/webhooks/{webhook}/deliveries"))
            .await,
        200,
    )
    .await;
    page["deliveries"].as_array().expect("deliveries").clone()
}

async fn wait_delivered(app: &TestApp, webhook: i64, n: usize) -> Vec<Value> {
    wait_for(&format!("{n} delivered webhooks"), async || {
        let all = deliveries(app, webhook).await;
        (all.len() >= n && all.iter().all(|d| d["status"] == "delivered")).then_some(all)
    })
    .await
}

/// The payload text the outbox recorded for a delivery.
async fn recorded_payload(app: &TestApp, delivery: i64) -> String {
    sqlx::query_scalar("SELECT payload FROM webhook_deliveries WHERE id = $1")
        .bind(delivery)
        .fetch_one(&app.pool)
        .await
        .expect("delivery row")
}

async fn register_and_deregister(app: &TestApp, name: &str) -> Value {
    let worker = app.register(name, "truemark").await;
    json(
        app.delete(&format!("/api/workers/{}", encode(name))).await,
        200,
    )
    .await;
    worker
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_arrive_signed_and_exactly_as_recorded() {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn_with(fast).await;
    let created = create_webhook(
        &app,
        json!({"url": receiver.url("/hooks/dals"), "events": ["registered", "deregistered"],
               "secret": SECRET, "description": "orchestrator"}),
    )
    .await;
    let webhook = created["id"].as_i64().unwrap();
    assert_eq!(
        created["secret"], SECRET,
        "the secret is shown once, at creation"
    );
    assert_eq!(created["events"], json!(["registered", "deregistered"]));
    assert_eq!(created["source"], "api");
    assert_eq!(created["enabled"], true);

    let worker = register_and_deregister(&app, "Hooked-user_1").await;
    let got = receiver.wait_for_requests(2).await;
    let events: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT kind, id, serial_number FROM worker_events WHERE worker_name = $1 ORDER BY id",
    )
    .bind("Hooked-user_1")
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(events.len(), 2);

    for request in &got {
        assert_eq!(request.path, "/hooks/dals");
        request.verify(SECRET).expect("a valid signature");
        assert!(
            request.verify("some-other-secret-123").is_err(),
            "the signature depends on the secret"
        );
        assert_eq!(
            request.header("content-type"),
            Some("application/json"),
            "content type"
        );
        // The exact bytes sent are the bytes the outbox recorded.
        let recorded = recorded_payload(&app, request.delivery_id()).await;
        assert_eq!(request.body.as_ref(), recorded.as_bytes());
        let body = request.json();
        assert_eq!(
            request.header(signature::EVENT_HEADER),
            body["kind"].as_str()
        );
        let (kind, id, serial) = events
            .iter()
            .find(|(kind, _, _)| body["kind"] == kind.as_str())
            .expect("a recorded event of that kind");
        assert_eq!(body["event_id"], *id, "{kind}");
        assert_eq!(body["serial_number"], serial.as_str());
        assert_eq!(body["worker_name"], "Hooked-user_1");
        assert_eq!(body["model_number"], worker["model_number"]);
        assert_eq!(body["worker_type"], "truemark");
        assert_eq!(body["api_url"], worker["api_url"]);
        assert_eq!(body["user_id"], worker["user_id"]);
        assert_eq!(body["to_status"], kind.as_str());
        assert_eq!(body["restart_queued"], false);
        let at = body["at"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(at).is_ok() && at.ends_with('Z'),
            "{at}"
        );
    }
    let mut kinds: Vec<Value> = got.iter().map(|r| r.json()["kind"].clone()).collect();
    kinds.sort_by_key(|k| k.to_string());
    assert_eq!(kinds, [json!("deregistered"), json!("registered")]);

    // The deliveries endpoint shows what was sent and how it went, newest first.
    let shown = wait_delivered(&app, webhook, 2).await;
    assert!(shown[0]["id"].as_i64() > shown[1]["id"].as_i64());
    for delivery in &shown {
        let request = got
            .iter()
            .find(|r| r.delivery_id() == delivery["id"].as_i64().unwrap())
            .expect("the receiver got this delivery");
        assert_eq!(delivery["payload"], request.json());
        assert_eq!(delivery["kind"], request.json()["kind"]);
        let attempts = delivery["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{delivery}");
        assert_eq!(attempts[0]["attempt"], 1);
        assert_eq!(attempts[0]["http_status"], 204);
        assert_eq!(attempts[0]["error"], Value::Null);
        assert!(delivery["delivered_at"].is_string());
        assert_eq!(delivery["next_attempt_at"], Value::Null);
    }

    // Secrets are never listed.
    let listed = json(app.get("/api/webhooks").await, 200).await;
    let listed = listed["webhooks"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].get("secret").is_none(), "{}", listed[0]);
    assert_eq!(listed[0]["deliveries"]["delivered"], 2);
    let one = json(app.get(&format!("/api/webhooks/{webhook}")).await, 200).await;
    assert!(one.get("secret").is_none());
    assert_eq!(one["description"], "orchestrator");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_retries_with_backoff_until_it_answers() {
    let receiver = Receiver::start().await;
    receiver.fail_next(2);
    let app = TestApp::spawn_with(fast).await;
    let webhook = subscribe(&app, &receiver.url("/"), &["deregistered"]).await;
    register_and_deregister(&app, "Flaky-user_1").await;

    let shown = wait_delivered(&app, webhook, 1).await;
    let got = receiver.received();
    assert_eq!(got.len(), 3, "two failures, then the delivery");
    let first = &got[0];
    for request in &got {
        request.verify(SECRET).expect("every retry is signed");
        assert_eq!(request.delivery_id(), first.delivery_id(), "one delivery");
        assert_eq!(request.body, first.body, "retries send the recorded bytes");
    }
    let recorded = recorded_payload(&app, first.delivery_id()).await;
    assert_eq!(first.body.as_ref(), recorded.as_bytes());

    let delivery = &shown[0];
    let attempts = delivery["attempts"].as_array().unwrap();
    let statuses: Vec<&Value> = attempts.iter().map(|a| &a["http_status"]).collect();
    assert_eq!(statuses, [&json!(500), &json!(500), &json!(204)]);
    // The receiver answered 500 with no body: the error says so, with nothing dangling.
    assert_eq!(
        attempts[0]["error"], "answered 500 Internal Server Error",
        "{}",
        attempts[0]
    );
    assert_eq!(delivery["last_status"], 204);
    assert_eq!(delivery["status"], "delivered");

    // Exponential backoff: the second wait is at least twice the base, the first the base.
    let gaps: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM at - lag(at) OVER (ORDER BY attempt))::float8
         FROM webhook_attempts WHERE delivery_id = $1 ORDER BY attempt OFFSET 1",
    )
    .bind(first.delivery_id())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(gaps.len(), 2);
    assert!(
        gaps[0] >= 0.3,
        "first retry after the base backoff: {gaps:?}"
    );
    assert!(
        gaps[1] >= 0.6,
        "second retry after twice the base: {gaps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_out_of_attempts_is_marked_failed_and_left_alone() {
    let receiver = Receiver::start().await;
    receiver.fail_next(usize::MAX);
    let app = TestApp::spawn_with(|s| {
        fast(s);
        s.webhooks.max_attempts = 2;
    })
    .await;
    let webhook = subscribe(&app, &receiver.url("/"), &["deregistered"]).await;
    register_and_deregister(&app, "Doomed-user_1").await;

    let failed = wait_for("the delivery to fail", async || {
        let all = deliveries(&app, webhook).await;
        (all.len() == 1 && all[0]["status"] == "failed").then(|| all[0].clone())
    })
    .await;
    assert_eq!(failed["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(failed["last_status"], 500);
    assert_eq!(failed["next_attempt_at"], Value::Null);
    // Nothing more is sent once it failed: wait several backoffs and count again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.received().len(), 2);
    let only_failed = json(
        app.get(&format!("/api/webhooks/{webhook}/deliveries?status=failed"))
            .await,
        200,
    )
    .await;
    assert_eq!(only_failed["deliveries"].as_array().unwrap().len(), 1);
    let none_delivered = json(
        app.get(&format!(
            "/api/webhooks/{webhook}/deliveries?status=delivered"
        ))
        .await,
        200,
    )
    .await;
    assert_eq!(none_delivered["deliveries"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transition_committed_before_a_crash_is_delivered_by_the_next_registry() {
    // A port with nothing listening: the receiver is down until after the crash.
    let reserved = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let app = TestApp::spawn_with(fast).await;
    let webhook = subscribe(&app, &format!("http://{addr}/hook"), &["deregistered"]).await;
    register_and_deregister(&app, "Crashy-user_1").await;
    // The registry tried and failed (connection refused); then it dies.
    wait_for("a failed attempt", async || {
        let all = deliveries(&app, webhook).await;
        (all.len() == 1 && !all[0]["attempts"].as_array().unwrap().is_empty()).then_some(())
    })
    .await;
    let database_url = app.database_url.clone();
    app.kill().await;

    let receiver =
        Receiver::start_on(TcpListener::bind(addr).await.expect("rebind the port")).await;
    let app = TestApp::spawn_on(&database_url, fast).await;
    let got = receiver.wait_for_requests(1).await;
    let shown = wait_delivered(&app, webhook, 1).await;
    assert_eq!(got.len(), 1);
    got[0].verify(SECRET).expect("signed");
    assert_eq!(got[0].json()["kind"], "deregistered");
    assert_eq!(got[0].json()["worker_name"], "Crashy-user_1");
    let recorded = recorded_payload(&app, got[0].delivery_id()).await;
    assert_eq!(got[0].body.as_ref(), recorded.as_bytes());
    let attempts = shown[0]["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 2, "{attempts:?}");
    assert_eq!(
        attempts[0]["http_status"],
        Value::Null,
        "refused: no answer"
    );
    assert!(attempts[0]["error"].is_string());
    assert_eq!(attempts.last().unwrap()["http_status"], 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_killed_mid_delivery_leaves_it_to_the_next_once_its_claim_expires() {
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Hang);
    let short_timeout = |s: &mut Settings| {
        fast(s);
        s.webhooks.timeout_secs = 1.0;
    };
    let app = TestApp::spawn_with(short_timeout).await;
    let webhook = subscribe(&app, &receiver.url("/"), &["deregistered"]).await;
    register_and_deregister(&app, "Midway-user_1").await;
    // The request is in flight (the receiver holds it) when the registry dies.
    receiver.wait_for_requests(1).await;
    let database_url = app.database_url.clone();
    app.kill().await;
    receiver.set_mode(Mode::Answer);

    let app = TestApp::spawn_on(&database_url, short_timeout).await;
    let shown = wait_delivered(&app, webhook, 1).await;
    let got = receiver.received();
    assert_eq!(
        got.len(),
        2,
        "sent again after the dead replica's claim expired"
    );
    assert_eq!(got[0].delivery_id(), got[1].delivery_id());
    assert_eq!(got[0].body, got[1].body);
    got[1].verify(SECRET).expect("signed");
    // The dead replica never recorded its attempt; the new one recorded the delivery.
    let attempts = shown[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0]["http_status"], 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_does_not_hold_up_the_others() {
    let hanging = Receiver::start().await;
    hanging.set_mode(Mode::Hang);
    let healthy = Receiver::start().await;
    // The hung request takes the whole timeout; the healthy receiver must not wait for it.
    let app = TestApp::spawn_with(|s| {
        fast(s);
        s.webhooks.timeout_secs = 20.0;
    })
    .await;
    subscribe(&app, &hanging.url("/"), &["deregistered"]).await;
    let webhook = subscribe(&app, &healthy.url("/"), &["deregistered"]).await;
    register_and_deregister(&app, "First-user_1").await;
    hanging.wait_for_requests(1).await;
    wait_delivered(&app, webhook, 1).await;

    let started = Instant::now();
    register_and_deregister(&app, "Second-user_1").await;
    let got = healthy.wait_for_requests(2).await;
    assert_eq!(got[1].json()["worker_name"], "Second-user_1");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the second delivery waited {:?} for the hung one",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_subscribed_kinds_reach_enabled_endpoints() {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn_with(fast).await;
    let registrations = subscribe(&app, &receiver.url("/registered"), &["registered"]).await;
    let departures = subscribe(&app, &receiver.url("/deregistered"), &["deregistered"]).await;
    let brakes = create_webhook(
        &app,
        json!({"url": receiver.url("/brake"), "events": ["brake"], "secret": SECRET}),
    )
    .await;
    assert_eq!(brakes["events"], json!(["brake_held", "brake_released"]));
    let disabled = create_webhook(
        &app,
        json!({"url": receiver.url("/disabled"), "events": ["registered", "deregistered"],
               "secret": SECRET, "enabled": false}),
    )
    .await;

    register_and_deregister(&app, "Picky-user_1").await;
    wait_delivered(&app, registrations, 1).await;
    wait_delivered(&app, departures, 1).await;
    let got = receiver.received();
    let mut paths: Vec<(String, Value)> = got
        .iter()
        .map(|r| (r.path.clone(), r.json()["kind"].clone()))
        .collect();
    paths.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        paths,
        [
            ("/deregistered".to_string(), json!("deregistered")),
            ("/registered".to_string(), json!("registered")),
        ]
    );
    let counts: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT e.id, count(d.id) FROM webhook_endpoints e
         LEFT JOIN webhook_deliveries d ON d.endpoint_id = e.id GROUP BY e.id ORDER BY e.id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        counts,
        [
            (registrations, 1),
            (departures, 1),
            (brakes["id"].as_i64().unwrap(), 0),
            (disabled["id"].as_i64().unwrap(), 0),
        ]
    );
}

/// An endpoint deleted while a transition commits: the transition (here a registration) still
/// commits, and the deleted endpoint gets no delivery. The outbox trigger runs at commit and
/// used to insert a delivery for the endpoint being deleted, failing the registration.
#[tokio::test]
async fn deleting_an_endpoint_while_a_transition_commits_fails_neither() {
    let app = TestApp::spawn().await;
    let hook = json(
        app.post(
            "/api/webhooks",
            &json!({"url": "http://127.0.0.1:9/hook", "events": ["registered"], "secret": SECRET}),
        )
        .await,
        201,
    )
    .await;
    let id = hook["id"].as_i64().unwrap();

    let mut deleting = app.pool.begin().await.unwrap();
    sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
        .bind(id)
        .execute(&mut *deleting)
        .await
        .unwrap();
    let register = common::in_background(
        app.client
            .post(app.url("/api/workers/register"))
            .json(&json!({"name": "w", "worker_type": "truemark",
                          "api_url": "http://localhost:8080", "user_id": "u"})),
    );
    // The registration's commit waits for the delete to decide.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!register.is_finished());
    deleting.commit().await.unwrap();
    let (status, body) = register.await.unwrap();
    assert_eq!(status, 200, "{body}");

    assert_eq!(app.worker("w").await["status"], "registered");
    let deliveries: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(deliveries, 0);
    let r = app.get(&format!("/api/webhooks/{id}")).await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn bad_webhook_requests_are_refused_with_the_field_and_the_rule() {
    let app = TestApp::spawn().await;
    let url = "http://127.0.0.1:9/hook";
    let cases = [
        (json!({"events": ["offline"]}), "url"),
        (json!({"url": "ftp://h/x", "events": ["offline"]}), "url"),
        (json!({"url": "not a url", "events": ["offline"]}), "url"),
        (json!({"url": "https://h/x", "events": ["offline"]}), "url"),
        (
            json!({"url": "http://u:p@h/x", "events": ["offline"]}),
            "url",
        ),
        (json!({"url": 5, "events": ["offline"]}), "url"),
        (json!({"url": url}), "events"),
        (json!({"url": url, "events": []}), "events"),
        (json!({"url": url, "events": "offline"}), "events"),
        (
            json!({"url": url, "events": ["offline", "dead"]}),
            "events[1]",
        ),
        (
            json!({"url": url, "events": ["offline"], "secret": "short"}),
            "secret",
        ),
        (
            json!({"url": url, "events": ["offline"], "secret": "x\ny".repeat(8)}),
            "secret",
        ),
        (
            json!({"url": url, "events": ["offline"], "description": "d".repeat(1025)}),
            "description",
        ),
        (
            json!({"url": url, "events": ["offline"], "enabled": "yes"}),
            "enabled",
        ),
    ];
    for (body, field) in cases {
        let answer = json(app.post("/api/webhooks", &body).await, 422).await;
        assert_eq!(answer["error"], "validation_failed", "{body}");
        assert_eq!(answer["field"], field, "{body}: {answer}");
        assert!(answer["rule"].as_str().is_some_and(|r| !r.is_empty()));
    }
    let malformed = json(app.post_raw("/api/webhooks", "{\"url\":").await, 400).await;
    assert_eq!(malformed["error"], "malformed_json");

    assert_eq!(
        json(app.get("/api/webhooks/abc").await, 422).await["field"],
        "id"
    );
    for id in ["0", "%2B1", "-1"] {
        assert_eq!(
            json(app.get(&format!("/api/webhooks/{id}")).await, 422).await["field"],
            "id",
            "{id}"
        );
    }
    assert_eq!(
        json(app.get("/api/webhooks/99").await, 404).await["error"],
        "not_found"
    );
    assert_eq!(
        json(app.delete("/api/webhooks/99").await, 404).await["error"],
        "not_found"
    );
    json(app.get("/api/webhooks/99/deliveries").await, 404).await;

    // A generated secret: 32 random bytes in hex, different each time.
    let a = create_webhook(&app, json!({"url": url, "events": ["offline"]})).await;
    let b = create_webhook(&app, json!({"url": url, "events": ["offline"]})).await;
    let secret = a["secret"].as_str().unwrap();
    assert_eq!(secret.len(), 64);
    assert!(secret.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a["secret"], b["secret"]);
    let id = a["id"].as_i64().unwrap();
    for query in ["limit=0", "limit=501", "limit=x", "status=lost", "before=y"] {
        let r = app
            .get(&format!("/api/webhooks/{id}/deliveries?{query}"))
            .await;
        assert_eq!(json(r, 422).await["error"], "validation_failed", "{query}");
    }

    // Deleting an endpoint answers what it was; then it is gone.
    let deleted = json(app.delete(&format!("/api/webhooks/{id}")).await, 200).await;
    assert_eq!(deleted["id"], id);
    assert!(deleted.get("secret").is_none());
    json(app.get(&format!("/api/webhooks/{id}")).await, 404).await;
    let listed = json(app.get("/api/webhooks").await, 200).await;
    assert_eq!(listed["webhooks"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_of_the_settings_file_are_upserted_by_url() {
    let receiver = Receiver::start().await;
    let dir = std::env::temp_dir().join(format!("dals-webhooks-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("dals.toml");
    std::fs::write(
        &file,
        format!(
            "[[webhooks.endpoints]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\n\
             events = [\"deregistered\", \"brake\"]\ndescription = \"from the file\"\n",
            receiver.url("/file")
        ),
    )
    .unwrap();
    let loaded = Settings::load(Some(&file), &Overrides::default()).expect("settings file");
    assert_eq!(loaded.webhooks.endpoints.len(), 1);
    let endpoints = loaded.webhooks.endpoints.clone();

    let app = TestApp::spawn_with(|s| {
        fast(s);
        s.webhooks.endpoints = endpoints.clone();
    })
    .await;
    let listed = json(app.get("/api/webhooks").await, 200).await;
    let listed = listed["webhooks"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["source"], "settings");
    assert_eq!(listed[0]["description"], "from the file");
    assert_eq!(
        listed[0]["events"],
        json!(["deregistered", "brake_held", "brake_released"])
    );
    let id = listed[0]["id"].as_i64().unwrap();
    register_and_deregister(&app, "Filed-user_1").await;
    receiver.wait_for_requests(1).await[0]
        .verify(SECRET)
        .expect("signed with the file's secret");
    // The registry records the delivery once the receiver has answered.
    let mut recorded = false;
    for _ in 0..200 {
        let w = json(app.get(&format!("/api/webhooks/{id}")).await, 200).await;
        if w["deliveries"]["delivered"] == 1 {
            recorded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(recorded, "the delivery was never recorded as delivered");

    // A restart with the entry changed updates the same endpoint.
    let database_url = app.database_url.clone();
    app.stop().await;
    let mut changed = endpoints.clone();
    changed[0].events = vec!["offline".to_string()];
    changed[0].secret = "another-secret-0123456789".to_string();
    let app = TestApp::spawn_on(&database_url, |s| {
        fast(s);
        s.webhooks.endpoints = changed;
    })
    .await;
    let listed = json(app.get("/api/webhooks").await, 200).await;
    assert_eq!(listed["webhooks"].as_array().unwrap().len(), 1);
    assert_eq!(listed["webhooks"][0]["id"], id);
    assert_eq!(listed["webhooks"][0]["events"], json!(["offline"]));
    assert_eq!(listed["webhooks"][0]["deliveries"]["delivered"], 1);

    // A bad entry stops start-up with a message naming it.
    std::fs::write(
        &file,
        "[[webhooks.endpoints]]\nurl = \"http://h/x\"\nsecret = \"short\"\nevents = [\"offline\"]\n",
    )
    .unwrap();
    let err = Settings::load(Some(&file), &Overrides::default()).unwrap_err();
    assert!(
        err.to_string().contains("webhooks.endpoints[0].secret"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_receiver_restarts_offline_workers_and_refuses_bad_signatures() {
    // A "restart" command that records its arguments, one per line.
    let dir = std::env::temp_dir().join(format!("dals-restart-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("restarts.txt");
    let script = dir.join("restart.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nprintf '%s\\n' \"$@\" >> '{}'\n", out.display()),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let template = format!(
        "'{}' --worker {{worker_name}} --container {{metadata.container}}",
        script.display()
    );
    let config = restart_receiver::Config {
        secret: SECRET.to_string(),
        command: Some(restart_receiver::split_template(&template).unwrap()),
        kinds: vec!["offline".to_string()],
        tolerance_secs: signature::DEFAULT_TOLERANCE_SECS,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver_url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, restart_receiver::app(config)).await;
    });

    let app = TestApp::spawn_with(|s| {
        fast(s);
        fast_liveness(s);
        s.remediation.restart_on_stale = true;
    })
    .await;
    let webhook = subscribe(&app, &receiver_url, &["stale", "offline"]).await;
    // A name full of shell syntax: it must reach the command as one literal argument.
    let name = "evil; touch pwned $(id) `id` 'q'";
    let registered = app
        .post(
            "/api/workers/register",
            &json!({"name": name, "worker_type": "truemark", "api_url": "http://10.0.0.7:8080",
                    "user_id": "user_9", "metadata": {"container": "josephine-user_9"}}),
        )
        .await;
    json(registered, 200).await;

    let shown = wait_delivered(&app, webhook, 2).await;
    let restarts = wait_for("the restart command to run", async || {
        std::fs::read_to_string(&out)
            .ok()
            .filter(|s| s.lines().count() >= 4)
    })
    .await;
    assert_eq!(
        restarts.lines().collect::<Vec<_>>(),
        ["--worker", name, "--container", "josephine-user_9"]
    );
    // The stale event is ignored by the receiver, but delivered; both carry the restart that
    // the sweeper queued with the stale transition.
    let kinds: Vec<&str> = shown.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["offline", "stale"]);
    for delivery in &shown {
        assert_eq!(delivery["payload"]["restart_queued"], true, "{delivery}");
        assert_eq!(
            delivery["payload"]["metadata"]["container"],
            "josephine-user_9"
        );
    }
    let offline = &shown[0];
    assert_eq!(offline["attempts"][0]["http_status"], 202);

    // Refusals: unsigned, wrong secret, too old; a valid one is accepted.
    let client = reqwest::Client::new();
    let body = offline["payload"].to_string();
    let now = chrono::Utc::now().timestamp();
    let send = async |timestamp: i64, signature: Option<String>| {
        let mut request = client
            .post(&receiver_url)
            .header(signature::TIMESTAMP_HEADER, timestamp.to_string())
            .header(signature::DELIVERY_HEADER, "manual-1")
            .body(body.clone());
        if let Some(signature) = signature {
            request = request.header(signature::SIGNATURE_HEADER, signature);
        }
        request.send().await.unwrap().status().as_u16()
    };
    assert_eq!(send(now, None).await, 401);
    assert_eq!(
        send(
            now,
            Some(sign(b"wrong-secret-0123456789", now, body.as_bytes()))
        )
        .await,
        401
    );
    let old = now - 600;
    assert_eq!(
        send(old, Some(sign(SECRET.as_bytes(), old, body.as_bytes()))).await,
        401
    );
    assert_eq!(
        send(now, Some(sign(SECRET.as_bytes(), now, body.as_bytes()))).await,
        202
    );
    // The same delivery again is not a second restart.
    assert_eq!(
        send(now, Some(sign(SECRET.as_bytes(), now, body.as_bytes()))).await,
        200
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_example_splits_templates_and_substitutes_per_argument() {
    use restart_receiver::{render, split_template};
    assert_eq!(
        split_template("docker restart {worker_name}").unwrap(),
        ["docker", "restart", "{worker_name}"]
    );
    assert_eq!(
        split_template(r#"systemctl  restart "dals-worker@{worker_name}.service" 'a b' c\ d"#)
            .unwrap(),
        [
            "systemctl",
            "restart",
            "dals-worker@{worker_name}.service",
            "a b",
            "c d"
        ]
    );
    assert!(split_template("docker 'restart").is_err());
    assert!(split_template("   ").is_err());
    let template = split_template("kubectl delete pod {metadata.pod} -n {user_id} {nope}").unwrap();
    let event = json!({"worker_name": "w 1; rm -rf /", "user_id": "ns", "event_id": 7,
                       "metadata": {"pod": "p-1"}});
    assert_eq!(
        render(&template, &event),
        ["kubectl", "delete", "pod", "p-1", "-n", "ns", "{nope}"]
    );
    let template = split_template("restart --name={worker_name} --event {event_id}").unwrap();
    assert_eq!(
        render(&template, &event),
        ["restart", "--name=w 1; rm -rf /", "--event", "7"]
    );
}
