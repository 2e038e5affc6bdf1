//! hull's own name resolution for the egress proxy: names from SNI/`Host`
//! are resolved here (never trusting the address the sandbox dialled), the
//! resulting addresses are checked against the [`AddrGuard`], and the proxy
//! connects to the first one that answers.
//!
//! Queries go to the configured upstream servers (the daemon's `--dns
//! ADDR`, by default the host's `/etc/resolv.conf` nameservers), A and AAAA
//! in parallel, over UDP with a fallback to TCP when the answer is
//! truncated. Answers are cached for their TTL (clamped to
//! [`MAX_CACHE_TTL`]; at most [`MAX_CACHE_ENTRIES`] names).
//!
//! The guard: a name may never lead to loopback, unspecified, link-local
//! (169.254.0.0/16, fe80::/10), multicast or broadcast addresses, to one
//! of the host's own addresses (read with `getifaddrs` in the calling
//! thread's network namespace, refreshed every few seconds), or into the
//! extra networks the daemon forbids (the sandbox address pool) unless the
//! sandbox has a peer rule for that address. A name resolving into a
//! private range (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7) is
//! refused too unless the sandbox's rules allow that address by CIDR (or
//! the mode is open): an allowed public name must not become a way into the
//! host's internal networks by DNS rebinding.
//!
//! Limits: no DNSSEC validation, no search domains (names are absolute),
//! IPv4 addresses are tried before IPv6 (one at a time, each with
//! [`CONNECT_TIMEOUT`], all within [`CONNECT_TOTAL_TIMEOUT`]), no negative
//! caching.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::rules::SandboxRules;

/// How long one upstream server gets to answer one query.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one upstream TCP connection attempt of the proxy may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Resolver::connect`] tries a name's addresses in all.
pub const CONNECT_TOTAL_TIMEOUT: Duration = Duration::from_secs(12);
/// The longest time an answer is cached.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(300);
/// The most names cached.
pub const MAX_CACHE_ENTRIES: usize = 4096;
/// The largest DNS message accepted from an upstream.
pub const MAX_DNS_MESSAGE: usize = 65535;

/// Errors of resolving a name or connecting to it.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no upstream DNS server is configured")]
    NoUpstream,
    #[error("{0:?} is not a valid DNS name")]
    BadName(String),
    #[error("DNS lookup of {name} failed: {code}")]
    Failed { name: String, code: String },
    #[error("DNS lookup of {0} timed out")]
    Timeout(String),
    #[error("{0} has no address")]
    NoAddress(String),
    #[error("{name} resolves to {ip}, which is {why}")]
    Forbidden {
        name: String,
        ip: IpAddr,
        why: String,
    },
    #[error("connecting to {addr} failed")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("DNS exchange with {addr} failed")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed DNS answer from {0}")]
    BadAnswer(SocketAddr),
}

/// The nameservers in a resolv.conf text (port 53). Scoped IPv6 addresses
/// (`fe80::1%eth0`) are skipped.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The host's nameservers from `/etc/resolv.conf` (empty when unreadable).
pub fn system_upstreams() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|t| parse_resolv_conf(&t))
        .unwrap_or_default()
}

/// `::ffff:a.b.c.d` -> `a.b.c.d`; anything else unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Which addresses a name may lead the proxy to (see the module doc).
#[derive(Debug)]
pub struct AddrGuard {
    deny_nets: Vec<IpNet>,
    local: Mutex<(Instant, Vec<IpAddr>)>,
}

const LOCAL_REFRESH: Duration = Duration::from_secs(5);

impl AddrGuard {
    /// A guard that also refuses `deny_nets` (e.g. the sandbox address
    /// pool; peers listed in a sandbox's rules are let through).
    pub fn new(deny_nets: Vec<IpNet>) -> AddrGuard {
        AddrGuard {
            deny_nets,
            local: Mutex::new((Instant::now() - LOCAL_REFRESH * 2, Vec::new())),
        }
    }

    fn is_local(&self, ip: IpAddr) -> bool {
        let mut g = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if g.0.elapsed() >= LOCAL_REFRESH {
            let addrs = nix::ifaddrs::getifaddrs()
                .map(|it| {
                    it.filter_map(|i| i.address)
                        .filter_map(|a| {
                            if let Some(v4) = a.as_sockaddr_in() {
                                Some(IpAddr::V4(v4.ip()))
                            } else {
                                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            *g = (Instant::now(), addrs);
        }
        g.1.contains(&ip)
    }

    /// `Err(why)` when a connection to `ip:port` on behalf of a sandbox
    /// with `rules` must be refused.
    pub fn check(&self, ip: IpAddr, port: u16, rules: &SandboxRules) -> Result<(), String> {
        let ip = canonical_ip(ip);
        if rules.peers.contains(&ip) {
            return Ok(());
        }
        let why = match ip {
            IpAddr::V4(v4) => v4_forbidden(v4),
            IpAddr::V6(v6) => v6_forbidden(v6),
        };
        if let Some(why) = why {
            return Err(why.to_string());
        }
        if self.is_local(ip) {
            return Err("one of the host's own addresses".into());
        }
        if self.deny_nets.iter().any(|n| n.contains(&ip)) {
            return Err("a sandbox address (no peer rule allows it)".into());
        }
        if is_private(ip) && !rules.allows_addr(ip, port) {
            return Err("a private address (add a CIDR rule to allow it)".into());
        }
        Ok(())
    }
}

fn v4_forbidden(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if ip.is_multicast() || ip.is_broadcast() {
        Some("a multicast or broadcast address")
    } else {
        None
    }
}

fn v6_forbidden(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_unicast_link_local() {
        Some("a link-local address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else {
        None
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// One DNS exchange over UDP (a fresh socket per query: a random source
/// port). Returns the raw answer, checked to carry `id`.
pub(crate) async fn exchange_udp(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    timeout: Duration,
) -> Result<Vec<u8>, ResolveError> {
    let io = |source| ResolveError::Io {
        addr: upstream,
        source,
    };
    let bind: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await.map_err(io)?;
    sock.connect(upstream).await.map_err(io)?;
    sock.send(query).await.map_err(io)?;
    // As large as an answer can be: the client's EDNS size was forwarded.
    let mut buf = vec![0u8; MAX_DNS_MESSAGE];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            Err(_) => return Err(ResolveError::Timeout(upstream.to_string())),
            Ok(r) => r.map_err(io)?,
        };
        // Ignore stray datagrams with another id (a spoofing attempt or a
        // late answer): wait for ours until the deadline.
        if n >= 12 && u16::from_be_bytes([buf[0], buf[1]]) == id && buf[2] & 0x80 != 0 {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

/// One DNS exchange over TCP (2-byte length framing).
pub(crate) async fn exchange_tcp(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    timeout: Duration,
) -> Result<Vec<u8>, ResolveError> {
    let io = |source| ResolveError::Io {
        addr: upstream,
        source,
    };
    let fut = async {
        let mut s = TcpStream::connect(upstream).await.map_err(io)?;
        let len = u16::try_from(query.len()).map_err(|_| ResolveError::BadAnswer(upstream))?;
        let mut out = len.to_be_bytes().to_vec();
        out.extend_from_slice(query);
        s.write_all(&out).await.map_err(io)?;
        let mut lb = [0u8; 2];
        s.read_exact(&mut lb).await.map_err(io)?;
        let n = usize::from(u16::from_be_bytes(lb));
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).await.map_err(io)?;
        if n < 12 || u16::from_be_bytes([buf[0], buf[1]]) != id {
            return Err(ResolveError::BadAnswer(upstream));
        }
        Ok(buf)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ResolveError::Timeout(upstream.to_string()))?
}

/// A random 16-bit DNS id.
pub(crate) fn random_id() -> u16 {
    let mut b = [0u8; 2];
    // getrandom only fails without any entropy source; a fixed id then
    // still works (the socket is connected and its port is random).
    let _ = getrandom::fill(&mut b);
    u16::from_be_bytes(b)
}

#[derive(Debug, Clone)]
struct Cached {
    addrs: Vec<IpAddr>,
    expires: Instant,
}

/// Resolves names for the proxy through the upstream servers, with a small
/// TTL-respecting cache, and connects to them under the [`AddrGuard`].
/// Cheap to share: wrap it in an `Arc`.
#[derive(Debug)]
pub struct Resolver {
    upstreams: Vec<SocketAddr>,
    guard: AddrGuard,
    cache: Mutex<HashMap<String, Cached>>,
}

impl Resolver {
    /// A resolver asking `upstreams` in order (the first that answers
    /// wins), refusing addresses in `deny_nets` on top of the fixed rules
    /// (see the module doc). Pass [`system_upstreams()`] for the host's
    /// nameservers.
    pub fn new(upstreams: Vec<SocketAddr>, deny_nets: Vec<IpNet>) -> Arc<Resolver> {
        Arc::new(Resolver {
            upstreams,
            guard: AddrGuard::new(deny_nets),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The upstream servers (the DNS server forwards to the same ones).
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// The address guard.
    pub fn guard(&self) -> &AddrGuard {
        &self.guard
    }

    /// Send a raw DNS query to the upstreams in turn: over UDP (answers
    /// with TC relayed as they are) or, with `tcp`, over TCP. Returns the
    /// raw answer (with the query's own id).
    pub(crate) async fn forward(
        &self,
        query: &[u8],
        id: u16,
        tcp: bool,
    ) -> Result<Vec<u8>, ResolveError> {
        let mut last = ResolveError::NoUpstream;
        for up in &self.upstreams {
            let r = if tcp {
                exchange_tcp(*up, query, id, UPSTREAM_TIMEOUT).await
            } else {
                exchange_udp(*up, query, id, UPSTREAM_TIMEOUT).await
            };
            match r {
                Ok(a) => return Ok(a),
                Err(e) => {
                    tracing::debug!(upstream = %up, error = %e, "DNS upstream failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn query(&self, name: &Name, ty: RecordType) -> Result<(Vec<IpAddr>, u32), ResolveError> {
        let id = random_id();
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(name.clone(), ty));
        let bytes = m
            .to_vec()
            .map_err(|_| ResolveError::BadName(name.to_string()))?;
        let mut raw = self.forward(&bytes, id, false).await?;
        if raw.len() > 2 && raw[2] & 0x02 != 0 {
            raw = self.forward(&bytes, id, true).await?;
        }
        let ans =
            Message::from_vec(&raw).map_err(|_| ResolveError::BadAnswer(self.upstreams[0]))?;
        match ans.metadata.response_code {
            ResponseCode::NoError => {}
            ResponseCode::NXDomain => return Ok((Vec::new(), 0)),
            c => {
                return Err(ResolveError::Failed {
                    name: name.to_ascii(),
                    code: c.to_string(),
                });
            }
        }
        // Follow the CNAME chain from the question name.
        let mut owner = name.to_lowercase();
        let mut ttl = u32::MAX;
        let mut addrs = Vec::new();
        for _ in 0..16 {
            let mut next = None;
            for r in &ans.answers {
                if r.name.to_lowercase() != owner {
                    continue;
                }
                match &r.data {
                    RData::A(a) if ty == RecordType::A => {
                        addrs.push(IpAddr::V4(a.0));
                        ttl = ttl.min(r.ttl);
                    }
                    RData::AAAA(a) if ty == RecordType::AAAA => {
                        addrs.push(IpAddr::V6(a.0));
                        ttl = ttl.min(r.ttl);
                    }
                    RData::CNAME(c) => {
                        next = Some(c.0.to_lowercase());
                        ttl = ttl.min(r.ttl);
                    }
                    _ => {}
                }
            }
            match next {
                Some(n) if addrs.is_empty() => owner = n,
                _ => break,
            }
        }
        Ok((addrs, ttl))
    }

    /// The addresses of `name` (IPv4 first), from the cache or the
    /// upstreams.
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let key =
            crate::rules::normalize_host(name).ok_or_else(|| ResolveError::BadName(name.into()))?;
        if let Some(c) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && c.expires > Instant::now()
        {
            return Ok(c.addrs.clone());
        }
        if self.upstreams.is_empty() {
            return Err(ResolveError::NoUpstream);
        }
        let fq =
            Name::from_ascii(format!("{key}.")).map_err(|_| ResolveError::BadName(name.into()))?;
        let (a, aaaa) = tokio::join!(
            self.query(&fq, RecordType::A),
            self.query(&fq, RecordType::AAAA)
        );
        let mut addrs = Vec::new();
        let mut ttl = u32::MAX;
        let mut err = None;
        for r in [a, aaaa] {
            match r {
                Ok((v, t)) => {
                    if !v.is_empty() {
                        ttl = ttl.min(t);
                    }
                    addrs.extend(v);
                }
                Err(e) => err = Some(e),
            }
        }
        if addrs.is_empty() {
            return Err(err.unwrap_or(ResolveError::NoAddress(key)));
        }
        let ttl = Duration::from_secs(u64::from(ttl)).min(MAX_CACHE_TTL);
        if !ttl.is_zero() {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() >= MAX_CACHE_ENTRIES {
                let now = Instant::now();
                cache.retain(|_, c| c.expires > now);
                if cache.len() >= MAX_CACHE_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(
                key,
                Cached {
                    addrs: addrs.clone(),
                    expires: Instant::now() + ttl,
                },
            );
        }
        Ok(addrs)
    }

    /// Resolve `name`, keep the addresses the guard allows for `rules`, and
    /// connect to `port` on the first that answers. When every address is
    /// refused by the guard the error is [`ResolveError::Forbidden`] (a
    /// policy denial, to be reported); other errors are failures.
    pub async fn connect(
        &self,
        name: &str,
        port: u16,
        rules: &SandboxRules,
    ) -> Result<TcpStream, ResolveError> {
        let addrs = self.lookup(name).await?;
        let mut forbidden = None;
        let mut last = None;
        let deadline = tokio::time::Instant::now() + CONNECT_TOTAL_TIMEOUT;
        for ip in addrs {
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            if let Err(why) = self.guard.check(ip, port, rules) {
                forbidden.get_or_insert(ResolveError::Forbidden {
                    name: name.to_string(),
                    ip,
                    why,
                });
                continue;
            }
            match connect_addr(SocketAddr::new(ip, port)).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .or(forbidden)
            .unwrap_or_else(|| ResolveError::NoAddress(name.into())))
    }
}

/// Connect to `addr` within [`CONNECT_TIMEOUT`], with `TCP_NODELAY`.
pub async fn connect_addr(addr: SocketAddr) -> Result<TcpStream, ResolveError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Err(_) => Err(ResolveError::ConnectTimeout(addr)),
        Ok(Err(source)) => Err(ResolveError::Connect { addr, source }),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{CidrRule, Mode, PortSet};

    #[test]
    fn resolv_conf() {
        let t = "# c\nnameserver 192.0.2.53\nnameserver  2001:db8::53 \nnameserver fe80::1%eth0\nsearch x\noptions ndots:1\nnameserver bad\n";
        assert_eq!(
            parse_resolv_conf(t),
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::53]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn guard_refuses_the_fixed_set() {
        let g = AddrGuard::new(vec!["10.88.0.0/16".parse().unwrap()]);
        let mut r = SandboxRules::deny_all("sb");
        r.mode = Mode::Allowlist;
        for bad in [
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "169.254.169.254",
            "fe80::1",
            "224.0.0.1",
            "255.255.255.255",
            "::ffff:127.0.0.1",
            "10.88.0.5",
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "100.64.0.1",
            "fd00::1",
        ] {
            assert!(g.check(bad.parse().unwrap(), 443, &r).is_err(), "{bad}");
        }
        assert!(g.check("192.0.2.10".parse().unwrap(), 443, &r).is_ok());
        // A peer may be reached; a CIDR rule opens a private range.
        r.peers.push("10.88.0.5".parse().unwrap());
        assert!(g.check("10.88.0.5".parse().unwrap(), 443, &r).is_ok());
        r.cidrs.push(CidrRule {
            net: "10.1.0.0/16".parse().unwrap(),
            ports: PortSet::any(),
        });
        assert!(g.check("10.1.2.3".parse().unwrap(), 443, &r).is_ok());
        assert!(g.check("127.0.0.1".parse().unwrap(), 443, &r).is_err());
        // Open mode reaches private ranges but never loopback/link-local.
        r.mode = Mode::Open;
        assert!(g.check("192.168.1.1".parse().unwrap(), 443, &r).is_ok());
        assert!(g.check("169.254.169.254".parse().unwrap(), 80, &r).is_err());
    }

    #[test]
    fn guard_refuses_local_addresses() {
        // 127.0.0.1 is covered above; any address of this namespace's
        // interfaces must be refused too.
        let g = AddrGuard::new(Vec::new());
        let mut r = SandboxRules::deny_all("sb");
        r.mode = Mode::Open;
        if let Ok(it) = nix::ifaddrs::getifaddrs() {
            for i in it {
                if let Some(v4) = i.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
                    assert!(g.check(IpAddr::V4(v4.ip()), 1, &r).is_err());
                }
            }
        }
    }

    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, CNAME};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fake upstream on loopback: UDP answers come from `udp` (None: no
    /// answer), TCP answers from the same zone without truncation.
    struct Upstream {
        addr: SocketAddr,
        udp_queries: Arc<AtomicUsize>,
        tcp_queries: Arc<AtomicUsize>,
    }

    fn answer(q: &[u8], truncate: bool, wrong_id_first: bool) -> Vec<Vec<u8>> {
        let m = Message::from_vec(q).unwrap();
        let query = m.queries[0].clone();
        let mut r = Message::new(m.metadata.id, MessageType::Response, OpCode::Query);
        r.add_query(query.clone());
        let name = query.name().to_ascii();
        match (name.as_str(), query.query_type()) {
            ("alias.test.", RecordType::A) => {
                let target = Name::from_ascii("real.test.").unwrap();
                r.add_answer(Record::from_rdata(
                    query.name().clone(),
                    50,
                    RData::CNAME(CNAME(target.clone())),
                ));
                r.add_answer(Record::from_rdata(
                    target,
                    100,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
                ));
                // An unrelated record must not be picked up.
                r.add_answer(Record::from_rdata(
                    Name::from_ascii("evil.test.").unwrap(),
                    100,
                    RData::A(A(Ipv4Addr::new(198, 51, 100, 66))),
                ));
            }
            ("big.test.", RecordType::A) if truncate => r.metadata.truncation = true,
            ("big.test.", RecordType::A) => {
                r.add_answer(Record::from_rdata(
                    query.name().clone(),
                    100,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, 8))),
                ));
            }
            (_, RecordType::A) if name.starts_with("nx") => {
                r.metadata.response_code = ResponseCode::NXDomain
            }
            _ => {}
        }
        let good = r.to_vec().unwrap();
        let mut out = Vec::new();
        if wrong_id_first {
            let mut bad = good.clone();
            bad[0] ^= 0xff;
            out.push(bad);
        }
        out.push(good);
        out
    }

    async fn upstream(silent: bool) -> Upstream {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
        let udp_queries = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        let uq = udp_queries.clone();
        tokio::spawn(async move {
            let mut b = vec![0u8; 4096];
            loop {
                let (n, src) = udp.recv_from(&mut b).await.unwrap();
                uq.fetch_add(1, Ordering::SeqCst);
                if silent {
                    continue;
                }
                for a in answer(&b[..n], true, true) {
                    udp.send_to(&a, src).await.unwrap();
                }
            }
        });
        let tq = tcp_queries.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = tcp.accept().await.unwrap();
                tq.fetch_add(1, Ordering::SeqCst);
                let mut lb = [0u8; 2];
                s.read_exact(&mut lb).await.unwrap();
                let mut q = vec![0u8; usize::from(u16::from_be_bytes(lb))];
                s.read_exact(&mut q).await.unwrap();
                let a = answer(&q, false, false).pop().unwrap();
                let mut out = (a.len() as u16).to_be_bytes().to_vec();
                out.extend_from_slice(&a);
                s.write_all(&out).await.unwrap();
            }
        });
        Upstream {
            addr,
            udp_queries,
            tcp_queries,
        }
    }

    #[tokio::test]
    async fn lookup_follows_cnames_caches_and_falls_back() {
        let silent = upstream(true).await;
        let up = upstream(false).await;
        // The first upstream never answers: the second one does.
        let r = Resolver::new(vec![silent.addr, up.addr], Vec::new());
        let a = r.lookup("Alias.Test").await.unwrap();
        assert_eq!(a, vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))]);
        assert!(silent.udp_queries.load(Ordering::SeqCst) >= 1);
        // Cached (TTL 50 s): no new query.
        let before = up.udp_queries.load(Ordering::SeqCst);
        assert_eq!(r.lookup("alias.test.").await.unwrap(), a);
        assert_eq!(up.udp_queries.load(Ordering::SeqCst), before);
        // A truncated UDP answer is retried over TCP.
        let r = Resolver::new(vec![up.addr], Vec::new());
        let a = r.lookup("big.test").await.unwrap();
        assert_eq!(a, vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 8))]);
        assert!(up.tcp_queries.load(Ordering::SeqCst) >= 1);
        // NXDOMAIN and empty answers: no address.
        assert!(matches!(
            r.lookup("nx.test").await,
            Err(ResolveError::NoAddress(_))
        ));
        assert!(matches!(
            r.lookup("empty.test").await,
            Err(ResolveError::NoAddress(_))
        ));
    }

    #[tokio::test]
    async fn connect_refuses_guarded_addresses() {
        let up = upstream(false).await;
        let r = Resolver::new(vec![up.addr], vec!["192.0.2.0/28".parse().unwrap()]);
        let mut rules = SandboxRules::deny_all("sb");
        rules.mode = Mode::Allowlist;
        // real.test -> 192.0.2.7, inside the denied net.
        match r.connect("alias.test", 443, &rules).await {
            Err(ResolveError::Forbidden { ip, why, .. }) => {
                assert_eq!(ip, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));
                assert!(why.contains("sandbox"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn lookup_without_upstreams_fails_cleanly() {
        let r = Resolver::new(Vec::new(), Vec::new());
        assert!(matches!(
            r.lookup("example.com").await,
            Err(ResolveError::NoUpstream)
        ));
        assert!(matches!(
            r.lookup("not a name").await,
            Err(ResolveError::BadName(_))
        ));
        assert!(matches!(
            r.lookup("10.0.0.1").await,
            Err(ResolveError::BadName(_))
        ));
    }
}
