//! The `dals` binary as operators and workers meet it: start-up errors, `dals verify`, and
//! the design document's Python worker.

mod common;

use std::process::Command;

use common::TestApp;

const DALS: &str = env!("CARGO_BIN_EXE_dals");

#[test]
fn an_unreachable_database_is_one_clear_line() {
    let out = Command::new(DALS)
        .env(
            "DATABASE_URL",
            "postgres://postgres:hunter2@127.0.0.1:1/dals",
        )
        .env("DALS_SERVER__PORT", "0")
        .output()
        .expect("run dals");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    let line = lines[0];
    assert!(line.contains("127.0.0.1:1/dals"), "{line}");
    assert!(line.contains("DATABASE_URL"), "{line}");
    assert!(line.contains("docker compose up -d postgres"), "{line}");
    assert!(!line.contains("hunter2"), "password leaked: {line}");
}

#[test]
fn invalid_settings_name_the_setting() {
    for (var, value, expect) in [
        ("DALS_SERVER__PORT", "eighty", "server.port"),
        (
            "DALS_LIVENESS__STALE_AFTER_SECS",
            "-1",
            "DALS_LIVENESS__STALE_AFTER_SECS",
        ),
        (
            "DALS_LIVENESS__OFFLINE_AFTER_SECS",
            "10",
            "DALS_LIVENESS__OFFLINE_AFTER_SECS",
        ),
        ("DATABASE_URL", "mysql://x", "DATABASE_URL"),
    ] {
        let out = Command::new(DALS)
            .arg("migrate")
            .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/dals")
            .env(var, value)
            .output()
            .expect("run dals");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{var}={value}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}

#[tokio::test]
async fn verify_passes_against_a_running_registry() {
    let app = TestApp::spawn().await;
    app.register("Josephine-user_123", "truemark").await;
    let base = app.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(DALS)
            .args(["verify", "--url", &base, "--worker"])
            .output()
            .expect("run dals verify")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for line in [
        "✓ 1. registry status",
        "✓ 2. model catalog",
        "DMN-TM-02",
        "✓ 3. worker list",
        "✓ 4. registration + heartbeat",
        "✓ 5. Josephine-user_123 is registered",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }

    // A worker that is not there fails check 5.
    let base = app.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(DALS)
            .args(["verify", "--url", &base, "--worker", "nobody"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("✗ 5."));

    // A worker that deregistered is known but no longer registered: check 5 fails.
    let r = app.delete("/api/workers/Josephine-user_123").await;
    assert_eq!(r.status(), 200);
    let base = app.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(DALS)
            .args(["verify", "--url", &base, "--worker"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("✗ 5. Josephine-user_123 is not registered: it deregistered"),
        "{stdout}"
    );
}

#[tokio::test]
async fn migrate_applies_the_schema_and_exits() {
    let url = common::create_database().await;
    let run = {
        let url = url.clone();
        move || {
            Command::new(DALS)
                .arg("migrate")
                .env("DATABASE_URL", &url)
                .env("DALS_LOG__LEVEL", "warn")
                .output()
                .expect("run dals migrate")
        }
    };
    let out = tokio::task::spawn_blocking(run.clone()).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("migrations applied"));

    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, dals_registry::db::MIGRATOR.iter().count());
    let catalog: i64 = sqlx::query_scalar("SELECT count(*) FROM model_catalog")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(catalog, 8, "the seed catalog");
    pool.close().await;

    // Running it again is a no-op that still succeeds.
    let out = tokio::task::spawn_blocking(run).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn verify_fails_against_a_stopped_registry() {
    // Bind and drop a port so nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(DALS)
        .args(["verify", "--url", &format!("http://127.0.0.1:{port}")])
        .output()
        .expect("run dals verify");
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("✗ 1. registry status"), "{stdout}");
    assert!(stdout.contains("is the registry running?"), "{stdout}");
}

#[tokio::test]
async fn the_design_documents_python_worker_registers_and_heartbeats() {
    let app = TestApp::spawn().await;
    let api = format!("{}/api", app.base);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/design_worker.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([script, &api, "user_123"])
            .output()
            .expect("python3 is needed for this test")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains("✓ Registered: DMN-TM-01 - DMN-TM-01-"),
        "{stdout}"
    );
    let w = app.worker("Josephine-user_123").await;
    assert_eq!(w["status"], "active");
    assert_eq!(w["heartbeat_count"], 3);
}

/// A free TCP port on 127.0.0.1 (bound and let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Settings layer as built-in defaults < the `--config` file < environment < flags: the
/// registry listens on the port of the highest layer that sets one, and takes the other
/// settings from the layers below.
#[tokio::test]
async fn settings_layer_defaults_file_environment_flags() {
    let database_url = common::create_database().await;
    let dir = std::env::temp_dir().join(format!("dals-settings-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("dals.toml");
    let (file_port, env_port, flag_port) = (free_port(), free_port(), free_port());
    std::fs::write(
        &config,
        format!("[server]\nhost = \"127.0.0.1\"\nport = {file_port}\n\n[liveness]\nbrake_fraction = 0.25\n"),
    )
    .unwrap();

    let client = reqwest::Client::new();
    for (env, flag, expect) in [
        (None, None, file_port),
        (Some(env_port), None, env_port),
        (Some(env_port), Some(flag_port), flag_port),
    ] {
        let mut command = Command::new(DALS);
        command
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("DATABASE_URL", &database_url)
            .env_remove("DALS_SERVER__PORT")
            .env("DALS_LOG__LEVEL", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(port) = env {
            command.env("DALS_SERVER__PORT", port.to_string());
        }
        if let Some(port) = flag {
            command.args(["--port", &port.to_string()]);
        }
        let mut child = command.spawn().expect("start dals serve");
        let url = format!("http://127.0.0.1:{expect}/api/workers/status");
        let mut status = None;
        for _ in 0..200 {
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                status = Some(r.json::<serde_json::Value>().await.unwrap());
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        let status = status.unwrap_or_else(|| {
            panic!("env {env:?}, flag {flag:?}: nothing answered on port {expect}")
        });
        // The file's other settings hold whichever layer set the port.
        assert_eq!(status["brake"]["fraction"], 0.25, "{status}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
