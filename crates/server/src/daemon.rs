//! `hull serve`: the daemon's process life. Lock the state directory (one
//! daemon per state directory), bind the unix socket (one daemon per
//! socket; a stale socket file is replaced, a live one refused), open the
//! runtime (which re-adopts running sandboxes), make or reuse the bearer
//! token, serve the unix socket and optionally TCP, and on SIGTERM/SIGINT
//! stop accepting, let requests finish for up to [`SHUTDOWN_GRACE`], stop
//! the runtime's background work and remove the socket file. Sandboxes keep
//! running; the next daemon re-adopts them.
//!
//! Exclusion uses `flock` on `<state>/daemon.lock` and `<socket>.lock`
//! (left in place at exit: removing a lock file would race a starting
//! daemon).
//!
//! Limits: the token file is written whether or not TCP is enabled (so it
//! never appears later with a different owner or mode); an exec stream
//! still open after the grace period is cut, and its command with it (the
//! guest agent kills a foreground command when its connection closes;
//! background processes keep running).

use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hull_api::ApiError;
use hull_runtime::{Runtime, RuntimeConfig};

use crate::{Auth, ServerConfig, router_until};

/// The token file's name in the state directory.
pub const TOKEN_FILE: &str = "token";
/// The lock that keeps a second daemon off a state directory.
pub const STATE_LOCK_FILE: &str = "daemon.lock";
/// How long in-flight requests may run on after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Mode of the unix socket: owner and group may connect.
pub const SOCKET_MODE: u32 = 0o660;
/// Mode of a socket directory the daemon creates.
pub const SOCKET_DIR_MODE: u32 = 0o755;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "the guest agent binary {path} is missing (it is installed next to `hull`; set HULL_GUEST_BINARY to override)"
    )]
    GuestMissing { path: PathBuf },
    #[error("another daemon is serving on {socket}")]
    SocketBusy { socket: PathBuf },
    #[error("{path} exists and is not a socket: refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("another daemon is using the state directory {state_dir}")]
    StateBusy { state_dir: PathBuf },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install a handler for {signal}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "token file {path} is malformed (expected 64 hex digits): delete it and restart to make a new one"
    )]
    BadToken { path: PathBuf },
    #[error("cannot make a random token")]
    Random(#[source] getrandom::Error),
    #[error("cannot open the runtime: {0}")]
    Runtime(ApiError),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ServeError {
    let path = path.to_path_buf();
    move |source| ServeError::Io {
        action,
        path,
        source,
    }
}

/// The token in `path`, if the file exists; a group- or world-readable one
/// is tightened to 0600 first.
fn read_token(path: &Path) -> Result<Option<String>, ServeError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("inspect", path)(e)),
    };
    if !meta.file_type().is_file() {
        return Err(ServeError::BadToken {
            path: path.to_path_buf(),
        });
    }
    if meta.mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", meta.mode() & 0o777), "token file was readable by others; setting mode 0600");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err("set the mode of", path))?;
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(1024).read_to_string(&mut text))
        .map_err(io_err("read", path))?;
    let t = text.trim();
    if t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ServeError::BadToken {
            path: path.to_path_buf(),
        });
    }
    Ok(Some(t.to_string()))
}

/// The bearer token in `<state_dir>/token`: made at first start (32 random
/// bytes as hex, mode 0600, published with an exclusive link so two
/// starting daemons agree on one token), reused afterwards.
pub fn ensure_token(state_dir: &Path) -> Result<String, ServeError> {
    let path = state_dir.join(TOKEN_FILE);
    if let Some(t) = read_token(&path)? {
        return Ok(t);
    }
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(ServeError::Random)?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = state_dir.join(format!(".token.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(token.as_bytes())?;
            f.sync_all()
        })
        .map_err(io_err("write", &tmp))
        .and_then(|()| match std::fs::hard_link(&tmp, &path) {
            Ok(()) => Ok(Some(token)),
            // Another daemon published first: use its token.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(io_err("create", &path)(e)),
        });
    let _ = std::fs::remove_file(&tmp);
    match written? {
        Some(t) => Ok(t),
        None => read_token(&path)?.ok_or(ServeError::BadToken { path }),
    }
}

/// Hold an exclusive lock on `path` (created if missing) for the returned
/// file's life; `None` when another process holds it.
fn try_lock(path: &Path) -> Result<Option<std::fs::File>, ServeError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io_err("open", path))?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err("lock", path)(e)),
    }
}

/// The bound unix socket; dropping it removes the socket file (if it is
/// still the one this daemon bound) and releases the socket lock.
struct SocketFile {
    path: PathBuf,
    ino: u64,
    _lock: std::fs::File,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Bind the unix socket at `path`: create its directory (0755) if missing;
/// refuse when another daemon holds it; replace a stale socket file; bind
/// under a temporary name, set mode 0660, then rename into place, so the
/// socket is never reachable with a looser mode.
fn bind_unix(path: &Path) -> Result<(tokio::net::UnixListener, SocketFile), ServeError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io_err("bind", path)(std::io::ErrorKind::InvalidInput.into()))?
        .to_string_lossy()
        .into_owned();
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(SOCKET_DIR_MODE)
            .create(&dir)
            .map_err(io_err("create", &dir))?;
        // The umask may have narrowed it.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(SOCKET_DIR_MODE))
            .map_err(io_err("set the mode of", &dir))?;
    }
    let busy = || ServeError::SocketBusy {
        socket: path.to_path_buf(),
    };
    let lock = try_lock(&dir.join(format!("{name}.lock")))?.ok_or_else(busy)?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            // A daemon that predates the lock file could still be there.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(busy());
            }
            tracing::info!(socket = %path.display(), "removing a stale socket file");
            std::fs::remove_file(path).map_err(io_err("remove the stale socket", path))?;
        }
        Ok(_) => {
            return Err(ServeError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect", path)(e)),
    }
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let bound = (|| {
        let l = std::os::unix::net::UnixListener::bind(&tmp).map_err(io_err("listen on", &tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(io_err("set the mode of", &tmp))?;
        let ino = std::fs::symlink_metadata(&tmp)
            .map_err(io_err("inspect", &tmp))?
            .ino();
        std::fs::rename(&tmp, path).map_err(io_err("move the socket to", path))?;
        l.set_nonblocking(true).map_err(io_err("listen on", path))?;
        let l = tokio::net::UnixListener::from_std(l).map_err(io_err("listen on", path))?;
        Ok((l, ino))
    })();
    let (listener, ino) = bound.inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok((
        listener,
        SocketFile {
            path: path.to_path_buf(),
            ino,
            _lock: lock,
        },
    ))
}

/// Resolves at the first SIGTERM or SIGINT. Handlers are installed before
/// this returns, so a signal that comes early is not lost.
fn signals() -> Result<impl Future<Output = ()> + Send, ServeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|source| ServeError::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|source| ServeError::Signal {
        signal: "SIGINT",
        source,
    })?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
}

/// `hull serve`: run the daemon until SIGTERM or SIGINT.
pub async fn run(cfg: ServerConfig) -> Result<(), ServeError> {
    let stop = signals()?;
    serve(cfg, stop).await
}

/// Run the daemon until `shutdown` resolves (what [`run`] does with the
/// signals; tests pass their own future).
pub async fn serve(
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    if !cfg.guest_binary.is_file() {
        return Err(ServeError::GuestMissing {
            path: cfg.guest_binary.clone(),
        });
    }
    std::fs::create_dir_all(&cfg.state_dir).map_err(io_err("create", &cfg.state_dir))?;
    let _state_lock =
        try_lock(&cfg.state_dir.join(STATE_LOCK_FILE))?.ok_or_else(|| ServeError::StateBusy {
            state_dir: cfg.state_dir.clone(),
        })?;
    let (unix_listener, socket_file) = bind_unix(&cfg.socket)?;
    let token = ensure_token(&cfg.state_dir)?;
    let tcp_listener = match cfg.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Listen { addr, source })?,
        ),
        None => None,
    };
    let rt = Runtime::open(RuntimeConfig {
        state_dir: cfg.state_dir.clone(),
        guest_binary: cfg.guest_binary.clone(),
        defaults: cfg.defaults,
        snapshots: cfg.snapshots,
        network: cfg.network.clone(),
    })
    .await
    .map_err(ServeError::Runtime)?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let mut servers = tokio::task::JoinSet::new();
    // Ends MCP sessions (their open streams) when the daemon stops.
    let mcp_stop = tokio_util::sync::CancellationToken::new();
    let unix_app = router_until(
        rt.clone(),
        Auth::None,
        cfg.max_upload_bytes,
        mcp_stop.clone(),
    );
    servers.spawn(
        axum::serve(unix_listener, unix_app)
            .with_graceful_shutdown(stopped(stop_rx.clone()))
            .into_future(),
    );
    if let Some(l) = tcp_listener {
        let addr = l.local_addr().map_err(|source| ServeError::Listen {
            addr: cfg.listen.unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
            source,
        })?;
        let app = router_until(
            rt.clone(),
            Auth::Bearer(Arc::new(token)),
            cfg.max_upload_bytes,
            mcp_stop.clone(),
        );
        // No Nagle: a streamed answer's small writes (an exec's last event,
        // a Connect end-of-stream) would otherwise wait ~40 ms for the
        // client's delayed ACK.
        let l = axum::serve::ListenerExt::tap_io(l, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        servers.spawn(
            axum::serve(l, app)
                .with_graceful_shutdown(stopped(stop_rx.clone()))
                .into_future(),
        );
        tracing::info!(%addr, "serving TCP (bearer token required)");
        eprintln!(
            "hull: also serving on http://{addr} (bearer token in {})",
            cfg.state_dir.join(TOKEN_FILE).display()
        );
    }
    if let Some(f) = &cfg.config_file {
        tracing::info!(config = %f.display(), "settings from the config file");
    }
    tracing::info!(socket = %cfg.socket.display(), state = %cfg.state_dir.display(), "serving");
    eprintln!(
        "hull: serving on {} (state {})",
        cfg.socket.display(),
        cfg.state_dir.display()
    );

    // Until the shutdown signal, or a listener failing.
    let mut failed = None;
    tokio::select! {
        () = shutdown => {}
        Some(r) = servers.join_next() => {
            if let Ok(Err(e)) = r {
                tracing::error!(error = %e, "a listener failed; shutting down");
                failed = Some(e);
            }
        }
    }
    eprintln!("hull: shutting down (sandboxes keep running)");
    let _ = stop_tx.send(true);
    mcp_stop.cancel();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "requests still running after {} s are cut",
            SHUTDOWN_GRACE.as_secs()
        );
        servers.shutdown().await;
    }
    rt.shutdown().await;
    drop(socket_file);
    match failed {
        Some(source) => Err(ServeError::Io {
            action: "serve on",
            path: cfg.socket.clone(),
            source,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_made_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let t = ensure_token(dir.path()).unwrap();
        assert_eq!(t.len(), 64);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        let path = dir.path().join(TOKEN_FILE);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(ensure_token(dir.path()).unwrap(), t, "reused");
        // A loosened mode is tightened; a corrupt token is an error, not
        // silently replaced (clients hold the old one).
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(ensure_token(dir.path()).unwrap(), t);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&path, "short").unwrap();
        assert!(matches!(
            ensure_token(dir.path()),
            Err(ServeError::BadToken { .. })
        ));
        // A symlink is refused, not followed.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
        assert!(matches!(
            ensure_token(dir.path()),
            Err(ServeError::BadToken { .. })
        ));
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(TOKEN_FILE)]);
    }

    #[tokio::test]
    async fn socket_binding_refuses_live_and_replaces_stale() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("run/hull/h.sock");
        let (l, guard) = bind_unix(&sock).unwrap();
        let meta = std::fs::metadata(&sock).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, SOCKET_MODE);
        assert_eq!(
            std::fs::metadata(sock.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            SOCKET_DIR_MODE
        );
        // A second bind while the first holds it.
        assert!(matches!(
            bind_unix(&sock),
            Err(ServeError::SocketBusy { .. })
        ));
        drop(l);
        drop(guard);
        assert!(!sock.exists(), "the socket file is removed");
        // A stale socket file (nobody listening) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        assert!(sock.exists());
        let (_l, guard) = bind_unix(&sock).unwrap();
        drop(guard);
        // A regular file is never deleted.
        std::fs::write(&sock, "precious").unwrap();
        assert!(matches!(
            bind_unix(&sock),
            Err(ServeError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read_to_string(&sock).unwrap(), "precious");
    }
}
