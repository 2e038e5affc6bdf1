//! Port exposure over HTTP: register, list and remove a sandbox's exposed
//! ports (`/v1/sandboxes/{id}/ports`), the HTTP and WebSocket reverse
//! proxy at `/v1/sandboxes/{id}/ports/{port}/http/{path}`, and raw TCP
//! carried over a WebSocket at `/v1/sandboxes/{id}/ports/{port}/tcp`. All
//! behind the same auth as every route. Each proxied request or TCP
//! session is its own connection made by the guest agent inside the
//! sandbox (`Runtime::port_stream`), so it works whatever the sandbox's
//! network mode is.
//!
//! The HTTP proxy: any method; the rest of the path and the query string
//! are passed verbatim (`..` included: the service sees it, the route
//! cannot be escaped); request and response bodies are streamed (the
//! request body at most `max_upload` bytes, like uploads); hop-by-hop
//! headers are dropped, `Host` becomes `localhost:PORT`, `X-Forwarded-Host`,
//! `-Proto` and `-Prefix` are set, and the client's `Authorization` header
//! (the daemon's credential) is never passed on. An `Upgrade` request
//! (WebSocket) is forwarded, and after the service answers 101 both
//! connections are spliced. The raw TCP route: binary (or text) messages
//! are the bytes of the connection; an empty binary message from the
//! client half-closes it (the service reads EOF); the daemon closes the
//! WebSocket when the service closes.
//!
//! Limits: the proxy is path-prefixed, so a page that uses absolute links
//! (`/static/app.js`) reaches the daemon's root, not the service
//! (host-based routing needs wildcard DNS: future work); browsers cannot
//! send the bearer token on their own, so the daemon's TCP listener is
//! usable from a browser only through a client that adds it (the CLI's
//! `hull expose --local` forwarder).

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use hull_api::*;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::AppState;
use crate::error::{ApiResult, AppError, Json};

/// Bytes read from a TCP stream per WebSocket message.
const TCP_CHUNK: usize = 64 << 10;
/// Largest WebSocket message accepted on the raw TCP route.
pub const MAX_TCP_MESSAGE: usize = 1 << 20;

/// `Host` of the request, when it looks like a host name and port.
fn request_host(h: &HeaderMap) -> &str {
    h.get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.:[]_".contains(c))
        })
        .unwrap_or("localhost")
}

fn route_of(sandbox: &str, port: u16, protocol: PortProtocol) -> String {
    match protocol {
        PortProtocol::Http => format!("/v1/sandboxes/{sandbox}/ports/{port}/http/"),
        PortProtocol::Tcp => format!("/v1/sandboxes/{sandbox}/ports/{port}/tcp"),
    }
}

fn view(sandbox: &str, x: &PortExposure, host: &str) -> ExposedPort {
    let path = route_of(sandbox, x.port, x.protocol);
    let scheme = match x.protocol {
        PortProtocol::Http => "http",
        PortProtocol::Tcp => "ws",
    };
    ExposedPort {
        port: x.port,
        protocol: x.protocol,
        sandbox: sandbox.to_string(),
        url: format!("{scheme}://{host}{path}"),
        path,
        created_at: x.created_at,
    }
}

/// Expose a TCP port of the sandbox through the daemon (idempotent: an
/// exposed port keeps its exposure, with the requested protocol). The
/// service need not listen yet: requests then get 502 until it does.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/ports", params(("id" = String, Path, description = "sandbox id or name")),
    request_body = ExposePort,
    responses((status = 200, body = ExposedPort), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub(crate) async fn expose(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(req): Json<ExposePort>,
) -> ApiResult<axum::Json<ExposedPort>> {
    let (sid, x) = s.rt.expose_port(&id, req).await?;
    Ok(axum::Json(view(&sid, &x, request_host(&headers))))
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/ports", params(("id" = String, Path, description = "sandbox id or name")),
    responses((status = 200, body = ExposedPorts), (status = 404, body = ErrorBody)))]
pub(crate) async fn list_ports(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<axum::Json<ExposedPorts>> {
    let (sid, xs) = s.rt.exposed_ports(&id).await?;
    let host = request_host(&headers);
    Ok(axum::Json(ExposedPorts {
        ports: xs.iter().map(|x| view(&sid, x, host)).collect(),
    }))
}

/// Stop exposing the port (connections already open through it stay).
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/ports/{port}",
    params(("id" = String, Path, description = "sandbox id or name"), ("port" = u16, Path, description = "1 to 65535")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn unexpose(
    State(s): State<AppState>,
    Path((id, port)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let port = parse_port(&port)?;
    s.rt.unexpose_port(&id, port).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A connection to an exposed port; a service that is not listening is
/// 502 (kind `unavailable`), as a gateway answers.
async fn connect(
    s: &AppState,
    id: &str,
    port: u16,
) -> Result<(String, PortProtocol, Box<dyn hull_runtime::DuplexStream>), Response> {
    s.rt.port_stream(id, port).await.map_err(|e| {
        let refused = e.kind == ErrorKind::Unavailable;
        let mut r = AppError(e).into_response();
        if refused {
            *r.status_mut() = StatusCode::BAD_GATEWAY;
        }
        r
    })
}

/// Headers that belong to one connection, never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Drop hop-by-hop headers (and those `Connection` names); keep `Upgrade`
/// (and `Connection: upgrade`) when `upgrade` is set.
fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        if !(upgrade && n == header::UPGRADE) {
            h.remove(n);
        }
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::UPGRADE);
    }
}

fn wants_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The part of the raw request path after `/v1/sandboxes/{id}/ports/{port}/http`,
/// verbatim (still percent-encoded), starting with `/`.
fn rest_of(uri: &Uri) -> String {
    let rest = uri.path().splitn(8, '/').nth(7).unwrap_or("");
    format!("/{rest}")
}

/// The HTTP reverse proxy to an exposed port: any method; `{path}` is the
/// rest of the path (it may contain `/`), passed verbatim with the query
/// string. A WebSocket (any `Upgrade`) request is forwarded and spliced
/// after the service's 101. Errors: port not a number in 1..65535 (400),
/// not exposed (404), exposed as `tcp` only (409), sandbox not running
/// (409), nothing listening (502, kind `unavailable`), request body over
/// the upload limit (400).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/ports/{port}/http/{path}",
    params(("id" = String, Path, description = "sandbox id or name"), ("port" = u16, Path, description = "an exposed port"),
        ("path" = String, Path, description = "the rest of the path (may contain `/`), passed to the service verbatim; every method is proxied, not only GET")),
    responses((status = 200, description = "whatever the service answers, streamed"),
        (status = 101, description = "the service accepted a WebSocket (or other) upgrade; bytes are spliced both ways"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 502, body = ErrorBody, description = "nothing listens on the port inside the sandbox (kind `unavailable`)")))]
pub(crate) async fn proxy_http(State(s): State<AppState>, req: Request) -> Response {
    match proxy_inner(&s, req).await {
        Ok(r) => r,
        Err(r) => r,
    }
}

fn bad(e: ApiError) -> Response {
    AppError(e).into_response()
}

/// `/v1/sandboxes/{id}/ports/{port}/http`: redirect to the same path with
/// a `/`, so that relative links in the service's pages resolve under it.
pub(crate) async fn proxy_http_bare(req: Request) -> Response {
    let mut loc = format!("{}/", req.uri().path());
    if let Some(q) = req.uri().query() {
        loc.push('?');
        loc.push_str(q);
    }
    match HeaderValue::from_str(&loc) {
        Ok(v) => (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, v)]).into_response(),
        Err(_) => bad(ApiError::invalid("the request path is not valid")),
    }
}

async fn proxy_inner(s: &AppState, mut req: Request) -> Result<Response, Response> {
    // `/v1/sandboxes/{id}/ports/{port}/http...`: the router matched it.
    let segs: Vec<&str> = req.uri().path().splitn(8, '/').collect();
    let id = segs.get(3).copied().unwrap_or("").to_string();
    let port = parse_port(segs.get(5).copied().unwrap_or("")).map_err(bad)?;
    let upgrade = wants_upgrade(req.headers());
    if let Some(len) = crate::error::content_length(req.headers())
        && len > s.max_upload
    {
        let b = std::mem::take(req.body_mut());
        if len <= crate::error::DRAIN_MAX {
            crate::error::drain(b).await;
        }
        return Err(bad(too_large(s.max_upload)));
    }
    let (sid, protocol, stream) = connect(s, &id, port).await?;
    if protocol == PortProtocol::Tcp {
        return Err(bad(ApiError::conflict(format!(
            "port {port} of sandbox {sid} is exposed for raw TCP only: use \
             {} or expose it again with protocol http",
            route_of(&sid, port, PortProtocol::Tcp)
        ))));
    }

    // The request to the service.
    let mut path_q = rest_of(req.uri());
    if let Some(q) = req.uri().query() {
        path_q.push('?');
        path_q.push_str(q);
    }
    let uri: Uri = path_q.parse().map_err(|_| {
        bad(ApiError::invalid(
            "the proxied path is not a valid URI path",
        ))
    })?;
    let orig_host = req.headers().get(header::HOST).cloned();
    let client_upgrade = if upgrade {
        req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    let (mut parts, body) = req.into_parts();
    let h = &mut parts.headers;
    strip_hop_by_hop(h, upgrade);
    h.remove(header::AUTHORIZATION);
    h.remove("x-forwarded-for");
    h.remove("forwarded");
    let host = HeaderValue::from_str(&format!("localhost:{port}"))
        .map_err(|_| bad(ApiError::internal("building the Host header")))?;
    h.insert(header::HOST, host);
    if let Some(v) = orig_host {
        h.insert("x-forwarded-host", v);
    } else {
        h.remove("x-forwarded-host");
    }
    h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/sandboxes/{sid}/ports/{port}/http")) {
        h.insert("x-forwarded-prefix", v);
    }
    parts.uri = uri;
    parts.version = axum::http::Version::HTTP_11;
    let limit = usize::try_from(s.max_upload).unwrap_or(usize::MAX);
    let body = http_body_util::Limited::new(body, limit);
    let out = axum::http::Request::from_parts(parts, body);

    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| bad(upstream_error(&sid, port, &e)))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut resp = sender.send_request(out).await.map_err(|e| {
        if is_too_large(&e) {
            bad(too_large(s.max_upload))
        } else {
            let mut r = bad(upstream_error(&sid, port, &e));
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            r
        }
    })?;

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_up) = client_upgrade else {
            return Err(bad(ApiError::invalid(
                "the service accepted an upgrade this connection cannot make",
            )));
        };
        let service_up = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (Ok(c), Ok(u)) = (client_up.await, service_up.await) else {
                return;
            };
            let mut c = TokioIo::new(c);
            let mut u = TokioIo::new(u);
            let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
        });
        let (mut parts, _) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, true);
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    Ok(Response::from_parts(parts, Body::new(body)))
}

fn too_large(limit: u64) -> ApiError {
    ApiError::invalid(format!(
        "request body larger than the daemon's upload limit ({limit} bytes)"
    ))
}

fn is_too_large(e: &hyper::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(x) = src {
        if x.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        src = x.source();
    }
    false
}

fn upstream_error(sid: &str, port: u16, e: &hyper::Error) -> ApiError {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        msg.push_str(": ");
        msg.push_str(&x.to_string());
        src = x.source();
    }
    ApiError::unavailable(format!(
        "the service on port {port} inside sandbox {sid} did not answer over HTTP: {msg}"
    ))
}

/// Raw TCP to an exposed port (either protocol), over a WebSocket: each
/// WebSocket is one TCP connection made inside the sandbox. Binary (or
/// text) messages carry the bytes; an empty binary message from the
/// client half-closes the connection; the daemon closes the WebSocket when
/// the service does. Errors before the upgrade: as the HTTP proxy's.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/ports/{port}/tcp",
    params(("id" = String, Path, description = "sandbox id or name"), ("port" = u16, Path, description = "an exposed port")),
    responses((status = 101, description = "WebSocket: binary messages are the TCP connection's bytes"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 502, body = ErrorBody, description = "nothing listens on the port inside the sandbox (kind `unavailable`)")))]
pub(crate) async fn proxy_tcp(
    State(s): State<AppState>,
    Path((id, port)): Path<(String, String)>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let mut r = proxy_tcp_inner(s, id, port, ws).await;
    if r.status() != StatusCode::SWITCHING_PROTOCOLS {
        // WebSocket clients read a refusal's body until the connection
        // ends: end it.
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

async fn proxy_tcp_inner(
    s: AppState,
    id: String,
    port: String,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let port = match parse_port(&port) {
        Ok(p) => p,
        Err(e) => return bad(e),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return bad(ApiError::invalid(format!(
                "this route is a WebSocket (raw TCP as binary messages): {}",
                e.body_text()
            )));
        }
    };
    let stream = match connect(&s, &id, port).await {
        Ok((_, _, st)) => st,
        Err(r) => return r,
    };
    ws.max_message_size(MAX_TCP_MESSAGE)
        .max_frame_size(MAX_TCP_MESSAGE)
        .on_upgrade(move |socket| splice_ws(socket, stream))
}

/// Carry bytes between a WebSocket and a TCP stream until either ends.
async fn splice_ws(socket: WebSocket, stream: Box<dyn hull_runtime::DuplexStream>) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (mut tx, mut rx) = socket.split();
    let up = async {
        while let Some(Ok(m)) = rx.next().await {
            let data = match m {
                Message::Binary(b) => b,
                Message::Text(t) => bytes::Bytes::copy_from_slice(t.as_str().as_bytes()),
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Close(_) => break,
            };
            if data.is_empty() {
                // Half-close: the service reads EOF, its answer still flows.
                let _ = wr.shutdown().await;
                std::future::pending::<()>().await;
            }
            if wr.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; TCP_CHUNK];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send(Message::Binary(bytes::Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Message::Close(None)).await;
        let _ = tx.close().await;
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}
