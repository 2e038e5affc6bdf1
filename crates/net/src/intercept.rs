//! TLS interception: serves the connections that the egress proxy hands
//! over for names the rules intercept (header rules, and every name of a
//! `record` or `replay` sandbox).
//!
//! Per connection: TLS is terminated with a leaf certificate for the
//! connection's name signed by the sandbox's CA ([`crate::ca`]; ALPN
//! `http/1.1` only), or, for plain HTTP, the stream is read as is. A hyper
//! HTTP/1.1 server reads the requests. Per request:
//! - a `Host` naming another name than the connection's gets `421`;
//! - `replay`: answered from the sandbox's cassette ([`crate::cassette`]),
//!   never from the network; a miss is `502` with `x-hull-replay: miss` and
//!   a [`Denied`] event (`proto` `http`, reason `replay miss: ...`);
//! - otherwise the request is forwarded to `name:port` over one upstream
//!   connection per client connection (made on first use through the
//!   [`Connector`]: hull's resolver and address guard in the daemon), over
//!   TLS verified against the configured roots ([`upstream_roots`]: the
//!   system bundle plus an optional extra CA file) when the client spoke
//!   TLS. The header rules of the name are set (overwriting what the
//!   sandbox sent) after the request is recorded: secrets reach the
//!   upstream only. Bodies stream both ways; `record` keeps a bounded copy
//!   of each ([`cassette::MAX_RECORDED_BODY`]) and appends the exchange
//!   when both bodies have completed. Upstream failures are `502` with a
//!   short text.
//! - A WebSocket (any `Upgrade`) is passed to the upstream; after its `101`
//!   both upgraded streams are spliced (not recorded: in replay such a
//!   request is a miss).
//!
//! Secrets: injected values are marked sensitive, never logged, never put
//! in events; a response header whose value contains an injected value (8
//! bytes or longer) or its credential part (`Bearer X`: `X`) is dropped
//! before it reaches the sandbox. A response
//! BODY that echoes the request's headers (a debugging endpoint) does
//! reveal the secret to the sandbox: hull does not rewrite live bodies (a
//! cassette stores such a body with the value masked by `*`). To make that
//! mask possible, a recorded request with injected headers asks the
//! upstream for `Accept-Encoding: identity`, and a content-encoded answer
//! to it is not recorded (a compressed echo could not be found).
//!
//! Limits: HTTP/1.1 only (ALPN never offers h2), one upstream connection
//! per client connection (requests on it are sequential anyway), no
//! client certificates towards the upstream.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls::crypto::ring as provider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::ca::{CaStore, SandboxCa};
use crate::cassette::{
    self, CassetteSet, Exchange, Key, RecordedBody, RecordedRequest, RecordedResponse, Recorder,
};
use crate::rules::{Denied, EventSink, Mode, SandboxRules};

/// The system trust bundle (Debian's `ca-certificates`).
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Header on hull's own replay answers (`miss`, `truncated`, `upgrade`,
/// `unavailable`).
pub const REPLAY_HEADER: &str = "x-hull-replay";

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type HBody = BoxBody<Bytes, BoxError>;
/// A boxed, sendable future.
pub type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Errors of setting the interceptor up.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error("reading trust roots {path}: {why}")]
    Roots { path: String, why: String },
    #[error("no usable trust roots (neither {SYSTEM_ROOTS} nor an extra CA file had any)")]
    NoRoots,
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// The roots upstream certificates are verified against: the system bundle
/// (when present) plus every certificate in `extra_ca` (a PEM file; for
/// tests' fake internet, `hull serve --upstream-ca FILE`).
pub fn upstream_roots(
    system: Option<&Path>,
    extra_ca: Option<&Path>,
) -> Result<RootCertStore, InterceptError> {
    let mut roots = RootCertStore::empty();
    if let Some(sys) = system
        && sys.exists()
    {
        let certs = read_certs(sys)?;
        let (_ok, _bad) = roots.add_parsable_certificates(certs);
    }
    if let Some(extra) = extra_ca {
        let certs = read_certs(extra)?;
        if certs.is_empty() {
            return Err(InterceptError::Roots {
                path: extra.display().to_string(),
                why: "no PEM certificate in it".into(),
            });
        }
        for c in certs {
            roots.add(c).map_err(|e| InterceptError::Roots {
                path: extra.display().to_string(),
                why: e.to_string(),
            })?;
        }
    }
    if roots.is_empty() {
        return Err(InterceptError::NoRoots);
    }
    Ok(roots)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, InterceptError> {
    let bad = |why: String| InterceptError::Roots {
        path: path.display().to_string(),
        why,
    };
    CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))
}

/// Opens the TCP connection to an upstream name (the daemon: hull's
/// resolver with its address guard; tests: a fixed loopback address).
pub trait Connector: Send + Sync {
    fn connect(
        &self,
        name: String,
        port: u16,
        rules: Arc<SandboxRules>,
    ) -> BoxFut<io::Result<TcpStream>>;
}

impl<F> Connector for F
where
    F: Fn(String, u16) -> BoxFut<io::Result<TcpStream>> + Send + Sync,
{
    fn connect(
        &self,
        name: String,
        port: u16,
        _rules: Arc<SandboxRules>,
    ) -> BoxFut<io::Result<TcpStream>> {
        self(name, port)
    }
}

/// [`Connector`] through hull's resolver (the egress proxy's).
pub struct ResolverConnector(pub Arc<crate::resolve::Resolver>);

impl Connector for ResolverConnector {
    fn connect(
        &self,
        name: String,
        port: u16,
        rules: Arc<SandboxRules>,
    ) -> BoxFut<io::Result<TcpStream>> {
        let r = self.0.clone();
        Box::pin(async move {
            r.connect(&name, port, &rules)
                .await
                .map_err(|e| io::Error::other(e.to_string()))
        })
    }
}

/// Knobs of the interceptor.
#[derive(Debug, Clone)]
pub struct InterceptConfig {
    /// Time for the client's TLS handshake.
    pub handshake_timeout: Duration,
    /// Time to connect to the upstream and finish its TLS handshake.
    pub connect_timeout: Duration,
    /// The most bytes of a body kept in a cassette.
    pub max_record_body: usize,
}

impl Default for InterceptConfig {
    fn default() -> Self {
        InterceptConfig {
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(30),
            max_record_body: cassette::MAX_RECORDED_BODY,
        }
    }
}

/// One intercepted client connection, as [`Interceptor::serve`] takes it.
pub struct Session {
    pub stream: TcpStream,
    /// The checked name (SNI or `Host`), lowercase.
    pub name: String,
    /// The port the client meant.
    pub port: u16,
    /// Whether a TLS ClientHello waits in the stream (else plain HTTP).
    pub tls: bool,
    pub rules: Arc<SandboxRules>,
    pub connector: Arc<dyn Connector>,
    pub events: Arc<dyn EventSink>,
}

/// The TLS interceptor: the sandbox CAs, the upstream trust roots and the
/// cassettes.
pub struct Interceptor {
    cas: Arc<CaStore>,
    upstream_tls: Arc<ClientConfig>,
    cassettes: Arc<CassetteSet>,
    cfg: InterceptConfig,
}

impl std::fmt::Debug for Interceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interceptor")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Interceptor {
    /// An interceptor minting leaves from `cas` and verifying upstreams
    /// against `roots`.
    pub fn new(
        cas: Arc<CaStore>,
        roots: RootCertStore,
        cassettes: Arc<CassetteSet>,
        cfg: InterceptConfig,
    ) -> Result<Interceptor, InterceptError> {
        let mut tls = ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Interceptor {
            cas,
            upstream_tls: Arc::new(tls),
            cassettes,
            cfg,
        })
    }

    /// The daemon's interceptor: sandbox CAs under
    /// [`crate::ca::ca_dir`]`(state_dir)`, upstreams verified against
    /// [`SYSTEM_ROOTS`] plus `upstream_ca` (`hull serve --upstream-ca`).
    pub fn for_daemon(
        state_dir: &Path,
        upstream_ca: Option<&Path>,
    ) -> Result<Interceptor, InterceptError> {
        let roots = upstream_roots(Some(Path::new(SYSTEM_ROOTS)), upstream_ca)?;
        Interceptor::new(
            Arc::new(CaStore::new(crate::ca::ca_dir(state_dir))),
            roots,
            Arc::new(CassetteSet::new()),
            InterceptConfig::default(),
        )
    }

    /// The CA store (the runtime installs a sandbox's CA certificate from
    /// it).
    pub fn cas(&self) -> &Arc<CaStore> {
        &self.cas
    }

    /// The open cassettes (the runtime forgets a sandbox's on removal).
    pub fn cassettes(&self) -> &Arc<CassetteSet> {
        &self.cassettes
    }

    /// Serve one intercepted connection until it closes.
    pub async fn serve(&self, s: Session) {
        let sandbox = s.rules.sandbox_id.clone();
        let dest = format!("{}:{}", s.name, s.port);
        // Small writes (TLS handshake, response heads) must not wait for
        // delayed ACKs.
        let _ = s.stream.set_nodelay(true);
        let ca = if s.tls {
            let cas = self.cas.clone();
            let id = sandbox.clone();
            match tokio::task::spawn_blocking(move || cas.get_or_create(&id)).await {
                Ok(Ok(ca)) => Some(ca),
                Ok(Err(e)) => {
                    tracing::warn!(%sandbox, %dest, error = %e, "intercept: no CA for the sandbox");
                    return;
                }
                Err(_) => return,
            }
        } else {
            None
        };
        let recorder = match (s.rules.mode, &s.rules.cassette) {
            (Mode::Record, Some(p)) => match self.cassettes.recorder(p, &sandbox) {
                Ok(r) => Some(r),
                Err(e) => {
                    // The live session goes on; the recording has a gap.
                    tracing::warn!(%sandbox, %dest, error = %e, "intercept: cannot record");
                    None
                }
            },
            (Mode::Record, None) => {
                tracing::warn!(%sandbox, %dest, "intercept: record mode without a cassette: not recording");
                None
            }
            _ => None,
        };
        let conn = Arc::new(Conn {
            name: s.name.clone(),
            port: s.port,
            tls: s.tls,
            rules: s.rules.clone(),
            connector: s.connector.clone(),
            events: s.events.clone(),
            upstream_tls: self.upstream_tls.clone(),
            cassettes: self.cassettes.clone(),
            recorder: recorder.map(|r| record_writer(r, sandbox.clone())),
            cfg: self.cfg.clone(),
            sender: tokio::sync::Mutex::new(None),
        });
        match ca {
            Some(ca) => self.serve_tls(s.stream, ca, conn, &dest).await,
            None => serve_http(TokioIo::new(s.stream), conn).await,
        }
    }

    async fn serve_tls(&self, stream: TcpStream, ca: Arc<SandboxCa>, conn: Arc<Conn>, dest: &str) {
        let name = conn.name.clone();
        let cfg = match tokio::task::spawn_blocking(move || ca.server_config_for(&name)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::warn!(sandbox = %conn.rules.sandbox_id, %dest, error = %e, "intercept: cannot mint a leaf certificate");
                return;
            }
            Err(_) => return,
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        let tls = match tokio::time::timeout(self.cfg.handshake_timeout, acceptor.accept(stream))
            .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                // Usually a client that does not trust the sandbox CA.
                tracing::info!(sandbox = %conn.rules.sandbox_id, %dest, error = %e, "intercept: client TLS handshake failed");
                return;
            }
            Err(_) => return,
        };
        serve_http(TokioIo::new(tls), conn).await;
    }
}

impl crate::proxy::Interceptor for Interceptor {
    fn intercept(&self, c: crate::proxy::Intercepted) -> crate::proxy::BoxFuture {
        let me = Interceptor {
            cas: self.cas.clone(),
            upstream_tls: self.upstream_tls.clone(),
            cassettes: self.cassettes.clone(),
            cfg: self.cfg.clone(),
        };
        Box::pin(async move {
            let s = Session {
                stream: c.stream,
                name: c.name,
                port: c.port,
                tls: c.proto == crate::proxy::AppProto::Tls,
                rules: c.rules,
                connector: Arc::new(ResolverConnector(c.resolver)),
                events: c.events,
            };
            me.serve(s).await;
        })
    }
}

/// Per-connection state shared by its requests.
struct Conn {
    name: String,
    port: u16,
    tls: bool,
    rules: Arc<SandboxRules>,
    connector: Arc<dyn Connector>,
    events: Arc<dyn EventSink>,
    upstream_tls: Arc<ClientConfig>,
    cassettes: Arc<CassetteSet>,
    /// Exchanges of this connection, in order, to the writer task.
    recorder: Option<mpsc::UnboundedSender<PendingExchange>>,
    cfg: InterceptConfig,
    sender: tokio::sync::Mutex<Option<hyper::client::conn::http1::SendRequest<HBody>>>,
}

/// Builds a recorded exchange (CPU work: base64, masking).
type BuildExchange = Box<dyn FnOnce() -> Exchange + Send>;
/// An exchange whose bodies are still streaming; `None` when it will not
/// be recorded.
type PendingExchange = BoxFut<Option<BuildExchange>>;

/// A task appending a connection's exchanges in the order their requests
/// came (each when both of its bodies completed); it ends with the
/// connection.
fn record_writer(rec: Arc<Recorder>, sandbox: String) -> mpsc::UnboundedSender<PendingExchange> {
    let (tx, mut rx) = mpsc::unbounded_channel::<PendingExchange>();
    tokio::spawn(async move {
        while let Some(pending) = rx.recv().await {
            let Some(build) = pending.await else { continue };
            let rec = rec.clone();
            match tokio::task::spawn_blocking(move || rec.append(&build())).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(%sandbox, error = %e, "record: cannot append to the cassette")
                }
                Err(_) => {}
            }
        }
    });
    tx
}

async fn serve_http<I>(io: I, conn: Arc<Conn>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(conn.handle(req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, svc)
        .with_upgrades()
        .await;
}

fn full(b: impl Into<Bytes>) -> HBody {
    Full::new(b.into())
        .map_err(|n: Infallible| match n {})
        .boxed()
}

fn text(status: StatusCode, msg: String) -> Response<HBody> {
    let mut r = Response::new(full(format!("{msg}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Connection-level headers, never forwarded as they are.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Drop hop-by-hop headers (and those `Connection` names); with
/// `upgrade`, keep `Connection: upgrade` and `Upgrade`.
fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .filter(|t| !t.is_empty() && t != "upgrade")
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
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

fn headers_to_record(h: &HeaderMap) -> Vec<(String, cassette::HeaderValue)> {
    h.iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                cassette::HeaderValue::from_bytes(v.as_bytes()),
            )
        })
        .collect()
}

/// The host part of a `Host` value (`name`, `name:port`, `[v6]:port`).
fn host_part(v: &str) -> &str {
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    v.rsplit_once(':').map_or(v, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            v
        }
    })
}

impl Conn {
    fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    fn dest(&self) -> String {
        format!("{}:{}", self.name, self.port)
    }

    async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Response<HBody> {
        // The request must be for the connection's (checked) name.
        let asked = match req.headers().get(header::HOST) {
            // Not text: never matches the name.
            Some(v) => Some(
                v.to_str()
                    .map_or_else(|_| "?".to_string(), |v| host_part(v).to_string()),
            ),
            None => req.uri().host().map(str::to_string),
        };
        if let Some(h) = &asked {
            let h = h.strip_suffix('.').unwrap_or(h);
            if !h.eq_ignore_ascii_case(&self.name) {
                return text(
                    StatusCode::MISDIRECTED_REQUEST,
                    format!("hull: this connection is for {}, not {h}", self.name),
                );
            }
        }
        let target = req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
        if self.rules.mode == Mode::Replay {
            return self.replay(req, target).await;
        }
        let upgrade = is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let recorded_headers = self
            .recorder
            .as_ref()
            .map(|_| headers_to_record(&parts.headers));
        strip_hop_by_hop(&mut parts.headers, upgrade);
        if !parts.headers.contains_key(header::HOST) {
            let default = if self.tls { 443 } else { 80 };
            let host = if self.port == default {
                self.name.clone()
            } else {
                format!("{}:{}", self.name, self.port)
            };
            if let Ok(v) = HeaderValue::from_str(&host) {
                parts.headers.insert(header::HOST, v);
            }
        }
        // Secrets: set after the request was recorded.
        let secrets = self.rules.headers_for(&self.name);
        for (n, v) in &secrets {
            let (Ok(n), Ok(mut v)) = (
                HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_str(v),
            ) else {
                tracing::warn!(sandbox = %self.rules.sandbox_id, header = %n, "intercept: unusable header rule skipped");
                continue;
            };
            v.set_sensitive(true);
            parts.headers.insert(n, v);
        }
        // Recording with injected headers: ask for an unencoded body, so a
        // secret the upstream echoes can be found and masked in the
        // cassette (a compressed one can't; see `encoded` below).
        if self.recorder.is_some() && !secrets.is_empty() {
            parts.headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        parts.uri = match Uri::try_from(target.as_str()) {
            Ok(u) => u,
            Err(_) => return text(StatusCode::BAD_REQUEST, "hull: bad request target".into()),
        };
        parts.version = hyper::Version::HTTP_11;
        let method = parts.method.to_string();
        let (body, req_tee) = match &self.recorder {
            Some(_) => {
                let (tx, rx) = oneshot::channel();
                (
                    Tee::new(body, self.cfg.max_record_body, tx)
                        .map_err(|e| Box::new(e) as BoxError)
                        .boxed(),
                    Some(rx),
                )
            }
            None => (body.map_err(|e| Box::new(e) as BoxError).boxed(), None),
        };
        let up_req = Request::from_parts(parts, body);
        let mut resp = match self.send(up_req).await {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(sandbox = %self.rules.sandbox_id, dest = %self.dest(), error = %e, "intercept: upstream request failed");
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!("hull: upstream {} failed: {e}", self.dest()),
                );
            }
        };
        let up_upgrade = (resp.status() == StatusCode::SWITCHING_PROTOCOLS)
            .then(|| hyper::upgrade::on(&mut resp));
        let (mut rparts, rbody) = resp.into_parts();
        let switching = rparts.status == StatusCode::SWITCHING_PROTOCOLS;
        strip_hop_by_hop(&mut rparts.headers, switching);
        drop_echoed_secrets(&mut rparts.headers, &secrets, &self.rules.sandbox_id);
        if let (Some(cu), Some(uu)) = (client_upgrade, up_upgrade) {
            let sandbox = self.rules.sandbox_id.clone();
            tokio::spawn(async move {
                if let (Ok(c), Ok(u)) = (cu.await, uu.await) {
                    let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                } else {
                    tracing::debug!(%sandbox, "intercept: upgrade did not complete");
                }
            });
        }
        let body = match (&self.recorder, req_tee) {
            (Some(rec), Some(req_rx)) if !switching => {
                let (tx, rx) = oneshot::channel();
                let body = Tee::new(rbody, self.cfg.max_record_body, tx)
                    .map_err(|e| Box::new(e) as BoxError)
                    .boxed();
                let request = RecordedRequest {
                    method,
                    scheme: self.scheme().into(),
                    host: self.name.clone(),
                    port: self.port,
                    target,
                    headers: recorded_headers.unwrap_or_default(),
                    body_sha256: String::new(),
                    body: RecordedBody::new(&[], 0),
                };
                let response = RecordedResponse {
                    status: rparts.status.as_u16(),
                    headers: headers_to_record(&rparts.headers),
                    body: RecordedBody::new(&[], 0),
                };
                let sandbox = self.rules.sandbox_id.clone();
                let secret_values: Vec<String> = secrets.iter().map(|(_, v)| v.clone()).collect();
                // A content-encoded body (an upstream ignoring the
                // `identity` asked for above) can't be searched for the
                // injected values: not recorded.
                let encoded = !secret_values.is_empty()
                    && rparts
                        .headers
                        .get(header::CONTENT_ENCODING)
                        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
                let pending: PendingExchange = Box::pin(async move {
                    let (Ok(q), Ok(r)) = (req_rx.await, rx.await) else {
                        return None;
                    };
                    if !q.complete || !r.complete {
                        tracing::debug!(%sandbox, "record: exchange not recorded (a body did not complete)");
                        return None;
                    }
                    if encoded {
                        tracing::info!(%sandbox, "record: exchange not recorded (a content-encoded response to a request with injected headers can't be checked for them)");
                        return None;
                    }
                    // Hashing is done; encoding (and masking) runs on the
                    // writer's blocking thread.
                    let build: BuildExchange = Box::new(move || {
                        let mut x = Exchange { request, response };
                        x.request.body_sha256 = cassette::hex(&q.sha256);
                        x.request.body = RecordedBody::new(&q.kept, q.len);
                        let mut kept = r.kept;
                        if mask_secrets(&mut kept, &secret_values) {
                            tracing::info!(%sandbox, "record: masked an injected secret echoed in a response body");
                        }
                        x.response.body = RecordedBody::new(&kept, r.len);
                        if x.response.body.truncated {
                            tracing::info!(%sandbox, len = r.len, "record: response body kept truncated");
                        }
                        x
                    });
                    Some(build)
                });
                let _ = rec.send(pending);
                body
            }
            _ => rbody.map_err(|e| Box::new(e) as BoxError).boxed(),
        };
        Response::from_parts(rparts, body)
    }

    /// Send on the connection's upstream connection, (re)connecting when
    /// there is none or it closed.
    async fn send(&self, req: Request<HBody>) -> Result<Response<Incoming>, String> {
        let mut guard = self.sender.lock().await;
        if let Some(s) = guard.as_mut()
            && s.ready().await.is_err()
        {
            *guard = None;
        }
        if guard.is_none() {
            let s = tokio::time::timeout(self.cfg.connect_timeout, self.connect())
                .await
                .map_err(|_| "timed out connecting".to_string())??;
            *guard = Some(s);
        }
        let Some(s) = guard.as_mut() else {
            return Err("no upstream connection".into());
        };
        let fut = s.send_request(req);
        drop(guard);
        fut.await.map_err(|e| short_error(&e))
    }

    async fn connect(&self) -> Result<hyper::client::conn::http1::SendRequest<HBody>, String> {
        let tcp = self
            .connector
            .connect(self.name.clone(), self.port, self.rules.clone())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        if self.tls {
            let sn =
                ServerName::try_from(self.name.clone()).map_err(|e| format!("bad name: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(self.upstream_tls.clone())
                .connect(sn, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            handshake(TokioIo::new(tls)).await
        } else {
            handshake(TokioIo::new(tcp)).await
        }
    }

    async fn replay(&self, req: Request<Incoming>, target: String) -> Response<HBody> {
        let method = req.method().to_string();
        let is_head = req.method() == hyper::Method::HEAD;
        let deny = |reason: String| {
            self.events.denied(
                &self.rules.sandbox_id,
                Denied {
                    proto: "http",
                    dest: self.dest(),
                    reason,
                },
            );
        };
        let Some(path) = self.rules.cassette.clone() else {
            deny("replay without a cassette".into());
            return replay_refusal(
                "unavailable",
                "hull: this sandbox replays, but has no cassette".into(),
            );
        };
        let cassettes = self.cassettes.clone();
        let sandbox = self.rules.sandbox_id.clone();
        let replay = match tokio::task::spawn_blocking(move || cassettes.replay(&path, &sandbox))
            .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(sandbox = %self.rules.sandbox_id, error = %e, "replay: cassette unusable");
                deny("replay cassette unusable".into());
                return replay_refusal("unavailable", format!("hull: {e}"));
            }
            Err(_) => return replay_refusal("unavailable", "hull: replay failed".into()),
        };
        // Hash the body as it streams; nothing is kept.
        let mut body = req.into_body();
        let mut h = Sha256::new();
        while let Some(f) = body.frame().await {
            match f {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        h.update(d);
                    }
                }
                Err(_) => return text(StatusCode::BAD_REQUEST, "hull: request body failed".into()),
            }
        }
        let key = Key {
            method: method.clone(),
            scheme: self.scheme().into(),
            host: self.name.clone(),
            port: self.port,
            target: target.clone(),
            body_sha256: cassette::hex(&h.finalize()),
        };
        let Some(x) = replay.next(&key) else {
            deny(format!(
                "replay miss: {method} {}://{}{target}",
                self.scheme(),
                self.dest()
            ));
            return replay_refusal(
                "miss",
                format!(
                    "hull: no recorded response for {method} {}://{}{target}",
                    self.scheme(),
                    self.dest()
                ),
            );
        };
        if x.response.status == 101 {
            return replay_refusal("upgrade", "hull: protocol upgrades are not replayed".into());
        }
        if x.response.body.truncated {
            deny("replay of a truncated recording".into());
            return replay_refusal(
                "truncated",
                format!(
                    "hull: the recorded response was larger than {} bytes and was not kept whole",
                    cassette::MAX_RECORDED_BODY
                ),
            );
        }
        let Ok(bytes) = x.response.body.bytes() else {
            return replay_refusal("unavailable", "hull: corrupt recorded body".into());
        };
        let mut r = Response::new(full(bytes.clone()));
        *r.status_mut() =
            StatusCode::from_u16(x.response.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let h = r.headers_mut();
        for (n, v) in &x.response.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_bytes(&v.to_bytes()),
            ) {
                h.append(n, v);
            }
        }
        strip_hop_by_hop(h, false);
        let no_body = is_head || matches!(x.response.status, 204 | 304);
        if !no_body {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        }
        r
    }
}

async fn handshake<T>(io: T) -> Result<hyper::client::conn::http1::SendRequest<HBody>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (s, c) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| short_error(&e))?;
    tokio::spawn(async move {
        let _ = c.with_upgrades().await;
    });
    Ok(s)
}

fn short_error(e: &hyper::Error) -> String {
    use std::error::Error;
    match e.source() {
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    }
}

fn replay_refusal(kind: &'static str, msg: String) -> Response<HBody> {
    let mut r = text(StatusCode::BAD_GATEWAY, msg);
    r.headers_mut()
        .insert(REPLAY_HEADER, HeaderValue::from_static(kind));
    r
}

/// What to look for of injected values: each value of 8 bytes or longer,
/// and the credential of a `<scheme> <credential>` value (`Bearer X`:
/// `X`) of 8 bytes or longer, which an upstream may echo alone.
fn secret_needles<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    for v in values {
        let v = v.trim();
        if v.len() >= 8 {
            out.push(v.as_bytes());
        }
        if let Some((_, cred)) = v.rsplit_once(' ')
            && cred.len() >= 8
        {
            out.push(cred.as_bytes());
        }
    }
    out
}

/// Overwrite (with `*`, same length) every occurrence of an injected
/// value (see [`secret_needles`]) in `buf`; whether any was found.
fn mask_secrets(buf: &mut [u8], secrets: &[String]) -> bool {
    let mut found = false;
    for s in secret_needles(secrets.iter().map(String::as_str)) {
        let mut i = 0;
        while i + s.len() <= buf.len() {
            if &buf[i..i + s.len()] == s {
                buf[i..i + s.len()].fill(b'*');
                found = true;
                i += s.len();
            } else {
                i += 1;
            }
        }
    }
    found
}

/// Remove response headers that contain an injected secret value.
fn drop_echoed_secrets(h: &mut HeaderMap, secrets: &[(String, String)], sandbox: &str) {
    let vals = secret_needles(secrets.iter().map(|(_, v)| v.as_str()));
    if vals.is_empty() {
        return;
    }
    let bad: Vec<HeaderName> = h
        .iter()
        .filter(|(_, v)| {
            vals.iter()
                .any(|s| v.as_bytes().windows(s.len()).any(|w| w == *s))
        })
        .map(|(n, _)| n.clone())
        .collect();
    for n in bad {
        tracing::info!(%sandbox, header = %n, "intercept: dropped a response header echoing an injected secret");
        h.remove(n);
    }
}

/// What a [`Tee`] saw.
struct TeeResult {
    kept: Vec<u8>,
    len: u64,
    sha256: [u8; 32],
    complete: bool,
}

/// A body passed through unchanged while a bounded copy, the length and
/// the sha256 are taken; the result is sent when the body ends (or is
/// dropped: then `complete` says whether it had ended).
struct Tee<B: Body> {
    inner: B,
    kept: Vec<u8>,
    limit: usize,
    len: u64,
    hash: Sha256,
    failed: bool,
    ended: bool,
    done: Option<oneshot::Sender<TeeResult>>,
}

impl<B: Body> Tee<B> {
    fn new(inner: B, limit: usize, done: oneshot::Sender<TeeResult>) -> Tee<B> {
        Tee {
            inner,
            kept: Vec::new(),
            limit,
            len: 0,
            hash: Sha256::new(),
            failed: false,
            ended: false,
            done: Some(done),
        }
    }

    fn finish(&mut self) {
        if let Some(tx) = self.done.take() {
            let complete = !self.failed && (self.ended || self.inner.is_end_stream());
            let hash = std::mem::take(&mut self.hash);
            let _ = tx.send(TeeResult {
                kept: std::mem::take(&mut self.kept),
                len: self.len,
                sha256: hash.finalize().into(),
                complete,
            });
        }
    }
}

impl<B> Body for Tee<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.len += d.len() as u64;
                    this.hash.update(d);
                    let room = this.limit.saturating_sub(this.kept.len());
                    this.kept.extend_from_slice(&d[..d.len().min(room)]);
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.failed = true;
                this.finish();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.ended = true;
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> Drop for Tee<B> {
    fn drop(&mut self) {
        // A body never polled (empty, already at its end) ends here.
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_secrets_are_masked_and_dropped_whole_or_credential_alone() {
        let secrets = vec!["Bearer s3cr3t-token-42".to_string(), "short".to_string()];
        let mut body =
            b"full: Bearer s3cr3t-token-42; alone: s3cr3t-token-42; short stays".to_vec();
        assert!(mask_secrets(&mut body, &secrets));
        let text = String::from_utf8(body).unwrap();
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains("short stays"), "{text}");
        assert_eq!(text.len(), 65);
        let mut clean = b"nothing here".to_vec();
        assert!(!mask_secrets(&mut clean, &secrets));

        let pairs = vec![(
            "authorization".to_string(),
            "Bearer s3cr3t-token-42".to_string(),
        )];
        let mut h = HeaderMap::new();
        h.insert("x-echo", HeaderValue::from_static("token=s3cr3t-token-42"));
        h.insert("x-full", HeaderValue::from_static("Bearer s3cr3t-token-42"));
        h.insert("x-ok", HeaderValue::from_static("fine"));
        drop_echoed_secrets(&mut h, &pairs, "sb");
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-ok"));
    }
}
