//! Port exposure over a real TCP listener with the bearer token: register,
//! list and remove exposures; the HTTP reverse proxy (methods, query,
//! headers, streamed bodies both ways, the upload limit, a service that
//! closes mid-answer, many concurrent requests), WebSocket through it, raw
//! TCP over a WebSocket (with half-close), persistence across a daemon
//! restart, and hostile input (unknown sandbox, unexposed and invalid
//! ports, missing token, path traversal). The services run inside a
//! sandbox of the `host` template (`tests/ports/services.py`, stdlib
//! Python), whose network is loopback only: the proxy goes through the
//! guest agent, not the network.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::StatusCode;
use bytes::Bytes;
use common::{Fixture, privileged};
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hull_server::{Auth, router};
use serde_json::Value;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

const SERVICES: &str = include_str!("ports/services.py");
const MAX_UPLOAD: u64 = 4 << 20;

type Resp = (StatusCode, axum::http::HeaderMap, Vec<u8>);

/// One request on a fresh connection; `token` None sends no credential.
async fn req_body<B>(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: B,
) -> Resp
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut r = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json");
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    let resp = sender.send_request(r.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let b = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, b)
}

async fn req(addr: SocketAddr, token: Option<&str>, method: &str, path: &str, body: &str) -> Resp {
    req_body(
        addr,
        token,
        method,
        path,
        http_body_util::Full::new(Bytes::from(body.to_string())),
    )
    .await
}

fn kind(b: &[u8]) -> String {
    common::error_kind(b)
}

fn json(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(b)))
}

/// A WebSocket to `path` with the token (if any): the stream, or the
/// refusal's status and body.
async fn ws(
    addr: SocketAddr,
    token: Option<&str>,
    path: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, (StatusCode, Vec<u8>)> {
    let mut r = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(t) = token {
        r.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    match tokio_tungstenite::client_async(r, s).await {
        Ok((w, _)) => Ok(w),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err((
            StatusCode::from_u16(resp.status().as_u16()).unwrap(),
            resp.body().clone().unwrap_or_default(),
        )),
        Err(e) => panic!("websocket to {path}: {e}"),
    }
}

async fn serve(f: &Fixture, token: &str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let app = router(
        f.rt.clone(),
        Auth::Bearer(Arc::new(token.to_string())),
        MAX_UPLOAD,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let h = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, h)
}

/// Start the services in the sandbox and wait until they listen.
async fn start_services(f: &Fixture, id: &str) {
    let r =
        f.rt.exec(
            id,
            hull_api::ExecRequest {
                cmd: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "cat > /tmp/services.py".into(),
                ],
                stdin: Some(SERVICES.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.exit_code, Some(0), "{r:?}");
    f.rt.exec_background(
        id,
        hull_api::ExecRequest {
            cmd: vec!["/usr/bin/python3".into(), "/tmp/services.py".into()],
            background: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let r = f
        .sh(
            id,
            "for i in $(seq 1 500); do [ -e /tmp/ready ] && exit 0; sleep 0.02; done; exit 1",
        )
        .await;
    assert_eq!(r.exit_code, Some(0), "the services did not start: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expose_proxy_http_websocket_and_tcp() {
    if !privileged("expose_proxy_http_websocket_and_tcp") {
        return;
    }
    let mut f = Fixture::new().await;
    let token = hull_server::ensure_token(f.dir.path()).unwrap();
    let tk = Some(token.as_str());
    let (addr, server) = serve(&f, &token).await;

    // Unknown sandbox, everywhere.
    for (m, p) in [
        ("POST", "/v1/sandboxes/nope/ports"),
        ("GET", "/v1/sandboxes/nope/ports"),
        ("DELETE", "/v1/sandboxes/nope/ports/80"),
        ("GET", "/v1/sandboxes/nope/ports/80/http/"),
        ("POST", "/v1/sandboxes/nope/ports/80/http/x"),
    ] {
        let (s, _, b) = req(addr, tk, m, p, r#"{"port":80}"#).await;
        assert_eq!(
            (s, kind(&b).as_str()),
            (StatusCode::NOT_FOUND, "not_found"),
            "{m} {p}"
        );
    }
    let e = ws(addr, tk, "/v1/sandboxes/nope/ports/80/tcp")
        .await
        .unwrap_err();
    assert_eq!(
        (e.0, kind(&e.1).as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );

    let sb = f.create("host").await;
    let id = sb.id.clone();
    start_services(&f, &id).await;
    let base = format!("/v1/sandboxes/{id}/ports");

    // No token, wrong token: refused on every route, the proxy included.
    for t in [None, Some("wrong")] {
        for (m, p) in [
            ("POST", base.clone()),
            ("GET", base.clone()),
            ("GET", format!("{base}/8080/http/echo")),
        ] {
            let (s, _, b) = req(addr, t, m, &p, r#"{"port":8080}"#).await;
            assert_eq!(
                (s, kind(&b).as_str()),
                (StatusCode::UNAUTHORIZED, "unauthenticated")
            );
        }
        let e = ws(addr, t, &format!("{base}/9000/tcp")).await.unwrap_err();
        assert_eq!(e.0, StatusCode::UNAUTHORIZED);
    }

    // Bad registrations.
    for bad in [
        r#"{"port":0}"#,
        r#"{"port":70000}"#,
        r#"{"port":-1}"#,
        r#"{"port":"abc"}"#,
        r#"{"port":8080,"protocol":"udp"}"#,
        r#"{"port":8080,"extra":1}"#,
        r#"{}"#,
        "not json",
    ] {
        let (s, _, b) = req(addr, tk, "POST", &base, bad).await;
        assert_eq!(
            (s, kind(&b).as_str()),
            (StatusCode::BAD_REQUEST, "invalid_argument"),
            "{bad}"
        );
    }
    let big = format!(r#"{{"port":8080,"x":"{}"}}"#, "a".repeat(2 << 20));
    let (s, _, _) = req(addr, tk, "POST", &base, &big).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "an oversize body");

    // Expose: idempotent; the URL names the daemon's host.
    let (s, _, b) = req(addr, tk, "POST", &base, r#"{"port":8080}"#).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let x = json(&b);
    assert_eq!(x["protocol"], "http");
    assert_eq!(x["path"], format!("{base}/8080/http/"));
    assert_eq!(x["url"], format!("http://{addr}{base}/8080/http/"));
    let (_, _, b2) = req(
        addr,
        tk,
        "POST",
        &base,
        r#"{"port":8080,"protocol":"http"}"#,
    )
    .await;
    assert_eq!(json(&b2)["created_at"], x["created_at"]);
    let (s, _, b) = req(addr, tk, "POST", &base, r#"{"port":9000,"protocol":"tcp"}"#).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json(&b)["url"], format!("ws://{addr}{base}/9000/tcp"));
    req(addr, tk, "POST", &base, r#"{"port":8082}"#).await;
    let (s, _, b) = req(addr, tk, "GET", &base, "").await;
    assert_eq!(s, StatusCode::OK);
    let ports: Vec<u64> = json(&b)["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [8080, 8082, 9000]);

    // The proxy: method, raw path and query, headers as documented.
    let (s, h, b) = req(
        addr,
        tk,
        "PATCH",
        &format!("{base}/8080/http/echo/a%20b?x=1&y=%2F"),
        "hello",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(h["x-service"], "echo");
    let v = json(&b);
    assert_eq!(v["method"], "PATCH");
    assert_eq!(v["path"], "/echo/a%20b?x=1&y=%2F");
    assert_eq!(v["len"], 5);
    let hs = &v["headers"];
    assert_eq!(hs["host"], "localhost:8080");
    assert!(
        hs.get("authorization").is_none(),
        "the daemon's token leaked: {hs}"
    );
    assert_eq!(hs["x-forwarded-host"], addr.to_string());
    assert_eq!(hs["x-forwarded-proto"], "http");
    assert_eq!(hs["x-forwarded-prefix"], format!("{base}/8080/http"));
    // The root, and the bare prefix (redirected so relative links work).
    let (s, _, b) = req(addr, tk, "GET", &format!("{base}/8080/http/"), "").await;
    assert_eq!(
        (s, json(&b)["path"].as_str().unwrap()),
        (StatusCode::OK, "/")
    );
    let (s, h, _) = req(addr, tk, "GET", &format!("{base}/8080/http?q=1"), "").await;
    assert_eq!(s, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(h["location"], format!("{base}/8080/http/?q=1"));
    // Traversal is the service's business: passed verbatim, the route holds.
    for (p, seen) in [
        ("../../../../etc/passwd", "/../../../../etc/passwd"),
        ("%2e%2e/%2e%2e/v1/info", "/%2e%2e/%2e%2e/v1/info"),
        ("a/..//b", "/a/..//b"),
    ] {
        let (s, _, b) = req(addr, tk, "GET", &format!("{base}/8080/http/{p}"), "").await;
        assert_eq!(s, StatusCode::OK, "{p}");
        assert_eq!(json(&b)["path"], seen, "{p}");
    }
    // HEAD: no body.
    let (s, _, b) = req(addr, tk, "HEAD", &format!("{base}/8080/http/echo"), "").await;
    assert_eq!((s, b.len()), (StatusCode::OK, 0));

    // Request bodies: streamed (chunked, no length), up to the upload limit.
    let payload: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<Result<hyper::body::Frame<Bytes>, std::io::Error>> = payload
        .chunks(64 << 10)
        .map(|c| Ok(hyper::body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let (s, _, b) = req_body(addr, tk, "PUT", &format!("{base}/8080/http/up"), body).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let v = json(&b);
    assert_eq!(v["len"], 3 << 20);
    assert_eq!(v["headers"]["transfer-encoding"], "chunked");
    use sha2::Digest;
    let want = sha2::Sha256::digest(&payload);
    let want: String = want.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(v["sha256"], want);
    // Over the limit: declared (refused up front), or streamed (cut).
    let over = vec![b'x'; (MAX_UPLOAD + 1) as usize];
    let (s, _, b) = req_body(
        addr,
        tk,
        "POST",
        &format!("{base}/8080/http/up"),
        http_body_util::Full::new(Bytes::from(over.clone())),
    )
    .await;
    assert_eq!(
        (s, kind(&b).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
    let chunks: Vec<Result<hyper::body::Frame<Bytes>, std::io::Error>> = over
        .chunks(64 << 10)
        .map(|c| Ok(hyper::body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let (s, _, b) = req_body(addr, tk, "POST", &format!("{base}/8080/http/up"), body).await;
    assert_eq!(
        (s, kind(&b).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );

    // Responses are streamed: the first chunk arrives while the service
    // still waits for /tmp/go.
    {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let r = axum::http::Request::get(format!("{base}/8080/http/stream"))
            .header("host", "x")
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let mut resp = sender.send_request(r).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let first = resp.body_mut().frame().await.unwrap().unwrap();
        assert_eq!(first.data_ref().unwrap().as_ref(), b"first;");
        let r = f.sh(&id, "touch /tmp/go").await;
        assert_eq!(r.exit_code, Some(0));
        let rest = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(rest.as_ref(), b"second");
    }
    // A service that closes mid-answer: the client sees a broken body.
    {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let r = axum::http::Request::get(format!("{base}/8080/http/cut"))
            .header("host", "x")
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(r).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.into_body().collect().await.is_err(),
            "a cut body looked whole"
        );
    }

    // Ports: invalid, not exposed, exposed with nothing listening, tcp-only.
    for p in ["0", "70000", "abc", "-1", "80x"] {
        let (s, _, b) = req(addr, tk, "GET", &format!("{base}/{p}/http/"), "").await;
        assert_eq!(
            (s, kind(&b).as_str()),
            (StatusCode::BAD_REQUEST, "invalid_argument"),
            "{p}"
        );
        let (s, _, b) = req(addr, tk, "DELETE", &format!("{base}/{p}"), "").await;
        assert_eq!(
            (s, kind(&b).as_str()),
            (StatusCode::BAD_REQUEST, "invalid_argument"),
            "{p}"
        );
        let e = ws(addr, tk, &format!("{base}/{p}/tcp")).await.unwrap_err();
        assert_eq!(e.0, StatusCode::BAD_REQUEST, "{p}");
    }
    let (s, _, b) = req(addr, tk, "GET", &format!("{base}/8081/http/"), "").await;
    assert_eq!((s, kind(&b).as_str()), (StatusCode::NOT_FOUND, "not_found"));
    let (s, _, b) = req(addr, tk, "GET", &format!("{base}/8082/http/"), "").await;
    assert_eq!(
        (s, kind(&b).as_str()),
        (StatusCode::BAD_GATEWAY, "unavailable")
    );
    let msg = json(&b)["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains(&format!("nothing listens on port 8082 inside sandbox {id}")),
        "{msg}"
    );
    let (s, _, b) = req(addr, tk, "GET", &format!("{base}/9000/http/"), "").await;
    assert_eq!((s, kind(&b).as_str()), (StatusCode::CONFLICT, "conflict"));
    let e = ws(addr, tk, &format!("{base}/8081/tcp")).await.unwrap_err();
    assert_eq!(
        (e.0, kind(&e.1).as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let e = ws(addr, tk, &format!("{base}/8082/tcp")).await.unwrap_err();
    assert_eq!(
        (e.0, kind(&e.1).as_str()),
        (StatusCode::BAD_GATEWAY, "unavailable")
    );
    // The raw TCP route is a WebSocket only.
    let (s, _, b) = req(addr, tk, "GET", &format!("{base}/9000/tcp"), "").await;
    assert_eq!(
        (s, kind(&b).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );

    // WebSocket through the HTTP proxy.
    let mut w = ws(addr, tk, &format!("{base}/8080/http/ws")).await.unwrap();
    w.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(
        w.next().await.unwrap().unwrap(),
        Message::Text("hello".into())
    );
    let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    w.send(Message::Binary(big.clone().into())).await.unwrap();
    assert_eq!(
        w.next().await.unwrap().unwrap(),
        Message::Binary(big.into())
    );
    w.close(None).await.unwrap();

    // Raw TCP: bytes both ways; an empty message half-closes.
    let mut t = ws(addr, tk, &format!("{base}/9000/tcp")).await.unwrap();
    t.send(Message::Binary(Bytes::from_static(b"abc")))
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        match t.next().await.unwrap().unwrap() {
            Message::Binary(b) => got.extend_from_slice(&b),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, b"abc");
    t.send(Message::Binary(Bytes::new())).await.unwrap();
    let mut tail = Vec::new();
    loop {
        match t.next().await {
            Some(Ok(Message::Binary(b))) => tail.extend_from_slice(&b),
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(other)) => panic!("{other:?}"),
            Some(Err(e)) => panic!("{e}"),
        }
    }
    assert_eq!(tail, b"bye");
    // The tcp route serves http exposures too.
    let mut t = ws(addr, tk, &format!("{base}/8080/tcp")).await.unwrap();
    t.send(Message::Binary(Bytes::from_static(
        b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )))
    .await
    .unwrap();
    let mut raw = Vec::new();
    while let Some(Ok(m)) = t.next().await {
        if let Message::Binary(b) = m {
            raw.extend_from_slice(&b);
        }
    }
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    // A service listening on ::1 only is reached too (127.0.0.1 refuses).
    let (s, _, b) = req(addr, tk, "POST", &base, r#"{"port":8083}"#).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let (s, _, b) = req(addr, tk, "GET", &format!("{base}/8083/http/echo"), "").await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(json(&b)["method"], "GET");
    let (s, _, _) = req(addr, tk, "DELETE", &format!("{base}/8083"), "").await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    // Many concurrent connections, HTTP and TCP.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..40 {
        let path = format!("{base}/8080/http/echo?i={i}");
        let tcp = format!("{base}/9000/tcp");
        let token = token.clone();
        set.spawn(async move {
            let (s, _, b) = req(addr, Some(&token), "POST", &path, &"z".repeat(i * 100)).await;
            assert_eq!(s, StatusCode::OK);
            assert_eq!(json(&b)["len"], i * 100);
            let mut t = ws(addr, Some(&token), &tcp).await.unwrap();
            let msg = format!("conn {i}");
            t.send(Message::Binary(msg.clone().into_bytes().into()))
                .await
                .unwrap();
            t.send(Message::Binary(Bytes::new())).await.unwrap();
            let mut all = Vec::new();
            while let Some(Ok(m)) = t.next().await {
                if let Message::Binary(b) = m {
                    all.extend_from_slice(&b);
                }
            }
            assert_eq!(all, format!("{msg}bye").into_bytes());
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }

    // Unexpose: the proxy refuses at once; removing again is not_found.
    let (s, _, _) = req(addr, tk, "DELETE", &format!("{base}/8080"), "").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, b) = req(addr, tk, "GET", &format!("{base}/8080/http/echo"), "").await;
    assert_eq!((s, kind(&b).as_str()), (StatusCode::NOT_FOUND, "not_found"));
    let (s, _, b) = req(addr, tk, "DELETE", &format!("{base}/8080"), "").await;
    assert_eq!((s, kind(&b).as_str()), (StatusCode::NOT_FOUND, "not_found"));

    // Exposures survive a daemon restart.
    server.abort();
    f.restart().await;
    let (addr, server) = serve(&f, &token).await;
    let tk = Some(token.as_str());
    let (s, _, b) = req(addr, tk, "GET", &base, "").await;
    assert_eq!(s, StatusCode::OK);
    let ports: Vec<u64> = json(&b)["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [8082, 9000]);
    let mut t = ws(addr, tk, &format!("{base}/9000/tcp")).await.unwrap();
    t.send(Message::Binary(Bytes::from_static(b"again")))
        .await
        .unwrap();
    t.send(Message::Binary(Bytes::new())).await.unwrap();
    let mut all = Vec::new();
    while let Some(Ok(m)) = t.next().await {
        if let Message::Binary(b) = m {
            all.extend_from_slice(&b);
        }
    }
    assert_eq!(all, b"againbye");

    // A paused sandbox: registering works, connecting is a conflict.
    f.rt.pause(&id).await.unwrap();
    let (s, _, b) = req(addr, tk, "GET", &format!("{base}/9000/tcp"), "").await;
    assert_eq!(
        (s, kind(&b).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
    let e = ws(addr, tk, &format!("{base}/9000/tcp")).await.unwrap_err();
    assert_eq!(
        (e.0, kind(&e.1).as_str()),
        (StatusCode::CONFLICT, "conflict")
    );
    f.rt.resume(&id).await.unwrap();

    // Destroyed: the exposures go with the sandbox.
    f.rt.destroy(&id).await.unwrap();
    let (s, _, b) = req(addr, tk, "GET", &base, "").await;
    assert_eq!((s, kind(&b).as_str()), (StatusCode::NOT_FOUND, "not_found"));
    server.abort();
    f.finish().await;
}

/// A benchmark, not a check (`--run-ignored only`, numbers printed): p50
/// of a small HTTP GET through the daemon's expose proxy (one kept-alive
/// client connection to the daemon over TCP with the token) against the
/// same GET sent directly over a fresh guest TCP tunnel to the service
/// (what the proxy does inside, without the daemon's HTTP hop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --run-ignored only"]
async fn bench_proxy_vs_tunnel() {
    if !privileged("bench_proxy_vs_tunnel") {
        return;
    }
    const N: usize = 300;
    let f = Fixture::new().await;
    let token = hull_server::ensure_token(f.dir.path()).unwrap();
    let (addr, server) = serve(&f, &token).await;
    let sb = f.create("host").await;
    let id = sb.id.clone();
    start_services(&f, &id).await;
    f.rt.expose_port(
        &id,
        hull_api::ExposePort {
            port: 8080,
            protocol: hull_api::PortProtocol::Http,
        },
    )
    .await
    .unwrap();
    let p50 = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };

    // Through the proxy: one connection to the daemon, N requests.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut proxied = Vec::with_capacity(N);
    for _ in 0..N {
        let t = std::time::Instant::now();
        let r = axum::http::Request::get(format!("/v1/sandboxes/{id}/ports/8080/http/echo"))
            .header("host", addr.to_string())
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        sender.ready().await.unwrap();
        let resp = sender.send_request(r).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.unwrap();
        proxied.push(t.elapsed().as_secs_f64() * 1e3);
    }

    // Directly over a guest tunnel: a new tunnel per request, as the proxy.
    let mut direct = Vec::with_capacity(N);
    for _ in 0..N {
        let t = std::time::Instant::now();
        let (_, _, stream) = f.rt.port_stream(&id, 8080).await.unwrap();
        let (mut s, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let r = axum::http::Request::get("/echo")
            .header("host", "localhost:8080")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = s.send_request(r).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.unwrap();
        direct.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "expose proxy GET p50 {:.3} ms; direct guest tunnel GET p50 {:.3} ms ({N} requests each)",
        p50(proxied),
        p50(direct)
    );
    server.abort();
    f.finish().await;
}
