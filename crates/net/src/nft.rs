//! The daemon's nftables table, `inet hull_<instance>`: host protection,
//! forwarding with masquerade for `open`, CIDR/port and peer rules, all
//! keyed by the host-side veth name of each sandbox.
//!
//! The chains are fixed when the table is made; a sandbox's policy lives
//! only in set and map elements keyed by its interface (`mode` map:
//! interface -> `accept` for open egress; `allow4`/`allow6`: interface .
//! net . protocol . ports; `peers4`/`peers6`: interface . address). A
//! policy change is therefore one `nft -f -` transaction of element
//! deletions and additions (atomic: it applies whole or not at all), and
//! new connections see it at once. Established flows are accepted by
//! conntrack and continue after a change that would now refuse them.
//!
//! What the table enforces, for packets arriving from a sandbox interface:
//! first, a source address that does not route back through that
//! interface is dropped (a sandbox cannot pose as another one: the proxy,
//! the DNS server and the rules identify sandboxes by source address);
//! to the host itself (any of its addresses, the gateway included): only
//! established replies, neighbour discovery, and the proxy/DNS ports when
//! they run; forwarded: peers first, then a drop of loopback, link-local
//! (169.254.0.0/16, fe80::/10), multicast, this daemon's sandbox ranges
//! (other sandboxes) and any other sandbox interface, then CIDR rules, then
//! the per-sandbox mode, then drop. Traffic into a sandbox from outside is
//! refused unless it belongs to a connection the sandbox opened.
//! The table does not change the policy of other tables: a host firewall
//! that drops forwarded traffic (Docker's FORWARD policy) still applies.
//!
//! Drops of sandbox traffic (to the host, to never-reachable or other
//! sandboxes' addresses, and the final policy drop) are also reported when
//! the table is made with a log group ([`Nft::with_log_group`]): each drop
//! rule jumps to a `deny_*` chain that sends the packet's first
//! [`LOG_SNAPLEN`] bytes to that NFLOG group (read by [`crate::nflog`]) with
//! a prefix naming the reason, then drops. Logging is rate-limited in the
//! kernel, per sandbox interface ([`LOG_RATE`]) and for the whole table
//! ([`LOG_RATE_ALL`]), so a flood costs a few messages; the counters still
//! count every packet. Without a log group drops are only counted.
//!
//! Spawning `nft` costs ~3-5 ms; it is paid at table setup and for a policy
//! change, never for creating a sandbox whose policy is `open` (pool slots
//! are pre-provisioned with it).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::process::{Command, Stdio};

use crate::NetError;
use crate::addr::NetRange;
use crate::rules::{Mode, SandboxRules};

/// Per sandbox interface: reported drops, as an nft `limit` (beyond it the
/// drops are still counted, not reported).
pub const LOG_RATE: &str = "2/second burst 20 packets";
/// For the whole table (many sandboxes flooding at once).
pub const LOG_RATE_ALL: &str = "100/second burst 200 packets";
/// Bytes of each dropped packet sent to the log group: IP headers
/// (with IPv6 extension headers) and the transport header.
pub const LOG_SNAPLEN: u32 = 128;
/// The log prefixes of the `deny_*` chains: why the packet was dropped.
pub const DENY_HOST: &str = "hull-deny host";
pub const DENY_BLOCKED: &str = "hull-deny blocked";
pub const DENY_SANDBOX: &str = "hull-deny sandbox";
pub const DENY_POLICY: &str = "hull-deny policy";

/// The table of one daemon instance.
#[derive(Debug)]
pub struct Nft {
    table: String,
    ifprefix: String,
    range: NetRange,
    /// Per interface: the element lines added for it (for deletion).
    elements: std::sync::Mutex<HashMap<String, Vec<String>>>,
    /// Proxy and DNS ports sandboxes may reach on their gateway, and
    /// redirect to (allowlist/record/replay).
    proxy: Option<ProxyPorts>,
    /// The NFLOG group drops are reported to, if any.
    log_group: Option<u16>,
}

/// Where the egress proxy and DNS server listen on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyPorts {
    pub tcp: u16,
    pub dns: u16,
}

/// The table's name for an instance id.
pub fn table_name(instance: &str) -> String {
    format!("hull_{instance}")
}

/// Run `nft -f -` with `script`.
pub fn run(script: &str) -> Result<(), NetError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetError::Sys {
            what: "running nft (install nftables)",
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| NetError::Sys {
        what: "waiting for nft",
        source,
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Tool {
            tool: "nft",
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Delete the table of `instance` if it exists.
pub fn delete_table(instance: &str) -> Result<(), NetError> {
    let t = table_name(instance);
    run(&format!("table inet {t} {{}}\ndelete table inet {t}\n"))
}

/// Whether `nft` works here (binary present, kernel support).
pub fn probe() -> Result<(), String> {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .map_err(|e| format!("nft not available ({e}): install nftables"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft list tables failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Nft {
    /// Describe the table; nothing is touched until [`Nft::create`].
    pub fn new(instance: &str, ifprefix: &str, range: NetRange, proxy: Option<ProxyPorts>) -> Nft {
        Nft {
            table: table_name(instance),
            ifprefix: ifprefix.to_string(),
            range,
            elements: Default::default(),
            proxy,
            log_group: None,
        }
    }

    /// Report drops to NFLOG group `group` (rate-limited); `None`: count only.
    pub fn with_log_group(mut self, group: Option<u16>) -> Nft {
        self.log_group = group;
        self
    }

    pub fn log_group(&self) -> Option<u16> {
        self.log_group
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// (Re)create the table, empty of sandboxes: a stale table of this
    /// instance (a daemon killed earlier) is replaced in the same
    /// transaction.
    pub fn create(&self) -> Result<(), NetError> {
        self.elements
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        run(&self.ruleset())
    }

    fn ruleset(&self) -> String {
        let t = &self.table;
        let p = format!("\"{}*\"", self.ifprefix);
        let v4 = self.range.v4;
        let v6 = self.range.v6;
        let host_ports = match self.proxy {
            Some(pp) => format!(
                "meta l4proto {{ tcp, udp }} th dport {{ {}, {} }} accept\n",
                pp.tcp, pp.dns
            ),
            None => String::new(),
        };
        // The proxy and DNS server listen on every address: only sandboxes
        // may reach them.
        let guard = match self.proxy {
            Some(pp) => format!(
                "    meta l4proto {{ tcp, udp }} th dport {{ {}, {} }} counter drop\n",
                pp.tcp, pp.dns
            ),
            None => String::new(),
        };
        let redirect = match self.proxy {
            Some(pp) => format!(
                "    iifname @resolved meta l4proto {{ tcp, udp }} th dport 53 redirect to :{dns}
    iifname @redirected ip daddr != {v4} meta l4proto tcp redirect to :{tcp}
    iifname @redirected ip6 daddr != {v6} meta l4proto tcp redirect to :{tcp}\n",
                dns = pp.dns,
                tcp = pp.tcp
            ),
            None => String::new(),
        };
        // Each reported drop: counted where it matches, then a `goto` to a
        // chain that logs (rate-limited) and drops.
        let (drop_host, drop_blocked, drop_sandbox, drop_policy, deny) = match self.log_group {
            Some(g) => {
                let mut chains = String::new();
                for (name, prefix) in [
                    ("deny_host", DENY_HOST),
                    ("deny_blocked", DENY_BLOCKED),
                    ("deny_sandbox", DENY_SANDBOX),
                    ("deny_policy", DENY_POLICY),
                ] {
                    let _ = write!(
                        chains,
                        "  chain {name} {{
    ip6 saddr {{ ::/128, fe80::/10 }} drop
    add @lograte {{ iifname limit rate {LOG_RATE} }} limit rate {LOG_RATE_ALL} log prefix \"{prefix}\" group {g} snaplen {LOG_SNAPLEN} queue-threshold 1
    drop
  }}
"
                    );
                }
                (
                    "counter goto deny_host",
                    "counter goto deny_blocked",
                    "counter goto deny_sandbox",
                    "counter goto deny_policy",
                    format!(
                        "  set lograte {{ type ifname; flags dynamic, timeout; timeout 1m; size 65536; }}\n{chains}"
                    ),
                )
            }
            None => (
                "counter drop",
                "counter drop",
                "counter drop",
                "counter drop",
                String::new(),
            ),
        };
        format!(
            "table inet {t} {{}}
delete table inet {t}
table inet {t} {{
  map mode {{ type ifname : verdict; }}
  set redirected {{ type ifname; }}
  set resolved {{ type ifname; }}
  set allow4 {{ type ifname . ipv4_addr . inet_proto . inet_service; flags interval; }}
  set allow6 {{ type ifname . ipv6_addr . inet_proto . inet_service; flags interval; }}
  set peers4 {{ type ifname . ipv4_addr; }}
  set peers6 {{ type ifname . ipv6_addr; }}
  set blocked4 {{ type ipv4_addr; flags interval;
    elements = {{ 0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16, 224.0.0.0/3, {v4} }} }}
  set blocked6 {{ type ipv6_addr; flags interval;
    elements = {{ ::/127, ::ffff:0:0/96, fe80::/10, ff00::/8, {v6} }} }}
  chain antispoof {{
    type filter hook prerouting priority mangle; policy accept;
    iifname {p} fib saddr . iif oif missing counter drop
  }}
  chain input {{
    type filter hook input priority filter - 5; policy accept;
    iifname {p} jump sandbox_to_host
{guard}  }}
  chain sandbox_to_host {{
    ct state established,related accept
    icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit }} accept
    {host_ports}    {drop_host}
  }}
  chain forward {{
    type filter hook forward priority filter - 5; policy accept;
    iifname {p} jump from_sandbox
    oifname {p} jump to_sandbox
  }}
  chain from_sandbox {{
    ct state established,related accept
    iifname . ip daddr @peers4 accept
    iifname . ip6 daddr @peers6 accept
    ip daddr @blocked4 {drop_blocked}
    ip6 daddr @blocked6 {drop_blocked}
    oifname {p} {drop_sandbox}
    iifname . ip daddr . meta l4proto . th dport @allow4 accept
    iifname . ip6 daddr . meta l4proto . th dport @allow6 accept
    iifname vmap @mode
    {drop_policy}
  }}
  chain to_sandbox {{
    ct state established,related accept
    counter drop
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
{redirect}  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {v4} oifname != {p} masquerade
    ip6 saddr {v6} oifname != {p} masquerade
  }}
{deny}}}
"
        )
    }

    /// The element lines that express `rules` for interface `ifname`.
    fn elements_for(&self, ifname: &str, rules: &SandboxRules) -> Vec<String> {
        let mut out = Vec::new();
        let q = format!("\"{ifname}\"");
        let open = match rules.mode {
            Mode::Open => true,
            Mode::Record => rules.domains.is_empty() && rules.cidrs.is_empty(),
            Mode::None | Mode::Allowlist | Mode::Replay => false,
        };
        // Header (secret) rules need the proxy's interceptor in every mode,
        // `open` included: its TCP is redirected too, the rest forwarded.
        let proxied = self.proxy.is_some()
            && (matches!(rules.mode, Mode::Allowlist | Mode::Record | Mode::Replay)
                || !rules.headers.is_empty());
        if open && (!proxied || rules.mode == Mode::Open) {
            out.push(format!("mode {{ {q} : accept }}"));
        }
        if proxied {
            out.push(format!("redirected {{ {q} }}"));
        }
        // DNS goes to hull's resolver in every networked mode (`open` too:
        // the upstream is the daemon's `--dns`, whatever the sandbox's
        // resolv.conf names, which may be unreachable from it).
        if self.proxy.is_some() && rules.mode != Mode::None {
            out.push(format!("resolved {{ {q} }}"));
        }
        if matches!(rules.mode, Mode::Allowlist | Mode::Record) {
            for c in &rules.cidrs {
                let set = if c.net.addr().is_ipv4() {
                    "allow4"
                } else {
                    "allow6"
                };
                let ranges: Vec<String> = if c.ports.ranges().is_empty() {
                    vec!["1-65535".into()]
                } else {
                    c.ports
                        .ranges()
                        .iter()
                        .map(|r| format!("{}-{}", r.start(), r.end()))
                        .collect()
                };
                for r in ranges {
                    for proto in ["tcp", "udp"] {
                        out.push(format!(
                            "{set} {{ {q} . {} . {proto} . {r} }}",
                            c.net.trunc()
                        ));
                    }
                }
            }
        }
        if rules.mode != Mode::None {
            for peer in &rules.peers {
                let set = if peer.is_ipv4() { "peers4" } else { "peers6" };
                out.push(format!("{set} {{ {q} . {peer} }}"));
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Make `ifname`'s elements express `rules` (one atomic transaction).
    pub fn apply(&self, ifname: &str, rules: &SandboxRules) -> Result<(), NetError> {
        let new = self.elements_for(ifname, rules);
        let mut map = self.elements.lock().unwrap_or_else(|e| e.into_inner());
        let old = map.get(ifname).cloned().unwrap_or_default();
        if old == new {
            return Ok(());
        }
        let mut script = String::new();
        for e in old.iter().filter(|e| !new.contains(e)) {
            let _ = writeln!(script, "delete element inet {} {e}", self.table);
        }
        for e in new.iter().filter(|e| !old.contains(e)) {
            let _ = writeln!(script, "add element inet {} {e}", self.table);
        }
        run(&script)?;
        map.insert(ifname.to_string(), new);
        Ok(())
    }

    /// Remove every element of `ifname`.
    pub fn forget(&self, ifname: &str) -> Result<(), NetError> {
        let mut map = self.elements.lock().unwrap_or_else(|e| e.into_inner());
        let Some(old) = map.remove(ifname) else {
            return Ok(());
        };
        if old.is_empty() {
            return Ok(());
        }
        let mut script = String::new();
        for e in &old {
            let _ = writeln!(script, "delete element inet {} {e}", self.table);
        }
        run(&script)
    }

    /// [`Nft::forget`] for several links in one `nft` run. If that run
    /// fails (`nft -f` is all-or-nothing), each link is forgotten on its
    /// own so that one bad element does not keep the others.
    pub fn forget_many(&self, ifnames: &[&str]) -> Result<(), NetError> {
        let olds: Vec<Vec<String>> = {
            let mut map = self.elements.lock().unwrap_or_else(|e| e.into_inner());
            ifnames
                .iter()
                .filter_map(|n| map.remove(*n))
                .filter(|old| !old.is_empty())
                .collect()
        };
        let script = |olds: &[Vec<String>]| {
            let mut script = String::new();
            for e in olds.iter().flatten() {
                let _ = writeln!(script, "delete element inet {} {e}", self.table);
            }
            script
        };
        match olds.len() {
            0 => Ok(()),
            1 => run(&script(&olds)),
            _ => run(&script(&olds)).or_else(|_| {
                let mut first = Ok(());
                for old in &olds {
                    if let Err(e) = run(&script(std::slice::from_ref(old)))
                        && first.is_ok()
                    {
                        first = Err(e);
                    }
                }
                first
            }),
        }
    }

    /// Drop the whole table (daemon reset).
    pub fn delete(&self) -> Result<(), NetError> {
        self.elements
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        run(&format!(
            "table inet {t} {{}}\ndelete table inet {t}\n",
            t = self.table
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{CidrRule, PortSet};

    #[test]
    fn elements_express_the_policy() {
        let range = NetRange {
            v4: "10.200.0.0/20".parse().unwrap(),
            v6: "fd68:756c::/48".parse().unwrap(),
        };
        let nft = Nft::new("abcd1234", "habcd1234", range, None);
        let mut r = SandboxRules::deny_all("sb");
        r.mode = Mode::Open;
        // Without a proxy/DNS server, DNS is not redirected.
        assert_eq!(nft.elements_for("h1", &r), vec!["mode { \"h1\" : accept }"]);
        r.mode = Mode::Allowlist;
        r.cidrs.push(CidrRule {
            net: "198.51.100.0/24".parse().unwrap(),
            ports: PortSet::from_ranges(vec![80..=80]),
        });
        r.peers.push("10.200.0.6".parse().unwrap());
        let e = nft.elements_for("h1", &r);
        assert!(
            e.contains(&"allow4 { \"h1\" . 198.51.100.0/24 . tcp . 80-80 }".to_string()),
            "{e:?}"
        );
        assert!(
            e.contains(&"peers4 { \"h1\" . 10.200.0.6 }".to_string()),
            "{e:?}"
        );
        assert!(!e.iter().any(|l| l.starts_with("mode")));
        assert!(nft.ruleset().contains("table inet hull_abcd1234 {"));

        // `open` with a header rule: TCP through the proxy (for the
        // interceptor), everything else still forwarded.
        let proxy = Some(ProxyPorts {
            tcp: 3128,
            dns: 5353,
        });
        let nft = Nft::new("abcd1234", "habcd1234", range, proxy);
        let mut r = SandboxRules::deny_all("sb");
        r.mode = Mode::Open;
        // DNS to hull's resolver in `open` too; `none` gets nothing.
        assert_eq!(
            nft.elements_for("h1", &r),
            vec!["mode { \"h1\" : accept }", "resolved { \"h1\" }"]
        );
        r.mode = Mode::None;
        assert!(nft.elements_for("h1", &r).is_empty());
        r.mode = Mode::Open;
        r.headers.push(crate::rules::HeaderRule {
            pattern: crate::rules::DomainPattern::parse("api.example.com").unwrap(),
            set: vec![("authorization".into(), "Bearer x".into())],
        });
        let e = nft.elements_for("h1", &r);
        assert!(e.contains(&"mode { \"h1\" : accept }".to_string()), "{e:?}");
        assert!(e.contains(&"redirected { \"h1\" }".to_string()), "{e:?}");

        // Drops are counted; with a log group also reported, rate-limited.
        let plain = nft.ruleset();
        assert!(!plain.contains(" log "), "{plain}");
        assert_eq!(plain.matches("counter drop").count(), 8, "{plain}");
        let nft = nft.with_log_group(Some(4242));
        let logged = nft.ruleset();
        for (chain, prefix) in [
            ("deny_host", DENY_HOST),
            ("deny_blocked", DENY_BLOCKED),
            ("deny_sandbox", DENY_SANDBOX),
            ("deny_policy", DENY_POLICY),
        ] {
            assert!(
                logged.contains(&format!("counter goto {chain}\n")),
                "{logged}"
            );
            assert!(
                logged.contains(&format!("log prefix \"{prefix}\" group 4242 snaplen")),
                "{logged}"
            );
        }
        assert!(
            logged.contains(&format!("limit rate {LOG_RATE} }}")),
            "{logged}"
        );
        // Not reported: spoofed sources, outsiders at the proxy ports, and
        // traffic into sandboxes.
        assert_eq!(logged.matches("counter drop").count(), 3, "{logged}");
    }
}
