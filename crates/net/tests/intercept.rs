//! TLS interception and secret injection, on loopback without privileges:
//! a fake HTTPS upstream with a test CA, the interceptor fed with accepted
//! streams, a client trusting the sandbox CA.

mod mitm;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use hull_net::ca::SandboxCa;
use hull_net::intercept::InterceptConfig;
use hull_net::rules::Mode;
use mitm::*;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::{ServerName, UnixTime};

fn opts(tls: bool, extra_ca: Option<std::path::PathBuf>) -> MitmOpts {
    MitmOpts {
        tls,
        extra_ca,
        cfg: InterceptConfig::default(),
        port: None,
    }
}

/// A log writer the test can read back.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_reaches_upstream_and_never_the_client() {
    let logs = LogBuf::default();
    let l2 = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || l2.clone())
        .init();
    let tmp = tempfile::tempdir().unwrap();
    let pki = test_pki(&[NAME]);
    let up = upstream(Some(&pki)).await;
    let m = mitm(
        tmp.path(),
        up.addr,
        rules(Mode::Allowlist, None),
        opts(true, Some(write_ca(tmp.path(), &pki))),
    )
    .await;
    let mut c = client(&m, Some(NAME)).await.unwrap();
    // The sandbox's own Authorization is overwritten.
    let got = request(
        &mut c,
        m.name_port,
        "POST",
        "/echo?x=1",
        &[("authorization", "Bearer mine")],
        b"hello".to_vec(),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, b"hello");
    assert_eq!(got.header("x-upstream"), Some("yes"));
    {
        let seen = up.seen.requests.lock().unwrap();
        let (path, headers, body) = &seen[0];
        assert_eq!(path, "/echo?x=1");
        assert_eq!(body, b"hello");
        let auth: Vec<_> = headers
            .iter()
            .filter(|(n, _)| n == "authorization")
            .collect();
        assert_eq!(auth.len(), 1, "exactly one Authorization upstream");
        assert_eq!(auth[0].1, SECRET);
    }
    // An upstream that echoes the header back in a response header: dropped.
    let got = request(&mut c, m.name_port, "GET", "/echo-header", &[], vec![]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-echo-auth"), None);
    assert_eq!(got.header("x-plain"), Some("fine"));
    for (n, v) in &got.headers {
        assert!(!v.contains("s3cret"), "{n} leaks the secret");
    }
    drop(c);
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        text.contains("echoing an injected secret"),
        "the drop is logged: {text}"
    );
    assert!(!text.contains("s3cret"), "the secret is logged: {text}");
}

fn verifier_for(ca_pem: &str) -> Arc<rustls::client::WebPkiServerVerifier> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap()
}

#[tokio::test]
async fn leaf_is_for_the_name_only_and_signed_by_the_sandbox_ca() {
    let ca = SandboxCa::generate("sb-x").unwrap();
    let leaf = ca.leaf_cert("api.test").unwrap();
    let verifier = verifier_for(ca.cert_pem());
    let now = UnixTime::now();
    let check = |name: &str| {
        verifier.verify_server_cert(
            &leaf,
            &[],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            now,
        )
    };
    assert!(check("api.test").is_ok());
    for other in ["other.test", "x.api.test", "test"] {
        let e = check(other).unwrap_err().to_string();
        assert!(
            e.contains("not valid for name") || e.contains("NotValidForName"),
            "{other}: {e}"
        );
    }
    // Another sandbox's CA does not vouch for it.
    let other = SandboxCa::generate("sb-y").unwrap();
    let v2 = verifier_for(other.cert_pem());
    assert!(
        v2.verify_server_cert(
            &leaf,
            &[],
            &ServerName::try_from("api.test").unwrap(),
            &[],
            now
        )
        .is_err()
    );
    // Through the interceptor: the presented chain verifies for NAME.
    let tmp = tempfile::tempdir().unwrap();
    let pki = test_pki(&[NAME]);
    let up = upstream(Some(&pki)).await;
    let m = mitm(
        tmp.path(),
        up.addr,
        rules(Mode::Allowlist, None),
        opts(true, Some(write_ca(tmp.path(), &pki))),
    )
    .await;
    assert!(m.ca_pem.contains("BEGIN CERTIFICATE"));
    let mut c = client(&m, Some(NAME)).await.unwrap();
    assert_eq!(
        request(&mut c, m.name_port, "GET", "/", &[], vec![])
            .await
            .status,
        200
    );
    // A client that trusts only the fake internet's CA (not the sandbox
    // CA) refuses the interceptor.
    let tcp = tokio::net::TcpStream::connect(m.addr).await.unwrap();
    let r = tokio_rustls::TlsConnector::from(client_config(&pki.ca_pem))
        .connect(ServerName::try_from(NAME).unwrap(), tcp)
        .await;
    assert!(r.is_err());
}

#[tokio::test]
async fn untrusted_upstream_certificate_is_502() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = test_pki(&[NAME]);
    let stranger = test_pki(&["unrelated.test"]);
    let up = upstream(Some(&pki)).await;
    // The roots hold another CA: the upstream's chain does not verify.
    let m = mitm(
        tmp.path(),
        up.addr,
        rules(Mode::Allowlist, None),
        opts(true, Some(write_ca(tmp.path(), &stranger))),
    )
    .await;
    let mut c = client(&m, Some(NAME)).await.unwrap();
    let got = request(&mut c, m.name_port, "GET", "/", &[], vec![]).await;
    assert_eq!(got.status, 502);
    let body = String::from_utf8_lossy(&got.body);
    assert!(
        body.contains("TLS") && body.contains("certificate"),
        "{body}"
    );
    assert!(up.seen.requests.lock().unwrap().is_empty());
    assert!(!body.contains("s3cret"));
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = test_pki(&[NAME]);
    let addr = {
        let up = upstream(Some(&pki)).await;
        up.addr
    };
    // Make sure nothing listens there any more.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let m = mitm(
        tmp.path(),
        addr,
        rules(Mode::Allowlist, None),
        opts(true, Some(write_ca(tmp.path(), &pki))),
    )
    .await;
    let mut c = client(&m, Some(NAME)).await.unwrap();
    let got = request(&mut c, m.name_port, "GET", "/", &[], vec![]).await;
    assert_eq!(got.status, 502);
    assert!(String::from_utf8_lossy(&got.body).contains("connect"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_response_streams_through() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = test_pki(&[NAME]);
    let up = upstream(Some(&pki)).await;
    let m = mitm(
        tmp.path(),
        up.addr,
        rules(Mode::Allowlist, None),
        opts(true, Some(write_ca(tmp.path(), &pki))),
    )
    .await;
    let mut c = client(&m, Some(NAME)).await.unwrap();
    c.ready().await.unwrap();
    let req = hyper::Request::builder()
        .uri("/gated")
        .header("host", format!("{NAME}:{}", m.name_port))
        .body(full(Vec::new()))
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    let mut body = resp.into_body();
    let mut got = 0usize;
    let mut released = false;
    // The first half arrives before the upstream sends the second: the
    // interceptor does not wait for the whole body. (The timeout only
    // turns a hang into a failure.)
    let all = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(f) = body.frame().await {
            if let Some(d) = f.unwrap().data_ref() {
                got += d.len();
            }
            if !released && got >= 4 << 20 {
                released = true;
                up.seen.gate.notify_one();
            }
        }
    })
    .await;
    assert!(all.is_ok(), "the body hung at {got} bytes: buffered whole?");
    assert!(released);
    assert_eq!(got, 8 << 20);
}

#[tokio::test]
async fn plain_http_takes_the_same_path() {
    let tmp = tempfile::tempdir().unwrap();
    let up = upstream(None).await;
    // The roots are never used on the plain path; some are required.
    let pki = test_pki(&[NAME]);
    let m = mitm(
        tmp.path(),
        up.addr,
        rules(Mode::Allowlist, None),
        opts(false, Some(write_ca(tmp.path(), &pki))),
    )
    .await;
    let mut c = client(&m, None).await.unwrap();
    let got = request(&mut c, m.name_port, "PUT", "/plain", &[], b"abc".to_vec()).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, b"abc");
    // Both Set-Cookie headers pass.
    assert_eq!(
        got.headers
            .iter()
            .filter(|(n, _)| n == "set-cookie")
            .count(),
        2
    );
    let seen = up.seen.requests.lock().unwrap();
    assert!(
        seen[0]
            .1
            .iter()
            .any(|(n, v)| n == "authorization" && v == SECRET)
    );
}

#[tokio::test]
async fn another_host_on_the_connection_is_421() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = test_pki(&[NAME]);
    let up = upstream(Some(&pki)).await;
    let m = mitm(
        tmp.path(),
        up.addr,
        rules(Mode::Allowlist, None),
        opts(true, Some(write_ca(tmp.path(), &pki))),
    )
    .await;
    let mut c = client(&m, Some(NAME)).await.unwrap();
    c.ready().await.unwrap();
    let req = hyper::Request::builder()
        .uri("/")
        .header("host", "evil.test")
        .body(full(Vec::new()))
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 421);
    // A Host that is not text never matches either.
    c.ready().await.unwrap();
    let req = hyper::Request::builder()
        .uri("/")
        .header(
            "host",
            hyper::header::HeaderValue::from_bytes(b"api.test\xff").unwrap(),
        )
        .body(full(Vec::new()))
        .unwrap();
    assert_eq!(c.send_request(req).await.unwrap().status(), 421);
    // The right name (any case, trailing dot) passes.
    let got = request(&mut c, m.name_port, "GET", "/", &[], vec![]).await;
    assert_eq!(got.status, 200);
    assert_eq!(up.seen.requests.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn client_that_does_not_trust_the_ca_gets_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = test_pki(&[NAME]);
    let up = upstream(Some(&pki)).await;
    let mut m = mitm(
        tmp.path(),
        up.addr,
        rules(Mode::Allowlist, None),
        opts(true, Some(write_ca(tmp.path(), &pki))),
    )
    .await;
    m.ca_pem = SandboxCa::generate("someone-else")
        .unwrap()
        .cert_pem()
        .to_string();
    let e = client(&m, Some(NAME))
        .await
        .expect_err("handshake must fail");
    assert!(e.contains("certificate"), "{e}");
    assert!(up.seen.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn websocket_upgrade_is_spliced() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tmp = tempfile::tempdir().unwrap();
    // A raw upstream that answers 101 and then echoes bytes.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        assert!(head.contains("upgrade: websocket"), "{head}");
        assert!(head.contains("authorization: bearer s3cret"), "{head}");
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(&buf).await.unwrap();
    });
    let pki = test_pki(&[NAME]);
    let m = mitm(
        tmp.path(),
        addr,
        rules(Mode::Allowlist, None),
        opts(false, Some(write_ca(tmp.path(), &pki))),
    )
    .await;
    let mut c = client(&m, None).await.unwrap();
    c.ready().await.unwrap();
    let req = hyper::Request::builder()
        .uri("/ws")
        .header("host", format!("{NAME}:{}", m.name_port))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .body(full(Vec::new()))
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    let up = hyper::upgrade::on(resp).await.unwrap();
    let mut io = hyper_util::rt::TokioIo::new(up);
    io.write_all(b"ping!").await.unwrap();
    let mut buf = [0u8; 5];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping!");
    server.await.unwrap();
}

#[test]
fn python_honours_ssl_cert_file_with_the_sandbox_ca() {
    // urllib (SSL_CERT_FILE) and requests (REQUESTS_CA_BUNDLE) trust the
    // sandbox CA when pointed at its PEM, as the runtime sets them.
    let Ok(out) = std::process::Command::new("python3")
        .arg("-c")
        .arg("import ssl")
        .output()
    else {
        eprintln!("python3 not found: skipped");
        return;
    };
    assert!(out.status.success());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let pki = test_pki(&[NAME]);
    let (m, up, ca_file) = rt.block_on(async {
        let up = upstream(Some(&pki)).await;
        let m = mitm(
            tmp.path(),
            up.addr,
            rules(Mode::Allowlist, None),
            opts(true, Some(write_ca(tmp.path(), &pki))),
        )
        .await;
        let ca_file = tmp.path().join("sandbox-ca.pem");
        std::fs::write(&ca_file, &m.ca_pem).unwrap();
        (m, up, ca_file)
    });
    let script = format!(
        r#"
import socket, sys, urllib.request
real = socket.getaddrinfo
def fake(host, port, *a, **k):
    if host == "{NAME}":
        return real("127.0.0.1", {mitm_port}, *a, **k)
    return real(host, port, *a, **k)
socket.getaddrinfo = fake
url = "https://{NAME}:{port}/py"
body = urllib.request.urlopen(urllib.request.Request(url, data=b"from-urllib")).read()
assert body == b"from-urllib", body
try:
    import requests
except ImportError:
    print("no requests"); sys.exit(0)
r = requests.post(url, data=b"from-requests")
assert r.content == b"from-requests", r.content
print("ok")
"#,
        mitm_port = m.addr.port(),
        port = m.name_port,
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .env("SSL_CERT_FILE", &ca_file)
        .env("REQUESTS_CA_BUNDLE", &ca_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = up.seen.requests.lock().unwrap();
    assert!(
        seen.iter()
            .all(|(_, h, _)| h.iter().any(|(n, v)| n == "authorization" && v == SECRET))
    );
    drop(seen);
    drop(m);
    drop(up);
}

#[test]
fn daemon_layout_keeps_ca_keys_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let pki = test_pki(&[NAME]);
    let ca = write_ca(tmp.path(), &pki);
    let state = tmp.path().join("state");
    let i = hull_net::intercept::Interceptor::for_daemon(&state, Some(&ca)).unwrap();
    let pem = i
        .cas()
        .get_or_create("sb-1")
        .unwrap()
        .cert_pem()
        .to_string();
    let dir = hull_net::ca::ca_dir(&state).join("sb-1");
    let key = std::fs::metadata(dir.join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key & 0o777, 0o600);
    let d = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(d & 0o777, 0o700);
    assert_eq!(std::fs::read_to_string(dir.join("ca.pem")).unwrap(), pem);
    assert!(!pem.contains("PRIVATE KEY"));
    // Hostile ids never escape the directory.
    for bad in ["../x", "", ".hidden", "a/b"] {
        assert!(i.cas().get_or_create(bad).is_err(), "{bad:?}");
    }
    // An extra CA file without certificates is refused clearly.
    let empty = tmp.path().join("empty.pem");
    std::fs::write(&empty, "nothing here").unwrap();
    let e = hull_net::intercept::Interceptor::for_daemon(&state, Some(&empty)).unwrap_err();
    assert!(e.to_string().contains("no PEM certificate"), "{e}");
    i.cas().remove("sb-1").unwrap();
    assert!(!dir.exists());
}

/// Numbers, not assertions: `cargo nextest run -p hull-net --test intercept
/// --run-ignored only measure --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure() {
    use std::time::Instant;
    let ca = SandboxCa::generate("sb-m").unwrap();
    let t = Instant::now();
    for i in 0..200 {
        ca.leaf_cert(&format!("n{i}.example")).unwrap();
    }
    eprintln!("leaf mint: {:?} each", t.elapsed() / 200);
    let t = Instant::now();
    for i in 0..20 {
        SandboxCa::generate(&format!("sb{i}")).unwrap();
    }
    eprintln!("CA generate: {:?} each", t.elapsed() / 20);

    let tmp = tempfile::tempdir().unwrap();
    let pki = test_pki(&[NAME]);
    let up = upstream(Some(&pki)).await;
    let m = mitm(
        tmp.path(),
        up.addr,
        rules(Mode::Allowlist, None),
        opts(true, Some(write_ca(tmp.path(), &pki))),
    )
    .await;
    // Direct: same client code, trusting the fake internet's CA.
    let direct = || async {
        let tcp = tokio::net::TcpStream::connect(up.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(client_config(&pki.ca_pem))
            .connect(ServerName::try_from(NAME).unwrap(), tcp)
            .await
            .unwrap();
        let (s, c) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(c);
        s
    };
    let size = 64 << 20;
    for (label, via_mitm) in [("direct", false), ("intercepted", true)] {
        let mut c = if via_mitm {
            client(&m, Some(NAME)).await.unwrap()
        } else {
            direct().await
        };
        let mut lat = Vec::new();
        for _ in 0..300 {
            let t = Instant::now();
            let g = request(&mut c, m.name_port, "GET", "/count", &[], vec![]).await;
            assert_eq!(g.status, 200);
            lat.push(t.elapsed());
        }
        lat.sort();
        let t = Instant::now();
        let g = request(
            &mut c,
            m.name_port,
            "GET",
            &format!("/bytes/{size}"),
            &[],
            vec![],
        )
        .await;
        let el = t.elapsed();
        assert_eq!(g.body.len(), size);
        eprintln!(
            "{label}: request p50 {:?} p90 {:?}; 64 MiB in {:?} = {:.0} MiB/s",
            lat[lat.len() / 2],
            lat[lat.len() * 9 / 10],
            el,
            64.0 / el.as_secs_f64()
        );
    }
    // Connection setup (TCP + TLS handshake with a cached leaf).
    let t = Instant::now();
    for _ in 0..50 {
        let mut c = client(&m, Some(NAME)).await.unwrap();
        request(&mut c, m.name_port, "GET", "/count", &[], vec![]).await;
    }
    eprintln!(
        "intercepted new connection + first request: {:?} each",
        t.elapsed() / 50
    );
}

/// The whole path with the real egress proxy, in namespaces of the test's
/// own (PROXY's `fakenet`): curl in the "sandbox" dials a fake internet
/// address, nft redirects it to the proxy, which hands the intercepted
/// name to this interceptor; secrets injected, then recorded and replayed
/// with the upstream gone. Privileged.
#[test]
fn through_the_egress_proxy_end_to_end() {
    if !hull_testkit::privileged("through_the_egress_proxy_end_to_end") {
        return;
    }
    run_e2e();
    fakenet::assert_clean();
}

#[path = "fakenet/mod.rs"]
mod fakenet;

fn run_e2e() {
    use fakenet::*;
    use hull_net::proxy::{EgressProxy, ProxyConfig};
    use hull_net::resolve::Resolver;
    use hull_net::rules::{DomainPattern, HeaderRule};
    use std::net::SocketAddr;

    const E2E_NAME: &str = "other.test";
    const E2E_PORT: u16 = 8443;
    let net = FakeNet::new("m");
    let rt = net.host_runtime();
    let tmp = tempfile::tempdir().unwrap();
    let pki = test_pki(&[E2E_NAME]);
    let up_ca = write_ca(tmp.path(), &pki);
    let registry = Arc::new(hull_net::Registry::new());
    let tape = tmp.path().join("sb.hcas");
    let with_secret = |mode: Mode| {
        let mut r = fakenet::rules(mode, &[E2E_NAME], &[]);
        r.headers.push(HeaderRule {
            pattern: DomainPattern::parse(E2E_NAME).unwrap(),
            set: vec![("authorization".into(), SECRET.into())],
        });
        r.cassette = Some(tape.clone());
        Arc::new(r)
    };
    registry.set(&[SB_IP.into(), SB_IP6.into()], with_secret(Mode::Record));
    let sink = Arc::new(Sink::default());
    let state = tmp.path().join("state");
    let icpt = Arc::new(
        hull_net::intercept::Interceptor::new(
            Arc::new(hull_net::ca::CaStore::new(hull_net::ca::ca_dir(&state))),
            hull_net::intercept::upstream_roots(None, Some(&up_ca)).unwrap(),
            Arc::new(hull_net::cassette::CassetteSet::new()),
            InterceptConfig::default(),
        )
        .unwrap(),
    );
    let sandbox_ca = tmp.path().join("sandbox-ca.pem");
    std::fs::write(
        &sandbox_ca,
        icpt.cas().get_or_create("sb-test").unwrap().cert_pem(),
    )
    .unwrap();
    let up = rt.block_on(async {
        let _servers = start_servers(&net); // DNS for other.test
        let l = tokio::net::TcpListener::from_std(tcp_listener_in(
            &net.internet,
            SocketAddr::new(WEB_A.into(), E2E_PORT),
        ))
        .unwrap();
        let up = upstream_on(l, Some(&pki));
        let resolver = Resolver::new(
            vec![SocketAddr::new(DNS_IP.into(), 53)],
            vec![
                "10.99.0.0/24".parse().unwrap(),
                "fd99::/64".parse().unwrap(),
            ],
        );
        let proxy = EgressProxy::new(
            registry.clone(),
            resolver,
            sink.clone(),
            Some(icpt.clone() as Arc<dyn hull_net::proxy::Interceptor>),
            ProxyConfig::default(),
        );
        let l = tokio::net::TcpListener::bind(("::", PROXY_PORT))
            .await
            .unwrap();
        tokio::spawn(proxy.serve(l));
        up
    });
    let ca = sandbox_ca.to_str().unwrap().to_string();
    let curl = |ip: &str, path: &str, extra: &[&str]| {
        let resolve = format!("{E2E_NAME}:{E2E_PORT}:{ip}");
        let url = format!("https://{E2E_NAME}:{E2E_PORT}{path}");
        let mut args = vec![
            "curl",
            "-sS",
            "-i",
            "--max-time",
            "10",
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
        ];
        args.extend_from_slice(extra);
        args.push(&url);
        net.sandbox_cmd(&args)
    };
    // Live (record): the secret reaches the upstream only.
    let (ok, live, err) = curl(
        "192.0.2.10",
        "/echo?e2e=1",
        &[
            "-H",
            "authorization: Bearer mine",
            "--data-binary",
            "e2e-body",
        ],
    );
    assert!(ok, "{err}");
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
    assert!(live.ends_with("e2e-body"), "{live}");
    assert!(!live.contains("s3cret"));
    let (ok, count1, err) = curl("192.0.2.10", "/count", &[]);
    assert!(ok, "{err}");
    {
        let seen = up.seen.requests.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert!(
            seen[0]
                .1
                .iter()
                .any(|(n, v)| n == "authorization" && v == SECRET),
            "{:?}",
            seen[0].1.iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
    }
    // Replay with the upstream gone: the same bytes (minus Date, which the
    // recording keeps anyway), the sandbox dialling the replay address.
    drop(up);
    registry.set(&[SB_IP.into(), SB_IP6.into()], with_secret(Mode::Replay));
    let replay_ip = hull_net::dns::REPLAY_V4.to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (ok, again, err) = loop {
        // The recording is appended just after the response went out.
        let r = curl(&replay_ip, "/echo?e2e=1", &["--data-binary", "e2e-body"]);
        if r.1.starts_with("HTTP/1.1 200") || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(ok, "{err}");
    assert_eq!(again, live);
    let (_, count2, _) = curl(&replay_ip, "/count", &[]);
    assert_eq!(count2, count1);
    let (_, miss, _) = curl(&replay_ip, "/never", &[]);
    assert!(miss.starts_with("HTTP/1.1 502"), "{miss}");
    assert!(
        miss.to_ascii_lowercase().contains("x-hull-replay: miss"),
        "{miss}"
    );
    let events = sink.take();
    assert!(
        events
            .iter()
            .any(|(_, d)| d.reason.starts_with("replay miss")),
        "{events:?}"
    );
    drop(rt);
    drop(net);
}
