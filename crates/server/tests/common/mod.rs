//! Test kit for the server's privileged tests: a runtime on a private state
//! directory, the guest binary from this build, and small HTTP clients
//! (in-process through `tower::ServiceExt::oneshot`, and over a real unix
//! or TCP socket with hyper).
#![allow(dead_code, unused_imports)]

use std::path::Path;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use hull_api::ErrorBody;
use hull_server::{Auth, router};
use tower::ServiceExt;

pub use hull_testkit::{guest_binary, privileged, state_dir};

/// A runtime on a private state directory (the shared kit); `finish`
/// resets it and asserts the host holds nothing of it.
pub use hull_testkit::RuntimeKit as Fixture;

/// The unix-socket router (no auth) over a fixture's runtime.
pub trait App {
    fn app(&self, max_upload: u64) -> axum::Router;
}

impl App for Fixture {
    fn app(&self, max_upload: u64) -> axum::Router {
        router(self.rt.clone(), Auth::None, max_upload)
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
