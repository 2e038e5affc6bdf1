//! Keep-alive connections survive a refusal.
//!
//! A handler that answers before reading the request body (a 401, a 415, an
//! unknown RPC method) leaves bytes on the connection. hyper then closes the
//! connection after the response, and a client that already picked that
//! pooled connection for its next request sees "server disconnected without
//! sending a response" — a race the client can't avoid. This middleware
//! hands the unread rest of the body back to itself when the handler drops
//! it, and reads a small bounded amount of it after the response is built,
//! so the connection stays usable. A large or slow body is not waited for:
//! then the connection closes, as before.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};

/// The most that is read of a body the handler left.
const DRAIN_LIMIT: usize = 64 * 1024;
/// The longest the response waits for that.
const DRAIN_WAIT: Duration = Duration::from_millis(500);

type Slot = Arc<Mutex<Option<Body>>>;

/// A request body that, dropped unfinished, leaves its rest in a slot.
struct Returning {
    inner: Option<Body>,
    slot: Slot,
}

impl HttpBody for Returning {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let r = Pin::new(inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.inner = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let Some(b) = self.inner.take()
            && !b.is_end_stream()
            && let Ok(mut slot) = self.slot.lock()
        {
            *slot = Some(b);
        }
    }
}

/// The middleware: see the module documentation.
pub(crate) async fn drain_unread(req: Request, next: Next) -> Response {
    let slot: Slot = Arc::default();
    let req = req.map(|b| {
        Body::new(Returning {
            inner: Some(b),
            slot: slot.clone(),
        })
    });
    let resp = next.run(req).await;
    let left = slot.lock().ok().and_then(|mut s| s.take());
    if let Some(body) = left {
        drain(body).await;
    }
    resp
}

/// Read at most [`DRAIN_LIMIT`] bytes within [`DRAIN_WAIT`].
async fn drain(mut body: Body) {
    let _ = tokio::time::timeout(DRAIN_WAIT, async {
        let mut n = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            n += frame.data_ref().map_or(0, Bytes::len);
            if n > DRAIN_LIMIT {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::post;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Over one raw connection: a refusal that never reads the body, then a
    /// second request on the same connection is answered.
    #[tokio::test]
    async fn a_refusal_keeps_the_connection() {
        async fn refuse() -> axum::http::StatusCode {
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE
        }
        async fn echo(body: Bytes) -> Bytes {
            body
        }
        let app = Router::new()
            .route("/refuse", post(refuse))
            .route("/echo", post(echo))
            .layer(axum::middleware::from_fn(drain_unread));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(l, app).await });
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The headers first, the body later: the handler answers before
        // the body has arrived.
        c.write_all(b"POST /refuse HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.write_all(b"hello").await.unwrap();
        c.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("\r\n\r\nabc") {
            let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
                .await
                .expect("the second response comes")
                .unwrap();
            assert!(
                n > 0,
                "connection closed: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 415"), "{text}");
        assert!(text.contains("HTTP/1.1 200"), "{text}");
        server.abort();
    }

    /// A body larger than the limit is not read: the connection closes.
    #[tokio::test]
    async fn a_large_unread_body_closes_the_connection() {
        async fn refuse() -> axum::http::StatusCode {
            axum::http::StatusCode::UNAUTHORIZED
        }
        let app = Router::new()
            .route("/refuse", post(refuse))
            .layer(axum::middleware::from_fn(drain_unread));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(l, app).await });
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let len = 10 * DRAIN_LIMIT;
        c.write_all(
            format!("POST /refuse HTTP/1.1\r\nhost: x\r\ncontent-length: {len}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        // Write the body in the background; the server may stop reading.
        let (mut r, mut w) = c.into_split();
        let writer = tokio::spawn(async move {
            let chunk = vec![b'x'; 8192];
            for _ in 0..len / chunk.len() {
                if w.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        });
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut got)).await;
        let text = String::from_utf8_lossy(&got);
        assert!(read.is_ok(), "the server closes the connection: {text}");
        assert!(text.starts_with("HTTP/1.1 401"), "{text}");
        writer.abort();
        server.abort();
    }
}
