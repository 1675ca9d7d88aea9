//! The operator CLI against a running registry: `dals workers list|get|status|events` and
//! `dals catalog list|add`, as tables for people and as the API's JSON for scripts, and how
//! it fails.

mod common;

use std::process::{Command, Output};

use common::{TestApp, json};
use serde_json::Value;

const DALS: &str = env!("CARGO_BIN_EXE_dals");

/// Runs `dals ARGS` with `DALS_URL` unset (or set to `url_env`) and returns its output.
async fn dals_env(url_env: Option<&str>, args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let url_env = url_env.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(DALS);
        cmd.args(&args).env_remove("DALS_URL");
        if let Some(url) = url_env {
            cmd.env("DALS_URL", url);
        }
        cmd.output().expect("run dals")
    })
    .await
    .expect("join")
}

/// Runs `dals ARGS --url <app>` and asserts it succeeded; returns stdout.
async fn ok(app: &TestApp, args: &[&str]) -> String {
    let mut args = args.to_vec();
    args.extend(["--url", &app.base]);
    let out = dals_env(None, &args).await;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "dals {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs `dals ARGS --url <app>`, asserts it failed with `code` and printed one line on stderr
/// and nothing on stdout; returns that line.
async fn fails(app: &TestApp, args: &[&str], code: i32) -> String {
    let mut args = args.to_vec();
    args.extend(["--url", &app.base]);
    let out = dals_env(None, &args).await;
    one_error_line(&out, code)
}

fn one_error_line(out: &Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0].to_string()
}

/// A rendered table as rows of cells, cut at the columns of its header line, asserting every
/// cell starts exactly where its header does.
fn table(text: &str, headers: &[&str]) -> Vec<Vec<String>> {
    let mut lines = text.lines();
    let header = lines.next().expect("a header line");
    let mut starts = Vec::new();
    for h in headers {
        let at = header
            .find(h)
            .unwrap_or_else(|| panic!("{h} in {header:?}"));
        starts.push(header[..at].chars().count());
    }
    assert_eq!(
        header.split("  ").filter(|s| !s.is_empty()).count(),
        headers.len(),
        "{header:?}"
    );
    let mut rows = Vec::new();
    for line in lines {
        if line.chars().count() < *starts.last().unwrap() {
            break; // the summary line under the table
        }
        let chars: Vec<char> = line.chars().collect();
        let mut row = Vec::new();
        for (i, &start) in starts.iter().enumerate() {
            let end = starts.get(i + 1).copied().unwrap_or(chars.len());
            assert!(
                start == 0 || chars[start - 1] == ' ',
                "cell {i} of {line:?} does not start at its column"
            );
            assert_ne!(chars[start], ' ', "cell {i} of {line:?} is misaligned");
            row.push(
                chars[start..end]
                    .iter()
                    .collect::<String>()
                    .trim()
                    .to_string(),
            );
        }
        rows.push(row);
    }
    rows
}

async fn fleet(app: &TestApp) {
    app.register("Josephine-user_123", "truemark").await;
    app.register("Regent-7", "regent").await;
    assert_eq!(app.heartbeat("Josephine-user_123").await, 200);
}

#[tokio::test]
async fn workers_list_prints_an_aligned_table_or_the_apis_json() {
    let app = TestApp::spawn().await;
    fleet(&app).await;

    let out = ok(&app, &["workers", "list"]).await;
    let headers = [
        "NAME",
        "TYPE",
        "MODEL",
        "SERIAL",
        "STATUS",
        "LAST HEARTBEAT",
        "USER",
    ];
    let rows = table(&out, &headers);
    assert_eq!(rows.len(), 2, "{out}");
    let josephine = app.worker("Josephine-user_123").await;
    assert_eq!(rows[0][0], "Josephine-user_123");
    assert_eq!(rows[0][2], "DMN-TM-01");
    assert_eq!(rows[0][3], josephine["serial_number"]);
    assert_eq!(rows[0][4], "active");
    assert!(
        rows[0][5].ends_with(" s ago") && rows[0][5].len() <= "119 s ago".len(),
        "{out}"
    );
    assert_eq!(rows[1][0], "Regent-7");
    assert_eq!(rows[1][4], "registered");
    assert_eq!(rows[1][5], "never");
    assert_eq!(rows[1][6], "user_123");
    assert!(out.ends_with("2 workers\n"), "{out}");

    // --json is the API's answer, as it came.
    let printed: Value = serde_json::from_str(&ok(&app, &["workers", "list", "--json"]).await)
        .expect("--json prints JSON");
    let api = json(app.get("/api/workers/list").await, 200).await;
    assert_eq!(printed, api);

    // Filters go to the API.
    for (args, expect) in [
        (vec!["--status", "active"], vec!["Josephine-user_123"]),
        (vec!["--family", "RG"], vec!["Regent-7"]),
        (vec!["--type", "truemark"], vec!["Josephine-user_123"]),
        (vec!["--user", "nobody"], vec![]),
    ] {
        let mut cmd = vec!["workers", "list", "--json"];
        cmd.extend(&args);
        let listed: Value = serde_json::from_str(&ok(&app, &cmd).await).unwrap();
        let names: Vec<&str> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["worker_name"].as_str().unwrap())
            .collect();
        assert_eq!(names, expect, "{args:?}");
    }
    let out = ok(&app, &["workers", "list", "--user", "nobody"]).await;
    assert_eq!(out.lines().nth(1), Some("0 workers"), "{out}");

    // A bad filter is the API's message, on one line, with a non-zero exit.
    let line = fails(&app, &["workers", "list", "--status", "dead"], 1).await;
    assert!(line.contains("status: must be one of"), "{line}");
    assert!(line.contains("422"), "{line}");
}

#[tokio::test]
async fn workers_get_shows_one_worker() {
    let app = TestApp::spawn().await;
    fleet(&app).await;
    let out = ok(&app, &["workers", "get", "Josephine-user_123"]).await;
    let w = app.worker("Josephine-user_123").await;
    let value_of = |key: &str| -> String {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} in {out}"));
        line[key.len()..].trim().to_string()
    };
    assert_eq!(value_of("name"), "Josephine-user_123");
    assert_eq!(value_of("serial"), w["serial_number"]);
    assert_eq!(value_of("model"), "DMN-TM-01 (family TM, generation 1)");
    assert!(value_of("status").starts_with("active since "), "{out}");
    let beat = value_of("last heartbeat");
    assert!(
        beat.contains(" s ago (") && beat.ends_with("), 1 heartbeat"),
        "{beat}"
    );
    // Values line up.
    let columns: Vec<usize> = out
        .lines()
        .map(|l| l.len() - l[l.find("  ").unwrap()..].trim_start().len())
        .collect();
    assert!(columns.windows(2).all(|w| w[0] == w[1]), "{out}");

    let printed: Value =
        serde_json::from_str(&ok(&app, &["workers", "get", "Josephine-user_123", "--json"]).await)
            .unwrap();
    assert_eq!(printed, w);

    // Names are percent-encoded.
    app.register("rack/7 node?", "goat").await;
    let out = ok(&app, &["workers", "get", "rack/7 node?"]).await;
    assert!(out.contains("DMN-GT-01"), "{out}");

    let line = fails(&app, &["workers", "get", "nobody"], 1).await;
    assert!(line.contains("no worker named \"nobody\""), "{line}");
    assert!(line.contains("404"), "{line}");
}

#[tokio::test]
async fn workers_status_summarises_the_fleet() {
    let app = TestApp::spawn().await;
    fleet(&app).await;
    let out = ok(&app, &["workers", "status"]).await;
    assert!(
        out.starts_with(&format!("Registry {}: available\n", app.base)),
        "{out}"
    );
    assert!(
        out.contains(
            "Workers: 2 live (1 registered, 1 active, 0 stale, 0 offline); 0 deregistered"
        ),
        "{out}"
    );
    let table_text: String = out
        .lines()
        .skip_while(|l| !l.starts_with("FAMILY"))
        .take_while(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    let rows = table(
        &table_text,
        &[
            "FAMILY",
            "REGISTERED",
            "ACTIVE",
            "STALE",
            "OFFLINE",
            "DEREGISTERED",
        ],
    );
    assert_eq!(
        rows,
        [
            ["RG", "1", "0", "0", "0", "0"],
            ["TM", "0", "1", "0", "0", "0"]
        ]
    );
    assert!(out.contains("Sweeper brake: not engaged"), "{out}");

    let printed: Value =
        serde_json::from_str(&ok(&app, &["workers", "status", "--json"]).await).expect("JSON");
    assert_eq!(printed["available"], true);
    assert_eq!(printed["total_workers"], 2);
    assert_eq!(printed["model_families"], serde_json::json!(["RG", "TM"]));
}

#[tokio::test]
async fn workers_events_shows_a_timeline() {
    let app = TestApp::spawn().await;
    fleet(&app).await;
    let out = ok(&app, &["workers", "events", "Josephine-user_123"]).await;
    let rows = table(&out, &["ID", "WHEN", "AT", "KIND", "FROM", "TO", "REASON"]);
    let kinds: Vec<&str> = rows.iter().map(|r| r[3].as_str()).collect();
    assert_eq!(kinds, ["first_heartbeat", "registered"], "{out}");
    assert_eq!(rows[0][4], "registered");
    assert_eq!(rows[0][5], "active");
    assert_eq!(rows[1][4], "-");
    assert!(rows[0][1].ends_with(" s ago"), "{out}");
    assert!(out.ends_with("2 events of Josephine-user_123\n"), "{out}");

    // One page at a time, with the way to the next.
    let out = ok(
        &app,
        &["workers", "events", "Josephine-user_123", "--limit", "1"],
    )
    .await;
    let rows = table(&out, &["ID", "WHEN", "AT", "KIND", "FROM", "TO", "REASON"]);
    assert_eq!(rows.len(), 1);
    let next = rows[0][0].clone();
    assert!(
        out.ends_with(&format!(
            "1 event of Josephine-user_123; older ones with --before {next}\n"
        )),
        "{out}"
    );
    let older = ok(
        &app,
        &[
            "workers",
            "events",
            "Josephine-user_123",
            "--before",
            &next,
            "--json",
        ],
    )
    .await;
    let older: Value = serde_json::from_str(&older).unwrap();
    assert_eq!(older["events"][0]["kind"], "registered");
    assert_eq!(older["events"].as_array().unwrap().len(), 1);

    let line = fails(
        &app,
        &["workers", "events", "Josephine-user_123", "--limit", "0"],
        1,
    )
    .await;
    assert!(line.contains("limit: must be from 1 to 500"), "{line}");
    let line = fails(&app, &["workers", "events", "nobody"], 1).await;
    assert!(line.contains("no worker named"), "{line}");
}

#[tokio::test]
async fn catalog_list_and_add() {
    let app = TestApp::spawn().await;
    let headers = [
        "TYPE",
        "MODEL",
        "FAMILY",
        "FAMILY NAME",
        "GEN",
        "DESCRIPTION",
    ];
    let out = ok(&app, &["catalog", "list"]).await;
    let rows = table(&out, &headers);
    assert_eq!(rows.len(), 8, "{out}");
    assert!(
        rows.iter()
            .any(|r| r[..5] == ["truemark-v2", "DMN-TM-02", "TM", "TrueMark", "2"]),
        "{out}"
    );
    assert!(out.ends_with("8 worker types in 6 families\n"), "{out}");

    // A new type in a new family.
    let out = ok(
        &app,
        &[
            "catalog",
            "add",
            "new-worker-type",
            "--family",
            "NW",
            "--generation",
            "1",
            "--family-name",
            "New Worker",
            "--description",
            "The new kind",
        ],
    )
    .await;
    assert!(
        out.starts_with("added new-worker-type as DMN-NW-01\n"),
        "{out}"
    );
    assert!(out.contains("family       NW New Worker\n"), "{out}");
    let catalog = json(app.get("/api/workers/models/catalog").await, 200).await;
    assert_eq!(catalog["new-worker-type"], "DMN-NW-01");

    // --json prints the entry the API answered.
    let out = ok(
        &app,
        &[
            "catalog",
            "add",
            "truemark-v3",
            "--family",
            "TM",
            "--generation",
            "3",
            "--json",
        ],
    )
    .await;
    let printed: Value = serde_json::from_str(&out).unwrap();
    let entry = json(
        app.get("/api/workers/models/catalog/truemark-v3").await,
        200,
    )
    .await;
    assert_eq!(printed, entry);

    let out = ok(&app, &["catalog", "list"]).await;
    let rows = table(&out, &headers);
    assert!(
        rows.iter().any(|r| r
            == &[
                "new-worker-type",
                "DMN-NW-01",
                "NW",
                "New Worker",
                "1",
                "The new kind"
            ]),
        "{out}"
    );
    assert!(out.ends_with("10 worker types in 7 families\n"), "{out}");
    let families: Value =
        serde_json::from_str(&ok(&app, &["catalog", "list", "--json"]).await).expect("JSON");
    assert_eq!(families.as_array().unwrap().len(), 7);

    // Refusals are the API's message on one line.
    let line = fails(
        &app,
        &[
            "catalog",
            "add",
            "new-worker-type",
            "--family",
            "NW",
            "--generation",
            "2",
        ],
        1,
    )
    .await;
    assert!(line.contains("already in the catalog"), "{line}");
    let line = fails(
        &app,
        &[
            "catalog",
            "add",
            "other",
            "--family",
            "QQ",
            "--generation",
            "1",
        ],
        1,
    )
    .await;
    assert!(line.contains("family_name: is required"), "{line}");
    let line = fails(
        &app,
        &[
            "catalog",
            "add",
            "other",
            "--family",
            "qq",
            "--generation",
            "1",
        ],
        1,
    )
    .await;
    assert!(
        line.contains("family: a family code is two upper-case letters"),
        "{line}"
    );
    let line = fails(
        &app,
        &[
            "catalog",
            "add",
            "other",
            "--family",
            "TM",
            "--generation",
            "100",
        ],
        1,
    )
    .await;
    assert!(
        line.contains("generation: must be a number from 1 to 99"),
        "{line}"
    );
    // A command-line mistake is clap's (exit 2), before any request.
    let out = dals_env(None, &["catalog", "add", "other", "--family", "TM"]).await;
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn the_registry_url_comes_from_dals_url_or_flags_anywhere() {
    let app = TestApp::spawn().await;
    fleet(&app).await;
    // DALS_URL, with a trailing slash.
    let out = dals_env(Some(&format!("{}/", app.base)), &["workers", "list"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Regent-7"));
    // Flags before the subcommand.
    let out = dals_env(
        None,
        &["workers", "--url", &app.base, "--json", "get", "Regent-7"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let w: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(w["worker_type"], "regent");
}

#[tokio::test]
async fn an_unreachable_registry_says_so() {
    // Bind and drop a port so nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    for args in [
        vec!["workers", "list", "--url", &url],
        vec!["workers", "status", "--url", &url, "--json"],
        vec!["catalog", "list", "--url", &url],
    ] {
        let out = dals_env(None, &args).await;
        let line = one_error_line(&out, 3);
        assert!(
            line.contains(&format!("cannot reach {url}/api/workers/"))
                && line.ends_with("is the registry running?"),
            "{line}"
        );
    }
    // The default URL is the registry's default port.
    let out = dals_env(None, &["workers", "status", "--help"]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("http://127.0.0.1:8003"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_bad_url_is_a_command_line_mistake() {
    for args in [
        vec!["workers", "list", "--url", "not-a-url"],
        vec!["verify", "--url", "not-a-url"],
        vec!["catalog", "list", "--url", "ftp://h"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dals"))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("is not a registry URL"),
            "{args:?}"
        );
    }
}
