//! hull's DNS server for sandboxes: every query a sandbox sends (the
//! firewall redirects its UDP and TCP port 53 here) is answered according
//! to that sandbox's rules, identified by the query's source address.
//!
//! - `allowlist` / `record`: a name allowed by `allows_domain(name, 0)` is
//!   forwarded (any query type) to the upstream servers and the answer
//!   relayed, minus A/AAAA records pointing at loopback, link-local or
//!   unspecified addresses; any other name gets **NXDOMAIN** and a
//!   `Denied { proto: "dns" }` event (NXDOMAIN rather than REFUSED: the
//!   denial is permanent for this policy, and stub resolvers then fail at
//!   once with "name not known" instead of retrying a "temporary failure").
//!   Repeated denials of one name are reported once per
//!   [`DENIAL_REPORT_INTERVAL`].
//!   Reverse lookups (`*.in-addr.arpa`, `*.ip6.arpa`) that no rule allows
//!   get NXDOMAIN without an event (they are no egress to a domain, and
//!   `ping`, `ssh` and `getnameinfo` make them all the time).
//! - `open`: everything is forwarded.
//! - `replay`: nothing leaves the host; every A query is answered with
//!   [`REPLAY_V4`] (198.18.0.1, from the RFC 2544 benchmarking range) and
//!   every AAAA with [`REPLAY_V6`] (64:ff9b::c612:1, the same address in
//!   the NAT64 prefix), TTL 60; other types get an empty answer. Clients
//!   then connect there and the egress proxy (which sees every TCP
//!   connection of a replay sandbox) serves them from the cassette.
//! - `none`, or a source that is no sandbox: REFUSED.
//!
//! UDP queries are forwarded over UDP (a truncated answer is relayed as is;
//! the client retries over TCP), TCP queries over TCP.
//!
//! Limits: queries of at most [`MAX_QUERY`] bytes with exactly one
//! question; [`DnsConfig::max_inflight_per_sandbox`] queries in flight per
//! sandbox and [`DnsConfig::max_inflight`] in total (beyond: REFUSED over
//! TCP, dropped over UDP); [`DnsConfig::max_tcp_connections`] TCP clients,
//! each closed after [`DnsConfig::tcp_idle`] without a query; upstream
//! answers within [`crate::resolve::UPSTREAM_TIMEOUT`] per server, else
//! SERVFAIL. No caching here (the sandbox's stub resolver and the upstream
//! cache), no DNSSEC validation, no zone transfers (AXFR/IXFR are refused).
//!
//! # Running it (for the daemon)
//!
//! ```no_run
//! # async fn f(registry: std::sync::Arc<hull_net::Registry>, events: std::sync::Arc<dyn hull_net::EventSink>) -> std::io::Result<()> {
//! use hull_net::dns::{DnsConfig, DnsServer};
//! use hull_net::resolve::{system_upstreams, Resolver};
//! let resolver = Resolver::new(system_upstreams(), vec!["10.88.0.0/16".parse().unwrap()]);
//! let dns = DnsServer::new(registry, resolver, events, DnsConfig::default());
//! let udp = tokio::net::UdpSocket::bind("10.88.0.1:5353").await?;
//! let tcp = tokio::net::TcpListener::bind("10.88.0.1:5353").await?;
//! tokio::spawn(dns.clone().serve_udp(udp));
//! tokio::spawn(dns.serve_tcp(tcp));
//! # Ok(()) }
//! ```
//! Bind to the address the firewall's `redirect`/`dnat` sends the queries
//! to (or the unspecified address): UDP answers leave with the kernel's
//! source address choice, which for `redirect` is the address the query
//! was redirected to.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use crate::resolve::{Resolver, random_id};
use crate::rules::{Denied, EventSink, Mode, Registry, SandboxRules, normalize_host};

/// The largest query accepted.
pub const MAX_QUERY: usize = 4096;
/// A sandbox's repeated DNS denials of one name are reported once per this.
pub const DENIAL_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// The A answer of every name in replay mode.
pub const REPLAY_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The AAAA answer of every name in replay mode.
pub const REPLAY_V6: Ipv6Addr = Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0xc612, 0x0001);
/// TTL of synthetic answers.
pub const REPLAY_TTL: u32 = 60;

/// Bounds of the DNS server.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    pub max_inflight_per_sandbox: usize,
    pub max_inflight: usize,
    pub max_tcp_connections: usize,
    pub tcp_idle: Duration,
}

impl Default for DnsConfig {
    fn default() -> DnsConfig {
        DnsConfig {
            max_inflight_per_sandbox: 64,
            max_inflight: 1024,
            max_tcp_connections: 256,
            tcp_idle: Duration::from_secs(10),
        }
    }
}

/// The DNS server (see the module doc). Share it as `Arc<DnsServer>`.
pub struct DnsServer {
    registry: Arc<Registry>,
    resolver: Arc<Resolver>,
    events: Arc<dyn EventSink>,
    cfg: DnsConfig,
    inflight_total: Arc<Semaphore>,
    tcp_conns: Arc<Semaphore>,
    inflight: Mutex<HashMap<String, usize>>,
    reported: Mutex<HashMap<(String, String), Instant>>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// Decrements a sandbox's in-flight count when dropped.
struct Inflight<'a> {
    server: &'a DnsServer,
    id: String,
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        let mut m = self
            .server
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.id);
            }
        }
    }
}

impl DnsServer {
    /// A server answering from `registry`, forwarding through `resolver`'s
    /// upstreams, reporting denials to `events`.
    pub fn new(
        registry: Arc<Registry>,
        resolver: Arc<Resolver>,
        events: Arc<dyn EventSink>,
        cfg: DnsConfig,
    ) -> Arc<DnsServer> {
        Arc::new(DnsServer {
            registry,
            resolver,
            events,
            inflight_total: Arc::new(Semaphore::new(cfg.max_inflight)),
            tcp_conns: Arc::new(Semaphore::new(cfg.max_tcp_connections)),
            cfg,
            inflight: Mutex::new(HashMap::new()),
            reported: Mutex::new(HashMap::new()),
        })
    }

    /// Answer queries arriving on `sock` until it fails. Each query is
    /// handled in its own task.
    pub async fn serve_udp(self: Arc<Self>, sock: UdpSocket) -> std::io::Result<()> {
        let sock = Arc::new(sock);
        let mut buf = vec![0u8; MAX_QUERY + 1];
        let mut errors = 0u32;
        loop {
            let (n, src) = match sock.recv_from(&mut buf).await {
                Ok(x) => {
                    errors = 0;
                    x
                }
                // ICMP errors of earlier sends surface here: keep serving.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => {
                    // Transient (ENOMEM, ENOBUFS...): keep serving; a
                    // socket that keeps failing is given up.
                    errors += 1;
                    if errors > 100 {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, "DNS: receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            if n > MAX_QUERY {
                continue;
            }
            let Ok(permit) = self.inflight_total.clone().try_acquire_owned() else {
                tracing::debug!(%src, "DNS: too many queries in flight, dropped");
                continue;
            };
            let query = buf[..n].to_vec();
            let me = self.clone();
            let sock = sock.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Some(ans) = me.answer(src.ip(), &query, false).await {
                    let _ = sock.send_to(&ans, src).await;
                }
            });
        }
    }

    /// Answer queries from clients connecting to `listener` until it
    /// fails.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, src) = match listener.accept().await {
                Ok(x) => x,
                Err(e) if is_transient_accept_error(&e) => {
                    tracing::warn!(error = %e, "DNS: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Ok(permit) = self.tcp_conns.clone().try_acquire_owned() else {
                tracing::debug!(%src, "DNS: too many TCP clients, closed");
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                me.serve_tcp_conn(stream, src).await;
            });
        }
    }

    async fn serve_tcp_conn(&self, mut s: TcpStream, src: SocketAddr) {
        loop {
            let mut lb = [0u8; 2];
            match tokio::time::timeout(self.cfg.tcp_idle, s.read_exact(&mut lb)).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
            let n = usize::from(u16::from_be_bytes(lb));
            if !(12..=MAX_QUERY).contains(&n) {
                return;
            }
            let mut q = vec![0u8; n];
            match tokio::time::timeout(self.cfg.tcp_idle, s.read_exact(&mut q)).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
            let ans = {
                let Ok(_permit) = self.inflight_total.try_acquire() else {
                    return;
                };
                self.answer(src.ip(), &q, true).await
            };
            let Some(ans) = ans else { return };
            let Ok(len) = u16::try_from(ans.len()) else {
                return;
            };
            let mut out = len.to_be_bytes().to_vec();
            out.extend_from_slice(&ans);
            if s.write_all(&out).await.is_err() {
                return;
            }
        }
    }

    /// The answer to one query from `src` (`None`: send nothing). `tcp`:
    /// the query came over TCP (and is forwarded over TCP).
    pub async fn answer(&self, src: IpAddr, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        if query.len() < 12 || query.len() > MAX_QUERY {
            return None;
        }
        let id = u16::from_be_bytes([query[0], query[1]]);
        // A response (QR set) is never answered: no loops.
        if query[2] & 0x80 != 0 {
            return None;
        }
        let Ok(msg) = Message::from_vec(query) else {
            return error_bytes(id, None, ResponseCode::FormErr);
        };
        let Some(rules) = self.registry.lookup(src) else {
            tracing::debug!(%src, "DNS query from an address that is no sandbox: refused");
            return error_bytes(id, Some(&msg), ResponseCode::Refused);
        };
        if msg.metadata.op_code != OpCode::Query {
            return error_bytes(id, Some(&msg), ResponseCode::NotImp);
        }
        if msg.queries.len() != 1 {
            return error_bytes(id, Some(&msg), ResponseCode::FormErr);
        }
        let q = &msg.queries[0];
        let qtype = q.query_type();
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return error_bytes(id, Some(&msg), ResponseCode::Refused);
        }
        let raw_name = q.name().to_ascii();
        let name = normalize_host(&raw_name);

        match rules.mode {
            Mode::None => return error_bytes(id, Some(&msg), ResponseCode::Refused),
            Mode::Replay => return replay_answer(&msg),
            Mode::Open => {}
            Mode::Allowlist | Mode::Record => {
                let allowed = name.as_deref().is_some_and(|n| rules.allows_domain(n, 0));
                if !allowed && is_reverse(&raw_name) {
                    // Reverse lookups (ping, ssh, getnameinfo) are no
                    // egress to a domain: answered locally, not reported.
                    return error_bytes(id, Some(&msg), ResponseCode::NXDomain);
                }
                if !allowed {
                    let shown = name
                        .clone()
                        .unwrap_or_else(|| raw_name.trim_end_matches('.').to_string());
                    self.report(&rules, shown);
                    return error_bytes(id, Some(&msg), ResponseCode::NXDomain);
                }
            }
        }

        let _slot = match self.enter(&rules.sandbox_id) {
            Some(s) => s,
            None => {
                tracing::debug!(sandbox = %rules.sandbox_id, "DNS: too many queries in flight");
                return if tcp {
                    error_bytes(id, Some(&msg), ResponseCode::Refused)
                } else {
                    None
                };
            }
        };
        let up_id = random_id();
        let mut fwd = query.to_vec();
        fwd[..2].copy_from_slice(&up_id.to_be_bytes());
        match self.resolver.forward(&fwd, up_id, tcp).await {
            Ok(mut ans) => {
                ans[..2].copy_from_slice(&id.to_be_bytes());
                Some(strip_forbidden(ans))
            }
            Err(e) => {
                tracing::info!(sandbox = %rules.sandbox_id, name = %raw_name, error = %e, "DNS: upstream failed");
                error_bytes(id, Some(&msg), ResponseCode::ServFail)
            }
        }
    }

    fn enter(&self, sandbox: &str) -> Option<Inflight<'_>> {
        let mut m = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(sandbox.to_string()).or_insert(0);
        if *n >= self.cfg.max_inflight_per_sandbox {
            return None;
        }
        *n += 1;
        Some(Inflight {
            server: self,
            id: sandbox.to_string(),
        })
    }

    fn report(&self, rules: &SandboxRules, name: String) {
        {
            let mut rep = self.reported.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let key = (rules.sandbox_id.clone(), name.clone());
            if rep
                .get(&key)
                .is_some_and(|t| now.duration_since(*t) < DENIAL_REPORT_INTERVAL)
            {
                return;
            }
            if rep.len() >= 4096 {
                rep.retain(|_, t| now.duration_since(*t) < DENIAL_REPORT_INTERVAL);
                if rep.len() >= 4096 {
                    rep.clear();
                }
            }
            rep.insert(key, now);
        }
        tracing::info!(sandbox = %rules.sandbox_id, name = %name, "DNS query denied by the network policy");
        self.events.denied(
            &rules.sandbox_id,
            Denied {
                proto: "dns",
                dest: name,
                reason: "not in the allowlist".into(),
            },
        );
    }
}

pub(crate) fn is_transient_accept_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock)
        // ENFILE, EMFILE: out of descriptors for now.
        || matches!(e.raw_os_error(), Some(23 | 24))
}

/// A response to `query` (its question copied) with `code`.
fn error_bytes(id: u16, query: Option<&Message>, code: ResponseCode) -> Option<Vec<u8>> {
    let mut m = Message::error_msg(id, OpCode::Query, code);
    if let Some(q) = query {
        m.metadata.op_code = q.metadata.op_code;
        m.metadata.recursion_desired = q.metadata.recursion_desired;
        m.metadata.recursion_available = true;
        m.queries = q.queries.clone();
    }
    m.to_vec().ok()
}

fn replay_answer(q: &Message) -> Option<Vec<u8>> {
    let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.authoritative = true;
    m.queries = q.queries.clone();
    let query = &q.queries[0];
    let data = match query.query_type() {
        RecordType::A => Some(RData::A(A(REPLAY_V4))),
        RecordType::AAAA => Some(RData::AAAA(AAAA(REPLAY_V6))),
        _ => None,
    };
    if let Some(d) = data {
        m.add_answer(Record::from_rdata(query.name().clone(), REPLAY_TTL, d));
    }
    m.to_vec().ok()
}

/// `*.in-addr.arpa` / `*.ip6.arpa`.
fn is_reverse(name: &str) -> bool {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    n.ends_with(".in-addr.arpa") || n.ends_with(".ip6.arpa")
}

fn forbidden_answer(ip: IpAddr) -> bool {
    match crate::resolve::canonical_ip(ip) {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || v4.is_unspecified(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unicast_link_local() || v6.is_unspecified(),
    }
}

/// Drop A/AAAA records pointing at loopback, link-local or unspecified
/// addresses from an upstream answer (re-encoding it only then). An answer
/// that does not parse is relayed as is: the client's resolver judges it.
fn strip_forbidden(raw: Vec<u8>) -> Vec<u8> {
    let Ok(mut m) = Message::from_vec(&raw) else {
        return raw;
    };
    let bad = |r: &Record| match &r.data {
        RData::A(a) => forbidden_answer(IpAddr::V4(a.0)),
        RData::AAAA(a) => forbidden_answer(IpAddr::V6(a.0)),
        _ => false,
    };
    if !m.answers.iter().chain(m.additionals.iter()).any(bad) {
        return raw;
    }
    m.answers.retain(|r| !bad(r));
    m.additionals.retain(|r| !bad(r));
    m.to_vec().unwrap_or(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{DomainPattern, DomainRule, PortSet};
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    #[derive(Default)]
    struct Sink(Mutex<Vec<(String, Denied)>>);
    impl EventSink for Sink {
        fn denied(&self, id: &str, d: Denied) {
            self.0.lock().unwrap().push((id.into(), d));
        }
    }

    fn query(name: &str, ty: RecordType) -> Vec<u8> {
        let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
        m.to_vec().unwrap()
    }

    fn setup(mode: Mode) -> (Arc<DnsServer>, Arc<Sink>, IpAddr) {
        let reg = Arc::new(Registry::new());
        let src: IpAddr = "10.88.0.2".parse().unwrap();
        let mut r = SandboxRules::deny_all("sb1");
        r.mode = mode;
        r.domains.push(DomainRule {
            pattern: DomainPattern::parse("allowed.test").unwrap(),
            ports: PortSet::any(),
        });
        reg.set(&[src], Arc::new(r));
        let sink = Arc::new(Sink::default());
        // No upstreams: forwarding fails with SERVFAIL, which is enough to
        // tell "forwarded" from "denied" here; tests/dns.rs covers the rest.
        let s = DnsServer::new(
            reg,
            Resolver::new(Vec::new(), Vec::new()),
            sink.clone(),
            DnsConfig::default(),
        );
        (s, sink, src)
    }

    fn rcode(b: &[u8]) -> ResponseCode {
        Message::from_vec(b).unwrap().metadata.response_code
    }

    #[tokio::test]
    async fn allowlist_answers() {
        let (s, sink, src) = setup(Mode::Allowlist);
        let a = s
            .answer(src, &query("denied.test.", RecordType::A), false)
            .await
            .unwrap();
        assert_eq!(rcode(&a), ResponseCode::NXDomain);
        assert_eq!(u16::from_be_bytes([a[0], a[1]]), 0x4242);
        let a = s
            .answer(src, &query("Allowed.Test.", RecordType::A), false)
            .await
            .unwrap();
        assert_eq!(rcode(&a), ResponseCode::ServFail);
        // Repeated denials are reported once.
        s.answer(src, &query("denied.test.", RecordType::AAAA), false)
            .await
            .unwrap();
        let ev = sink.0.lock().unwrap().clone();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].0, "sb1");
        assert_eq!(ev[0].1.proto, "dns");
        assert_eq!(ev[0].1.dest, "denied.test");
        // Unknown source: refused, no event.
        let a = s
            .answer(
                "10.9.9.9".parse().unwrap(),
                &query("allowed.test.", RecordType::A),
                false,
            )
            .await
            .unwrap();
        assert_eq!(rcode(&a), ResponseCode::Refused);
        // Reverse lookups: NXDOMAIN, no event.
        let a = s
            .answer(
                src,
                &query("2.0.99.10.in-addr.arpa.", RecordType::PTR),
                false,
            )
            .await
            .unwrap();
        assert_eq!(rcode(&a), ResponseCode::NXDomain);
        assert_eq!(sink.0.lock().unwrap().len(), 1);
        // Zone transfers are refused.
        let a = s
            .answer(src, &query("allowed.test.", RecordType::AXFR), true)
            .await
            .unwrap();
        assert_eq!(rcode(&a), ResponseCode::Refused);
    }

    #[tokio::test]
    async fn replay_and_none() {
        let (s, _, src) = setup(Mode::Replay);
        let a = s
            .answer(src, &query("anything.example.", RecordType::A), false)
            .await
            .unwrap();
        let m = Message::from_vec(&a).unwrap();
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].data, RData::A(A(REPLAY_V4)));
        let a = s
            .answer(src, &query("anything.example.", RecordType::AAAA), false)
            .await
            .unwrap();
        let m = Message::from_vec(&a).unwrap();
        assert_eq!(m.answers[0].data, RData::AAAA(AAAA(REPLAY_V6)));
        assert_eq!(REPLAY_V6.to_string(), "64:ff9b::c612:1");
        let (s, _, src) = setup(Mode::None);
        let a = s
            .answer(src, &query("allowed.test.", RecordType::A), false)
            .await
            .unwrap();
        assert_eq!(rcode(&a), ResponseCode::Refused);
    }

    #[tokio::test]
    async fn hostile_queries() {
        let (s, _, src) = setup(Mode::Open);
        assert!(s.answer(src, &[], false).await.is_none());
        assert!(s.answer(src, &[0; 11], false).await.is_none());
        // A response is never answered.
        let mut resp = query("a.test.", RecordType::A);
        resp[2] |= 0x80;
        assert!(s.answer(src, &resp, false).await.is_none());
        // Garbage after a header: FORMERR.
        let mut g = vec![0x12, 0x34, 0x01, 0x00, 0, 5, 0, 0, 0, 0, 0, 0];
        g.extend_from_slice(&[0xff; 40]);
        assert_eq!(
            rcode(&s.answer(src, &g, false).await.unwrap()),
            ResponseCode::FormErr
        );
        // Two questions: FORMERR.
        let mut m = Message::new(1, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("a.test.").unwrap(),
            RecordType::A,
        ));
        m.add_query(Query::query(
            Name::from_ascii("b.test.").unwrap(),
            RecordType::A,
        ));
        assert_eq!(
            rcode(&s.answer(src, &m.to_vec().unwrap(), false).await.unwrap()),
            ResponseCode::FormErr
        );
        for _ in 0..200 {
            let b: Vec<u8> = (0..64).map(|_| (random_id() & 0xff) as u8).collect();
            let _ = s.answer(src, &b, false).await;
        }
    }

    #[tokio::test]
    async fn in_flight_queries_are_capped_per_sandbox() {
        // An upstream that never answers keeps the first query in flight.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let up = silent.local_addr().unwrap();
        let reg = Arc::new(Registry::new());
        let src: IpAddr = "10.88.0.2".parse().unwrap();
        let mut r = SandboxRules::deny_all("sb1");
        r.mode = Mode::Open;
        reg.set(&[src], Arc::new(r));
        let cfg = DnsConfig {
            max_inflight_per_sandbox: 1,
            ..DnsConfig::default()
        };
        let s = DnsServer::new(
            reg,
            Resolver::new(vec![up], Vec::new()),
            Arc::new(Sink::default()),
            cfg,
        );
        let s2 = s.clone();
        let first = tokio::spawn(async move {
            s2.answer(src, &query("a.test.", RecordType::A), false)
                .await
        });
        // Wait until the first query reached the upstream.
        let mut b = [0u8; 512];
        silent.recv_from(&mut b).await.unwrap();
        // UDP: dropped; TCP: REFUSED.
        assert!(
            s.answer(src, &query("b.test.", RecordType::A), false)
                .await
                .is_none()
        );
        let a = s
            .answer(src, &query("b.test.", RecordType::A), true)
            .await
            .unwrap();
        assert_eq!(rcode(&a), ResponseCode::Refused);
        // The first one ends in SERVFAIL after the upstream timeout, and
        // frees its slot.
        assert_eq!(
            rcode(&first.await.unwrap().unwrap()),
            ResponseCode::ServFail
        );
        assert!(s.inflight.lock().unwrap().is_empty());
    }

    #[test]
    fn strips_loopback_answers() {
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        let n = Name::from_ascii("x.test.").unwrap();
        m.add_query(Query::query(n.clone(), RecordType::A));
        m.add_answer(Record::from_rdata(
            n.clone(),
            5,
            RData::A(A(Ipv4Addr::LOCALHOST)),
        ));
        m.add_answer(Record::from_rdata(
            n.clone(),
            5,
            RData::A(A(Ipv4Addr::new(169, 254, 169, 254))),
        ));
        m.add_answer(Record::from_rdata(
            n,
            5,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
        ));
        let out = Message::from_vec(&strip_forbidden(m.to_vec().unwrap())).unwrap();
        assert_eq!(out.answers.len(), 1);
        assert_eq!(
            out.answers[0].data,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 1)))
        );
    }
}
