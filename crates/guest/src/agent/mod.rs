//! The agent: serves the host <-> guest protocol (crate `hull-proto`) on a
//! unix socket, one operation per connection, many connections at once.
//!
//! Processes ([`exec`]) run in their own session and process group; they are
//! reaped from a registry on `SIGCHLD` (as PID 1 every orphan is reaped too)
//! and their output streams back as timestamped frames, or into a bounded
//! ring buffer for background processes. File operations ([`files`],
//! [`tarball`]) resolve every path as if chrooted at [`AgentConfig::root`]
//! with `openat2(RESOLVE_IN_ROOT)`, so `..` and symlinks never leave it.
//! [`tcp`] tunnels a TCP connection to a port inside the sandbox.
//! [`shell`] keeps persistent `bash` sessions; [`kernel`] keeps Jupyter
//! kernels for the code interpreter; [`watch`] streams a directory's
//! changes (inotify).
//!
//! Limits: exec paths (program, working directory) are resolved in the
//! agent's own mount namespace, not under `root` (inside a sandbox the two
//! are the same, `/`); users and groups come from `<root>/etc/passwd` and
//! `<root>/etc/group` only (no NSS). A connection that sends a malformed or
//! oversize frame is answered with an error where possible and closed; it
//! never affects other connections.

mod exec;
mod files;
mod kernel;
mod paths;
mod shell;
mod tarball;
mod tcp;
mod user;
mod watch;

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hull_proto::{
    Frame, GuestError, GuestErrorKind, MIN_PROTOCOL_VERSION, Op, PROTOCOL_VERSION, Request,
    Response, read_frame, write_frame,
};
use tokio::net::UnixStream;

/// How the agent runs processes and where its file operations are rooted.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Directory treated as the sandbox root for file operations ("/" inside
    /// a sandbox; a temp dir in tests).
    pub root: PathBuf,
    /// Environment every process starts with (PATH, HOME... before request
    /// env is applied).
    pub base_env: Vec<(String, String)>,
    /// User processes run as when a request names none.
    pub default_user: Option<String>,
    /// Working directory when a request names none.
    pub default_cwd: Option<String>,
    /// True when running as PID 1: reap orphans, forward SIGTERM, SIGINT,
    /// SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to the process groups started.
    pub pid1: bool,
}

/// How long a new connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Threads for blocking file operations.
const MAX_BLOCKING_THREADS: usize = 64;

/// Shared state of one agent.
pub(crate) struct Agent {
    config: AgentConfig,
    /// The root directory (`O_PATH`), opened once.
    root: OwnedFd,
    procs: exec::Registry,
    shells: shell::Shells,
    kernels: kernel::Kernels,
    watches: watch::Watches,
}

/// Serve the protocol on `listener` until the process ends. Returns only if
/// the runtime or the root directory cannot be set up.
pub fn serve(listener: std::os::unix::net::UnixListener, config: AgentConfig) -> io::Result<()> {
    let root = paths::open_root(&config.root)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()?;
    rt.block_on(async move {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let pid1 = config.pid1;
        let agent = Arc::new(Agent {
            config,
            root,
            procs: exec::Registry::default(),
            shells: shell::Shells::default(),
            kernels: kernel::Kernels::default(),
            watches: watch::Watches::default(),
        });
        exec::start_reaper(agent.clone(), pid1)?;
        if pid1 {
            exec::start_signal_forwarding(agent.clone())?;
        }
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let agent = agent.clone();
                    tokio::spawn(async move { agent.handle(stream).await });
                }
                Err(e) => {
                    // Out of descriptors or memory: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    })
}

/// Only the version field, to answer requests we cannot parse in full.
#[derive(serde::Deserialize)]
struct VersionOnly {
    v: u32,
}

fn version_error(v: u32) -> GuestError {
    GuestError::new(
        GuestErrorKind::InvalidArgument,
        format!(
            "protocol version {v} is not supported: this agent speaks versions {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}; \
             ask with `hello` and use a version in that range"
        ),
    )
}

impl Agent {
    async fn handle(self: Arc<Self>, mut conn: UnixStream) {
        let frame = match tokio::time::timeout(REQUEST_TIMEOUT, read_frame(&mut conn)).await {
            Ok(Ok(f)) => f,
            Ok(Err(hull_proto::ProtoError::Closed)) | Err(_) => return,
            Ok(Err(e)) => {
                send_error(
                    &mut conn,
                    GuestError::new(
                        GuestErrorKind::InvalidArgument,
                        format!("bad request frame: {e}"),
                    ),
                )
                .await;
                return;
            }
        };
        let req: Request = match frame.parse() {
            Ok(r) => r,
            Err(e) => {
                let err = match frame.parse::<VersionOnly>() {
                    Ok(VersionOnly { v })
                        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&v) =>
                    {
                        version_error(v)
                    }
                    _ => GuestError::new(
                        GuestErrorKind::InvalidArgument,
                        format!("malformed request: {e}"),
                    ),
                };
                send_error(&mut conn, err).await;
                return;
            }
        };
        // `hello` is how a host learns which versions to use, so it is
        // answered whatever version the request carries.
        if let Op::Hello { .. } = req.op {
            let hello = Response::Hello {
                min: MIN_PROTOCOL_VERSION,
                max: PROTOCOL_VERSION,
                agent: env!("CARGO_PKG_VERSION").to_string(),
            };
            let _ = send(&mut conn, &hello).await;
            return;
        }
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&req.v) {
            send_error(&mut conn, version_error(req.v)).await;
            return;
        }
        match req.op {
            Op::Hello { .. } => {}
            Op::Exec(spec) => exec::exec(self, conn, spec).await,
            Op::Attach { id, replay } => exec::attach(self, conn, &id, replay).await,
            Op::Procs => {
                let procs = self.procs.list();
                let _ = send(&mut conn, &Response::Procs { procs }).await;
            }
            Op::Signal { id, signal } => {
                let resp = match self.procs.signal(&id, signal) {
                    Ok(()) => Response::Ok,
                    Err(e) => Response::Error(e),
                };
                let _ = send(&mut conn, &resp).await;
            }
            Op::Connect { port, host } => tcp::connect(conn, port, host).await,
            op @ (Op::ShellOpen(_)
            | Op::ShellRun(_)
            | Op::ShellSend(_)
            | Op::ShellClose { .. }
            | Op::ShellList) => shell::serve(self, conn, op).await,
            op @ (Op::KernelStart { .. }
            | Op::CodeRun(_)
            | Op::CodeRunStream(_)
            | Op::KernelInterrupt { .. }
            | Op::KernelRestart { .. }
            | Op::KernelStop { .. }
            | Op::KernelList) => kernel::serve(self, conn, op).await,
            Op::WatchStart { path, recursive } => watch::serve(self, conn, path, recursive).await,
            op => {
                // File operations use blocking *at system calls: run them on
                // the blocking pool over a blocking socket.
                let conn = match conn
                    .into_std()
                    .and_then(|c| c.set_nonblocking(false).map(|()| c))
                {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "preparing a connection for a file operation");
                        return;
                    }
                };
                let agent = self.clone();
                let _ = tokio::task::spawn_blocking(move || files::serve(&agent, conn, op)).await;
            }
        }
    }
}

/// Send one control message.
pub(crate) async fn send(
    conn: &mut (impl tokio::io::AsyncWrite + Unpin),
    resp: &Response,
) -> Result<(), hull_proto::ProtoError> {
    write_frame(conn, &Frame::control(resp)?).await
}

/// Send an error (best effort: the connection closes right after anyway).
pub(crate) async fn send_error(conn: &mut (impl tokio::io::AsyncWrite + Unpin), err: GuestError) {
    let _ = send(conn, &Response::Error(err)).await;
}

/// Map an OS error to the protocol's error kinds, naming what failed.
pub(crate) fn os_error(err: io::Error, what: impl std::fmt::Display) -> GuestError {
    let kind = match err.raw_os_error() {
        Some(libc::ENOENT) => GuestErrorKind::NotFound,
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => GuestErrorKind::PermissionDenied,
        Some(libc::EEXIST | libc::ENOTEMPTY | libc::EBUSY | libc::ETXTBSY) => {
            GuestErrorKind::Conflict
        }
        Some(
            libc::ENOSPC
            | libc::EDQUOT
            | libc::EMFILE
            | libc::ENFILE
            | libc::EFBIG
            | libc::ENOMEM
            | libc::EAGAIN,
        ) => GuestErrorKind::ResourceExhausted,
        Some(
            libc::EINVAL
            | libc::ENOTDIR
            | libc::EISDIR
            | libc::ELOOP
            | libc::EXDEV
            | libc::ENAMETOOLONG
            | libc::ENXIO
            | libc::E2BIG
            | libc::ENOEXEC,
        ) => GuestErrorKind::InvalidArgument,
        _ => GuestErrorKind::Internal,
    };
    let detail = match err.raw_os_error() {
        Some(libc::EXDEV) => "the path leads outside the allowed directory".to_string(),
        _ => err.to_string(),
    };
    GuestError::new(kind, format!("{what}: {detail}"))
}
