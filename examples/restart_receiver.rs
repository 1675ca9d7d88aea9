//! A webhook receiver that restarts offline workers: a starting point for operators.
//!
//! It verifies each request's signature (refusing bad or stale ones with 401), and for every
//! `offline` event runs a command template, e.g. `docker restart {worker_name}`. The template
//! is split into arguments once, at start-up; each placeholder is then replaced inside its
//! argument and the command runs without a shell, so a worker name such as `x; rm -rf /`
//! stays one literal argument.
//!
//! ```sh
//! WEBHOOK_SECRET=... RESTART_COMMAND='docker restart {worker_name}' \
//!     cargo run --example restart_receiver -- 9100
//! curl -s -X POST http://localhost:8003/api/webhooks -H 'Content-Type: application/json' \
//!     -d '{"url": "http://127.0.0.1:9100/hook", "events": ["offline"], "secret": "..."}'
//! ```
//!
//! Environment: `WEBHOOK_SECRET` (required, the endpoint's secret); `RESTART_COMMAND` (the
//! template; without it the receiver only logs); `RESTART_ON` (comma-separated kinds, default
//! `offline`); `PORT` (default 9100, or the first argument); `BIND` (default 127.0.0.1).
//! Placeholders: `{worker_name}`, `{serial_number}`, `{model_number}`, `{worker_type}`,
//! `{api_url}`, `{user_id}`, `{kind}`, `{event_id}`, and `{metadata.KEY}` for a string (or
//! number) in the worker's registration metadata, e.g. a container name.
//!
//! The registry delivers at least once; this receiver remembers the delivery ids it acted on
//! (`X-DALS-Delivery`) so a redelivery does not restart twice. It answers 202 once the command
//! has started and logs how it ended: a restart can take longer than a webhook may.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use dals_registry::domain::signature::{
    DEFAULT_TOLERANCE_SECS, DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify,
};
use serde_json::{Value, json};

/// Delivery ids remembered for deduplication.
const REMEMBERED_DELIVERIES: usize = 10_000;

/// What the receiver is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    pub secret: String,
    /// The command template, already split into arguments; `None` only logs.
    pub command: Option<Vec<String>>,
    /// Event kinds that run the command.
    pub kinds: Vec<String>,
    /// How far a signature's timestamp may stray from this clock.
    pub tolerance_secs: i64,
}

/// The receiver's state: its configuration and the deliveries it has acted on.
#[derive(Clone)]
pub struct Receiver {
    config: Arc<Config>,
    seen: Arc<Mutex<Seen>>,
}

#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    /// Remembers `id`; false when it was already there.
    fn insert(&mut self, id: &str) -> bool {
        if !self.ids.insert(id.to_string()) {
            return false;
        }
        self.order.push_back(id.to_string());
        if self.order.len() > REMEMBERED_DELIVERIES
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        true
    }
}

/// The receiver's HTTP application: `POST /hook` (and `POST /`).
pub fn app(config: Config) -> Router {
    let receiver = Receiver {
        config: Arc::new(config),
        seen: Arc::default(),
    };
    Router::new()
        .route("/hook", post(hook))
        .route("/", post(hook))
        .with_state(receiver)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn hook(
    State(receiver): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let config = &receiver.config;
    // Verify the raw bytes before parsing anything.
    if let Err(why) = verify(
        config.secret.as_bytes(),
        header(&headers, TIMESTAMP_HEADER),
        header(&headers, SIGNATURE_HEADER),
        &body,
        unix_now(),
        config.tolerance_secs,
    ) {
        eprintln!("refused a request: {why}");
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "bad_signature", "message": why.to_string()})),
        );
    }
    let event: Value = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": "malformed_json", "message": e.to_string()})),
            );
        }
    };
    let kind = event["kind"].as_str().unwrap_or_default();
    if !config.kinds.iter().any(|k| k == kind) {
        return (
            StatusCode::OK,
            axum::Json(json!({"action": "ignored", "kind": kind})),
        );
    }
    let delivery = header(&headers, DELIVERY_HEADER)
        .unwrap_or_default()
        .to_string();
    let first_time = match receiver.seen.lock() {
        Ok(mut seen) => delivery.is_empty() || seen.insert(&delivery),
        Err(_) => true,
    };
    if !first_time {
        return (
            StatusCode::OK,
            axum::Json(json!({"action": "duplicate", "delivery": delivery})),
        );
    }
    let worker = event["worker_name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let Some(template) = &config.command else {
        eprintln!("{kind} event for {worker:?}; no RESTART_COMMAND set, nothing run");
        return (
            StatusCode::OK,
            axum::Json(json!({"action": "logged", "worker": worker})),
        );
    };
    let argv = render(template, &event);
    match spawn(&argv) {
        Ok(child) => {
            eprintln!("{kind} event for {worker:?}: running {argv:?}");
            let answer = json!({"action": "command_started", "worker": worker, "argv": argv});
            tokio::spawn(async move {
                match child.wait_with_output().await {
                    Ok(out) if out.status.success() => eprintln!("restart of {worker:?} done"),
                    Ok(out) => eprintln!(
                        "restart of {worker:?} failed ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                    Err(e) => eprintln!("restart of {worker:?}: {e}"),
                }
            });
            (StatusCode::ACCEPTED, axum::Json(answer))
        }
        Err(e) => {
            // Not remembered: the registry's retry may find the command runnable.
            if let Ok(mut seen) = receiver.seen.lock() {
                seen.ids.remove(&delivery);
            }
            eprintln!("cannot run {argv:?}: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({"error": "command_failed", "message": e.to_string()})),
            )
        }
    }
}

fn spawn(argv: &[String]) -> std::io::Result<tokio::process::Child> {
    let (program, args) = argv.split_first().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty RESTART_COMMAND")
    })?;
    tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
}

/// Splits a command template into arguments as a shell would split words: on whitespace,
/// with '...' and "..." grouping and backslash escaping (outside single quotes). Nothing else
/// of a shell is interpreted.
pub fn split_template(template: &str) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    args.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => current.push(c),
                        None => return Err("unterminated ' quote".to_string()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => current.push(c),
                            None => return Err("trailing backslash".to_string()),
                        },
                        Some(c) => current.push(c),
                        None => return Err("unterminated \" quote".to_string()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => current.push(c),
                    None => return Err("trailing backslash".to_string()),
                }
            }
            c => {
                in_word = true;
                current.push(c);
            }
        }
    }
    if in_word {
        args.push(current);
    }
    if args.is_empty() {
        return Err("the command is empty".to_string());
    }
    Ok(args)
}

/// Fills the placeholders of each argument from the event; the values never become more
/// arguments or shell syntax.
pub fn render(template: &[String], event: &Value) -> Vec<String> {
    template.iter().map(|arg| fill(arg, event)).collect()
}

fn fill(arg: &str, event: &Value) -> String {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        let name = &rest[start + 1..start + len];
        let value = match name.strip_prefix("metadata.") {
            Some(key) => event["metadata"].get(key),
            None => event.get(name),
        };
        out.push_str(&rest[..start]);
        match value {
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Number(n)) => out.push_str(&n.to_string()),
            Some(Value::Bool(b)) => out.push_str(&b.to_string()),
            // An unknown placeholder stays as written, so a typo shows in the log.
            _ => out.push_str(&rest[start..=start + len]),
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

/// Reads the configuration from the environment.
pub fn config_from_env() -> Result<Config, String> {
    let secret = std::env::var("WEBHOOK_SECRET")
        .map_err(|_| "set WEBHOOK_SECRET to the webhook endpoint's secret".to_string())?;
    let command = match std::env::var("RESTART_COMMAND") {
        Ok(template) if !template.trim().is_empty() => {
            Some(split_template(&template).map_err(|e| format!("RESTART_COMMAND: {e}"))?)
        }
        _ => None,
    };
    let kinds = std::env::var("RESTART_ON")
        .unwrap_or_else(|_| "offline".to_string())
        .split(',')
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    Ok(Config {
        secret,
        command,
        kinds,
        tolerance_secs: DEFAULT_TOLERANCE_SECS,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = config_from_env()?;
    let port: u16 = match std::env::args()
        .nth(1)
        .or_else(|| std::env::var("PORT").ok())
    {
        Some(port) => port.parse().map_err(|_| format!("not a port: {port}"))?,
        None => 9100,
    };
    let host = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1".to_string());
    let addr: SocketAddr = format!("{host}:{port}").parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!(
        "restart receiver on http://{}/hook, acting on {:?} with {:?}",
        listener.local_addr()?,
        config.kinds,
        config.command
    );
    axum::serve(listener, app(config)).await?;
    Ok(())
}
