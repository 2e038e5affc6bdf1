//! A small HTTP/1.1 client for the daemon: over its unix socket, or over
//! TCP (`HULL_URL` + `HULL_TOKEN`), plus WebSocket upgrades for
//! interactive exec. One connection per request; plenty for a CLI.

use std::path::PathBuf;

use anyhow::{Context, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hull_api::{ApiError, ErrorBody, ErrorKind};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Where the daemon is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp {
        authority: String,
        token: Option<String>,
    },
}

/// A failure talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon answered with an API error.
    #[error("{}", .0.message)]
    Api(ApiError),
    /// The daemon could not be reached.
    #[error("cannot reach the hull daemon at {endpoint}: {source}")]
    Unreachable {
        endpoint: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

pub type Body = BoxBody<Bytes, std::io::Error>;

pub fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A body streamed from an async reader.
pub fn reader_body(r: impl tokio::io::AsyncRead + Send + Sync + 'static) -> Body {
    use futures_util::StreamExt;
    let s = tokio_util::io::ReaderStream::new(r).map(|c| c.map(Frame::data));
    BodyExt::boxed(StreamBody::new(s))
}

#[derive(Debug, Clone)]
pub struct Client {
    pub endpoint: Endpoint,
}

pub enum Stream {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

impl Client {
    /// From the environment: `HULL_URL` (+ `HULL_TOKEN`) wins over the socket.
    pub fn from_env(socket: PathBuf) -> anyhow::Result<Client> {
        if let Ok(url) = std::env::var("HULL_URL")
            && !url.is_empty()
        {
            let rest = url
                .strip_prefix("http://")
                .ok_or_else(|| anyhow!("HULL_URL must start with http:// (got {url:?})"))?;
            let authority = rest.trim_end_matches('/').to_string();
            if authority.is_empty() || authority.contains('/') {
                anyhow::bail!("HULL_URL must be http://HOST:PORT (got {url:?})");
            }
            let token = std::env::var("HULL_TOKEN").ok().filter(|t| !t.is_empty());
            return Ok(Client {
                endpoint: Endpoint::Tcp { authority, token },
            });
        }
        Ok(Client {
            endpoint: Endpoint::Unix(socket),
        })
    }

    pub fn describe(&self) -> String {
        match &self.endpoint {
            Endpoint::Unix(p) => p.display().to_string(),
            Endpoint::Tcp { authority, .. } => format!("http://{authority}"),
        }
    }

    pub async fn connect(&self) -> Result<Stream, ClientError> {
        let r = match &self.endpoint {
            Endpoint::Unix(p) => tokio::net::UnixStream::connect(p).await.map(Stream::Unix),
            Endpoint::Tcp { authority, .. } => tokio::net::TcpStream::connect(authority)
                .await
                .map(Stream::Tcp),
        };
        r.map_err(|source| ClientError::Unreachable {
            endpoint: self.describe(),
            source,
        })
    }

    fn authority(&self) -> &str {
        match &self.endpoint {
            Endpoint::Unix(_) => "localhost",
            Endpoint::Tcp { authority, .. } => authority,
        }
    }

    fn token(&self) -> Option<&str> {
        match &self.endpoint {
            Endpoint::Tcp { token, .. } => token.as_deref(),
            Endpoint::Unix(_) => None,
        }
    }

    /// Send a request; non-2xx answers become [`ClientError::Api`].
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Body,
    ) -> Result<Response<Incoming>, ClientError> {
        let stream = self.connect().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.authority());
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(t) = self.token() {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(body)
            .map_err(|e| anyhow!("building a request: {e}"))?;
        let resp = match stream {
            Stream::Unix(s) => send_on(s, req).await?,
            Stream::Tcp(s) => send_on(s, req).await?,
        };
        if resp.status().is_success() || resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => Err(ClientError::Api(e.error)),
            Err(_) => Err(ClientError::Api(ApiError::new(
                ErrorKind::Internal,
                format!(
                    "the daemon answered {status}: {}",
                    String::from_utf8_lossy(&bytes)
                ),
            ))),
        }
    }

    /// A JSON call.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let (ct, b) = match body {
            Some(v) => (
                Some("application/json"),
                full(serde_json::to_vec(v).map_err(anyhow::Error::from)?),
            ),
            None => (None, empty()),
        };
        let resp = self.send(method, path, ct, b).await?;
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| anyhow!("reading the answer: {e}"))?
            .to_bytes();
        serde_json::from_slice(&bytes)
            .map_err(|e| anyhow!("unexpected answer from the daemon: {e}").into())
    }

    /// A call answered with no content.
    pub async fn call_empty(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<(), ClientError> {
        let (ct, b) = match body {
            Some(v) => (
                Some("application/json"),
                full(serde_json::to_vec(v).map_err(anyhow::Error::from)?),
            ),
            None => (None, empty()),
        };
        let resp = self.send(method, path, ct, b).await?;
        let _ = resp.into_body().collect().await;
        Ok(())
    }

    /// Open a WebSocket on `path`.
    pub async fn websocket(
        &self,
        path: &str,
    ) -> Result<tokio_tungstenite::WebSocketStream<Stream>, ClientError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{}{path}", self.authority())
            .into_client_request()
            .map_err(|e| anyhow!("building a websocket request: {e}"))?;
        if let Some(t) = self.token() {
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| anyhow!("bad token"))?,
            );
        }
        let stream = self.connect().await?;
        let (ws, _) = tokio_tungstenite::client_async(req, stream)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(resp) => {
                    let body = resp.body().clone().unwrap_or_default();
                    match serde_json::from_slice::<ErrorBody>(&body) {
                        Ok(e) => ClientError::Api(e.error),
                        Err(_) => {
                            ClientError::Other(anyhow!("websocket refused: {}", resp.status()))
                        }
                    }
                }
                other => ClientError::Other(anyhow!("websocket: {other}")),
            })?;
        Ok(ws)
    }
}

async fn send_on<S>(stream: S, req: Request<Body>) -> Result<Response<Incoming>, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake with the daemon")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender
        .send_request(req)
        .await
        .context("sending a request to the daemon")?)
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Unix(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Percent-encode a query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
