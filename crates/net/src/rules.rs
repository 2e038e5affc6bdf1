//! Compiled egress rules: what one sandbox may reach, in the form that the
//! egress proxy, the DNS resolver and the TLS interceptor consult on every
//! connection, and the registry that maps a sandbox's address to its rules.
//!
//! The API's policy (`hull_api::network`) is validated and compiled into a
//! [`SandboxRules`] once, when it is set; lookups here are pure and cheap.
//! A policy change swaps the `Arc` in the [`Registry`]: connections already
//! open keep the rules they were checked against, new ones see the new rules.
//!
//! Limits: domain names are matched as ASCII, lowercased, without a trailing
//! dot; internationalised names must arrive in their `xn--` form (which is
//! what clients put in SNI, `Host` and DNS queries anyway).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use ipnet::IpNet;

/// Errors of building rules from user input.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("invalid domain pattern {0:?}: use a name like example.com or *.example.com")]
    Domain(String),
    #[error("invalid port range {0:?}: use 443 or 8000-8100 (1-65535)")]
    Ports(String),
}

/// The network mode of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Loopback only: the sandbox has no route anywhere.
    None,
    /// Egress only to the listed domains, CIDRs and peers.
    Allowlist,
    /// Full egress with NAT (still never to the host, link-local or other
    /// sandboxes unless a peer rule names them).
    Open,
    /// Like `Open` (or `Allowlist` when rules are given), and every HTTP(S)
    /// exchange is intercepted and stored in a cassette.
    Record,
    /// No live network: HTTP(S) answered from a cassette.
    Replay,
}

impl Mode {
    /// The name used in the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Allowlist => "allowlist",
            Mode::Open => "open",
            Mode::Record => "record",
            Mode::Replay => "replay",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `example.com` (that name only) or `*.example.com` (any name below it,
/// not `example.com` itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DomainPattern {
    /// Lowercase, no trailing dot, without the `*.`.
    name: String,
    wildcard: bool,
}

impl DomainPattern {
    /// Parse `example.com` or `*.example.com`.
    pub fn parse(s: &str) -> Result<DomainPattern, RulesError> {
        let bad = || RulesError::Domain(s.to_string());
        let (wildcard, rest) = match s.strip_prefix("*.") {
            Some(r) => (true, r),
            None => (false, s),
        };
        let name = normalize_host(rest).ok_or_else(bad)?;
        // A bare top-level wildcard (`*.com`) is allowed; `*` alone is not.
        Ok(DomainPattern { name, wildcard })
    }

    /// Whether `host` (as sent by a client: any case, maybe a trailing dot)
    /// matches.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        if self.wildcard {
            host.len() > self.name.len() + 1
                && host
                    .get(host.len() - self.name.len()..)
                    .is_some_and(|tail| tail.eq_ignore_ascii_case(&self.name))
                && host.as_bytes()[host.len() - self.name.len() - 1] == b'.'
        } else {
            host.eq_ignore_ascii_case(&self.name)
        }
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

/// A host name as hull compares it: lowercase ASCII letters, digits and
/// hyphens in dot-separated labels of 1-63 bytes, at most 253 bytes, no
/// trailing dot. `None` for anything else (IP literals included).
pub fn normalize_host(s: &str) -> Option<String> {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > 253 || s.parse::<IpAddr>().is_ok() {
        return None;
    }
    for label in s.split('.') {
        if label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
    }
    Some(s.to_ascii_lowercase())
}

/// Ports a rule applies to; empty means any port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PortSet(Vec<RangeInclusive<u16>>);

impl PortSet {
    /// Any port.
    pub fn any() -> PortSet {
        PortSet(Vec::new())
    }

    /// Parse `443` or `8000-8100`.
    pub fn parse_range(s: &str) -> Result<RangeInclusive<u16>, RulesError> {
        let bad = || RulesError::Ports(s.to_string());
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (a, b),
            None => (s, s),
        };
        let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
        if lo == 0 || lo > hi {
            return Err(bad());
        }
        Ok(lo..=hi)
    }

    /// From ranges (empty: any port).
    pub fn from_ranges(ranges: Vec<RangeInclusive<u16>>) -> PortSet {
        PortSet(ranges)
    }

    /// The ranges (empty: any port).
    pub fn ranges(&self) -> &[RangeInclusive<u16>] {
        &self.0
    }

    /// Whether `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        self.0.is_empty() || self.0.iter().any(|r| r.contains(&port))
    }
}

/// Egress to names matching `pattern` on `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRule {
    pub pattern: DomainPattern,
    pub ports: PortSet,
}

/// Egress to addresses in `net` on `ports` (TCP and UDP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrRule {
    pub net: IpNet,
    pub ports: PortSet,
}

/// Headers set on every HTTP request to a matching name (secret
/// injection). The names are lowercase HTTP header names; the values never
/// enter the sandbox. A matching name is intercepted (its TLS terminated
/// with the sandbox's CA) so the header can be added.
#[derive(Clone, PartialEq, Eq)]
pub struct HeaderRule {
    pub pattern: DomainPattern,
    pub set: Vec<(String, String)>,
}

impl fmt::Debug for HeaderRule {
    // Never print the values: they are secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.set.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("HeaderRule")
            .field("pattern", &self.pattern)
            .field("headers", &names)
            .finish()
    }
}

/// Everything the boundary needs to decide about one sandbox's traffic.
#[derive(Debug, Clone)]
pub struct SandboxRules {
    pub sandbox_id: String,
    pub mode: Mode,
    pub domains: Vec<DomainRule>,
    pub cidrs: Vec<CidrRule>,
    /// Addresses of peer sandboxes this one may open connections to.
    pub peers: Vec<IpAddr>,
    pub headers: Vec<HeaderRule>,
    /// `Record`: the cassette file written; `Replay`: the one read.
    pub cassette: Option<PathBuf>,
}

impl SandboxRules {
    /// Rules that allow nothing (mode `none`).
    pub fn deny_all(sandbox_id: &str) -> SandboxRules {
        SandboxRules {
            sandbox_id: sandbox_id.to_string(),
            mode: Mode::None,
            domains: Vec::new(),
            cidrs: Vec::new(),
            peers: Vec::new(),
            headers: Vec::new(),
            cassette: None,
        }
    }

    /// Whether a connection to `host` (a name from SNI, `Host` or a DNS
    /// query) on `port` is allowed. `port` 0 asks about the name on any
    /// port (DNS answers).
    pub fn allows_domain(&self, host: &str, port: u16) -> bool {
        match self.mode {
            Mode::None | Mode::Replay => false,
            Mode::Open => true,
            Mode::Record if self.domains.is_empty() && self.cidrs.is_empty() => true,
            Mode::Allowlist | Mode::Record => self
                .domains
                .iter()
                .any(|r| r.pattern.matches(host) && (port == 0 || r.ports.contains(port))),
        }
    }

    /// Whether a connection straight to `ip:port` (no name involved) is
    /// allowed by a CIDR or peer rule, or by an open mode. The host's own
    /// addresses, link-local and other sandboxes are refused before this is
    /// asked (by the firewall), except listed peers.
    pub fn allows_addr(&self, ip: IpAddr, port: u16) -> bool {
        if self.peers.contains(&ip) {
            return true;
        }
        match self.mode {
            Mode::None | Mode::Replay => false,
            Mode::Open => true,
            Mode::Record if self.domains.is_empty() && self.cidrs.is_empty() => true,
            Mode::Allowlist | Mode::Record => self
                .cidrs
                .iter()
                .any(|r| r.net.contains(&ip) && r.ports.contains(port)),
        }
    }

    /// The headers to set on requests to `host` (empty: none).
    pub fn headers_for(&self, host: &str) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter(|r| r.pattern.matches(host))
            .flat_map(|r| r.set.iter().cloned())
            .collect()
    }

    /// Whether TLS to `host` is terminated by hull (with the sandbox's CA)
    /// rather than spliced through: for header injection, and for every
    /// name in `Record` and `Replay` modes.
    pub fn intercepts(&self, host: &str) -> bool {
        matches!(self.mode, Mode::Record | Mode::Replay)
            || self.headers.iter().any(|r| r.pattern.matches(host))
    }
}

/// Sandbox address -> its rules. Shared by the proxy, the DNS server and
/// the runtime (which inserts, replaces and removes entries).
#[derive(Debug, Default)]
pub struct Registry {
    by_addr: RwLock<HashMap<IpAddr, Arc<SandboxRules>>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Set (or replace) the rules for the sandbox at each of `addrs`.
    pub fn set(&self, addrs: &[IpAddr], rules: Arc<SandboxRules>) {
        let mut map = self.by_addr.write().unwrap_or_else(|e| e.into_inner());
        for a in addrs {
            map.insert(*a, rules.clone());
        }
    }

    /// Forget `addrs`.
    pub fn remove(&self, addrs: &[IpAddr]) {
        let mut map = self.by_addr.write().unwrap_or_else(|e| e.into_inner());
        for a in addrs {
            map.remove(a);
        }
    }

    /// The rules of the sandbox whose address is `src`.
    pub fn lookup(&self, src: IpAddr) -> Option<Arc<SandboxRules>> {
        let src = match src {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(src, IpAddr::V4),
            v4 => v4,
        };
        self.by_addr
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&src)
            .cloned()
    }
}

/// What was refused, for the caller to see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// `tcp`, `udp`, `dns`, `http`, `tls` (the proxy and DNS server); from
    /// the firewall also `icmp`, `icmpv6`, `sctp`, `udplite`, `igmp`,
    /// `gre`, `esp`, or `ip` for any other protocol.
    pub proto: &'static str,
    /// The destination as the sandbox asked for it: `example.com:443`,
    /// `10.1.2.3:5432`, a DNS name.
    pub dest: String,
    /// Why, for a person: `not in the allowlist`, `no SNI`, ...
    pub reason: String,
}

/// Where the boundary reports denied connections (the runtime turns them
/// into sandbox events).
pub trait EventSink: Send + Sync {
    fn denied(&self, sandbox_id: &str, denied: Denied);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard_patterns() {
        let exact = DomainPattern::parse("Example.COM.").unwrap();
        assert!(exact.matches("example.com"));
        assert!(exact.matches("EXAMPLE.com."));
        assert!(!exact.matches("www.example.com"));
        assert!(!exact.matches("badexample.com"));
        let wild = DomainPattern::parse("*.example.com").unwrap();
        assert!(wild.matches("a.example.com"));
        assert!(wild.matches("a.b.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("aexample.com"));
        assert!(!wild.matches("example.com.evil.net"));
        for bad in [
            "", "*", "*.", "a..b", "-a.com", "a b.com", "10.0.0.1", "::1", "a/b",
        ] {
            assert!(DomainPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ports() {
        assert_eq!(PortSet::parse_range("443").unwrap(), 443..=443);
        assert_eq!(PortSet::parse_range("80-90").unwrap(), 80..=90);
        for bad in ["0", "90-80", "x", "70000", "-1"] {
            assert!(PortSet::parse_range(bad).is_err(), "{bad}");
        }
        let set = PortSet::from_ranges(vec![443..=443]);
        assert!(set.contains(443) && !set.contains(80));
        assert!(PortSet::any().contains(1));
    }

    #[test]
    fn modes_decide() {
        let mut r = SandboxRules::deny_all("sb");
        assert!(!r.allows_domain("example.com", 443));
        r.mode = Mode::Allowlist;
        r.domains.push(DomainRule {
            pattern: DomainPattern::parse("*.example.com").unwrap(),
            ports: PortSet::from_ranges(vec![443..=443]),
        });
        r.cidrs.push(CidrRule {
            net: "10.0.0.0/8".parse().unwrap(),
            ports: PortSet::any(),
        });
        assert!(r.allows_domain("api.example.com", 443));
        assert!(r.allows_domain("api.example.com", 0));
        assert!(!r.allows_domain("api.example.com", 80));
        assert!(!r.allows_domain("example.org", 443));
        assert!(r.allows_addr("10.1.2.3".parse().unwrap(), 5432));
        assert!(!r.allows_addr("192.0.2.1".parse().unwrap(), 443));
        r.mode = Mode::Open;
        assert!(
            r.allows_domain("example.org", 1) && r.allows_addr("192.0.2.1".parse().unwrap(), 1)
        );
        r.mode = Mode::Replay;
        assert!(!r.allows_addr("10.1.2.3".parse().unwrap(), 1) && r.intercepts("x.org"));
    }

    #[test]
    fn header_rules_never_print_values() {
        let h = HeaderRule {
            pattern: DomainPattern::parse("api.example.com").unwrap(),
            set: vec![("authorization".into(), "Bearer s3cret".into())],
        };
        assert!(!format!("{h:?}").contains("s3cret"));
    }

    #[test]
    fn registry_maps_v4_mapped_sources() {
        let reg = Registry::new();
        let a: IpAddr = "10.88.0.2".parse().unwrap();
        reg.set(&[a], Arc::new(SandboxRules::deny_all("sb")));
        assert!(reg.lookup("::ffff:10.88.0.2".parse().unwrap()).is_some());
        reg.remove(&[a]);
        assert!(reg.lookup(a).is_none());
    }
}
