//! Wire types of port exposure: a service listening on a TCP port inside a
//! sandbox made reachable through the daemon
//! (`POST /v1/sandboxes/{id}/ports`), as an HTTP/WebSocket reverse proxy at
//! `/v1/sandboxes/{id}/ports/{port}/http/` or as raw TCP carried over a
//! WebSocket at `/v1/sandboxes/{id}/ports/{port}/tcp`, both behind the API's
//! auth. The proxied traffic itself has no types here.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How an exposed port is reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PortProtocol {
    /// HTTP and WebSocket, reverse-proxied at `.../ports/{port}/http/`
    /// (the raw TCP route works too).
    #[default]
    Http,
    /// Raw TCP only: each WebSocket on `.../ports/{port}/tcp` is one TCP
    /// connection to the port, its bytes carried as binary messages.
    Tcp,
}

impl PortProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Http => "http",
            PortProtocol::Tcp => "tcp",
        }
    }
}

/// Expose a TCP port of a sandbox (idempotent: exposing it again keeps
/// it, with the protocol of the latest request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExposePort {
    /// 1 to 65535: where the service listens inside the sandbox (on
    /// 127.0.0.1 or 0.0.0.0 there).
    pub port: u32,
    /// `http` (default) or `tcp`.
    #[serde(default)]
    pub protocol: PortProtocol,
}

/// An exposed port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExposedPort {
    pub port: u16,
    pub protocol: PortProtocol,
    /// The sandbox (its id).
    pub sandbox: String,
    /// The route on the daemon: `/v1/sandboxes/{id}/ports/{port}/http/`
    /// for `http`, `/v1/sandboxes/{id}/ports/{port}/tcp` for `tcp`.
    pub path: String,
    /// `path` made absolute with the `Host` the request was sent to
    /// (`http://...` for `http`, `ws://...` for `tcp`). Over the unix
    /// socket that host means nothing outside the machine: prefer your own
    /// base URL + `path`.
    pub url: String,
    /// Unix seconds.
    pub created_at: u64,
}

/// The exposed ports of a sandbox, by port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExposedPorts {
    pub ports: Vec<ExposedPort>,
}

/// What the daemon persists about an exposure (inside the sandbox record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortExposure {
    pub port: u16,
    pub protocol: PortProtocol,
    pub created_at: u64,
}

/// Most ports exposed on one sandbox.
pub const MAX_EXPOSED_PORTS: usize = 64;

/// Parse a port as it appears in a path (`8080`): 1 to 65535, digits only.
pub fn parse_port(s: &str) -> Result<u16, crate::ApiError> {
    let bad = || {
        crate::ApiError::invalid(format!(
            "invalid port {:?}: expected a number from 1 to 65535",
            s.chars().take(32).collect::<String>()
        ))
    };
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match s.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(bad()),
    }
}

/// Check a requested port: 1 to 65535.
pub fn check_port(p: u32) -> Result<u16, crate::ApiError> {
    if (1..=65535).contains(&p) {
        Ok(p as u16)
    } else {
        Err(crate::ApiError::invalid(format!(
            "invalid port {p}: expected a number from 1 to 65535"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_strictly() {
        assert_eq!(parse_port("8080").unwrap(), 8080);
        assert_eq!(parse_port("1").unwrap(), 1);
        assert_eq!(parse_port("65535").unwrap(), 65535);
        for bad in [
            "", "0", "65536", "70000", "abc", "-1", "+80", "8080 ", "999999", "00000",
        ] {
            assert!(parse_port(bad).is_err(), "{bad:?}");
        }
        assert!(check_port(0).is_err());
        assert!(check_port(70000).is_err());
        assert_eq!(check_port(22).unwrap(), 22);
        let r: ExposePort = serde_json::from_str(r#"{"port":80}"#).unwrap();
        assert_eq!(r.protocol, PortProtocol::Http);
        assert!(serde_json::from_str::<ExposePort>(r#"{"port":80,"x":1}"#).is_err());
        assert!(serde_json::from_str::<ExposePort>(r#"{"port":80,"protocol":"udp"}"#).is_err());
    }
}
