//! The Connect RPC protocol (connectrpc.com), server side, as E2B's envd
//! speaks it: the JSON codec only (what the E2B SDKs send), no compression,
//! over HTTP/1.1. Unary calls take and answer one JSON body
//! (`application/json`); streaming calls (`application/connect+json`) carry
//! enveloped messages — a flags byte, a 4-byte big-endian length, the JSON —
//! and a response stream ends with an end-of-stream envelope (flag `0x02`)
//! that holds the error, if any. Limits: a request message is at most
//! [`MAX_JSON`](crate::MAX_JSON) bytes; a binary-protobuf or compressed
//! request is refused (HTTP 415 / `unimplemented`).

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use hull_api::{ApiError, ErrorKind};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::MAX_JSON;

/// Connect error codes (the subset hull produces, and `canceled`, which the
/// SDK maps to a timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Unimplemented,
    Internal,
    Unavailable,
    Unauthenticated,
}

impl Code {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status of a unary error with this code (Connect spec).
    fn http_status(self) -> StatusCode {
        match self {
            Code::InvalidArgument | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }
}

/// An RPC failure: a code and a message a person can act on.
#[derive(Debug, Clone)]
pub(crate) struct RpcError {
    pub code: Code,
    pub message: String,
}

impl RpcError {
    pub(crate) fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({"code": self.code.as_str(), "message": self.message})
    }
}

impl From<ApiError> for RpcError {
    fn from(e: ApiError) -> Self {
        let code = match e.kind {
            ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            ErrorKind::PermissionDenied => Code::PermissionDenied,
            ErrorKind::NotFound => Code::NotFound,
            // Wrong state (a paused sandbox, a busy context): the caller
            // must change something first.
            ErrorKind::Conflict => Code::FailedPrecondition,
            ErrorKind::ResourceExhausted => Code::ResourceExhausted,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::Internal => Code::Internal,
        };
        RpcError::new(code, e.message)
    }
}

impl IntoResponse for RpcError {
    /// The unary form: the code's status and a JSON body.
    fn into_response(self) -> Response {
        (
            self.code.http_status(),
            [(header::CONTENT_TYPE, "application/json")],
            self.json().to_string(),
        )
            .into_response()
    }
}

/// The codec part of a content type, lowercased and without parameters.
fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// A refusal of what this server does not speak (binary protobuf,
/// compression): HTTP 415 as the Connect spec asks, with the JSON content
/// types it accepts.
fn unsupported(what: &str) -> Response {
    let mut r = RpcError::new(
        Code::Unimplemented,
        format!("{what}: this server speaks the Connect JSON codec only (application/json, application/connect+json), without compression"),
    )
    .into_response();
    *r.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    r.headers_mut().insert(
        "accept-post",
        HeaderValue::from_static("application/json, application/connect+json"),
    );
    r
}

/// Check a request's content type and encoding for a unary (`stream:
/// false`) or streaming call.
pub(crate) fn check_request(headers: &HeaderMap, stream: bool) -> Result<(), Response> {
    let ct = content_type(headers);
    let want = if stream {
        "application/connect+json"
    } else {
        "application/json"
    };
    if ct != want {
        return Err(unsupported(&format!(
            "content type {ct:?} (expected {want:?})"
        )));
    }
    for h in ["content-encoding", "connect-content-encoding"] {
        if let Some(v) = headers.get(h)
            && v.as_bytes() != b"identity"
        {
            return Err(unsupported(&format!("{h} {v:?}")));
        }
    }
    if let Some(v) = headers.get("connect-protocol-version")
        && v.as_bytes() != b"1"
    {
        return Err(RpcError::invalid("connect-protocol-version must be 1").into_response());
    }
    Ok(())
}

/// The call's deadline from `connect-timeout-ms`, if any (at most 10
/// digits, as the spec allows).
pub(crate) fn timeout_ms(headers: &HeaderMap) -> Result<Option<u64>, RpcError> {
    let Some(v) = headers.get("connect-timeout-ms") else {
        return Ok(None);
    };
    let s = v.to_str().unwrap_or("");
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RpcError::invalid(format!(
            "invalid connect-timeout-ms {s:?}"
        )));
    }
    Ok(s.parse().ok())
}

/// Read a whole body of at most [`MAX_JSON`] bytes.
async fn read_limited(body: Body) -> Result<Bytes, RpcError> {
    axum::body::to_bytes(body, MAX_JSON).await.map_err(|e| {
        let inner = e.into_inner();
        if inner
            .downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            RpcError::new(
                Code::ResourceExhausted,
                format!("request message larger than {} MiB", MAX_JSON >> 20),
            )
        } else {
            RpcError::invalid(format!("cannot read the request body: {inner}"))
        }
    })
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RpcError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes)
        .map_err(|e| RpcError::invalid(format!("invalid request message: {e}")))
}

/// The message of a unary request (an empty body is the empty message).
pub(crate) async fn unary_request<T: DeserializeOwned>(body: Body) -> Result<T, RpcError> {
    decode(&read_limited(body).await?)
}

/// The single message of a server-streaming request: one envelope.
pub(crate) async fn stream_request<T: DeserializeOwned>(body: Body) -> Result<T, RpcError> {
    let mut r = EnvelopeReader::new(body);
    let m = r
        .next()
        .await?
        .ok_or_else(|| RpcError::invalid("the request stream holds no message"))?;
    if r.next::<serde_json::Value>().await?.is_some() {
        return Err(RpcError::invalid(
            "a server-streaming call takes exactly one request message",
        ));
    }
    Ok(m)
}

/// A unary answer.
pub(crate) fn unary_ok<T: Serialize>(v: &T) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

/// Reads the enveloped messages of a streaming request, one at a time,
/// without holding more than one message in memory.
pub(crate) struct EnvelopeReader {
    body: axum::body::BodyDataStream,
    buf: Vec<u8>,
    done: bool,
}

impl EnvelopeReader {
    pub(crate) fn new(body: Body) -> Self {
        Self {
            body: body.into_data_stream(),
            buf: Vec::new(),
            done: false,
        }
    }

    /// Ensure `n` bytes are buffered; false at a clean end of the body.
    async fn fill(&mut self, n: usize) -> Result<bool, RpcError> {
        while self.buf.len() < n {
            if self.done {
                return Ok(false);
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(RpcError::invalid(format!(
                        "cannot read the request stream: {e}"
                    )));
                }
                None => self.done = true,
            }
        }
        Ok(true)
    }

    /// The next message, or `None` at the end of the stream.
    pub(crate) async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, RpcError> {
        if !self.fill(5).await? {
            if self.buf.is_empty() {
                return Ok(None);
            }
            return Err(RpcError::invalid(
                "the request stream ends inside an envelope",
            ));
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if flags & 0x01 != 0 {
            return Err(RpcError::new(
                Code::Unimplemented,
                "compressed messages are not supported",
            ));
        }
        if len > MAX_JSON {
            return Err(RpcError::new(
                Code::ResourceExhausted,
                format!("request message larger than {} MiB", MAX_JSON >> 20),
            ));
        }
        if !self.fill(5 + len).await? {
            return Err(RpcError::invalid(
                "the request stream ends inside a message",
            ));
        }
        let msg: Vec<u8> = self.buf.drain(..5 + len).skip(5).collect();
        if flags & 0x02 != 0 {
            // An end-of-stream envelope from a client: nothing follows.
            return Ok(None);
        }
        decode(&msg).map(Some)
    }
}

/// One envelope: flags, length, JSON.
fn envelope(flags: u8, json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + json.len());
    out.push(flags);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(json);
    Bytes::from(out)
}

/// What a streaming handler sends: messages, then the end (with an error,
/// or none).
pub(crate) enum Item {
    Msg(serde_json::Value),
    End(Option<RpcError>),
}

/// A streaming response fed from `rx`; ends after the first `End` (or with
/// a plain end-of-stream when the sender goes away without one).
pub(crate) fn stream_response(rx: mpsc::Receiver<Item>) -> Response {
    let body = futures_util::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        let (bytes, next) = match rx.recv().await {
            Some(Item::Msg(v)) => (envelope(0, v.to_string().as_bytes()), Some(rx)),
            Some(Item::End(err)) => (end_envelope(err), None),
            None => (end_envelope(None), None),
        };
        Some((Ok::<_, std::io::Error>(bytes), next))
    });
    (
        [(header::CONTENT_TYPE, "application/connect+json")],
        Body::from_stream(body),
    )
        .into_response()
}

fn end_envelope(err: Option<RpcError>) -> Bytes {
    let v = match err {
        Some(e) => serde_json::json!({"error": e.json()}),
        None => serde_json::json!({}),
    };
    envelope(0x02, v.to_string().as_bytes())
}

/// A streaming call that failed before its first message: HTTP 200 and an
/// end-of-stream envelope holding the error (the Connect streaming form).
pub(crate) fn stream_error(e: RpcError) -> Response {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(Item::End(Some(e)));
    stream_response(rx)
}

/// Serialize an int64/uint64 field as proto3 JSON does: a string.
pub(crate) fn int64(v: i64) -> serde_json::Value {
    serde_json::Value::String(v.to_string())
}

/// proto3 JSON numbers may come as JSON numbers or strings.
pub(crate) mod lenient_u32 {
    use serde::{Deserialize, Deserializer};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum N {
            Num(u32),
            Text(String),
        }
        match Option::<N>::deserialize(d)? {
            None => Ok(None),
            Some(N::Num(n)) => Ok(Some(n)),
            Some(N::Text(s)) => s
                .parse()
                .map(Some)
                .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a uint32"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn envelopes_round_trip_and_bounds_hold() {
        let mut body = envelope(0, br#"{"a":1}"#).to_vec();
        body.extend_from_slice(&envelope(0, b"{}"));
        let mut r = EnvelopeReader::new(Body::from(body));
        let a: serde_json::Value = r.next().await.unwrap().unwrap();
        assert_eq!(a["a"], 1);
        let b: serde_json::Value = r.next().await.unwrap().unwrap();
        assert_eq!(b, serde_json::json!({}));
        assert!(r.next::<serde_json::Value>().await.unwrap().is_none());

        // Truncated, oversize, compressed: typed errors, no panic.
        let mut r = EnvelopeReader::new(Body::from(vec![0u8, 0, 0, 0, 9, b'{']));
        assert_eq!(
            r.next::<serde_json::Value>().await.unwrap_err().code,
            Code::InvalidArgument
        );
        let mut r = EnvelopeReader::new(Body::from(vec![0u8, 0xff, 0xff, 0xff, 0xff]));
        assert_eq!(
            r.next::<serde_json::Value>().await.unwrap_err().code,
            Code::ResourceExhausted
        );
        let mut r = EnvelopeReader::new(Body::from(envelope(1, b"{}").to_vec()));
        assert_eq!(
            r.next::<serde_json::Value>().await.unwrap_err().code,
            Code::Unimplemented
        );
        let mut r = EnvelopeReader::new(Body::from(vec![0u8, 0, 0]));
        assert!(r.next::<serde_json::Value>().await.is_err());
    }

    #[test]
    fn timeouts_parse_strictly() {
        let mut h = HeaderMap::new();
        assert_eq!(timeout_ms(&h).unwrap(), None);
        h.insert("connect-timeout-ms", HeaderValue::from_static("1500"));
        assert_eq!(timeout_ms(&h).unwrap(), Some(1500));
        for bad in ["", "-1", "1e3", "12345678901"] {
            h.insert("connect-timeout-ms", HeaderValue::from_static(bad));
            assert!(timeout_ms(&h).is_err(), "{bad}");
        }
    }
}
