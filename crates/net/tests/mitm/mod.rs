//! Fixtures for the interceptor tests (intercept.rs, cassette.rs): a fake
//! HTTPS/HTTP upstream on loopback with a certificate from a test CA, the
//! interceptor on another loopback port fed with accepted streams, and a
//! client trusting the sandbox CA. No privileges, no network namespaces.

#![allow(dead_code)]

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hull_net::ca::CaStore;
use hull_net::cassette::CassetteSet;
use hull_net::intercept::{
    BoxFut, Connector, InterceptConfig, Interceptor, Session, upstream_roots,
};
use hull_net::rules::{DomainPattern, HeaderRule, Mode, SandboxRules};
use hull_net::{Denied, EventSink};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

pub const NAME: &str = "api.test";
pub const SECRET: &str = "Bearer s3cret-token-0123456789";

pub type TBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(b: impl Into<Bytes>) -> TBody {
    Full::new(b.into())
        .map_err(|n: Infallible| match n {})
        .boxed()
}

/// A test CA for the fake internet and a leaf for `names` signed by it.
pub struct TestPki {
    pub ca_pem: String,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

pub fn test_pki(names: &[&str]) -> TestPki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "fake internet CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    TestPki {
        ca_pem: ca_cert.pem(),
        chain: vec![leaf.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    }
}

/// One request as the upstream saw it: path, headers, body.
pub type SeenRequest = (String, Vec<(String, String)>, Vec<u8>);

/// What the upstream saw.
#[derive(Default)]
pub struct Seen {
    pub requests: Mutex<Vec<SeenRequest>>,
    pub count: AtomicU64,
    /// Released by the test to let `/gated` send its second half.
    pub gate: Notify,
}

/// A body fed from a channel (for a response that streams).
pub struct ChanBody(pub mpsc::Receiver<Bytes>);

impl Body for ChanBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

async fn upstream_handle(req: Request<Incoming>, seen: Arc<Seen>) -> Response<TBody> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let auth = req
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap_or("").to_string());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    seen.requests
        .lock()
        .unwrap()
        .push((path.clone(), headers, body.to_vec()));
    let n = seen.count.fetch_add(1, Ordering::SeqCst) + 1;
    if path.starts_with("/count") {
        return Response::new(full(format!("n={n}")));
    }
    if path.starts_with("/echo-auth-body") {
        return Response::new(full(format!("you sent: {}", auth.unwrap_or_default())));
    }
    if path.starts_with("/echo-header") {
        let mut r = Response::new(full("echoed in a header"));
        if let Some(a) = auth {
            r.headers_mut().insert("x-echo-auth", a.parse().unwrap());
        }
        r.headers_mut().insert("x-plain", "fine".parse().unwrap());
        return r;
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap();
        let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        let mut r = Response::new(full(data));
        r.headers_mut().insert("x-kind", "bytes".parse().unwrap());
        return r;
    }
    if path.starts_with("/gated") {
        // Half the body, then wait for the client to have seen it: a proxy
        // that buffered whole bodies would never deliver it.
        let (tx, rx) = mpsc::channel(4);
        let seen2 = seen.clone();
        tokio::spawn(async move {
            let chunk = Bytes::from(vec![b'a'; 1 << 20]);
            for _ in 0..4 {
                if tx.send(chunk.clone()).await.is_err() {
                    return;
                }
            }
            seen2.gate.notified().await;
            for _ in 0..4 {
                if tx.send(chunk.clone()).await.is_err() {
                    return;
                }
            }
        });
        return Response::new(ChanBody(rx).boxed());
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.parse().unwrap();
        let mut r = Response::new(full("status"));
        *r.status_mut() = StatusCode::from_u16(code).unwrap();
        return r;
    }
    // Default: echo the request body.
    let mut r = Response::new(full(body));
    r.headers_mut().insert("x-upstream", "yes".parse().unwrap());
    r.headers_mut().append("set-cookie", "a=1".parse().unwrap());
    r.headers_mut().append("set-cookie", "b=2".parse().unwrap());
    r
}

/// A fake upstream: HTTPS with `pki` (or plain HTTP when `None`).
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn upstream(pki: Option<&TestPki>) -> Upstream {
    upstream_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), pki)
}

/// [`upstream`] on a listener of the caller's (e.g. bound in a network
/// namespace). Needs a running tokio runtime.
pub fn upstream_on(l: TcpListener, pki: Option<&TestPki>) -> Upstream {
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let acceptor = pki.map(|p| {
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(p.chain.clone(), p.key.clone_key())
        .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    });
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let _ = s.set_nodelay(true);
            let seen = seen2.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let seen = seen.clone();
                    async move { Ok::<_, Infallible>(upstream_handle(req, seen).await) }
                });
                let b = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    Some(a) => {
                        if let Ok(t) = a.accept(s).await {
                            let _ = b
                                .serve_connection(TokioIo::new(t), svc)
                                .with_upgrades()
                                .await;
                        }
                    }
                    None => {
                        let _ = b
                            .serve_connection(TokioIo::new(s), svc)
                            .with_upgrades()
                            .await;
                    }
                }
            });
        }
    });
    Upstream { addr, seen, task }
}

/// Denied events, collected.
#[derive(Default)]
pub struct Events(pub Mutex<Vec<(String, Denied)>>);

impl EventSink for Events {
    fn denied(&self, sandbox_id: &str, d: Denied) {
        self.0.lock().unwrap().push((sandbox_id.to_string(), d));
    }
}

pub fn rules(mode: Mode, cassette: Option<PathBuf>) -> SandboxRules {
    let mut r = SandboxRules::deny_all("sb-test");
    r.mode = mode;
    r.headers.push(HeaderRule {
        pattern: DomainPattern::parse(NAME).unwrap(),
        set: vec![("authorization".into(), SECRET.into())],
    });
    r.cassette = cassette;
    r
}

/// The interceptor on a loopback port: every accepted stream is served as
/// a connection to `NAME:<upstream port>` connecting to `upstream`.
pub struct Mitm {
    pub addr: SocketAddr,
    pub interceptor: Arc<Interceptor>,
    pub events: Arc<Events>,
    pub connects: Arc<AtomicUsize>,
    pub ca_pem: String,
    pub name_port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mitm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct MitmOpts {
    pub tls: bool,
    pub extra_ca: Option<PathBuf>,
    pub cfg: InterceptConfig,
    /// The port the sandbox meant (default: the upstream's port).
    pub port: Option<u16>,
}

pub async fn mitm(
    dir: &std::path::Path,
    upstream: SocketAddr,
    rules: SandboxRules,
    opts: MitmOpts,
) -> Mitm {
    let cas = Arc::new(CaStore::new(dir.join("ca")));
    let ca_pem = cas
        .get_or_create(&rules.sandbox_id)
        .unwrap()
        .cert_pem()
        .to_string();
    let roots = upstream_roots(None, opts.extra_ca.as_deref()).unwrap();
    let interceptor =
        Arc::new(Interceptor::new(cas, roots, Arc::new(CassetteSet::new()), opts.cfg).unwrap());
    let events = Arc::new(Events::default());
    let connects = Arc::new(AtomicUsize::new(0));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let rules = Arc::new(rules);
    let (i2, e2, c2) = (interceptor.clone(), events.clone(), connects.clone());
    let tls = opts.tls;
    let port = opts.port.unwrap_or(upstream.port());
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let c3 = c2.clone();
            let connector = move |_name: String, _port: u16| -> BoxFut<io::Result<TcpStream>> {
                c3.fetch_add(1, Ordering::SeqCst);
                Box::pin(TcpStream::connect(upstream))
            };
            let connector: Arc<dyn Connector> = Arc::new(connector);
            let sess = Session {
                stream: s,
                name: NAME.into(),
                port,
                tls,
                rules: rules.clone(),
                connector,
                events: e2.clone(),
            };
            let i = i2.clone();
            tokio::spawn(async move { i.serve(sess).await });
        }
    });
    Mitm {
        addr,
        interceptor,
        events,
        connects,
        ca_pem,
        name_port: port,
        task,
    }
}

pub fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(cfg)
}

/// A client connection to the interceptor (TLS with SNI `sni`, trusting
/// `ca_pem`; or plain).
pub async fn client(
    m: &Mitm,
    sni: Option<&str>,
) -> Result<hyper::client::conn::http1::SendRequest<TBody>, String> {
    let tcp = TcpStream::connect(m.addr)
        .await
        .map_err(|e| e.to_string())?;
    match sni {
        Some(sni) => {
            let tls = tokio_rustls::TlsConnector::from(client_config(&m.ca_pem))
                .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
                .await
                .map_err(|e| e.to_string())?;
            let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(c.with_upgrades());
            Ok(s)
        }
        None => {
            let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(c.with_upgrades());
            Ok(s)
        }
    }
}

pub struct Got {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Got {
    pub fn header(&self, n: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    }
}

/// One request on `s` to `NAME:port`.
pub async fn request(
    s: &mut hyper::client::conn::http1::SendRequest<TBody>,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Got {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("{NAME}:{port}"));
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    s.ready().await.unwrap();
    let resp = s.send_request(b.body(full(body)).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Got {
        status,
        headers,
        body,
    }
}

pub fn write_ca(dir: &std::path::Path, pki: &TestPki) -> PathBuf {
    let p = dir.join("fake-internet-ca.pem");
    std::fs::write(&p, &pki.ca_pem).unwrap();
    p
}
