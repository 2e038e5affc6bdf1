//! The guest agent, `hull-guest`: PID 1 of every sandbox.
//!
//! Two modes: `init` sets up a container from a plan the host sends (mounts,
//! pivot_root, limits, seccomp) and then serves; `agent` serves on a socket
//! without any setup (used by tests and, later, inside VMs).
#![forbid(unsafe_code)]

pub mod agent;
pub mod init;

use std::path::PathBuf;

const USAGE: &str = "usage: hull-guest init            (started by the hull daemon)\n       hull-guest agent --socket PATH [--root DIR]";

/// Entry point of the `hull-guest` binary; returns the exit code.
pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("init") => init::run(),
        Some("agent") => {
            let mut socket = None;
            let mut root = PathBuf::from("/");
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                match (a.as_str(), it.next()) {
                    ("--socket", Some(v)) => socket = Some(PathBuf::from(v)),
                    ("--root", Some(v)) => root = PathBuf::from(v),
                    _ => {
                        eprintln!("{USAGE}");
                        return 2;
                    }
                }
            }
            let Some(socket) = socket else {
                eprintln!("{USAGE}");
                return 2;
            };
            let _ = std::fs::remove_file(&socket);
            let listener = match std::os::unix::net::UnixListener::bind(&socket) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("hull-guest: cannot bind {}: {e}", socket.display());
                    return 1;
                }
            };
            let config = agent::AgentConfig {
                root,
                base_env: vec![(
                    "PATH".into(),
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                )],
                default_user: None,
                default_cwd: None,
                pid1: std::process::id() == 1,
            };
            match agent::serve(listener, config) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("hull-guest: {e}");
                    1
                }
            }
        }
        Some("--version") => {
            println!("hull-guest {}", env!("CARGO_PKG_VERSION"));
            0
        }
        _ => {
            eprintln!("{USAGE}");
            2
        }
    }
}
