//! `hull_fs::debian` against the real `mmdebstrap` and the host's Debian
//! mirror: a minbase bookworm root with `hello`, a build that fails on a
//! package the archive does not have, and a cancelled build.
//!
//! These need root, mmdebstrap and the mirror; without one of them they
//! skip with a message, or fail when `HULL_TEST_PRIVILEGED=1`.
//!
//! The successful build (~30 s, ~170 MB) is cached in
//! `/var/cache/hull/test-debian/`, keyed by the spec, the mirror,
//! mmdebstrap's version and this crate's `debian.rs` (so changing the
//! builder rebuilds): a cached tar counts only with its `.ok` sidecar, and
//! entries under other keys are deleted. The failing and cancelled builds
//! run every time and stop early (~10 s each).

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hull_fs::debian::{
    BuildEvent, BuildSpec, DebianError, PHASES, build_rootfs_tar, default_mirror,
    mmdebstrap_available,
};

const CACHE_DIR: &str = "/var/cache/hull/test-debian";

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
    if let Err(e) = reachable(&mirror) {
        return skip(format!("the Debian mirror {mirror} is unreachable: {e}"));
    }
    Some(mirror)
}

/// Can the mirror serve bookworm's InRelease? (http: a HEAD request;
/// https: a TCP connection.)
fn reachable(mirror: &str) -> Result<(), String> {
    let (https, rest) = match mirror.strip_prefix("https://") {
        Some(r) => (true, r),
        None => (false, mirror.strip_prefix("http://").ok_or("not http(s)")?),
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|e| e.to_string())?),
        None => (authority, if https { 443 } else { 80 }),
    };
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {host}: {e}"))?
        .next()
        .ok_or("no address")?;
    let timeout = Duration::from_secs(5);
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    if https {
        return Ok(());
    }
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let path = path.trim_end_matches('/');
    write!(
        s,
        "HEAD /{path}/dists/bookworm/InRelease HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).map_err(|e| e.to_string())?;
    let status = String::from_utf8_lossy(&head[..n]);
    let status = status.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        Err(format!("answered {status:?}"))
    }
}

/// FNV-1a, for a stable cache key.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for part in parts {
        for b in part.iter().chain([0u8].iter()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

/// Entry names in `tar` (GNU tar's listing, leading `./` removed).
fn tar_entries(tar: &Path) -> Vec<String> {
    let out = Command::new("tar").arg("-tf").arg(tar).output().unwrap();
    assert!(out.status.success(), "tar -tf {}: {:?}", tar.display(), out);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches("./").to_owned())
        .collect()
}

fn tar_file(tar: &Path, entry: &str) -> String {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(tar)
        .arg(format!("./{entry}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "tar -xOf {entry}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
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
fn debian_builds_minbase_bookworm_with_hello() {
    let Some(mirror) = ready("debian_builds_minbase_bookworm_with_hello") else {
        return;
    };
    let spec = BuildSpec {
        packages: vec!["hello".into()],
        ..BuildSpec::new("bookworm")
    };
    let version = Command::new(mmdebstrap_available().unwrap())
        .arg("--version")
        .output()
        .unwrap()
        .stdout;
    let key = format!(
        "bookworm-minbase-hello-{:016x}",
        fnv(&[
            serde_json::to_string(&spec).unwrap().as_bytes(),
            mirror.as_bytes(),
            &version,
            include_bytes!("../src/debian.rs"),
        ])
    );
    fs::create_dir_all(CACHE_DIR).unwrap();
    let cache = Path::new(CACHE_DIR);
    let tar = cache.join(format!("{key}.tar"));
    let ok = cache.join(format!("{key}.ok"));

    // One build at a time per machine (parallel CI runs share the cache).
    let lock = fs::File::create(cache.join(".lock")).unwrap();
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    for e in fs::read_dir(cache).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name != ".lock" && !name.starts_with(&key) {
            let _ = fs::remove_file(e.path());
        }
    }
    if ok.exists() && tar.exists() {
        eprintln!("using the cached build {}", tar.display());
    } else {
        let _ = fs::remove_file(&ok);
        let mut phases = Vec::new();
        let mut progress = 0;
        let mut lines = 0;
        let report = build_rootfs_tar(&spec, &tar, None, &mut |e| match e {
            BuildEvent::Phase(p) => phases.push(p),
            BuildEvent::Progress { done, total } => {
                assert!(done <= total && total > 0);
                progress += 1;
            }
            BuildEvent::Line(_) => lines += 1,
        })
        .unwrap_or_else(|e| panic!("building {spec:?}: {e}"));
        eprintln!(
            "cold build: {:.1} s, {} MB, {} packages, phases {phases:?}",
            report.elapsed.as_secs_f64(),
            report.bytes / 1_000_000,
            report.packages_configured
        );
        assert_eq!(report.path, tar);
        assert_eq!(report.mirror, mirror);
        assert_eq!(report.bytes, fs::metadata(&tar).unwrap().len());
        assert!(report.packages_configured > 50, "{report:?}");
        assert!(
            lines > 100 && progress > 50,
            "{lines} lines, {progress} progress events"
        );
        for p in [
            "updating",
            "downloading",
            "installing",
            "configuring",
            "cleaning",
            "packing",
        ] {
            assert!(phases.iter().any(|x| x == p), "no {p} phase in {phases:?}");
        }
        assert!(phases.iter().all(|p| PHASES.contains(&p.as_str())));
        fs::write(&ok, format!("{spec:?}\n{mirror}\n")).unwrap();
    }

    // The cache directory holds the tar, its sidecar and the lock: no
    // staging directory was left.
    let mut names: Vec<String> = fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".lock".to_string(),
            format!("{key}.ok"),
            format!("{key}.tar")
        ]
    );

    let entries = tar_entries(&tar);
    for want in [
        "usr/bin/hello",
        "etc/debian_version",
        "usr/bin/apt-get",
        "dev/null",
    ] {
        assert!(
            entries.iter().any(|e| e == want),
            "{want} is not in the tar"
        );
    }
    // apt's lists were cleaned; the sources name the mirror.
    assert!(
        !entries
            .iter()
            .any(|e| e.starts_with("var/lib/apt/lists/") && e.ends_with("_Packages")),
        "apt lists were not cleaned"
    );
    assert!(tar_file(&tar, "etc/debian_version").starts_with("12."));
    let sources = tar_file(&tar, "etc/apt/sources.list");
    assert!(sources.contains(&mirror), "{sources}");
    assert!(sources.contains("bookworm main"), "{sources}");
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
