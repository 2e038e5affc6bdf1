//! `GET /v1/sandboxes/{id}/files/watch`: a directory's changes as
//! NDJSON [`FileWatchEvent`] lines, one per change as it happens, until
//! the client disconnects (which ends the watch inside the sandbox). A
//! bad path (missing: `not_found`; a file or relative: `invalid_argument`;
//! too many watches or too large a tree: `resource_exhausted`) fails the
//! request itself, before any line. One runtime call (`watch_dir`); the
//! watch is the guest agent's (`crates/guest/src/agent/watch.rs`).

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use hull_api::{ApiError, ErrorBody, FileWatchEvent};
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiResult;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WatchQuery {
    path: String,
    #[serde(default)]
    recursive: bool,
}

/// Watch a directory and stream its changes (NDJSON, one event a line)
/// until the client disconnects. `name` in each event is relative to the
/// watched directory, `path` absolute. A stream ends on its own only with
/// an `error` line (the directory was removed, the sandbox stopped).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/watch",
    params(("id" = String, Path, description = "sandbox id or name"),
        ("path" = String, Query, description = "Absolute path of a directory inside the sandbox."),
        ("recursive" = Option<bool>, Query, description = "Watch subdirectories too, new ones as they appear (default false).")),
    responses((status = 200, body = FileWatchEvent, content_type = "application/x-ndjson"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub(crate) async fn files_watch(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<WatchQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| ApiError::invalid(format!("invalid query: {}", e.body_text())))?;
    let events = s.rt.watch_dir(&id, &q.path, q.recursive).await?;
    // The body owns the receiver: a client that goes away drops it, which
    // ends the watch.
    let body = futures_util::stream::unfold(events, |mut events| async move {
        let ev = events.recv().await?;
        let mut line = serde_json::to_vec(&ev).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, std::io::Error>(Bytes::from(line)), events))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}
