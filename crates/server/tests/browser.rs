//! The browser routes over a real TCP listener with the bearer token: the
//! action route, the raw PNG route, the CDP discovery document and the raw
//! CDP WebSocket (driven like a CDP client would), and hostile requests.
//! Needs Chromium on the host (the `host` template shows it).

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use common::{Fixture, privileged};
use futures_util::{SinkExt, StreamExt};
use hull_server::{Auth, router};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

fn ready(test: &str) -> bool {
    if !privileged(test) {
        return false;
    }
    if !std::path::Path::new("/usr/lib/chromium/chromium").exists()
        && !std::path::Path::new("/usr/bin/chromium").exists()
    {
        if std::env::var("HULL_TEST_PRIVILEGED").as_deref() == Ok("1") {
            panic!("{test}: chromium is not installed (apt-get install chromium)");
        }
        eprintln!("SKIP {test}: chromium is not installed");
        return false;
    }
    true
}

/// One HTTP/1 request with the token; status, content type, body.
async fn req(
    addr: std::net::SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
) -> (StatusCode, String, Vec<u8>) {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let r = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let resp = sender.send_request(r).await.unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let b = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, ct, b)
}

fn kind(b: &[u8]) -> String {
    common::error_kind(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_routes_and_raw_cdp() {
    if !ready("browser_routes_and_raw_cdp") {
        return;
    }
    let f = Fixture::new().await;
    let token = hull_server::ensure_token(f.dir.path()).unwrap();
    let app = router(f.rt.clone(), Auth::Bearer(Arc::new(token.clone())), 1 << 20);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, app).into_future());

    // Hostile requests before any browser: unknown sandbox, bad bodies.
    let (s, _, b) = req(
        addr,
        &token,
        "POST",
        "/v1/sandboxes/nope/browser/actions",
        r#"{"action":"tabs"}"#,
    )
    .await;
    assert_eq!((s, kind(&b).as_str()), (StatusCode::NOT_FOUND, "not_found"));
    let (s, _, b) = req(addr, &token, "GET", "/v1/sandboxes/nope/browser", "").await;
    assert_eq!((s, kind(&b).as_str()), (StatusCode::NOT_FOUND, "not_found"));
    let (s, _, b) = req(
        addr,
        &token,
        "GET",
        "/v1/sandboxes/nope/browser/cdp/json/version",
        "",
    )
    .await;
    assert_eq!((s, kind(&b).as_str()), (StatusCode::NOT_FOUND, "not_found"));

    let sb =
        f.rt.create(hull_api::CreateSandbox {
            template: Some("host".into()),
            limits: hull_api::LimitsRequest {
                memory_bytes: Some(2 << 30),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap();
    let base = format!("/v1/sandboxes/{}/browser", sb.id);
    for bad in [
        r#"{"action":"fly"}"#,
        r#"{"action":"click","tab":"T"}"#,
        r#"{"action":"tabs","extra":1}"#,
        r#"{"action":"open","url":""}"#,
        r#"{"action":"wait_for","tab":"T","selector":"a","timeout_ms":99999999}"#,
        "not json",
    ] {
        let (s, _, b) = req(addr, &token, "POST", &format!("{base}/actions"), bad).await;
        assert_eq!(
            s,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            String::from_utf8_lossy(&b)
        );
        assert_eq!(kind(&b), "invalid_argument");
    }
    let big = format!(r#"{{"action":"open","url":"{}"}}"#, "a".repeat(2 << 20));
    let (s, _, _) = req(addr, &token, "POST", &format!("{base}/actions"), &big).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "an oversize body");
    let (s, _, b) = req(addr, &token, "GET", &base, "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["state"],
        "stopped"
    );

    // Open a page; the raw PNG route.
    let (s, _, b) = req(
        addr,
        &token,
        "POST",
        &format!("{base}/actions"),
        r#"{"action":"open","url":"data:text/html,<title>T1</title><h1>hi</h1>"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["action"], "open");
    assert_eq!(v["tab"]["title"], "T1");
    let tab = v["tab"]["id"].as_str().unwrap().to_string();
    let (s, ct, png) = req(
        addr,
        &token,
        "GET",
        &format!("{base}/screenshot?tab={tab}"),
        "",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ct, "image/png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let (s, _, b) = req(addr, &token, "GET", &format!("{base}/screenshot"), "").await;
    assert_eq!(
        (s, kind(&b).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
    let (s, _, b) = req(
        addr,
        &token,
        "GET",
        &format!("{base}/screenshot?tab=NOPE"),
        "",
    )
    .await;
    assert_eq!((s, kind(&b).as_str()), (StatusCode::NOT_FOUND, "not_found"));

    // Discovery: webSocketDebuggerUrl points back at the daemon, with or
    // without the trailing slash Playwright uses.
    for p in ["cdp/json/version", "cdp/json/version/"] {
        let (s, _, b) = req(addr, &token, "GET", &format!("{base}/{p}"), "").await;
        assert_eq!(s, StatusCode::OK, "{p}");
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert!(v["Browser"].as_str().unwrap().contains("Chrome"), "{v}");
        assert_eq!(
            v["webSocketDebuggerUrl"],
            format!("ws://{addr}/v1/sandboxes/{}/browser/cdp", sb.id)
        );
    }

    // Raw CDP: without the token refused; with it, a CDP client sees our tab.
    let url = format!("ws://{addr}{base}/cdp");
    assert!(
        tokio_tungstenite::connect_async(url.as_str())
            .await
            .is_err()
    );
    let mut r = url.as_str().into_client_request().unwrap();
    r.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(r).await.unwrap();
    let cdp = async |ws: &mut tokio_tungstenite::WebSocketStream<_>,
                     id: u64,
                     method: &str,
                     params: Value|
           -> Value {
        ws.send(Message::Text(
            json!({"id": id, "method": method, "params": params})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
                .await
                .expect("CDP answers")
                .expect("open")
                .expect("a message");
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["id"] == id {
                    return v;
                }
            }
        }
    };
    let v = cdp(&mut ws, 1, "Browser.getVersion", json!({})).await;
    assert!(
        v["result"]["product"].as_str().unwrap().contains("Chrome"),
        "{v}"
    );
    let v = cdp(&mut ws, 2, "Target.getTargets", json!({})).await;
    assert!(
        v["result"]["targetInfos"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["targetId"] == tab.as_str()),
        "{v}"
    );
    // A tab made over raw CDP is a tab of the action API too.
    let v = cdp(
        &mut ws,
        3,
        "Target.createTarget",
        json!({"url": "data:text/html,<title>T2</title>"}),
    )
    .await;
    let t2 = v["result"]["targetId"].as_str().unwrap().to_string();
    let v = cdp(&mut ws, 4, "No.suchMethod", json!({})).await;
    assert!(v["error"].is_object(), "{v}");
    ws.close(None).await.unwrap();
    let (s, _, b) = req(
        addr,
        &token,
        "POST",
        &format!("{base}/actions"),
        &json!({"action": "evaluate", "tab": t2, "expression": "document.title"}).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(serde_json::from_slice::<Value>(&b).unwrap()["value"], "T2");

    // The CDP route of an unknown sandbox is a plain 404.
    let mut r = format!("ws://{addr}/v1/sandboxes/nope/browser/cdp")
        .into_client_request()
        .unwrap();
    r.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    match tokio_tungstenite::connect_async(r).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::NOT_FOUND)
        }
        other => panic!("{other:?}"),
    }

    // Stop, then the status says so; restart brings it back.
    let (s, _, b) = req(addr, &token, "POST", &format!("{base}/stop"), "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["state"],
        "stopped"
    );
    let (s, _, b) = req(addr, &token, "POST", &format!("{base}/restart"), "").await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["state"],
        "running"
    );

    server.abort();
    f.finish().await;
}
