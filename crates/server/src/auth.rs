//! Who may call the API on a transport: nobody is checked on the unix
//! socket (its file mode and directory guard it); on TCP every route but
//! `GET /v1/health` needs `Authorization: Bearer <token>`, compared in
//! constant time. Limits: one static token per daemon, no scopes.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use hull_api::{ApiError, ErrorKind};

use crate::error::AppError;

/// The credential a transport requires.
#[derive(Clone)]
pub enum Auth {
    /// The unix socket: its file mode is the guard.
    None,
    /// TCP: `Authorization: Bearer <token>` on every route but health.
    Bearer(Arc<String>),
}

impl std::fmt::Debug for Auth {
    /// Never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("Auth::None"),
            Auth::Bearer(_) => f.write_str("Auth::Bearer(..)"),
        }
    }
}

/// The token of an `Authorization` header value (scheme case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

pub(crate) async fn authenticate(
    State(auth): State<Auth>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    if let Auth::Bearer(token) = &auth {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return AppError(ApiError::new(
                ErrorKind::Unauthenticated,
                "missing or wrong bearer token (send `Authorization: Bearer <token>`; \
                 the daemon keeps it in <state-dir>/token)",
            ))
            .into_response();
        }
    }
    next.run(req).await
}

/// Equal bytes, in time that depends only on the lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_compares() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
