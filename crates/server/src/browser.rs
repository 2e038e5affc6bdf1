//! The browser tool's routes: status, start, stop, restart, high-level
//! actions, a raw PNG screenshot, and the raw CDP WebSocket with the
//! discovery document CDP clients ask for first (`json/version`), so that
//! Playwright's `connect_over_cdp(<daemon>/v1/sandboxes/ID/browser/cdp)`
//! and Puppeteer's `connect` drive the same in-sandbox browser.
//!
//! Each handler is one runtime call (`crates/runtime/src/browser.rs`). The
//! CDP route relays WebSocket messages between the client and Chromium's
//! browser endpoint, reached over a guest TCP stream; it sits behind the
//! same authentication as every route. Limits: a CDP message is at most
//! [`MAX_CDP_MESSAGE`].

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use hull_api::*;
use serde::Deserialize;
use tokio_tungstenite::tungstenite;

use crate::AppState;
use crate::error::{ApiResult, Json};

/// Largest CDP message relayed (screenshots travel as base64 in one).
pub const MAX_CDP_MESSAGE: usize = 256 << 20;

#[utoipa::path(get, path = "/v1/sandboxes/{id}/browser", params(("id" = String, Path, description = "sandbox id or name")),
    responses((status = 200, body = BrowserStatus), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn browser_status(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<BrowserStatus>> {
    Ok(axum::Json(s.rt.browser_status(&id).await?))
}

/// Start the sandbox's browser (Chromium inside the sandbox) if none
/// runs; a crashed one is replaced.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/browser/start", params(("id" = String, Path, description = "sandbox id or name")),
    responses((status = 200, body = BrowserStatus), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn browser_start(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<BrowserStatus>> {
    Ok(axum::Json(s.rt.browser_start(&id).await?))
}

/// Stop the sandbox's browser; its tabs are gone.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/browser/stop", params(("id" = String, Path, description = "sandbox id or name")),
    responses((status = 200, body = BrowserStatus), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn browser_stop(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<BrowserStatus>> {
    Ok(axum::Json(s.rt.browser_stop(&id).await?))
}

/// Replace the sandbox's browser (running or crashed) with a fresh one.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/browser/restart", params(("id" = String, Path, description = "sandbox id or name")),
    responses((status = 200, body = BrowserStatus), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn browser_restart(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<BrowserStatus>> {
    Ok(axum::Json(s.rt.browser_restart(&id).await?))
}

/// One high-level action (open, navigate, click, type, select, wait_for,
/// text, accessibility, screenshot, evaluate, tabs, close); the browser
/// starts on first use.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/browser/actions", params(("id" = String, Path, description = "sandbox id or name")),
    request_body = BrowserAction,
    responses((status = 200, body = BrowserActionResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn browser_action(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(action): Json<BrowserAction>,
) -> ApiResult<axum::Json<BrowserActionResult>> {
    Ok(axum::Json(s.rt.browser_action(&id, action).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScreenshotQuery {
    /// The tab (its CDP target id).
    tab: String,
    /// The whole page instead of the viewport.
    #[serde(default)]
    full_page: bool,
}

/// A screenshot as `image/png` (the `screenshot` action, unwrapped).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/browser/screenshot", params(("id" = String, Path, description = "sandbox id or name"), ScreenshotQuery),
    responses((status = 200, content_type = "image/png", description = "the PNG"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn browser_screenshot(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<ScreenshotQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| ApiError::invalid(format!("invalid query: {}", e.body_text())))?;
    let r =
        s.rt.browser_action(
            &id,
            BrowserAction::Screenshot {
                tab: q.tab,
                full_page: q.full_page,
                timeout_ms: None,
            },
        )
        .await?;
    let BrowserActionResult::Screenshot { png, truncated, .. } = r else {
        return Err(ApiError::internal("a screenshot action answered something else").into());
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(png)
        .map_err(|e| ApiError::internal(format!("decoding the screenshot: {e}")))?;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "image/png"),
            (
                header::HeaderName::from_static("x-hull-truncated"),
                if truncated { "true" } else { "false" },
            ),
        ],
        bytes,
    )
        .into_response())
}

/// The discovery document of the CDP endpoint: Chromium's `/json/version`
/// with `webSocketDebuggerUrl` pointing at this daemon's CDP route (on the
/// host and port the client used).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/browser/cdp/json/version", params(("id" = String, Path, description = "sandbox id or name")),
    responses((status = 200, description = "Browser, Protocol-Version, User-Agent, V8-Version, WebKit-Version, webSocketDebuggerUrl"),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn browser_cdp_version(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let mut v = s.rt.browser_version(&id).await?;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.:[]_".contains(c))
        })
        .unwrap_or("localhost");
    let sandbox = s.rt.get(&id).await?.id;
    if let Some(m) = v.as_object_mut() {
        m.insert(
            "webSocketDebuggerUrl".into(),
            format!("ws://{host}/v1/sandboxes/{sandbox}/browser/cdp").into(),
        );
    }
    Ok((StatusCode::OK, axum::Json(v)).into_response())
}

/// The browser's raw CDP WebSocket (browser-level, as Chromium's
/// `/devtools/browser/...`), for Playwright, Puppeteer or any CDP client.
/// The browser starts if none runs.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/browser/cdp", params(("id" = String, Path, description = "sandbox id or name")),
    responses((status = 101, description = "WebSocket: CDP messages relayed both ways"), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn browser_cdp(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    let (stream, path, port) = s.rt.browser_cdp(&id).await?;
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_CDP_MESSAGE))
        .max_frame_size(Some(MAX_CDP_MESSAGE));
    let (upstream, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://127.0.0.1:{port}{path}"),
        stream,
        Some(config),
    )
    .await
    .map_err(|e| {
        ApiError::unavailable(format!(
            "the browser of sandbox {id} refused the CDP connection: {e}"
        ))
    })?;
    Ok(ws
        .max_message_size(MAX_CDP_MESSAGE)
        .max_frame_size(MAX_CDP_MESSAGE)
        .on_upgrade(move |socket| relay(socket, upstream)))
}

/// Relay messages both ways until either side closes.
async fn relay<S>(client: WebSocket, upstream: tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut ctx, mut crx) = client.split();
    let (mut utx, mut urx) = upstream.split();
    let up = async {
        while let Some(Ok(m)) = crx.next().await {
            let out = match m {
                Message::Text(t) => tungstenite::Message::Text(t.as_str().into()),
                Message::Binary(b) => tungstenite::Message::Binary(b),
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Close(_) => break,
            };
            if utx.send(out).await.is_err() {
                break;
            }
        }
        let _ = utx.close().await;
    };
    let down = async {
        while let Some(Ok(m)) = urx.next().await {
            let out = match m {
                tungstenite::Message::Text(t) => Message::Text(t.as_str().into()),
                tungstenite::Message::Binary(b) => Message::Binary(b),
                tungstenite::Message::Close(_) => break,
                _ => continue,
            };
            if ctx.send(out).await.is_err() {
                break;
            }
        }
        let _ = ctx.close().await;
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}
