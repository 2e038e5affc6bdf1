//! The network host of one daemon: its address ranges, its nftables
//! table, and a pool of ready network namespaces.
//!
//! A pool slot is a network namespace owned by the daemon's (initial) user
//! namespace, so root inside a sandbox has no CAP_NET_ADMIN over it: `lo`
//! up, `eth0` one end of a veth pair whose other end (`h<instance><n>`,
//! hex slot number) is in the host namespace, IPv4 and IPv6 addresses and
//! default routes set, unprivileged ports from 0 and ICMP echo sockets
//! allowed (so sandbox root can still bind :80 and ping). Slots are made
//! by a background thread, lazily (after the first networked create) up to
//! the configured pool size, and pre-provisioned in nftables as `open`; a
//! create takes one (microseconds) and changes its elements only when its
//! policy differs. Teardown hands the slot back to the same thread, which
//! removes its elements and deletes its veth pair asynchronously.
//!
//! Pool namespaces are held only by descriptors: if the daemon dies they
//! vanish with it (the kernel deletes their veth pairs). Namespaces of
//! running sandboxes live on with the sandboxes and are re-adopted through
//! `/proc/<init pid>/ns/net`.
//!
//! Limits: one IPv4 /30 and one IPv6 /64 per sandbox; at most as many
//! networked sandboxes as the range has slots.

use std::collections::{BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use hull_sys::netns::NetnsGuard;
use ipnet::{Ipv4Net, Ipv6Net};

use crate::NetError;
use crate::addr::{self, HeldRange, NetRange, SlotAddrs};
use crate::link::{self, ip_batch, sysctl};
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
}

struct Inner {
    ifprefix: String,
    held: HeldRange,
    nft: Nft,
    pool_size: usize,
    daemon_pid: u32,
    state: Mutex<State>,
    cv: Condvar,
}

/// The daemon's network host (cheap to clone).
#[derive(Clone)]
pub struct NetHost {
    inner: Arc<Inner>,
    filler: Arc<Mutex<Option<JoinHandle<()>>>>,
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
    if std::process::Command::new("ip")
        .arg("-V")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        return Err("the ip command (iproute2) is missing".into());
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
        let mut stale = String::new();
        for l in link::links_with_prefix(&prefix) {
            if !keep.contains(&l) {
                let _ = writeln!(stale, "link del {l}");
            }
        }
        if !stale.is_empty() {
            ip_batch(&stale, true)?;
        }
        let inner = Arc::new(Inner {
            ifprefix: prefix,
            held,
            nft,
            pool_size: cfg.pool_size,
            daemon_pid: std::process::id(),
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
        });
        let worker = inner.clone();
        let handle = std::thread::Builder::new()
            .name("hull-netpool".into())
            .spawn(move || worker.run())
            .map_err(|source| NetError::Sys {
                what: "starting the network pool thread",
                source,
            })?;
        Ok(NetHost {
            inner,
            filler: Arc::new(Mutex::new(Some(handle))),
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
    /// (makes a slot inline when the pool is empty: ~10 ms).
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
        if let Some(h) = self.filler.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
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
        let ifname = format!("{}{index:x}", self.ifprefix);
        let a = self.held.range.slot(index);
        if Path::new("/sys/class/net").join(&ifname).exists() {
            ip_batch(&format!("link del {ifname}\n"), true)?;
        }
        {
            let guard = NetnsGuard::enter(ns.as_fd()).map_err(|source| NetError::Sys {
                what: "entering a network namespace",
                source,
            })?;
            let inside = (|| {
                sysctl("net/ipv4/ip_unprivileged_port_start", "0")?;
                sysctl("net/ipv4/ping_group_range", "0 2147483647")?;
                let _ = sysctl("net/ipv6/conf/default/accept_ra", "0");
                ip_batch(
                    &format!(
                        "link set lo up
link add eth0 type veth peer name {ifname} netns {pid}
addr add {s4}/30 dev eth0
addr add {s6}/64 dev eth0 nodad
link set eth0 up
route add default via {h4} dev eth0
route add default via {h6} dev eth0
",
                        pid = self.daemon_pid,
                        s4 = a.sandbox4,
                        s6 = a.sandbox6,
                        h4 = a.host4,
                        h6 = a.host6,
                    ),
                    false,
                )
            })();
            drop(guard);
            if let Err(e) = inside {
                if Path::new("/sys/class/net").join(&ifname).exists() {
                    let _ = ip_batch(&format!("link del {ifname}\n"), true);
                }
                return Err(e);
            }
        }
        let host = self.nft.apply(&ifname, rules).and_then(|()| {
            ip_batch(
                &format!(
                    "addr add {h4}/30 dev {ifname}
addr add {h6}/64 dev {ifname} nodad
link set {ifname} up
",
                    h4 = a.host4,
                    h6 = a.host6
                ),
                false,
            )
        });
        if let Err(e) = host {
            let _ = self.nft.forget(&ifname);
            let _ = ip_batch(&format!("link del {ifname}\n"), true);
            return Err(e);
        }
        Ok(Slot {
            index,
            ifname,
            addrs: a,
            netns: Arc::new(ns),
        })
    }

    fn delete(&self, index: u32, ifname: &str) {
        if let Err(e) = self.nft.forget(ifname) {
            tracing::warn!(error = %e, ifname, "removing a sandbox's firewall elements");
        }
        if Path::new("/sys/class/net").join(ifname).exists()
            && let Err(e) = ip_batch(&format!("link del {ifname}\n"), false)
        {
            tracing::warn!(error = %e, ifname, "deleting a sandbox's veth pair");
        }
        self.lock().used.remove(&index);
    }

    /// The pool thread: process releases, keep `pool_size` slots ready.
    fn run(&self) {
        loop {
            let (releases, want, shutdown) = {
                let mut st = self.lock();
                loop {
                    let want = st.demand && st.ready.len() < self.pool_size;
                    if st.shutdown || !st.releases.is_empty() || want {
                        break;
                    }
                    st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                let want = st.demand && st.ready.len() < self.pool_size && !st.shutdown;
                (std::mem::take(&mut st.releases), want, st.shutdown)
            };
            for (index, ifname, netns) in releases {
                self.delete(index, &ifname);
                drop(netns);
            }
            if shutdown {
                let ready: Vec<Slot> = self.lock().ready.drain(..).collect();
                for s in ready {
                    self.delete(s.index, &s.ifname);
                }
                return;
            }
            if want {
                let made = self.alloc().and_then(|index| {
                    self.make(index).inspect_err(|_| {
                        self.lock().used.remove(&index);
                    })
                });
                match made {
                    Ok(slot) => {
                        let mut st = self.lock();
                        if st.shutdown {
                            drop(st);
                            self.delete(slot.index, &slot.ifname);
                        } else {
                            st.ready.push_back(slot);
                        }
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

/// Whether `ifname` is a link of `instance`.
pub fn is_own_link(instance: &str, ifname: &str) -> bool {
    ifname.starts_with(&ifprefix(instance))
}

/// Remove everything an instance left on the host: its table and links
/// (for `hull system reset` and tests).
pub fn purge(instance: &str) -> Result<(), NetError> {
    let mut script = String::new();
    for l in link::links_with_prefix(&ifprefix(instance)) {
        let _ = writeln!(script, "link del {l}");
    }
    if !script.is_empty() {
        ip_batch(&script, true)?;
    }
    crate::nft::delete_table(instance)
}

/// Enter `slot`'s namespace on this thread while `f` runs.
pub fn in_slot<R>(slot: &Slot, f: impl FnOnce() -> R) -> Result<R, NetError> {
    hull_sys::netns::run_in(slot.netns.as_fd(), f).map_err(|source| NetError::Sys {
        what: "entering a sandbox's network namespace",
        source,
    })
}
