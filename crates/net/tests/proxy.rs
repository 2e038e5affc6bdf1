//! The egress proxy end to end, without the daemon: a sandbox namespace
//! whose TCP is redirected by an nft table of the test's own to the proxy,
//! a fake internet with HTTP, HTTPS and DNS servers (see `fakenet`).
//! Privileged: skips with a message without root, fails under
//! `HULL_TEST_PRIVILEGED=1`.

mod fakenet;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fakenet::*;
use hull_net::proxy::{AppProto, BoxFuture, EgressProxy, Intercepted, Interceptor, ProxyConfig};
use hull_net::resolve::Resolver;
use hull_net::{Mode, Registry};

struct Setup {
    net: FakeNet,
    rt: tokio::runtime::Runtime,
    servers: Servers,
    registry: Arc<Registry>,
    sink: Arc<Sink>,
    proxy: Arc<EgressProxy>,
    ca_file: tempfile::NamedTempFile,
}

fn setup(tag: &str, rules: hull_net::SandboxRules) -> Setup {
    setup_with(tag, rules, ProxyConfig::default(), None)
}

fn setup_with(
    tag: &str,
    rules: hull_net::SandboxRules,
    cfg: ProxyConfig,
    interceptor: Option<Arc<dyn Interceptor>>,
) -> Setup {
    let net = FakeNet::new(tag);
    let rt = net.host_runtime();
    let registry = Arc::new(Registry::new());
    registry.set(&[SB_IP.into(), SB_IP6.into()], Arc::new(rules));
    let sink = Arc::new(Sink::default());
    let (servers, proxy) = rt.block_on(async {
        let servers = start_servers(&net);
        let resolver = Resolver::new(
            vec![SocketAddr::new(DNS_IP.into(), 53)],
            vec![
                "10.99.0.0/24".parse().unwrap(),
                "fd99::/64".parse().unwrap(),
            ],
        );
        let proxy = EgressProxy::new(registry.clone(), resolver, sink.clone(), interceptor, cfg);
        let l = tokio::net::TcpListener::bind(("::", PROXY_PORT))
            .await
            .unwrap();
        tokio::spawn(proxy.clone().serve(l));
        (servers, proxy)
    });
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), &servers.cert_pem).unwrap();
    Setup {
        net,
        rt,
        servers,
        registry,
        sink,
        proxy,
        ca_file,
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn addr(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

impl Setup {
    fn http(&self, dst: SocketAddr, req: Vec<u8>) -> String {
        text(&sandbox_exchange(&self.net, dst, vec![req], Duration::ZERO))
    }

    /// curl from inside the sandbox; `--resolve` pins the name to `ip`
    /// (what the sandbox dials), the proxy decides by the SNI.
    fn curl_https(&self, name: &str, ip: &str) -> (bool, String, String) {
        let resolve = format!("{name}:443:{ip}");
        let url = format!("https://{name}/");
        let ca = self.ca_file.path().to_str().unwrap().to_string();
        self.net.sandbox_cmd(&[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            &url,
        ])
    }
}

#[test]
fn egress_proxy_end_to_end() {
    if !hull_testkit::privileged("egress_proxy_end_to_end") {
        return;
    }
    {
        let s = setup(
            "p",
            rules(
                Mode::Allowlist,
                &[
                    "allowed.test",
                    "*.allowed.test",
                    "loopy.test",
                    "meta.test",
                    "private.test",
                    "gateway.test",
                    "alias.test",
                    "v6.test",
                ],
                &[],
            ),
        );
        let sink = s.sink.clone();

        // Allowed name over HTTP, dialled at its real address.
        let r = s.http(addr(WEB_A, 80), get("allowed.test", "/"));
        assert!(
            r.contains("200 OK") && r.contains("served-by=A host=allowed.test"),
            "{r}"
        );
        assert!(sink.take().is_empty());

        // Allowed name over HTTPS (curl, real TLS, SNI allowed.test).
        let (ok, out, err) = s.curl_https("allowed.test", "192.0.2.10");
        assert!(
            ok && out.contains("served-by=A-tls host=allowed.test"),
            "{out} {err}"
        );

        // Denied name over HTTP: a 403 naming hull, and an event.
        let r = s.http(addr(WEB_F, 80), get("forbidden.test", "/"));
        assert!(
            r.starts_with("HTTP/1.1 403") && r.contains("hull: forbidden.test:80"),
            "{r}"
        );
        let ev = sink.take();
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].0, "sb-test");
        assert_eq!(
            (ev[0].1.proto, ev[0].1.dest.as_str()),
            ("http", "forbidden.test:80")
        );

        // Denied name over TLS: a TLS alert, an event.
        let (ok, _, err) = s.curl_https("forbidden.test", "192.0.2.20");
        assert!(!ok && err.contains("access denied"), "{err}");
        let ev = sink.take();
        assert_eq!(
            (ev[0].1.proto, ev[0].1.dest.as_str()),
            ("tls", "forbidden.test:443"),
            "{ev:?}"
        );

        // A denied host reached by IP: TLS without SNI, HTTP with an IP
        // Host, raw TCP: all refused (no CIDR rule).
        let (ok, _, _) = s.net.sandbox_cmd(&[
            "curl",
            "-sS",
            "-k",
            "--max-time",
            "10",
            "https://192.0.2.20/",
        ]);
        assert!(!ok);
        let r = s.http(addr(WEB_F, 80), get("192.0.2.20", "/"));
        assert!(r.starts_with("HTTP/1.1 403"), "{r}");
        let r = sandbox_exchange(
            &s.net,
            addr(WEB_F, 22),
            vec![b"SSH-2.0-test\r\n".to_vec()],
            Duration::ZERO,
        );
        assert!(r.is_empty());
        let ev = sink.take();
        let protos: Vec<&str> = ev.iter().map(|(_, d)| d.proto).collect();
        assert_eq!(protos, ["tls", "http", "tcp"], "{ev:?}");
        assert_eq!(ev[2].1.dest, "192.0.2.20:22");
        assert_eq!(s.servers.hits.get("F") + s.servers.hits.get("F-tls"), 0);

        // SNI/Host lies: an allowed name sent to the forbidden host's IP
        // reaches the allowed name's server (hull connects by name).
        let r = s.http(addr(WEB_F, 80), get("allowed.test", "/"));
        assert!(r.contains("served-by=A host=allowed.test"), "{r}");
        let (ok, out, err) = s.curl_https("allowed.test", "192.0.2.20");
        assert!(ok && out.contains("served-by=A-tls"), "{out} {err}");
        // A second keep-alive request naming another host still goes to A.
        let two = b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\nGET / HTTP/1.1\r\nHost: forbidden.test\r\nConnection: close\r\n\r\n".to_vec();
        let r = s.http(addr(WEB_F, 80), two);
        assert!(
            r.contains("served-by=A host=allowed.test")
                && r.contains("served-by=A host=forbidden.test"),
            "{r}"
        );
        // Absolute-form target and Host disagree: refused.
        let r = s.http(
            addr(WEB_A, 80),
            b"GET http://forbidden.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n".to_vec(),
        );
        assert!(r.starts_with("HTTP/1.1 403"), "{r}");
        // Absolute-form target alone: the target's name is what's checked.
        let r = s.http(
            addr(WEB_A, 80),
            b"GET http://forbidden.test/ HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
        );
        assert!(r.starts_with("HTTP/1.1 403"), "{r}");
        assert_eq!(s.servers.hits.get("F") + s.servers.hits.get("F-tls"), 0);
        sink.take();

        // A ClientHello split over segments (and over records) is still
        // decided by its name.
        let hello = client_hello("allowed.test", 0);
        let before = s.servers.hits.get("A-tls");
        let (a, b) = hello.split_at(7);
        sandbox_exchange(
            &s.net,
            addr(WEB_F, 443),
            vec![a.to_vec(), b.to_vec()],
            Duration::from_millis(200),
        );
        assert_eq!(s.servers.hits.get("A-tls"), before + 1);
        let hello = client_hello("forbidden.test", 0);
        let (a, b) = hello.split_at(40);
        sandbox_exchange(
            &s.net,
            addr(WEB_A, 443),
            vec![a.to_vec(), b.to_vec()],
            Duration::from_millis(200),
        );
        let ev = sink.take();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].1.dest, "forbidden.test:443");
        // A big one (8 KiB, as with post-quantum key shares) and a big
        // request head (10 KiB of headers) are fine.
        let before = s.servers.hits.get("A-tls");
        sandbox_exchange(
            &s.net,
            addr(WEB_F, 443),
            vec![client_hello("allowed.test", 8000)],
            Duration::ZERO,
        );
        assert_eq!(s.servers.hits.get("A-tls"), before + 1);
        let mut big = b"GET / HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n".to_vec();
        for i in 0..60 {
            big.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "p".repeat(150)).as_bytes());
        }
        big.extend_from_slice(b"\r\n");
        let r = s.http(addr(WEB_F, 80), big);
        assert!(r.contains("served-by=A host=allowed.test"), "{r}");
        assert!(sink.take().is_empty());
        // A huge ClientHello (over 16 KiB) is refused, not buffered.
        let huge = client_hello("allowed.test", 20_000);
        sandbox_exchange(&s.net, addr(WEB_A, 443), vec![huge], Duration::ZERO);
        let ev = sink.take();
        assert_eq!(ev.len(), 1);
        assert!(ev[0].1.reason.contains("SNI"), "{ev:?}");
        assert_eq!(s.servers.hits.get("F") + s.servers.hits.get("F-tls"), 0);

        // Allowed names that resolve to forbidden addresses are refused.
        for (name, why) in [
            ("loopy.test", "loopback"),
            ("meta.test", "link-local"),
            ("private.test", "private"),
            ("gateway.test", "host's own"),
        ] {
            let r = s.http(addr(WEB_A, 80), get(name, "/"));
            assert!(r.starts_with("HTTP/1.1 403"), "{name}: {r}");
            let ev = sink.take();
            assert!(
                ev.len() == 1 && ev[0].1.reason.contains(why),
                "{name}: {ev:?}"
            );
        }
        // An allowed name whose server refuses: 502 with the reason, no
        // denial.
        let r = s.http(addr(WEB_A, 81), get("allowed.test", "/"));
        assert!(
            r.starts_with("HTTP/1.1 502") && r.contains("192.0.2.10:81"),
            "{r}"
        );
        assert!(sink.take().is_empty());
        // A CNAME to an allowed name's address works.
        let r = s.http(addr(WEB_A, 80), get("alias.test", "/"));
        assert!(r.contains("served-by=A host=alias.test"), "{r}");

        // CONNECT: answered by hull, then spliced to the checked name.
        let r = s.http(
            addr(WEB_F, 3128),
            b"CONNECT allowed.test:80 HTTP/1.1\r\nHost: allowed.test:80\r\n\r\nGET / HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n".to_vec(),
        );
        assert!(
            r.starts_with("HTTP/1.1 200 Connection established") && r.contains("served-by=A"),
            "{r}"
        );
        let r = s.http(
            addr(WEB_A, 3128),
            b"CONNECT forbidden.test:443 HTTP/1.1\r\n\r\n".to_vec(),
        );
        assert!(r.starts_with("HTTP/1.1 403"), "{r}");
        assert_eq!(sink.take().len(), 1);

        // IPv6: the sandbox dials an IPv6 address; decided by Host.
        let r = s.http(addr(WEB_A6, 80), get("allowed.test", "/"));
        assert!(r.contains("served-by=A host=allowed.test"), "{r}");
        let r = s.http(addr(WEB_A6, 80), get("forbidden.test", "/"));
        assert!(r.starts_with("HTTP/1.1 403"), "{r}");
        sink.take();

        // A policy change affects the next connection.
        s.registry.set(
            &[SB_IP.into(), SB_IP6.into()],
            Arc::new(rules(
                Mode::Allowlist,
                &["forbidden.test:80"],
                &["198.51.100.0/24"],
            )),
        );
        let r = s.http(addr(WEB_A, 80), get("allowed.test", "/"));
        assert!(r.starts_with("HTTP/1.1 403"), "{r}");
        let r = s.http(addr(WEB_F, 80), get("forbidden.test", "/"));
        assert!(r.contains("served-by=F"), "{r}");
        // The port is part of the rule.
        let (ok, _, _) = s.curl_https("forbidden.test", "192.0.2.20");
        assert!(!ok);
        // A CIDR rule allows raw TCP, including a server that speaks first.
        let r = sandbox_exchange(&s.net, addr(BULK, BANNER_PORT), vec![], Duration::ZERO);
        assert!(text(&r).starts_with("220 banner.test"), "{}", text(&r));
        sink.take();

        // Even a CIDR rule covering them never opens the host's own
        // addresses (nor loopback) to raw TCP.
        s.registry.set(
            &[SB_IP.into(), SB_IP6.into()],
            Arc::new(rules(Mode::Allowlist, &[], &["10.99.0.0/24", "0.0.0.0/0"])),
        );
        let r = sandbox_exchange(
            &s.net,
            addr(GW_IP, 22),
            vec![b"SSH-2.0-x\r\n".to_vec()],
            Duration::ZERO,
        );
        assert!(r.is_empty());
        let r = sandbox_exchange(
            &s.net,
            addr(std::net::Ipv4Addr::new(192, 0, 2, 1), 22),
            vec![b"x".to_vec()],
            Duration::ZERO,
        );
        assert!(r.is_empty());
        let ev = sink.take();
        assert!(
            ev.len() == 2 && ev.iter().all(|(_, d)| d.reason.contains("host's own")),
            "{ev:?}"
        );

        // Replay without an interceptor: refused, never reaches the network.
        s.registry.set(
            &[SB_IP.into(), SB_IP6.into()],
            Arc::new(rules(Mode::Replay, &[], &[])),
        );
        let before = s.servers.hits.get("A");
        let r = s.http(addr(WEB_A, 80), get("allowed.test", "/"));
        assert!(r.starts_with("HTTP/1.1 403"), "{r}");
        assert_eq!(s.servers.hits.get("A"), before);
        sink.take();

        // A source that is no sandbox: closed, nothing reached, no event.
        s.registry.remove(&[SB_IP.into(), SB_IP6.into()]);
        let r = s.http(addr(WEB_A, 80), get("allowed.test", "/"));
        assert!(r.is_empty(), "{r}");
        assert_eq!(s.servers.hits.get("A"), before);
        assert!(sink.take().is_empty());
        drop(s);
    }
    assert_net_clean("p");
}

#[test]
fn egress_proxy_caps_and_timeouts() {
    if !hull_testkit::privileged("egress_proxy_caps_and_timeouts") {
        return;
    }
    {
        let cfg = ProxyConfig {
            first_bytes_timeout: Duration::from_millis(500),
            max_connections_per_sandbox: 2,
            ..ProxyConfig::default()
        };
        let s = setup_with(
            "c",
            rules(Mode::Allowlist, &["allowed.test"], &[]),
            cfg,
            None,
        );
        let sink = s.sink.clone();
        // Two silent connections hold the sandbox's two slots...
        let held: Vec<std::net::TcpStream> = (0..2)
            .map(|_| {
                in_netns(&s.net.sandbox, || {
                    std::net::TcpStream::connect(addr(WEB_A, 80)).unwrap()
                })
            })
            .collect();
        let t0 = Instant::now();
        while s.proxy.open_connections("sb-test") < 2 {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "the proxy never took the connections"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // ...so a third is closed at once and reported.
        let r = s.http(addr(WEB_A, 80), get("allowed.test", "/"));
        assert!(r.is_empty(), "{r}");
        let ev = sink.take();
        assert!(
            ev.len() == 1 && ev[0].1.reason.contains("connections"),
            "{ev:?}"
        );
        // The silent ones time out (no CIDR rule: nothing to splice to),
        // which frees the slots.
        for mut h in held {
            use std::io::Read;
            h.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut b = Vec::new();
            let _ = h.read_to_end(&mut b);
            assert!(b.is_empty());
        }
        let ev = sink.take();
        assert!(
            ev.len() == 2 && ev.iter().all(|(_, d)| d.reason.contains("sent nothing")),
            "{ev:?}"
        );
        // (The slots are released right after the streams are closed.)
        let t0 = Instant::now();
        while s.proxy.open_connections("sb-test") > 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "slots never released"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // A request head that never completes: refused after the timeout.
        let r = sandbox_exchange(
            &s.net,
            addr(WEB_A, 80),
            vec![b"GET / HTTP/1.1\r\nHost: allo".to_vec()],
            Duration::ZERO,
        );
        assert!(text(&r).starts_with("HTTP/1.1 403"), "{}", text(&r));
        let r = s.http(addr(WEB_A, 80), get("allowed.test", "/"));
        assert!(r.contains("served-by=A"), "{r}");
        drop(s);
    }
    assert_net_clean("c");
}

/// A stand-in for the TLS interceptor (the real one is tested in
/// intercept.rs): it answers with what the proxy handed it, so the test
/// sees which connections were handed over and with what.
struct Echo;

impl Interceptor for Echo {
    fn intercept(&self, mut c: Intercepted) -> BoxFuture {
        Box::pin(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut b = vec![0u8; 4096];
            let _ = c.stream.read(&mut b).await;
            let body = format!(
                "intercepted name={} port={} proto={:?} orig={} sandbox={}\n",
                c.name, c.port, c.proto, c.orig_dst, c.rules.sandbox_id
            );
            let reply = match c.proto {
                AppProto::Http => format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                ),
                AppProto::Tls => body,
            };
            let _ = c.stream.write_all(reply.as_bytes()).await;
            let _ = c.stream.shutdown().await;
        })
    }
}

#[test]
fn egress_proxy_hands_intercepted_names_over() {
    if !hull_testkit::privileged("egress_proxy_hands_intercepted_names_over") {
        return;
    }
    {
        let mut r = rules(Mode::Allowlist, &["allowed.test", "other.test"], &[]);
        r.headers.push(hull_net::rules::HeaderRule {
            pattern: hull_net::rules::DomainPattern::parse("other.test").unwrap(),
            set: vec![("authorization".into(), "Bearer s3cret".into())],
        });
        let s = setup_with("i", r, ProxyConfig::default(), Some(Arc::new(Echo)));
        let sink = s.sink.clone();
        // Header rule: that name (only) is intercepted, HTTP and TLS.
        let out = s.http(addr(WEB_A, 80), get("other.test", "/"));
        assert!(
            out.contains("intercepted name=other.test port=80 proto=Http orig=192.0.2.10:80"),
            "{out}"
        );
        let out = text(&sandbox_exchange(
            &s.net,
            addr(WEB_F, 443),
            vec![client_hello("other.test", 0)],
            Duration::ZERO,
        ));
        assert!(
            out.contains("intercepted name=other.test port=443 proto=Tls orig=192.0.2.20:443"),
            "{out}"
        );
        let out = s.http(addr(WEB_A, 80), get("allowed.test", "/"));
        assert!(out.contains("served-by=A"), "{out}");
        // Still checked first: a denied name is not handed over.
        let out = s.http(addr(WEB_A, 80), get("forbidden.test", "/"));
        assert!(out.starts_with("HTTP/1.1 403"), "{out}");
        assert_eq!(sink.take().len(), 1);

        // Replay: every name is handed over (the sandbox dialled the
        // synthetic address hull's DNS gives out), nothing goes out.
        s.registry.set(
            &[SB_IP.into(), SB_IP6.into()],
            Arc::new(rules(Mode::Replay, &[], &[])),
        );
        let hits = s.servers.hits.get("A") + s.servers.hits.get("A-tls");
        let out = s.http(
            addr(hull_net::dns::REPLAY_V4, 80),
            get("anything.example", "/x"),
        );
        assert!(
            out.contains("intercepted name=anything.example port=80 proto=Http orig=198.18.0.1:80"),
            "{out}"
        );
        let out = s.http(
            addr(hull_net::dns::REPLAY_V4, 3128),
            b"CONNECT api.example:443 HTTP/1.1\r\n\r\n\x16\x03\x01".to_vec(),
        );
        assert!(
            out.starts_with("HTTP/1.1 200 Connection established")
                && out.contains("name=api.example port=443 proto=Tls"),
            "{out}"
        );
        assert_eq!(s.servers.hits.get("A") + s.servers.hits.get("A-tls"), hits);
        assert!(sink.take().is_empty());
        drop(s);
    }
    assert_net_clean("i");
}

/// Throughput through the proxy vs direct (forwarded by the host
/// namespace, no proxy) in the same run: the same client (a blocking
/// thread in the sandbox reading 256 KiB at a time), the same server
/// (bulk HTTP on the fake internet), the same bytes. Rounds are pairs
/// (one direct fetch, one proxied fetch, in alternating order so neither
/// path always goes first); each pair gives a ratio, and the median ratio
/// with its spread (quartiles) is printed, next to the median of each
/// path, and the CPU time all three spent per GiB (steadier than MB/s
/// when other work shares the machine). Rounds move 1 GiB, so each lasts
/// long enough (0.5-2 s) for TCP's start-up and short disturbances to
/// weigh little. A benchmark,
/// never an assertion: `HULL_TEST_PRIVILEGED=1 cargo nextest run -p
/// hull-net --test proxy --run-ignored only --no-capture
/// proxy_throughput_bench` (`HULL_BENCH_ROUNDS`, default 11;
/// `HULL_BENCH_MIB`, default 1024; `HULL_BENCH_SANDBOX_CC`, see below).
#[test]
#[ignore = "benchmark"]
fn proxy_throughput_bench() {
    if !hull_testkit::privileged("proxy_throughput_bench") {
        return;
    }
    let env = |k: &str, d: u64| -> u64 {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let mib = env("HULL_BENCH_MIB", 1024);
    let rounds = env("HULL_BENCH_ROUNDS", 11).max(1) as usize;
    // HULL_BENCH_SANDBOX_CC=system: the proxy's sandbox side keeps the
    // machine's congestion control (what the proxy did before it set its
    // own); any other value names the algorithm.
    let mut cfg = ProxyConfig::default();
    if let Ok(cc) = std::env::var("HULL_BENCH_SANDBOX_CC") {
        cfg.sandbox_congestion_control = (cc != "system").then_some(cc);
    }
    println!(
        "proxy's sandbox-side congestion control: {}",
        cfg.sandbox_congestion_control
            .as_deref()
            .unwrap_or("system default")
    );
    {
        let s = setup_with("b", rules(Mode::Allowlist, &["bulk.test"], &[]), cfg, None);
        let n = mib << 20;
        // CPU time of this process (client, server and proxy: all three
        // run in it) per fetch: less sensitive to other load than MB/s.
        let cpu = || {
            use nix::sys::resource::{UsageWho, getrusage};
            let u = getrusage(UsageWho::RUSAGE_SELF).unwrap();
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        };
        let gib = n as f64 / (1u64 << 30) as f64;
        // (MB/s, CPU seconds per GiB) of one fetch.
        let fetch = |port: u16| -> (f64, f64) {
            let net_ns = s.net.sandbox.clone();
            let c0 = cpu();
            let mbs = in_netns(&net_ns, move || {
                use std::io::{Read, Write};
                let start = Instant::now();
                let mut c = std::net::TcpStream::connect(addr(BULK, port)).unwrap();
                c.write_all(&get("bulk.test", &format!("/bulk/{n}")))
                    .unwrap();
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                loop {
                    let k = c.read(&mut buf).unwrap();
                    if k == 0 {
                        break;
                    }
                    total += k as u64;
                }
                assert!(total >= n, "short read: {total}");
                total as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
            });
            (mbs, (cpu() - c0) / gib)
        };
        // Warm up both paths, then pairs in alternating order.
        fetch(DIRECT_PORT);
        fetch(BULK_PORT);
        let mut direct = Vec::new();
        let mut proxied = Vec::new();
        let mut ratios = Vec::new();
        let (mut cpu_direct, mut cpu_proxied) = (Vec::new(), Vec::new());
        for i in 0..rounds {
            let (d, p) = if i % 2 == 0 {
                let d = fetch(DIRECT_PORT);
                (d, fetch(BULK_PORT))
            } else {
                let p = fetch(BULK_PORT);
                (fetch(DIRECT_PORT), p)
            };
            direct.push(d.0);
            proxied.push(p.0);
            ratios.push(p.0 / d.0 * 100.0);
            cpu_direct.push(d.1);
            cpu_proxied.push(p.1);
        }
        println!(
            "direct MiB/s:  {direct:.0?}\nproxied MiB/s: {proxied:.0?}\nratio %:        {ratios:.0?}"
        );
        let quartiles = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
            (at(0.25), at(0.5), at(0.75))
        };
        let (_, d, _) = quartiles(&mut direct);
        let (_, p, _) = quartiles(&mut proxied);
        let (r25, r, r75) = quartiles(&mut ratios);
        let (_, cd, _) = quartiles(&mut cpu_direct);
        let (_, cp, _) = quartiles(&mut cpu_proxied);
        println!(
            "proxy throughput ({mib} MiB over HTTP, {rounds} pairs): direct {d:.0} MiB/s, through the proxy {p:.0} MiB/s (medians); ratio per pair: median {r:.0} %, quartiles {r25:.0}-{r75:.0} %"
        );
        println!(
            "CPU time of client + server + proxy per GiB (medians): direct {cd:.2} s, through the proxy {cp:.2} s"
        );
        assert!(s.sink.take().is_empty());
        let _ = &s.rt;
    }
    assert_net_clean("b");
}
