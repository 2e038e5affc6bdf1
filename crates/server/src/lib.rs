//! The HTTP API: REST/JSON under `/v1` over the runtime, on a unix socket
//! (no auth: file permissions guard it) and optionally TCP (bearer token).
//! Transport only: every handler parses, calls one `Runtime` method and
//! maps the answer; no lifecycle logic lives here.
//!
//! Public API (what `hull serve` uses):
//!
//! ```text
//! config::resolve(config::Overrides { state_dir, socket, listen, config, guest_binary })
//!     -> Result<ServerConfig, config::ConfigError>      // flag > file > default
//! run(ServerConfig) -> Result<(), ServeError>           // until SIGTERM/SIGINT
//! serve(ServerConfig, shutdown: impl Future)            // same, until `shutdown`
//! router(Arc<Runtime>, Auth, max_upload_bytes) -> axum::Router
//! openapi() -> utoipa::openapi::OpenApi                 // docs/openapi.json
//! ensure_token(state_dir) -> Result<String, ServeError> // <state>/token, 0600
//! ```
//!
//! [`run`] opens the runtime, binds, serves until SIGTERM/SIGINT, then shuts
//! down; sandboxes keep running and the next daemon re-adopts them. The
//! routes are the contract in `docs/api.md`; [`openapi`] is generated from
//! the handlers and the `hull-api` types.
//!
//! Errors are always `{"error": {"kind", "message"}}` with the kind's
//! status, including malformed JSON, unknown fields, wrong content types,
//! oversize bodies, unknown routes and wrong methods. Limits: JSON bodies
//! [`MAX_JSON`]; file and archive uploads `max_upload_bytes` (refused up
//! front from `Content-Length`, then enforced while streaming: an upload is
//! never buffered whole in memory).
#![forbid(unsafe_code)]

mod auth;
mod browser;
mod code;
mod compat;
pub mod config;
mod daemon;
mod drain;
mod error;
mod exec;
mod files;
mod mcp;
mod mcp_host;
mod network;
mod openapi;
mod ports;
mod sandboxes;
mod shell;
mod snapshots;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::routing::{any, delete, get, post, put};
use hull_api::Limits;
use hull_runtime::Runtime;
use tokio_util::sync::CancellationToken;

pub use auth::Auth;
pub use config::DEFAULT_MAX_UPLOAD;
pub use daemon::{ServeError, ensure_token, run, serve};
pub use error::{AppError, Json};
pub use openapi::openapi;

/// Largest JSON request body: 1 MiB.
pub const MAX_JSON: usize = 1 << 20;

/// How the daemon is set up (`hull serve`); build it with
/// [`config::resolve`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Store, templates, sandboxes, the token (`/var/lib/hull`).
    pub state_dir: PathBuf,
    /// The unix socket (`/run/hull/hull.sock`).
    pub socket: PathBuf,
    /// Also serve on TCP (bearer token required).
    pub listen: Option<SocketAddr>,
    /// The statically linked guest agent.
    pub guest_binary: PathBuf,
    /// Limits for sandboxes whose request names none.
    pub defaults: Limits,
    /// The snapshot store's backend and loop-image size.
    pub snapshots: hull_runtime::SnapshotStoreConfig,
    /// Largest file or archive upload.
    pub max_upload_bytes: u64,
    /// The config file these settings came from, if any (logged at start).
    pub config_file: Option<PathBuf>,
    /// Sandbox networking: ranges, pool, default policies, upstream DNS.
    pub network: hull_runtime::NetworkConfig,
}

#[derive(Clone)]
struct AppState {
    rt: Arc<Runtime>,
    max_upload: u64,
}

/// Build the routes for one transport. `max_upload` bounds file and archive
/// uploads.
pub fn router(rt: Arc<Runtime>, auth: Auth, max_upload: u64) -> Router {
    router_until(rt, auth, max_upload, CancellationToken::new())
}

/// [`router`], whose long-lived MCP sessions end when `mcp_stop` is cancelled
/// (the daemon's shutdown), instead of holding their streams open.
pub fn router_until(
    rt: Arc<Runtime>,
    auth: Auth,
    max_upload: u64,
    mcp_stop: CancellationToken,
) -> Router {
    use browser::*;
    use code::*;
    use exec::*;
    use files::*;
    use sandboxes::*;
    use shell::*;
    use snapshots::*;
    let state = AppState { rt, max_upload };
    // E2B carries its own credentials (API key, access tokens): outside the bearer layer.
    let e2b = compat::e2b::router(state.clone(), auth.clone());
    // SWE-ReX sends the token as X-API-Key: its routes check it themselves.
    let swerex = compat::swerex::router(auth.clone());
    let api = Router::new()
        .route("/v1/version", get(version))
        .route("/v1/info", get(info))
        .route("/v1/sandboxes", post(create).get(list))
        .route("/v1/sandboxes/{id}", get(inspect).delete(destroy))
        .route("/v1/sandboxes/{id}/pause", post(pause))
        .route("/v1/sandboxes/{id}/resume", post(resume))
        .route("/v1/sandboxes/{id}/stop", post(stop))
        .route("/v1/sandboxes/{id}/ttl", put(set_ttl))
        .route(
            "/v1/sandboxes/{id}/network",
            get(network::get_network).put(network::set_network),
        )
        .route("/v1/sandboxes/{id}/exec", post(exec))
        .route("/v1/sandboxes/{id}/exec/stream", post(exec_stream))
        .route("/v1/sandboxes/{id}/exec/ws", get(exec_ws))
        .route("/v1/sandboxes/{id}/processes", get(processes))
        .route("/v1/sandboxes/{id}/processes/{pid}/signal", post(signal))
        .route("/v1/sandboxes/{id}/processes/{pid}/attach", get(attach_ws))
        .route(
            "/v1/sandboxes/{id}/files",
            get(read_file).put(write_file).delete(remove_file),
        )
        .route("/v1/sandboxes/{id}/files/stat", get(stat))
        .route("/v1/sandboxes/{id}/files/list", get(list_dir))
        .route("/v1/sandboxes/{id}/files/watch", get(watch::files_watch))
        .route("/v1/sandboxes/{id}/files/mkdir", post(mkdir))
        .route("/v1/sandboxes/{id}/files/rename", post(rename))
        .route(
            "/v1/sandboxes/{id}/files/archive",
            get(archive_get).put(archive_put),
        )
        .route(
            "/v1/sandboxes/{id}/shells",
            post(shell_open).get(shell_list),
        )
        .route("/v1/sandboxes/{id}/shells/{session}", delete(shell_close))
        .route("/v1/sandboxes/{id}/shells/{session}/run", post(shell_run))
        .route("/v1/sandboxes/{id}/shells/{session}/send", post(shell_send))
        .route(
            "/v1/sandboxes/{id}/code/contexts",
            post(code_context_create).get(code_contexts),
        )
        .route(
            "/v1/sandboxes/{id}/code/contexts/{context}",
            delete(code_context_delete),
        )
        .route(
            "/v1/sandboxes/{id}/code/contexts/{context}/run",
            post(code_run),
        )
        .route(
            "/v1/sandboxes/{id}/code/contexts/{context}/interrupt",
            post(code_interrupt),
        )
        .route(
            "/v1/sandboxes/{id}/code/contexts/{context}/restart",
            post(code_restart),
        )
        .route(
            "/v1/sandboxes/{id}/code/contexts/{context}/run/stream",
            post(code_run_stream),
        )
        .route("/v1/sandboxes/{id}/code/run", post(code_run_default))
        .route(
            "/v1/sandboxes/{id}/code/run/stream",
            post(code_run_stream_default),
        )
        .route("/v1/sandboxes/{id}/browser", get(browser_status))
        .route("/v1/sandboxes/{id}/browser/start", post(browser_start))
        .route("/v1/sandboxes/{id}/browser/stop", post(browser_stop))
        .route("/v1/sandboxes/{id}/browser/restart", post(browser_restart))
        .route("/v1/sandboxes/{id}/browser/actions", post(browser_action))
        .route(
            "/v1/sandboxes/{id}/browser/screenshot",
            get(browser_screenshot),
        )
        .route("/v1/sandboxes/{id}/browser/cdp", get(browser_cdp))
        .route(
            "/v1/sandboxes/{id}/browser/cdp/json/version",
            get(browser_cdp_version),
        )
        .route(
            "/v1/sandboxes/{id}/browser/cdp/json/version/",
            get(browser_cdp_version),
        )
        .route(
            "/v1/sandboxes/{id}/ports",
            post(ports::expose).get(ports::list_ports),
        )
        .route("/v1/sandboxes/{id}/ports/{port}", delete(ports::unexpose))
        .route(
            "/v1/sandboxes/{id}/ports/{port}/http",
            any(ports::proxy_http_bare),
        )
        .route(
            "/v1/sandboxes/{id}/ports/{port}/http/",
            any(ports::proxy_http),
        )
        .route(
            "/v1/sandboxes/{id}/ports/{port}/http/{*path}",
            any(ports::proxy_http),
        )
        .route("/v1/sandboxes/{id}/ports/{port}/tcp", get(ports::proxy_tcp))
        .route("/v1/sandboxes/{id}/snapshot", post(snapshot))
        .route("/v1/sandboxes/{id}/rollback", post(rollback))
        .route("/v1/snapshots", get(list_snapshots))
        .route(
            "/v1/snapshots/{id}",
            get(inspect_snapshot).delete(delete_snapshot),
        )
        .route("/v1/snapshots/{id}/fork", post(fork))
        .route("/v1/snapshots/{id}/export", get(export_snapshot))
        .route("/v1/snapshots/import", post(import_snapshot))
        .route("/v1/templates", get(list_templates).post(save_template))
        .route("/v1/templates/import", post(import_template))
        .route("/v1/templates/build", post(build_template))
        .route("/v1/templates/{name}", delete(remove_template))
        .route("/v1/system/reset", post(system_reset))
        .route(
            "/v1/sandboxes/{id}/mcp-servers",
            post(mcp_host::mcp_server_start).get(mcp_host::mcp_server_list),
        )
        .route(
            "/v1/sandboxes/{id}/mcp-servers/{name}",
            delete(mcp_host::mcp_server_stop),
        )
        .route(
            "/v1/sandboxes/{id}/mcp/{name}",
            mcp_host::endpoint(mcp_stop.clone()),
        )
        .route_service("/mcp", mcp::service(state.clone(), mcp_stop))
        .layer(axum::middleware::from_fn_with_state(
            auth,
            auth::authenticate,
        ));
    Router::new()
        .route("/v1/health", get(health))
        .merge(api)
        .merge(swerex)
        .nest("/e2b", e2b)
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn(drain::drain_unread))
        .with_state(state)
}
