//! E2B compatibility: the unmodified `e2b` and `e2b-code-interpreter`
//! SDKs drive hull sandboxes, configured only through their own settings
//! (`docs/compat-e2b.md`). Three surfaces, all mapped onto `Runtime` calls:
//!
//! - the control plane (REST, under `/e2b`, `E2B_API_URL`): create, list,
//!   get, kill, timeout, pause, connect — [`control`];
//! - envd (under `/e2b/sandbox`, `E2B_SANDBOX_URL`, port header 49983):
//!   Connect RPC `process.Process` ([`envd_process`]) and
//!   `filesystem.Filesystem` plus REST `/files` and `/health`
//!   ([`envd_fs`]; directory watches: [`envd_watch`]);
//! - the code interpreter (same URL, port header 49999): `/execute` and
//!   `/contexts` ([`interpreter`]).
//!
//! The SDK sends all in-sandbox traffic to one URL and names the sandbox
//! and port in the `E2b-Sandbox-Id` and `E2b-Sandbox-Port` headers, which
//! [`sandbox_call`] dispatches on.
//!
//! Credentials: the API key is `e2b_` followed by the daemon's token (the
//! hex in `<state-dir>/token`), checked in constant time. Each sandbox's
//! envd access token is HMAC-SHA256(daemon token, sandbox id) in hex: it
//! opens that sandbox only, and holders of the API key can always recompute
//! it. On the unix socket (no auth) nothing is checked and no access token
//! is issued. Limits: the process table that maps E2B's pids to hull's
//! process ids lives in this transport's memory (a daemon restart forgets
//! tags; processes are found again by pid).

// Handlers and their helpers fail with the finished `Response` (an E2B
// error body): a cold path, where boxing would only add noise.
#![allow(clippy::result_large_err)]

mod connect;
mod control;
mod envd_fs;
mod envd_process;
mod envd_watch;
mod interpreter;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use hull_api::{ApiError, ErrorKind};
use sha2::{Digest, Sha256};

use crate::{AppState, Auth};

/// The envd version hull reports: the SDK enables features by it
/// (stdin control 0.3.0, server-side default user 0.4.0, `close_stdin`
/// 0.5.2, octet-stream uploads 0.5.7). File metadata (0.6.2) is not
/// supported, so hull stays below it.
pub(crate) const ENVD_VERSION: &str = "0.5.7";
/// envd's port in the `E2b-Sandbox-Port` header.
pub(crate) const ENVD_PORT: u16 = 49983;
/// The code interpreter's port.
pub(crate) const JUPYTER_PORT: u16 = 49999;

/// The adapter's state on one transport.
#[derive(Clone)]
pub(crate) struct E2b {
    pub app: AppState,
    /// The daemon token (TCP); `None` on the unix socket: no checks.
    key: Option<Arc<String>>,
    pub procs: Arc<envd_process::Table>,
    pub watchers: Arc<envd_watch::Watchers>,
}

impl E2b {
    /// The access token of one sandbox's envd (and code interpreter).
    pub(crate) fn access_token(&self, sandbox: &str) -> Option<String> {
        let key = self.key.as_ref()?;
        let mac = hmac_sha256(
            key.as_bytes(),
            format!("hull-e2b-envd\0{sandbox}").as_bytes(),
        );
        Some(hex(&mac))
    }

    /// Check `X-API-Key` (the control plane).
    fn check_api_key(&self, headers: &HeaderMap) -> Result<(), Response> {
        let Some(key) = &self.key else {
            return Ok(());
        };
        let given = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let ok = given
            .strip_prefix("e2b_")
            .is_some_and(|t| constant_time_eq(t.as_bytes(), key.as_bytes()));
        if ok {
            Ok(())
        } else {
            Err(api_error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key: send X-API-Key: e2b_<token>, where <token> is the \
                 daemon's token from <state-dir>/token (E2B_API_KEY=e2b_$(cat <state-dir>/token))",
            ))
        }
    }

    /// Check a sandbox's access token (`X-Access-Token`, or the code
    /// interpreter's `E2B-Traffic-Access-Token`).
    fn check_access_token(&self, sandbox: &str, headers: &HeaderMap) -> Result<(), Response> {
        let Some(want) = self.access_token(sandbox) else {
            return Ok(());
        };
        let given = ["x-access-token", "e2b-traffic-access-token"]
            .iter()
            .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
            .unwrap_or("");
        if constant_time_eq(given.as_bytes(), want.as_bytes()) {
            Ok(())
        } else {
            Err(api_error(
                StatusCode::UNAUTHORIZED,
                format!(
                    "missing or wrong access token for sandbox {sandbox}: send the envdAccessToken \
                     that create or connect returned, in X-Access-Token"
                ),
            ))
        }
    }
}

/// The E2B routes, to be nested under `/e2b`. They carry their own
/// credential checks (API key, access tokens), so they sit outside the
/// bearer-token layer.
pub(crate) fn router(app: AppState, auth: Auth) -> Router<AppState> {
    let key = match auth {
        Auth::None => None,
        Auth::Bearer(t) => Some(t),
    };
    let state = E2b {
        app,
        key,
        procs: Arc::new(envd_process::Table::default()),
        watchers: Arc::new(envd_watch::Watchers::default()),
    };
    use control::*;
    Router::new()
        .route("/sandboxes", post(create).get(list))
        .route("/v2/sandboxes", post(create).get(list))
        .route("/sandboxes/{id}", get(get_info).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(connect))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandbox", any(sandbox_root))
        .route("/sandbox/{*rest}", any(sandbox_call))
        .fallback(route_not_found)
        .with_state(state)
}

async fn route_not_found(req: Request) -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        format!(
            "no E2B route {} {} in hull (docs/compat-e2b.md lists what is covered)",
            req.method(),
            req.uri().path()
        ),
    )
}

/// An E2B control-plane (and proxy) error body: `{"code", "message"}`.
pub(crate) fn api_error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"code": status.as_u16(), "message": message.into()})),
    )
        .into_response()
}

/// A runtime error in the control plane's form, with the kind's status.
pub(crate) fn from_api(e: ApiError) -> Response {
    let status =
        StatusCode::from_u16(e.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    api_error(status, e.message)
}

/// The proxy's answer for a sandbox that is gone (the SDK's "was not
/// found" marker makes `is_running` false and errors `SandboxNotRunning`).
fn sandbox_gone(id: &str) -> Response {
    api_error(
        StatusCode::BAD_GATEWAY,
        format!("The sandbox {id} was not found"),
    )
}

async fn sandbox_root(State(s): State<E2b>, req: Request) -> Response {
    dispatch(s, String::new(), req).await
}

/// Everything under the sandbox URL: authenticate, find the sandbox, and
/// hand the call to envd or the code interpreter by the port header.
pub(crate) async fn sandbox_call(
    State(s): State<E2b>,
    Path(rest): Path<String>,
    req: Request,
) -> Response {
    dispatch(s, rest, req).await
}

async fn dispatch(s: E2b, rest: String, req: Request) -> Response {
    let headers = req.headers();
    let Some(sid) = headers
        .get("e2b-sandbox-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "missing E2b-Sandbox-Id header: the SDK sends it with E2B_SANDBOX_URL set",
        );
    };
    let port = headers
        .get("e2b-sandbox-port")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Ok(port) = port.parse::<u16>() else {
        return api_error(
            StatusCode::BAD_REQUEST,
            format!("E2b-Sandbox-Port {port:?} is not a port number"),
        );
    };
    if hull_api::validate_dns_label("sandbox id", &sid).is_err() {
        return sandbox_gone(&sid);
    }
    if let Err(r) = s.check_access_token(&sid, headers) {
        return r;
    }
    match s.app.rt.get(&sid).await {
        Ok(sb) if sb.state == hull_api::SandboxState::Running => {}
        Ok(sb) if sb.state == hull_api::SandboxState::Paused => {
            return api_error(
                StatusCode::BAD_GATEWAY,
                format!("The sandbox {sid} is paused: resume it with Sandbox.connect()"),
            );
        }
        Ok(sb) => {
            return api_error(
                StatusCode::BAD_GATEWAY,
                format!("The sandbox {sid} is {} (not running)", sb.state),
            );
        }
        Err(e) if e.kind == ErrorKind::NotFound => return sandbox_gone(&sid),
        Err(e) => return from_api(e),
    }
    let user = basic_user(req.headers());
    match port {
        ENVD_PORT => envd(s, sid, rest, user, req).await,
        JUPYTER_PORT => interpreter::call(s, sid, rest, req).await,
        p => api_error(
            StatusCode::BAD_GATEWAY,
            format!(
                "The sandbox {sid} is running but port {p} is not open: hull serves envd ({ENVD_PORT}) \
                 and the code interpreter ({JUPYTER_PORT}) only"
            ),
        ),
    }
}

/// envd: Connect RPC services, `/files`, `/health`.
async fn envd(s: E2b, sid: String, rest: String, user: Option<String>, req: Request) -> Response {
    let method = req.method().clone();
    match rest.as_str() {
        "health" => StatusCode::NO_CONTENT.into_response(),
        "files" => envd_fs::files(s, sid, user, req).await,
        r if r.starts_with("process.Process/") => {
            if method != axum::http::Method::POST {
                return connect::RpcError::invalid("Connect calls are POST").into_response();
            }
            envd_process::call(s, sid, &r["process.Process/".len()..], user, req).await
        }
        r if r.starts_with("filesystem.Filesystem/") => {
            if method != axum::http::Method::POST {
                return connect::RpcError::invalid("Connect calls are POST").into_response();
            }
            envd_fs::call(s, sid, &r["filesystem.Filesystem/".len()..], user, req).await
        }
        r => api_error(
            StatusCode::NOT_FOUND,
            format!("envd has no route /{r} in hull"),
        ),
    }
}

/// The user of an envd call: `Authorization: Basic base64("user:")`.
fn basic_user(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let user = text.split(':').next()?.to_string();
    (!user.is_empty()).then_some(user)
}

/// A sandbox path for an E2B path: absolute paths as they are; relative
/// ones under the user's home (`/root` for root and by default,
/// `/home/<user>` otherwise), as envd resolves them.
pub(crate) fn sandbox_path(path: &str, user: Option<&str>) -> Result<String, ApiError> {
    if path.is_empty() {
        return Err(ApiError::invalid("path must not be empty"));
    }
    if path.starts_with('/') {
        return Ok(path.to_string());
    }
    let home = match user {
        None | Some("root") => "/root".to_string(),
        Some(u) => format!("/home/{u}"),
    };
    let rel = path.trim_start_matches("./");
    Ok(if rel.is_empty() || rel == "." {
        home
    } else {
        format!("{home}/{rel}")
    })
}

/// RFC 3339 (UTC) for seconds since the Unix epoch.
pub(crate) fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let ih = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(ih);
    let mut out = [0u8; 32];
    out.copy_from_slice(&outer.finalize());
    out
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn dates_and_paths() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(sandbox_path("/a/b", Some("x")).unwrap(), "/a/b");
        assert_eq!(sandbox_path("a.txt", None).unwrap(), "/root/a.txt");
        assert_eq!(
            sandbox_path("./d/a", Some("user")).unwrap(),
            "/home/user/d/a"
        );
        assert!(sandbox_path("", None).is_err());
    }

    #[test]
    fn basic_users() {
        let mut h = HeaderMap::new();
        assert_eq!(basic_user(&h), None);
        h.insert(header::AUTHORIZATION, "Basic cm9vdDo=".parse().unwrap());
        assert_eq!(basic_user(&h).as_deref(), Some("root"));
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(basic_user(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(basic_user(&h), None);
    }
}
