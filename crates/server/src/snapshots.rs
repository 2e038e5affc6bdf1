//! Snapshot resources: capture a sandbox, list/inspect/delete snapshots,
//! fork a snapshot into new sandboxes, roll a sandbox back. Each handler is
//! one runtime call.

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use hull_api::*;

use crate::AppState;
use crate::error::{ApiResult, Json, JsonOrEmpty, json};
use crate::sandboxes::{ListQuery, label_filters};

#[utoipa::path(post, path = "/v1/sandboxes/{id}/snapshot", params(("id" = String, Path, description = "sandbox id or name")),
    request_body(content = CreateSnapshot, description = "optional: no body takes the defaults"),
    responses((status = 201, body = Snapshot), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn snapshot(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonOrEmpty(req): JsonOrEmpty<CreateSnapshot>,
) -> ApiResult<Response> {
    Ok(json(StatusCode::CREATED, s.rt.snapshot(&id, req).await?))
}

/// The sandbox's files become the snapshot's; its processes are killed and
/// its PID 1 restarted (same id, name, limits, labels, TTL).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/rollback", params(("id" = String, Path, description = "sandbox id or name")),
    request_body = Rollback,
    responses((status = 200, body = Sandbox), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn rollback(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<Rollback>,
) -> ApiResult<axum::Json<Sandbox>> {
    Ok(axum::Json(s.rt.rollback(&id, &req.snapshot).await?))
}

#[utoipa::path(get, path = "/v1/snapshots", params(ListQuery), responses((status = 200, body = SnapshotList), (status = 400, body = ErrorBody)))]
pub(crate) async fn list_snapshots(
    State(s): State<AppState>,
    req: Request,
) -> ApiResult<axum::Json<SnapshotList>> {
    let labels = label_filters(req.uri().query(), "snapshot")?;
    Ok(axum::Json(SnapshotList {
        snapshots: s.rt.list_snapshots(&labels).await?,
    }))
}

#[utoipa::path(get, path = "/v1/snapshots/{id}", params(("id" = String, Path, description = "snapshot id or name")),
    responses((status = 200, body = Snapshot), (status = 404, body = ErrorBody)))]
pub(crate) async fn inspect_snapshot(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Snapshot>> {
    Ok(axum::Json(s.rt.get_snapshot(&id).await?))
}

/// Refused (409) while sandboxes were born from it or snapshots were taken
/// on top of it.
#[utoipa::path(delete, path = "/v1/snapshots/{id}", params(("id" = String, Path, description = "snapshot id or name")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn delete_snapshot(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.rt.delete_snapshot(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `n` new sandboxes, each with private copy-on-write files; all or none.
#[utoipa::path(post, path = "/v1/snapshots/{id}/fork", params(("id" = String, Path, description = "snapshot id or name")),
    request_body = Fork,
    responses((status = 201, body = ForkResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn fork(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<Fork>,
) -> ApiResult<Response> {
    let sandboxes = s.rt.fork(&id, req).await?;
    Ok(json(StatusCode::CREATED, ForkResult { sandboxes }))
}

#[utoipa::path(get, path = "/v1/templates", responses((status = 200, body = TemplateList)))]
pub(crate) async fn list_templates(
    State(s): State<AppState>,
) -> ApiResult<axum::Json<TemplateList>> {
    Ok(axum::Json(TemplateList {
        templates: s.rt.templates().await?,
    }))
}

/// A template made of a snapshot: `create` with `template: NAME` starts
/// from that snapshot.
#[utoipa::path(post, path = "/v1/templates", request_body = SaveTemplate,
    responses((status = 201, body = TemplateInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn save_template(
    State(s): State<AppState>,
    Json(req): Json<SaveTemplate>,
) -> ApiResult<Response> {
    Ok(json(
        StatusCode::CREATED,
        s.rt.save_template(&req.name, &req.snapshot).await?,
    ))
}

/// Forget a saved template (its snapshot stays); built-in ones can't go.
#[utoipa::path(delete, path = "/v1/templates/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn remove_template(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.rt.remove_template(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
