//! The design document's API, end to end over HTTP against a real PostgreSQL.

mod common;

use common::{TestApp, encode, json};
use serde_json::{Value, json};

fn is_serial_of(serial: &str, model: &str) -> bool {
    let Some(rest) = serial.strip_prefix(model).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let parts: Vec<&str> = rest.split('-').collect();
    parts.len() == 2
        && parts[0].len() == 8
        && parts[1].len() == 5
        && rest
            .chars()
            .all(|c| c == '-' || c.is_ascii_digit() || ('A'..='F').contains(&c))
}

#[tokio::test]
async fn registration_answers_with_the_documents_fields() {
    let app = TestApp::spawn().await;
    let before = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    let w = app.register("Josephine-01", "truemark").await;
    let after = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;

    for field in [
        "worker_name",
        "worker_type",
        "model_number",
        "serial_number",
        "api_url",
        "user_id",
        "deployed_at",
        "deployed_iso",
        "status",
        "heartbeat",
    ] {
        assert!(w.get(field).is_some(), "missing {field} in {w}");
    }
    assert_eq!(w["worker_name"], "Josephine-01");
    assert_eq!(w["worker_type"], "truemark");
    assert_eq!(w["model_number"], "DMN-TM-01");
    assert_eq!(w["api_url"], "http://localhost:8080");
    assert_eq!(w["user_id"], "user_123");
    assert_eq!(w["status"], "registered");
    assert_eq!(w["heartbeat"], Value::Null);
    assert_eq!(w["warnings"], json!([]));
    let serial = w["serial_number"].as_str().unwrap();
    assert!(is_serial_of(serial, "DMN-TM-01"), "{serial}");

    let deployed_at = w["deployed_at"].as_f64().unwrap();
    assert!(deployed_at >= before - 2.0 && deployed_at <= after + 2.0);
    let iso = w["deployed_iso"].as_str().unwrap();
    assert!(iso.ends_with('Z'), "{iso}");
    let parsed = chrono::DateTime::parse_from_rfc3339(iso).unwrap();
    assert!((parsed.timestamp_millis() as f64 / 1000.0 - deployed_at).abs() < 0.001);

    // The counter is the deployment's Unix second modulo 2^20, from the database clock.
    let counter = u32::from_str_radix(&serial[serial.len() - 5..], 16).unwrap();
    assert_eq!(counter as i64, (deployed_at.floor() as i64) % (1 << 20));

    // Stored: one open deployment and a `registered` event.
    let (open,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM deployments WHERE worker_name = 'Josephine-01' AND ended_at IS NULL",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(open, 1);
    let kinds: Vec<String> =
        sqlx::query_scalar("SELECT kind FROM worker_events WHERE worker_name = 'Josephine-01'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(kinds, ["registered"]);
}

#[tokio::test]
async fn heartbeat_makes_a_worker_active_and_is_recorded() {
    let app = TestApp::spawn().await;
    let w = app.register("Josephine-01", "truemark").await;
    let r = app
        .post(
            "/api/workers/heartbeat",
            &json!({ "worker_name": "Josephine-01" }),
        )
        .await;
    assert_eq!(
        json(r, 200).await,
        json!({ "status": "updated", "worker": "Josephine-01" })
    );
    let got = app.worker("Josephine-01").await;
    assert_eq!(got["status"], "active");
    assert_eq!(got["heartbeat_count"], 1);
    let beat = got["heartbeat"].as_f64().expect("heartbeat epoch seconds");
    assert!(beat >= w["deployed_at"].as_f64().unwrap());
    assert!(got["last_heartbeat_iso"].as_str().unwrap().ends_with('Z'));

    assert_eq!(app.heartbeat("Josephine-01").await, 200);
    assert_eq!(app.worker("Josephine-01").await["heartbeat_count"], 2);
    let rows: (i64,) = sqlx::query_as("SELECT count(*) FROM heartbeats WHERE worker_name = $1")
        .bind("Josephine-01")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows.0, 2);
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT kind FROM worker_events WHERE worker_name = 'Josephine-01' ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(kinds, ["registered", "first_heartbeat"]);
}

#[tokio::test]
async fn heartbeat_never_creates_a_worker() {
    let app = TestApp::spawn().await;
    let r = app
        .post("/api/workers/heartbeat", &json!({ "worker_name": "ghost" }))
        .await;
    let body = json(r, 404).await;
    assert_eq!(body["error"], "worker_not_found");
    assert!(body["message"].as_str().unwrap().contains("ghost"));
    assert_eq!(app.get("/api/workers/ghost").await.status(), 404);
    let n: (i64,) = sqlx::query_as("SELECT count(*) FROM workers")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(n.0, 0);
}

#[tokio::test]
async fn a_heartbeat_from_an_old_deployment_is_refused_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let old = app.register("w1", "regent").await;
    let new = app.register("w1", "regent").await;
    let old_serial = old["serial_number"].as_str().unwrap();
    let new_serial = new["serial_number"].as_str().unwrap();
    assert_ne!(old_serial, new_serial);

    let r = app
        .post(
            "/api/workers/heartbeat",
            &json!({ "worker_name": "w1", "serial_number": old_serial }),
        )
        .await;
    let body = json(r, 409).await;
    assert_eq!(body["error"], "serial_mismatch");
    assert_eq!(body["current_serial_number"], new_serial);
    let w = app.worker("w1").await;
    assert_eq!(w["status"], "registered");
    assert_eq!(w["heartbeat_count"], 0);

    let r = app
        .post(
            "/api/workers/heartbeat",
            &json!({ "worker_name": "w1", "serial_number": new_serial }),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(app.worker("w1").await["status"], "active");
}

#[tokio::test]
async fn re_registering_starts_a_new_deployment_and_keeps_the_old_one() {
    let app = TestApp::spawn().await;
    let first = app.register("w1", "truemark").await;
    assert_eq!(app.heartbeat("w1").await, 200);
    let second = app.register("w1", "truemark-v2").await;
    assert_eq!(second["model_number"], "DMN-TM-02");
    assert_eq!(second["status"], "registered");
    assert_eq!(second["heartbeat"], Value::Null);
    assert_eq!(second["heartbeat_count"], 0);

    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT serial_number, end_reason FROM deployments WHERE worker_name = 'w1'
         ORDER BY deployed_at",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].0, first["serial_number"].as_str().unwrap());
    assert_eq!(rows[0].1.as_deref(), Some("re-registered"));
    assert_eq!(rows[1].0, second["serial_number"].as_str().unwrap());
    assert_eq!(rows[1].1, None);
    let kinds: Vec<String> =
        sqlx::query_scalar("SELECT kind FROM worker_events WHERE worker_name = 'w1' ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(kinds, ["registered", "first_heartbeat", "re_registered"]);
}

#[tokio::test]
async fn list_filters_and_sorts() {
    let app = TestApp::spawn().await;
    app.register("tm-a", "truemark").await;
    app.register("rg-b", "regent").await;
    app.register("bb-c", "bubble").await;
    app.heartbeat("rg-b").await;

    let all = json(app.get("/api/workers/list").await, 200).await;
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["worker_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tm-a", "rg-b", "bb-c"], "oldest deployment first");

    let names_of = |v: Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|w| w["worker_name"].as_str().unwrap().to_string())
            .collect()
    };
    let q = |p: &'static str| app.get(p);
    assert_eq!(
        names_of(json(q("/api/workers/list?status=active").await, 200).await),
        ["rg-b"]
    );
    assert_eq!(
        names_of(json(q("/api/workers/list?family=BB").await, 200).await),
        ["bb-c"]
    );
    assert_eq!(
        names_of(json(q("/api/workers/list?worker_type=truemark").await, 200).await),
        ["tm-a"]
    );
    assert_eq!(
        names_of(json(q("/api/workers/list?user_id=nobody").await, 200).await),
        Vec::<String>::new()
    );
    assert_eq!(
        names_of(json(q("/api/workers/list?sort=-deployed_at").await, 200).await),
        ["bb-c", "rg-b", "tm-a"]
    );
    assert_eq!(
        names_of(json(q("/api/workers/list?sort=name&limit=2").await, 200).await),
        ["bb-c", "rg-b"]
    );
    assert_eq!(
        names_of(json(q("/api/workers/list?sort=name&limit=2&offset=2").await, 200).await),
        ["tm-a"]
    );

    for (path, field) in [
        ("/api/workers/list?status=dead", "status"),
        ("/api/workers/list?family=tm", "family"),
        ("/api/workers/list?sort=random", "sort"),
        ("/api/workers/list?limit=0", "limit"),
        ("/api/workers/list?limit=abc", "limit"),
        ("/api/workers/list?offset=-", "offset"),
        ("/api/workers/list?limit=99999999999999999999", "limit"),
    ] {
        let body = json(app.get(path).await, 422).await;
        assert_eq!(body["field"], field, "{path}: {body}");
    }
    let body = json(app.get("/api/workers/list?limit=abc").await, 422).await;
    assert_eq!(body["rule"], "must be an integer", "{body}");
    let body = json(app.get("/api/workers/list?limit=5&limit=6").await, 422).await;
    assert_eq!(
        (body["field"].as_str(), body["rule"].as_str()),
        (Some("limit"), Some("must be given once"))
    );
    // A misspelt filter is refused rather than ignored (which would answer the whole fleet).
    let body = json(app.get("/api/workers/list?famly=TM").await, 422).await;
    assert_eq!(body["field"], "famly", "{body}");
    assert!(body["rule"].as_str().unwrap().contains("family"), "{body}");
}

#[tokio::test]
async fn every_accepted_name_is_retrievable() {
    let app = TestApp::spawn().await;
    for name in [
        "a/b",
        "with space",
        "q?x=1#frag",
        "pct%2Fsign",
        "ünïcödé-名前",
        "...",
        &"n".repeat(128),
    ] {
        let w = app.register(name, "truemark").await;
        assert_eq!(w["worker_name"], name);
        assert_eq!(app.worker(name).await["worker_name"], name);
        assert_eq!(app.heartbeat(name).await, 200, "{name}");
    }
    for reserved in [
        "list",
        "status",
        "register",
        "heartbeat",
        "models",
        ".",
        "..",
    ] {
        let r = app
            .post(
                "/api/workers/register",
                &json!({"name": reserved, "worker_type": "truemark",
                        "api_url": "http://h", "user_id": "u"}),
            )
            .await;
        assert_eq!(json(r, 422).await["field"], "name", "{reserved}");
    }
    assert_eq!(
        app.get(&format!("/api/workers/{}", encode("no such")))
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn status_counts_and_families() {
    let app = TestApp::spawn().await;
    let empty = json(app.get("/api/workers/status").await, 200).await;
    assert_eq!(empty["available"], true);
    assert_eq!(empty["total_workers"], 0);
    assert_eq!(empty["model_families"], json!([]));

    app.register("a", "truemark").await;
    app.register("b", "regent").await;
    app.register("c", "bubble").await;
    app.register("d", "regent-pro").await;
    app.heartbeat("a").await;
    app.heartbeat("b").await;
    let s = json(app.get("/api/workers/status").await, 200).await;
    assert_eq!(s["total_workers"], 4);
    assert_eq!(s["active_workers"], 2);
    assert_eq!(s["model_families"], json!(["BB", "RG", "TM"]));
    assert_eq!(s["counts"]["registered"], 2);
    assert_eq!(s["counts"]["active"], 2);
}

#[tokio::test]
async fn catalog_is_the_documents() {
    let app = TestApp::spawn().await;
    let c = json(app.get("/api/workers/models/catalog").await, 200).await;
    assert_eq!(
        c,
        json!({
            "truemark": "DMN-TM-01", "truemark-v2": "DMN-TM-02",
            "regent": "DMN-RG-01", "regent-pro": "DMN-RG-02",
            "goat": "DMN-GT-01", "skg": "DMN-SK-01", "bubble": "DMN-BB-01",
            "generic": "DMN-GN-01",
        })
    );
}

#[tokio::test]
async fn unknown_worker_types_register_as_generic_with_a_warning() {
    let app = TestApp::spawn().await;
    let w = app.register("x", "new-worker-type").await;
    assert_eq!(w["model_number"], "DMN-GN-01");
    assert_eq!(w["worker_type"], "new-worker-type");
    assert!(is_serial_of(
        w["serial_number"].as_str().unwrap(),
        "DMN-GN-01"
    ));
    let warnings = w["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].as_str().unwrap().contains("new-worker-type"));
}

#[tokio::test]
async fn unknown_worker_types_can_be_refused() {
    let app = TestApp::spawn_with(|s| s.registry.reject_unknown_worker_types = true).await;
    let r = app
        .post(
            "/api/workers/register",
            &json!({"name": "x", "worker_type": "nope", "api_url": "http://h", "user_id": "u"}),
        )
        .await;
    let body = json(r, 422).await;
    assert_eq!(body["field"], "worker_type");
    assert_eq!(app.get("/api/workers/x").await.status(), 404);
    app.register("y", "goat").await;
}

#[tokio::test]
async fn bad_input_gets_clear_json_errors() {
    let app = TestApp::spawn().await;
    let valid = json!({"name": "n", "worker_type": "truemark",
                       "api_url": "http://localhost:8080", "user_id": "u"});
    let with = |field: &str, value: Value| {
        let mut body = valid.clone();
        if value.is_null() {
            body.as_object_mut().unwrap().remove(field);
        } else {
            body[field] = value;
        }
        body
    };
    let cases = [
        (with("name", Value::Null), "name", "is required"),
        (
            with("worker_type", Value::Null),
            "worker_type",
            "is required",
        ),
        (with("api_url", Value::Null), "api_url", "is required"),
        (with("user_id", Value::Null), "user_id", "is required"),
        (with("name", json!("")), "name", "1-128"),
        (with("name", json!("x".repeat(129))), "name", "1-128"),
        (with("name", json!("tab\there")), "name", "control"),
        (with("name", json!(42)), "name", "string"),
        (with("api_url", json!("ftp://x")), "api_url", "http"),
        (with("api_url", json!("not a url")), "api_url", "http"),
        (
            with("api_url", json!(format!("http://h/{}", "a".repeat(2048)))),
            "api_url",
            "2048",
        ),
        (with("user_id", json!("")), "user_id", "1-128"),
        (with("metadata", json!([1])), "metadata", "JSON object"),
        // Strings a URL parser would normalise into URLs are not URLs as sent.
        (with("api_url", json!("http:x")), "api_url", "http"),
        (with("api_url", json!(" http://x")), "api_url", "http"),
        (with("api_url", json!("http://x y")), "api_url", "http"),
        (with("name", json!(" ")), "name", "blank"),
        (with("name", json!("w ")), "name", "white space"),
        (with("user_id", json!(" u")), "user_id", "white space"),
        (
            with("worker_type", json!("truemark ")),
            "worker_type",
            "white space",
        ),
    ];
    for (body, field, rule) in cases {
        let r = app.post("/api/workers/register", &body).await;
        let e = json(r, 422).await;
        assert_eq!(e["error"], "validation_failed", "{body}");
        assert_eq!(e["field"], field, "{body}: {e}");
        assert!(e["rule"].as_str().unwrap().contains(rule), "{body}: {e}");
        assert!(e["message"].as_str().unwrap().contains(field));
    }

    for raw in ["{not json", "", "[1,2]", "\"text\""] {
        let e = json(app.post_raw("/api/workers/register", raw).await, 400).await;
        assert!(
            e["error"].is_string() && e["message"].is_string(),
            "{raw}: {e}"
        );
    }
    let e = json(app.post_raw("/api/workers/heartbeat", "{}").await, 422).await;
    assert_eq!(e["field"], "worker_name");

    let huge = format!(r#"{{"name": "{}"}}"#, "a".repeat(70 * 1024));
    let e = json(app.post_raw("/api/workers/register", huge).await, 413).await;
    assert_eq!(e["error"], "payload_too_large");

    let e = json(app.get("/api/nothing/here").await, 404).await;
    assert_eq!(e["error"], "not_found");
    let r = app
        .client
        .put(app.url("/api/workers/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(json(r, 405).await["error"], "method_not_allowed");
    let r = app.get("/api/workers/%FF%FE").await;
    assert!(r.status().is_client_error());
    json(r, 400).await;

    // Nothing above created a worker.
    let n: (i64,) = sqlx::query_as("SELECT count(*) FROM workers")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(n.0, 0);
}

#[tokio::test]
async fn simultaneous_registrations_never_collide() {
    let app = TestApp::spawn().await;
    let mut tasks = Vec::new();
    for i in 0..300 {
        let client = app.client.clone();
        let url = app.url("/api/workers/register");
        tasks.push(tokio::spawn(async move {
            // A third of them fight over the same few names.
            let name = if i % 3 == 0 {
                format!("same-{}", i % 4)
            } else {
                format!("burst-{i}")
            };
            let r = client
                .post(url)
                .json(&json!({"name": name, "worker_type": "truemark",
                              "api_url": "http://h:1", "user_id": "u"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()["serial_number"]
                .as_str()
                .unwrap()
                .to_string()
        }));
    }
    let mut serials = std::collections::HashSet::new();
    for t in tasks {
        assert!(serials.insert(t.await.unwrap()), "duplicate serial");
    }
    let (deployments, open, workers): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM deployments),
                (SELECT count(*) FROM deployments WHERE ended_at IS NULL),
                (SELECT count(*) FROM workers)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(deployments, 300);
    assert_eq!(workers, 200 + 4);
    assert_eq!(open, workers, "exactly one open deployment per name");
}

/// Many first registrations of one new name at once: they take turns, so each after the first
/// is a re-registration of the one before, and the history is one unbroken chain.
#[tokio::test]
async fn simultaneous_first_registrations_of_one_name_take_turns() {
    // Connections enough for all of them to be in the database at once.
    let app = TestApp::spawn_with(|s| s.database.max_connections = 24).await;
    const AT_ONCE: usize = 20;
    for round in 0..5 {
        let name = format!("fresh-{round}");
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(AT_ONCE));
        let mut tasks = Vec::new();
        for _ in 0..AT_ONCE {
            let (client, url, name, barrier) = (
                app.client.clone(),
                app.url("/api/workers/register"),
                name.clone(),
                barrier.clone(),
            );
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let r = client
                    .post(url)
                    .json(&json!({"name": name, "worker_type": "truemark",
                                  "api_url": "http://h:1", "user_id": "u"}))
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }));
        }
        for t in tasks {
            let (status, body) = t.await.unwrap();
            assert_eq!(status, 200, "{body}");
        }
        let events: Vec<(String, Option<String>, String)> = sqlx::query_as(
            "SELECT kind, from_status, serial_number FROM worker_events
             WHERE worker_name = $1 ORDER BY id",
        )
        .bind(&name)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        assert_eq!(events.len(), AT_ONCE);
        assert_eq!(
            (events[0].0.as_str(), events[0].1.as_deref()),
            ("registered", None)
        );
        for e in &events[1..] {
            assert_eq!(
                (e.0.as_str(), e.1.as_deref()),
                ("re_registered", Some("registered"))
            );
        }
        // Each deployment was closed by the next, in the order of the events.
        let deployments: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT serial_number, end_reason FROM deployments WHERE worker_name = $1
             ORDER BY deployed_at, serial_number",
        )
        .bind(&name)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        assert_eq!(deployments.len(), AT_ONCE);
        let open: Vec<_> = deployments.iter().filter(|d| d.1.is_none()).collect();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].0, events.last().unwrap().2);
        assert_eq!(app.worker(&name).await["serial_number"], open[0].0.as_str());
    }
}

/// A deregistration that waited on a registration of the same name deregisters the deployment
/// that registration made, and closes it.
#[tokio::test]
async fn a_deregistration_waiting_on_a_registration_closes_the_new_deployment() {
    let app = TestApp::spawn().await;
    app.register("w", "truemark").await;

    // A registration in flight: the new deployment is written, the worker row is held.
    let newer = "DMN-TM-01-00000000-00001";
    let mut registering = app.pool.begin().await.unwrap();
    for sql in [
        "UPDATE deployments SET ended_at = now(), end_reason = 're-registered'
         WHERE worker_name = 'w' AND ended_at IS NULL",
        "INSERT INTO deployments (serial_number, worker_name, worker_type, family, generation,
                                  model_number, api_url, user_id)
         VALUES ('DMN-TM-01-00000000-00001', 'w', 'truemark', 'TM', 1, 'DMN-TM-01',
                 'http://h:1', 'u')",
        "UPDATE workers SET serial_number = 'DMN-TM-01-00000000-00001', status = 'registered',
                            deployed_at = now(), status_changed_at = now()
         WHERE worker_name = 'w'",
    ] {
        sqlx::query(sql).execute(&mut *registering).await.unwrap();
    }
    let delete = common::in_background(app.client.delete(app.url("/api/workers/w")));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !delete.is_finished(),
        "the deregistration waits for the worker row"
    );
    registering.commit().await.unwrap();
    assert_eq!(delete.await.unwrap().0, 200);

    let w = app.worker("w").await;
    assert_eq!(w["status"], "deregistered");
    assert_eq!(w["serial_number"], newer);
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM deployments WHERE worker_name = 'w' AND ended_at IS NULL",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(open, 0, "the deployment the worker row names is closed");
    let (reason, serial): (String, String) = sqlx::query_as(
        "SELECT end_reason, serial_number FROM deployments WHERE worker_name = 'w'
         ORDER BY deployed_at DESC LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((reason.as_str(), serial.as_str()), ("deregistered", newer));
}

/// Serial numbers sent back must be serial numbers; misspelt fields are refused where the API
/// is ours and named in `warnings` where the design document's workers may send more.
#[tokio::test]
async fn serials_are_checked_and_unknown_fields_are_named() {
    let app = TestApp::spawn().await;
    let w = app.register("w", "truemark").await;
    let serial = w["serial_number"].as_str().unwrap();
    for bad in ["", "bogus", "dmn-tm-01-a7f3b9e1-89f2c"] {
        let e = json(
            app.post(
                "/api/workers/heartbeat",
                &json!({"worker_name": "w", "serial_number": bad}),
            )
            .await,
            422,
        )
        .await;
        assert_eq!(e["field"], "serial_number", "{bad}: {e}");
        let e = json(
            app.delete(&format!("/api/workers/w?serial_number={}", encode(bad)))
                .await,
            422,
        )
        .await;
        assert_eq!(e["field"], "serial_number", "{bad}: {e}");
    }
    // A well-formed serial of another deployment is still a 409.
    let e = json(
        app.post(
            "/api/workers/heartbeat",
            &json!({"worker_name": "w", "serial_number": "DMN-TM-01-00000000-00000"}),
        )
        .await,
        409,
    )
    .await;
    assert_eq!(e["current_serial_number"], serial);
    // Names in paths follow the name rule too.
    let long = "x".repeat(60_000);
    for path in [
        format!("/api/workers/{long}"),
        format!("/api/workers/{long}/events"),
        "/api/workers/events".to_string(),
        "/api/workers/%20w".to_string(),
    ] {
        let r = app.get(&path).await;
        let text = r.text().await.unwrap();
        let e: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(e["field"], "name", "{}: {e}", &path[..40.min(path.len())]);
        assert!(text.len() < 1000, "the error echoes the name");
    }
    // A heartbeat's name follows the name rule: a 422, not a 404 echoing 60,000 characters.
    let e = json(
        app.post(
            "/api/workers/heartbeat",
            &json!({"worker_name": "n".repeat(60_000)}),
        )
        .await,
        422,
    )
    .await;
    assert_eq!(e["field"], "worker_name");
    assert_eq!(app.worker("w").await["status"], "registered");
    // A misspelt serial_number cannot protect the heartbeat, so the answer says so.
    let hb = json(
        app.post(
            "/api/workers/heartbeat",
            &json!({"worker_name": "w", "serail_number": serial}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(hb["status"], "updated");
    assert!(
        hb["warnings"][0]
            .as_str()
            .unwrap()
            .contains("\"serail_number\""),
        "{hb}"
    );
    // The design document's heartbeat is still answered with exactly its two fields.
    let hb = json(
        app.post("/api/workers/heartbeat", &json!({"worker_name": "w"}))
            .await,
        200,
    )
    .await;
    assert_eq!(hb, json!({"status": "updated", "worker": "w"}));

    let r = app
        .post(
            "/api/workers/register",
            &json!({"name": "m", "worker_type": "truemark", "api_url": "http://h:1",
                    "user_id": "u", "metdata": {"container": "c1"}}),
        )
        .await;
    let m = json(r, 200).await;
    assert_eq!(m["metadata"], json!({}));
    let warnings = m["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{m}");
    assert!(warnings[0].as_str().unwrap().contains("\"metdata\""), "{m}");

    let e = json(
        app.post(
            "/api/workers/m/commands",
            &json!({"command": "restart", "reasn": "typo"}),
        )
        .await,
        422,
    )
    .await;
    assert_eq!(e["field"], "reasn", "{e}");
    let e = json(
        app.post(
            "/api/webhooks",
            &json!({"url": "http://h:1/x", "events": ["offline"], "enabeld": false}),
        )
        .await,
        422,
    )
    .await;
    assert_eq!(e["field"], "enabeld", "{e}");
}

/// A body declared larger than the limit is refused before it is read.
#[tokio::test]
async fn an_oversized_declared_body_is_refused_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn().await;
    let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    socket
        .write_all(
            b"POST /api/workers/register HTTP/1.1\r\nHost: x\r\n\
              Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{",
        )
        .await
        .unwrap();
    let mut answer = vec![0; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), socket.read(&mut answer))
        .await
        .expect("an answer without waiting for the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
}

#[tokio::test]
async fn health_and_readiness() {
    let app = TestApp::spawn().await;
    assert_eq!(json(app.get("/healthz").await, 200).await["status"], "ok");
    assert_eq!(json(app.get("/readyz").await, 200).await["status"], "ready");
    // A migration the binary knows of but the database lacks makes the registry unready.
    sqlx::query(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let r = app.get("/readyz").await;
    assert_eq!(json(r, 503).await["error"], "not_ready");
}

#[tokio::test]
async fn an_unreachable_database_is_a_503_with_retry_after() {
    let app = TestApp::spawn().await;
    app.register("w", "truemark").await;
    let name = url::Url::parse(&app.database_url).unwrap().path()[1..].to_string();
    let admin = sqlx::PgPool::connect(&common::server_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        r#"ALTER DATABASE "{name}" ALLOW_CONNECTIONS false"#
    )))
    .execute(&admin)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&name)
        .execute(&admin)
        .await
        .unwrap();

    for path in ["/api/workers/status", "/api/workers/list", "/api/workers/w"] {
        let r = app.get(path).await;
        assert_eq!(r.status(), 503, "{path}");
        assert!(r.headers().contains_key("retry-after"));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "database_unavailable", "{path}");
        assert!(!body.to_string().to_lowercase().contains("select"));
    }
    assert_eq!(app.get("/readyz").await.status(), 503);
    assert_eq!(app.get("/healthz").await.status(), 200);

    sqlx::query(sqlx::AssertSqlSafe(format!(
        r#"ALTER DATABASE "{name}" ALLOW_CONNECTIONS true"#
    )))
    .execute(&admin)
    .await
    .unwrap();
    // Back without a restart.
    let mut recovered = false;
    for _ in 0..100 {
        if app.get("/api/workers/w").await.status() == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(recovered);
}

#[tokio::test]
async fn the_schema_rejects_what_the_code_must_never_write() {
    let app = TestApp::spawn().await;
    let w = app.register("w", "truemark").await;
    let serial = w["serial_number"].as_str().unwrap();
    let bad = [
        "UPDATE workers SET status = 'zombie'",
        "UPDATE workers SET model_number = 'DMN-RG-01'",
        "UPDATE workers SET status = 'active'",
        "UPDATE workers SET worker_name = E'bad\\nname'",
        "UPDATE workers SET api_url = 'ftp://x'",
        "UPDATE workers SET serial_number = 'DMN-TM-01-00000000-00000'",
        "INSERT INTO deployments (serial_number, worker_name, worker_type, family, generation,
             model_number, api_url, user_id) VALUES ('DMN-TM-01-0000000-00000', 'x', 't', 'TM',
             1, 'DMN-TM-01', 'http://h', 'u')",
        "INSERT INTO deployments (serial_number, worker_name, worker_type, family, generation,
             model_number, api_url, user_id) VALUES ('DMN-RG-01-00000000-00000', 'x', 't', 'TM',
             1, 'DMN-TM-01', 'http://h', 'u')",
        "INSERT INTO model_catalog (worker_type, family, generation) VALUES ('x', 'ZZ', 1)",
        "INSERT INTO model_catalog (worker_type, family, generation) VALUES ('Bad Type', 'TM', 1)",
        "INSERT INTO worker_events (worker_name, serial_number, kind, to_status)
             VALUES ('w', NULL, 'stale', 'stale')",
        // The rules of registration, in the schema too.
        "UPDATE workers SET worker_name = 'list'",
        "UPDATE workers SET worker_name = ' w'",
        "UPDATE workers SET user_id = 'u '",
        "UPDATE workers SET api_url = 'http:x'",
        "UPDATE workers SET metadata = '[]'",
        "UPDATE deployments SET api_url = 'http://h x'",
        "INSERT INTO deployments (serial_number, worker_name, worker_type, family, generation,
             model_number, api_url, user_id) VALUES ('DMN-TM-01-00000000-00009', 'status', 't',
             'TM', 1, 'DMN-TM-01', 'http://h', 'u')",
        // Events and heartbeats belong to a deployment of their worker.
        "INSERT INTO heartbeats (worker_name, serial_number) VALUES ('w', 'DMN-TM-01-00000000-00000')",
        "INSERT INTO worker_events (worker_name, serial_number, kind, to_status)
             SELECT 'other', serial_number, 'stale', 'stale' FROM deployments",
        // The current deployment is open exactly while the worker has not deregistered.
        "UPDATE workers SET status = 'deregistered'",
        "UPDATE deployments SET ended_at = now(), end_reason = 'gone'",
        // One model number, one catalog entry; one a live worker carries stays.
        "INSERT INTO model_catalog (worker_type, family, generation) VALUES ('tm-alias', 'TM', 1)",
        "DELETE FROM model_catalog WHERE worker_type = 'truemark'",
        "UPDATE model_catalog SET generation = 9 WHERE worker_type = 'truemark'",
    ];
    for sql in bad {
        assert!(
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&app.pool)
                .await
                .is_err(),
            "accepted: {sql}"
        );
    }
    // A second open deployment of the same name.
    let dup = sqlx::query(
        "INSERT INTO deployments (serial_number, worker_name, worker_type, family, generation,
             model_number, api_url, user_id) VALUES ('DMN-TM-01-00000000-00000', 'w', 't', 'TM',
             1, 'DMN-TM-01', 'http://h', 'u')",
    )
    .execute(&app.pool)
    .await;
    assert!(dup.is_err());
    // The same serial twice.
    let again = sqlx::query(
        "INSERT INTO deployments (serial_number, worker_name, worker_type, family, generation,
             model_number, api_url, user_id) VALUES ($1, 'other', 't', 'TM', 1, 'DMN-TM-01',
             'http://h', 'u')",
    )
    .bind(serial)
    .execute(&app.pool)
    .await;
    assert!(again.is_err());
}

#[tokio::test]
async fn registration_reads_the_catalog_in_its_own_transaction() {
    let app = TestApp::spawn().await;
    // A catalog change in flight (as PATCH makes it) holds the entry...
    let mut change = app.pool.begin().await.unwrap();
    sqlx::query("UPDATE model_catalog SET generation = 3 WHERE worker_type = 'goat'")
        .execute(&mut *change)
        .await
        .unwrap();
    // ...so a registration of that type waits for it, then uses what it committed.
    let registration = common::in_background(
        app.client
            .post(app.url("/api/workers/register"))
            .json(&json!({"name": "g", "worker_type": "goat",
                          "api_url": "http://h", "user_id": "u"})),
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !registration.is_finished(),
        "registration did not wait for the catalog change"
    );
    change.commit().await.unwrap();
    let (status, body) = registration.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let w: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(w["model_number"], "DMN-GT-03");
    assert!(is_serial_of(
        w["serial_number"].as_str().unwrap(),
        "DMN-GT-03"
    ));
}

#[tokio::test]
async fn nul_characters_are_refused_wherever_they_come() {
    let app = TestApp::spawn().await;
    app.register("w", "truemark").await;
    let bodies = [
        (
            "/api/workers/heartbeat",
            json!({"worker_name": "a\u{0}b"}),
            "worker_name",
        ),
        (
            "/api/workers/heartbeat",
            json!({"worker_name": "w", "serial_number": "x\u{0}"}),
            "serial_number",
        ),
        (
            "/api/workers/register",
            json!({"name": "n", "worker_type": "truemark", "api_url": "http://h",
                   "user_id": "u", "metadata": {"k": ["ok", "a\u{0}b"]}}),
            "metadata.k[1]",
        ),
        (
            "/api/workers/register",
            json!({"name": "n", "worker_type": "truemark", "api_url": "http://h",
                   "user_id": "u", "metadata": {"k\u{0}": 1}}),
            "metadata.k\u{0}",
        ),
    ];
    for (path, body, field) in bodies {
        let e = json(app.post(path, &body).await, 422).await;
        assert_eq!(e["field"], field, "{body}");
        assert!(e["rule"].as_str().unwrap().contains("NUL"));
    }
    for (path, field) in [
        ("/api/workers/a%00b", "path"),
        ("/api/workers/a%00b/events", "path"),
        ("/api/workers/list?user_id=%00", "user_id"),
        ("/api/workers/list?status=active&user_id=a%00", "user_id"),
        ("/api/workers/models/catalog/%00", "path"),
    ] {
        let e = json(app.get(path).await, 422).await;
        assert_eq!(e["field"], field, "{path}");
    }
    let e = json(app.delete("/api/workers/w?serial_number=%00").await, 422).await;
    assert_eq!(e["field"], "serial_number");
    assert_eq!(app.worker("w").await["status"], "registered");
    // Every method answers JSON, the metrics route included.
    let r = app.client.post(app.url("/metrics")).send().await.unwrap();
    assert_eq!(json(r, 405).await["error"], "method_not_allowed");
}

/// A PostgreSQL that requires TLS (`sslmode=require`, as managed services do) is reachable:
/// every connection of the registry to its database is encrypted.
#[tokio::test]
async fn the_database_may_require_tls() {
    let url = format!("{}?sslmode=require", common::create_database().await);
    let app = TestApp::spawn_on(&url, |_| {}).await;
    app.register("w", "truemark").await;
    assert_eq!(app.heartbeat("w").await, 200);
    let (mine, plain): (bool, i64) = sqlx::query_as(
        "SELECT (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()),
                (SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.datname = current_database() AND NOT s.ssl)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(mine);
    assert_eq!(plain, 0, "a connection of the registry is not encrypted");
}
