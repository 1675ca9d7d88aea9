//! Josephine, the design document's TrueMark worker, on the DALS client library.
//!
//! ```sh
//! TARGET_USER_ID=user_123 WORKER_NAME=Josephine CALI_X_ONE_API=http://localhost:8003 \
//!     WORKER_PORT=8080 cargo run --example josephine
//! ```
//!
//! Registers as `<WORKER_NAME>-<TARGET_USER_ID>` (type `truemark`), prints its model and serial
//! numbers, runs its work loop and beats on the registry's interval. A `restart` command from
//! the registry restarts the work loop. Ctrl-C or SIGTERM deregisters and exits 0; a newer
//! deployment of the same name (or a deregistration by an operator) exits 1; bad settings or
//! a registry that refuses the registration exit 2. `DALS_TOKEN`, when set, is sent as a bearer
//! token.

use std::process::ExitCode;
use std::time::Duration;

use dals_client::{Client, CommandKind, HeartbeatOptions, Registration, State, Status, Stop};
use tokio::task::JoinHandle;

/// How often the work loop looks for messages (the design document's 0.5 s).
const WORK_TICK: Duration = Duration::from_millis(500);
/// First wait before retrying a registration the registry could not take.
const REGISTER_RETRY: Duration = Duration::from_secs(1);
/// Longest wait between registration attempts.
const REGISTER_RETRY_MAX: Duration = Duration::from_secs(30);

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// The worker's own work: process messages until aborted (a restart or the shutdown).
fn start_work_loop(generation: u32) -> JoinHandle<()> {
    println!("▶ Work loop started (generation {generation})");
    tokio::spawn(async move {
        let mut processed: u64 = 0;
        loop {
            // ... process messages ...
            processed += 1;
            tracing::debug!(generation, processed, "work loop tick");
            tokio::time::sleep(WORK_TICK).await;
        }
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

fn report(status: &Status) {
    match &status.state {
        State::Registered if status.registrations > 1 => println!(
            "✓ Registered again: {} - {} (the registry had lost this worker)",
            status.model_number, status.serial_number
        ),
        State::Retrying {
            failures,
            error,
            retry_in,
        } => println!("⚠ Registry call failed ({failures}x): {error}; retrying in {retry_in:.1?}"),
        State::Active => println!("♥ Heartbeats answered every {:.1?}", status.interval),
        _ => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // The client library's own log lines (retries, re-registrations) on stderr; RUST_LOG tunes.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let Ok(user_id) = std::env::var("TARGET_USER_ID") else {
        eprintln!("TARGET_USER_ID is required (the user this worker serves), e.g. user_123");
        return ExitCode::from(2);
    };
    let worker_name = env_or("WORKER_NAME", "Josephine");
    let registry = env_or("CALI_X_ONE_API", "http://localhost:8003");
    let port = env_or("WORKER_PORT", "8080");
    if port.parse::<u16>().is_err() {
        eprintln!("WORKER_PORT must be a port number, got {port:?}");
        return ExitCode::from(2);
    }

    let mut builder = Client::builder(&registry);
    if let Ok(token) = std::env::var("DALS_TOKEN") {
        builder = builder.token(token);
    }
    let client = match builder.build() {
        Ok(client) => client,
        Err(e) => {
            eprintln!("CALI_X_ONE_API: {e}");
            return ExitCode::from(2);
        }
    };
    let registration = Registration::new(
        format!("{worker_name}-{user_id}"),
        "truemark",
        format!("http://localhost:{port}"),
        user_id,
    )
    .meta("worker_port", port.clone());

    // One signal future for the whole run: a signal is caught from its first poll on, so it
    // is not missed while the worker is busy elsewhere.
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);

    // Register, retrying while the registry is unavailable (it may start after the worker).
    let mut wait = REGISTER_RETRY;
    let registered = loop {
        let attempt = tokio::select! {
            r = client.register(&registration) => r,
            () = &mut shutdown => return ExitCode::SUCCESS,
        };
        match attempt {
            Ok(registered) => break registered,
            Err(e) if e.is_transient() => {
                println!("⚠ Registration failed: {e}; retrying in {wait:.1?}");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = &mut shutdown => return ExitCode::SUCCESS,
                }
                wait = (wait * 2).min(REGISTER_RETRY_MAX);
            }
            Err(e) => {
                eprintln!("✗ Registration refused: {e}");
                return ExitCode::from(2);
            }
        }
    };
    println!(
        "✓ Registered: {} - {}",
        registered.model_number, registered.serial_number
    );
    for warning in &registered.warnings {
        println!("⚠ {warning}");
    }

    let options = HeartbeatOptions::default().on_change(report);
    let mut heartbeats = match client.spawn_heartbeats(registration, registered, options) {
        Ok(heartbeats) => heartbeats,
        Err(e) => {
            eprintln!("✗ {e}");
            return ExitCode::from(2);
        }
    };

    let mut generation = 1;
    let mut work = start_work_loop(generation);
    let code = loop {
        tokio::select! {
            () = &mut shutdown => {
                println!("Shutting down");
                break ExitCode::SUCCESS;
            }
            command = heartbeats.next_command() => match command {
                Some(command) if command.kind() == CommandKind::Restart => {
                    println!(
                        "↻ Restart requested by the registry (command {}, {}): {}",
                        command.id, command.source, command.reason
                    );
                    work.abort();
                    let _ = (&mut work).await;
                    generation += 1;
                    work = start_work_loop(generation);
                }
                Some(command) => println!("? Ignoring unknown command {:?}", command.command),
                // The heartbeat task stopped by itself.
                None => {
                    let status = heartbeats.stopped().await;
                    match status.state {
                        State::Stopped(Stop::Superseded { current_serial_number }) => println!(
                            "✗ A newer deployment of {} exists ({current_serial_number}); exiting",
                            status.worker_name
                        ),
                        other => println!("✗ Heartbeats stopped ({other:?}); exiting"),
                    }
                    break ExitCode::from(1);
                }
            }
        }
    };
    work.abort();
    match heartbeats.shutdown().await {
        Ok(Status {
            state: State::Stopped(Stop::Shutdown { deregistered: true }),
            worker_name,
            serial_number,
            ..
        }) => println!("✓ Deregistered {worker_name} ({serial_number})"),
        Ok(_) => {}
        Err(e) => {
            eprintln!("⚠ Deregistration failed: {e}");
            return ExitCode::from(1);
        }
    }
    code
}
