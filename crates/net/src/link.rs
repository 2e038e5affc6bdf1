//! Links, addresses and routes, set with iproute2's `ip -batch -` and
//! `/proc/sys/net` writes, in whichever network namespace the calling
//! thread is in (see `hull_sys::netns`). Also the host-wide forwarding
//! switches networked sandboxes need.
//!
//! Why `ip` and not rtnetlink: all of this runs off the create path (the
//! pool is filled in the background, teardown is asynchronous), where one
//! `ip` process per namespace side (~2 ms) costs nothing a caller sees, and
//! it keeps a large async netlink stack out of the build. A command that
//! fails reports `ip`'s own message.
//!
//! Limits: needs the `ip` binary (iproute2) on PATH.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Errors of the network host side.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("{tool} failed: {message}")]
    Tool { tool: &'static str, message: String },
    #[error("{what}")]
    Sys {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no free sandbox network slot (all {0} in use)")]
    Exhausted(u32),
    #[error("invalid policy: {0}")]
    Policy(String),
}

impl NetError {
    pub(crate) fn io(
        what: &'static str,
        path: impl AsRef<Path>,
        source: std::io::Error,
    ) -> NetError {
        NetError::Io {
            what,
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// Run `ip -batch -` with `script` (one command per line) in the calling
/// thread's network namespace. With `force`, go on after a failed line
/// (for best-effort cleanup).
pub fn ip_batch(script: &str, force: bool) -> Result<(), NetError> {
    let mut cmd = Command::new("ip");
    if force {
        cmd.arg("-force");
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetError::Sys {
            what: "running ip (install iproute2)",
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| NetError::Sys {
        what: "waiting for ip",
        source,
    })?;
    if out.status.success() || force {
        Ok(())
    } else {
        Err(NetError::Tool {
            tool: "ip",
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Write a sysctl of the calling thread's network namespace
/// (`net/ipv4/ip_forward` style path under /proc/sys).
pub fn sysctl(key: &str, value: &str) -> Result<(), NetError> {
    let path = Path::new("/proc/sys").join(key);
    std::fs::write(&path, value).map_err(|e| NetError::io("writing", &path, e))
}

/// Read a sysctl (trimmed), if present.
pub fn sysctl_get(key: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(key))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Turn on IPv4 and IPv6 forwarding in the host namespace (needed for
/// `open` and CIDR rules). IPv6: `conf.all.forwarding=1` makes every
/// interface with `accept_ra=1` stop accepting router advertisements, which
/// would silently lose a SLAAC host's default route when it expires; so
/// those interfaces are first switched to `accept_ra=2` (accept them even
/// when forwarding), which keeps the host's addressing as it was.
pub fn enable_forwarding() -> Result<(), NetError> {
    if sysctl_get("net/ipv4/ip_forward").as_deref() != Some("1") {
        sysctl("net/ipv4/ip_forward", "1")?;
    }
    if sysctl_get("net/ipv6/conf/all/forwarding").as_deref() != Some("1") {
        if let Ok(dir) = std::fs::read_dir("/proc/sys/net/ipv6/conf") {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name == "all" || name == "lo" {
                    continue;
                }
                let key = format!("net/ipv6/conf/{name}/accept_ra");
                if sysctl_get(&key).as_deref() == Some("1") {
                    let _ = sysctl(&key, "2");
                }
            }
        }
        sysctl("net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}

/// Names of the host's links starting with `prefix`.
pub fn links_with_prefix(prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) {
                out.push(name);
            }
        }
    }
    out.sort();
    out
}
