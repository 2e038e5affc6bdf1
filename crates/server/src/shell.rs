//! Shell sessions in a sandbox: open, list, run a command, type input,
//! close. Each handler is one runtime call; the sessions themselves live in
//! the guest agent (`crates/guest/src/agent/shell.rs`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use hull_api::*;

use crate::AppState;
use crate::error::{ApiResult, Json, json};

/// Open a named `bash` session (bash must be in the sandbox: the `host`
/// template has it, `busybox` does not).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/shells", params(("id" = String, Path, description = "sandbox id or name")),
    request_body = ShellOpenRequest,
    responses((status = 201, body = ShellOpened), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn shell_open(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<ShellOpenRequest>,
) -> ApiResult<Response> {
    Ok(json(StatusCode::CREATED, s.rt.shell_open(&id, req).await?))
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/shells", params(("id" = String, Path, description = "sandbox id or name")),
    responses((status = 200, body = ShellSessions), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn shell_list(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<ShellSessions>> {
    Ok(axum::Json(s.rt.shell_list(&id).await?))
}

/// Run one command in the session and wait for it; a timeout interrupts
/// the command (SIGINT, then SIGKILL), returns its output so far and keeps
/// the session.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/shells/{session}/run",
    params(("id" = String, Path, description = "sandbox id or name"), ("session" = String, Path)),
    request_body = ShellRunRequest,
    responses((status = 200, body = ShellRunResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn shell_run(
    State(s): State<AppState>,
    Path((id, session)): Path<(String, String)>,
    Json(req): Json<ShellRunRequest>,
) -> ApiResult<axum::Json<ShellRunResult>> {
    Ok(axum::Json(s.rt.shell_run(&id, &session, req).await?))
}

/// Type into the session's terminal and collect output until `expect`
/// matches (or output pauses, or the timeout).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/shells/{session}/send",
    params(("id" = String, Path, description = "sandbox id or name"), ("session" = String, Path)),
    request_body = ShellSendRequest,
    responses((status = 200, body = ShellSendResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn shell_send(
    State(s): State<AppState>,
    Path((id, session)): Path<(String, String)>,
    Json(req): Json<ShellSendRequest>,
) -> ApiResult<axum::Json<ShellSendResult>> {
    Ok(axum::Json(s.rt.shell_send(&id, &session, req).await?))
}

/// End the session and everything it started.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/shells/{session}",
    params(("id" = String, Path, description = "sandbox id or name"), ("session" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn shell_close(
    State(s): State<AppState>,
    Path((id, session)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    s.rt.shell_close(&id, &session).await?;
    Ok(StatusCode::NO_CONTENT)
}
