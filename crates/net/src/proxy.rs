//! The egress proxy: every TCP connection of a sandbox in `allowlist`,
//! `record` or `replay` mode is redirected here by the firewall, and is
//! either spliced to its destination, handed to the TLS interceptor, or
//! refused and reported.
//!
//! Per connection:
//! 1. The sandbox is found by the peer address ([`Registry::lookup`]; an
//!    unknown source is closed and logged) and what it dialled is read with
//!    `getsockopt(SO_ORIGINAL_DST)` (IPv4, IPv4-mapped and IPv6).
//! 2. The first bytes are peeked (not consumed) for at most
//!    [`ProxyConfig::first_bytes_timeout`]: a TLS ClientHello gives the SNI
//!    ([`crate::sni`]), an HTTP/1.x request head the name from `Host` or an
//!    absolute-form target ([`crate::http_host`]); anything else is raw TCP.
//!    A client that sends nothing within [`ProxyConfig::server_first_wait`]
//!    (server-speaks-first protocols: SMTP, MySQL, ...) is raw TCP at once
//!    when a CIDR/peer rule allows the address it dialled; otherwise the
//!    proxy keeps waiting for a first byte until the full timeout.
//! 3. A name is allowed by `allows_domain(name, port)`; the proxy then
//!    resolves the NAME with hull's own resolver ([`crate::resolve`]) and
//!    connects there on the dialled port. The address the sandbox dialled
//!    is never used for named traffic, so an allowed SNI/`Host` sent to a
//!    forbidden IP only reaches the allowed name. The resolved address must
//!    pass the [`crate::resolve::AddrGuard`] (never loopback, link-local,
//!    the host's own addresses, other sandboxes; private ranges only with a
//!    CIDR rule). Raw TCP, TLS without SNI (an IP-literal client) and HTTP
//!    with an IP literal `Host` are allowed only by `allows_addr(dialled
//!    address)` and go to that address (under the same guard).
//! 4. If `rules.intercepts(name)` (header rules, `record`, `replay`) the
//!    untouched stream goes to the [`Interceptor`] instead; a `replay`
//!    sandbox never reaches the network (no interceptor: refused).
//! 5. Otherwise both directions are copied until each side has closed its
//!    half (half-close is passed on), with an idle timeout and a total
//!    lifetime. The copy is `splice(2)` through a pipe per direction (up
//!    to 1 MiB; the bytes stay in the kernel), in one task per
//!    connection. The proxy's end of the sandbox connection uses
//!    [`ProxyConfig::sandbox_congestion_control`] (`cubic`): with BBR, a
//!    common system default, every send on that host-local hop is paced
//!    by timers, which made the proxied path cost about 25 % more CPU per
//!    byte in the throughput benchmark. Even so, a proxied byte costs
//!    more CPU than a forwarded one (the kernel runs TCP twice, into the
//!    proxy and out of it), so where all CPUs are busy a bulk download
//!    through the proxy is slower than a forwarded one.
//!
//! Refusals are reported to the [`EventSink`] (`proto` `tls`, `http` or
//! `tcp`) and logged at info. A refused plain HTTP request gets a `403`
//! with a short text naming hull's policy; a refused TLS connection gets a
//! fatal `access_denied` alert; raw TCP is closed.
//!
//! `CONNECT host:port` (a client that believes it talks to a forward
//! proxy) is answered by hull itself: the target is checked like any name
//! (on the CONNECT port), answered `200` and spliced to that name, so hull's
//! proxy also works as an explicit proxy for tools that insist on one.
//!
//! Limits: a connection is decided once, by its first request or
//! ClientHello. Later requests on a kept-alive plain HTTP connection are
//! not parsed: they can only reach the server hull connected to (the
//! checked name), whatever their `Host` says; a shared front-end serving
//! several names can be asked for another one this way (domain fronting),
//! exactly as with TLS, whose inner requests hull cannot see. With
//! Encrypted Client Hello the outer SNI is the one checked (and connected
//! to). A client slower than [`ProxyConfig::server_first_wait`] to send its
//! first bytes to an address that a CIDR rule allows is spliced as raw
//! TCP to that address (not intercepted). Connections are capped per
//! sandbox and in total ([`ProxyConfig`]); beyond that they are closed and
//! reported.
//!
//! # Running it (for the daemon)
//!
//! ```no_run
//! # async fn f(registry: std::sync::Arc<hull_net::Registry>, events: std::sync::Arc<dyn hull_net::EventSink>) -> std::io::Result<()> {
//! use hull_net::proxy::{EgressProxy, ProxyConfig};
//! use hull_net::resolve::{system_upstreams, Resolver};
//! let resolver = Resolver::new(system_upstreams(), vec!["10.88.0.0/16".parse().unwrap()]);
//! let proxy = EgressProxy::new(registry, resolver, events, None, ProxyConfig::default());
//! let listener = tokio::net::TcpListener::bind("[::]:15001").await?; // v4 and v6
//! tokio::spawn(proxy.serve(listener));
//! # Ok(()) }
//! ```
//! Firewall side: `redirect to :15001` for the sandbox's TCP (`meta
//! l4proto tcp`, both families) in a `nat` `prerouting` chain: the
//! connection must stay NATed by conntrack for `SO_ORIGINAL_DST` to work.

use std::collections::HashMap;
use std::ffi::OsString;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::os::fd::OwnedFd;

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl};
use nix::sys::socket::{getsockopt, setsockopt, sockopt};
use tokio::io::Interest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::http_host::{self, HttpError, RequestHead, Target};
use crate::resolve::{ResolveError, Resolver, canonical_ip, connect_addr};
use crate::rules::{Denied, EventSink, Mode, Registry, SandboxRules};
use crate::sni::{self, Sni, SniError};

/// The most bytes peeked from a new connection.
const MAX_PEEK: usize = sni::MAX_RECORD_BYTES;
/// The first peek's size.
const FIRST_PEEK: usize = 2048;
/// Copy buffer per direction (when no pipe can be made).
const SPLICE_BUF: usize = 64 * 1024;
/// Pipe size per direction for splice(2) (falls back to the default
/// 64 KiB when /proc/sys/fs/pipe-max-size is lower).
const PIPE_SIZE: usize = 1024 * 1024;
/// A TLS fatal `access_denied` alert record.
const TLS_ACCESS_DENIED: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31];

/// A boxed future, as returned by [`Interceptor::intercept`].
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What the intercepted stream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppProto {
    /// A TLS ClientHello is waiting in the stream.
    Tls,
    /// A plain HTTP/1.x request is waiting in the stream.
    Http,
}

/// A connection handed to the [`Interceptor`].
pub struct Intercepted {
    /// The client's stream, untouched: its first bytes (ClientHello or
    /// request head) have been peeked, not read. After a `CONNECT`, the
    /// proxy has read the CONNECT head and answered `200`; the stream then
    /// continues with what the client sends through the tunnel.
    pub stream: TcpStream,
    /// The checked name (SNI, `Host`, or CONNECT target), normalised.
    pub name: String,
    /// The port the client meant (the dialled port, or the CONNECT port).
    pub port: u16,
    /// What the sandbox dialled (for a `replay` sandbox: usually
    /// [`crate::dns::REPLAY_V4`]).
    pub orig_dst: SocketAddr,
    pub proto: AppProto,
    pub rules: Arc<SandboxRules>,
    /// hull's resolver: connect upstream with [`Resolver::connect`] so the
    /// address guard applies to intercepted traffic too.
    pub resolver: Arc<Resolver>,
    pub events: Arc<dyn EventSink>,
}

impl std::fmt::Debug for Intercepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intercepted")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("orig_dst", &self.orig_dst)
            .field("proto", &self.proto)
            .field("sandbox", &self.rules.sandbox_id)
            .finish_non_exhaustive()
    }
}

/// Terminates TLS / serves HTTP for names the rules intercept (the MITM
/// part implements it). The future runs in its own task and owns the
/// connection until it completes.
pub trait Interceptor: Send + Sync {
    fn intercept(&self, conn: Intercepted) -> BoxFuture;
}

/// Timeouts and caps of the proxy.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// How long a client may take to send a complete ClientHello / request
    /// head.
    pub first_bytes_timeout: Duration,
    /// How long to wait for a first byte before treating a connection to
    /// an address allowed by a CIDR/peer rule as server-speaks-first raw
    /// TCP.
    pub server_first_wait: Duration,
    /// A spliced connection with no byte in either direction for this long
    /// is closed.
    pub idle_timeout: Duration,
    /// A spliced connection is closed after this long in any case.
    pub max_lifetime: Duration,
    /// Connections open at once, all sandboxes together.
    pub max_connections: usize,
    /// Connections open at once per sandbox.
    pub max_connections_per_sandbox: usize,
    /// TCP congestion control of the proxy's end of each sandbox
    /// connection (the host-local veth hop, on which the proxy sends what
    /// the sandbox downloads); `None` keeps the system default. The
    /// default, [`SANDBOX_CONGESTION_CONTROL`], avoids the per-packet
    /// pacing timers of BBR (a common system default), which cost CPU and
    /// throughput on a hop that has no bottleneck to probe. Upstream
    /// connections keep the system default. A name the kernel does not
    /// have is ignored (logged at debug).
    pub sandbox_congestion_control: Option<String>,
}

/// The default [`ProxyConfig::sandbox_congestion_control`]: Linux's
/// default algorithm, built into nearly every kernel.
pub const SANDBOX_CONGESTION_CONTROL: &str = "cubic";

impl Default for ProxyConfig {
    fn default() -> ProxyConfig {
        ProxyConfig {
            first_bytes_timeout: Duration::from_secs(5),
            server_first_wait: Duration::from_millis(300),
            idle_timeout: Duration::from_secs(30 * 60),
            max_lifetime: Duration::from_secs(24 * 3600),
            max_connections: 8192,
            max_connections_per_sandbox: 1024,
            sandbox_congestion_control: Some(SANDBOX_CONGESTION_CONTROL.to_string()),
        }
    }
}

/// The egress proxy (see the module doc). Share it as `Arc<EgressProxy>`.
pub struct EgressProxy {
    registry: Arc<Registry>,
    resolver: Arc<Resolver>,
    events: Arc<dyn EventSink>,
    interceptor: Option<Arc<dyn Interceptor>>,
    cfg: ProxyConfig,
    total: Arc<Semaphore>,
    per_sandbox: Mutex<HashMap<String, usize>>,
    stats: Stats,
}

/// Counters (for metrics and tests).
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub spliced: AtomicU64,
    pub intercepted: AtomicU64,
    pub denied: AtomicU64,
    pub failed: AtomicU64,
}

impl std::fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressProxy")
            .field("cfg", &self.cfg)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// What the first bytes of a connection are.
#[derive(Debug)]
enum First {
    /// The client closed before sending anything.
    Closed,
    /// Nothing within the wait.
    Silent,
    Tls(Result<Sni, SniError>),
    Http(Result<RequestHead, HttpError>),
    /// Neither TLS nor HTTP.
    Other,
}

/// Decrements a sandbox's connection count when dropped.
struct Slot<'a> {
    proxy: &'a EgressProxy,
    id: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut m = self
            .proxy
            .per_sandbox
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

/// How a refusal is shown to the client.
enum Refuse<'a> {
    /// Close.
    Tcp,
    /// Read the peeked ClientHello, send an `access_denied` alert.
    Tls(usize),
    /// Read the request head (its length), answer `403`.
    Http(Option<usize>),
    /// Answer `502` (an allowed name that could not be reached).
    HttpBadGateway(Option<usize>, &'a str),
}

impl EgressProxy {
    /// A proxy deciding with `registry`, connecting through `resolver`,
    /// reporting to `events`, handing intercepted names to `interceptor`.
    pub fn new(
        registry: Arc<Registry>,
        resolver: Arc<Resolver>,
        events: Arc<dyn EventSink>,
        interceptor: Option<Arc<dyn Interceptor>>,
        cfg: ProxyConfig,
    ) -> Arc<EgressProxy> {
        Arc::new(EgressProxy {
            registry,
            resolver,
            events,
            interceptor,
            total: Arc::new(Semaphore::new(cfg.max_connections)),
            cfg,
            per_sandbox: Mutex::new(HashMap::new()),
            stats: Stats::default(),
        })
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Connections of sandbox `sandbox_id` open now (being decided,
    /// spliced or intercepted).
    pub fn open_connections(&self, sandbox_id: &str) -> usize {
        let m = self.per_sandbox.lock().unwrap_or_else(|e| e.into_inner());
        m.get(sandbox_id).copied().unwrap_or(0)
    }

    /// Accept connections on `listener` (a bound std listener: v4, v6 or
    /// dual-stack) until accepting fails for good. Must run inside a tokio
    /// runtime.
    pub async fn serve_std(
        self: Arc<Self>,
        listener: std::net::TcpListener,
    ) -> std::io::Result<()> {
        listener.set_nonblocking(true)?;
        self.serve(TcpListener::from_std(listener)?).await
    }

    /// Accept connections on `listener` until accepting fails for good;
    /// each connection is handled in its own task. Call it once per
    /// listener (e.g. one IPv4 and one IPv6 socket, or one dual-stack
    /// `[::]` socket) on clones of the same `Arc`: the caps are shared.
    /// Aborting the task stops accepting; open connections run on.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) if crate::dns::is_transient_accept_error(&e) => {
                    tracing::warn!(error = %e, "egress proxy: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.stats.accepted.fetch_add(1, Ordering::Relaxed);
            let Ok(permit) = self.total.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "egress proxy: connection limit reached, closed");
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                me.handle(stream, peer).await;
            });
        }
    }

    /// Handle one redirected connection from `peer`.
    pub async fn handle(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let src = canonical_ip(peer.ip());
        let Some(rules) = self.registry.lookup(src) else {
            tracing::warn!(%peer, "egress proxy: connection from an address that is no sandbox, closed");
            return;
        };
        let orig = match original_dst(&stream) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "egress proxy: no original destination (not redirected?), closed");
                return;
            }
        };
        let Some(_slot) = self.enter(&rules.sandbox_id) else {
            self.deny(
                &rules,
                "tcp",
                orig.to_string(),
                format!(
                    "more than {} connections open at once",
                    self.cfg.max_connections_per_sandbox
                ),
            );
            return;
        };
        tune_sandbox_socket(&stream, &self.cfg);
        self.decide(stream, orig, rules).await;
    }

    fn enter(&self, sandbox: &str) -> Option<Slot<'_>> {
        let mut m = self.per_sandbox.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(sandbox.to_string()).or_insert(0);
        if *n >= self.cfg.max_connections_per_sandbox {
            return None;
        }
        *n += 1;
        Some(Slot {
            proxy: self,
            id: sandbox.to_string(),
        })
    }

    async fn decide(&self, stream: TcpStream, orig: SocketAddr, rules: Arc<SandboxRules>) {
        let start = Instant::now();
        let addr_ok = rules.allows_addr(canonical_ip(orig.ip()), orig.port());
        // Most first flights fit in 2 KiB; the buffer grows to MAX_PEEK
        // only for a client that needs it.
        let mut buf = vec![0u8; FIRST_PEEK];
        let mut first = classify(
            &stream,
            &mut buf,
            start + self.cfg.server_first_wait,
            &self.cfg,
        )
        .await;
        if matches!(first, First::Silent) && !addr_ok {
            first = classify(
                &stream,
                &mut buf,
                start + self.cfg.first_bytes_timeout,
                &self.cfg,
            )
            .await;
        }
        // What a refused TLS client sent (read before the alert); the peek
        // buffer is not kept for the connection's lifetime.
        let seen = match first {
            First::Tls(_) => peeked_len(&stream, &mut buf).await,
            _ => 0,
        };
        drop(buf);
        match first {
            First::Closed => {}
            First::Silent if addr_ok => self.raw(stream, orig, &rules, "tcp", Refuse::Tcp).await,
            First::Silent => self.deny(
                &rules,
                "tcp",
                orig.to_string(),
                "sent nothing, and no rule allows this address".into(),
            ),
            First::Other => self.raw(stream, orig, &rules, "tcp", Refuse::Tcp).await,
            First::Tls(Ok(Sni::Name(name))) => {
                self.named(
                    stream,
                    name,
                    orig.port(),
                    orig,
                    rules,
                    AppProto::Tls,
                    Refuse::Tls(seen),
                )
                .await
            }
            First::Tls(_) => {
                self.raw(stream, orig, &rules, "tls", Refuse::Tls(seen))
                    .await
            }
            First::Http(Ok(head)) => match head.target.clone() {
                Target::Name(name, Some(port)) if head.is_connect() => {
                    self.connect_method(stream, name, port, orig, rules, head.head_len)
                        .await
                }
                Target::Ip(ip, Some(port)) if head.is_connect() => {
                    self.connect_method_ip(stream, SocketAddr::new(ip, port), rules, head.head_len)
                        .await
                }
                Target::Name(name, _) => {
                    self.named(
                        stream,
                        name,
                        orig.port(),
                        orig,
                        rules,
                        AppProto::Http,
                        Refuse::Http(Some(head.head_len)),
                    )
                    .await
                }
                Target::Ip(..) => {
                    self.raw(
                        stream,
                        orig,
                        &rules,
                        "http",
                        Refuse::Http(Some(head.head_len)),
                    )
                    .await
                }
            },
            First::Http(Err(_)) => {
                self.raw(stream, orig, &rules, "http", Refuse::Http(None))
                    .await
            }
        }
    }

    /// Traffic without a usable name: allowed only by the dialled address.
    async fn raw(
        &self,
        stream: TcpStream,
        orig: SocketAddr,
        rules: &SandboxRules,
        proto: &'static str,
        how: Refuse<'_>,
    ) {
        let ip = canonical_ip(orig.ip());
        if !rules.allows_addr(ip, orig.port()) {
            let reason = match proto {
                "tls" => {
                    "TLS without a usable server name (SNI), and no CIDR rule allows this address"
                }
                "http" => "HTTP without a usable Host name, and no CIDR rule allows this address",
                _ => "no CIDR rule allows this address",
            };
            self.deny(rules, proto, orig.to_string(), reason.into());
            refuse(stream, how, rules, &orig.to_string()).await;
            return;
        }
        if let Err(why) = self.resolver.guard().check(ip, orig.port(), rules) {
            self.deny(rules, proto, orig.to_string(), format!("{ip} is {why}"));
            refuse(stream, how, rules, &orig.to_string()).await;
            return;
        }
        let dest = SocketAddr::new(ip, orig.port());
        match connect_addr(dest).await {
            Ok(up) => self.splice(stream, up, rules, &dest.to_string()).await,
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(sandbox = %rules.sandbox_id, dest = %dest, error = %e, "egress proxy: upstream unreachable");
                let msg = e.to_string();
                let how = match how {
                    Refuse::Http(n) => Refuse::HttpBadGateway(n, &msg),
                    _ => Refuse::Tcp,
                };
                refuse(stream, how, rules, &dest.to_string()).await;
            }
        }
    }

    /// Named traffic (SNI or Host).
    #[allow(clippy::too_many_arguments)]
    async fn named(
        &self,
        stream: TcpStream,
        name: String,
        port: u16,
        orig: SocketAddr,
        rules: Arc<SandboxRules>,
        proto: AppProto,
        how: Refuse<'_>,
    ) {
        let p = match proto {
            AppProto::Tls => "tls",
            AppProto::Http => "http",
        };
        let dest = format!("{name}:{port}");
        let replay = rules.mode == Mode::Replay;
        if !replay && !rules.allows_domain(&name, port) {
            self.deny(&rules, p, dest.clone(), "not in the allowlist".into());
            refuse(stream, how, &rules, &dest).await;
            return;
        }
        if replay || rules.intercepts(&name) {
            if self.interceptor.is_none() {
                self.deny(
                    &rules,
                    p,
                    dest.clone(),
                    "needs TLS interception, which this daemon does not run".into(),
                );
                refuse(stream, how, &rules, &dest).await;
                return;
            }
            self.hand_over(stream, name, port, orig, proto, rules).await;
            return;
        }
        match self.resolver.connect(&name, port, &rules).await {
            Ok(up) => self.splice(stream, up, &rules, &dest).await,
            Err(ResolveError::Forbidden { ip, why, .. }) => {
                self.deny(
                    &rules,
                    p,
                    dest.clone(),
                    format!("resolves to {ip}, which is {why}"),
                );
                refuse(stream, how, &rules, &dest).await;
            }
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(sandbox = %rules.sandbox_id, %dest, error = %e, "egress proxy: upstream unreachable");
                let msg = e.to_string();
                let how = match how {
                    Refuse::Http(n) => Refuse::HttpBadGateway(n, &msg),
                    _ => Refuse::Tcp,
                };
                refuse(stream, how, &rules, &dest).await;
            }
        }
    }

    /// `CONNECT name:port`: checked like a name on that port, answered by
    /// hull, then spliced (or intercepted).
    async fn connect_method(
        &self,
        mut stream: TcpStream,
        name: String,
        port: u16,
        orig: SocketAddr,
        rules: Arc<SandboxRules>,
        head_len: usize,
    ) {
        let dest = format!("{name}:{port}");
        let replay = rules.mode == Mode::Replay;
        if !replay && !rules.allows_domain(&name, port) {
            self.deny(
                &rules,
                "http",
                dest.clone(),
                "not in the allowlist (CONNECT)".into(),
            );
            refuse(stream, Refuse::Http(Some(head_len)), &rules, &dest).await;
            return;
        }
        let intercept = replay || rules.intercepts(&name);
        let upstream = if intercept {
            None
        } else {
            match self.resolver.connect(&name, port, &rules).await {
                Ok(up) => Some(up),
                Err(ResolveError::Forbidden { ip, why, .. }) => {
                    self.deny(
                        &rules,
                        "http",
                        dest.clone(),
                        format!("resolves to {ip}, which is {why}"),
                    );
                    refuse(stream, Refuse::Http(Some(head_len)), &rules, &dest).await;
                    return;
                }
                Err(e) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    let msg = e.to_string();
                    refuse(
                        stream,
                        Refuse::HttpBadGateway(Some(head_len), &msg),
                        &rules,
                        &dest,
                    )
                    .await;
                    return;
                }
            }
        };
        if intercept && self.interceptor.is_none() {
            self.deny(
                &rules,
                "http",
                dest.clone(),
                "needs TLS interception, which this daemon does not run".into(),
            );
            refuse(stream, Refuse::Http(Some(head_len)), &rules, &dest).await;
            return;
        }
        if !establish_connect(&mut stream, head_len).await {
            return;
        }
        match upstream {
            Some(up) => self.splice(stream, up, &rules, &dest).await,
            None => {
                let mut b = [0u8; 1];
                let proto =
                    match tokio::time::timeout(self.cfg.first_bytes_timeout, stream.peek(&mut b))
                        .await
                    {
                        Ok(Ok(1)) if b[0] == 0x16 => AppProto::Tls,
                        Ok(Ok(1)) => AppProto::Http,
                        _ => return,
                    };
                self.hand_over(stream, name, port, orig, proto, rules).await;
            }
        }
    }

    /// `CONNECT ip:port`: allowed only by the address.
    async fn connect_method_ip(
        &self,
        mut stream: TcpStream,
        target: SocketAddr,
        rules: Arc<SandboxRules>,
        head_len: usize,
    ) {
        let ip = canonical_ip(target.ip());
        let dest = target.to_string();
        let verdict = if !rules.allows_addr(ip, target.port()) {
            Err("no CIDR rule allows this address (CONNECT)".to_string())
        } else {
            self.resolver
                .guard()
                .check(ip, target.port(), &rules)
                .map_err(|why| format!("{ip} is {why}"))
        };
        if let Err(reason) = verdict {
            self.deny(&rules, "http", dest.clone(), reason);
            refuse(stream, Refuse::Http(Some(head_len)), &rules, &dest).await;
            return;
        }
        let up = match connect_addr(SocketAddr::new(ip, target.port())).await {
            Ok(up) => up,
            Err(e) => {
                let msg = e.to_string();
                refuse(
                    stream,
                    Refuse::HttpBadGateway(Some(head_len), &msg),
                    &rules,
                    &dest,
                )
                .await;
                return;
            }
        };
        if !establish_connect(&mut stream, head_len).await {
            return;
        }
        self.splice(stream, up, &rules, &dest).await;
    }

    /// Give the connection to the interceptor (the caller has checked
    /// that there is one; without, the connection is closed).
    async fn hand_over(
        &self,
        stream: TcpStream,
        name: String,
        port: u16,
        orig: SocketAddr,
        proto: AppProto,
        rules: Arc<SandboxRules>,
    ) {
        let Some(icpt) = self.interceptor.clone() else {
            return;
        };
        self.stats.intercepted.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(sandbox = %rules.sandbox_id, %name, port, "egress proxy: intercepted");
        icpt.intercept(Intercepted {
            stream,
            name,
            port,
            orig_dst: orig,
            proto,
            rules,
            resolver: self.resolver.clone(),
            events: self.events.clone(),
        })
        .await;
    }

    fn deny(&self, rules: &SandboxRules, proto: &'static str, dest: String, reason: String) {
        self.stats.denied.fetch_add(1, Ordering::Relaxed);
        tracing::info!(sandbox = %rules.sandbox_id, proto, dest = %dest, reason = %reason, "egress denied by the network policy");
        self.events.denied(
            &rules.sandbox_id,
            Denied {
                proto,
                dest,
                reason,
            },
        );
    }

    async fn splice(
        &self,
        client: TcpStream,
        upstream: TcpStream,
        rules: &SandboxRules,
        dest: &str,
    ) {
        self.stats.spliced.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(sandbox = %rules.sandbox_id, dest, "egress proxy: spliced");
        let (up, down) = splice(
            client,
            upstream,
            self.cfg.idle_timeout,
            self.cfg.max_lifetime,
        )
        .await;
        tracing::debug!(sandbox = %rules.sandbox_id, dest, up, down, "egress proxy: closed");
    }
}

/// Peek until the first bytes say what the connection is, `until` the
/// first byte arrives, then until `cfg.first_bytes_timeout` from now for
/// the rest.
async fn classify(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    until: Instant,
    cfg: &ProxyConfig,
) -> First {
    let n = match tokio::time::timeout_at(until, stream.peek(buf)).await {
        Err(_) => return First::Silent,
        Ok(Err(_)) | Ok(Ok(0)) => return First::Closed,
        Ok(Ok(n)) => n,
    };
    let deadline = Instant::now() + cfg.first_bytes_timeout;
    let mut n = n;
    let mut backoff = Duration::from_millis(1);
    loop {
        let b = &buf[..n];
        let verdict = if sni::looks_like_tls(b) {
            match sni::parse(b) {
                Ok(None) => None,
                Ok(Some(s)) => Some(First::Tls(Ok(s))),
                Err(e) => Some(First::Tls(Err(e))),
            }
        } else if http_host::looks_like_http(b) {
            match http_host::parse(b) {
                Ok(None) => None,
                Ok(Some(h)) => Some(First::Http(Ok(h))),
                Err(e) => Some(First::Http(Err(e))),
            }
        } else {
            Some(First::Other)
        };
        if let Some(v) = verdict {
            return v;
        }
        if n == buf.len() && buf.len() < MAX_PEEK {
            // The buffer was the limit, not the client: look again, wider.
            buf.resize(MAX_PEEK, 0);
            n = match stream.peek(buf).await {
                Ok(0) | Err(_) => return First::Closed,
                Ok(m) => m,
            };
            continue;
        }
        // A valid prefix: wait for more bytes. Peeking does not consume,
        // so readiness stays set; poll with a short backoff instead (split
        // ClientHellos are rare and small).
        if Instant::now() >= deadline {
            return if sni::looks_like_tls(b) {
                First::Tls(Err(SniError::Malformed("incomplete ClientHello")))
            } else if n < 16 && !b.contains(&b' ') {
                First::Other
            } else {
                First::Http(Err(HttpError::Malformed("incomplete request head".into())))
            };
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(50));
        n = match stream.peek(buf).await {
            Ok(0) | Err(_) => return First::Closed,
            Ok(m) => m,
        };
    }
}

/// How many bytes are currently peekable (to consume them before a TLS
/// alert).
async fn peeked_len(stream: &TcpStream, buf: &mut [u8]) -> usize {
    match tokio::time::timeout(Duration::from_millis(10), stream.peek(buf)).await {
        Ok(Ok(n)) => n,
        _ => 0,
    }
}

/// Socket options of the proxy's end of a sandbox connection: no Nagle
/// delay (interactive protocols), and the configured congestion control.
fn tune_sandbox_socket(stream: &TcpStream, cfg: &ProxyConfig) {
    let _ = stream.set_nodelay(true);
    if let Some(cc) = &cfg.sandbox_congestion_control
        && let Err(e) = setsockopt(stream, sockopt::TcpCongestion, &OsString::from(cc))
    {
        tracing::debug!(cc = %cc, error = %e, "egress proxy: congestion control not set");
    }
}

/// Show a refusal to the client, then close.
async fn refuse(mut stream: TcpStream, how: Refuse<'_>, rules: &SandboxRules, dest: &str) {
    let reply: Option<(usize, Vec<u8>)> = match how {
        Refuse::Tcp => None,
        Refuse::Tls(n) => Some((n, TLS_ACCESS_DENIED.to_vec())),
        Refuse::Http(n) => {
            let body = format!(
                "hull: {dest} is not allowed by the network policy of sandbox {}\n",
                rules.sandbox_id
            );
            Some((n.unwrap_or(0), http_response("403 Forbidden", &body)))
        }
        Refuse::HttpBadGateway(n, why) => {
            let body = format!("hull: {dest} could not be reached: {why}\n");
            Some((n.unwrap_or(0), http_response("502 Bad Gateway", &body)))
        }
    };
    let Some((consume, bytes)) = reply else {
        return;
    };
    // Read what was peeked first: closing with unread data sends a RST,
    // which could destroy the reply before the client reads it.
    let fut = async {
        let mut sink = vec![0u8; consume.min(MAX_PEEK)];
        if !sink.is_empty() {
            stream.read_exact(&mut sink).await?;
        }
        stream.write_all(&bytes).await?;
        stream.shutdown().await?;
        // Drain a little of what the client still sends (a request body).
        let mut b = [0u8; 4096];
        let mut total = 0;
        while total < 64 * 1024 {
            match stream.read(&mut b).await? {
                0 => break,
                n => total += n,
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), fut).await;
}

fn http_response(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\nX-Hull-Policy: denied\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What a redirected connection's client dialled (`SO_ORIGINAL_DST`,
/// `IP6T_SO_ORIGINAL_DST`). Works on v4, v6 and dual-stack sockets (an
/// IPv4 client on a `[::]` listener has a v4-mapped local address).
pub fn original_dst(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let v4 = match stream.local_addr()? {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    if v4 {
        let sa = getsockopt(stream, sockopt::OriginalDst).map_err(std::io::Error::from)?;
        Ok(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
            u16::from_be(sa.sin_port),
        )))
    } else {
        let sa = getsockopt(stream, sockopt::Ip6tOriginalDst).map_err(std::io::Error::from)?;
        Ok(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(sa.sin6_addr.s6_addr),
            u16::from_be(sa.sin6_port),
            0,
            0,
        )))
    }
}

/// Copy both ways until both directions are done (an EOF on one side is
/// passed on as a half-close), an error, `idle` without traffic, or
/// `lifetime`. Returns the bytes copied (a -> b, b -> a).
pub async fn splice(a: TcpStream, b: TcpStream, idle: Duration, lifetime: Duration) -> (u64, u64) {
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let up_n = Arc::new(AtomicU64::new(0));
    let down_n = Arc::new(AtomicU64::new(0));
    let (ar, aw) = a.into_split();
    let (br, bw) = b.into_split();
    let copy = async {
        let _ = tokio::try_join!(
            pump(ar, bw, &last, &up_n, start),
            pump(br, aw, &last, &down_n, start)
        );
    };
    let watchdog = async {
        let tick = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            tokio::time::sleep(tick).await;
            let now = start.elapsed();
            let quiet = now.saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
            if quiet >= idle || now >= lifetime {
                break;
            }
        }
    };
    tokio::select! {
        _ = copy => {}
        _ = watchdog => {}
    }
    (up_n.load(Ordering::Relaxed), down_n.load(Ordering::Relaxed))
}

/// One direction: with `splice(2)` through a pipe (the bytes never enter
/// user space), or, if no pipe can be made, a plain copy loop.
async fn pump(
    r: OwnedReadHalf,
    w: OwnedWriteHalf,
    last: &AtomicU64,
    count: &AtomicU64,
    start: Instant,
) -> std::io::Result<()> {
    match nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC) {
        Ok(pipe) => pump_splice(r, w, pipe, last, count, start).await,
        Err(_) => pump_copy(r, w, last, count, start).await,
    }
}

async fn pump_splice(
    r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    (pr, pw): (OwnedFd, OwnedFd),
    last: &AtomicU64,
    count: &AtomicU64,
    start: Instant,
) -> std::io::Result<()> {
    // A bigger pipe moves more per call; the default (64 KiB) works too.
    let _ = fcntl(&pw, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32));
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let rs: &TcpStream = r.as_ref();
    let ws: &TcpStream = w.as_ref();
    loop {
        // Socket -> pipe (the pipe is empty here: it is drained below).
        let n = loop {
            rs.readable().await?;
            match rs.try_io(Interest::READABLE, || {
                nix::fcntl::splice(rs, None, &pw, None, PIPE_SIZE, flags)
                    .map_err(std::io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            let _ = w.shutdown().await;
            return Ok(());
        }
        // Pipe -> socket, all of it.
        let mut left = n;
        while left > 0 {
            ws.writable().await?;
            match ws.try_io(Interest::WRITABLE, || {
                nix::fcntl::splice(&pr, None, ws, None, left, flags).map_err(std::io::Error::from)
            }) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(m) => left -= m,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

async fn pump_copy(
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    last: &AtomicU64,
    count: &AtomicU64,
    start: Instant,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; SPLICE_BUF];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            // Pass the half-close on; the other direction goes on.
            let _ = w.shutdown().await;
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Consume a CONNECT request's head (`head_len` bytes) and answer `200`:
/// what follows is the tunnel. False when the client went away.
async fn establish_connect(stream: &mut TcpStream, head_len: usize) -> bool {
    let mut head = vec![0u8; head_len];
    stream.read_exact(&mut head).await.is_ok()
        && stream
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splice_passes_half_close_both_ways() {
        let l1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a1, a2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
        let mut client = TcpStream::connect(a1).await.unwrap();
        let (proxy_side, _) = l1.accept().await.unwrap();
        let up = TcpStream::connect(a2).await.unwrap();
        let (mut server, _) = l2.accept().await.unwrap();
        let task = tokio::spawn(splice(
            proxy_side,
            up,
            Duration::from_secs(30),
            Duration::from_secs(60),
        ));
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        // The server answers after the client's half-close.
        server.write_all(b"response").await.unwrap();
        server.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"response");
        assert_eq!(task.await.unwrap(), (7, 8));
    }

    /// A byte pattern that a dropped, repeated or reordered chunk breaks.
    fn pattern(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
            .collect()
    }

    /// Several MiB each way at once, with a reader that is slow at times
    /// (so pipes and socket buffers fill and writes block): every byte
    /// arrives, in order, and is counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn splice_moves_bulk_both_ways_intact() {
        const N: usize = 6 << 20;
        let (client, proxy_side) = pair().await;
        let (up, server) = pair().await;
        let task = tokio::spawn(splice(
            proxy_side,
            up,
            Duration::from_secs(30),
            Duration::from_secs(60),
        ));
        let send_recv = |s: TcpStream, seed: u8| async move {
            let (mut r, mut w) = s.into_split();
            let writer = tokio::spawn(async move {
                for c in pattern(seed, N).chunks(100_003) {
                    w.write_all(c).await.unwrap();
                }
                w.shutdown().await.unwrap();
            });
            let mut got = Vec::with_capacity(N);
            let mut b = vec![0u8; 7_919];
            loop {
                match r.read(&mut b).await.unwrap() {
                    0 => break,
                    n => got.extend_from_slice(&b[..n]),
                }
                if got.len().is_multiple_of(7) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            writer.await.unwrap();
            got
        };
        let (at_client, at_server) = tokio::join!(send_recv(client, 0x5a), send_recv(server, 0xa5));
        assert!(
            at_server == pattern(0x5a, N),
            "client -> server bytes differ"
        );
        assert!(
            at_client == pattern(0xa5, N),
            "server -> client bytes differ"
        );
        assert_eq!(task.await.unwrap(), (N as u64, N as u64));
    }

    #[tokio::test]
    async fn sandbox_socket_gets_the_configured_congestion_control() {
        let available =
            std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
                .unwrap_or_default();
        let cc = |s: &TcpStream| {
            getsockopt(s, sockopt::TcpCongestion)
                .unwrap()
                .to_string_lossy()
                .trim_end_matches('\0')
                .to_string()
        };
        let (c, s) = pair().await;
        let before = cc(&s);
        // An algorithm the kernel lacks is ignored: the socket keeps its own.
        let cfg = ProxyConfig {
            sandbox_congestion_control: Some("no-such-algorithm".into()),
            ..ProxyConfig::default()
        };
        tune_sandbox_socket(&s, &cfg);
        assert_eq!(cc(&s), before);
        assert!(s.nodelay().unwrap());
        // None: the system default stays.
        let (_c2, s2) = pair().await;
        let before2 = cc(&s2);
        let cfg = ProxyConfig {
            sandbox_congestion_control: None,
            ..ProxyConfig::default()
        };
        tune_sandbox_socket(&s2, &cfg);
        assert_eq!(cc(&s2), before2);
        // The default applies wherever the kernel has it and may hand it
        // out (CAP_NET_ADMIN, or listed as allowed to everyone).
        let allowed = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_allowed_congestion_control")
            .unwrap_or_default();
        let listed = |l: &str| {
            l.split_whitespace()
                .any(|a| a == SANDBOX_CONGESTION_CONTROL)
        };
        if listed(&available) && (listed(&allowed) || nix::unistd::geteuid().is_root()) {
            tune_sandbox_socket(&s, &ProxyConfig::default());
            assert_eq!(cc(&s), SANDBOX_CONGESTION_CONTROL);
        }
        drop(c);
    }

    #[tokio::test]
    async fn splice_idle_timeout_closes() {
        let l1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(l1.local_addr().unwrap()).await.unwrap();
        let (proxy_side, _) = l1.accept().await.unwrap();
        let up = TcpStream::connect(l2.local_addr().unwrap()).await.unwrap();
        let (_server, _) = l2.accept().await.unwrap();
        splice(
            proxy_side,
            up,
            Duration::from_millis(200),
            Duration::from_secs(60),
        )
        .await;
        let mut b = [0u8; 1];
        assert_eq!(client.read(&mut b).await.unwrap(), 0);
    }

    /// A connected pair on loopback: (client, server side).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    async fn classify_bytes(pieces: Vec<Vec<u8>>, close: bool) -> First {
        let (mut c, s) = pair().await;
        tokio::spawn(async move {
            for p in pieces {
                c.write_all(&p).await.unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            if close {
                drop(c);
            } else {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        });
        let cfg = ProxyConfig {
            first_bytes_timeout: Duration::from_secs(2),
            ..ProxyConfig::default()
        };
        let mut buf = vec![0u8; FIRST_PEEK];
        classify(
            &s,
            &mut buf,
            Instant::now() + Duration::from_millis(200),
            &cfg,
        )
        .await
    }

    #[tokio::test]
    async fn classifies_first_bytes() {
        let hello = crate::sni::tests::client_hello_bytes("split.example.com");
        let (a, b) = hello.split_at(9);
        let f = classify_bytes(vec![a.to_vec(), b.to_vec()], false).await;
        assert!(
            matches!(f, First::Tls(Ok(Sni::Name(ref n))) if n == "split.example.com"),
            "{f:?}"
        );
        // Bigger than the first peek buffer.
        let big = crate::sni::tests::records(
            &crate::sni::tests::hello_msg(&[
                (21, vec![0; 6000]),
                crate::sni::tests::sni_ext("big.example.com"),
            ]),
            1 << 14,
        );
        let f = classify_bytes(vec![big], false).await;
        assert!(
            matches!(f, First::Tls(Ok(Sni::Name(ref n))) if n == "big.example.com"),
            "{f:?}"
        );
        let f = classify_bytes(
            vec![
                b"GET / HTTP/1.1\r\nHo".to_vec(),
                b"st: a.example\r\n\r\n".to_vec(),
            ],
            false,
        )
        .await;
        assert!(
            matches!(f, First::Http(Ok(ref h)) if h.target == Target::Name("a.example".into(), None)),
            "{f:?}"
        );
        let f = classify_bytes(vec![b"SSH-2.0-OpenSSH_9.2\r\n".to_vec()], false).await;
        assert!(matches!(f, First::Other), "{f:?}");
        let f = classify_bytes(vec![], false).await;
        assert!(matches!(f, First::Silent), "{f:?}");
        let f = classify_bytes(vec![], true).await;
        assert!(matches!(f, First::Closed), "{f:?}");
        // A ClientHello that stops half-way: an error after the timeout.
        let f = classify_bytes(vec![hello[..40].to_vec()], false).await;
        assert!(matches!(f, First::Tls(Err(_))), "{f:?}");
    }

    #[test]
    fn responses_are_well_formed() {
        let r = http_response("403 Forbidden", "hull: x\n");
        let mut h = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut h);
        let n = match resp.parse(&r).unwrap() {
            httparse::Status::Complete(n) => n,
            _ => panic!("partial"),
        };
        assert_eq!(resp.code, Some(403));
        assert_eq!(&r[n..], b"hull: x\n");
    }
}
