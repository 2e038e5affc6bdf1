//! The daemon's optional TOML config file (`/etc/hull/config.toml`, or
//! `hull serve --config FILE`). Every key is optional; command-line flags
//! override it, and it overrides the built-in defaults.
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
//! ```
//!
//! Unknown keys are errors (a typo must not silently do nothing).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hull_api::Limits;
use hull_api::limits::parse_size;
use serde::Deserialize;

/// Where the daemon looks when no `--config` is given.
pub const DEFAULT_CONFIG: &str = "/etc/hull/config.toml";

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub max_upload: Option<String>,
    #[serde(default)]
    pub defaults: DefaultsConfig,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsConfig {
    pub memory: Option<String>,
    pub cpus: Option<f64>,
    pub pids: Option<u32>,
    pub disk: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl FileConfig {
    /// Load `explicit` (which must exist), else the default file if present.
    pub fn load(explicit: Option<&Path>) -> Result<FileConfig, ConfigError> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None if Path::new(DEFAULT_CONFIG).exists() => PathBuf::from(DEFAULT_CONFIG),
            None => return Ok(FileConfig::default()),
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse { path, message })
    }

    /// Parse a config text (errors name the line).
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        let cfg: FileConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.limits(&Limits::default())?;
        cfg.max_upload_bytes(0)?;
        Ok(cfg)
    }

    /// The default limits, starting from `base`.
    pub fn limits(&self, base: &Limits) -> Result<Limits, String> {
        let mut l = *base;
        let d = &self.defaults;
        if let Some(m) = &d.memory {
            l.memory_bytes =
                parse_size(m).map_err(|e| format!("defaults.memory: {}", e.message))?;
        }
        if let Some(c) = d.cpus {
            l.cpus = c;
        }
        if let Some(p) = d.pids {
            l.pids = p;
        }
        if let Some(s) = &d.disk {
            l.disk_bytes = parse_size(s).map_err(|e| format!("defaults.disk: {}", e.message))?;
        }
        l.validate()
            .map_err(|e| format!("defaults: {}", e.message))?;
        Ok(l)
    }

    pub fn max_upload_bytes(&self, default: u64) -> Result<u64, String> {
        match &self.max_upload {
            Some(s) => parse_size(s).map_err(|e| format!("max_upload: {}", e.message)),
            None => Ok(default),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let c = FileConfig::parse(
            "socket = \"/tmp/x.sock\"\n[defaults]\nmemory = \"512M\"\npids = 64\n",
        )
        .unwrap();
        assert_eq!(c.socket.as_deref(), Some(Path::new("/tmp/x.sock")));
        let l = c.limits(&Limits::default()).unwrap();
        assert_eq!((l.memory_bytes, l.pids), (512 << 20, 64));
        assert!(
            FileConfig::parse("sockett = 1")
                .unwrap_err()
                .contains("sockett")
        );
        assert!(FileConfig::parse("[defaults]\nmemory = \"lots\"").is_err());
        assert!(FileConfig::parse("[defaults]\ncpus = 100000").is_err());
        assert!(FileConfig::parse("listen = \"not an address\"").is_err());
    }
}
