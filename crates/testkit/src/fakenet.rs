//! A fake internet for network tests: a network namespace the test makes
//! (`hullt-<pid>-<n>`), wired to the host by a veth pair and routed, with
//! servers on documentation addresses that never leave the machine.
//!
//! Addresses: the servers answer on [`FakeInternet::WEB4`] and
//! [`FakeInternet::OTHER4`] (198.51.100.10 and .20), [`FakeInternet::WEB6`]
//! and [`FakeInternet::OTHER6`] (2001:db8::10 and ::20): TCP port 80 (a
//! one-line HTTP answer `fake-internet <addr>`), TCP 8080 (same), UDP 5353
//! (echo). The link uses 203.0.113.0/30 and fd99:<n>::/64. Only one fake
//! internet can exist on a machine at a time per route (tests using it take
//! a file lock, [`FakeInternet::start`] does). Dropping it stops the
//! servers and deletes the namespace and its link.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use nix::sched::{CloneFlags, setns};

/// The fake internet; removed on drop.
pub struct FakeInternet {
    pub name: String,
    pub host_if: String,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    _lock: Flock<File>,
}

fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl FakeInternet {
    pub const WEB4: &'static str = "198.51.100.10";
    pub const OTHER4: &'static str = "198.51.100.20";
    pub const WEB6: &'static str = "2001:db8::10";
    pub const OTHER6: &'static str = "2001:db8::20";

    /// Build it (root only). Serialised machine-wide by a lock file.
    pub fn start() -> FakeInternet {
        std::fs::create_dir_all("/run/hull").unwrap();
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/hull/test-fakenet.lock")
            .unwrap();
        let lock = Flock::lock(f, FlockArg::LockExclusive).expect("fakenet lock");
        let pid = std::process::id();
        let name = format!("hullt-{pid}-0");
        let host_if = format!("hullt{pid}");
        let peer = format!("hullu{pid}");
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        ip(&format!("netns add {name}"));
        let mut me = FakeInternet {
            name: name.clone(),
            host_if: host_if.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            _lock: lock,
        };
        ip(&format!(
            "link add {host_if} type veth peer name {peer} netns {name}"
        ));
        ip(&format!("addr add 203.0.113.1/30 dev {host_if}"));
        ip(&format!("addr add fd99:1::1/64 dev {host_if} nodad"));
        ip(&format!("link set {host_if} up"));
        ip(&format!("-n {name} link set lo up"));
        ip(&format!("-n {name} link set {peer} up"));
        ip(&format!("-n {name} addr add 203.0.113.2/30 dev {peer}"));
        ip(&format!("-n {name} addr add fd99:1::2/64 dev {peer} nodad"));
        for a in [Self::WEB4, Self::OTHER4] {
            ip(&format!("-n {name} addr add {a}/32 dev lo"));
        }
        for a in [Self::WEB6, Self::OTHER6] {
            ip(&format!("-n {name} addr add {a}/128 dev lo"));
        }
        ip(&format!("-n {name} route add default via 203.0.113.1"));
        ip(&format!("-n {name} -6 route add default via fd99:1::1"));
        ip("route add 198.51.100.0/24 via 203.0.113.2");
        ip("-6 route add 2001:db8::/32 via fd99:1::2");
        let ns = File::open(format!("/run/netns/{name}")).unwrap();
        for a in [Self::WEB4, Self::OTHER4, Self::WEB6, Self::OTHER6] {
            for port in [80u16, 8080] {
                let addr: SocketAddr = SocketAddr::new(a.parse().unwrap(), port);
                let stop = me.stop.clone();
                let ns = ns.try_clone().unwrap();
                let (tx, rx) = std::sync::mpsc::channel();
                me.threads.push(std::thread::spawn(move || {
                    // This thread lives in the fake namespace until it ends.
                    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).unwrap();
                    let l = TcpListener::bind(addr).unwrap();
                    l.set_nonblocking(true).unwrap();
                    tx.send(()).unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        match l.accept() {
                            Ok((mut s, _)) => {
                                let _ = s.set_nonblocking(false);
                                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                                let mut buf = [0u8; 1024];
                                let _ = s.read(&mut buf);
                                let body = format!("fake-internet {}\n", addr.ip());
                                let _ = write!(
                                    s,
                                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                                    body.len()
                                );
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(10)),
                        }
                    }
                }));
                rx.recv().unwrap();
            }
            let stop = me.stop.clone();
            let ns = ns.try_clone().unwrap();
            let addr: SocketAddr = SocketAddr::new(a.parse().unwrap(), 5353);
            let (tx, rx) = std::sync::mpsc::channel();
            me.threads.push(std::thread::spawn(move || {
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).unwrap();
                let u = UdpSocket::bind(addr).unwrap();
                u.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                tx.send(()).unwrap();
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = u.recv_from(&mut buf) {
                        let _ = u.send_to(&buf[..n], from);
                    }
                }
            }));
            rx.recv().unwrap();
        }
        me
    }
}

impl Drop for FakeInternet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = Command::new("ip")
            .args(["route", "del", "198.51.100.0/24"])
            .output();
        let _ = Command::new("ip")
            .args(["-6", "route", "del", "2001:db8::/32"])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Links, namespaces and nft tables of `instance` still on the host.
pub fn net_leftovers(instance: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
        for e in dir.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&format!("h{instance}")) {
                out.push(format!("link {n}"));
            }
        }
    }
    if let Ok(o) = Command::new("nft").args(["list", "tables"]).output() {
        let t = String::from_utf8_lossy(&o.stdout);
        if t.contains(&format!("hull_{instance}")) {
            out.push(format!("nft table hull_{instance}"));
        }
    }
    out
}
