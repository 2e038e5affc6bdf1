//! The lifecycle controller: sandboxes, their states and transitions, the
//! persistent store, TTLs and idle timeouts, and re-adoption after a daemon
//! restart.
//!
//! Every transport (HTTP, MCP, CLI through HTTP) calls the methods of
//! [`Runtime`]; nothing else mutates sandbox state. Each method checks the
//! transition, acts on the substrate, persists the result and only then
//! returns (DESIGN.md invariant 3). A sandbox's lifecycle operations are
//! serialised by a per-sandbox lock; exec and file calls on a running
//! sandbox run concurrently.
//!
//! Limits: one substrate (containers) for now; `stop` keeps the record of a
//! sandbox but not its filesystem (the writable layer lives in memory).
#![forbid(unsafe_code)]

mod browser;
mod code;
mod exec;
mod files;
pub mod hostinfo;
mod imports;
mod mcp_host;
mod network;
mod ports;
mod shell;
mod snapshots;
pub mod state;
pub mod store;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hull_api::{
    ApiError, CreateSandbox, ErrorKind, ExecClientMessage, ExecEvent, HostInfo, Limits, Profile,
    Sandbox, SandboxEvent, SandboxState, SubstrateKind, TemplateInfo, validate_dns_label,
};
use hull_container::{Container, ContainerError, ContainerHost, ContainerSpec};
pub use hull_fs::snapshot::BackendChoice;
use hull_fs::snapshot::StoreInfo;
use hull_proto::client::{ClientError, GuestClient};
use hull_proto::{GuestError, GuestErrorKind};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

pub use exec::EXEC_OUTPUT_LIMIT;
pub use imports::MAX_IMAGE_ARCHIVE;
pub use mcp_host::{MAX_MESSAGE as MCP_MAX_MESSAGE, McpPosted};
pub use network::{DENIED_EVENTS_PER_MINUTE, NetworkConfig};
pub use snapshots::MAX_FORK;
use store::{Record, Store};

/// A byte stream flowing into or out of a sandbox.
pub type ByteReader = Pin<Box<dyn AsyncRead + Send + 'static>>;

/// A bidirectional byte stream to a TCP port inside a sandbox.
pub trait DuplexStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> DuplexStream for T {}

/// Default TTL of the `rollout` profile.
pub const ROLLOUT_TTL_SECONDS: u64 = 30;
/// Default TTL of the `session` profile (extended by activity).
pub const SESSION_TTL_SECONDS: u64 = 40 * 60;
/// How often the monitor checks TTLs, idle timeouts, OOM kills and dead guests.
pub const MONITOR_INTERVAL: Duration = Duration::from_millis(500);
/// How long a restarted daemon waits for a live sandbox's agent to answer
/// before it marks the sandbox failed.
pub const ADOPT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Events kept per sandbox (oldest dropped first).
pub const MAX_EVENTS: usize = 100;
/// Labels per sandbox, and the length of each key and value.
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_LEN: usize = 256;

/// Daemon settings the runtime needs.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where the store, templates and per-sandbox files live (`/var/lib/hull`).
    pub state_dir: PathBuf,
    /// The statically linked guest agent binary.
    pub guest_binary: PathBuf,
    /// Limits applied where a request names none.
    pub defaults: Limits,
    /// Which snapshot store backend to open, and how big a loop-backed
    /// btrfs image made for it is.
    pub snapshots: SnapshotStoreConfig,
    /// Sandbox networking (pooled namespaces, firewall, default policies).
    pub network: NetworkConfig,
}

/// How the daemon opens its snapshot store (`<state>/snapshots`).
#[derive(Debug, Clone, Copy)]
pub struct SnapshotStoreConfig {
    /// `auto` picks btrfs where it can (see `hull_fs::snapshot::store`).
    pub backend: BackendChoice,
    /// The size of a sparse loop-backed btrfs image, when one is made;
    /// `None`: half the free space of the state directory's filesystem at
    /// that moment, between 1 and 64 GiB (a sparse image larger than the
    /// disk's free space would fail with I/O errors, not `ENOSPC`, once the
    /// disk fills).
    pub image_bytes: Option<u64>,
}

impl Default for SnapshotStoreConfig {
    fn default() -> Self {
        Self {
            backend: BackendChoice::Auto,
            image_bytes: None,
        }
    }
}

/// A running streaming exec (or an attach to a background process).
pub struct ExecStream {
    /// `started`, then output events, then `exit` (or `error`).
    pub events: mpsc::Receiver<ExecEvent>,
    /// Stdin bytes, EOF, signals and resizes for the process.
    pub input: mpsc::Sender<ExecClientMessage>,
}

/// One sandbox as the daemon holds it in memory.
struct Entry {
    record: Mutex<Record>,
    /// Serialises lifecycle operations on this sandbox.
    lifecycle: tokio::sync::Mutex<()>,
    container: Mutex<Option<Arc<Container>>>,
    client: Mutex<Option<Arc<GuestClient>>>,
}

impl Entry {
    fn new(record: Record) -> Arc<Self> {
        Arc::new(Self {
            record: Mutex::new(record),
            lifecycle: tokio::sync::Mutex::new(()),
            container: Mutex::new(None),
            client: Mutex::new(None),
        })
    }
    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn sandbox(&self) -> Sandbox {
        self.record().sandbox.clone()
    }
    fn state(&self) -> SandboxState {
        self.record().sandbox.state
    }
    fn id(&self) -> String {
        self.record().sandbox.id.clone()
    }
    fn container(&self) -> Option<Arc<Container>> {
        self.container
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    fn set_container(&self, c: Option<Arc<Container>>) {
        *self.container.lock().unwrap_or_else(|e| e.into_inner()) = c;
    }
    fn client(&self) -> Option<Arc<GuestClient>> {
        self.client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    fn set_client(&self, c: Option<Arc<GuestClient>>) {
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = c;
    }
    /// Record activity now: the idle timeout restarts, and a `session`
    /// sandbox's TTL is pushed back to a full TTL. Also used by tasks that
    /// hold the entry but not the runtime (a running exec marks its sandbox
    /// active).
    fn touch(&self) {
        let mut r = self.record();
        let t = now();
        r.last_activity = t;
        if r.sandbox.profile == Profile::Session
            && let (Some(ttl), Some(exp)) = (r.ttl_seconds, r.sandbox.expires_at)
            && t + ttl > exp
        {
            r.sandbox.expires_at = Some(t + ttl);
        }
    }
}

/// The lifecycle controller. Cheap to share: wrap in an `Arc`.
pub struct Runtime {
    config: RuntimeConfig,
    host: Arc<ContainerHost>,
    store: Store,
    probe: hostinfo::Probe,
    sandboxes: Mutex<HashMap<String, Arc<Entry>>>,
    monitor: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The snapshot store (`<state>/snapshots`); taken away at shutdown, so
    /// that its lock is released for the next runtime (in-process restarts).
    snapshots: Mutex<Option<Arc<dyn hull_fs::snapshot::Snapshotter>>>,
    /// What was opened (for `hull info`, and to unmount a loop image).
    store_info: StoreInfo,
    /// Snapshots being exported (deleting them waits).
    exports: imports::Exports,
    /// Snapshot creation and deletion take it for writing (unique names,
    /// in-use checks); creating a sandbox from a snapshot takes it for
    /// reading, so a snapshot cannot vanish between the lookup of its
    /// layers and the new sandbox's record naming it.
    snap_lock: tokio::sync::RwLock<()>,
    /// Each sandbox's browser, driven over CDP (see `browser`).
    browsers: browser::Browsers,
    /// MCP servers registered on sandboxes, and their sessions.
    mcp: mcp_host::McpHosts,
    /// Sandbox networks: the pool, the firewall, the rules registry.
    net: Arc<network::Net>,
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn container_error(e: ContainerError) -> ApiError {
    match e {
        ContainerError::Template(hull_fs::TemplateError::NotFound(_)) => {
            ApiError::not_found(e.to_string())
        }
        ContainerError::Template(hull_fs::TemplateError::Unavailable { .. }) => {
            ApiError::new(ErrorKind::Unavailable, e.to_string())
        }
        ContainerError::Unsupported(_) => ApiError::unavailable(e.to_string()),
        other => ApiError::internal(error_chain(&other)),
    }
}

/// An error with its sources, for messages where the cause matters.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

pub(crate) fn guest_error(id: &str, e: ClientError) -> ApiError {
    match e {
        ClientError::Guest(GuestError {
            kind,
            message,
            reason,
        }) => {
            let kind = match kind {
                GuestErrorKind::InvalidArgument => ErrorKind::InvalidArgument,
                GuestErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
                GuestErrorKind::NotFound => ErrorKind::NotFound,
                GuestErrorKind::Conflict => ErrorKind::Conflict,
                GuestErrorKind::ResourceExhausted => ErrorKind::ResourceExhausted,
                GuestErrorKind::Unavailable => ErrorKind::Unavailable,
                GuestErrorKind::Internal => ErrorKind::Internal,
            };
            ApiError::new(kind, message).with_reason(reason.map(exec::reason))
        }
        other => ApiError::unavailable(format!(
            "the guest agent of sandbox {id} did not answer: {}",
            error_chain(&other)
        )),
    }
}

fn store_error(e: store::StoreError) -> ApiError {
    ApiError::internal(error_chain(&e))
}

pub(crate) fn new_id() -> String {
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut b = [0u8; 12];
    getrandom::fill(&mut b).unwrap_or_else(|_| {
        let n = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        for (i, v) in b.iter_mut().enumerate() {
            *v = (n >> (i * 5)) as u8;
        }
    });
    let mut s = String::with_capacity(12);
    s.push(ALPHA[b[0] as usize % ALPHA.len()] as char);
    for x in &b[1..] {
        s.push(ALNUM[*x as usize % ALNUM.len()] as char);
    }
    s
}

fn push_event(r: &mut Record, kind: &str, message: impl Into<String>) {
    let ev = &mut r.sandbox.events;
    ev.push(SandboxEvent {
        time: now(),
        kind: kind.into(),
        message: message.into(),
    });
    if ev.len() > MAX_EVENTS {
        let drop = ev.len() - MAX_EVENTS;
        ev.drain(..drop);
    }
}

pub(crate) fn validate_env(env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(ApiError::invalid(format!(
                "invalid environment variable {k:?}: names must be non-empty without '=' or NUL, values without NUL"
            )));
        }
    }
    Ok(())
}

pub(crate) fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if labels.len() > MAX_LABELS {
        return Err(ApiError::invalid(format!(
            "at most {MAX_LABELS} labels per sandbox"
        )));
    }
    for (k, v) in labels {
        if k.is_empty()
            || k.len() > MAX_LABEL_LEN
            || v.len() > MAX_LABEL_LEN
            || k.contains(['=', '\0'])
            || v.contains('\0')
        {
            return Err(ApiError::invalid(format!(
                "invalid label {k:?}: keys are 1-{MAX_LABEL_LEN} characters without '=', values at most {MAX_LABEL_LEN}"
            )));
        }
    }
    Ok(())
}

impl Runtime {
    /// Open (or create) the state directory, re-adopt live sandboxes, clean
    /// up half-created ones, and start the TTL/idle/OOM monitor.
    pub async fn open(config: RuntimeConfig) -> Result<Arc<Runtime>, ApiError> {
        config.defaults.validate()?;
        std::fs::create_dir_all(&config.state_dir).map_err(|e| {
            ApiError::internal(format!(
                "cannot create state directory {}: {e}",
                config.state_dir.display()
            ))
        })?;
        let state_dir = std::fs::canonicalize(&config.state_dir).map_err(|e| {
            ApiError::internal(format!(
                "state directory {}: {e}",
                config.state_dir.display()
            ))
        })?;
        let config = RuntimeConfig {
            state_dir,
            ..config
        };
        let host = {
            let (dir, guest) = (config.state_dir.clone(), config.guest_binary.clone());
            tokio::task::spawn_blocking(move || ContainerHost::open(&dir, guest))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
                .map_err(container_error)?
        };
        let host = Arc::new(host);
        let opened = async {
            let store = Store::open(&config.state_dir.join("hull.db")).map_err(store_error)?;
            let root = config.state_dir.join("snapshots");
            let c = config.snapshots;
            let image_bytes = c
                .image_bytes
                .unwrap_or_else(|| hull_fs::snapshot::default_image_bytes(&config.state_dir));
            let (snapshots, info) = tokio::task::spawn_blocking(move || {
                hull_fs::snapshot::open_with(&root, image_bytes, c.backend)
            })
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(snapshots::snapshot_error)?;
            Ok::<_, ApiError>((store, snapshots, info))
        }
        .await;
        let (store, snapshots, store_info) = match opened {
            Ok(o) => o,
            Err(e) => {
                // Undo the host-wide setup opening the host made (the
                // cgroup parent, template mounts) if nothing uses it.
                let h = host.clone();
                let _ = tokio::task::spawn_blocking(move || h.release_if_idle()).await;
                return Err(e);
            }
        };
        tracing::info!(store = %store_info, "snapshot store opened");
        // The egress proxy's and DNS server's ports go into the firewall.
        let mut net_cfg = config.network.clone();
        let boundary = if net_cfg.enabled && net_cfg.proxy.is_none() {
            match network::BoundaryListeners::bind() {
                Ok((l, ports)) => {
                    net_cfg.proxy = Some(ports);
                    Some(l)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "egress proxy not started: domain allow items allow nothing");
                    None
                }
            }
        } else {
            None
        };
        let net = {
            let keep = Runtime::net_keep(&store.all().unwrap_or_default(), &host.instance().id);
            let (cfg, inst, dir) = (
                net_cfg,
                host.instance().id.clone(),
                config.state_dir.clone(),
            );
            tokio::task::spawn_blocking(move || network::Net::start(cfg, &inst, &dir, &keep))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
        };
        let rt = Arc::new(Runtime {
            net: Arc::new(net),
            snapshots: Mutex::new(Some(Arc::from(snapshots))),
            store_info,
            exports: Default::default(),
            snap_lock: tokio::sync::RwLock::new(()),
            browsers: Default::default(),
            mcp: Default::default(),
            probe: hostinfo::probe(),
            host,
            store,
            config,
            sandboxes: Mutex::new(HashMap::new()),
            monitor: Mutex::new(None),
        });
        rt.clear_imports();
        rt.start_boundary(boundary);
        let recovered = match rt.snap_recover() {
            Ok(()) => rt.recover().await,
            Err(e) => Err(e),
        };
        if let Err(e) = recovered {
            rt.shutdown().await;
            return Err(e);
        }
        let weak = Arc::downgrade(&rt);
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(MONITOR_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(rt) = weak.upgrade() else { break };
                rt.monitor_once().await;
            }
        });
        *rt.monitor.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(rt)
    }

    /// Re-adopt what the store says runs; undo what was half-done.
    async fn recover(&self) -> Result<(), ApiError> {
        let records = self.store.all().map_err(store_error)?;
        let mut known = Vec::new();
        for mut r in records {
            let id = r.sandbox.id.clone();
            match r.sandbox.state {
                SandboxState::Running | SandboxState::Paused => {
                    let pid = r.sandbox.pid.unwrap_or(-1);
                    match self.host.adopt(&id, pid, r.start_time) {
                        Some(c) => {
                            let entry = Entry::new(r.clone());
                            entry.set_container(Some(Arc::new(c)));
                            self.net_adopt(&entry);
                            if r.sandbox.state == SandboxState::Running {
                                // A daemon killed in the middle of a snapshot
                                // left the sandbox frozen: running means thawed.
                                let host = self.host.clone();
                                let tid = id.clone();
                                let _ = tokio::task::spawn_blocking(move || host.thaw(&tid)).await;
                                // Bounded: an agent that doesn't answer must not
                                // hold up the daemon's start.
                                let connected = tokio::time::timeout(
                                    ADOPT_CONNECT_TIMEOUT,
                                    GuestClient::connect(&self.socket_of(&entry)),
                                )
                                .await
                                .unwrap_or_else(|_| {
                                    Err(ClientError::Io(std::io::Error::new(
                                        std::io::ErrorKind::TimedOut,
                                        format!(
                                            "no answer within {} s",
                                            ADOPT_CONNECT_TIMEOUT.as_secs()
                                        ),
                                    )))
                                });
                                match connected {
                                    Ok(cl) => entry.set_client(Some(Arc::new(cl))),
                                    Err(e) => {
                                        self.fail(
                                            &entry,
                                            "guest_lost",
                                            format!(
                                                "guest agent unreachable after daemon restart: {}",
                                                error_chain(&e)
                                            ),
                                        )
                                        .await;
                                        known.push(id.clone());
                                        self.insert(entry);
                                        continue;
                                    }
                                }
                            }
                            {
                                let mut rec = entry.record();
                                push_event(
                                    &mut rec,
                                    "adopted",
                                    "re-adopted after a daemon restart",
                                );
                                let _ = self.store.put(&rec);
                            }
                            known.push(id.clone());
                            self.insert(entry);
                        }
                        None => {
                            let host = self.host.clone();
                            let cid = id.clone();
                            let _ = tokio::task::spawn_blocking(move || host.cleanup(&cid)).await;
                            r.sandbox.state = SandboxState::Failed;
                            r.sandbox.pid = None;
                            r.sandbox.error = Some("its init process is gone (host rebooted, or killed while the daemon was down)".into());
                            push_event(&mut r, "guest_lost", "init gone at daemon start");
                            self.store.put(&r).map_err(store_error)?;
                            known.push(id.clone());
                            self.insert(Entry::new(r));
                        }
                    }
                }
                SandboxState::Creating | SandboxState::Stopping => {
                    // Half-done work: finish it by tearing down.
                    let host = self.host.clone();
                    let cid = id.clone();
                    let _ = tokio::task::spawn_blocking(move || host.cleanup(&cid)).await;
                    self.store.delete(&id).map_err(store_error)?;
                    self.net_forget(&id);
                }
                SandboxState::Stopped | SandboxState::Failed => {
                    known.push(id.clone());
                    self.insert(Entry::new(r));
                }
            }
        }
        // Anything on the host the store does not know (killed mid-create
        // before the first write): remove.
        for id in self.host.leftovers() {
            let live = self
                .sandboxes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&id)
                .map(|e| e.state());
            if !matches!(live, Some(SandboxState::Running | SandboxState::Paused)) {
                let host = self.host.clone();
                let _ = tokio::task::spawn_blocking(move || host.cleanup(&id)).await;
            }
        }
        Ok(())
    }

    fn insert(&self, e: Arc<Entry>) {
        let id = e.id();
        self.sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, e);
    }

    fn socket_of(&self, e: &Entry) -> PathBuf {
        self.config
            .state_dir
            .join("sandboxes")
            .join(e.id())
            .join("run")
            .join("agent.sock")
    }

    fn persist(&self, e: &Entry) -> Result<(), ApiError> {
        self.store.put(&e.record()).map_err(store_error)
    }

    /// Find by id or name.
    fn lookup(&self, id_or_name: &str) -> Result<Arc<Entry>, ApiError> {
        if id_or_name.is_empty() || id_or_name.len() > 63 {
            return Err(ApiError::not_found(format!("no sandbox {id_or_name:?}")));
        }
        let map = self.sandboxes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get(id_or_name) {
            return Ok(e.clone());
        }
        map.values()
            .find(|e| e.record().sandbox.name.as_deref() == Some(id_or_name))
            .cloned()
            .ok_or_else(|| {
                ApiError::not_found(format!("no sandbox with id or name {id_or_name:?}"))
            })
    }

    /// Record activity: sessions extend their TTL; idle timers restart.
    fn touch(&self, e: &Entry) {
        e.touch();
    }

    /// A running sandbox's guest client, or a conflict error naming its state.
    fn running_client(
        &self,
        id: &str,
        op: &str,
    ) -> Result<(Arc<Entry>, Arc<GuestClient>), ApiError> {
        let e = self.lookup(id)?;
        let state = e.state();
        if state != SandboxState::Running {
            return Err(ApiError::conflict(state::refusal(&e.id(), state, op)));
        }
        let client = e.client().ok_or_else(|| {
            ApiError::unavailable(format!("sandbox {} has no guest connection", e.id()))
        })?;
        self.touch(&e);
        Ok((e, client))
    }

    pub fn host_info(&self) -> HostInfo {
        // Not inline in the literal below: saved_templates() takes the same
        // lock, which must be released first.
        let backend = self
            .snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|s| s.backend());
        let snapshot_store = match backend {
            Some(_) => self.store_info.to_string(),
            None => "closed (the daemon is shutting down)".into(),
        };
        let p = &self.probe;
        let cg = self.host.cgroups();
        HostInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            instance_id: self.host.instance().id.clone(),
            state_dir: self.config.state_dir.display().to_string(),
            kernel: p.kernel.clone(),
            cgroup_mode: cg.mode().into(),
            cgroup_controllers: cg.controllers(),
            user_namespaces: p.user_namespaces,
            idmapped_mounts: true,
            overlayfs: p.overlayfs,
            seccomp: p.seccomp,
            landlock: p.landlock,
            btrfs: p.btrfs,
            kvm: p.kvm,
            kvm_note: p.kvm_note.clone(),
            tcg: p.tcg,
            uid_range: format!(
                "{}-{}",
                self.host.instance().uid_base,
                self.host.instance().uid_base + hull_container::ID_RANGE - 1
            ),
            snapshot_store,
            templates: self
                .host
                .templates()
                .status()
                .into_iter()
                .map(|t| TemplateInfo {
                    name: t.name,
                    available: t.available,
                    description: t.description,
                    note: t.note,
                    snapshot: None,
                    config: None,
                })
                .chain(self.saved_templates().unwrap_or_default())
                .collect(),
            sandboxes: self
                .sandboxes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len(),
            defaults: self.config.defaults,
            network: self.net.describe(),
        }
    }

    pub async fn create(&self, req: CreateSandbox) -> Result<Sandbox, ApiError> {
        // A saved template is a snapshot with a name. Either way the
        // snapshot is resolved once (one walk of the store), under the lock
        // that keeps it from vanishing before the new record names it.
        let saved_name = match (&req.from, &req.template) {
            (None, Some(t)) if !self.host.templates().names().contains(&t.as_str()) => Some(t),
            _ => None,
        };
        let _snap_guard = match (&req.from, saved_name) {
            (None, None) => None,
            _ => Some(self.snap_lock.read().await),
        };
        let (from, saved) = match (&req.from, saved_name) {
            (Some(f), _) => (Some(self.snap_lookup(f)?), false),
            (None, Some(t)) => {
                let r = self.saved_template(t)?;
                let found = r.is_some();
                (r, found)
            }
            (None, None) => (None, false),
        };
        let mut req = req;
        if saved {
            req.template = None;
        }
        // An image's defaults, under what the request names itself.
        if let Some(img) = from.as_ref().and_then(|f| f.image.as_ref()) {
            for (k, v) in &img.env {
                req.env.entry(k.clone()).or_insert_with(|| v.clone());
            }
            if req.user.is_none() {
                req.user = img.user.clone();
            }
            if req.workdir.is_none() {
                req.workdir = img.workdir.clone();
            }
        }
        if let (Some(snap), Some(t)) = (&from, &req.template)
            && *t != snap.template
        {
            return Err(ApiError::invalid(format!(
                "snapshot {} holds template {}, not {t}: leave out the template",
                snap.id, snap.template
            )));
        }
        let snapshot_layers = match &from {
            Some(snap) => self.snap_layers(snap)?,
            None => Vec::new(),
        };
        let template = match &from {
            Some(snap) => snap.template.clone(),
            None => req.template.clone().unwrap_or_else(|| "host".into()),
        };
        if template.is_empty()
            || template.len() > 128
            || !template
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            || template.starts_with('.')
        {
            return Err(ApiError::invalid(format!(
                "invalid template name {template:?}"
            )));
        }
        if !self.host.templates().names().contains(&template.as_str()) {
            return Err(ApiError::not_found(format!(
                "template {template:?} does not exist (available: {})",
                self.host.templates().names().join(", ")
            )));
        }
        let profile = req.profile.unwrap_or_default();
        let network = self.net.choose(profile, req.network.clone())?;
        let limits = req.limits.resolve(&self.config.defaults)?;
        validate_env(&req.env)?;
        validate_labels(&req.labels)?;
        if let Some(u) = &req.user
            && (u.is_empty() || u.len() > 64 || u.contains(['\0', '/', '\n']))
        {
            return Err(ApiError::invalid(format!("invalid user {u:?}")));
        }
        if let Some(w) = &req.workdir
            && (!w.starts_with('/') || w.contains('\0') || w.len() > 4096)
        {
            return Err(ApiError::invalid(format!(
                "workdir {w:?} must be an absolute path"
            )));
        }
        let ttl = req.ttl_seconds.or(match profile {
            Profile::Rollout => Some(ROLLOUT_TTL_SECONDS),
            Profile::Session => Some(SESSION_TTL_SECONDS),
        });
        for (what, v) in [
            ("ttl_seconds", ttl),
            ("idle_timeout_seconds", req.idle_timeout_seconds),
        ] {
            if let Some(v) = v
                && v > hull_api::MAX_TTL_SECONDS
            {
                return Err(ApiError::invalid(format!(
                    "{what} {v} exceeds the maximum of {} (30 days)",
                    hull_api::MAX_TTL_SECONDS
                )));
            }
        }
        let ttl = ttl.filter(|t| *t > 0);
        if let Some(name) = &req.name {
            validate_dns_label("name", name)?;
            let map = self.sandboxes.lock().unwrap_or_else(|e| e.into_inner());
            if map.contains_key(name)
                || map
                    .values()
                    .any(|e| e.record().sandbox.name.as_deref() == Some(name))
            {
                return Err(ApiError::conflict(format!(
                    "a sandbox named {name:?} already exists"
                )));
            }
        }

        let id = new_id();
        let t = now();
        let record = Record {
            sandbox: Sandbox {
                id: id.clone(),
                name: req.name.clone(),
                state: SandboxState::Creating,
                template: template.clone(),
                profile,
                substrate: SubstrateKind::Container,
                labels: req.labels.clone(),
                limits,
                created_at: t,
                expires_at: ttl.map(|s| t + s),
                idle_timeout_seconds: req.idle_timeout_seconds.filter(|s| *s > 0),
                pid: None,
                env: req.env.clone(),
                user: req.user.clone(),
                workdir: req.workdir.clone(),
                error: None,
                events: Vec::new(),
                snapshot: from.as_ref().map(|s| s.id.clone()),
                network: network.redacted(),
            },
            network,
            net_slot: None,
            ttl_seconds: ttl,
            start_time: 0,
            last_activity: t,
            oom_seen: 0,
            ports: Vec::new(),
        };
        let entry = Entry::new(record);
        {
            // Names are unique: check again under the map lock as we insert.
            let mut map = self.sandboxes.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(name) = &req.name
                && map
                    .values()
                    .any(|e| e.record().sandbox.name.as_deref() == Some(name.as_str()))
            {
                return Err(ApiError::conflict(format!(
                    "a sandbox named {name:?} already exists"
                )));
            }
            map.insert(id.clone(), entry.clone());
        }
        let _guard = entry.lifecycle.lock().await;
        if let Err(e) = self.persist(&entry) {
            self.forget(&id);
            return Err(e);
        }

        let spec = self.container_spec(&entry, snapshot_layers);
        if let Err(err) = self.start_container(&entry, spec).await {
            let _ = self.store.delete(&id);
            self.forget(&id);
            self.net_forget(&id);
            return Err(err);
        }
        {
            let mut r = entry.record();
            let msg = match &r.sandbox.snapshot {
                Some(s) => format!(
                    "started from snapshot {s} of template {}",
                    r.sandbox.template
                ),
                None => format!("started from template {}", r.sandbox.template),
            };
            push_event(&mut r, "created", msg);
        }
        if let Err(e) = self.persist(&entry) {
            drop(_guard);
            let _ = self.destroy(&id).await;
            return Err(e);
        }
        Ok(entry.sandbox())
    }

    /// The container for a sandbox's record, over `snapshot_layers`.
    fn container_spec(&self, e: &Entry, snapshot_layers: Vec<Vec<PathBuf>>) -> ContainerSpec {
        let r = e.record();
        ContainerSpec {
            id: r.sandbox.id.clone(),
            template: r.sandbox.template.clone(),
            snapshot_layers,
            limits: r.sandbox.limits,
            env: r.sandbox.env.clone().into_iter().collect(),
            user: r.sandbox.user.clone(),
            workdir: r.sandbox.workdir.clone(),
            netns: None,
        }
    }

    /// Start the container, connect to its agent, and mark the entry
    /// running (not persisted). On error nothing is left on the host.
    async fn start_container(&self, entry: &Entry, spec: ContainerSpec) -> Result<(), ApiError> {
        let mut spec = spec;
        spec.netns = self.net_prepare(entry).await?;
        self.net_ca_env(entry, &mut spec.env);
        let started = self.start_container_in(entry, spec).await;
        if started.is_err() {
            self.net_release(entry);
        } else {
            self.net_install_ca(entry).await;
        }
        started
    }

    async fn start_container_in(&self, entry: &Entry, spec: ContainerSpec) -> Result<(), ApiError> {
        let host = self.host.clone();
        let container = tokio::task::spawn_blocking(move || host.create(&spec))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))
            .and_then(|r| r.map_err(container_error))
            .map(Arc::new)?;
        let client = match GuestClient::connect(&container.socket).await {
            Ok(c) => Arc::new(c),
            Err(err) => {
                let host = self.host.clone();
                let c = container.clone();
                let _ = tokio::task::spawn_blocking(move || host.destroy(Some(&c))).await;
                return Err(ApiError::internal(format!(
                    "sandbox started but its agent did not answer: {}",
                    error_chain(&err)
                )));
            }
        };
        {
            let mut r = entry.record();
            r.sandbox.state = SandboxState::Running;
            r.sandbox.pid = Some(container.pid);
            r.sandbox.error = None;
            r.start_time = container.start_time;
        }
        entry.set_container(Some(container));
        entry.set_client(Some(client));
        Ok(())
    }

    fn forget(&self, id: &str) {
        self.sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Look up by id or name.
    pub async fn get(&self, id_or_name: &str) -> Result<Sandbox, ApiError> {
        let e = self.lookup(id_or_name)?;
        self.touch(&e);
        Ok(e.sandbox())
    }

    /// All sandboxes carrying every given label.
    pub async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<Sandbox>, ApiError> {
        let entries: Vec<Arc<Entry>> = self
            .sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut out: Vec<Sandbox> = entries
            .iter()
            .map(|e| e.sandbox())
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .collect();
        out.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(out)
    }

    async fn transition(&self, e: &Entry, to: SandboxState, op: &str) -> Result<(), ApiError> {
        let from = e.state();
        if !state::valid_transition(from, to) {
            return Err(ApiError::conflict(state::refusal(&e.id(), from, op)));
        }
        Ok(())
    }

    pub async fn pause(&self, id: &str) -> Result<Sandbox, ApiError> {
        let e = self.lookup(id)?;
        let _g = e.lifecycle.lock().await;
        self.transition(&e, SandboxState::Paused, "pause").await?;
        let host = self.host.clone();
        let sid = e.id();
        tokio::task::spawn_blocking(move || host.freeze(&sid))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(container_error)?;
        {
            let mut r = e.record();
            r.sandbox.state = SandboxState::Paused;
            push_event(&mut r, "paused", "processes frozen");
        }
        self.touch(&e);
        self.persist(&e)?;
        Ok(e.sandbox())
    }

    pub async fn resume(&self, id: &str) -> Result<Sandbox, ApiError> {
        let e = self.lookup(id)?;
        let _g = e.lifecycle.lock().await;
        self.transition(&e, SandboxState::Running, "resume").await?;
        let host = self.host.clone();
        let sid = e.id();
        tokio::task::spawn_blocking(move || host.thaw(&sid))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(container_error)?;
        if e.client().is_none() {
            // Adopted while paused: connect now that the agent runs again.
            let cl = GuestClient::connect(&self.socket_of(&e))
                .await
                .map_err(|err| guest_error(&e.id(), err))?;
            e.set_client(Some(Arc::new(cl)));
        }
        {
            let mut r = e.record();
            r.sandbox.state = SandboxState::Running;
            push_event(&mut r, "resumed", "processes thawed");
        }
        self.touch(&e);
        self.persist(&e)?;
        Ok(e.sandbox())
    }

    /// Reset the TTL to `ttl_seconds` from now (0 removes it).
    pub async fn set_ttl(&self, id: &str, ttl_seconds: u64) -> Result<Sandbox, ApiError> {
        if ttl_seconds > hull_api::MAX_TTL_SECONDS {
            return Err(ApiError::invalid(format!(
                "ttl {ttl_seconds} exceeds the maximum of {} seconds (30 days)",
                hull_api::MAX_TTL_SECONDS
            )));
        }
        let e = self.lookup(id)?;
        let _g = e.lifecycle.lock().await;
        let state = e.state();
        if !matches!(state, SandboxState::Running | SandboxState::Paused) {
            return Err(ApiError::conflict(state::refusal(
                &e.id(),
                state,
                "set the TTL of",
            )));
        }
        {
            let mut r = e.record();
            if ttl_seconds == 0 {
                r.ttl_seconds = None;
                r.sandbox.expires_at = None;
            } else {
                r.ttl_seconds = Some(ttl_seconds);
                r.sandbox.expires_at = Some(now() + ttl_seconds);
            }
        }
        self.touch(&e);
        self.persist(&e)?;
        Ok(e.sandbox())
    }

    /// Kill a sandbox's processes and free its host resources; the record
    /// stays (state `stopped`) until it is destroyed.
    pub async fn stop(&self, id: &str) -> Result<Sandbox, ApiError> {
        let e = self.lookup(id)?;
        let _g = e.lifecycle.lock().await;
        self.transition(&e, SandboxState::Stopping, "stop").await?;
        self.teardown(&e).await?;
        {
            let mut r = e.record();
            r.sandbox.state = SandboxState::Stopped;
            r.sandbox.pid = None;
            push_event(&mut r, "stopped", "processes killed");
        }
        self.persist(&e)?;
        Ok(e.sandbox())
    }

    /// Move to `stopping`, persist, tear down on the host.
    async fn teardown(&self, e: &Entry) -> Result<(), ApiError> {
        {
            let mut r = e.record();
            r.sandbox.state = SandboxState::Stopping;
        }
        self.persist(e)?;
        self.end_tools(&e.id());
        e.set_client(None);
        let c = e.container();
        let host = self.host.clone();
        let id = e.id();
        // A frozen cgroup cannot die: thaw first (ignore errors: it may be gone).
        let result = tokio::task::spawn_blocking(move || {
            let _ = host.thaw(&id);
            match c {
                Some(c) => host.destroy(Some(&c)),
                None => host.cleanup(&id),
            }
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
        e.set_container(None);
        self.net_release(e);
        result.map_err(container_error)
    }

    pub async fn destroy(&self, id: &str) -> Result<(), ApiError> {
        let e = self.lookup(id)?;
        let _g = e.lifecycle.lock().await;
        let state = e.state();
        if state != SandboxState::Stopping
            && !state::valid_transition(state, SandboxState::Stopping)
        {
            return Err(ApiError::conflict(state::refusal(
                &e.id(),
                state,
                "destroy",
            )));
        }
        if !matches!(state, SandboxState::Stopped) {
            self.teardown(&e).await?;
        }
        let sid = e.id();
        self.store.delete(&sid).map_err(store_error)?;
        self.forget(&sid);
        self.net_forget(&sid);
        Ok(())
    }

    /// End what the tools keep for a sandbox outside it: its hosted MCP
    /// servers' sessions and its browser connection.
    fn end_tools(&self, id: &str) {
        self.mcp.sandbox_gone(id);
        self.browsers.forget(id);
    }

    /// Mark a sandbox failed (its init died or its agent is unreachable) and
    /// free its host resources, keeping the record for inspection.
    async fn fail(&self, e: &Entry, kind: &str, why: String) {
        tracing::warn!(sandbox = %e.id(), "{why}");
        self.end_tools(&e.id());
        e.set_client(None);
        let c = e.container();
        let host = self.host.clone();
        let id = e.id();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(c) = &c {
                host.reap(c);
            }
            let _ = host.destroy(c.as_deref());
            host.cleanup(&id)
        })
        .await;
        e.set_container(None);
        self.net_release(e);
        {
            let mut r = e.record();
            r.sandbox.state = SandboxState::Failed;
            r.sandbox.pid = None;
            r.sandbox.error = Some(why.clone());
            push_event(&mut r, kind, why);
        }
        let _ = self.persist(e);
    }

    /// One pass of the monitor: dead guests, OOM kills, TTL and idle expiry.
    async fn monitor_once(&self) {
        // MCP sessions: idle ones end; calls in progress keep their sandbox active.
        for sid in self.mcp.reap() {
            let e = self
                .sandboxes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&sid)
                .cloned();
            if let Some(e) = e {
                e.touch();
            }
        }
        let entries: Vec<Arc<Entry>> = self
            .sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let t = now();
        for e in entries {
            let (state, expires, idle, last) = {
                let r = e.record();
                (
                    r.sandbox.state,
                    r.sandbox.expires_at,
                    r.sandbox.idle_timeout_seconds,
                    r.last_activity,
                )
            };
            if !matches!(state, SandboxState::Running | SandboxState::Paused) {
                continue;
            }
            if let Some(c) = e.container()
                && c.exited()
            {
                let Ok(_g) = e.lifecycle.try_lock() else {
                    continue;
                };
                if matches!(e.state(), SandboxState::Running | SandboxState::Paused) {
                    self.fail(
                        &e,
                        "guest_lost",
                        "the sandbox's init (PID 1) exited; its processes are gone".into(),
                    )
                    .await;
                }
                continue;
            }
            self.check_oom(&e);
            let expired = expires.is_some_and(|x| t >= x);
            let idled = idle.is_some_and(|i| t >= last + i);
            if expired || idled {
                let why = if expired {
                    "TTL expired"
                } else {
                    "idle timeout passed"
                };
                tracing::info!(sandbox = %e.id(), "{why}; destroying");
                let id = e.id();
                if let Err(err) = self.destroy(&id).await {
                    tracing::warn!(sandbox = %id, "destroying after {why} failed: {err}");
                }
            }
        }
    }

    /// Record new OOM kills as events; returns true when there were some.
    fn check_oom(&self, e: &Entry) -> bool {
        let id = e.id();
        let kills = self.host.oom_kills(&id);
        let mut r = e.record();
        if kills > r.oom_seen {
            let n = kills - r.oom_seen;
            r.oom_seen = kills;
            let limit = hull_api::format_size(r.sandbox.limits.memory_bytes);
            push_event(
                &mut r,
                "oom",
                format!("the memory limit ({limit}) was hit: the OOM killer ended {n} process(es)"),
            );
            let _ = self.store.put(&r);
            return true;
        }
        false
    }

    /// Destroy every sandbox and remove everything this daemon made on the host.
    pub async fn system_reset(&self) -> Result<Vec<String>, ApiError> {
        let ids: Vec<String> = self
            .sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        let mut removed = Vec::new();
        for id in ids {
            if self.destroy(&id).await.is_ok() {
                removed.push(format!("sandbox {id}"));
            }
        }
        self.store.clear().map_err(store_error)?;
        self.sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let host = self.host.clone();
        let mut more = tokio::task::spawn_blocking(move || host.reset())
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(container_error)?;
        removed.append(&mut more);
        let net = self.net.clone();
        if let Ok(mut n) = tokio::task::spawn_blocking(move || net.reset()).await {
            removed.append(&mut n);
        }
        Ok(removed)
    }

    /// Stop background tasks and close the snapshot store; sandboxes keep
    /// running. When none is left, the host-wide setup (template mounts,
    /// cgroup parent) is undone too.
    pub async fn shutdown(&self) {
        self.mcp.shutdown();
        self.stop_boundary();
        self.snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = self
            .monitor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            h.abort();
        }
        let idle = self
            .sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        // Sandboxes left running keep their firewall rules while the daemon
        // is down; with none left, the table and links go too.
        let net = self.net.clone();
        let _ = tokio::task::spawn_blocking(move || net.close(idle)).await;
        if idle {
            let host = self.host.clone();
            let info = self.store_info.clone();
            let released = tokio::task::spawn_blocking(move || {
                let r = host.release_if_idle();
                // The loop image goes last: the layer mounts above were on it.
                if r.is_ok()
                    && host.leftovers().is_empty()
                    && let Err(e) = info.release()
                {
                    tracing::warn!(error = %e, "unmounting the snapshot store's image");
                }
                r
            })
            .await;
            match released {
                Ok(Ok(true)) => tracing::debug!("no sandbox left: host-wide setup removed"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "removing the host-wide setup"),
                Err(e) => tracing::warn!(error = %e, "removing the host-wide setup"),
            }
        }
    }
}
