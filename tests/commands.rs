//! What the registry tells workers: the heartbeat interval and operator commands (restart),
//! delivered at least once in heartbeat responses until acknowledged; restart-on-stale.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{TestApp, json};
use dals_registry::settings::Settings;
use serde_json::{Value, json};

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

async fn beat(app: &TestApp, name: &str, serial: &str, acked: &[i64]) -> Value {
    let mut body = json!({ "worker_name": name, "serial_number": serial });
    if !acked.is_empty() {
        body["acked_commands"] = json!(acked);
    }
    json(app.post("/api/workers/heartbeat", &body).await, 200).await
}

async fn restart(app: &TestApp, name: &str) -> Value {
    json(
        app.post(
            &format!("/api/workers/{name}/commands"),
            &json!({ "command": "restart", "reason": "loop hung" }),
        )
        .await,
        202,
    )
    .await
}

fn ids(reply: &Value) -> Vec<i64> {
    reply["commands"]
        .as_array()
        .expect("commands array")
        .iter()
        .map(|c| c["id"].as_i64().expect("id"))
        .collect()
}

async fn commands_of(app: &TestApp, name: &str) -> Vec<Value> {
    let body = json(app.get(&format!("/api/workers/{name}/commands")).await, 200).await;
    body["commands"].as_array().expect("commands").clone()
}

#[tokio::test]
async fn register_and_serial_heartbeats_tell_the_interval_legacy_heartbeats_stay_as_designed() {
    let app = TestApp::spawn_with(|s| s.liveness.heartbeat_interval_secs = 0.25).await;
    let reg = app.register("w", "truemark").await;
    assert_eq!(reg["heartbeat_interval_secs"], 0.25);
    assert_eq!(reg["commands"], json!([]));
    let serial = reg["serial_number"].as_str().unwrap();

    // A pending command does not change the design document's answer.
    restart(&app, "w").await;
    let legacy = json(
        app.post("/api/workers/heartbeat", &json!({ "worker_name": "w" }))
            .await,
        200,
    )
    .await;
    assert_eq!(legacy, json!({ "status": "updated", "worker": "w" }));

    let reply = beat(&app, "w", serial, &[]).await;
    assert_eq!(reply["status"], "updated");
    assert_eq!(reply["worker"], "w");
    assert_eq!(reply["heartbeat_interval_secs"], 0.25);
    assert_eq!(reply["commands"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_command_is_delivered_until_acknowledged_then_never_again() {
    let app = TestApp::spawn().await;
    let serial = app.register("w", "truemark").await["serial_number"]
        .as_str()
        .unwrap()
        .to_string();
    let queued = restart(&app, "w").await;
    assert_eq!(queued["command"], "restart");
    assert_eq!(queued["status"], "pending");
    assert_eq!(queued["source"], "operator");
    assert_eq!(queued["reason"], "loop hung");
    assert_eq!(queued["serial_number"], serial.as_str());
    assert_eq!(queued["delivered_at"], Value::Null);
    let id = queued["id"].as_i64().unwrap();

    // Asking again while it is open is the same restart.
    assert_eq!(restart(&app, "w").await["id"], id);

    // Delivered, and delivered again while unacknowledged (the first answer may be lost).
    let first = beat(&app, "w", &serial, &[]).await;
    assert_eq!(ids(&first), [id]);
    assert_eq!(first["commands"][0]["command"], "restart");
    assert_eq!(first["commands"][0]["status"], "delivered");
    let again = beat(&app, "w", &serial, &[]).await;
    assert_eq!(ids(&again), [id]);
    assert_eq!(
        again["commands"][0]["delivered_at"], first["commands"][0]["delivered_at"],
        "delivered_at is the first delivery"
    );

    // Acknowledged: gone from this answer and every later one; repeating the ack is harmless.
    assert_eq!(
        ids(&beat(&app, "w", &serial, &[id]).await),
        Vec::<i64>::new()
    );
    assert_eq!(
        ids(&beat(&app, "w", &serial, &[id]).await),
        Vec::<i64>::new()
    );
    assert_eq!(ids(&beat(&app, "w", &serial, &[]).await), Vec::<i64>::new());

    let listed = commands_of(&app, "w").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["status"], "acknowledged");
    assert!(
        listed[0]["acknowledged_at"].as_str().unwrap()
            >= listed[0]["delivered_at"].as_str().unwrap()
    );

    // A new restart after the acknowledgement is a new command, listed newest first.
    let second = restart(&app, "w").await["id"].as_i64().unwrap();
    assert!(second > id);
    let listed = commands_of(&app, "w").await;
    assert_eq!(listed[0]["id"], second);
    assert_eq!(listed[1]["id"], id);
    let one = json(app.get("/api/workers/w/commands?limit=1").await, 200).await;
    assert_eq!(one["commands"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn acknowledging_only_counts_for_delivered_commands_of_ones_own_deployment() {
    let app = TestApp::spawn().await;
    let a = app.register("a", "truemark").await["serial_number"]
        .as_str()
        .unwrap()
        .to_string();
    let b = app.register("b", "truemark").await["serial_number"]
        .as_str()
        .unwrap()
        .to_string();
    let for_a = restart(&app, "a").await["id"].as_i64().unwrap();
    // b cannot acknowledge a's command, and a cannot acknowledge one it was never given.
    beat(&app, "b", &b, &[for_a]).await;
    assert_eq!(ids(&beat(&app, "a", &a, &[for_a]).await), [for_a]);
    assert_eq!(commands_of(&app, "a").await[0]["status"], "delivered");
}

#[tokio::test]
async fn a_new_deployment_or_a_deregistration_cancels_open_commands() {
    let app = TestApp::spawn().await;
    let old = app.register("w", "truemark").await["serial_number"]
        .as_str()
        .unwrap()
        .to_string();
    let id = restart(&app, "w").await["id"].as_i64().unwrap();
    beat(&app, "w", &old, &[]).await;

    let new = app.register("w", "truemark").await;
    assert_eq!(new["commands"], json!([]));
    let new = new["serial_number"].as_str().unwrap().to_string();
    assert_eq!(ids(&beat(&app, "w", &new, &[]).await), Vec::<i64>::new());
    let listed = commands_of(&app, "w").await;
    assert_eq!(listed[0]["id"], id);
    assert_eq!(listed[0]["status"], "cancelled");
    assert!(listed[0]["cancelled_at"].is_string());

    // The old process is told it is old, not given commands.
    let r = app
        .post(
            "/api/workers/heartbeat",
            &json!({ "worker_name": "w", "serial_number": old }),
        )
        .await;
    assert_eq!(r.status(), 409);

    let pending = restart(&app, "w").await["id"].as_i64().unwrap();
    assert_eq!(
        app.delete(&format!("/api/workers/w?serial_number={new}"))
            .await
            .status(),
        200
    );
    let listed = commands_of(&app, "w").await;
    assert_eq!(listed[0]["id"], pending);
    assert_eq!(listed[0]["status"], "cancelled");
}

#[tokio::test]
async fn bad_commands_are_clear_errors() {
    let app = TestApp::spawn().await;
    let serial = app.register("w", "truemark").await["serial_number"]
        .as_str()
        .unwrap()
        .to_string();

    let e = json(
        app.post("/api/workers/w/commands", &json!({ "command": "reboot" }))
            .await,
        422,
    )
    .await;
    assert_eq!(e["error"], "validation_failed");
    assert_eq!(e["field"], "command");
    assert_eq!(e["rule"], "must be one of: restart");

    let e = json(app.post("/api/workers/w/commands", &json!({})).await, 422).await;
    assert_eq!(e["field"], "command");
    let e = json(
        app.post("/api/workers/w/commands", &json!({ "command": 7 }))
            .await,
        422,
    )
    .await;
    assert_eq!(e["field"], "command");
    let e = json(
        app.post(
            "/api/workers/w/commands",
            &json!({ "command": "restart", "reason": "x".repeat(501) }),
        )
        .await,
        422,
    )
    .await;
    assert_eq!(e["field"], "reason");
    let e = json(app.post_raw("/api/workers/w/commands", "{").await, 400).await;
    assert_eq!(e["error"], "malformed_json");
    let e = json(app.get("/api/workers/w/commands?limit=0").await, 422).await;
    assert_eq!(e["field"], "limit");

    let e = json(
        app.post(
            "/api/workers/nobody/commands",
            &json!({ "command": "restart" }),
        )
        .await,
        404,
    )
    .await;
    assert_eq!(e["error"], "worker_not_found");
    json(app.get("/api/workers/nobody/commands").await, 404).await;

    // Acknowledgements need the serial; ids must be integers.
    let e = json(
        app.post(
            "/api/workers/heartbeat",
            &json!({ "worker_name": "w", "acked_commands": [1] }),
        )
        .await,
        422,
    )
    .await;
    assert_eq!(e["field"], "acked_commands");
    let e = json(
        app.post(
            "/api/workers/heartbeat",
            &json!({ "worker_name": "w", "serial_number": serial, "acked_commands": ["x"] }),
        )
        .await,
        422,
    )
    .await;
    assert!(
        e["field"].as_str().unwrap().starts_with("acked_commands"),
        "{e}"
    );

    assert_eq!(
        app.delete(&format!("/api/workers/w?serial_number={serial}"))
            .await
            .status(),
        200
    );
    let e = json(
        app.post("/api/workers/w/commands", &json!({ "command": "restart" }))
            .await,
        410,
    )
    .await;
    assert_eq!(e["error"], "worker_deregistered");
    // Its history stays readable.
    json(app.get("/api/workers/w/commands").await, 200).await;
}

fn fast_with_restart(s: &mut Settings) {
    s.liveness.stale_after_secs = 0.4;
    s.liveness.offline_after_secs = 1.0;
    s.liveness.sweep_interval_secs = 0.05;
    s.liveness.heartbeat_interval_secs = 0.1;
    s.liveness.brake_min_workers = 1_000_000;
    s.remediation.restart_on_stale = true;
}

#[tokio::test]
async fn restart_on_stale_queues_one_restart_delivered_when_the_worker_answers_again() {
    let app = TestApp::spawn_with(fast_with_restart).await;
    let serial = app.register("hung", "truemark").await["serial_number"]
        .as_str()
        .unwrap()
        .to_string();
    beat(&app, "hung", &serial, &[]).await;
    // Its loop hangs: no heartbeats. It goes stale, then offline; one restart is queued.
    wait_for("offline", Duration::from_secs(10), async || {
        app.worker("hung").await["status"] == "offline"
    })
    .await;
    let listed = commands_of(&app, "hung").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["command"], "restart");
    assert_eq!(listed[0]["source"], "remediation");
    assert_eq!(listed[0]["status"], "pending");
    assert_eq!(listed[0]["serial_number"], serial.as_str());
    assert!(
        listed[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("went stale"),
        "{listed:?}"
    );
    // Queued in the same statement as the stale transition: the same database time.
    let same: bool = sqlx::query_scalar(
        "SELECT c.created_at = e.at FROM worker_commands c
         JOIN worker_events e ON e.serial_number = c.serial_number AND e.kind = 'stale'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(same);

    // It answers again: the restart rides on that heartbeat.
    let reply = beat(&app, "hung", &serial, &[]).await;
    assert_eq!(reply["commands"][0]["command"], "restart");
    let id = reply["commands"][0]["id"].as_i64().unwrap();
    assert_eq!(app.worker("hung").await["status"], "active");
    assert_eq!(
        ids(&beat(&app, "hung", &serial, &[id]).await),
        Vec::<i64>::new()
    );

    // Going stale again while a restart is still open does not pile up a second one.
    restart(&app, "hung").await;
    wait_for("stale again", Duration::from_secs(10), async || {
        app.worker("hung").await["status"] != "active"
    })
    .await;
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM worker_commands WHERE status IN ('pending', 'delivered')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(open, 1);
}

#[tokio::test]
async fn without_the_policy_a_stale_worker_gets_no_command() {
    let app = TestApp::spawn_with(|s| {
        fast_with_restart(s);
        s.remediation.restart_on_stale = false;
    })
    .await;
    app.register("w", "truemark").await;
    wait_for("stale", Duration::from_secs(10), async || {
        app.worker("w").await["status"] == "stale"
    })
    .await;
    assert!(commands_of(&app, "w").await.is_empty());
}

#[test]
fn the_heartbeat_interval_setting_is_checked() {
    for (value, stale, expect) in [
        (
            "0",
            "90",
            "DALS_LIVENESS__HEARTBEAT_INTERVAL_SECS must be a positive",
        ),
        (
            "90",
            "90",
            "DALS_LIVENESS__HEARTBEAT_INTERVAL_SECS (90) must be less than",
        ),
        ("soon", "90", "heartbeat_interval_secs"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_dals"))
            .arg("migrate")
            .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/dals")
            .env("DALS_LIVENESS__HEARTBEAT_INTERVAL_SECS", value)
            .env("DALS_LIVENESS__STALE_AFTER_SECS", stale)
            .output()
            .expect("run dals");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{value}: {stderr}");
    }
    // Fractions are allowed.
    let out = Command::new(env!("CARGO_BIN_EXE_dals"))
        .arg("migrate")
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/dals")
        .env("DALS_LIVENESS__HEARTBEAT_INTERVAL_SECS", "2.5")
        .output()
        .expect("run dals");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("HEARTBEAT_INTERVAL"), "{stderr}");
}
