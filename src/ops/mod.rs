//! The operator commands, `dals workers ...` and `dals catalog ...`: HTTP clients of a running
//! registry that print aligned tables for people, or the API's JSON with `--json`.
//!
//! Exit status: 0 on success, 1 when the registry refused (its message is printed), 3 when it
//! could not be asked (unreachable, or an answer that is not the API's); clap uses 2 for
//! command-line mistakes.

mod table;

use std::process::ExitCode;

use chrono::Utc;
use clap::{Args, Subcommand};
use reqwest::{Client, RequestBuilder};
use serde_json::{Value, json};

use crate::remote::{Answer, CallError, encode, send};
use table::{Table, ago, cell, key_values, time_of};

/// Where the registry is and how to print; accepted before or after the subcommand.
#[derive(Debug, Args)]
pub struct Target {
    /// Base URL of the registry.
    #[arg(
        long,
        global = true,
        env = "DALS_URL",
        default_value = "http://127.0.0.1:8003",
        value_parser = crate::remote::parse_base_url
    )]
    pub url: String,
    /// Print the API's JSON answer as it came, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Arguments of `dals workers`.
#[derive(Debug, Args)]
pub struct WorkersArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(subcommand)]
    pub command: WorkersCommand,
}

/// `dals workers` subcommands.
#[derive(Debug, Subcommand)]
pub enum WorkersCommand {
    /// List workers (deregistered ones only with --status deregistered).
    List {
        /// registered, active, stale, offline or deregistered.
        #[arg(long)]
        status: Option<String>,
        /// A family code such as TM.
        #[arg(long)]
        family: Option<String>,
        /// A worker type such as truemark.
        #[arg(long = "type", value_name = "TYPE")]
        worker_type: Option<String>,
        /// A user id.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
    },
    /// One worker in full.
    Get {
        /// The worker's name.
        name: String,
    },
    /// Fleet counts per status and family, and the sweeper's state.
    Status,
    /// A worker's events, newest first.
    Events {
        /// The worker's name.
        name: String,
        /// How many events (1-500; the registry's default is 50).
        #[arg(long)]
        limit: Option<i64>,
        /// Only events older than this id (the "more" hint of the previous page).
        #[arg(long)]
        before: Option<i64>,
    },
}

/// Arguments of `dals catalog`.
#[derive(Debug, Args)]
pub struct CatalogArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(subcommand)]
    pub command: CatalogCommand,
}

/// `dals catalog` subcommands.
#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Every worker type with its model number, family and description.
    List,
    /// Add a worker type (and its family, when new).
    Add {
        /// The worker type, such as new-worker-type.
        worker_type: String,
        /// The family code, two upper-case letters such as NW.
        #[arg(long)]
        family: String,
        /// The generation, 1-99.
        #[arg(long)]
        generation: i64,
        /// What the worker type is.
        #[arg(long)]
        description: Option<String>,
        /// The family's name; required when the family is new.
        #[arg(long, value_name = "NAME")]
        family_name: Option<String>,
        /// The family's description, when the family is new.
        #[arg(long, value_name = "TEXT")]
        family_description: Option<String>,
    },
}

/// Runs `dals workers ...`.
pub async fn workers(args: &WorkersArgs) -> ExitCode {
    finish(run_workers(args).await)
}

/// Runs `dals catalog ...`.
pub async fn catalog(args: &CatalogArgs) -> ExitCode {
    finish(run_catalog(args).await)
}

/// A command's way of failing: the one line to print and the exit status.
struct Failure {
    message: String,
    code: u8,
}

impl From<CallError> for Failure {
    fn from(err: CallError) -> Self {
        let code = if matches!(err, CallError::Api { .. }) {
            1
        } else {
            3
        };
        Failure {
            message: err.message(),
            code,
        }
    }
}

fn finish(result: Result<String, Failure>) -> ExitCode {
    match result {
        Ok(out) => {
            print!("{out}");
            if !out.ends_with('\n') {
                println!();
            }
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// The registry at `--url` and the client that calls it.
struct Registry {
    client: Client,
    base: String,
}

impl Registry {
    fn new(target: &Target) -> Result<Self, Failure> {
        let client = crate::remote::client().map_err(|e| Failure {
            message: format!("cannot build an HTTP client: {e}"),
            code: 3,
        })?;
        Ok(Registry {
            client,
            base: target.url.trim_end_matches('/').to_string(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/workers{path}", self.base)
    }

    fn get(&self, path: &str) -> RequestBuilder {
        self.client.get(self.url(path))
    }
}

async fn run_workers(args: &WorkersArgs) -> Result<String, Failure> {
    let registry = Registry::new(&args.target)?;
    let json = args.target.json;
    match &args.command {
        WorkersCommand::List {
            status,
            family,
            worker_type,
            user,
        } => {
            let query: Vec<(&str, &String)> = [
                ("status", status),
                ("family", family),
                ("worker_type", worker_type),
                ("user_id", user),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
            .collect();
            let answer = send(registry.get("/list").query(&query)).await?;
            Ok(if json {
                answer.text
            } else {
                workers_table(&answer.body)
            })
        }
        WorkersCommand::Get { name } => {
            let answer = send(registry.get(&format!("/{}", encode(name)))).await?;
            Ok(if json {
                answer.text
            } else {
                worker_details(&answer.body)
            })
        }
        WorkersCommand::Status => {
            let answer = send(registry.get("/status")).await?;
            Ok(if json {
                answer.text
            } else {
                status_report(&registry.base, &answer.body)
            })
        }
        WorkersCommand::Events {
            name,
            limit,
            before,
        } => {
            let mut request = registry.get(&format!("/{}/events", encode(name)));
            if let Some(limit) = limit {
                request = request.query(&[("limit", limit)]);
            }
            if let Some(before) = before {
                request = request.query(&[("before", before)]);
            }
            let answer = send(request).await?;
            Ok(if json {
                answer.text
            } else {
                events_table(name, &answer.body)
            })
        }
    }
}

async fn run_catalog(args: &CatalogArgs) -> Result<String, Failure> {
    let registry = Registry::new(&args.target)?;
    let json = args.target.json;
    match &args.command {
        CatalogCommand::List => {
            let answer = send(registry.get("/models/families")).await?;
            Ok(if json {
                answer.text
            } else {
                catalog_table(&answer.body)
            })
        }
        CatalogCommand::Add {
            worker_type,
            family,
            generation,
            description,
            family_name,
            family_description,
        } => {
            let mut body = json!({
                "worker_type": worker_type,
                "family": family,
                "generation": generation,
            });
            for (field, value) in [
                ("description", description),
                ("family_name", family_name),
                ("family_description", family_description),
            ] {
                if let Some(value) = value {
                    body[field] = json!(value);
                }
            }
            let request = registry
                .client
                .post(registry.url("/models/catalog"))
                .json(&body);
            let Answer { body, text } = send(request).await?;
            Ok(if json { text } else { added_entry(&body) })
        }
    }
}

fn workers_table(workers: &Value) -> String {
    let now = Utc::now();
    let mut table = Table::new(&[
        "NAME",
        "TYPE",
        "MODEL",
        "SERIAL",
        "STATUS",
        "LAST HEARTBEAT",
        "USER",
    ]);
    for w in workers.as_array().into_iter().flatten() {
        table.row(vec![
            cell(&w["worker_name"]),
            cell(&w["worker_type"]),
            cell(&w["model_number"]),
            cell(&w["serial_number"]),
            cell(&w["status"]),
            last_heartbeat(w, now),
            cell(&w["user_id"]),
        ]);
    }
    format!(
        "{}{}\n",
        table.render(),
        plural(table.len() as i64, "worker")
    )
}

fn last_heartbeat(worker: &Value, now: chrono::DateTime<Utc>) -> String {
    time_of(&worker["heartbeat"]).map_or_else(|| "never".to_string(), |at| ago(at, now))
}

fn worker_details(w: &Value) -> String {
    let now = Utc::now();
    let when = |field: &str| match time_of(&w[field]) {
        Some(at) => format!("{} ({})", cell(&w[field]), ago(at, now)),
        None => cell(&w[field]),
    };
    let heartbeat = match time_of(&w["heartbeat"]) {
        Some(at) => format!(
            "{} ({}), {}",
            ago(at, now),
            cell(&w["last_heartbeat_iso"]),
            plural(w["heartbeat_count"].as_i64().unwrap_or(0), "heartbeat")
        ),
        None => "never".to_string(),
    };
    key_values(&[
        ("name", cell(&w["worker_name"])),
        ("type", cell(&w["worker_type"])),
        (
            "model",
            format!(
                "{} (family {}, generation {})",
                cell(&w["model_number"]),
                cell(&w["family"]),
                cell(&w["generation"])
            ),
        ),
        ("serial", cell(&w["serial_number"])),
        (
            "status",
            format!("{} since {}", cell(&w["status"]), when("status_changed_at")),
        ),
        ("api_url", cell(&w["api_url"])),
        ("user", cell(&w["user_id"])),
        ("deployed", when("deployed_iso")),
        ("last heartbeat", heartbeat),
        ("metadata", cell(&w["metadata"])),
    ])
}

const STATUSES: [&str; 5] = ["registered", "active", "stale", "offline", "deregistered"];

fn status_report(base: &str, s: &Value) -> String {
    let available = if s["available"] == json!(true) {
        "available"
    } else {
        "NOT available"
    };
    let mut out = format!("Registry {base}: {available}\n");
    let counts = &s["counts"];
    out.push_str(&format!(
        "Workers: {} live ({}); {} deregistered\n",
        cell(&s["total_workers"]),
        STATUSES[..4]
            .iter()
            .map(|st| format!("{} {st}", cell(&counts[*st])))
            .collect::<Vec<_>>()
            .join(", "),
        cell(&counts["deregistered"])
    ));
    let mut families = Table::new(&[
        "FAMILY",
        "REGISTERED",
        "ACTIVE",
        "STALE",
        "OFFLINE",
        "DEREGISTERED",
    ]);
    for (family, by_status) in s["by_family"].as_object().into_iter().flatten() {
        let mut row = vec![family.clone()];
        row.extend(
            STATUSES
                .iter()
                .map(|st| by_status[*st].as_i64().unwrap_or(0).to_string()),
        );
        families.row(row);
    }
    if !families.is_empty() {
        out.push('\n');
        out.push_str(&families.render());
        out.push('\n');
    }
    let brake = &s["brake"];
    if brake.is_object() {
        if brake["engaged"] == json!(true) {
            out.push_str(&format!(
                "Sweeper brake: ENGAGED since {}, holding {} stale transition(s) of {} live \
                 workers (release: POST /api/workers/liveness/release)\n",
                cell(&brake["held_since"]),
                cell(&brake["held_transitions"]),
                cell(&brake["live_workers"])
            ));
        } else {
            out.push_str("Sweeper brake: not engaged\n");
        }
    }
    if let Some(until) = s["grace_until"].as_str() {
        out.push_str(&format!(
            "Outage grace: no worker is marked stale before {until}\n"
        ));
    }
    if let Some(at) = time_of(&s["sweeper"]["last_sweep_at"]) {
        out.push_str(&format!(
            "Last sweep: {} by {}\n",
            ago(at, Utc::now()),
            cell(&s["sweeper"]["instance"])
        ));
    }
    out
}

fn events_table(name: &str, answer: &Value) -> String {
    let now = Utc::now();
    let mut table = Table::new(&["ID", "WHEN", "AT", "KIND", "FROM", "TO", "REASON"]);
    for e in answer["events"].as_array().into_iter().flatten() {
        table.row(vec![
            cell(&e["id"]),
            time_of(&e["at"]).map_or_else(String::new, |at| ago(at, now)),
            cell(&e["at"]),
            cell(&e["kind"]),
            cell(&e["from_status"]),
            cell(&e["to_status"]),
            cell(&e["reason"]),
        ]);
    }
    let mut out = table.render();
    out.push_str(&format!(
        "{} of {name}",
        plural(table.len() as i64, "event")
    ));
    if let Some(next) = answer["next_before"].as_i64() {
        out.push_str(&format!("; older ones with --before {next}"));
    }
    out.push('\n');
    out
}

fn catalog_table(families: &Value) -> String {
    let mut table = Table::new(&[
        "TYPE",
        "MODEL",
        "FAMILY",
        "FAMILY NAME",
        "GEN",
        "DESCRIPTION",
    ]);
    let families = families.as_array().map(Vec::as_slice).unwrap_or_default();
    for e in families
        .iter()
        .flat_map(|f| f["entries"].as_array().into_iter().flatten())
    {
        table.row(vec![
            cell(&e["worker_type"]),
            cell(&e["model_number"]),
            cell(&e["family"]),
            cell(&e["family_name"]),
            cell(&e["generation"]),
            cell(&e["description"]),
        ]);
    }
    format!(
        "{}{} in {}\n",
        table.render(),
        plural(table.len() as i64, "worker type"),
        match families.len() {
            1 => "1 family".to_string(),
            n => format!("{n} families"),
        }
    )
}

fn added_entry(e: &Value) -> String {
    let mut out = format!(
        "added {} as {}\n",
        cell(&e["worker_type"]),
        cell(&e["model_number"])
    );
    out.push_str(&key_values(&[
        (
            "family",
            format!("{} {}", cell(&e["family"]), cell(&e["family_name"])),
        ),
        ("generation", cell(&e["generation"])),
        ("description", cell(&e["description"])),
    ]));
    out
}

/// `1 worker`, `3 workers`.
fn plural(count: i64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}
