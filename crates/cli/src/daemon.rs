//! The daemon side of the binary: `hull serve`, and the on-demand start of a
//! background daemon by client commands.
//!
//! Auto-start happens only for the local unix socket (never for `HULL_URL`),
//! and only when nothing listens there (the socket file is missing or
//! refuses connections). The daemon is the current executable run as
//! `hull serve --socket S`, in its own process group (a terminal's Ctrl-C
//! does not reach it), with stdin/stdout on /dev/null and stderr appended
//! to `<state-dir>/daemon.log`; it outlives the command that started it.
//! Concurrent clients serialize on `<state-dir>/autostart.lock` (an
//! advisory lock), so they start one daemon between them; a daemon that
//! loses a race anyway (it refuses a live socket) makes its client wait for
//! the winner. The state directory is
//! `HULL_STATE_DIR` (meant for tests and side-by-side daemons), else the
//! config file's `state_dir`, else `/var/lib/hull`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use hull_api::Health;
use hull_server::config::{DEFAULT_SOCKET, DEFAULT_STATE_DIR};
use hyper::Method;

use crate::client::{Client, ClientError, Endpoint};

/// How long a client waits for an auto-started daemon to answer.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// In the state directory: held by a client while it starts a daemon.
const START_LOCK_FILE: &str = "autostart.lock";

/// The config file of this host, if any (`/etc/hull/config.toml`). Clients
/// read it for the socket and state directory; a broken file is left for
/// the daemon to report.
fn host_config() -> hull_server::config::FileConfig {
    hull_server::config::FileConfig::load(None).unwrap_or_default()
}

/// The socket a client talks to: `--socket`/`HULL_SOCKET`, else the config
/// file's, else [`DEFAULT_SOCKET`].
pub fn client_socket(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| host_config().socket)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

fn env_state_dir() -> Option<PathBuf> {
    std::env::var_os("HULL_STATE_DIR")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
}

/// `hull serve`: run the daemon until SIGTERM or SIGINT.
pub async fn serve(
    socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
    config: Option<PathBuf>,
    snapshot_backend: Option<String>,
    net: crate::net::ServeNetFlags,
) -> anyhow::Result<()> {
    let crate::net::ServeNetFlags {
        net_range,
        net_range6,
        dns,
        upstream_ca,
    } = net;
    let snapshot_backend = snapshot_backend
        .map(|b| hull_runtime::BackendChoice::parse(&b))
        .transpose()
        .map_err(|e| anyhow!("--snapshot-backend: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HULL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let guest_binary = match std::env::var_os("HULL_GUEST_BINARY").filter(|s| !s.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .context("locating the running executable")?
            .parent()
            .map(|d| d.join("hull-guest"))
            .ok_or_else(|| anyhow!("cannot locate hull-guest next to hull"))?,
    };
    let cfg = hull_server::config::resolve(hull_server::config::Overrides {
        state_dir: state_dir.or_else(env_state_dir),
        socket,
        listen,
        config,
        guest_binary,
        snapshot_backend,
        net_range,
        net_range6,
        dns,
        upstream_ca,
    })?;
    Ok(hull_server::run(cfg).await?)
}

/// Does something listen on the socket? `Err` for failures that starting a
/// daemon would not cure (permissions, a path that is not a socket...).
async fn listening(client: &Client) -> anyhow::Result<bool> {
    let Endpoint::Unix(sock) = &client.endpoint else {
        return Ok(client.connect().await.is_ok());
    };
    match client.connect().await {
        Ok(_) => Ok(true),
        Err(ClientError::Unreachable { source, .. })
            if matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            use std::os::unix::fs::FileTypeExt;
            match std::fs::symlink_metadata(sock) {
                Ok(m) if !m.file_type().is_socket() => {
                    bail!("{} exists and is not a socket", sock.display())
                }
                _ => Ok(false),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// The last non-empty line of the daemon's log, to explain a failed start.
fn last_log_line(log: &Path) -> String {
    std::fs::read_to_string(log)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// Start a daemon in the background when none answers on the local socket.
pub async fn ensure(client: &Client) -> anyhow::Result<()> {
    let Endpoint::Unix(sock) = &client.endpoint else {
        return Ok(());
    };
    if listening(client).await? {
        return Ok(());
    }
    let state_dir = env_state_dir()
        .or_else(|| host_config().state_dir)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    // One starter at a time (the daemon itself also refuses a second one).
    let lock_path = state_dir.join(START_LOCK_FILE);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
        .await?
        .with_context(|| format!("locking {}", lock_path.display()))?;
    // Another client may have started it while we waited for the lock.
    if listening(client).await? {
        return Ok(());
    }
    let log_path = state_dir.join("daemon.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    eprintln!(
        "hull: starting the daemon on {} (log: {})",
        sock.display(),
        log_path.display()
    );
    let mut cmd = std::process::Command::new(
        std::env::current_exe().context("locating the running executable")?,
    );
    cmd.arg("serve")
        .arg("--socket")
        .arg(sock)
        .arg("--state-dir")
        .arg(&state_dir)
        .env_remove("HULL_URL");
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    let mut child = cmd.spawn().context("starting `hull serve`")?;
    let mut exited = None;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if client
            .call::<Health>(Method::GET, "/v1/health", None::<&()>)
            .await
            .is_ok()
        {
            // Reap the daemon if it exits while we still run; otherwise it
            // outlives us (and is reparented).
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            drop(lock);
            return Ok(());
        }
        if exited.is_none()
            && let Ok(Some(st)) = child.try_wait()
        {
            // A daemon started outside our lock (`hull serve` by hand, a
            // client with another state directory) won the race: wait for
            // it to answer.
            if last_log_line(&log_path).contains("another daemon") {
                exited = Some(st);
            } else {
                bail!(
                    "the daemon exited ({st}): {} (log: {})",
                    last_log_line(&log_path),
                    log_path.display()
                );
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the daemon did not answer within {} s{} (log: {})",
                START_TIMEOUT.as_secs(),
                exited.map(|st| format!(" ({st})")).unwrap_or_default(),
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(p: &Path) -> Client {
        Client {
            endpoint: Endpoint::Unix(p.to_path_buf()),
        }
    }

    #[tokio::test]
    async fn what_counts_as_listening() {
        let dir = tempfile::tempdir().unwrap();
        // Missing: start one.
        assert!(
            !listening(&unix(&dir.path().join("none.sock")))
                .await
                .unwrap()
        );
        // A stale socket file nobody listens on: start one.
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert!(!listening(&unix(&stale)).await.unwrap());
        // A live one.
        let live = dir.path().join("live.sock");
        let _l = std::os::unix::net::UnixListener::bind(&live).unwrap();
        assert!(listening(&unix(&live)).await.unwrap());
        // A regular file in its place is an error, never replaced by a daemon.
        let file = dir.path().join("file.sock");
        std::fs::write(&file, "data").unwrap();
        let e = listening(&unix(&file)).await.unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
    }

    #[test]
    fn log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("daemon.log");
        assert_eq!(last_log_line(&log), "");
        std::fs::write(&log, "one\nError: two\n\n  \n").unwrap();
        assert_eq!(last_log_line(&log), "Error: two");
    }
}
