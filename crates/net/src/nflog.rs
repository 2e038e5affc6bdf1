//! Reports the packets the firewall drops by itself (UDP and TCP to
//! addresses no rule allows, ICMP, other protocols, anything to the host,
//! link-local/metadata addresses or other sandboxes) as [`Denied`] events,
//! like the egress proxy and the DNS server report theirs.
//!
//! The nftables table ([`crate::nft`]) sends each reported drop to one
//! NFLOG group (nfnetlink_log): the first [`crate::nft::LOG_SNAPLEN`]
//! bytes of the packet and a prefix naming the reason. [`NflogSocket`]
//! binds a `NETLINK_NETFILTER` socket to that group; [`NflogSocket::serve`]
//! reads the messages, parses the IP and transport headers, finds the
//! sandbox by the packet's source address in the [`Registry`] and calls
//! [`EventSink::denied`] with the destination (`198.51.100.7:53`,
//! `[2001:db8::1]:443`, or the bare address for ICMP and other protocols).
//!
//! NFLOG groups are global to the machine (to the network namespace), and
//! one group has one listener: [`NflogSocket::bind`] starts at a group
//! derived from the daemon's instance id and takes the next one while the
//! kernel reports the group taken, so side-by-side daemons never collide.
//!
//! Limits: the kernel rate-limits what it logs (see [`crate::nft`]), so a
//! flood yields a few events and the rest is only counted. One packet
//! retransmitted (a TCP SYN retried, the same UDP flow resent) is reported
//! once per [`REPEAT_INTERVAL`]. Packets whose source is no sandbox's
//! address (IPv6 link-local, a sandbox just removed) are not reported. When
//! the kernel has no nfnetlink_log, binding fails and the daemon runs
//! without these events (drops are then only counted). If the reader falls
//! behind, the kernel discards messages (`ENOBUFS`): those drops go
//! unreported, and the reader carries on.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, sockopt,
};
use tokio::io::unix::AsyncFd;

use crate::nft::{DENY_BLOCKED, DENY_HOST, DENY_POLICY, DENY_SANDBOX, LOG_SNAPLEN};
use crate::rules::{Denied, EventSink, Mode, Registry};

/// The same packet (source, destination, protocol, ports) is reported at
/// most once per this interval.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(10);
/// Groups tried from the instance's own before giving up.
pub const GROUP_TRIES: u16 = 64;
/// Flows remembered for [`REPEAT_INTERVAL`].
const MAX_RECENT: usize = 4096;
/// Groups hull picks from: `GROUP_BASE..GROUP_BASE + GROUP_SPAN` (low
/// numbers are left to hand-written rules).
const GROUP_BASE: u16 = 0x4000;
const GROUP_SPAN: u32 = 0x8000;

// linux/netfilter/nfnetlink.h, nfnetlink_log.h, netlink.h
const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_NLBUFSIZ: u16 = 3;
const NFULA_CFG_QTHRESH: u16 = 5;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDRLEN: usize = 16;
const NFGEN_HDRLEN: usize = 4;

/// Errors of the NFLOG socket.
#[derive(Debug, thiserror::Error)]
pub enum NflogError {
    #[error("{what}")]
    Sys {
        what: &'static str,
        #[source]
        source: Errno,
    },
    #[error("NFLOG groups {first}-{last} are all taken by other listeners")]
    Busy { first: u16, last: u16 },
    #[error("the kernel refused NFLOG group {group} (no nfnetlink_log?)")]
    Refused {
        group: u16,
        #[source]
        source: Errno,
    },
    #[error("no answer from the kernel to the NFLOG configuration")]
    NoAck,
}

/// The group a daemon with instance id `instance` tries first.
pub fn group_for(instance: &str) -> u16 {
    // FNV-1a: stable across runs and builds.
    let mut h: u32 = 0x811c_9dc5;
    for b in instance.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    GROUP_BASE + (h % GROUP_SPAN) as u16
}

/// A netlink socket bound to one NFLOG group.
#[derive(Debug)]
pub struct NflogSocket {
    fd: OwnedFd,
    group: u16,
}

impl NflogSocket {
    /// Bind the first free group from [`group_for`]`(instance)` on.
    pub fn bind(instance: &str) -> Result<NflogSocket, NflogError> {
        Self::bind_from(group_for(instance), GROUP_TRIES)
    }

    /// Bind the first free group of `first .. first + tries` (wrapping
    /// inside hull's range).
    pub fn bind_from(first: u16, tries: u16) -> Result<NflogSocket, NflogError> {
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(|source| NflogError::Sys {
            what: "opening a NETLINK_NETFILTER socket",
            source,
        })?;
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|source| {
            NflogError::Sys {
                what: "binding the netlink socket",
                source,
            }
        })?;
        // Only for the configuration exchange; reads later are async.
        let _ = socket::setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(2, 0),
        );
        // Room for bursts (each message is ~250 bytes).
        let _ = socket::setsockopt(&fd, sockopt::RcvBuf, &(1 << 20));
        let mut group = first;
        let mut last = first;
        for seq in 1..=u32::from(tries.max(1)) {
            last = group;
            match configure(&fd, group, seq) {
                Ok(()) => {
                    let _ = socket::setsockopt(
                        &fd,
                        sockopt::ReceiveTimeout,
                        &nix::sys::time::TimeVal::new(0, 0),
                    );
                    return Ok(NflogSocket { fd, group });
                }
                // Another socket (another daemon) listens on this group.
                Err(NflogError::Refused {
                    source: Errno::EPERM | Errno::EBUSY,
                    ..
                }) => {
                    group = if u32::from(group) + 1 >= u32::from(GROUP_BASE) + GROUP_SPAN {
                        GROUP_BASE
                    } else {
                        group + 1
                    };
                }
                Err(e) => return Err(e),
            }
        }
        Err(NflogError::Busy { first, last })
    }

    /// The group bound (what the firewall's `log group` must name).
    pub fn group(&self) -> u16 {
        self.group
    }

    /// Read logged packets until the socket fails, reporting each as a
    /// denial of the sandbox that sent it.
    pub async fn serve(
        self,
        registry: Arc<Registry>,
        events: Arc<dyn EventSink>,
    ) -> Result<(), NflogError> {
        let nonblocking = |source| NflogError::Sys {
            what: "making the netlink socket non-blocking",
            source,
        };
        let flags =
            nix::fcntl::fcntl(&self.fd, nix::fcntl::FcntlArg::F_GETFL).map_err(nonblocking)?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&self.fd, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(nonblocking)?;
        // `AsyncFd::new` is deprecated for accepting any `AsRawFd`; this is
        // an `OwnedFd` only this task holds, which is `register`'s contract
        // (unsafe, and unsafe code lives in hull-sys).
        #[allow(deprecated)]
        let afd = AsyncFd::new(self.fd).map_err(|e| NflogError::Sys {
            what: "registering the netlink socket with the runtime",
            source: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        })?;
        let mut reporter = Reporter::new(registry, events);
        let mut buf = vec![0u8; 64 * 1024];
        let mut overruns: u64 = 0;
        loop {
            let mut guard = afd.readable().await.map_err(|e| NflogError::Sys {
                what: "waiting on the netlink socket",
                source: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            })?;
            match guard.try_io(|fd| {
                socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT)
                    .map_err(std::io::Error::from)
            }) {
                Err(_would_block) => continue,
                Ok(Ok(n)) => {
                    for p in parse_messages(&buf[..n]) {
                        reporter.report(&p, Instant::now());
                    }
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc_enobufs()) => {
                    overruns += 1;
                    if overruns.is_power_of_two() {
                        tracing::warn!(
                            overruns,
                            "firewall drop reports lost: the reader fell behind"
                        );
                    }
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => {
                    return Err(NflogError::Sys {
                        what: "reading the netlink socket",
                        source: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                    });
                }
            }
        }
    }
}

fn libc_enobufs() -> i32 {
    Errno::ENOBUFS as i32
}

/// Append one netlink attribute (4-byte aligned).
fn put_attr(out: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// The `NFULNL_MSG_CONFIG` request binding `group` with packet copies.
fn config_message(group: u16, seq: u32) -> Vec<u8> {
    let mut attrs = Vec::new();
    put_attr(&mut attrs, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
    let mut mode = LOG_SNAPLEN.to_be_bytes().to_vec();
    mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
    put_attr(&mut attrs, NFULA_CFG_MODE, &mode);
    // Send each packet at once rather than batching up to a timeout.
    put_attr(&mut attrs, NFULA_CFG_QTHRESH, &1u32.to_be_bytes());
    put_attr(
        &mut attrs,
        NFULA_CFG_NLBUFSIZ,
        &(16u32 * 1024).to_be_bytes(),
    );
    let len = NLMSG_HDRLEN + NFGEN_HDRLEN + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG).to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family AF_UNSPEC, version 0, res_id = group (big endian).
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&group.to_be_bytes());
    m.extend_from_slice(&attrs);
    m
}

/// Send the bind request for `group` and wait for its acknowledgement.
fn configure(fd: &OwnedFd, group: u16, seq: u32) -> Result<(), NflogError> {
    let msg = config_message(group, seq);
    socket::sendto(
        fd.as_raw_fd(),
        &msg,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(|source| NflogError::Sys {
        what: "sending the NFLOG configuration",
        source,
    })?;
    let mut buf = vec![0u8; 8192];
    for _ in 0..16 {
        let n = match socket::recv(fd.as_fd().as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Err(NflogError::NoAck),
            Err(source) => {
                return Err(NflogError::Sys {
                    what: "reading the NFLOG acknowledgement",
                    source,
                });
            }
        };
        for (ty, msg_seq, body) in messages(&buf[..n]) {
            if ty == NLMSG_ERROR && msg_seq == seq && body.len() >= 4 {
                let code = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                return match code {
                    0 => Ok(()),
                    c => Err(NflogError::Refused {
                        group,
                        source: Errno::from_raw(-c),
                    }),
                };
            }
        }
    }
    Err(NflogError::NoAck)
}

/// The netlink messages in `buf`: (type, seq, payload after the header).
fn messages(buf: &[u8]) -> Vec<(u16, u32, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            break;
        }
        let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        let seq = u32::from_ne_bytes([buf[off + 8], buf[off + 9], buf[off + 10], buf[off + 11]]);
        if ty == NLMSG_DONE {
            break;
        }
        out.push((ty, seq, &buf[off + NLMSG_HDRLEN..off + len]));
        off += (len + 3) & !3;
    }
    out
}

/// The attributes in `buf`: (type without flags, payload).
fn attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((ty, &buf[4..len]));
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    out
}

/// One dropped packet as the firewall logged it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Logged {
    /// The log prefix of the rule (why it was dropped).
    pub prefix: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (after IPv6 extension headers).
    pub proto: u8,
    /// Source and destination ports (TCP, UDP, SCTP, UDP-Lite), or for
    /// ICMP/ICMPv6 (type, code) in `ports` too.
    pub ports: Option<(u16, u16)>,
}

/// The logged packets in a buffer read from the NFLOG socket. Malformed or
/// truncated parts are skipped.
pub fn parse_messages(buf: &[u8]) -> Vec<Logged> {
    let mut out = Vec::new();
    for (ty, _, body) in messages(buf) {
        if ty != ((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET) || body.len() < NFGEN_HDRLEN {
            continue;
        }
        let mut prefix = String::new();
        let mut payload = None;
        for (aty, data) in attrs(&body[NFGEN_HDRLEN..]) {
            match aty {
                NFULA_PREFIX => {
                    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                    prefix = String::from_utf8_lossy(&data[..end]).into_owned();
                }
                NFULA_PAYLOAD => payload = Some(data),
                _ => {}
            }
        }
        if let Some(p) = payload.and_then(|p| parse_packet(p, prefix)) {
            out.push(p);
        }
    }
    out
}

/// Parse an IPv4/IPv6 packet's addresses, protocol and ports.
pub fn parse_packet(p: &[u8], prefix: String) -> Option<Logged> {
    let version = p.first()? >> 4;
    let (src, dst, proto, l4) = match version {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if ihl < 20 || p.len() < ihl {
                return None;
            }
            let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
            let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
            // A non-first fragment carries no transport header.
            let frag_off = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
            let l4 = if frag_off == 0 { &p[ihl..] } else { &[][..] };
            (IpAddr::V4(src), IpAddr::V4(dst), p[9], l4)
        }
        6 => {
            if p.len() < 40 {
                return None;
            }
            let a = |o: usize| -> Ipv6Addr {
                let mut b = [0u8; 16];
                b.copy_from_slice(&p[o..o + 16]);
                Ipv6Addr::from(b)
            };
            let (src, dst) = (a(8), a(24));
            let mut next = p[6];
            let mut off = 40;
            let mut l4: &[u8] = &[];
            // Hop-by-hop, routing, fragment, destination options: skip.
            for _ in 0..8 {
                match next {
                    0 | 43 | 60 => {
                        let Some(h) = p.get(off..off + 2) else { break };
                        next = h[0];
                        off += (usize::from(h[1]) + 1) * 8;
                    }
                    44 => {
                        let Some(h) = p.get(off..off + 8) else { break };
                        next = h[0];
                        off += 8;
                        if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                            // A non-first fragment: no transport header.
                            break;
                        }
                    }
                    _ => {
                        l4 = p.get(off..).unwrap_or(&[]);
                        break;
                    }
                }
            }
            (IpAddr::V6(src), IpAddr::V6(dst), next, l4)
        }
        _ => return None,
    };
    let ports = match proto {
        // TCP, UDP, UDP-Lite, SCTP: ports first.
        6 | 17 | 136 | 132 if l4.len() >= 4 => Some((
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )),
        1 | 58 if l4.len() >= 2 => Some((u16::from(l4[0]), u16::from(l4[1]))),
        _ => None,
    };
    Some(Logged {
        prefix,
        src,
        dst,
        proto,
        ports,
    })
}

/// The protocol's name as a [`Denied::proto`].
fn proto_name(proto: u8) -> &'static str {
    match proto {
        1 => "icmp",
        2 => "igmp",
        6 => "tcp",
        17 => "udp",
        47 => "gre",
        50 => "esp",
        58 => "icmpv6",
        132 => "sctp",
        136 => "udplite",
        _ => "ip",
    }
}

/// ICMP(v6) type names for the reason line.
fn icmp_name(proto: u8, ty: u16) -> Option<&'static str> {
    Some(match (proto, ty) {
        (1, 8) | (58, 128) => "echo request",
        (1, 0) | (58, 129) => "echo reply",
        (1, 3) | (58, 1) => "destination unreachable",
        (1, 11) | (58, 3) => "time exceeded",
        (1, 13) => "timestamp request",
        (58, 143) => "multicast listener report",
        _ => return None,
    })
}

/// Turns logged packets into [`Denied`] events, once per flow per
/// [`REPEAT_INTERVAL`].
pub struct Reporter {
    registry: Arc<Registry>,
    events: Arc<dyn EventSink>,
    recent: HashMap<Logged, Instant>,
}

impl Reporter {
    pub fn new(registry: Arc<Registry>, events: Arc<dyn EventSink>) -> Reporter {
        Reporter {
            registry,
            events,
            recent: HashMap::new(),
        }
    }

    /// Report `p` (seen at `now`) unless its sender is no sandbox or the
    /// same flow was reported less than [`REPEAT_INTERVAL`] ago. Returns
    /// whether an event was sent.
    pub fn report(&mut self, p: &Logged, now: Instant) -> bool {
        let Some(rules) = self.registry.lookup(p.src) else {
            return false;
        };
        if let Some(t) = self.recent.get(p)
            && now.saturating_duration_since(*t) < REPEAT_INTERVAL
        {
            return false;
        }
        if self.recent.len() >= MAX_RECENT {
            self.recent
                .retain(|_, t| now.saturating_duration_since(*t) < REPEAT_INTERVAL);
            if self.recent.len() >= MAX_RECENT {
                self.recent.clear();
            }
        }
        self.recent.insert(p.clone(), now);
        let proto = proto_name(p.proto);
        let (dest, what) = match (p.proto, p.ports) {
            (6 | 17 | 132 | 136, Some((_, dport))) => {
                (SocketAddr::new(p.dst, dport).to_string(), String::new())
            }
            (1 | 58, Some((ty, code))) => (
                p.dst.to_string(),
                match icmp_name(p.proto, ty) {
                    Some(n) => format!(" ({n})"),
                    None => format!(" (type {ty} code {code})"),
                },
            ),
            (n, _) if proto == "ip" => (p.dst.to_string(), format!(" (IP protocol {n})")),
            _ => (p.dst.to_string(), String::new()),
        };
        let why = match p.prefix.as_str() {
            DENY_HOST => "the host's own addresses are never reachable from a sandbox".to_string(),
            DENY_BLOCKED => {
                "loopback, link-local (metadata) and multicast addresses are never reachable, other sandboxes only with a peer rule"
                    .to_string()
            }
            DENY_SANDBOX => "another sandbox, and no peer rule allows it".to_string(),
            DENY_POLICY => match rules.mode {
                Mode::Allowlist | Mode::Record => {
                    "no CIDR rule allows this address and port (domains go through the proxy: TCP only)"
                        .to_string()
                }
                m => format!("network {m} allows no traffic here"),
            },
            other => format!("dropped by the firewall ({other})"),
        };
        tracing::debug!(sandbox = %rules.sandbox_id, proto, dest = %dest, "firewall drop reported");
        self.events.denied(
            &rules.sandbox_id,
            Denied {
                proto,
                dest,
                reason: format!("{why}{what}"),
            },
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::SandboxRules;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Collect(Mutex<Vec<(String, Denied)>>);
    impl EventSink for Collect {
        fn denied(&self, id: &str, d: Denied) {
            self.0.lock().unwrap().push((id.to_string(), d));
        }
    }

    fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0, 8, 0, 0]);
        p
    }

    /// A packet message as the kernel sends it.
    fn packet_message(prefix: &str, payload: &[u8]) -> Vec<u8> {
        let mut attrs = Vec::new();
        put_attr(&mut attrs, 1, &[0x08, 0x00, 1, 0]);
        let mut pfx = prefix.as_bytes().to_vec();
        pfx.push(0);
        put_attr(&mut attrs, NFULA_PREFIX, &pfx);
        put_attr(&mut attrs, NFULA_PAYLOAD, payload);
        let len = NLMSG_HDRLEN + NFGEN_HDRLEN + attrs.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&(NFNL_SUBSYS_ULOG << 8).to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[2, 0, 0x40, 0]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn parses_udp_icmp_and_v6() {
        let mut buf = packet_message(
            DENY_POLICY,
            &udp4([10, 0, 0, 2], [198, 51, 100, 7], 4000, 53),
        );
        let mut icmp = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 2, 169, 254, 169, 254,
        ];
        icmp.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1]);
        buf.extend(packet_message(DENY_BLOCKED, &icmp));
        let mut v6 = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        v6.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&[0x0f, 0xa0, 0x01, 0xbb, 0, 8, 0, 0]);
        buf.extend(packet_message(DENY_HOST, &v6));
        let got = parse_messages(&buf);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0].dst, "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!((got[0].proto, got[0].ports), (17, Some((4000, 53))));
        assert_eq!(got[0].prefix, DENY_POLICY);
        assert_eq!((got[1].proto, got[1].ports), (1, Some((8, 0))));
        assert_eq!(got[2].dst, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(got[2].ports, Some((4000, 443)));
    }

    #[test]
    fn hostile_input_never_panics() {
        let msg = packet_message(DENY_POLICY, &udp4([10, 0, 0, 2], [198, 51, 100, 7], 1, 2));
        for cut in 0..msg.len() {
            let _ = parse_messages(&msg[..cut]);
            let mut bad = msg.clone();
            bad[cut] ^= 0xff;
            let _ = parse_messages(&bad);
        }
        // Lengths pointing past the end, zero lengths, nonsense versions.
        let _ = parse_messages(&[0xff; 64]);
        let _ = parse_messages(&[0; 64]);
        assert!(parse_packet(&[0x45; 10], String::new()).is_none());
        assert!(parse_packet(&[0x7f; 60], String::new()).is_none());
        // IPv6 with a looping chain of extension headers.
        let mut v6 = vec![0x60, 0, 0, 0, 0, 0, 0, 64];
        v6.extend_from_slice(&[0; 32]);
        v6.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        let _ = parse_packet(&v6, String::new());
    }

    #[test]
    fn reports_known_sandboxes_once_per_flow() {
        let registry = Arc::new(Registry::new());
        let mut r = SandboxRules::deny_all("sb1");
        r.mode = Mode::Allowlist;
        registry.set(&["10.0.0.2".parse().unwrap()], Arc::new(r));
        let sink = Arc::new(Collect::default());
        let mut rep = Reporter::new(registry, sink.clone());
        let now = Instant::now();
        let p = parse_packet(
            &udp4([10, 0, 0, 2], [198, 51, 100, 7], 4000, 53),
            DENY_POLICY.into(),
        )
        .unwrap();
        assert!(rep.report(&p, now));
        assert!(!rep.report(&p, now + Duration::from_secs(1)), "repeat");
        assert!(rep.report(&p, now + REPEAT_INTERVAL));
        let stranger = parse_packet(
            &udp4([10, 0, 0, 9], [198, 51, 100, 7], 4000, 53),
            DENY_POLICY.into(),
        )
        .unwrap();
        assert!(!rep.report(&stranger, now), "no sandbox at that source");
        let got = sink.0.lock().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "sb1");
        assert_eq!(got[0].1.proto, "udp");
        assert_eq!(got[0].1.dest, "198.51.100.7:53");
        assert!(got[0].1.reason.contains("no CIDR rule"), "{:?}", got[0].1);
    }

    #[test]
    fn groups_stay_in_range() {
        for id in ["", "0", "deadbeef", "ffffffff", "12345678"] {
            let g = group_for(id);
            assert!((GROUP_BASE..=GROUP_BASE + (GROUP_SPAN - 1) as u16).contains(&g));
        }
        assert_ne!(group_for("deadbeef"), group_for("deadbeee"));
        let m = config_message(0x4001, 7);
        assert_eq!(m.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize,
            m.len()
        );
        assert_eq!(&m[18..20], &0x4001u16.to_be_bytes());
    }
}
