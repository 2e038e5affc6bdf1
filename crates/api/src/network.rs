//! Network policies: the one grammar the API, the CLI and the SDK share.
//!
//! A policy is a mode (`none`, `open`, `allowlist`, `record`, `replay`)
//! plus allow items (domains with optional ports, CIDRs with optional
//! ports, peer sandboxes) and header rules (secret injection). It travels
//! as a JSON object or, everywhere a policy is accepted, as the compact
//! string form the CLI uses:
//!
//! ```text
//! none | open | allow:ITEM[,ITEM...] | record[:ITEM,...] | replay[:SNAPSHOT]
//! ITEM = example.com[:PORT|:LO-HI] | *.example.com[...] | 10.0.0.0/8[:PORT]
//!      | 10.1.2.3[:PORT] | [2001:db8::/32]:443 | 2001:db8::1 | sandbox:NAME_OR_ID
//! ```
//!
//! This module only parses and validates (pure, no I/O); compiling a policy
//! into enforceable rules (resolving peer names to addresses) is
//! `hull_net::policy`. Header values are secrets: [`NetworkPolicy::redacted`]
//! replaces them with `***` and every response and log uses that form.
//! Limits: at most [`MAX_ALLOW_ITEMS`] allow items, [`MAX_HEADER_RULES`]
//! header rules and [`MAX_HEADER_BYTES`] bytes of header names and values;
//! header rules are accepted in the JSON form only.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

/// At most this many allow items in one policy.
pub const MAX_ALLOW_ITEMS: usize = 256;
/// At most this many header rules in one policy.
pub const MAX_HEADER_RULES: usize = 32;
/// At most this many bytes of header names and values in one policy.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// At most this many port ranges on one item.
pub const MAX_PORTS_PER_ITEM: usize = 32;
/// What a redacted header value reads as.
pub const REDACTED: &str = "***";

/// Why a policy was refused; the message names the bad item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "unknown network mode {0:?}: use none, open, allow:ITEMS, record[:ITEMS] or replay[:SNAPSHOT]"
    )]
    Mode(String),
    #[error("invalid allow item {item:?}: {why}")]
    Item { item: String, why: String },
    #[error("invalid header rule for {domain:?}: {why}")]
    Header { domain: String, why: String },
    #[error("too many {what}: {got} (at most {max})")]
    TooMany {
        what: &'static str,
        got: usize,
        max: usize,
    },
    #[error("{0}")]
    Shape(String),
}

/// The network mode of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// Loopback only.
    #[default]
    None,
    /// Egress only to the allow items.
    Allowlist,
    /// Full egress with NAT (never to the host, link-local or other sandboxes).
    Open,
    /// Like `open` (or the allow items when given), recording every HTTP(S) exchange.
    Record,
    /// No live network: HTTP(S) answered from a snapshot's cassette.
    Replay,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::Allowlist => "allowlist",
            NetworkMode::Open => "open",
            NetworkMode::Record => "record",
            NetworkMode::Replay => "replay",
        }
    }

    /// Whether the mode needs a network interface (everything but `none`).
    pub fn needs_network(self) -> bool {
        self != NetworkMode::None
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing a sandbox may reach. Exactly one of `domain`, `cidr`,
/// `sandbox` is set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowItem {
    /// `example.com` (that name) or `*.example.com` (any name below it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// `10.0.0.0/8`, `10.1.2.3`, `2001:db8::/32`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// A peer sandbox, by id or name: it may be connected to on any port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Ports (`443`) or ranges (`8000-8100`); empty: any port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
}

/// Headers set on every HTTP request to a domain (secret injection). The
/// values never enter the sandbox and are never returned by the API.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderRuleSpec {
    /// `api.example.com` or `*.example.com`.
    pub domain: String,
    /// Header name -> value (values are redacted as `***` in responses).
    pub set: std::collections::BTreeMap<String, String>,
}

impl fmt::Debug for HeaderRuleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&String> = self.set.keys().collect();
        f.debug_struct("HeaderRuleSpec")
            .field("domain", &self.domain)
            .field("headers", &names)
            .finish()
    }
}

/// A sandbox's network policy. In JSON, either this object or the
/// string form (`"allow:example.com,10.0.0.0/8"`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, ToSchema)]
pub struct NetworkPolicy {
    pub mode: NetworkMode,
    /// Allow items (`allowlist`, and `record` to restrict what is recorded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<AllowItem>,
    /// Header rules (secret injection).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderRuleSpec>,
    /// `replay`: the snapshot (id or name) whose cassette is replayed;
    /// absent: the one the sandbox was created from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyObject {
    mode: NetworkMode,
    #[serde(default)]
    allow: Vec<AllowItem>,
    #[serde(default)]
    headers: Vec<HeaderRuleSpec>,
    #[serde(default)]
    snapshot: Option<String>,
}

impl<'de> Deserialize<'de> for NetworkPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NetworkPolicy;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a network policy: a string like \"allow:example.com\" or an object with a mode")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<NetworkPolicy, E> {
                s.parse().map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<NetworkPolicy, A::Error> {
                let o = PolicyObject::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let p = NetworkPolicy {
                    mode: o.mode,
                    allow: o.allow,
                    headers: o.headers,
                    snapshot: o.snapshot,
                };
                p.validate().map_err(de::Error::custom)?;
                Ok(p)
            }
        }
        d.deserialize_any(V)
    }
}

impl NetworkPolicy {
    /// Loopback only.
    pub fn none() -> NetworkPolicy {
        NetworkPolicy::default()
    }

    /// Full egress.
    pub fn open() -> NetworkPolicy {
        NetworkPolicy {
            mode: NetworkMode::Open,
            ..NetworkPolicy::default()
        }
    }

    /// The same policy with every header value replaced by `***`.
    pub fn redacted(&self) -> NetworkPolicy {
        let mut p = self.clone();
        for h in &mut p.headers {
            for v in h.set.values_mut() {
                *v = REDACTED.to_string();
            }
        }
        p
    }

    /// Peer sandboxes (ids or names) named by the allow items.
    pub fn peers(&self) -> impl Iterator<Item = &str> {
        self.allow.iter().filter_map(|i| i.sandbox.as_deref())
    }

    /// Check every item; the error names the first bad one.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.allow.len() > MAX_ALLOW_ITEMS {
            return Err(PolicyError::TooMany {
                what: "allow items",
                got: self.allow.len(),
                max: MAX_ALLOW_ITEMS,
            });
        }
        if self.headers.len() > MAX_HEADER_RULES {
            return Err(PolicyError::TooMany {
                what: "header rules",
                got: self.headers.len(),
                max: MAX_HEADER_RULES,
            });
        }
        // Peers are meaningful in every mode but `none`; other items only
        // in `allowlist` and `record`.
        let stray = match self.mode {
            NetworkMode::None => !self.allow.is_empty(),
            NetworkMode::Open | NetworkMode::Replay => {
                self.allow.iter().any(|i| i.sandbox.is_none())
            }
            NetworkMode::Allowlist | NetworkMode::Record => false,
        };
        if stray {
            return Err(PolicyError::Shape(format!(
                "mode {} takes no allow items{}",
                self.mode,
                if self.mode == NetworkMode::None {
                    ""
                } else {
                    " other than sandbox peers"
                }
            )));
        }
        if self.mode == NetworkMode::Allowlist && self.allow.is_empty() {
            return Err(PolicyError::Shape(
                "mode allowlist needs at least one allow item (use none to allow nothing)".into(),
            ));
        }
        if self.snapshot.is_some() && self.mode != NetworkMode::Replay {
            return Err(PolicyError::Shape(format!(
                "snapshot is only for mode replay, not {}",
                self.mode
            )));
        }
        if let Some(s) = &self.snapshot {
            check_ref(s).map_err(|why| PolicyError::Shape(format!("snapshot {s:?}: {why}")))?;
        }
        if self.mode == NetworkMode::None && !self.headers.is_empty() {
            return Err(PolicyError::Shape("mode none takes no header rules".into()));
        }
        for item in &self.allow {
            check_item(item).map_err(|why| PolicyError::Item {
                item: item.to_string(),
                why,
            })?;
        }
        let mut bytes = 0usize;
        for h in &self.headers {
            let bad = |why: String| PolicyError::Header {
                domain: h.domain.clone(),
                why,
            };
            check_domain(&h.domain).map_err(bad)?;
            if h.set.is_empty() {
                return Err(bad("set at least one header".into()));
            }
            for (name, value) in &h.set {
                bytes += name.len() + value.len();
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
                {
                    return Err(bad(format!("{name:?} is not an HTTP header name")));
                }
                if matches!(
                    name.to_ascii_lowercase().as_str(),
                    "host" | "content-length" | "transfer-encoding" | "connection"
                ) {
                    return Err(bad(format!("header {name:?} cannot be set by a rule")));
                }
                if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                    return Err(bad(format!(
                        "the value of {name} contains a line break or NUL"
                    )));
                }
            }
        }
        if bytes > MAX_HEADER_BYTES {
            return Err(PolicyError::TooMany {
                what: "header bytes",
                got: bytes,
                max: MAX_HEADER_BYTES,
            });
        }
        Ok(())
    }
}

impl FromStr for NetworkPolicy {
    type Err = PolicyError;

    /// Parse the compact string form (see the module docs).
    fn from_str(s: &str) -> Result<NetworkPolicy, PolicyError> {
        let s = s.trim();
        let (head, rest) = match s.split_once(':') {
            Some((h, r)) => (h, Some(r)),
            None => (s, None),
        };
        let mode = match head {
            "none" => NetworkMode::None,
            "open" => NetworkMode::Open,
            "allow" | "allowlist" => NetworkMode::Allowlist,
            "record" => NetworkMode::Record,
            "replay" => NetworkMode::Replay,
            _ => return Err(PolicyError::Mode(s.chars().take(64).collect())),
        };
        let mut p = NetworkPolicy {
            mode,
            ..NetworkPolicy::default()
        };
        match (mode, rest) {
            (_, None) => {}
            (NetworkMode::Replay, Some(snap)) => {
                if !snap.is_empty() {
                    p.snapshot = Some(snap.to_string());
                }
            }
            (_, Some(items)) => {
                for raw in items.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                    if p.allow.len() >= MAX_ALLOW_ITEMS {
                        return Err(PolicyError::TooMany {
                            what: "allow items",
                            got: items.split(',').count(),
                            max: MAX_ALLOW_ITEMS,
                        });
                    }
                    p.allow.push(parse_item(raw)?);
                }
            }
        }
        p.validate()?;
        Ok(p)
    }
}

impl fmt::Display for NetworkPolicy {
    /// The compact string form; header rules (JSON only) are summarised
    /// by count, never with values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = match self.mode {
            NetworkMode::Allowlist => "allow",
            m => m.as_str(),
        };
        f.write_str(head)?;
        if let Some(s) = &self.snapshot {
            write!(f, ":{s}")?;
        }
        for (i, item) in self.allow.iter().enumerate() {
            f.write_str(if i == 0 { ":" } else { "," })?;
            write!(f, "{item}")?;
        }
        if !self.headers.is_empty() {
            write!(f, " (+{} header rules)", self.headers.len())?;
        }
        Ok(())
    }
}

impl fmt::Display for AllowItem {
    /// One string-form item per port range joined by `,` (the string form
    /// takes one range per item).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base = if let Some(d) = &self.domain {
            d.clone()
        } else if let Some(c) = &self.cidr {
            if c.contains(':') && !self.ports.is_empty() {
                format!("[{c}]")
            } else {
                c.clone()
            }
        } else if let Some(s) = &self.sandbox {
            format!("sandbox:{s}")
        } else {
            "?".to_string()
        };
        if self.ports.is_empty() {
            return f.write_str(&base);
        }
        for (i, p) in self.ports.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{base}:{p}")?;
        }
        Ok(())
    }
}

fn parse_item(raw: &str) -> Result<AllowItem, PolicyError> {
    let bad = |why: &str| PolicyError::Item {
        item: raw.to_string(),
        why: why.to_string(),
    };
    if let Some(peer) = raw.strip_prefix("sandbox:") {
        let item = AllowItem {
            sandbox: Some(peer.to_string()),
            ..AllowItem::default()
        };
        check_item(&item).map_err(|w| bad(&w))?;
        return Ok(item);
    }
    // `[v6 or v6/len]:ports`
    if let Some(rest) = raw.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or_else(|| bad("missing ]"))?;
        let ports = match after {
            "" => Vec::new(),
            a => vec![
                a.strip_prefix(':')
                    .ok_or_else(|| bad("expected :PORT after ]"))?
                    .to_string(),
            ],
        };
        let item = AllowItem {
            cidr: Some(inner.to_string()),
            ports,
            ..AllowItem::default()
        };
        check_item(&item).map_err(|w| bad(&w))?;
        return Ok(item);
    }
    // A bare IPv6 address or network (no port possible without brackets).
    if raw.matches(':').count() > 1 {
        let item = AllowItem {
            cidr: Some(raw.to_string()),
            ..AllowItem::default()
        };
        check_item(&item).map_err(|w| bad(&w))?;
        return Ok(item);
    }
    let (base, ports) = match raw.split_once(':') {
        Some((b, p)) => (b, vec![p.to_string()]),
        None => (raw, Vec::new()),
    };
    let is_addr = base.contains('/') || base.parse::<IpAddr>().is_ok();
    let item = if is_addr {
        AllowItem {
            cidr: Some(base.to_string()),
            ports,
            ..AllowItem::default()
        }
    } else {
        AllowItem {
            domain: Some(base.to_string()),
            ports,
            ..AllowItem::default()
        }
    };
    check_item(&item).map_err(|w| bad(&w))?;
    Ok(item)
}

fn check_item(item: &AllowItem) -> Result<(), String> {
    let set = [
        item.domain.is_some(),
        item.cidr.is_some(),
        item.sandbox.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set != 1 {
        return Err("set exactly one of domain, cidr, sandbox".into());
    }
    if item.ports.len() > MAX_PORTS_PER_ITEM {
        return Err(format!("at most {MAX_PORTS_PER_ITEM} port ranges per item"));
    }
    for p in &item.ports {
        parse_port_range(p)?;
    }
    if let Some(d) = &item.domain {
        check_domain(d)?;
    }
    if let Some(c) = &item.cidr {
        parse_cidr(c)?;
    }
    if let Some(s) = &item.sandbox {
        if !item.ports.is_empty() {
            return Err("a sandbox peer takes no ports".into());
        }
        check_ref(s)?;
    }
    Ok(())
}

/// A sandbox or snapshot reference: an id or a name (a DNS label).
fn check_ref(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > 63
        || s.starts_with('-')
        || !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("an id or name is a lowercase DNS label (a-z, 0-9, -; at most 63)".into());
    }
    Ok(())
}

/// `example.com` or `*.example.com`: ASCII labels of letters, digits,
/// hyphens (and `_`), 1-63 bytes each, 253 in all; not an IP literal.
pub fn check_domain(d: &str) -> Result<(), String> {
    let name = d.strip_prefix("*.").unwrap_or(d);
    let name = name.strip_suffix('.').unwrap_or(name);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.parse::<IpAddr>().is_err()
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err("not a domain: use example.com or *.example.com (ASCII; xn-- for IDN)".into())
    }
}

/// `443` or `8000-8100` (1-65535, low <= high).
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("bad port {s:?}: use 443 or 8000-8100 (1-65535)");
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let lo: u16 = lo.parse().map_err(|_| bad())?;
    let hi: u16 = hi.parse().map_err(|_| bad())?;
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// `10.0.0.0/8`, `10.1.2.3` (a /32), `2001:db8::/32`, `2001:db8::1`:
/// the network address and prefix length. Host bits must be zero.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u8 = match len {
        None => max,
        Some(l) => l
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("bad prefix length {l:?} (0-{max})"))?,
    };
    let host_bits_zero = match ip {
        IpAddr::V4(v4) => {
            let n = u32::from(v4);
            len == 32 || n & (u32::MAX >> len) == 0
        }
        IpAddr::V6(v6) => {
            let n = u128::from(v6);
            len == 128 || n & (u128::MAX >> len) == 0
        }
    };
    if !host_bits_zero {
        return Err(format!("{s} has host bits set"));
    }
    Ok((ip, len))
}

/// The OpenAPI schema of a request's optional `network` field: the policy
/// object, or its string form, or null.
pub fn policy_or_string_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    let one_of = OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .item(utoipa::openapi::Ref::from_schema_name("NetworkPolicy"))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(
                    "the string form: none, open, allow:ITEM,..., record[:ITEMS], replay[:SNAPSHOT]",
                )),
        )
        .build();
    utoipa::openapi::RefOr::T(Schema::OneOf(one_of))
}

/// `GET`/`PUT /v1/sandboxes/{id}/network`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxNetwork {
    /// The policy in force (header values redacted).
    pub policy: NetworkPolicy,
    /// The same, in the compact string form.
    pub summary: String,
    /// The sandbox's addresses on its `eth0` (empty for `none`).
    #[serde(default)]
    pub addresses: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> NetworkPolicy {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn string_forms() {
        assert_eq!(p("none"), NetworkPolicy::none());
        assert_eq!(p("open"), NetworkPolicy::open());
        let a = p(
            "allow:example.com,*.example.org:443,10.0.0.0/8,10.1.2.3:5432,[2001:db8::/32]:8000-8100,2001:db8::1,sandbox:db",
        );
        assert_eq!(a.mode, NetworkMode::Allowlist);
        assert_eq!(a.allow.len(), 7);
        assert_eq!(a.allow[1].domain.as_deref(), Some("*.example.org"));
        assert_eq!(a.allow[1].ports, vec!["443"]);
        assert_eq!(a.allow[3].cidr.as_deref(), Some("10.1.2.3"));
        assert_eq!(a.allow[4].cidr.as_deref(), Some("2001:db8::/32"));
        assert_eq!(a.allow[4].ports, vec!["8000-8100"]);
        assert_eq!(a.allow[5].cidr.as_deref(), Some("2001:db8::1"));
        assert_eq!(a.allow[6].sandbox.as_deref(), Some("db"));
        // Display round-trips.
        assert_eq!(p(&a.to_string()), a);
        assert_eq!(p("record").mode, NetworkMode::Record);
        assert_eq!(p("record:example.com").allow.len(), 1);
        assert_eq!(p("replay:snap-1").snapshot.as_deref(), Some("snap-1"));
        assert_eq!(p("open:sandbox:db").allow.len(), 1);
    }

    #[test]
    fn bad_strings_name_the_item() {
        for (s, needle) in [
            ("closed", "unknown network mode"),
            ("allow:", "at least one"),
            ("allow:exa mple.com", "exa mple.com"),
            ("allow:10.0.0.1/8", "host bits"),
            ("allow:10.0.0.0/33", "prefix"),
            ("allow:example.com:0", "bad port"),
            ("allow:example.com:90-80", "bad port"),
            ("allow:[2001:db8::/32", "missing ]"),
            ("allow:sandbox:BAD", "DNS label"),
            ("none:example.com", "no allow items"),
            ("open:example.com", "other than sandbox peers"),
            ("replay:Bad_Snap", "snapshot"),
        ] {
            let e = s.parse::<NetworkPolicy>().unwrap_err().to_string();
            assert!(e.contains(needle), "{s}: {e}");
        }
    }

    #[test]
    fn json_forms() {
        let j: NetworkPolicy = serde_json::from_str(
            r#"{"mode":"allowlist","allow":[{"domain":"example.com","ports":["443"]},{"cidr":"10.0.0.0/8"},{"sandbox":"db"}],
               "headers":[{"domain":"api.example.com","set":{"Authorization":"Bearer s3cret"}}]}"#,
        )
        .unwrap();
        assert_eq!(j.allow.len(), 3);
        let red = serde_json::to_string(&j.redacted()).unwrap();
        assert!(!red.contains("s3cret") && red.contains("***"), "{red}");
        assert!(!format!("{j:?}").contains("s3cret"));
        assert!(!j.to_string().contains("s3cret"));
        let s: NetworkPolicy = serde_json::from_str(r#""allow:example.com""#).unwrap();
        assert_eq!(s.allow[0].domain.as_deref(), Some("example.com"));
        for (bad, needle) in [
            (r#"{"mode":"open","bogus":1}"#, "unknown field"),
            (
                r#"{"mode":"allowlist","allow":[{"domain":"a.com","cidr":"10.0.0.0/8"}]}"#,
                "exactly one",
            ),
            (
                r#"{"mode":"allowlist","allow":[{"domain":"a.com","extra":1}]}"#,
                "unknown field",
            ),
            (
                r#"{"mode":"open","headers":[{"domain":"a.com","set":{"X":"a\r\nb"}}]}"#,
                "line break",
            ),
            (
                r#"{"mode":"open","headers":[{"domain":"a.com","set":{"Host":"x"}}]}"#,
                "cannot be set",
            ),
            (
                r#"{"mode":"open","headers":[{"domain":"a.com","set":{}}]}"#,
                "at least one",
            ),
            (r#"{"mode":"sideways"}"#, "unknown variant"),
            (r#"42"#, "network policy"),
        ] {
            let e = serde_json::from_str::<NetworkPolicy>(bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn limits() {
        let many = (0..=MAX_ALLOW_ITEMS)
            .map(|i| format!("h{i}.example.com"))
            .collect::<Vec<_>>()
            .join(",");
        let e = format!("allow:{many}")
            .parse::<NetworkPolicy>()
            .unwrap_err();
        assert!(matches!(e, PolicyError::TooMany { .. }), "{e}");
        let big = "x".repeat(MAX_HEADER_BYTES + 1);
        let j = format!(
            r#"{{"mode":"open","headers":[{{"domain":"a.com","set":{{"X-Big":"{big}"}}}}]}}"#
        );
        let e = serde_json::from_str::<NetworkPolicy>(&j)
            .unwrap_err()
            .to_string();
        assert!(e.contains("header bytes"), "{e}");
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().1, 8);
        assert_eq!(parse_cidr("10.1.2.3").unwrap().1, 32);
        assert_eq!(parse_cidr("2001:db8::/32").unwrap().1, 32);
        assert!(parse_cidr("2001:db8::1/32").is_err());
        assert!(parse_cidr("0.0.0.0/0").is_ok());
        assert!(parse_cidr("example.com").is_err());
    }
}
