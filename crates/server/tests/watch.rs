//! `GET /v1/sandboxes/{id}/files/watch` over a real runtime: events for
//! changes made inside the sandbox, recursion, the end of a watch, and
//! hostile input (unknown sandbox, missing path, a file, paths and
//! symlinks that try to leave the sandbox, too many watches, bad queries).

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{App, Fixture, call, error_kind, privileged};
use http_body_util::BodyExt;
use hull_api::{FileWatchEvent, Sandbox};
use tower::ServiceExt;

/// An open watch: the response body, read line by line.
struct Watch {
    body: Body,
    buf: Vec<u8>,
}

impl Watch {
    /// The next event (a generous bound turns a missing event into a
    /// failure instead of a hang).
    async fn next(&mut self) -> Option<FileWatchEvent> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            let frame = tokio::time::timeout(std::time::Duration::from_secs(30), self.body.frame())
                .await
                .expect("no event came")?
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }

    /// Events until one matches `want`.
    async fn until(&mut self, want: impl Fn(&FileWatchEvent) -> bool) -> Vec<FileWatchEvent> {
        let mut seen = Vec::new();
        loop {
            let ev = self
                .next()
                .await
                .unwrap_or_else(|| panic!("stream ended; seen {seen:?}"));
            let done = want(&ev);
            seen.push(ev);
            if done {
                return seen;
            }
        }
    }
}

async fn watch(app: &axum::Router, uri: &str) -> Result<Watch, (StatusCode, Vec<u8>)> {
    let resp = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    if resp.status() != StatusCode::OK {
        let s = resp.status();
        let b = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        return Err((s, b));
    }
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    Ok(Watch {
        body: resp.into_body(),
        buf: Vec::new(),
    })
}

async fn sh(app: &axum::Router, id: &str, script: &str) {
    let body = serde_json::json!({"cmd": ["sh", "-c", script]}).to_string();
    let (s, b) = call(app, "POST", &format!("/v1/sandboxes/{id}/exec"), body).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let r: hull_api::ExecResult = serde_json::from_slice(&b).unwrap();
    assert_eq!(r.exit_code, Some(0), "{script}: {r:?}");
}

fn is(ev: &FileWatchEvent, kind: &str, want: &str) -> bool {
    let (k, name) = match ev {
        FileWatchEvent::Create { name, .. } => ("create", name),
        FileWatchEvent::Write { name, .. } => ("write", name),
        FileWatchEvent::Remove { name, .. } => ("remove", name),
        FileWatchEvent::Rename { name, .. } => ("rename", name),
        FileWatchEvent::Chmod { name, .. } => ("chmod", name),
        _ => return false,
    };
    k == kind && name == want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_changes_and_refuses_hostile_input() {
    if !privileged("watch_streams_changes_and_refuses_hostile_input") {
        return;
    }
    let f = Fixture::new().await;
    let app = f.app(1 << 20);
    let (s, b) = call(&app, "POST", "/v1/sandboxes", r#"{"template":"busybox"}"#).await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let sb: Sandbox = serde_json::from_slice(&b).unwrap();
    let id = sb.id.clone();
    sh(&app, &id, "mkdir -p /w/sub && echo x > /w/file").await;
    let base = format!("/v1/sandboxes/{id}/files/watch");

    // Changes made inside the sandbox arrive as they happen.
    let mut w = watch(&app, &format!("{base}?path=/w&recursive=true"))
        .await
        .unwrap();
    sh(&app, &id, "echo a > /w/new.txt; chmod 600 /w/new.txt; mv /w/new.txt /w/sub/moved; mkdir -p /w/d1/d2; echo b > /w/d1/d2/deep; rm /w/file").await;
    let seen = w.until(|e| is(e, "remove", "file")).await;
    for (kind, name) in [
        ("create", "new.txt"),
        ("write", "new.txt"),
        ("chmod", "new.txt"),
        ("rename", "new.txt"),
        ("create", "sub/moved"),
        ("create", "d1"),
    ] {
        assert!(
            seen.iter().any(|e| is(e, kind, name)),
            "{kind} {name}: {seen:?}"
        );
    }
    // The deep file came either from inotify or from the walk of the new tree.
    assert!(
        seen.iter().any(|e| is(e, "create", "d1/d2/deep")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, FileWatchEvent::Create { path, .. } if path == "/w/sub/moved"))
    );

    // `..` stops at the sandbox root; a symlink out of it resolves inside.
    sh(
        &app,
        &id,
        "ln -s ../../../../.. /w/up; ln -s /proc/1/root /w/magic",
    )
    .await;
    let mut up = watch(&app, &format!("{base}?path=/w/up")).await.unwrap();
    let mut dots = watch(&app, &format!("{base}?path=/../../tmp/.."))
        .await
        .unwrap();
    sh(&app, &id, "touch /at-root").await;
    up.until(|e| is(e, "create", "at-root")).await;
    dots.until(|e| is(e, "create", "at-root")).await;
    drop((up, dots));

    // Refusals come as the usual error status, before any stream.
    for (uri, status, kind) in [
        (
            format!("{base}?path=/nope"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            format!("{base}?path=/w/sub/moved"),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            format!("{base}?path=relative"),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            format!("{base}?path="),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            format!("{base}?path=/w/magic"),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (base.clone(), StatusCode::BAD_REQUEST, "invalid_argument"),
        (
            format!("{base}?path=/w&depth=2"),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            format!("{base}?path=/w&recursive=maybe"),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            format!("{base}?path=/{}", "a".repeat(5000)),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "/v1/sandboxes/nosuchbox/files/watch?path=/".to_string(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/v1/sandboxes/..%2F..%2Fetc/files/watch?path=/".to_string(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ] {
        let (s, b) = watch(&app, &uri)
            .await
            .err()
            .unwrap_or_else(|| panic!("{uri} was accepted"));
        assert_eq!(s, status, "{uri}: {}", String::from_utf8_lossy(&b));
        assert_eq!(error_kind(&b), kind, "{uri}");
    }

    // Watches are bounded per sandbox; a dropped one gives its slot back.
    let mut held = Vec::new();
    let refused = loop {
        match watch(&app, &format!("{base}?path=/w")).await {
            Ok(w) => held.push(w),
            Err(e) => break e,
        }
        assert!(held.len() <= hull_proto::MAX_WATCHERS, "no bound");
    };
    assert_eq!(refused.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_kind(&refused.1), "resource_exhausted");
    held.clear();
    let mut again = None;
    for _ in 0..200 {
        if let Ok(w) = watch(&app, &format!("{base}?path=/w")).await {
            again = Some(w);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut w = again.expect("dropped watches never gave their slots back");

    // Removing the watched directory ends the stream with an error line.
    sh(&app, &id, "rm -r /w").await;
    let seen = w.until(|e| matches!(e, FileWatchEvent::Error { .. })).await;
    match seen.last() {
        Some(FileWatchEvent::Error { error }) => assert_eq!(error.kind.as_str(), "not_found"),
        other => panic!("{other:?}"),
    }
    assert!(
        w.next().await.is_none(),
        "the stream goes on after its error"
    );

    // A paused sandbox cannot be watched; destroying one ends its watches.
    sh(&app, &id, "mkdir /v").await;
    let mut w = watch(&app, &format!("{base}?path=/v")).await.unwrap();
    let (s, _) = call(
        &app,
        "POST",
        &format!("/v1/sandboxes/{id}/pause"),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = watch(&app, &format!("{base}?path=/v")).await.err().unwrap();
    assert_eq!(
        (s, error_kind(&b).as_str()),
        (StatusCode::CONFLICT, "conflict")
    );
    let (s, _) = call(
        &app,
        "DELETE",
        &format!("/v1/sandboxes/{id}"),
        Body::empty(),
    )
    .await;
    assert!(s.is_success(), "{s}");
    let seen = w.until(|e| matches!(e, FileWatchEvent::Error { .. })).await;
    assert!(
        matches!(seen.last(), Some(FileWatchEvent::Error { .. })),
        "{seen:?}"
    );
    f.finish().await;
}
