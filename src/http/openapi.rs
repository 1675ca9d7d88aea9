//! The OpenAPI 3.1 document, generated from the handlers' annotations, and its docs page
//! (Swagger UI, vendored under assets/swagger-ui: no CDN).

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::{
    AppState, catalog, commands, dashboard, health, liveness, metrics, stream, webhooks, workers,
};

/// The registry's HTTP API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "DALS Registry",
        description = "The production worker registry: workers register (model and serial \
                       numbers), send heartbeats, and operators read the fleet. Every error \
                       is a JSON `ErrorBody` with a stable `error` code and a `message`.",
        license(name = "MIT"),
    ),
    paths(
        workers::register,
        workers::heartbeat,
        workers::list,
        workers::status,
        workers::worker,
        workers::deregister,
        workers::events,
        workers::deployments,
        commands::queue_command,
        commands::list_commands,
        catalog::catalog,
        catalog::add,
        catalog::entry,
        catalog::update,
        catalog::remove,
        catalog::families,
        liveness::release,
        stream::stream,
        webhooks::create,
        webhooks::list,
        webhooks::one,
        webhooks::delete,
        webhooks::deliveries,
        health::healthz,
        health::readyz,
        metrics::metrics,
        dashboard::dashboard,
        openapi_json,
        docs,
    ),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&CommonErrors),
    tags(
        (name = "workers", description = "Registration, heartbeats and the fleet (the design document's API)"),
        (name = "commands", description = "Operator commands delivered in heartbeat answers"),
        (name = "catalog", description = "The model catalog"),
        (name = "liveness", description = "The sweeper's controls"),
        (name = "events", description = "The live event stream"),
        (name = "webhooks", description = "Webhooks for worker transitions"),
        (name = "health", description = "Liveness and readiness of the registry itself"),
        (name = "operations", description = "Dashboard, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// The errors the router's own layers can answer on any API operation, added where an
/// operation does not describe them itself: a declared or streamed body over the limit (413),
/// a path that is not percent-encoded UTF-8 (400), a NUL in the path or query (422), a request
/// that outlived its timeout or found the database unreachable (503).
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            if !path.starts_with("/api/") {
                continue;
            }
            let has_path_params = path.contains('{');
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let mut add = |code: &str, description: &str| {
                    op.responses
                        .responses
                        .entry(code.to_string())
                        .or_insert_with(|| error(description).into());
                };
                if op.request_body.is_some() {
                    add("413", "Body over 64 KiB");
                }
                if has_path_params {
                    add("400", "A path parameter is not valid percent-encoded UTF-8");
                }
                add(
                    "422",
                    "A value breaks its rule (a NUL in the path or query, among others)",
                );
                add(
                    "503",
                    "Database unreachable or busy, or the request timed out (with Retry-After)",
                );
            }
        }
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(openapi_json))
        .route("/docs", get(docs))
        .route("/docs/swagger-ui-bundle.js", get(swagger_js))
        .route("/docs/swagger-ui.css", get(swagger_css))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub(crate) async fn openapi_json() -> Response {
    Json(ApiDoc::openapi()).into_response()
}

/// A readable, interactive page of this document.
#[utoipa::path(get, path = "/docs", tag = "operations",
    responses((status = 200, description = "Swagger UI", content_type = "text/html", body = String)))]
pub(crate) async fn docs() -> Html<&'static str> {
    Html(DOCS_PAGE)
}

async fn swagger_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        include_str!("../../assets/swagger-ui/swagger-ui-bundle.js"),
    )
}

async fn swagger_css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        include_str!("../../assets/swagger-ui/swagger-ui.css"),
    )
}

const DOCS_PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>DALS Registry API</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
  </script>
</body>
</html>
"##;
