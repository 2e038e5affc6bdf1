//! Shared fixtures for hull's tests (a dev-dependency only): the privilege
//! gate every privileged test goes through, the `hull-guest` binary of this
//! build, private state directories, a host-cleanliness check and, with the
//! `runtime` feature, a runtime on a private state directory that removes
//! everything it made even when a test fails.
#![forbid(unsafe_code)]

pub mod fakenet;
pub mod oci;

use std::path::{Path, PathBuf};

/// True when the test may run; false (after a message) when it must skip.
/// Panics when privileged tests are required (`HULL_TEST_PRIVILEGED=1`,
/// as CI sets it) but cannot run, so nothing skips silently there.
pub fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("HULL_TEST_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{test}: HULL_TEST_PRIVILEGED=1 but not running as root");
    }
    eprintln!("SKIP {test}: needs root (set HULL_TEST_PRIVILEGED=1 to make this a failure)");
    false
}

/// The `hull-guest` binary built alongside the tests (or `HULL_GUEST_BINARY`).
pub fn guest_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("HULL_GUEST_BINARY") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<triple>/debug/deps/<test> -> target/<triple>/debug/hull-guest
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join("hull-guest");
    assert!(
        p.is_file(),
        "{} is missing: build it first (cargo build -p hull) or set HULL_GUEST_BINARY",
        p.display()
    );
    p
}

/// A private state directory under /tmp (short paths: unix sockets live
/// under it, and overlay options are built from it).
pub fn state_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("tempdir")
}

/// No mount under `state`, no cgroup of `instance` in any hierarchy.
pub fn assert_host_clean(state: &Path, instance: &str) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let s = state.display().to_string();
    let leaked: Vec<&str> = mounts.lines().filter(|l| l.contains(&s)).collect();
    assert!(leaked.is_empty(), "mounts left behind: {leaked:#?}");
    for ctrl in ["memory", "cpu", "pids", "freezer", "unified", ""] {
        let p = Path::new("/sys/fs/cgroup")
            .join(ctrl)
            .join(format!("hull-{instance}"));
        assert!(!p.exists(), "cgroup left behind: {}", p.display());
    }
}

#[cfg(feature = "runtime")]
mod kit;
#[cfg(feature = "runtime")]
pub use kit::RuntimeKit;
