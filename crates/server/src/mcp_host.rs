//! MCP servers hosted inside sandboxes, over HTTP: register, list and stop
//! a sandbox's stdio MCP servers (`/v1/sandboxes/{id}/mcp-servers`), and
//! each server's streamable-HTTP MCP endpoint (`/v1/sandboxes/{id}/mcp/{name}`,
//! MCP 2025-03-26 to 2025-11-25 transport). Transport only: the sessions,
//! their processes and the routing of messages live in the runtime
//! (`crates/runtime/src/mcp_host.rs`).
//!
//! The endpoint: POST one JSON-RPC message (at most
//! [`MCP_MAX_MESSAGE`] bytes; batches are refused). An `initialize`
//! without `Mcp-Session-Id` starts a session (a new process) and the answer
//! carries its `Mcp-Session-Id`; other messages need the header, and an
//! unknown or ended session is 404 (clients initialize again). A request is
//! answered as `text/event-stream` when the client accepts it (server
//! messages sent for the request travel first, the response last), else as
//! `application/json`; notifications and responses get 202. GET opens the
//! session's event stream (server notifications and requests), DELETE ends
//! the session. Same auth as every route; errors are the API's
//! `{"error": {"kind", "message"}}`. Limits: no resumption of event
//! streams (`Last-Event-ID` is ignored); one event stream per session (a
//! new GET replaces the open one).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use futures_util::StreamExt;
use hull_api::*;
use hull_runtime::{MCP_MAX_MESSAGE, McpPosted};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::error::{ApiResult, AppError, Json, json};

/// The session header of MCP's streamable HTTP transport.
pub const SESSION_HEADER: &str = "mcp-session-id";
/// Comment lines on idle event streams, so dead clients are noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Register a stdio MCP server on the sandbox: the daemon starts it once,
/// checks that it answers `initialize` and `tools/list`, stops it, and
/// serves it at `endpoint` (each MCP session there runs its own process).
/// A command that is not an MCP server (exits, prints something else, or
/// stays silent past `startup_timeout_ms`) is `invalid_argument`, with the
/// tail of its stderr.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/mcp-servers", params(("id" = String, Path, description = "sandbox id or name")),
    request_body = McpServerRequest,
    responses((status = 201, body = McpServerInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub(crate) async fn mcp_server_start(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<McpServerRequest>,
) -> ApiResult<Response> {
    Ok(json(
        StatusCode::CREATED,
        s.rt.mcp_server_start(&id, req).await?,
    ))
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/mcp-servers", params(("id" = String, Path, description = "sandbox id or name")),
    responses((status = 200, body = McpServers), (status = 404, body = ErrorBody)))]
pub(crate) async fn mcp_server_list(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<McpServers>> {
    Ok(axum::Json(s.rt.mcp_servers(&id).await?))
}

/// Unregister the server and end its sessions (their processes are killed).
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/mcp-servers/{name}",
    params(("id" = String, Path, description = "sandbox id or name"), ("name" = String, Path)),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn mcp_server_stop(
    State(s): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    s.rt.mcp_server_stop(&id, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The endpoint's routes; event streams end when `stop` is cancelled (the
/// daemon's shutdown).
pub(crate) fn endpoint(stop: CancellationToken) -> MethodRouter<AppState> {
    let (a, b) = (stop.clone(), stop);
    get(move |st, p, h| mcp_endpoint_get(st, p, h, a))
        .post(move |st, p, h, body| mcp_endpoint_post(st, p, h, body, b))
        .delete(mcp_endpoint_delete)
}

fn session_of(h: &HeaderMap) -> Result<Option<&str>, ApiError> {
    match h.get(SESSION_HEADER) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::invalid("the Mcp-Session-Id header is not visible ASCII")),
    }
}

fn need_session(h: &HeaderMap) -> Result<&str, ApiError> {
    session_of(h)?.ok_or_else(|| {
        ApiError::invalid("no Mcp-Session-Id header: initialize a session first (POST)")
    })
}

fn accepts(h: &HeaderMap, what: &str) -> bool {
    h.get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case(what)
        })
}

fn too_large() -> ApiError {
    ApiError::invalid(format!(
        "an MCP message is at most {} MiB",
        MCP_MAX_MESSAGE >> 20
    ))
}

/// One message as an SSE event.
fn event(v: &Value) -> Result<Event, Infallible> {
    Ok(Event::default().event("message").data(v.to_string()))
}

fn with_session(mut r: Response, session: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(session) {
        r.headers_mut().insert(SESSION_HEADER, v);
    }
    r
}

/// The messages of one request as an event stream, ending after the
/// response (or with the daemon's shutdown).
fn request_stream(
    rx: mpsc::Receiver<Value>,
    stop: CancellationToken,
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold((rx, false), |(mut rx, done)| async move {
        if done {
            return None;
        }
        let v = rx.recv().await?;
        let last = v.get("method").is_none();
        Some((event(&v), (rx, last)))
    })
    .take_until(stop.cancelled_owned())
}

/// POST one JSON-RPC message to the server (MCP streamable HTTP).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/mcp/{name}",
    params(("id" = String, Path, description = "sandbox id or name"), ("name" = String, Path, description = "the MCP server's name"),
        ("Mcp-Session-Id" = Option<String>, Header, description = "the session, from the initialize answer; absent only on initialize")),
    request_body(content = Object, description = "one JSON-RPC 2.0 message", content_type = "application/json"),
    responses(
        (status = 200, description = "the response to a request: `application/json`, or `text/event-stream` when accepted (`event: message` lines, the response last); an initialize answer carries `Mcp-Session-Id`"),
        (status = 202, description = "a notification or response was passed on"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody, description = "unknown sandbox, server, or session (initialize again)"),
        (status = 409, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn mcp_endpoint_post(
    State(s): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
    stop: CancellationToken,
) -> ApiResult<Response> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        if ct.split(';').next().unwrap_or("").trim() != "application/json" {
            return Err(ApiError::invalid(format!(
                "content type {ct:?}: an MCP message is application/json"
            ))
            .into());
        }
    }
    let bytes = crate::error::read_bounded(&headers, body, MCP_MAX_MESSAGE)
        .await
        .map_err(|e| match e {
            crate::error::BodyError::TooLarge => too_large(),
            crate::error::BodyError::Read(e) => {
                ApiError::invalid(format!("cannot read the request body: {e}"))
            }
        })?;
    let msg: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(format!("the body is not JSON: {e}")))?;
    let sse = accepts(&headers, "text/event-stream");
    let session = session_of(&headers)?;
    let posted = s.rt.mcp_post(&id, &name, session, msg, sse).await?;
    let (session, mut rx) = match posted {
        McpPosted::Accepted => return Ok(StatusCode::ACCEPTED.into_response()),
        McpPosted::Request { session, messages } => (session, messages),
    };
    if sse {
        let stream = request_stream(rx, stop);
        let r = Sse::new(stream)
            .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
            .into_response();
        return Ok(with_session(r, &session));
    }
    // JSON: only the response comes on this channel.
    while let Some(v) = rx.recv().await {
        if v.get("method").is_none() {
            return Ok(with_session(axum::Json(v).into_response(), &session));
        }
    }
    Err(AppError(ApiError::unavailable(
        "the MCP session ended before the server answered",
    )))
}

/// Open the session's event stream: server notifications and requests
/// (answer those with a POST).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/mcp/{name}",
    params(("id" = String, Path, description = "sandbox id or name"), ("name" = String, Path, description = "the MCP server's name"),
        ("Mcp-Session-Id" = String, Header, description = "the session")),
    responses(
        (status = 200, description = "`text/event-stream` of `event: message` lines, until the session ends"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn mcp_endpoint_get(
    State(s): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
    stop: CancellationToken,
) -> ApiResult<Response> {
    if !accepts(&headers, "text/event-stream") {
        return Err(ApiError::invalid(
            "GET opens an event stream: send `Accept: text/event-stream`",
        )
        .into());
    }
    let session = need_session(&headers)?.to_string();
    let rx = s.rt.mcp_listen(&id, &name, &session).await?;
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let v = rx.recv().await?;
        Some((event(&v), rx))
    })
    .take_until(stop.cancelled_owned());
    let r = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    Ok(with_session(r, &session))
}

/// End the session: its process is killed.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/mcp/{name}",
    params(("id" = String, Path, description = "sandbox id or name"), ("name" = String, Path, description = "the MCP server's name"),
        ("Mcp-Session-Id" = String, Header, description = "the session")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn mcp_endpoint_delete(
    State(s): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let session = need_session(&headers)?;
    s.rt.mcp_session_end(&id, &name, session).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_lists() {
        let mut h = HeaderMap::new();
        assert!(!accepts(&h, "text/event-stream"));
        h.insert(
            header::ACCEPT,
            "application/json, Text/Event-Stream;q=0.9".parse().unwrap(),
        );
        assert!(accepts(&h, "text/event-stream"));
        assert!(accepts(&h, "application/json"));
        assert!(!accepts(&h, "text/html"));
    }
}
