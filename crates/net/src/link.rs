//! Links, addresses and routes, set in-process over rtnetlink
//! (`NETLINK_ROUTE`), and `/proc/sys/net` writes, in whichever network
//! namespace the calling thread is in (see `hull_sys::netns`). Also the
//! host-wide forwarding switches networked sandboxes need.
//!
//! [`Rtnl`] is a blocking netlink socket: each request is sent with
//! `NLM_F_ACK` and answered by the kernel before `send` returns, so one
//! step costs a few microseconds of kernel work instead of an `ip` process
//! (~4 ms per spawn on a loaded 2-core host). A socket stays bound to the
//! network namespace it was opened in, whichever namespace its thread is
//! in later: open one inside a sandbox's namespace to configure that side.
//! A failing step names what it did, with the kernel's errno and, where the
//! kernel gives one, its extended-ack message.
//!
//! Limits: IPv4 and IPv6 addresses, default routes, veth pairs, link
//! up/delete only. Deleting a link waits for the kernel's RCU grace periods
//! (milliseconds on a loaded host) whatever the interface.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Errors of the network host side.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("{tool} failed: {message}")]
    Tool { tool: &'static str, message: String },
    #[error("{what}")]
    Sys {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Netlink {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no free sandbox network slot (all {0} in use)")]
    Exhausted(u32),
    #[error("invalid policy: {0}")]
    Policy(String),
}

impl NetError {
    pub(crate) fn io(
        what: &'static str,
        path: impl AsRef<Path>,
        source: std::io::Error,
    ) -> NetError {
        NetError::Io {
            what,
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// `NLMSG_ERROR` flags (linux/netlink.h): the request was cut to its
/// header; extended-ack attributes follow it.
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG`: the kernel's message about a failed request.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Replies here are small (acks, one link); a link dump is not asked for.
const RECV_BUF: usize = 64 * 1024;

/// A kernel refusal: errno and the extended-ack message, if any.
#[derive(Debug)]
struct Refused {
    errno: i32,
    message: Option<String>,
}

impl Refused {
    fn into_io(self) -> io::Error {
        let os = io::Error::from_raw_os_error(self.errno);
        match self.message {
            Some(m) => io::Error::new(os.kind(), format!("{m} ({os})")),
            None => os,
        }
    }
}

/// A blocking `NETLINK_ROUTE` socket in the network namespace the calling
/// thread was in when it was opened.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Rtnl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rtnl").field("seq", &self.seq).finish()
    }
}

fn nl_err(what: String, source: io::Error) -> NetError {
    NetError::Netlink { what, source }
}

impl Rtnl {
    /// Open a socket in the calling thread's current network namespace.
    pub fn open() -> Result<Rtnl, NetError> {
        let sys = |what: &'static str| move |source| NetError::Sys { what, source };
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(sys("opening a netlink socket"))?;
        sock.bind_auto().map_err(sys("binding a netlink socket"))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(sys("connecting a netlink socket"))?;
        // Best effort: a shorter error (the request's header only) with the
        // kernel's own message about what it refused.
        let _ = sock.set_cap_ack(true);
        let _ = sock.set_ext_ack(true);
        Ok(Rtnl {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Send one request and read the kernel's answer up to its ack:
    /// the messages it replied with, or its refusal.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Result<Vec<RouteNetlinkMessage>, Refused>, io::Error> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut out = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut out);
        loop {
            match self.sock.send(&out, 0) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => {
                    r?;
                    break;
                }
            }
        }
        let mut replies = Vec::new();
        loop {
            self.buf.clear();
            let n = match self.sock.recv(&mut self.buf, 0) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => r?,
            };
            if n > self.buf.len() {
                return Err(io::Error::other("netlink reply truncated"));
            }
            let mut off = 0;
            while off + 16 <= self.buf.len() {
                let chunk = &self.buf[off..];
                let len = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as usize;
                if len < 16 || len > chunk.len() {
                    return Err(io::Error::other("malformed netlink reply"));
                }
                off += (len + 3) & !3;
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&chunk[..len])
                    .map_err(|e| io::Error::other(format!("unreadable netlink reply: {e}")))?;
                if m.header.sequence_number != self.seq {
                    continue; // a stale answer to an earlier request
                }
                match m.payload {
                    NetlinkPayload::Error(e) => {
                        let Some(code) = e.code else {
                            return Ok(Ok(replies));
                        };
                        return Ok(Err(Refused {
                            errno: code.get().abs(),
                            message: ext_ack_message(m.header.flags, &e.header),
                        }));
                    }
                    NetlinkPayload::InnerMessage(r) => replies.push(r),
                    _ => {}
                }
            }
        }
    }

    /// One request that must succeed; `what` names it in the error.
    fn must(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: impl FnOnce() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>, NetError> {
        match self.request(msg, flags) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(refused)) => Err(nl_err(what(), refused.into_io())),
            Err(e) => Err(nl_err(what(), e)),
        }
    }

    /// The index of link `name`.
    pub fn index(&mut self, name: &str) -> Result<u32, NetError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        let replies = self.must(RouteNetlinkMessage::GetLink(m), 0, || {
            format!("looking up link {name}")
        })?;
        replies
            .into_iter()
            .find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })
            .ok_or_else(|| {
                nl_err(
                    format!("looking up link {name}"),
                    io::Error::other("the kernel sent no link"),
                )
            })
    }

    /// Bring link `index` (`name`, for errors) up.
    pub fn set_up(&mut self, index: u32, name: &str) -> Result<(), NetError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.must(RouteNetlinkMessage::SetLink(m), 0, || {
            format!("setting link {name} up")
        })
        .map(drop)
    }

    /// Create a veth pair: `name` here, `peer` in the network namespace
    /// `peer_ns`.
    pub fn add_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_ns: BorrowedFd<'_>,
    ) -> Result<(), NetError> {
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.to_string()));
        p.attributes
            .push(LinkAttribute::NetNsFd(peer_ns.as_raw_fd()));
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.must(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("creating veth pair {name} <-> {peer}"),
        )
        .map(drop)
    }

    /// Add `addr/prefix` to link `index` (`name`, for errors), without
    /// duplicate address detection (IPv6).
    pub fn add_addr(
        &mut self,
        index: u32,
        name: &str,
        addr: IpAddr,
        prefix: u8,
    ) -> Result<(), NetError> {
        let mut m = AddressMessage::default();
        m.header.family = match addr {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.header.scope = AddressScope::Universe;
        if addr.is_ipv6() {
            m.header.flags = AddressHeaderFlags::Nodad;
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        m.attributes.push(AddressAttribute::Local(addr));
        m.attributes.push(AddressAttribute::Address(addr));
        self.must(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("adding address {addr}/{prefix} to {name}"),
        )
        .map(drop)
    }

    /// Add the default route via `gw` on link `index` (`name`, for errors),
    /// to the main table.
    pub fn add_default_route(
        &mut self,
        index: u32,
        name: &str,
        gw: IpAddr,
    ) -> Result<(), NetError> {
        let mut m = RouteMessage::default();
        m.header.address_family = match gw {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        m.attributes.push(RouteAttribute::Oif(index));
        self.must(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("adding the default route via {gw} dev {name}"),
        )
        .map(drop)
    }

    /// Delete link `name` (for a veth, both ends). `false`: there was no
    /// such link.
    pub fn del_link(&mut self, name: &str) -> Result<bool, NetError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::DelLink(m), 0) {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(r)) if r.errno == libc_enodev() => Ok(false),
            Ok(Err(r)) => Err(nl_err(format!("deleting link {name}"), r.into_io())),
            Err(e) => Err(nl_err(format!("deleting link {name}"), e)),
        }
    }
    /// Put link `name` into link group `group`. `false`: there was no such
    /// link.
    pub fn set_group(&mut self, name: &str, group: u32) -> Result<bool, NetError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes.push(LinkAttribute::Group(group));
        match self.request(RouteNetlinkMessage::SetLink(m), 0) {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(r)) if r.errno == libc_enodev() => Ok(false),
            Ok(Err(r)) => Err(nl_err(
                format!("moving link {name} to group {group}"),
                r.into_io(),
            )),
            Err(e) => Err(nl_err(format!("moving link {name} to group {group}"), e)),
        }
    }

    /// Delete every link of group `group` in one kernel operation (one wait
    /// for RCU grace periods for all of them, where deleting them one by
    /// one waits once per link). Every link of the namespace in that group
    /// goes: use a group only this process puts links into.
    pub fn del_group(&mut self, group: u32) -> Result<(), NetError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::Group(group));
        self.must(RouteNetlinkMessage::DelLink(m), 0, || {
            format!("deleting the links of group {group}")
        })
        .map(drop)
    }
}

/// `ENODEV`: the kernel's answer for a link name it does not know.
fn libc_enodev() -> i32 {
    nix::errno::Errno::ENODEV as i32
}

/// The `NLMSGERR_ATTR_MSG` of an error reply, if the kernel sent one.
/// `payload`: the reply after its error code (the request, whole or cut to
/// its header, then attributes).
fn ext_ack_message(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 || payload.len() < 16 {
        return None;
    }
    let skip = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        let len = u32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize;
        (len + 3) & !3
    };
    let mut attrs = payload.get(skip..)?;
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &attrs[4..len];
            let text = text.split(|b| *b == 0).next().unwrap_or_default();
            let text = String::from_utf8_lossy(text).trim().to_string();
            return (!text.is_empty()).then_some(text);
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or_default();
    }
    None
}

/// Delete links by name in the calling thread's namespace, best effort
/// (bulk cleanup: a link already gone is fine, other failures are logged).
pub fn delete_links(names: &[String]) -> Result<(), NetError> {
    if names.is_empty() {
        return Ok(());
    }
    let mut nl = Rtnl::open()?;
    for n in names {
        if let Err(e) = nl.del_link(n) {
            tracing::warn!(error = %e, link = %n, "deleting a stale link");
        }
    }
    Ok(())
}

/// Write a sysctl of the calling thread's network namespace
/// (`net/ipv4/ip_forward` style path under /proc/sys).
pub fn sysctl(key: &str, value: &str) -> Result<(), NetError> {
    let path = Path::new("/proc/sys").join(key);
    std::fs::write(&path, value).map_err(|e| NetError::io("writing", &path, e))
}

/// Read a sysctl (trimmed), if present.
pub fn sysctl_get(key: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(key))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Turn on IPv4 and IPv6 forwarding in the host namespace (needed for
/// `open` and CIDR rules). IPv6: `conf.all.forwarding=1` makes every
/// interface with `accept_ra=1` stop accepting router advertisements, which
/// would silently lose a SLAAC host's default route when it expires; so
/// those interfaces are first switched to `accept_ra=2` (accept them even
/// when forwarding), which keeps the host's addressing as it was.
pub fn enable_forwarding() -> Result<(), NetError> {
    if sysctl_get("net/ipv4/ip_forward").as_deref() != Some("1") {
        sysctl("net/ipv4/ip_forward", "1")?;
    }
    if sysctl_get("net/ipv6/conf/all/forwarding").as_deref() != Some("1") {
        if let Ok(dir) = std::fs::read_dir("/proc/sys/net/ipv6/conf") {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name == "all" || name == "lo" {
                    continue;
                }
                let key = format!("net/ipv6/conf/{name}/accept_ra");
                if sysctl_get(&key).as_deref() == Some("1") {
                    let _ = sysctl(&key, "2");
                }
            }
        }
        sysctl("net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}

/// Names of the host's links starting with `prefix`.
pub fn links_with_prefix(prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) {
                out.push(name);
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_step_names_itself_and_the_kernels_errno() {
        // No privileges needed: looking up and deleting a missing link.
        let mut nl = Rtnl::open().unwrap();
        let e = nl.index("hullnosuch0").unwrap_err();
        let msg = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(msg.starts_with("looking up link hullnosuch0: "), "{msg}");
        assert!(msg.contains("No such device"), "{msg}");
        // A link already gone is not an error when deleting.
        assert!(!nl.del_link("hullnosuch0").unwrap());
        // The socket stays usable after a refusal.
        assert!(nl.index("lo").unwrap() >= 1);
    }

    #[test]
    fn extended_ack_message_is_read() {
        let mut p = vec![0u8; 16];
        let text = b"ipv4: Address already assigned\0";
        let len = (4 + text.len()) as u16;
        p.extend_from_slice(&len.to_ne_bytes());
        p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        p.extend_from_slice(text);
        let flags = NLM_F_CAPPED | NLM_F_ACK_TLVS;
        assert_eq!(
            ext_ack_message(flags, &p).as_deref(),
            Some("ipv4: Address already assigned")
        );
        assert_eq!(ext_ack_message(NLM_F_CAPPED, &p), None);
        // Truncated or hostile attribute lengths yield nothing, not a panic.
        let mut bad = p.clone();
        bad[16] = 0xff;
        assert_eq!(ext_ack_message(flags, &bad), None);
        assert_eq!(ext_ack_message(flags, &p[..10]), None);
    }
}
