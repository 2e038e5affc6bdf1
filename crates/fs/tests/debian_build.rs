//! `hull_fs::debian` against the real `mmdebstrap` and the host's Debian
//! mirror: a build that fails on a package the archive does not have, and
//! a cancelled build. (The one successful build per CI run is the
//! daemon's, in `crates/runtime/tests/imports.rs`, which also starts a
//! sandbox from it.)
//!
//! These need root, mmdebstrap and the mirror; without one of them they
//! skip with a message, or fail when `HULL_TEST_PRIVILEGED=1`.
//!
//! Both stop early (~10 s each).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hull_fs::debian::{
    BuildEvent, BuildSpec, DebianError, build_rootfs_tar, default_mirror, mmdebstrap_available,
    probe_mirror,
};

/// The mirror to build from, or `None` (after a SKIP message) when the
/// test cannot run here. Panics instead under `HULL_TEST_PRIVILEGED=1`.
fn ready(test: &str) -> Option<String> {
    let strict = std::env::var("HULL_TEST_PRIVILEGED").as_deref() == Ok("1");
    let skip = |why: String| {
        assert!(!strict, "{test}: {why}");
        eprintln!("SKIP {test}: {why}");
        None
    };
    if !nix::unistd::geteuid().is_root() {
        return skip("needs root".into());
    }
    if let Err(e) = mmdebstrap_available() {
        return skip(e.to_string());
    }
    let mirror = default_mirror();
    if let Err(e) = probe_mirror(&mirror, "bookworm") {
        return skip(format!("the Debian mirror {mirror} is unreachable: {e}"));
    }
    Some(mirror)
}

/// Mount points whose path contains `needle` (from `findmnt`).
fn mounts_containing(needle: &str) -> Vec<String> {
    let out = Command::new("findmnt")
        .args(["-rn", "-o", "TARGET"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}

/// Processes whose command line contains `needle`.
fn processes_containing(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Ok(cmdline) = fs::read(e.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(format!("{pid}: {cmdline}"));
            }
        }
    }
    found
}

/// Nothing of a build under `dir` is left: no file, no mount, no process.
fn assert_nothing_left(dir: &Path) {
    let left: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let needle = dir.to_str().unwrap();
    assert_eq!(mounts_containing(needle), Vec::<String>::new());
    assert_eq!(processes_containing(needle), Vec::<String>::new());
}

fn scratch() -> tempfile::TempDir {
    fs::create_dir_all("/var/tmp").unwrap();
    tempfile::Builder::new()
        .prefix("hull-debian-")
        .tempdir_in("/var/tmp")
        .unwrap()
}

#[test]
fn debian_failing_build_names_the_package_and_leaves_nothing() {
    if ready("debian_failing_build_names_the_package_and_leaves_nothing").is_none() {
        return;
    }
    let dir = scratch();
    let out = dir.path().join("bad.tar");
    // Valid syntax; not in the archive.
    let spec = BuildSpec {
        packages: vec!["hull-no-such-package-xyz".into()],
        ..BuildSpec::new("bookworm")
    };
    let err = build_rootfs_tar(&spec, &out, None, &mut |_| {}).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, DebianError::Failed { .. }), "{msg}");
    assert!(msg.contains("hull-no-such-package-xyz"), "{msg}");
    assert!(msg.contains("Unable to locate package"), "{msg}");
    assert_nothing_left(dir.path());
}

#[test]
fn debian_cancelled_build_stops_and_leaves_nothing() {
    if ready("debian_cancelled_build_stops_and_leaves_nothing").is_none() {
        return;
    }
    let dir = scratch();
    let out = dir.path().join("cancelled.tar");
    let spec = BuildSpec::new("bookworm");
    let cancel = AtomicBool::new(false);
    let mut cancelled_at = None;
    let mut unpacked = 0;
    let err = build_rootfs_tar(&spec, &out, Some(&cancel), &mut |e| {
        // Cancel while dpkg runs inside the chroot (its mounts are up).
        if let BuildEvent::Line(l) = e
            && l.starts_with("Unpacking ")
        {
            unpacked += 1;
            if unpacked == 5 && cancelled_at.is_none() {
                cancelled_at = Some(Instant::now());
                cancel.store(true, Ordering::Relaxed);
            }
        }
    })
    .unwrap_err();
    assert!(matches!(err, DebianError::Cancelled), "{err}");
    let took = cancelled_at.expect("the build never unpacked").elapsed();
    eprintln!(
        "cancelled build stopped {:.1} s after the request",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(60), "{took:?}");
    assert_nothing_left(dir.path());
}
