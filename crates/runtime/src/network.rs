//! Sandbox networking in the lifecycle: which policy a sandbox gets (the
//! request's, else its profile's default), a pooled network namespace for
//! every sandbox whose policy is not `none`, the policy compiled and applied
//! to the firewall and the shared [`Registry`], changes on a running
//! sandbox, re-adoption after a daemon restart, and denied connections
//! turned into (rate-limited) sandbox events.
//!
//! A sandbox created with `none` gets a bare namespace with only `lo` (no
//! pool slot, no firewall state); widening it later gives that namespace a
//! veth pair in place ([`NetHost::attach`], ~10 ms). A networked sandbox
//! narrowed to `none` keeps its interface, with every packet dropped.
//!
//! Limits: when the host cannot do networking (not root, no `ip` or `nft`)
//! the defaults fall back to `none` with a warning, and an explicit request
//! for another mode fails with `unavailable` and the reason.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hull_api::{ApiError, NetworkPolicy, Profile, SandboxNetwork, SandboxState};
use hull_net::nft::ProxyPorts;
use hull_net::pool::{NetConfig, NetHost, Slot};
use hull_net::{Denied, EventSink, NetError, Registry, SandboxRules};

use crate::{Entry, Runtime, error_chain, push_event};

/// Network settings of the daemon.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Give sandboxes networks at all (false: every sandbox gets `none`).
    pub enabled: bool,
    /// IPv4 range for sandbox addresses (`--net-range`); `None`: pick a free one.
    pub range4: Option<String>,
    /// IPv6 range (`--net-range6`); `None`: pick a free one.
    pub range6: Option<String>,
    /// Ready namespaces kept in the pool.
    pub pool_size: usize,
    /// Default policy of `rollout` sandboxes.
    pub rollout_default: NetworkPolicy,
    /// Default policy of `session` sandboxes.
    pub session_default: NetworkPolicy,
    /// Upstream DNS server for hull's resolver (`--dns`).
    pub dns_upstream: Option<std::net::SocketAddr>,
    /// An extra PEM CA file the TLS interceptor trusts for upstream
    /// servers, besides the system bundle (`--upstream-ca`).
    pub upstream_ca: Option<std::path::PathBuf>,
    /// Where the egress proxy / DNS server listen (host side), when they run.
    pub proxy: Option<ProxyPorts>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            enabled: true,
            range4: None,
            range6: None,
            pool_size: hull_net::pool::DEFAULT_POOL_SIZE,
            rollout_default: NetworkPolicy::none(),
            session_default: NetworkPolicy::open(),
            dns_upstream: None,
            upstream_ca: None,
            proxy: None,
        }
    }
}

/// Denied-connection events per sandbox per window, beyond which they are
/// counted and summarised instead of recorded one by one.
pub const DENIED_EVENTS_PER_MINUTE: u32 = 20;

/// The runtime's network state.
pub(crate) struct Net {
    pub(crate) cfg: NetworkConfig,
    host: Mutex<Option<NetHost>>,
    /// Why networking is off, when it is.
    unavailable: Mutex<Option<String>>,
    /// Sandbox id -> its slot.
    slots: Mutex<HashMap<String, Slot>>,
    pub(crate) registry: Arc<Registry>,
    instance: String,
    pub(crate) state_dir: std::path::PathBuf,
    /// Rate limit of denied events: sandbox id -> (window start, count).
    denied: Mutex<HashMap<String, (Instant, u32)>>,
    /// The egress proxy's and DNS server's tasks.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The TLS interceptor (header rules, record, replay), when the
    /// boundary runs and it could be made.
    icpt: Mutex<Option<Arc<hull_net::intercept::Interceptor>>>,
    /// The NFLOG socket firewall drops are reported to.
    nflog: Mutex<NflogState>,
}

/// The NFLOG socket: bound before the first table is made (its group goes
/// into the rules), read once the runtime runs, kept across resets.
#[derive(Default)]
struct NflogState {
    tried: bool,
    group: Option<u16>,
    sock: Option<hull_net::nflog::NflogSocket>,
}

fn net_error(e: NetError) -> ApiError {
    match e {
        NetError::Policy(m) => ApiError::invalid(m),
        NetError::Exhausted(_) => {
            ApiError::new(hull_api::ErrorKind::ResourceExhausted, e.to_string())
        }
        other => ApiError::internal(error_chain(&other)),
    }
}

impl Net {
    /// Start the host side (blocking). `keep`: links of re-adoptable sandboxes.
    pub(crate) fn start(
        cfg: NetworkConfig,
        instance: &str,
        state_dir: &std::path::Path,
        keep: &[String],
    ) -> Net {
        let net = Net {
            cfg: cfg.clone(),
            host: Mutex::new(None),
            unavailable: Mutex::new(None),
            slots: Mutex::new(HashMap::new()),
            registry: Arc::new(Registry::new()),
            instance: instance.to_string(),
            state_dir: state_dir.to_path_buf(),
            denied: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            icpt: Mutex::new(None),
            nflog: Mutex::new(NflogState::default()),
        };
        if !cfg.enabled {
            *net.unavailable.lock().unwrap_or_else(|e| e.into_inner()) =
                Some("disabled in the daemon's configuration".into());
            return net;
        }
        match net.start_host(keep) {
            Ok(h) => {
                tracing::info!(range4 = %h.range().v4, range6 = %h.range().v6, table = h.table(), "sandbox networking ready");
                *net.host.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
            }
            Err(why) => {
                tracing::warn!(
                    "sandbox networking unavailable: {why}; every sandbox gets network none"
                );
                *net.unavailable.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
            }
        }
        net
    }

    fn start_host(&self, keep: &[String]) -> Result<NetHost, String> {
        let range4 = match &self.cfg.range4 {
            Some(r) => Some(r.parse().map_err(|e| format!("--net-range {r}: {e}"))?),
            None => None,
        };
        let range6 = match &self.cfg.range6 {
            Some(r) => Some(r.parse().map_err(|e| format!("--net-range6 {r}: {e}"))?),
            None => None,
        };
        NetHost::start(
            NetConfig {
                state_dir: self.state_dir.clone(),
                instance: self.instance.clone(),
                range4,
                range6,
                pool_size: self.cfg.pool_size,
                proxy: self.cfg.proxy,
                log_group: self.nflog_group(),
            },
            keep,
        )
        .map_err(|e| error_chain(&e))
    }

    /// The NFLOG group firewall drops are reported to, binding it on first
    /// use; `None` (drops only counted) when the kernel has no nfnetlink_log.
    fn nflog_group(&self) -> Option<u16> {
        let mut st = self.nflog.lock().unwrap_or_else(|e| e.into_inner());
        if !st.tried {
            st.tried = true;
            match hull_net::nflog::NflogSocket::bind(&self.instance) {
                Ok(s) => {
                    st.group = Some(s.group());
                    st.sock = Some(s);
                }
                Err(e) => tracing::warn!(
                    error = %error_chain(&e),
                    "firewall drops are counted, not reported as sandbox events"
                ),
            }
        }
        st.group
    }

    pub(crate) fn host(&self) -> Option<NetHost> {
        self.host.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Why networking is unavailable, if it is.
    pub(crate) fn unavailable(&self) -> Option<String> {
        self.unavailable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// One line for `hull info`.
    pub(crate) fn describe(&self) -> String {
        match (self.host(), self.unavailable()) {
            (Some(h), _) => format!(
                "available: IPv4 {} IPv6 {}, nftables table inet {}, pool {} ready (size {}); defaults: rollout {}, session {}",
                h.range().v4,
                h.range().v6,
                h.table(),
                h.ready(),
                self.cfg.pool_size,
                self.cfg.rollout_default,
                self.cfg.session_default
            ),
            (None, Some(why)) => format!("unavailable: {why} (every sandbox gets network none)"),
            (None, None) => "unavailable".into(),
        }
    }

    /// The policy a new sandbox gets: `requested`, else the profile's
    /// default (which falls back to `none` when networking is off).
    pub(crate) fn choose(
        &self,
        profile: Profile,
        requested: Option<NetworkPolicy>,
    ) -> Result<NetworkPolicy, ApiError> {
        let available = self.host().is_some();
        match requested {
            Some(p) => {
                p.validate().map_err(|e| ApiError::invalid(e.to_string()))?;
                if p.mode.needs_network() && !available {
                    return Err(ApiError::unavailable(format!(
                        "network {} needs sandbox networking, which is unavailable on this daemon: {}",
                        p.mode,
                        self.unavailable().unwrap_or_default()
                    )));
                }
                Ok(p)
            }
            None => {
                let d = match profile {
                    Profile::Rollout => self.cfg.rollout_default.clone(),
                    Profile::Session => self.cfg.session_default.clone(),
                };
                if d.mode.needs_network() && !available {
                    Ok(NetworkPolicy::none())
                } else {
                    Ok(d)
                }
            }
        }
    }

    pub(crate) fn slot_of(&self, id: &str) -> Option<Slot> {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Forget a sandbox's slot and hand it back to the pool.
    pub(crate) fn release(&self, id: &str) {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        self.denied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(slot) = slot {
            self.registry.remove(&slot.sandbox_addrs());
            if let Some(h) = self.host() {
                h.release(slot);
            }
        }
    }

    /// Stop the pool; with `drop_all`, remove the table and every link of
    /// this instance (nothing of it runs any more).
    pub(crate) fn close(&self, drop_all: bool) {
        if let Some(h) = self.host.lock().unwrap_or_else(|e| e.into_inner()).take() {
            h.close(drop_all);
        }
        if drop_all {
            let _ = hull_net::pool::purge(&self.instance);
        }
    }

    /// After a reset: everything removed, then a fresh table and pool.
    pub(crate) fn reset(&self) -> Vec<String> {
        let had = self.host().is_some();
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.close(true);
        let mut removed = Vec::new();
        if had {
            removed.push(format!("nftables table inet hull_{}", self.instance));
            match self.start_host(&[]) {
                Ok(h) => *self.host.lock().unwrap_or_else(|e| e.into_inner()) = Some(h),
                Err(why) => *self.unavailable.lock().unwrap_or_else(|e| e.into_inner()) = Some(why),
            }
        }
        removed
    }
}

/// Turns the boundary's denials into sandbox events (rate-limited).
pub(crate) struct RuntimeSink {
    pub(crate) rt: std::sync::Weak<Runtime>,
}

impl EventSink for RuntimeSink {
    fn denied(&self, sandbox_id: &str, d: Denied) {
        if let Some(rt) = self.rt.upgrade() {
            rt.record_denied(sandbox_id, d);
        }
    }
}

impl Runtime {
    /// A sink the proxy and DNS server report denials to.
    pub fn event_sink(self: &Arc<Self>) -> Arc<dyn EventSink> {
        Arc::new(RuntimeSink {
            rt: Arc::downgrade(self),
        })
    }

    /// The registry the proxy and DNS server consult.
    pub fn net_registry(&self) -> Arc<Registry> {
        self.net.registry.clone()
    }

    /// Record a denied connection as an event (at most
    /// [`DENIED_EVENTS_PER_MINUTE`] per sandbox per minute; beyond that one
    /// summary event per minute counts the rest).
    pub fn record_denied(&self, sandbox_id: &str, d: Denied) {
        tracing::info!(sandbox = sandbox_id, proto = d.proto, dest = %d.dest, reason = %d.reason, "network: denied");
        let Some(e) = self
            .sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sandbox_id)
            .cloned()
        else {
            return;
        };
        let (record, dropped) = {
            let mut map = self.net.denied.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let w = map.entry(sandbox_id.to_string()).or_insert((now, 0));
            let mut dropped = 0;
            if now.duration_since(w.0).as_secs() >= 60 {
                dropped = w.1.saturating_sub(DENIED_EVENTS_PER_MINUTE);
                *w = (now, 0);
            }
            w.1 += 1;
            (w.1 <= DENIED_EVENTS_PER_MINUTE, dropped)
        };
        if !record {
            return;
        }
        let mut r = e.record();
        if dropped > 0 {
            push_event(
                &mut r,
                "network_denied",
                format!(
                    "{dropped} more denied connections in the last minute (not recorded one by one)"
                ),
            );
        }
        push_event(
            &mut r,
            "network_denied",
            format!("{} {}: {}", d.proto, d.dest, d.reason),
        );
        let _ = self.store.put(&r);
    }

    /// The cassette `policy` uses for sandbox `id`: `record` writes
    /// [`hull_net::cassette::recording_path`]; `replay` reads the one
    /// attached to the snapshot the policy names, else to `born` (the
    /// snapshot the sandbox was made from). A replay without a cassette is
    /// `invalid_argument`.
    fn cassette_for(
        &self,
        id: &str,
        policy: &NetworkPolicy,
        born: Option<&str>,
    ) -> Result<Option<std::path::PathBuf>, ApiError> {
        match policy.mode {
            hull_api::NetworkMode::Record => Ok(Some(hull_net::cassette::recording_path(
                &self.net.state_dir,
                id,
            ))),
            hull_api::NetworkMode::Replay => {
                let Some(name) = policy.snapshot.as_deref().or(born) else {
                    return Err(ApiError::invalid(format!(
                        "sandbox {id} was not made from a snapshot: name the snapshot to replay (replay:SNAPSHOT)"
                    )));
                };
                let snap = self
                    .snap_lookup(name)
                    .map_err(|e| ApiError::invalid(format!("replay: {}", e.message)))?;
                let path = hull_net::cassette::snapshot_path(&self.net.state_dir, &snap.id);
                if !path.is_file() {
                    return Err(ApiError::invalid(format!(
                        "snapshot {name} has no recorded network cassette (snapshot a sandbox in record mode to make one)"
                    )));
                }
                Ok(Some(path))
            }
            _ => Ok(None),
        }
    }

    /// Compile `policy` for sandbox `id` (peers resolved now; `born`: the
    /// snapshot it was made from, for `replay`).
    fn compile(
        &self,
        id: &str,
        policy: &NetworkPolicy,
        born: Option<&str>,
    ) -> Result<SandboxRules, ApiError> {
        let cassette = self.cassette_for(id, policy, born)?;
        hull_net::policy::compile(id, policy, cassette, |peer| {
            let e = self.lookup(peer).ok()?;
            let pid = e.id();
            if pid == id {
                return None;
            }
            self.net.slot_of(&pid).map(|s| s.sandbox_addrs())
        })
        .map_err(net_error)
    }

    /// Before a sandbox's container starts: a slot when its policy needs
    /// one (blocking work on a blocking thread). Returns the namespace.
    pub(crate) async fn net_prepare(
        &self,
        e: &Entry,
    ) -> Result<Option<Arc<std::os::fd::OwnedFd>>, ApiError> {
        let (id, policy, born) = {
            let r = e.record();
            (
                r.sandbox.id.clone(),
                r.network.clone(),
                r.sandbox.snapshot.clone(),
            )
        };
        if !policy.mode.needs_network() {
            return Ok(None);
        }
        let host = self.net.host().ok_or_else(|| {
            ApiError::unavailable(format!(
                "sandbox networking is unavailable: {}",
                self.net.unavailable().unwrap_or_default()
            ))
        })?;
        let rules = self.compile(&id, &policy, born.as_deref())?;
        let slot = tokio::task::spawn_blocking(move || host.take(&rules).map(|s| (s, rules)))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(net_error)?;
        let (slot, rules) = slot;
        let ns = slot.netns.clone();
        self.net_hold(e, slot, rules);
        Ok(Some(ns))
    }

    /// Sandbox `e` holds `slot` under `rules` from now on.
    fn net_hold(&self, e: &Entry, slot: Slot, rules: SandboxRules) {
        self.net
            .registry
            .set(&slot.sandbox_addrs(), Arc::new(rules));
        e.record().net_slot = Some(slot.index);
        self.net
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(e.id(), slot);
    }

    /// After a sandbox's processes are gone: its slot back to the pool.
    pub(crate) fn net_release(&self, e: &Entry) {
        let id = e.id();
        self.net.release(&id);
        e.record().net_slot = None;
    }

    /// Re-adopt a surviving sandbox's network after a daemon restart.
    pub(crate) fn net_adopt(&self, e: &Entry) {
        let (id, index, pid, policy, born) = {
            let r = e.record();
            (
                r.sandbox.id.clone(),
                r.net_slot,
                r.sandbox.pid,
                r.network.clone(),
                r.sandbox.snapshot.clone(),
            )
        };
        let (Some(index), Some(pid), Some(host)) = (index, pid, self.net.host()) else {
            return;
        };
        // Peers may not be adopted yet: resolve what can be.
        let rules = self
            .compile(&id, &policy, born.as_deref())
            .unwrap_or_else(|_| {
                let mut p = policy.clone();
                p.allow.retain(|i| i.sandbox.is_none());
                let cassette = self
                    .cassette_for(&id, &policy, born.as_deref())
                    .ok()
                    .flatten();
                hull_net::policy::compile(&id, &p, cassette, |_| None)
                    .unwrap_or_else(|_| SandboxRules::deny_all(&id))
            });
        match host.adopt(index, pid, &rules) {
            Ok(slot) => {
                self.net
                    .registry
                    .set(&slot.sandbox_addrs(), Arc::new(rules));
                self.net
                    .slots
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, slot);
            }
            Err(err) => {
                tracing::warn!(sandbox = %id, error = %err, "re-adopting a sandbox's network");
                let mut r = e.record();
                push_event(
                    &mut r,
                    "network_lost",
                    format!("its network could not be re-adopted: {err}"),
                );
            }
        }
    }

    /// Links to keep at start: those of sandboxes the store says run.
    pub(crate) fn net_keep(records: &[crate::store::Record], instance: &str) -> Vec<String> {
        records
            .iter()
            .filter(|r| {
                matches!(
                    r.sandbox.state,
                    SandboxState::Running | SandboxState::Paused
                )
            })
            .filter_map(|r| r.net_slot)
            .map(|i| format!("{}{i:x}", hull_net::pool::ifprefix(instance)))
            .collect()
    }

    /// `GET /v1/sandboxes/{id}/network`.
    pub async fn network(&self, id: &str) -> Result<SandboxNetwork, ApiError> {
        let e = self.lookup(id)?;
        self.touch(&e);
        Ok(self.network_view(&e))
    }

    fn network_view(&self, e: &Entry) -> SandboxNetwork {
        let policy = e.record().network.redacted();
        let addresses = self
            .net
            .slot_of(&e.id())
            .map(|s| s.sandbox_addrs().iter().map(IpAddr::to_string).collect())
            .unwrap_or_default();
        SandboxNetwork {
            summary: policy.to_string(),
            policy,
            addresses,
        }
    }

    /// `PUT /v1/sandboxes/{id}/network`: replace the policy of a running
    /// (or paused) sandbox; new connections see it at once.
    pub async fn set_network(
        &self,
        id: &str,
        policy: NetworkPolicy,
    ) -> Result<SandboxNetwork, ApiError> {
        policy
            .validate()
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        let e = self.lookup(id)?;
        let _g = e.lifecycle.lock().await;
        let sid = e.id();
        let state = e.state();
        if !matches!(state, SandboxState::Running | SandboxState::Paused) {
            return Err(ApiError::conflict(crate::state::refusal(
                &sid,
                state,
                "change the network of",
            )));
        }
        let slot = self.net.slot_of(&sid);
        if slot.is_some() || policy.mode.needs_network() {
            let host = self.net.host().ok_or_else(|| {
                ApiError::unavailable(format!(
                    "sandbox networking is unavailable: {}",
                    self.net.unavailable().unwrap_or_default()
                ))
            })?;
            let born = e.record().sandbox.snapshot.clone();
            let rules = self.compile(&sid, &policy, born.as_deref())?;
            let r2 = rules.clone();
            match slot {
                Some(slot) => {
                    let s = slot.clone();
                    tokio::task::spawn_blocking(move || host.apply(&s, &r2))
                        .await
                        .map_err(|e| ApiError::internal(e.to_string()))?
                        .map_err(net_error)?;
                    self.net
                        .registry
                        .set(&slot.sandbox_addrs(), Arc::new(rules));
                }
                None => {
                    // Created with `none`: its namespace gets an interface now.
                    let pid = e.record().sandbox.pid.ok_or_else(|| {
                        ApiError::conflict(format!("sandbox {sid} has no running init process"))
                    })?;
                    let slot = tokio::task::spawn_blocking(move || host.attach(pid, &r2))
                        .await
                        .map_err(|e| ApiError::internal(e.to_string()))?
                        .map_err(net_error)?;
                    self.net_hold(&e, slot, rules);
                }
            }
        }
        {
            let mut r = e.record();
            r.network = policy.clone();
            r.sandbox.network = policy.redacted();
            push_event(
                &mut r,
                "network_changed",
                format!("network policy set to {}", policy.redacted()),
            );
        }
        self.touch(&e);
        self.persist(&e)?;
        if let Some(icpt) = self
            .net
            .icpt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            // A new policy replays from the start.
            icpt.cassettes().forget(&sid, None);
        }
        if state == SandboxState::Running {
            self.net_install_ca(&e).await;
        }
        Ok(self.network_view(&e))
    }
}

/// The listeners of the egress proxy and DNS server, bound before the
/// firewall is made (it redirects to their ports).
pub(crate) struct BoundaryListeners {
    proxy: std::net::TcpListener,
    dns_udp: std::net::UdpSocket,
    dns_tcp: std::net::TcpListener,
}

impl BoundaryListeners {
    /// Bind the three on ephemeral ports of every address (dual-stack);
    /// the firewall accepts them only from sandbox interfaces.
    pub(crate) fn bind() -> std::io::Result<(BoundaryListeners, ProxyPorts)> {
        let mut last = None;
        for _ in 0..32 {
            let proxy = std::net::TcpListener::bind("[::]:0")?;
            let dns_udp = std::net::UdpSocket::bind("[::]:0")?;
            let port = dns_udp.local_addr()?.port();
            match std::net::TcpListener::bind(("::", port)) {
                Ok(dns_tcp) => {
                    let ports = ProxyPorts {
                        tcp: proxy.local_addr()?.port(),
                        dns: port,
                    };
                    return Ok((
                        BoundaryListeners {
                            proxy,
                            dns_udp,
                            dns_tcp,
                        },
                        ports,
                    ));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free port for the DNS server")))
    }
}

impl Runtime {
    /// Start the egress proxy and the DNS server on `listeners` (when
    /// networking is up): they decide with the runtime's registry and
    /// report denials as sandbox events.
    pub(crate) fn start_boundary(self: &Arc<Self>, listeners: Option<BoundaryListeners>) {
        self.start_nflog();
        let (Some(l), Some(host)) = (listeners, self.net.host()) else {
            return;
        };
        let upstreams = match self.net.cfg.dns_upstream {
            Some(a) => vec![a],
            None => hull_net::resolve::system_upstreams(),
        };
        let range = host.range();
        let resolver =
            hull_net::resolve::Resolver::new(upstreams, vec![range.v4.into(), range.v6.into()]);
        let icpt = match hull_net::intercept::Interceptor::for_daemon(
            &self.net.state_dir,
            self.net.cfg.upstream_ca.as_deref(),
        ) {
            Ok(i) => Some(Arc::new(i)),
            Err(e) => {
                tracing::warn!(
                    error = %error_chain(&e),
                    "TLS interceptor unavailable: header rules, record and replay refuse every connection they would intercept"
                );
                None
            }
        };
        *self.net.icpt.lock().unwrap_or_else(|e| e.into_inner()) = icpt.clone();
        let proxy = hull_net::proxy::EgressProxy::new(
            self.net.registry.clone(),
            resolver.clone(),
            self.event_sink(),
            icpt.map(|i| i as Arc<dyn hull_net::proxy::Interceptor>),
            hull_net::proxy::ProxyConfig::default(),
        );
        let dns = hull_net::dns::DnsServer::new(
            self.net.registry.clone(),
            resolver,
            self.event_sink(),
            hull_net::dns::DnsConfig::default(),
        );
        let mut tasks = self.net.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = proxy.serve_std(l.proxy).await {
                tracing::warn!(error = %e, "egress proxy stopped");
            }
        }));
        let d = dns.clone();
        tasks.push(tokio::spawn(async move {
            let r = l
                .dns_udp
                .set_nonblocking(true)
                .and_then(|()| tokio::net::UdpSocket::from_std(l.dns_udp));
            match r {
                Ok(sock) => {
                    if let Err(e) = d.serve_udp(sock).await {
                        tracing::warn!(error = %e, "DNS server (udp) stopped");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "DNS server (udp) not started"),
            }
        }));
        tasks.push(tokio::spawn(async move {
            let r = l
                .dns_tcp
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(l.dns_tcp));
            match r {
                Ok(listener) => {
                    if let Err(e) = dns.serve_tcp(listener).await {
                        tracing::warn!(error = %e, "DNS server (tcp) stopped");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "DNS server (tcp) not started"),
            }
        }));
    }

    /// Report the firewall's drops (read from the NFLOG socket) as events.
    fn start_nflog(self: &Arc<Self>) {
        let sock = self
            .net
            .nflog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sock
            .take();
        let Some(sock) = sock else { return };
        let (registry, sink) = (self.net.registry.clone(), self.event_sink());
        let group = sock.group();
        self.net
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tokio::spawn(async move {
                tracing::debug!(group, "reporting firewall drops from NFLOG");
                if let Err(e) = sock.serve(registry, sink).await {
                    tracing::warn!(error = %error_chain(&e), "firewall drop reports stopped");
                }
            }));
    }

    /// Stop the proxy and DNS tasks.
    pub(crate) fn stop_boundary(&self) {
        for t in self
            .net
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

/// Where a sandbox finds hull's CA when its policy intercepts TLS.
pub const SANDBOX_CA: &str = "/etc/hull/ca.pem";
/// The sandbox's system bundle plus hull's CA (`SSL_CERT_FILE` and
/// `REQUESTS_CA_BUNDLE` point here: they replace, not extend, the bundle).
pub const SANDBOX_CA_BUNDLE: &str = "/etc/hull/ca-bundle.pem";
/// The system bundle inside a sandbox, extended with hull's CA.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// A system bundle larger than this is not extended.
const MAX_BUNDLE: u64 = 16 << 20;

/// Does `policy` make hull terminate TLS (header rules, record, replay)?
pub(crate) fn intercepting(policy: &NetworkPolicy) -> bool {
    matches!(
        policy.mode,
        hull_api::NetworkMode::Record | hull_api::NetworkMode::Replay
    ) || (policy.mode.needs_network() && !policy.headers.is_empty())
}

impl Runtime {
    /// The environment a sandbox whose policy intercepts gets so that
    /// OpenSSL, Python (`requests`) and Node trust hull's CA (values the
    /// request set itself win).
    pub(crate) fn net_ca_env(&self, e: &Entry, env: &mut Vec<(String, String)>) {
        if !intercepting(&e.record().network) {
            return;
        }
        for (k, v) in [
            ("SSL_CERT_FILE", SANDBOX_CA_BUNDLE),
            ("REQUESTS_CA_BUNDLE", SANDBOX_CA_BUNDLE),
            ("NODE_EXTRA_CA_CERTS", SANDBOX_CA),
        ] {
            if !env.iter().any(|(ek, _)| ek == k) {
                env.push((k.to_string(), v.to_string()));
            }
        }
    }

    /// Install the sandbox's CA certificate (never its key) through the
    /// guest agent when its policy intercepts: `/etc/hull/ca.pem`,
    /// `/etc/hull/ca-bundle.pem` (system bundle + CA) and the system bundle
    /// extended (once). A failure is an event, not a failed create: the
    /// sandbox's TLS clients then refuse hull's certificates (fail closed).
    pub(crate) async fn net_install_ca(&self, e: &Entry) {
        let (id, policy) = {
            let r = e.record();
            (r.sandbox.id.clone(), r.network.clone())
        };
        if !intercepting(&policy) {
            return;
        }
        if let Err(why) = self.install_ca(e, &id).await {
            tracing::warn!(sandbox = %id, error = %why, "installing the sandbox CA");
            let mut r = e.record();
            push_event(
                &mut r,
                "network_ca",
                format!(
                    "hull's CA could not be installed in the sandbox (intercepted TLS will not verify): {why}"
                ),
            );
        }
    }

    async fn install_ca(&self, e: &Entry, id: &str) -> Result<(), String> {
        let icpt = self
            .net
            .icpt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or("the TLS interceptor is not running")?;
        let c = e.client().ok_or("the sandbox has no guest connection")?;
        let ca = icpt.cas().get_or_create(id).map_err(|e| error_chain(&e))?;
        let pem = ca.cert_pem().as_bytes().to_vec();
        let system = match c.read(SYSTEM_BUNDLE, 0, Some(MAX_BUNDLE + 1)).await {
            Ok((_, mut r)) => {
                let mut buf = Vec::new();
                tokio::io::AsyncReadExt::read_to_end(&mut r, &mut buf)
                    .await
                    .map_err(|e| format!("reading {SYSTEM_BUNDLE}: {e}"))?;
                if buf.len() as u64 > MAX_BUNDLE {
                    return Err(format!("{SYSTEM_BUNDLE} is larger than 16 MiB"));
                }
                Some(buf)
            }
            Err(hull_proto::client::ClientError::Guest(g))
                if g.kind == hull_proto::GuestErrorKind::NotFound =>
            {
                None
            }
            Err(err) => return Err(format!("reading {SYSTEM_BUNDLE}: {}", error_chain(&err))),
        };
        let with_ca = |base: &[u8]| {
            let mut out = base.to_vec();
            if !base.windows(pem.len()).any(|w| w == pem.as_slice()) {
                if !out.is_empty() && !out.ends_with(b"\n") {
                    out.push(b'\n');
                }
                out.extend_from_slice(&pem);
            }
            out
        };
        let bundle = with_ca(system.as_deref().unwrap_or_default());
        let mut writes = vec![
            (SANDBOX_CA, pem.clone()),
            (SANDBOX_CA_BUNDLE, bundle.clone()),
        ];
        if system.is_some() {
            writes.push((SYSTEM_BUNDLE, bundle));
        }
        for (path, body) in writes {
            c.write(path, Some(0o644), true, None, std::io::Cursor::new(body))
                .await
                .map_err(|e| format!("writing {path}: {}", error_chain(&e)))?;
        }
        Ok(())
    }
}

impl Runtime {
    /// A sandbox's record is gone: close its cassettes, delete its CA
    /// (key included) and its recording.
    pub(crate) fn net_forget(&self, id: &str) {
        let rec = hull_net::cassette::recording_path(&self.net.state_dir, id);
        let icpt = self
            .net
            .icpt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let removed = match icpt {
            Some(i) => {
                i.cassettes().forget(id, Some(&rec));
                i.cas().remove(id)
            }
            None => {
                hull_net::ca::CaStore::new(hull_net::ca::ca_dir(&self.net.state_dir)).remove(id)
            }
        };
        if let Err(e) = removed {
            tracing::warn!(sandbox = id, error = %error_chain(&e), "removing the sandbox CA");
        }
        match std::fs::remove_file(&rec) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(sandbox = id, error = %e, path = %rec.display(), "removing the recorded cassette")
            }
        }
    }
}

impl Runtime {
    /// The cassette a snapshot of `e` carries: its recording in `record`
    /// mode, the cassette it replays in `replay` mode.
    pub(crate) fn net_cassette_source(&self, e: &Entry) -> Option<std::path::PathBuf> {
        let (id, policy, born) = {
            let r = e.record();
            (
                r.sandbox.id.clone(),
                r.network.clone(),
                r.sandbox.snapshot.clone(),
            )
        };
        self.cassette_for(&id, &policy, born.as_deref())
            .ok()
            .flatten()
    }

    /// Where snapshot `snap`'s cassette is kept.
    pub(crate) fn net_snapshot_cassette(&self, snap: &str) -> std::path::PathBuf {
        hull_net::cassette::snapshot_path(&self.net.state_dir, snap)
    }
}
