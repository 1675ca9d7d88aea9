//! The OpenAPI document: generated from the handlers, kept in sync with a snapshot
//! (`docs/openapi.json`), and covering every endpoint.
//!
//! After an intended API change: `DALS_UPDATE_SNAPSHOTS=1 cargo test --test openapi`, then
//! review the diff of docs/openapi.json.

mod common;

use common::{TestApp, json};
use serde_json::Value;

const SNAPSHOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");

#[tokio::test]
async fn the_document_matches_its_snapshot() {
    let app = TestApp::spawn().await;
    let doc = json(app.get("/openapi.json").await, 200).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let rendered = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    if std::env::var_os("DALS_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(SNAPSHOT, &rendered).unwrap();
    }
    let snapshot = std::fs::read_to_string(SNAPSHOT).unwrap_or_default();
    assert!(
        snapshot == rendered,
        "the OpenAPI document changed; if that is intended, run \
         `DALS_UPDATE_SNAPSHOTS=1 cargo test --test openapi` and review docs/openapi.json"
    );
}

#[tokio::test]
async fn every_endpoint_is_documented_with_its_errors() {
    let app = TestApp::spawn().await;
    let doc = json(app.get("/openapi.json").await, 200).await;
    let endpoints = [
        ("post", "/api/workers/register"),
        ("post", "/api/workers/heartbeat"),
        ("get", "/api/workers/list"),
        ("get", "/api/workers/status"),
        ("get", "/api/workers/{name}"),
        ("delete", "/api/workers/{name}"),
        ("get", "/api/workers/{name}/events"),
        ("get", "/api/workers/{name}/deployments"),
        ("get", "/api/workers/{name}/commands"),
        ("post", "/api/workers/{name}/commands"),
        ("get", "/api/workers/models/catalog"),
        ("post", "/api/workers/models/catalog"),
        ("get", "/api/workers/models/catalog/{worker_type}"),
        ("patch", "/api/workers/models/catalog/{worker_type}"),
        ("delete", "/api/workers/models/catalog/{worker_type}"),
        ("get", "/api/workers/models/families"),
        ("post", "/api/workers/liveness/release"),
        ("get", "/api/workers/events/stream"),
        ("get", "/api/webhooks"),
        ("post", "/api/webhooks"),
        ("get", "/api/webhooks/{id}"),
        ("delete", "/api/webhooks/{id}"),
        ("get", "/api/webhooks/{id}/deliveries"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/"),
        ("get", "/openapi.json"),
        ("get", "/docs"),
    ];
    let paths = doc["paths"].as_object().unwrap();
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(
        documented,
        endpoints.len(),
        "an undocumented or unlisted operation"
    );
    for (method, path) in endpoints {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        let responses = op["responses"].as_object().unwrap();
        assert!(!responses.is_empty());
        // Every API operation says how it fails, with the one error shape.
        if path.starts_with("/api/") {
            let errors: Vec<&Value> = responses
                .iter()
                .filter(|(code, _)| code.starts_with('4') || code.starts_with('5'))
                .map(|(_, r)| r)
                .collect();
            assert!(!errors.is_empty(), "{method} {path} documents no error");
            // What the router's layers answer on any operation is there too.
            for code in ["422", "503"] {
                assert!(responses.contains_key(code), "{method} {path} lacks {code}");
            }
            if op.get("requestBody").is_some() {
                assert!(responses.contains_key("413"), "{method} {path} lacks 413");
            }
            if path.contains('{') {
                assert!(responses.contains_key("400"), "{method} {path} lacks 400");
            }
            for e in errors {
                assert_eq!(
                    e["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path}"
                );
            }
        }
    }
    // Request bodies of the design document's endpoints mark their fields required.
    let register = &doc["components"]["schemas"]["RegisterRequest"]["required"];
    for field in ["name", "worker_type", "api_url", "user_id"] {
        assert!(
            register.as_array().unwrap().contains(&Value::from(field)),
            "{field}"
        );
    }
}

#[tokio::test]
async fn the_docs_page_needs_nothing_from_outside() {
    let app = TestApp::spawn().await;
    let r = app.get("/docs").await;
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("/openapi.json"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "external load in {html}"
    );
    for asset in ["/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"] {
        assert!(html.contains(asset));
        let r = app.get(asset).await;
        assert_eq!(r.status(), 200, "{asset}");
        assert!(
            r.bytes().await.unwrap().len() > 10_000,
            "{asset} is not the vendored file"
        );
    }
}
