//! Firewall drops reported as denial events, against the real kernel: a
//! network host whose table logs to an NFLOG group bound by the test, pool
//! slots in `allowlist` and `open`, UDP, ICMP and IPv6 sent from inside
//! them to a fake internet, the host and metadata addresses, and a flood
//! that the kernel's rate limit turns into a few events while the counter
//! counts every packet. Everything is removed at the end.
//! Privileged: skips with a message without root, fails under
//! `HULL_TEST_PRIVILEGED=1`.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hull_api::NetworkPolicy;
use hull_net::nflog::NflogSocket;
use hull_net::pool::{NetConfig, NetHost, in_slot, purge};
use hull_net::{Denied, EventSink, Registry, SandboxRules, Slot, policy};
use hull_testkit::fakenet::{FakeInternet, net_leftovers};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType};

#[derive(Default)]
struct Sink(Mutex<Vec<(String, Denied)>>);

impl EventSink for Sink {
    fn denied(&self, id: &str, d: Denied) {
        self.0.lock().unwrap().push((id.to_string(), d));
    }
}

impl Sink {
    /// Wait (bounded) for an event of `id` matching `f`.
    fn wait(&self, id: &str, f: impl Fn(&Denied) -> bool) -> Denied {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((_, d)) = self.0.lock().unwrap().iter().find(|(i, d)| i == id && f(d)) {
                return d.clone();
            }
            if Instant::now() > deadline {
                panic!("no such event for {id}; got {:#?}", self.0.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn count(&self, id: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(i, _)| i == id)
            .count()
    }
}

fn udp_send(slot: &Slot, addr: &str, ports: std::ops::Range<u16>) {
    let ip: IpAddr = addr.parse().unwrap();
    in_slot(slot, || {
        let u = UdpSocket::bind(if ip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).unwrap();
        for port in ports {
            let _ = u.send_to(b"ping", SocketAddr::new(ip, port));
        }
    })
    .unwrap();
}

/// One ICMP echo request from a raw socket inside the slot.
fn ping(slot: &Slot, addr: &str) {
    let ip: std::net::Ipv4Addr = addr.parse().unwrap();
    in_slot(slot, || {
        let fd = socket::socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::Icmp,
        )
        .unwrap();
        let mut pkt = vec![8u8, 0, 0, 0, 0x12, 0x34, 0, 1, b'h', b'u', b'l', b'l'];
        let mut sum: u32 = pkt
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        pkt[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        let dst = socket::SockaddrIn::from(std::net::SocketAddrV4::new(ip, 0));
        use std::os::fd::AsRawFd;
        socket::sendto(fd.as_raw_fd(), &pkt, &dst, MsgFlags::empty()).unwrap();
    })
    .unwrap();
}

fn rules(id: &str, p: &str) -> SandboxRules {
    let p: NetworkPolicy = p.parse().unwrap();
    policy::compile(id, &p, None, |_| None).unwrap()
}

/// Packets counted by the rule of `chain` that jumps to `target`.
fn counted(table: &str, chain: &str, target: &str) -> u64 {
    let out = std::process::Command::new("nft")
        .args(["list", "chain", "inet", table, chain])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.contains(&format!("goto {target}")))
        .filter_map(|l| {
            let rest = l.split("counter packets ").nth(1)?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

#[test]
fn firewall_drops_become_events() {
    if !hull_testkit::privileged("firewall_drops_become_events") {
        return;
    }
    let fake = FakeInternet::start();
    let state = hull_testkit::state_dir("hull-net-nflog");
    let inst = format!("{:08x}", std::process::id() ^ 0x6e66_0000);
    let sock = NflogSocket::bind(&inst).expect("nfnetlink_log is available here");
    let group = sock.group();
    // A second listener cannot take the same group: it moves to the next.
    let other = NflogSocket::bind(&inst).unwrap();
    assert_ne!(other.group(), group, "two listeners on one group");
    drop(other);
    // With every group it may try taken, binding fails (the daemon then
    // counts drops only).
    match NflogSocket::bind_from(group, 1) {
        Err(hull_net::nflog::NflogError::Busy { .. }) => {}
        other => panic!("bound a taken group: {other:?}"),
    }

    let registry = Arc::new(Registry::new());
    let sink = Arc::new(Sink::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    {
        let (r, s) = (registry.clone(), sink.clone() as Arc<dyn EventSink>);
        rt.spawn(async move {
            if let Err(e) = sock.serve(r, s).await {
                eprintln!("nflog reader stopped: {e}");
            }
        });
    }
    let host = NetHost::start(
        NetConfig {
            state_dir: state.path().to_path_buf(),
            instance: inst.clone(),
            range4: None,
            range6: None,
            pool_size: 2,
            proxy: None,
            log_group: Some(group),
        },
        &[],
    )
    .unwrap();
    let table = host.table().to_string();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let allow = rules("allow", "allow:198.51.100.10/32:80");
        let a = host.take(&allow).unwrap();
        registry.set(&a.sandbox_addrs(), Arc::new(allow));
        let open = rules("open", "open");
        let o = host.take(&open).unwrap();
        registry.set(&o.sandbox_addrs(), Arc::new(open));

        // allowlist: UDP to an address no CIDR rule names (v4 and v6).
        udp_send(&a, FakeInternet::OTHER4, 5353..5354);
        let d = sink.wait("allow", |d| d.dest == "198.51.100.20:5353");
        assert_eq!(d.proto, "udp");
        assert!(d.reason.contains("no CIDR rule"), "{d:?}");
        udp_send(&a, FakeInternet::OTHER6, 5353..5354);
        let d = sink.wait("allow", |d| d.dest == "[2001:db8::20]:5353");
        assert_eq!(d.proto, "udp");
        // ICMP: the destination and the message type.
        ping(&a, FakeInternet::OTHER4);
        let d = sink.wait("allow", |d| d.proto == "icmp");
        assert_eq!(d.dest, "198.51.100.20");
        assert!(d.reason.contains("echo request"), "{d:?}");
        // The host itself (its gateway address).
        udp_send(&a, &a.addrs.host4.to_string(), 9999..10000);
        let d = sink.wait("allow", |d| d.dest == format!("{}:9999", a.addrs.host4));
        assert!(d.reason.contains("host"), "{d:?}");

        // open: the metadata address and the host stay unreachable, and say so.
        ping(&o, "169.254.169.254");
        let d = sink.wait("open", |d| d.dest == "169.254.169.254");
        assert_eq!(d.proto, "icmp");
        assert!(d.reason.contains("link-local"), "{d:?}");
        udp_send(&o, "169.254.169.254", 53..54);
        sink.wait("open", |d| {
            d.dest == "169.254.169.254:53" && d.proto == "udp"
        });
        // ... and another sandbox.
        udp_send(&o, &a.addrs.sandbox4.to_string(), 7000..7001);
        sink.wait("open", |d| d.dest == format!("{}:7000", a.addrs.sandbox4));
        // What open allows is not reported.
        udp_send(&o, FakeInternet::OTHER4, 5353..5354);

        // A flood: 3000 distinct flows. The kernel reports a burst and then
        // a trickle; the counter sees every packet.
        let before_events = sink.count("allow");
        let before_packets = counted(&table, "from_sandbox", "deny_policy");
        let start = Instant::now();
        udp_send(&a, FakeInternet::OTHER4, 20000..23000);
        let elapsed = start.elapsed();
        let after_packets = counted(&table, "from_sandbox", "deny_policy");
        assert!(
            after_packets >= before_packets + 3000,
            "counted {before_packets} -> {after_packets}"
        );
        // The last flood packet is beyond the burst: wait for the reader to
        // drain by sending one more flow from the open sandbox (its own
        // budget) and waiting for that.
        udp_send(&o, "169.254.169.254", 4444..4445);
        sink.wait("open", |d| d.dest == "169.254.169.254:4444");
        let flood_events = sink.count("allow") - before_events;
        // Per interface: burst 20, then 2/second while the flood lasted.
        let bound = 20 + 2 * (elapsed.as_secs() as usize + 1) + 2;
        eprintln!(
            "flood: 3000 packets in {elapsed:?}, {flood_events} events (bound {bound}), counter +{}",
            after_packets - before_packets
        );
        assert!(flood_events >= 1, "the flood was not reported at all");
        assert!(flood_events <= bound, "{flood_events} events for a flood");
        assert!(
            !sink
                .0
                .lock()
                .unwrap()
                .iter()
                .any(|(i, d)| i == "open" && d.dest == "198.51.100.20:5353"),
            "open traffic reported as denied"
        );
        registry.remove(&a.sandbox_addrs());
        registry.remove(&o.sandbox_addrs());
        host.release(a);
        host.release(o);
    }));
    drop(rt);
    host.close(true);
    drop(fake);
    let left = net_leftovers(&inst);
    let _ = purge(&inst);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert!(left.is_empty(), "left behind: {left:?}");
}
