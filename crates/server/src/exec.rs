//! Processes in a sandbox: buffered exec, streaming exec (NDJSON or
//! WebSocket, with stdin, signals and resize), background processes, their
//! list, signals and re-attach. Limits: a WebSocket must send its
//! `ExecRequest` within [`FIRST_MESSAGE_TIMEOUT`]; an NDJSON exec takes
//! stdin only from the request (then EOF).

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use hull_api::*;
use hull_runtime::ExecStream;

use crate::AppState;
use crate::error::{ApiResult, Json, json};

/// How long an exec WebSocket may wait before sending its `ExecRequest`.
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Buffered exec; with `background: true`, starts the process and answers
/// 201 with its id instead.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/exec", params(("id" = String, Path)), request_body = ExecRequest,
    responses((status = 200, body = ExecResult), (status = 201, body = ProcessStarted), (status = 409, body = ErrorBody)))]
pub(crate) async fn exec(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<ExecRequest>,
) -> ApiResult<Response> {
    if req.background {
        return Ok(json(
            StatusCode::CREATED,
            s.rt.exec_background(&id, req).await?,
        ));
    }
    Ok(json(StatusCode::OK, s.rt.exec(&id, req).await?))
}

/// Streaming exec: newline-delimited `ExecEvent` JSON, the last one `exit`
/// (or `error`). `stdin` in the request is sent, then closed.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/exec/stream", params(("id" = String, Path)), request_body = ExecRequest,
    responses((status = 200, body = ExecEvent, content_type = "application/x-ndjson")))]
pub(crate) async fn exec_stream(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<ExecRequest>,
) -> ApiResult<Response> {
    let stream = s.rt.exec_stream(&id, req).await?;
    let ExecStream { events, input } = stream;
    // This transport carries no further input: stdin ends with the request's.
    let _ = input.send(ExecClientMessage::Eof).await;
    let body = futures_util::stream::unfold((events, input), |(mut events, input)| async move {
        let ev = events.recv().await?;
        let mut line = serde_json::to_vec(&ev).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, std::io::Error>(Bytes::from(line)), (events, input)))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/exec/ws", params(("id" = String, Path)),
    responses((status = 101, description = "WebSocket: send an ExecRequest, then ExecClientMessage; receive ExecEvent")))]
pub(crate) async fn exec_ws(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.on_upgrade(move |mut socket| async move {
        let req = match first_request(&mut socket).await {
            Ok(r) => r,
            Err(e) => return ws_error(socket, e).await,
        };
        match s.rt.exec_stream(&id, req).await {
            Ok(stream) => pump_ws(socket, stream).await,
            Err(e) => ws_error(socket, e).await,
        }
    })
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/processes/{pid}/attach", params(("id" = String, Path), ("pid" = String, Path)),
    responses((status = 101, description = "WebSocket as exec/ws, without the first ExecRequest")))]
pub(crate) async fn attach_ws(
    State(s): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.on_upgrade(move |socket| async move {
        match s.rt.attach(&id, &pid).await {
            Ok(stream) => pump_ws(socket, stream).await,
            Err(e) => ws_error(socket, e).await,
        }
    })
}

/// A normal close (1000): the last event said how the exec ended.
fn normal_close() -> Message {
    Message::Close(Some(axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: "".into(),
    }))
}

/// The first text message: the `ExecRequest`, within [`FIRST_MESSAGE_TIMEOUT`].
async fn first_request(socket: &mut WebSocket) -> Result<ExecRequest, ApiError> {
    let wait = async {
        loop {
            match socket.recv().await {
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(t.as_str())
                        .map_err(|e| ApiError::invalid(format!("invalid ExecRequest: {e}")));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => {
                    return Err(ApiError::invalid(
                        "expected an ExecRequest JSON text message first",
                    ));
                }
            }
        }
    };
    tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, wait)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::invalid(format!(
                "no ExecRequest within {} s of the WebSocket opening",
                FIRST_MESSAGE_TIMEOUT.as_secs()
            )))
        })
}

async fn ws_error(mut socket: WebSocket, e: ApiError) {
    let ev = ExecEvent::Error { error: e };
    let _ = socket
        .send(Message::Text(
            serde_json::to_string(&ev).unwrap_or_default().into(),
        ))
        .await;
    let _ = socket.send(normal_close()).await;
}

/// Relay a stream over a WebSocket until the process ends or the client
/// goes away. A client that closes (or drops) the socket ends the relay at
/// once, even while the command prints nothing: dropping the stream's
/// events tells the runtime to close the guest connection, and the guest
/// kills the command.
async fn pump_ws(socket: WebSocket, stream: ExecStream) {
    let ExecStream { mut events, input } = stream;
    let (mut tx, mut rx) = socket.split();
    // Ends only when the client has gone (closed, dropped, broken).
    let mut reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = rx.next().await {
            let m = match msg {
                Message::Text(t) => match serde_json::from_str::<ExecClientMessage>(t.as_str()) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!(error = %e, "ignoring an invalid exec client message");
                        continue;
                    }
                },
                Message::Binary(b) => {
                    use base64::Engine;
                    ExecClientMessage::Stdin {
                        data: None,
                        data_b64: Some(base64::engine::general_purpose::STANDARD.encode(&b)),
                    }
                }
                Message::Close(_) => return,
                _ => continue,
            };
            // A process that no longer takes input still has output to
            // deliver: keep reading, to notice the client leaving.
            let _ = input.send(m).await;
        }
    });
    loop {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = &mut reader => break,
        };
        let Some(ev) = ev else { break };
        let last = matches!(ev, ExecEvent::Exit(_) | ExecEvent::Error { .. });
        if tx
            .send(Message::Text(
                serde_json::to_string(&ev).unwrap_or_default().into(),
            ))
            .await
            .is_err()
        {
            break;
        }
        if last {
            break;
        }
    }
    // Let go of the stream before the close handshake, which a vanished
    // client may leave hanging.
    drop(events);
    let _ = tx.send(normal_close()).await;
    reader.abort();
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/processes", params(("id" = String, Path)), responses((status = 200, body = ProcessList)))]
pub(crate) async fn processes(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<ProcessList>> {
    Ok(axum::Json(s.rt.processes(&id).await?))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/processes/{pid}/signal", params(("id" = String, Path), ("pid" = String, Path)),
    request_body = SignalRequest, responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn signal(
    State(s): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    Json(req): Json<SignalRequest>,
) -> ApiResult<StatusCode> {
    s.rt.signal_process(&id, &pid, req.signal).await?;
    Ok(StatusCode::NO_CONTENT)
}
