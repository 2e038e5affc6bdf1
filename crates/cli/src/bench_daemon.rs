//! A private daemon for `hull bench --snapshots`: this executable run as
//! `hull serve --state-dir DIR/state --socket DIR/hull.sock
//! --snapshot-backend B --config DIR/config.toml` (an empty config file,
//! so the host's `/etc/hull/config.toml` does not apply), in its own
//! process group with its log in `DIR/daemon.log`. Stopping it resets it
//! (`POST /v1/system/reset`), sends SIGTERM, waits, then checks that
//! nothing is left mounted under `DIR` and no loop device is backed by a
//! file there before removing `DIR`. Limits: if the bench is killed with
//! SIGKILL the daemon keeps running (stop it with SIGTERM); when something
//! is left behind `DIR` is kept (removing it would reach into the mounts)
//! and the stop fails, naming what is left.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hull_api::Health;
use hyper::Method;

use crate::client::{Client, Endpoint};

/// How long the daemon may take to answer after its start (a btrfs image
/// is made and mounted at the first start).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it may take to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

pub struct PrivateDaemon {
    pub client: Client,
    pub backend: String,
    /// Everything of this daemon: state, socket, config, log.
    pub dir: PathBuf,
    child: tokio::process::Child,
}

/// The last `n` lines of a log file.
fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Loop devices whose backing file lies under `dir`, as `loopN: FILE`.
pub fn loops_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(f) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        let f = f.trim_end_matches('\n');
        // A deleted backing file shows as "PATH (deleted)".
        if Path::new(f.trim_end_matches(" (deleted)")).starts_with(dir) {
            out.push(format!("{name}: {f}"));
        }
    }
    out.sort();
    out
}

/// Remove `dir` unless something is mounted under it or a loop device is
/// backed by a file in it (removing it would then reach into the mounts).
pub fn remove_if_clean(dir: &Path) -> anyhow::Result<()> {
    let mounts = hull_sys::mount::mounts_under(dir);
    let loops = loops_under(dir);
    if !mounts.is_empty() || !loops.is_empty() {
        bail!(
            "left behind (kept {}): mounts {mounts:?}, loop devices {loops:?}",
            dir.display()
        );
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Is there an executable `name` in PATH or the usual sbin directories?
pub fn have_program(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .any(|d| d.join(name).is_file())
}

impl PrivateDaemon {
    /// Start a daemon with `backend` in `dir` (created; must not exist).
    pub async fn start(dir: &Path, backend: &str) -> anyhow::Result<PrivateDaemon> {
        std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
        let state = dir.join("state");
        let socket = dir.join("hull.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            "# hull bench --snapshots: a private daemon with the built-in defaults\n",
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let log_path = dir.join("daemon.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = tokio::process::Command::new(
            std::env::current_exe().context("locating the running executable")?,
        );
        cmd.arg("serve")
            .arg("--state-dir")
            .arg(&state)
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(&config)
            .arg("--snapshot-backend")
            .arg(backend)
            .env_remove("HULL_URL")
            .env_remove("HULL_STATE_DIR")
            .env_remove("HULL_SNAPSHOT_BACKEND")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            // Our own Ctrl-C handling stops it in order.
            .process_group(0);
        let mut child = cmd.spawn().context("starting `hull serve`")?;
        let client = Client {
            endpoint: Endpoint::Unix(socket),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if client
                .call::<Health>(Method::GET, "/v1/health", None::<&()>)
                .await
                .is_ok()
            {
                break;
            }
            if let Ok(Some(st)) = child.try_wait() {
                let tail = log_tail(&log_path, 5);
                let kept = match remove_if_clean(dir) {
                    Ok(()) => String::new(),
                    Err(e) => format!("\n{e}"),
                };
                bail!("the {backend} daemon exited ({st}):\n{tail}{kept}");
            }
            if Instant::now() > deadline {
                let d = PrivateDaemon {
                    client,
                    backend: backend.into(),
                    dir: dir.into(),
                    child,
                };
                let _ = d.stop().await;
                bail!(
                    "the {backend} daemon did not answer within {} s (log: {})",
                    START_TIMEOUT.as_secs(),
                    log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(PrivateDaemon {
            client,
            backend: backend.into(),
            dir: dir.into(),
            child,
        })
    }

    /// Reset and stop the daemon, check that it left nothing mounted or
    /// attached, and remove its directory.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let reset = self
            .client
            .call::<serde_json::Value>(Method::POST, "/v1/system/reset", None::<&()>)
            .await;
        if let Err(e) = &reset {
            eprintln!("{}: system reset failed: {e}", self.backend);
        }
        let mut notes = Vec::new();
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(st)) if st.success() => {}
            Ok(Ok(st)) => notes.push(format!("the daemon exited with {st}")),
            Ok(Err(e)) => notes.push(format!("waiting for the daemon: {e}")),
            Err(_) => {
                let _ = self.child.kill().await;
                notes.push(format!(
                    "the daemon did not stop within {} s of SIGTERM and was killed",
                    STOP_TIMEOUT.as_secs()
                ));
            }
        }
        // A loop device with autoclear goes a moment after its unmount
        // (seconds on a loaded machine).
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && !(hull_sys::mount::mounts_under(&self.dir).is_empty()
                && loops_under(&self.dir).is_empty())
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let tail = log_tail(&self.dir.join("daemon.log"), 5);
        if let Err(e) = remove_if_clean(&self.dir) {
            notes.push(format!("{e:#}"));
        }
        if !notes.is_empty() {
            bail!(
                "{} daemon: {}\nlast log lines:\n{tail}",
                self.backend,
                notes.join("; ")
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_under_a_fresh_dir() {
        let d = tempfile::tempdir().unwrap();
        assert!(loops_under(d.path()).is_empty());
        assert!(hull_sys::mount::mounts_under(d.path()).is_empty());
    }

    #[test]
    fn tail_of_a_log() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log");
        assert_eq!(log_tail(&log, 3), "");
        std::fs::write(&log, "a\nb\n\nc\nd\n").unwrap();
        assert_eq!(log_tail(&log, 2), "c\nd");
        assert_eq!(log_tail(&log, 9), "a\nb\nc\nd");
    }

    #[test]
    fn programs() {
        assert!(have_program("sh"));
        assert!(!have_program("no-such-program-hull-bench"));
    }
}
