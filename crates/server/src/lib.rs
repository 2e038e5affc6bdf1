//! The HTTP API: REST/JSON under `/v1` over the runtime, on a unix socket
//! (no auth: file permissions guard it) and optionally TCP (bearer token).
//!
//! [`router`] builds the routes for one transport; [`run`] is `hull serve`:
//! open the runtime, bind, serve until SIGTERM/SIGINT, shut down (sandboxes
//! keep running and are re-adopted by the next daemon). [`openapi`] is the
//! OpenAPI document generated from the handlers and the `hull-api` types.
//!
//! Errors are always `{"error": {"kind", "message"}}` with the kind's
//! status, including malformed JSON, unknown fields, oversize bodies,
//! unknown routes and wrong methods. Limits: JSON bodies [`MAX_JSON`];
//! file and archive uploads `max_upload_bytes` (checked against
//! `Content-Length` first, then while streaming).
#![forbid(unsafe_code)]

pub mod config;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use hull_api::*;
use hull_runtime::{ByteReader, ExecStream, Runtime, RuntimeConfig};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::OpenApi;

/// Largest JSON request body.
pub const MAX_JSON: usize = 1 << 20;
/// Default cap on file and archive uploads.
pub const DEFAULT_MAX_UPLOAD: u64 = 1 << 30;

/// How the daemon is set up (`hull serve`).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub listen: Option<SocketAddr>,
    pub guest_binary: PathBuf,
    pub defaults: Limits,
    pub max_upload_bytes: u64,
}

/// Who may call the API on a transport.
#[derive(Clone)]
pub enum Auth {
    /// The unix socket: its file mode is the guard.
    None,
    /// TCP: `Authorization: Bearer <token>` on every route but health.
    Bearer(Arc<String>),
}

#[derive(Clone)]
struct AppState {
    rt: Arc<Runtime>,
    max_upload: u64,
}

/// An error response.
pub struct AppError(pub ApiError);

impl From<ApiError> for AppError {
    fn from(e: ApiError) -> Self {
        AppError(e)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.kind.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(ErrorBody { error: self.0 })).into_response()
    }
}

type ApiResult<T> = Result<T, AppError>;

/// A JSON body: at most [`MAX_JSON`] bytes, unknown fields refused, every
/// failure an `invalid_argument` error.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = AppError;
    async fn from_request(req: Request, _: &S) -> Result<Self, AppError> {
        let bytes = axum::body::to_bytes(req.into_body(), MAX_JSON)
            .await
            .map_err(|_| {
                ApiError::invalid(format!("request body is larger than {} bytes", MAX_JSON))
            })?;
        if bytes.is_empty() {
            return Err(ApiError::invalid("request body is empty: expected a JSON object").into());
        }
        serde_json::from_slice(&bytes)
            .map(Json)
            .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")).into())
    }
}

fn json<T: serde::Serialize>(status: StatusCode, v: T) -> Response {
    (status, axum::Json(v)).into_response()
}

/// Build the routes.
pub fn router(rt: Arc<Runtime>, auth: Auth, max_upload: u64) -> Router {
    let state = AppState { rt, max_upload };
    let api = Router::new()
        .route("/v1/version", get(version))
        .route("/v1/info", get(info))
        .route("/v1/sandboxes", post(create).get(list))
        .route("/v1/sandboxes/{id}", get(inspect).delete(destroy))
        .route("/v1/sandboxes/{id}/pause", post(pause))
        .route("/v1/sandboxes/{id}/resume", post(resume))
        .route("/v1/sandboxes/{id}/stop", post(stop))
        .route("/v1/sandboxes/{id}/ttl", put(set_ttl))
        .route("/v1/sandboxes/{id}/exec", post(exec))
        .route("/v1/sandboxes/{id}/exec/stream", post(exec_stream))
        .route("/v1/sandboxes/{id}/exec/ws", get(exec_ws))
        .route("/v1/sandboxes/{id}/processes", get(processes))
        .route("/v1/sandboxes/{id}/processes/{pid}/signal", post(signal))
        .route("/v1/sandboxes/{id}/processes/{pid}/attach", get(attach_ws))
        .route(
            "/v1/sandboxes/{id}/files",
            get(read_file).put(write_file).delete(remove_file),
        )
        .route("/v1/sandboxes/{id}/files/stat", get(stat))
        .route("/v1/sandboxes/{id}/files/list", get(list_dir))
        .route("/v1/sandboxes/{id}/files/mkdir", post(mkdir))
        .route("/v1/sandboxes/{id}/files/rename", post(rename))
        .route(
            "/v1/sandboxes/{id}/files/archive",
            get(archive_get).put(archive_put),
        )
        .route("/v1/system/reset", post(system_reset))
        .layer(axum::middleware::from_fn_with_state(auth, authenticate));
    Router::new()
        .route("/v1/health", get(health))
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found(req: Request) -> AppError {
    ApiError::not_found(format!("no route {} {}", req.method(), req.uri().path())).into()
}

async fn method_not_allowed(req: Request) -> AppError {
    ApiError::invalid(format!(
        "method {} is not allowed on {}",
        req.method(),
        req.uri().path()
    ))
    .into()
}

async fn authenticate(
    State(auth): State<Auth>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    if let Auth::Bearer(token) = &auth {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return AppError(ApiError::new(
                ErrorKind::Unauthenticated,
                "missing or wrong bearer token (the daemon keeps it in <state-dir>/token)",
            ))
            .into_response();
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[utoipa::path(get, path = "/v1/health", responses((status = 200, body = Health)))]
async fn health() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
    })
}

#[utoipa::path(get, path = "/v1/version", responses((status = 200, body = Version)))]
async fn version() -> axum::Json<Version> {
    axum::Json(Version {
        version: env!("CARGO_PKG_VERSION").into(),
        api: "v1".into(),
        protocol_min: hull_proto::MIN_PROTOCOL_VERSION,
        protocol_max: hull_proto::PROTOCOL_VERSION,
    })
}

#[utoipa::path(get, path = "/v1/info", responses((status = 200, body = HostInfo)))]
async fn info(State(s): State<AppState>) -> axum::Json<HostInfo> {
    axum::Json(s.rt.host_info())
}

#[utoipa::path(post, path = "/v1/sandboxes", request_body = CreateSandbox,
    responses((status = 201, body = Sandbox), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create(State(s): State<AppState>, Json(req): Json<CreateSandbox>) -> ApiResult<Response> {
    Ok(json(StatusCode::CREATED, s.rt.create(req).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[allow(dead_code)] // read by hand in `list`; here for the OpenAPI document
struct ListQuery {
    /// `key=value`; repeat to require several labels.
    #[serde(default)]
    label: Vec<String>,
}

#[utoipa::path(get, path = "/v1/sandboxes", params(ListQuery), responses((status = 200, body = SandboxList)))]
async fn list(State(s): State<AppState>, req: Request) -> ApiResult<axum::Json<SandboxList>> {
    // Repeated `label=` keys: parse the query by hand (serde_urlencoded
    // keeps only one value per key).
    let mut labels = BTreeMap::new();
    for (k, v) in url_pairs(req.uri().query().unwrap_or("")) {
        match k.as_str() {
            "label" => {
                let (lk, lv) = v.split_once('=').ok_or_else(|| {
                    ApiError::invalid(format!("label filter {v:?} must be key=value"))
                })?;
                labels.insert(lk.to_string(), lv.to_string());
            }
            other => {
                return Err(ApiError::invalid(format!("unknown query parameter {other:?}")).into());
            }
        }
    }
    Ok(axum::Json(SandboxList {
        sandboxes: s.rt.list(&labels).await?,
    }))
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}", params(("id" = String, Path, description = "sandbox id or name")),
    responses((status = 200, body = Sandbox), (status = 404, body = ErrorBody)))]
async fn inspect(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Sandbox>> {
    Ok(axum::Json(s.rt.get(&id).await?))
}

#[utoipa::path(delete, path = "/v1/sandboxes/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn destroy(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    s.rt.destroy(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/pause", params(("id" = String, Path)),
    responses((status = 200, body = Sandbox), (status = 409, body = ErrorBody)))]
async fn pause(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Sandbox>> {
    Ok(axum::Json(s.rt.pause(&id).await?))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/resume", params(("id" = String, Path)),
    responses((status = 200, body = Sandbox), (status = 409, body = ErrorBody)))]
async fn resume(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Sandbox>> {
    Ok(axum::Json(s.rt.resume(&id).await?))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/stop", params(("id" = String, Path)),
    responses((status = 200, body = Sandbox), (status = 409, body = ErrorBody)))]
async fn stop(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<axum::Json<Sandbox>> {
    Ok(axum::Json(s.rt.stop(&id).await?))
}

#[utoipa::path(put, path = "/v1/sandboxes/{id}/ttl", params(("id" = String, Path)), request_body = SetTtl,
    responses((status = 200, body = Sandbox), (status = 400, body = ErrorBody)))]
async fn set_ttl(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<SetTtl>,
) -> ApiResult<axum::Json<Sandbox>> {
    Ok(axum::Json(s.rt.set_ttl(&id, req.ttl_seconds).await?))
}

/// Buffered exec; with `background: true`, starts the process and answers
/// 201 with its id instead.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/exec", params(("id" = String, Path)), request_body = ExecRequest,
    responses((status = 200, body = ExecResult), (status = 201, body = ProcessStarted), (status = 409, body = ErrorBody)))]
async fn exec(
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
async fn exec_stream(
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
async fn exec_ws(
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
async fn attach_ws(
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

async fn first_request(socket: &mut WebSocket) -> Result<ExecRequest, ApiError> {
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
}

async fn ws_error(mut socket: WebSocket, e: ApiError) {
    let ev = ExecEvent::Error { error: e };
    let _ = socket
        .send(Message::Text(
            serde_json::to_string(&ev).unwrap_or_default().into(),
        ))
        .await;
    let _ = socket.send(Message::Close(None)).await;
}

async fn pump_ws(socket: WebSocket, stream: ExecStream) {
    let ExecStream { mut events, input } = stream;
    let (mut tx, mut rx) = socket.split();
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = rx.next().await {
            match msg {
                Message::Text(t) => match serde_json::from_str::<ExecClientMessage>(t.as_str()) {
                    Ok(m) => {
                        if input.send(m).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "ignoring an invalid exec client message")
                    }
                },
                Message::Binary(b) => {
                    use base64::Engine;
                    let m = ExecClientMessage::Stdin {
                        data: None,
                        data_b64: Some(base64::engine::general_purpose::STANDARD.encode(&b)),
                    };
                    if input.send(m).await.is_err() {
                        return;
                    }
                }
                Message::Close(_) => return,
                _ => {}
            }
        }
    });
    while let Some(ev) = events.recv().await {
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
    let _ = tx.send(Message::Close(None)).await;
    reader.abort();
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/processes", params(("id" = String, Path)), responses((status = 200, body = ProcessList)))]
async fn processes(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<ProcessList>> {
    Ok(axum::Json(s.rt.processes(&id).await?))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/processes/{pid}/signal", params(("id" = String, Path), ("pid" = String, Path)),
    request_body = SignalRequest, responses((status = 204), (status = 404, body = ErrorBody)))]
async fn signal(
    State(s): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    Json(req): Json<SignalRequest>,
) -> ApiResult<StatusCode> {
    s.rt.signal_process(&id, &pid, req.signal).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct PathQuery {
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

fn query(
    q: Result<Query<PathQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<PathQuery> {
    let Query(q) = q.map_err(|e| ApiError::invalid(format!("invalid query: {}", e.body_text())))?;
    if q.path.is_empty() {
        return Err(ApiError::invalid("query parameter `path` must not be empty").into());
    }
    Ok(q)
}

fn body_reader(body: Body) -> ByteReader {
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    Box::pin(tokio_util::io::StreamReader::new(stream))
}

fn check_length(headers: &HeaderMap, max: u64) -> ApiResult<()> {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max
    {
        return Err(ApiError::invalid(format!(
            "upload of {len} bytes is larger than the limit of {max} bytes"
        ))
        .into());
    }
    Ok(())
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/files", params(("id" = String, Path), PathQuery),
    responses((status = 200, description = "file content; FileInfo JSON in the x-hull-file-info header", content_type = "application/octet-stream"),
        (status = 404, body = ErrorBody)))]
async fn read_file(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<PathQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let q = query(q)?;
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
    if let Ok(v) = HeaderValue::from_str(&info.size.to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    Ok(resp)
}

#[utoipa::path(put, path = "/v1/sandboxes/{id}/files", params(("id" = String, Path), PathQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = FileInfo), (status = 400, body = ErrorBody)))]
async fn write_file(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<PathQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<axum::Json<FileInfo>> {
    let q = query(q)?;
    check_length(&headers, s.max_upload)?;
    let mode = match &q.mode {
        Some(m) => Some(
            u32::from_str_radix(m, 8)
                .map_err(|_| ApiError::invalid(format!("mode {m:?} is not an octal number")))?,
        ),
        None => None,
    };
    Ok(axum::Json(
        s.rt.write_file(&id, &q.path, mode, s.max_upload, body_reader(body))
            .await?,
    ))
}

#[utoipa::path(delete, path = "/v1/sandboxes/{id}/files", params(("id" = String, Path), PathQuery),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn remove_file(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<PathQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<StatusCode> {
    let q = query(q)?;
    s.rt.remove(&id, &q.path, q.recursive.unwrap_or(false))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/stat", params(("id" = String, Path), PathQuery),
    responses((status = 200, body = FileInfo), (status = 404, body = ErrorBody)))]
async fn stat(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<PathQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<FileInfo>> {
    let q = query(q)?;
    Ok(axum::Json(s.rt.stat(&id, &q.path).await?))
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/list", params(("id" = String, Path), PathQuery),
    responses((status = 200, body = FileList), (status = 404, body = ErrorBody)))]
async fn list_dir(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<PathQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<FileList>> {
    let q = query(q)?;
    let depth = q.depth.unwrap_or(1);
    if !(1..=32).contains(&depth) {
        return Err(ApiError::invalid("depth must be 1 to 32").into());
    }
    Ok(axum::Json(s.rt.list_dir(&id, &q.path, depth).await?))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/mkdir", params(("id" = String, Path)), request_body = MkdirRequest,
    responses((status = 204), (status = 409, body = ErrorBody)))]
async fn mkdir(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<MkdirRequest>,
) -> ApiResult<StatusCode> {
    s.rt.mkdir(&id, &req.path, req.parents).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/rename", params(("id" = String, Path)), request_body = RenameRequest,
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn rename(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<RenameRequest>,
) -> ApiResult<StatusCode> {
    s.rt.rename(&id, &req.from, &req.to).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/archive", params(("id" = String, Path), PathQuery),
    responses((status = 200, description = "a tar stream of the file or directory", content_type = "application/x-tar")))]
async fn archive_get(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<PathQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let q = query(q)?;
    let reader = s.rt.tar_get(&id, &q.path).await?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(reader));
    Ok(([(header::CONTENT_TYPE, "application/x-tar")], body).into_response())
}

#[utoipa::path(put, path = "/v1/sandboxes/{id}/files/archive", params(("id" = String, Path), PathQuery),
    request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses((status = 204), (status = 400, body = ErrorBody)))]
async fn archive_put(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<PathQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    let q = query(q)?;
    check_length(&headers, s.max_upload)?;
    s.rt.tar_put(&id, &q.path, s.max_upload, body_reader(body))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct ResetResult {
    /// What was removed.
    removed: Vec<String>,
}

#[utoipa::path(post, path = "/v1/system/reset", responses((status = 200, body = ResetResult)))]
async fn system_reset(State(s): State<AppState>) -> ApiResult<Response> {
    let removed = s.rt.system_reset().await?;
    Ok(json(StatusCode::OK, ResetResult { removed }))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "hull",
        description = "The hull agent runtime API. Errors are `{\"error\": {\"kind\", \"message\"}}`; kinds: invalid_argument 400, unauthenticated 401, permission_denied 403, not_found 404, conflict 409, resource_exhausted 429, unavailable 503, internal 500."
    ),
    paths(
        health,
        version,
        info,
        create,
        list,
        inspect,
        destroy,
        pause,
        resume,
        stop,
        set_ttl,
        exec,
        exec_stream,
        exec_ws,
        processes,
        signal,
        attach_ws,
        read_file,
        write_file,
        remove_file,
        stat,
        list_dir,
        mkdir,
        rename,
        archive_get,
        archive_put,
        system_reset
    ),
    components(schemas(
        ErrorBody,
        ApiError,
        ErrorKind,
        ExecEvent,
        ExecClientMessage,
        ResetResult
    ))
)]
struct ApiDoc;

/// The OpenAPI document (committed as `docs/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = "v1".into();
    doc
}

/// Create `<state>/token` (32 random bytes, hex, mode 0600) on first start.
pub fn ensure_token(state_dir: &std::path::Path) -> std::io::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = state_dir.join("token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if t.len() >= 32 {
            return Ok(t);
        }
    }
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| std::io::Error::other(e.to_string()))?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = state_dir.join(".token.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(token)
}

/// Bind the unix socket: refuse if a live daemon answers there, replace a
/// stale file, create the parent directory (0755) and make it 0660.
fn bind_unix(path: &std::path::Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another daemon is already serving on {}", path.display());
        }
        std::fs::remove_file(path)
            .map_err(|e| anyhow::anyhow!("cannot remove stale socket {}: {e}", path.display()))?;
    }
    let l = tokio::net::UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
}

/// `hull serve`: run the daemon until SIGTERM or SIGINT.
pub async fn run(cfg: ServerConfig) -> anyhow::Result<()> {
    if !cfg.guest_binary.is_file() {
        anyhow::bail!(
            "the guest agent binary {} is missing (it is installed next to `hull`; set HULL_GUEST_BINARY to override)",
            cfg.guest_binary.display()
        );
    }
    let listener = bind_unix(&cfg.socket)?;
    let rt = match Runtime::open(RuntimeConfig {
        state_dir: cfg.state_dir.clone(),
        guest_binary: cfg.guest_binary.clone(),
        defaults: cfg.defaults,
    })
    .await
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = std::fs::remove_file(&cfg.socket);
            anyhow::bail!("{}", e.message);
        }
    };
    let token = ensure_token(std::path::Path::new(&rt.host_info().state_dir))?;
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let unix_app = router(rt.clone(), Auth::None, cfg.max_upload_bytes);
    let mut rx1 = stop_rx.clone();
    let unix = tokio::spawn(async move {
        axum::serve(listener, unix_app)
            .with_graceful_shutdown(async move {
                let _ = rx1.wait_for(|v| *v).await;
            })
            .await
    });
    let tcp = match cfg.listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
            let app = router(
                rt.clone(),
                Auth::Bearer(Arc::new(token)),
                cfg.max_upload_bytes,
            );
            let mut rx2 = stop_rx.clone();
            eprintln!(
                "hull: also serving on http://{} (bearer token in {}/token)",
                l.local_addr()?,
                cfg.state_dir.display()
            );
            Some(tokio::spawn(async move {
                axum::serve(l, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx2.wait_for(|v| *v).await;
                    })
                    .await
            }))
        }
        None => None,
    };
    eprintln!(
        "hull: serving on {} (state {})",
        cfg.socket.display(),
        cfg.state_dir.display()
    );
    shutdown.await;
    eprintln!("hull: shutting down (sandboxes keep running)");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), unix).await;
    if let Some(t) = tcp {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
    }
    rt.shutdown().await;
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(())
}
