//! Sandbox address ranges: one IPv4 and one IPv6 range per daemon, cut
//! into per-sandbox slots, and chosen so that side-by-side daemons never
//! collide.
//!
//! Slot `n` of an IPv4 range is the /30 at `base + 4n`: the host end of the
//! veth pair is `.1`, the sandbox `.2`. Slot `n` of the IPv6 range (a /48
//! or shorter) is the /64 numbered `n`: host `::1`, sandbox `::2`.
//! A daemon holds an exclusive `flock` on `/run/hull/net-<range>.lock` for
//! as long as it runs; a range another daemon holds, or one overlapping a
//! route of the host (other than this daemon's own sandboxes'), is never
//! picked. The range picked is remembered in the state directory, so a
//! restarted daemon finds its sandboxes' addresses again.
//!
//! Limits: the overlap check reads the main routing table
//! (`/proc/net/route`, `/proc/net/ipv6_route`); policy routing tables are
//! not consulted.

use std::fs::{self, File};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::NetError;

/// Where the range locks live.
pub const LOCK_DIR: &str = "/run/hull";
/// The IPv4 slot size (a /30: network, host, sandbox, broadcast).
pub const SLOT_PREFIX4: u8 = 30;
/// The IPv6 slot size.
pub const SLOT_PREFIX6: u8 = 64;
/// Ranges tried when none is configured: 10.200.0.0/20 .. 10.254.240.0/20
/// (1024 sandboxes each), IPv6 fd68:756c:<k>::/48 alongside.
const AUTO_PREFIX4: u8 = 20;

/// The two ranges of a daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetRange {
    pub v4: Ipv4Net,
    pub v6: Ipv6Net,
}

/// How a range is remembered in `<state>/network.json`.
#[derive(Serialize, Deserialize)]
struct Remembered {
    v4: String,
    v6: String,
}

impl Remembered {
    fn of(r: &NetRange) -> Remembered {
        Remembered {
            v4: r.v4.to_string(),
            v6: r.v6.to_string(),
        }
    }
    fn range(&self) -> Option<NetRange> {
        Some(NetRange {
            v4: self.v4.parse().ok()?,
            v6: self.v6.parse().ok()?,
        })
    }
}

/// The addresses of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotAddrs {
    pub host4: Ipv4Addr,
    pub sandbox4: Ipv4Addr,
    pub host6: Ipv6Addr,
    pub sandbox6: Ipv6Addr,
}

impl NetRange {
    /// How many slots the ranges hold (the smaller of the two).
    pub fn slots(&self) -> u32 {
        let s4 = 1u64 << (SLOT_PREFIX4 - self.v4.prefix_len());
        let s6 = 1u64 << (SLOT_PREFIX6 - self.v6.prefix_len()).min(20);
        s4.min(s6).min(1 << 20) as u32
    }

    /// The addresses of slot `n` (`n < slots()`).
    pub fn slot(&self, n: u32) -> SlotAddrs {
        let base4 = u32::from(self.v4.network()) + 4 * n;
        let base6 = u128::from(self.v6.network()) + ((n as u128) << 64);
        SlotAddrs {
            host4: Ipv4Addr::from(base4 + 1),
            sandbox4: Ipv4Addr::from(base4 + 2),
            host6: Ipv6Addr::from(base6 + 1),
            sandbox6: Ipv6Addr::from(base6 + 2),
        }
    }

    fn lock_name(&self) -> String {
        format!("net-{}_{}.lock", self.v4.network(), self.v4.prefix_len())
    }
}

/// A range this daemon holds (the lock is released when it is dropped).
#[derive(Debug)]
pub struct HeldRange {
    pub range: NetRange,
    _lock: Flock<File>,
}

/// Check a configured range: IPv4 between /8 and /29... wide enough for one
/// slot; IPv6 at most a /64 with whole /64 slots.
pub fn validate(range: &NetRange) -> Result<(), NetError> {
    if range.v4.prefix_len() > SLOT_PREFIX4 || range.v4.prefix_len() < 8 {
        return Err(NetError::Config(format!(
            "--net-range {}: use a prefix between /8 and /30",
            range.v4
        )));
    }
    if range.v6.prefix_len() > 63 || range.v6.prefix_len() < 16 {
        return Err(NetError::Config(format!(
            "--net-range6 {}: use a prefix between /16 and /63",
            range.v6
        )));
    }
    if range.v4.network() != range.v4.addr() || range.v6.network() != range.v6.addr() {
        return Err(NetError::Config(format!(
            "{} / {}: host bits set",
            range.v4, range.v6
        )));
    }
    Ok(())
}

/// Pick and lock the daemon's ranges: the configured ones (`want4`,
/// `want6`), else the one remembered in `state_dir`, else the first free
/// automatic one. `own_ifprefix` names this daemon's interfaces (their
/// routes don't count as overlaps).
pub fn acquire(
    state_dir: &Path,
    want4: Option<Ipv4Net>,
    want6: Option<Ipv6Net>,
    own_ifprefix: &str,
) -> Result<HeldRange, NetError> {
    let remembered_path = state_dir.join("network.json");
    let remembered: Option<NetRange> = fs::read(&remembered_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Remembered>(&b).ok())
        .and_then(|r| r.range());
    let routes4 = routes4(own_ifprefix);
    let routes6 = routes6(own_ifprefix);
    let overlaps = |r: &NetRange| {
        routes4
            .iter()
            .any(|n| n.contains(&r.v4.network()) || r.v4.contains(&n.network()))
            || routes6.iter().any(|n| {
                n.prefix_len() > 0 && (n.contains(&r.v6.network()) || r.v6.contains(&n.network()))
            })
    };
    fs::create_dir_all(LOCK_DIR).map_err(|e| NetError::io("creating", LOCK_DIR, e))?;
    let try_lock = |r: &NetRange| -> Result<Option<HeldRange>, NetError> {
        let path = PathBuf::from(LOCK_DIR).join(r.lock_name());
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| NetError::io("opening", &path, e))?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(HeldRange {
                range: *r,
                _lock: lock,
            })),
            Err(_) => Ok(None),
        }
    };
    let remember = |h: &HeldRange| {
        let _ = fs::write(
            &remembered_path,
            serde_json::to_vec(&Remembered::of(&h.range)).unwrap_or_default(),
        );
    };
    if want4.is_some() || want6.is_some() {
        let base = remembered.unwrap_or(auto(0));
        let r = NetRange {
            v4: want4.unwrap_or(base.v4),
            v6: want6.unwrap_or(base.v6),
        };
        validate(&r)?;
        if overlaps(&r) {
            return Err(NetError::Config(format!(
                "the sandbox range {} / {} overlaps a route of this host",
                r.v4, r.v6
            )));
        }
        let held = try_lock(&r)?.ok_or_else(|| {
            NetError::Config(format!(
                "the sandbox range {} is in use by another hull daemon",
                r.v4
            ))
        })?;
        remember(&held);
        return Ok(held);
    }
    if let Some(r) = remembered
        && validate(&r).is_ok()
        && !overlaps(&r)
        && let Some(held) = try_lock(&r)?
    {
        return Ok(held);
    }
    for k in 0..(55 * 16) {
        let r = auto(k);
        if overlaps(&r) {
            continue;
        }
        if let Some(held) = try_lock(&r)? {
            remember(&held);
            return Ok(held);
        }
    }
    Err(NetError::Config(
        "no free sandbox address range in 10.200.0.0-10.254.255.255: pass --net-range".into(),
    ))
}

fn auto(k: u32) -> NetRange {
    let v4 = Ipv4Addr::new(10, 200 + (k / 16) as u8, ((k % 16) * 16) as u8, 0);
    let v6 = Ipv6Addr::new(0xfd68, 0x756c, k as u16, 0, 0, 0, 0, 0);
    NetRange {
        v4: Ipv4Net::new(v4, AUTO_PREFIX4).unwrap_or_default(),
        v6: Ipv6Net::new(v6, 48).unwrap_or_default(),
    }
}

/// IPv4 routes of the main table, except those through `own` interfaces.
fn routes4(own: &str) -> Vec<Ipv4Net> {
    let text = fs::read_to_string("/proc/net/route").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 || f[0].starts_with(own) {
                return None;
            }
            let dest = u32::from_str_radix(f[1], 16).ok()?.swap_bytes();
            let mask = u32::from_str_radix(f[7], 16).ok()?.swap_bytes();
            if mask == 0 {
                return None; // the default route overlaps everything
            }
            Ipv4Net::new(Ipv4Addr::from(dest), mask.count_ones() as u8).ok()
        })
        .collect()
}

/// IPv6 routes of the main table, except those through `own` interfaces.
fn routes6(own: &str) -> Vec<Ipv6Net> {
    let text = fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 || f[9].starts_with(own) || f[9] == "lo" {
                return None;
            }
            let dest = u128::from_str_radix(f[0], 16).ok()?;
            let len = u8::from_str_radix(f[1], 16).ok()?;
            Ipv6Net::new(Ipv6Addr::from(dest), len).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_and_addresses() {
        let r = NetRange {
            v4: "10.200.0.0/20".parse().unwrap(),
            v6: "fd68:756c:1::/48".parse().unwrap(),
        };
        assert_eq!(r.slots(), 1024);
        let s = r.slot(3);
        assert_eq!(s.host4, "10.200.0.13".parse::<Ipv4Addr>().unwrap());
        assert_eq!(s.sandbox4, "10.200.0.14".parse::<Ipv4Addr>().unwrap());
        assert_eq!(s.sandbox6, "fd68:756c:1:3::2".parse::<Ipv6Addr>().unwrap());
        assert!(validate(&r).is_ok());
        let bad = NetRange {
            v4: "10.200.0.0/31".parse().unwrap(),
            ..r
        };
        assert!(validate(&bad).is_err());
        assert_ne!(auto(0).v4, auto(1).v4);
        assert_ne!(auto(0).v6, auto(1).v6);
        assert_eq!(auto(16).v4, "10.201.0.0/20".parse::<Ipv4Net>().unwrap());
    }
}
