//! Liveness: statuses that tell the truth, outages that are not deaths, and the history.
//! Thresholds are sub-second so the lifecycle plays out in a test.

mod common;

use std::time::{Duration, Instant};

use common::{TestApp, encode, json};
use dals_registry::settings::Settings;
use serde_json::{Value, json};

const STALE: f64 = 0.4;
const OFFLINE: f64 = 1.0;
const SWEEP: f64 = 0.05;

fn fast(s: &mut Settings) {
    s.liveness.stale_after_secs = STALE;
    s.liveness.offline_after_secs = OFFLINE;
    s.liveness.sweep_interval_secs = SWEEP;
    // The brake has tests of its own.
    s.liveness.brake_min_workers = 1_000_000;
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

async fn status_of(app: &TestApp, name: &str) -> String {
    app.worker(name).await["status"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn kinds(app: &TestApp, name: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT kind FROM worker_events WHERE worker_name = $1 ORDER BY id")
        .bind(name)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_lapsed_worker_goes_stale_within_the_bound_then_offline() {
    let app = TestApp::spawn_with(fast).await;
    app.register("w", "truemark").await;
    assert_eq!(app.heartbeat("w").await, 200);
    wait_for("stale", Duration::from_secs(5), async || {
        status_of(&app, "w").await == "stale"
    })
    .await;
    wait_for("offline", Duration::from_secs(5), async || {
        status_of(&app, "w").await == "offline"
    })
    .await;

    // The database's own times: never early, and within stale_after + sweep_interval (plus
    // scheduling slack on a busy machine).
    let (lag_stale, lag_offline): (f64, f64) = sqlx::query_as(
        "SELECT extract(epoch FROM (SELECT at FROM worker_events WHERE kind = 'stale') - w.last_heartbeat_at)::float8,
                extract(epoch FROM (SELECT at FROM worker_events WHERE kind = 'offline') - w.last_heartbeat_at)::float8
         FROM workers w WHERE worker_name = 'w'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        lag_stale >= STALE,
        "stale after {lag_stale} s, before stale_after"
    );
    assert!(
        lag_stale <= STALE + SWEEP + 0.25,
        "stale only after {lag_stale} s"
    );
    assert!(lag_offline >= OFFLINE, "offline after {lag_offline} s");
    assert!(
        lag_offline <= OFFLINE + SWEEP + 0.25,
        "offline only after {lag_offline} s"
    );
    assert_eq!(
        kinds(&app, "w").await,
        ["registered", "first_heartbeat", "stale", "offline"]
    );

    let w = app.worker("w").await;
    assert_eq!(w["heartbeat_count"], 1);
    assert!(w["status_changed_at"].as_str().unwrap() > w["last_heartbeat_iso"].as_str().unwrap());
}

/// A sweep interval longer than stale_after is coarse but works: the usual gap between two
/// sweeps is not an outage, so no grace period opens and the bound still holds.
#[tokio::test]
async fn a_sweep_interval_longer_than_stale_after_still_marks_workers() {
    let app = TestApp::spawn_with(|s| {
        fast(s);
        s.liveness.stale_after_secs = 0.3;
        s.liveness.sweep_interval_secs = 0.6;
        s.liveness.heartbeat_interval_secs = 0.1;
    })
    .await;
    app.register("w", "truemark").await;
    assert_eq!(app.heartbeat("w").await, 200);
    let beat = Instant::now();
    wait_for("stale", Duration::from_secs(5), async || {
        status_of(&app, "w").await == "stale"
    })
    .await;
    assert!(beat.elapsed() < Duration::from_secs_f64(0.3 + 0.6 + 1.0));
    let grace: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT grace_until FROM liveness_state")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        grace, None,
        "a normal gap between sweeps opened a grace period"
    );
}

#[tokio::test]
async fn a_worker_that_never_beats_goes_stale_from_its_registration() {
    let app = TestApp::spawn_with(fast).await;
    app.register("silent", "regent").await;
    wait_for("stale", Duration::from_secs(5), async || {
        status_of(&app, "silent").await == "stale"
    })
    .await;
    let ev = json(app.get("/api/workers/silent/events").await, 200).await;
    let newest = &ev["events"][0];
    assert_eq!(newest["kind"], "stale");
    assert_eq!(newest["from_status"], "registered");
    assert_eq!(newest["to_status"], "stale");
}

#[tokio::test]
async fn a_heartbeat_recovers_a_stale_or_offline_worker() {
    let app = TestApp::spawn_with(fast).await;
    app.register("w", "truemark").await;
    app.heartbeat("w").await;
    wait_for("offline", Duration::from_secs(5), async || {
        status_of(&app, "w").await == "offline"
    })
    .await;
    assert_eq!(app.heartbeat("w").await, 200);
    assert_eq!(status_of(&app, "w").await, "active");
    let ev = json(app.get("/api/workers/w/events?limit=1").await, 200).await;
    assert_eq!(ev["events"][0]["kind"], "recovered");
    assert_eq!(ev["events"][0]["from_status"], "offline");
    assert!(ev["next_before"].is_i64());
    // Paging to the end: the last page, even exactly full, says there is no next one.
    let all = json(app.get("/api/workers/w/events").await, 200).await;
    let count = all["events"].as_array().unwrap().len();
    assert_eq!(all["next_before"], Value::Null);
    let exact = json(
        app.get(&format!("/api/workers/w/events?limit={count}"))
            .await,
        200,
    )
    .await;
    assert_eq!(exact["events"].as_array().unwrap().len(), count);
    assert_eq!(exact["next_before"], Value::Null, "{exact}");
    let (mut before, mut seen) = (None::<i64>, Vec::new());
    loop {
        let path = match before {
            Some(b) => format!("/api/workers/w/events?limit=2&before={b}"),
            None => "/api/workers/w/events?limit=2".to_string(),
        };
        let page = json(app.get(&path).await, 200).await;
        seen.extend(
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].clone()),
        );
        match page["next_before"].as_i64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    let ids: Vec<Value> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(seen, ids);
}

#[tokio::test]
async fn a_live_worker_is_never_reported_dead() {
    // Heartbeats every ~0.1 s plus a round of 30 requests must stay well inside stale_after
    // even on a loaded machine; the sweeper runs often.
    let app = TestApp::spawn_with(|s| {
        fast(s);
        s.liveness.stale_after_secs = 2.0;
        s.liveness.offline_after_secs = 10.0;
        s.liveness.sweep_interval_secs = 0.01;
    })
    .await;
    let names: Vec<String> = (0..30).map(|i| format!("live-{i}")).collect();
    for n in &names {
        app.register(n, "truemark").await;
    }
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        for n in &names {
            assert_eq!(app.heartbeat(n).await, 200);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stale: i64 =
        sqlx::query_scalar("SELECT count(*) FROM worker_events WHERE kind IN ('stale', 'offline')")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stale, 0, "a beating worker was marked stale");
}

#[tokio::test]
async fn a_heartbeat_racing_the_sweep_wins() {
    let app = TestApp::spawn_with(fast).await;
    app.register("racer", "truemark").await;
    app.register("bystander", "truemark").await;
    app.heartbeat("racer").await;
    app.heartbeat("bystander").await;

    // Hold the racer's row as an in-flight heartbeat would, past its stale time.
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM workers WHERE worker_name = 'racer' FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();
    // The sweeper is not blocked by the held row: the bystander still goes stale.
    wait_for("bystander stale", Duration::from_secs(5), async || {
        status_of(&app, "bystander").await == "stale"
    })
    .await;
    // A real heartbeat queues behind the held row, then the row is let go: the heartbeat wins.
    let beat = common::in_background(
        app.client
            .post(app.url("/api/workers/heartbeat"))
            .json(&json!({"worker_name": "racer"})),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx.rollback().await.unwrap();
    assert_eq!(beat.await.unwrap().0, 200);
    assert_eq!(status_of(&app, "racer").await, "active");
    assert!(!kinds(&app, "racer").await.contains(&"stale".to_string()));
}

/// The other order: the sweep has the row (its batch marked it stale and has not committed)
/// when the heartbeat arrives. The heartbeat waits for the batch, then lands on the stale row:
/// the worker ends `active`, with both transitions on record.
#[tokio::test]
async fn a_heartbeat_waiting_on_a_sweep_batch_still_wins() {
    use dals_registry::db::{Lapse, sweep};
    // No sweeps of the registry's own after the first: the test plays the sweeper.
    let app = TestApp::spawn_with(|s| {
        fast(s);
        s.liveness.sweep_interval_secs = 3600.0;
    })
    .await;
    app.register("racer", "truemark").await;
    assert_eq!(app.heartbeat("racer").await, 200);
    tokio::time::sleep(Duration::from_secs_f64(STALE + 0.2)).await;

    let mut batch = app.pool.begin().await.unwrap();
    let moved = sweep::mark_batch(&mut batch, Lapse::Stale, STALE, 1000, "test sweep", false)
        .await
        .unwrap();
    assert_eq!(moved, 1);
    let beat = common::in_background(
        app.client
            .post(app.url("/api/workers/heartbeat"))
            .json(&json!({"worker_name": "racer"})),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !beat.is_finished(),
        "the heartbeat waits for the batch's row lock"
    );
    batch.commit().await.unwrap();
    assert_eq!(beat.await.unwrap().0, 200);
    assert_eq!(status_of(&app, "racer").await, "active");
    assert_eq!(
        kinds(&app, "racer").await,
        ["registered", "first_heartbeat", "stale", "recovered"]
    );
}

/// The sweeping replica's session asks the server to probe its connection soon after it goes
/// quiet, so a replica whose host vanishes without closing the socket frees the lock in
/// seconds, not after the operating system's two hours.
#[tokio::test]
async fn the_leader_session_is_dropped_soon_after_its_host_vanishes() {
    let url = common::create_database().await;
    let db = dals_registry::db::Db::from_pool(sqlx::PgPool::connect(&url).await.unwrap());
    let mut leader = db.try_lead(2).await.unwrap().expect("no other replica");
    let show = async |conn: &mut sqlx::PgConnection, name: &str| -> String {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {name}")))
            .fetch_one(conn)
            .await
            .unwrap()
    };
    // Over TCP (the tests connect to 127.0.0.1), the server applies them to this session.
    assert_eq!(show(&mut leader, "tcp_keepalives_idle").await, "2");
    assert_eq!(show(&mut leader, "tcp_keepalives_interval").await, "1");
    assert_eq!(show(&mut leader, "tcp_keepalives_count").await, "3");
    assert_eq!(show(&mut leader, "tcp_user_timeout").await, "5000");
    // Another session cannot lead meanwhile, and its connection keeps the server defaults.
    assert!(db.try_lead(2).await.unwrap().is_none());
    let mut other = db.pool().acquire().await.unwrap();
    assert_ne!(show(&mut other, "tcp_keepalives_idle").await, "2");
}

#[tokio::test]
async fn deregistration_is_final_until_the_worker_registers_again() {
    let app = TestApp::spawn_with(fast).await;
    let w = app.register("leaver", "bubble").await;
    app.heartbeat("leaver").await;
    let gone = json(app.delete("/api/workers/leaver").await, 200).await;
    assert_eq!(gone["status"], "deregistered");
    // Idempotent.
    assert_eq!(
        json(app.delete("/api/workers/leaver").await, 200).await["status"],
        "deregistered"
    );

    // A late heartbeat changes nothing and creates nothing.
    let r = app
        .post("/api/workers/heartbeat", &json!({"worker_name": "leaver"}))
        .await;
    assert_eq!(json(r, 410).await["error"], "worker_deregistered");
    let w2 = app.worker("leaver").await;
    assert_eq!(w2["status"], "deregistered");
    assert_eq!(w2["heartbeat_count"], 1);
    let (workers, open): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM workers),
                (SELECT count(*) FROM deployments WHERE ended_at IS NULL)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((workers, open), (1, 0));

    // Not listed, unless asked for; not counted as registered; the sweeper leaves it alone.
    let listed = json(app.get("/api/workers/list").await, 200).await;
    assert_eq!(listed, json!([]));
    let listed = json(app.get("/api/workers/list?status=deregistered").await, 200).await;
    assert_eq!(listed[0]["worker_name"], "leaver");
    let s = json(app.get("/api/workers/status").await, 200).await;
    assert_eq!(s["total_workers"], 0);
    assert_eq!(s["counts"]["deregistered"], 1);
    tokio::time::sleep(Duration::from_secs_f64(OFFLINE + 0.3)).await;
    assert_eq!(status_of(&app, "leaver").await, "deregistered");

    let deps = json(app.get("/api/workers/leaver/deployments").await, 200).await;
    assert_eq!(deps["deployments"][0]["serial_number"], w["serial_number"]);
    assert_eq!(deps["deployments"][0]["end_reason"], "deregistered");

    // An old process's serial cannot deregister a newer deployment.
    let again = app.register("leaver", "bubble").await;
    assert_eq!(again["status"], "registered");
    let old = w["serial_number"].as_str().unwrap();
    let r = app
        .delete(&format!(
            "/api/workers/leaver?serial_number={}",
            encode(old)
        ))
        .await;
    assert_eq!(json(r, 409).await["error"], "serial_mismatch");
    assert_eq!(status_of(&app, "leaver").await, "registered");
    assert_eq!(
        kinds(&app, "leaver").await,
        [
            "registered",
            "first_heartbeat",
            "deregistered",
            "re_registered"
        ]
    );
    assert_eq!(app.delete("/api/workers/nobody").await.status(), 404);
}

#[tokio::test]
async fn one_replica_sweeps_and_another_takes_over_when_it_dies() {
    let first = TestApp::spawn_with(fast).await;
    let second = TestApp::spawn_on(&first.database_url, fast).await;
    let instance = |app: &TestApp| {
        let app_url = app.url("/healthz");
        let client = app.client.clone();
        async move {
            let h: Value = client
                .get(app_url)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            h["instance"].as_str().unwrap().to_string()
        }
    };
    let (a, b) = (instance(&first).await, instance(&second).await);
    let sweeper = async |app: &TestApp| -> Option<String> {
        sqlx::query_scalar("SELECT sweeper_instance FROM liveness_state")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    wait_for("a sweeper", Duration::from_secs(5), async || {
        sweeper(&second).await.is_some()
    })
    .await;
    // Exactly one holds the lock, and it is the one that sweeps; the other never does.
    let locks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND a.datname = current_database()",
    )
    .fetch_one(&first.pool)
    .await
    .unwrap();
    assert_eq!(locks, 1);
    let leader = sweeper(&first).await.unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(sweeper(&first).await.unwrap(), leader, "two replicas swept");
    }

    let (dead, survivor, survivor_id) = if leader == a {
        (first, second, b)
    } else {
        (second, first, a)
    };
    survivor.register("w", "truemark").await;
    dead.kill().await;
    wait_for(
        "the other replica to take over",
        Duration::from_secs(5),
        async || sweeper(&survivor).await.as_deref() == Some(survivor_id.as_str()),
    )
    .await;
    wait_for("stale", Duration::from_secs(5), async || {
        status_of(&survivor, "w").await == "stale"
    })
    .await;
}

#[tokio::test]
async fn workers_get_a_grace_period_after_a_registry_outage() {
    let app = TestApp::spawn_with(fast).await;
    app.register("patient", "truemark").await;
    app.register("quiet", "truemark").await;
    app.heartbeat("patient").await;
    app.heartbeat("quiet").await;
    let db = app.database_url.clone();
    app.stop().await;

    // The registry is away for longer than stale_after: nobody could heartbeat.
    tokio::time::sleep(Duration::from_secs_f64(STALE * 2.5)).await;
    let back = TestApp::spawn_on(&db, fast).await;
    wait_for("grace to be shown", Duration::from_secs(5), async || {
        json(back.get("/api/workers/status").await, 200).await["grace_until"].is_string()
    })
    .await;
    assert_eq!(status_of(&back, "patient").await, "active");
    assert_eq!(status_of(&back, "quiet").await, "active");
    // One worker heartbeats in the grace period; the other stays quiet.
    assert_eq!(back.heartbeat("patient").await, 200);
    tokio::time::sleep(Duration::from_secs_f64(STALE * 0.5)).await;
    assert_eq!(
        status_of(&back, "quiet").await,
        "active",
        "marked stale during grace"
    );
    wait_for(
        "the quiet worker to go stale after grace",
        Duration::from_secs(5),
        async || status_of(&back, "quiet").await == "stale",
    )
    .await;
    assert!(json(back.get("/api/workers/status").await, 200).await["grace_until"].is_null());
}

/// The registry runs but cannot reach its database for longer than stale_after (the
/// database refuses connections, and those open are cut): requests get 503s meanwhile, and
/// once it is back the workers get the same grace as after a registry outage.
#[tokio::test]
async fn workers_get_a_grace_period_after_the_database_was_unreachable() {
    let app = TestApp::spawn_with(fast).await;
    app.register("patient", "truemark").await;
    app.register("quiet", "truemark").await;
    app.heartbeat("patient").await;
    app.heartbeat("quiet").await;
    let database = url::Url::parse(&app.database_url).unwrap().path()[1..].to_string();
    let admin = sqlx::PgPool::connect(&common::server_url()).await.unwrap();
    let set_allowed = async |allowed: bool| {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            r#"ALTER DATABASE "{database}" ALLOW_CONNECTIONS {allowed}"#
        )))
        .execute(&admin)
        .await
        .unwrap();
    };

    set_allowed(false).await;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&database)
    .execute(&admin)
    .await
    .unwrap();
    let r = app
        .post("/api/workers/heartbeat", &json!({"worker_name": "patient"}))
        .await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    // Away for longer than stale_after: nobody could heartbeat.
    tokio::time::sleep(Duration::from_secs_f64(STALE * 2.5)).await;
    set_allowed(true).await;
    let back = Instant::now();

    wait_for("grace to be shown", Duration::from_secs(10), async || {
        let r = app.get("/api/workers/status").await;
        r.status() == 200 && r.json::<Value>().await.unwrap()["grace_until"].is_string()
    })
    .await;
    assert_eq!(status_of(&app, "patient").await, "active");
    assert_eq!(status_of(&app, "quiet").await, "active");
    assert_eq!(app.heartbeat("patient").await, 200);
    wait_for(
        "the quiet worker to go stale after grace",
        Duration::from_secs(10),
        async || status_of(&app, "quiet").await == "stale",
    )
    .await;
    assert!(
        back.elapsed() >= Duration::from_secs_f64(STALE),
        "stale before the grace period ended"
    );
    let reasons: Vec<String> = sqlx::query_scalar(
        "SELECT kind FROM worker_events WHERE worker_name = 'quiet' ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(reasons, ["registered", "first_heartbeat", "stale"]);
}

fn braked(s: &mut Settings) {
    fast(s);
    s.liveness.stale_after_secs = 1.0;
    s.liveness.offline_after_secs = 30.0;
    s.liveness.brake_fraction = 0.5;
    s.liveness.brake_min_workers = 10;
}

/// Registers `n` workers at once, and has them all beat at once.
async fn fleet(app: &TestApp, n: usize) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|i| format!("fleet-{i:02}")).collect();
    futures::future::join_all(names.iter().map(|name| app.register(name, "truemark"))).await;
    beat_all(app, &names).await;
    names
}

async fn beat_all(app: &TestApp, names: &[String]) {
    let codes = futures::future::join_all(names.iter().map(|name| app.heartbeat(name))).await;
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
}

async fn brake(app: &TestApp) -> Value {
    json(app.get("/api/workers/status").await, 200).await["brake"].clone()
}

#[tokio::test]
async fn the_brake_holds_a_mass_lapse_and_lets_go_when_heartbeats_resume() {
    let app = TestApp::spawn_with(braked).await;
    let names = fleet(&app, 20).await;
    // Five keep beating; fifteen go quiet at once (a network split, say).
    let keep = &names[..5];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        beat_all(&app, keep).await;
        let s = json(app.get("/api/workers/status").await, 200).await;
        // Some may have gone stale before the lapse crossed the threshold; the rest are held.
        if s["brake"]["engaged"] == true
            && s["brake"]["held_transitions"].as_i64().unwrap()
                + s["counts"]["stale"].as_i64().unwrap()
                == 15
        {
            assert!(s["brake"]["held_since"].is_string());
            break;
        }
        assert!(Instant::now() < deadline, "the brake never engaged: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Held: it stays held, and no more go stale, while the lapse persists.
    let stale_then =
        json(app.get("/api/workers/status").await, 200).await["counts"]["stale"].clone();
    for _ in 0..5 {
        beat_all(&app, keep).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = json(app.get("/api/workers/status").await, 200).await;
    assert_eq!(s["counts"]["stale"], stale_then);
    assert_eq!(s["brake"]["engaged"], true);
    assert!(s["counts"]["active"].as_i64().unwrap() >= 5);

    // Heartbeats resume: the brake lets go by itself.
    beat_all(&app, &names).await;
    wait_for("release", Duration::from_secs(5), async || {
        brake(&app).await["engaged"] == false
    })
    .await;
    let fleet_events: Vec<(String, String)> = sqlx::query_as(
        "SELECT kind, reason FROM worker_events WHERE worker_name IS NULL ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(fleet_events.len(), 2, "{fleet_events:?}");
    assert_eq!(fleet_events[0].0, "brake_held");
    assert_eq!(
        fleet_events[1],
        (
            "brake_released".to_string(),
            "heartbeats resumed".to_string()
        )
    );
    assert_eq!(
        json(app.get("/api/workers/status").await, 200).await["counts"]["stale"],
        0
    );
}

#[tokio::test]
async fn an_operator_can_release_the_brake() {
    let app = TestApp::spawn_with(braked).await;
    fleet(&app, 12).await;
    let r = app.post("/api/workers/liveness/release", &json!({})).await;
    assert_eq!(json(r, 409).await["error"], "brake_not_engaged");

    wait_for("the brake", Duration::from_secs(10), async || {
        brake(&app).await["engaged"] == true
    })
    .await;
    let r = app.post("/api/workers/liveness/release", &json!({})).await;
    let body = json(r, 200).await;
    assert_eq!(body["released"], true);
    assert_eq!(body["brake"]["engaged"], false);
    wait_for("all stale", Duration::from_secs(5), async || {
        json(app.get("/api/workers/status").await, 200).await["counts"]["stale"] == 12
    })
    .await;
    assert_eq!(brake(&app).await["engaged"], false);
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT reason FROM worker_events WHERE kind = 'brake_released'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(reasons, ["released by an operator"]);
}

#[tokio::test]
async fn status_counts_match_the_list_for_every_status() {
    let app = TestApp::spawn_with(fast).await;
    for i in 0..4 {
        app.register(&format!("quiet-{i}"), "goat").await;
    }
    wait_for("stale", Duration::from_secs(5), async || {
        status_of(&app, "quiet-0").await == "stale"
    })
    .await;
    for i in 0..3 {
        app.register(&format!("active-{i}"), "skg").await;
        app.heartbeat(&format!("active-{i}")).await;
    }
    app.register("fresh", "regent").await;
    app.register("gone", "regent").await;
    app.delete("/api/workers/gone").await;

    let s = json(app.get("/api/workers/status").await, 200).await;
    let mut live = 0;
    for status in ["registered", "active", "stale", "offline", "deregistered"] {
        let listed = json(
            app.get(&format!("/api/workers/list?status={status}")).await,
            200,
        )
        .await;
        let n = listed.as_array().unwrap().len() as i64;
        assert_eq!(s["counts"][status], n, "{status}: {s}");
        if status != "deregistered" {
            live += n;
        }
    }
    assert_eq!(s["total_workers"], live);
    assert_eq!(
        s["total_workers"],
        json(app.get("/api/workers/list").await, 200)
            .await
            .as_array()
            .unwrap()
            .len()
    );
    assert_eq!(s["active_workers"], s["counts"]["active"]);
    assert_eq!(s["by_family"]["SK"]["active"], 3);
}

#[tokio::test]
async fn old_heartbeat_days_are_dropped_whole_and_upcoming_days_exist() {
    let app = TestApp::spawn_with(fast).await;
    let serial = app.register("w", "truemark").await["serial_number"]
        .as_str()
        .unwrap()
        .to_string();
    app.heartbeat("w").await;
    sqlx::query(
        "CREATE TABLE heartbeats_p20200101 PARTITION OF heartbeats
         FOR VALUES FROM ('2020-01-01 00:00+00') TO ('2020-01-02 00:00+00')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO heartbeats (worker_name, serial_number, received_at)
         VALUES ('w', $1, '2020-01-01 12:00+00')",
    )
    .bind(&serial)
    .execute(&app.pool)
    .await
    .unwrap();
    let db = app.database_url.clone();
    app.stop().await;
    // A replica that starts sweeping maintains the partitions.
    let app = TestApp::spawn_on(&db, fast).await;
    wait_for(
        "the old day to be dropped",
        Duration::from_secs(5),
        async || {
            sqlx::query_scalar::<_, Option<String>>(
                "SELECT to_regclass('heartbeats_p20200101')::text",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap()
            .is_none()
        },
    )
    .await;
    let upcoming: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'heartbeats'::regclass
           AND c.relname = 'heartbeats_p' || to_char((now() AT TIME ZONE 'UTC')::date + 3, 'YYYYMMDD')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(upcoming, 1);
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM heartbeats WHERE worker_name = 'w'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(kept, 1, "today's heartbeat is kept");
}

#[tokio::test]
async fn reports_views_answer() {
    let app = TestApp::spawn_with(fast).await;
    app.register("a", "truemark").await;
    app.heartbeat("a").await;
    app.register("b", "regent").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fleet: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT family, status, workers FROM fleet_by_family_status ORDER BY family",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(fleet.len(), 2);
    let per_day: i64 =
        sqlx::query_scalar("SELECT sum(deployments)::bigint FROM deployments_per_day")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(per_day, 2);
    let (active, observed): (f64, f64) = sqlx::query_as(
        "SELECT active_seconds::float8, observed_seconds::float8 FROM worker_uptime_daily
         WHERE worker_name = 'a'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(active > 0.2 && active <= observed, "{active} of {observed}");
    let b_active: Option<f64> = sqlx::query_scalar(
        "SELECT active_seconds::float8 FROM worker_uptime_daily WHERE worker_name = 'b'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(b_active, None, "never active");
}
