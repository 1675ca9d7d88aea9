//! The worker client library (`dals-client`) and the example workers, end to end against the
//! real registry: registration, heartbeats on the registry's interval, surviving a registry
//! crash, registering again when lost, stopping for a newer deployment, commands, shutdown.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{delete, post};
use common::{TestApp, json};
use dals_client::{
    Client, CommandKind, Error, HeartbeatOptions, Heartbeats, Registration, State, Status, Stop,
};
use dals_registry::settings::Settings;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

const WAIT: Duration = Duration::from_secs(15);

/// Short intervals so the lifecycle plays out in a test.
fn fast_beats(s: &mut Settings) {
    s.liveness.heartbeat_interval_secs = 0.2;
}

fn options() -> HeartbeatOptions {
    HeartbeatOptions::default().backoff(Duration::from_millis(50), Duration::from_millis(400))
}

fn registration(name: &str) -> Registration {
    Registration::new(name, "truemark", "http://localhost:8080", "user_123").meta("test", true)
}

async fn start(client: &Client, name: &str, options: HeartbeatOptions) -> Heartbeats {
    let registration = registration(name);
    let registered = client.register(&registration).await.expect("register");
    client
        .spawn_heartbeats(registration, registered, options)
        .expect("spawn heartbeats")
}

/// Waits until the heartbeat status satisfies `check`.
async fn wait_status(hb: &Heartbeats, what: &str, check: impl Fn(&Status) -> bool) -> Status {
    let mut rx = hb.subscribe();
    match tokio::time::timeout(WAIT, rx.wait_for(|s| check(s))).await {
        Ok(Ok(status)) => status.clone(),
        _ => panic!("timed out waiting for {what}; status: {:?}", hb.status()),
    }
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {WAIT:?} waiting for {what}");
}

async fn worker_json(app: &TestApp, name: &str) -> Value {
    app.worker(name).await
}

async fn heartbeat_count(app: &TestApp, name: &str) -> i64 {
    worker_json(app, name).await["heartbeat_count"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn registers_beats_on_the_registrys_interval_and_deregisters_on_shutdown() {
    let app = TestApp::spawn_with(fast_beats).await;
    let client = Client::new(&app.base).unwrap();
    let registration = registration("w");
    let registered = client.register(&registration).await.unwrap();
    assert_eq!(registered.model_number, "DMN-TM-01");
    assert!(registered.serial_number.starts_with("DMN-TM-01-"));
    assert_eq!(
        registered.heartbeat_interval(),
        Some(Duration::from_millis(200))
    );
    assert_eq!(
        worker_json(&app, "w").await["metadata"],
        json!({"test": true})
    );

    let serial = registered.serial_number.clone();
    let hb = client
        .spawn_heartbeats(registration, registered, options())
        .unwrap();
    let status = wait_status(&hb, "6 heartbeats", |s| s.heartbeats >= 6).await;
    assert_eq!(status.state, State::Active);
    assert_eq!(status.interval, Duration::from_millis(200));
    assert_eq!(status.serial_number, serial);
    assert_eq!(status.registrations, 1);
    let w = worker_json(&app, "w").await;
    assert_eq!(w["status"], "active");
    assert!(w["heartbeat_count"].as_i64().unwrap() >= 6);

    // The gaps, by the database clock: never longer than asked less the jitter can shorten
    // them by (0.8 * 200 ms), spread rather than fixed, and about the interval.
    let gaps: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM received_at - lag(received_at) OVER (ORDER BY received_at))::float8
         FROM heartbeats WHERE worker_name = 'w' ORDER BY received_at OFFSET 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(gaps.len() >= 5, "{gaps:?}");
    assert!(
        gaps.iter().all(|g| *g >= 0.155),
        "a beat came early: {gaps:?}"
    );
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    assert!(mean < 0.5, "beats far slower than the interval: {gaps:?}");
    let spread = gaps.iter().cloned().fold(f64::MIN, f64::max)
        - gaps.iter().cloned().fold(f64::MAX, f64::min);
    assert!(spread > 0.001, "no jitter: {gaps:?}");

    let stopped = hb.shutdown().await.expect("deregistered");
    assert_eq!(
        stopped.state,
        State::Stopped(Stop::Shutdown { deregistered: true })
    );
    let w = worker_json(&app, "w").await;
    assert_eq!(w["status"], "deregistered");
    assert_eq!(w["serial_number"], serial.as_str());
}

/// A TCP forwarder standing where the registry's address would be, so that a registry can
/// crash and another take its place behind the same address.
struct Proxy {
    addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    pipes: Arc<Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(Some(target)));
        let pipes = Arc::new(Mutex::new(JoinSet::new()));
        let (t, p) = (target.clone(), pipes.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                // With no registry behind it, the connection is closed at once.
                let Some(to) = *t.lock().unwrap() else {
                    continue;
                };
                p.lock().unwrap().spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Proxy {
            addr,
            target,
            pipes,
            accept,
        }
    }

    /// Points at another registry (or none), cutting every open connection as a crash does.
    fn switch(&self, to: Option<SocketAddr>) {
        *self.target.lock().unwrap() = to;
        self.pipes.lock().unwrap().abort_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[tokio::test]
async fn a_worker_survives_a_registry_crash_and_takes_the_new_interval() {
    let app = TestApp::spawn_with(fast_beats).await;
    let database_url = app.database_url.clone();
    let proxy = Proxy::start(app.addr).await;
    let client = Client::builder(format!("http://{}", proxy.addr))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let changes = Arc::new(Mutex::new(Vec::<Status>::new()));
    let seen = changes.clone();
    let hb = start(
        &client,
        "survivor",
        options().on_change(move |s| seen.lock().unwrap().push(s.clone())),
    )
    .await;
    let serial = hb.status().serial_number;
    wait_status(&hb, "2 heartbeats", |s| s.heartbeats >= 2).await;

    // The registry crashes; the worker keeps trying, backing off.
    proxy.switch(None);
    app.kill().await;
    let failing = wait_status(
        &hb,
        "failures",
        |s| matches!(s.state, State::Retrying { failures, .. } if failures >= 2),
    )
    .await;
    let beats_before = failing.heartbeats;

    // Another registry on the same database, now asking for 300 ms.
    let app = TestApp::spawn_on(&database_url, |s| s.liveness.heartbeat_interval_secs = 0.3).await;
    proxy.switch(Some(app.addr));
    let back = wait_status(&hb, "heartbeats again", |s| {
        s.state == State::Active && s.heartbeats >= beats_before + 2
    })
    .await;
    assert_eq!(back.serial_number, serial, "kept its registration");
    assert_eq!(back.registrations, 1);
    wait_status(&hb, "the new interval", |s| {
        s.interval == Duration::from_millis(300)
    })
    .await;
    let w = worker_json(&app, "survivor").await;
    assert_eq!(w["serial_number"], serial.as_str());
    assert_eq!(w["status"], "active");

    // Every change was reported, in order: failing, then active again, then the interval.
    let changes = changes.lock().unwrap().clone();
    let first_retry = changes
        .iter()
        .position(|s| matches!(s.state, State::Retrying { .. }))
        .expect("a retry reported");
    assert!(
        changes[first_retry..]
            .iter()
            .any(|s| s.state == State::Active && s.interval == Duration::from_millis(300)),
        "{changes:?}"
    );
    hb.shutdown().await.unwrap();
    assert_eq!(
        worker_json(&app, "survivor").await["status"],
        "deregistered"
    );
}

/// The registry loses the worker (a restore from an older backup, a cleanup: 404) or its
/// name is removed while the process still runs (someone deregistered it: 410). The process
/// is alive, so it registers again by itself, as a new deployment, and keeps beating.
#[tokio::test]
async fn a_lost_or_removed_worker_registers_again_by_itself() {
    let app = TestApp::spawn_with(fast_beats).await;
    let client = Client::new(&app.base).unwrap();
    for (name, lose, history) in [
        (
            "lost",
            "DELETE FROM workers WHERE worker_name = 'lost'",
            // The registry has no record of it any more: a first registration again.
            &[
                "registered",
                "first_heartbeat",
                "registered",
                "first_heartbeat",
            ][..],
        ),
        (
            "gone",
            "",
            &[
                "registered",
                "first_heartbeat",
                "deregistered",
                "re_registered",
                "first_heartbeat",
            ][..],
        ),
    ] {
        let hb = start(&client, name, options()).await;
        let first = hb.status().serial_number;
        wait_status(&hb, "a heartbeat", |s| s.heartbeats >= 1).await;
        let mut changes = hb.subscribe();
        if lose.is_empty() {
            assert_eq!(
                app.delete(&format!("/api/workers/{name}")).await.status(),
                200
            );
        } else {
            let deleted = sqlx::query(sqlx::AssertSqlSafe(lose))
                .execute(&app.pool)
                .await
                .unwrap();
            assert_eq!(deleted.rows_affected(), 1);
        }

        let again = tokio::time::timeout(WAIT, changes.wait_for(|s| s.registrations == 2))
            .await
            .expect("registered again")
            .unwrap()
            .clone();
        assert_ne!(again.serial_number, first, "{name}");
        assert_eq!(again.model_number, "DMN-TM-01");
        wait_status(&hb, "active again", |s| s.state == State::Active).await;
        let w = worker_json(&app, name).await;
        assert_eq!(w["serial_number"], again.serial_number.as_str());
        assert_eq!(w["status"], "active");
        let deployments = json(
            app.get(&format!("/api/workers/{name}/deployments")).await,
            200,
        )
        .await;
        assert_eq!(deployments["deployments"].as_array().unwrap().len(), 2);
        let kinds: Vec<String> =
            sqlx::query_scalar("SELECT kind FROM worker_events WHERE worker_name = $1 ORDER BY id")
                .bind(name)
                .fetch_all(&app.pool)
                .await
                .unwrap();
        assert_eq!(kinds, history, "{name}");

        hb.shutdown().await.unwrap();
        assert_eq!(worker_json(&app, name).await["status"], "deregistered");
    }
}

#[tokio::test]
async fn a_newer_deployment_stops_the_old_process() {
    let app = TestApp::spawn_with(fast_beats).await;
    let client = Client::new(&app.base).unwrap();
    let hb = start(&client, "twin", options()).await;
    wait_status(&hb, "a heartbeat", |s| s.heartbeats >= 1).await;

    // The same name is deployed again elsewhere.
    let newer = app.register("twin", "truemark").await["serial_number"]
        .as_str()
        .unwrap()
        .to_string();
    let stopped = tokio::time::timeout(WAIT, hb.stopped())
        .await
        .expect("stops");
    assert_eq!(
        stopped.state,
        State::Stopped(Stop::Superseded {
            current_serial_number: newer.clone()
        })
    );
    // Shutting down now leaves the newer deployment alone.
    hb.shutdown().await.unwrap();
    let w = worker_json(&app, "twin").await;
    assert_eq!(w["serial_number"], newer.as_str());
    assert_eq!(w["status"], "registered");
}

/// An old process whose successor has come and gone hears that it was replaced (409), not
/// that the name is free: it stops rather than take the name back.
#[tokio::test]
async fn an_old_process_stops_even_after_its_successor_deregistered() {
    let app = TestApp::spawn_with(fast_beats).await;
    let client = Client::new(&app.base).unwrap();
    // Whether its next beat lands before or after the successor leaves, it hears 409.
    let hb = start(&client, "phoenix", options()).await;
    wait_status(&hb, "a heartbeat", |s| s.heartbeats >= 1).await;
    let old = hb.status().serial_number;
    let newer = app.register("phoenix", "truemark").await["serial_number"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .delete(&format!("/api/workers/phoenix?serial_number={newer}"))
        .await;
    assert_eq!(r.status(), 200);
    let stopped = tokio::time::timeout(WAIT, hb.stopped())
        .await
        .expect("stops");
    assert_eq!(
        stopped.state,
        State::Stopped(Stop::Superseded {
            current_serial_number: newer.clone()
        })
    );
    let w = worker_json(&app, "phoenix").await;
    assert_eq!(w["status"], "deregistered");
    assert_eq!(w["serial_number"], newer.as_str());
    assert_ne!(w["serial_number"], old.as_str());
}

#[tokio::test]
async fn a_restart_command_reaches_the_worker_exactly_once() {
    let app = TestApp::spawn_with(|s| s.liveness.heartbeat_interval_secs = 0.1).await;
    let client = Client::new(&app.base).unwrap();
    let mut hb = start(&client, "cmd", options()).await;
    wait_status(&hb, "a heartbeat", |s| s.heartbeats >= 1).await;

    let queued = json(
        app.post(
            "/api/workers/cmd/commands",
            &json!({ "command": "restart", "reason": "deploy config" }),
        )
        .await,
        202,
    )
    .await;
    let id = queued["id"].as_i64().unwrap();
    let command = tokio::time::timeout(WAIT, hb.next_command())
        .await
        .expect("a command")
        .expect("the task runs");
    assert_eq!(command.id, id);
    assert_eq!(command.kind(), CommandKind::Restart);
    assert_eq!(command.reason, "deploy config");
    assert_eq!(command.source, "operator");

    wait_for("the acknowledgement", async || {
        let body = json(app.get("/api/workers/cmd/commands").await, 200).await;
        body["commands"][0]["status"] == "acknowledged"
    })
    .await;
    // Later heartbeats bring nothing more.
    let after = heartbeat_count(&app, "cmd").await;
    wait_for("more heartbeats", async || {
        heartbeat_count(&app, "cmd").await >= after + 5
    })
    .await;
    assert_eq!(hb.try_next_command(), None);

    // A second request is a second restart.
    let second = json(
        app.post(
            "/api/workers/cmd/commands",
            &json!({ "command": "restart" }),
        )
        .await,
        202,
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let command = tokio::time::timeout(WAIT, hb.next_command())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(command.id, second);
    hb.shutdown().await.unwrap();
}

/// A command the worker took just before it shut down is on record as acknowledged, not as
/// cancelled with the deployment: the acknowledgement goes before the deregistration.
#[tokio::test]
async fn a_command_taken_just_before_shutdown_is_acknowledged() {
    let app = TestApp::spawn_with(|s| s.liveness.heartbeat_interval_secs = 1.5).await;
    let client = Client::new(&app.base).unwrap();
    let mut hb = start(&client, "brief", options()).await;
    let queued = json(
        app.post(
            "/api/workers/brief/commands",
            &json!({ "command": "restart" }),
        )
        .await,
        202,
    )
    .await;
    let command = tokio::time::timeout(WAIT, hb.next_command())
        .await
        .expect("a command")
        .expect("the task runs");
    assert_eq!(command.id, queued["id"].as_i64().unwrap());
    // Stopped well before the next heartbeat would have carried the acknowledgement.
    hb.shutdown().await.unwrap();
    let body = json(app.get("/api/workers/brief/commands").await, 200).await;
    assert_eq!(body["commands"][0]["status"], "acknowledged", "{body}");
    assert_eq!(worker_json(&app, "brief").await["status"], "deregistered");
}

#[tokio::test]
async fn a_hung_worker_is_restarted_when_it_answers_again() {
    let app = TestApp::spawn_with(|s| {
        s.liveness.stale_after_secs = 0.4;
        s.liveness.offline_after_secs = 30.0;
        s.liveness.sweep_interval_secs = 0.05;
        s.liveness.heartbeat_interval_secs = 0.1;
        s.liveness.brake_min_workers = 1_000_000;
        s.remediation.restart_on_stale = true;
    })
    .await;
    let client = Client::new(&app.base).unwrap();
    let registration = registration("hung");
    let registered = client.register(&registration).await.unwrap();
    // Its loop hangs before the first heartbeat: it goes stale.
    wait_for("stale", async || {
        worker_json(&app, "hung").await["status"] == "stale"
    })
    .await;
    let mut hb = client
        .spawn_heartbeats(registration, registered, options())
        .unwrap();
    let command = tokio::time::timeout(WAIT, hb.next_command())
        .await
        .expect("a restart")
        .unwrap();
    assert_eq!(command.kind(), CommandKind::Restart);
    assert_eq!(command.source, "remediation");
    assert_eq!(worker_json(&app, "hung").await["status"], "active");
    hb.shutdown().await.unwrap();
}

/// What the fake registry saw and how it answers heartbeats.
#[derive(Default)]
struct Fake {
    authorization: Vec<Option<String>>,
    beats: Vec<Instant>,
    /// Answers of the next heartbeats (status, Retry-After, delay), then 200s.
    script: Vec<(u16, Option<&'static str>, Duration)>,
}

type Shared = Arc<Mutex<Fake>>;

fn record(fake: &Shared, headers: &HeaderMap) {
    let auth = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string());
    fake.lock().unwrap().authorization.push(auth);
}

async fn fake_register(
    AxumState(fake): AxumState<Shared>,
    headers: HeaderMap,
) -> impl IntoResponse {
    record(&fake, &headers);
    axum::Json(json!({
        "worker_name": "fake", "worker_type": "truemark", "model_number": "DMN-TM-01",
        "serial_number": "DMN-TM-01-00000000-00000", "status": "registered",
        "heartbeat_interval_secs": 0.05, "commands": [], "warnings": []
    }))
}

async fn fake_heartbeat(
    AxumState(fake): AxumState<Shared>,
    headers: HeaderMap,
) -> axum::response::Response {
    record(&fake, &headers);
    let next = {
        let mut f = fake.lock().unwrap();
        f.beats.push(Instant::now());
        (!f.script.is_empty()).then(|| f.script.remove(0))
    };
    match next {
        Some((status, retry_after, delay)) => {
            tokio::time::sleep(delay).await;
            let mut response = (
                StatusCode::from_u16(status).unwrap(),
                axum::Json(json!({ "error": "busy", "message": "try later" })),
            )
                .into_response();
            if let Some(secs) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", secs.parse().unwrap());
            }
            response
        }
        None => axum::Json(json!({
            "status": "updated", "worker": "fake", "heartbeat_interval_secs": 0.05, "commands": []
        }))
        .into_response(),
    }
}

async fn fake_deregister(
    AxumState(fake): AxumState<Shared>,
    headers: HeaderMap,
) -> impl IntoResponse {
    record(&fake, &headers);
    axum::Json(json!({ "worker_name": "fake", "status": "deregistered" }))
}

async fn fake_registry(script: Vec<(u16, Option<&'static str>, Duration)>) -> (String, Shared) {
    let fake: Shared = Arc::new(Mutex::new(Fake {
        script,
        ..Fake::default()
    }));
    let router = axum::Router::new()
        .route("/api/workers/register", post(fake_register))
        .route("/api/workers/heartbeat", post(fake_heartbeat))
        .route("/api/workers/{name}", delete(fake_deregister))
        .with_state(fake.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (format!("http://{addr}"), fake)
}

#[tokio::test]
async fn the_token_is_sent_with_every_request() {
    let (base, fake) = fake_registry(Vec::new()).await;
    let client = Client::builder(&base).token("s3cret").build().unwrap();
    let hb = start(&client, "fake", options()).await;
    wait_status(&hb, "2 heartbeats", |s| s.heartbeats >= 2).await;
    hb.shutdown().await.unwrap();
    let seen = fake.lock().unwrap().authorization.clone();
    assert!(
        seen.len() >= 4,
        "register, 2 heartbeats, deregister: {seen:?}"
    );
    assert!(
        seen.iter().all(|a| a.as_deref() == Some("Bearer s3cret")),
        "{seen:?}"
    );

    // Without a token, no header.
    let (base, fake) = fake_registry(Vec::new()).await;
    Client::new(&base)
        .unwrap()
        .register(&registration("fake"))
        .await
        .unwrap();
    assert_eq!(fake.lock().unwrap().authorization, [None]);

    // The registry itself ignores a token it does not need.
    let app = TestApp::spawn().await;
    let client = Client::builder(&app.base).token("s3cret").build().unwrap();
    client.register(&registration("w")).await.unwrap();
}

#[tokio::test]
async fn failures_back_off_honour_retry_after_and_recover() {
    let ms = Duration::from_millis;
    let (base, fake) = fake_registry(vec![
        (503, None, ms(0)),
        (500, None, ms(0)),
        (429, Some("1"), ms(0)),
        // Slower than the client's timeout.
        (200, None, ms(1500)),
    ])
    .await;
    let client = Client::builder(&base).timeout(ms(300)).build().unwrap();
    let failures = Arc::new(Mutex::new(Vec::<(u32, String)>::new()));
    let seen = failures.clone();
    let hb = start(
        &client,
        "fake",
        HeartbeatOptions::default()
            .backoff(ms(100), Duration::from_secs(2))
            .on_change(move |s| {
                if let State::Retrying {
                    failures, error, ..
                } = &s.state
                {
                    seen.lock().unwrap().push((*failures, error.clone()));
                }
            }),
    )
    .await;
    wait_status(&hb, "recovery", |s| s.heartbeats >= 2).await;
    let beats = fake.lock().unwrap().beats.clone();
    let gaps: Vec<Duration> = beats.windows(2).map(|w| w[1] - w[0]).collect();
    // Backoff after failure n is at least half of 100 ms * 2^(n-1); after the 429 the
    // registry's Retry-After (1 s) wins.
    assert!(gaps[0] >= ms(50), "{gaps:?}");
    assert!(gaps[1] >= ms(100), "{gaps:?}");
    assert!(gaps[2] >= ms(1000), "{gaps:?}");
    // The timed-out attempt was followed by a backoff of at least 400 ms (failure 4), after
    // the 300 ms timeout.
    assert!(gaps[3] >= ms(700), "{gaps:?}");
    let failures = failures.lock().unwrap().clone();
    let counts: Vec<u32> = failures.iter().map(|(n, _)| *n).collect();
    assert_eq!(counts, [1, 2, 3, 4], "{failures:?}");
    assert!(failures[0].1.contains("503"), "{failures:?}");
    assert!(failures[3].1.contains("did not answer"), "{failures:?}");
    assert_eq!(hb.status().state, State::Active);
    hb.shutdown().await.unwrap();
}

#[tokio::test]
async fn typed_errors_from_the_real_registry() {
    let app = TestApp::spawn().await;
    let client = Client::new(&app.base).unwrap();
    let e = client
        .register(&Registration::new("", "truemark", "http://x", "u"))
        .await
        .unwrap_err();
    match e {
        Error::Rejected {
            status: 422,
            field: Some(field),
            ..
        } => assert_eq!(field, "name"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        client
            .heartbeat("nobody", "DMN-TM-01-00000000-00000", &[])
            .await,
        Err(Error::WorkerNotFound { .. })
    ));
    let registered = client.register(&registration("w")).await.unwrap();
    assert!(matches!(
        client.heartbeat("w", "DMN-TM-01-00000000-00000", &[]).await,
        Err(Error::Superseded { current_serial_number, .. }) if current_serial_number == registered.serial_number
    ));
    client
        .deregister("w", &registered.serial_number)
        .await
        .unwrap();
    // Idempotent.
    client
        .deregister("w", &registered.serial_number)
        .await
        .unwrap();
    assert!(matches!(
        client.heartbeat("w", &registered.serial_number, &[]).await,
        Err(Error::Deregistered { .. })
    ));

    // Nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = Client::new(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .register(&registration("w"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains("onnection refused"), "{e}");
    assert!(e.is_transient());
}

/// A running example worker whose output the test reads line by line.
struct Process {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Process {
    fn spawn(mut command: tokio::process::Command) -> Process {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the example");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Process {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for an output line containing `text` and returns it.
    async fn expect_line(&mut self, text: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                _ => panic!(
                    "no line with {text:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the exit code, collecting the rest of the output.
    async fn exit_code(&mut self) -> i32 {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("exits")
            .unwrap();
        while let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_secs(2), self.lines.recv()).await
        {
            self.seen.push(line);
        }
        status.code().expect("exited, not killed")
    }

    fn output(&self) -> String {
        self.seen.join("\n")
    }
}

/// `target/<profile>/examples/josephine`, next to the `dals` binary's directory.
fn josephine_binary() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_dals"));
    let path = bin
        .parent()
        .expect("target directory")
        .join("examples")
        .join("josephine");
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples, `cargo test --test client` alone \
         does not; run `cargo build --examples` first",
        path.display()
    );
    path
}

fn serial_in(line: &str) -> String {
    line.rsplit(' ')
        .next()
        .expect("a serial number")
        .to_string()
}

#[tokio::test]
async fn the_josephine_example_registers_beats_restarts_and_deregisters_on_a_signal() {
    let app = TestApp::spawn_with(fast_beats).await;
    for (signal, user) in [("INT", "user_123"), ("TERM", "user_456")] {
        let mut command = tokio::process::Command::new(josephine_binary());
        command
            .env("TARGET_USER_ID", user)
            .env("WORKER_NAME", "Josephine")
            .env("CALI_X_ONE_API", &app.base)
            .env("WORKER_PORT", "8088")
            .env("RUST_LOG", "off");
        let mut josephine = Process::spawn(command);
        let name = format!("Josephine-{user}");

        let line = josephine.expect_line("✓ Registered: ").await;
        assert!(
            line.starts_with("✓ Registered: DMN-TM-01 - DMN-TM-01-"),
            "{line}"
        );
        let serial = serial_in(&line);
        josephine
            .expect_line("Work loop started (generation 1)")
            .await;
        wait_for("heartbeats", async || {
            heartbeat_count(&app, &name).await >= 2
        })
        .await;
        let w = worker_json(&app, &name).await;
        assert_eq!(w["serial_number"], serial.as_str());
        assert_eq!(w["api_url"], "http://localhost:8088");
        assert_eq!(w["user_id"], user);
        assert_eq!(w["status"], "active");

        json(
            app.post(
                &format!("/api/workers/{name}/commands"),
                &json!({ "command": "restart", "reason": "test" }),
            )
            .await,
            202,
        )
        .await;
        josephine
            .expect_line("↻ Restart requested by the registry")
            .await;
        josephine
            .expect_line("Work loop started (generation 2)")
            .await;

        josephine.signal(signal);
        assert_eq!(josephine.exit_code().await, 0, "{}", josephine.output());
        assert!(
            josephine
                .output()
                .contains(&format!("✓ Deregistered {name} ({serial})")),
            "{}",
            josephine.output()
        );
        assert_eq!(worker_json(&app, &name).await["status"], "deregistered");
    }
}

#[tokio::test]
async fn the_josephine_example_exits_when_a_newer_deployment_exists() {
    let app = TestApp::spawn_with(fast_beats).await;
    let mut command = tokio::process::Command::new(josephine_binary());
    command
        .env("TARGET_USER_ID", "user_789")
        .env("CALI_X_ONE_API", &app.base)
        .env("RUST_LOG", "off");
    let mut josephine = Process::spawn(command);
    josephine.expect_line("✓ Registered: ").await;
    let newer = app.register("Josephine-user_789", "truemark").await;
    assert_eq!(josephine.exit_code().await, 1, "{}", josephine.output());
    assert!(
        josephine.output().contains("A newer deployment"),
        "{}",
        josephine.output()
    );
    let w = worker_json(&app, "Josephine-user_789").await;
    assert_eq!(w["serial_number"], newer["serial_number"]);
    assert_eq!(w["status"], "registered");
}

fn python_worker(app: &TestApp, user: &str, args: &[&str]) -> tokio::process::Command {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python/worker.py");
    let mut command = tokio::process::Command::new("python3");
    command
        .arg(script)
        .args(args)
        .env("TARGET_USER_ID", user)
        .env("WORKER_NAME", "Josephine")
        .env("CALI_X_ONE_API", &app.base)
        .env("PYTHONUNBUFFERED", "1");
    command
}

#[tokio::test]
async fn the_python_worker_beats_with_its_serial_takes_commands_and_registers_again_when_lost() {
    let app = TestApp::spawn_with(fast_beats).await;
    let name = "Josephine-py_user";
    let mut worker = Process::spawn(python_worker(&app, "py_user", &["--max-seconds", "60"]));
    let line = worker.expect_line("✓ Registered: ").await;
    assert!(
        line.starts_with("✓ Registered: DMN-TM-01 - DMN-TM-01-"),
        "{line}"
    );
    let serial = serial_in(&line);
    wait_for("heartbeats", async || {
        heartbeat_count(&app, name).await >= 2
    })
    .await;

    // Commands come only with serial heartbeats: this one proves the worker sends its serial.
    json(
        app.post(
            &format!("/api/workers/{name}/commands"),
            &json!({ "command": "restart", "reason": "python test" }),
        )
        .await,
        202,
    )
    .await;
    worker
        .expect_line("↻ Restart requested by the registry")
        .await;
    worker.expect_line("Work loop started (generation 2)").await;
    wait_for("the acknowledgement", async || {
        let body = json(app.get(&format!("/api/workers/{name}/commands")).await, 200).await;
        body["commands"][0]["status"] == "acknowledged"
    })
    .await;

    // Lost: it registers again by itself.
    sqlx::query("DELETE FROM workers WHERE worker_name = $1")
        .bind(name)
        .execute(&app.pool)
        .await
        .unwrap();
    let line = worker.expect_line("✓ Registered again: ").await;
    let again = line
        .split(" - ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap()
        .to_string();
    assert_ne!(again, serial);
    wait_for("active again", async || {
        let w = worker_json(&app, name).await;
        w["status"] == "active" && w["serial_number"] == again.as_str()
    })
    .await;

    worker.signal("TERM");
    assert_eq!(worker.exit_code().await, 0, "{}", worker.output());
    assert!(
        worker
            .output()
            .contains(&format!("✓ Deregistered {name} ({again})"))
    );
    assert_eq!(worker_json(&app, name).await["status"], "deregistered");
}

#[tokio::test]
async fn the_python_worker_stops_for_a_newer_deployment_and_honours_its_bounds() {
    let app = TestApp::spawn_with(fast_beats).await;

    // --once: register, one heartbeat, deregister.
    let mut once = Process::spawn(python_worker(&app, "once", &["--once"]));
    assert_eq!(once.exit_code().await, 0, "{}", once.output());
    let w = worker_json(&app, "Josephine-once").await;
    assert_eq!(w["heartbeat_count"], 1);
    assert_eq!(w["status"], "deregistered");

    // --max-seconds: beats, then deregisters by itself.
    let mut bounded = Process::spawn(python_worker(&app, "bounded", &["--max-seconds", "1.5"]));
    assert_eq!(bounded.exit_code().await, 0, "{}", bounded.output());
    let w = worker_json(&app, "Josephine-bounded").await;
    assert!(w["heartbeat_count"].as_i64().unwrap() >= 3, "{w}");
    assert_eq!(w["status"], "deregistered");

    // A newer deployment of its name: 409, and it exits without touching the newer one.
    let mut old = Process::spawn(python_worker(&app, "twin", &["--max-seconds", "60"]));
    old.expect_line("✓ Registered: ").await;
    let newer = app.register("Josephine-twin", "truemark").await;
    assert_eq!(old.exit_code().await, 1, "{}", old.output());
    assert!(
        old.output().contains("A newer deployment"),
        "{}",
        old.output()
    );
    let w = worker_json(&app, "Josephine-twin").await;
    assert_eq!(w["serial_number"], newer["serial_number"]);
    assert_eq!(w["status"], "registered");

    // Pointed at a registry that is not there: it backs off instead of spinning.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut early = Process::spawn({
        let mut c = python_worker(&app, "early", &["--max-seconds", "2"]);
        c.env("CALI_X_ONE_API", format!("http://127.0.0.1:{port}"));
        c
    });
    early.expect_line("⚠ Registry unavailable").await;
    assert_eq!(early.exit_code().await, 0, "{}", early.output());
    let retries = early
        .output()
        .lines()
        .filter(|l| l.contains("Registry unavailable"))
        .count();
    // 1 s doubling (halved at worst) within 2 s: a few attempts, not a busy loop.
    assert!((1..=4).contains(&retries), "{}", early.output());
}
