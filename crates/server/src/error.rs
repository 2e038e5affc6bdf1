//! How failures become responses: every error is an [`ApiError`] rendered
//! as `{"error": {"kind", "message"}}` with its kind's status. Also the JSON
//! body extractor, whose every rejection (wrong content type, oversize,
//! malformed, unknown field) is `invalid_argument`, and the fallbacks for
//! unknown routes and methods. Limits: JSON bodies are at most
//! [`MAX_JSON`](crate::MAX_JSON) bytes.

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hull_api::{ApiError, ErrorBody};
use serde::de::DeserializeOwned;

use crate::MAX_JSON;

/// An error response.
#[derive(Debug)]
pub struct AppError(pub ApiError);

impl From<ApiError> for AppError {
    fn from(e: ApiError) -> Self {
        AppError(e)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.kind.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(ErrorBody { error: self.0 })).into_response()
    }
}

pub(crate) type ApiResult<T> = Result<T, AppError>;

/// A JSON body: `application/json` (or no content type), at most
/// [`MAX_JSON`] bytes, unknown fields refused (the `hull-api` types deny
/// them), every failure an `invalid_argument` error.
#[derive(Debug)]
pub struct Json<T>(pub T);

fn is_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let ct = v.to_str().unwrap_or("").to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        return Ok(());
    }
    Err(ApiError::invalid(format!(
        "content type {:?} is not JSON: send `content-type: application/json`",
        v.to_str().unwrap_or("(not text)")
    )))
}

/// The request's `Content-Length`, when it has a valid one.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn too_large() -> ApiError {
    ApiError::invalid(format!("request body larger than {} MiB", MAX_JSON >> 20))
}

/// How much of a refused request body the daemon still reads, and throws
/// away, before answering: a client still sending then gets the answer
/// instead of a broken pipe (a "lingering close"). Larger declared bodies
/// are answered at once.
pub(crate) const DRAIN_MAX: u64 = 64 << 20;
/// How long the daemon keeps reading a refused body at most.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Read and discard what is left of a refused request body, within
/// [`DRAIN_MAX`] bytes and a few seconds.
pub(crate) async fn drain(mut body: axum::body::Body) {
    use http_body_util::BodyExt;
    let mut seen = 0u64;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(d) = frame.data_ref() {
                seen += d.len() as u64;
                if seen > DRAIN_MAX {
                    break;
                }
            }
        }
    })
    .await;
}

/// Why [`read_bounded`] failed.
pub(crate) enum BodyError {
    /// Larger than the limit (what was sent has been drained).
    TooLarge,
    /// The connection failed while reading.
    Read(String),
}

/// A request body of at most `limit` bytes. A body declared or found to be
/// larger is drained (see [`drain`]) and refused.
pub(crate) async fn read_bounded(
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Result<bytes::Bytes, BodyError> {
    use http_body_util::BodyExt;
    if let Some(len) = content_length(headers)
        && len > limit as u64
    {
        if len <= DRAIN_MAX {
            drain(body).await;
        }
        return Err(BodyError::TooLarge);
    }
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        if let Some(d) = frame.data_ref() {
            if buf.len() + d.len() > limit {
                drain(body).await;
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(d);
        }
    }
    Ok(buf.freeze())
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = AppError;
    async fn from_request(req: Request, _: &S) -> Result<Self, AppError> {
        is_json(req.headers())?;
        let (parts, body) = req.into_parts();
        let bytes = read_bounded(&parts.headers, body, MAX_JSON)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge => too_large(),
                BodyError::Read(e) => {
                    ApiError::invalid(format!("cannot read the request body: {e}"))
                }
            })?;
        if bytes.is_empty() {
            return Err(ApiError::invalid("request body is empty: expected a JSON object").into());
        }
        serde_json::from_slice(&bytes)
            .map(Json)
            .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")).into())
    }
}

/// Like [`Json`], but a request without a body (no content type, no or a
/// zero length) means `T::default()`: for actions whose options are all
/// optional (`POST .../snapshot`).
pub struct JsonOrEmpty<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for JsonOrEmpty<T> {
    type Rejection = AppError;
    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        let h = req.headers();
        let length = content_length(h);
        let chunked = h.contains_key(header::TRANSFER_ENCODING);
        if !h.contains_key(header::CONTENT_TYPE) && !chunked && length.unwrap_or(0) == 0 {
            return Ok(JsonOrEmpty(T::default()));
        }
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| JsonOrEmpty(v))
    }
}

pub(crate) fn json<T: serde::Serialize>(status: StatusCode, v: T) -> Response {
    (status, axum::Json(v)).into_response()
}

pub(crate) async fn not_found(req: Request) -> AppError {
    ApiError::not_found(format!("no route {} {}", req.method(), req.uri().path())).into()
}

/// A known route with another method: `invalid_argument` (400), so the
/// status always follows the kind.
pub(crate) async fn method_not_allowed(req: Request) -> AppError {
    ApiError::invalid(format!(
        "method {} is not allowed on {}",
        req.method(),
        req.uri().path()
    ))
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert!(is_json(&h).is_ok(), "absent is accepted");
        for (ct, ok) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/merge-patch+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("application/jsonx", false),
        ] {
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            assert_eq!(is_json(&h).is_ok(), ok, "{ct}");
        }
    }
}
