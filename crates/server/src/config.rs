//! The daemon's settings: the optional TOML config file
//! (`/etc/hull/config.toml` when it exists, or `hull serve --config FILE`,
//! which must exist) merged with command-line flags. Precedence: flag >
//! config file > built-in default.
//!
//! ```toml
//! state_dir = "/var/lib/hull"
//! socket = "/run/hull/hull.sock"
//! listen = "127.0.0.1:7070"
//! max_upload = "1G"
//!
//! [defaults]
//! memory = "1G"
//! cpus = 1
//! pids = 1024
//! disk = "1G"
//!
//! [snapshots]
//! backend = "auto"      # or "overlay", "btrfs" (HULL_SNAPSHOT_BACKEND)
//! image_size = "64G"    # a loop-backed btrfs image, when one is made
//!                       # (default: half the free space, 1G..=64G)
//!
//! [network]
//! enabled = true          # false: every sandbox gets network none
//! range = "10.200.0.0/20" # --net-range (default: a free 10.2xx.x.0/20)
//! range6 = "fd68:756c::/48" # --net-range6
//! pool = 4                # ready namespaces kept
//! rollout = "none"        # default policy per profile (docs/network.md)
//! session = "open"
//! dns = "192.0.2.53:53"   # --dns: upstream of hull's resolver
//! upstream_ca = "/etc/hull/extra-ca.pem" # --upstream-ca: also trusted
//!                         # (besides the system bundle) for upstream TLS
//!                         # by the interceptor
//! ```
//!
//! Every key is optional. Unknown keys are errors (a typo must not silently
//! do nothing), and every error names the file and, where it can, the line.
//! Paths in the file must be absolute; relative paths given as flags are
//! made absolute against the current directory. Limits: the file is at most
//! [`MAX_CONFIG_BYTES`]; values are bounded as the API bounds them
//! (`hull_api::limits`).

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use hull_api::Limits;
use hull_api::limits::{GIB, MIB, parse_size};
use hull_runtime::{BackendChoice, SnapshotStoreConfig};
use serde::Deserialize;
use toml::Spanned;

use crate::ServerConfig;

/// Where the daemon looks when no `--config` is given.
pub const DEFAULT_CONFIG: &str = "/etc/hull/config.toml";
/// The state directory when neither flag nor file names one.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/hull";
/// The unix socket when neither flag nor file names one.
pub const DEFAULT_SOCKET: &str = "/run/hull/hull.sock";
/// Default cap on one file or archive upload: 1 GiB.
pub const DEFAULT_MAX_UPLOAD: u64 = 1 << 30;
/// Smallest `max_upload` accepted (smaller would refuse ordinary files).
pub const MIN_MAX_UPLOAD: u64 = MIB;
/// A config file larger than this is refused unread.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}, line {line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot resolve the path {path} against the current directory")]
    Absolute {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `hull serve`'s flags (and their environment variables) set; `None`
/// means "not given", so the config file or the default applies.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    /// `--config FILE`: must exist. Without it, [`DEFAULT_CONFIG`] is read
    /// when it exists.
    pub config: Option<PathBuf>,
    /// The statically linked guest agent (not a config-file key: it is
    /// installed next to `hull`).
    pub guest_binary: PathBuf,
    /// `--snapshot-backend` (or `HULL_SNAPSHOT_BACKEND`).
    pub snapshot_backend: Option<BackendChoice>,
    /// `--net-range CIDR` (IPv4 sandbox addresses).
    pub net_range: Option<String>,
    /// `--net-range6 CIDR`.
    pub net_range6: Option<String>,
    /// `--dns ADDR`: upstream DNS server of hull's resolver.
    pub dns: Option<SocketAddr>,
    /// `--upstream-ca FILE` (`HULL_UPSTREAM_CA`): an extra PEM CA the TLS
    /// interceptor trusts for upstream servers.
    pub upstream_ca: Option<PathBuf>,
}

/// Smallest loop-backed btrfs image accepted (mkfs.btrfs needs ~114 MiB).
pub const MIN_SNAPSHOT_IMAGE: u64 = 256 * MIB;
/// Largest loop-backed btrfs image accepted (it is sparse; 16 TiB).
pub const MAX_SNAPSHOT_IMAGE: u64 = 16384 * GIB;

/// A parsed and validated config file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FileConfig {
    /// The file it was read from (`None`: no file, all defaults).
    pub path: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub max_upload_bytes: Option<u64>,
    /// The `[defaults]` table over the built-in defaults.
    pub defaults: Limits,
    /// The `[snapshots]` table.
    pub snapshot_backend: Option<BackendChoice>,
    pub snapshot_image_bytes: Option<u64>,
    /// The `[network]` table.
    pub network: NetworkFile,
}

/// The `[network]` table, parsed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NetworkFile {
    pub enabled: Option<bool>,
    pub range: Option<String>,
    pub range6: Option<String>,
    pub pool: Option<usize>,
    pub rollout: Option<hull_api::NetworkPolicy>,
    pub session: Option<hull_api::NetworkPolicy>,
    pub dns: Option<SocketAddr>,
    pub upstream_ca: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    enabled: Option<bool>,
    range: Option<Spanned<String>>,
    range6: Option<Spanned<String>>,
    pool: Option<Spanned<u32>>,
    rollout: Option<Spanned<String>>,
    session: Option<Spanned<String>>,
    dns: Option<SocketAddr>,
    upstream_ca: Option<Spanned<PathBuf>>,
}

/// The file's shape, with source spans for errors found after parsing.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<Spanned<PathBuf>>,
    socket: Option<Spanned<PathBuf>>,
    listen: Option<SocketAddr>,
    max_upload: Option<Spanned<String>>,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    snapshots: RawSnapshots,
    #[serde(default)]
    network: RawNetwork,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnapshots {
    backend: Option<Spanned<String>>,
    image_size: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    memory: Option<Spanned<String>>,
    cpus: Option<Spanned<f64>>,
    pids: Option<Spanned<u32>>,
    disk: Option<Spanned<String>>,
}

/// An error at a byte range of the text.
struct SpanError {
    span: Option<Range<usize>>,
    message: String,
}

fn at<T>(s: &Spanned<T>, message: String) -> SpanError {
    SpanError {
        span: Some(s.span()),
        message,
    }
}

impl FileConfig {
    /// Load `explicit` (which must exist), else [`DEFAULT_CONFIG`] if it
    /// exists, else an empty config.
    pub fn load(explicit: Option<&Path>) -> Result<FileConfig, ConfigError> {
        match explicit {
            Some(p) => Self::load_file(p),
            None if Path::new(DEFAULT_CONFIG).exists() => {
                Self::load_file(Path::new(DEFAULT_CONFIG))
            }
            None => Ok(FileConfig::default()),
        }
    }

    /// Read and parse one file.
    pub fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
        use std::io::Read;
        let read_err = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut text = String::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                message: format!("larger than {MAX_CONFIG_BYTES} bytes"),
            });
        }
        Self::parse(&text, path)
    }

    /// Parse a config text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        Self::parse_inner(text, path).map_err(|e| match e.span {
            Some(span) => ConfigError::Invalid {
                path: path.to_path_buf(),
                line: line_of(text, span.start),
                message: e.message,
            },
            None => ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.message,
            },
        })
    }

    fn parse_inner(text: &str, path: &Path) -> Result<FileConfig, SpanError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| SpanError {
            span: e.span(),
            message: e.message().trim().to_string(),
        })?;
        let absolute = |key: &str, p: Option<Spanned<PathBuf>>| match p {
            Some(p) if !p.get_ref().is_absolute() => Err(at(
                &p,
                format!("{key} {:?} must be an absolute path", p.get_ref()),
            )),
            Some(p) => Ok(Some(p.into_inner())),
            None => Ok(None),
        };
        let state_dir = absolute("state_dir", raw.state_dir)?;
        let socket = absolute("socket", raw.socket)?;
        let max_upload_bytes = match &raw.max_upload {
            Some(s) => {
                let v = parse_size(s.get_ref()).map_err(|e| at(s, e.message))?;
                if v < MIN_MAX_UPLOAD {
                    return Err(at(
                        s,
                        format!("max_upload {:?} is below the minimum of 1M", s.get_ref()),
                    ));
                }
                Some(v)
            }
            None => None,
        };
        // Apply one key at a time over valid defaults, so a bound that
        // fails is the key just applied.
        let d = &raw.defaults;
        let mut l = Limits::default();
        if let Some(s) = &d.memory {
            l.memory_bytes = parse_size(s.get_ref()).map_err(|e| at(s, e.message))?;
            l.validate().map_err(|e| at(s, e.message))?;
        }
        if let Some(s) = &d.cpus {
            l.cpus = *s.get_ref();
            l.validate().map_err(|e| at(s, e.message))?;
        }
        if let Some(s) = &d.pids {
            l.pids = *s.get_ref();
            l.validate().map_err(|e| at(s, e.message))?;
        }
        if let Some(s) = &d.disk {
            l.disk_bytes = parse_size(s.get_ref()).map_err(|e| at(s, e.message))?;
            l.validate().map_err(|e| at(s, e.message))?;
        }
        let snapshot_backend = match &raw.snapshots.backend {
            Some(s) => Some(
                BackendChoice::parse(s.get_ref())
                    .map_err(|e| at(s, format!("[snapshots] backend: {e}")))?,
            ),
            None => None,
        };
        let snapshot_image_bytes = match &raw.snapshots.image_size {
            Some(s) => {
                let v = parse_size(s.get_ref()).map_err(|e| at(s, e.message))?;
                if !(MIN_SNAPSHOT_IMAGE..=MAX_SNAPSHOT_IMAGE).contains(&v) {
                    return Err(at(
                        s,
                        format!(
                            "[snapshots] image_size {:?} is outside 256M..=16T",
                            s.get_ref()
                        ),
                    ));
                }
                Some(v)
            }
            None => None,
        };
        let n = &raw.network;
        let policy = |s: &Option<Spanned<String>>, key: &str| match s {
            Some(s) => s
                .get_ref()
                .parse::<hull_api::NetworkPolicy>()
                .map(Some)
                .map_err(|e| at(s, format!("[network] {key}: {e}"))),
            None => Ok(None),
        };
        let pool = match &n.pool {
            Some(p) if *p.get_ref() > 256 => {
                return Err(at(p, "[network] pool: at most 256".to_string()));
            }
            Some(p) => Some(*p.get_ref() as usize),
            None => None,
        };
        let network = NetworkFile {
            enabled: n.enabled,
            range: n.range.as_ref().map(|s| s.get_ref().clone()),
            range6: n.range6.as_ref().map(|s| s.get_ref().clone()),
            pool,
            rollout: policy(&n.rollout, "rollout")?,
            session: policy(&n.session, "session")?,
            dns: n.dns,
            upstream_ca: match &n.upstream_ca {
                Some(p) if !p.get_ref().is_absolute() => {
                    return Err(at(
                        p,
                        "[network] upstream_ca: the path must be absolute".to_string(),
                    ));
                }
                Some(p) => Some(p.get_ref().clone()),
                None => None,
            },
        };
        Ok(FileConfig {
            network,
            path: Some(path.to_path_buf()),
            state_dir,
            socket,
            listen: raw.listen,
            max_upload_bytes,
            defaults: l,
            snapshot_backend,
            snapshot_image_bytes,
        })
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn absolute(p: PathBuf) -> Result<PathBuf, ConfigError> {
    std::path::absolute(&p).map_err(|source| ConfigError::Absolute { path: p, source })
}

/// Merge flags over a loaded file over the built-in defaults.
pub fn merge(o: Overrides, file: FileConfig) -> Result<ServerConfig, ConfigError> {
    let state_dir = match o.state_dir {
        Some(p) => absolute(p)?,
        None => file
            .state_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
    };
    let socket = match o.socket {
        Some(p) => absolute(p)?,
        None => file.socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
    };
    Ok(ServerConfig {
        state_dir,
        socket,
        listen: o.listen.or(file.listen),
        guest_binary: o.guest_binary,
        defaults: file.defaults,
        snapshots: SnapshotStoreConfig {
            backend: o
                .snapshot_backend
                .or(file.snapshot_backend)
                .unwrap_or(BackendChoice::Auto),
            image_bytes: file.snapshot_image_bytes,
        },
        max_upload_bytes: file.max_upload_bytes.unwrap_or(DEFAULT_MAX_UPLOAD),
        config_file: file.path,
        network: {
            let d = hull_runtime::NetworkConfig::default();
            let n = file.network;
            hull_runtime::NetworkConfig {
                enabled: n.enabled.unwrap_or(d.enabled),
                range4: o.net_range.or(n.range),
                range6: o.net_range6.or(n.range6),
                pool_size: n.pool.unwrap_or(d.pool_size),
                rollout_default: n.rollout.unwrap_or(d.rollout_default),
                session_default: n.session.unwrap_or(d.session_default),
                dns_upstream: o.dns.or(n.dns),
                upstream_ca: match o.upstream_ca {
                    Some(p) => Some(absolute(p)?),
                    None => n.upstream_ca,
                },
                proxy: None,
            }
        },
    })
}

/// What `hull serve` calls: load the config file named by `o.config` (or
/// the default one if it exists) and merge `o` over it.
pub fn resolve(o: Overrides) -> Result<ServerConfig, ConfigError> {
    let file = FileConfig::load(o.config.as_deref())?;
    merge(o, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(text, Path::new("/etc/hull/test.toml"))
    }

    #[test]
    fn parses_every_key() {
        let c = parse(
            "state_dir = \"/srv/hull\"\nsocket = \"/tmp/x.sock\"\nlisten = \"127.0.0.1:7070\"\n\
             max_upload = \"2G\"\n[defaults]\nmemory = \"512M\"\ncpus = 2\npids = 64\ndisk = \"3G\"\n",
        )
        .unwrap();
        assert_eq!(c.state_dir.as_deref(), Some(Path::new("/srv/hull")));
        assert_eq!(c.socket.as_deref(), Some(Path::new("/tmp/x.sock")));
        assert_eq!(c.listen, Some("127.0.0.1:7070".parse().unwrap()));
        assert_eq!(c.max_upload_bytes, Some(2 << 30));
        assert_eq!(
            c.defaults,
            Limits {
                memory_bytes: 512 << 20,
                cpus: 2.0,
                pids: 64,
                disk_bytes: 3 << 30
            }
        );
        // Fractional cpus, and an empty file is all defaults.
        assert_eq!(parse("[defaults]\ncpus = 0.5").unwrap().defaults.cpus, 0.5);
        let empty = parse("").unwrap();
        assert_eq!(empty.defaults, Limits::default());
        assert_eq!(empty.max_upload_bytes, None);
    }

    /// Each bad file fails with the line of the offending key.
    #[test]
    fn errors_name_the_file_and_line() {
        for (text, line, needle) in [
            ("socket = \"/s\"\nsockett = 1\n", 2, "sockett"),
            ("\n\n[defaults]\nmemory = \"lots\"\n", 4, "invalid size"),
            ("[defaults]\npids = 64\ncpus = 100000\n", 3, "cpu limit"),
            ("[defaults]\nmemory = \"1K\"\n", 2, "memory limit"),
            ("[defaults]\ndisk = \"0\"\n", 2, "disk limit"),
            ("[defaults]\npids = -1\n", 2, ""),
            ("[defaults]\nswap = \"1G\"\n", 2, "swap"),
            ("listen = \"not an address\"\n", 1, ""),
            ("state_dir = \"relative/dir\"\n", 1, "absolute"),
            ("x = \n", 1, ""),
            ("max_upload = \"10\"\n", 1, "minimum"),
            ("max_upload = \"99999999T\"\n", 1, "invalid size"),
        ] {
            let e = parse(text).unwrap_err();
            let msg = e.to_string();
            match &e {
                ConfigError::Invalid { line: l, .. } => assert_eq!(*l, line, "{text:?}: {msg}"),
                other => panic!("{text:?}: expected a line, got {other:?}"),
            }
            assert!(
                msg.starts_with("config file /etc/hull/test.toml, line "),
                "{msg}"
            );
            assert!(msg.contains(needle), "{text:?}: {msg}");
        }
    }

    #[test]
    fn flags_override_file_overrides_defaults() {
        let file = parse(
            "state_dir = \"/srv/hull\"\nsocket = \"/srv/s.sock\"\nlisten = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let c = merge(
            Overrides {
                socket: Some("/tmp/flag.sock".into()),
                guest_binary: "/g".into(),
                ..Default::default()
            },
            file.clone(),
        )
        .unwrap();
        assert_eq!(c.state_dir, Path::new("/srv/hull"), "from the file");
        assert_eq!(c.socket, Path::new("/tmp/flag.sock"), "the flag wins");
        assert_eq!(c.listen, Some("127.0.0.1:1".parse().unwrap()));
        assert_eq!(c.max_upload_bytes, DEFAULT_MAX_UPLOAD);
        assert_eq!(
            c.config_file.as_deref(),
            Some(Path::new("/etc/hull/test.toml"))
        );
        let d = merge(
            Overrides {
                state_dir: Some("rel".into()),
                ..Default::default()
            },
            FileConfig::default(),
        )
        .unwrap();
        assert_eq!(d.state_dir, std::env::current_dir().unwrap().join("rel"));
        assert_eq!(d.socket, Path::new(DEFAULT_SOCKET));
        assert_eq!(d.listen, None);
        assert_eq!(d.defaults, Limits::default());
        assert_eq!(d.config_file, None);
    }

    #[test]
    fn upstream_ca_from_file_or_flag() {
        let c = parse("[network]\nupstream_ca = \"/etc/x/ca.pem\"\n").unwrap();
        assert_eq!(
            c.network.upstream_ca.as_deref(),
            Some(Path::new("/etc/x/ca.pem"))
        );
        let m = merge(Overrides::default(), c.clone()).unwrap();
        assert_eq!(
            m.network.upstream_ca.as_deref(),
            Some(Path::new("/etc/x/ca.pem"))
        );
        let flag = Overrides {
            upstream_ca: Some("rel.pem".into()),
            ..Default::default()
        };
        assert_eq!(
            merge(flag, c).unwrap().network.upstream_ca,
            Some(std::env::current_dir().unwrap().join("rel.pem"))
        );
        let e = parse("[network]\nupstream_ca = \"rel.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("absolute") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn snapshot_store_settings() {
        let c = parse("[snapshots]\nbackend = \"overlay\"\nimage_size = \"2G\"\n").unwrap();
        assert_eq!(c.snapshot_backend, Some(BackendChoice::Overlay));
        assert_eq!(c.snapshot_image_bytes, Some(2 << 30));
        let m = merge(Overrides::default(), c.clone()).unwrap();
        assert_eq!(m.snapshots.backend, BackendChoice::Overlay);
        assert_eq!(m.snapshots.image_bytes, Some(2 << 30));
        let flag = Overrides {
            snapshot_backend: Some(BackendChoice::Btrfs),
            ..Default::default()
        };
        assert_eq!(
            merge(flag, c).unwrap().snapshots.backend,
            BackendChoice::Btrfs
        );
        let d = merge(Overrides::default(), FileConfig::default()).unwrap();
        assert_eq!(d.snapshots.backend, BackendChoice::Auto);
        for (bad, says) in [
            ("[snapshots]\nbackend = \"zfs\"\n", "zfs"),
            ("[snapshots]\nimage_size = \"1M\"\n", "outside"),
            ("[snapshots]\nimage_size = \"nope\"\n", "nope"),
            ("[snapshots]\nsize = \"1G\"\n", "unknown field"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("line 2"), "{bad}: {e}");
        }
    }

    #[test]
    fn an_explicit_file_must_exist_and_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.toml");
        let e = resolve(Overrides {
            config: Some(missing.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            matches!(&e, ConfigError::Read { path, .. } if *path == missing),
            "{e}"
        );
        let big = dir.path().join("big.toml");
        std::fs::write(
            &big,
            format!("# {}\n", "x".repeat(MAX_CONFIG_BYTES as usize)),
        )
        .unwrap();
        assert!(matches!(
            FileConfig::load_file(&big),
            Err(ConfigError::Parse { .. })
        ));
        let ok = dir.path().join("ok.toml");
        std::fs::write(&ok, "[defaults]\npids = 99\n").unwrap();
        let c = resolve(Overrides {
            config: Some(ok.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((c.defaults.pids, c.config_file), (99, Some(ok)));
    }
}
