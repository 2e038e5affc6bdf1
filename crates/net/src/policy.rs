//! Compiling an API policy (`hull_api::NetworkPolicy`, already validated
//! for shape) into the [`SandboxRules`] the firewall, proxy and DNS server
//! enforce: domain patterns and port sets parsed, CIDRs normalised, peer
//! sandboxes resolved to their current addresses.
//!
//! Limits: a peer is resolved when the policy is set; a peer that is later
//! destroyed simply stops answering (its address is not reused while the
//! rule exists in this sandbox's rules, but a new sandbox may get it after
//! this one's policy is next changed).

use std::net::IpAddr;
use std::path::PathBuf;

use hull_api::network::{parse_cidr, parse_port_range};
use hull_api::{NetworkMode, NetworkPolicy};
use ipnet::IpNet;

use crate::NetError;
use crate::rules::{CidrRule, DomainPattern, DomainRule, HeaderRule, Mode, PortSet, SandboxRules};

/// The rules' mode for an API mode.
pub fn mode(m: NetworkMode) -> Mode {
    match m {
        NetworkMode::None => Mode::None,
        NetworkMode::Allowlist => Mode::Allowlist,
        NetworkMode::Open => Mode::Open,
        NetworkMode::Record => Mode::Record,
        NetworkMode::Replay => Mode::Replay,
    }
}

fn ports(list: &[String]) -> Result<PortSet, NetError> {
    let mut ranges = Vec::with_capacity(list.len());
    for p in list {
        let (lo, hi) = parse_port_range(p).map_err(NetError::Policy)?;
        ranges.push(lo..=hi);
    }
    Ok(PortSet::from_ranges(ranges))
}

/// Compile `policy` for `sandbox_id`. `peer` resolves a sandbox id or
/// name to its addresses (`None`: no such sandbox, or it has no network).
pub fn compile(
    sandbox_id: &str,
    policy: &NetworkPolicy,
    cassette: Option<PathBuf>,
    peer: impl Fn(&str) -> Option<Vec<IpAddr>>,
) -> Result<SandboxRules, NetError> {
    policy
        .validate()
        .map_err(|e| NetError::Policy(e.to_string()))?;
    let mut rules = SandboxRules::deny_all(sandbox_id);
    rules.mode = mode(policy.mode);
    rules.cassette = cassette;
    for item in &policy.allow {
        if let Some(d) = &item.domain {
            rules.domains.push(DomainRule {
                pattern: DomainPattern::parse(d).map_err(|e| NetError::Policy(e.to_string()))?,
                ports: ports(&item.ports)?,
            });
        } else if let Some(c) = &item.cidr {
            let (ip, len) = parse_cidr(c).map_err(NetError::Policy)?;
            let net = IpNet::new(ip, len).map_err(|e| NetError::Policy(format!("{c}: {e}")))?;
            rules.cidrs.push(CidrRule {
                net,
                ports: ports(&item.ports)?,
            });
        } else if let Some(s) = &item.sandbox {
            let addrs = peer(s).ok_or_else(|| {
                NetError::Policy(format!(
                    "peer sandbox {s:?} not found or has no network (create it with a network policy other than none)"
                ))
            })?;
            rules.peers.extend(addrs);
        }
    }
    for h in &policy.headers {
        rules.headers.push(HeaderRule {
            pattern: DomainPattern::parse(&h.domain)
                .map_err(|e| NetError::Policy(e.to_string()))?,
            set: h
                .set
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
        });
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_items_and_peers() {
        let p: NetworkPolicy =
            "allow:*.example.com:443,198.51.100.0/24,[2001:db8::/32]:80-90,sandbox:db"
                .parse()
                .unwrap();
        let r = compile("sb", &p, None, |n| {
            (n == "db").then(|| vec!["10.200.0.6".parse().unwrap()])
        })
        .unwrap();
        assert_eq!(r.mode, Mode::Allowlist);
        assert!(r.allows_domain("a.example.com", 443));
        assert!(!r.allows_domain("a.example.com", 80));
        assert!(r.allows_addr("198.51.100.7".parse().unwrap(), 22));
        assert!(r.allows_addr("2001:db8::1".parse().unwrap(), 85));
        assert!(!r.allows_addr("2001:db8::1".parse().unwrap(), 443));
        assert!(r.allows_addr("10.200.0.6".parse().unwrap(), 5432));
        let e = compile("sb", &p, None, |_| None).unwrap_err().to_string();
        assert!(e.contains("\"db\""), "{e}");
    }
}
