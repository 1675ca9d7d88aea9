//! `GET /` and `GET /dashboard`: the status dashboard, a single HTML page compiled into the
//! binary so a deployment needs no asset directory, no Node build and no CDN.

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;

/// The page, with its styles and script inline.
const PAGE: &str = include_str!("../../assets/dashboard/index.html");

/// Validator of the embedded page: it changes exactly when the page does.
const ETAG: &str = match std::str::from_utf8(&ETAG_BYTES) {
    Ok(etag) => etag,
    Err(_) => panic!("the ETag is ASCII"),
};
const ETAG_BYTES: [u8; 18] = quoted_hex(fnv1a(PAGE.as_bytes()));

/// The page only talks to this origin; `default-src 'self'` makes any external load (a CDN
/// script, a web font) fail loudly in the browser instead of silently depending on the network.
const CSP: &str = "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(dashboard))
        .route("/dashboard", get(dashboard))
}

/// Serves the dashboard; answers 304 when the browser already holds this version.
#[utoipa::path(
    get,
    path = "/",
    tag = "operations",
    responses(
        (status = 200, description = "The status dashboard (also at /dashboard)", content_type = "text/html", body = String),
        (status = 304, description = "The browser's copy is current"),
    )
)]
pub(crate) async fn dashboard(request_headers: HeaderMap) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, HeaderValue::from_static(ETAG));
    // Revalidate on every load so an upgraded registry never serves a stale page from cache;
    // the ETag keeps that revalidation to a 304 with no body.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    let fresh = request_headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        // If-None-Match compares weakly: W/"x" matches "x".
        .map(|tag| tag.trim())
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == ETAG);
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    (headers, PAGE).into_response()
}

/// 64-bit FNV-1a, evaluated at compile time.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// `hash` as 16 lower-case hex digits in double quotes, the form an ETag takes.
const fn quoted_hex(hash: u64) -> [u8; 18] {
    let mut out = [b'"'; 18];
    let mut i = 0;
    while i < 16 {
        let nibble = ((hash >> (60 - 4 * i)) & 0xf) as u8;
        out[i + 1] = if nibble < 10 {
            b'0' + nibble
        } else {
            b'a' + nibble - 10
        };
        i += 1;
    }
    out
}
