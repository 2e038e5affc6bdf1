//! A fake network for the egress proxy and DNS tests, built without the
//! daemon: three network namespaces the test owns, removed on drop even
//! when the test fails.
//!
//! ```text
//!  hullt-<pid>-<n>-s ("sandbox")      hullt-<pid>-<n>-h ("host")            hullt-<pid>-<n>-i ("internet")
//!  eth0 10.99.0.2/24, fd99::2/64 ---- sb0 10.99.0.1, fd99::1
//!                                     nft table inet hullt_<pid>:          eth0 192.0.2.10 web "A"
//!                                       tcp from sb0 -> proxy                   192.0.2.20 web "F" (forbidden)
//!                                       udp/tcp 53 from sb0 -> DNS server       192.0.2.53 DNS
//!                                       (tcp 5001 forwarded: bench baseline)    198.51.100.10 bulk/banner
//!                                     inet0 192.0.2.1, 198.51.100.1 ----      2001:db8::10 web "A"
//! ```
//! The "host" is a namespace of its own, not the machine's: the proxy and
//! DNS server run on a tokio runtime whose threads all enter it, so the
//! test never touches the machine's addresses, routes, sysctls or
//! firewall. Every socket of a fake server is created inside the internet
//! namespace (a socket keeps the namespace it was made in).
//!
//! Used by `proxy.rs`, `dns.rs` and `intercept.rs` (`#[path]`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hull_net::rules::{CidrRule, DomainPattern, DomainRule, PortSet};
use hull_net::{Denied, EventSink, Mode, SandboxRules};
use nix::sched::{CloneFlags, setns};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const SB_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
pub const SB_IP6: Ipv6Addr = Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 2);
pub const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const WEB_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const WEB_A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
pub const WEB_F: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);
pub const BULK: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const PROXY_PORT: u16 = 15001;
pub const DNS_PORT: u16 = 15353;
/// Excluded from the redirect: the direct path of the benchmark.
pub const DIRECT_PORT: u16 = 5001;
/// Through the proxy (bulk HTTP).
pub const BULK_PORT: u16 = 5000;
/// A server that speaks first.
pub const BANNER_PORT: u16 = 5002;

/// The fake DNS zone: name -> records.
pub fn zone() -> HashMap<&'static str, Vec<RData>> {
    HashMap::from([
        ("allowed.test", vec![RData::A(A(WEB_A))]),
        ("other.test", vec![RData::A(A(WEB_A))]),
        ("forbidden.test", vec![RData::A(A(WEB_F))]),
        ("bulk.test", vec![RData::A(A(BULK))]),
        ("v6.test", vec![RData::AAAA(AAAA(WEB_A6))]),
        (
            "loopy.test",
            vec![
                RData::A(A(Ipv4Addr::LOCALHOST)),
                RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
            ],
        ),
        (
            "meta.test",
            vec![RData::A(A(Ipv4Addr::new(169, 254, 169, 254)))],
        ),
        (
            "private.test",
            vec![RData::A(A(Ipv4Addr::new(10, 1, 2, 3)))],
        ),
        ("gateway.test", vec![RData::A(A(GW_IP))]),
        (
            "alias.test",
            vec![RData::CNAME(CNAME(
                Name::from_ascii("allowed.test.").unwrap(),
            ))],
        ),
    ])
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect(args[0]);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_stdin(args: &[&str], input: &str) {
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect(args[0]);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Enter network namespace `ns` in the calling thread.
pub fn enter(ns: &str) {
    let f =
        File::open(format!("/run/netns/{ns}")).unwrap_or_else(|e| panic!("open netns {ns}: {e}"));
    setns(&f, CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Run `f` in a fresh thread inside `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    })
    .join()
    .expect("thread in netns panicked")
}

/// Denials seen.
#[derive(Default)]
pub struct Sink(pub Mutex<Vec<(String, Denied)>>);

impl EventSink for Sink {
    fn denied(&self, id: &str, d: Denied) {
        self.0.lock().unwrap().push((id.to_string(), d));
    }
}

impl Sink {
    pub fn take(&self) -> Vec<(String, Denied)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// The three namespaces, their links and the nft table. Dropping it
/// removes everything.
pub struct FakeNet {
    pub host: String,
    pub sandbox: String,
    pub internet: String,
    pub table: String,
}

impl FakeNet {
    pub fn new(tag: &str) -> FakeNet {
        let pid = std::process::id();
        let base = format!("hullt-{pid}-{tag}");
        let net = FakeNet {
            host: format!("{base}-h"),
            sandbox: format!("{base}-s"),
            internet: format!("{base}-i"),
            table: format!("hullt_{pid}"),
        };
        for ns in [&net.host, &net.sandbox, &net.internet] {
            run(&["ip", "netns", "add", ns]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let (h, s, i) = (
            net.host.as_str(),
            net.sandbox.as_str(),
            net.internet.as_str(),
        );
        run(&[
            "ip", "-n", h, "link", "add", "sb0", "type", "veth", "peer", "name", "eth0", "netns", s,
        ]);
        run(&[
            "ip", "-n", h, "link", "add", "inet0", "type", "veth", "peer", "name", "eth0", "netns",
            i,
        ]);
        let addrs: &[(&str, &str, &str)] = &[
            (h, "sb0", "10.99.0.1/24"),
            (h, "sb0", "fd99::1/64"),
            (s, "eth0", "10.99.0.2/24"),
            (s, "eth0", "fd99::2/64"),
            (h, "inet0", "192.0.2.1/24"),
            (h, "inet0", "198.51.100.1/24"),
            (h, "inet0", "2001:db8::1/64"),
            (i, "eth0", "192.0.2.10/24"),
            (i, "eth0", "192.0.2.20/24"),
            (i, "eth0", "192.0.2.53/24"),
            (i, "eth0", "198.51.100.10/24"),
            (i, "eth0", "2001:db8::10/64"),
        ];
        for (ns, dev, a) in addrs {
            let mut args = vec!["ip", "-n", ns, "addr", "add", a, "dev", dev];
            if a.contains(':') {
                args.push("nodad");
            }
            run(&args);
        }
        for (ns, dev) in [(h, "sb0"), (h, "inet0"), (s, "eth0"), (i, "eth0")] {
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        run(&["ip", "-n", s, "route", "add", "default", "via", "10.99.0.1"]);
        run(&[
            "ip", "-n", s, "-6", "route", "add", "default", "via", "fd99::1",
        ]);
        run(&["ip", "-n", i, "route", "add", "default", "via", "192.0.2.1"]);
        run(&[
            "ip",
            "-n",
            i,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2001:db8::1",
        ]);
        // Forwarding in the host namespace (the benchmark's direct path).
        // /proc/sys/net is the opening thread's namespace.
        in_netns(h, || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
            std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1").unwrap();
        });
        let rules = format!(
            "table inet {t} {{\n\
             chain pre {{\n\
               type nat hook prerouting priority dstnat; policy accept;\n\
               iifname \"sb0\" udp dport 53 redirect to :{DNS_PORT}\n\
               iifname \"sb0\" tcp dport 53 redirect to :{DNS_PORT}\n\
               iifname \"sb0\" tcp dport {DIRECT_PORT} accept\n\
               iifname \"sb0\" meta l4proto tcp redirect to :{PROXY_PORT}\n\
             }}\n\
             }}\n",
            t = net.table
        );
        run_stdin(&["ip", "netns", "exec", h, "nft", "-f", "-"], &rules);
        net
    }

    /// A tokio runtime whose threads all live in the host namespace (and
    /// the calling thread enters it too).
    pub fn host_runtime(&self) -> tokio::runtime::Runtime {
        enter(&self.host);
        let host = self.host.clone();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || enter(&host))
            .build()
            .unwrap()
    }

    /// Run a shell command in the sandbox namespace (blocking); returns
    /// (success, stdout, stderr).
    pub fn sandbox_cmd(&self, args: &[&str]) -> (bool, String, String) {
        let mut all = vec!["netns", "exec", self.sandbox.as_str()];
        all.extend_from_slice(args);
        let out = Command::new("ip")
            .args(&all)
            .output()
            .expect("ip netns exec");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for FakeNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.host,
                "nft",
                "delete",
                "table",
                "inet",
                &self.table,
            ])
            .output();
        for ns in [&self.sandbox, &self.internet, &self.host] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// No namespace of any fake net of this process is left (run it when no
/// other test of the process still has one: nextest's one process per
/// test; under `cargo test` use [`assert_net_clean`]).
pub fn assert_clean() {
    assert_net_clean("");
}

/// No namespace of the fake net `tag` of this process is left (their
/// links and nft table went with them), and no table of this process in
/// the machine's own namespace. `tag` "": any fake net of this process.
pub fn assert_net_clean(tag: &str) {
    let pid = std::process::id();
    let needle = if tag.is_empty() {
        format!("hullt-{pid}-")
    } else {
        format!("hullt-{pid}-{tag}-")
    };
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(!list.contains(&needle), "netns left behind: {list}");
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        !t.contains(&format!("hullt_{pid}")),
        "nft table left in the machine's namespace: {t}"
    );
}

/// Rules for the fake sandbox.
pub fn rules(mode: Mode, domains: &[&str], cidrs: &[&str]) -> SandboxRules {
    let mut r = SandboxRules::deny_all("sb-test");
    r.mode = mode;
    for d in domains {
        let (pat, ports) = match d.split_once(':') {
            Some((p, port)) => (
                p,
                PortSet::from_ranges(vec![PortSet::parse_range(port).unwrap()]),
            ),
            None => (*d, PortSet::any()),
        };
        r.domains.push(DomainRule {
            pattern: DomainPattern::parse(pat).unwrap(),
            ports,
        });
    }
    for c in cidrs {
        r.cidrs.push(CidrRule {
            net: c.parse().unwrap(),
            ports: PortSet::any(),
        });
    }
    r
}

/// Connection counters of the fake servers, by label.
#[derive(Default)]
pub struct Hits(Mutex<HashMap<String, usize>>);

impl Hits {
    fn add(&self, label: &str) {
        *self.0.lock().unwrap().entry(label.to_string()).or_insert(0) += 1;
    }
    pub fn get(&self, label: &str) -> usize {
        self.0.lock().unwrap().get(label).copied().unwrap_or(0)
    }
}

/// Bind a TCP listener inside `ns`.
pub fn tcp_listener_in(ns: &str, addr: SocketAddr) -> std::net::TcpListener {
    in_netns(ns, move || {
        let l = std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        l.set_nonblocking(true).unwrap();
        l
    })
}

fn udp_in(ns: &str, addr: SocketAddr) -> std::net::UdpSocket {
    in_netns(ns, move || {
        let s = std::net::UdpSocket::bind(addr).unwrap();
        s.set_nonblocking(true).unwrap();
        s
    })
}

/// The fake internet's servers, running on the current runtime.
pub struct Servers {
    pub hits: Arc<Hits>,
    /// PEM of the self-signed certificate the HTTPS servers present.
    pub cert_pem: String,
    pub dns_queries: Arc<AtomicUsize>,
}

/// Start the web servers (HTTP :80, HTTPS :443 on A, F and A6; bulk HTTP
/// on BULK:5000 and :5001; a banner server on BULK:5002) and the DNS
/// server on DNS_IP:53, all in the internet namespace.
pub fn start_servers(net: &FakeNet) -> Servers {
    let hits = Arc::new(Hits::default());
    let ck = rcgen::generate_simple_self_signed(vec![
        "allowed.test".to_string(),
        "other.test".to_string(),
        "forbidden.test".to_string(),
        "v6.test".to_string(),
    ])
    .unwrap();
    let cert_pem = ck.cert.pem();
    let cert_der = ck.cert.der().clone();
    let key_der =
        rustls_pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key_der)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let webs: [(IpAddr, &str); 3] = [
        (WEB_A.into(), "A"),
        (WEB_F.into(), "F"),
        (WEB_A6.into(), "A"),
    ];
    for (ip, label) in webs {
        let l = tokio::net::TcpListener::from_std(tcp_listener_in(
            &net.internet,
            SocketAddr::new(ip, 80),
        ))
        .unwrap();
        tokio::spawn(serve_http(l, label.to_string(), hits.clone(), None));
        let l = tokio::net::TcpListener::from_std(tcp_listener_in(
            &net.internet,
            SocketAddr::new(ip, 443),
        ))
        .unwrap();
        tokio::spawn(serve_http(
            l,
            format!("{label}-tls"),
            hits.clone(),
            Some(acceptor.clone()),
        ));
    }
    for port in [BULK_PORT, DIRECT_PORT] {
        let l = tokio::net::TcpListener::from_std(tcp_listener_in(
            &net.internet,
            SocketAddr::new(BULK.into(), port),
        ))
        .unwrap();
        tokio::spawn(serve_http(l, format!("bulk{port}"), hits.clone(), None));
    }
    let l = tokio::net::TcpListener::from_std(tcp_listener_in(
        &net.internet,
        SocketAddr::new(BULK.into(), BANNER_PORT),
    ))
    .unwrap();
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            h.add("banner");
            tokio::spawn(async move {
                let _ = s.write_all(b"220 banner.test ESMTP ready\r\n").await;
                let _ = s.shutdown().await;
            });
        }
    });

    let dns_queries = Arc::new(AtomicUsize::new(0));
    let udp =
        tokio::net::UdpSocket::from_std(udp_in(&net.internet, SocketAddr::new(DNS_IP.into(), 53)))
            .unwrap();
    let q = dns_queries.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, src)) = udp.recv_from(&mut buf).await else {
                return;
            };
            q.fetch_add(1, Ordering::Relaxed);
            if let Some(a) = dns_answer(&buf[..n]) {
                let _ = udp.send_to(&a, src).await;
            }
        }
    });
    let tcp = tokio::net::TcpListener::from_std(tcp_listener_in(
        &net.internet,
        SocketAddr::new(DNS_IP.into(), 53),
    ))
    .unwrap();
    let q = dns_queries.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = tcp.accept().await else {
                return;
            };
            let q = q.clone();
            tokio::spawn(async move {
                let mut lb = [0u8; 2];
                while s.read_exact(&mut lb).await.is_ok() {
                    let mut m = vec![0u8; usize::from(u16::from_be_bytes(lb))];
                    if s.read_exact(&mut m).await.is_err() {
                        return;
                    }
                    q.fetch_add(1, Ordering::Relaxed);
                    let Some(a) = dns_answer(&m) else { return };
                    let mut out = (a.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&a);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Servers {
        hits,
        cert_pem,
        dns_queries,
    }
}

/// The fake authoritative answer.
pub fn dns_answer(q: &[u8]) -> Option<Vec<u8>> {
    let m = Message::from_vec(q).ok()?;
    let query = m.queries.first()?.clone();
    let mut r = Message::new(m.metadata.id, MessageType::Response, OpCode::Query);
    r.metadata.recursion_desired = m.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.add_query(query.clone());
    let name = query
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let zone = zone();
    let Some(records) = zone.get(name.as_str()) else {
        r.metadata.response_code = ResponseCode::NXDomain;
        return r.to_vec().ok();
    };
    for d in records {
        let ty = d.record_type();
        if ty == query.query_type() || ty == RecordType::CNAME {
            r.add_answer(Record::from_rdata(query.name().clone(), 30, d.clone()));
            if let RData::CNAME(c) = d {
                let target = c.0.to_ascii().trim_end_matches('.').to_string();
                for t in zone.get(target.as_str()).into_iter().flatten() {
                    if t.record_type() == query.query_type() {
                        r.add_answer(Record::from_rdata(c.0.clone(), 30, t.clone()));
                    }
                }
            }
        }
    }
    r.to_vec().ok()
}

/// A tiny HTTP/1.1 server: keep-alive; `GET /bulk/<n>` sends n zero
/// bytes; anything else answers `served-by=<label> host=<Host>`.
async fn serve_http(
    l: tokio::net::TcpListener,
    label: String,
    hits: Arc<Hits>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let Ok((s, _)) = l.accept().await else { return };
        hits.add(&label);
        let label = label.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acc) => {
                    if let Ok(t) = acc.accept(s).await {
                        http_conn(t, &label).await;
                    }
                }
                None => http_conn(s, &label).await,
            }
        });
    }
}

async fn http_conn<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S, label: &str) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Read one request head.
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.len() > 64 * 1024 {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let host = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("host").then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        if let Some(n) = path
            .strip_prefix("/bulk/")
            .and_then(|n| n.parse::<u64>().ok())
        {
            let hdr =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n");
            if s.write_all(hdr.as_bytes()).await.is_err() {
                return;
            }
            let zeros = vec![0u8; 256 * 1024];
            let mut left = n;
            while left > 0 {
                let k = left.min(zeros.len() as u64) as usize;
                if s.write_all(&zeros[..k]).await.is_err() {
                    return;
                }
                left -= k as u64;
            }
            let _ = s.shutdown().await;
            return;
        }
        let body = format!("served-by={label} host={host}\n");
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
        if head
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n")
        {
            let _ = s.shutdown().await;
            return;
        }
    }
}

/// A blocking TCP exchange from inside the sandbox: connect to `dst`,
/// send `req` (maybe in pieces, with a pause between them), read until
/// EOF or `read_timeout`. Returns what was read (empty on a refused
/// connection).
pub fn sandbox_exchange(
    net: &FakeNet,
    dst: SocketAddr,
    pieces: Vec<Vec<u8>>,
    pause: Duration,
) -> Vec<u8> {
    in_netns(&net.sandbox, move || {
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(10)) else {
            return Vec::new();
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        for (i, p) in pieces.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(pause);
            }
            if s.write_all(p).is_err() {
                break;
            }
        }
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    })
}

/// An HTTP/1.1 GET with `Connection: close`.
pub fn get(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// A minimal ClientHello record naming `name` (for split/huge tests; the
/// server's TLS handshake then fails, which is fine: the tests look at
/// which server was reached). `pad`: bytes of a padding extension.
pub fn client_hello(name: &str, pad: usize) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    let mut ext = Vec::new();
    let mut entry = vec![0];
    entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
    entry.extend_from_slice(name.as_bytes());
    let mut sni = (entry.len() as u16).to_be_bytes().to_vec();
    sni.extend_from_slice(&entry);
    ext.extend_from_slice(&[0, 0]);
    ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    ext.extend_from_slice(&sni);
    if pad > 0 {
        ext.extend_from_slice(&[0, 21]);
        ext.extend_from_slice(&(pad as u16).to_be_bytes());
        ext.extend(std::iter::repeat_n(0u8, pad));
    }
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut msg = vec![1];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    let mut out = Vec::new();
    for c in msg.chunks(1 << 14) {
        out.extend_from_slice(&[0x16, 3, 1]);
        out.extend_from_slice(&(c.len() as u16).to_be_bytes());
        out.extend_from_slice(c);
    }
    out
}
