//! `dals verify`: the design document's verification script, against a running registry.

use std::process::ExitCode;

use clap::Args;
use serde_json::{Value, json};

use crate::remote::{CallError, encode, get_json, send_json};

/// Arguments of `dals verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Base URL of the registry.
    #[arg(
        long,
        env = "DALS_URL",
        default_value = "http://127.0.0.1:8003",
        value_parser = crate::remote::parse_base_url
    )]
    pub url: String,
    /// Also check that this worker is registered (`--worker` alone checks Josephine-user_123).
    #[arg(long, num_args = 0..=1, default_missing_value = "Josephine-user_123")]
    pub worker: Option<String>,
}

struct Report {
    failed: usize,
}

impl Report {
    fn pass(&self, step: usize, what: &str) {
        println!("✓ {step}. {what}");
    }

    fn fail(&mut self, step: usize, what: &str) {
        self.failed += 1;
        println!("✗ {step}. {what}");
    }
}

/// Runs the five checks, printing a report; non-zero exit when any fails.
pub async fn run(args: &VerifyArgs) -> ExitCode {
    let base = args.url.trim_end_matches('/').to_string();
    let client = match crate::remote::client() {
        Ok(c) => c,
        Err(e) => {
            println!("✗ cannot build an HTTP client: {e}");
            return ExitCode::FAILURE;
        }
    };
    let api = |path: &str| format!("{base}/api/workers{path}");
    let mut report = Report { failed: 0 };
    println!("Verifying the DALS registry at {base}\n");

    // 1. Registry status.
    match get_json(&client, &api("/status")).await {
        Ok(s) if s["available"] == json!(true) => report.pass(
            1,
            &format!(
                "registry status: available, {} workers ({} active), families {}",
                s["total_workers"], s["active_workers"], s["model_families"]
            ),
        ),
        Ok(s) => report.fail(1, &format!("registry status: not available: {s}")),
        Err(e) => report.fail(1, &format!("registry status: {e}")),
    }

    // 2. Model catalog.
    match get_json(&client, &api("/models/catalog")).await {
        Ok(Value::Object(catalog)) if !catalog.is_empty() => {
            report.pass(2, &format!("model catalog: {} types", catalog.len()));
            for (worker_type, model) in &catalog {
                println!("     {:<24} {}", worker_type, model.as_str().unwrap_or("?"));
            }
        }
        Ok(other) => report.fail(2, &format!("model catalog: unexpected answer {other}")),
        Err(e) => report.fail(2, &format!("model catalog: {e}")),
    }

    // 3. Registered workers.
    match get_json(&client, &api("/list")).await {
        Ok(Value::Array(workers)) => {
            report.pass(3, &format!("worker list: {} workers", workers.len()));
            for w in workers.iter().take(20) {
                println!(
                    "     {:<32} {:<10} {:<26} {}",
                    w["worker_name"].as_str().unwrap_or("?"),
                    w["model_number"].as_str().unwrap_or("?"),
                    w["serial_number"].as_str().unwrap_or("?"),
                    w["status"].as_str().unwrap_or("?")
                );
            }
            if workers.len() > 20 {
                println!("     ... and {} more", workers.len() - 20);
            }
        }
        Ok(other) => report.fail(3, &format!("worker list: not a JSON array: {other}")),
        Err(e) => report.fail(3, &format!("worker list: {e}")),
    }

    // 4. Registration and heartbeat of a test worker.
    let name = format!(
        "dals-verify-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    match register_and_beat(&client, &api, &name).await {
        Ok((model, serial)) => report.pass(
            4,
            &format!("registration + heartbeat: {name} registered as {model} {serial}, now active"),
        ),
        Err(e) => report.fail(4, &format!("registration + heartbeat: {e}")),
    }
    // The test worker leaves gracefully where the registry supports it.
    let _ = client
        .delete(api(&format!("/{}", encode(&name))))
        .send()
        .await;

    // 5. The named worker.
    match &args.worker {
        Some(worker) => match get_json(&client, &api(&format!("/{}", encode(worker)))).await {
            // Known but gone: it shut down (or was removed) and must register again.
            Ok(w) if w["status"] == "deregistered" => report.fail(
                5,
                &format!(
                    "{worker} is not registered: it deregistered at {} (serial {})",
                    w["status_changed_at"].as_str().unwrap_or("?"),
                    w["serial_number"].as_str().unwrap_or("?")
                ),
            ),
            Ok(w) => report.pass(
                5,
                &format!(
                    "{worker} is registered: {} {} ({})",
                    w["model_number"].as_str().unwrap_or("?"),
                    w["serial_number"].as_str().unwrap_or("?"),
                    w["status"].as_str().unwrap_or("?")
                ),
            ),
            Err(e @ CallError::Api { .. }) => {
                report.fail(5, &format!("{worker} is not registered: {}", e.message()))
            }
            Err(e) => report.fail(5, &format!("{worker}: cannot check: {e}")),
        },
        None => println!("- 5. named worker: skipped (pass --worker [NAME] to check one)"),
    }

    println!();
    if report.failed == 0 {
        println!("All checks passed.");
        ExitCode::SUCCESS
    } else {
        println!("{} check(s) failed.", report.failed);
        ExitCode::FAILURE
    }
}

async fn register_and_beat(
    client: &reqwest::Client,
    api: &impl Fn(&str) -> String,
    name: &str,
) -> Result<(String, String), String> {
    let registered = send_json(client.post(api("/register")).json(&json!({
        "name": name,
        "worker_type": "truemark",
        "api_url": "http://localhost:8080",
        "user_id": "dals-verify",
    })))
    .await
    .map_err(|e| e.to_string())?;
    let model = registered["model_number"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let serial = registered["serial_number"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if registered["status"] != json!("registered") || serial.is_empty() {
        return Err(format!("unexpected registration answer {registered}"));
    }
    let beat = send_json(
        client
            .post(api("/heartbeat"))
            .json(&json!({ "worker_name": name })),
    )
    .await
    .map_err(|e| e.to_string())?;
    if beat != json!({ "status": "updated", "worker": name }) {
        return Err(format!("unexpected heartbeat answer {beat}"));
    }
    let now = get_json(client, &api(&format!("/{}", encode(name))))
        .await
        .map_err(|e| e.to_string())?;
    if now["status"] != json!("active") {
        return Err(format!(
            "worker is {} after a heartbeat, not active",
            now["status"]
        ));
    }
    Ok((model, serial))
}
