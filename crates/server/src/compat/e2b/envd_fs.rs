//! envd's files: REST `GET/POST /files` (download; upload as multipart or
//! `application/octet-stream`) and the `filesystem.Filesystem` Connect
//! service (`Stat`, `ListDir`, `MakeDir`, `Move`, `Remove`), on hull's
//! file calls. Paths resolve as envd resolves them: absolute as given,
//! relative under the user's home ([`super::sandbox_path`]); the guest
//! keeps every path inside the sandbox (`..` and symlinks cannot leave).
//!
//! Limits: uploads at most the daemon's `max_upload_bytes` each, refused
//! from `Content-Length` first, then enforced while streaming (413);
//! gzip-encoded uploads are refused (send them plain); files are written
//! by hull's agent as root whatever the `user`. Directory watches are
//! [`super::envd_watch`]'s.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Query, Request};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use hull_api::{ApiError, ErrorKind, FileInfo};
use serde::Deserialize;
use serde_json::{Value, json};

use super::connect::{self, Code, RpcError};
use super::{E2b, api_error, rfc3339, sandbox_path};

#[derive(Debug, Deserialize)]
struct FilesQuery {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    username: Option<String>,
    // Signed URLs: accepted and ignored (the access token already
    // authenticated the call).
    #[serde(default)]
    #[allow(dead_code)]
    signature: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    signature_expiration: Option<String>,
}

/// A REST error for a file call, with envd's statuses: 404 for a missing
/// file (the SDK's `FileNotFoundException`), 413 past the upload limit.
fn file_error(e: ApiError) -> Response {
    let status = match e.kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::ResourceExhausted => StatusCode::PAYLOAD_TOO_LARGE,
        k => StatusCode::from_u16(k.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    };
    api_error(status, e.message)
}

/// `/files`: `GET` downloads, `POST` uploads.
pub(crate) async fn files(s: E2b, sid: String, user: Option<String>, req: Request) -> Response {
    let q = match Query::<FilesQuery>::try_from_uri(req.uri()) {
        Ok(Query(q)) => q,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                format!("invalid query: {}", e.body_text()),
            );
        }
    };
    let user = q.username.clone().or(user);
    match *req.method() {
        Method::GET => download(s, sid, q, user).await,
        Method::POST => upload(s, sid, q, user, req).await,
        ref m => api_error(
            StatusCode::BAD_REQUEST,
            format!("method {m} is not allowed on /files (GET downloads, POST uploads)"),
        ),
    }
}

async fn download(s: E2b, sid: String, q: FilesQuery, user: Option<String>) -> Response {
    let path = match q.path.as_deref().map(|p| sandbox_path(p, user.as_deref())) {
        Some(Ok(p)) => p,
        Some(Err(e)) => return file_error(e),
        None => return api_error(StatusCode::BAD_REQUEST, "query parameter path is required"),
    };
    match s.app.rt.read_file(&sid, &path).await {
        Ok((_, reader)) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            Body::from_stream(tokio_util::io::ReaderStream::new(reader)),
        )
            .into_response(),
        Err(e) => file_error(e),
    }
}

fn too_big(headers: &HeaderMap, max: u64) -> Option<Response> {
    let len: u64 = headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    (len > max).then(|| {
        api_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("upload of {len} bytes is larger than the limit of {max} bytes"),
        )
    })
}

fn written(path: &str) -> Value {
    let name = path.rsplit('/').next().unwrap_or(path);
    json!({"name": name, "type": "file", "path": path})
}

async fn upload(
    s: E2b,
    sid: String,
    q: FilesQuery,
    user: Option<String>,
    req: Request,
) -> Response {
    let max = s.app.max_upload;
    if let Some(r) = too_big(req.headers(), max) {
        // Read what the client still sends so it gets the 413, not a
        // broken pipe.
        if crate::error::content_length(req.headers()).is_some_and(|n| n <= crate::error::DRAIN_MAX)
        {
            crate::error::drain(req.into_body()).await;
        }
        return r;
    }
    if req
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() != b"identity")
    {
        return api_error(
            StatusCode::BAD_REQUEST,
            "compressed uploads (gzip=True) are not supported by hull: upload without gzip",
        );
    }
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ct.starts_with("application/octet-stream") {
        let path = match q.path.as_deref().map(|p| sandbox_path(p, user.as_deref())) {
            Some(Ok(p)) => p,
            Some(Err(e)) => return file_error(e),
            None => return api_error(StatusCode::BAD_REQUEST, "query parameter path is required"),
        };
        let stream = req
            .into_body()
            .into_data_stream()
            .map_err(std::io::Error::other);
        let reader = Box::pin(tokio_util::io::StreamReader::new(stream));
        return match s.app.rt.write_file(&sid, &path, None, max, reader).await {
            Ok(_) => axum::Json(vec![written(&path)]).into_response(),
            Err(e) => file_error(e),
        };
    }
    if !ct.starts_with("multipart/form-data") {
        return api_error(
            StatusCode::BAD_REQUEST,
            format!("content type {ct:?}: upload multipart/form-data or application/octet-stream"),
        );
    }
    let mut mp = match axum::extract::Multipart::from_request(req, &()).await {
        Ok(m) => m,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let mut done = Vec::new();
    loop {
        let mut field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid multipart body: {e}"),
                );
            }
        };
        // One file: the query names it; several: each part's file name.
        let name = match (&q.path, field.file_name()) {
            (Some(p), _) => p.clone(),
            (None, Some(f)) if !f.is_empty() => f.to_string(),
            _ => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    "a multipart file part needs a file name (its path) or the path query parameter",
                );
            }
        };
        let path = match sandbox_path(&name, user.as_deref()) {
            Ok(p) => p,
            Err(e) => return file_error(e),
        };
        // The field borrows the request: feed its chunks to the write
        // through a small channel, so the upload is never held whole.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let chunks =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
            );
        let reader = Box::pin(tokio_util::io::StreamReader::new(chunks));
        let rt = s.app.rt.clone();
        let (sid2, path2) = (sid.clone(), path.clone());
        let write =
            tokio::spawn(async move { rt.write_file(&sid2, &path2, None, max, reader).await });
        let fed: Result<(), String> = async {
            loop {
                match field.chunk().await {
                    Ok(Some(c)) => {
                        if tx.send(Ok(c)).await.is_err() {
                            return Ok(()); // the write ended early: its error says why
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        let _ = tx
                            .send(Err(std::io::Error::other(format!("multipart body: {e}"))))
                            .await;
                        return Err(format!("invalid multipart body: {e}"));
                    }
                }
            }
        }
        .await;
        drop(tx);
        let r = write.await;
        if let Err(m) = fed {
            return api_error(StatusCode::BAD_REQUEST, m);
        }
        match r {
            Ok(Ok(_)) => done.push(written(&path)),
            Ok(Err(e)) => return file_error(e),
            Err(e) => {
                return api_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("upload task: {e}"),
                );
            }
        }
    }
    if done.is_empty() {
        return api_error(StatusCode::BAD_REQUEST, "the multipart body holds no file");
    }
    axum::Json(done).into_response()
}

/// `rwxr-xr-x` with a type letter, as Go's `FileMode.String`.
fn permissions(kind: &str, mode: u32) -> String {
    let t = match kind {
        "dir" => 'd',
        "symlink" => 'L',
        "file" => '-',
        _ => '?',
    };
    let mut s = String::with_capacity(10);
    s.push(t);
    for shift in [6, 3, 0] {
        let b = (mode >> shift) & 7;
        s.push(if b & 4 != 0 { 'r' } else { '-' });
        s.push(if b & 2 != 0 { 'w' } else { '-' });
        s.push(if b & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn owner(id: u32) -> String {
    if id == 0 {
        "root".into()
    } else {
        id.to_string()
    }
}

/// envd's `EntryInfo` for hull's `FileInfo`.
fn entry(f: &FileInfo) -> Value {
    let name = f.path.rsplit('/').next().unwrap_or(&f.path);
    let kind = match f.kind.as_str() {
        "dir" => "FILE_TYPE_DIRECTORY",
        "symlink" => "FILE_TYPE_SYMLINK",
        "file" => "FILE_TYPE_FILE",
        _ => "FILE_TYPE_UNSPECIFIED",
    };
    let mut v = json!({
        "name": if name.is_empty() { "/" } else { name },
        "type": kind,
        "path": f.path,
        "size": connect::int64(i64::try_from(f.size).unwrap_or(i64::MAX)),
        "mode": f.mode & 0o7777,
        "permissions": permissions(&f.kind, f.mode),
        "owner": owner(f.uid),
        "group": owner(f.gid),
        "modifiedTime": rfc3339(u64::try_from(f.mtime).unwrap_or(0)),
    });
    if f.kind == "symlink" {
        v["isSymlink"] = json!(true);
        if let Some(t) = &f.link_target {
            v["symlinkTarget"] = json!(t);
        }
    }
    v
}

#[derive(Debug, Default, Deserialize)]
struct PathRequest {
    #[serde(default)]
    path: String,
    #[serde(default, deserialize_with = "connect::lenient_u32::deserialize")]
    depth: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
struct MoveRequest {
    #[serde(default)]
    source: String,
    #[serde(default)]
    destination: String,
}

/// One `filesystem.Filesystem` call.
pub(crate) async fn call(
    s: E2b,
    sid: String,
    method: &str,
    user: Option<String>,
    req: Request,
) -> Response {
    if method == "WatchDir" {
        return super::envd_watch::watch_dir(s, sid, user, req).await;
    }
    if let Err(r) = connect::check_request(req.headers(), false) {
        return r;
    }
    match unary(&s, &sid, method, user.as_deref(), req.into_body()).await {
        Ok(v) => connect::unary_ok(&v),
        Err(e) => e.into_response(),
    }
}

async fn unary(
    s: &E2b,
    sid: &str,
    method: &str,
    user: Option<&str>,
    body: Body,
) -> Result<Value, RpcError> {
    let rt = &s.app.rt;
    match method {
        "Stat" => {
            let r: PathRequest = connect::unary_request(body).await?;
            let p = sandbox_path(&r.path, user)?;
            Ok(json!({"entry": entry(&rt.stat(sid, &p).await?)}))
        }
        "ListDir" => {
            let r: PathRequest = connect::unary_request(body).await?;
            let p = sandbox_path(&r.path, user)?;
            let depth = r.depth.unwrap_or(1).max(1);
            if depth > 32 {
                return Err(RpcError::invalid("depth must be at most 32"));
            }
            let list = rt.list_dir(sid, &p, depth).await?;
            let entries: Vec<Value> = list.entries.iter().map(entry).collect();
            Ok(json!({"entries": entries}))
        }
        "MakeDir" => {
            let r: PathRequest = connect::unary_request(body).await?;
            let p = sandbox_path(&r.path, user)?;
            match rt.stat(sid, &p).await {
                Ok(f) if f.kind == "dir" => {
                    return Err(RpcError::new(
                        Code::AlreadyExists,
                        format!("directory {p} already exists"),
                    ));
                }
                Ok(_) => {
                    return Err(RpcError::new(
                        Code::AlreadyExists,
                        format!("{p} exists and is not a directory"),
                    ));
                }
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            rt.mkdir(sid, &p, true).await?;
            Ok(json!({"entry": entry(&rt.stat(sid, &p).await?)}))
        }
        "Move" => {
            let r: MoveRequest = connect::unary_request(body).await?;
            let from = sandbox_path(&r.source, user)?;
            let to = sandbox_path(&r.destination, user)?;
            rt.rename(sid, &from, &to).await?;
            Ok(json!({"entry": entry(&rt.stat(sid, &to).await?)}))
        }
        "Remove" => {
            let r: PathRequest = connect::unary_request(body).await?;
            let p = sandbox_path(&r.path, user)?;
            rt.remove(sid, &p, true).await?;
            Ok(json!({}))
        }
        "CreateWatcher" | "GetWatcherEvents" | "RemoveWatcher" => {
            super::envd_watch::unary(s, sid, method, user, body).await
        }
        other => Err(RpcError::new(
            Code::Unimplemented,
            format!("filesystem.Filesystem/{other} is not a method hull serves"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_look_like_envd() {
        let f = FileInfo {
            path: "/tmp/a.txt".into(),
            kind: "file".into(),
            size: 12,
            mode: 0o100644,
            uid: 0,
            gid: 1000,
            mtime: 1_700_000_000,
            link_target: None,
        };
        let e = entry(&f);
        assert_eq!(e["name"], "a.txt");
        assert_eq!(e["type"], "FILE_TYPE_FILE");
        assert_eq!(e["size"], "12");
        assert_eq!(e["mode"], 0o644);
        assert_eq!(e["permissions"], "-rw-r--r--");
        assert_eq!(e["group"], "1000");
        assert_eq!(e["modifiedTime"], "2023-11-14T22:13:20Z");
        assert_eq!(permissions("dir", 0o755), "drwxr-xr-x");
    }
}
