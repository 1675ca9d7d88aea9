//! `GET /api/workers/events/stream`: every worker event as it happens, as server-sent events.
//!
//! Each client follows the events table by id from its cursor (`Last-Event-ID`, or the newest
//! event when it connects), woken by the replica's LISTEN on the events channel and polling
//! as a fallback, so events written by any replica arrive in id order and a reconnecting
//! client gets what it missed.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures::Stream;
use serde::Deserialize;
use serde_json::json;

use super::views::EventView;
use super::{ApiQuery, AppState};
use crate::db::StreamEventRow;
use crate::domain::{FamilyCode, parse_event_kinds};
use crate::error::{ApiError, ErrorBody};

/// How often a stream waiting on a gap in the event ids checks whether it has filled.
const GAP_RECHECK: Duration = Duration::from_millis(50);
/// A gap whose transactions are still open after this long is passed anyway, with a warning,
/// so that one stuck transaction cannot stall every stream.
const GAP_GIVE_UP: Duration = Duration::from_secs(30);
/// How far below the newest visible event a new client's stream starts looking for events
/// still committing (five sweep batches' worth of ids).
const START_WINDOW: i64 = 5000;
/// Rows read per query.
const PAGE: i64 = 500;
/// How often a client reads the table without a notification.
const POLL_EVERY: Duration = Duration::from_secs(2);

pub fn router() -> Router<AppState> {
    Router::new().route("/api/workers/events/stream", get(stream))
}

/// Filters of the stream; each is optional.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
// A misspelt parameter is refused, not ignored (it would widen the answer silently).
#[serde(deny_unknown_fields)]
pub struct StreamParams {
    /// Only this worker's events.
    pub worker: Option<String>,
    /// Only events of workers of this family (`TM`, ...).
    pub family: Option<String>,
    /// Only these kinds, comma-separated (`stale,offline`; `brake` for both brake kinds).
    pub kind: Option<String>,
    /// Resume after this event id (as the `Last-Event-ID` header does).
    pub last_event_id: Option<i64>,
}

struct Filter {
    worker: Option<String>,
    family: Option<String>,
    kinds: Option<Vec<String>>,
}

impl Filter {
    fn matches(&self, row: &StreamEventRow) -> bool {
        self.worker
            .as_ref()
            .is_none_or(|w| row.event.worker_name.as_ref() == Some(w))
            && self
                .family
                .as_ref()
                .is_none_or(|f| row.family.as_ref() == Some(f))
            && self
                .kinds
                .as_ref()
                .is_none_or(|kinds| kinds.contains(&row.event.kind))
    }
}

/// Every worker event as it happens, as server-sent events (`text/event-stream`): each
/// message has `id:` (the event id, increasing), `event:` (`worker`, or `brake` for
/// fleet-wide events) and `data:` (the event as JSON). Send `Last-Event-ID` to resume.
#[utoipa::path(
    get,
    path = "/api/workers/events/stream",
    tag = "events",
    params(
        StreamParams,
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event id"),
    ),
    responses(
        (status = 200, description = "A stream of events; each `data:` is one event", content_type = "text/event-stream", body = EventView),
        (status = 422, description = "A filter breaks its rule, or `Last-Event-ID` is not an integer", body = ErrorBody),
        (status = 503, description = "Database unreachable (with Retry-After)", body = ErrorBody),
    )
)]
pub(crate) async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<StreamParams>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let family = params
        .family
        .map(|f| f.parse::<FamilyCode>().map(|f| f.to_string()))
        .transpose()
        .map_err(|rule| ApiError::validation("family", rule))?;
    let kinds = params
        .kind
        .map(|list| {
            let kinds: Vec<String> = list.split(',').map(|k| k.trim().to_string()).collect();
            parse_event_kinds(&kinds).map_err(|(_, rule)| ApiError::validation("kind", rule))
        })
        .transpose()?;
    let header = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .ok_or_else(|| ApiError::validation("Last-Event-ID", "must be an integer"))
        })
        .transpose()?;
    // Where the stream starts: after the client's last event; or, for a new client, with the
    // events not yet visible now. Those may include ids below the newest visible one (still
    // committing), so the stream starts a window back and passes over what is visible now.
    let (cursor, visible_at_start) = match header.or(params.last_event_id) {
        Some(id) => (id.max(0), Vec::new()),
        None => {
            let visible = state.db.recent_event_ids(START_WINDOW).await?;
            let newest = visible.last().copied().unwrap_or(0);
            ((newest - START_WINDOW).max(0), visible)
        }
    };
    let filter = Filter {
        worker: params.worker,
        family,
        kinds,
    };

    let db = state.db.clone();
    let mut wake = state.events.subscribe();
    let stopping = state.stopping.clone();
    let events = async_stream::stream! {
        let mut cursor = cursor;
        let mut already_seen = visible_at_start.into_iter().peekable();
        let mut gap: Option<Gap> = None;
        loop {
            // Ids below this one that are still missing belong to no running transaction:
            // they rolled back, and the stream may pass them.
            let settled_below = match &gap {
                Some(g) if g.started.elapsed() >= GAP_GIVE_UP => {
                    tracing::warn!(
                        after = cursor,
                        up_to = g.below,
                        "event stream passing missing event ids: the registry's transactions \
                         that were writing when the gap was seen are still open after {} s",
                        GAP_GIVE_UP.as_secs()
                    );
                    g.below
                }
                Some(g) => match db.transactions_ended(&g.writers).await {
                    Ok(true) => g.below,
                    Ok(false) => 0,
                    Err(e) => {
                        tracing::warn!(error = %e, "event stream cannot check open transactions");
                        0
                    }
                },
                None => 0,
            };
            let mut waiting_on_gap = false;
            let mut full_page = false;
            match db.events_after(cursor, PAGE).await {
                Ok(rows) => {
                    full_page = rows.len() as i64 == PAGE;
                    let newest_read = rows.last().map_or(cursor, |r| r.event.id);
                    for row in rows {
                        let id = row.event.id;
                        if id != cursor + 1 && id > settled_below {
                            // The ids between may belong to transactions still committing:
                            // note which transactions are writing now, and wait for them.
                            // Every id missing below the newest one read was taken before
                            // that one committed, so the same writers cover them all.
                            if gap.as_ref().is_none_or(|g| id > g.below) {
                                match db.writing_transactions().await {
                                    Ok(writers) => gap = Some(Gap::new(newest_read, writers)),
                                    Err(e) => tracing::warn!(
                                        error = %e,
                                        "event stream cannot read open transactions"
                                    ),
                                }
                            }
                            waiting_on_gap = true;
                            break;
                        }
                        cursor = id;
                        // A new client's stream starts with what was not visible yet.
                        while already_seen.next_if(|seen| *seen < id).is_some() {}
                        if already_seen.next_if_eq(&id).is_some() {
                            continue;
                        }
                        if filter.matches(&row) {
                            yield Ok(to_sse(row));
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "event stream cannot read events; retrying"),
            }
            if gap.as_ref().is_some_and(|g| cursor >= g.below) {
                gap = None;
            }
            if full_page && !waiting_on_gap {
                continue;
            }
            if waiting_on_gap && gap.as_ref().is_some_and(|g| g.writers.is_empty()) {
                // Nothing of the registry's was writing: the missing ids rolled back.
                continue;
            }
            let pause = if waiting_on_gap { GAP_RECHECK } else { POLL_EVERY };
            tokio::select! {
                () = stopping.cancelled() => break,
                _ = wake.recv() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    };
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Missing event ids up to `below`, and the transactions that were writing when the stream
/// saw them missing. Ids are taken in insert order but committed in commit order, so a later
/// event can be visible before an earlier one; every id below a visible event was taken
/// before it committed, so by a transaction that has rolled back, committed (and is visible
/// now) or was writing when the gap was seen. Once those have ended, a missing id never comes.
struct Gap {
    below: i64,
    writers: Vec<String>,
    started: std::time::Instant,
}

impl Gap {
    fn new(below: i64, writers: Vec<String>) -> Self {
        Gap {
            below,
            writers,
            started: std::time::Instant::now(),
        }
    }
}

fn to_sse(row: StreamEventRow) -> Event {
    let name = if row.event.worker_name.is_some() {
        "worker"
    } else {
        "brake"
    };
    let id = row.event.id;
    let mut data = json!(EventView::from(row.event));
    data["family"] = json!(row.family);
    Event::default()
        .id(id.to_string())
        .event(name)
        .data(data.to_string())
}
