//! The network host against the real kernel: pooled namespaces, addresses,
//! and the nftables table enforcing `none`/`open`/CIDR/peer policies
//! against a fake internet, with everything removed at the end.
//!
//! Each test runs traffic from a thread moved into a slot's namespace (the
//! firewall sees the same packets a sandbox would send).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use hull_api::NetworkPolicy;
use hull_net::pool::{NetConfig, NetHost, in_slot, purge};
use hull_net::{SandboxRules, Slot, policy};
use hull_testkit::fakenet::{FakeInternet, net_leftovers};

fn tcp(slot: &Slot, addr: &str, port: u16) -> Result<String, String> {
    let ip: IpAddr = addr.parse().unwrap();
    in_slot(slot, || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_millis(700))
                .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
    .unwrap()
}

fn udp(slot: &Slot, addr: &str, port: u16) -> bool {
    let ip: IpAddr = addr.parse().unwrap();
    in_slot(slot, || {
        let bind = if ip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let u = UdpSocket::bind(bind).unwrap();
        u.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let _ = u.send_to(b"ping", SocketAddr::new(ip, port));
        let mut buf = [0u8; 16];
        matches!(u.recv_from(&mut buf), Ok((4, _)))
    })
    .unwrap()
}

fn rules(id: &str, p: &str, host: &NetHost, peers: &[(&str, &Slot)]) -> SandboxRules {
    let _ = host;
    let p: NetworkPolicy = p.parse().unwrap();
    policy::compile(id, &p, None, |name| {
        peers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s.sandbox_addrs())
    })
    .unwrap()
}

fn instance() -> String {
    format!("{:08x}", std::process::id() ^ 0x5a5a_0000)
}

#[test]
fn pool_policies_and_cleanup() {
    if !hull_testkit::privileged("pool_policies_and_cleanup") {
        return;
    }
    let fake = FakeInternet::start();
    let state = hull_testkit::state_dir("hull-net-pool");
    let inst = instance();
    let host = NetHost::start(
        NetConfig {
            state_dir: state.path().to_path_buf(),
            instance: inst.clone(),
            range4: None,
            range6: None,
            pool_size: 2,
            proxy: None,
            log_group: None,
        },
        &[],
    )
    .unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let open = host.take(&rules("a", "open", &host, &[])).unwrap();
        // Addresses and routes inside (the first packets wait for neighbour
        // resolution on both links: a bounded wait, not a timing assertion).
        let mut first = tcp(&open, FakeInternet::WEB4, 80);
        for _ in 0..10 {
            if first.is_ok() {
                break;
            }
            eprintln!("first connection: {first:?}; retrying");
            std::thread::sleep(Duration::from_millis(500));
            first = tcp(&open, FakeInternet::WEB4, 80);
        }
        let web = first.expect("open reaches the fake internet (v4)");
        assert!(web.contains("fake-internet 198.51.100.10"), "{web}");
        let web6 = tcp(&open, FakeInternet::WEB6, 80).expect("open reaches the fake internet (v6)");
        assert!(web6.contains("fake-internet 2001:db8::10"), "{web6}");
        assert!(udp(&open, FakeInternet::WEB4, 5353), "open: udp");
        // Never the host: its gateway address, its other addresses, link-local.
        let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let gw = open.addrs.host4.to_string();
        assert!(
            tcp(&open, &gw, port).is_err(),
            "open reached the host gateway"
        );
        assert!(
            tcp(&open, "203.0.113.1", port).is_err(),
            "open reached a host address"
        );
        assert!(
            tcp(&open, "169.254.169.254", 80).is_err(),
            "open reached metadata"
        );
        drop(listener);

        // CIDR/port allowlist: exactly that.
        let cidr = host
            .take(&rules("b", "allow:198.51.100.10/32:80", &host, &[]))
            .unwrap();
        assert!(
            tcp(&cidr, FakeInternet::WEB4, 80).is_ok(),
            "cidr:80 allowed"
        );
        assert!(
            tcp(&cidr, FakeInternet::WEB4, 8080).is_err(),
            "cidr:8080 denied"
        );
        assert!(
            tcp(&cidr, FakeInternet::OTHER4, 80).is_err(),
            "other ip denied"
        );
        assert!(tcp(&cidr, FakeInternet::WEB6, 80).is_err(), "v6 denied");
        assert!(
            !udp(&cidr, FakeInternet::WEB4, 5353),
            "udp to another port denied"
        );

        // Another sandbox is unreachable, unless named as a peer.
        let srv = open.clone();
        let peer_listener = in_slot(&srv, || {
            std::net::TcpListener::bind("0.0.0.0:7000").unwrap()
        })
        .unwrap();
        std::thread::spawn(move || {
            for s in peer_listener.incoming().flatten().take(4) {
                let mut s = s;
                // Read the request first: closing with unread bytes resets.
                let mut buf = [0u8; 64];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"peer\n");
            }
        });
        let sb4 = open.addrs.sandbox4.to_string();
        assert!(tcp(&cidr, &sb4, 7000).is_err(), "reached another sandbox");
        host.apply(
            &cidr,
            &rules(
                "b",
                "allow:198.51.100.10/32:80,sandbox:a",
                &host,
                &[("a", &open)],
            ),
        )
        .unwrap();
        assert_eq!(tcp(&cidr, &sb4, 7000).unwrap(), "peer\n", "peer rule");
        // Policy changes affect new connections: to none.
        host.apply(&cidr, &rules("b", "none", &host, &[])).unwrap();
        assert!(
            tcp(&cidr, FakeInternet::WEB4, 80).is_err(),
            "none after change"
        );
        assert!(tcp(&cidr, &sb4, 7000).is_err(), "peer gone after change");
        host.apply(&open, &rules("a", "allow:198.51.100.20", &host, &[]))
            .unwrap();
        assert!(
            tcp(&open, FakeInternet::WEB4, 80).is_err(),
            "open -> allowlist"
        );
        assert!(
            tcp(&open, FakeInternet::OTHER4, 80).is_ok(),
            "open -> allowlist"
        );
        host.release(open);
        host.release(cidr);
    }));
    host.close(true);
    drop(fake);
    // Teardown is asynchronous in the kernel; links must be gone at once.
    let left = net_leftovers(&inst);
    let _ = purge(&inst);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// `ip` output for a slot: inside its namespace and of its host end (to
/// compare configurations; dynamic fields stripped by the caller).
fn dump(slot: &Slot) -> String {
    let run = |args: &[&str]| {
        let o = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let inside = in_slot(slot, || {
        [
            run(&["-d", "link", "show"]),
            run(&["addr", "show"]),
            run(&["-4", "route", "show", "table", "all"]),
            run(&["-6", "route", "show", "table", "all"]),
        ]
        .concat()
    })
    .unwrap();
    let host = [
        run(&["-d", "link", "show", "dev", &slot.ifname]),
        run(&["addr", "show", "dev", &slot.ifname]),
        run(&["-4", "route", "show", "dev", &slot.ifname]),
        run(&["-6", "route", "show", "dev", &slot.ifname]),
    ]
    .concat();
    format!("== inside\n{inside}== host\n{host}")
}

/// Cost of making a slot inline (pool empty: namespace, veth pair,
/// addresses, routes, firewall elements) and of deleting one. Prints
/// numbers; run with
/// `cargo nextest run -p hull-net --test pool --run-ignored only --no-capture`
/// (`HULL_NET_DUMP=1` also prints the first slot's configuration).
#[test]
#[ignore = "benchmark: prints numbers"]
fn bench_make_and_delete() {
    if !hull_testkit::privileged("bench_make_and_delete") {
        return;
    }
    let n: usize = std::env::var("HULL_NET_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    if std::env::var("HULL_NET_DUMP").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
            .with_test_writer()
            .try_init();
    }
    let state = hull_testkit::state_dir("hull-net-bench");
    let inst = format!("{:08x}", std::process::id() ^ 0x3c3c_0000);
    let start = |pool_size| {
        NetHost::start(
            NetConfig {
                state_dir: state.path().to_path_buf(),
                instance: inst.clone(),
                range4: None,
                range6: None,
                pool_size,
                proxy: None,
                log_group: None,
            },
            &[],
        )
        .unwrap()
    };
    // Pool size 0: every take makes its slot inline.
    let host = start(0);
    let open = rules("a", "open", &host, &[]);
    let mut made = Vec::new();
    let mut times = Vec::new();
    for _ in 0..n {
        let t = std::time::Instant::now();
        let slot = host.take(&open).unwrap();
        times.push(t.elapsed());
        made.push(slot);
    }
    if std::env::var("HULL_NET_DUMP").is_ok() {
        println!("{}", dump(&made[0]));
    }
    // Deleting: releases are handled by the pool thread; closing waits
    // until it has deleted them all.
    let t = std::time::Instant::now();
    for s in made {
        host.release(s);
    }
    host.close(true);
    let del = t.elapsed() / n as u32;
    times.sort();
    println!(
        "make (take, pool empty) x{n}: p50 {:?} p90 {:?}; delete (release + close) mean {del:?}",
        times[n / 2],
        times[n * 9 / 10]
    );
    let left = net_leftovers(&inst);
    let _ = purge(&inst);
    assert!(left.is_empty(), "left behind: {left:?}");
}
