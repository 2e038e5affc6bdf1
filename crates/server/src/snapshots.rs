//! Snapshot resources: capture a sandbox, list/inspect/delete snapshots,
//! fork a snapshot into new sandboxes, roll a sandbox back. Each handler is
//! one runtime call.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use hull_api::*;
use serde::Deserialize;

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

/// Remove a template: a saved one only loses its name (its snapshot
/// stays); an imported or built one loses its files too (409 while
/// sandboxes or snapshots use them); built-in ones can't go.
#[utoipa::path(delete, path = "/v1/templates/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn remove_template(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.rt.remove_template(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn body_reader(body: Body) -> hull_runtime::ByteReader {
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    Box::pin(tokio_util::io::StreamReader::new(stream))
}

fn bad_query(e: axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::invalid(format!("invalid query: {}", e.body_text()))
}

/// The snapshot as a portable `.tar.zst` stream (its layers merged, its
/// template named): import it here or on another machine. The snapshot
/// can't be deleted while the stream runs. An error after the first bytes
/// ends the stream early (the archive is then incomplete and its import
/// fails).
#[utoipa::path(get, path = "/v1/snapshots/{id}/export", params(("id" = String, Path, description = "snapshot id or name")),
    responses((status = 200, description = "the snapshot as a zstd-compressed tar", content_type = "application/zstd"),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn export_snapshot(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (snap, rx) = s.rt.export_snapshot(&id).await?;
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let disposition = format!("attachment; filename=\"{}.tar.zst\"", snap.id);
    Ok((
        [
            (header::CONTENT_TYPE, "application/zstd".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportSnapshotQuery {
    /// Name for the imported snapshot (default: the name it had, if free).
    #[serde(default)]
    name: Option<String>,
}

/// Import a snapshot exported by `GET /v1/snapshots/{id}/export`; its
/// template must exist here (`busybox`, `host` and `scratch` always do).
#[utoipa::path(post, path = "/v1/snapshots/import", params(ImportSnapshotQuery),
    request_body(content = Vec<u8>, content_type = "application/zstd"),
    responses((status = 201, body = Snapshot), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 507, body = ErrorBody)))]
pub(crate) async fn import_snapshot(
    State(s): State<AppState>,
    q: Result<Query<ImportSnapshotQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(bad_query)?;
    let snap = s.rt.import_snapshot(body_reader(body), q.name).await?;
    Ok(json(StatusCode::CREATED, snap))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportTemplateQuery {
    /// The new template's name (a DNS label).
    name: String,
    /// Which image of an archive holding several: its
    /// `org.opencontainers.image.ref.name` or `docker save` tag.
    #[serde(default)]
    reference: Option<String>,
    /// Where the archive came from (shown in the template's `source`).
    #[serde(default)]
    source: Option<String>,
}

/// Import an OCI image archive (an OCI image layout in a tar, or a `docker
/// save` tarball) as a template: its layers flattened into one snapshot of
/// `scratch`, its config (env, user, workdir, entrypoint, cmd) kept as the
/// template's defaults.
#[utoipa::path(post, path = "/v1/templates/import", params(ImportTemplateQuery),
    request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses((status = 201, body = TemplateInfo), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 507, body = ErrorBody)))]
pub(crate) async fn import_template(
    State(s): State<AppState>,
    q: Result<Query<ImportTemplateQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(bad_query)?;
    let source = match q.source {
        Some(src) if src.len() <= 256 && !src.chars().any(char::is_control) => {
            format!("oci image {src}")
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "source must be at most 256 characters without control characters",
            )
            .into());
        }
        None => "oci image".into(),
    };
    let t =
        s.rt.import_template(&q.name, body_reader(body), q.reference, source)
            .await?;
    Ok(json(StatusCode::CREATED, t))
}

/// Build a template from Debian with `mmdebstrap` (minbase plus the
/// packages named). Errors found before the build starts are plain error
/// answers; after that the answer is `200` with a stream of
/// newline-delimited `BuildEvent` JSON objects ending in `done` or
/// `error`. Closing the connection cancels the build.
#[utoipa::path(post, path = "/v1/templates/build", request_body = BuildTemplate,
    responses((status = 200, description = "progress events, then done or error", body = BuildEvent, content_type = "application/x-ndjson"),
        (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn build_template(
    State(s): State<AppState>,
    Json(req): Json<BuildTemplate>,
) -> ApiResult<Response> {
    s.rt.check_build(&req)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<BuildEvent>(256);
    let cancel = Arc::new(AtomicBool::new(false));
    struct CancelOnDrop(Arc<AtomicBool>);
    impl Drop for CancelOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let rt = s.rt.clone();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let r = rt.build_template(req, tx, cancel).await;
            let _ = done_tx.send(r);
        });
    }
    let (line_tx, line_rx) =
        tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(256);
    tokio::spawn(async move {
        let line = |ev: &BuildEvent| {
            let mut v = serde_json::to_vec(ev).unwrap_or_default();
            v.push(b'\n');
            Ok(bytes::Bytes::from(v))
        };
        while let Some(ev) = rx.recv().await {
            if line_tx.send(line(&ev)).await.is_err() {
                break;
            }
        }
        let last = match done_rx.await {
            Ok(Ok(template)) => BuildEvent::Done {
                template: Box::new(template),
            },
            Ok(Err(error)) => BuildEvent::Error { error },
            Err(_) => BuildEvent::Error {
                error: ApiError::internal("the build task ended without an answer"),
            },
        };
        let _ = line_tx.send(line(&last)).await;
    });
    // The stream owns the guard: a client that goes away cancels the build.
    let state = (line_rx, CancelOnDrop(cancel));
    let stream = futures_util::stream::unfold(state, |(mut rx, guard)| async move {
        rx.recv().await.map(|chunk| (chunk, (rx, guard)))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}
