//! Prometheus metrics, on the API listener or one of their own.

mod common;

use std::time::Duration;

use common::TestApp;

/// The value of the sample `name{labels}` (labels exactly as rendered), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (key == series).then(|| value.parse().ok()).flatten()
    })
}

async fn scrape(app: &TestApp, url: &str) -> String {
    let r = app.client.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    r.text().await.unwrap()
}

#[tokio::test]
async fn metrics_count_what_happened() {
    let app = TestApp::spawn_with(|s| {
        s.liveness.stale_after_secs = 0.5;
        s.liveness.offline_after_secs = 30.0;
        s.liveness.sweep_interval_secs = 0.05;
    })
    .await;
    app.register("tm", "truemark").await;
    app.register("rg", "regent").await;
    app.heartbeat("tm").await;
    app.heartbeat("tm").await;
    assert_eq!(app.heartbeat("nobody").await, 404);
    // Made-up methods share one label: a client cannot grow the series.
    for method in ["FOO", "BAR1"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = app
            .client
            .request(method, app.url("/api/workers/list"))
            .send()
            .await;
        assert_eq!(r.unwrap().status(), 405);
    }

    let text = scrape(&app, &app.url("/metrics")).await;
    assert!(!text.contains("FOO") && !text.contains("BAR1"));
    assert_eq!(
        sample(
            &text,
            r#"dals_http_requests_total{method="other",route="/api/workers/list",status="405"}"#
        ),
        Some(2.0)
    );
    let at = |series: &str| sample(&text, series);
    assert_eq!(at(r#"dals_registrations_total{family="TM"}"#), Some(1.0));
    assert_eq!(at(r#"dals_registrations_total{family="RG"}"#), Some(1.0));
    assert_eq!(at(r#"dals_heartbeats_total{outcome="updated"}"#), Some(2.0));
    assert_eq!(
        at(r#"dals_heartbeats_total{outcome="unknown_worker"}"#),
        Some(1.0)
    );
    assert_eq!(at("dals_heartbeat_interval_seconds_count"), Some(1.0));
    assert_eq!(
        at(r#"dals_workers{family="TM",status="active"}"#),
        Some(1.0)
    );
    assert_eq!(
        at(r#"dals_workers{family="RG",status="registered"}"#),
        Some(1.0)
    );
    assert_eq!(
        at(r#"dals_http_requests_total{method="POST",route="/api/workers/register",status="200"}"#),
        Some(2.0)
    );
    assert_eq!(
        at(
            r#"dals_http_requests_total{method="POST",route="/api/workers/heartbeat",status="404"}"#
        ),
        Some(1.0)
    );
    assert!(
        at(
            r#"dals_http_request_duration_seconds_count{method="POST",route="/api/workers/heartbeat"}"#
        ) == Some(3.0)
    );
    assert_eq!(at("dals_sweeper_brake_engaged"), Some(0.0));
    assert_eq!(at(r#"dals_db_pool_connections{state="max"}"#), Some(5.0));

    // The sweeper's work shows up: rg never beats and goes stale.
    let mut stale = None;
    for _ in 0..100 {
        let text = scrape(&app, &app.url("/metrics")).await;
        stale = sample(&text, r#"dals_sweeper_transitions_total{to="stale"}"#);
        if stale >= Some(1.0) {
            assert!(sample(&text, r#"dals_sweeper_runs_total{outcome="swept"}"#) >= Some(1.0));
            assert!(sample(&text, "dals_sweeper_duration_seconds_count") >= Some(1.0));
            assert!(sample(&text, r#"dals_workers{family="RG",status="stale"}"#) == Some(1.0));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stale >= Some(1.0), "no stale transition counted");
}

#[tokio::test]
async fn metrics_can_have_a_listener_of_their_own() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = TestApp::spawn_with(|s| s.metrics.listen = format!("127.0.0.1:{port}")).await;
    app.register("w", "goat").await;
    assert_eq!(app.get("/metrics").await.status(), 404);
    let text = scrape(&app, &format!("http://127.0.0.1:{port}/metrics")).await;
    assert_eq!(
        sample(&text, r#"dals_workers{family="GT",status="registered"}"#),
        Some(1.0)
    );
}

#[test]
fn an_invalid_metrics_address_names_the_setting() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dals"))
        .arg("migrate")
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/dals")
        .env("DALS_METRICS__LISTEN", "ninety")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DALS_METRICS__LISTEN"));
}
