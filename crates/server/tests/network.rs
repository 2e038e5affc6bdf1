//! Network policies end to end, through the HTTP API of a real runtime and
//! processes inside real sandboxes, against a fake internet the test builds
//! (198.51.100.0/24, 2001:db8::/32 in a namespace of its own): `none`
//! reaches nothing; `open` reaches the fake internet on v4 and v6 but never
//! the host, metadata or another sandbox; CIDR/port allowlists allow
//! exactly that; a peer rule allows the named sandbox only; changes apply
//! to new connections; hostile input is refused; a restart re-applies
//! policies; nothing is left behind.

mod common;

use axum::body::Body;
use axum::http::StatusCode;
use common::{App, Fixture, call, call_with, error_kind, privileged};
use hull_api::{ExecRequest, HostInfo, Sandbox, SandboxNetwork};
use hull_testkit::fakenet::{FakeInternet, net_leftovers};

const PROBE: &str = r#"
import socket, sys
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
try:
    if kind == "tcp":
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(1.5)
        s.connect((host, port))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            d = s.recv(4096)
            if not d:
                break
            data += d
        print("OK", data.decode(errors="replace").strip().splitlines()[-1])
    elif kind == "udp":
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(1.0)
        s.sendto(b"ping", (host, port))
        d, _ = s.recvfrom(64)
        print("OK", d.decode())
    elif kind == "dns":
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(1.0)
        q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
        s.sendto(q, (host, port))
        s.recvfrom(512)
        print("OK dns")
    elif kind == "resolve":
        socket.setdefaulttimeout(2)
        print("OK", socket.getaddrinfo(host, port)[0][4][0])
except Exception as e:
    print("ERR", type(e).__name__, e)
"#;

async fn probe(f: &Fixture, id: &str, kind: &str, host: &str, port: u16) -> String {
    let r =
        f.rt.exec(
            id,
            ExecRequest {
                cmd: vec![
                    "/usr/bin/python3".into(),
                    "-c".into(),
                    PROBE.into(),
                    kind.into(),
                    host.into(),
                    port.to_string(),
                ],
                timeout_seconds: Some(10.0),
                ..Default::default()
            },
        )
        .await
        .expect("exec");
    format!("{}{}", r.stdout.trim(), r.stderr.trim())
}

/// Reached the real server (a refusal by hull's proxy can still accept
/// the TCP connection and answer 403: that is not reaching it).
async fn ok(f: &Fixture, id: &str, kind: &str, host: &str, port: u16) -> bool {
    let out = probe(f, id, kind, host, port).await;
    ["OK fake-internet", "OK peer-web", "OK ping", "OK dns"]
        .iter()
        .any(|p| out.starts_with(p))
}

/// `PUT /v1/sandboxes/{id}/network` with `body`.
async fn put_net(app: &axum::Router, id: &str, body: &str) -> (StatusCode, Vec<u8>) {
    call(
        app,
        "PUT",
        &format!("/v1/sandboxes/{id}/network"),
        body.to_string(),
    )
    .await
}

async fn create(app: &axum::Router, body: &str) -> Sandbox {
    let (s, b) = call(app, "POST", "/v1/sandboxes", body.to_string()).await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "{body}: {}",
        String::from_utf8_lossy(&b)
    );
    serde_json::from_slice(&b).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_end_to_end() {
    if !privileged("policies_end_to_end") {
        return;
    }
    let fake = FakeInternet::start();
    let mut f = Fixture::new().await;
    let app = f.app(1 << 20);
    let (_, b) = call(&app, "GET", "/v1/info", Body::empty()).await;
    let info: HostInfo = serde_json::from_slice(&b).unwrap();
    assert!(info.network.starts_with("available"), "{}", info.network);
    let instance = info.instance_id.clone();

    // Defaults: session -> open, rollout -> none.
    let open = create(&app, r#"{"template":"host","name":"web"}"#).await;
    assert_eq!(open.network.to_string(), "open");
    let rollout = create(&app, r#"{"template":"host","profile":"rollout"}"#).await;
    assert_eq!(rollout.network.to_string(), "none");

    // none: nothing at all (TCP, UDP, DNS, v6, the host).
    for (kind, host, port) in [
        ("tcp", FakeInternet::WEB4, 80),
        ("tcp", FakeInternet::WEB6, 80),
        ("udp", FakeInternet::WEB4, 5353),
        ("dns", FakeInternet::WEB4, 53),
        ("tcp", "203.0.113.1", 22),
    ] {
        assert!(
            !ok(&f, &rollout.id, kind, host, port).await,
            "none reached {kind} {host}:{port}"
        );
    }
    let r = f
        .sh(
            &rollout.id,
            "ping -c1 -W1 198.51.100.10 >/dev/null 2>&1; echo $?",
        )
        .await;
    assert_ne!(r.stdout.trim(), "0", "none: ICMP answered");

    // A networked sandbox's /sys: its own namespace's interfaces, read-only
    // (the host made the sysfs mount for it).
    let r = f
        .sh(
            &open.id,
            "echo $(ls /sys/class/net); ls /sys/devices/system/cpu | grep -c '^cpu[0-9]'; touch /sys/x 2>&1 | grep -c 'Read-only'; ls -A /sys/firmware | wc -l",
        )
        .await;
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.first().copied(), Some("eth0 lo"), "{r:?}");
    assert!(lines[1].parse::<u32>().unwrap() >= 1, "{r:?}");
    assert_eq!(lines[2], "1", "{r:?}");
    assert_eq!(lines[3], "0", "/sys/firmware is masked: {r:?}");

    // open: the fake internet, v4 and v6, TCP and UDP...
    let out = probe(&f, &open.id, "tcp", FakeInternet::WEB4, 80).await;
    assert_eq!(out, "OK fake-internet 198.51.100.10");
    let out = probe(&f, &open.id, "tcp", FakeInternet::WEB6, 80).await;
    assert_eq!(out, "OK fake-internet 2001:db8::10");
    assert!(ok(&f, &open.id, "udp", FakeInternet::OTHER6, 5353).await);
    // ...but never the host (its link and gateway addresses, a service on
    // the host bound to every address), metadata, or another sandbox.
    let host_srv = std::net::TcpListener::bind("[::]:0").unwrap();
    let hport = host_srv.local_addr().unwrap().port();
    let (_, b) = call(
        &app,
        "GET",
        &format!("/v1/sandboxes/{}/network", open.id),
        Body::empty(),
    )
    .await;
    let net: SandboxNetwork = serde_json::from_slice(&b).unwrap();
    assert_eq!(net.addresses.len(), 2, "{net:?}");
    let sb4: std::net::Ipv4Addr = net.addresses[0].parse().unwrap();
    let gw4 = std::net::Ipv4Addr::from(u32::from(sb4) - 1).to_string();
    for host in [gw4.as_str(), "203.0.113.1", "fd99:1::1", "169.254.169.254"] {
        let out = probe(&f, &open.id, "tcp", host, hport).await;
        assert!(
            out.starts_with("ERR"),
            "open reached the host at {host}: {out}"
        );
        assert!(
            !ok(&f, &open.id, "tcp", host, 80).await,
            "open reached the host at {host}:80"
        );
    }
    drop(host_srv);

    // A second sandbox with a CIDR/port allowlist.
    let cidr = create(
        &app,
        r#"{"template":"host","network":{"mode":"allowlist","allow":[{"cidr":"198.51.100.10/32","ports":["80"]},{"cidr":"2001:db8::20"}]}}"#,
    )
    .await;
    assert!(ok(&f, &cidr.id, "tcp", FakeInternet::WEB4, 80).await);
    assert!(
        !ok(&f, &cidr.id, "tcp", FakeInternet::WEB4, 8080).await,
        "port not listed"
    );
    assert!(
        !ok(&f, &cidr.id, "tcp", FakeInternet::OTHER4, 80).await,
        "ip not listed"
    );
    assert!(
        ok(&f, &cidr.id, "tcp", FakeInternet::OTHER6, 8080).await,
        "v6 cidr, any port"
    );
    assert!(
        !ok(&f, &cidr.id, "tcp", FakeInternet::WEB6, 80).await,
        "v6 not listed"
    );
    assert!(
        !ok(&f, &cidr.id, "udp", FakeInternet::OTHER4, 5353).await,
        "udp to an address not listed"
    );
    // A denied TCP connection is an event naming its destination; so is
    // UDP the firewall drops (reported from its log, asynchronously: a
    // bounded wait).
    let mut sbx: Sandbox;
    let mut tries = 0;
    loop {
        let (_, b) = call(
            &app,
            "GET",
            &format!("/v1/sandboxes/{}", cidr.id),
            Body::empty(),
        )
        .await;
        sbx = serde_json::from_slice(&b).unwrap();
        let udp = sbx.events.iter().any(|e| {
            e.kind == "network_denied" && e.message.starts_with("udp 198.51.100.20:5353: ")
        });
        tries += 1;
        if udp || tries == 50 {
            assert!(udp, "no udp denial event: {:#?}", sbx.events);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        sbx.events
            .iter()
            .any(|e| e.kind == "network_denied" && e.message.contains("198.51.100.20:80")),
        "{:#?}",
        sbx.events
    );

    // Sandboxes can't reach each other, unless a peer rule names one.
    let srv = f
        .sh(
            &open.id,
            "nohup python3 -c 'import socket\ns=socket.socket(socket.AF_INET6)\ns.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\ns.bind((\"::\",80))\ns.listen()\nwhile True:\n  c,_=s.accept(); c.recv(100); c.sendall(b\"HTTP/1.0 200 OK\\r\\n\\r\\npeer-web\\n\"); c.close()' >/dev/null 2>&1 &
             sleep 0.5; echo started",
        )
        .await;
    assert_eq!(srv.stdout.trim(), "started", "{srv:?}");
    let web4 = net.addresses[0].clone();
    assert!(
        !ok(&f, &cidr.id, "tcp", &web4, 80).await,
        "reached another sandbox"
    );
    let (s, b) = put_net(&app, &cidr.id, r#""allow:198.51.100.10/32:80,sandbox:web""#).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(probe(&f, &cidr.id, "tcp", &web4, 80).await, "OK peer-web");
    // The peer rule is one-way: web still can't reach the other.
    let (_, b) = call(
        &app,
        "GET",
        &format!("/v1/sandboxes/{}/network", cidr.id),
        Body::empty(),
    )
    .await;
    let cnet: SandboxNetwork = serde_json::from_slice(&b).unwrap();
    assert!(!ok(&f, &open.id, "tcp", &cnet.addresses[0], 80).await);

    // A change applies to new connections: open -> none -> open.
    let (s, _) = put_net(&app, &open.id, r#""none""#).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        !ok(&f, &open.id, "tcp", FakeInternet::WEB4, 80).await,
        "none after change"
    );
    let (s, _) = put_net(&app, &open.id, r#"{"mode":"open"}"#).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        ok(&f, &open.id, "tcp", FakeInternet::WEB4, 80).await,
        "open again"
    );

    // Secrets are never returned.
    let (s, b) = put_net(&app, &open.id, r#"{"mode":"open","headers":[{"domain":"api.example.com","set":{"Authorization":"Bearer s3cret"}}]}"#).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert!(!String::from_utf8_lossy(&b).contains("s3cret"));
    let (_, b) = call(
        &app,
        "GET",
        &format!("/v1/sandboxes/{}", open.id),
        Body::empty(),
    )
    .await;
    assert!(!String::from_utf8_lossy(&b).contains("s3cret"));

    // Hostile input.
    let url = format!("/v1/sandboxes/{}/network", open.id);
    for (body, status) in [
        (r#""sideways""#, StatusCode::BAD_REQUEST),
        (r#""allow:10.0.0.1/8""#, StatusCode::BAD_REQUEST),
        (r#"{"mode":"open","extra":1}"#, StatusCode::BAD_REQUEST),
        (r#""allow:sandbox:nosuch""#, StatusCode::BAD_REQUEST),
        (r#"[1,2]"#, StatusCode::BAD_REQUEST),
    ] {
        let (s, b) = call(&app, "PUT", &url, body.to_string()).await;
        assert_eq!(s, status, "{body}: {}", String::from_utf8_lossy(&b));
    }
    let huge = format!("\"allow:{}\"", "a.example.com,".repeat(200_000));
    let (s, _) = call(&app, "PUT", &url, huge).await;
    assert!(
        s == StatusCode::PAYLOAD_TOO_LARGE || s == StatusCode::BAD_REQUEST,
        "{s}"
    );
    let (s, b) = call(&app, "GET", "/v1/sandboxes/nosuch/network", Body::empty()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(error_kind(&b), "not_found");
    let (s, _) = call(&app, "PUT", "/v1/sandboxes/nosuch/network", r#""none""#).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A sandbox created with none is widened in place: its namespace gets
    // an interface, under the new policy at once.
    let (s, b) = put_net(&app, &rollout.id, r#""allow:198.51.100.10/32:80""#).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let n: SandboxNetwork = serde_json::from_slice(&b).unwrap();
    assert_eq!(n.addresses.len(), 2, "{n:?}");
    assert!(
        ok(&f, &rollout.id, "tcp", FakeInternet::WEB4, 80).await,
        "widened none reaches its allowed address"
    );
    assert!(
        !ok(&f, &rollout.id, "tcp", FakeInternet::OTHER4, 80).await,
        "widened none reaches only what it allows"
    );
    let (s, _) = call(
        &app,
        "POST",
        "/v1/sandboxes",
        r#"{"template":"host","network":"allow:"}"#.to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Restart (sandboxes keep running): policies re-applied.
    f.restart().await;
    let app = f.app(1 << 20);
    assert!(
        ok(&f, &open.id, "tcp", FakeInternet::WEB4, 80).await,
        "open after restart"
    );
    assert!(
        !ok(&f, &cidr.id, "tcp", FakeInternet::OTHER4, 80).await,
        "allowlist after restart"
    );
    assert!(
        ok(&f, &cidr.id, "tcp", FakeInternet::WEB4, 80).await,
        "allowlist after restart"
    );
    assert!(
        ok(&f, &rollout.id, "tcp", FakeInternet::WEB4, 80).await,
        "widened none after restart"
    );
    // ... and narrowed again: nothing.
    let (s, _) = put_net(&app, &rollout.id, r#""none""#).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        !ok(&f, &rollout.id, "tcp", FakeInternet::WEB4, 80).await,
        "narrowed back to none"
    );
    let (_, b) = call(
        &app,
        "GET",
        &format!("/v1/sandboxes/{}/network", cidr.id),
        Body::empty(),
    )
    .await;
    let n: SandboxNetwork = serde_json::from_slice(&b).unwrap();
    assert_eq!(n.summary, "allow:198.51.100.10/32:80,sandbox:web");

    // Teardown leaves nothing.
    for id in [&open.id, &cidr.id, &rollout.id] {
        let (s, _) = call(
            &app,
            "DELETE",
            &format!("/v1/sandboxes/{id}"),
            Body::empty(),
        )
        .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
    }
    f.finish().await;
    drop(fake);
    assert!(net_leftovers(&instance).is_empty());
}

const FETCH: &str = r#"
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=10)
    print("STATUS", r.status, r.headers.get("x-hull-replay"))
except urllib.error.HTTPError as e:
    print("STATUS", e.code, e.headers.get("x-hull-replay"))
except Exception as e:
    print("ERR", type(e).__name__, e)
"#;

/// The TLS interceptor wired into the daemon, without a fake internet:
/// a `replay` policy with nothing to replay is refused; a `record`
/// sandbox gets its CA (not the key) and the CA environment; its snapshot
/// carries a cassette; a `replay` sandbox made from it verifies hull's
/// certificate over HTTPS (the CA install works) and gets the recorded
/// miss (502 + event) for a request never recorded; removal deletes the
/// CA, the recording and the snapshot's cassette.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interception_is_wired_into_the_daemon() {
    if !privileged("interception_is_wired_into_the_daemon") {
        return;
    }
    let f = Fixture::new().await;
    let app = f.app(1 << 20);
    let state = f.dir.path().to_path_buf();
    let (_, b) = call(&app, "GET", "/v1/info", Body::empty()).await;
    let info: HostInfo = serde_json::from_slice(&b).unwrap();
    let instance = info.instance_id.clone();

    // replay with nothing to replay: 400.
    let (s, b) = call(
        &app,
        "POST",
        "/v1/sandboxes",
        r#"{"template":"host","network":"replay"}"#.to_string(),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&b)
    );
    assert_eq!(error_kind(&b), "invalid_argument");

    let rec = create(&app, r#"{"template":"host","network":"record"}"#).await;
    let ca_file = state.join("net/ca").join(&rec.id).join("ca.pem");
    let ca = std::fs::read_to_string(&ca_file).expect("the sandbox CA on the host");
    let r = f.sh(&rec.id, "cat /etc/hull/ca.pem").await;
    assert_eq!(r.stdout, ca, "{}", r.stderr);
    let r = f
        .sh(
            &rec.id,
            "echo $SSL_CERT_FILE $REQUESTS_CA_BUNDLE $NODE_EXTRA_CA_CERTS; grep -c 'BEGIN CERTIFICATE' /etc/hull/ca-bundle.pem; grep -rl 'PRIVATE KEY' /etc/hull /etc/ssl/certs/ca-certificates.crt; true",
        )
        .await;
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "/etc/hull/ca-bundle.pem /etc/hull/ca-bundle.pem /etc/hull/ca.pem"
    );
    assert!(lines[1].parse::<u32>().unwrap() >= 1, "{}", r.stdout);
    assert_eq!(lines.len(), 2, "a private key in the sandbox: {}", r.stdout);

    // Snapshot: the cassette goes with it.
    let (s, b) = call(
        &app,
        "POST",
        &format!("/v1/sandboxes/{}/snapshot", rec.id),
        "{}".to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let snap: hull_api::Snapshot = serde_json::from_slice(&b).unwrap();
    let tape = state.join(format!("net/cassettes/snap-{}.hcas", snap.id));
    assert!(tape.is_file(), "no cassette at {}", tape.display());

    // A replay sandbox from it: HTTPS verified with hull's CA, a miss.
    let rep = create(
        &app,
        &format!(r#"{{"from":"{}","network":"replay"}}"#, snap.id),
    )
    .await;
    for url in [
        "https://never-recorded.test/x",
        "http://never-recorded.test/y",
    ] {
        let r =
            f.rt.exec(
                &rep.id,
                ExecRequest {
                    cmd: vec![
                        "/usr/bin/python3".into(),
                        "-c".into(),
                        FETCH.into(),
                        url.into(),
                    ],
                    timeout_seconds: Some(20.0),
                    ..Default::default()
                },
            )
            .await
            .expect("exec");
        assert_eq!(r.stdout.trim(), "STATUS 502 miss", "{url}: {}", r.stderr);
    }
    let (_, b) = call(
        &app,
        "GET",
        &format!("/v1/sandboxes/{}", rep.id),
        Body::empty(),
    )
    .await;
    let sb: Sandbox = serde_json::from_slice(&b).unwrap();
    assert!(
        sb.events.iter().any(|e| e.message.contains("replay miss")),
        "{:?}",
        sb.events
    );

    // Export and import: the cassette travels with the snapshot, and a
    // replay from the imported copy uses it.
    let (s, archive) = call(
        &app,
        "GET",
        &format!("/v1/snapshots/{}/export", snap.id),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = call_with(
        &app,
        "POST",
        "/v1/snapshots/import?name=travelled",
        &[("content-type", "application/zstd")],
        archive,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let copy: hull_api::Snapshot = serde_json::from_slice(&b).unwrap();
    let copy_tape = state.join(format!("net/cassettes/snap-{}.hcas", copy.id));
    assert_eq!(
        std::fs::read(&copy_tape).expect("the imported snapshot's cassette"),
        std::fs::read(&tape).unwrap()
    );
    let rep2 = create(&app, r#"{"from":"travelled","network":"replay"}"#).await;
    let (s, b) = call(
        &app,
        "DELETE",
        &format!("/v1/sandboxes/{}", rep2.id),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{}", String::from_utf8_lossy(&b));
    let (s, _) = call(&app, "DELETE", "/v1/snapshots/travelled", Body::empty()).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(!copy_tape.exists());

    // Removal: CA, recording and the snapshot's cassette go.
    for id in [&rep.id, &rec.id] {
        let (s, _) = call(
            &app,
            "DELETE",
            &format!("/v1/sandboxes/{id}"),
            Body::empty(),
        )
        .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
    }
    assert!(!ca_file.exists() && !state.join("net/ca").join(&rec.id).exists());
    assert!(
        !state
            .join(format!("net/cassettes/{}.hcas", rec.id))
            .exists()
    );
    let (s, _) = call(
        &app,
        "DELETE",
        &format!("/v1/snapshots/{}", snap.id),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(!tape.exists());
    f.finish().await;
    assert!(net_leftovers(&instance).is_empty());
}
