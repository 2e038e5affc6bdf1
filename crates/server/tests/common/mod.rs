//! Test kit for the server's privileged tests: a runtime on a private state
//! directory, the guest binary from this build, and small HTTP clients
//! (in-process through `tower::ServiceExt::oneshot`, and over a real unix
//! or TCP socket with hyper).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use hull_api::{ErrorBody, Limits};
use hull_runtime::{Runtime, RuntimeConfig};
use hull_server::{Auth, router};
use tower::ServiceExt;

/// True when the test may run; false (after a message) when it must skip.
/// Panics when privileged tests are required (`HULL_TEST_PRIVILEGED=1`) but
/// cannot run.
pub fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("HULL_TEST_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{test}: HULL_TEST_PRIVILEGED=1 but not running as root");
    }
    eprintln!("SKIP {test}: needs root (set HULL_TEST_PRIVILEGED=1 to make this a failure)");
    false
}

/// The `hull-guest` binary built alongside the tests.
pub fn guest_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("HULL_GUEST_BINARY") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<triple>/debug/deps/<test> -> target/<triple>/debug/hull-guest
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join("hull-guest");
    assert!(
        p.is_file(),
        "{} is missing: build it first (cargo build -p hull) or set HULL_GUEST_BINARY",
        p.display()
    );
    p
}

/// A private state directory under /tmp (short paths: unix sockets live
/// under it).
pub fn state_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("tempdir")
}

/// A runtime on a private state directory; removes every sandbox it made
/// even when the test fails before [`Fixture::finish`].
pub struct Fixture {
    pub rt: Arc<Runtime>,
    pub dir: tempfile::TempDir,
    done: bool,
}

impl Drop for Fixture {
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
    pub async fn new() -> Fixture {
        let dir = state_dir("hull-s");
        let rt = Runtime::open(RuntimeConfig {
            state_dir: dir.path().into(),
            guest_binary: guest_binary(),
            defaults: Limits::default(),
        })
        .await
        .expect("open the runtime");
        Fixture {
            rt,
            dir,
            done: false,
        }
    }

    /// The unix-socket router with a `max_upload` cap.
    pub fn app(&self, max_upload: u64) -> axum::Router {
        router(self.rt.clone(), Auth::None, max_upload)
    }

    /// Remove everything made (asserting it worked) and stop the runtime.
    pub async fn finish(mut self) {
        self.rt.system_reset().await.expect("system reset");
        self.rt.shutdown().await;
        self.done = true;
    }
}

/// One request through the router in-process; JSON content type.
pub async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: impl Into<Body>,
) -> (StatusCode, Vec<u8>) {
    call_with(
        app,
        method,
        uri,
        &[("content-type", "application/json")],
        body,
    )
    .await
}

/// One request through the router in-process with the given headers.
pub async fn call_with(
    app: &axum::Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> (StatusCode, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, bytes.to_vec())
}

/// The `kind` of an error body (panics when the body is not one).
pub fn error_kind(body: &[u8]) -> String {
    let e: ErrorBody = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not an error body: {}", String::from_utf8_lossy(body)));
    e.error.kind.as_str().to_string()
}

/// One HTTP/1 request over a connected stream (unix or TCP).
pub async fn send<S>(
    stream: S,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "hull");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(
            req.body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, bytes.to_vec())
}

/// One request over the unix socket at `sock`.
pub async fn unix_call(sock: &Path, method: &str, uri: &str, body: &str) -> (StatusCode, Vec<u8>) {
    let s = tokio::net::UnixStream::connect(sock).await.unwrap();
    send(
        s,
        method,
        uri,
        &[("content-type", "application/json")],
        body.as_bytes().to_vec(),
    )
    .await
}
