//! Code-interpreter contexts in a sandbox: create, list, run, interrupt,
//! restart, delete, and a `code/run` shortcut on a `default` context; each
//! run also streams (`.../run/stream`: NDJSON `CodeEvent`s as the kernel
//! produces them, like `/exec/stream`; a client that disconnects
//! interrupts the code). Each handler is one runtime call; the kernels live
//! in the guest agent (`crates/guest/src/agent/kernel.rs`).

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hull_api::*;
use tokio::sync::mpsc;

use crate::AppState;
use crate::error::{ApiResult, Json, json};

/// Start a named Python context (a Jupyter kernel; the sandbox needs
/// python3 and ipykernel: the `python3-ipykernel` Debian package).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/code/contexts", params(("id" = String, Path, description = "sandbox id or name")),
    request_body = CodeContextRequest,
    responses((status = 201, body = CodeContext), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn code_context_create(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<CodeContextRequest>,
) -> ApiResult<Response> {
    Ok(json(
        StatusCode::CREATED,
        s.rt.code_context_create(&id, req).await?,
    ))
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/code/contexts", params(("id" = String, Path, description = "sandbox id or name")),
    responses((status = 200, body = CodeContexts), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn code_contexts(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<CodeContexts>> {
    Ok(axum::Json(s.rt.code_contexts(&id).await?))
}

/// Run code in the context and wait for it; a timeout interrupts the code,
/// returns its outputs so far and keeps the context's state.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/code/contexts/{context}/run",
    params(("id" = String, Path, description = "sandbox id or name"), ("context" = String, Path)),
    request_body = CodeRunRequest,
    responses((status = 200, body = CodeRunResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn code_run(
    State(s): State<AppState>,
    Path((id, context)): Path<(String, String)>,
    Json(req): Json<CodeRunRequest>,
) -> ApiResult<axum::Json<CodeRunResult>> {
    if req.context.is_some() {
        return Err(ApiError::invalid(
            "`context` belongs in the path here; it is only for /code/run",
        )
        .into());
    }
    Ok(axum::Json(s.rt.code_run(&id, &context, req).await?))
}

/// Run code in the context and stream its outputs: newline-delimited
/// `CodeEvent` JSON as the kernel produces them, the last `end` (or
/// `error`). Closing the connection interrupts the code.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/code/contexts/{context}/run/stream",
    params(("id" = String, Path, description = "sandbox id or name"), ("context" = String, Path)),
    request_body = CodeRunRequest,
    responses((status = 200, body = CodeEvent, content_type = "application/x-ndjson"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn code_run_stream(
    State(s): State<AppState>,
    Path((id, context)): Path<(String, String)>,
    Json(req): Json<CodeRunRequest>,
) -> ApiResult<Response> {
    if req.context.is_some() {
        return Err(ApiError::invalid(
            "`context` belongs in the path here; it is only for /code/run/stream",
        )
        .into());
    }
    Ok(ndjson(s.rt.code_run_stream(&id, &context, req).await?))
}

/// The streaming form of `code/run`: `context` (default `default`) is
/// created on first use.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/code/run/stream", params(("id" = String, Path, description = "sandbox id or name")),
    request_body = CodeRunRequest,
    responses((status = 200, body = CodeEvent, content_type = "application/x-ndjson"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn code_run_stream_default(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<CodeRunRequest>,
) -> ApiResult<Response> {
    Ok(ndjson(s.rt.code_run_stream_default(&id, req).await?))
}

/// Events as NDJSON, one line each as it comes. The body owns the
/// receiver: a client that goes away drops it, which interrupts the run.
fn ndjson(events: mpsc::Receiver<CodeEvent>) -> Response {
    let body = futures_util::stream::unfold(events, |mut events| async move {
        let ev = events.recv().await?;
        let mut line = serde_json::to_vec(&ev).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, std::io::Error>(Bytes::from(line)), events))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response()
}

/// Run code in `context` (default `default`), creating it on first use.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/code/run", params(("id" = String, Path, description = "sandbox id or name")),
    request_body = CodeRunRequest,
    responses((status = 200, body = CodeRunResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn code_run_default(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<CodeRunRequest>,
) -> ApiResult<axum::Json<CodeRunResult>> {
    Ok(axum::Json(s.rt.code_run_default(&id, req).await?))
}

/// Interrupt what the context is running (KeyboardInterrupt).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/code/contexts/{context}/interrupt",
    params(("id" = String, Path, description = "sandbox id or name"), ("context" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn code_interrupt(
    State(s): State<AppState>,
    Path((id, context)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    s.rt.code_interrupt(&id, &context).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Restart the context's kernel: its state is gone, the name stays.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/code/contexts/{context}/restart",
    params(("id" = String, Path, description = "sandbox id or name"), ("context" = String, Path)),
    responses((status = 200, body = CodeContext), (status = 404, body = ErrorBody)))]
pub(crate) async fn code_restart(
    State(s): State<AppState>,
    Path((id, context)): Path<(String, String)>,
) -> ApiResult<axum::Json<CodeContext>> {
    Ok(axum::Json(s.rt.code_restart(&id, &context).await?))
}

/// Stop the context's kernel.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/code/contexts/{context}",
    params(("id" = String, Path, description = "sandbox id or name"), ("context" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn code_context_delete(
    State(s): State<AppState>,
    Path((id, context)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    s.rt.code_context_delete(&id, &context).await?;
    Ok(StatusCode::NO_CONTENT)
}
