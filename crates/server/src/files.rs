//! The agent's file operations inside a sandbox: read, atomic write, stat,
//! list, mkdir, rename, remove, and tar archives. Paths are sandbox paths;
//! the guest resolves them as if chrooted (`..` and symlinks cannot leave),
//! and the runtime refuses relative ones. Limits: uploads and archives at
//! most the daemon's `max_upload_bytes`, refused from `Content-Length`
//! first, then enforced while streaming; listing depth 1..=32. Downloads
//! carry no `Content-Length` (the guest reads to the end of the file, which
//! need not be the size it had at open: `/proc` files, growing logs).

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use hull_api::*;
use hull_runtime::ByteReader;
use serde::Deserialize;

use crate::AppState;
use crate::error::{ApiResult, Json, content_length};

/// Every query parameter a file route may take; each route documents (and
/// accepts) only its own, see [`query`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PathQuery {
    /// Absolute path inside the sandbox.
    path: String,
    /// Permission bits in octal (uploads), e.g. `0644`.
    #[serde(default)]
    mode: Option<String>,
    /// Remove directories with their content.
    #[serde(default)]
    recursive: Option<bool>,
    /// Listing depth (1 = the directory's entries).
    #[serde(default)]
    depth: Option<u32>,
}

/// Validate the query: `path` present and non-empty, and only the
/// parameters this route reads (`allowed`, besides `path`).
fn query(
    q: Result<Query<PathQuery>, axum::extract::rejection::QueryRejection>,
    allowed: &[&str],
) -> ApiResult<PathQuery> {
    let Query(q) = q.map_err(|e| ApiError::invalid(format!("invalid query: {}", e.body_text())))?;
    if q.path.is_empty() {
        return Err(ApiError::invalid("query parameter `path` must not be empty").into());
    }
    for (name, given) in [
        ("mode", q.mode.is_some()),
        ("recursive", q.recursive.is_some()),
        ("depth", q.depth.is_some()),
    ] {
        if given && !allowed.contains(&name) {
            return Err(ApiError::invalid(format!(
                "query parameter `{name}` does not apply to this route"
            ))
            .into());
        }
    }
    Ok(q)
}

/// Permission bits written in octal: 1 to 6 digits, at most `7777`.
fn parse_mode(m: &str) -> Result<u32, ApiError> {
    let bad = || {
        ApiError::invalid(format!(
            "mode {m:?} is not an octal permission mode like 0644"
        ))
    };
    if m.is_empty() || m.len() > 6 || !m.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(bad());
    }
    let v = u32::from_str_radix(m, 8).map_err(|_| bad())?;
    if v > 0o7777 {
        return Err(bad());
    }
    Ok(v)
}

fn body_reader(body: Body) -> ByteReader {
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    Box::pin(tokio_util::io::StreamReader::new(stream))
}

fn check_length(headers: &HeaderMap, max: u64) -> ApiResult<()> {
    if let Some(len) = content_length(headers)
        && len > max
    {
        return Err(ApiError::invalid(format!(
            "upload of {len} bytes is larger than the limit of {max} bytes"
        ))
        .into());
    }
    Ok(())
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/files", params(("id" = String, Path), ("path" = String, Query, description = "Absolute path inside the sandbox.")),
    responses((status = 200, description = "file content (chunked: no Content-Length); FileInfo JSON at open in the x-hull-file-info header", content_type = "application/octet-stream"),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn read_file(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<PathQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let q = query(q, &[])?;
    let (info, reader) = s.rt.read_file(&id, &q.path).await?;
    let mut resp = Body::from_stream(tokio_util::io::ReaderStream::new(reader)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&serde_json::to_string(&info).unwrap_or_default()) {
        h.insert("x-hull-file-info", v);
    }
    // No Content-Length: the size at open is no promise about the bytes
    // that follow (a `/proc` file has size 0, a log may grow), so the body
    // is chunked and ends where the file ends.
    Ok(resp)
}

#[utoipa::path(put, path = "/v1/sandboxes/{id}/files", params(("id" = String, Path), ("path" = String, Query, description = "Absolute path inside the sandbox."),
        ("mode" = Option<String>, Query, description = "Permission bits in octal, e.g. `0644` (the default).")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = FileInfo), (status = 400, body = ErrorBody)))]
pub(crate) async fn write_file(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<PathQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<axum::Json<FileInfo>> {
    let q = query(q, &["mode"])?;
    check_length(&headers, s.max_upload)?;
    let mode = q.mode.as_deref().map(parse_mode).transpose()?;
    Ok(axum::Json(
        s.rt.write_file(&id, &q.path, mode, s.max_upload, body_reader(body))
            .await?,
    ))
}

#[utoipa::path(delete, path = "/v1/sandboxes/{id}/files", params(("id" = String, Path), ("path" = String, Query, description = "Absolute path inside the sandbox."),
        ("recursive" = Option<bool>, Query, description = "Remove directories with their content.")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn remove_file(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<PathQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<StatusCode> {
    let q = query(q, &["recursive"])?;
    s.rt.remove(&id, &q.path, q.recursive.unwrap_or(false))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/stat", params(("id" = String, Path), ("path" = String, Query, description = "Absolute path inside the sandbox.")),
    responses((status = 200, body = FileInfo), (status = 404, body = ErrorBody)))]
pub(crate) async fn stat(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<PathQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<FileInfo>> {
    let q = query(q, &[])?;
    Ok(axum::Json(s.rt.stat(&id, &q.path).await?))
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/list", params(("id" = String, Path), ("path" = String, Query, description = "Absolute path inside the sandbox."),
        ("depth" = Option<u32>, Query, minimum = 1, maximum = 32, description = "Listing depth, 1 (the default: the directory's entries) to 32.")),
    responses((status = 200, body = FileList), (status = 404, body = ErrorBody)))]
pub(crate) async fn list_dir(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<PathQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<FileList>> {
    let q = query(q, &["depth"])?;
    let depth = q.depth.unwrap_or(1);
    if !(1..=32).contains(&depth) {
        return Err(ApiError::invalid("depth must be 1 to 32").into());
    }
    Ok(axum::Json(s.rt.list_dir(&id, &q.path, depth).await?))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/mkdir", params(("id" = String, Path)), request_body = MkdirRequest,
    responses((status = 204), (status = 409, body = ErrorBody)))]
pub(crate) async fn mkdir(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<MkdirRequest>,
) -> ApiResult<StatusCode> {
    s.rt.mkdir(&id, &req.path, req.parents).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/rename", params(("id" = String, Path)), request_body = RenameRequest,
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn rename(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<RenameRequest>,
) -> ApiResult<StatusCode> {
    s.rt.rename(&id, &req.from, &req.to).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/archive", params(("id" = String, Path), ("path" = String, Query, description = "Absolute path inside the sandbox.")),
    responses((status = 200, description = "a tar stream of the file or directory", content_type = "application/x-tar")))]
pub(crate) async fn archive_get(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<PathQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let q = query(q, &[])?;
    let reader = s.rt.tar_get(&id, &q.path).await?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(reader));
    Ok(([(header::CONTENT_TYPE, "application/x-tar")], body).into_response())
}

#[utoipa::path(put, path = "/v1/sandboxes/{id}/files/archive", params(("id" = String, Path), ("path" = String, Query, description = "Absolute path inside the sandbox.")),
    request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses((status = 204), (status = 400, body = ErrorBody)))]
pub(crate) async fn archive_put(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<PathQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    let q = query(q, &[])?;
    check_length(&headers, s.max_upload)?;
    s.rt.tar_put(&id, &q.path, s.max_upload, body_reader(body))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0644").unwrap(), 0o644);
        assert_eq!(parse_mode("755").unwrap(), 0o755);
        assert_eq!(parse_mode("4755").unwrap(), 0o4755);
        for bad in [
            "", "+644", "-1", "0o644", "0888", "17777", "9", "64 4", "1234567",
        ] {
            assert!(parse_mode(bad).is_err(), "{bad:?}");
        }
    }
}
