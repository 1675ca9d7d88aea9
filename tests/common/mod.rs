//! The test harness: each test gets its own freshly migrated database on a real PostgreSQL and
//! a real registry on a random port, and talks HTTP to it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::OnceLock;

use dals_registry::settings::{Overrides, Settings};
use reqwest::{Client, Response};
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The PostgreSQL server tests create their databases on: `DATABASE_URL` when set, otherwise a
/// testcontainers PostgreSQL where Docker is available.
pub fn server_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return url;
        }
        start_container().unwrap_or_else(|why| {
            panic!(
                "tests need PostgreSQL: set DATABASE_URL (e.g. \
                 DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres) or make Docker \
                 available for testcontainers ({why})"
            )
        })
    })
    .clone()
}

/// Starts one PostgreSQL container for the whole test binary, on a runtime of its own so it
/// outlives every test's runtime. The container is removed by testcontainers' reaper.
fn start_container() -> Result<String, String> {
    use testcontainers_modules::postgres::Postgres;
    use testcontainers_modules::testcontainers::runners::AsyncRunner;
    let docker = std::path::Path::new("/var/run/docker.sock").exists()
        || std::env::var_os("DOCKER_HOST").is_some();
    if !docker {
        return Err("no Docker engine found".to_string());
    }
    std::thread::spawn(|| {
        let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        let url = rt.block_on(async {
            let container = Postgres::default()
                .with_host_auth()
                .start()
                .await
                .map_err(|e| e.to_string())?;
            let port = container
                .get_host_port_ipv4(5432)
                .await
                .map_err(|e| e.to_string())?;
            std::mem::forget(container);
            Ok::<_, String>(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
        })?;
        std::mem::forget(rt);
        Ok(url)
    })
    .join()
    .map_err(|_| "testcontainers panicked".to_string())?
}

/// Creates an empty, uniquely named database and returns its URL.
pub async fn create_database() -> String {
    let server = server_url();
    let name = format!("dals_test_{}", uuid::Uuid::new_v4().simple());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&server)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to DATABASE_URL {server}: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
        .execute(&admin)
        .await
        .expect("create test database");
    admin.close().await;
    let mut url = url::Url::parse(&server).expect("DATABASE_URL is a URL");
    url.set_path(&name);
    url.to_string()
}

/// Settings for a test registry on `database_url`: port 0, short timeouts.
pub fn test_settings(database_url: &str) -> Settings {
    let mut settings = Settings::load(
        None,
        &Overrides {
            host: Some("127.0.0.1".parse().unwrap()),
            port: Some(0),
            database_url: Some(database_url.to_string()),
        },
    )
    .expect("test settings");
    settings.database.max_connections = 5;
    settings.database.create_if_missing = false;
    settings
}

/// A registry running in this test, with its own database.
pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub client: Client,
    pub database_url: String,
    /// A pool on the test's database, for assertions in SQL.
    pub pool: PgPool,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// A registry with default settings on a fresh database.
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// A registry on a fresh database with settings adjusted by `adjust`.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
        let database_url = create_database().await;
        Self::spawn_on(&database_url, adjust).await
    }

    /// Another registry on an existing database (a second replica, or a restart).
    pub async fn spawn_on(database_url: &str, adjust: impl FnOnce(&mut Settings)) -> TestApp {
        dals_registry::telemetry::init(&dals_registry::settings::LogSettings {
            format: dals_registry::settings::LogFormat::Pretty,
            level: "warn".to_string(),
        });
        let mut settings = test_settings(database_url);
        adjust(&mut settings);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(dals_registry::launch(settings, listener, async {
            let _ = rx.await;
        }));
        let app = TestApp {
            addr,
            base: format!("http://{addr}"),
            client: Client::new(),
            database_url: database_url.to_string(),
            pool: PgPoolOptions::new()
                .max_connections(2)
                .connect(database_url)
                .await
                .expect("test pool"),
            shutdown: Some(tx),
            handle: Some(handle),
        };
        app.wait_ready().await;
        app
    }

    async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(r) = self.client.get(self.url("/readyz")).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("registry at {} did not become ready", self.base);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    pub async fn post(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> Response {
        self.client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST")
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.client
            .delete(self.url(path))
            .send()
            .await
            .expect("DELETE")
    }

    /// Registers a worker of `worker_type` and returns the answer, asserting a 200.
    pub async fn register(&self, name: &str, worker_type: &str) -> Value {
        let r = self
            .post(
                "/api/workers/register",
                &serde_json::json!({
                    "name": name,
                    "worker_type": worker_type,
                    "api_url": "http://localhost:8080",
                    "user_id": "user_123",
                }),
            )
            .await;
        assert_eq!(r.status(), 200, "registering {name}");
        r.json().await.expect("JSON")
    }

    /// Sends a heartbeat and returns the status code.
    pub async fn heartbeat(&self, name: &str) -> u16 {
        self.post(
            "/api/workers/heartbeat",
            &serde_json::json!({ "worker_name": name }),
        )
        .await
        .status()
        .as_u16()
    }

    /// One worker's JSON, asserting it exists.
    pub async fn worker(&self, name: &str) -> Value {
        let r = self.get(&format!("/api/workers/{}", encode(name))).await;
        assert_eq!(r.status(), 200, "GET worker {name}");
        r.json().await.expect("JSON")
    }

    /// Stops the registry gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("join").expect("registry ran cleanly");
        }
    }

    /// Kills the registry as a crash would: no graceful shutdown.
    pub async fn kill(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
            let _ = handle.await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

/// Sends a request in the background, for a test that holds a lock it waits on: the answer's
/// status and body, once it comes.
pub fn in_background(request: reqwest::RequestBuilder) -> JoinHandle<(u16, String)> {
    tokio::spawn(async move {
        let r = request.send().await.expect("request");
        (r.status().as_u16(), r.text().await.expect("body"))
    })
}

/// Percent-encodes a worker name as one path segment.
pub fn encode(name: &str) -> String {
    url::form_urlencoded::byte_serialize(name.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Parses a response body as JSON, asserting the status first.
pub async fn json(r: Response, status: u16) -> Value {
    let got = r.status().as_u16();
    let text = r.text().await.expect("body");
    assert_eq!(got, status, "unexpected status; body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}
