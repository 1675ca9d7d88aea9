//! The event stream: server-sent events across replicas, resumable with Last-Event-ID.

mod common;

use std::time::Duration;

use common::{TestApp, json};
use serde_json::Value;

/// Reads server-sent events from a streaming response.
struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

#[derive(Debug)]
struct SseEvent {
    id: i64,
    name: String,
    data: Value,
}

impl SseReader {
    async fn open(app: &TestApp, path: &str, last_event_id: Option<i64>) -> SseReader {
        let mut request = app.client.get(app.url(path));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.expect("stream");
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        SseReader {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (keep-alive comments skipped), or None after `timeout`.
    async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut name, mut data) = (None, String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if let Some(id) = id {
                    return Some(SseEvent {
                        id,
                        name,
                        data: serde_json::from_str(&data).expect("JSON data"),
                    });
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk()).await;
            match chunk {
                Ok(Ok(Some(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    async fn expect(&mut self) -> SseEvent {
        self.next(Duration::from_secs(10)).await.expect("an event")
    }
}

#[tokio::test]
async fn events_arrive_in_order_as_they_happen() {
    let app = TestApp::spawn().await;
    let mut stream = SseReader::open(&app, "/api/workers/events/stream", None).await;
    app.register("w1", "truemark").await;
    app.heartbeat("w1").await;
    app.delete("/api/workers/w1").await;

    let mut kinds = Vec::new();
    let mut last = 0;
    for _ in 0..3 {
        let e = stream.expect().await;
        assert!(e.id > last, "ids increase: {} after {last}", e.id);
        last = e.id;
        assert_eq!(e.name, "worker");
        assert_eq!(e.data["worker_name"], "w1");
        assert_eq!(e.data["family"], "TM");
        assert_eq!(e.data["id"], e.id);
        kinds.push(e.data["kind"].as_str().unwrap().to_string());
    }
    assert_eq!(kinds, ["registered", "first_heartbeat", "deregistered"]);
    // The same rows as the table.
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM worker_events ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(*ids.last().unwrap(), last);
}

#[tokio::test]
async fn events_written_by_another_replica_are_pushed() {
    let writer = TestApp::spawn().await;
    let reader = TestApp::spawn_on(&writer.database_url, |_| {}).await;
    let mut stream = SseReader::open(&reader, "/api/workers/events/stream", None).await;
    writer.register("elsewhere", "regent").await;
    let e = stream.expect().await;
    assert_eq!(e.data["worker_name"], "elsewhere");
    assert_eq!(e.data["kind"], "registered");
}

#[tokio::test]
async fn a_reconnecting_client_gets_what_it_missed_exactly_once() {
    let app = TestApp::spawn().await;
    let mut stream = SseReader::open(&app, "/api/workers/events/stream", None).await;
    app.register("a", "truemark").await;
    let seen = stream.expect().await;
    drop(stream);

    // Missed while disconnected.
    app.heartbeat("a").await;
    app.register("b", "goat").await;
    app.register("a", "truemark").await;

    let mut stream = SseReader::open(&app, "/api/workers/events/stream", Some(seen.id)).await;
    let mut got = Vec::new();
    while let Some(e) = stream.next(Duration::from_millis(1500)).await {
        got.push((e.id, e.data["kind"].as_str().unwrap().to_string()));
    }
    let kinds: Vec<&str> = got.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(kinds, ["first_heartbeat", "registered", "re_registered"]);
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(got[0].0 > seen.id);

    // The query parameter works as the header does, for clients that cannot set headers.
    let path = format!("/api/workers/events/stream?last_event_id={}", got[1].0);
    let mut stream = SseReader::open(&app, &path, None).await;
    assert_eq!(stream.expect().await.data["kind"], "re_registered");
}

#[tokio::test]
async fn filters_by_worker_family_and_kind() {
    let app = TestApp::spawn().await;
    let mut by_worker = SseReader::open(&app, "/api/workers/events/stream?worker=tm-1", None).await;
    let mut by_family = SseReader::open(&app, "/api/workers/events/stream?family=RG", None).await;
    let mut by_kind = SseReader::open(
        &app,
        "/api/workers/events/stream?kind=deregistered,first_heartbeat",
        None,
    )
    .await;
    app.register("tm-1", "truemark").await;
    app.register("rg-1", "regent").await;
    app.heartbeat("rg-1").await;
    app.delete("/api/workers/tm-1").await;

    let mut names = Vec::new();
    while let Some(e) = by_worker.next(Duration::from_millis(1500)).await {
        names.push(e.data["kind"].as_str().unwrap().to_string());
    }
    assert_eq!(names, ["registered", "deregistered"]);
    // An event keeps the family of its deployment: rg-1 re-registering as a TrueMark worker
    // does not turn its Regent events into TrueMark ones.
    app.register("rg-1", "truemark").await;
    let mut fam = Vec::new();
    while let Some(e) = by_family.next(Duration::from_millis(500)).await {
        fam.push(e.data["worker_name"].as_str().unwrap().to_string());
    }
    assert_eq!(fam, ["rg-1", "rg-1"]);
    let mut resumed = SseReader::open(&app, "/api/workers/events/stream?family=RG", Some(0)).await;
    let mut kinds = Vec::new();
    while let Some(e) = resumed.next(Duration::from_millis(500)).await {
        assert_eq!(e.data["family"], "RG");
        kinds.push(e.data["kind"].as_str().unwrap().to_string());
    }
    assert_eq!(kinds, ["registered", "first_heartbeat"]);
    let mut kinds = Vec::new();
    while let Some(e) = by_kind.next(Duration::from_millis(500)).await {
        kinds.push(e.data["kind"].as_str().unwrap().to_string());
    }
    assert_eq!(kinds, ["first_heartbeat", "deregistered"]);
}

/// Event ids are taken in insert order but become visible in commit order. A stream that sees
/// a later event while an earlier one is still committing waits for it, however long that
/// transaction takes, rather than passing it for good.
#[tokio::test]
async fn an_event_committed_after_a_later_one_is_not_skipped() {
    let app = TestApp::spawn().await;
    let mut stream = SseReader::open(&app, "/api/workers/events/stream", None).await;

    // Transactions of the registry's own (by their application_name), as a slow
    // registration would be.
    let registry_tx = async || {
        let mut tx = app.pool.begin().await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET LOCAL application_name = '{}'",
            dals_registry::db::APPLICATION_NAME
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
        tx
    };
    let mut slow = registry_tx().await;
    let early: i64 = sqlx::query_scalar(
        "INSERT INTO worker_events (kind, reason) VALUES ('brake_held', 'slow') RETURNING id",
    )
    .fetch_one(&mut *slow)
    .await
    .unwrap();
    let late: i64 = sqlx::query_scalar(
        "INSERT INTO worker_events (kind, reason) VALUES ('brake_released', 'fast') RETURNING id",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(late > early);
    // A client that connects now starts with what it cannot see yet: the earlier event.
    let mut newcomer = SseReader::open(&app, "/api/workers/events/stream", None).await;
    // An operator's open transaction elsewhere is not the registry's: nobody waits for it.
    let mut operator = <sqlx::PgConnection as sqlx::Connection>::connect(&app.database_url)
        .await
        .unwrap();
    let mut bystander = sqlx::Connection::begin(&mut operator).await.unwrap();
    sqlx::query("SELECT txid_current()")
        .execute(&mut *bystander)
        .await
        .unwrap();
    // Longer than any fixed wait on the later event's age would cover.
    assert!(
        stream.next(Duration::from_millis(2500)).await.is_none(),
        "the later event must wait for the earlier one"
    );
    slow.commit().await.unwrap();

    let first = stream.expect().await;
    let second = stream.expect().await;
    assert_eq!((first.id, second.id), (early, late));
    assert_eq!(first.name, "brake");
    assert_eq!(first.data["reason"], "slow");
    let e = newcomer.expect().await;
    assert_eq!(
        e.id, early,
        "the event committing as the newcomer connected"
    );
    assert!(newcomer.next(Duration::from_millis(300)).await.is_none());

    // An id whose transaction rolls back is passed as soon as that transaction ends.
    let mut doomed = registry_tx().await;
    sqlx::query("INSERT INTO worker_events (kind, reason) VALUES ('brake_held', 'doomed')")
        .execute(&mut *doomed)
        .await
        .unwrap();
    let after: i64 = sqlx::query_scalar(
        "INSERT INTO worker_events (kind, reason) VALUES ('brake_released', 'after') RETURNING id",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(stream.next(Duration::from_millis(500)).await.is_none());
    doomed.rollback().await.unwrap();
    let started = std::time::Instant::now();
    let e = stream.expect().await;
    assert_eq!(e.id, after);
    assert_eq!(e.data["reason"], "after");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the gap waited on a transaction that is not the registry's"
    );
    bystander.rollback().await.unwrap();
}

#[tokio::test]
async fn bad_filters_are_refused() {
    let app = TestApp::spawn().await;
    let e = json(
        app.get("/api/workers/events/stream?kind=exploded").await,
        422,
    )
    .await;
    assert_eq!(e["field"], "kind");
    let e = json(app.get("/api/workers/events/stream?family=x").await, 422).await;
    assert_eq!(e["field"], "family");
    let r = app
        .client
        .get(app.url("/api/workers/events/stream"))
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    let e = json(r, 422).await;
    assert_eq!(e["field"], "Last-Event-ID");
    let e = json(
        app.get("/api/workers/events/stream?last_event_id=yesterday")
            .await,
        422,
    )
    .await;
    assert_eq!(e["field"], "last_event_id");
    // `brake` stands for both brake kinds, as for webhooks.
    let r = app.get("/api/workers/events/stream?kind=brake,stale").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn streams_end_when_the_registry_shuts_down() {
    let app = TestApp::spawn_with(|s| s.server.shutdown_timeout_secs = 30.0).await;
    let mut stream = SseReader::open(&app, "/api/workers/events/stream", None).await;
    let started = std::time::Instant::now();
    let stop = tokio::spawn(app.stop());
    assert!(stream.next(Duration::from_secs(10)).await.is_none());
    stop.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown waited for the stream"
    );
}
