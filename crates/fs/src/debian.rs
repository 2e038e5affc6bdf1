//! Debian root filesystems built with Debian's `mmdebstrap`, written as one
//! uncompressed tar (for `hull template build NAME --debian SUITE`).
//!
//! [`build_rootfs_tar`] first turns a [`BuildSpec`] into a [`Plan`] — every
//! field validated, an explicit argv, never a shell — and only then runs
//! `mmdebstrap` as a child process in its own process group. Its standard
//! error is parsed into [`BuildEvent`]s: every line as [`BuildEvent::Line`],
//! mmdebstrap's `I:` stage messages as [`BuildEvent::Phase`] (one of
//! [`PHASES`]) and apt's and dpkg's per-package lines as
//! [`BuildEvent::Progress`] within a phase. The tar is written inside a
//! private staging directory next to `out` (mmdebstrap's own temporary tree
//! goes there too, through `TMPDIR`) and renamed onto `out` only when
//! mmdebstrap succeeded; on failure or cancellation the build's processes
//! are stopped (SIGTERM to the group, so mmdebstrap cleans up, then SIGKILL)
//! and the staging directory is deleted, so nothing partial is left.
//!
//! Mode: `--mode=unshare`. Run as root, mmdebstrap then creates no user
//! namespace (none is needed, so it works where user namespaces are
//! disabled) but runs the whole build in new mount, pid, uts and ipc
//! namespaces: the `/proc`, `/sys` and `/dev` mounts it makes inside the
//! chroot exist only in that mount namespace, and every process of the build
//! dies with its pid namespace. `--mode=root` mounts in the caller's
//! namespace: a build killed with SIGKILL leaves `/proc`, `/sys`, `/dev/pts`
//! and `/dev/shm` mounted under its temporary directory and its dpkg
//! processes running (checked on this machine kind). Run as non-root,
//! unshare mode needs subuid/subgid ranges; mmdebstrap says so if they are
//! missing.
//!
//! The result is what mmdebstrap makes: the chosen variant (`minbase` by
//! default) plus the listed packages and their hard dependencies (no
//! Recommends), apt's package lists and cache cleaned out, the host's
//! `/etc/resolv.conf` and `/etc/hostname` copied in, an
//! `/etc/apt/sources.list` naming the mirror, and no `/dev` entries
//! (`--skip=output/dev`: a sandbox gets its own `/dev`, and hull's archive
//! importer refuses device nodes). With an `https` mirror,
//! `ca-certificates` is added so that apt inside can use it.
//!
//! Limits: component `main` only; one architecture (a foreign one needs
//! qemu-user with binfmt on the host); the sources list names only
//! `MIRROR SUITE main` — mmdebstrap adds `-updates` and `-security` only
//! when it picks the mirror itself, which this module never lets it do;
//! every build downloads its packages afresh (no cache between builds);
//! the progress parsing knows mmdebstrap 1.3's messages and apt's and
//! dpkg's English output (the child runs with `LC_ALL=C`) — lines it does
//! not know are still passed on as [`BuildEvent::Line`].

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// The mirror used when the spec names none and the host's apt sources
/// name no Debian mirror.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Most packages one build may list.
pub const MAX_PACKAGES: usize = 512;
/// Longest package name (Debian sets no limit; real names are far shorter).
pub const MAX_PACKAGE_NAME: usize = 128;
/// Longest `=version` suffix.
pub const MAX_VERSION: usize = 128;
/// Longest suite name.
pub const MAX_SUITE: usize = 32;
/// Longest mirror URL.
pub const MAX_MIRROR: usize = 512;
/// Longest architecture name.
pub const MAX_ARCHITECTURE: usize = 32;

/// The phases [`BuildEvent::Phase`] reports, in build order:
/// `updating` (apt-get update), `downloading` (the essential set),
/// `extracting`, `installing` (the essential set), `configuring` (the
/// essential set), `installing` again (the variant's remaining packages and
/// the listed ones, downloaded, unpacked and configured by apt),
/// `cleaning`, `packing` (writing the tar).
pub const PHASES: &[&str] = &[
    "updating",
    "downloading",
    "extracting",
    "installing",
    "configuring",
    "cleaning",
    "packing",
];

/// Suite names that mark an apt source as a Debian archive when looking for
/// the host's mirror (suffixed suites like `bookworm-security` do not).
const DEBIAN_SUITES: &[&str] = &[
    "jessie",
    "stretch",
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "oldoldstable",
    "oldstable",
    "stable",
    "testing",
    "unstable",
];

/// Where mmdebstrap is looked for when `PATH` is unset.
const FALLBACK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The tar's name inside the staging directory.
const STAGED_TAR: &str = "rootfs.tar";
/// Lines of mmdebstrap's output kept for an error.
const TAIL_LINES: usize = 20;
/// Longest line kept in an error's tail (dpkg command lines run to kilobytes).
const TAIL_LINE_CHARS: usize = 1000;
/// Longest output line passed on; the rest of a longer line is dropped.
const MAX_LINE: usize = 16 * 1024;
/// How often the build loop looks at the cancel flag and the child.
const POLL: Duration = Duration::from_millis(100);
/// How long a cancelled mmdebstrap gets to clean up after SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(60);
/// How long the build's processes get to die after SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    #[error("mmdebstrap is not installed: apt-get install mmdebstrap")]
    NotInstalled,
    #[error("invalid suite {suite:?}: {reason}")]
    InvalidSuite { suite: String, reason: &'static str },
    #[error("invalid package {package:?}: {reason}")]
    InvalidPackage {
        package: String,
        reason: &'static str,
    },
    #[error("too many packages: {0} (at most {MAX_PACKAGES})")]
    TooManyPackages(usize),
    #[error("invalid mirror {mirror:?}: {reason}")]
    InvalidMirror {
        mirror: String,
        reason: &'static str,
    },
    #[error("invalid architecture {architecture:?}: {reason}")]
    InvalidArchitecture {
        architecture: String,
        reason: &'static str,
    },
    #[error("unknown variant {0:?} (one of: essential, apt, minbase, buildd, important, standard)")]
    InvalidVariant(String),
    #[error("invalid output path {path}: {reason}")]
    InvalidOutput { path: String, reason: &'static str },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{}", failed_message(.status, .summary, .tail))]
    Failed {
        /// How mmdebstrap ended (`exit status 25`, `signal 9`).
        status: String,
        /// Its first `E:` line, if it printed one.
        summary: Option<String>,
        /// The last lines of its output.
        tail: Vec<String>,
    },
    #[error("the build was cancelled")]
    Cancelled,
}

fn failed_message(status: &str, summary: &Option<String>, tail: &[String]) -> String {
    let mut s = format!("mmdebstrap failed ({status})");
    if let Some(summary) = summary {
        s.push_str(": ");
        s.push_str(summary);
    }
    if !tail.is_empty() {
        s.push_str("; its last lines:");
        for line in tail {
            s.push_str("\n  ");
            s.push_str(line);
        }
    }
    s
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DebianError + 'a {
    move |source| DebianError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// mmdebstrap's package sets (`--variant`). `extract` and `custom`, which
/// leave packages unconfigured, are not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// Only `Essential: yes` packages (no apt).
    Essential,
    /// Essential packages and apt.
    Apt,
    /// Essential and `Priority: required` packages plus apt (mmdebstrap's
    /// `required`).
    #[default]
    Minbase,
    /// `minbase` plus `build-essential`.
    Buildd,
    /// `minbase` plus `Priority: important` packages.
    Important,
    /// `important` plus `Priority: standard` packages.
    Standard,
}

impl Variant {
    pub const ALL: [Variant; 6] = [
        Variant::Essential,
        Variant::Apt,
        Variant::Minbase,
        Variant::Buildd,
        Variant::Important,
        Variant::Standard,
    ];

    /// The name mmdebstrap's `--variant` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Essential => "essential",
            Variant::Apt => "apt",
            Variant::Minbase => "minbase",
            Variant::Buildd => "buildd",
            Variant::Important => "important",
            Variant::Standard => "standard",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Variant {
    type Err = DebianError;

    /// A variant's name; `required` (mmdebstrap's synonym) means `minbase`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "required" {
            return Ok(Variant::Minbase);
        }
        Variant::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| DebianError::InvalidVariant(s.chars().take(64).collect()))
    }
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSpec {
    /// A Debian suite or codename: `bookworm`, `trixie`, `sid`, `stable`, ...
    pub suite: String,
    /// Packages installed on top of the variant, each `name` or
    /// `name=version`. Empty is fine.
    #[serde(default)]
    pub packages: Vec<String>,
    /// An `http://` or `https://` Debian mirror; `None`: the host's
    /// configured Debian mirror, else [`DEFAULT_MIRROR`] (see
    /// [`default_mirror`]).
    #[serde(default)]
    pub mirror: Option<String>,
    #[serde(default)]
    pub variant: Variant,
    /// A Debian architecture (`amd64`, `arm64`, ...); `None`: the host's.
    #[serde(default)]
    pub architecture: Option<String>,
}

impl BuildSpec {
    /// A `minbase` build of `suite` with no extra packages, from the default mirror.
    pub fn new(suite: impl Into<String>) -> Self {
        BuildSpec {
            suite: suite.into(),
            packages: Vec::new(),
            mirror: None,
            variant: Variant::default(),
            architecture: None,
        }
    }
}

/// Something a running build reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEvent {
    /// A new phase began: one of [`PHASES`].
    Phase(String),
    /// One line of mmdebstrap's standard error (for a verbose display).
    Line(String),
    /// Steps done out of the steps the current phase is known to have
    /// (packages fetched, unpacked, configured). Restarts with each phase;
    /// `done <= total`.
    Progress { done: u64, total: u64 },
}

/// What a finished build made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildReport {
    /// The tar (the `out` the build was given).
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    pub elapsed: Duration,
    /// The mirror the packages came from.
    pub mirror: String,
    /// Packages installed on top of the variant, as given to mmdebstrap.
    pub packages: Vec<String>,
    /// Packages dpkg configured (the whole image's package count).
    pub packages_configured: u64,
}

/// A validated build: the arguments and environment mmdebstrap runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Arguments after the program name.
    pub argv: Vec<OsString>,
    /// Variables set in the child's environment.
    pub env: Vec<(&'static str, OsString)>,
    /// Variables removed from the child's environment.
    pub env_remove: Vec<&'static str>,
    /// Where mmdebstrap writes the tar (inside the staging directory).
    pub staged_tar: PathBuf,
    pub mirror: String,
    /// The packages passed to `--include` (deduplicated, in order).
    pub packages: Vec<String>,
}

/// Check every field of `spec` (the mirror only if it names one).
pub fn validate(spec: &BuildSpec) -> Result<(), DebianError> {
    validate_suite(&spec.suite)?;
    if spec.packages.len() > MAX_PACKAGES {
        return Err(DebianError::TooManyPackages(spec.packages.len()));
    }
    for p in &spec.packages {
        validate_package(p)?;
    }
    if let Some(m) = &spec.mirror {
        validate_mirror(m)?;
    }
    if let Some(a) = &spec.architecture {
        validate_architecture(a)?;
    }
    Ok(())
}

/// A suite: `[a-z0-9][a-z0-9-]*`, at most [`MAX_SUITE`] bytes.
pub fn validate_suite(suite: &str) -> Result<(), DebianError> {
    let bad = |reason| DebianError::InvalidSuite {
        suite: shorten(suite),
        reason,
    };
    if suite.is_empty() {
        return Err(bad("it is empty"));
    }
    if suite.len() > MAX_SUITE {
        return Err(bad("it is too long"));
    }
    if suite.starts_with('-') {
        return Err(bad("it begins with '-'"));
    }
    if !suite
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(bad("only a-z, 0-9 and '-' are allowed"));
    }
    Ok(())
}

/// A package: a Debian package name (`[a-z0-9][a-z0-9+.-]+`, not ending in
/// `-`, which apt reads as "remove"), optionally `=version` (a digit, then
/// `[A-Za-z0-9.+~:-]`). Apt patterns, globs, `/suite` and `:arch` are refused.
pub fn validate_package(package: &str) -> Result<(), DebianError> {
    let bad = |reason| DebianError::InvalidPackage {
        package: shorten(package),
        reason,
    };
    if package.is_empty() {
        return Err(bad("it is empty"));
    }
    if package.starts_with('-') {
        return Err(bad("it begins with '-' (it would be read as an option)"));
    }
    let (name, version) = match package.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (package, None),
    };
    if name.len() < 2 {
        return Err(bad("a package name has at least two characters"));
    }
    if name.len() > MAX_PACKAGE_NAME {
        return Err(bad("the name is too long"));
    }
    let first = name.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(bad("a package name begins with a-z or 0-9"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'.' | b'-'))
    {
        return Err(bad("a package name has only a-z, 0-9, '+', '.' and '-'"));
    }
    if name.ends_with('-') {
        return Err(bad("a trailing '-' asks apt to remove the package"));
    }
    if let Some(v) = version {
        if v.is_empty() {
            return Err(bad("the version after '=' is empty"));
        }
        if v.len() > MAX_VERSION {
            return Err(bad("the version is too long"));
        }
        if !v.as_bytes()[0].is_ascii_digit() {
            return Err(bad("a version begins with a digit"));
        }
        if !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'~' | b':' | b'-'))
        {
            return Err(bad(
                "a version has only A-Z, a-z, 0-9, '.', '+', '~', ':' and '-'",
            ));
        }
    }
    Ok(())
}

/// A mirror: `http://` or `https://`, a host, printable ASCII without
/// whitespace, quotes, `#` (a comment in sources.list), brackets, `\`, or
/// `@` (credentials would be written into the image's sources.list).
pub fn validate_mirror(mirror: &str) -> Result<(), DebianError> {
    let bad = |reason| DebianError::InvalidMirror {
        mirror: shorten(mirror),
        reason,
    };
    if mirror.len() > MAX_MIRROR {
        return Err(bad("it is too long"));
    }
    let Some(rest) = mirror
        .strip_prefix("http://")
        .or_else(|| mirror.strip_prefix("https://"))
    else {
        return Err(bad("it must begin with http:// or https://"));
    };
    if let Some(b) = mirror.bytes().find(|b| {
        !b.is_ascii_graphic()
            || matches!(
                b,
                b'"' | b'\'' | b'`' | b'\\' | b'#' | b'[' | b']' | b'<' | b'>' | b'{' | b'}'
            )
    }) {
        return Err(if b == b' ' || b.is_ascii_whitespace() {
            bad("it contains whitespace")
        } else if b.is_ascii_graphic() {
            bad("it contains a quote, '#', a bracket or a backslash")
        } else {
            bad("it contains a control or non-ASCII character")
        });
    }
    if mirror.contains('@') {
        return Err(bad(
            "credentials in the URL would be written into the image; use apt's auth.conf on the host",
        ));
    }
    let host = rest.split(['/', '?']).next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err(bad("it has no host"));
    }
    Ok(())
}

/// An architecture: `[a-z0-9][a-z0-9-]*`, at most [`MAX_ARCHITECTURE`] bytes.
pub fn validate_architecture(arch: &str) -> Result<(), DebianError> {
    let bad = |reason| DebianError::InvalidArchitecture {
        architecture: shorten(arch),
        reason,
    };
    if arch.is_empty() {
        return Err(bad("it is empty"));
    }
    if arch.len() > MAX_ARCHITECTURE {
        return Err(bad("it is too long"));
    }
    if arch.starts_with('-') {
        return Err(bad("it begins with '-'"));
    }
    if !arch
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(bad("only a-z, 0-9 and '-' are allowed"));
    }
    Ok(())
}

/// At most 64 characters of hostile input, for an error message.
fn shorten(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Validate `spec` and lay out the mmdebstrap run: the tar goes to
/// `staging/rootfs.tar`, mmdebstrap's temporary tree under `staging`.
/// `default_mirror` is used when the spec names no mirror. Pure: reads
/// nothing, runs nothing.
pub fn plan(spec: &BuildSpec, default_mirror: &str, staging: &Path) -> Result<Plan, DebianError> {
    validate(spec)?;
    let mirror = spec.mirror.as_deref().unwrap_or(default_mirror);
    validate_mirror(mirror)?;
    let mut packages: Vec<String> = Vec::with_capacity(spec.packages.len() + 1);
    for p in &spec.packages {
        if !packages.contains(p) {
            packages.push(p.clone());
        }
    }
    // apt inside the image needs the CA bundle to reach an https mirror.
    if mirror.starts_with("https://")
        && !packages
            .iter()
            .any(|p| p.split('=').next() == Some("ca-certificates"))
    {
        packages.push("ca-certificates".into());
    }
    let staged_tar = staging.join(STAGED_TAR);
    let mut argv: Vec<OsString> = vec![
        // See the module documentation for why unshare mode.
        "--mode=unshare".into(),
        format!("--variant={}", spec.variant).into(),
        "--components=main".into(),
        "--format=tar".into(),
        // Without a terminal mmdebstrap prints no progress bars; verbose
        // output (apt's and dpkg's lines) is what progress is derived from.
        "--verbose".into(),
        // No device nodes in the tar (a sandbox gets its own /dev, and the
        // importer refuses devices in archives).
        "--skip=output/dev".into(),
    ];
    if let Some(arch) = &spec.architecture {
        argv.push(format!("--architectures={arch}").into());
    }
    if !packages.is_empty() {
        argv.push(format!("--include={}", packages.join(",")).into());
    }
    argv.push("--".into());
    argv.push(spec.suite.clone().into());
    argv.push(staged_tar.clone().into_os_string());
    argv.push(mirror.into());
    Ok(Plan {
        argv,
        env: vec![
            // English messages, for the progress parsing.
            ("LC_ALL", "C".into()),
            // mmdebstrap builds its tree in $TMPDIR: inside the staging
            // directory, so a killed build's leftovers are deleted with it.
            ("TMPDIR", staging.as_os_str().to_owned()),
        ],
        env_remove: vec!["APT_CONFIG", "LANGUAGE"],
        staged_tar,
        mirror: mirror.into(),
        packages,
    })
}

/// The path of the `mmdebstrap` executable, from `PATH` (absolute entries
/// only) or the standard directories.
pub fn mmdebstrap_available() -> Result<PathBuf, DebianError> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| FALLBACK_PATH.into());
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join("mmdebstrap"))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .ok_or(DebianError::NotInstalled)
}

/// Whether `mirror` answers for `suite`, within 5 s: for http, a `HEAD`
/// of the suite's `InRelease` answered 200; for https (no TLS here), a TCP
/// connection. `Err` says what failed, for a message. A quick check
/// before a build that would otherwise fail minutes later in apt.
pub fn probe_mirror(mirror: &str, suite: &str) -> Result<(), String> {
    use std::io::Write;
    use std::net::{TcpStream, ToSocketAddrs};
    let (https, rest) = match mirror.strip_prefix("https://") {
        Some(r) => (true, r),
        None => (
            false,
            mirror
                .strip_prefix("http://")
                .ok_or("the mirror is not an http(s) URL")?,
        ),
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|e| format!("port: {e}"))?),
        None => (authority, if https { 443 } else { 80 }),
    };
    let timeout = Duration::from_secs(5);
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))?;
    let mut conn = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
    if https {
        return Ok(());
    }
    conn.set_read_timeout(Some(timeout))
        .and_then(|()| conn.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let path = path.trim_end_matches('/');
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("/{path}")
    };
    write!(
        conn,
        "HEAD {prefix}/dists/{suite}/InRelease HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("asking {host}: {e}"))?;
    let mut head = [0u8; 128];
    let n = conn
        .read(&mut head)
        .map_err(|e| format!("reading {host}'s answer: {e}"))?;
    let answer = String::from_utf8_lossy(&head[..n]);
    let status = answer.lines().next().unwrap_or("");
    match status.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        Some("404") => Err(format!("{mirror} has no suite {suite:?}")),
        _ => Err(format!("{host} answered {status:?}")),
    }
}

/// The mirror a spec without one uses: the host's Debian mirror
/// ([`host_mirror`]), else [`DEFAULT_MIRROR`].
pub fn default_mirror() -> String {
    host_mirror(Path::new("/etc/apt")).unwrap_or_else(|| DEFAULT_MIRROR.into())
}

/// The first Debian mirror in the apt sources under `apt_dir` (normally
/// `/etc/apt`), in apt's reading order: `sources.list`, then
/// `sources.list.d/*.list` and `*.sources` by name. A source counts when it
/// is enabled, has type `deb`, an `http(s)` URI that passes
/// [`validate_mirror`], component `main` and a plain Debian suite
/// (`bookworm`, `stable`, ... — not `bookworm-security`, not another
/// distribution's codename).
pub fn host_mirror(apt_dir: &Path) -> Option<String> {
    let mut files = vec![(apt_dir.join("sources.list"), false)];
    let mut parts: Vec<(PathBuf, bool)> = fs::read_dir(apt_dir.join("sources.list.d"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            // apt ignores names with other characters.
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            {
                return None;
            }
            if name.ends_with(".list") {
                Some((e.path(), false))
            } else if name.ends_with(".sources") {
                Some((e.path(), true))
            } else {
                None
            }
        })
        .collect();
    parts.sort();
    files.extend(parts);
    files.into_iter().find_map(|(path, deb822)| {
        // Bounded: a sources file is a few kilobytes.
        let mut text = String::new();
        fs::File::open(&path)
            .ok()?
            .take(1 << 20)
            .read_to_string(&mut text)
            .ok()?;
        let sources = if deb822 {
            parse_deb822_sources(&text)
        } else {
            parse_one_line_sources(&text)
        };
        sources.into_iter().find_map(debian_mirror)
    })
}

/// One apt source, from either format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct AptSource {
    types: Vec<String>,
    uris: Vec<String>,
    suites: Vec<String>,
    components: Vec<String>,
    enabled: bool,
}

fn debian_mirror(s: AptSource) -> Option<String> {
    let is_debian = s.enabled
        && s.types.iter().any(|t| t == "deb")
        && s.components.iter().any(|c| c == "main")
        && s.suites.iter().any(|x| DEBIAN_SUITES.contains(&x.as_str()));
    if !is_debian {
        return None;
    }
    s.uris.into_iter().find(|u| validate_mirror(u).is_ok())
}

/// `deb [options] URI SUITE COMPONENT...` lines.
fn parse_one_line_sources(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace().peekable();
        let Some(kind) = words.next() else { continue };
        if words.peek().is_some_and(|w| w.starts_with('[')) {
            // Options may hold spaces: skip to the word that closes them.
            for w in words.by_ref() {
                if w.ends_with(']') {
                    break;
                }
            }
        }
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(AptSource {
            types: vec![kind.into()],
            uris: vec![uri.into()],
            suites: vec![suite.into()],
            components: words.map(String::from).collect(),
            enabled: true,
        });
    }
    out
}

/// deb822 stanzas (`Types:`, `URIs:`, `Suites:`, `Components:`, `Enabled:`).
fn parse_deb822_sources(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    let mut cur: Option<AptSource> = None;
    let mut field: Option<String> = None;
    let finish = |cur: &mut Option<AptSource>, out: &mut Vec<AptSource>| {
        if let Some(s) = cur.take() {
            out.push(s);
        }
    };
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            finish(&mut cur, &mut out);
            field = None;
            continue;
        }
        let src = cur.get_or_insert_with(|| AptSource {
            enabled: true,
            ..AptSource::default()
        });
        let (name, value) = if line.starts_with([' ', '\t']) {
            // A continuation of the previous field.
            match &field {
                Some(f) => (f.clone(), line),
                None => continue,
            }
        } else {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            field = Some(k.trim().to_ascii_lowercase());
            (k.trim().to_ascii_lowercase(), v)
        };
        let words = value.split_whitespace().map(String::from);
        match name.as_str() {
            "types" => src.types.extend(words),
            "uris" => src.uris.extend(words),
            "suites" => src.suites.extend(words),
            "components" => src.components.extend(words),
            "enabled" => src.enabled = !value.trim().eq_ignore_ascii_case("no"),
            _ => {}
        }
    }
    finish(&mut cur, &mut out);
    out
}

/// Build `spec` into the tar `out` (replacing it if it exists). Blocks
/// until mmdebstrap is done; `on_event` sees its progress. Setting
/// `cancel` stops the build (checked every 100 ms) and returns
/// [`DebianError::Cancelled`]. On any error nothing is left: no partial
/// tar, no staging directory, no process, no mount.
pub fn build_rootfs_tar(
    spec: &BuildSpec,
    out: &Path,
    cancel: Option<&AtomicBool>,
    on_event: &mut dyn FnMut(BuildEvent),
) -> Result<BuildReport, DebianError> {
    let start = Instant::now();
    let cancelled = || cancel.is_some_and(|c| c.load(Ordering::Relaxed));
    validate(spec)?;
    let program = mmdebstrap_available()?;
    let (dir, name) = match (out.parent(), out.file_name()) {
        (Some(d), Some(n)) => (
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            },
            n,
        ),
        _ => {
            return Err(DebianError::InvalidOutput {
                path: out.display().to_string(),
                reason: "it names no file",
            });
        }
    };
    if !dir.is_dir() {
        return Err(DebianError::InvalidOutput {
            path: out.display().to_string(),
            reason: "its directory does not exist",
        });
    }
    if out.is_dir() {
        return Err(DebianError::InvalidOutput {
            path: out.display().to_string(),
            reason: "it is a directory",
        });
    }
    let mirror = match &spec.mirror {
        Some(m) => m.clone(),
        None => default_mirror(),
    };
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let staging = dir.join(format!(
        ".{}.build-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let plan = plan(spec, &mirror, &staging)?;
    if cancelled() {
        return Err(DebianError::Cancelled);
    }

    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(io_err("creating the staging directory", &staging))?;
    let staging = Staging(staging);
    tracing::info!(
        suite = %spec.suite,
        variant = %spec.variant,
        mirror = %plan.mirror,
        packages = plan.packages.len(),
        "building a Debian root filesystem"
    );
    tracing::debug!(program = %program.display(), argv = ?plan.argv, "running mmdebstrap");

    let mut cmd = Command::new(&program);
    cmd.args(&plan.argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group: stopping the build signals all of it, and
        // a terminal's Ctrl-C reaches it only through `cancel`.
        .process_group(0);
    for (k, v) in &plan.env {
        cmd.env(k, v);
    }
    for k in &plan.env_remove {
        cmd.env_remove(k);
    }
    let mut child = cmd.spawn().map_err(io_err("running", program.as_path()))?;
    let stderr = child.stderr.take();
    let mut run = Running {
        pgid: Pid::from_raw(child.id() as i32),
        child: Some(child),
    };
    let (tx, rx) = mpsc::channel::<String>();
    let reader = stderr.map(|stderr| {
        thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut buf = Vec::new();
            while let Ok(true) = read_line_bounded(&mut r, &mut buf, MAX_LINE) {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']);
                if tx.send(line.to_owned()).is_err() {
                    break;
                }
            }
        })
    });

    let mut parser = OutputParser::default();
    let mut stderr_open = reader.is_some();
    let was_cancelled = loop {
        if cancelled() {
            break true;
        }
        if stderr_open {
            match rx.recv_timeout(POLL) {
                Ok(line) => parser.feed(&line, on_event),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => stderr_open = false,
            }
        } else {
            thread::sleep(POLL);
        }
        if run.leader_exited() {
            break false;
        }
    };
    if was_cancelled {
        tracing::info!("cancelling the Debian build");
        run.signal(Signal::SIGTERM);
        let deadline = Instant::now() + TERM_GRACE;
        while !run.leader_exited() && Instant::now() < deadline {
            // Keep reading: a full pipe would block its cleanup.
            if let Ok(line) = rx.recv_timeout(POLL) {
                parser.feed(&line, on_event);
            }
        }
    }
    let status = run.finish();
    if let Some(reader) = reader {
        let _ = reader.join();
    }
    while let Ok(line) = rx.try_recv() {
        parser.feed(&line, on_event);
    }
    if was_cancelled {
        return Err(DebianError::Cancelled);
    }
    let status = status.map_err(io_err("waiting for", program.as_path()))?;
    if !status.success() {
        return Err(DebianError::Failed {
            status: describe_status(status),
            summary: parser.first_error.clone(),
            tail: parser.tail.iter().cloned().collect(),
        });
    }

    let tar = fs::File::open(&plan.staged_tar).map_err(io_err("opening", &plan.staged_tar))?;
    let bytes = tar
        .metadata()
        .map_err(io_err("reading", &plan.staged_tar))?
        .len();
    if bytes == 0 {
        return Err(DebianError::Failed {
            status: "exit status 0".into(),
            summary: Some("mmdebstrap wrote an empty tar".into()),
            tail: parser.tail.iter().cloned().collect(),
        });
    }
    tar.sync_all()
        .map_err(io_err("syncing", &plan.staged_tar))?;
    drop(tar);
    fs::rename(&plan.staged_tar, out).map_err(io_err("installing", out))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    drop(staging);
    let report = BuildReport {
        path: out.to_path_buf(),
        bytes,
        elapsed: start.elapsed(),
        mirror: plan.mirror,
        packages: plan.packages,
        packages_configured: parser.configured,
    };
    tracing::info!(
        path = %report.path.display(),
        bytes = report.bytes,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "built a Debian root filesystem"
    );
    Ok(report)
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// Read one line (through `\n`) into `buf`, keeping at most `max` bytes of
/// it. False at end of input.
fn read_line_bounded(r: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<bool> {
    buf.clear();
    let mut any = false;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(any);
        }
        any = true;
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..take.min(room)]);
        r.consume(take);
        if done {
            return Ok(true);
        }
    }
}

/// The staging directory, deleted when dropped (on success it holds only
/// mmdebstrap's leftovers once the tar is renamed out).
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "removing a Debian build's staging directory");
        }
    }
}

/// Delete `dir`, never through a mount point: anything mounted under it
/// (unshare mode mounts nothing here) is detached first, and if that fails
/// the tree is left alone.
fn remove_tree(dir: &Path) -> io::Result<()> {
    if !hull_sys::mount::mounts_under(dir).is_empty() {
        hull_sys::mount::unmount_all_under(dir);
        if !hull_sys::mount::mounts_under(dir).is_empty() {
            return Err(io::Error::other("mounts remain under it"));
        }
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The mmdebstrap child, leader of its own process group. Signals go to the
/// group only while the leader is unreaped (so its id cannot have been
/// reused); dropping it unfinished kills and reaps the group.
struct Running {
    pgid: Pid,
    child: Option<Child>,
}

impl Running {
    /// Has the leader exited? (Peeks without reaping.)
    fn leader_exited(&self) -> bool {
        if self.child.is_none() {
            return true;
        }
        match waitid(
            Id::Pid(self.pgid),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        ) {
            Ok(WaitStatus::StillAlive) => false,
            Ok(_) => true,
            Err(Errno::EINTR) => false,
            Err(_) => true,
        }
    }

    fn signal(&self, signal: Signal) {
        if self.child.is_some() {
            // ESRCH: the group is empty.
            let _ = killpg(self.pgid, signal);
        }
    }

    /// Kill whatever is left of the group, wait until it is gone, and reap
    /// the leader.
    fn finish(&mut self) -> io::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return Err(io::Error::other("already reaped"));
        };
        let deadline = Instant::now() + KILL_GRACE;
        loop {
            // The leader is at most a zombie here: the group id is still ours.
            let _ = killpg(self.pgid, Signal::SIGKILL);
            let left = group_members(self.pgid.as_raw());
            if left.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(pgid = self.pgid.as_raw(), processes = ?left, "Debian build processes survived SIGKILL");
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        child.wait()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.finish();
        }
    }
}

/// Live (non-zombie) processes in process group `pgid`, its leader excepted.
fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != pgid)
        .filter(|&pid| {
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // After the command name (which may hold anything): state, ppid, pgrp.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let mut f = rest.split_whitespace();
            let state = f.next();
            let pgrp = f.nth(1).and_then(|p| p.parse::<i32>().ok());
            pgrp == Some(pgid) && state != Some("Z")
        })
        .collect()
}

/// Where the build is, from mmdebstrap's `I:` lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Stage {
    #[default]
    Setup,
    Updating,
    Downloading,
    Extracting,
    Essential,
    Remaining,
    Cleaning,
    Packing,
}

/// mmdebstrap 1.3's stage messages (after `I: `).
const STAGE_MESSAGES: &[(&str, Stage, &str)] = &[
    ("running apt-get update", Stage::Updating, "updating"),
    ("downloading packages", Stage::Downloading, "downloading"),
    ("extracting archives", Stage::Extracting, "extracting"),
    (
        "installing essential packages",
        Stage::Essential,
        "installing",
    ),
    (
        "installing remaining packages",
        Stage::Remaining,
        "installing",
    ),
    ("cleaning package lists", Stage::Cleaning, "cleaning"),
    ("creating tarball", Stage::Packing, "packing"),
];

/// Turns mmdebstrap's output into events, and keeps what an error needs.
#[derive(Debug, Default)]
struct OutputParser {
    stage: Stage,
    done: u64,
    total: u64,
    /// How many packages the essential download fetched.
    essential: u64,
    configuring_reported: bool,
    /// dpkg `Setting up` lines seen.
    configured: u64,
    first_error: Option<String>,
    tail: VecDeque<String>,
}

impl OutputParser {
    fn feed(&mut self, line: &str, emit: &mut dyn FnMut(BuildEvent)) {
        emit(BuildEvent::Line(line.to_owned()));
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(truncate_chars(line, TAIL_LINE_CHARS));

        if let Some(msg) = line.strip_prefix("I: ") {
            if let Some(&(_, stage, phase)) =
                STAGE_MESSAGES.iter().find(|(m, ..)| msg.starts_with(m))
            {
                self.stage = stage;
                self.done = 0;
                self.total = if stage == Stage::Essential {
                    // Each package is unpacked, then configured.
                    self.essential * 2
                } else {
                    0
                };
                emit(BuildEvent::Phase(phase.into()));
                self.progress(emit);
            }
            return;
        }
        if let Some(msg) = line.strip_prefix("E: ") {
            if self.first_error.is_none() {
                self.first_error = Some(truncate_chars(msg, TAIL_LINE_CHARS));
            }
            return;
        }
        if let Some(n) = newly_installed(line) {
            match self.stage {
                Stage::Downloading => {
                    self.essential = n;
                    self.total = n;
                }
                // Each package is fetched, unpacked and configured.
                Stage::Remaining => self.total = n.saturating_mul(3),
                _ => {}
            }
            self.progress(emit);
            return;
        }
        let step = match self.stage {
            Stage::Downloading => is_fetch(line),
            Stage::Essential => {
                if line.starts_with("Setting up ") && !self.configuring_reported {
                    self.configuring_reported = true;
                    emit(BuildEvent::Phase("configuring".into()));
                }
                line.starts_with("Unpacking ") || line.starts_with("Setting up ")
            }
            Stage::Remaining => {
                is_fetch(line) || line.starts_with("Unpacking ") || line.starts_with("Setting up ")
            }
            _ => false,
        };
        if line.starts_with("Setting up ") {
            self.configured += 1;
        }
        if step {
            self.done += 1;
            self.progress(emit);
        }
    }

    fn progress(&self, emit: &mut dyn FnMut(BuildEvent)) {
        if self.total > 0 {
            emit(BuildEvent::Progress {
                done: self.done.min(self.total),
                total: self.total,
            });
        }
    }
}

/// apt's `Get:12 http://... pkg ...` line.
fn is_fetch(line: &str) -> bool {
    line.strip_prefix("Get:")
        .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
}

/// N from apt's `0 upgraded, N newly installed, 0 to remove and 0 not upgraded.`
fn newly_installed(line: &str) -> Option<u64> {
    let (_, rest) = line.split_once(" upgraded, ")?;
    let (n, _) = rest.split_once(" newly installed")?;
    n.trim().parse().ok()
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(packages: &[&str]) -> BuildSpec {
        BuildSpec {
            packages: packages.iter().map(|s| s.to_string()).collect(),
            ..BuildSpec::new("bookworm")
        }
    }

    fn args(plan: &Plan) -> Vec<String> {
        plan.argv
            .iter()
            .map(|a| a.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn package_names() {
        for ok in [
            "hello",
            "python3",
            "g++",
            "libstdc++6",
            "python3.11",
            "ca-certificates",
            "0ad",
            "hello=2.10-3",
            "bash=5.2.15-2+b2",
            "tzdata=2024a-0+deb12u1",
            "foo=1:2.3~rc1-1",
        ] {
            validate_package(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "-o",
            "--include=x",
            "-oAPT::Foo=1",
            "a",
            "Hello",
            "hello world",
            "hello,git",
            "hello/bookworm",
            "hello:amd64",
            "hel*",
            "?essential",
            "~nhello",
            "./x.deb",
            "/tmp/x.deb",
            "hello-",
            "hello=",
            "hello=abc",
            "hello=1 2",
            "hello=1=2",
            "hello=1/2",
            "héllo",
            "hello\n",
            "hello;rm",
            "$(reboot)",
        ] {
            assert!(
                matches!(
                    validate_package(bad),
                    Err(DebianError::InvalidPackage { .. })
                ),
                "{bad:?} was accepted"
            );
        }
        let long = "a".repeat(MAX_PACKAGE_NAME + 1);
        assert!(validate_package(&long).is_err());
        let e = validate_package("-o").unwrap_err().to_string();
        assert!(e.contains("begins with '-'"), "{e}");
    }

    #[test]
    fn suites_and_architectures() {
        for ok in ["bookworm", "trixie", "sid", "stable", "bookworm-backports"] {
            validate_suite(ok).unwrap();
        }
        for bad in [
            "",
            "-bookworm",
            "Bookworm",
            "book worm",
            "../x",
            "a/b",
            &"x".repeat(33),
        ] {
            assert!(validate_suite(bad).is_err(), "{bad:?}");
        }
        for ok in ["amd64", "arm64", "armhf", "ppc64el", "s390x", "riscv64"] {
            validate_architecture(ok).unwrap();
        }
        for bad in ["", "-amd64", "amd64,i386", "AMD64", "amd 64"] {
            assert!(validate_architecture(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mirrors() {
        for ok in [
            "http://deb.debian.org/debian",
            "https://deb.debian.org/debian/",
            "http://10.0.0.1:3142/debian",
            "http://snapshot.debian.org/archive/debian/20250520T000000Z",
        ] {
            validate_mirror(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "deb.debian.org/debian",
            "ftp://deb.debian.org/debian",
            "file:///srv/mirror",
            "deb http://deb.debian.org/debian bookworm main",
            "http://deb.debian.org/debian bookworm",
            "http://deb.debian.org/debian\tx",
            "http://deb.debian.org/\"debian",
            "http://deb.debian.org/'debian",
            "http://deb.debian.org/debian#x",
            "http://user:pass@deb.debian.org/debian",
            "http://",
            "http:///debian",
            "http://deb.debian.org/debian\n",
            "-http://x",
        ] {
            assert!(
                matches!(validate_mirror(bad), Err(DebianError::InvalidMirror { .. })),
                "{bad:?} was accepted"
            );
        }
        assert!(validate_mirror(&format!("http://x/{}", "a".repeat(MAX_MIRROR))).is_err());
    }

    #[test]
    fn variants() {
        for v in Variant::ALL {
            assert_eq!(v.as_str().parse::<Variant>().unwrap(), v);
        }
        assert_eq!("required".parse::<Variant>().unwrap(), Variant::Minbase);
        assert!("extract".parse::<Variant>().is_err());
        assert!("custom".parse::<Variant>().is_err());
        assert_eq!(Variant::default(), Variant::Minbase);
    }

    #[test]
    fn spec_is_validated_as_a_whole() {
        assert!(validate(&spec(&[])).is_ok());
        assert!(validate(&spec(&["hello", "-x"])).is_err());
        let many: Vec<String> = (0..=MAX_PACKAGES).map(|i| format!("pkg{i}")).collect();
        let s = BuildSpec {
            packages: many,
            ..BuildSpec::new("bookworm")
        };
        assert!(
            matches!(validate(&s), Err(DebianError::TooManyPackages(n)) if n == MAX_PACKAGES + 1)
        );
        let s = BuildSpec {
            mirror: Some("ftp://x".into()),
            ..BuildSpec::new("bookworm")
        };
        assert!(validate(&s).is_err());
        // A bad default mirror is caught by the plan too.
        assert!(plan(&spec(&[]), "not a url", Path::new("/s")).is_err());
    }

    #[test]
    fn spec_deserializes_strictly() {
        let s: BuildSpec =
            serde_json::from_str(r#"{"suite":"trixie","packages":["git"],"variant":"apt"}"#)
                .unwrap();
        assert_eq!(s.variant, Variant::Apt);
        assert_eq!(s.mirror, None);
        assert!(serde_json::from_str::<BuildSpec>(r#"{"suite":"x","extra":1}"#).is_err());
    }

    #[test]
    fn argv_for_minbase_with_packages() {
        let staging = Path::new("/var/cache/t/.out.tar.build-1-0");
        let p = plan(
            &spec(&["hello", "git", "hello"]),
            "http://deb.debian.org/debian",
            staging,
        )
        .unwrap();
        assert_eq!(
            args(&p),
            [
                "--mode=unshare",
                "--variant=minbase",
                "--components=main",
                "--format=tar",
                "--verbose",
                "--skip=output/dev",
                "--include=hello,git",
                "--",
                "bookworm",
                "/var/cache/t/.out.tar.build-1-0/rootfs.tar",
                "http://deb.debian.org/debian",
            ]
        );
        assert_eq!(p.staged_tar, staging.join("rootfs.tar"));
        assert_eq!(p.packages, ["hello", "git"]);
        assert!(p.env.contains(&("LC_ALL", "C".into())));
        assert!(p.env.contains(&("TMPDIR", staging.as_os_str().to_owned())));
        assert!(p.env_remove.contains(&"APT_CONFIG"));
    }

    #[test]
    fn argv_options() {
        let s = BuildSpec {
            suite: "trixie".into(),
            packages: vec![],
            mirror: Some("https://mirror.example/debian".into()),
            variant: Variant::Standard,
            architecture: Some("arm64".into()),
        };
        let a = args(&plan(&s, DEFAULT_MIRROR, Path::new("/s")).unwrap());
        assert!(a.contains(&"--variant=standard".to_string()));
        assert!(a.contains(&"--architectures=arm64".to_string()));
        // https: apt inside needs the CA bundle.
        assert!(a.contains(&"--include=ca-certificates".to_string()));
        assert_eq!(a.last().unwrap(), "https://mirror.example/debian");
        // No packages, http: no --include at all; never a shell or a hook.
        let a = args(&plan(&spec(&[]), DEFAULT_MIRROR, Path::new("/s")).unwrap());
        assert!(!a.iter().any(|x| x.starts_with("--include")));
        assert!(!a.iter().any(|x| x.contains("hook")
            || x.starts_with("--aptopt")
            || (x.starts_with("--skip") && x != "--skip=output/dev")));
        // Positional arguments come after "--".
        let dash = a.iter().position(|x| x == "--").unwrap();
        assert_eq!(a.len() - dash, 4);
    }

    #[test]
    fn one_line_sources() {
        let text = "\
# comment
deb http://ftp.de.debian.org/debian bookworm main contrib
deb-src http://ftp.de.debian.org/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://mirror.example/debian trixie main
deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main
";
        let s = parse_one_line_sources(text);
        assert_eq!(s.len(), 4);
        assert_eq!(s[2].uris, ["http://mirror.example/debian"]);
        assert_eq!(s[2].suites, ["trixie"]);
        assert_eq!(s[2].components, ["main"]);
        let found: Vec<_> = s.into_iter().filter_map(debian_mirror).collect();
        assert_eq!(
            found,
            [
                "http://ftp.de.debian.org/debian",
                "http://mirror.example/debian"
            ]
        );
    }

    #[test]
    fn deb822_sources() {
        // This machine kind's /etc/apt/sources.list.d/debian.sources.
        let text = "\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
";
        let s = parse_deb822_sources(text);
        assert_eq!(s.len(), 2);
        let found: Vec<_> = s.into_iter().filter_map(debian_mirror).collect();
        assert_eq!(found, ["http://deb.debian.org/debian"]);

        let other = "\
Types: deb
URIs: https://deb.nodesource.com/node_20.x
Suites: nodistro
Components: main

Types: deb-src deb
URIs:
 http://mirror.example/debian
Suites: sid
Components: main
Enabled: no

Types: deb
uris: http://mirror2.example/debian
suites: stable
components: main contrib
";
        let found: Vec<_> = parse_deb822_sources(other)
            .into_iter()
            .filter_map(debian_mirror)
            .collect();
        assert_eq!(found, ["http://mirror2.example/debian"]);
    }

    #[test]
    fn host_mirror_reads_apt_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir(d.join("sources.list.d")).unwrap();
        assert_eq!(host_mirror(d), None);
        fs::write(
            d.join("sources.list.d/b.sources"),
            "Types: deb\nURIs: http://b.example/debian\nSuites: bookworm\nComponents: main\n",
        )
        .unwrap();
        fs::write(
            d.join("sources.list.d/a.list"),
            "deb http://a.example/debian bookworm-security main\n",
        )
        .unwrap();
        // Not read by apt: the wrong suffix.
        fs::write(
            d.join("sources.list.d/0.list.disabled"),
            "deb http://z.example/debian bookworm main\n",
        )
        .unwrap();
        assert_eq!(host_mirror(d).as_deref(), Some("http://b.example/debian"));
        fs::write(
            d.join("sources.list"),
            "deb http://first.example/debian stable main\n",
        )
        .unwrap();
        assert_eq!(
            host_mirror(d).as_deref(),
            Some("http://first.example/debian")
        );
    }

    /// Lines as mmdebstrap 1.3.5 prints them with `--verbose` (abridged).
    const SAMPLE: &str = "\
I: chroot architecture amd64 is equal to the host's architecture
I: using /tmp/mmdebstrap.X as tempdir
I: running apt-get update...
Get:1 http://deb.debian.org/debian bookworm InRelease [151 kB]
Get:2 http://deb.debian.org/debian bookworm/main amd64 Packages [8790 kB]
Fetched 8941 kB in 1s (8456 kB/s)
I: downloading packages with apt...
0 upgraded, 2 newly installed, 0 to remove and 0 not upgraded.
Need to get 29.7 MB of archives.
Get:1 http://deb.debian.org/debian bookworm/main amd64 gcc-12-base amd64 12.2.0-14 [37.6 kB]
Get:2 http://deb.debian.org/debian bookworm/main amd64 libc6 amd64 2.36-9 [2757 kB]
I: extracting archives...
I: installing essential packages...
Selecting previously unselected package gcc-12-base:amd64.
Unpacking gcc-12-base:amd64 (12.2.0-14) ...
Unpacking libc6:amd64 (2.36-9) ...
Setting up gcc-12-base:amd64 (12.2.0-14) ...
Setting up libc6:amd64 (2.36-9) ...
I: installing remaining packages inside the chroot...
0 upgraded, 1 newly installed, 0 to remove and 0 not upgraded.
Get:1 http://deb.debian.org/debian bookworm/main amd64 hello amd64 2.10-3 [54.5 kB]
Unpacking hello (2.10-3) ...
Setting up hello (2.10-3) ...
I: cleaning package lists and apt cache...
I: creating tarball...
I: done
I: success in 31.4320 seconds
";

    fn parse(text: &str) -> (Vec<BuildEvent>, OutputParser) {
        let mut p = OutputParser::default();
        let mut events = Vec::new();
        for line in text.lines() {
            p.feed(line, &mut |e| events.push(e));
        }
        (events, p)
    }

    #[test]
    fn phases_and_progress() {
        let (events, p) = parse(SAMPLE);
        let lines = events
            .iter()
            .filter(|e| matches!(e, BuildEvent::Line(_)))
            .count();
        assert_eq!(lines, SAMPLE.lines().count());
        let derived: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                BuildEvent::Phase(p) => Some(p.clone()),
                BuildEvent::Progress { done, total } => Some(format!("{done}/{total}")),
                BuildEvent::Line(_) => None,
            })
            .collect();
        assert_eq!(
            derived,
            [
                "updating",
                "downloading",
                "0/2",
                "1/2",
                "2/2",
                "extracting",
                "installing",
                "0/4",
                "1/4",
                "2/4",
                "configuring",
                "3/4",
                "4/4",
                "installing",
                "0/3",
                "1/3",
                "2/3",
                "3/3",
                "cleaning",
                "packing",
            ]
        );
        for e in &events {
            if let BuildEvent::Phase(p) = e {
                assert!(PHASES.contains(&p.as_str()), "{p}");
            }
        }
        assert_eq!(p.configured, 3);
        assert_eq!(p.first_error, None);
    }

    #[test]
    fn unknown_and_error_lines() {
        let text = "\
I: something new in a later mmdebstrap...
W: a warning
garbage \u{1b}[2K line
0 upgraded, 5 newly installed, 0 to remove and 0 not upgraded.
Get:1 http://x/debian bookworm InRelease
E: Unable to locate package hull-no-such-package
E: setup failed: E: apt-get install failed
E: mmdebstrap failed to run
";
        let (events, p) = parse(text);
        // Only Line events: no known stage, no total.
        assert!(events.iter().all(|e| matches!(e, BuildEvent::Line(_))));
        assert_eq!(
            p.first_error.as_deref(),
            Some("Unable to locate package hull-no-such-package")
        );
        let many: String = (0..50).map(|i| format!("line {i}\n")).collect();
        let (_, p) = parse(&many);
        assert_eq!(p.tail.len(), TAIL_LINES);
        assert_eq!(p.tail.back().unwrap(), "line 49");
    }

    #[test]
    fn progress_never_exceeds_total() {
        let text = "\
I: downloading packages with apt...
0 upgraded, 1 newly installed, 0 to remove and 0 not upgraded.
Get:1 http://x a
Get:2 http://x b
Get:3 http://x c
";
        let (events, _) = parse(text);
        for e in events {
            if let BuildEvent::Progress { done, total } = e {
                assert!(done <= total);
            }
        }
    }

    #[test]
    fn failed_error_message() {
        let e = DebianError::Failed {
            status: "exit status 25".into(),
            summary: Some("Unable to locate package foo".into()),
            tail: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            e.to_string(),
            "mmdebstrap failed (exit status 25): Unable to locate package foo; its last lines:\n  a\n  b"
        );
        assert_eq!(
            DebianError::NotInstalled.to_string(),
            "mmdebstrap is not installed: apt-get install mmdebstrap"
        );
    }

    #[test]
    fn bounded_lines() {
        let data = format!("{}\nshort\nlast", "x".repeat(100));
        let mut r = io::Cursor::new(data.into_bytes());
        let mut buf = Vec::new();
        assert!(read_line_bounded(&mut r, &mut buf, 10).unwrap());
        assert_eq!(buf, b"xxxxxxxxxx");
        assert!(read_line_bounded(&mut r, &mut buf, 10).unwrap());
        assert_eq!(buf, b"short\n");
        assert!(read_line_bounded(&mut r, &mut buf, 10).unwrap());
        assert_eq!(buf, b"last");
        assert!(!read_line_bounded(&mut r, &mut buf, 10).unwrap());
        assert_eq!(truncate_chars("héllo", 2), "hé...");
    }

    #[test]
    fn missing_output_directory_is_refused_before_running() {
        let r = build_rootfs_tar(
            &spec(&[]),
            Path::new("/nonexistent-hull-dir/out.tar"),
            None,
            &mut |_| {},
        );
        // Without mmdebstrap installed the first check is that one.
        assert!(
            matches!(
                r,
                Err(DebianError::InvalidOutput { .. } | DebianError::NotInstalled)
            ),
            "{r:?}"
        );
        let r = build_rootfs_tar(&spec(&["-x"]), Path::new("/tmp/x.tar"), None, &mut |_| {});
        assert!(matches!(r, Err(DebianError::InvalidPackage { .. })));
    }
}
