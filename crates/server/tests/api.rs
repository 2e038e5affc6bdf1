//! The HTTP API over a real runtime: routes, errors, hostile input, auth.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{App, Fixture, call, call_with, error_kind, privileged};
use futures_util::{SinkExt, StreamExt};
use hull_api::Sandbox;
use hull_api::{ExecEvent, ExecResult, FileInfo, SandboxList};
use hull_server::{Auth, router};

/// The upload cap the router gets in these tests: above axum's 2 MiB
/// default body limit, so a larger upload proves uploads are streamed.
const MAX_UPLOAD: u64 = 4 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_exec_files_and_hostile_input() {
    if !privileged("lifecycle_exec_files_and_hostile_input") {
        return;
    }
    let f = Fixture::new().await;
    let app = f.app(MAX_UPLOAD);
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
    // Upload above the limit: refused while streaming (no Content-Length
    // here), nothing written.
    let big = vec![b'x'; MAX_UPLOAD as usize + 1];
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
    let token = hull_server::ensure_token(f.dir.path()).unwrap();
    let app = router(
        f.rt.clone(),
        Auth::Bearer(Arc::new(token.clone())),
        MAX_UPLOAD,
    );
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

/// A tar archive of `(name, content)` entries, names written raw (so
/// hostile names such as `../x` get through the builder unchecked).
fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        let raw = &mut h.as_gnu_mut().unwrap().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_archives_and_escapes() {
    if !privileged("uploads_archives_and_escapes") {
        return;
    }
    let f = Fixture::new().await;
    let app = f.app(MAX_UPLOAD);
    let (s, b) = call(&app, "POST", "/v1/sandboxes", r#"{"template":"busybox"}"#).await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let sb: Sandbox = serde_json::from_slice(&b).unwrap();
    let furi = format!("/v1/sandboxes/{}/files", sb.id);
    let octet = [("content-type", "application/octet-stream")];

    // 3 MiB: more than axum's default body limit, less than ours.
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    let (s, b) = call_with(
        &app,
        "PUT",
        &format!("{furi}?path=/tmp/big.bin"),
        &octet,
        data.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let (s, b) = call(
        &app,
        "GET",
        &format!("{furi}?path=/tmp/big.bin"),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(b == data, "round trip of {} bytes", data.len());

    // A Content-Length above the cap is refused before any byte is read.
    let too_long = (MAX_UPLOAD + 1).to_string();
    let (s, b) = call_with(
        &app,
        "PUT",
        &format!("{furi}?path=/tmp/cl.bin"),
        &[("content-length", too_long.as_str())],
        Body::empty(),
    )
    .await;
    assert_eq!(
        (s, error_kind(&b).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );

    // Query validation.
    for q in [
        "path=/tmp/x&mode=+644",
        "path=/tmp/x&mode=0888",
        "path=/tmp/x&mode=17777",
        "path=/tmp/x&depth=2",
        "mode=0644",
    ] {
        let (s, b) = call(&app, "PUT", &format!("{furi}?{q}"), "x").await;
        assert_eq!(
            (s, error_kind(&b).as_str()),
            (StatusCode::BAD_REQUEST, "invalid_argument"),
            "{q}"
        );
    }
    let (s, b) = call(
        &app,
        "GET",
        "/v1/sandboxes?label=a%3D1&label=a%3D2",
        Body::empty(),
    )
    .await;
    assert_eq!(
        (s, error_kind(&b).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
    // A JSON route with a non-JSON content type.
    let (s, b) = call_with(
        &app,
        "POST",
        &format!("/v1/sandboxes/{}/exec", sb.id),
        &[("content-type", "text/plain")],
        r#"{"cmd":["true"]}"#,
    )
    .await;
    assert_eq!(
        (s, error_kind(&b).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
    assert!(String::from_utf8_lossy(&b).contains("content type"));

    // Archives: put a tree, get it back.
    let tarball = tar_of(&[("a.txt", b"A"), ("sub/b.txt", b"BB")]);
    let (s, b) = call_with(
        &app,
        "PUT",
        &format!("{furi}/archive?path=/tmp/tree"),
        &[("content-type", "application/x-tar")],
        tarball,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{}", String::from_utf8_lossy(&b));
    let (s, b) = call(
        &app,
        "GET",
        &format!("{furi}?path=/tmp/tree/sub/b.txt"),
        Body::empty(),
    )
    .await;
    assert_eq!((s, b.as_slice()), (StatusCode::OK, b"BB".as_slice()));
    let (s, b) = call(
        &app,
        "GET",
        &format!("{furi}/archive?path=/tmp/tree"),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let mut names: Vec<String> = tar::Archive::new(b.as_slice())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.iter().any(|n| n.ends_with("sub/b.txt")), "{names:?}");

    // An archive above the cap. With a Content-Length it is refused before
    // a byte is unpacked.
    let huge = vec![7u8; MAX_UPLOAD as usize + 1024];
    let tarball = tar_of(&[("first.txt", b"1"), ("huge.bin", &huge)]);
    let len = tarball.len().to_string();
    let (s, b) = call_with(
        &app,
        "PUT",
        &format!("{furi}/archive?path=/tmp/over"),
        &[
            ("content-type", "application/x-tar"),
            ("content-length", len.as_str()),
        ],
        tarball.clone(),
    )
    .await;
    assert_eq!(
        (s, error_kind(&b).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
    let (s, _) = call(
        &app,
        "GET",
        &format!("{furi}/stat?path=/tmp/over"),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "nothing unpacked");
    // Streamed (no length): refused when the cap is crossed. The guest
    // unpacks as it reads, so entries before that point stay (a known
    // limit), but nothing beyond the cap is written.
    let (s, b) = call_with(
        &app,
        "PUT",
        &format!("{furi}/archive?path=/tmp/over"),
        &[("content-type", "application/x-tar")],
        tarball,
    )
    .await;
    assert!(s.is_client_error(), "{s} {}", String::from_utf8_lossy(&b));
    error_kind(&b);
    let (_, b) = call(
        &app,
        "GET",
        &format!("{furi}/list?path=/tmp/over"),
        Body::empty(),
    )
    .await;
    let list: hull_api::FileList = serde_json::from_slice(&b).unwrap();
    let total: u64 = list.entries.iter().map(|e| e.size).sum();
    assert!(total <= MAX_UPLOAD, "{list:?}");

    // Escapes: hostile archive names, a symlink pointing out, `..` in
    // paths. Whatever the guest answers, nothing lands on the host.
    let marker = format!("hull-escape-{}", std::process::id());
    let host_tmp = std::path::Path::new("/tmp").join(&marker);
    let host_etc = std::path::Path::new("/etc").join(&marker);
    let deep = format!("../../../../../../tmp/{marker}");
    let abs = format!("/tmp/{marker}");
    let tarball = tar_of(&[(deep.as_str(), b"x"), (abs.as_str(), b"x")]);
    let (s, b) = call_with(
        &app,
        "PUT",
        &format!("{furi}/archive?path=/tmp/unpack"),
        &[("content-type", "application/x-tar")],
        tarball,
    )
    .await;
    assert!(
        s == StatusCode::NO_CONTENT || s.is_client_error(),
        "{s} {}",
        String::from_utf8_lossy(&b)
    );
    let uri = format!("/v1/sandboxes/{}/exec", sb.id);
    let (s, _) = call(
        &app,
        "POST",
        &uri,
        r#"{"cmd":["ln","-s","../../../../../../etc","/tmp/up"]}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = call(
        &app,
        "GET",
        &format!("{furi}?path=/tmp/up/shadow"),
        Body::empty(),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "the sandbox's /etc has no shadow file: {}",
        String::from_utf8_lossy(&b)
    );
    let (s, b) = call(
        &app,
        "PUT",
        &format!("{furi}?path=/tmp/up/{marker}"),
        "inside",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let (s, b) = call(
        &app,
        "POST",
        &format!("{furi}/rename"),
        format!(r#"{{"from":"/tmp/up/{marker}","to":"/../../tmp/{marker}"}}"#),
    )
    .await;
    assert!(
        s == StatusCode::NO_CONTENT || s.is_client_error(),
        "{s} {}",
        String::from_utf8_lossy(&b)
    );
    let (s, b) = call(
        &app,
        "POST",
        &format!("{furi}/mkdir"),
        format!(r#"{{"path":"/tmp/up/../../../tmp/{marker}.d","parents":true}}"#),
    )
    .await;
    assert!(
        s == StatusCode::NO_CONTENT || s.is_client_error(),
        "{s} {}",
        String::from_utf8_lossy(&b)
    );
    assert!(
        !host_tmp.exists(),
        "{} escaped to the host",
        host_tmp.display()
    );
    assert!(
        !host_etc.exists(),
        "{} escaped to the host",
        host_etc.display()
    );
    assert!(
        !std::path::Path::new(&format!("/tmp/{marker}.d")).exists(),
        "mkdir escaped to the host"
    );
    // ... and the writes happened inside the sandbox.
    let (s, b) = call(&app, "POST", &uri, r#"{"cmd":["ls","/tmp","/etc"]}"#).await;
    assert_eq!(s, StatusCode::OK);
    let r: ExecResult = serde_json::from_slice(&b).unwrap();
    assert!(r.stdout.contains(&marker), "{}", r.stdout);

    let (s, _) = call(
        &app,
        "DELETE",
        &format!("/v1/sandboxes/{}", sb.id),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_errors_background_processes_and_attach() {
    if !privileged("websocket_errors_background_processes_and_attach") {
        return;
    }
    use tokio_tungstenite::tungstenite::Message;
    let f = Fixture::new().await;
    let app = f.app(MAX_UPLOAD);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, app.clone()).into_future());
    let sb =
        f.rt.create(hull_api::CreateSandbox {
            template: Some("busybox".into()),
            ..Default::default()
        })
        .await
        .unwrap();

    // Read text messages until the server closes; the events and how it ended.
    async fn drain(
        ws: &mut tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> (Vec<ExecEvent>, bool) {
        let mut events = Vec::new();
        loop {
            match tokio::time::timeout(std::time::Duration::from_secs(20), ws.next())
                .await
                .expect("the server answers")
            {
                Some(Ok(Message::Text(t))) => {
                    events.push(serde_json::from_str(t.as_str()).unwrap())
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|f| u16::from(f.code));
                    assert_eq!(code, Some(1000), "a normal close");
                    return (events, true);
                }
                None => return (events, false),
                Some(Ok(_)) => {}
                Some(Err(_)) => return (events, false),
            }
        }
    }

    // A first message that is not an ExecRequest: an error event, then close.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/v1/sandboxes/{}/exec/ws", sb.id))
            .await
            .unwrap();
    ws.send(Message::Text(r#"{"cmd":["true"],"bogus":1}"#.into()))
        .await
        .unwrap();
    let (events, closed) = drain(&mut ws).await;
    assert!(closed);
    assert!(
        matches!(events.as_slice(), [ExecEvent::Error { error }] if error.kind.as_str() == "invalid_argument"),
        "{events:?}"
    );
    // An unknown sandbox: not_found, then close.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/v1/sandboxes/nope/exec/ws"))
            .await
            .unwrap();
    ws.send(Message::Text(r#"{"cmd":["true"]}"#.into()))
        .await
        .unwrap();
    let (events, _) = drain(&mut ws).await;
    assert!(
        matches!(events.as_slice(), [ExecEvent::Error { error }] if error.kind.as_str() == "not_found"),
        "{events:?}"
    );

    // A background process: listed, attached to (its output after the
    // attach arrives), exits.
    let (s, b) = call(
        &app,
        "POST",
        &format!("/v1/sandboxes/{}/exec", sb.id),
        r#"{"cmd":["sh","-c","sleep 0.5; echo bg:later; exit 7"],"background":true}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let started: hull_api::ProcessStarted = serde_json::from_slice(&b).unwrap();
    let (s, b) = call(
        &app,
        "GET",
        &format!("/v1/sandboxes/{}/processes", sb.id),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let list: hull_api::ProcessList = serde_json::from_slice(&b).unwrap();
    assert!(
        list.processes
            .iter()
            .any(|p| p.id == started.id && p.running),
        "{list:?}"
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{addr}/v1/sandboxes/{}/processes/{}/attach",
        sb.id, started.id
    ))
    .await
    .unwrap();
    let (events, closed) = drain(&mut ws).await;
    assert!(closed, "the server closes after exit");
    let out: String = events
        .iter()
        .filter_map(|e| match e {
            ExecEvent::Stdout { data, .. } => Some(data.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(out, "bg:later\n", "{events:?}");
    assert!(
        matches!(events.last(), Some(ExecEvent::Exit(r)) if r.exit_code == Some(7)),
        "{events:?}"
    );
    // Signals: a bad process id is not_found; a sleeping one is killed.
    let (s, b) = call(
        &app,
        "POST",
        &format!("/v1/sandboxes/{}/processes/nope/signal", sb.id),
        r#"{"signal":9}"#,
    )
    .await;
    assert_eq!(
        (s, error_kind(&b).as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (_, b) = call(
        &app,
        "POST",
        &format!("/v1/sandboxes/{}/exec", sb.id),
        r#"{"cmd":["sleep","100"],"background":true}"#,
    )
    .await;
    let sleeper: hull_api::ProcessStarted = serde_json::from_slice(&b).unwrap();
    let (s, b) = call(
        &app,
        "POST",
        &format!("/v1/sandboxes/{}/processes/{}/signal", sb.id, sleeper.id),
        r#"{"signal":9}"#,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{}", String::from_utf8_lossy(&b));
    let mut gone = false;
    for _ in 0..100 {
        let (_, b) = call(
            &app,
            "GET",
            &format!("/v1/sandboxes/{}/processes", sb.id),
            Body::empty(),
        )
        .await;
        let list: hull_api::ProcessList = serde_json::from_slice(&b).unwrap();
        if list
            .processes
            .iter()
            .any(|p| p.id == sleeper.id && !p.running && p.signal == Some(9))
        {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(gone, "SIGKILL ended the background process");

    server.abort();
    f.rt.destroy(&sb.id).await.unwrap();
    f.finish().await;
}

/// Whether process `pid` of sandbox `sb` still runs (per `/processes`).
async fn process_running(app: &axum::Router, sb: &str, pid: &str) -> bool {
    let (s, b) = call(
        app,
        "GET",
        &format!("/v1/sandboxes/{sb}/processes"),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let list: hull_api::ProcessList = serde_json::from_slice(&b).unwrap();
    list.processes.iter().any(|p| p.id == pid && p.running)
}

/// Wait up to 10 s for a process to stop running.
async fn assert_ends(app: &axum::Router, sb: &str, pid: &str, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while process_running(app, sb, pid).await {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: the command still runs after its client went away"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Over a real HTTP connection: files whose size is unknown at open
/// (`/proc`) are read whole; a streaming exec whose client disconnects
/// ends its command even when it prints nothing; buffered exec refuses
/// `tty`; label filters are bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsized_files_disconnects_and_request_bounds() {
    if !privileged("unsized_files_disconnects_and_request_bounds") {
        return;
    }
    use tokio_tungstenite::tungstenite::Message;
    let f = Fixture::new().await;
    let app = f.app(MAX_UPLOAD);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, app.clone()).into_future());
    let sb =
        f.rt.create(hull_api::CreateSandbox {
            template: Some("busybox".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let get = |uri: String| async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        common::send(tcp, "GET", &uri, &[], Vec::new()).await
    };

    // /proc files report size 0 yet have content; a regular file still works.
    let furi = format!("/v1/sandboxes/{}/files", sb.id);
    for (path, needle) in [
        ("/proc/self/status", "Name:"),
        ("/proc/cpuinfo", "processor"),
    ] {
        let (s, b) = get(format!("{furi}?path={path}")).await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
        let text = String::from_utf8_lossy(&b);
        assert!(
            text.contains(needle) && text.ends_with('\n'),
            "{path}: {text:?}"
        );
    }
    let (s, _) = call(
        &app,
        "PUT",
        &format!("{furi}?path=/work/r.txt"),
        "regular\n",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = get(format!("{furi}?path=/work/r.txt")).await;
    assert_eq!((s, b.as_slice()), (StatusCode::OK, b"regular\n".as_slice()));

    // A silent command on a WebSocket whose client goes away.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/v1/sandboxes/{}/exec/ws", sb.id))
            .await
            .unwrap();
    ws.send(Message::Text(r#"{"cmd":["sleep","1000"]}"#.into()))
        .await
        .unwrap();
    let pid = match ws.next().await {
        Some(Ok(Message::Text(t))) => match serde_json::from_str(t.as_str()).unwrap() {
            ExecEvent::Started { id, .. } => id,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    assert!(process_running(&app, &sb.id, &pid).await);
    drop(ws);
    assert_ends(&app, &sb.id, &pid, "WebSocket").await;

    // The same on an NDJSON stream.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::builder()
        .method("POST")
        .uri(format!("/v1/sandboxes/{}/exec/stream", sb.id))
        .header("host", "hull")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"cmd":["sleep","1000"]}"#,
        )))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut line = Vec::new();
    while !line.contains(&b'\n') {
        use http_body_util::BodyExt;
        let frame = body.frame().await.unwrap().unwrap();
        line.extend_from_slice(frame.data_ref().unwrap());
    }
    let pid = match serde_json::from_slice(&line[..line.iter().position(|b| *b == b'\n').unwrap()])
        .unwrap()
    {
        ExecEvent::Started { id, .. } => id,
        other => panic!("{other:?}"),
    };
    assert!(process_running(&app, &sb.id, &pid).await);
    drop(body);
    drop(sender);
    conn.abort();
    let _ = conn.await;
    assert_ends(&app, &sb.id, &pid, "NDJSON").await;

    // Buffered exec has no terminal; background processes may.
    let uri = format!("/v1/sandboxes/{}/exec", sb.id);
    let (s, b) = call(&app, "POST", &uri, r#"{"cmd":["tty"],"tty":true}"#).await;
    assert_eq!(
        (s, error_kind(&b).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_argument"),
        "{}",
        String::from_utf8_lossy(&b)
    );
    assert!(String::from_utf8_lossy(&b).contains("tty"));
    let (s, b) = call(
        &app,
        "POST",
        &uri,
        r#"{"cmd":["true"],"tty":true,"background":true}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));

    // At most 64 label filters.
    let filters = |n: usize| {
        (0..n)
            .map(|i| format!("label=k{i}%3Dv"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let (s, b) = call(
        &app,
        "GET",
        &format!("/v1/sandboxes?{}", filters(64)),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let (s, b) = call(
        &app,
        "GET",
        &format!("/v1/sandboxes?{}", filters(65)),
        Body::empty(),
    )
    .await;
    assert_eq!(
        (s, error_kind(&b).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );

    server.abort();
    f.rt.destroy(&sb.id).await.unwrap();
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_routes_and_bad_input() {
    if !privileged("snapshot_routes_and_bad_input") {
        return;
    }
    use hull_api::{ForkResult, Snapshot, SnapshotList};
    let f = Fixture::new().await;
    let app = f.app(MAX_UPLOAD);
    let (s, b) = call(&app, "POST", "/v1/sandboxes", r#"{"template":"busybox"}"#).await;
    assert_eq!(s, StatusCode::CREATED);
    let sb: Sandbox = serde_json::from_slice(&b).unwrap();
    let exec = format!("/v1/sandboxes/{}/exec", sb.id);
    call(&app, "POST", &exec, r#"{"cmd":["sh","-c","echo 1 > /s"]}"#).await;

    // No body at all takes the defaults; a JSON body names it.
    let snap_uri = format!("/v1/sandboxes/{}/snapshot", sb.id);
    let (s, b) = call_with(&app, "POST", &snap_uri, &[], Body::empty()).await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let plain: Snapshot = serde_json::from_slice(&b).unwrap();
    let (s, b) = call(
        &app,
        "POST",
        &snap_uri,
        r#"{"name":"s1","labels":{"k":"v"}}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let s1: Snapshot = serde_json::from_slice(&b).unwrap();
    assert_eq!(s1.name.as_deref(), Some("s1"));
    assert!(
        ["overlay", "btrfs"].contains(&s1.backend.as_str()),
        "{s1:?}"
    );
    assert_eq!(s1.backend, plain.backend);
    for (body, kind) in [
        (r#"{"name":"s1"}"#, "conflict"),
        (r#"{"name":"Not A Label"}"#, "invalid_argument"),
        (r#"{"nmae":"typo"}"#, "invalid_argument"),
        (r#"{"name":"#, "invalid_argument"),
    ] {
        let (s, b) = call(&app, "POST", &snap_uri, body).await;
        assert_eq!(error_kind(&b), kind, "{body}: {s}");
    }
    let (s, b) = call(&app, "POST", "/v1/sandboxes/nope/snapshot", "{}").await;
    assert_eq!(
        (s, error_kind(&b).as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );

    // List, filter, inspect by id and by name.
    let (_, b) = call(&app, "GET", "/v1/snapshots", Body::empty()).await;
    let list: SnapshotList = serde_json::from_slice(&b).unwrap();
    assert_eq!(list.snapshots.len(), 2);
    let (_, b) = call(&app, "GET", "/v1/snapshots?label=k%3Dv", Body::empty()).await;
    let list: SnapshotList = serde_json::from_slice(&b).unwrap();
    assert_eq!(list.snapshots.len(), 1);
    for q in ["?label=k", "?bogus=1", "?label=k%3Dv&label=k%3Dw"] {
        let (s, _) = call(&app, "GET", &format!("/v1/snapshots{q}"), Body::empty()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}");
    }
    let (s, b) = call(&app, "GET", "/v1/snapshots/s1", Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(serde_json::from_slice::<Snapshot>(&b).unwrap().id, s1.id);
    for id in ["nope", "..%2F..%2Fetc", "%00"] {
        let (s, _) = call(&app, "GET", &format!("/v1/snapshots/{id}"), Body::empty()).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{id}");
    }

    // Fork, create --from, rollback.
    let (s, b) = call(&app, "POST", "/v1/snapshots/s1/fork", r#"{"n":3}"#).await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let forks: ForkResult = serde_json::from_slice(&b).unwrap();
    assert_eq!(forks.sandboxes.len(), 3);
    for body in [r#"{"n":0}"#, r#"{"n":100000}"#, r#"{}"#, r#"{"n":-1}"#] {
        let (s, _) = call(&app, "POST", "/v1/snapshots/s1/fork", body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    }
    let (s, _) = call(&app, "POST", "/v1/snapshots/nope/fork", r#"{"n":1}"#).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, b) = call(&app, "POST", "/v1/sandboxes", r#"{"from":"s1"}"#).await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let child: Sandbox = serde_json::from_slice(&b).unwrap();
    assert_eq!(child.snapshot.as_deref(), Some(s1.id.as_str()));
    let (s, _) = call(
        &app,
        "POST",
        "/v1/sandboxes",
        r#"{"from":"s1","template":"host"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let rb = format!("/v1/sandboxes/{}/rollback", sb.id);
    let (s, b) = call(
        &app,
        "POST",
        &rb,
        format!(r#"{{"snapshot":"{}"}}"#, plain.id),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    for (body, status) in [
        ("{}", StatusCode::BAD_REQUEST),
        (r#"{"snapshot":"nope"}"#, StatusCode::NOT_FOUND),
    ] {
        let (s, _) = call(&app, "POST", &rb, body).await;
        assert_eq!(s, status, "{body}");
    }

    // Delete: refused while used, then allowed.
    let (s, b) = call(&app, "DELETE", "/v1/snapshots/s1", Body::empty()).await;
    assert_eq!(
        (s, error_kind(&b).as_str()),
        (StatusCode::CONFLICT, "conflict")
    );
    for sbx in forks.sandboxes.iter().chain([&child]) {
        let (s, _) = call(
            &app,
            "DELETE",
            &format!("/v1/sandboxes/{}", sbx.id),
            Body::empty(),
        )
        .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
    }
    let (s, _) = call(&app, "DELETE", "/v1/snapshots/s1", Body::empty()).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(&app, "DELETE", "/v1/snapshots/s1", Body::empty()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    f.finish().await;
}

/// Export, import and template routes through HTTP: a real round trip,
/// then hostile bodies and queries, unknown ids, reserved names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_import_and_template_routes() {
    if !privileged("export_import_and_template_routes") {
        return;
    }
    use hull_api::{Snapshot, TemplateInfo};
    let f = Fixture::new().await;
    let app = f.app(MAX_UPLOAD);
    let (s, b) = call(&app, "POST", "/v1/sandboxes", r#"{"template":"busybox"}"#).await;
    assert_eq!(s, StatusCode::CREATED);
    let sb: Sandbox = serde_json::from_slice(&b).unwrap();
    let exec = format!("/v1/sandboxes/{}/exec", sb.id);
    call(
        &app,
        "POST",
        &exec,
        r#"{"cmd":["sh","-c","echo moved > /m"]}"#,
    )
    .await;
    let (s, b) = call(
        &app,
        "POST",
        &format!("/v1/sandboxes/{}/snapshot", sb.id),
        r#"{"name":"src"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let src: Snapshot = serde_json::from_slice(&b).unwrap();

    let req = axum::http::Request::builder()
        .method("GET")
        .uri("/v1/snapshots/src/export")
        .body(Body::empty())
        .unwrap();
    let resp = tower::ServiceExt::oneshot(app.clone(), req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/zstd");
    assert!(
        resp.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains(&format!("{}.tar.zst", src.id))
    );
    let archive = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let (s, b) = call_with(
        &app,
        "POST",
        "/v1/snapshots/import?name=copy",
        &[("content-type", "application/zstd")],
        archive.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let copy: Snapshot = serde_json::from_slice(&b).unwrap();
    assert_eq!((copy.name.as_deref(), copy.parent), (Some("copy"), None));
    let (s, b) = call(&app, "POST", "/v1/sandboxes", r#"{"from":"copy"}"#).await;
    assert_eq!(s, StatusCode::CREATED);
    let c: Sandbox = serde_json::from_slice(&b).unwrap();
    let (_, b) = call(
        &app,
        "POST",
        &format!("/v1/sandboxes/{}/exec", c.id),
        r#"{"cmd":["cat","/m"]}"#,
    )
    .await;
    assert!(String::from_utf8_lossy(&b).contains("moved"));

    // Hostile and broken requests.
    for (method, uri, body, status) in [
        (
            "GET",
            "/v1/snapshots/nope/export",
            Vec::new(),
            StatusCode::NOT_FOUND,
        ),
        (
            "GET",
            "/v1/snapshots/..%2F..%2Fetc/export",
            Vec::new(),
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/v1/snapshots/import",
            b"garbage".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/v1/snapshots/import",
            Vec::new(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/v1/snapshots/import?name=copy",
            archive.to_vec(),
            StatusCode::CONFLICT,
        ),
        (
            "POST",
            "/v1/snapshots/import?name=Bad_Name",
            archive.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/v1/snapshots/import?name=import",
            archive.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/v1/snapshots/import?bogus=1",
            archive.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/v1/templates/import",
            b"x".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/v1/templates/import?name=t1",
            b"not a tar".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/v1/templates/import?name=t1",
            archive.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/v1/templates/import?name=busybox",
            b"x".to_vec(),
            StatusCode::CONFLICT,
        ),
        (
            "POST",
            "/v1/templates/import?name=..",
            b"x".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/v1/templates/import?name=build",
            b"x".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/v1/templates/import?name=ok&source=%0a",
            b"x".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (s, b) = call_with(&app, method, uri, &[], body).await;
        assert_eq!(s, status, "{method} {uri}: {}", String::from_utf8_lossy(&b));
        error_kind(&b);
    }
    // Build requests that can't start are plain errors, not streams.
    for (body, status) in [
        (
            r#"{"name":"d","debian":"bookworm","packages":["-o","x"]}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            r#"{"name":"d","debian":"../../x"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            r#"{"name":"d","debian":"bookworm","mirror":"file:///etc"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            r#"{"name":"busybox","debian":"bookworm"}"#,
            StatusCode::CONFLICT,
        ),
        (r#"{"name":"d"}"#, StatusCode::BAD_REQUEST),
        (
            r#"{"name":"d","debian":"bookworm","extra":1}"#,
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (s, b) = call(&app, "POST", "/v1/templates/build", body).await;
        assert_eq!(s, status, "{body}: {}", String::from_utf8_lossy(&b));
    }
    // Nothing half-made is listed.
    let (_, b) = call(&app, "GET", "/v1/templates", Body::empty()).await;
    let list: hull_api::TemplateList = serde_json::from_slice(&b).unwrap();
    let names: Vec<&str> = list
        .templates
        .iter()
        .map(|t: &TemplateInfo| t.name.as_str())
        .collect();
    assert_eq!(names, ["host", "busybox", "scratch"]);
    f.finish().await;
}

/// Shell session routes: state persists across calls, a timeout keeps the
/// session, typed input reaches a prompt; bad names, unknown sessions and
/// sandboxes, duplicates and unknown fields are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_session_routes() {
    if !privileged("shell_session_routes") {
        return;
    }
    use hull_api::{ShellRunResult, ShellSendResult, ShellSessions};
    let f = Fixture::new().await;
    let app = f.app(MAX_UPLOAD);
    let (s, b) = call(&app, "POST", "/v1/sandboxes", r#"{"template":"host"}"#).await;
    assert_eq!(s, StatusCode::CREATED);
    let sb: Sandbox = serde_json::from_slice(&b).unwrap();
    let shells = format!("/v1/sandboxes/{}/shells", sb.id);
    let (s, b) = call(&app, "POST", &shells, r#"{"session":"main"}"#).await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let run = |cmd: &str, extra: &str| {
        let body = serde_json::json!({"command": cmd}).to_string();
        let body = if extra.is_empty() {
            body
        } else {
            format!("{},{extra}}}", &body[..body.len() - 1])
        };
        let app = app.clone();
        let uri = format!("{shells}/main/run");
        async move {
            let (s, b) = call(&app, "POST", &uri, body).await;
            assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
            serde_json::from_slice::<ShellRunResult>(&b).unwrap()
        }
    };
    let r = run("cd /tmp && export X=5 && f() { echo fn$1; }", "").await;
    assert_eq!(r.exit_code, Some(0), "{r:?}");
    let r = run("echo $X; f 1; pwd; false", "").await;
    assert_eq!(
        (r.output.as_str(), r.exit_code),
        ("5\nfn1\n/tmp\n", Some(1))
    );
    let r = run("echo before; sleep 10", r#""timeout_ms":300"#).await;
    assert!(r.timed_out && r.output.contains("before"), "{r:?}");
    let r = run("echo $X; pwd", "").await;
    assert_eq!(r.output, "5\n/tmp\n", "the session survived the timeout");
    // Typed input answers a prompt.
    let r = run("read -p 'name? ' n; echo hi $n", r#""timeout_ms":300"#).await;
    assert!(r.timed_out, "read waits for input: {r:?}");
    let (s, b) = call(
        &app,
        "POST",
        &format!("{shells}/main/run"),
        r#"{"command":"read -r -p 'name? ' n; echo hi $n","timeout_ms":5000,"bogus":1}"#,
    )
    .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&b)
    );
    let (s, b) = call(
        &app,
        "POST",
        &format!("{shells}/main/send"),
        r#"{"input":"echo typed\n","expect":"typed"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let sent: ShellSendResult = serde_json::from_slice(&b).unwrap();
    assert!(sent.matched && sent.output.contains("typed"), "{sent:?}");
    let (_, b) = call(&app, "GET", &shells, Body::empty()).await;
    let list: ShellSessions = serde_json::from_slice(&b).unwrap();
    assert_eq!(list.sessions.len(), 1);
    assert_eq!(list.sessions[0].session, "main");

    for (method, uri, body, status) in [
        (
            "POST",
            shells.clone(),
            r#"{"session":"main"}"#,
            StatusCode::CONFLICT,
        ),
        (
            "POST",
            shells.clone(),
            r#"{"session":"../x"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            shells.clone(),
            r#"{"session":""}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            shells.clone(),
            r#"{"session":"a","extra":true}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            format!("{shells}/nope/run"),
            r#"{"command":"true"}"#,
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            format!("{shells}/main/run"),
            r#"{"command":"a\u0000b"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            format!("{shells}/main/send"),
            r#"{"input":"x","expect":"("}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/v1/sandboxes/nope/shells".to_string(),
            r#"{"session":"a"}"#,
            StatusCode::NOT_FOUND,
        ),
        (
            "DELETE",
            format!("{shells}/nope"),
            "",
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (s, b) = call(&app, method, &uri, body.to_string()).await;
        assert_eq!(
            s,
            status,
            "{method} {uri} {body}: {}",
            String::from_utf8_lossy(&b)
        );
        error_kind(&b);
    }
    let (s, _) = call(&app, "DELETE", &format!("{shells}/main"), Body::empty()).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(
        &app,
        "POST",
        &format!("{shells}/main/run"),
        r#"{"command":"true"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    f.finish().await;
}

/// Code-interpreter routes: the `code/run` shortcut creates `default`,
/// state persists, named contexts run, restart and delete; unknown fields,
/// bad names and unknown contexts are refused. Needs python3-ipykernel on
/// the host (the `host` template shows it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_interpreter_routes() {
    if !privileged("code_interpreter_routes") {
        return;
    }
    use hull_api::{CodeContexts, CodeRunResult};
    let f = Fixture::new().await;
    let app = f.app(MAX_UPLOAD);
    let (s, b) = call(&app, "POST", "/v1/sandboxes", r#"{"template":"host"}"#).await;
    assert_eq!(s, StatusCode::CREATED);
    let sb: Sandbox = serde_json::from_slice(&b).unwrap();
    let base = format!("/v1/sandboxes/{}/code", sb.id);
    let run = |uri: String, body: &'static str| {
        let app = app.clone();
        async move {
            let (s, b) = call(&app, "POST", &uri, body).await;
            assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
            serde_json::from_slice::<CodeRunResult>(&b).unwrap()
        }
    };
    let r = run(format!("{base}/run"), r#"{"code":"x = 41\nprint('set')"}"#).await;
    assert_eq!(r.stdout, "set\n", "{r:?}");
    let r = run(format!("{base}/run"), r#"{"code":"x + 1"}"#).await;
    assert_eq!(r.results[0]["text/plain"], "42", "{r:?}");
    let (s, b) = call(
        &app,
        "POST",
        &format!("{base}/contexts"),
        r#"{"context":"two"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let r = run(format!("{base}/contexts/two/run"), r#"{"code":"x"}"#).await;
    assert_eq!(r.error.expect("isolated").name, "NameError");
    let r = run(format!("{base}/contexts/default/run"), r#"{"code":"x"}"#).await;
    assert_eq!(r.results[0]["text/plain"], "41");
    let (_, b) = call(&app, "GET", &format!("{base}/contexts"), Body::empty()).await;
    let list: CodeContexts = serde_json::from_slice(&b).unwrap();
    assert_eq!(list.contexts.len(), 2);
    let (s, _) = call(
        &app,
        "POST",
        &format!("{base}/contexts/default/restart"),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let r = run(format!("{base}/contexts/default/run"), r#"{"code":"x"}"#).await;
    assert_eq!(r.error.expect("restarted").name, "NameError");
    let (s, _) = call(
        &app,
        "POST",
        &format!("{base}/contexts/two/interrupt"),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    for (uri, body, status) in [
        (
            format!("{base}/contexts"),
            r#"{"context":"two"}"#,
            StatusCode::CONFLICT,
        ),
        (
            format!("{base}/contexts"),
            r#"{"context":"../x"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("{base}/run"),
            r#"{"code":"1","bogus":1}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("{base}/contexts/nope/run"),
            r#"{"code":"1"}"#,
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (s, b) = call(&app, "POST", &uri, body).await;
        assert_eq!(s, status, "{uri} {body}: {}", String::from_utf8_lossy(&b));
    }
    // Streamed runs: NDJSON events, the last `end`; refusals come as the
    // usual error status before any stream.
    let (s, b) = call(
        &app,
        "POST",
        &format!("{base}/contexts/two/run/stream"),
        r#"{"code":"print('a')\n40 + 2"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let evs: Vec<hull_api::CodeEvent> = String::from_utf8_lossy(&b)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(evs[0], hull_api::CodeEvent::Stdout { text: "a\n".into() });
    assert!(
        matches!(&evs[1], hull_api::CodeEvent::Result { data, .. } if data["text/plain"] == "42"),
        "{evs:?}"
    );
    assert!(
        matches!(
            evs[2],
            hull_api::CodeEvent::End {
                timed_out: false,
                ..
            }
        ),
        "{evs:?}"
    );
    let (s, b) = call(
        &app,
        "POST",
        &format!("{base}/run/stream"),
        r#"{"code":"x","context":"third"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        String::from_utf8_lossy(&b).contains(r#""type":"exception""#),
        "a new context: NameError"
    );
    for (uri, body, status) in [
        (
            format!("{base}/contexts/nope/run/stream"),
            r#"{"code":"1"}"#,
            StatusCode::NOT_FOUND,
        ),
        (
            format!("{base}/contexts/bad%2Fname/run/stream"),
            r#"{"code":"1"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("{base}/contexts/two/run/stream"),
            r#"{"code":"1","context":"x"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("{base}/contexts/two/run/stream"),
            r#"{"code":"1","timeout_ms":0}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("{base}/run/stream"),
            r#"{"code":1}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("{base}/run/stream"),
            r#"{"code":"1","context":"../x"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/sandboxes/nope/code/run/stream".to_string(),
            r#"{"code":"1"}"#,
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (s, b) = call(&app, "POST", &uri, body).await;
        assert_eq!(s, status, "{uri} {body}: {}", String::from_utf8_lossy(&b));
    }
    let big = format!(r#"{{"code":"{}"}}"#, "x".repeat(2 << 20));
    let (s, b) = call(&app, "POST", &format!("{base}/run/stream"), big).await;
    assert_eq!(
        (s, common::error_kind(&b).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
    let (s, _) = call(
        &app,
        "DELETE",
        &format!("{base}/contexts/two"),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(
        &app,
        "DELETE",
        &format!("{base}/contexts/two"),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
