//! A fake internet for network tests: a network namespace the test makes
//! (`hullt-<pid>-<n>`), wired to the host by a veth pair and routed, with
//! servers on documentation addresses that never leave the machine.
//!
//! Addresses: the servers answer on [`FakeInternet::WEB4`] and
//! [`FakeInternet::OTHER4`] (198.51.100.10 and .20), [`FakeInternet::WEB6`]
//! and [`FakeInternet::OTHER6`] (2001:db8::10 and ::20): TCP port 80 (a
//! one-line HTTP answer `fake-internet <addr>`), TCP 8080 (same), UDP 5353
//! (echo), and TCP 443: HTTPS with a certificate for [`FakeInternet::API`]
//! and [`FakeInternet::OTHER`] (and the four addresses) signed by a test
//! CA made here with rcgen ([`FakeInternet::ca_file`] is its PEM). A DNS
//! server on WEB4/WEB6 port 53 (UDP and TCP) answers `api.fake.test` with
//! WEB4/WEB6, `other.fake.test` with OTHER4/OTHER6, NXDOMAIN for anything
//! else. The HTTPS endpoints (any of the four addresses):
//!
//! - `/auth`: JSON with the SHA-256 of each `Authorization` header received
//!   (never the value itself, so a secret never flows back to the client);
//! - `/unique/<n>`: `UNIQ`, a counter (u64 BE) and `n` fresh random bytes
//!   (at most 1 MiB): every answer differs;
//! - `/hash`: JSON with the SHA-256 and length of the request body and a
//!   fresh nonce;
//! - `/reflect`: the `Authorization` header sent back in a response header
//!   `X-Reflect` (a hostile upstream); `/reflect-body`: in the body
//!   (`auth=<value>` lines; `/reflect-body?gzip`: four of them and 512
//!   dots, gzip-encoded; `?gzip-if-accepted`: the same when the request's
//!   `Accept-Encoding` has gzip);
//! - anything else: `served-by=<addr> sni=<sni> host=<host>`.
//!
//! Every request the HTTP(S) servers receive is kept ([`FakeInternet::seen`],
//! with the server address, the SNI and all headers), and TLS connections
//! and DNS queries are counted, so a test can tell what reached the
//! upstream. The link uses 203.0.113.0/30 and fd99:1::/64. Only one fake
//! internet can exist on a machine at a time (tests using it take a file
//! lock, [`FakeInternet::start`] does). Dropping it stops every server
//! thread (connection threads included), deletes the namespace, its link
//! and routes, and the CA file.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record};
use nix::fcntl::{Flock, FlockArg};
use nix::sched::{CloneFlags, setns};

use crate::oci::sha256;

/// One request an HTTP(S) server of the fake internet received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The server address the connection reached.
    pub local: SocketAddr,
    /// Over TLS (port 443)?
    pub tls: bool,
    /// The SNI the client sent (TLS only).
    pub sni: Option<String>,
    pub method: String,
    pub path: String,
    /// Every header as received (name lowercased), in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Lowercase hex SHA-256 of the body.
    pub body_sha256: String,
}

impl Seen {
    /// The values of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Vec<&[u8]> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    /// The `Host` header (first), lossy.
    pub fn host(&self) -> Option<String> {
        self.header("host")
            .first()
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// State shared by the server threads.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    seen: Mutex<Vec<Seen>>,
    tls_conns: AtomicUsize,
    dns_queries: AtomicUsize,
    counter: AtomicU64,
    /// Threads serving one accepted connection each (joined on drop).
    conns: Mutex<Vec<JoinHandle<()>>>,
}

/// The fake internet; removed on drop.
pub struct FakeInternet {
    pub name: String,
    pub host_if: String,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    ca_pem: String,
    leaf_sha256: String,
    ca_file: tempfile::TempPath,
    _lock: Flock<File>,
}

fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test CA and the server certificate it signs.
struct Certs {
    ca_pem: String,
    leaf_der: rustls_pki_types::CertificateDer<'static>,
    ca_der: rustls_pki_types::CertificateDer<'static>,
    leaf_key: Vec<u8>,
}

fn make_certs() -> Certs {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, "hull fake internet test CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = p.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(p, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut lp = CertificateParams::new(vec![
        FakeInternet::API.to_string(),
        FakeInternet::OTHER.to_string(),
    ])
    .unwrap();
    for a in [
        FakeInternet::WEB4,
        FakeInternet::OTHER4,
        FakeInternet::WEB6,
        FakeInternet::OTHER6,
    ] {
        lp.subject_alt_names
            .push(SanType::IpAddress(a.parse().unwrap()));
    }
    lp.distinguished_name
        .push(DnType::CommonName, "fake internet server");
    lp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    lp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    lp.use_authority_key_identifier_extension = true;
    let leaf = lp.signed_by(&leaf_key, &issuer).unwrap();
    Certs {
        ca_pem: ca.pem(),
        ca_der: ca.der().clone(),
        leaf_der: leaf.der().clone(),
        leaf_key: leaf_key.serialize_der(),
    }
}

impl FakeInternet {
    pub const WEB4: &'static str = "198.51.100.10";
    pub const OTHER4: &'static str = "198.51.100.20";
    pub const WEB6: &'static str = "2001:db8::10";
    pub const OTHER6: &'static str = "2001:db8::20";
    /// Resolves to WEB4 / WEB6.
    pub const API: &'static str = "api.fake.test";
    /// Resolves to OTHER4 / OTHER6.
    pub const OTHER: &'static str = "other.fake.test";

    /// Build it (root only). Serialised machine-wide by a lock file.
    pub fn start() -> FakeInternet {
        std::fs::create_dir_all("/run/hull").unwrap();
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/hull/test-fakenet.lock")
            .unwrap();
        let lock = Flock::lock(f, FlockArg::LockExclusive).expect("fakenet lock");
        let pid = std::process::id();
        let name = format!("hullt-{pid}-0");
        let host_if = format!("hullt{pid}");
        let peer = format!("hullu{pid}");
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        let certs = make_certs();
        let mut ca_file = tempfile::Builder::new()
            .prefix("hull-fakenet-ca-")
            .suffix(".pem")
            .tempfile_in("/tmp")
            .expect("CA temp file");
        ca_file.write_all(certs.ca_pem.as_bytes()).unwrap();
        ip(&format!("netns add {name}"));
        let mut me = FakeInternet {
            name: name.clone(),
            host_if: host_if.clone(),
            shared: Arc::new(Shared::default()),
            threads: Vec::new(),
            ca_pem: certs.ca_pem.clone(),
            leaf_sha256: sha256(&certs.leaf_der),
            ca_file: ca_file.into_temp_path(),
            _lock: lock,
        };
        ip(&format!(
            "link add {host_if} type veth peer name {peer} netns {name}"
        ));
        ip(&format!("addr add 203.0.113.1/30 dev {host_if}"));
        ip(&format!("addr add fd99:1::1/64 dev {host_if} nodad"));
        ip(&format!("link set {host_if} up"));
        ip(&format!("-n {name} link set lo up"));
        ip(&format!("-n {name} link set {peer} up"));
        ip(&format!("-n {name} addr add 203.0.113.2/30 dev {peer}"));
        ip(&format!("-n {name} addr add fd99:1::2/64 dev {peer} nodad"));
        for a in [Self::WEB4, Self::OTHER4] {
            ip(&format!("-n {name} addr add {a}/32 dev lo"));
        }
        for a in [Self::WEB6, Self::OTHER6] {
            ip(&format!("-n {name} addr add {a}/128 dev lo"));
        }
        ip(&format!("-n {name} route add default via 203.0.113.1"));
        ip(&format!("-n {name} -6 route add default via fd99:1::1"));
        ip("route add 198.51.100.0/24 via 203.0.113.2");
        ip("-6 route add 2001:db8::/32 via fd99:1::2");
        let ns = File::open(format!("/run/netns/{name}")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(certs.leaf_key.into());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certs.leaf_der, certs.ca_der], key)
            .unwrap();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls = Arc::new(tls);
        for a in [Self::WEB4, Self::OTHER4, Self::WEB6, Self::OTHER6] {
            for port in [80u16, 8080, 443] {
                let addr = SocketAddr::new(a.parse().unwrap(), port);
                let tls = (port == 443).then(|| tls.clone());
                me.spawn_in(&ns, move |sh| tcp_server(sh, addr, tls));
            }
            let addr = SocketAddr::new(a.parse().unwrap(), 5353);
            me.spawn_in(&ns, move |sh| udp_echo(sh, addr));
        }
        for a in [Self::WEB4, Self::WEB6] {
            let addr = SocketAddr::new(a.parse().unwrap(), 53);
            me.spawn_in(&ns, move |sh| dns_udp(sh, addr));
            me.spawn_in(&ns, move |sh| dns_tcp(sh, addr));
        }
        me
    }

    /// Run `serve` on a thread of its own inside the fake namespace; it
    /// gets a `ready` callback to call once its socket is bound.
    fn spawn_in(
        &mut self,
        ns: &File,
        serve: impl FnOnce(Arc<Shared>) -> Box<dyn FnOnce() + Send> + Send + 'static,
    ) {
        let ns = ns.try_clone().unwrap();
        let sh = self.shared.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        self.threads.push(std::thread::spawn(move || {
            // This thread lives in the fake namespace until it ends; the
            // sockets it binds there stay there.
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).unwrap();
            let run = serve(sh);
            tx.send(()).unwrap();
            run();
        }));
        rx.recv().expect("fake server thread started");
    }

    /// The upstream DNS server (for the daemon's `--dns`).
    pub fn dns_addr() -> SocketAddr {
        SocketAddr::new(Self::WEB4.parse().unwrap(), 53)
    }

    /// The test CA's PEM (what the HTTPS servers' certificate chains to).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A file holding [`Self::ca_pem`] (for the daemon's `--upstream-ca`);
    /// removed when the fake internet drops.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// Lowercase hex SHA-256 of the HTTPS servers' leaf certificate (DER):
    /// a client that sees it talks to the fake server itself, not to an
    /// interceptor.
    pub fn leaf_sha256(&self) -> &str {
        &self.leaf_sha256
    }

    /// Every HTTP(S) request received so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// TLS connections accepted so far (handshake or not).
    pub fn tls_connections(&self) -> usize {
        self.shared.tls_conns.load(Ordering::SeqCst)
    }

    /// DNS queries received so far (UDP and TCP).
    pub fn dns_queries(&self) -> usize {
        self.shared.dns_queries.load(Ordering::SeqCst)
    }
}

impl Drop for FakeInternet {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let conns = std::mem::take(&mut *self.shared.conns.lock().unwrap());
        for t in conns {
            let _ = t.join();
        }
        let _ = Command::new("ip")
            .args(["route", "del", "198.51.100.0/24"])
            .output();
        let _ = Command::new("ip")
            .args(["-6", "route", "del", "2001:db8::/32"])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

const POLL: Duration = Duration::from_millis(100);
/// A connection idle this long is closed.
const IDLE: Duration = Duration::from_secs(10);
/// Largest request head / body / `/unique` answer.
const MAX_HEAD: usize = 64 << 10;
const MAX_BODY: usize = 16 << 20;
const MAX_UNIQUE: usize = 1 << 20;

/// A TCP server: plain one-line HTTP, or (with `tls`) the HTTPS endpoints.
fn tcp_server(
    sh: Arc<Shared>,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Box<dyn FnOnce() + Send> {
    let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    l.set_nonblocking(true).unwrap();
    Box::new(move || {
        while !sh.stop.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(POLL));
                    match &tls {
                        None => plain_answer(&sh, s, addr),
                        Some(cfg) => {
                            sh.tls_conns.fetch_add(1, Ordering::SeqCst);
                            let cfg = cfg.clone();
                            let sh2 = sh.clone();
                            let t = std::thread::spawn(move || tls_conn(&sh2, s, addr, cfg));
                            let mut conns = sh.conns.lock().unwrap();
                            conns.retain(|t| !t.is_finished());
                            conns.push(t);
                        }
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    })
}

/// Ports 80 and 8080: read a request, answer `fake-internet <addr>`.
fn plain_answer(sh: &Shared, mut s: TcpStream, addr: SocketAddr) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    if let Some((method, path, headers, _)) = parse_head(&buf[..n]) {
        sh.seen.lock().unwrap().push(Seen {
            local: addr,
            tls: false,
            sni: None,
            method,
            path,
            headers,
            body_sha256: sha256(b""),
        });
    }
    let body = format!("fake-internet {}\n", addr.ip());
    let _ = write!(
        s,
        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
}

type Head = (String, String, Vec<(String, Vec<u8>)>, usize);

/// A complete request head at the start of `buf`: method, target,
/// headers, head length.
fn parse_head(buf: &[u8]) -> Option<Head> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let mut lines = buf[..end - 4].split(|&b| b == b'\n');
    let first = String::from_utf8_lossy(lines.next()?).trim().to_string();
    let mut parts = first.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    for l in lines {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        let Some(i) = l.iter().position(|&b| b == b':') else {
            continue;
        };
        let k = String::from_utf8_lossy(&l[..i]).trim().to_ascii_lowercase();
        let v = l[i + 1..].trim_ascii().to_vec();
        headers.push((k, v));
    }
    Some((method, path, headers, end))
}

/// Read more bytes into `buf`; false at EOF, on an error, when idle too
/// long or when the fake internet stops.
fn fill<S: Read>(s: &mut S, buf: &mut Vec<u8>, sh: &Shared, since: Instant) -> bool {
    let mut chunk = [0u8; 16 << 10];
    loop {
        if sh.stop.load(Ordering::SeqCst) || since.elapsed() > IDLE {
            return false;
        }
        match s.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return true;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return false,
        }
    }
}

/// Read a body of `n` bytes from `buf` + `s`.
fn take_exact<S: Read>(
    s: &mut S,
    buf: &mut Vec<u8>,
    n: usize,
    sh: &Shared,
    since: Instant,
) -> Option<Vec<u8>> {
    while buf.len() < n {
        if !fill(s, buf, sh, since) {
            return None;
        }
    }
    Some(buf.drain(..n).collect())
}

/// Read a chunked body.
fn take_chunked<S: Read>(
    s: &mut S,
    buf: &mut Vec<u8>,
    sh: &Shared,
    since: Instant,
) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                break p;
            }
            if buf.len() > 1024 || !fill(s, buf, sh, since) {
                return None;
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        buf.drain(..line_end + 2);
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let p = loop {
                    if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                        break p;
                    }
                    if !fill(s, buf, sh, since) {
                        return None;
                    }
                };
                buf.drain(..p + 2);
                if p == 0 {
                    return Some(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return None;
        }
        body.extend(take_exact(s, buf, size + 2, sh, since)?.drain(..size));
    }
}

fn tls_conn(sh: &Shared, sock: TcpStream, local: SocketAddr, cfg: Arc<rustls::ServerConfig>) {
    let Ok(conn) = rustls::ServerConnection::new(cfg) else {
        return;
    };
    let mut s = rustls::StreamOwned::new(conn, sock);
    let mut buf = Vec::new();
    loop {
        let since = Instant::now();
        let (method, path, headers, head_len) = loop {
            if let Some(h) = parse_head(&buf) {
                break h;
            }
            if buf.len() > MAX_HEAD || !fill(&mut s, &mut buf, sh, since) {
                return;
            }
        };
        buf.drain(..head_len);
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).to_ascii_lowercase())
        };
        let body = if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            take_chunked(&mut s, &mut buf, sh, since)
        } else {
            match get("content-length").map(|v| v.trim().parse::<usize>()) {
                None => Some(Vec::new()),
                Some(Ok(n)) if n <= MAX_BODY => take_exact(&mut s, &mut buf, n, sh, since),
                Some(_) => None,
            }
        };
        let Some(body) = body else { return };
        let close = get("connection").is_some_and(|v| v.contains("close"));
        let seen = Seen {
            local,
            tls: true,
            sni: s.conn.server_name().map(str::to_string),
            method,
            path,
            headers,
            body_sha256: sha256(&body),
        };
        sh.seen.lock().unwrap().push(seen.clone());
        let (ctype, extra, out) = answer(sh, &seen, &body);
        let mut head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n",
            out.len()
        )
        .into_bytes();
        for (k, v) in extra {
            head.extend_from_slice(format!("{k}: ").as_bytes());
            head.extend_from_slice(&v);
            head.extend_from_slice(b"\r\n");
        }
        if close {
            head.extend_from_slice(b"Connection: close\r\n");
        }
        head.extend_from_slice(b"\r\n");
        head.extend_from_slice(&out);
        if s.write_all(&head).and_then(|()| s.flush()).is_err() {
            return;
        }
        if close {
            s.conn.send_close_notify();
            let _ = s.flush();
            return;
        }
    }
}

type Answer = (&'static str, Vec<(&'static str, Vec<u8>)>, Vec<u8>);

/// The HTTPS endpoints.
fn answer(sh: &Shared, req: &Seen, body: &[u8]) -> Answer {
    let path = req.path.split('?').next().unwrap_or("/");
    let n = sh.counter.fetch_add(1, Ordering::SeqCst);
    if path == "/auth" {
        let hashes: Vec<String> = req
            .header("authorization")
            .iter()
            .map(|v| format!("\"{}\"", sha256(v)))
            .collect();
        let out = format!(
            "{{\"auth_sha256\":[{}],\"served_by\":\"{}\",\"sni\":\"{}\"}}",
            hashes.join(","),
            req.local.ip(),
            req.sni.as_deref().unwrap_or("")
        );
        return ("application/json", Vec::new(), out.into_bytes());
    }
    if let Some(size) = path
        .strip_prefix("/unique/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        let mut out = b"UNIQ".to_vec();
        out.extend_from_slice(&n.to_be_bytes());
        let mut rnd = vec![0u8; size.min(MAX_UNIQUE)];
        getrandom::fill(&mut rnd).expect("random bytes");
        out.extend_from_slice(&rnd);
        return ("application/octet-stream", Vec::new(), out);
    }
    if path == "/hash" {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).expect("random bytes");
        let out = format!(
            "{{\"sha256\":\"{}\",\"len\":{},\"nonce\":\"{n}-{}\"}}",
            sha256(body),
            body.len(),
            sha256(&nonce)
        );
        return ("application/json", Vec::new(), out.into_bytes());
    }
    if path == "/reflect-body" {
        let mut out = Vec::new();
        for v in req.header("authorization") {
            out.extend_from_slice(b"auth=");
            out.extend_from_slice(v);
            out.push(b'\n');
        }
        let accepts = req
            .header("accept-encoding")
            .iter()
            .any(|v| contains_gzip(v));
        if req.path.ends_with("?gzip") || (req.path.ends_with("?gzip-if-accepted") && accepts) {
            // Compressible (a real deflate block, not a stored one).
            let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            z.write_all(&out.repeat(4)).unwrap();
            z.write_all(&[b'.'; 512]).unwrap();
            let out = z.finish().unwrap();
            return (
                "text/plain",
                vec![("Content-Encoding", b"gzip".to_vec())],
                out,
            );
        }
        return ("text/plain", Vec::new(), out);
    }
    if path == "/reflect" {
        let extra = req
            .header("authorization")
            .into_iter()
            .map(|v| ("X-Reflect", v.to_vec()))
            .collect();
        return ("text/plain", extra, b"reflected\n".to_vec());
    }
    let out = format!(
        "served-by={} sni={} host={}\n",
        req.local.ip(),
        req.sni.as_deref().unwrap_or(""),
        req.host().unwrap_or_default()
    );
    ("text/plain", Vec::new(), out.into_bytes())
}

fn contains_gzip(v: &[u8]) -> bool {
    String::from_utf8_lossy(v)
        .to_ascii_lowercase()
        .contains("gzip")
}

fn udp_echo(sh: Arc<Shared>, addr: SocketAddr) -> Box<dyn FnOnce() + Send> {
    let u = UdpSocket::bind(addr).unwrap();
    u.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    Box::new(move || {
        let mut buf = [0u8; 1500];
        while !sh.stop.load(Ordering::SeqCst) {
            if let Ok((n, from)) = u.recv_from(&mut buf) {
                let _ = u.send_to(&buf[..n], from);
            }
        }
    })
}

/// The fake zone's answer to query `q` (None: not a query).
fn dns_answer(q: &[u8]) -> Option<Vec<u8>> {
    let m = Message::from_vec(q).ok()?;
    let query = m.queries.first()?.clone();
    let mut r = Message::new(m.metadata.id, MessageType::Response, OpCode::Query);
    r.metadata.recursion_desired = m.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.metadata.authoritative = true;
    r.add_query(query.clone());
    let name = query
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let (v4, v6) = match name.as_str() {
        FakeInternet::API => (FakeInternet::WEB4, FakeInternet::WEB6),
        FakeInternet::OTHER => (FakeInternet::OTHER4, FakeInternet::OTHER6),
        _ => {
            r.metadata.response_code = ResponseCode::NXDomain;
            return r.to_vec().ok();
        }
    };
    let data = [
        RData::A(A(v4.parse().unwrap())),
        RData::AAAA(AAAA(v6.parse().unwrap())),
    ];
    for d in data {
        if d.record_type() == query.query_type() {
            r.add_answer(Record::from_rdata(query.name().clone(), 30, d));
        }
    }
    r.to_vec().ok()
}

fn dns_udp(sh: Arc<Shared>, addr: SocketAddr) -> Box<dyn FnOnce() + Send> {
    let u = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}"));
    u.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    Box::new(move || {
        let mut buf = [0u8; 4096];
        while !sh.stop.load(Ordering::SeqCst) {
            if let Ok((n, from)) = u.recv_from(&mut buf) {
                sh.dns_queries.fetch_add(1, Ordering::SeqCst);
                if let Some(a) = dns_answer(&buf[..n]) {
                    let _ = u.send_to(&a, from);
                }
            }
        }
    })
}

fn dns_tcp(sh: Arc<Shared>, addr: SocketAddr) -> Box<dyn FnOnce() + Send> {
    let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind tcp {addr}: {e}"));
    l.set_nonblocking(true).unwrap();
    Box::new(move || {
        while !sh.stop.load(Ordering::SeqCst) {
            let Ok((mut s, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            // Short exchanges, served inline: one query per read, a few.
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(POLL));
            let since = Instant::now();
            let mut buf = Vec::new();
            while since.elapsed() < Duration::from_secs(2) {
                if buf.len() >= 2 {
                    let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
                    if buf.len() >= 2 + len {
                        let q: Vec<u8> = buf.drain(..2 + len).skip(2).collect();
                        sh.dns_queries.fetch_add(1, Ordering::SeqCst);
                        let Some(a) = dns_answer(&q) else { break };
                        let mut out = (a.len() as u16).to_be_bytes().to_vec();
                        out.extend_from_slice(&a);
                        if s.write_all(&out).is_err() {
                            break;
                        }
                        continue;
                    }
                }
                if !fill(&mut s, &mut buf, &sh, since) {
                    break;
                }
            }
        }
    })
}

/// Links, namespaces and nft tables of `instance` still on the host.
pub fn net_leftovers(instance: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
        for e in dir.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&format!("h{instance}")) {
                out.push(format!("link {n}"));
            }
        }
    }
    if let Ok(o) = Command::new("nft").args(["list", "tables"]).output() {
        let t = String::from_utf8_lossy(&o.stdout);
        if t.contains(&format!("hull_{instance}")) {
            out.push(format!("nft table hull_{instance}"));
        }
    }
    out
}
