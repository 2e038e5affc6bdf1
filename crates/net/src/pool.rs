//! The network host of one daemon: its address ranges, its nftables
//! table, and a pool of ready network namespaces.
//!
//! A pool slot is a network namespace owned by the daemon's (initial) user
//! namespace, so root inside a sandbox has no CAP_NET_ADMIN over it: `lo`
//! up, `eth0` one end of a veth pair whose other end (`h<instance><n>`,
//! hex slot number) is in the host namespace, IPv4 and IPv6 addresses and
//! default routes set, unprivileged ports from 0 and ICMP echo sockets
//! allowed (so sandbox root can still bind :80 and ping). Slots are made
//! by a background thread (the maker), lazily (after the first networked
//! create) up to the configured pool size, and pre-provisioned in nftables
//! as `open`; a create takes one (microseconds) and changes its elements
//! only when its policy differs. Links, addresses and routes are set over
//! rtnetlink ([`crate::link::Rtnl`]); the firewall elements cost one `nft`
//! run per slot.
//!
//! Teardown hands the slot to a second thread (the reaper), which takes
//! every slot released since its last round, removes their elements in one
//! `nft` run and deletes their veth pairs in one kernel operation (moved
//! into the instance's link group, then that group deleted): deleting a
//! link waits for RCU grace periods (~30-50 ms on a loaded host), once per
//! round rather than once per slot, and never holds up the maker.
//!
//! Pool namespaces are held only by descriptors: if the daemon dies they
//! vanish with it (the kernel deletes their veth pairs). Namespaces of
//! running sandboxes live on with the sandboxes and are re-adopted through
//! `/proc/<init pid>/ns/net`.
//!
//! Limits: one IPv4 /30 and one IPv6 /64 per sandbox; at most as many
//! networked sandboxes as the range has slots.

use std::collections::{BTreeSet, VecDeque};
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use hull_sys::netns::NetnsGuard;
use ipnet::{Ipv4Net, Ipv6Net};

use crate::NetError;
use crate::addr::{self, HeldRange, NetRange, SlotAddrs};
use crate::link::{self, Rtnl, sysctl};
use crate::nft::{Nft, ProxyPorts};
use crate::rules::{Mode, SandboxRules};

/// Default number of ready slots kept.
pub const DEFAULT_POOL_SIZE: usize = 4;

/// How the network host starts.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub state_dir: PathBuf,
    /// The daemon's instance id (8 hex digits): names the table and links.
    pub instance: String,
    pub range4: Option<Ipv4Net>,
    pub range6: Option<Ipv6Net>,
    pub pool_size: usize,
    pub proxy: Option<ProxyPorts>,
    /// The NFLOG group the firewall reports drops to
    /// ([`crate::nflog::NflogSocket::group`]); `None`: drops are only counted.
    pub log_group: Option<u16>,
}

/// One sandbox's network: its namespace and addresses.
#[derive(Debug, Clone)]
pub struct Slot {
    pub index: u32,
    /// The host end of the veth pair.
    pub ifname: String,
    pub addrs: SlotAddrs,
    pub netns: Arc<OwnedFd>,
}

impl Slot {
    /// The sandbox's own addresses (v4, v6).
    pub fn sandbox_addrs(&self) -> Vec<IpAddr> {
        vec![
            IpAddr::V4(self.addrs.sandbox4),
            IpAddr::V6(self.addrs.sandbox6),
        ]
    }
}

#[derive(Default)]
struct State {
    ready: VecDeque<Slot>,
    /// Slot numbers taken (ready, in use, or being released).
    used: BTreeSet<u32>,
    releases: Vec<(u32, String, Option<Arc<OwnedFd>>)>,
    demand: bool,
    shutdown: bool,
    /// The maker thread has stopped (its ready slots are in `releases`).
    maker_done: bool,
}

struct Inner {
    ifprefix: String,
    held: HeldRange,
    nft: Nft,
    pool_size: usize,
    /// The daemon's network namespace: where host ends of veth pairs go.
    host_ns: OwnedFd,
    /// The link group released links are moved into to be deleted together
    /// (the instance id as a number); `None`: deleted one by one.
    dying_group: Option<u32>,
    state: Mutex<State>,
    cv: Condvar,
}

/// The daemon's network host (cheap to clone).
#[derive(Clone)]
pub struct NetHost {
    inner: Arc<Inner>,
    /// The maker and the reaper (joined in that order).
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl std::fmt::Debug for NetHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetHost")
            .field("ifprefix", &self.inner.ifprefix)
            .field("range", &self.inner.held.range)
            .finish()
    }
}

/// Why this host cannot give sandboxes a network, if it cannot.
pub fn probe() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("the daemon does not run as root".into());
    }
    crate::nft::probe()?;
    if !Path::new("/proc/sys/net/ipv4/ip_forward").exists() {
        return Err("no /proc/sys/net (is /proc mounted?)".into());
    }
    Ok(())
}

/// The link-name prefix of an instance (`h` + instance id).
pub fn ifprefix(instance: &str) -> String {
    format!("h{instance}")
}

impl NetHost {
    /// Lock a range, (re)create the nftables table, turn on forwarding and
    /// start the pool thread. Links of this instance left by a previous
    /// run are deleted except those named in `keep` (re-adopted sandboxes).
    pub fn start(cfg: NetConfig, keep: &[String]) -> Result<NetHost, NetError> {
        probe().map_err(NetError::Config)?;
        if cfg.instance.is_empty() || cfg.instance.len() > 8 {
            return Err(NetError::Config(format!(
                "instance id {:?} is not 1-8 characters",
                cfg.instance
            )));
        }
        let prefix = ifprefix(&cfg.instance);
        let held = addr::acquire(&cfg.state_dir, cfg.range4, cfg.range6, &prefix)?;
        let nft =
            Nft::new(&cfg.instance, &prefix, held.range, cfg.proxy).with_log_group(cfg.log_group);
        nft.create()?;
        link::enable_forwarding()?;
        let stale: Vec<String> = link::links_with_prefix(&prefix)
            .into_iter()
            .filter(|l| !keep.contains(l))
            .collect();
        link::delete_links(&stale)?;
        let host_ns = hull_sys::netns::current().map_err(|source| NetError::Sys {
            what: "opening the daemon's network namespace",
            source,
        })?;
        let inner = Arc::new(Inner {
            ifprefix: prefix,
            held,
            nft,
            pool_size: cfg.pool_size,
            host_ns,
            dying_group: dying_group(&cfg.instance),
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
        });
        let spawn = |name: &str, f: fn(&Inner)| {
            let worker = inner.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || f(&worker))
                .map_err(|source| NetError::Sys {
                    what: "starting a network pool thread",
                    source,
                })
        };
        let reaper = spawn("hull-netreap", Inner::reap)?;
        let maker = match spawn("hull-netpool", Inner::run) {
            Ok(h) => h,
            Err(e) => {
                {
                    let mut st = inner.lock();
                    st.shutdown = true;
                    st.maker_done = true;
                    inner.cv.notify_all();
                }
                let _ = reaper.join();
                return Err(e);
            }
        };
        Ok(NetHost {
            inner,
            threads: Arc::new(Mutex::new(vec![maker, reaper])),
        })
    }

    pub fn range(&self) -> NetRange {
        self.inner.held.range
    }

    pub fn ifprefix(&self) -> &str {
        &self.inner.ifprefix
    }

    pub fn table(&self) -> &str {
        self.inner.nft.table()
    }

    /// How many ready slots the pool holds now.
    pub fn ready(&self) -> usize {
        self.inner.lock().ready.len()
    }

    /// Take a slot for a new sandbox and apply `rules` to it. Blocking
    /// (makes a slot inline when the pool is empty: ~1 ms of netlink plus
    /// one `nft` run, ~3-5 ms).
    pub fn take(&self, rules: &SandboxRules) -> Result<Slot, NetError> {
        let ready = {
            let mut st = self.inner.lock();
            st.demand = true;
            let s = st.ready.pop_front();
            self.inner.cv.notify_all();
            s
        };
        let slot = match ready {
            Some(s) => s,
            None => {
                tracing::debug!("network pool empty: making a slot inline");
                let index = self.inner.alloc()?;
                match self.inner.make(index) {
                    Ok(s) => s,
                    Err(e) => {
                        self.inner.lock().used.remove(&index);
                        return Err(e);
                    }
                }
            }
        };
        if let Err(e) = self.inner.nft.apply(&slot.ifname, rules) {
            self.release(slot);
            return Err(e);
        }
        Ok(slot)
    }

    /// Change the rules of a slot in use.
    pub fn apply(&self, slot: &Slot, rules: &SandboxRules) -> Result<(), NetError> {
        self.inner.nft.apply(&slot.ifname, rules)
    }

    /// Give a slot back (its sandbox is gone): elements and veth removed
    /// in the background.
    pub fn release(&self, slot: Slot) {
        let mut st = self.inner.lock();
        st.releases
            .push((slot.index, slot.ifname, Some(slot.netns)));
        self.inner.cv.notify_all();
    }

    /// Re-adopt the slot of a sandbox that survived a daemon restart
    /// (`pid`: its init). `None` when the slot is out of range or its link
    /// is gone.
    pub fn adopt(&self, index: u32, pid: i32, rules: &SandboxRules) -> Result<Slot, NetError> {
        if index >= self.inner.held.range.slots() {
            return Err(NetError::Config(format!(
                "slot {index} is outside the range"
            )));
        }
        let ifname = format!("{}{index:x}", self.inner.ifprefix);
        if !Path::new("/sys/class/net").join(&ifname).exists() {
            return Err(NetError::Config(format!("link {ifname} is gone")));
        }
        let netns = hull_sys::netns::of_pid(pid).map_err(|source| NetError::Sys {
            what: "opening the sandbox's network namespace",
            source,
        })?;
        self.inner.lock().used.insert(index);
        let slot = Slot {
            index,
            ifname,
            addrs: self.inner.held.range.slot(index),
            netns: Arc::new(netns),
        };
        self.inner.nft.apply(&slot.ifname, rules)?;
        Ok(slot)
    }

    /// Give a running sandbox that has no slot (created with `none`: a
    /// namespace of its own with only `lo`) one, in place: a veth pair into
    /// the namespace of its init `pid`, addressed and routed like a pooled
    /// slot, under `rules`. Blocking.
    pub fn attach(&self, pid: i32, rules: &SandboxRules) -> Result<Slot, NetError> {
        let ns = hull_sys::netns::of_pid(pid).map_err(|source| NetError::Sys {
            what: "opening the sandbox's network namespace",
            source,
        })?;
        let index = self.inner.alloc()?;
        self.inner.wire(index, ns, rules).inspect_err(|_| {
            self.inner.lock().used.remove(&index);
        })
    }

    /// Stop the pool thread, delete ready slots and pending releases, and
    /// (with `drop_table`) the nftables table.
    pub fn close(&self, drop_table: bool) {
        {
            let mut st = self.inner.lock();
            st.shutdown = true;
            self.inner.cv.notify_all();
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for (i, h) in threads.into_iter().enumerate() {
            let _ = h.join();
            if i == 0 {
                // The maker is gone (even if it panicked): let the reaper
                // finish what is pending and stop.
                let mut st = self.inner.lock();
                st.maker_done = true;
                self.inner.cv.notify_all();
            }
        }
        if drop_table {
            let _ = self.inner.nft.delete();
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn alloc(&self) -> Result<u32, NetError> {
        let slots = self.held.range.slots();
        let mut st = self.lock();
        let index = (0..slots)
            .find(|i| !st.used.contains(i))
            .ok_or(NetError::Exhausted(slots))?;
        st.used.insert(index);
        Ok(index)
    }

    /// Build slot `index` (blocking; moves the calling thread into the new
    /// namespace and back).
    fn make(&self, index: u32) -> Result<Slot, NetError> {
        let ns = {
            let (guard, ns) = NetnsGuard::enter_new().map_err(|source| NetError::Sys {
                what: "creating a network namespace",
                source,
            })?;
            drop(guard);
            ns
        };
        let mut open = SandboxRules::deny_all("");
        open.mode = Mode::Open;
        self.wire(index, ns, &open)
    }

    /// Give namespace `ns` slot `index`'s veth pair, addresses and routes,
    /// with `rules` in the firewall before the host end comes up (so a
    /// namespace with processes in it is never reachable unruled).
    fn wire(&self, index: u32, ns: OwnedFd, rules: &SandboxRules) -> Result<Slot, NetError> {
        let started = Instant::now();
        let ifname = format!("{}{index:x}", self.ifprefix);
        let a = self.held.range.slot(index);
        // Opened here: bound to the daemon's namespace, like this thread.
        let mut host = Rtnl::open()?;
        host.del_link(&ifname)?;
        {
            let guard = NetnsGuard::enter(ns.as_fd()).map_err(|source| NetError::Sys {
                what: "entering a network namespace",
                source,
            })?;
            let inside = (|| {
                sysctl("net/ipv4/ip_unprivileged_port_start", "0")?;
                sysctl("net/ipv4/ping_group_range", "0 2147483647")?;
                let _ = sysctl("net/ipv6/conf/default/accept_ra", "0");
                let mut nl = Rtnl::open()?;
                let lo = nl.index("lo")?;
                nl.set_up(lo, "lo")?;
                nl.add_veth("eth0", &ifname, self.host_ns.as_fd())?;
                let eth0 = nl.index("eth0")?;
                nl.add_addr(eth0, "eth0", IpAddr::V4(a.sandbox4), 30)?;
                nl.add_addr(eth0, "eth0", IpAddr::V6(a.sandbox6), 64)?;
                nl.set_up(eth0, "eth0")?;
                nl.add_default_route(eth0, "eth0", IpAddr::V4(a.host4))?;
                nl.add_default_route(eth0, "eth0", IpAddr::V6(a.host6))
            })();
            drop(guard);
            if let Err(e) = inside {
                let _ = host.del_link(&ifname);
                return Err(e);
            }
        }
        let inside_done = started.elapsed();
        let host_side = self.nft.apply(&ifname, rules).and_then(|()| {
            let i = host.index(&ifname)?;
            host.add_addr(i, &ifname, IpAddr::V4(a.host4), 30)?;
            host.add_addr(i, &ifname, IpAddr::V6(a.host6), 64)?;
            host.set_up(i, &ifname)
        });
        if let Err(e) = host_side {
            let _ = self.nft.forget(&ifname);
            let _ = host.del_link(&ifname);
            return Err(e);
        }
        tracing::debug!(
            ifname,
            elapsed_us = started.elapsed().as_micros() as u64,
            inside_us = inside_done.as_micros() as u64,
            "wired a network slot"
        );
        Ok(Slot {
            index,
            ifname,
            addrs: a,
            netns: Arc::new(ns),
        })
    }

    /// Delete slots (their firewall elements in one `nft` run, then their
    /// veth pairs) and free their numbers.
    fn delete(&self, slots: &[(u32, String)]) {
        if slots.is_empty() {
            return;
        }
        let started = Instant::now();
        let names: Vec<&str> = slots.iter().map(|(_, n)| n.as_str()).collect();
        if let Err(e) = self.nft.forget_many(&names) {
            tracing::warn!(error = %e, "removing sandboxes' firewall elements");
        }
        let nft_done = started.elapsed();
        match Rtnl::open() {
            Ok(mut nl) => self.delete_links(&mut nl, &names),
            Err(e) => tracing::warn!(error = %e, "deleting sandboxes' veth pairs"),
        }
        {
            let mut st = self.lock();
            for (index, _) in slots {
                st.used.remove(index);
            }
        }
        tracing::debug!(
            slots = slots.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            nft_us = nft_done.as_micros() as u64,
            "deleted network slots"
        );
    }

    /// Delete the host ends of veth pairs (and so the pairs): moved into
    /// this instance's dying group and deleted as one, or one by one.
    fn delete_links(&self, nl: &mut Rtnl, names: &[&str]) {
        let one_by_one = |nl: &mut Rtnl, names: &[&str]| {
            for n in names {
                if let Err(e) = nl.del_link(n) {
                    tracing::warn!(error = %e, ifname = n, "deleting a sandbox's veth pair");
                }
            }
        };
        let Some(group) = self.dying_group.filter(|_| names.len() > 1) else {
            return one_by_one(nl, names);
        };
        let mut moved = 0;
        for n in names {
            match nl.set_group(n, group) {
                Ok(true) => moved += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, ifname = n, "marking a veth pair for deletion");
                    one_by_one(nl, std::slice::from_ref(n));
                }
            }
        }
        if moved > 0
            && let Err(e) = nl.del_group(group)
        {
            tracing::warn!(error = %e, "deleting sandboxes' veth pairs together");
            one_by_one(nl, names);
        }
    }

    /// The reaper thread: delete released slots, all pending ones at once.
    fn reap(&self) {
        loop {
            let releases = {
                let mut st = self.lock();
                while st.releases.is_empty() && !(st.shutdown && st.maker_done) {
                    st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                if st.releases.is_empty() {
                    return;
                }
                std::mem::take(&mut st.releases)
            };
            let (gone, netns): (Vec<_>, Vec<_>) = releases
                .into_iter()
                .map(|(index, ifname, netns)| ((index, ifname), netns))
                .unzip();
            self.delete(&gone);
            drop(netns);
            // Freed numbers may unblock the maker.
            self.cv.notify_all();
        }
    }

    /// The maker thread: keep `pool_size` slots ready; at shutdown, hand
    /// them to the reaper.
    fn run(&self) {
        loop {
            let want = {
                let mut st = self.lock();
                loop {
                    let want = st.demand && st.ready.len() < self.pool_size;
                    if st.shutdown || want {
                        break;
                    }
                    st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                if st.shutdown {
                    let ready: Vec<Slot> = st.ready.drain(..).collect();
                    for s in ready {
                        st.releases.push((s.index, s.ifname, Some(s.netns)));
                    }
                    st.maker_done = true;
                    self.cv.notify_all();
                    return;
                }
                st.demand && st.ready.len() < self.pool_size
            };
            if want {
                let made = self.alloc().and_then(|index| {
                    self.make(index).inspect_err(|_| {
                        self.lock().used.remove(&index);
                    })
                });
                match made {
                    Ok(slot) => {
                        // At shutdown, the maker hands it to the reaper.
                        self.lock().ready.push_back(slot);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "making a pooled network namespace");
                        // Don't spin: wait for the next demand.
                        let mut st = self.lock();
                        st.demand = false;
                    }
                }
            }
        }
    }
}

/// The link group an instance deletes its released links through: its
/// id as a number, if that is one and not one of the small numbers
/// administrators name groups by (`/etc/iproute2/group`).
fn dying_group(instance: &str) -> Option<u32> {
    u32::from_str_radix(instance, 16)
        .ok()
        .filter(|g| *g >= 0x1_0000)
}

/// Whether `ifname` is a link of `instance`.
pub fn is_own_link(instance: &str, ifname: &str) -> bool {
    ifname.starts_with(&ifprefix(instance))
}

/// Remove everything an instance left on the host: its table and links
/// (for `hull system reset` and tests).
pub fn purge(instance: &str) -> Result<(), NetError> {
    link::delete_links(&link::links_with_prefix(&ifprefix(instance)))?;
    crate::nft::delete_table(instance)
}

/// Enter `slot`'s namespace on this thread while `f` runs.
pub fn in_slot<R>(slot: &Slot, f: impl FnOnce() -> R) -> Result<R, NetError> {
    hull_sys::netns::run_in(slot.netns.as_fd(), f).map_err(|source| NetError::Sys {
        what: "entering a sandbox's network namespace",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dying_group_is_the_instance_id_when_that_is_safe() {
        assert_eq!(dying_group("b00d7932"), Some(0xb00d_7932));
        // Small numbers are administrators' groups (and 0 is every link's
        // default): never delete through them.
        assert_eq!(dying_group("00000000"), None);
        assert_eq!(dying_group("0000abcd"), None);
        assert_eq!(dying_group("not-hex"), None);
        assert_eq!(dying_group(""), None);
    }
}
