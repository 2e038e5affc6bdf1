//! The HTTP API over a real runtime: routes, errors, hostile input, auth.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hull_api::{ErrorBody, ExecEvent, ExecResult, FileInfo, Limits, Sandbox, SandboxList};
use hull_runtime::{Runtime, RuntimeConfig};
use hull_server::{Auth, router};
use tower::ServiceExt;

fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert_ne!(
        std::env::var("HULL_TEST_PRIVILEGED").as_deref(),
        Ok("1"),
        "{test}: needs root"
    );
    eprintln!("SKIP {test}: needs root");
    false
}

fn guest_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("HULL_GUEST_BINARY") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("hull-guest");
    assert!(
        p.is_file(),
        "{} missing: build it (cargo build -p hull)",
        p.display()
    );
    p
}

struct Fixture {
    rt: Arc<Runtime>,
    _dir: tempfile::TempDir,
    done: bool,
}

impl Drop for Fixture {
    /// A failed test still removes its sandboxes.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let rt = self.rt.clone();
        let _ = std::thread::spawn(move || {
            let Ok(t) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            t.block_on(async {
                let _ = rt.system_reset().await;
                rt.shutdown().await;
            });
        })
        .join();
    }
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("hull-s")
            .tempdir_in("/tmp")
            .unwrap();
        let rt = Runtime::open(RuntimeConfig {
            state_dir: dir.path().into(),
            guest_binary: guest_binary(),
            defaults: Limits::default(),
        })
        .await
        .unwrap();
        Fixture {
            rt,
            _dir: dir,
            done: false,
        }
    }
    fn app(&self) -> axum::Router {
        router(self.rt.clone(), Auth::None, 1 << 20)
    }
    async fn finish(mut self) {
        self.rt.system_reset().await.unwrap();
        self.rt.shutdown().await;
        self.done = true;
    }
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: impl Into<Body>,
) -> (StatusCode, Vec<u8>) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    (
        status,
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
}

fn error_kind(body: &[u8]) -> String {
    let e: ErrorBody = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("error body: {}", String::from_utf8_lossy(body)));
    e.error.kind.as_str().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_exec_files_and_hostile_input() {
    if !privileged("lifecycle_exec_files_and_hostile_input") {
        return;
    }
    let f = Fixture::new().await;
    let app = f.app();
    let (s, b) = call(&app, "GET", "/v1/health", Body::empty()).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));

    // Create, with a label; list filters by it.
    let (s, b) = call(
        &app,
        "POST",
        "/v1/sandboxes",
        r#"{"template":"busybox","labels":{"t":"1"},"name":"api-test"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let sb: Sandbox = serde_json::from_slice(&b).unwrap();
    let (_, b) = call(&app, "GET", "/v1/sandboxes?label=t%3D1", Body::empty()).await;
    assert_eq!(
        serde_json::from_slice::<SandboxList>(&b)
            .unwrap()
            .sandboxes
            .len(),
        1
    );
    let (_, b) = call(&app, "GET", "/v1/sandboxes?label=t%3D2", Body::empty()).await;
    assert!(
        serde_json::from_slice::<SandboxList>(&b)
            .unwrap()
            .sandboxes
            .is_empty()
    );

    // Exec, buffered and streamed.
    let uri = format!("/v1/sandboxes/{}/exec", sb.id);
    let (s, b) = call(
        &app,
        "POST",
        &uri,
        r#"{"cmd":["sh","-c","echo hi; echo err >&2; exit 3"]}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let r: ExecResult = serde_json::from_slice(&b).unwrap();
    assert_eq!(
        (r.stdout.as_str(), r.stderr.as_str(), r.exit_code),
        ("hi\n", "err\n", Some(3))
    );
    let (s, b) = call(
        &app,
        "POST",
        &format!("{uri}/stream"),
        r#"{"cmd":["cat"],"stdin":"piped"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let events: Vec<ExecEvent> = b
        .split(|c| *c == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert!(
        matches!(events.first(), Some(ExecEvent::Started { .. })),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ExecEvent::Stdout { data, .. } if data == "piped")),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(ExecEvent::Exit(r)) if r.exit_code == Some(0)),
        "{events:?}"
    );

    // Files: round trip; escapes stay inside.
    let furi = format!("/v1/sandboxes/{}/files", sb.id);
    let (s, b) = call(
        &app,
        "PUT",
        &format!("{furi}?path=/work/a.txt&mode=0600"),
        "content",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let info: FileInfo = serde_json::from_slice(&b).unwrap();
    assert_eq!((info.size, info.mode), (7, 0o600));
    let (s, b) = call(
        &app,
        "GET",
        &format!("{furi}?path=/work/a.txt"),
        Body::empty(),
    )
    .await;
    assert_eq!((s, b.as_slice()), (StatusCode::OK, b"content".as_slice()));
    let (s, b) = call(
        &app,
        "GET",
        &format!("{furi}?path=/../../../../etc/shadow"),
        Body::empty(),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "the sandbox has no /etc/shadow: {}",
        String::from_utf8_lossy(&b)
    );
    let (s, b) = call(
        &app,
        "GET",
        &format!("{furi}?path=../etc/passwd"),
        Body::empty(),
    )
    .await;
    assert_eq!(
        (s, error_kind(&b).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
    let (s, _) = call(&app, "GET", &format!("{furi}?path="), Body::empty()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call(
        &app,
        "GET",
        &format!("{furi}?path=/work/a.txt&bogus=1"),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Upload above the limit (1 MiB here): refused, nothing written.
    let big = vec![b'x'; (1 << 20) + 1];
    let (s, b) = call(&app, "PUT", &format!("{furi}?path=/work/big"), big).await;
    assert!(s.is_client_error(), "{s} {}", String::from_utf8_lossy(&b));
    let (s, _) = call(
        &app,
        "GET",
        &format!("{furi}/stat?path=/work/big"),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, b) = call(
        &app,
        "GET",
        &format!("{furi}/list?path=/work&depth=99"),
        Body::empty(),
    )
    .await;
    assert_eq!(
        (s, error_kind(&b).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );

    // Bad input: malformed JSON, unknown fields, oversize bodies, absurd
    // limits, unknown ids and templates, invalid transitions, unknown routes.
    for (method, uri, body, status) in [
        (
            "POST",
            "/v1/sandboxes".to_string(),
            "{not json".to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/v1/sandboxes".to_string(),
            r#"{"template":"busybox","bogus":1}"#.to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/v1/sandboxes".to_string(),
            format!(r#"{{"name":"{}"}}"#, "x".repeat(2 << 20)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/v1/sandboxes".to_string(),
            r#"{"template":"busybox","limits":{"memory_bytes":1}}"#.to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/v1/sandboxes".to_string(),
            r#"{"template":"nope"}"#.to_string(),
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/v1/sandboxes".to_string(),
            r#"{"template":"busybox","name":"../etc"}"#.to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/v1/sandboxes".to_string(),
            r#"{"template":"busybox","name":"api-test"}"#.to_string(),
            StatusCode::CONFLICT,
        ),
        (
            "GET",
            "/v1/sandboxes/nope".to_string(),
            String::new(),
            StatusCode::NOT_FOUND,
        ),
        (
            "DELETE",
            "/v1/sandboxes/..%2F..".to_string(),
            String::new(),
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            format!("/v1/sandboxes/{}/resume", sb.id),
            String::new(),
            StatusCode::CONFLICT,
        ),
        (
            "POST",
            format!("/v1/sandboxes/{}/exec", sb.id),
            r#"{"cmd":[]}"#.to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "PUT",
            format!("/v1/sandboxes/{}/ttl", sb.id),
            r#"{"ttl_seconds":99999999999}"#.to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/v1/nothing".to_string(),
            String::new(),
            StatusCode::NOT_FOUND,
        ),
        (
            "PATCH",
            "/v1/sandboxes".to_string(),
            String::new(),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (s, b) = call(&app, method, &uri, body).await;
        assert_eq!(s, status, "{method} {uri}: {}", String::from_utf8_lossy(&b));
        error_kind(&b);
    }
    // Exec in a paused sandbox is a conflict; resume works.
    let (s, _) = call(
        &app,
        "POST",
        &format!("/v1/sandboxes/{}/pause", sb.id),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = call(&app, "POST", &uri, r#"{"cmd":["true"]}"#).await;
    assert_eq!(
        (s, error_kind(&b).as_str()),
        (StatusCode::CONFLICT, "conflict")
    );
    let (s, _) = call(
        &app,
        "POST",
        &format!("/v1/sandboxes/{}/resume", sb.id),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);

    let (s, _) = call(
        &app,
        "DELETE",
        &format!("/v1/sandboxes/{}", sb.id),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(
        &app,
        "DELETE",
        &format!("/v1/sandboxes/{}", sb.id),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_requires_the_token_and_websocket_exec_works() {
    if !privileged("tcp_requires_the_token") {
        return;
    }
    let f = Fixture::new().await;
    let state = f._dir.path();
    let token = hull_server::ensure_token(state).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.join("token"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            hull_server::ensure_token(state).unwrap(),
            token,
            "reused, not regenerated"
        );
    }
    let app = router(f.rt.clone(), Auth::Bearer(Arc::new(token.clone())), 1 << 20);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let get = |auth: Option<String>, path: &'static str| async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder().uri(path).header("host", "x");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = sender
            .send_request(
                req.body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        resp.status()
    };
    assert_eq!(
        get(None, "/v1/health").await,
        StatusCode::OK,
        "health needs no token"
    );
    assert_eq!(get(None, "/v1/sandboxes").await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        get(Some("Bearer wrong".into()), "/v1/sandboxes").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(Some(format!("Bearer {token}")), "/v1/sandboxes").await,
        StatusCode::OK
    );

    // WebSocket exec with stdin.
    let sb =
        f.rt.create(hull_api::CreateSandbox {
            template: Some("busybox".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let mut req = format!("ws://{addr}/v1/sandboxes/{}/exec/ws", sb.id)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::Text(
        r#"{"cmd":["sh","-c","read x; echo got:$x"]}"#.into(),
    ))
    .await
    .unwrap();
    ws.send(Message::Text(r#"{"type":"stdin","data":"hello\n"}"#.into()))
        .await
        .unwrap();
    let mut out = String::new();
    let mut code = None;
    while let Some(Ok(Message::Text(t))) = ws.next().await {
        match serde_json::from_str::<ExecEvent>(t.as_str()).unwrap() {
            ExecEvent::Stdout { data, .. } => out.push_str(&data),
            ExecEvent::Exit(r) => {
                code = r.exit_code;
                break;
            }
            _ => {}
        }
    }
    assert_eq!((out.as_str(), code), ("got:hello\n", Some(0)));
    server.abort();
    f.finish().await;
}
